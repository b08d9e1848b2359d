"""`PruneConfig`: every pruning option, validated once and shared by the TD-MPC2, SB3 and CLI paths."""
from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

from .errors import PruneConfigError
from .validation import check_number, check_type

from .criteria import CRITERIA as _CRITERIA
from .criteria import Criterion
from .schedule import SCHEDULES as _SCHEDULES
from .schedule import schedule_name

COUPLING = ("protect", "prune")
SCOPES = ("local", "global")

Step = Union[int, float]


def _near(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


@dataclass
class PruneConfig:
    """Options of the component-aware pruner.

    Step-valued options (`start`, `end`, `l1_period`) accept a float in [0, 1] or an int (an
    absolute step of the integration's clock).  A fraction is of the *training span*
    [first_step, total_steps] given to `Pruner.attach` -- e.g. TD-MPC2's span starts after its seed
    steps of random actions, when updates begin, so `start=0.2` is 20 % into the updates.
    """

    criterion: Union[str, Criterion] = "bayes"  # grad | fisher | bayes | combined | magnitude | taylor | random | registered | an instance
    sparsity: float = 0.5  # fraction of prunable channels removed, in [0, 1)
    schedule: Union[str, Callable] = "gradual"  # oneshot | iterative | gradual | registered name | fn(start, end, iterations)
    start: Step = 0.2  # first pruning step
    end: Step = 0.8  # last pruning step (iterative / gradual)
    iterations: int = 10  # number of pruning events for iterative / gradual
    budgets: Dict[str, float] = field(default_factory=dict)  # component -> sparsity override
    coupling: str = "protect"  # protect | prune: whether coupling groups (shared latent) are pruned
    coupling_sparsity: Optional[float] = None  # sparsity of coupling groups when pruned (default: sparsity)
    scope: str = "local"  # local: every group to its target; global: one ranking across groups
    l1: float = 0.0  # lambda_max of the cosine-scheduled group-lasso pressure; 0 disables it
    l1_period: Step = 0.25  # T of the cosine schedule
    physical: bool = True  # True: layers really shrink; False: reversible exact-zero masks
    ema: float = 0.9  # gamma of the statistics' exponential moving average (per observed update)
    prior_strength: float = 1.0  # beta_0 of the Gamma prior (pseudo-observations)
    posterior_decay: float = 1.0  # rho: forgetting of the Gamma posterior per observed update (1 = the whole history)
    every_n_updates: int = 4  # statistics and group-lasso shrink on every n-th optimizer update (n-fold cheaper; ema/posterior_decay per observation, n x lambda per shrink)
    compensate: bool = False  # fold a removed channel's mean activation into the next layer's bias
    observe: Sequence[str] = ()  # criteria whose statistics are gathered too ("all": every one), to compare them after one run
    exclude: Sequence[str] = ()  # module names whose output channels are never pruned
    seed: int = 0  # seed of the random criterion

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> "PruneConfig":
        """Check every option (type, finiteness, range, ordered pairs); raises `PruneConfigError`."""
        for key in ("exclude", "observe"):  # one name, or a list, stands for a tuple of names
            value = getattr(self, key)
            if isinstance(value, (str, list)):
                setattr(self, key, (value,) if isinstance(value, str) else tuple(value))
        _check_types(self)
        if not isinstance(self.criterion, Criterion) and self.criterion not in _CRITERIA:
            names = list(_CRITERIA)
            raise PruneConfigError(
                f"unknown criterion {self.criterion!r}; choose one of {', '.join(names)}.{_near(str(self.criterion), names)} "
                "(or pass a Criterion instance, or register one with tdmpc_prune.register_criterion)"
            )
        if not callable(self.schedule) and self.schedule not in _SCHEDULES:
            names = list(_SCHEDULES)
            raise PruneConfigError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(names)}.{_near(str(self.schedule), names)} "
                "(or pass a function fn(start, end, iterations), or register one with tdmpc_prune.register_schedule)"
            )
        if self.coupling not in COUPLING:
            raise PruneConfigError(f"coupling must be 'protect' or 'prune', got {self.coupling!r}")
        if self.scope not in SCOPES:
            raise PruneConfigError(f"scope must be 'local' or 'global', got {self.scope!r}")
        _check_sparsity("sparsity", self.sparsity)
        if self.coupling_sparsity is not None:
            _check_sparsity("coupling_sparsity", self.coupling_sparsity)
        for name, value in dict(self.budgets).items():
            _check_sparsity(f"budgets[{name!r}]", value, whole_layer_hint=True)
        for name in ("start", "end", "l1_period"):
            _check_step(name, getattr(self, name))
        if isinstance(self.l1_period, (int, float)) and float(self.l1_period) == 0.0:
            raise PruneConfigError("l1_period must be > 0 (a fraction of the run or a number of steps)")
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 1:
            raise PruneConfigError(f"iterations must be an int >= 1, got {self.iterations!r}")
        check_number(PruneConfigError, "l1", self.l1, low=0, what="lambda_max of the group lasso; 0 disables it", example=1e-4)
        check_number(PruneConfigError, "ema", self.ema, 0, 1, high_open=True, what="the statistics' EMA factor", example=0.9)
        check_number(PruneConfigError, "prior_strength", self.prior_strength, low=0, low_open=True,
                     what="pseudo-observations of the Gamma prior", example=1.0)
        check_number(PruneConfigError, "posterior_decay", self.posterior_decay, 0, 1, low_open=True,
                     what="1 keeps the whole history", example=1.0)
        check_number(PruneConfigError, "every_n_updates", self.every_n_updates, low=1, integer=True,
                     what="the statistics and the group lasso run on every n-th optimizer update", example=4)
        for name in self.observe:
            if name != "all" and name not in _CRITERIA:
                names = list(_CRITERIA)
                raise PruneConfigError(f"observe: unknown criterion {name!r}; choose from all, {', '.join(names)}.{_near(str(name), names)}")
        check_number(PruneConfigError, "seed", self.seed, low=0, integer=True, what="seed of the random criterion", example=0)
        if type(self.start) is type(self.end) and self.schedule != "oneshot" and self.end < self.start:
            raise PruneConfigError(
                f"end ({self.end!r}) comes before start ({self.start!r}); give end >= start (prune.end >= prune.start)"
            )
        return self

    def resolve_step(self, value: Step, total_steps: Optional[int], first_step: int = 0) -> int:
        """A position on the clock: a fraction of the span [first_step, total_steps], or an int as given."""
        if isinstance(value, float):
            return int(first_step) + self.resolve_length(value, total_steps, first_step)
        return int(value)

    def resolve_length(self, value: Step, total_steps: Optional[int], first_step: int = 0) -> int:
        """A number of steps (e.g. `l1_period`): a fraction of the span's length, or an int as given."""
        if isinstance(value, float):
            if total_steps is None:
                raise PruneConfigError(
                    "a fractional step option (start/end/l1_period) needs the run length: "
                    "pass total_steps= to attach(), or give the option as an int step"
                )
            return int(round(value * max(0, int(total_steps) - int(first_step))))
        return int(value)

    # ----------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["budgets"] = dict(self.budgets)
        d["criterion"] = self.criterion.name if isinstance(self.criterion, Criterion) else self.criterion
        d["schedule"] = schedule_name(self.schedule)
        d["exclude"] = list(self.exclude)
        d["observe"] = list(self.observe)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PruneConfig":
        names = {f.name for f in fields(cls)}
        for key in d:
            if key not in names:
                raise PruneConfigError(f"unknown prune option {key!r}.{_near(key, sorted(names))} Options: {', '.join(sorted(names))}")
        return cls(**dict(d))

    @classmethod
    def from_overrides(cls, tokens: Sequence[str], prefix: str = "prune.") -> "PruneConfig":
        """Parse hydra `prune.key=value` tokens (budgets as `prune.budgets.<component>=0.3`).

        The grammar is hydra's and the types come from `overrides.coerce`, as for the agent's options.
        """
        from .overrides import parse, value_of

        values: Dict[str, Any] = {}
        for override in parse(tokens, PruneConfigError):
            key = override.key_or_group
            if override.is_sweep_override():
                raise PruneConfigError(f"{key}: a sweep needs -m/--multirun (tdmpc-prune train -m ...)")
            if prefix and key.startswith(prefix):
                key = key[len(prefix):]
            if key.startswith("budgets."):
                values.setdefault("budgets", {})[key[len("budgets."):]] = value_of(override)
                continue
            values[key] = value_of(override)
        return cls.from_values(values, prefix)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], prefix: str = "prune.") -> "PruneConfig":
        """A config from values as hydra parsed them (a command line or a composed config), typed by `coerce`."""
        import typing

        from .overrides import coerce

        hints = typing.get_type_hints(cls)
        typed: Dict[str, Any] = {}
        for key, value in values.items():
            if key not in hints:
                raise PruneConfigError(
                    f"unknown prune option '{prefix}{key}'.{_near(key, sorted(hints))} Options: {', '.join(sorted(hints))}"
                )
            typed[key] = coerce(PruneConfigError, f"{prefix}{key}", value, hints[key])
        return cls.from_dict(typed)


_OWN_CHECKS = ("sparsity", "coupling_sparsity", "start", "end", "l1_period")  # checked with their range below


def _check_types(cfg: PruneConfig) -> None:
    """Every field has its annotated type (a sparsity may be given as an int 0, a float option as an int)."""
    import typing

    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        if f.name in _OWN_CHECKS:
            continue
        value = getattr(cfg, f.name)
        example = None if f.default is MISSING or f.default is None else f.default
        check_type(PruneConfigError, f.name, value, hints[f.name], None if example is None else repr(example))


def _check_sparsity(name: str, value: Any, whole_layer_hint: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0.0 <= float(value) < 1.0
    if not ok:
        hint = " (1.0 would remove the whole layer)" if whole_layer_hint or value == 1 else ""
        raise PruneConfigError(f"{name} must be a fraction in [0, 1), got {value!r}{hint}")


def _check_step(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PruneConfigError(f"{name} must be a fraction of the run (float in [0, 1]) or a step (int >= 0), got {value!r}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise PruneConfigError(
            f"{name}={value!r}: a float is a fraction of the run and must lie in [0, 1]; give an int for an absolute step"
        )
    if isinstance(value, int) and value < 0:
        raise PruneConfigError(f"{name} must be >= 0, got {value!r}")
