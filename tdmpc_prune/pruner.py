"""`Pruner`: the facade over discovery, statistics, pressure, schedule, selection and surgery.

    pruner = Pruner(model, components={"encoder": "enc", "policy": "pi"},
                    example_inputs=(obs, act), criterion="bayes", sparsity=0.5)
    pruner.attach([optimizer], total_steps=100_000)   # statistics + L1 from the optimizer step
    for step in range(100_000):
        ...; loss.backward(); optimizer.step()
        pruner.step()                                 # fires the schedule's pruning events

The jobs live in their own modules: `groups` (discovery), `importance` (statistics), `criteria`,
`training` (schedule, group lasso and the optimizer hooks), `events` (selection, surgery, history),
`safety` (refusals), `metrics` (and printing), `persistence`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from . import events, metrics, persistence, selection, training
from .compensate import BiasCompensation
from .config import PruneConfig
from .criteria import Criterion, check_gathered, get_criterion, statistics_for
from .errors import PruneError
from .groups import ComponentSpec, Group, check_exclude, discover_groups
from .importance import ChannelStats
from .mirrors import add_module_mirror, register_implicit_mirrors
from .regularize import GroupLasso
from .safety import check_config_fits, check_has_groups, check_no_foreign_optimizers, check_observed, check_sliceable, warn_unobserved
from .schedule import Schedule
from .surgery import Surgeon
from .tracing import default_forward, side_effect_free

STATE_VERSION = persistence.STATE_VERSION


class Pruner:
    """Component-aware structured pruner of one model (see the package README for the method).

    Args:
        model: the model; its submodules are grouped into `components`.
        components: component name -> module name(s) or module(s). Default: each top-level child.
        example_inputs: inputs for one traced forward (shapes matter, values do not).
        forward_fn: `forward_fn(model, example_inputs)` returning the model's outputs; channels that
            reach an output are never pruned. Trace a multi-step rollout when an output is fed back.
        config: a `PruneConfig`; keyword `options` override its fields.
    """

    def __init__(
        self,
        model: nn.Module,
        components: Optional[Mapping[str, ComponentSpec]] = None,
        example_inputs: Any = None,
        forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
        config: Optional[PruneConfig] = None,
        **options: Any,
    ):
        config = PruneConfig.from_dict({**(config.to_dict() if config is not None else {}), **options}) if options or config is None else config
        if example_inputs is None:
            raise PruneError("Pruner needs example_inputs (one batch of model inputs) to trace the dependency graph")
        self.model, self.config, self.example_inputs = model, config, example_inputs
        self.forward_fn = forward_fn or default_forward
        check_exclude(model, config.exclude)
        with side_effect_free(model):
            groups, self.notes = discover_groups(model, self.forward_fn, example_inputs, components, config.exclude)
        check_has_groups(groups, self.notes)
        self.groups: List[Group] = groups
        self._by_id: Dict[str, Group] = {g.id: g for g in groups}
        check_config_fits(config, groups)
        self.surgeon = Surgeon(model, groups)
        register_implicit_mirrors(self.surgeon, model, groups)
        prunable = [g for g in groups if g.units > 1 and (g.kind != "coupling" or config.coupling == "prune")]
        check_sliceable(model, self.surgeon, prunable, lambda: self.forward_fn(self.model, self.example_inputs))
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        self.stats = ChannelStats(groups, config.ema, config.prior_strength, device, config.posterior_decay)
        self.criterion = get_criterion(config.criterion)
        self.stats.needs = statistics_for(self.criterion, config.observe)
        self.compensation = BiasCompensation(model, groups, config.ema) if config.compensate else None
        self.alive: Dict[str, torch.Tensor] = {g.id: torch.ones(g.channels, dtype=torch.bool) for g in groups}
        self.history: List[Dict[str, Any]] = []
        self.clock, self.total_steps, self.first_step = 0, None, 0
        self.updates = 0  # optimizer updates seen by the hooks (which of them are observed: every_n_updates)
        self.schedule: Optional[Schedule] = None
        self.lasso: Optional[GroupLasso] = None
        self.optimizers: List[torch.optim.Optimizer] = []
        self._handles: List[Any] = []
        self._callbacks: List[Callable[["Pruner"], None]] = []
        self.stats.rebuild(self.surgeon, self.alive)
        self._flops_at: Optional[tuple] = None  # (len(history), FLOPs) of the last trace
        self.dense_params = self.param_count()
        self.dense_flops: Optional[int] = self.flops()

    # ============================================================================ wiring
    def attach(
        self, optimizers: Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]], total_steps: Optional[int] = None, first_step: int = 0
    ) -> "Pruner":
        """Collect statistics and apply the L1 pressure from the steps of `optimizers` (every `every_n_updates`-th).

        `total_steps` is the run length in the units of the clock passed to `step()`; fractional
        `start`/`end`/`l1_period` options are fractions of the training span [first_step, total_steps]
        (`first_step`: when training updates begin, e.g. after a warm-up of random actions).
        """
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        training.attach(self, opts, total_steps, first_step)
        return self

    def detach(self) -> None:
        """Remove the optimizer hooks (statistics and pressure stop; masks stay)."""
        training.detach(self)

    def add_mirror(self, online: Union[nn.Module, torch.Tensor], mirror: Union[nn.Module, torch.Tensor], shared: bool = False) -> None:
        """Keep `mirror` (a target network, EMA copy or detached view) sliced like `online`.

        `shared=True`: the mirror shares storage with `online` and is re-pointed after each removal;
        `shared=False`: it is an independent copy, sliced with the same indices.
        """
        if self.history:
            raise PruneError("register mirrors before the first pruning event (call add_mirror right after creating the Pruner)")
        add_module_mirror(self.surgeon, online, mirror, shared)

    def on_structure_change(self, fn: Callable[["Pruner"], None]) -> None:
        """Call `fn(pruner)` after every pruning event (e.g. to recompile or update a config)."""
        self._callbacks.append(fn)

    # ============================================================================ schedule and criterion
    def step(self, clock: Optional[int] = None) -> Optional[Dict[str, float]]:
        """Advance the clock (to `clock`, or by one) and fire a due pruning event; returns its report."""
        self.clock = int(clock) if clock is not None else self.clock + 1
        if self.schedule is None:
            self.schedule = Schedule.from_config(self.config, self.total_steps, self.first_step)
        frac = self.schedule.due(self.clock)
        if frac is None:
            return None
        check_observed(self)
        return self.prune_to(fraction=frac)

    def use_criterion(self, criterion: Union[str, Criterion]) -> None:
        """Rank by another criterion from now on (its statistics must have been gathered: `observe`)."""
        PruneConfig(criterion=criterion)  # an unknown name raises the standard message with suggestions
        crit = get_criterion(criterion)
        check_gathered(crit, self.stats.needs)
        self.criterion = crit
        self.config.criterion = criterion

    def use_compensation(self, on: bool = True) -> None:
        """Start (or stop) tracking consumers' mean inputs and folding removed channels into their biases."""
        if self.compensation is not None:
            self.compensation.remove()
        self.compensation = BiasCompensation(self.model, self.groups, self.config.ema) if on else None
        self.config.compensate = bool(on)

    def observed(self) -> bool:
        """Whether the statistics have seen at least one (finite) optimizer step."""
        self.stats.commit()
        return int(self.stats.n_obs) > 0

    def group_target(self, group: Group, sparsity: float) -> float:
        """Final sparsity of one group under the config (budgets, coupling protection)."""
        return selection.group_target(self.config, group, sparsity)

    # ============================================================================ pruning
    def scores(self) -> Dict[str, torch.Tensor]:
        """Current importance of every structural unit per group (NaN for pruned units)."""
        self.stats.commit()
        return selection.per_unit(self.stats, self.alive, self.criterion.score(self.stats, events.generator(self)))

    def prune_to(self, sparsity: Optional[float] = None, physical: Optional[bool] = None, fraction: float = 1.0) -> Dict[str, float]:
        """Prune now so every group reaches `fraction` x its target (from `sparsity` or the config)."""
        cfg = self.config
        s = cfg.sparsity if sparsity is None else sparsity
        PruneConfig(sparsity=s)  # validates the range with the standard message
        if sparsity is not None:
            selection.check_targets(cfg, self.groups, s)
        physical = cfg.physical if physical is None else physical
        warn_unobserved(self)
        if physical:
            check_no_foreign_optimizers(self.surgeon, self.groups)
        self._apply(events.choose(self, s, fraction), physical)
        return self.metrics()

    def finalize(self) -> Dict[str, float]:
        """Physically remove every masked channel (turn a mask-mode run into a smaller model)."""
        check_no_foreign_optimizers(self.surgeon, self.groups)
        self._apply({}, physical=True)
        return self.metrics()

    def _apply(self, removals: Mapping[str, torch.Tensor], physical: bool) -> None:
        events.apply(self, removals, physical)

    # ============================================================================ measures and state
    def sparsity(self) -> float:
        """Fraction of prunable channels removed (prunable: groups the config allows to shrink)."""
        return metrics.sparsity(self)

    def param_count(self) -> int:
        """Trainable parameters of the model, counting masked entries as removed."""
        return metrics.param_count(self.model, self.surgeon)

    def flops(self) -> int:
        """FLOPs of one traced forward (torch.utils.flop_counter); masked channels still count.

        Traced once per structure (the count changes only at a pruning event), not at every log."""
        if self._flops_at is None or self._flops_at[0] != len(self.history):
            self._flops_at = (len(self.history), metrics.flops(self.model, self.forward_fn, self.example_inputs))
        return self._flops_at[1]

    def metrics(self, with_flops: bool = True) -> Dict[str, float]:
        return metrics.report(self, with_flops)

    def table(self) -> List[Dict[str, Any]]:
        return metrics.table(self)

    def __repr__(self) -> str:
        return metrics.describe(self)

    def state_dict(self) -> Dict[str, Any]:
        return persistence.state_dict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics and schedule and replay the pruning history on this (unpruned) model."""
        persistence.load_state_dict(self, state)
