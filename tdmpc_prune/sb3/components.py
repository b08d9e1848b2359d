"""Per-algorithm wiring of a Stable-Baselines3 model to the core `Pruner`.

For each supported algorithm this module says which modules form which component, how to trace
the policy (the heads' outputs are the traced outputs, so action, value and Q dims never shrink),
which target networks mirror which online networks, which optimizers train them (in the order they
step within one update), and how the pruned widths map back onto `policy_kwargs["net_arch"]`.

A head (`action_net`, `value_net`, `mu`, `log_std`) belongs to the component of the trunk it reads:
its outputs are action/value dims that are never pruned, so it owns no group, and its input columns
shrink with the trunk's last layer inside that component's group.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch as th
import torch.nn as nn
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy, ContinuousCritic
from stable_baselines3.common.utils import get_parameters_by_name
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy

from ..adapter import Wiring as CoreWiring
from ..errors import PruneError
from ..timing import time_calls

NetArch = Union[List[int], Dict[str, List[int]]]
SUPPORTED = "PPO, A2C, SAC, TD3 (and its subclass DDPG) and DQN"


class Wiring(CoreWiring):
    """Everything the core needs to prune one SB3 policy (the core `Wiring` adapter over `model.policy`)."""

    @th.no_grad()
    def act_latency_ms(self) -> Optional[float]:
        """Median ms of one deterministic action of the policy for one observation (`policy._predict`)."""
        policy = self.model()
        obs = self.example_inputs()
        obs = (obs[0] if isinstance(obs, tuple) else obs)[:1]
        with th.random.fork_rng(devices=[obs.device] if obs.device.type == "cuda" else []), _eval_mode(policy):
            policy._predict(obs, deterministic=True)  # warm caches up
            return time_calls(lambda: policy._predict(obs, deterministic=True), obs.device, repeats=3).ms


# ------------------------------------------------------------------------------------ checks
def check_supported(model: BaseAlgorithm) -> None:
    """Raise a `PruneError` naming the problem for algorithms, policies and spaces we cannot prune."""
    if not isinstance(model, BaseAlgorithm):
        raise PruneError(f"expected a Stable-Baselines3 model (PPO, SAC, ...), got {type(model).__name__}")
    expected = {PPO: ActorCriticPolicy, A2C: ActorCriticPolicy, SAC: SACPolicy, TD3: TD3Policy, DQN: DQNPolicy}
    algo = next((a for a in expected if isinstance(model, a)), None)
    if algo is None:
        raise PruneError(f"tdmpc_prune.sb3 supports {SUPPORTED}; {type(model).__name__} is not supported")
    if not isinstance(model.policy, expected[algo]):
        raise PruneError(
            f"{algo.__name__} with policy {type(model.policy).__name__} is not supported: "
            f"use a {expected[algo].__name__} (e.g. 'MlpPolicy' or 'CnnPolicy') or a subclass of it"
        )
    for what, space in (("observation", model.observation_space), ("action", model.action_space)):
        if not isinstance(space, (spaces.Box, spaces.Discrete)):
            fix = (
                "flatten it with gymnasium.wrappers.FlattenObservation"
                if what == "observation"
                else "use a Box or Discrete action space"
            )
            raise PruneError(
                f"{what} space {space} is not supported: tdmpc_prune.sb3 handles Box and Discrete spaces; {fix}"
            )


def check_visible(policy: nn.Module, wiring: Wiring, exclude: Sequence[str] = ()) -> None:
    """Raise if a component has parameters the traced forward cannot reach through autograd.

    The dependency graph is built from autograd; a layer used under `torch.no_grad()`, after
    `.detach()` or through numpy is invisible to it, and pruning next to it would break shapes.
    """
    names = {id(p): n for n, p in policy.named_parameters()}
    excluded = tuple(exclude)
    params: Dict[str, List[th.Tensor]] = {}
    for comp, modules in wiring.components().items():
        for mod in modules:
            for p in mod.parameters():
                name = names.get(id(p), "?")
                if p.requires_grad and not any(name == e or name.startswith(e + ".") for e in excluded):
                    params.setdefault(comp, []).append(p)
    flat = [p for ps in params.values() for p in ps]
    if not flat:
        return
    with th.enable_grad():
        outputs = wiring.forward(policy, wiring.example_inputs())
        total = sum(o.float().sum() for o in outputs)
        grads = th.autograd.grad(total, flat, allow_unused=True)
    unseen = {id(p) for p, g in zip(flat, grads) if g is None}
    for comp, ps in params.items():
        missing = [names[id(p)] for p in ps if id(p) in unseen]
        if missing:
            module = missing[0].rsplit(".", 1)[0]
            raise PruneError(
                f"unsupported policy: the traced forward never reaches {', '.join(missing[:4])} "
                f"(component {comp!r}) through autograd, so the dependency graph cannot see it "
                "(torch.no_grad(), .detach() or numpy inside its forward?). Make that forward differentiable, "
                f"or leave the module dense with exclude=[{module!r}]"
            )


# ------------------------------------------------------------------------------------ tracing
@contextlib.contextmanager
def _eval_mode(policy: BasePolicy) -> Iterator[None]:
    """Trace in eval mode so BatchNorm statistics are not updated by tracing or FLOP counting."""
    modes = {m: m.training for m in policy.modules()}
    policy.train(False)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _sde_variance(latent: th.Tensor, log_std: th.Tensor) -> th.Tensor:
    # gSDE's log_std rows index the latent; returning the variance keeps that latent whole.
    return th.mm(latent**2, th.exp(log_std) ** 2)


def _actor_critic_forward(policy: ActorCriticPolicy, obs: th.Tensor) -> List[th.Tensor]:
    with _eval_mode(policy):
        features = policy.extract_features(obs)
        if policy.share_features_extractor:
            latent_pi, latent_vf = policy.mlp_extractor(features)
        else:
            latent_pi = policy.mlp_extractor.forward_actor(features[0])
            latent_vf = policy.mlp_extractor.forward_critic(features[1])
        outs = [policy.action_net(latent_pi), policy.value_net(latent_vf)]
        if policy.use_sde:
            outs.append(_sde_variance(latent_pi, policy.log_std))
    return outs


def _critic_forward(critic: ContinuousCritic, obs: th.Tensor, actions: th.Tensor) -> List[th.Tensor]:
    # SB3 computes shared features under no_grad in the critic; trace them with grad so the
    # features' consumers in every Q-network join the group.
    features = critic.extract_features(obs, critic.features_extractor)
    q_input = th.cat([features, actions], dim=-1)
    return [q(q_input) for q in critic.q_networks]


def _sac_forward(policy: SACPolicy, inputs: Tuple[th.Tensor, th.Tensor]) -> List[th.Tensor]:
    obs, actions = inputs
    with _eval_mode(policy):
        mean, log_std, extra = policy.actor.get_action_dist_params(obs)
        spread = _sde_variance(extra["latent_sde"], log_std) if policy.actor.use_sde else log_std
        return [mean, spread, *_critic_forward(policy.critic, obs, actions)]


def _td3_forward(policy: TD3Policy, inputs: Tuple[th.Tensor, th.Tensor]) -> List[th.Tensor]:
    obs, actions = inputs
    with _eval_mode(policy):
        return [policy.actor(obs), *_critic_forward(policy.critic, obs, actions)]


def _dqn_forward(policy: DQNPolicy, obs: th.Tensor) -> List[th.Tensor]:
    with _eval_mode(policy):
        return [policy.q_net(obs)]


def _example_obs(model: BaseAlgorithm, batch: int = 2) -> th.Tensor:
    """A batch of observations (zeros: values do not matter; the space's RNG is left untouched)."""
    space = model.observation_space
    if isinstance(space, spaces.Discrete):
        arr = np.full((batch,), space.start, dtype=np.int64)
    else:
        arr = np.zeros((batch, *space.shape), dtype=space.dtype)
    return th.as_tensor(arr, device=model.device)


def _example_actions(model: BaseAlgorithm, batch: int = 2) -> th.Tensor:
    dim = int(np.prod(model.action_space.shape))
    return th.zeros(batch, dim, device=model.device)


# ------------------------------------------------------------------------------------ wiring
def _mirror_pairs(online: nn.Module, mirror: nn.Module, seen: set) -> List[Tuple[nn.Module, nn.Module]]:
    """(online child, mirror child) pairs, skipping children already mirrored (shared extractors)."""
    pairs = []
    for name, child in online.named_children():
        if id(child) in seen or not any(True for _ in child.parameters()) and not any(True for _ in child.buffers()):
            continue
        seen.add(id(child))
        pairs.append((child, mirror.get_submodule(name)))
    return pairs


def _features_components(policy: ActorCriticPolicy) -> Dict[str, List[nn.Module]]:
    if policy.share_features_extractor:
        return {"features_extractor": [policy.features_extractor]}
    return {"pi_features_extractor": [policy.pi_features_extractor], "vf_features_extractor": [policy.vf_features_extractor]}


def wiring(model: BaseAlgorithm) -> Wiring:
    """The components, traced forward, mirrors and optimizers of `model`'s policy."""
    check_supported(model)
    policy = model.policy
    obs = _example_obs(model)
    if isinstance(policy, ActorCriticPolicy):
        heads = [policy.mlp_extractor.policy_net, policy.action_net]
        comps = {
            **_features_components(policy),
            "policy_net": heads,
            "value_net": [policy.mlp_extractor.value_net, policy.value_net],
        }
        return Wiring(policy, comps, obs, [policy.optimizer], _actor_critic_forward)
    if isinstance(policy, DQNPolicy):
        comps = {"features_extractor": [policy.q_net.features_extractor], "q_net": [policy.q_net.q_net]}
        mirrors = _mirror_pairs(policy.q_net, policy.q_net_target, set())
        return Wiring(policy, comps, obs, [policy.optimizer], _dqn_forward, mirrors=mirrors)
    # SAC / TD3: actor + critics, the critic optimizer steps first in every update
    actor, critic = policy.actor, policy.critic
    comps = {"features_extractor": [actor.features_extractor]}
    if critic.features_extractor is not actor.features_extractor:
        comps["critic_features_extractor"] = [critic.features_extractor]
    # "actor" is a prefix: latent_pi / mu / log_std, everything of the actor but its extractor
    comps["actor"] = [actor]
    for i, q in enumerate(critic.q_networks):
        comps[f"qf{i}"] = [q]
    seen: set = set()
    mirrors = []
    if isinstance(policy, TD3Policy):
        mirrors += _mirror_pairs(actor, policy.actor_target, seen)
    mirrors += _mirror_pairs(critic, policy.critic_target, seen)
    forward = _sac_forward if isinstance(policy, SACPolicy) else _td3_forward
    inputs = (obs, _example_actions(model))
    return Wiring(policy, comps, inputs, [critic.optimizer, actor.optimizer], forward, mirrors=mirrors)


def optimizers(model: BaseAlgorithm) -> List[th.optim.Optimizer]:
    """The optimizers that train the policy, the first one stepping first in each update."""
    return wiring(model).optimizers()


# ------------------------------------------------------------------------------------ after surgery
def _widths(seq: nn.Module) -> List[int]:
    return [m.out_features for m in seq.modules() if isinstance(m, nn.Linear)]


def net_arch(model: BaseAlgorithm) -> Optional[NetArch]:
    """The `net_arch` that builds the current (pruned) hidden widths, or None if it cannot express them."""
    policy = model.policy
    if isinstance(policy, ActorCriticPolicy):
        return {"pi": _widths(policy.mlp_extractor.policy_net), "vf": _widths(policy.mlp_extractor.value_net)}
    if isinstance(policy, DQNPolicy):
        return _widths(policy.q_net.q_net)[:-1]
    if isinstance(policy, SACPolicy):
        pi = _widths(policy.actor.latent_pi)
    else:
        pi = _widths(policy.actor.mu)[:-1]
    qfs = [_widths(q)[:-1] for q in policy.critic.q_networks]
    if any(q != qfs[0] for q in qfs):
        return None  # the critics were pruned to different widths: one `qf` list cannot say that
    return {"pi": pi, "qf": qfs[0]}


def build_policy(model: BaseAlgorithm, policy_kwargs: Dict[str, Any]) -> BasePolicy:
    """A fresh policy built the way the algorithm's `_setup_model` builds it (global RNG untouched)."""
    kwargs = dict(policy_kwargs)
    if isinstance(model, OnPolicyAlgorithm):
        kwargs["use_sde"] = model.use_sde
    with th.random.fork_rng(devices=[]):
        policy = model.policy_class(model.observation_space, model.action_space, model.lr_schedule, **kwargs)
    return policy.to(model.device)


def refresh_aliases(model: BaseAlgorithm) -> None:
    """Point the algorithm's cached aliases (actor, critic, q_net, batch-norm stats) at `model.policy`."""
    if isinstance(model, (SAC, TD3, DQN)):
        model._create_aliases()
    if isinstance(model, SAC):
        model.batch_norm_stats = get_parameters_by_name(model.critic, ["running_"])
        model.batch_norm_stats_target = get_parameters_by_name(model.critic_target, ["running_"])
    elif isinstance(model, TD3):
        model.actor_batch_norm_stats = get_parameters_by_name(model.actor, ["running_"])
        model.critic_batch_norm_stats = get_parameters_by_name(model.critic, ["running_"])
        model.actor_batch_norm_stats_target = get_parameters_by_name(model.actor_target, ["running_"])
        model.critic_batch_norm_stats_target = get_parameters_by_name(model.critic_target, ["running_"])
    elif isinstance(model, DQN):
        model.batch_norm_stats = get_parameters_by_name(model.q_net, ["running_"])
        model.batch_norm_stats_target = get_parameters_by_name(model.q_net_target, ["running_"])


def reset_noise(model: BaseAlgorithm) -> None:
    """Resample gSDE exploration matrices (their rows follow the latent's width)."""
    if getattr(model, "use_sde", False) and hasattr(model.policy, "reset_noise"):
        model.policy.reset_noise(model.n_envs)
