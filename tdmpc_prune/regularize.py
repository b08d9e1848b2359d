r"""Per-group cosine-scheduled group-lasso (L1 over channel norms) pressure.

Group :math:`i` of :math:`n` pressured groups gets, at step :math:`t`,

    :math:`\lambda_i(t) = \lambda_{max}\,\bigl(1-\cos(2\pi(t+\phi_i)/T)\bigr)/2`,  :math:`\phi_i = iT/n`,

so the groups are stress-tested at different times of the period :math:`T`.  The penalty
:math:`\sum_i \lambda_i(t) \sum_c \lVert W_{i,c} \rVert_2` (with :math:`W_{i,c}` every coupled entry of
channel :math:`c`) is applied *decoupled from the optimizer*, as AdamW decouples weight decay: after
each optimizer step the proximal operator of the group lasso shrinks every pressured channel,

    :math:`W_{i,c} \leftarrow W_{i,c}\,\max\bigl(0,\; 1 - \lambda_i(t)/\lVert W_{i,c}\rVert\bigr)`,

i.e. its norm falls by :math:`\lambda_i(t)` per step (to exactly zero once it is that small).  So
`l1` means the same for SGD, Adam or RMSprop and for any learning rate: adding the lasso gradient to
`.grad` before Adam instead lets :math:`1/\sqrt{\hat v}` rescale it, and where a weight's own
gradient is small the penalty becomes a full learning-rate step towards zero each update.  The
pressure is on while pruning events remain (after the last one it would only shrink kept channels).
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
    def shrink(self, t: float, only: Optional[Set[int]] = None) -> None:
        """Proximal step on the pressured channels of the tensors whose id is in `only` (or all)."""
        if self.lam_max <= 0 or not self.pressured:
            return
        stats = self.stats
        live = [p for p in stats.plan if only is None or id(p.tensor) in only]
        # norms of the pressured groups this optimizer steps (a channel's norm spans all its tensors)
        groups = {e.group for p in live for e in p.entries} & self._pressured_set
        if not groups:
            return
        lam = cosine_lambda(float(t), self._index, len(self.pressured), self.period, self.lam_max)  # every slot at once
        factor = (1.0 - lam * stats.alive / (stats.weight_norm(groups) + self.eps)).clamp_min_(0.0)
        for plan in live:
            t_ = plan.tensor
            for e in plan.entries:
                if e.group not in groups:
                    continue
                n = t_.shape[e.dim]
                if isinstance(e.pos, slice) and e.pos == slice(0, n) and isinstance(e.flat, slice):
                    scale = factor[e.flat]  # every position of the dim, in slot order: a view
                else:
                    scale = torch.ones(n, device=t_.device, dtype=factor.dtype)
                    scale[e.pos] = factor[e.flat]
                shape = [1] * t_.dim()
                shape[e.dim] = -1
                t_.mul_(scale.to(t_.dtype).view(shape))
