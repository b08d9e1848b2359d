"""When to prune and how much: oneshot, iterative and gradual (cubic, Zhu & Gupta 2017) schedules.

A schedule is a list of events `(step, fraction)`: at `step` every group is pruned to
`fraction` x its target sparsity.  A schedule *function* makes that list from the resolved
`start`, `end` (clock steps) and `iterations`; the built-ins are registered like a user's::

    @register_schedule
    def exponential(start: int, end: int, iterations: int) -> list:
        return [(t, 1 - 0.5 ** (j + 1) if j < iterations - 1 else 1.0) for j, t in enumerate(spread(start, end, iterations))]

    Pruner(model, ..., schedule="exponential")   # by name, or schedule=exponential

With `k = iterations` and event times spread evenly from `start` to `end`
(`t_j = start + (j-1)(end-start)/(k-1)`, j = 1..k):

* oneshot:   one event at `start`, fraction 1;
* iterative: fraction j/k (equal steps);
* gradual:   fraction 1 - (1 - j/k)^3 (fast early, gentle near the end).

The clock is whatever the integration counts (optimizer updates, environment steps); events are
fired when the clock passes them, so a clock that jumps (SB3 rollouts) never misses one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, Union

from .errors import ArgumentError, PruneConfigError

if TYPE_CHECKING:
    from .config import PruneConfig

Events = List[Tuple[int, float]]
ScheduleFn = Callable[[int, int, int], Events]
SCHEDULES: Dict[str, ScheduleFn] = {}


def register_schedule(fn: ScheduleFn, name: Optional[str] = None) -> ScheduleFn:
    """Register `fn(start, end, iterations) -> [(step, fraction), ...]` under `name` (default: its __name__)."""
    if not callable(fn):
        raise ArgumentError(f"a schedule must be a callable fn(start, end, iterations), got {type(fn).__name__}")
    SCHEDULES[name or fn.__name__] = fn
    return fn


def schedule_name(schedule: Union[str, ScheduleFn]) -> str:
    """The registered name of a schedule (its __name__ for an unregistered function)."""
    if isinstance(schedule, str):
        return schedule
    return next((n for n, f in SCHEDULES.items() if f is schedule), getattr(schedule, "__name__", repr(schedule)))


def spread(start: int, end: int, k: int) -> List[int]:
    """k event times spread evenly from start to end (one event: at end)."""
    return [start + round((j - 1) * (end - start) / (k - 1)) if k > 1 else end for j in range(1, k + 1)]


@register_schedule
def oneshot(start: int, end: int, iterations: int) -> Events:
    return [(start, 1.0)]


@register_schedule
def iterative(start: int, end: int, iterations: int) -> Events:
    k = iterations
    return list(zip(spread(start, end, k), [j / k for j in range(1, k + 1)]))


@register_schedule
def gradual(start: int, end: int, iterations: int) -> Events:
    k = iterations
    return list(zip(spread(start, end, k), [1.0 - (1.0 - j / k) ** 3 for j in range(1, k + 1)]))


@dataclass
class Schedule:
    events: Events
    done: int = 0  # events already fired

    @classmethod
    def from_config(cls, cfg: "PruneConfig", total_steps: Optional[int], first_step: int = 0) -> "Schedule":
        """Events of `cfg`; fractional `start`/`end` are of the span [first_step, total_steps]."""
        start = cfg.resolve_step(cfg.start, total_steps, first_step)
        end = cfg.resolve_step(cfg.end, total_steps, first_step)
        fn = cfg.schedule if callable(cfg.schedule) else SCHEDULES[cfg.schedule]
        if end < start and fn is not oneshot:
            raise PruneConfigError(f"end ({end}) comes before start ({start}); give end >= start")
        events = [(int(t), float(f)) for t, f in fn(start, end, cfg.iterations)]
        if not events or any(not 0.0 <= f <= 1.0 for _, f in events) or any(b[0] < a[0] for a, b in zip(events, events[1:])):
            raise PruneConfigError(
                f"schedule {schedule_name(cfg.schedule)!r} must return events (step, fraction) in time order with "
                f"fractions in [0, 1]; got {events[:4]}{'...' if len(events) > 4 else ''}"
            )
        return cls(events)

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
