"""A world model with the official tdmpc2 layout and API, written for the tests from its published facts.

Attributes `_encoder` (ModuleDict 'state'), `_dynamics`, `_reward`, `_termination` (episodic),
`_pi`, `_Qs` (tensordict `from_modules` run under `torch.vmap`), `_detach_Qs_params` (shares
storage with `_Qs.params`), `_target_Qs_params` (a clone), `_task_emb` (multitask); methods
`encode(obs, task)`, `next(z, a, task)`, `reward(z, a, task)`, `termination(z, task)`,
`pi(z, task) -> (action, info)`, `Q(z, a, task, return_type, target, detach)` (min/avg of two
members drawn with `torch.randperm`, decoded by the official two-hot inverse), `soft_update_target_Q()`
(`_target_Qs_params.lerp_(_detach_Qs_params, tau)`), `to()` re-running `init()`, `train()` keeping
the target in eval mode.

Two ways of installing the Q copies:

* `OfficialLayoutWorldModel` (`toy_models.add_official_q_copies`): `_detach_Qs.params` and
  `_target_Qs.params` are assigned as ordinary attributes, so they are registered submodules of the
  copies (their tensors appear a second time in `state_dict()` under `_detach_Qs.params.*`).
* `OfficialInitWorldModel` (`install_official_q_copies`): the current official `WorldModel.init()`,
  which `delattr`s the copies' `params` and puts the TensorDictParams into their `__dict__`, so the
  copies' params are plain (unregistered) attributes that only `_detach_Qs_params` /
  `_target_Qs_params` register.
"""
from __future__ import annotations

from copy import deepcopy
from types import SimpleNamespace

import torch
import torch.nn as nn

from toy_models import SimNorm, TensorDictEnsemble, add_official_q_copies, mlp


def official_cfg(**kw) -> SimpleNamespace:
    base = dict(obs="state", obs_dim=7, action_dim=3, latent_dim=32, enc_dim=40, mlp_dim=48, num_enc_layers=2,
                num_bins=21, num_q=4, dropout=0.01, simnorm_dim=8, multitask=False, tasks=["a"], task_dim=0,
                episodic=False, log_std_min=-10.0, log_std_max=2.0, tau=0.01, compile=False, vmin=-10.0, vmax=10.0)
    base.update(kw)
    if base["multitask"]:
        base["task_dim"] = base["task_dim"] or 16
    return SimpleNamespace(**base)


class OfficialLayoutWorldModel(nn.Module):
    def __init__(self, cfg: SimpleNamespace):
        super().__init__()
        self.cfg = cfg
        td = cfg.task_dim if cfg.multitask else 0
        z, a = cfg.latent_dim, cfg.action_dim
        if cfg.multitask:
            self._task_emb = nn.Embedding(len(cfg.tasks), td, max_norm=1)
        enc = mlp(cfg.obs_dim + td, max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim], z, act=SimNorm(cfg.simnorm_dim))
        self._encoder = nn.ModuleDict({"state": enc})
        self._dynamics = mlp(z + a + td, 2 * [cfg.mlp_dim], z, act=SimNorm(cfg.simnorm_dim))
        self._reward = mlp(z + a + td, 2 * [cfg.mlp_dim], cfg.num_bins)
        self._termination = mlp(z + td, 2 * [cfg.mlp_dim], 1) if cfg.episodic else None
        self._pi = mlp(z + td, 2 * [cfg.mlp_dim], 2 * a)
        self._Qs = TensorDictEnsemble([mlp(z + a + td, 2 * [cfg.mlp_dim], cfg.num_bins, dropout=cfg.dropout) for _ in range(cfg.num_q)])
        self.register_buffer("log_std_min", torch.tensor(cfg.log_std_min))
        self.register_buffer("log_std_dif", torch.tensor(cfg.log_std_max - cfg.log_std_min))
        self.init()

    def init(self) -> None:
        add_official_q_copies(self)

    def to(self, *args, **kwargs):  # official: moving re-creates the Q copies (the target from the online Qs)
        super().to(*args, **kwargs)
        self.init()
        return self

    def train(self, mode: bool = True):  # official: the target Qs stay in eval mode
        super().train(mode)
        self._target_Qs.train(False)
        return self

    @torch.no_grad()
    def soft_update_target_Q(self) -> None:
        self._target_Qs_params.lerp_(self._detach_Qs_params, self.cfg.tau)

    def task_emb(self, x, task):
        emb = self._task_emb(task.long())
        if x.ndim == 3:
            emb = emb.unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x, emb], dim=-1)

    def _t(self, x, task):
        return self.task_emb(x, task) if self.cfg.multitask else x

    def encode(self, obs, task):
        return self._encoder[self.cfg.obs](self._t(obs, task))

    def next(self, z, a, task):
        return self._dynamics(torch.cat([self._t(z, task), a], -1))

    def reward(self, z, a, task):
        return self._reward(torch.cat([self._t(z, task), a], -1))

    def termination(self, z, task, unnormalized=False):
        logit = self._termination(self._t(z, task))
        return logit if unnormalized else torch.sigmoid(logit)

    def pi(self, z, task):
        mu, log_std = self._pi(self._t(z, task)).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * self.log_std_dif * (torch.tanh(log_std) + 1)
        action = torch.tanh(mu + torch.randn_like(mu) * log_std.exp())
        return action, {"mean": torch.tanh(mu), "log_std": log_std}

    def Q(self, z, a, task, return_type="min", target=False, detach=False):
        x = torch.cat([self._t(z, task), a], -1)
        net = self._target_Qs if target else self._detach_Qs if detach else self._Qs
        out = net(x)
        if return_type == "all":
            return out
        qidx = torch.randperm(self.cfg.num_q, device=out.device)[:2]  # two random members, as the official
        q = two_hot_inv(out[qidx], self.cfg)
        return q.min(0).values if return_type == "min" else q.sum(0) / 2


def two_hot_inv(x: torch.Tensor, cfg: SimpleNamespace) -> torch.Tensor:
    """The official `math.two_hot_inv`: expected bin value of the softmax (..., 1), then symexp."""
    bins = torch.linspace(cfg.vmin, cfg.vmax, cfg.num_bins, device=x.device, dtype=x.dtype)
    x = torch.sum(torch.softmax(x, dim=-1) * bins, dim=-1, keepdim=True)
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


def install_official_q_copies(wm: nn.Module) -> None:
    """The official `WorldModel.init()` (tdmpc2/common/world_model.py), step for step.

    `_detach_Qs_params` wraps the online `_Qs.params.data` (same storage, no gradient),
    `_target_Qs_params` a clone of it; both copies are deep copies of `_Qs` made while its template
    holds meta tensors, and their `params` are then swapped, via `delattr` and the instance
    `__dict__`, for those TensorDictParams *without* registering them as submodules of the copies
    (the official comment: to avoid duplicated tensors in the state dict).
    """
    from tensordict.nn import TensorDictParams

    wm._detach_Qs_params = TensorDictParams(wm._Qs.params.data, no_convert=True)
    wm._target_Qs_params = TensorDictParams(wm._Qs.params.data.clone(), no_convert=True)
    with wm._detach_Qs_params.data.to("meta").to_module(wm._Qs.module):
        wm._detach_Qs = deepcopy(wm._Qs)
        wm._target_Qs = deepcopy(wm._Qs)
    delattr(wm._detach_Qs, "params")
    wm._detach_Qs.__dict__["params"] = wm._detach_Qs_params
    delattr(wm._target_Qs, "params")
    wm._target_Qs.__dict__["params"] = wm._target_Qs_params


class OfficialInitWorldModel(OfficialLayoutWorldModel):
    """`OfficialLayoutWorldModel` whose Q copies are installed exactly as the official `init()` does."""

    def init(self) -> None:
        install_official_q_copies(self)
