"""`Pruner`: the facade that owns discovery, statistics, pressure, schedule and surgery.

    pruner = Pruner(model, components={"encoder": "enc", "policy": "pi"},
                    example_inputs=(obs, act), criterion="bayes", sparsity=0.5)
    pruner.attach([optimizer], total_steps=100_000)   # statistics + L1 from the optimizer step
    for step in range(100_000):
        ...; loss.backward(); optimizer.step()
        pruner.step()                                 # fires the schedule's pruning events
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .compensate import BiasCompensation
from .config import PruneConfig
from .ensemble import StackedEnsemble
from .errors import PruneConfigError, PruneError
from .groups import ComponentSpec, Group, check_exclude, discover_groups
from .criteria import CRITERIA, Criterion, get_criterion
from .importance import ChannelStats
from .layers import named_norms, named_tensors, side_effect_free
from .regularize import GroupLasso
from .schedule import Schedule
from .safety import check_sliceable, foreign_optimizers
from .surgery import Surgeon

STATE_VERSION = 1


def _default_forward(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _fractional(cfg: PruneConfig) -> bool:
    return any(isinstance(v, float) for v in (cfg.start, cfg.end))


def _lexsort(primary: torch.Tensor, *keys: torch.Tensor) -> torch.Tensor:
    """Indices ordering `primary` ascending, ties broken by each of `keys` in turn."""
    order = torch.arange(primary.numel())
    for key in (*reversed(keys), primary):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")


class _GlobalOnly:
    """Stand-in for FlopCounterMode's module tracker that attributes every FLOP to 'Global'."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *args: Any) -> None:
        return None


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
        if config is None:
            config = PruneConfig.from_dict(options)
        elif options:
            config = PruneConfig.from_dict({**config.to_dict(), **options})
        if example_inputs is None:
            raise PruneError("Pruner needs example_inputs (one batch of model inputs) to trace the dependency graph")
        self.model = model
        self.config = config
        self.forward_fn = forward_fn or _default_forward
        self.example_inputs = example_inputs
        device = _device_of(model)
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
        self._check_targets(config.sparsity)
        if config.sparsity > 0 and not config.budgets and all(self.group_target(g, config.sparsity) == 0 for g in groups):
            raise PruneConfigError(
                f"nothing can be pruned: all {len(groups)} groups span several components, and coupling groups are "
                "protected (coupling='protect'). With the default components (each top-level child of the model) "
                "every hidden width of a plain nn.Sequential is such a group. Pass components= (e.g. "
                "{'model': ''} for one component) or coupling='prune'."
            )
        self.surgeon = Surgeon(model, groups)
        self._register_implicit_mirrors()
        self._check_sliceable()
        self.stats = ChannelStats(groups, config.ema, config.prior_strength, device, config.posterior_decay)
        self.criterion = get_criterion(config.criterion)
        observed = CRITERIA.values() if "all" in config.observe else [CRITERIA[c] for c in config.observe]
        self.stats.needs = set(self.criterion.needs).union(*(c.needs for c in observed))
        self.compensation = BiasCompensation(model, groups, config.ema) if config.compensate else None
        self.alive: Dict[str, torch.Tensor] = {g.id: torch.ones(g.channels, dtype=torch.bool) for g in groups}
        self.history: List[Dict[str, Any]] = []
        self.clock = 0
        self.total_steps: Optional[int] = None
        self.first_step = 0
        self.schedule: Optional[Schedule] = None
        self.lasso: Optional[GroupLasso] = None
        self.optimizers: List[torch.optim.Optimizer] = []
        self._handles: List[Any] = []
        self._callbacks: List[Callable[["Pruner"], None]] = []
        self.stats.rebuild(self.surgeon, self.alive)
        self.dense_params = self.param_count()
        self._dense_flops: Optional[int] = self.flops()

    # ============================================================================ wiring
    def attach(
        self,
        optimizers: Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]],
        total_steps: Optional[int] = None,
        first_step: int = 0,
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
        self._check_attachable(opts)
        cfg = self.config
        self.total_steps = total_steps
        # a warm-up longer than the run leaves an empty span at its end, never a span ending before it starts
        self.first_step = min(int(first_step), int(total_steps)) if total_steps is not None else int(first_step)
        done = self.schedule.done if self.schedule is not None else 0
        self.schedule = None  # built on the first step(): prune_to() alone needs no run length
        if total_steps is not None or not _fractional(cfg):
            self.schedule = Schedule.from_config(cfg, total_steps, self.first_step)
            self.schedule.done = done
        self._check_events_after_first_step()
        pressured = [g.id for g in self.groups if self.group_target(g, cfg.sparsity) > 0]
        period = cfg.resolve_length(cfg.l1_period, total_steps, self.first_step) if cfg.l1 > 0 else 1
        self.lasso = GroupLasso(self.stats, cfg.l1, max(1, period), pressured)
        self.optimizers = opts
        self.surgeon.optimizers = opts
        for i, opt in enumerate(opts):
            ids = {id(p) for pg in opt.param_groups for p in pg["params"]}
            self._handles.append(opt.register_step_pre_hook(self._pre_hook(i, ids)))
            self._handles.append(opt.register_step_post_hook(self._post_hook(ids)))
        return self

    def _check_events_after_first_step(self) -> None:
        """A gradient criterion cannot rank channels before training has produced a gradient."""
        if self.schedule is None or not self.criterion.needs:
            return
        early = [t for t, _ in self.schedule.events[self.schedule.done :] if t < self.first_step]
        if early:
            raise PruneConfigError(
                f"a pruning event at step {early[0]} comes before training updates begin (first_step={self.first_step}): "
                f"criterion {self.config.criterion!r} would rank channels on no gradient statistics. "
                f"Give start (and end) >= {self.first_step}, or as fractions of the training span."
            )

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, index: int, ids: set) -> Callable:
        def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if index == 0:
                self.stats.commit()  # the previous step is complete once the first optimizer steps again
            self.stats.accumulate(ids)

        return hook

    def _post_hook(self, ids: set) -> Callable:
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
        if isinstance(online, torch.Tensor):
            self.surgeon.add_mirror(online, mirror, shared)
            return
        on, mi = named_tensors(online), named_tensors(mirror)
        if set(on) != set(mi):
            missing = sorted(set(on) ^ set(mi))[:5]
            raise PruneError(f"mirror does not have the structure of its online module (differing tensors: {missing})")
        for name, t in on.items():
            if t.shape != mi[name].shape:
                raise PruneError(
                    f"mirror tensor {name!r} has shape {tuple(mi[name].shape)} but the online one {tuple(t.shape)}: "
                    "a mirror must have the structure of its online module"
                )
            self.surgeon.add_mirror(t, mi[name], shared)
        on_norms, mi_norms = named_norms(online), named_norms(mirror)
        for name, ln in on_norms.items():
            if name in mi_norms and mi_norms[name] is not ln:
                self.surgeon.add_norm_mirror(ln, mi_norms[name])
        self.surgeon.roots.append(mirror)

    def _register_implicit_mirrors(self) -> None:
        """Mirrors the model itself reveals: tensors sharing storage with a group tensor (detached
        views), and `StackedEnsemble` copies sharing a template with a traced ensemble (targets)."""
        members = {}
        for g in self.groups:
            for m in g.members:
                members[id(m.tensor)] = m.tensor
        by_ptr = {(t.data_ptr(), tuple(t.shape)): t for t in members.values()}
        for _, t in named_tensors(self.model).items():
            online = by_ptr.get((t.data_ptr(), tuple(t.shape)))
            if online is not None and online is not t:
                self.surgeon.add_mirror(online, t, shared=True)
        ensembles = [m for m in self.model.modules() if isinstance(m, StackedEnsemble)]
        traced = [e for e in ensembles if any(id(t) in members for _, t in e.named_tensors())]
        for e in ensembles:
            if e.mode != "copy":
                continue
            for o in traced:
                if o.template is e.template and o is not e:
                    online = o.tensor_dict()
                    for name, t in e.named_tensors():
                        self.surgeon.add_mirror(online[name], t, shared=False)

    def on_structure_change(self, fn: Callable[["Pruner"], None]) -> None:
        """Call `fn(pruner)` after every pruning event (e.g. to recompile or update a config)."""
        self._callbacks.append(fn)

    # ============================================================================ schedule
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
        cfg = self.config
        if group.kind == "coupling":
            if cfg.coupling == "protect":
                return 0.0
            return cfg.coupling_sparsity if cfg.coupling_sparsity is not None else sparsity
        for comp in group.components:
            if comp in cfg.budgets:
                return float(cfg.budgets[comp])
        return sparsity

    # ============================================================================ pruning
    def scores(self) -> Dict[str, torch.Tensor]:
        """Current importance of every structural unit per group (NaN for pruned units)."""
        self.stats.commit()
        return self._per_unit(self.criterion.score(self.stats, self._generator()))

    def _per_unit(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-channel slot values -> one value per structural unit of each group (NaN for pruned units)."""
        flat = flat.detach().float().cpu()
        out = {}
        for g in self.groups:
            off = self.stats.offsets[g.id]
            s = flat[off : off + g.channels].view(g.units, g.unit).mean(1)
            s[~self._alive_units(g)] = float("nan")
            out[g.id] = s
        return out

    def _tie_keys(self) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Second and third sort keys of every unit: its fisher score, then a seeded random draw.

        Equal scores (a criterion that saturates, `combined`'s rank means, units never touched by a
        gradient) are never broken by channel index, which would always remove the first channels.
        """
        fisher = self._per_unit(self.stats.ema_sq)
        gen = self._generator(stream=1)
        return {g.id: (torch.nan_to_num(fisher[g.id]), torch.rand(g.units, generator=gen)) for g in self.groups}

    def _generator(self, stream: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed * 100_003 + len(self.history) + stream * 7_919)

    def _alive_units(self, g: Group) -> torch.Tensor:
        return self.alive[g.id].view(g.units, g.unit).all(1)

    def prune_to(
        self, sparsity: Optional[float] = None, physical: Optional[bool] = None, fraction: float = 1.0
    ) -> Dict[str, float]:
        """Prune now so every group reaches `fraction` x its target (from `sparsity` or the config)."""
        cfg = self.config
        s = cfg.sparsity if sparsity is None else sparsity
        PruneConfig(sparsity=s)  # validates the range with the standard message
        if sparsity is not None:
            self._check_targets(s)
        physical = cfg.physical if physical is None else physical
        if self.criterion.needs and not self.observed():
            warnings.warn(
                f"prune_to(): criterion {cfg.criterion!r} has observed no optimizer step yet, so every score is 0 and "
                "the channels are chosen by the seeded tie-break alone (at random)",
                stacklevel=2,
            )
        if physical:
            self._check_foreign_optimizers()
        scores = self.scores()
        select = self._select_global if cfg.scope == "global" else self._select_local
        removals = select(scores, self._tie_keys(), s, fraction)
        self._apply(removals, physical)
        return self.metrics()

    def finalize(self) -> Dict[str, float]:
        """Physically remove every masked channel (turn a mask-mode run into a smaller model)."""
        self._check_foreign_optimizers()
        self._apply({}, physical=True)
        return self.metrics()

    def _unit_channels(self, g: Group, units: torch.Tensor) -> torch.Tensor:
        return (units[:, None] * g.unit + torch.arange(g.unit)).flatten()

    def _units_to_remove(self, g: Group, target: float) -> int:
        return int(math.floor(g.units * target + 0.5))

    def _check_targets(self, sparsity: float) -> None:
        """Fail up front, not at a pruning event deep into a run, if a final target removes a whole layer.

        Under `scope=global` only budgeted groups have a fixed target (the others keep >= 1 unit).
        """
        for g in self.groups:
            if self.config.scope == "global" and not any(c in self.config.budgets for c in g.components):
                continue
            target = self.group_target(g, sparsity)
            if target > 0:
                self._check_whole_layer(g, self._units_to_remove(g, target), target)

    def _check_whole_layer(self, g: Group, n_remove: int, target: float) -> None:
        if n_remove >= g.units:
            what = f"{g.units} simplices of {g.unit} (the latent cannot go below one simplex)" if g.unit > 1 else f"{g.units} channels"
            raise PruneError(
                f"sparsity {target:.3f} would remove all {what} of group {g.id!r} ({', '.join(g.components)}): "
                "the whole layer. Lower the sparsity or that component's budget, or exclude the group."
            )

    def _select_local(self, scores: Mapping[str, torch.Tensor], ties: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], sparsity: float, fraction: float) -> Dict[str, torch.Tensor]:
        out = {}
        for g in self.groups:
            target = self.group_target(g, sparsity) * fraction
            if target <= 0:
                continue
            n_remove = self._units_to_remove(g, target)
            self._check_whole_layer(g, n_remove, target)
            alive = self._alive_units(g)
            need = n_remove - int((~alive).sum())
            if need <= 0:
                continue
            s = torch.where(alive, scores[g.id], torch.full_like(scores[g.id], float("inf")))
            chosen = _lexsort(s, *ties[g.id])[:need]
            out[g.id] = self._unit_channels(g, chosen)
        return out

    def _select_global(self, scores: Mapping[str, torch.Tensor], ties: Mapping[str, Tuple[torch.Tensor, torch.Tensor]], sparsity: float, fraction: float) -> Dict[str, torch.Tensor]:
        eligible = [g for g in self.groups if self.group_target(g, sparsity) > 0]
        total = sum(g.channels for g in eligible)
        goal = int(math.floor(total * sparsity * fraction + 0.5))
        removed = sum(int((~self.alive[g.id]).sum()) for g in eligible)
        pool = []
        caps = {}
        for gi, g in enumerate(eligible):
            alive = self._alive_units(g)
            cap_units = self._units_to_remove(g, self.group_target(g, sparsity)) if any(c in self.config.budgets for c in g.components) else g.units - 1
            caps[g.id] = min(cap_units, g.units - 1) - int((~alive).sum())
            s, (fisher, draw) = scores[g.id], ties[g.id]
            mean = torch.nanmean(s).clamp_min(1e-30)
            fmean = fisher[alive].mean().clamp_min(1e-30) if bool(alive.any()) else torch.tensor(1.0)
            for u in torch.nonzero(alive).squeeze(1).tolist():
                pool.append((float(s[u] / mean), float(fisher[u] / fmean), float(draw[u]), gi, u))
        pool.sort()
        chosen: Dict[str, List[int]] = {}
        for *_, gi, u in pool:
            if removed >= goal:
                break
            g = eligible[gi]
            if caps[g.id] <= 0:
                continue
            chosen.setdefault(g.id, []).append(u)
            caps[g.id] -= 1
            removed += g.unit
        return {gid: self._unit_channels(self._by_id[gid], torch.tensor(us)) for gid, us in chosen.items()}

    def _apply(self, removals: Mapping[str, torch.Tensor], physical: bool) -> None:
        removals = {gid: ch for gid, ch in removals.items() if ch.numel()}
        if self.compensation is not None and removals:
            self.compensation.fold(removals, self.surgeon)
        for gid, ch in removals.items():
            self.alive[gid][ch] = False
        self._register_implicit_mirrors()  # views the model re-created since (e.g. after .to() or a load)
        if physical:
            pending = {gid: ch.clone() for gid, ch in self.surgeon.masked.items() if ch.numel()}
            for gid, ch in removals.items():
                pending[gid] = torch.unique(torch.cat([pending.get(gid, torch.empty(0, dtype=torch.long)), ch]))
            if not pending:
                return
            self.surgeon.remove(pending)
            record = pending
        else:
            if not removals:
                return
            self.surgeon.mask(removals)
            record = removals
        self.history.append(
            {"clock": self.clock, "physical": physical, "removed": {gid: ch.tolist() for gid, ch in record.items()}}
        )
        self.stats.rebuild(self.surgeon, self.alive)
        for fn in self._callbacks:
            fn(self)

    # ============================================================================ consistency checks
    def _check_sliceable(self) -> None:
        """Refuse, before anything changes, groups whose removal breaks the model (see `safety.py`)."""
        prunable = [g for g in self.groups if g.units > 1 and (g.kind != "coupling" or self.config.coupling == "prune")]
        check_sliceable(self.model, self.surgeon, prunable, lambda: self.forward_fn(self.model, self.example_inputs))

    def _check_attachable(self, opts: Sequence[Any]) -> None:
        mine = {id(p) for p in self.model.parameters()} | {id(m.tensor) for g in self.groups for m in g.members}
        for i, opt in enumerate(opts):
            if not isinstance(opt, torch.optim.Optimizer):
                raise PruneError(f"attach() takes torch optimizers; item {i} is a {type(opt).__name__}")
            if not any(id(p) in mine for pg in opt.param_groups for p in pg["params"]):
                raise PruneError(
                    f"optimizer {i} ({type(opt).__name__}) holds none of the model's parameters: it trains another "
                    "model (or a copy made before the Pruner). Attach the optimizers that train this model."
                )

    def _check_foreign_optimizers(self) -> None:
        """Physical removal cannot slice the state of an optimizer it was never given: refuse up front."""
        tensors = [m.tensor for g in self.groups for m in g.members]
        found = foreign_optimizers(tensors, self.surgeon.optimizers)  # the ones whose state is sliced
        if found:
            opt, n = found[0]
            raise PruneError(
                f"an optimizer the pruner is not attached to ({type(opt).__name__}) holds state for {n} tensor(s) that "
                "physical pruning shrinks; that state would no longer fit. Pass every optimizer that trains the model "
                "to pruner.attach([...]) before pruning, or prune with physical=False (masks)."
            )

    # ============================================================================ measures
    def sparsity(self) -> float:
        """Fraction of prunable channels removed (prunable: groups the config allows to shrink)."""
        eligible = [g for g in self.groups if self.group_target(g, max(self.config.sparsity, 1e-9)) > 0] or self.groups
        total = sum(g.channels for g in eligible)
        return sum(int((~self.alive[g.id]).sum()) for g in eligible) / max(1, total)

    def param_count(self) -> int:
        """Trainable parameters of the model, counting masked entries as removed."""
        masked = self.surgeon.masked_counts()
        total, seen = 0, set()
        for p in self.model.parameters():
            if id(p) in seen or p.is_meta:  # meta: ensemble templates hold no data
                continue
            seen.add(id(p))
            shape = [s - masked.get((id(p), d), 0) for d, s in enumerate(p.shape)]
            total += math.prod(shape)
        return total

    @torch.no_grad()
    def flops(self) -> int:
        """FLOPs of one traced forward (torch.utils.flop_counter); masked channels still count."""
        counter = FlopCounterMode(display=False)
        if hasattr(counter, "mod_tracker"):  # totals only: per-module attribution trips over tensordict modules
            counter.mod_tracker = _GlobalOnly()
        with side_effect_free(self.model), counter:
            self.forward_fn(self.model, self.example_inputs)
        return int(counter.get_total_flops())

    def metrics(self, with_flops: bool = True) -> Dict[str, float]:
        params = self.param_count()
        out = {
            "sparsity": self.sparsity(),
            "params": float(params),
            "params_ratio": params / max(1, self.dense_params),
            "skipped_steps": float(self.stats.skipped),
            "events": float(len(self.history)),
        }
        if with_flops:
            flops = self.flops()
            out["flops"] = float(flops)
            if self._dense_flops:
                out["flops_ratio"] = flops / self._dense_flops
        return out

    def table(self) -> List[Dict[str, Any]]:
        scores = self.scores()
        rows = []
        for g in self.groups:
            off = self.stats.offsets[g.id]
            alive = self.alive[g.id]
            params = float(self.stats.count[off : off + g.channels][alive.to(self.stats.device)].sum())
            rows.append(
                {
                    "id": g.id,
                    "kind": g.kind,
                    "components": ",".join(g.components),
                    "width": f"{int(alive.sum())}/{g.channels}" + (f" ({g.unit}-simplex)" if g.unit > 1 else ""),
                    "params": int(params),
                    "importance": float(torch.nanmean(scores[g.id])) if bool(alive.any()) else float("nan"),
                }
            )
        return rows

    def __repr__(self) -> str:
        rows = self.table()
        cols = ["id", "kind", "components", "width", "params", "importance"]
        fmt = {"importance": lambda v: f"{v:.3e}", "params": lambda v: f"{v:,}"}
        cells = [[fmt.get(c, str)(r[c]) for c in cols] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
        head = (
            f"Pruner(criterion={self.config.criterion}, sparsity={self.sparsity():.3f}/{self.config.sparsity}, "
            f"schedule={self.config.schedule}, params={self.param_count():,}/{self.dense_params:,})"
        )
        return "\n".join([head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])

    # ============================================================================ persistence
    def state_dict(self) -> Dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "groups": {g.id: {"channels": g.channels, "unit": g.unit, "kind": g.kind} for g in self.groups},
            "clock": self.clock,
            "total_steps": self.total_steps,
            "first_step": self.first_step,
            "events_done": self.schedule.done if self.schedule is not None else 0,
            "history": [dict(h) for h in self.history],
            "stats": self.stats.state_dict(),
            "dense_params": self.dense_params,
            "dense_flops": self._dense_flops,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics and schedule and replay the pruning history on this (unpruned) model."""
        if state.get("version") != STATE_VERSION:
            raise PruneError(f"pruner state version {state.get('version')!r} is not {STATE_VERSION}")
        if self.history:
            raise PruneError("load_state_dict needs a fresh Pruner on an unpruned model; this one has already pruned")
        mine = {g.id: g.channels for g in self.groups}
        theirs = {gid: info["channels"] for gid, info in state["groups"].items()}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))[:5]
            raise PruneError(
                "the saved pruner state does not match this model's groups "
                f"(differing: {', '.join(f'{k}: {mine.get(k)} vs saved {theirs.get(k)}' for k in diff)}). "
                "Build the model from its original (unpruned) configuration, create the Pruner, then load."
            )
        for event in state["history"]:
            removed = {gid: torch.tensor(ch, dtype=torch.long) for gid, ch in event["removed"].items()}
            self._apply(removed, physical=bool(event["physical"]))
        self.history = [dict(h) for h in state["history"]]
        self.stats.load_state_dict(state["stats"])
        self.clock = int(state["clock"])
        self.total_steps = state.get("total_steps", self.total_steps)
        self.first_step = int(state.get("first_step", self.first_step))
        self.schedule = Schedule.from_config(self.config, self.total_steps, self.first_step)
        self.schedule.done = int(state["events_done"])
        self.dense_params = int(state["dense_params"])
        self._dense_flops = state.get("dense_flops")
        if self.optimizers:
            self.attach(self.optimizers, self.total_steps, self.first_step)
