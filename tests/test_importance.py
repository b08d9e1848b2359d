"""Every criterion, the EMA and the Gamma posterior checked against hand-computed gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from tdmpc_prune import Pruner
from tdmpc_prune.importance import CRITERIA

WHOLE = {"model": ""}  # one component: a plain Sequential's hidden widths are component groups


def _setup(criterion: str, ema: float = 0.9, prior_strength: float = 1.0, posterior_decay: float = 1.0, **options):
    """Every update observed (every_n_updates=1) unless given: the tests feed hand-made gradients step by step."""
    options.setdefault("every_n_updates", 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    pruner = Pruner(
        model, components=WHOLE, example_inputs=(torch.randn(4, 2),), criterion=criterion, ema=ema, prior_strength=prior_strength,
        posterior_decay=posterior_decay, **options,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.attach(opt, total_steps=100)
    return model, pruner, opt


def _grads(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, generator=g), torch.randn(3, generator=g), torch.randn(1, 3, generator=g), torch.randn(1, generator=g)


def _step(model, opt, grads) -> None:
    w0, b0, w2, b2 = grads
    model[0].weight.grad, model[0].bias.grad = w0.clone(), b0.clone()
    model[2].weight.grad, model[2].bias.grad = w2.clone(), b2.clone()
    opt.step()


def _per_channel(fn, grads, model=None):
    """fn applied entry-wise, averaged over the 4 entries each hidden channel owns."""
    w0, b0, w2, _ = grads
    return (fn(w0).sum(1) + fn(b0) + fn(w2)[0]) / 4.0


def test_group_found_with_coupled_tensors() -> None:
    _, pruner, _ = _setup("grad")
    assert [g.id for g in pruner.groups] == ["0"]  # the output layer reaches the output
    members = {m.name: m.dim for m in pruner.groups[0].members}
    assert members == {"0.weight": 0, "0.bias": 0, "2.weight": 1}
    assert torch.equal(pruner.stats.count, torch.full((3,), 4.0))


def test_grad_and_fisher_ema() -> None:
    model, pruner, opt = _setup("combined")  # gathers both |g| and g^2
    g1, g2 = _grads(1), _grads(2)
    _step(model, opt, g1)
    _step(model, opt, g2)
    a1, a2 = _per_channel(torch.abs, g1), _per_channel(torch.abs, g2)
    f1, f2 = _per_channel(torch.square, g1), _per_channel(torch.square, g2)
    pruner.criterion = CRITERIA["grad"]
    assert torch.allclose(pruner.scores()["0"], 0.9 * a1 + 0.1 * a2, rtol=1e-6)
    assert torch.allclose(pruner.stats.ema_sq, 0.9 * f1 + 0.1 * f2, rtol=1e-6)
    pruner.criterion = CRITERIA["fisher"]
    assert torch.allclose(pruner.scores()["0"], 0.9 * f1 + 0.1 * f2, rtol=1e-6)


@pytest.mark.parametrize("gamma,beta0,rho", [(0.9, 1.0, 1.0), (0.5, 3.0, 1.0), (0.9, 1.0, 0.8)])
def test_bayes_posterior_update_and_score(gamma: float, beta0: float, rho: float) -> None:
    model, pruner, opt = _setup("bayes", ema=gamma, prior_strength=beta0, posterior_decay=rho)
    gs = [_grads(s) for s in (1, 2, 3)]
    for g in gs:
        _step(model, opt, g)
    f = [_per_channel(torch.square, g) for g in gs]
    alpha0 = beta0 * f[0].mean()  # empirical-Bayes prior from the first observed step
    S = rho * (rho * f[0] + f[1]) + f[2]  # the posterior forgets by its own rho (1: whole history), not gamma
    N = rho * (rho * 1 + 1) + 1
    mu = (alpha0 + S) / (beta0 + N)
    ema_f = gamma * (gamma * f[0] + (1 - gamma) * f[1]) + (1 - gamma) * f[2]
    post = (pruner.scores(), pruner.stats.posterior())[1]
    assert torch.allclose(post["mean"], mu, rtol=1e-5)
    assert torch.allclose(post["var"], (alpha0 + S) / (beta0 + N) ** 2, rtol=1e-5)
    # both factors in units of the group's mean: historical activity x current sensitivity
    expected = torch.log1p(mu / mu.mean()) * (1 + ema_f / ema_f.mean())
    assert torch.allclose(pruner.scores()["0"], expected, rtol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_every_n_updates_observes_every_nth_gradient(n: int) -> None:
    """every_n_updates=n sees updates 1, 1 + n, 1 + 2n, ... with gamma and rho per observation: the same
    statistics as observing every update of a run fed only those gradients."""
    gamma, rho = 0.9, 0.8
    model, sparse, opt = _setup("bayes", ema=gamma, posterior_decay=rho, every_n_updates=n, observe=["all"])
    model_b, every, opt_b = _setup("bayes", ema=gamma, posterior_decay=rho, observe=["all"])
    for seed in range(1, 3 * n + 1):
        _step(model, opt, _grads(seed))
        if (seed - 1) % n == 0:
            _step(model_b, opt_b, _grads(seed))
    assert sparse.updates == 3 * n and every.updates == 3
    got, want = sparse.stats.state_dict(), every.stats.state_dict()
    assert set(got) == set(want) and float(got["n_obs"]) == 3.0
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-12), k
    for name in ("grad", "fisher", "bayes", "taylor"):
        sparse.criterion = every.criterion = CRITERIA[name]
        assert torch.allclose(sparse.scores()["0"], every.scores()["0"], rtol=1e-5), name


def _rank_after(criterion: str, schedule) -> list:
    """Channel order (least important first) after feeding per-channel gradient energies."""
    model, pruner, opt = _setup(criterion)
    for energies in schedule:
        w0, b0, w2, b2 = (torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 3), torch.zeros(1))
        b0 += torch.tensor(energies).sqrt() * 2.0  # f_c = b0_c^2 / 4
        _step(model, opt, (w0, b0, w2, b2))
    return torch.argsort(pruner.scores()["0"]).tolist()


def test_bayes_keeps_a_channel_active_early_and_silent_now_that_fisher_drops() -> None:
    """Channel 0: very active for 40 steps, then silent for 30; channel 1: steady; channel 2: weak.

    fisher (an EMA with gamma=0.9) has forgotten channel 0 after 30 silent steps (0.9^30 < 0.1) and ranks it below the
    steady channel; the Gamma posterior remembers the whole history and bayes ranks it above."""
    history = [[1.0, 0.1, 0.01]] * 40 + [[0.0, 0.1, 0.01]] * 30
    assert _rank_after("fisher", history) == [2, 0, 1]
    assert _rank_after("bayes", history) == [2, 1, 0]
    # a channel silent throughout stays last under both, and a steady history ranks alike
    steady = [[0.0, 0.1, 0.01]] * 30
    assert _rank_after("fisher", steady)[0] == _rank_after("bayes", steady)[0] == 0


def test_taylor_and_magnitude() -> None:
    model, pruner, opt = _setup("taylor")
    g1 = _grads(4)
    _step(model, opt, g1)
    w0, b0, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    tau = ((w0 * g1[0]).abs().sum(1) + (b0 * g1[1]).abs() + (w2 * g1[2]).abs()[0]) / 4
    assert torch.allclose(pruner.scores()["0"], tau, rtol=1e-6)
    pruner.criterion = CRITERIA["magnitude"]
    norm = torch.sqrt((w0**2).sum(1) + b0**2 + (w2**2)[0])
    assert torch.allclose(pruner.scores()["0"], norm, rtol=1e-6)


def test_combined_is_mean_of_within_group_ranks() -> None:
    model, pruner, opt = _setup("combined")
    for s in (5, 6):
        _step(model, opt, _grads(s))
    pruner.stats.commit()
    ranks = []
    for name in ("grad", "fisher", "bayes"):
        x = CRITERIA[name].score(pruner.stats, torch.Generator())
        r = torch.empty(3)
        r[torch.argsort(x)] = torch.arange(3.0)
        ranks.append(r / 2)
    assert torch.allclose(pruner.scores()["0"], torch.stack(ranks).mean(0))


def test_random_is_seeded() -> None:
    _, p1, _ = _setup("random")
    _, p2, _ = _setup("random")
    assert torch.equal(p1.scores()["0"], p2.scores()["0"])


@pytest.mark.parametrize("branch_on_host", [True, False], ids=["host-branch", "device-path"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradients_are_skipped_and_counted(bad: float, branch_on_host: bool) -> None:
    model, pruner, opt = _setup("combined")
    pruner.stats.branch_on_host = branch_on_host  # CPU takes the host branch; CUDA's sync-free path runs here too
    g1 = _grads(1)
    _step(model, opt, g1)
    poisoned = list(_grads(2))
    poisoned[0][1, 0] = bad
    _step(model, opt, poisoned)
    _step(model, opt, g1)  # commits the poisoned step
    pruner.stats.commit()
    assert int(pruner.stats.skipped) == 1 and int(pruner.stats.n_obs) == 2
    a1 = _per_channel(torch.abs, g1)
    assert torch.allclose(pruner.stats.ema_abs, a1, rtol=1e-6)  # EMA of two identical clean steps
    assert all(math.isfinite(v) for v in pruner.scores()["0"].tolist())
    assert pruner.metrics(with_flops=False)["skipped_steps"] == 1.0


def test_host_branch_and_device_path_of_commit_agree() -> None:
    """The CPU's host-branched commit and the sync-free device path give the same statistics,
    through a first step, a poisoned step and a forgetting posterior."""
    states = []
    for on_host in (True, False):
        model, pruner, opt = _setup("bayes", posterior_decay=0.7, observe=["grad"])  # (taylor would read the poisoned weights)
        pruner.stats.branch_on_host = on_host
        for seed in range(1, 6):
            g = list(_grads(seed))
            if seed == 3:
                g[1][0] = float("nan")
            _step(model, opt, g)
        states.append(pruner.stats.state_dict())
    assert float(states[0]["skipped"]) == 1.0 and float(states[0]["n_obs"]) == 4.0
    for k in states[1]:
        assert torch.allclose(states[0][k], states[1][k], rtol=1e-6, atol=0), k


def test_statistics_are_per_channel_not_per_parameter() -> None:
    big = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 4))
    pruner = Pruner(big, components=WHOLE, example_inputs=(torch.randn(2, 64),), criterion="bayes")
    param_bytes = sum(p.numel() * p.element_size() for p in big.parameters())
    assert pruner.stats.stats_bytes() < 0.05 * param_bytes


@pytest.mark.parametrize("criterion,needs", [("grad", {"abs"}), ("bayes", {"sq"}), ("magnitude", set()), ("taylor", {"taylor"})])
def test_only_the_statistics_a_criterion_reads_are_gathered(criterion: str, needs: set) -> None:
    model, pruner, opt = _setup(criterion)
    _step(model, opt, _grads(1))
    pruner.stats.commit()
    assert (pruner.stats.ema_abs.abs().sum() > 0) == ("abs" in needs)
    assert (pruner.stats.ema_sq.abs().sum() > 0) == ("sq" in needs)
    assert pruner.stats.track_taylor == ("taylor" in needs)


def test_ties_are_broken_by_fisher_then_a_seeded_draw_never_by_index() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():  # every hidden channel has the same norm: magnitude ties everywhere
        for p in model.parameters():
            p.fill_(0.5)
    pruner = Pruner(model, components=WHOLE, example_inputs=(torch.randn(4, 2),), criterion="magnitude", physical=False,
                    every_n_updates=1)
    pruner.stats.needs = {"abs", "sq"}  # the fisher key is gathered here (bayes/fisher/grad gather it themselves)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.attach(opt, total_steps=10)
    energy = torch.tensor([5.0, 1.0, 7.0, 0.5, 3.0, 8.0, 2.0, 6.0])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[0].bias.grad = energy.sqrt()
    opt.step()
    pruner.prune_to(0.5)
    assert sorted(torch.nonzero(~pruner.alive["0"]).squeeze(1).tolist()) == [1, 3, 4, 6]  # the 4 lowest fisher
    # no statistics at all: a seeded draw decides, not the channel index
    removed = []
    for seed in range(3):
        fresh = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
        p = Pruner(fresh, components=WHOLE, example_inputs=(torch.randn(4, 2),), criterion="fisher", seed=seed, physical=False)
        with pytest.warns(UserWarning, match="observed no optimizer step"):
            p.prune_to(0.5)
        removed.append(sorted(torch.nonzero(~p.alive["0"]).squeeze(1).tolist()))
    assert [0, 1, 2, 3] not in removed and len({tuple(r) for r in removed}) > 1
