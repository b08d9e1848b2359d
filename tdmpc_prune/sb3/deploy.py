"""Export a (pruned or stock) Stable-Baselines3 policy to ONNX along SB3's documented recipe.

    from tdmpc_prune.sb3 import export
    export(model, "ppo_cartpole.onnx")       # obs (batch, *obs_shape) -> action (batch, *action_shape)

SB3's recipe wraps `policy(obs, deterministic=True)` (for SAC and TD3 only the actor) in a module
and calls `torch.onnx.export`; its post-processing is left to the user. Here the graph also holds
that post-processing, so it returns exactly what `model.predict(obs, deterministic=True)` returns:
observation preprocessing (image scaling, one-hot of Discrete observations) as in SB3, then
Box actions of squashing policies (SAC, TD3) rescaled from [-1, 1] to [low, high], other Box
actions (PPO, A2C) clipped to [low, high], Discrete actions as int64 indices (argmax for DQN).
The graph is checked against `model.predict` on random observations before it is written.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Union

import numpy as np
import torch as th
import torch.nn as nn
from gymnasium import spaces

from .. import deploy
from ..errors import ExportError, PruneError
from .components import check_supported

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


class ActingGraph(nn.Module):
    """obs -> the deterministic action of an SB3 policy, post-processed as `predict` does."""

    def __init__(self, policy: nn.Module, action_space: spaces.Space):
        super().__init__()
        self.policy = policy
        self.box = isinstance(action_space, spaces.Box)
        self.squash = bool(getattr(policy, "squash_output", False))
        self.shape = tuple(action_space.shape)
        if self.box:
            self.register_buffer("low", th.as_tensor(action_space.low, dtype=th.float32))
            self.register_buffer("high", th.as_tensor(action_space.high, dtype=th.float32))

    def forward(self, obs: th.Tensor) -> th.Tensor:
        action = self.policy._predict(obs, deterministic=True)  # SAC/TD3: the actor only
        action = action.reshape(-1, *self.shape)
        if not self.box:
            return action
        if self.squash:
            return self.low + 0.5 * (action + 1.0) * (self.high - self.low)
        return th.maximum(th.minimum(action, self.high), self.low)

    @property
    def postprocessing(self) -> str:
        if not self.box:
            return "discrete action index (int64)"
        return "rescaled from [-1, 1] to [low, high]" if self.squash else "clipped to [low, high]"


def _check(model: "BaseAlgorithm") -> None:
    try:
        check_supported(model)
    except PruneError as e:
        raise ExportError(f"cannot export: {e}") from None


def export(model: "BaseAlgorithm", path: Union[str, os.PathLike], n_check: int = 64, seed: int = 0) -> Dict[str, Any]:
    """Write `model`'s deterministic acting graph to `path` (".onnx" appended if missing).

    The graph takes `obs` (batch, *observation shape, the observation space's dtype) and returns
    `action` (batch, *action shape); it is compared with `model.predict(obs, deterministic=True)`
    on `n_check` observations sampled from the observation space (max abs diff <= 1e-5).
    Returns path, max_abs_diff, the input/output shapes and what the action post-processing is.
    """
    deploy.require_onnx()
    _check(model)
    path = deploy.writable_file(path)
    policy = model.policy
    graph = ActingGraph(policy, model.action_space).to(policy.device)
    space = model.observation_space
    space.seed(seed)
    obs = np.stack([space.sample() for _ in range(n_check)])
    if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
        obs = np.clip(obs, -10, 10).astype(space.dtype)  # "bounded" by float32 max, a dim samples up to 3e38
    expected = model.predict(obs, deterministic=True)[0].reshape(n_check, *model.action_space.shape)
    example = th.as_tensor(obs[:2], device=policy.device)
    modes = [(m, m.training) for m in policy.modules()]
    policy.set_training_mode(False)
    try:
        with deploy.staging(os.path.dirname(os.path.abspath(path))) as stage:
            staged = os.path.join(stage, os.path.basename(path))
            deploy.export_onnx(graph, [example], staged, ["obs"], ["action"], batch_inputs=["obs"])
            diff = deploy.check(staged, {"obs": obs}, {"action": expected}, what=f"{type(model).__name__} policy")
    finally:
        for m, mode in modes:
            m.training = mode
    return {
        "path": path,
        "max_abs_diff": diff,
        "inputs": {"obs": ["batch", *space.shape]},
        "outputs": {"action": ["batch", *model.action_space.shape]},
        "action": graph.postprocessing,
    }
