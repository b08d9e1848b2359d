"""Extension points, used from outside the package: a statistic, a criterion and a schedule."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tdmpc_prune import Criterion, PruneConfigError, Pruner, register_criterion, register_schedule, register_statistic
from tdmpc_prune.criteria import CRITERIA
from tdmpc_prune.schedule import SCHEDULES

register_statistic("cube", lambda g, w: g.abs().pow(3))


class CubicGradient(Criterion):
    """EMA of |g|^3: a statistic the package does not have."""

    name = "cubic"
    needs = frozenset({"cube"})

    def score(self, stats, generator):
        return stats.ema["cube"]


class Widest(Criterion):
    """An unregistered instance: keeps the channels with the largest outgoing weights (magnitude-like)."""

    name = "widest"

    def score(self, stats, generator):
        return stats.weight_norm()


def two_steps(start: int, end: int, iterations: int):
    """Half of the target at start, all of it at end."""
    return [(start, 0.5), (end, 1.0)]


@pytest.fixture(autouse=True)
def _registered():
    register_criterion(CubicGradient)
    register_schedule(two_steps)
    yield
    CRITERIA.pop("cubic", None)
    SCHEDULES.pop("two_steps", None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))


def test_a_new_criterion_statistic_and_schedule_through_the_pruner() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = Pruner(model, components={"model": ""}, example_inputs=(torch.randn(2, 4),), criterion="cubic",
                    schedule="two_steps", start=3, end=6, sparsity=0.5)
    assert pruner.stats.needs == {"cube"}  # only what the criterion reads is computed
    pruner.attach(opt, total_steps=10)
    widths = []
    for _ in range(8):
        x = torch.randn(32, 4)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        pruner.step()
        widths.append(model[0].out_features)
    assert widths == [16, 16, 12, 12, 12, 8, 8, 8]
    g = model[0].weight  # the kept channels are those with the largest EMA of |g|^3 at each event
    assert pruner.stats.ema["cube"].numel() == 16 and g.shape == (8, 4)
    assert pruner.config.to_dict()["criterion"] == "cubic" and pruner.config.to_dict()["schedule"] == "two_steps"


def test_an_unregistered_instance_and_function_are_accepted_and_named() -> None:
    model = _model()
    pruner = Pruner(model, components={"model": ""}, example_inputs=(torch.randn(2, 4),), criterion=Widest(), schedule=two_steps)
    pruner.prune_to(0.25)
    norms = pruner.stats.weight_norm()
    assert model[0].out_features == 12
    assert float(norms.max()) > 0 and pruner.config.to_dict()["criterion"] == "widest"
    with pytest.raises(PruneConfigError, match="unknown criterion 'cubik'.*'cubic'.*register_criterion"):
        Pruner(_model(), components={"model": ""}, example_inputs=(torch.randn(2, 4),), criterion="cubik")
    with pytest.raises(PruneConfigError, match="unknown schedule 'two_step'.*'two_steps'.*register_schedule"):
        Pruner(_model(), components={"model": ""}, example_inputs=(torch.randn(2, 4),), schedule="two_step")


def test_a_schedule_that_returns_nonsense_is_refused() -> None:
    model = _model()
    pruner = Pruner(model, components={"model": ""}, example_inputs=(torch.randn(2, 4),), schedule=lambda s, e, k: [(e, 1.0), (s, 0.5)], start=2, end=5)
    with pytest.raises(PruneConfigError, match="in time order"):
        pruner.attach(torch.optim.SGD(model.parameters(), lr=0.1), total_steps=10)


@pytest.mark.parametrize("criterion", ["cubic", Widest()])
def test_through_sb3_wrap(criterion) -> None:
    from stable_baselines3 import PPO

    from tdmpc_prune.sb3 import get_pruner, wrap

    model = wrap(PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu"),
                 criterion=criterion, schedule="two_steps", start=0.1, end=0.5, sparsity=0.5, heatmap=False)
    model.learn(256)
    pruner = get_pruner(model)
    assert pruner.criterion.name in ("cubic", "widest") and pruner.schedule.finished
    assert model.policy.mlp_extractor.policy_net[0].out_features == 32
