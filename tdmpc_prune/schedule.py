"""When to prune and how much: oneshot, iterative and gradual (cubic, Zhu & Gupta 2017) schedules.

A schedule is a list of events `(step, fraction)`: at `step` every group is pruned to
`fraction` x its target sparsity.  With `k = iterations` and event times spread evenly from
`start` to `end` (`t_j = start + (j-1)(end-start)/(k-1)`, j = 1..k):

* oneshot:   one event at `start`, fraction 1;
* iterative: fraction j/k (equal steps);
* gradual:   fraction 1 - (1 - j/k)^3 (fast early, gentle near the end).

The clock is whatever the integration counts (optimizer updates, environment steps); events are
fired when the clock passes them, so a clock that jumps (SB3 rollouts) never misses one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from .config import PruneConfig
from .errors import PruneConfigError


@dataclass
class Schedule:
    events: List[Tuple[int, float]]
    done: int = 0  # events already fired

    @classmethod
    def from_config(cls, cfg: PruneConfig, total_steps: Optional[int], first_step: int = 0) -> "Schedule":
        """Events of `cfg`; fractional `start`/`end` are of the span [first_step, total_steps]."""
        start = cfg.resolve_step(cfg.start, total_steps, first_step)
        if cfg.schedule == "oneshot":
            return cls([(start, 1.0)])
        end = cfg.resolve_step(cfg.end, total_steps, first_step)
        if end < start:
            raise PruneConfigError(f"end ({end}) comes before start ({start}); give end >= start")
        k = cfg.iterations
        times = [start + round((j - 1) * (end - start) / (k - 1)) if k > 1 else end for j in range(1, k + 1)]
        if cfg.schedule == "iterative":
            fracs = [j / k for j in range(1, k + 1)]
        else:
            fracs = [1.0 - (1.0 - j / k) ** 3 for j in range(1, k + 1)]
        return cls(list(zip(times, fracs)))

    def due(self, step: int) -> Optional[float]:
        """The fraction to prune to now (the latest passed event), or None if no new event passed."""
        frac = None
        while self.done < len(self.events) and self.events[self.done][0] <= step:
            frac = self.events[self.done][1]
            self.done += 1
        return frac

    def fraction_at(self, step: int) -> float:
        """Fraction of the target reached by `step` (for logging)."""
        passed = [f for t, f in self.events if t <= step]
        return passed[-1] if passed else 0.0

    @property
    def finished(self) -> bool:
        return self.done >= len(self.events)
