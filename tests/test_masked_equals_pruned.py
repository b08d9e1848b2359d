"""Masked model == physically pruned model (max abs diff <= 1e-6), in the spirit of torch.ao.pruning's tests."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tdmpc_prune import Pruner
from toy_models import COMPONENTS, LatentWorldModel, ResidualFree, all_heads, example_inputs, rollout

TOL = 1e-6


def _randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if not p.is_meta:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _world_model(official: bool, seed: int = 0) -> LatentWorldModel:
    torch.manual_seed(seed)
    m = LatentWorldModel(official_ensemble=official).eval()
    _randomise(m, seed)
    with torch.no_grad():  # a target that differs from the online Qs, so slicing mistakes show
        if official:
            m._target_Qs_params.data.copy_(m._Qs.params.data * 0.9 + 0.01)
        else:
            online = m._Qs.tensor_dict()
            for k, v in m._target_Qs.named_tensors():
                v.copy_(online[k] * 0.9 + 0.01)
    return m


def _pruner(model, physical: bool, **opts) -> Pruner:
    ex = example_inputs(model)
    p = Pruner(model, components=COMPONENTS, example_inputs=ex, forward_fn=rollout, physical=physical, **opts)
    p.add_mirror(model._Qs, model._detach_Qs, shared=True)
    p.add_mirror(model._Qs, model._target_Qs)
    return p


def _assert_heads_equal(masked, pruned, inputs, latent_keep: torch.Tensor) -> None:
    with torch.no_grad():
        outs_m = all_heads(masked, inputs)
        outs_p = all_heads(pruned, inputs)
    names = ["encode", "next", "reward", "pi", "Q", "Q_detach", "Q_target"]
    for name, a, b in zip(names, outs_m, outs_p):
        if name in ("encode", "next"):  # latents: compare kept channels (a masked simplex is uniform 1/8)
            a = a[..., latent_keep]
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() <= TOL, f"{name}: {(a - b).abs().max().item()}"


@pytest.mark.parametrize("official", [False, True], ids=["stacked-ensemble", "tensordict-ensemble"])
@pytest.mark.parametrize("criterion", ["magnitude", "random"])
def test_latent_world_model_all_heads(official: bool, criterion: str) -> None:
    masked, pruned = _world_model(official), _world_model(official)
    inputs = example_inputs(masked, batch=9)
    pm = _pruner(masked, physical=False, criterion=criterion, sparsity=0.5, coupling="prune")
    pp = _pruner(pruned, physical=True, criterion=criterion, sparsity=0.5, coupling="prune")
    pm.prune_to()
    pp.prune_to()
    latent = next(g for g in pp.groups if g.kind == "coupling")
    assert latent.unit == 8 and pp.alive[latent.id].sum() == 16
    assert torch.equal(pm.alive[latent.id], pp.alive[latent.id])
    _assert_heads_equal(masked, pruned, inputs, pp.alive[latent.id])
    # the physical model really shrank, the masked one did not
    assert pruned._dynamics[0].weight.shape == (24, 16 + 2)
    assert masked._dynamics[0].weight.shape == (48, 32 + 2)
    assert pm.param_count() == pp.param_count() < pp.dense_params


def test_masks_then_finalize_equals_pruned() -> None:
    masked, pruned = _world_model(False), _world_model(False)
    inputs = example_inputs(masked)
    pm = _pruner(masked, physical=False, criterion="magnitude", sparsity=0.25, coupling="prune")
    pp = _pruner(pruned, physical=True, criterion="magnitude", sparsity=0.25, coupling="prune")
    pm.prune_to()
    pp.prune_to()
    pm.finalize()
    for (na, a), (nb, b) in zip(masked.state_dict().items(), pruned.state_dict().items()):
        assert na == nb and a.shape == b.shape, na
        assert torch.allclose(a, b, atol=TOL), na
    with torch.no_grad():
        for a, b in zip(rollout(masked, inputs), rollout(pruned, inputs)):
            assert (a - b).abs().max() <= TOL


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_mlp_with_layernorm_and_two_heads(sparsity: float) -> None:
    torch.manual_seed(3)
    masked, pruned = ResidualFree(), ResidualFree()
    _randomise(masked, 3)
    _randomise(pruned, 3)
    x = torch.randn(7, 6)
    pm = Pruner(masked, example_inputs=(x,), criterion="magnitude", sparsity=sparsity, physical=False, coupling="prune")
    pp = Pruner(pruned, example_inputs=(x,), criterion="magnitude", sparsity=sparsity, physical=True, coupling="prune")
    pm.prune_to()
    pp.prune_to()
    with torch.no_grad():
        for a, b in zip(masked(x), pruned(x)):
            assert a.shape == b.shape and (a - b).abs().max() <= TOL
    # the LayerNorm of the masked model normalised over the kept channels only
    assert pruned.trunk[1].normalized_shape == (pruned.trunk[0].out_features,)
    assert pruned.trunk[0].out_features == round(32 * (1 - sparsity))


def test_stacked_ensemble_alone() -> None:
    from tdmpc_prune import StackedEnsemble

    def member():
        return nn.Sequential(nn.Linear(5, 16), nn.LayerNorm(16), nn.Mish(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Mish(), nn.Linear(16, 3))

    torch.manual_seed(0)
    masked = nn.Sequential(nn.Linear(4, 5), StackedEnsemble.from_modules([member() for _ in range(4)]))
    pruned = nn.Sequential(nn.Linear(4, 5), StackedEnsemble.from_modules([member() for _ in range(4)]))
    pruned.load_state_dict(masked.state_dict())
    x = torch.randn(8, 4)
    for model, phys in ((masked, False), (pruned, True)):
        Pruner(model, example_inputs=(x,), criterion="random", sparsity=0.5, physical=phys, coupling="prune").prune_to()
    assert pruned[0].out_features == 2  # the ensemble's input channels are a group too
    assert pruned[1].tensor_dict()["0.weight"].shape == (4, 8, 2)
    assert pruned[1].template[1].normalized_shape == (8,)
    with torch.no_grad():
        assert (masked(x) - pruned(x)).abs().max() <= TOL
