"""`tdmpc_prune.tdmpc2.attach`: automatic registration and exact physical pruning of TD-MPC2 world models."""
from __future__ import annotations

import pytest
import torch

from tdmpc_prune import PruneError
from tdmpc_prune.tdmpc2 import TDMPC2, WorldModel, make_config
from tdmpc_prune.tdmpc2 import attach
from tdmpc_prune.tdmpc2.wiring import example_inputs
from official_layout import OfficialInitWorldModel, OfficialLayoutWorldModel, official_cfg
from world_model_heads import Q_COPIES, assert_trains_every_kept_weight, expected_heads, heads, randomise

TOL = 1e-6
# Masked layers sum over all channels (the removed ones as zeros), pruned ones over the kept channels
# only: float32 rounding differs by a few ulps *of the output*. At the 5M widths the logits reach ~2,
# so there the bound is TOL per unit of output magnitude (never looser than TOL below 1).
RELATIVE_TOL = {"official-layout-5M"}


def _our_world_model(model_size: str, **kw) -> WorldModel:
    return WorldModel(make_config(model_size=model_size, obs_dim=7, action_dim=3, **kw))


def _official(**kw) -> OfficialLayoutWorldModel:
    return OfficialLayoutWorldModel(official_cfg(**kw))


def _official_init(**kw) -> OfficialInitWorldModel:
    """Q copies installed exactly as the official `WorldModel.init()` (params via `__dict__`)."""
    return OfficialInitWorldModel(official_cfg(**kw))


# the official 5M preset (MODEL_SIZE[5] of tdmpc2 and its config.yaml)
OFFICIAL_5M = dict(enc_dim=256, num_enc_layers=2, mlp_dim=512, latent_dim=512, num_q=5, num_bins=101, simnorm_dim=8)

BUILDERS = {
    "ours-cpu": lambda: _our_world_model("cpu"),
    "ours-cpu-episodic": lambda: _our_world_model("cpu", episodic=True),
    "ours-5M": lambda: _our_world_model("5"),
    "official-layout": lambda: _official(),
    "official-layout-multitask-episodic": lambda: _official(multitask=True, tasks=["a", "b", "c"], episodic=True),
    "official-init": lambda: _official_init(),
    "official-layout-5M": lambda: _official_init(**OFFICIAL_5M),
}


def _randomised(kind: str):
    """The same world model twice, every tensor (zero-initialised heads and the target too) random."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(randomise(BUILDERS[kind]().eval()))
    return models


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_physical_pruning_equals_masking_on_every_head(kind: str) -> None:
    masked, pruned = _randomised(kind)
    pm = attach(masked, criterion="magnitude", sparsity=0.5, coupling="prune", physical=False)
    pp = attach(pruned, criterion="magnitude", sparsity=0.5, coupling="prune", physical=True)
    kinds = {g.id: g.kind for g in pp.groups}
    assert list(kinds.values()).count("coupling") == (2 if "multitask" in kind else 1)
    assert {c for g in pp.groups for c in g.components} >= {"encoder", "dynamics", "reward", "Q", "policy"}
    pm.prune_to()
    pp.prune_to()
    latent = next(g for g in pp.groups if g.unit == 8)
    inputs = example_inputs(pruned, batch=5)
    with torch.no_grad():
        hm = heads(masked, inputs, latent_keep=pp.alive[latent.id])
        hp = heads(pruned, inputs)
    assert set(hp) >= expected_heads(False) and set(hm) == set(hp)
    batch = inputs[0].shape[0]
    for suffix in Q_COPIES:
        assert hp[f"Q{suffix}"].shape[0] == pruned.cfg.num_q
        for rt in ("_min", "_avg"):
            assert hp[f"Q{suffix}{rt}"].shape == (batch, 1), (suffix, rt, hp[f"Q{suffix}{rt}"].shape)
        assert not torch.equal(hp[f"Q{suffix}_min"], hp[f"Q{suffix}_avg"])  # two distinct critics were compared
    for name in hp:
        assert hm[name].shape == hp[name].shape, name
        tol = TOL * max(1.0, hp[name].abs().max().item()) if kind in RELATIVE_TOL else TOL
        assert (hm[name] - hp[name]).abs().max().item() <= tol, (name, (hm[name] - hp[name]).abs().max().item())
    assert pm.param_count() == pp.param_count() < 0.45 * pp.dense_params


def test_official_layout_copies_stay_consistent() -> None:
    _, wm = _randomised("official-layout")
    pruner = attach(wm, criterion="random", sparsity=0.5, coupling="prune")
    pruner.prune_to()
    for key in wm._Qs.params.keys(include_nested=True, leaves_only=True):
        online, detached, target = wm._Qs.params.get(key), wm._detach_Qs_params.get(key), wm._target_Qs_params.get(key)
        assert detached.data_ptr() == online.data_ptr(), key  # still sharing storage
        assert target.shape == online.shape and target.data_ptr() != online.data_ptr(), key
    wm._target_Qs_params.lerp_(wm._detach_Qs_params, 0.01)  # the official soft update still works
    assert wm.cfg.latent_dim == 16 and wm.cfg.mlp_dim == 24 and wm.cfg.enc_dim == 20  # config follows the shapes


def _q_keys(wm):
    return list(wm._Qs.params.keys(include_nested=True, leaves_only=True))


def _official_installation(wm) -> None:
    """The copies' params are the TensorDictParams of the world model, held in their `__dict__` only."""
    assert "params" not in wm._detach_Qs._modules and "params" not in wm._target_Qs._modules
    assert wm._detach_Qs.__dict__["params"] is wm._detach_Qs_params
    assert wm._target_Qs.__dict__["params"] is wm._target_Qs_params
    keys = list(wm.state_dict())
    assert not any(k.startswith(("_detach_Qs.params", "_target_Qs.params")) for k in keys)  # no duplicates
    assert any(k.startswith("_target_Qs_params.") for k in keys)  # the target is saved once


@pytest.mark.parametrize("kind,widths", [
    ("official-layout", (16, 24, 20)),
    ("official-init", (16, 24, 20)),
    ("official-layout-5M", (256, 256, 128)),
])
def test_official_q_copies_follow_the_pruning(kind: str, widths) -> None:
    """Detached copy still shares storage, target sliced like the online Qs (values kept), soft update works."""
    _, wm = _randomised(kind)
    keys = _q_keys(wm)
    with torch.no_grad():  # the target: an elementwise function of the online tensors, so slicing both
        for key in keys:   # with the same indices keeps `target == 2 * online + 1` entry by entry
            wm._target_Qs_params.get(key).copy_(wm._Qs.params.get(key) * 2 + 1)
    official = kind != "official-layout"
    if official:
        _official_installation(wm)
    dense = {key: tuple(wm._Qs.params.get(key).shape) for key in keys}
    target_objects = {key: wm._target_Qs_params.get(key) for key in keys}
    detach_td, target_td = wm._detach_Qs_params, wm._target_Qs_params

    pruner = attach(wm, criterion="magnitude", sparsity=0.5, coupling="prune")
    pruner.prune_to()

    assert (wm.cfg.latent_dim, wm.cfg.mlp_dim, wm.cfg.enc_dim) == widths  # config follows the shapes
    assert wm._detach_Qs_params is detach_td and wm._target_Qs_params is target_td  # pruned in place
    assert wm._detach_Qs.params is detach_td and wm._target_Qs.params is target_td
    if official:
        _official_installation(wm)
    shrunk = 0
    for key in keys:
        online, detached, target = wm._Qs.params.get(key), wm._detach_Qs_params.get(key), wm._target_Qs_params.get(key)
        assert detached.shape == online.shape and detached.data_ptr() == online.data_ptr(), key  # shares storage
        assert not detached.requires_grad, key
        assert target is target_objects[key], key  # same tensor object, sliced in place
        assert target.shape == online.shape and target.data_ptr() != online.data_ptr(), key
        assert torch.equal(target, online.detach() * 2 + 1), key  # sliced with the online indices
        shrunk += online.shape != dense[key]
    assert shrunk == len(keys) - 1  # every Q tensor but the output bias (bins are never pruned) shrank

    # the copies run at the pruned shapes: the detached copy computes the online function exactly
    obs, actions, task = example_inputs(wm, batch=5)
    with torch.no_grad():
        z = wm.encode(obs, task)
        online_q = wm.Q(z, actions[0], task, return_type="all")
        assert torch.equal(wm.Q(z, actions[0], task, return_type="all", detach=True), online_q)
        assert wm.Q(z, actions[0], task, return_type="all", target=True).shape == online_q.shape

    # the official soft update (`_target_Qs_params.lerp_(_detach_Qs_params, tau)`) works in place
    before = {key: wm._target_Qs_params.get(key).clone() for key in keys}
    wm.soft_update_target_Q()
    for key in keys:
        target, online = wm._target_Qs_params.get(key), wm._Qs.params.get(key).detach()
        assert target is target_objects[key] and target.data_ptr() != online.data_ptr(), key
        assert torch.equal(target, torch.lerp(before[key], online, wm.cfg.tau)), key
        assert not torch.equal(target, before[key]), key

    # a world model built from the written-back config loads the pruned state dict strictly
    rebuilt = _rebuilt(wm)
    rebuilt.load_state_dict(wm.state_dict())
    with torch.no_grad():
        for flags in Q_COPIES.values():
            ref = wm.Q(z, actions[0], task, return_type="all", **flags)
            assert torch.equal(rebuilt.Q(rebuilt.encode(obs, task), actions[0], task, return_type="all", **flags), ref)


def _rebuilt(wm):
    from types import SimpleNamespace

    return type(wm)(SimpleNamespace(**vars(wm.cfg))).eval()


@pytest.mark.parametrize("kind", ["official-layout", "official-init"])
def test_pruned_official_state_dict_loads_strictly_into_the_rebuilt_model(kind: str) -> None:
    wm = BUILDERS[kind]().eval()
    attach(wm, criterion="magnitude", sparsity=0.5, coupling="prune").prune_to()
    rebuilt = _rebuilt(wm)
    meta = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items() if v.is_meta}  # noqa: E731
    assert meta(wm) == meta(rebuilt)
    rebuilt.load_state_dict(wm.state_dict())  # what the official agent.load does with a saved checkpoint


def _buffer(agent, episodes=2):
    from tdmpc_prune.tdmpc2 import ReplayBuffer

    cfg = agent.cfg
    n = 40
    buf = ReplayBuffer(episodes * n, cfg.obs_dim, cfg.action_dim, cfg.horizon, cfg.batch_size, agent.device)
    for _ in range(episodes):
        buf.add(torch.randn(n, cfg.obs_dim), torch.rand(n, cfg.action_dim) * 2 - 1, torch.rand(n), torch.zeros(n))
    return buf


def test_both_optimizers_keep_training_every_kept_weight() -> None:
    torch.manual_seed(0)
    agent = TDMPC2(make_config(model_size="cpu", obs_dim=7, action_dim=3, batch_size=16, device="cpu"))
    buf = _buffer(agent)
    pruner = attach(agent, total_steps=100, criterion="fisher", sparsity=0.5, coupling="prune", l1=1e-4, l1_period=10)
    for _ in range(2):
        agent.update(buf)
    pruner.prune_to()
    assert agent.cfg.latent_dim == 32 and agent.cfg.pi_dims == [128, 128] and agent.cfg.q_dims == [128, 128]
    assert_trains_every_kept_weight(agent, lambda: agent.update(buf))
    # the target ensemble follows the online one through the soft update
    agent.model.soft_update_target_Q()
    online = agent.model._Qs.tensor_dict()
    for k, t in agent.model._target_Qs.named_tensors():
        assert t.shape == online[k].shape


def test_rebuilt_from_the_written_back_config() -> None:
    torch.manual_seed(0)
    agent = TDMPC2(make_config(model_size="cpu", obs_dim=7, action_dim=3, device="cpu"))
    attach(agent, criterion="magnitude", sparsity=0.25, coupling="prune").prune_to()
    clone = TDMPC2(make_config(**agent.cfg.to_dict()))
    clone.model.load_state_dict(agent.model.state_dict())  # pruned widths reload without the pruner
    obs = torch.randn(7)
    with torch.no_grad():
        z1 = agent.model.encode(obs[None], None)
        z2 = clone.model.encode(obs[None], None)
    assert torch.equal(z1, z2)


def test_errors_name_the_fix() -> None:
    wm = _our_world_model("cpu", latent_dim=16)
    with pytest.raises(PruneError, match="cannot go below one simplex"):
        attach(wm, coupling="prune", coupling_sparsity=0.9, sparsity=0.1).prune_to()
    with pytest.raises(PruneError, match="whole layer"):
        attach(_our_world_model("cpu"), sparsity=0.9999).prune_to()
    with pytest.raises(PruneError, match="TD-MPC2 world-model layout"):
        attach(torch.nn.Linear(3, 3))


def test_update_hook_drives_the_schedule_of_an_agent_we_do_not_own() -> None:
    from torch.utils.tensorboard import SummaryWriter

    from tdmpc_prune.tdmpc2.update_hook import UpdateHook

    torch.manual_seed(0)
    agent = TDMPC2(make_config(model_size="cpu", obs_dim=7, action_dim=3, batch_size=8, device="cpu"))
    buf = _buffer(agent)
    pruner = attach(agent, total_steps=6, schedule="iterative", start=2, end=4, iterations=2, sparsity=0.5)
    clock = {"step": 0}
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tempfile.mkdtemp()
    writer = SummaryWriter(logdir)
    hook = UpdateHook(agent, pruner, clock=lambda: clock["step"], writer=writer, log_every=100).install()
    widths = []
    for step in range(1, 7):
        clock["step"] = step
        agent.update(buf)
        widths.append(agent.model._dynamics[0].out_features)
    hook.remove()
    writer.close()
    assert widths == [256, 192, 192, 128, 128, 128]
    ea = EventAccumulator(logdir)
    ea.Reload()
    assert [e.step for e in ea.Scalars("prune/sparsity")] == [2, 4]
    assert [round(e.value, 3) for e in ea.Scalars("prune/sparsity")] == [0.25, 0.5]
