"""What the pruning costs and saves: sparsity, parameters, FLOPs, and the per-group table.

Functions of a `Pruner` (read-only): `report(pruner)` is the dict every integration logs,
`table(pruner)` one row per group, `describe(pruner)` the text `print(pruner)` shows.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, List

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .selection import group_target
from .tracing import side_effect_free

if TYPE_CHECKING:
    from .pruner import Pruner
    from .surgery import Surgeon


class _GlobalOnly:
    """Stand-in for FlopCounterMode's module tracker that attributes every FLOP to 'Global'."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def sparsity(pruner: "Pruner") -> float:
    """Fraction of prunable channels removed (prunable: groups the config allows to shrink)."""
    cfg = pruner.config
    eligible = [g for g in pruner.groups if group_target(cfg, g, max(cfg.sparsity, 1e-9)) > 0] or pruner.groups
    total = sum(g.channels for g in eligible)
    return sum(int((~pruner.alive[g.id]).sum()) for g in eligible) / max(1, total)


def param_count(model: nn.Module, surgeon: "Surgeon") -> int:
    """Trainable parameters of the model, counting masked entries as removed."""
    masked = surgeon.masked_counts()
    total, seen = 0, set()
    for p in model.parameters():
        if id(p) in seen or p.is_meta:  # meta: ensemble templates hold no data
            continue
        seen.add(id(p))
        total += math.prod(s - masked.get((id(p), d), 0) for d, s in enumerate(p.shape))
    return total


@torch.no_grad()
def flops(model: nn.Module, forward_fn: Callable[[nn.Module, Any], Any], example_inputs: Any) -> int:
    """FLOPs of one traced forward (torch.utils.flop_counter); masked channels still count."""
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):  # totals only: per-module attribution trips over tensordict modules
        counter.mod_tracker = _GlobalOnly()
    with side_effect_free(model), counter:
        forward_fn(model, example_inputs)
    return int(counter.get_total_flops())


def report(pruner: "Pruner", with_flops: bool = True) -> Dict[str, float]:
    """sparsity, params, params_ratio, skipped_steps, events (and flops, flops_ratio)."""
    params = pruner.param_count()
    out = {
        "sparsity": sparsity(pruner),
        "params": float(params),
        "params_ratio": params / max(1, pruner.dense_params),
        "skipped_steps": float(pruner.stats.skipped),
        "events": float(len(pruner.history)),
    }
    if with_flops:
        now = pruner.flops()
        out["flops"] = float(now)
        if pruner.dense_flops:
            out["flops_ratio"] = now / pruner.dense_flops
    return out


def table(pruner: "Pruner") -> List[Dict[str, Any]]:
    """One row per group: id, kind, components, width (alive/all), params, mean importance."""
    scores = pruner.scores()
    stats = pruner.stats
    rows = []
    for g in pruner.groups:
        off = stats.offsets[g.id]
        alive = pruner.alive[g.id]
        params = float(stats.count[off : off + g.channels][alive.to(stats.device)].sum())
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


def describe(pruner: "Pruner") -> str:
    """A header line and the group table, column-aligned."""
    rows = table(pruner)
    cols = ["id", "kind", "components", "width", "params", "importance"]
    fmt = {"importance": lambda v: f"{v:.3e}", "params": lambda v: f"{v:,}"}
    cells = [[fmt.get(c, str)(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(vals: List[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths))

    cfg = pruner.config
    head = (
        f"Pruner(criterion={cfg.criterion}, sparsity={sparsity(pruner):.3f}/{cfg.sparsity}, "
        f"schedule={cfg.schedule}, params={pruner.param_count():,}/{pruner.dense_params:,})"
    )
    return "\n".join([head, line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])
