"""Reliability of the options and of the Pruner API: every bad value or misuse is refused up front,
with one line naming it, and the model is left untouched."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmpc_prune import PruneConfig, PruneConfigError, PruneError, Pruner
from tdmpc_prune.tdmpc2.config import ConfigError, TDMPC2Config, parse_overrides
from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout


@pytest.mark.parametrize(
    "tokens, words",
    [
        (["grad_clip_norm=-1"], "grad_clip_norm=-1.0: must be a finite number > 0"),
        (["tau=5"], "tau=5.0: must be a finite number in (0, 1]"),
        (["tau=0"], "tau=0.0: must be a finite number in (0, 1]"),
        (["seed_steps=-5"], "seed_steps=-5: must be an integer >= 0"),
        (["seed=-1"], "seed=-1: must be an integer >= 0"),
        (["threads=0"], "threads=0: must be an integer >= 1"),
        (["lr=-1"], "lr=-1.0: must be a finite number > 0"),
        (["lr=inf"], "lr=inf: must be a finite number > 0"),
        (["lr=nan"], "lr=nan: must be a finite number > 0"),
        (["consistency_coef=-inf"], "consistency_coef=-inf: must be a finite number >= 0"),
        (["min_std=3"], "min_std=3.0 and max_std=2.0: min_std must be <= max_std"),
        (["discount_min=0.999"], "discount_min=0.999 and discount_max=0.995: discount_min must be <= discount_max"),
        (["discount_max=1.5"], "discount_max=1.5: must be a finite number in [0, 1]"),
        (["log_std_min=3"], "log_std_min=3.0 and log_std_max=2.0: log_std_min must be < log_std_max"),
        (["buffer_size=100"], "buffer_size=100 cannot hold one episode (500 steps + its first observation); give buffer_size >= 501"),
        (["episode_length=2"], "episode_length=2 is shorter than the planning horizon=3"),
        (["dropout=1"], "dropout=1.0: must be a finite number in [0, 1)"),
        (["temperature=0"], "temperature=0.0: must be a finite number > 0"),
        (["exp_name=a/b"], "exp_name='a/b': a run name is one directory name"),
        (["exp_name="], "exp_name='': must not be empty"),
        (["device=cuda:x"], "device='cuda:x': choose auto, cpu, cuda or cuda:<index>"),
        (["num_pi_trajs=-1"], "num_pi_trajs=-1: must be an integer >= 0"),
    ],
)
def test_every_agent_option_is_checked_before_anything_is_built(tokens, words):
    with pytest.raises(ConfigError) as e:
        parse_overrides(tokens)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_agent_option_types_come_from_the_annotations():
    with pytest.raises(ConfigError, match="steps=True: expected an integer, got bool; e.g. steps=100000"):
        TDMPC2Config(steps=True)
    with pytest.raises(ConfigError, match=r"enc_dims=\(3, 'a'\): expected a list of integers \(or none\)"):
        TDMPC2Config(enc_dims=(3, "a"))
    with pytest.raises(ConfigError, match="lr='fast': expected a number"):
        TDMPC2Config(lr="fast")
    TDMPC2Config(lr=1, seed_steps=0, threads=1, min_std=2.0)  # ints are numbers; the bounds are inclusive


@pytest.mark.parametrize(
    "options, words",
    [
        (dict(prior_strength=math.inf), "prior_strength=inf: must be a finite number > 0"),
        (dict(prior_strength=0.0), "prior_strength=0.0: must be a finite number > 0"),
        (dict(l1=math.inf), "l1=inf: must be a finite number >= 0"),
        (dict(l1=math.nan), "l1=nan: must be a finite number >= 0"),
        (dict(ema=math.nan), "ema=nan: must be a finite number in [0, 1)"),
        (dict(sparsity=math.nan), "sparsity must be a fraction in [0, 1), got nan"),
        (dict(seed=-1), "seed=-1: must be an integer >= 0"),
        (dict(start=100, end=10), "end (10) comes before start (100)"),
        (dict(start=0.6, end=0.2), "end (0.2) comes before start (0.6)"),
        (dict(physical="yes"), "physical='yes': expected a boolean"),
        (dict(iterations=2.5), "iterations=2.5: expected an integer"),
        (dict(exclude=[1]), "exclude=(1,): expected a list of strings"),
        (dict(budgets={"Q": "x"}), "budgets={'Q': 'x'}: expected a mapping of strings to numbers"),
        (dict(criterion=3), "criterion=3: expected a string"),
    ],
)
def test_every_prune_option_is_checked(options, words):
    with pytest.raises(PruneConfigError) as e:
        PruneConfig(**options)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_sb3_callback_options_are_checked():
    from tdmpc_prune.sb3 import PruningCallback

    for kwargs, words in [(dict(log_freq=0), "log_freq=0: must be an integer >= 1"),
                          (dict(log_freq=1.5), "log_freq=1.5: must be an integer"),
                          (dict(total_timesteps=-3), "total_timesteps=-3: must be an integer >= 1"),
                          (dict(heatmap="no"), "heatmap='no': expected a boolean"),
                          (dict(verbose=-1), "verbose=-1: must be an integer >= 0"),
                          (dict(l1=math.inf), "l1=inf")]:
        with pytest.raises(PruneConfigError, match=words.replace("(", r"\(")):
            PruningCallback(**kwargs)


# ------------------------------------------------------------------------------------ the Pruner API
class TiedAutoencoder(nn.Module):
    """A decoder that reads the encoder's weight transposed: enc.weight is used in two roles."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.enc(x))))
        return F.linear(h, self.enc.weight.t()), self.head(h)


def _snapshot(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_tied_weight_is_refused_before_anything_changes():
    model = TiedAutoencoder()
    before = _snapshot(model)
    comps = {"enc": "enc", "mid": "mid", "head": "head"}
    with pytest.raises(PruneError) as e:
        Pruner(model, components=comps, example_inputs=(torch.randn(4, 6),), coupling="prune", sparsity=0.5)
    msg = str(e.value)
    assert "group 'enc'" in msg and "cannot be pruned consistently" in msg and "exclude=['enc']" in msg and "\n" not in msg
    after = _snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert model.enc.out_features == 16 and model(torch.randn(2, 6))[0].shape == (2, 6)  # still runs, untouched
    # the fixes the message gives work: protect the coupling group, or exclude it
    Pruner(model, components=comps, example_inputs=(torch.randn(4, 6),), coupling="protect").prune_to()
    model = TiedAutoencoder()
    Pruner(model, components=comps, example_inputs=(torch.randn(4, 6),), coupling="prune", exclude=["enc"]).prune_to()
    assert model.head[0].out_features == 6 and model.enc.out_features == 16


def test_the_trial_leaves_the_world_model_exactly_as_it_was():
    model = LatentWorldModel()
    before = _snapshot(model)
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, coupling="prune")
    after = _snapshot(model)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(d.kept.numel() == d.tensor.shape[d.dim] for d in pruner.surgeon.dims.values())
    pruner.prune_to(0.25)  # and real pruning still works after the trial
    rollout(model, example_inputs(model))


def test_attach_with_an_optimizer_of_another_model():
    model = LatentWorldModel()
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout)
    other = torch.optim.Adam(LatentWorldModel().parameters())
    with pytest.raises(PruneError, match=r"optimizer 1 \(Adam\) holds none of the model's parameters"):
        pruner.attach([torch.optim.Adam(model.parameters()), other], total_steps=10)
    with pytest.raises(PruneError, match="takes torch optimizers; item 0 is a list"):
        pruner.attach([[other]], total_steps=10)


def test_physical_pruning_refuses_an_optimizer_it_was_never_given():
    model = LatentWorldModel()
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, sparsity=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = sum(o.float().pow(2).mean() for o in rollout(model, example_inputs(model)))
    loss.backward()
    opt.step()  # Adam now holds exp_avg of the full shapes
    before = _snapshot(model)
    with pytest.raises(PruneError, match=r"not attached to \(Adam\) holds state for \d+ tensor\(s\).*pruner.attach"):
        pruner.prune_to()
    assert all(torch.equal(v, before[k]) for k, v in _snapshot(model).items()) and not pruner.history
    pruner.prune_to(physical=False)  # masks do not change shapes: allowed
    pruner.attach(opt, total_steps=10)
    pruner.prune_to()  # once attached, its state is sliced along
    opt.step()


def test_a_misspelt_exclude_is_an_error_with_suggestions():
    model = LatentWorldModel()
    with pytest.raises(PruneError, match=r"exclude entry '_dynamic\.0' matches no module of the model\. Did you mean '_dynamics\.0'"):
        Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, exclude=["_dynamic.0"])
    Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, exclude=["_dynamics"])
