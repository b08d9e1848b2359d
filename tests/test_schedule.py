"""Schedules, the cosine pressure and the clock."""
from __future__ import annotations

import math

import pytest

import torch
import torch.nn as nn

from tdmpc_prune import PruneConfig, Pruner
from tdmpc_prune.regularize import cosine_lambda
from tdmpc_prune.schedule import Schedule


def test_oneshot_iterative_gradual_events() -> None:
    assert Schedule.from_config(PruneConfig(schedule="oneshot", start=0.5), 100).events == [(50, 1.0)]
    it = Schedule.from_config(PruneConfig(schedule="iterative", start=10, end=40, iterations=4), None).events
    assert it == [(10, 0.25), (20, 0.5), (30, 0.75), (40, 1.0)]
    gr = Schedule.from_config(PruneConfig(schedule="gradual", start=0.0, end=1.0, iterations=4), 30).events
    assert [t for t, _ in gr] == [0, 10, 20, 30]
    assert [round(f, 6) for _, f in gr] == [round(1 - (1 - j / 4) ** 3, 6) for j in range(1, 5)]


def test_clock_that_jumps_fires_the_latest_event_once() -> None:
    s = Schedule.from_config(PruneConfig(schedule="iterative", start=10, end=40, iterations=4), None)
    assert s.due(5) is None
    assert s.due(25) == 0.5 and s.done == 2
    assert s.due(26) is None
    assert s.due(1000) == 1.0 and s.finished


def test_cosine_pressure_phases() -> None:
    T, n, lam = 100.0, 4, 2.0
    for i in range(n):
        # each group peaks half a period after its phase offset i*T/n
        peak_t = T / 2 - i * T / n
        assert math.isclose(cosine_lambda(peak_t, i, n, T, lam), lam)
        assert math.isclose(cosine_lambda(-i * T / n, i, n, T, lam), 0.0, abs_tol=1e-12)
    assert math.isclose(cosine_lambda(17.0, 1, n, T, lam), lam * (1 - math.cos(2 * math.pi * (17 + 25) / T)) / 2)


def _channel_norms(model: nn.Module) -> torch.Tensor:
    w0, b0, w2 = model[0].weight, model[0].bias, model[2].weight
    return torch.sqrt((w0**2).sum(1) + b0**2 + (w2**2).sum(0))


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.SGD(p, lr=0.0), lambda p: torch.optim.Adam(p, lr=1e-3)])
def test_group_lasso_is_a_proximal_shrink_after_the_step_whatever_the_optimizer(make_opt) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = Pruner(model, components={"model": ""}, example_inputs=(torch.randn(2, 3),), l1=0.5, l1_period=8, criterion="grad",
                    every_n_updates=1)
    opt = make_opt(model.parameters())
    pruner.attach(opt, total_steps=100)
    pruner.clock = 3
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    norm = _channel_norms(model).detach()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no task gradient: Adam and SGD leave the weights alone
    opt.step()
    lam = cosine_lambda(3, 0, 1, 8, 0.5)
    factor = (1 - lam / norm).clamp_min(0)
    assert bool((factor > 0).all() and (factor < 1).all())
    assert torch.allclose(model[0].weight, before["0.weight"] * factor[:, None], atol=1e-6)
    assert torch.allclose(model[0].bias, before["0.bias"] * factor, atol=1e-6)
    assert torch.allclose(model[2].weight, before["2.weight"] * factor[None, :], atol=1e-6)
    assert torch.allclose(_channel_norms(model), norm - lam, atol=1e-5)  # each channel's norm fell by lambda(t)
    assert torch.equal(model[2].bias, before["2.bias"])  # the output bias belongs to no group
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())  # .grad is left alone
    # the statistics saw the task gradient (zero), not the penalty
    pruner.stats.commit()
    assert torch.all(pruner.stats.ema_abs == 0)


def test_group_lasso_on_every_nth_update_shrinks_by_n_lambda() -> None:
    """every_n_updates=2: updates 1 and 3 shrink each norm by 2 lambda(t), 2 and 4 leave the weights alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    pruner = Pruner(model, components={"model": ""}, example_inputs=(torch.randn(2, 3),), l1=0.05, l1_period=8, criterion="grad",
                    every_n_updates=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.attach(opt, total_steps=100)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    norms = [_channel_norms(model).detach()]
    for t in (3, 3, 4, 4):
        pruner.clock = t
        opt.step()
        norms.append(_channel_norms(model).detach())
    lam = lambda t: cosine_lambda(t, 0, 1, 8, 0.05)  # noqa: E731
    assert torch.allclose(norms[1], norms[0] - 2 * lam(3), atol=1e-6)
    assert torch.allclose(norms[3], norms[2] - 2 * lam(4), atol=1e-6)
    assert torch.equal(norms[2], norms[1]) and torch.equal(norms[4], norms[3])


def test_group_lasso_zeroes_a_small_channel_and_stops_after_the_last_event() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[1] *= 1e-3
        model[0].bias[1] *= 1e-3
        model[2].weight[:, 1] *= 1e-3
    pruner = Pruner(
        model, components={"model": ""}, example_inputs=(torch.randn(2, 3),), l1=0.5, l1_period=8, criterion="grad",
        schedule="oneshot", start=5, sparsity=0.25, every_n_updates=1,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.attach(opt, total_steps=100)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.clock = 3
    opt.step()
    assert _channel_norms(model)[1] == 0  # prox of a norm below lambda is exactly zero
    for t in range(4, 7):
        opt.step()
        pruner.step(t)  # the one-shot event fires at 5
    assert model[0].out_features == 3
    frozen = {k: p.detach().clone() for k, p in model.named_parameters()}
    pruner.clock = 7
    opt.step()
    assert all(torch.equal(p, frozen[k]) for k, p in model.named_parameters())  # no pressure once pruning is done


def test_pressure_off_by_default_and_budget_schedule_through_step() -> None:
    from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout

    torch.manual_seed(0)
    model = LatentWorldModel()
    inputs = example_inputs(model)
    pruner = Pruner(
        model, components=COMPONENTS, example_inputs=inputs, forward_fn=rollout,
        schedule="iterative", start=2, end=4, iterations=2, sparsity=0.5, budgets={"Q": 0.25}, every_n_updates=1,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner.attach(opt, total_steps=10)
    widths = []
    for _ in range(6):
        sum(o.pow(2).mean() for o in rollout(model, inputs)).backward()
        opt.step()
        opt.zero_grad()
        pruner.step()
        widths.append((model._dynamics[0].out_features, model._Qs.tensor_dict()["0.weight"].shape[1]))
    assert widths == [(48, 48), (36, 42), (36, 42), (24, 36), (24, 36), (24, 36)]
    assert pruner.lasso.lam_max == 0


def test_each_pressured_group_gets_its_own_phase_and_l1_zero_leaves_gradients_alone() -> None:
    from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout

    torch.manual_seed(0)
    T, lam_max = 40, 0.3
    model = LatentWorldModel()
    inputs = example_inputs(model)
    pruner = Pruner(model, components=COMPONENTS, example_inputs=inputs, forward_fn=rollout, l1=lam_max, l1_period=T, every_n_updates=1)
    pruner.attach(torch.optim.SGD(model.parameters(), lr=0.0), total_steps=100)
    pressured = pruner.lasso.pressured
    # coupling groups are protected by default, so they get no pressure; every component group does
    assert pressured == [g.id for g in pruner.groups if g.kind == "component"] and len(pressured) >= 8
    n = len(pressured)
    for t in (0, 7, 23):
        lams = pruner.lasso.lambdas(t)
        for i, gid in enumerate(pressured):
            assert math.isclose(lams[gid], lam_max * (1 - math.cos(2 * math.pi * (t + i * T / n) / T)) / 2)
        assert len({round(v, 12) for v in lams.values()}) > n // 2  # the groups are out of phase
    # group i peaks at t = T/2 - i*T/n (mod T): a different step for each group
    peaks = {gid: max(range(T), key=lambda t: pruner.lasso.lambdas(t)[gid]) for gid in pressured}
    assert len(set(peaks.values())) == n

    # the shrink after the optimizer step has each group's own lambda: the pi hidden bias belongs to
    # one group only, so it is scaled by max(0, 1 - lambda_i(t) / ||channel||)
    t, gid = 11, "_pi.0"
    i = pressured.index(gid)
    assert i > 0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.clock = t
    off, width = pruner.stats.offsets[gid], pruner._by_id[gid].channels
    norm = pruner.stats.weight_norm({gid})[off : off + width]
    bias = model._pi[0].bias.detach().clone()
    pruner.optimizers[0].step()
    lam = cosine_lambda(t, i, n, T, lam_max)
    assert torch.allclose(model._pi[0].bias, bias * (1 - lam / norm).clamp_min(0), rtol=1e-5, atol=1e-9)
    assert not torch.equal(model._pi[0].bias, bias)

    # l1 = 0 (the default): the optimizer steps on exactly the task gradient
    plain = LatentWorldModel()
    plain.load_state_dict(model.state_dict())
    pruned_opt = torch.optim.SGD(plain.parameters(), lr=0.0)
    Pruner(plain, components=COMPONENTS, example_inputs=inputs, forward_fn=rollout).attach(pruned_opt, total_steps=100)
    sum(o.pow(2).mean() for o in rollout(plain, inputs)).backward()
    before = {k: p.grad.clone() for k, p in plain.named_parameters() if p.grad is not None}
    pruned_opt.step()
    assert before and all(torch.equal(p.grad, before[k]) for k, p in plain.named_parameters() if k in before)
