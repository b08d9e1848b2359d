r"""Per-group cosine-scheduled group-lasso (L1 over channel norms) pressure.

Group :math:`i` of :math:`n` pressured groups gets, at step :math:`t`,

    :math:`\lambda_i(t) = \lambda_{max}\,\bigl(1-\cos(2\pi(t+\phi_i)/T)\bigr)/2`,  :math:`\phi_i = iT/n`,

so the groups are stress-tested at different times of the period :math:`T`.  The penalty
:math:`\sum_i \lambda_i(t) \sum_c \lVert W_{i,c} \rVert_2` (with :math:`W_{i,c}` every coupled entry of
channel :math:`c`) is applied by adding its gradient :math:`\lambda_i W_{i,c}/\lVert W_{i,c}\rVert` to
`.grad` in the optimizer's step pre-hook -- the same as adding it to the loss, without touching
the training loop.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Set, Union

import torch

from .importance import ChannelStats


def cosine_lambda(t: float, i: Union[int, torch.Tensor], n: int, period: float, lam_max: float) -> Union[float, torch.Tensor]:
    """lambda_i(t) of the phase-offset cosine schedule (`i` may be a tensor of group indices)."""
    phase = i * period / max(1, n)
    cos = torch.cos if isinstance(phase, torch.Tensor) else math.cos
    return lam_max * (1.0 - cos(2.0 * math.pi * (t + phase) / period)) / 2.0


class GroupLasso:
    """Adds the scheduled group-lasso gradient for the pressured groups."""

    def __init__(self, stats: ChannelStats, lam_max: float, period: float, pressured: Sequence[str], eps: float = 1e-12):
        self.stats = stats
        self.lam_max = float(lam_max)
        self.period = float(period)
        self.pressured = list(pressured)
        self._pressured_set = set(self.pressured)
        self.eps = eps
        # per statistics slot: the index i of its group among the pressured ones, kept on the device so
        # a step builds lambda there (no host-to-device copy per step); only pressured slots are read
        index = torch.zeros(stats.size)
        channels = {g.id: g.channels for g in stats.groups}
        for i, gid in enumerate(self.pressured):
            index[stats.offsets[gid] : stats.offsets[gid] + channels[gid]] = float(i)
        self._index = index.to(stats.device)

    def lambdas(self, t: float) -> dict:
        n = len(self.pressured)
        return {gid: cosine_lambda(t, i, n, self.period, self.lam_max) for i, gid in enumerate(self.pressured)}

    @torch.no_grad()
    def apply(self, t: float, only: Optional[Set[int]] = None) -> None:
        if self.lam_max <= 0 or not self.pressured:
            return
        stats = self.stats
        lam = cosine_lambda(float(t), self._index, len(self.pressured), self.period, self.lam_max)  # every slot at once
        lam = lam * stats.alive
        live = [p for p in stats.plan if p.tensor.grad is not None and (only is None or id(p.tensor) in only)]
        # norms of the pressured groups this optimizer steps (a channel's norm spans all its tensors)
        groups = {e.group for p in live for e in p.entries} & self._pressured_set
        if not groups:
            return
        coef = lam / (stats.weight_norm(groups) + self.eps)
        for plan in live:
            t_ = plan.tensor
            for e in plan.entries:
                if e.group not in groups:
                    continue
                n = t_.shape[e.dim]
                if isinstance(e.pos, slice) and e.pos == slice(0, n) and isinstance(e.flat, slice):
                    scale = coef[e.flat]  # every position of the dim, in slot order: a view
                else:
                    scale = torch.zeros(n, device=t_.device, dtype=coef.dtype)
                    scale[e.pos] = coef[e.flat]
                shape = [1] * t_.dim()
                shape[e.dim] = -1
                t_.grad.addcmul_(t_.detach(), scale.to(t_.dtype).view(shape))
