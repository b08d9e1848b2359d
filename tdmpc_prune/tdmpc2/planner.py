"""MPPI planning in the latent space of the world model (TD-MPC2, Algorithm 1 / Appendix)."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch

from . import functional as Fn
from .config import TDMPC2Config
from .world_model import Task, WorldModel


class PlanNoise(NamedTuple):
    """Every random draw of one plan, so that planning is a deterministic function of its inputs.

    With I iterations, H horizon, N samples of which P from the policy prior, A action dims, E elites:
    """

    prior_noise: torch.Tensor  #: (H, P, A) standard normal: the policy-prior trajectories
    sample_noise: torch.Tensor  #: (I, H, N-P, A) standard normal: the Gaussian samples around the mean
    value_noise: torch.Tensor  #: (I, N, A) standard normal: the policy action at the terminal latent
    critic_draws: torch.Tensor  #: (I, num_q) uniform: the two critics of each terminal Q (the largest two)
    gumbel: torch.Tensor  #: (E,) standard Gumbel: the elite whose first action is taken
    action_noise: torch.Tensor  #: (A,) standard normal: exploration noise, scaled by the final std (zeros: eval mode)


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
        self,
        model: WorldModel,
        z: torch.Tensor,
        actions: torch.Tensor,
        discount: Union[float, torch.Tensor],
        task: Task = None,
        pi_eps: Optional[torch.Tensor] = None,
        critic_draws: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Discounted model return of `actions` (horizon, N, A) from latents z (N, L), plus the terminal Q.

        `pi_eps` (N, A) and `critic_draws` (num_q,) are the random draws of the terminal policy action
        and of the two critics (drawn here when not given).
        """
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
        action, _ = model.pi(z, task, eps=pi_eps)
        return G + scale * alive * model.Q(z, action, task, return_type="avg", draws=critic_draws)

    def draw_noise(self, num_q: int, device: Union[str, torch.device], eval_mode: bool = False) -> PlanNoise:
        """Every random draw of one plan (the exploration noise is zero in `eval_mode`)."""
        cfg = self.cfg
        H, N, P, A, I = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.action_dim, self.iterations
        return PlanNoise(
            prior_noise=torch.randn(H, P, A, device=device),
            sample_noise=torch.randn(I, H, N - P, A, device=device),
            value_noise=torch.randn(I, N, A, device=device),
            critic_draws=torch.rand(I, num_q, device=device),
            gumbel=-torch.empty(cfg.num_elites, device=device).exponential_().log(),
            action_noise=torch.zeros(A, device=device) if eval_mode else torch.randn(A, device=device),
        )

    @torch.no_grad()
    def plan(
        self,
        model: WorldModel,
        obs: torch.Tensor,
        t0: bool = False,
        eval_mode: bool = False,
        task: Optional[torch.Tensor] = None,
        discount: Union[float, torch.Tensor] = 0.99,
        noise: Optional[PlanNoise] = None,
    ) -> torch.Tensor:
        """Plan from a single observation `obs` (1, obs_dim); return the first action (A,) in [-1, 1].

        `noise` gives every random draw (see `PlanNoise`); by default they are drawn here.
        """
        z = model.encode(obs, task)
        mean = torch.zeros(self.cfg.horizon, self.cfg.action_dim, device=z.device)
        if not t0:
            mean[:-1] = self.prev_mean[1:]
        if noise is None:
            noise = self.draw_noise(len(model._Qs), z.device, eval_mode)
        action, mean, _ = self.search(model, z, mean, noise, discount, task)
        self.prev_mean.copy_(mean)
        return action

    @torch.no_grad()
    def search(
        self,
        model: WorldModel,
        z: torch.Tensor,
        mean: torch.Tensor,
        noise: PlanNoise,
        discount: Union[float, torch.Tensor] = 0.99,
        task: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MPPI from latent z (1, L) and the warm-start mean (H, A): (action (A,), mean, std).

        Deterministic given `noise`; `model` needs `next`, `reward`, `pi(z, task, eps)`,
        `Q(z, a, task, return_type, draws=...)` (and `termination` when episodic).
        """
        cfg = self.cfg
        H, N, P, A = cfg.horizon, cfg.num_samples, cfg.num_pi_trajs, cfg.action_dim
        mask = model._action_masks[task] if cfg.multitask else None

        pi_actions = None
        if P > 0:  # trajectories of the policy prior
            zp, acts = z.expand(P, -1), []
            for t in range(H):
                a, _ = model.pi(zp, task, eps=noise.prior_noise[t])
                acts.append(a)
                if t < H - 1:
                    zp = model.next(zp, a, task)
            pi_actions = torch.stack(acts)

        z = z.expand(N, -1)
        std = torch.full((H, A), cfg.max_std, device=z.device)
        for i in range(self.iterations):
            sampled = (mean.unsqueeze(1) + std.unsqueeze(1) * noise.sample_noise[i]).clamp(-1, 1)
            actions = sampled if pi_actions is None else torch.cat([pi_actions, sampled], dim=1)
            if mask is not None:
                actions = actions * mask
            value = self.estimate_value(model, z, actions, discount, task, noise.value_noise[i], noise.critic_draws[i])
            value = value.nan_to_num(0)
            # the num_elites best; equal values in index order (a stable sort), so that planning is a function
            # of its inputs also for ties (e.g. an untrained model: zero-initialised reward and Q heads)
            elite_idx = value.squeeze(1).sort(descending=True, stable=True).indices[: cfg.num_elites]
            elite_value, elite_actions = value[elite_idx], actions[:, elite_idx]
            score = torch.exp(cfg.temperature * (elite_value - elite_value.max(0).values))
            score = score / score.sum(0)
            mean = (score.unsqueeze(0) * elite_actions).sum(1) / (score.sum(0) + 1e-9)
            var = (score.unsqueeze(0) * (elite_actions - mean.unsqueeze(1)) ** 2).sum(1) / (score.sum(0) + 1e-9)
            std = var.sqrt().clamp(cfg.min_std, cfg.max_std)
            if mask is not None:
                mean, std = mean * mask, std * mask

        choice = Fn.gumbel_argmax(score.squeeze(1), noise.gumbel)
        a = elite_actions[0, choice] + std[0] * noise.action_noise
        return a.clamp(-1, 1), mean, std
