"""Physical removal keeps optimizers, mirrors and shared storage consistent."""
from __future__ import annotations

import copy

import pytest
import torch

from tdmpc_prune import Pruner
from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout


def _train_step(model, opt, pi_opt, inputs) -> torch.Tensor:
    outs = rollout(model, inputs)
    loss = sum((o.float() ** 2).mean() for o in outs)
    opt.zero_grad()
    pi_opt.zero_grad()
    loss.backward()
    opt.step()
    pi_opt.step()
    return loss  # deliberately kept alive by the caller: an old graph must not break the next backward


def _setup(official: bool):
    torch.manual_seed(0)
    model = LatentWorldModel(official_ensemble=official)
    pi_params = list(model._pi.parameters())
    ids = {id(p) for p in pi_params}
    opt = torch.optim.Adam([p for p in model.parameters() if id(p) not in ids and not p.is_meta], lr=1e-2)
    pi_opt = torch.optim.Adam(pi_params, lr=1e-2)
    inputs = example_inputs(model)
    pruner = Pruner(model, components=COMPONENTS, example_inputs=inputs, forward_fn=rollout, criterion="fisher", sparsity=0.5, coupling="prune")
    pruner.add_mirror(model._Qs, model._detach_Qs, shared=True)
    pruner.add_mirror(model._Qs, model._target_Qs)
    pruner.attach([opt, pi_opt], total_steps=10)
    return model, opt, pi_opt, inputs, pruner


def _named(model):
    from tdmpc_prune.tracing import named_tensors

    return {k: v for k, v in named_tensors(model).items() if v.requires_grad}


@pytest.mark.parametrize("official", [False, True], ids=["stacked", "tensordict"])
def test_optimizers_keep_training_every_kept_weight(official: bool) -> None:
    model, opt, pi_opt, inputs, pruner = _setup(official)
    old_loss = None
    for _ in range(3):
        old_loss = _train_step(model, opt, pi_opt, inputs)
    before = {n: t.detach().clone() for n, t in _named(model).items()}
    states = {n: {k: v.clone() for k, v in o.state[t].items() if torch.is_tensor(v)} for o in (opt, pi_opt) for n, t in _named(model).items() if t in o.state}
    pruner.prune_to()
    assert old_loss is not None  # the old graph is still alive here
    # weights and Adam moments are exactly the kept slices of the old ones
    for n, t in _named(model).items():
        o = opt if t in opt.state else pi_opt
        for k, v in o.state[t].items():
            if not torch.is_tensor(v) or v.dim() == 0:
                continue
            old = states[n][k]
            idx = [torch.arange(s) for s in old.shape]
            for key, d in pruner.surgeon.dims.items():
                if key[0] == id(t):
                    idx[d.dim] = d.kept
            sliced = old[torch.meshgrid(*idx, indexing="ij")]
            assert v.shape == t.shape and torch.equal(v, sliced), (n, k)
            assert torch.equal(t.detach(), before[n][torch.meshgrid(*idx, indexing="ij")]), n
    after_prune = {n: t.detach().clone() for n, t in _named(model).items()}
    _train_step(model, opt, pi_opt, inputs)
    for n, t in _named(model).items():
        changed = t.detach() != after_prune[n]
        assert changed.float().mean() > 0.9, f"{n}: only {changed.float().mean():.2f} of its entries trained"


@pytest.mark.parametrize("official", [False, True], ids=["stacked", "tensordict"])
def test_mirrors_follow_the_online_ensemble(official: bool) -> None:
    model, opt, pi_opt, inputs, pruner = _setup(official)
    _train_step(model, opt, pi_opt, inputs)
    if official:
        target_before = model._target_Qs_params.data.clone()
    else:
        target_before = {k: v.clone() for k, v in model._target_Qs.named_tensors()}
    pruner.prune_to()
    _train_step(model, opt, pi_opt, inputs)
    from tdmpc_prune.tracing import ensemble_tensors

    online, detach, target = (ensemble_tensors(m) for m in (model._Qs, model._detach_Qs, model._target_Qs))
    for k in online:
        assert detach[k].data_ptr() == online[k].data_ptr(), f"{k}: detached view no longer shares storage"
        assert target[k].shape == online[k].shape
    # the target is the old target sliced with the same indices, and lerp_ towards online works
    key = "0.weight"
    old = target_before[key] if not official else target_before.get(("0", "weight"))
    kept_rows = pruner.surgeon.dims[(id(online[key]), 1)].kept
    kept_cols = pruner.surgeon.dims[(id(online[key]), 2)].kept
    assert torch.equal(target[key], old[:, kept_rows][:, :, kept_cols])
    with torch.no_grad():
        if official:
            model._target_Qs_params.lerp_(model._detach_Qs_params, 0.5)
        else:
            for k, v in model._target_Qs.named_tensors():
                v.lerp_(online[k], 0.5)
    assert torch.allclose(target[key], 0.5 * old[:, kept_rows][:, :, kept_cols] + 0.5 * online[key])
    with torch.no_grad():
        q_t = model.Q(model.encode(inputs[0]), inputs[1][0], target=True)
    assert q_t.shape[0] == 3 and torch.isfinite(q_t).all()


def test_masks_stay_exact_zeros_while_training() -> None:
    torch.manual_seed(0)
    model = LatentWorldModel()
    opt = torch.optim.Adam([p for p in model.parameters()], lr=1e-2)
    inputs = example_inputs(model)
    pruner = Pruner(model, example_inputs=inputs, forward_fn=rollout, criterion="grad", sparsity=0.5, physical=False, coupling="prune")
    pruner.attach(opt, total_steps=10)
    pruner.prune_to()
    for _ in range(3):
        loss = sum((o**2).mean() for o in rollout(model, inputs))
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = pruner._by_id["_dynamics.0"]
    dead = torch.nonzero(~pruner.alive[g.id]).squeeze(1)
    assert torch.all(model._dynamics[0].weight[dead] == 0) and torch.all(model._dynamics[1].weight[:, dead] == 0)
    assert pruner.param_count() < pruner.dense_params


def test_deepcopy_of_a_pruned_model_still_runs() -> None:
    model, opt, pi_opt, inputs, pruner = _setup(False)
    pruner.prune_to()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for a, b in zip(rollout(model.eval(), inputs), rollout(clone.eval(), inputs)):
            assert torch.allclose(a, b)


def test_views_recreated_by_the_model_are_followed() -> None:
    model, opt, pi_opt, inputs, pruner = _setup(False)
    pruner.prune_to(0.25)
    model._detach_Qs = model._Qs.shared_view()  # what a world model does after .to() or load_state_dict
    pruner.prune_to(0.5)
    online = model._Qs.tensor_dict()
    for k, t in model._detach_Qs.named_tensors():
        assert t.data_ptr() == online[k].data_ptr()
    _train_step(model, opt, pi_opt, inputs)
