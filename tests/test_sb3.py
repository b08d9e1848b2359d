"""SB3 integration: real algorithms on real gymnasium tasks, a few hundred steps each.

Every algorithm trains with pruning to its target sparsity while SB3's internals stay consistent
(aliases, target networks, optimizers and their Adam moments), and a mask-mode run equals its
physically pruned copy on actions, values and Q-values.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Tuple

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import torch.nn as nn
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import polyak_update

from tdmpc_prune.sb3 import get_pruner, load, wrap
from tdmpc_prune.sb3.components import optimizers

th.set_num_threads(1)
TOL = 1e-6
NET = [32, 24]
STEPS = 320
SCHEDULE = dict(sparsity=0.5, schedule="gradual", start=0.2, end=0.6, iterations=3, heatmap=False, log_freq=10_000)

CASES: Dict[str, Any] = {
    "ppo": (PPO, "CartPole-v1", dict(n_steps=64, batch_size=64, n_epochs=2)),
    "a2c": (A2C, "CartPole-v1", dict(n_steps=8)),
    "ppo_sde": (PPO, "Pendulum-v1", dict(use_sde=True, n_steps=64, batch_size=64, n_epochs=2)),
    "sac": (SAC, "Pendulum-v1", dict(learning_starts=64, batch_size=32)),
    "sac_sde": (SAC, "Pendulum-v1", dict(learning_starts=64, batch_size=32, use_sde=True)),
    "td3": (TD3, "Pendulum-v1", dict(learning_starts=64, batch_size=32)),
    "dqn": (DQN, "CartPole-v1", dict(learning_starts=64, batch_size=32, target_update_interval=50)),
}


class LinearExtractor(BaseFeaturesExtractor):
    """A features extractor with weights and batch-norm statistics, its output read by several components."""

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 16):
        super().__init__(observation_space, features_dim)
        n_in = int(np.prod(observation_space.shape))
        self.net = nn.Sequential(nn.Linear(n_in, features_dim), nn.BatchNorm1d(features_dim), nn.Tanh())

    def forward(self, obs: th.Tensor) -> th.Tensor:
        return self.net(obs)


class SpaceEnv(gym.Env):
    """A trivial env with the given spaces (random observations, zero reward)."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: Any = None, options: Any = None) -> Tuple[Any, Dict]:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Tuple[Any, float, bool, bool, Dict]:
        return self.observation_space.sample(), 0.0, False, False, {}


def make(name: str, seed: int = 0, extractor: bool = False, **kwargs: Any) -> BaseAlgorithm:
    algo, env, defaults = CASES[name]
    policy_kwargs: Dict[str, Any] = dict(net_arch=list(NET))
    if extractor:
        policy_kwargs.update(features_extractor_class=LinearExtractor, features_extractor_kwargs=dict(features_dim=16))
        if algo in (SAC, TD3):
            policy_kwargs["share_features_extractor"] = True
    return algo("MlpPolicy", env, policy_kwargs=policy_kwargs, seed=seed, device="cpu", **{**defaults, **kwargs})


def obs_batch(model: BaseAlgorithm, n: int = 16, seed: int = 1) -> th.Tensor:
    rng = np.random.default_rng(seed)
    space = model.observation_space
    return th.as_tensor(rng.normal(size=(n, *space.shape)).astype(np.float32))


def heads(model: BaseAlgorithm, obs: th.Tensor) -> Dict[str, th.Tensor]:
    """Every output a policy computes: actions, distribution parameters, values, Q-values (online and target)."""
    p = model.policy
    act = th.as_tensor(np.random.default_rng(2).uniform(-1, 1, size=(obs.shape[0], int(np.prod(model.action_space.shape or (1,))))), dtype=th.float32)
    out: Dict[str, th.Tensor] = {}
    with th.no_grad():
        out["action"] = p._predict(obs, deterministic=True).float()
        if isinstance(p, ActorCriticPolicy):
            dist = p.get_distribution(obs).distribution
            out["dist"] = dist.logits if hasattr(dist, "logits") else dist.mean
            out["value"] = p.predict_values(obs)
        elif isinstance(model, DQN):
            out["q"] = p.q_net(obs)
            out["q_target"] = p.q_net_target(obs)
        else:
            if isinstance(model, SAC):
                mean, log_std, _ = p.actor.get_action_dist_params(obs)
                out["mean"], out["log_std"] = mean, log_std
            else:
                out["actor_target"] = p.actor_target(obs)
            for i, (q, qt) in enumerate(zip(p.critic(obs, act), p.critic_target(obs, act))):
                out[f"q{i}"], out[f"q{i}_target"] = q, qt
    return out


def assert_sb3_consistent(model: BaseAlgorithm) -> None:
    """SB3's cached aliases, target networks and optimizers all point at the live, pruned modules."""
    policy = model.policy
    live = {id(p): p for p in policy.parameters()}
    for m in policy.modules():
        if isinstance(m, nn.Linear):
            assert tuple(m.weight.shape) == (m.out_features, m.in_features)
    if isinstance(model, (SAC, TD3)):
        assert model.actor is policy.actor and model.critic is policy.critic and model.critic_target is policy.critic_target
        for critic in (policy.critic, policy.critic_target):
            for i, q in enumerate(critic.q_networks):
                assert q is getattr(critic, f"qf{i}")
        pairs = [(policy.critic, policy.critic_target)]
        if isinstance(model, TD3):
            assert model.actor_target is policy.actor_target
            pairs.append((policy.actor, policy.actor_target))
    elif isinstance(model, DQN):
        assert model.q_net is policy.q_net and model.q_net_target is policy.q_net_target
        pairs = [(policy.q_net, policy.q_net_target)]
    else:
        pairs = []
    # the cached batch-norm statistics (state_dict views) still view the live, pruned buffers
    stats = {"batch_norm_stats": "critic", "batch_norm_stats_target": "critic_target"}
    if isinstance(model, TD3):
        stats = {f"{n}_batch_norm_stats{t}": f"{n}{t}" for n in ("actor", "critic") for t in ("", "_target")}
    elif isinstance(model, DQN):
        stats = {"batch_norm_stats": "q_net", "batch_norm_stats_target": "q_net_target"}
    for cached, owner in stats.items() if pairs else ():
        buffers = [b for n, b in getattr(model, owner).named_buffers() if "running_" in n]
        views = getattr(model, cached)
        assert len(views) == len(buffers)
        for v, b in zip(views, buffers):
            assert v.shape == b.shape and v.data_ptr() == b.data_ptr(), f"{cached} holds a stale view"
    for online, target in pairs:
        on = {k: v.shape for k, v in online.state_dict().items()}
        assert on == {k: v.shape for k, v in target.state_dict().items()}
        params = list(online.parameters())
        targets = list(target.parameters())
        expected = [0.3 * p.detach() + 0.7 * t.detach() for p, t in zip(params, targets)]
        polyak_update(params, targets, 0.3)  # zips the live parameter lists, as SB3's train() does
        for e, t in zip(expected, targets):
            assert th.allclose(e, t)
    for opt in optimizers(model):
        for group in opt.param_groups:
            for p in group["params"]:
                assert live.get(id(p)) is p, "an optimizer holds a parameter that is no longer in the policy"
                for k, v in opt.state.get(p, {}).items():
                    if th.is_tensor(v) and v.dim() > 0:
                        assert v.shape == p.shape, f"optimizer state {k} has shape {tuple(v.shape)}, its parameter {tuple(p.shape)}"


# ----------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("name", list(CASES))
def test_trains_to_target_sparsity(name: str) -> None:
    model = wrap(make(name), criterion="bayes", **SCHEDULE)
    obs_dim = model.observation_space.shape
    model.learn(STEPS)
    pruner = get_pruner(model)
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.02)
    assert len(pruner.history) == 3
    assert pruner.param_count() < pruner.dense_params
    # hidden layers shrank; observation and action dims did not
    policy = model.policy
    first = next(m for m in policy.modules() if isinstance(m, nn.Linear))
    assert first.in_features == int(np.prod(obs_dim))
    act = model.action_space
    n_act = act.n if isinstance(act, gym.spaces.Discrete) else act.shape[0]
    heads_out = heads(model, obs_batch(model))
    assert heads_out["action"].shape[0] == 16
    for key, value in heads_out.items():
        if key in ("dist", "mean", "log_std", "actor_target", "q"):
            assert value.shape[-1] == n_act, key
    for g in pruner.groups:
        assert policy.get_submodule(g.id).out_features == int(pruner.alive[g.id].sum()) < g.channels
    assert_sb3_consistent(model)
    # every optimizer keeps training every kept weight (Adam moments were sliced, not reset)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    model.learn(96, reset_num_timesteps=False)
    trained = {id(p) for opt in optimizers(model) for g in opt.param_groups for p in g["params"]}
    for n, p in policy.named_parameters():
        if id(p) in trained and p.dim() == 2 and "log_std" not in n:
            assert not th.equal(before[n], p.detach()), f"{n} did not train after pruning"
    assert_sb3_consistent(model)


def test_callback_path_equals_wrap_path() -> None:
    """`learn(callback=PruningCallback(...))` prunes exactly like `wrap()`."""
    from tdmpc_prune.sb3 import PruningCallback

    a = wrap(make("ppo"), criterion="magnitude", **SCHEDULE)
    a.learn(STEPS)
    b = make("ppo")
    b.learn(STEPS, callback=PruningCallback(criterion="magnitude", **SCHEDULE))
    assert get_pruner(a).history == get_pruner(b).history
    obs = obs_batch(a)
    for k, v in heads(a, obs).items():
        assert th.allclose(v, heads(b, obs)[k], atol=TOL), k


@pytest.mark.parametrize("name", ["ppo", "sac"])
def test_a_pruning_run_is_the_dense_run_until_its_first_event(name: str) -> None:
    """Building the pruner, statistics and prune/* logging consume no randomness and (l1=0) change no
    gradient: before its first event the wrapped model trains exactly like the dense one."""
    dense = make(name)
    dense.learn(STEPS)
    watched = wrap(make(name), criterion="bayes", schedule="oneshot", start=10**6, heatmap=False)
    watched.learn(STEPS)
    assert get_pruner(watched).history == [] and float(get_pruner(watched).stats.n_obs) > 0
    a, b = dense.policy.state_dict(), watched.policy.state_dict()
    assert a.keys() == b.keys() and all(th.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------- masked == pruned
@pytest.mark.parametrize("name", ["ppo", "a2c", "sac", "td3", "dqn"])
def test_masked_equals_pruned(name: str, tmp_path) -> None:
    """A mask-mode run, and a copy of it with the masked channels physically removed, agree to 1e-6.

    The policies use a features extractor with weights shared by all heads, and coupling="prune",
    so the shared features (read through SB3's concat of features and actions) shrink too.
    """
    masked = wrap(make(name, extractor=True), criterion="random", coupling="prune", physical=False, **SCHEDULE)
    masked.learn(STEPS)
    pm = get_pruner(masked)
    assert pm.sparsity() == pytest.approx(0.5, abs=0.02)
    assert any(g.kind == "coupling" for g in pm.groups)
    masked.save(tmp_path / "masked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pruned extractor width is not expressible by net_arch
        pruned = load(tmp_path / "masked.zip")
        get_pruner(pruned).finalize()
    n_pruned = sum(p.numel() for p in pruned.policy.parameters())
    assert n_pruned < sum(p.numel() for p in masked.policy.parameters())
    assert get_pruner(pruned).param_count() == n_pruned
    extractors = [m for m in pruned.policy.modules() if isinstance(m, LinearExtractor)]
    assert extractors and all(m.net[0].out_features == 8 for m in extractors)  # the shared features shrank
    obs = obs_batch(masked)
    a, b = heads(masked, obs), heads(pruned, obs)
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert (a[key] - b[key]).abs().max().item() <= TOL, f"{key}: {(a[key] - b[key]).abs().max().item()}"
    assert_sb3_consistent(pruned)


def test_cnn_policy_with_separate_extractors_masked_equals_pruned(tmp_path) -> None:
    """NatureCNN extractors, one per head (share_features_extractor=False): convs, flatten, linear."""
    image = gym.spaces.Box(0, 255, (40, 40, 3), np.uint8)
    kwargs = dict(net_arch=[16], share_features_extractor=False, features_extractor_kwargs=dict(features_dim=32))
    model = PPO("CnnPolicy", SpaceEnv(image, gym.spaces.Discrete(3)), n_steps=32, batch_size=32, n_epochs=1, policy_kwargs=kwargs, seed=0, device="cpu")
    model = wrap(model, criterion="magnitude", coupling="prune", physical=False, **SCHEDULE)
    model.learn(128)
    pruner = get_pruner(model)
    assert {c for g in pruner.groups for c in g.components} == {"pi_features_extractor", "vf_features_extractor", "policy_net", "value_net"}
    model.save(tmp_path / "cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = load(tmp_path / "cnn.zip")
        get_pruner(pruned).finalize()
    for extractor in (pruned.policy.pi_features_extractor, pruned.policy.vf_features_extractor):
        assert [m.out_channels for m in extractor.cnn if isinstance(m, nn.Conv2d)] == [16, 32, 32]
    obs = th.as_tensor(np.random.default_rng(0).integers(0, 256, (8, 3, 40, 40)), dtype=th.uint8)
    a, b = heads(model, obs), heads(pruned, obs)
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= TOL, key
