"""A Pruner state saved by an older version of the package loads and continues identically.

`tests/data/pruner_state_v1.pt` was written by `python tests/test_state_compat.py --write` at commit
7b69606 (before the Pruner was split into selection/metrics/persistence modules): the model, its
optimizer and the pruner's `state_dict()` after one physical pruning event, the scores then, and the
pruning event that fired next. Never regenerate it to make this test pass: it pins the format.
"""
from __future__ import annotations

import copy
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_state import _make as make_pruned_world_model, _run  # noqa: E402  (one builder and loop for the state tests)

DATA = pathlib.Path(__file__).parent / "data" / "pruner_state_v1.pt"
# the options of the saved run; it observed every update (every_n_updates did not exist yet)
OPTIONS = dict(criterion="bayes", sparsity=0.5, schedule="iterative", start=3, end=9, iterations=3, l1=1e-4, l1_period=4, every_n_updates=1)


def _make(seed: int):
    return make_pruned_world_model(seed, **OPTIONS)


def _write() -> None:
    model, pruner, opt, inputs = _make(seed=0)
    _run(model, pruner, opt, inputs, 5)
    snapshot = {"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict(), "scores": pruner.scores(), "inputs": inputs}
    saved = copy.deepcopy(snapshot)  # the live tensors change in place as training goes on
    torch.manual_seed(123)
    _run(model, pruner, opt, inputs, 3)
    saved["next_event"] = pruner.history[-1]
    saved["final_model"] = model.state_dict()
    DATA.parent.mkdir(exist_ok=True)
    torch.save(saved, DATA)


def test_a_state_saved_before_the_split_loads_and_continues_identically() -> None:
    saved = torch.load(DATA, weights_only=False)
    model, pruner, opt, _ = _make(seed=1)  # fresh, unpruned, other init
    inputs = saved["inputs"]  # the training batch of the saved run
    pruner.load_state_dict(saved["pruner"])
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    assert len(pruner.history) == 1 and pruner.clock == 5
    for gid, s in saved["scores"].items():
        assert torch.allclose(pruner.scores()[gid], s, equal_nan=True), gid
    torch.manual_seed(123)
    _run(model, pruner, opt, inputs, 3)
    assert pruner.history[-1] == saved["next_event"]
    for name, t in saved["final_model"].items():
        assert torch.allclose(model.state_dict()[name], t, atol=1e-6), name


def test_a_state_from_before_every_n_updates_warns_when_loaded_at_another_rate() -> None:
    saved = torch.load(DATA, weights_only=False)
    _, pruner, _, _ = make_pruned_world_model(1, **{**OPTIONS, "every_n_updates": 4})
    with pytest.warns(UserWarning, match="saved with every_n_updates=1.*build the pruner with every_n_updates=1"):
        pruner.load_state_dict(saved["pruner"])


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
