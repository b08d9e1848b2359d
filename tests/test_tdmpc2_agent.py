"""Our TD-MPC2 agent: layers, maths, config parsing, world-model heads, losses, planner, state."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmpc_prune.ensemble import StackedEnsemble
from tdmpc_prune.tdmpc2 import functional as Fn
from tdmpc_prune.tdmpc2.agent import TDMPC2, to_floats
from tdmpc_prune.tdmpc2.buffer import ReplayBuffer
from tdmpc_prune.tdmpc2.config import MODEL_SIZES, ConfigError, TDMPC2Config, make_config, parse_overrides
from tdmpc_prune.tdmpc2.layers import NormedLinear, SimNorm, mlp
from tdmpc_prune.tdmpc2.world_model import WorldModel

torch.set_num_threads(1)

OBS, ACT = 5, 2
TINY = dict(model_size="cpu", enc_dim=32, mlp_dim=48, latent_dim=16, obs_dim=OBS, action_dim=ACT, device="cpu",
            batch_size=8, num_samples=32, num_elites=4, num_pi_trajs=4, iterations=2, num_q=3)


def tiny_cfg(**kw) -> TDMPC2Config:
    return make_config(**{**TINY, **kw})


def filled_buffer(cfg: TDMPC2Config, episodes: int = 2, length: int = 30) -> ReplayBuffer:
    buf = ReplayBuffer(1000, OBS, ACT, cfg.horizon, cfg.batch_size)
    g = torch.Generator().manual_seed(0)
    for _ in range(episodes):
        act = torch.rand(length + 1, ACT, generator=g) * 2 - 1
        act[0] = float("nan")
        rew = torch.rand(length + 1, generator=g)
        rew[0] = float("nan")
        buf.add(torch.randn(length + 1, OBS, generator=g), act, rew, torch.zeros(length + 1))
    return buf


# ------------------------------------------------------------------------------------ layers
def test_normed_linear_is_linear_dropout_layernorm_mish():
    layer = NormedLinear(6, 10, dropout=0.5)
    assert isinstance(layer, nn.Linear) and isinstance(layer.ln, nn.LayerNorm)
    assert isinstance(layer.act, nn.Mish) and isinstance(layer.dropout, nn.Dropout)
    layer.eval()
    x = torch.randn(4, 6)
    expected = F.mish(F.layer_norm(x @ layer.weight.T + layer.bias, (10,), layer.ln.weight, layer.ln.bias))
    torch.testing.assert_close(layer(x), expected)
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(x), expected)  # dropout acts before the LayerNorm in train mode
    assert NormedLinear(6, 10).dropout is None
    assert "6->10" in repr(layer) and "params=" in repr(layer)


def test_simnorm_is_a_softmax_per_group_of_8():
    sn = SimNorm(8)
    assert type(sn).__name__ == "SimNorm" and sn.dim == 8
    x = torch.randn(3, 32)
    y = sn(x)
    torch.testing.assert_close(y.view(3, 4, 8).sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(y.view(3, 4, 8), F.softmax(x.view(3, 4, 8), -1))
    with pytest.raises(ValueError, match="multiple of its group size 8"):
        sn(torch.randn(2, 12))


def test_mlp_layout_matches_official():
    net = mlp(10, [20, 30], 4, dropout=0.1)
    assert isinstance(net, nn.Sequential) and len(net) == 3
    assert [type(m) for m in net] == [NormedLinear, NormedLinear, nn.Linear]
    assert net[0].dropout is not None and net[0].dropout.p == 0.1 and net[1].dropout is None
    assert [m.weight.shape for m in net] == [(20, 10), (30, 20), (4, 30)]
    ended = mlp(10, 16, 8, act=SimNorm(8))
    assert isinstance(ended[-1], NormedLinear) and isinstance(ended[-1].act, SimNorm)
    assert "10->20->30->4" in repr(net) and f"params={sum(p.numel() for p in net.parameters()):,}" in repr(net)


# ------------------------------------------------------------------------------------ maths
def test_two_hot_round_trip_and_soft_ce():
    x = torch.tensor([[-300.0], [-2.5], [0.0], [0.3], [7.0], [900.0]])
    enc = Fn.two_hot(x, 101, -10, 10)
    assert enc.shape == (6, 101)
    torch.testing.assert_close(enc.sum(-1), torch.ones(6))
    assert (enc > 0).sum(-1).max() <= 2
    dec = Fn.two_hot_inv(torch.log(enc.clamp_min(1e-30)), 101, -10, 10)
    torch.testing.assert_close(dec[1:-1], x[1:-1], rtol=1e-4, atol=1e-4)
    # the CE is smallest for logits that put the mass where the target is
    good = torch.log(enc.clamp_min(1e-8))
    assert (Fn.soft_ce(good, x, 101, -10, 10) < Fn.soft_ce(torch.zeros(6, 101), x, 101, -10, 10)).all()
    torch.testing.assert_close(Fn.symexp(Fn.symlog(x)), x)


def test_squashed_gaussian_logprob():
    mean, log_std = torch.zeros(1000, 3), torch.full((1000, 3), -1.0)
    eps = torch.randn(1000, 3)
    lp = Fn.gaussian_logprob(eps, log_std)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(mean + eps * log_std.exp()).sum(-1, keepdim=True)
    torch.testing.assert_close(lp, ref)
    _, action, lp2 = Fn.squash(mean, mean + eps * log_std.exp(), lp)
    assert action.abs().max() < 1 and (lp2 >= lp).all()


# ------------------------------------------------------------------------------------ config
def test_parse_overrides_types_presets_and_passthrough():
    p = parse_overrides(["task=pendulum-swingup", "steps=2e4", "lr=1e-3", "compile=true", "model_size=cpu",
                         "q_dims=[64, 32]", "latent_dim=24", "prune.sparsity=0.5", "--prune", "exp_name=x"])
    cfg = p.cfg
    assert (cfg.task, cfg.steps, cfg.lr, cfg.compile, cfg.exp_name) == ("pendulum-swingup", 20000, 1e-3, True, "x")
    assert cfg.mlp_dim == MODEL_SIZES["cpu"]["mlp_dim"] and cfg.latent_dim == 24  # explicit beats preset
    assert cfg.widths()["q_dims"] == [64, 32] and cfg.widths()["pi_dims"] == [256, 256]
    assert p.prune_overrides == ["prune.sparsity=0.5"] and p.prune_flag
    assert parse_overrides(["model_size=19"]).cfg.enc_dim == 1024
    assert parse_overrides(["seed_steps=none"]).cfg.seed_steps is None


@pytest.mark.parametrize(
    "tokens, message",
    [
        (["lerning_rate=3"], "unknown override key 'lerning_rate'"),
        (["horizn=3"], "Did you mean 'horizon'"),
        (["steps=ten"], "steps='ten': expected an integer"),
        (["lr=fast"], "expected a number"),
        (["compile=maybe"], "expected a boolean"),
        (["q_dims=64"], "expected a list"),
        (["latent_dim=100"], "not a multiple of the SimNorm group size simnorm_dim=8; use e.g. latent_dim=96"),
        (["model_size=7"], "model_size=7 is not a preset"),
        (["task"], "overrides are written key=value"),
        (["num_elites=600"], "num_elites=600 exceeds num_samples=512"),
    ],
)
def test_parse_overrides_errors_name_problem_and_fix(tokens, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_overrides(tokens)


# The official TD-MPC2 hyper-parameters (tdmpc2/config.yaml and the 5M preset; Hansen, Su, Wang, ICLR 2024).
OFFICIAL_DEFAULTS = dict(
    # planning
    mpc=True, iterations=6, num_samples=512, num_elites=64, num_pi_trajs=24, horizon=3, min_std=0.05, max_std=2.0,
    temperature=0.5,
    # training
    batch_size=256, reward_coef=0.1, value_coef=0.1, termination_coef=1.0, consistency_coef=20.0, rho=0.5, lr=3e-4,
    enc_lr_scale=0.3, grad_clip_norm=20.0, tau=0.01, discount_denom=5.0, discount_min=0.95, discount_max=0.995,
    buffer_size=1_000_000,
    # actor
    log_std_min=-10.0, log_std_max=2.0, entropy_coef=1e-4,
    # critic
    num_bins=101, vmin=-10.0, vmax=10.0,
    # architecture (model_size=5)
    model_size=5, num_enc_layers=2, enc_dim=256, mlp_dim=512, latent_dim=512, num_q=5, dropout=0.01, simnorm_dim=8,
    # dm-control: 1000 physics steps at action repeat 2
    action_repeat=2, episode_length=500,
)


def test_defaults_are_the_official_ones():
    cfg = TDMPC2Config()
    actual = {k: getattr(cfg, k) for k in OFFICIAL_DEFAULTS}
    assert actual == OFFICIAL_DEFAULTS
    for k, v in OFFICIAL_DEFAULTS.items():  # and of the same kind (an int stays an int)
        assert type(actual[k]) is type(v) or (isinstance(v, float) and type(actual[k]) is int), (k, actual[k])
    assert cfg.widths() == {"enc_dims": [256], "dynamics_dims": [512, 512], "reward_dims": [512, 512],
                            "termination_dims": [512, 512], "pi_dims": [512, 512], "q_dims": [512, 512]}
    assert MODEL_SIZES["5"] == dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5)
    assert make_config(obs_dim=OBS, action_dim=ACT).widths() == cfg.widths()  # make_config applies the same preset
    # the official discount heuristic: (L/5 - 1) / (L/5) clipped to [0.95, 0.995]; 0.99 for 500-step episodes
    assert cfg.discount == pytest.approx(0.99, abs=1e-12)
    for length, discount in ((500, 0.99), (1000, 0.995), (100, 0.95), (250, 0.98), (10_000, 0.995), (5, 0.95)):
        assert TDMPC2Config(episode_length=length).discount == pytest.approx(discount, abs=1e-12), length


def test_optimizers_are_the_official_ones():
    cfg = tiny_cfg(episodic=True)
    agent = TDMPC2(cfg)
    m = agent.model
    assert agent.discount == pytest.approx(0.99, abs=1e-12) and cfg.episode_length == 500
    # policy prior: Adam at lr with eps 1e-5, over exactly the policy's parameters
    assert isinstance(agent.pi_optim, torch.optim.Adam) and len(agent.pi_optim.param_groups) == 1
    pi_group = agent.pi_optim.param_groups[0]
    assert pi_group["eps"] == 1e-5 and pi_group["lr"] == cfg.lr == 3e-4
    assert {id(p) for p in pi_group["params"]} == {id(p) for p in m._pi.parameters()}
    # world model: Adam (default eps) at lr, the encoder at 0.3 x lr
    assert isinstance(agent.optim, torch.optim.Adam)
    groups = {g["name"]: g for g in agent.optim.param_groups}
    assert groups["encoder"]["lr"] == pytest.approx(0.3 * cfg.lr, rel=1e-12)
    assert {id(p) for p in groups["encoder"]["params"]} == {id(p) for p in m._encoder.parameters()}
    for name, g in groups.items():
        assert g["eps"] == 1e-8, name
        if name != "encoder":
            assert g["lr"] == cfg.lr, name
    # every world-model parameter but the policy's is trained by exactly one group of the model optimiser
    model_params = [id(p) for g in agent.optim.param_groups for p in g["params"]]
    assert len(model_params) == len(set(model_params))
    assert set(model_params) == {id(p) for p in m.parameters()} - {id(p) for p in m._pi.parameters()}
    assert set(groups) == {"encoder", "dynamics", "reward", "termination", "Qs"}


def test_preset_sizes_match_the_paper():
    """Parameter counts of the presets (meta tensors: nothing is allocated) for a typical task."""
    counts = {}
    for size in MODEL_SIZES:
        cfg = make_config(model_size=size, obs_dim=24, action_dim=6)
        with torch.device("meta"):
            counts[size] = WorldModel(cfg).total_params / 1e6
    assert 0.3 < counts["cpu"] < 0.8
    for size, lo, hi in [("1", 0.8, 1.6), ("5", 4.0, 6.0), ("19", 16, 22), ("48", 42, 55), ("317", 290, 340)]:
        assert lo < counts[size] < hi, (size, counts[size])


# ------------------------------------------------------------------------------------ world model
def test_world_model_heads_shapes_and_official_names():
    cfg = tiny_cfg(episodic=True)
    m = WorldModel(cfg)
    assert isinstance(m._encoder, nn.ModuleDict) and list(m._encoder) == ["state"]
    assert isinstance(m._Qs, StackedEnsemble) and len(m._Qs) == 3
    for head in (m._encoder["state"], m._dynamics):
        assert isinstance(head[-1].act, SimNorm)
    B, L = 7, cfg.latent_dim
    obs, a = torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1
    z = m.encode(obs)
    assert z.shape == (B, L)
    torch.testing.assert_close(z.view(B, -1, 8).sum(-1), torch.ones(B, L // 8))
    assert m.next(z, a).shape == (B, L)
    assert m.reward(z, a).shape == (B, 101)
    assert m.termination(z).shape == (B, 1) and ((0 <= m.termination(z)) & (m.termination(z) <= 1)).all()
    action, info = m.pi(z)
    assert action.shape == (B, ACT) and action.abs().max() <= 1
    assert set(info) == {"mean", "log_std", "entropy", "scaled_entropy"}
    torch.testing.assert_close(info["scaled_entropy"], info["entropy"] * ACT)
    assert m.Q(z, a, return_type="all").shape == (3, B, 101)
    for kind in ("min", "avg"):
        for flags in ({}, {"target": True}, {"detach": True}):
            assert m.Q(z, a, return_type=kind, **flags).shape == (B, 1)
    assert WorldModel(tiny_cfg())._termination is None
    with pytest.raises(RuntimeError, match="episodic=true"):
        WorldModel(tiny_cfg()).termination(z)


def test_q_min_and_avg_use_two_distinct_members():
    m = WorldModel(tiny_cfg(dropout=0.0))
    for p in m._Qs.parameters():  # make members differ (the output layer starts at zero)
        p.data.normal_(0, 0.3)
    z, a = m.encode(torch.randn(6, OBS)), torch.rand(6, ACT)
    each = Fn.two_hot_inv(m.Q(z, a, return_type="all"), 101, -10, 10)  # (3, 6, 1)
    for kind, reduce in (("min", lambda x, y: torch.minimum(x, y)), ("avg", lambda x, y: (x + y) / 2)):
        for _ in range(5):
            q = m.Q(z, a, return_type=kind)
            assert any(torch.allclose(q, reduce(each[i], each[j]), atol=1e-6) for i, j in itertools.combinations(range(3), 2))


def test_detached_view_shares_storage_also_after_moves_and_is_not_saved():
    m = WorldModel(tiny_cfg())
    ptr = lambda ens: [t.data_ptr() for _, t in ens.named_tensors()]  # noqa: E731
    assert ptr(m._detach_Qs) == ptr(m._Qs)
    m = m.to(torch.float64)
    assert ptr(m._detach_Qs) == ptr(m._Qs) and ptr(m._target_Qs) != ptr(m._Qs)
    keys = m.state_dict().keys()
    assert not any(k.startswith("_detach_Qs") for k in keys) and any(k.startswith("_target_Qs") for k in keys)
    assert all(not t.requires_grad for _, t in m._detach_Qs.named_tensors())


def test_soft_update_is_a_lerp_and_survives_in_place_shrinking():
    cfg = tiny_cfg()
    m = WorldModel(cfg)
    for p in m._Qs.parameters():
        p.data.normal_()
    before = {k: v.clone() for k, v in m._target_Qs.named_tensors()}
    m.soft_update_target_Q()
    for k, online in m._Qs.named_tensors():
        torch.testing.assert_close(m._target_Qs.tensor_dict()[k], before[k] + cfg.tau * (online - before[k]))
    # shrink every stacked tensor's leading member dim in place (as `tensor.data = smaller` surgery does)
    for ens in (m._Qs, m._target_Qs):
        for _, t in ens.named_tensors():
            t.data = t.data[:2].clone()
    m.soft_update_target_Q()  # nothing cached: works on the new tensors
    for _, t in m._target_Qs.named_tensors():
        assert t.shape[0] == 2
    m._target_Qs.tensor_dict()["0.weight"].data = torch.zeros(1, 1)
    with pytest.raises(RuntimeError, match="shrink the target ensemble together"):
        m.soft_update_target_Q()


def test_multitask_world_model_concatenates_task_embeddings():
    cfg = tiny_cfg(tasks=["cartpole-balance", "walker-walk"], action_dims=[1, 2])
    m = WorldModel(cfg)
    assert isinstance(m._task_emb, nn.Embedding) and cfg.task_dim == 96
    task = torch.tensor([0, 1, 1])
    z = m.encode(torch.randn(3, OBS), task)
    action, _ = m.pi(z, task)
    assert z.shape == (3, cfg.latent_dim) and action[0, 1] == 0  # task 0 has one action dim
    assert m.Q(z, action, task, return_type="all").shape == (3, 3, 101)


# ------------------------------------------------------------------------------------ agent
def _reference_losses(agent: TDMPC2, obs, action, reward, next_z, td):
    """The loss definitions written out step by step (official formulation)."""
    cfg, m = agent.cfg, agent.model
    z = m.encode(obs[0])
    cons, rew, val = 0.0, 0.0, 0.0
    for t in range(cfg.horizon):
        qs = m.Q(z, action[t], return_type="all")
        rew = rew + Fn.soft_ce(m.reward(z, action[t]), reward[t], 101, -10, 10).mean() * cfg.rho**t
        for q in qs.unbind(0):
            val = val + Fn.soft_ce(q, td[t], 101, -10, 10).mean() * cfg.rho**t
        z = m.next(z, action[t])
        cons = cons + F.mse_loss(z, next_z[t]) * cfg.rho**t
    return cons / cfg.horizon, rew / cfg.horizon, val / (cfg.horizon * cfg.num_q)


def test_model_losses_match_the_stepwise_definition():
    agent = TDMPC2(tiny_cfg(dropout=0.0))
    for p in agent.model._Qs.parameters():
        p.data.normal_(0, 0.1)
    obs, action, reward, terminated, _ = filled_buffer(agent.cfg).sample()
    with torch.no_grad():
        next_z = agent.model.encode(obs[1:])
        td = agent._td_target(next_z, reward, terminated, None)
    zs, losses = agent.model_losses(obs[0], action, reward, terminated, next_z, td)
    assert zs.shape == (agent.cfg.horizon + 1, agent.cfg.batch_size, agent.cfg.latent_dim)
    cons, rew, val = _reference_losses(agent, obs, action, reward, next_z, td)
    torch.testing.assert_close(losses["consistency_loss"], cons)
    torch.testing.assert_close(losses["reward_loss"], rew)
    torch.testing.assert_close(losses["value_loss"], val)
    torch.testing.assert_close(losses["total_loss"], 20 * cons + 0.1 * rew + 0.1 * val)


def test_update_returns_tensors_trains_and_moves_target():
    cfg = tiny_cfg(episodic=True)
    agent = TDMPC2(cfg)
    buf = filled_buffer(cfg)
    enc0 = agent.model._encoder["state"][0].weight.clone()
    pi0 = agent.model._pi[0].weight.clone()
    online0 = {k: v.detach().clone() for k, v in agent.model._Qs.named_tensors()}
    target0 = {k: v.clone() for k, v in agent.model._target_Qs.named_tensors()}
    info = agent.update(buf)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in info.values())
    expected = {"consistency_loss", "reward_loss", "value_loss", "termination_loss", "total_loss", "grad_norm",
                "pi_loss", "pi_grad_norm", "pi_entropy", "pi_scaled_entropy", "pi_scale", "termination_rate", "termination_f1"}
    assert expected <= set(info)
    floats = to_floats(info)
    assert all(isinstance(v, float) and v == v for v in floats.values())
    assert not torch.equal(enc0, agent.model._encoder["state"][0].weight)
    assert not torch.equal(pi0, agent.model._pi[0].weight)
    for k, online in agent.model._Qs.named_tensors():
        torch.testing.assert_close(agent.model._target_Qs.tensor_dict()[k], target0[k] + cfg.tau * (online.detach() - target0[k]))
    # the critics' output layer starts at zero, so on the first step only it receives gradient
    assert not torch.equal(online0["2.weight"], agent.model._Qs.tensor_dict()["2.weight"])
    assert not agent.model.training  # back in eval mode for acting
    lrs = {g["name"]: g["lr"] for g in agent.optim.param_groups}
    assert lrs["encoder"] == pytest.approx(cfg.lr * cfg.enc_lr_scale) and lrs["Qs"] == cfg.lr and "termination" in lrs


def test_planner_actions_in_bounds_and_warm_started():
    cfg = tiny_cfg()
    agent = TDMPC2(cfg)
    for p in agent.model.parameters():
        p.data.normal_(0, 0.5)
    obs = torch.randn(OBS)
    for t0, eval_mode in ((True, False), (False, False), (False, True)):
        a = agent.act(obs, t0=t0, eval_mode=eval_mode)
        assert a.shape == (ACT,) and a.abs().max() <= 1
    assert agent.planner.prev_mean.shape == (cfg.horizon, ACT) and agent.planner.prev_mean.abs().sum() > 0
    torch.manual_seed(3)
    a1 = agent.act(obs, t0=True, eval_mode=True)
    torch.manual_seed(3)
    assert torch.equal(a1, agent.act(obs, t0=True, eval_mode=True))  # the warm start is the only state
    assert TDMPC2(tiny_cfg(num_pi_trajs=0)).act(obs, t0=True).abs().max() <= 1
    assert TDMPC2(tiny_cfg(mpc=False)).act(obs, eval_mode=True).shape == (ACT,)
    assert TDMPC2(tiny_cfg(action_dim=20)).planner.iterations == cfg.iterations + 2


def test_state_dict_round_trip_reproduces_acting_and_updates():
    cfg = tiny_cfg()
    a, b = TDMPC2(cfg), TDMPC2(cfg)
    buf = filled_buffer(cfg)
    a.update(buf)
    a.act(torch.randn(OBS), t0=True)
    b.load_state_dict(a.state_dict())
    for ag in (a, b):
        torch.manual_seed(11)
        ag.info = to_floats(ag.update(buf))
        ag.action = ag.act(torch.ones(OBS))
    assert a.info == b.info and torch.equal(a.action, b.action)
    assert b.scale.value == a.scale.value


def test_agent_keeps_working_after_layers_shrink_in_place():
    """Nothing caches widths: drop one latent simplex and half of pi's first hidden layer in place."""
    from tdmpc_prune.tracing import sync_shape_attributes

    cfg = tiny_cfg()
    agent = TDMPC2(cfg)
    m = agent.model
    keep_z = torch.arange(8, cfg.latent_dim)  # remove the first simplex of 8
    with torch.no_grad():
        for out_layer in (m._encoder["state"][-1], m._dynamics[-1]):
            for t in (out_layer.weight, out_layer.bias, out_layer.ln.weight, out_layer.ln.bias):
                t.data = t.data[keep_z].clone()
        cols = torch.cat([keep_z, torch.arange(cfg.latent_dim, cfg.latent_dim + ACT)])
        for first in (m._dynamics[0], m._reward[0]):
            first.weight.data = first.weight.data[:, cols].clone()
        m._pi[0].weight.data = m._pi[0].weight.data[:, keep_z].clone()
        for ens in (m._Qs, m._target_Qs):
            w = ens.tensor_dict()["0.weight"]
            w.data = w.data[:, :, cols].clone()
        keep_h = torch.arange(0, cfg.mlp_dim // 2)
        first = m._pi[0]
        for t in (first.weight, first.bias, first.ln.weight, first.ln.bias):
            t.data = t.data[keep_h].clone()
        m._pi[1].weight.data = m._pi[1].weight.data[:, keep_h].clone()
    sync_shape_attributes(m)
    m.refresh_views()
    agent.optim.state.clear()
    agent.pi_optim.state.clear()
    info = to_floats(agent.update(filled_buffer(cfg)))
    assert all(v == v for v in info.values())
    assert agent.model.encode(torch.randn(2, OBS)).shape == (2, cfg.latent_dim - 8)
    assert agent.act(torch.randn(OBS), t0=True).abs().max() <= 1


def test_fast_inference_mish_matches_native():
    from tdmpc_prune.tdmpc2.layers import Mish

    x = torch.cat([torch.linspace(-120, 120, 20001), torch.tensor([-1e4, 1e4, 0.0])])
    with torch.no_grad():
        fast = Mish()(x)
    torch.testing.assert_close(fast, F.mish(x.double()).float(), rtol=0, atol=5e-6)
    assert fast[-3] == 0 and fast[-2] == 1e4 and fast[-1] == 0
    y = x.clone().requires_grad_()
    assert torch.equal(Mish()(y), F.mish(y))  # with grad mode on, the native op (and backward) runs


def test_two_member_ensemble_min_avg():
    m = WorldModel(tiny_cfg(num_q=2, dropout=0.0))
    for p in m._Qs.parameters():
        p.data.normal_(0, 0.3)
    z, a = m.encode(torch.randn(6, OBS)), torch.rand(6, ACT)
    each = Fn.two_hot_inv(m.Q(z, a, return_type="all"), 101, -10, 10)
    torch.testing.assert_close(m.Q(z, a, return_type="min"), each.min(0).values)
    torch.testing.assert_close(m.Q(z, a, return_type="avg"), each.mean(0))


def test_replay_windows_stay_inside_one_episode_across_wraparound():
    buf = ReplayBuffer(40, 2, 1, horizon=3, batch_size=256)
    for ep in range(7):  # 7 episodes of 11 entries overwrite a ring of 40 several times
        pos = torch.arange(11, dtype=torch.float32)
        obs = torch.stack([torch.full((11,), float(ep)), pos], dim=1)
        buf.add(obs, pos.unsqueeze(1), pos, torch.zeros(11))
        for _ in range(3):
            obs_s, act_s, rew_s, term_s, task = buf.sample()
            assert obs_s.shape == (4, 256, 2) and act_s.shape == (3, 256, 1) and rew_s.shape == (3, 256, 1) and task is None
            assert (obs_s[:, :, 0] == obs_s[0:1, :, 0]).all()  # one episode per window
            assert (obs_s[1:, :, 1] - obs_s[:-1, :, 1] == 1).all()  # consecutive steps
            torch.testing.assert_close(act_s[..., 0], obs_s[1:, :, 1])  # action/reward that led to obs t+1
            torch.testing.assert_close(rew_s[..., 0], obs_s[1:, :, 1])
    first = buf.sample()[0][0]  # the ring holds the last 40 of 77 entries: episode 3 from position 4 on
    assert set(first[:, 0].tolist()) <= {3.0, 4.0, 5.0, 6.0} and 6.0 in first[:, 0]
    assert (first[first[:, 0] == 3.0, 1] >= 4).all()
    bigger = ReplayBuffer(100, 2, 1, horizon=3, batch_size=64)
    bigger.load_state_dict(buf.state_dict())  # a different capacity keeps the entries in time order
    obs_s = bigger.sample()[0]
    assert (obs_s[1:, :, 1] - obs_s[:-1, :, 1] == 1).all() and len(bigger) == 40
