"""Test-wide settings: one thread (the CI machine has 2 shared cores), no rendering."""
import os

os.environ.setdefault("MUJOCO_GL", "disable")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
