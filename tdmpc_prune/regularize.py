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
Applied on every n-th update only (`every_n_updates`), each shrink is by :math:`n\lambda_i(t)`, as
truncated gradient (Langford, Li & Zhang, 2009) applies its shrink every K steps with K times the
gravity: the pressure per update is unchanged.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Set, Union

import torch

from .importance import ChannelStats, _rounds


def cosine_lambda(t: float, i: Union[int, torch.Tensor], n: int, period: float, lam_max: float) -> Union[float, torch.Tensor]:
    """lambda_i(t) of the phase-offset cosine schedule (`i` may be a tensor of group indices)."""
    phase = i * period / max(1, n)
    cos = torch.cos if isinstance(phase, torch.Tensor) else math.cos
    return lam_max * (1.0 - cos(2.0 * math.pi * (t + phase) / period)) / 2.0


class GroupLasso:
    """Applies the scheduled proximal group-lasso shrink to the pressured groups after a step.

    The per-optimizer work (which tensors and entries, the views that receive the norms and give
    the scales) is worked out once per layout, and lambda once per clock value, so a step costs a
    fused square, one sum per entry, a few fused adds and multiplies, and six small ops.
    """

    def __init__(self, stats: ChannelStats, lam_max: float, period: float, pressured: Sequence[str], eps: float = 1e-12, every: int = 1):
        self.stats = stats
        self.every = int(every)  # the shrink runs on every `every`-th update, by `every` x lambda
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
        self._plans: Dict[Optional[frozenset], _ShrinkPlan] = {}
        self._lam_key: Optional[tuple] = None
        self._lam_alive = torch.zeros(0)

    def lambdas(self, t: float) -> dict:
        n = len(self.pressured)
        return {gid: cosine_lambda(t, i, n, self.period, self.lam_max) for i, gid in enumerate(self.pressured)}

    def _plan(self, only: Optional[frozenset]) -> "_ShrinkPlan":
        stats = self.stats
        plan = self._plans.get(only)
        if plan is not None and plan.layout is stats.plan:
            return plan
        plan = _ShrinkPlan(stats.plan, stats.size, stats.device)
        live = [p for p in stats.plan if only is None or id(p.tensor) in only]
        groups = {e.group for p in live for e in p.entries} & self._pressured_set
        norm_entries = []
        for p in live:
            entries = [e for e in p.entries if e.group in groups]
            if not entries:
                continue
            j = len(plan.tensors)
            plan.tensors.append(p.tensor)
            for k, e in enumerate(entries):
                norm_entries.append((j, e, plan.norm[e.flat] if isinstance(e.flat, slice) else None))
                n = p.tensor.shape[e.dim]
                shape = [1] * p.tensor.dim()
                shape[e.dim] = -1
                if e.full and isinstance(e.flat, slice):
                    scale, fill = plan.factor[e.flat].view(shape), None  # a view: nothing to do per step
                else:
                    buf = torch.ones(n, device=p.tensor.device, dtype=plan.factor.dtype)
                    scale, fill = buf.view(shape), buf
                while len(plan.scale_rounds) <= k:
                    plan.scale_rounds.append(([], [], []))
                tensors, scales, fills = plan.scale_rounds[k]
                tensors.append(p.tensor)
                scales.append(scale)
                fills.append((fill, e))
        plan.norm_entries = norm_entries
        plan.norm_rounds = [(layer, [norm_entries[k][2] for k in layer]) for layer in _rounds([(e.flat, v) for _, e, v in norm_entries])]
        self._plans[only] = plan
        return plan

    def _lambda_alive(self, t: float) -> torch.Tensor:
        """lambda_i(t) x alive per slot, recomputed only when the clock or the layout changes."""
        key = (t, self.stats.alive)
        if self._lam_key is None or self._lam_key[0] != t or self._lam_key[1] is not self.stats.alive:
            lam = cosine_lambda(t, self._index, len(self.pressured), self.period, self.lam_max * self.every)  # every slot at once
            self._lam_alive = lam * self.stats.alive
            self._lam_key = key
        return self._lam_alive

    @torch.no_grad()
    def shrink(self, t: float, only: Optional[Set[int]] = None) -> None:
        """Proximal step on the pressured channels of the tensors whose id is in `only` (or all)."""
        if self.lam_max <= 0 or not self.pressured:
            return
        plan = self._plan(only if only is None or isinstance(only, frozenset) else frozenset(only))
        if not plan.tensors:
            return
        if any(t_.dtype != plan.factor.dtype for t_ in plan.tensors):
            return self._shrink_mixed(float(t), plan)
        # norms of the pressured groups this optimizer steps (a channel's norm spans all its tensors)
        squares = torch._foreach_mul(plan.tensors, plan.tensors)
        sums = []
        for j, e, _ in plan.norm_entries:
            v = squares[j].sum(e.reduce) if e.reduce else squares[j]
            sums.append(v if e.full else v[e.pos])
        norm = plan.norm
        norm.zero_()
        for k, (_, e, view) in enumerate(plan.norm_entries):
            if view is None:
                norm.index_add_(0, e.flat, sums[k])
        for layer, dsts in plan.norm_rounds:
            torch._foreach_add_(dsts, [sums[k] for k in layer])
        # factor = max(0, 1 - lambda / (||W_c|| + eps)), written in place so the scale views see it
        norm.sqrt_().add_(self.eps)
        torch.addcdiv(plan.ones, self._lambda_alive(float(t)), norm, value=-1.0, out=plan.factor).clamp_min_(0.0)
        for tensors, scales, fills in plan.scale_rounds:
            for buf, e in fills:
                if buf is not None:
                    buf[e.pos] = plan.factor[e.flat]
            torch._foreach_mul_(tensors, scales)

    def _shrink_mixed(self, t: float, plan: "_ShrinkPlan") -> None:
        """The same step for tensors of another dtype than the statistics (e.g. half precision)."""
        groups = {e.group for _, e, _ in plan.norm_entries}
        lam = cosine_lambda(t, self._index, len(self.pressured), self.period, self.lam_max * self.every)
        factor = (1.0 - lam * self.stats.alive / (self.stats.weight_norm(groups) + self.eps)).clamp_min_(0.0)
        for tensors, _, fills in plan.scale_rounds:
            for t_, (_, e) in zip(tensors, fills):
                n = t_.shape[e.dim]
                scale = torch.ones(n, device=t_.device, dtype=factor.dtype)
                scale[e.pos] = factor[e.flat]
                shape = [1] * t_.dim()
                shape[e.dim] = -1
                t_.mul_(scale.to(t_.dtype).view(shape))


class _ShrinkPlan:
    """Buffers and views of one optimizer's shrink, for one layout of the statistics."""

    def __init__(self, layout: list, size: int, device: torch.device):
        self.layout = layout  # ChannelStats.plan it was built for (rebuilt after every structural change)
        self.norm = torch.zeros(size, device=device)
        self.factor = torch.ones(size, device=device)
        self.ones = torch.ones(size, device=device)
        self.tensors: List[torch.Tensor] = []
        self.norm_entries: list = []  # (index into tensors, entry, destination view of `norm` or None)
        self.norm_rounds: list = []  # (entry indices, destination views): layers sharing no slot
        self.scale_rounds: List[tuple] = []  # per k: (tensors, scale views, (buffer to fill or None, entry))
