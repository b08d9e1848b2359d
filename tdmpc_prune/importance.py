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
are skipped and counted (without a host sync).

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

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Union

import torch

from .groups import Group
from .surgery import Surgeon


Index = Union[slice, torch.Tensor]


@dataclass
class _Entry:
    dim: int
    pos: Index  # current positions along dim: a slice when contiguous (the usual case), else indices
    flat: Index  # flat channel slot of each position, likewise
    reduce: tuple  # dims summed over
    group: str = ""  # id of the group whose channels these positions are

    def add_to(self, buf: torch.Tensor, per_position: torch.Tensor) -> None:
        """buf[flat] += per_position[pos]."""
        vals = per_position[self.pos]
        if vals.dtype != buf.dtype:
            vals = vals.to(buf.dtype)
        if isinstance(self.flat, slice):
            buf[self.flat] += vals
        else:
            buf.index_add_(0, self.flat, vals)


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


_BUFFERS = ("ema_abs", "ema_sq", "ema_taylor", "energy_sum", "obs_weight", "alpha0", "n_obs", "skipped")


class ChannelStats:
    """Flat per-channel statistics for all groups (group `g` owns slots `offsets[g]:offsets[g]+channels`)."""

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
        z = lambda: torch.zeros(n, device=self.device)  # noqa: E731
        self.ema_abs, self.ema_sq, self.energy_sum, self.alpha0 = z(), z(), z(), z()
        self.ema_taylor = torch.zeros(0, device=self.device)  # allocated when a criterion needs it
        self.obs_weight = torch.zeros((), device=self.device)
        self.n_obs = torch.zeros((), device=self.device)
        self.skipped = torch.zeros((), device=self.device)
        self._p_abs, self._p_sq = z(), z()
        self._p_taylor = torch.zeros(0, device=self.device)
        self._pending = False
        self.needs = {"abs", "sq"}  # statistics gathered each step (set from the criterion)
        self.count = torch.ones(n, device=self.device)
        self.alive = torch.ones(n, dtype=torch.bool, device=self.device)
        self.group_of_slot = torch.repeat_interleave(  # slot -> index of its group (for per-group reductions)
            torch.arange(len(self.groups), dtype=torch.int32), torch.tensor([g.channels for g in self.groups])
        ).to(self.device)
        self.plan: List[_TensorPlan] = []

    @property
    def track_taylor(self) -> bool:
        return self.ema_taylor.numel() == self.size

    @track_taylor.setter
    def track_taylor(self, on: bool) -> None:
        n = self.size if on else 0
        self.ema_taylor = torch.zeros(n, device=self.device)
        self._p_taylor = torch.zeros(n, device=self.device)

    # ------------------------------------------------------------------------------ layout
    def rebuild(self, surgeon: Surgeon, alive: Mapping[str, torch.Tensor]) -> None:
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
                plan.entries.append(_Entry(m.dim, _compact(pos, t.device), _compact(off + chan, self.device), reduce, g.id))
        self.plan = list(plans.values())
        self.count = count.clamp_min(1.0).to(self.device)
        self.alive = alive_flat.to(self.device)

    # ------------------------------------------------------------------------------ collection
    @torch.no_grad()
    def accumulate(self, only: Optional[Set[int]] = None) -> None:
        """Add this step's gradients (of tensors whose id is in `only`, or all) to the pending sums."""
        for plan in self.plan:
            t = plan.tensor
            g = t.grad
            if g is None or (only is not None and id(t) not in only):
                continue
            # each statistic the criterion needs: one elementwise pass per tensor, summed per entry
            ga = g.abs() if "abs" in self.needs else None
            g2 = g.square() if "sq" in self.needs else None
            wg = (t.detach() * g).abs_() if self.track_taylor else None
            for e in plan.entries:
                for buf, x in ((self._p_abs, ga), (self._p_sq, g2), (self._p_taylor, wg)):
                    if x is not None:
                        e.add_to(buf, _sum(x, e))
            self._pending = True

    @torch.no_grad()
    def commit(self) -> None:
        """Fold the pending step into the EMAs and the Gamma posterior (skipped if non-finite)."""
        if not self._pending:
            return
        a = self._p_abs / self.count
        f = self._p_sq / self.count
        tau = self._p_taylor / self.count if self.track_taylor else self._p_taylor
        ok = torch.isfinite(a).all() & torch.isfinite(f).all() & torch.isfinite(tau).all()
        first = self.n_obs == 0
        gm = self.gamma
        a, f, tau = (torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) for x in (a, f, tau))

        def ema(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.where(ok, torch.where(first, new, gm * old + (1 - gm) * new), old)

        self.ema_abs = ema(self.ema_abs, a)
        self.ema_sq = ema(self.ema_sq, f)
        self.ema_taylor = ema(self.ema_taylor, tau)
        rho = self.rho
        self.energy_sum = torch.where(ok, rho * self.energy_sum + f, self.energy_sum)
        self.obs_weight = torch.where(ok, rho * self.obs_weight + 1.0, self.obs_weight)
        self.alpha0 = torch.where(ok & first, self.beta0 * self.group_mean(f), self.alpha0)
        self.n_obs = self.n_obs + ok.to(self.n_obs.dtype)
        self.skipped = self.skipped + (~ok).to(self.skipped.dtype)
        for p in (self._p_abs, self._p_sq, self._p_taylor):
            p.zero_()
        self._pending = False

    def group_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Each slot gets the mean of `x` over the alive channels of its group."""
        w = self.alive.to(x.dtype)
        sums = torch.zeros(len(self.groups), device=x.device, dtype=x.dtype).index_add_(0, self.group_of_slot, x * w)
        counts = torch.zeros(len(self.groups), device=x.device, dtype=x.dtype).index_add_(0, self.group_of_slot, w)
        return (sums / counts.clamp_min(1.0))[self.group_of_slot]

    # ------------------------------------------------------------------------------ derived
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
        tensors = [getattr(self, b) for b in _BUFFERS] + [self._p_abs, self._p_sq, self._p_taylor, self.count, self.alive, self.group_of_slot]
        tensors += [t for p in self.plan for e in p.entries for t in (e.pos, e.flat) if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        self.commit()
        return {b: getattr(self, b).detach().cpu().clone() for b in _BUFFERS}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.track_taylor = state["ema_taylor"].numel() == self.size
        for b in _BUFFERS:
            v = state[b]
            if v.shape != getattr(self, b).shape:
                raise ValueError(f"statistics {b!r} have shape {tuple(v.shape)}, expected {tuple(getattr(self, b).shape)}")
            setattr(self, b, v.to(self.device).clone())


def _sum(x: torch.Tensor, e: _Entry) -> torch.Tensor:
    """Sum of `x` over every dim but the entry's (one value per position along it).

    (`x.sum(dims)` on a precomputed |g| or g^2 is several times faster on CPU than
    `torch.linalg.vector_norm` over leading dims.)
    """
    return x.sum(e.reduce) if e.reduce else x


# ---------------------------------------------------------------------------------- criteria
class Criterion:
    """Maps statistics to one score per channel (higher = more important)."""

    name = ""
    needs: frozenset = frozenset()  # per-step statistics it reads: "abs", "sq", "taylor"

    @property
    def uses_taylor(self) -> bool:
        return "taylor" in self.needs

    def score(self, stats: ChannelStats, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class Grad(Criterion):
    name = "grad"
    needs = frozenset({"abs"})

    def score(self, stats, generator):
        return stats.ema_abs


class Fisher(Criterion):
    name = "fisher"
    needs = frozenset({"sq"})

    def score(self, stats, generator):
        return stats.ema_sq


class Bayes(Criterion):
    name = "bayes"
    needs = frozenset({"sq"})

    def score(self, stats, generator):
        mu = stats.posterior()["mean"]
        history = mu / stats.group_mean(mu).clamp_min(1e-30)
        current = stats.ema_sq / stats.group_mean(stats.ema_sq).clamp_min(1e-30)
        return torch.log1p(history) * (1.0 + current)


class Taylor(Criterion):
    name = "taylor"
    needs = frozenset({"taylor"})

    def score(self, stats, generator):
        return stats.ema_taylor


class Magnitude(Criterion):
    name = "magnitude"

    def score(self, stats, generator):
        return stats.weight_norm()


class Random(Criterion):
    name = "random"

    def score(self, stats, generator):
        return torch.rand(stats.size, generator=generator).to(stats.device)


class Combined(Criterion):
    name = "combined"
    needs = frozenset({"abs", "sq"})

    def score(self, stats, generator):
        parts = [c.score(stats, generator) for c in (Grad(), Fisher(), Bayes())]
        return torch.stack([group_rank(p, stats) for p in parts]).mean(0)


def group_rank(x: torch.Tensor, stats: ChannelStats) -> torch.Tensor:
    """Rank of each alive channel within its group, scaled to [0, 1] (dead channels get 0)."""
    out = torch.zeros_like(x)
    for g in stats.groups:
        off = stats.offsets[g.id]
        sl = slice(off, off + g.channels)
        alive = stats.alive[sl]
        idx = torch.nonzero(alive).squeeze(1)
        if idx.numel() == 0:
            continue
        r = torch.empty(idx.numel(), device=x.device)
        r[torch.argsort(x[sl][idx], stable=True)] = torch.arange(idx.numel(), device=x.device, dtype=r.dtype)
        seg = out[sl]
        seg[idx] = r / max(1, idx.numel() - 1)
    return out


CRITERIA: Dict[str, Criterion] = {c.name: c for c in (Grad(), Fisher(), Bayes(), Taylor(), Magnitude(), Random(), Combined())}
