"""`attach` on the official tdmpc2 `WorldModel` and `TDMPC2` agent (the real code at TDMPC2_DIR).

Masked == physically pruned (<= 1e-6) on every head, single-task, episodic and multi-task; both
capturable Adams keep training every kept weight; a pruned official checkpoint reloads.
"""
from __future__ import annotations

import copy

import pytest
import torch

from tdmpc_prune.tdmpc2 import attach
from tdmpc_prune.tdmpc2.wiring import example_inputs
from world_model_heads import Q_COPIES, assert_trains_every_kept_weight, expected_heads, heads, randomise

TOL = 1e-6
KINDS = {
    "single": dict(task="cartpole-balance"),
    "episodic": dict(task="cartpole-balance", overrides=("episodic=true",)),
    "multitask": dict(task="mt30", action_dim=3),
}


def _cfg(official, kind: str):
    spec = KINDS[kind]
    return official.cfg(*spec.get("overrides", ()), task=spec["task"], obs_dim=7, action_dim=spec.get("action_dim", 2))


def _world_model(official, cfg, moved: bool):
    """The official WorldModel(cfg) (its __init__ runs init()), then its .to(), which re-runs init()."""
    wm = official.module("common.world_model").WorldModel(cfg)
    if moved:
        try:
            wm.to(torch.device("cpu"))
        except NotImplementedError as e:
            import tensordict

            pytest.skip(f"the official WorldModel.to() fails with tensordict {tensordict.__version__}: {str(e)[:50]}...")
    return wm.eval()


@pytest.mark.parametrize("moved", [False, True], ids=["built", "moved"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_masked_equals_pruned_on_every_head(official, kind: str, moved: bool) -> None:
    cfg = _cfg(official, kind)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(randomise(_world_model(official, copy.deepcopy(cfg), moved)))
    masked, pruned = models
    pm = attach(masked, criterion="magnitude", sparsity=0.5, coupling="prune", physical=False)
    pp = attach(pruned, criterion="magnitude", sparsity=0.5, coupling="prune", physical=True)
    couplings = [g for g in pp.groups if g.kind == "coupling"]
    assert len(couplings) == (2 if kind == "multitask" else 1)  # the latent (+ the task embedding)
    comps = {c for g in pp.groups for c in g.components}
    assert comps >= {"encoder", "dynamics", "reward", "Q", "policy"} | ({"termination"} if kind == "episodic" else set())
    pm.prune_to()
    pp.prune_to()
    latent = next(g for g in pp.groups if g.unit == 8)
    inputs = example_inputs(pruned, batch=5)
    termination = not cfg.multitask  # the official termination() asserts task is None
    with torch.no_grad():
        hm = heads(masked, inputs, latent_keep=pp.alive[latent.id], termination=termination)
        hp = heads(pruned, inputs, termination=termination)
    assert set(hp) == set(hm) == expected_heads(kind == "episodic")
    for suffix in Q_COPIES:
        assert hp[f"Q{suffix}"].shape[0] == cfg.num_q
        assert not torch.equal(hp[f"Q{suffix}_min"], hp[f"Q{suffix}_avg"])  # two distinct critics compared
    for name in hp:
        assert hm[name].shape == hp[name].shape, name
        assert (hm[name] - hp[name]).abs().max().item() <= TOL, (name, (hm[name] - hp[name]).abs().max().item())
    assert pm.param_count() == pp.param_count() < 0.45 * pp.dense_params
    # the detached copy still shares storage with the online Qs; the target was sliced alike
    for key in pruned._Qs.params.keys(include_nested=True, leaves_only=True):
        online = pruned._Qs.params.get(key)
        assert pruned._detach_Qs_params.get(key).data_ptr() == online.data_ptr(), key
        assert pruned._target_Qs_params.get(key).shape == online.shape, key


def _batch(cfg, g: torch.Generator):
    h, b = cfg.horizon, cfg.batch_size
    obs = torch.randn(h + 1, b, cfg.obs_shape["state"][0], generator=g)
    action = torch.rand(h, b, cfg.action_dim, generator=g) * 2 - 1
    reward = torch.randn(h, b, 1, generator=g)
    terminated = torch.zeros(h, b, 1)
    kwargs = {"task": torch.randint(len(cfg.tasks), (b,), generator=g)} if cfg.multitask else {}
    return (obs, action, reward, terminated), kwargs


@pytest.mark.parametrize("kind", ["single", "multitask"])
def test_both_capturable_adams_train_every_kept_weight(official, kind: str) -> None:
    cfg = _cfg(official, kind)
    agent = official.agent(cfg)
    assert all(g["capturable"] for o in (agent.optim, agent.pi_optim) for g in o.param_groups)
    pruner = attach(agent, total_steps=100, criterion="fisher", sparsity=0.5, coupling="prune", l1=1e-4, l1_period=10)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        args, kwargs = _batch(cfg, g)
        agent._update(*args, **kwargs)
    pruner.prune_to()
    assert (agent.cfg.latent_dim, agent.cfg.mlp_dim, agent.cfg.enc_dim) == (8, 16, 16)  # written back
    args, kwargs = _batch(cfg, g)
    # the task embedding: only the rows of the tasks in the batch get a gradient
    assert_trains_every_kept_weight(agent, lambda: agent._update(*args, **kwargs), skip=("_task_emb",))
    for opt in (agent.optim, agent.pi_optim):
        for p in (p for group in opt.param_groups for p in group["params"]):
            st = opt.state[p]
            assert st["step"].device == p.device and int(st["step"]) == 3  # capturable: a device tensor


def test_a_pruned_official_checkpoint_reloads(official, tmp_path) -> None:
    cfg = _cfg(official, "single")
    original = copy.deepcopy(cfg)
    agent = official.agent(cfg)
    pruner = attach(agent, total_steps=4, criterion="bayes", sparsity=0.5, schedule="oneshot", start=2)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        agent._update(*_batch(cfg, g)[0])
        pruner.step(step)
    assert pruner.history and agent.model._dynamics[0].out_features == 16
    agent.save(tmp_path / "final.pt")  # what the official Logger.finish saves
    torch.save(pruner.state_dict(), tmp_path / "prune_state.pt")

    rebuilt = official.agent(copy.deepcopy(original))  # the original config, as the plugin README says
    again = attach(rebuilt, total_steps=4, criterion="bayes", sparsity=0.5, schedule="oneshot", start=2)
    again.load_state_dict(torch.load(tmp_path / "prune_state.pt", weights_only=False))
    rebuilt.load(str(tmp_path / "final.pt"))
    obs = torch.randn(3, 7, generator=g)
    a = torch.rand(3, 2, generator=g) * 2 - 1
    with torch.no_grad():
        for m in (agent.model, rebuilt.model):
            m.eval()
        z = agent.model.encode(obs, None)
        assert torch.equal(rebuilt.model.encode(obs, None), z)
        for flags in Q_COPIES.values():
            assert torch.equal(rebuilt.model.Q(z, a, None, return_type="all", **flags),
                               agent.model.Q(z, a, None, return_type="all", **flags))
