"""Stateless maths of TD-MPC2: symlog two-hot regression, the squashed Gaussian policy, MPPI helpers."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


def bin_centers(num_bins: int, vmin: float, vmax: float, like: torch.Tensor) -> torch.Tensor:
    return torch.linspace(vmin, vmax, num_bins, device=like.device, dtype=like.dtype)


def two_hot(x: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Soft two-hot encoding of symlog(x) over `num_bins` evenly spaced bins in [vmin, vmax].

    `x` has a trailing singleton dim (`(..., 1)`); the result is `(..., num_bins)`.
    `num_bins == 0` means plain regression (identity) and `1` means symlog regression.
    """
    if num_bins == 0:
        return x
    if num_bins == 1:
        return symlog(x)
    bin_size = (vmax - vmin) / (num_bins - 1)
    pos = (symlog(x).clamp(vmin, vmax) - vmin) / bin_size  # (..., 1), in [0, num_bins-1]
    low = pos.floor()
    frac = pos - low
    low = low.long()
    high = (low + 1).clamp(max=num_bins - 1)
    out = torch.zeros(*x.shape[:-1], num_bins, device=x.device, dtype=x.dtype)
    out.scatter_add_(-1, low, 1 - frac)
    out.scatter_add_(-1, high, frac)  # at the top edge frac == 0, so the clamp adds nothing
    return out


def two_hot_inv(logits: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Expected value under softmax(logits) over the bins, mapped back by symexp: `(..., bins) -> (..., 1)`."""
    if num_bins == 0:
        return logits
    if num_bins == 1:
        return symexp(logits)
    probs = F.softmax(logits, dim=-1)
    return symexp((probs * bin_centers(num_bins, vmin, vmax, logits)).sum(-1, keepdim=True))


def soft_ce(logits: torch.Tensor, target: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Cross-entropy between predicted bin logits `(..., bins)` and two-hot targets of scalars `(..., 1)`."""
    return -(two_hot(target, num_bins, vmin, vmax) * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


def bounded_log_std(x: torch.Tensor, low: torch.Tensor, dif: torch.Tensor) -> torch.Tensor:
    """Map unbounded network output to a log-std in [low, low + dif] with a tanh."""
    return low + 0.5 * dif * (torch.tanh(x) + 1)


def gaussian_logprob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(mean + eps*std | mean, std), summed over the last axis (keepdim)."""
    return (-0.5 * eps.pow(2) - log_std - _LOG_SQRT_2PI).sum(-1, keepdim=True)


def squash(mean: torch.Tensor, action: torch.Tensor, log_prob: torch.Tensor):
    """tanh-squash mean and action; correct the log-probability by the tanh Jacobian."""
    mean, action = torch.tanh(mean), torch.tanh(action)
    log_prob = log_prob - torch.log(F.relu(1 - action.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return mean, action, log_prob


def gumbel_argmax(probs: torch.Tensor, gumbel: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample an index from categorical `probs` (last axis) with the Gumbel-max trick (no host sync).

    `gumbel` (shaped like `probs`, standard Gumbel) is the draw to use; by default one is drawn.
    """
    if gumbel is None:
        gumbel = -torch.empty_like(probs).exponential_().log()
    return (probs.log() + gumbel).argmax(-1)


def rho_weights(rho: float, horizon: int, like: torch.Tensor) -> torch.Tensor:
    """`[rho**0, ..., rho**(horizon-1)]` on the device/dtype of `like`."""
    return torch.pow(torch.full((horizon,), rho, device=like.device, dtype=like.dtype), torch.arange(horizon, device=like.device))
