"""What attaching a `Pruner` to training sets up: the schedule over the run, the group lasso, and the
optimizer hooks that are the per-step hot path.

Before each optimizer's step its gradients are added to the pending statistics (the first optimizer
of a step first folds the previous step in); after it, the group lasso shrinks the pressured channels
while pruning events remain, and the masks are re-applied. With `every_n_updates = n` the statistics
and the shrink run on updates 1, 1 + n, 1 + 2n, ... only (the first optimizer's step counts the
updates; the first is observed, so an event after it never ranks on no statistics); the masks are
re-applied after every step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from .errors import PruneError
from .regularize import GroupLasso
from .safety import check_attachable, check_events_after_first_step
from .schedule import Schedule

if TYPE_CHECKING:
    from .pruner import Pruner


def outside_compile(hook: Callable) -> Callable:
    """`hook` run eagerly even where torch.compile traces the optimizer step that calls it.

    The step hooks keep Python state that changes every step (the clock, cached layouts, a pending
    flag); traced, each change would fail a guard and re-compile the caller. Disabled, torch.compile
    breaks the graph at the hook once and runs it as plain PyTorch at every step, never re-compiling.
    """
    return torch.compiler.disable(hook, recursive=True)


def attach(pruner: "Pruner", optimizers: Sequence[torch.optim.Optimizer], total_steps: Optional[int], first_step: int) -> None:
    """Build the schedule (when the run length is known) and the lasso, and hook every optimizer."""
    detach(pruner)
    opts = list(optimizers)
    if not opts:
        raise PruneError("attach() needs at least one optimizer")
    check_attachable(pruner.model, pruner.groups, opts)
    cfg = pruner.config
    pruner.total_steps = total_steps
    # a warm-up longer than the run leaves an empty span at its end, never a span ending before it starts
    pruner.first_step = min(int(first_step), int(total_steps)) if total_steps is not None else int(first_step)
    done = pruner.schedule.done if pruner.schedule is not None else 0
    pruner.schedule = None  # built on the first step(): prune_to() alone needs no run length
    if total_steps is not None or not any(isinstance(v, float) for v in (cfg.start, cfg.end)):
        pruner.schedule = Schedule.from_config(cfg, total_steps, pruner.first_step)
        pruner.schedule.done = done
        check_events_after_first_step(pruner.schedule, pruner.first_step, pruner.criterion)
    pressured = [g.id for g in pruner.groups if pruner.group_target(g, cfg.sparsity) > 0]
    period = cfg.resolve_length(cfg.l1_period, total_steps, pruner.first_step) if cfg.l1 > 0 else 1
    pruner.lasso = GroupLasso(pruner.stats, cfg.l1, max(1, period), pressured, every=cfg.every_n_updates)
    pruner.optimizers = pruner.surgeon.optimizers = opts
    for i, opt in enumerate(opts):
        ids = frozenset(id(p) for pg in opt.param_groups for p in pg["params"])
        pruner._handles.append(opt.register_step_pre_hook(outside_compile(pre_step_hook(pruner, i, ids))))
        pruner._handles.append(opt.register_step_post_hook(outside_compile(post_step_hook(pruner, ids))))


def detach(pruner: "Pruner") -> None:
    for h in pruner._handles:
        h.remove()
    pruner._handles = []


def observed(pruner: "Pruner") -> bool:
    """Whether the current update is one the statistics and the pressure act on: the first, then every n-th."""
    return (pruner.updates - 1) % pruner.config.every_n_updates == 0


def pre_step_hook(pruner: "Pruner", index: int, ids: frozenset) -> Callable[..., None]:
    """Before optimizer `index` steps: gather the statistics of its tensors (`ids`)."""
    stats = pruner.stats

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if index == 0:
            pruner.updates += 1
        if not observed(pruner):
            return
        if index == 0:
            stats.commit()  # the previous observed update is complete once the first optimizer steps again
        stats.accumulate(ids)

    return hook


def post_step_hook(pruner: "Pruner", ids: frozenset) -> Callable[..., None]:
    """After an optimizer steps: the proximal group-lasso shrink of its tensors, then the masks."""

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if pruner.lasso is not None and observed(pruner) and not (pruner.schedule is not None and pruner.schedule.finished):
            pruner.lasso.shrink(pruner.clock, ids)
        pruner.surgeon.reapply_masks()

    return hook

