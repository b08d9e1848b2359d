"""Bias compensation and gathering several criteria's statistics in one run."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tdmpc_prune import PruneConfigError, Pruner

WHOLE = {"model": ""}


def _saturated_mlp() -> nn.Sequential:
    """Hidden unit 0 outputs a constant (tanh(1), its input weights are 0) and has the smallest norm."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.mul_(4.0)
        model[0].weight[0] = 0.0
        model[0].bias[0] = 1.0
        model[2].weight[:, 0] = torch.tensor([0.3, -0.2])
    return model


@pytest.mark.parametrize("physical", [True, False])
def test_a_removed_constant_channel_is_folded_into_the_next_bias(physical: bool) -> None:
    x = torch.randn(64, 3)
    outputs = {}
    for compensate in (False, True):
        model = _saturated_mlp()
        dense = model(x).detach()
        pruner = Pruner(model, components=WHOLE, example_inputs=(x[:2],), criterion="magnitude", compensate=compensate, physical=physical)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        pruner.attach(opt, total_steps=10)
        model(x).pow(2).mean().backward()  # the forward also gives the compensation its mean activations
        opt.step()
        pruner.prune_to(0.25)
        assert not bool(pruner.alive["0"][0])  # the constant unit has the smallest norm
        outputs[compensate] = (model(x).detach() - dense).abs().max().item()
    assert outputs[False] > 0.1  # the unit's constant contribution tanh(1) * (0.3, -0.2) is lost
    assert outputs[True] < 1e-5  # folded into the bias: the output is unchanged


def test_observe_gathers_other_criteria_and_use_criterion_checks_them() -> None:
    model = _saturated_mlp()
    pruner = Pruner(model, components=WHOLE, example_inputs=(torch.randn(2, 3),), criterion="magnitude", observe=["all"])
    assert pruner.stats.needs == {"abs", "sq", "taylor"}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    pruner.attach(opt, total_steps=10)
    model(torch.randn(8, 3)).pow(2).mean().backward()
    opt.step()
    scores = {}
    for name in ("grad", "fisher", "bayes", "taylor", "magnitude"):
        pruner.use_criterion(name)
        scores[name] = pruner.scores()["0"]
    assert not torch.equal(scores["grad"], scores["magnitude"]) and scores["taylor"].abs().sum() > 0
    plain = Pruner(_saturated_mlp(), components=WHOLE, example_inputs=(torch.randn(2, 3),), criterion="magnitude")
    with pytest.raises(PruneConfigError, match="needs the statistics.*observe=\\['taylor'\\]"):
        plain.use_criterion("taylor")
    with pytest.raises(PruneConfigError, match="observe: unknown criterion 'fischer'"):
        Pruner(_saturated_mlp(), components=WHOLE, example_inputs=(torch.randn(2, 3),), observe=["fischer"])
