"""Bad input gets one clear error that names the problem and the fix."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tdmpc_prune import PruneConfig, PruneConfigError, PruneError, Pruner
from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout


WHOLE = {"model": ""}  # one component: a plain Sequential's hidden widths become component groups


def _mlp():
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "half"])
def test_sparsity_outside_unit_interval(value) -> None:
    with pytest.raises(PruneConfigError, match=r"sparsity must be a fraction in \[0, 1\)"):
        PruneConfig(sparsity=value)
    pruner = Pruner(_mlp(), components=WHOLE, example_inputs=(torch.randn(2, 3),))
    with pytest.raises(PruneConfigError, match="sparsity"):
        pruner.prune_to(value)


def test_unknown_criterion_and_schedule_suggest_names() -> None:
    with pytest.raises(PruneConfigError, match="unknown criterion 'fischer'.*Did you mean 'fisher'"):
        PruneConfig(criterion="fischer")
    with pytest.raises(PruneConfigError, match="unknown schedule 'gradul'.*'gradual'"):
        PruneConfig(schedule="gradul")
    with pytest.raises(PruneConfigError, match="unknown prune option 'prune.sparsty'.*'sparsity'"):
        PruneConfig.from_overrides(["prune.sparsty=0.5"])
    with pytest.raises(PruneConfigError, match=r"prune.physical=.maybe.: expected a boolean \(true or false"):
        PruneConfig.from_overrides(["prune.physical=maybe"])


def test_overrides_parse_types() -> None:
    cfg = PruneConfig.from_overrides(
        ["prune.sparsity=0.75", "prune.start=1000", "prune.end=0.9", "prune.physical=false", "prune.budgets.dynamics=0.3", "prune.exclude=[a,b]"]
    )
    assert cfg.sparsity == 0.75 and cfg.start == 1000 and isinstance(cfg.start, int) and cfg.end == 0.9
    assert cfg.physical is False and cfg.budgets == {"dynamics": 0.3} and tuple(cfg.exclude) == ("a", "b")


def test_component_that_matches_no_module() -> None:
    model = LatentWorldModel()
    with pytest.raises(PruneError, match="'_dynamic' matches no module.*_dynamics"):
        Pruner(model, components={"dynamics": "_dynamic"}, example_inputs=example_inputs(model), forward_fn=rollout)


def test_model_with_no_prunable_group() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(PruneError, match="no prunable group"):
        Pruner(model, components=WHOLE, example_inputs=(torch.randn(2, 3),))
    with pytest.raises(PruneError, match="example_inputs"):
        Pruner(_mlp())


def test_budget_that_would_remove_a_whole_layer() -> None:
    with pytest.raises(PruneConfigError, match="whole layer"):
        PruneConfig(budgets={"dynamics": 1.0})
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with pytest.raises(PruneError, match="would remove all 2 channels.*whole layer"):
        Pruner(model, components=WHOLE, example_inputs=(torch.randn(2, 3),), sparsity=0.8)  # up front, not at the first event
    pruner = Pruner(model, components=WHOLE, example_inputs=(torch.randn(2, 3),), sparsity=0.2)
    with pytest.raises(PruneError, match="would remove all 2 channels.*whole layer"):
        pruner.prune_to(0.8)
    assert model[0].out_features == 2  # nothing was touched
    # a budget below 1 that still rounds to the whole (narrow) layer of one component
    wm = LatentWorldModel(hidden=3)
    with pytest.raises(PruneError, match="would remove all 3 channels of group '_dynamics.*dynamics.*budget"):
        Pruner(wm, components=COMPONENTS, example_inputs=example_inputs(wm), forward_fn=rollout, sparsity=0.1, budgets={"dynamics": 0.9})


def test_latent_below_one_simplex() -> None:
    model = LatentWorldModel(latent=16)
    with pytest.raises(PruneError, match="simplices of 8 \\(the latent cannot go below one simplex\\)"):
        Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, coupling="prune", coupling_sparsity=0.8, sparsity=0.1)


def test_latent_not_a_multiple_of_the_simplex() -> None:
    with pytest.raises(PruneError, match="multiple of 8"):
        model = LatentWorldModel(latent=20)
        Pruner(model, example_inputs=example_inputs(model), forward_fn=rollout)


def test_unknown_budget_component_and_bad_steps() -> None:
    model = LatentWorldModel()
    with pytest.raises(PruneConfigError, match="budget for unknown component 'dyn'.*dynamics"):
        Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, budgets={"dyn": 0.3})
    with pytest.raises(PruneConfigError, match="fraction of the run"):
        PruneConfig(start=1.5)
    pruner = Pruner(_mlp(), components=WHOLE, example_inputs=(torch.randn(2, 3),), start=0.1)
    with pytest.raises(PruneConfigError, match="total_steps"):
        pruner.step()
    with pytest.raises(PruneConfigError, match="end .* comes before start"):
        Pruner(_mlp(), components=WHOLE, example_inputs=(torch.randn(2, 3),), start=50, end=10).attach(torch.optim.SGD(_mlp().parameters(), lr=0.1))


def test_mirror_after_pruning_and_mismatched_mirror() -> None:
    model = LatentWorldModel()
    pruner = Pruner(model, example_inputs=example_inputs(model), forward_fn=rollout)
    with pytest.raises(PruneError, match="structure"):
        pruner.add_mirror(model._Qs, model._pi)
    pruner.prune_to()
    with pytest.raises(PruneError, match="before the first pruning event"):
        pruner.add_mirror(model._Qs, model._target_Qs)


def test_default_components_protect_everything_of_a_plain_sequential() -> None:
    """Default components are the top-level children: an nn.Sequential's widths are all coupling groups."""
    with pytest.raises(PruneConfigError, match="nothing can be pruned.*components=.*coupling='prune'"):
        Pruner(_mlp(), example_inputs=(torch.randn(2, 3),))
    pruner = Pruner(_mlp(), example_inputs=(torch.randn(2, 3),), coupling="prune")
    assert [(g.kind, g.components) for g in pruner.groups] == [("coupling", ("0", "2"))]


def test_a_scheduled_event_before_training_begins_is_refused_at_attach() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = Pruner(model, components=WHOLE, example_inputs=(torch.randn(2, 3),), criterion="fisher", schedule="oneshot", start=50)
    with pytest.raises(PruneConfigError, match="step 50 comes before training updates begin \\(first_step=100\\)"):
        pruner.attach(opt, total_steps=1000, first_step=100)
    pruner.attach(opt, total_steps=1000, first_step=40)  # after the first update: fine
    # magnitude needs no gradient, so pruning at initialisation is allowed
    Pruner(model, components=WHOLE, example_inputs=(torch.randn(2, 3),), criterion="magnitude", schedule="oneshot", start=0).attach(
        opt, total_steps=1000, first_step=100
    )
    # an event reached with no optimizer step observed is an error, not a removal of arbitrary channels
    other = _mlp()
    fresh = Pruner(other, components=WHOLE, example_inputs=(torch.randn(2, 3),), criterion="fisher", schedule="oneshot", start=3)
    fresh.attach(torch.optim.SGD(other.parameters(), lr=0.1), total_steps=10)
    with pytest.raises(PruneError, match="before any optimizer step was observed"):
        fresh.step(5)
