"""An SB3 model saved while pruning by an older version of the package still loads.

`tests/data/ppo_pruned_v1.zip` was written by `python tests/test_sb3_compat.py --write` at commit
7b69606, when the pruning state was pickled as `tdmpc_prune.sb3.io.PruningState` (the module is
`tdmpc_prune.sb3.saving` since). `predictions` are the deterministic actions of the saved model on
`obs`. Never regenerate it to make this test pass: it pins the format.
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch as th
from stable_baselines3 import PPO

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tdmpc_prune.sb3 import get_pruner, load, wrap  # noqa: E402
from test_sb3 import SCHEDULE, STEPS, make  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"


def _write() -> None:
    model = wrap(make("ppo"), criterion="bayes", **SCHEDULE)
    model.learn(STEPS)
    model.save(DATA / "ppo_pruned_v1")
    obs = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    action, _ = model.predict(obs, deterministic=True)
    th.save({"obs": obs, "actions": action, "history": get_pruner(model).history}, DATA / "ppo_pruned_v1_expected.pt")


def test_a_model_saved_before_the_module_rename_loads_with_both_loaders() -> None:
    expected = th.load(DATA / "ppo_pruned_v1_expected.pt", weights_only=False)
    for model in (load(DATA / "ppo_pruned_v1.zip", device="cpu"), PPO.load(DATA / "ppo_pruned_v1.zip", device="cpu")):
        action, _ = model.predict(expected["obs"], deterministic=True)
        assert (action == expected["actions"]).all()
    assert get_pruner(model).history == expected["history"]


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
