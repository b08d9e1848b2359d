"""Pruner state round trips: same next decision, and a pruned model rebuilt from its constructor."""
from __future__ import annotations

import io

import pytest
import torch

from tdmpc_prune import Pruner, PruneError
from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout


def _run(model, pruner, opt, inputs, steps):
    for _ in range(steps):
        loss = sum((o**2).mean() for o in rollout(model, inputs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step()


def _make(seed=0, **opts):
    torch.manual_seed(seed)
    model = LatentWorldModel()
    inputs = example_inputs(model)
    pruner = Pruner(model, components=COMPONENTS, example_inputs=inputs, forward_fn=rollout, **opts)
    pruner.add_mirror(model._Qs, model._target_Qs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner.attach(opt, total_steps=12)
    return model, pruner, opt, inputs


@pytest.mark.parametrize("physical", [True, False])
@pytest.mark.parametrize("criterion,every", [("bayes", 1), ("random", 1), ("combined", 1), ("bayes", 2)])
def test_round_trip_reproduces_the_next_pruning_decision(physical: bool, criterion: str, every: int) -> None:
    opts = dict(criterion=criterion, sparsity=0.5, schedule="iterative", start=3, end=9, iterations=3, physical=physical, l1=1e-4, l1_period=4,
                every_n_updates=every)
    model, pruner, opt, inputs = _make(**opts)
    _run(model, pruner, opt, inputs, 5)  # one event done, statistics for 5 steps
    assert len(pruner.history) == 1

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    model2, pruner2, opt2, _ = _make(seed=1, **opts)  # fresh, unpruned, different init
    pruner2.load_state_dict(ckpt["pruner"])
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert [tuple(t.shape) for t in model.state_dict().values()] == [tuple(t.shape) for t in model2.state_dict().values()]
    assert pruner2.clock == pruner.clock and pruner2.schedule.done == pruner.schedule.done and pruner2.updates == pruner.updates
    for a, b in zip(pruner.scores().values(), pruner2.scores().values()):
        assert torch.allclose(a, b, equal_nan=True)

    torch.manual_seed(123)
    _run(model, pruner, opt, inputs, 3)
    torch.manual_seed(123)
    _run(model2, pruner2, opt2, inputs, 3)
    assert len(pruner.history) == len(pruner2.history) == 2
    assert pruner.history[-1] == pruner2.history[-1]
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_loading_into_an_already_pruned_model_says_how_to_fix() -> None:
    model, pruner, _, _ = _make(criterion="grad", sparsity=0.5)
    pruner.prune_to()
    state = pruner.state_dict()
    with pytest.raises(PruneError, match="fresh Pruner"):
        pruner.load_state_dict(state)
    other = Pruner(model, example_inputs=example_inputs(model), forward_fn=rollout)
    with pytest.raises(PruneError, match="original \\(unpruned\\) configuration"):
        other.load_state_dict(state)
