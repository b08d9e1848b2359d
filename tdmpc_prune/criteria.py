"""Importance criteria: objects that map the per-channel statistics to one score per channel.

A criterion declares the per-step statistics it reads (`needs`, names registered in
`importance.STATISTICS`; only those are computed on the hot path) and implements `score`.  Built-ins
are registered by the same mechanism a user's criterion is::

    @register_criterion
    class Recent(Criterion):
        name, needs = "recent", frozenset({"sq"})
        def score(self, stats, generator):
            return stats.ema["sq"] * stats.alive

    Pruner(model, ..., criterion="recent")        # by name, or criterion=Recent() without registering

Scores are higher for more important channels; the `Pruner` reduces them per structural unit,
ranks within a group (or globally) and breaks ties by the fisher score, then a seeded draw.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterable, Set, Type, Union

import torch

from .errors import ArgumentError, PruneConfigError

if TYPE_CHECKING:
    from .importance import ChannelStats


class Criterion:
    """Maps statistics to one score per channel (higher = more important)."""

    name: str = ""
    needs: frozenset = frozenset()  # per-step statistics it reads (see importance.STATISTICS)

    def score(self, stats: "ChannelStats", generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


CRITERIA: Dict[str, Criterion] = {}


def register_criterion(criterion: Union[Criterion, Type[Criterion]]) -> Union[Criterion, Type[Criterion]]:
    """Register a criterion (an instance, or a class with a no-argument constructor) under its `name`.

    Usable as a class decorator; returns what it was given.
    """
    obj = criterion() if isinstance(criterion, type) else criterion
    if not isinstance(obj, Criterion):
        raise ArgumentError(f"a criterion must subclass tdmpc_prune.criteria.Criterion, got {type(obj).__name__}")
    if not obj.name or not isinstance(obj.name, str):
        raise ArgumentError(f"{type(obj).__name__} needs a non-empty string `name` to be registered")
    CRITERIA[obj.name] = obj
    return criterion


def get_criterion(criterion: Union[str, Criterion]) -> Criterion:
    """The criterion object for a registered name, or the instance itself."""
    if isinstance(criterion, Criterion):
        return criterion
    return CRITERIA[criterion]


def statistics_for(criterion: Criterion, observe: Iterable[str]) -> Set[str]:
    """The statistics to gather: what `criterion` reads and what the `observe`d criteria ("all": every one) read."""
    observe = list(observe)
    observed = CRITERIA.values() if "all" in observe else [CRITERIA[c] for c in observe]
    return set(criterion.needs).union(*(c.needs for c in observed))


def check_gathered(criterion: Criterion, gathered: Set[str]) -> None:
    """Switching to `criterion` needs its statistics to have been gathered all along."""
    missing = set(criterion.needs) - gathered
    if missing:
        raise PruneConfigError(
            f"criterion {criterion.name!r} needs the statistics {sorted(missing)}, which this pruner did not gather: "
            f"create it with observe=[{criterion.name!r}] (or observe=['all'])"
        )


class StatisticEMA(Criterion):
    """Score = the EMA of one per-step statistic (grad: |g|, fisher: g^2, taylor: |w g|)."""

    def __init__(self, name: str, statistic: str):
        self.name = name
        self.statistic = statistic
        self.needs = frozenset({statistic})

    def score(self, stats, generator):
        return stats.ema[self.statistic]


class Bayes(Criterion):
    """log(1 + posterior mean) x (1 + EMA of the energy), both in units of their group's mean."""

    name = "bayes"
    needs = frozenset({"sq"})

    def score(self, stats, generator):
        mu = stats.posterior()["mean"]
        history = mu / stats.group_mean(mu).clamp_min(1e-30)
        current = stats.ema["sq"] / stats.group_mean(stats.ema["sq"]).clamp_min(1e-30)
        return torch.log1p(history) * (1.0 + current)


class Magnitude(Criterion):
    """L2 norm of the channel's coupled weights (needs no gradient)."""

    name = "magnitude"

    def score(self, stats, generator):
        return stats.weight_norm()


class Random(Criterion):
    """Seeded uniform scores (the baseline every criterion should beat)."""

    name = "random"

    def score(self, stats, generator):
        return torch.rand(stats.size, generator=generator).to(stats.device)


class Combined(Criterion):
    """Mean of the within-group ranks (scaled to [0, 1]) of grad, fisher and bayes."""

    name = "combined"
    needs = frozenset({"abs", "sq"})

    def score(self, stats, generator):
        parts = [CRITERIA[c].score(stats, generator) for c in ("grad", "fisher", "bayes")]
        return torch.stack([group_rank(p, stats) for p in parts]).mean(0)


def group_rank(x: torch.Tensor, stats: "ChannelStats") -> torch.Tensor:
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


for _c in (StatisticEMA("grad", "abs"), StatisticEMA("fisher", "sq"), Bayes(), StatisticEMA("taylor", "taylor"), Magnitude(), Random(), Combined()):
    register_criterion(_c)
