r"""Per-channel importance from the gradients training already computes.

For channel :math:`c` of a group, let :math:`E_c` be every tensor entry the channel owns across
the group's coupled tensors (its rows, columns, LayerNorm entries; all ensemble members) and
:math:`n_c=|E_c|`.  At each optimizer step :math:`t` (collected in the optimizer's step pre-hook,
so no extra backward pass) we observe

* :math:`a_{c,t} = \frac1{n_c}\sum_{e\in E_c} |g_e|`          (gradient accumulation)
* :math:`f_{c,t} = \frac1{n_c}\sum_{e\in E_c} g_e^2`          (empirical Fisher / gradient energy)
* :math:`\tau_{c,t} = \frac1{n_c}\sum_{e\in E_c} |w_e g_e|`   (first-order Taylor)

and smooth each with an EMA, :math:`\bar x_t = \gamma \bar x_{t-1} + (1-\gamma) x_t`
(:math:`\bar x_1 = x_1`, :math:`\gamma = 0.9` by default).  Steps whose gradients contain NaN/Inf
are skipped and counted (on CUDA without a host sync).  With `every_n_updates = n` the observed
steps are every n-th update: :math:`\gamma` and :math:`\rho` below act per observation, so an
estimate averages as many gradients as at n = 1 (the same noise), spread over n times as many updates.

**Bayesian uncertainty.**  The gradient energy :math:`\mu_c` of a channel gets a conjugate
Gamma prior :math:`\mu_c \sim \mathrm{Gamma}(\alpha_0, \beta_0)` (shape/rate) and the energies
:math:`f_{c,t}` are treated as Poisson-rate observations, so the posterior stays Gamma.  The
posterior accumulates the *whole history* of the run (its own forgetting factor :math:`\rho`,
`posterior_decay`, default 1 = none; it is independent of the EMA's :math:`\gamma`):

    :math:`S_t = \rho S_{t-1} + f_{c,t}`,  :math:`N_t = \rho N_{t-1} + 1`,
    :math:`\alpha_t = \alpha_0 + S_t`,  :math:`\beta_t = \beta_0 + N_t`,
    :math:`\mu = \alpha_t/\beta_t` (posterior mean),  :math:`\sigma^2 = \alpha_t/\beta_t^2`.

The prior is empirical Bayes: :math:`\beta_0` = `prior_strength` pseudo-observations and
:math:`\alpha_0 = \beta_0 \cdot \bar f_g` with :math:`\bar f_g` the group's mean energy at the first
observed step, so a channel with little evidence is shrunk towards its group.  The score is

    :math:`\log(1+\hat\mu_c)\,(1+\hat f_c)`,  :math:`\hat\mu_c = \mu_c / \langle\mu\rangle_g`,
    :math:`\hat f_c = \bar f_c / \langle\bar f\rangle_g`,

the paper's "prioritise groups that are both currently sensitive and historically active": the
posterior mean is the historical activity, the EMA of :math:`f` the current sensitivity.  Both
are measured in units of their group's mean (:math:`\langle\cdot\rangle_g` over alive channels):
raw gradient energies are ~1e-6, so with raw values :math:`1+\bar f \approx 1` and the product
would collapse to the posterior mean alone; in group units the score no longer depends on the
loss scale and both factors act.  A channel that was very active early and is silent now keeps
a high :math:`\hat\mu` (bayes keeps it) while its EMA has decayed (fisher drops it).

Baselines: `magnitude` (L2 norm of the channel's coupled weights), `taylor` (:math:`\bar\tau_c`),
`random`; `combined` is the mean of the within-group ranks (scaled to [0, 1]) of grad, fisher and
bayes.  Scores of a structural unit (a SimNorm simplex) are the mean over its channels.

Memory is a handful of floats per *channel* (never a per-parameter copy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union

import torch

from .errors import ArgumentError, PruneError, UnknownStatisticError
from .groups import Group

if TYPE_CHECKING:
    from .surgery import Surgeon


Index = Union[slice, torch.Tensor]


@dataclass
class _Entry:
    dim: int
    pos: Index  # current positions along dim: a slice when contiguous (the usual case), else indices
    flat: Index  # flat channel slot of each position, likewise
    reduce: tuple  # dims summed over
    group: str = ""  # id of the group whose channels these positions are
    full: bool = False  # pos is every position of the dim, in order (no gather needed)

    @property
    def reduce_shifted(self) -> List[int]:
        """`reduce` for a tensor with one leading (statistic) dim."""
        return [d + 1 for d in self.reduce]

    def add_to(self, buf: torch.Tensor, per_position: torch.Tensor) -> None:
        """buf[..., flat] += per_position[..., pos] (the last dim is the slot / position dim)."""
        vals = per_position[..., self.pos]
        if vals.dtype != buf.dtype:
            vals = vals.to(buf.dtype)
        if isinstance(self.flat, slice):
            buf[..., self.flat] += vals
        else:
            buf.index_add_(buf.dim() - 1, self.flat, vals)


def _compact(idx: torch.Tensor, device: torch.device) -> Index:
    """A slice for a run of consecutive indices (no memory, no gather), else an int32/int64 tensor."""
    n = idx.numel()
    if n and int(idx[-1]) - int(idx[0]) == n - 1 and bool((idx[1:] > idx[:-1]).all()):
        return slice(int(idx[0]), int(idx[0]) + n)
    dtype = torch.int32 if n and int(idx.max()) < 2**31 else torch.long
    return idx.to(device, dtype)


@dataclass
class _TensorPlan:
    tensor: torch.Tensor
    entries: List[_Entry]


@dataclass
class _Collection:
    """One optimizer's share of the layout, precomputed: which plans it steps, each entry with the
    view of the pending buffer it adds to (None: an index_add) and the dims it sums over."""

    plan: List[_TensorPlan]
    pending: torch.Tensor
    live: List[int]
    entries: list = None  # (index into live, entry, destination view or None, reduce dims)
    rounds: list = None  # (entry indices, their destination views): layers that share no slot, in order


def _rounds(dests: Sequence[tuple]) -> List[List[int]]:
    """Split slice destinations into layers that write disjoint slots, keeping each slot's add order.

    A fused `torch._foreach_add_` may run its items concurrently (CUDA), so two items of one call
    must never write the same memory; an entry goes one layer after the last earlier entry whose
    slots it overlaps, so every slot receives its adds in the original order.
    """
    layers: List[List[int]] = []
    placed: List[tuple] = []  # (start, stop, layer)
    for k, (flat, view) in enumerate(dests):
        if view is None:
            continue
        layer = 1 + max((lay for a, b, lay in placed if a < flat.stop and flat.start < b), default=-1)
        placed.append((flat.start, flat.stop, layer))
        while len(layers) <= layer:
            layers.append([])
        layers[layer].append(k)
    return layers


@dataclass(frozen=True)
class Statistic:
    """A per-step observation, elementwise over a gradient g and its weight w (`each`), with an
    optional `foreach` form over lists of tensors (one fused call for every tensor of a step)."""

    each: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    foreach: Optional[Callable[[List[torch.Tensor], List[torch.Tensor]], List[torch.Tensor]]] = None
    uses_weight: bool = False

    def many(self, grads: List[torch.Tensor], weights: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.foreach is not None:
            return list(self.foreach(grads, weights))
        return [self.each(g, w) for g, w in zip(grads, weights)]


def _taylor_foreach(grads: List[torch.Tensor], weights: List[torch.Tensor]) -> List[torch.Tensor]:
    out = torch._foreach_mul(weights, grads)
    torch._foreach_abs_(out)
    return out


# criteria name the statistics they read; only those are computed on the hot path
STATISTICS: Dict[str, Statistic] = {
    "abs": Statistic(lambda g, w: g.abs(), lambda gs, ws: torch._foreach_abs(gs)),  # gradient accumulation
    "sq": Statistic(lambda g, w: g.square(), lambda gs, ws: torch._foreach_mul(gs, gs)),  # empirical Fisher
    "taylor": Statistic(lambda g, w: (w * g).abs_(), _taylor_foreach, uses_weight=True),  # first-order Taylor
}


def register_statistic(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], uses_weight: bool = True) -> None:
    """Make `fn(grad, weight) -> elementwise observation` gatherable as `name` (EMA'd per channel as `stats.ema[name]`)."""
    if not callable(fn):
        raise ArgumentError(f"statistic {name!r}: expected a callable fn(grad, weight), got {type(fn).__name__}")
    STATISTICS[name] = Statistic(fn, uses_weight=uses_weight)


_BUFFERS = ("energy_sum", "obs_weight", "first_energy", "n_obs", "skipped")


class ChannelStats:
    """Flat per-channel statistics for all groups (group `g` owns slots `offsets[g]:offsets[g]+channels`).

    The gathered statistics (`needs`, set from the criteria) are packed as rows of one (k, slots)
    pending buffer and one (k, slots) EMA, so a step costs a few tensor ops whatever k is.
    """

    def __init__(
        self, groups: Sequence[Group], gamma: float, prior_strength: float, device: torch.device, posterior_decay: float = 1.0
    ):
        self.groups = list(groups)
        self.gamma = float(gamma)
        self.beta0 = float(prior_strength)
        self.rho = float(posterior_decay)
        self.offsets: Dict[str, int] = {}
        n = 0
        for g in self.groups:
            self.offsets[g.id] = n
            n += g.channels
        self.size = n
        self.device = torch.device(device)
        self.branch_on_host = self.device.type == "cpu"  # commit's branches: host (CPU, free) or device (no sync)
        z = lambda: torch.zeros(n, device=self.device)  # noqa: E731
        self.energy_sum, self.first_energy = z(), z()
        self.obs_weight = torch.zeros((), device=self.device)
        self.n_obs = torch.zeros((), device=self.device)
        self.skipped = torch.zeros((), device=self.device)
        self._pending = False
        self.needs = {"abs", "sq"}  # statistics gathered each step (set from the criterion)
        self.count = torch.ones(n, device=self.device)
        self.alive = torch.ones(n, dtype=torch.bool, device=self.device)
        self.group_of_slot = torch.repeat_interleave(  # slot -> index of its group (for per-group reductions)
            torch.arange(len(self.groups), dtype=torch.int32), torch.tensor([g.channels for g in self.groups])
        ).to(self.device)
        self.plan: List[_TensorPlan] = []
        self._collections: Dict[tuple, _Collection] = {}

    # ------------------------------------------------------------------------------ what is gathered
    @property
    def needs(self) -> Set[str]:
        return set(self._names)

    @needs.setter
    def needs(self, names: Set[str]) -> None:
        """Gather exactly these statistics from now on (buffers of statistics kept are kept)."""
        unknown = set(names) - set(STATISTICS)
        if unknown:
            raise UnknownStatisticError(f"unknown statistics {sorted(unknown)}; registered: {', '.join(STATISTICS)} (see register_statistic)")
        old = dict(zip(getattr(self, "_names", []), getattr(self, "_ema", torch.zeros(0, self.size)).unbind(0)))
        self._names = sorted(names, key=lambda x: (list(STATISTICS).index(x), x))
        self._row = {name: i for i, name in enumerate(self._names)}
        self._stats = [STATISTICS[name] for name in self._names]
        self._uses_weight = any(st.uses_weight for st in self._stats)
        zero = torch.zeros(self.size, device=self.device)
        self._ema = torch.stack([old.get(name, zero) for name in self._names]) if self._names else torch.zeros(0, self.size, device=self.device)
        self._p = torch.zeros_like(self._ema)

    @property
    def ema(self) -> Dict[str, torch.Tensor]:
        """EMA of every gathered statistic per slot."""
        return {name: self._ema[i] for name, i in self._row.items()}

    def _ema_of(self, name: str) -> torch.Tensor:
        i = self._row.get(name)
        return self._ema[i] if i is not None else torch.zeros(self.size, device=self.device)

    ema_abs = property(lambda self: self._ema_of("abs"))
    ema_sq = property(lambda self: self._ema_of("sq"))
    ema_taylor = property(lambda self: self._ema_of("taylor"))

    @property
    def track_taylor(self) -> bool:
        return "taylor" in self._row

    @track_taylor.setter
    def track_taylor(self, on: bool) -> None:
        self.needs = (self.needs | {"taylor"}) if on else (self.needs - {"taylor"})

    # ------------------------------------------------------------------------------ layout
    def rebuild(self, surgeon: "Surgeon", alive: Mapping[str, torch.Tensor]) -> None:
        """Recompute which current tensor positions feed which slot (after any structural change)."""
        plans: Dict[int, _TensorPlan] = {}
        count = torch.zeros(self.size)
        alive_flat = torch.zeros(self.size, dtype=torch.bool)
        for g in self.groups:
            off = self.offsets[g.id]
            chans = torch.nonzero(alive[g.id]).squeeze(1)
            alive_flat[off + chans] = True
            for m in g.members:
                pos, chan = surgeon.current(m, chans)
                if pos.numel() == 0:
                    continue
                t = m.tensor
                per_entry = t.numel() // max(1, t.shape[m.dim])
                count.index_add_(0, off + chan, torch.full((chan.numel(),), float(per_entry)))
                reduce = tuple(d for d in range(t.dim()) if d != m.dim)
                plan = plans.setdefault(id(t), _TensorPlan(t, []))
                order = torch.argsort(pos)
                pos, chan = pos[order], chan[order]
                cpos = _compact(pos, t.device)
                full = isinstance(cpos, slice) and cpos == slice(0, t.shape[m.dim])
                plan.entries.append(_Entry(m.dim, cpos, _compact(off + chan, self.device), reduce, g.id, full))
        self.plan = list(plans.values())
        self.count = count.clamp_min(1.0).to(self.device)
        self.alive = alive_flat.to(self.device)

    # ------------------------------------------------------------------------------ collection
    def _collection_plan(self, only: Optional[frozenset]) -> "_Collection":
        """What `accumulate(only)` does, worked out once per layout, statistic set and optimizer."""
        key = (only, len(self._names))
        cached = self._collections.get(key)
        if cached is not None and cached.plan is self.plan and cached.pending is self._p:
            return cached
        coll = _Collection(self.plan, self._p, [i for i, p in enumerate(self.plan) if only is None or id(p.tensor) in only])
        single = len(self._names) == 1
        entries = []
        for j, i in enumerate(coll.live):
            for e in self.plan[i].entries:
                view = (self._p[0, e.flat] if single else self._p[:, e.flat]) if isinstance(e.flat, slice) else None
                entries.append((j, e, view, e.reduce if single else tuple(e.reduce_shifted)))
        coll.entries = entries
        coll.rounds = [(layer, [entries[k][2] for k in layer]) for layer in _rounds([(e.flat, view) for _, e, view, _ in entries])]
        self._collections[key] = coll
        return coll

    @torch.no_grad()
    def accumulate(self, only: Optional[Set[int]] = None) -> None:
        """Add this step's gradients (of tensors whose id is in `only`, or all) to the pending sums.

        Elementwise statistics run fused over every tensor (`torch._foreach_*`), then each entry is
        one sum; the adds into the pending buffer are fused calls as well (one per layer of entries
        that share no slot, so no two adds of one call write the same memory).
        """
        if not self._stats:
            return
        coll = self._collection_plan(only if only is None or isinstance(only, frozenset) else frozenset(only))
        tensors = [self.plan[i].tensor for i in coll.live]
        grads = [t.grad for t in tensors]
        if any(g is None for g in grads):
            keep = [j for j, g in enumerate(grads) if g is not None]
            if not keep:
                return
            self._accumulate_some(coll, tensors, keep)
            self._pending = True
            return
        if not grads:
            return
        weights = [t.detach() for t in tensors] if self._uses_weight else grads
        per_stat = [st.many(grads, weights) for st in self._stats]
        xs = per_stat[0] if len(per_stat) == 1 else [torch.stack(parts) for parts in zip(*per_stat)]
        values = []
        for j, e, view, reduce in coll.entries:
            v = xs[j].sum(reduce) if reduce else xs[j]
            if not e.full:
                v = v[..., e.pos]
            if v.dtype != self._p.dtype:
                v = v.to(self._p.dtype)
            values.append(v)
        for k, (_, e, view, _) in enumerate(coll.entries):
            if view is None:
                self._p.index_add_(1, e.flat, values[k] if len(per_stat) > 1 else values[k].unsqueeze(0))
        for layer, dsts in coll.rounds:
            torch._foreach_add_(dsts, [values[k] for k in layer])
        self._pending = True

    def _accumulate_some(self, coll: "_Collection", tensors: List[torch.Tensor], keep: List[int]) -> None:
        """The general path: only some of the tensors have a gradient this step."""
        grads = [tensors[j].grad for j in keep]
        weights = [tensors[j].detach() for j in keep] if self._uses_weight else grads
        per_stat = [st.many(grads, weights) for st in self._stats]
        pos_of = {j: k for k, j in enumerate(keep)}
        for j, e, _, _ in coll.entries:
            if j not in pos_of:
                continue
            x = torch.stack([ps[pos_of[j]] for ps in per_stat])
            v = x.sum(e.reduce_shifted) if e.reduce else x
            if not e.full:
                v = v[:, e.pos]
            v = v.to(self._p.dtype)
            if isinstance(e.flat, slice):
                self._p[:, e.flat] += v
            else:
                self._p.index_add_(1, e.flat, v)

    @torch.no_grad()
    def commit(self) -> None:
        """Fold the pending step into the EMAs and the Gamma posterior (skipped if non-finite).

        A handful of in-place ops whatever the number of statistics. On CUDA there is no host sync:
        a non-finite step enters with weight 0 instead of being branched around. On the CPU, where
        reading a value back is free, the common case is branched to on the host (about half the ops).
        """
        if not self._pending:
            return
        x = self._p.div_(self.count)
        if self.branch_on_host:
            return self._commit_on_host(x)
        ok = torch.isfinite(x).all().to(x.dtype)  # 1 for a clean step, 0 to skip it
        x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        first = self.n_obs == 0
        # EMA: x_1 on the first observed step (lerp weight 1), then gamma * old + (1 - gamma) * x
        self._ema.lerp_(x, ok * torch.where(first, 1.0, 1.0 - self.gamma))
        i = self._row.get("sq")
        if i is not None:  # the Gamma posterior of the gradient energy: S = rho S + f, N = rho N + 1
            f = x[i]
            if self.rho != 1.0:
                keep = 1.0 - ok * (1.0 - self.rho)
                self.energy_sum.mul_(keep)
                self.obs_weight.mul_(keep)
            self.energy_sum.add_(f * ok)
            self.obs_weight.add_(ok)
            self.first_energy.lerp_(f, ok * first)
        self.n_obs.add_(ok)
        self.skipped.add_(1.0 - ok)
        self._p.zero_()
        self._pending = False

    def _commit_on_host(self, x: torch.Tensor) -> None:
        """`commit` with its branches taken on the host (the same values as the device path)."""
        self._pending = False
        if not math.isfinite(float(x.sum())):  # a NaN/Inf entry makes the sum non-finite
            self.skipped.add_(1.0)
            self._p.zero_()
            return
        first = bool(self.n_obs == 0)
        if first:
            self._ema.copy_(x)
        else:
            self._ema.lerp_(x, 1.0 - self.gamma)
        i = self._row.get("sq")
        if i is not None:
            f = x[i]
            if self.rho != 1.0:
                self.energy_sum.mul_(self.rho)
                self.obs_weight.mul_(self.rho)
            self.energy_sum.add_(f)
            self.obs_weight.add_(1.0)
            if first:
                self.first_energy.copy_(f)
        self.n_obs.add_(1.0)
        self._p.zero_()

    def group_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Each slot gets the mean of `x` over the alive channels of its group."""
        w = self.alive.to(x.dtype)
        sums = torch.zeros(len(self.groups), device=x.device, dtype=x.dtype).index_add_(0, self.group_of_slot, x * w)
        counts = torch.zeros(len(self.groups), device=x.device, dtype=x.dtype).index_add_(0, self.group_of_slot, w)
        return (sums / counts.clamp_min(1.0))[self.group_of_slot]

    # ------------------------------------------------------------------------------ derived
    @property
    def alpha0(self) -> torch.Tensor:
        """Empirical-Bayes prior shape: beta_0 x the group's mean energy at the first observed step."""
        return self.beta0 * self.group_mean(self.first_energy)

    def posterior(self) -> Dict[str, torch.Tensor]:
        alpha = self.alpha0 + self.energy_sum
        beta = self.beta0 + self.obs_weight
        return {"alpha": alpha, "beta": beta, "mean": alpha / beta, "var": alpha / beta**2}

    @torch.no_grad()
    def weight_norm(self, groups: Optional[Set[str]] = None) -> torch.Tensor:
        """L2 norm of each channel's coupled weights (only the channels of `groups`, if given; others 0)."""
        out = torch.zeros(self.size, device=self.device)
        for plan in self.plan:
            entries = [e for e in plan.entries if groups is None or e.group in groups]
            if not entries:
                continue
            w2 = plan.tensor.detach().square()
            for e in entries:
                e.add_to(out, _sum(w2, e))
        return out.sqrt()

    def stats_bytes(self) -> int:
        """Bytes held for statistics: buffers, pending sums, counts and the index plan."""
        tensors = [getattr(self, b) for b in _BUFFERS] + [self._ema, self._p, self.count, self.alive, self.group_of_slot]
        tensors += [t for p in self.plan for e in p.entries for t in (e.pos, e.flat) if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        self.commit()
        out = {b: getattr(self, b).detach().cpu().clone() for b in _BUFFERS}
        out.update({f"ema_{name}": v.detach().cpu().clone() for name, v in self.ema.items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        saved = {k[4:] for k, v in state.items() if k.startswith("ema_") and v.numel() == self.size}
        self.needs = self.needs | (saved & set(STATISTICS))
        if "first_energy" not in state and "alpha0" in state:  # a state written before first_energy was kept
            state = {**state, "first_energy": state["alpha0"] / self.beta0}
        for b in _BUFFERS:
            v = state[b]
            if v.shape != getattr(self, b).shape:
                raise PruneError(f"statistics {b!r} have shape {tuple(v.shape)}, expected {tuple(getattr(self, b).shape)}")
            setattr(self, b, v.to(self.device).clone())
        for name in saved & set(self._row):
            self._ema[self._row[name]] = state[f"ema_{name}"].to(self.device)


def _sum(x: torch.Tensor, e: _Entry) -> torch.Tensor:
    """Sum of `x` over every dim but the entry's (one value per position along it).

    (`x.sum(dims)` on a precomputed |g| or g^2 is several times faster on CPU than
    `torch.linalg.vector_norm` over leading dims.)
    """
    return x.sum(e.reduce) if e.reduce else x


# the criteria live in `criteria.py`; re-exported here for code written against this module
from .criteria import CRITERIA, Criterion, group_rank  # noqa: E402,F401
