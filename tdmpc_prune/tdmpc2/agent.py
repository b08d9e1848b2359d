"""The TD-MPC2 agent: world model + optimisers + running Q scale + MPPI planner.

`update` performs one iteration of model learning (latent rollout with consistency, reward,
termination and value losses, then the policy update and the soft target update) and returns its
statistics as 0-dim tensors -- there is no host synchronisation inside an update; convert with
`to_floats` when logging.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import functional as Fn
from .config import ConfigError, TDMPC2Config
from .planner import MPPIPlanner
from .scale import RunningScale
from .world_model import WorldModel


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """`auto` picks CUDA when available; `cuda` without a GPU raises a clear error."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} requested but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def to_floats(info: Mapping[str, Any]) -> Dict[str, float]:
    """Convert an update's statistics to Python floats (one host sync for the whole dict)."""
    keys = list(info)
    if not keys:
        return {}
    values = torch.stack([torch.as_tensor(info[k], dtype=torch.float32).detach().reshape(()).cpu() for k in keys]).tolist()
    return dict(zip(keys, values))


class TDMPC2:
    """TD-MPC2 agent (single- or multi-task world model; the trainer drives single-task runs)."""

    def __init__(self, cfg: TDMPC2Config, device: Union[str, torch.device, None] = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device if device is None else device)
        self.model = WorldModel(cfg).to(self.device)
        self.model.eval()
        self.optim = torch.optim.Adam(self._model_param_groups(), lr=cfg.lr)
        self.pi_optim = torch.optim.Adam(self.model._pi.parameters(), lr=cfg.lr, eps=1e-5)
        self.scale = RunningScale(cfg.tau).to(self.device)
        self.planner = MPPIPlanner(cfg, self.device)
        self.discount = cfg.discount  # one discount: every dm-control task has the same episode length
        self.recompile()

    def _model_param_groups(self) -> list:
        """Model optimiser groups: encoder at `lr * enc_lr_scale`, the rest at `lr` (official scales)."""
        m, cfg = self.model, self.cfg
        groups = [
            {"params": list(m._encoder.parameters()), "lr": cfg.lr * cfg.enc_lr_scale, "name": "encoder"},
            {"params": list(m._dynamics.parameters()), "name": "dynamics"},
            {"params": list(m._reward.parameters()), "name": "reward"},
        ]
        if m._termination is not None:
            groups.append({"params": list(m._termination.parameters()), "name": "termination"})
        groups.append({"params": list(m._Qs.parameters()), "name": "Qs"})
        if cfg.multitask:
            groups.append({"params": list(m._task_emb.parameters()), "name": "task_emb"})
        return groups

    def recompile(self) -> None:
        """(Re)create the update and plan callables; with `cfg.compile`, wrap them in `torch.compile`.

        Call after layer shapes change (pruning). With `compile=true` this also clears dynamo's caches
        (process-wide, `torch.compiler.reset()`): otherwise every shape change would add a guarded
        recompilation until dynamo's cache limit silently falls back to eager.
        """
        self._update_fn = self._update
        self._plan_fn = self.planner.plan
        if self.cfg.compile:
            torch.compiler.reset()
            # default mode: CUDA graphs ("reduce-overhead") would need capturable optimisers and static inputs
            self._update_fn = torch.compile(self._update)
            self._plan_fn = torch.compile(self.planner.plan)

    # ------------------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, obs: Union[torch.Tensor, np.ndarray], t0: bool = False, eval_mode: bool = False, task: Optional[int] = None) -> torch.Tensor:
        """Action (action_dim,) in [-1, 1] for one observation: MPPI planning (cfg.mpc) or the policy prior."""
        obs = torch.as_tensor(obs, dtype=torch.float32).to(self.device, non_blocking=True).unsqueeze(0)
        task_t = torch.tensor([task], device=self.device) if task is not None else None
        if self.cfg.mpc:
            return self._plan_fn(self.model, obs, t0=t0, eval_mode=eval_mode, task=task_t, discount=self.discount)
        z = self.model.encode(obs, task_t)
        action, info = self.model.pi(z, task_t)
        return (info["mean"] if eval_mode else action)[0]

    # ------------------------------------------------------------------------------ learning
    def update(self, buffer) -> Dict[str, torch.Tensor]:
        """One gradient step on a batch from `buffer.sample()`; statistics as 0-dim tensors."""
        obs, action, reward, terminated, task = buffer.sample()
        return self._update_fn(obs, action, reward, terminated, task)

    @torch.no_grad()
    def _td_target(self, next_z: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor, task) -> torch.Tensor:
        action, _ = self.model.pi(next_z, task)
        q = self.model.Q(next_z, action, task, return_type="min", target=True)
        return reward + self.discount * (1 - terminated) * q

    def _update(self, obs, action, reward, terminated, task=None) -> Dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.model
        with torch.no_grad():
            next_z = model.encode(obs[1:], task)
            td_targets = self._td_target(next_z, reward, terminated, task)

        model.train()
        zs, losses = self.model_losses(obs[0], action, reward, terminated, next_z, td_targets, task)
        total_loss = losses["total_loss"]
        total_loss.backward()
        params = [p for g in self.optim.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)

        info = self._update_pi(zs.detach(), task)
        model.soft_update_target_Q()
        model.eval()
        info.update(losses)
        info["grad_norm"] = grad_norm
        return {k: v.detach() for k, v in info.items()}

    def model_losses(self, obs0, action, reward, terminated, next_z, td_targets, task=None):
        """World-model losses of one batch: latent rollout from `obs0` over the horizon.

        consistency = sum_t rho^t mse(z_{t+1}, enc(o_{t+1})) / H
        reward      = sum_t rho^t CE(R(z_t, a_t), twohot(r_t)) / H
        value       = sum_{t,q} rho^t CE(Q_q(z_t, a_t), twohot(td_t)) / (H * num_q)
        termination = BCE(T(z_{t+1}), d_t)  (episodic only)
        Returns the latent rollout zs (H+1, B, L) and the losses (with `total_loss`).
        """
        cfg, model = self.cfg, self.model
        bins = (cfg.num_bins, cfg.vmin, cfg.vmax)
        z = model.encode(obs0, task)
        zs = [z]
        for t in range(cfg.horizon):
            z = model.next(z, action[t], task)
            zs.append(z)
        zs = torch.stack(zs)  # (H+1, B, latent)
        rho = Fn.rho_weights(cfg.rho, cfg.horizon, zs)

        consistency = ((zs[1:] - next_z) ** 2).mean(dim=(1, 2)).mul(rho).sum() / cfg.horizon
        reward_pred = model.reward(zs[:-1], action, task)  # (H, B, bins)
        reward_loss = Fn.soft_ce(reward_pred, reward, *bins).mean(dim=(1, 2)).mul(rho).sum() / cfg.horizon
        qs = model.Q(zs[:-1], action, task, return_type="all")  # (num_q, H, B, bins)
        value_ce = -(Fn.two_hot(td_targets, *bins) * F.log_softmax(qs, dim=-1)).sum(-1)  # (num_q, H, B)
        value_loss = value_ce.mean(dim=2).mul(rho).sum() / (cfg.horizon * qs.shape[0])
        total = cfg.consistency_coef * consistency + cfg.reward_coef * reward_loss + cfg.value_coef * value_loss
        out = {"consistency_loss": consistency, "reward_loss": reward_loss, "value_loss": value_loss}
        if model._termination is not None:
            term_logit = model.termination(zs[1:], task, unnormalized=True)
            termination_loss = F.binary_cross_entropy_with_logits(term_logit, terminated)
            total = total + cfg.termination_coef * termination_loss
            out["termination_loss"] = termination_loss
            out.update({k: v.detach() for k, v in _termination_stats(term_logit[-1], terminated[-1]).items()})
        out["total_loss"] = total
        return zs, out

    def _update_pi(self, zs: torch.Tensor, task) -> Dict[str, torch.Tensor]:
        """Policy step: maximise scaled Q plus entropy over the rollout latents, rho-discounted."""
        cfg = self.cfg
        action, info = self.model.pi(zs, task)
        qs = self.model.Q(zs, action, task, return_type="avg", detach=True)  # (H+1, B, 1)
        self.scale.update(qs[0])
        qs = self.scale(qs)
        rho = Fn.rho_weights(cfg.rho, qs.shape[0], qs)
        pi_loss = (-(cfg.entropy_coef * info["scaled_entropy"] + qs).mean(dim=(1, 2)) * rho).mean()
        pi_loss.backward()
        pi_grad_norm = torch.nn.utils.clip_grad_norm_(self.model._pi.parameters(), cfg.grad_clip_norm)
        self.pi_optim.step()
        self.pi_optim.zero_grad(set_to_none=True)
        return {
            "pi_loss": pi_loss.detach(),
            "pi_grad_norm": pi_grad_norm.detach(),
            "pi_entropy": info["entropy"].detach().mean(),
            "pi_scaled_entropy": info["scaled_entropy"].detach().mean(),
            "pi_scale": self.scale.value.detach().clone(),
        }

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Model, both optimisers, the running scale and the planner's warm-start mean."""
        return {
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "planner": {"prev_mean": self.planner.prev_mean.clone()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.model.refresh_views()
        # deep copies: Optimizer.load_state_dict keeps the given tensors, which would tie two agents' moments
        self.optim.load_state_dict(copy.deepcopy(state["optim"]))
        self.pi_optim.load_state_dict(copy.deepcopy(state["pi_optim"]))
        self.scale.load_state_dict(state["scale"])
        self.planner.prev_mean.copy_(state["planner"]["prev_mean"])

    def __repr__(self) -> str:
        return f"TDMPC2(device={self.device}, compile={self.cfg.compile})\n{self.model!r}"


def _termination_stats(prob_logit: torch.Tensor, target: torch.Tensor, eps: float = 1e-9) -> Dict[str, torch.Tensor]:
    """Rate of true terminations and F1 of the termination head (threshold 0.5) on one rollout step."""
    pred = torch.sigmoid(prob_logit).squeeze(-1) > 0.5
    target = target.squeeze(-1) > 0.5
    tp = (pred & target).sum().float()
    recall = tp / (target.sum() + eps)
    precision = tp / (pred.sum() + eps)
    return {
        "termination_rate": target.float().mean(),
        "termination_f1": 2 * precision * recall / (precision + recall + eps),
    }
