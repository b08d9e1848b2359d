"""Refuse what the pruner cannot do consistently, before anything changes.

* `check_sliceable`: at `Pruner` construction, one unit of every group that may shrink is removed
  for a trial (`Surgeon.trial`), the traced forward is run, and everything is put back.  A tensor
  used in two roles (a decoder reading `enc.weight.t()`, a weight tied across layers) or by an op
  the dependency graph cannot see makes that forward fail or change an output's shape; such a group
  is named and refused instead of being half-pruned at an event deep into a run.
* `foreign_optimizers`: optimizers that hold state for tensors physical pruning would shrink but
  that the pruner was never attached to (their `exp_avg` would no longer fit).
* `check_config_fits`, `check_events_after_first_step`, `check_observed`: a config that cannot work
  on these groups, or pruning events that would rank channels on no statistics.
"""
from __future__ import annotations

import gc
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Callable, List, Sequence, Tuple

import torch

from .errors import PruneConfigError, PruneError
from .groups import Group
from .selection import check_targets, group_target
from .tracing import side_effect_free
from .surgery import Surgeon

if TYPE_CHECKING:
    from .config import PruneConfig
    from .criteria import Criterion
    from .pruner import Pruner
    from .schedule import Schedule


def _shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (list, tuple)):
        return [_shapes(o) for o in out]
    if isinstance(out, dict):
        return {k: _shapes(v) for k, v in out.items()}
    return None


def _trial(surgeon: Surgeon, groups: Sequence[Group], run: Callable[[], Any], expected: Any) -> str:
    """'' if the model still runs with one unit of each group removed, else what went wrong."""
    removals = {g.id: torch.arange((g.units - 1) * g.unit, g.units * g.unit) for g in groups}
    try:
        with surgeon.trial(removals):
            got = _shapes(run())
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    if got != expected:
        return f"the outputs change shape ({expected} -> {got})"
    return ""


@torch.no_grad()
def check_sliceable(model: torch.nn.Module, surgeon: Surgeon, groups: Sequence[Group], run: Callable[[], Any]) -> None:
    """Raise `PruneError` naming every group whose removal the model cannot run with (model untouched)."""
    if not groups:
        return
    with side_effect_free(model):  # no buffer, train/eval flag or random state changes either
        expected = _shapes(run())
        if not _trial(surgeon, groups, run, expected):
            return
        bad = [(g, why) for g in groups for why in [_trial(surgeon, [g], run, expected)] if why]
    if not bad:  # only their combination fails: name them all
        bad = [(g, "removing units of several groups at once breaks the forward") for g in groups]
    g, why = bad[0]
    others = f" (also: {', '.join(repr(b.id) for b, _ in bad[1:])})" if len(bad) > 1 else ""
    fix = "keep coupling groups whole (coupling=protect) or " if g.kind == "coupling" else ""
    raise PruneError(
        f"group {g.id!r} ({', '.join(g.components)}) cannot be pruned consistently{others}: with one of its channels "
        f"removed the model fails ({why}). One of its tensors is used in two roles (e.g. a decoder reading "
        f"enc.weight.t()) or by an op the dependency graph does not see; {fix}exclude it (exclude=[{g.id!r}]). "
        "Nothing was changed."
    )


def foreign_optimizers(tensors: Sequence[torch.Tensor], attached: Sequence[torch.optim.Optimizer]
                       ) -> List[Tuple[torch.optim.Optimizer, int]]:
    """Live optimizers not in `attached` with state shaped like one of `tensors`, and how many such tensors."""
    mine = {id(o) for o in attached}

    def scan() -> List[Tuple[Any, int]]:
        out = []
        for obj in gc.get_objects():
            if not issubclass(type(obj), torch.optim.Optimizer) or id(obj) in mine:
                continue
            n = sum(1 for t in tensors if any(torch.is_tensor(v) and v.shape == t.shape and v.dim() > 0
                                                for v in obj.state.get(t, {}).values()))
            if n:
                out.append((weakref.ref(obj), n))
        return out

    found = scan()
    if found:  # an optimizer that is garbage but not yet collected does not count
        gc.collect()
        found = [(ref, n) for ref, n in found if ref() is not None]
    return [(ref(), n) for ref, n in found]


def check_attachable(model: torch.nn.Module, groups: Sequence[Group], opts: Sequence[Any]) -> None:
    """Every item is a torch optimizer holding at least one of the model's parameters."""
    mine = {id(p) for p in model.parameters()} | {id(m.tensor) for g in groups for m in g.members}
    for i, opt in enumerate(opts):
        if not isinstance(opt, torch.optim.Optimizer):
            raise PruneError(f"attach() takes torch optimizers; item {i} is a {type(opt).__name__}")
        if not any(id(p) in mine for pg in opt.param_groups for p in pg["params"]):
            raise PruneError(
                f"optimizer {i} ({type(opt).__name__}) holds none of the model's parameters: it trains another "
                "model (or a copy made before the Pruner). Attach the optimizers that train this model."
            )


def check_no_foreign_optimizers(surgeon: Surgeon, groups: Sequence[Group]) -> None:
    """Physical removal cannot slice the state of an optimizer it was never given: refuse up front."""
    tensors = [m.tensor for g in groups for m in g.members]
    found = foreign_optimizers(tensors, surgeon.optimizers)  # the ones whose state is sliced
    if found:
        opt, n = found[0]
        raise PruneError(
            f"an optimizer the pruner is not attached to ({type(opt).__name__}) holds state for {n} tensor(s) that "
            "physical pruning shrinks; that state would no longer fit. Pass every optimizer that trains the model "
            "to pruner.attach([...]) before pruning, or prune with physical=False (masks)."
        )


def check_has_groups(groups: Sequence[Group], notes: Sequence[str]) -> None:
    """Discovery found something to prune (`notes`: why layers were left out)."""
    if not groups:
        detail = "; ".join(notes) or "no Linear/Conv/Embedding layer with prunable outputs was traced"
        raise PruneError(
            f"the model has no prunable group ({detail}). Check that forward_fn runs the components and returns "
            "only the heads' outputs, and that `exclude` does not cover every layer."
        )


def check_config_fits(config: "PruneConfig", groups: Sequence[Group]) -> None:
    """The config's budgets name traced components, no target removes a whole layer, and something can shrink."""
    known = {c for g in groups for c in g.components}
    for comp in config.budgets:
        if comp not in known:
            raise PruneConfigError(f"budget for unknown component {comp!r}; components are: {', '.join(sorted(known))}")
    check_targets(config, groups, config.sparsity)
    if config.sparsity > 0 and not config.budgets and all(group_target(config, g, config.sparsity) == 0 for g in groups):
        raise PruneConfigError(
            f"nothing can be pruned: all {len(groups)} groups span several components, and coupling groups are "
            "protected (coupling='protect'). With the default components (each top-level child of the model) "
            "every hidden width of a plain nn.Sequential is such a group. Pass components= (e.g. "
            "{'model': ''} for one component) or coupling='prune'."
        )


def check_events_after_first_step(schedule: "Schedule", first_step: int, criterion: "Criterion") -> None:
    """A gradient criterion cannot rank channels before training has produced a gradient."""
    early = [t for t, _ in schedule.events[schedule.done :] if t < first_step]
    if early and criterion.needs:
        raise PruneConfigError(
            f"a pruning event at step {early[0]} comes before training updates begin (first_step={first_step}): "
            f"criterion {criterion.name!r} would rank channels on no gradient statistics. "
            f"Give start (and end) >= {first_step}, or as fractions of the training span."
        )


def check_observed(pruner: "Pruner") -> None:
    """A due pruning event that removes channels by a gradient criterion needs observed optimizer steps
    (raises); `prune_to()` called by hand before any is only warned about (`warn_unobserved`)."""
    removes = any(pruner.group_target(g, pruner.config.sparsity) > 0 for g in pruner.groups)
    if removes and pruner.criterion.needs and not pruner.observed():
        raise PruneError(
            f"a pruning event fired at step {pruner.clock} before any optimizer step was observed: criterion "
            f"{pruner.config.criterion!r} would rank on no statistics. attach() the pruner to the optimizer that trains "
            "the model, and give start after the first training update."
        )


def warn_unobserved(pruner: "Pruner") -> None:
    if pruner.criterion.needs and not pruner.observed():
        warnings.warn(
            f"prune_to(): criterion {pruner.config.criterion!r} has observed no optimizer step yet, so every score is 0 "
            "and the channels are chosen by the seeded tie-break alone (at random)",
            stacklevel=3,
        )
