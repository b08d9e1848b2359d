"""`Pruner`: the facade over discovery, statistics, pressure, schedule, selection and surgery.

    pruner = Pruner(model, components={"encoder": "enc", "policy": "pi"},
                    example_inputs=(obs, act), criterion="bayes", sparsity=0.5)
    pruner.attach([optimizer], total_steps=100_000)   # statistics + L1 from the optimizer step
    for step in range(100_000):
        ...; loss.backward(); optimizer.step()
        pruner.step()                                 # fires the schedule's pruning events

The jobs live in their own modules: `groups` (discovery), `importance` (statistics), `criteria`,
`regularize` (group lasso), `schedule`, `selection`, `surgery` + `mirrors`, `metrics`, `persistence`.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from . import metrics, persistence, selection
from .compensate import BiasCompensation
from .config import PruneConfig
from .criteria import CRITERIA, Criterion, get_criterion
from .errors import PruneConfigError, PruneError
from .groups import ComponentSpec, Group, check_exclude, discover_groups
from .importance import ChannelStats
from .mirrors import add_module_mirror, register_implicit_mirrors
from .regularize import GroupLasso
from .safety import check_attachable, check_no_foreign_optimizers, check_sliceable
from .schedule import Schedule
from .surgery import Surgeon
from .tracing import side_effect_free

STATE_VERSION = persistence.STATE_VERSION


def _default_forward(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _device_of(model: nn.Module) -> torch.device:
    return next((t.device for t in model.parameters()), torch.device("cpu"))


def _outside_compile(hook: Callable) -> Callable:
    """`hook` run eagerly even where torch.compile traces the optimizer step that calls it.

    The step hooks keep Python state that changes every step (the clock, cached layouts, a pending
    flag); traced, each change would fail a guard and re-compile the caller. Disabled, torch.compile
    breaks the graph at the hook once and runs it as plain PyTorch at every step, never re-compiling.
    """
    return torch.compiler.disable(hook, recursive=True)


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
        self.forward_fn = forward_fn or _default_forward
        check_exclude(model, config.exclude)
        with side_effect_free(model):
            groups, self.notes = discover_groups(model, self.forward_fn, example_inputs, components, config.exclude)
        if not groups:
            detail = "; ".join(self.notes) or "no Linear/Conv/Embedding layer with prunable outputs was traced"
            raise PruneError(
                f"the model has no prunable group ({detail}). Check that forward_fn runs the components and returns "
                "only the heads' outputs, and that `exclude` does not cover every layer."
            )
        self.groups: List[Group] = groups
        self._by_id: Dict[str, Group] = {g.id: g for g in groups}
        known = {c for g in groups for c in g.components}
        for comp in config.budgets:
            if comp not in known:
                raise PruneConfigError(f"budget for unknown component {comp!r}; components are: {', '.join(sorted(known))}")
        selection.check_targets(config, groups, config.sparsity)
        if config.sparsity > 0 and not config.budgets and all(self.group_target(g, config.sparsity) == 0 for g in groups):
            raise PruneConfigError(
                f"nothing can be pruned: all {len(groups)} groups span several components, and coupling groups are "
                "protected (coupling='protect'). With the default components (each top-level child of the model) "
                "every hidden width of a plain nn.Sequential is such a group. Pass components= (e.g. "
                "{'model': ''} for one component) or coupling='prune'."
            )
        self.surgeon = Surgeon(model, groups)
        register_implicit_mirrors(self.surgeon, model, groups)
        prunable = [g for g in groups if g.units > 1 and (g.kind != "coupling" or config.coupling == "prune")]
        check_sliceable(model, self.surgeon, prunable, lambda: self.forward_fn(self.model, self.example_inputs))
        self.stats = ChannelStats(groups, config.ema, config.prior_strength, _device_of(model), config.posterior_decay)
        self.criterion = get_criterion(config.criterion)
        observed = CRITERIA.values() if "all" in config.observe else [CRITERIA[c] for c in config.observe]
        self.stats.needs = set(self.criterion.needs).union(*(c.needs for c in observed))
        self.compensation = BiasCompensation(model, groups, config.ema) if config.compensate else None
        self.alive: Dict[str, torch.Tensor] = {g.id: torch.ones(g.channels, dtype=torch.bool) for g in groups}
        self.history: List[Dict[str, Any]] = []
        self.clock, self.total_steps, self.first_step = 0, None, 0
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
        """Collect statistics and apply the L1 pressure at every step of `optimizers`.

        `total_steps` is the run length in the units of the clock passed to `step()`; fractional
        `start`/`end`/`l1_period` options are fractions of the training span [first_step, total_steps]
        (`first_step`: when training updates begin, e.g. after a warm-up of random actions).
        """
        self.detach()
        opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
        if not opts:
            raise PruneError("attach() needs at least one optimizer")
        check_attachable(self.model, self.groups, opts)
        cfg = self.config
        self.total_steps = total_steps
        # a warm-up longer than the run leaves an empty span at its end, never a span ending before it starts
        self.first_step = min(int(first_step), int(total_steps)) if total_steps is not None else int(first_step)
        done = self.schedule.done if self.schedule is not None else 0
        self.schedule = None  # built on the first step(): prune_to() alone needs no run length
        if total_steps is not None or not any(isinstance(v, float) for v in (cfg.start, cfg.end)):
            self.schedule = Schedule.from_config(cfg, total_steps, self.first_step)
            self.schedule.done = done
            self._check_events_after_first_step()
        pressured = [g.id for g in self.groups if self.group_target(g, cfg.sparsity) > 0]
        period = cfg.resolve_length(cfg.l1_period, total_steps, self.first_step) if cfg.l1 > 0 else 1
        self.lasso = GroupLasso(self.stats, cfg.l1, max(1, period), pressured)
        self.optimizers = self.surgeon.optimizers = opts
        for i, opt in enumerate(opts):
            ids = frozenset(id(p) for pg in opt.param_groups for p in pg["params"])
            self._handles.append(opt.register_step_pre_hook(_outside_compile(self._pre_hook(i, ids))))
            self._handles.append(opt.register_step_post_hook(_outside_compile(self._post_hook(ids))))
        return self

    def _check_events_after_first_step(self) -> None:
        """A gradient criterion cannot rank channels before training has produced a gradient."""
        early = [t for t, _ in self.schedule.events[self.schedule.done :] if t < self.first_step]
        if early and self.criterion.needs:
            raise PruneConfigError(
                f"a pruning event at step {early[0]} comes before training updates begin (first_step={self.first_step}): "
                f"criterion {self.config.criterion!r} would rank channels on no gradient statistics. "
                f"Give start (and end) >= {self.first_step}, or as fractions of the training span."
            )

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, index: int, ids: frozenset) -> Callable:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if index == 0:
                self.stats.commit()  # the previous step is complete once the first optimizer steps again
            self.stats.accumulate(ids)

        return hook

    def _post_hook(self, ids: frozenset) -> Callable:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self.lasso is not None and not (self.schedule is not None and self.schedule.finished):
                self.lasso.shrink(self.clock, ids)
            self.surgeon.reapply_masks()

        return hook

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
        removes = any(self.group_target(g, self.config.sparsity) > 0 for g in self.groups)
        if removes and self.criterion.needs and not self.observed():
            raise PruneError(
                f"a pruning event fired at step {self.clock} before any optimizer step was observed: criterion "
                f"{self.config.criterion!r} would rank on no statistics. attach() the pruner to the optimizer that trains "
                "the model, and give start after the first training update."
            )
        return self.prune_to(fraction=frac)

    def use_criterion(self, criterion: Union[str, Criterion]) -> None:
        """Rank by another criterion from now on (its statistics must have been gathered: `observe`)."""
        PruneConfig(criterion=criterion)  # an unknown name raises the standard message with suggestions
        crit = get_criterion(criterion)
        missing = set(crit.needs) - self.stats.needs
        if missing:
            raise PruneConfigError(
                f"criterion {crit.name!r} needs the statistics {sorted(missing)}, which this pruner did not gather: "
                f"create it with observe=[{crit.name!r}] (or observe=['all'])"
            )
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
        return selection.per_unit(self.stats, self.alive, self.criterion.score(self.stats, self._generator()))

    def _generator(self, stream: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 100_003 + len(self.history) + stream * 7_919)

    def prune_to(self, sparsity: Optional[float] = None, physical: Optional[bool] = None, fraction: float = 1.0) -> Dict[str, float]:
        """Prune now so every group reaches `fraction` x its target (from `sparsity` or the config)."""
        cfg = self.config
        s = cfg.sparsity if sparsity is None else sparsity
        PruneConfig(sparsity=s)  # validates the range with the standard message
        if sparsity is not None:
            selection.check_targets(cfg, self.groups, s)
        physical = cfg.physical if physical is None else physical
        if self.criterion.needs and not self.observed():
            warnings.warn(
                f"prune_to(): criterion {cfg.criterion!r} has observed no optimizer step yet, so every score is 0 and "
                "the channels are chosen by the seeded tie-break alone (at random)",
                stacklevel=2,
            )
        if physical:
            check_no_foreign_optimizers(self.surgeon, self.groups)
        scores = self.scores()
        ties = selection.tie_keys(self.stats, self.alive, self._generator(stream=1))
        select = selection.select_global if cfg.scope == "global" else selection.select_local
        self._apply(select(cfg, self.groups, self.alive, scores, ties, s, fraction), physical)
        return self.metrics()

    def finalize(self) -> Dict[str, float]:
        """Physically remove every masked channel (turn a mask-mode run into a smaller model)."""
        check_no_foreign_optimizers(self.surgeon, self.groups)
        self._apply({}, physical=True)
        return self.metrics()

    def _apply(self, removals: Mapping[str, torch.Tensor], physical: bool) -> None:
        """Mask or remove channels, record the event in `history`, and tell the structure callbacks."""
        removals = {gid: ch for gid, ch in removals.items() if ch.numel()}
        if self.compensation is not None and removals:
            self.compensation.fold(removals, self.surgeon)
        for gid, ch in removals.items():
            self.alive[gid][ch] = False
        register_implicit_mirrors(self.surgeon, self.model, self.groups)  # views re-created since (.to(), a load)
        if physical:
            record = {gid: ch.clone() for gid, ch in self.surgeon.masked.items() if ch.numel()}
            for gid, ch in removals.items():
                record[gid] = torch.unique(torch.cat([record.get(gid, torch.empty(0, dtype=torch.long)), ch]))
            if not record:
                return
            self.surgeon.remove(record)
        else:
            if not removals:
                return
            self.surgeon.mask(removals)
            record = removals
        self.history.append({"clock": self.clock, "physical": physical, "removed": {gid: ch.tolist() for gid, ch in record.items()}})
        self.stats.rebuild(self.surgeon, self.alive)
        for fn in self._callbacks:
            fn(self)

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
