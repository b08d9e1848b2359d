"""The TD-MPC2 implicit world model, with the official attribute names and layer types.

Components (all `mlp`s of `NormedLinear` blocks, see `layers.py`):

* `_encoder['state']`  obs (+task emb) -> latent z, ends in SimNorm
* `_dynamics`          [z, a] -> next z, ends in SimNorm
* `_reward`            [z, a] -> reward logits over `num_bins` (symlog two-hot)
* `_termination`       z -> termination logit (only when `cfg.episodic`; else None)
* `_pi`                z -> mean and log-std of a tanh-squashed Gaussian
* `_Qs`                `StackedEnsemble` of `num_q` critics [z, a] -> value logits (vmapped),
  with `_detach_Qs` (shares storage, no gradient; not saved) and `_target_Qs` (EMA copy)
* `_task_emb`          task id -> embedding concatenated to every input (multitask only)

Widths live only in the modules' tensors: nothing here caches latent or hidden sizes, so layers
may be shrunk in place (pruning) between calls.
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.func import functional_call

from ..ensemble import StackedEnsemble
from . import functional as Fn
from ..errors import ModelError, RunError
from .config import TDMPC2Config
from .layers import SimNorm, mlp, weight_init

Task = Optional[Union[int, torch.Tensor]]


class WorldModel(nn.Module):
    """TD-MPC2 world model: encoder, latent dynamics, reward, (termination), policy prior, Q-ensemble."""

    def __init__(self, cfg: TDMPC2Config):
        super().__init__()
        if cfg.obs_dim is None or cfg.action_dim is None:
            raise ModelError("cfg.obs_dim and cfg.action_dim must be set (they come from the environment)")
        self.cfg = cfg
        w = cfg.widths()
        td = cfg.task_dim if cfg.multitask else 0
        z, a, bins = cfg.latent_dim, cfg.action_dim, max(cfg.num_bins, 1)
        if cfg.multitask:
            self._task_emb = nn.Embedding(cfg.num_tasks, td, max_norm=1)
            masks = torch.zeros(cfg.num_tasks, a)
            for i, dim in enumerate(cfg.action_dims or [a] * cfg.num_tasks):
                masks[i, :dim] = 1.0
            self.register_buffer("_action_masks", masks)
        self._encoder = nn.ModuleDict({"state": mlp(cfg.obs_dim + td, w["enc_dims"], z, act=SimNorm(cfg.simnorm_dim))})
        self._dynamics = mlp(z + a + td, w["dynamics_dims"], z, act=SimNorm(cfg.simnorm_dim))
        self._reward = mlp(z + a + td, w["reward_dims"], bins)
        self._termination = mlp(z + td, w["termination_dims"], 1) if cfg.episodic else None
        self._pi = mlp(z + td, w["pi_dims"], 2 * a)
        self.apply(weight_init)
        nn.init.zeros_(self._reward[-1].weight)
        critics = [mlp(z + a + td, w["q_dims"], bins, dropout=cfg.dropout) for _ in range(cfg.num_q)]
        for q in critics:
            q.apply(weight_init)
            nn.init.zeros_(q[-1].weight)
        self._Qs = StackedEnsemble.from_modules(critics)
        self._target_Qs = self._Qs.copy()
        self._detach_Qs = self._Qs.shared_view()
        self.register_buffer("log_std_min", torch.tensor(float(cfg.log_std_min)))
        self.register_buffer("log_std_dif", torch.tensor(float(cfg.log_std_max - cfg.log_std_min)))

    # ------------------------------------------------------------------------------ bookkeeping
    def refresh_views(self) -> None:
        """Re-create `_detach_Qs` so it shares storage with `_Qs` again (after `.to()` or a resize)."""
        self._detach_Qs = self._Qs.shared_view()

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .float(), ... copy tensors: re-share
        super()._apply(fn, recurse)
        self.refresh_views()
        return self

    @property
    def total_params(self) -> int:
        """Learnable parameters (the target and detached Q views are not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def components(self) -> Dict[str, nn.Module]:
        out = {"encoder": self._encoder, "dynamics": self._dynamics, "reward": self._reward}
        if self._termination is not None:
            out["termination"] = self._termination
        out.update({"pi": self._pi, "Qs": self._Qs})
        if self.cfg.multitask:
            out["task_emb"] = self._task_emb
        return out

    def __repr__(self) -> str:
        lines = ["TD-MPC2 World Model"]
        for name, m in self.components().items():
            if isinstance(m, StackedEnsemble):
                body = f"{len(m)}x {m.template!r}"
            elif isinstance(m, nn.ModuleDict):
                body = ", ".join(f"{k}: {v!r}" for k, v in m.items())
            else:
                body = repr(m)
            lines.append(f"  {name}: {body}")
        lines.append(f"Learnable parameters: {self.total_params:,}")
        return "\n".join(lines)

    @torch.no_grad()
    def soft_update_target_Q(self) -> None:
        """Polyak update: target <- lerp(target, online, tau). Tensors are looked up anew on every call."""
        target = self._target_Qs.tensor_dict()
        dst, src = [], []
        for name, online in self._Qs.named_tensors():
            t = target[name]
            if t.shape != online.shape:
                raise RunError(
                    f"target Q tensor {name!r} has shape {tuple(t.shape)} but the online one {tuple(online.shape)}: "
                    "shrink the target ensemble together with the online one"
                )
            dst.append(t)
            src.append(online.detach())
        torch._foreach_lerp_(dst, src, self.cfg.tau)

    # ------------------------------------------------------------------------------ heads
    def task_emb(self, x: torch.Tensor, task: Task) -> torch.Tensor:
        """Concatenate the embedding of `task` (an int or a (B,) tensor of ids) to `x`."""
        if isinstance(task, int):
            task = torch.tensor([task], device=x.device)
        emb = self._task_emb(task.long())
        if x.ndim == 3:
            emb = emb.unsqueeze(0).expand(x.shape[0], *emb.shape)
        if emb.shape[-2] == 1 and x.shape[-2] != 1:
            emb = emb.expand(*x.shape[:-1], emb.shape[-1])
        return torch.cat([x, emb], dim=-1)

    def _in(self, z: torch.Tensor, task: Task, a: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.cfg.multitask:
            z = self.task_emb(z, task)
        return z if a is None else torch.cat([z, a], dim=-1)

    def encode(self, obs: torch.Tensor, task: Task = None) -> torch.Tensor:
        """obs (..., obs_dim) -> latent (..., latent_dim) on the SimNorm simplex product."""
        return self._encoder[self.cfg.obs](self._in(obs, task))

    def next(self, z: torch.Tensor, a: torch.Tensor, task: Task = None) -> torch.Tensor:
        """Latent dynamics: (z, a) -> next z."""
        return self._dynamics(self._in(z, task, a))

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: Task = None) -> torch.Tensor:
        """Reward logits (..., num_bins); decode with `functional.two_hot_inv`."""
        return self._reward(self._in(z, task, a))

    def termination(self, z: torch.Tensor, task: Task = None, unnormalized: bool = False) -> torch.Tensor:
        """Termination probability (..., 1) (a logit with `unnormalized=True`). Episodic models only."""
        if self._termination is None:
            raise RunError("this world model has no termination head: build it with episodic=true")
        logit = self._termination(self._in(z, task))
        return logit if unnormalized else torch.sigmoid(logit)

    def pi(
        self, z: torch.Tensor, task: Task = None, eps: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Sample a tanh-squashed Gaussian action; info has mean, log_std, entropy and scaled_entropy.

        `eps` (standard normal, shaped like the action) is the draw to use; by default one is drawn.
        """
        mean, log_std = self._pi(self._in(z, task)).chunk(2, dim=-1)
        log_std = Fn.bounded_log_std(log_std, self.log_std_min, self.log_std_dif)
        eps = torch.randn_like(mean) if eps is None else eps
        if self.cfg.multitask:  # mask out the action dims a task does not have
            mask = self._action_masks[task]
            mean, log_std, eps = mean * mask, log_std * mask, eps * mask
            size = mask.sum(-1, keepdim=True)
        else:
            size = mean.shape[-1]
        log_prob = Fn.gaussian_logprob(eps, log_std)
        mean, action, log_prob = Fn.squash(mean, mean + eps * log_std.exp(), log_prob)
        entropy = -log_prob
        return action, {"mean": mean, "log_std": log_std, "entropy": entropy, "scaled_entropy": entropy * size}

    def Q(
        self,
        z: torch.Tensor,
        a: torch.Tensor,
        task: Task = None,
        return_type: str = "min",
        target: bool = False,
        detach: bool = False,
        draws: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """State-action value.

        `all`: logits of every member, (num_q, ..., num_bins).  `min` / `avg`: min or mean of two
        randomly chosen members, decoded to scalars (..., 1); only those two members are evaluated.
        `target` uses the EMA target ensemble, always without dropout (the Q template is shared by the
        online, detached and target ensembles, so its mode is switched off for the call);
        `detach` uses the gradient-free view. `draws` (num_q,) uniform: the two members are those
        with the largest draws (by default drawn here).
        """
        if return_type not in ("min", "avg", "all"):
            raise ModelError(f"return_type must be 'min', 'avg' or 'all', got {return_type!r}")
        x = self._in(z, task, a)
        ens = self._target_Qs if target else self._detach_Qs if detach else self._Qs
        with _eval_template(ens) if target else contextlib.nullcontext():
            if return_type == "all":
                return ens(x)
            if len(ens) == 2:  # the two members are the whole ensemble (min/avg do not depend on order)
                out = ens(x)
            else:
                draws = torch.rand(len(ens), device=x.device) if draws is None else draws
                idx = critic_pair(draws)
                out = _ensemble_subset(ens, idx, x)
        q = Fn.two_hot_inv(out, self.cfg.num_bins, self.cfg.vmin, self.cfg.vmax)
        return q.min(0).values if return_type == "min" else q.mean(0)


def critic_pair(draws: torch.Tensor) -> torch.Tensor:
    """Two distinct critics, uniformly: the indices of the two largest of `draws` (num_q,) uniform."""
    return draws.topk(2).indices


def _ensemble_subset(ens: StackedEnsemble, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run only the members `idx` of a stacked ensemble on `x` (one vmapped call, no wasted members)."""
    params = {k: v.index_select(0, idx) for k, v in ens.named_tensors()}
    call = partial(functional_call, ens.template)
    return torch.vmap(lambda p, inp: call(p, (inp,)), in_dims=(0, None), randomness="different")(params, x)


@contextlib.contextmanager
def _eval_template(ens: StackedEnsemble) -> Iterator[None]:
    """Evaluate `ens` with its (shared) template in eval mode, restoring the previous modes after."""
    modes = [(m, m.training) for m in ens.template.modules()]
    if not any(t for _, t in modes):
        yield
        return
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t
