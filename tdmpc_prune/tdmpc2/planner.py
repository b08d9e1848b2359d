"""MPPI planning in the latent space of the world model (TD-MPC2, Algorithm 1 / Appendix)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import functional as Fn
from .config import TDMPC2Config
from .world_model import Task, WorldModel


class MPPIPlanner:
    """Model predictive path integral planner, warm-started from the previous step's mean.

    Each of `iterations` rounds scores `num_samples` action sequences of length `horizon`
    (`num_pi_trajs` of them rolled out by the policy prior, the rest Gaussian around the current
    mean) by model return + terminal value, then refits mean/std to the `num_elites` best,
    weighted by exp(temperature * value).  The only state kept between calls is the (horizon,
    action_dim) mean; nothing depends on the latent or hidden widths.
    """

    def __init__(self, cfg: TDMPC2Config, device: torch.device):
        self.cfg = cfg
        self.iterations = cfg.iterations + 2 * int(cfg.action_dim >= 20)  # official heuristic for large action spaces
        self.prev_mean = torch.zeros(cfg.horizon, cfg.action_dim, device=device)

    def to(self, device: Union[str, torch.device]) -> "MPPIPlanner":
        self.prev_mean = self.prev_mean.to(device)
        return self

    @torch.no_grad()
    def estimate_value(
        self, model: WorldModel, z: torch.Tensor, actions: torch.Tensor, discount: Union[float, torch.Tensor], task: Task = None
    ) -> torch.Tensor:
        """Discounted model return of `actions` (horizon, N, A) from latents z (N, L), plus the terminal Q."""
        cfg = self.cfg
        G = torch.zeros(z.shape[0], 1, device=z.device)
        alive = torch.ones_like(G)  # 1 until the (episodic) model predicts termination
        scale = 1.0
        for t in range(cfg.horizon):
            r = Fn.two_hot_inv(model.reward(z, actions[t], task), cfg.num_bins, cfg.vmin, cfg.vmax)
            z = model.next(z, actions[t], task)
            G = G + scale * alive * r
            scale = scale * discount
            if cfg.episodic:
                alive = alive * (model.termination(z, task) <= 0.5).float()
        action, _ = model.pi(z, task)
        return G + scale * alive * model.Q(z, action, task, return_type="avg")

    @torch.no_grad()
    def plan(
        self,
        model: WorldModel,
        obs: torch.Tensor,
        t0: bool = False,
        eval_mode: bool = False,
        task: Optional[torch.Tensor] = None,
        discount: Union[float, torch.Tensor] = 0.99,
    ) -> torch.Tensor:
        """Plan from a single observation `obs` (1, obs_dim); return the first action (A,) in [-1, 1]."""
        cfg = self.cfg
        H, N, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.action_dim
        z = model.encode(obs, task)
        mask = model._action_masks[task] if cfg.multitask else None

        pi_actions = None
        if P > 0:  # trajectories of the policy prior
            zp, acts = z.expand(P, -1), []
            for t in range(H):
                a, _ = model.pi(zp, task)
                acts.append(a)
                if t < H - 1:
                    zp = model.next(zp, a, task)
            pi_actions = torch.stack(acts)

        z = z.expand(N, -1)
        mean = torch.zeros(H, A, device=z.device)
        if not t0:
            mean[:-1] = self.prev_mean[1:]
        std = torch.full((H, A), cfg.max_std, device=z.device)
        for _ in range(self.iterations):
            noise = torch.randn(H, N - P, A, device=z.device)
            sampled = (mean.unsqueeze(1) + std.unsqueeze(1) * noise).clamp(-1, 1)
            actions = sampled if pi_actions is None else torch.cat([pi_actions, sampled], dim=1)
            if mask is not None:
                actions = actions * mask
            value = self.estimate_value(model, z, actions, discount, task).nan_to_num(0)
            elite_idx = torch.topk(value.squeeze(1), cfg.num_elites, dim=0).indices
            elite_value, elite_actions = value[elite_idx], actions[:, elite_idx]
            score = torch.exp(cfg.temperature * (elite_value - elite_value.max(0).values))
            score = score / score.sum(0)
            mean = (score.unsqueeze(0) * elite_actions).sum(1) / (score.sum(0) + 1e-9)
            var = (score.unsqueeze(0) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1) / (score.sum(0) + 1e-9)
            std = var.sqrt().clamp(cfg.min_std, cfg.max_std)
            if mask is not None:
                mean, std = mean * mask, std * mask

        choice = Fn.gumbel_argmax(score.squeeze(1))
        a = elite_actions[0, choice]
        if not eval_mode:
            a = a + std[0] * torch.randn(A, device=z.device)
        self.prev_mean.copy_(mean)
        return a.clamp(-1, 1)
