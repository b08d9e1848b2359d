"""Group discovery on a TD-MPC2-shaped model: kinds, components, protected outputs, simplices."""
from __future__ import annotations

import torch

from tdmpc_prune import Pruner
from toy_models import COMPONENTS, LatentWorldModel, example_inputs, rollout


def test_latent_is_one_coupling_group_over_every_reader() -> None:
    model = LatentWorldModel(official_ensemble=True)
    model.train()
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout)
    assert model.training and model._Qs.module[0].dropout.training  # train mode restored after tracing
    coupling = [g for g in pruner.groups if g.kind == "coupling"]
    assert len(coupling) == 1
    latent = coupling[0]
    assert latent.components == ("encoder", "dynamics", "reward", "policy", "Q")
    assert latent.channels == 32 and latent.unit == 8 and latent.units == 4
    names = {m.name: m.dim for m in latent.members}
    # written by the encoder and by the dynamics (the 2-step rollout feeds it back) ...
    assert names["_encoder.state.1.weight"] == 0 and names["_dynamics.2.weight"] == 0
    # ... and read (latent columns only, not the action columns) by dynamics, reward, policy and every Q member
    assert names["_dynamics.0.weight"] == 1 and names["_reward.0.weight"] == 1 and names["_pi.0.weight"] == 1
    assert names["_Qs.0.weight"] == 2  # stacked: (member, out, in)
    q_in = next(m for m in latent.members if m.name == "_Qs.0.weight")
    assert q_in.pos.tolist() == list(range(32))


def test_component_groups_and_protected_outputs() -> None:
    model = LatentWorldModel()
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout)
    comp = {g.id: g.components for g in pruner.groups if g.kind == "component"}
    assert comp == {
        "_encoder.state.0": ("encoder",),
        "_dynamics.0": ("dynamics",),
        "_dynamics.1": ("dynamics",),
        "_reward.0": ("reward",),
        "_reward.1": ("reward",),
        "_pi.0": ("policy",),
        "_pi.1": ("policy",),
        "_Qs.0": ("Q",),
        "_Qs.1": ("Q",),
    }
    q_hidden = pruner._by_id["_Qs.0"]
    assert {m.name for m in q_hidden.members} >= {"_Qs.0.weight", "_Qs.0.ln.weight", "_Qs.1.weight"}
    assert all(m.tensor.shape[0] == 3 for m in q_hidden.members)  # one width shared by all members
    # output heads (reward/Q bins, action mean/std) are never groups
    assert not any(g.id in ("_reward.2", "_pi.2", "_Qs.2") for g in pruner.groups)
    assert any("reaches a model output" in n for n in pruner.notes)
    text = repr(pruner)
    assert "coupling" in text and "8-simplex" in text and "_Qs.1" in text
    lines = text.splitlines()
    assert lines[1].split() == ["id", "kind", "components", "width", "params", "importance"]
    row = next(line.split() for line in lines[3:] if line.startswith("_dynamics.0 "))
    dyn0 = pruner._by_id["_dynamics.0"]  # every member is a whole tensor indexed by this hidden width
    assert row[:4] == ["_dynamics.0", "component", "dynamics", "48/48"]
    assert int(row[4].replace(",", "")) == sum(m.tensor.numel() for m in dyn0.members) == 48 * 34 + 3 * 48 + 48 * 48
    assert len(lines) == 3 + len(pruner.groups)


def test_protected_coupling_is_not_pruned_and_budgets_apply() -> None:
    model = LatentWorldModel()
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, sparsity=0.5, budgets={"Q": 0.25})
    pruner.prune_to()
    assert model._encoder["state"][1].out_features == 32
    assert model._Qs.tensor_dict()["0.weight"].shape == (3, 36, 34)
    assert model._dynamics[0].out_features == 24
    assert abs(pruner.sparsity() - (7 * 24 + 2 * 12) / (9 * 48)) < 1e-9  # 7 groups at 0.5, 2 Q groups at 0.25


def test_tracing_consumes_no_global_randomness() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model = LatentWorldModel()
    torch.manual_seed(5)
    Pruner(model, example_inputs=example_inputs(model, batch=4), forward_fn=rollout)
    # example_inputs drew from the RNG; compare against a run that draws the same
    torch.manual_seed(5)
    example_inputs(model, batch=4)
    after_plain = torch.rand(3)
    torch.manual_seed(5)
    inputs = example_inputs(model, batch=4)
    Pruner(model, example_inputs=inputs, forward_fn=rollout).flops()
    assert torch.equal(torch.rand(3), after_plain)
    del expected


def test_exclude_protects_a_modules_outputs_only() -> None:
    model = LatentWorldModel()
    pruner = Pruner(model, components=COMPONENTS, example_inputs=example_inputs(model), forward_fn=rollout, exclude=["_dynamics.1"])
    ids = {g.id for g in pruner.groups}
    assert "_dynamics.1" not in ids and "_dynamics.0" in ids  # _dynamics.0's group reads into _dynamics.1: still prunable
    assert any("excluded module _dynamics.1" in n for n in pruner.notes)


class _TaskConditioned(torch.nn.Module):
    """cat([raw observation, task embedding]) -> MLP: the raw input shifts the embedding's columns."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(3, 8)
        self.body = torch.nn.Sequential(torch.nn.Linear(5 + 8, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def forward(self, obs, task):
        return self.body(torch.cat([obs, self.emb(task)], -1))


def test_concat_offsets_count_raw_inputs() -> None:
    torch.manual_seed(0)
    masked, pruned = _TaskConditioned(), _TaskConditioned()
    pruned.load_state_dict(masked.state_dict())
    inputs = (torch.randn(4, 5), torch.tensor([0, 1, 2, 1]))
    pm = Pruner(masked, example_inputs=inputs, criterion="magnitude", sparsity=0.5, physical=False, coupling="prune")
    pp = Pruner(pruned, example_inputs=inputs, criterion="magnitude", sparsity=0.5, coupling="prune")
    emb_cols = next(m for m in pp._by_id["emb"].members if m.name == "body.0.weight")
    assert emb_cols.pos.tolist() == list(range(5, 13))  # after the 5 observation columns
    pm.prune_to()
    pp.prune_to()
    assert pruned.body[0].in_features == 5 + 4 and pruned.emb.embedding_dim == 4
    with torch.no_grad():
        assert (masked(*inputs) - pruned(*inputs)).abs().max() <= 1e-6


def test_tracing_leaves_batchnorm_statistics_modes_and_rng_untouched() -> None:
    """Discovery and FLOP counting run the model, but leave no trace on it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2)
    )
    with torch.no_grad():
        model(torch.randn(32, 4))  # running statistics that differ from their initial values
    model[3].eval()  # a mixed train/eval state must survive as it is
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    inputs = (torch.randn(8, 4),)
    rng = torch.get_rng_state()
    pruner = Pruner(model, components={"model": ""}, example_inputs=inputs, criterion="magnitude")
    pruner.flops()
    pruner.metrics()
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running_mean/var and num_batches_tracked too
