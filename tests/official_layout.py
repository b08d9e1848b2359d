"""A world model with the official tdmpc2 layout and API, written for the tests from its published facts.

Attributes `_encoder` (ModuleDict 'state'), `_dynamics`, `_reward`, `_termination` (episodic),
`_pi`, `_Qs` (tensordict `from_modules` run under `torch.vmap`), `_detach_Qs_params` (shares
storage with `_Qs.params`), `_target_Qs_params` (a clone), `_task_emb` (multitask); methods
`encode(obs, task)`, `next(z, a, task)`, `reward(z, a, task)`, `termination(z, task)`,
`pi(z, task) -> (action, info)`, `Q(z, a, task, return_type, target, detach)`.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

from toy_models import SimNorm, TensorDictEnsemble, add_official_q_copies, mlp


def official_cfg(**kw) -> SimpleNamespace:
    base = dict(obs="state", obs_dim=7, action_dim=3, latent_dim=32, enc_dim=40, mlp_dim=48, num_enc_layers=2,
                num_bins=21, num_q=4, dropout=0.01, simnorm_dim=8, multitask=False, tasks=["a"], task_dim=0,
                episodic=False, log_std_min=-10.0, log_std_max=2.0, tau=0.01, compile=False)
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
        q = out[:2].softmax(-1) @ torch.linspace(-10, 10, out.shape[-1], device=out.device)
        return q.min(0).values if return_type == "min" else q.mean(0)
