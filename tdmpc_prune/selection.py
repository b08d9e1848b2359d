"""Which units to remove: per-group targets, local and global selection, and tie-breaking.

Scores are reduced per structural unit (a SimNorm simplex is one unit of 8 channels; pruned units
get NaN). Units are ranked ascending (least important first); equal scores — a saturated
criterion, `combined`'s rank means, units no gradient reached — are broken by the fisher score,
then by a seeded random draw, never by channel index (which would always remove the first ones).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence, Tuple

import torch

from .errors import PruneError
from .groups import Group

if TYPE_CHECKING:
    from .config import PruneConfig
    from .importance import ChannelStats

TieKeys = Dict[str, Tuple[torch.Tensor, torch.Tensor]]


def lexsort(primary: torch.Tensor, *keys: torch.Tensor) -> torch.Tensor:
    """Indices ordering `primary` ascending, ties broken by each of `keys` in turn."""
    order = torch.arange(primary.numel())
    for key in (*reversed(keys), primary):
        order = order[torch.argsort(key[order], stable=True)]
    return order


def group_target(config: "PruneConfig", group: Group, sparsity: float) -> float:
    """Final sparsity of one group under the config (budgets, coupling protection)."""
    if group.kind == "coupling":
        if config.coupling == "protect":
            return 0.0
        return config.coupling_sparsity if config.coupling_sparsity is not None else sparsity
    for comp in group.components:
        if comp in config.budgets:
            return float(config.budgets[comp])
    return sparsity


def alive_units(group: Group, alive: torch.Tensor) -> torch.Tensor:
    """Whether each structural unit of `group` is whole (`alive`: per channel)."""
    return alive.view(group.units, group.unit).all(1)


def unit_channels(group: Group, units: torch.Tensor) -> torch.Tensor:
    return (units[:, None] * group.unit + torch.arange(group.unit)).flatten()


def units_to_remove(group: Group, target: float) -> int:
    return int(math.floor(group.units * target + 0.5))


def check_whole_layer(group: Group, n_remove: int, target: float) -> None:
    if n_remove >= group.units:
        what = (
            f"{group.units} simplices of {group.unit} (the latent cannot go below one simplex)"
            if group.unit > 1
            else f"{group.units} channels"
        )
        raise PruneError(
            f"sparsity {target:.3f} would remove all {what} of group {group.id!r} ({', '.join(group.components)}): "
            "the whole layer. Lower the sparsity or that component's budget, or exclude the group."
        )


def check_targets(config: "PruneConfig", groups: Sequence[Group], sparsity: float) -> None:
    """Fail up front, not at a pruning event deep into a run, if a final target removes a whole layer.

    Under `scope=global` only budgeted groups have a fixed target (the others keep >= 1 unit).
    """
    for g in groups:
        if config.scope == "global" and not any(c in config.budgets for c in g.components):
            continue
        target = group_target(config, g, sparsity)
        if target > 0:
            check_whole_layer(g, units_to_remove(g, target), target)


def per_unit(stats: "ChannelStats", alive: Mapping[str, torch.Tensor], flat: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-channel slot values -> one value per structural unit of each group (NaN for pruned units)."""
    flat = flat.detach().float().cpu()
    out = {}
    for g in stats.groups:
        off = stats.offsets[g.id]
        s = flat[off : off + g.channels].view(g.units, g.unit).mean(1)
        s[~alive_units(g, alive[g.id])] = float("nan")
        out[g.id] = s
    return out


def tie_keys(stats: "ChannelStats", alive: Mapping[str, torch.Tensor], generator: torch.Generator) -> TieKeys:
    """Second and third sort key of every unit: its fisher score, then a seeded random draw."""
    fisher = per_unit(stats, alive, stats.ema_sq)
    return {g.id: (torch.nan_to_num(fisher[g.id]), torch.rand(g.units, generator=generator)) for g in stats.groups}


def select_local(
    config: "PruneConfig", groups: Sequence[Group], alive: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor], ties: TieKeys, sparsity: float, fraction: float,
) -> Dict[str, torch.Tensor]:
    """Channels to remove so each group reaches `fraction` x its own target (lowest scores first)."""
    out = {}
    for g in groups:
        target = group_target(config, g, sparsity) * fraction
        if target <= 0:
            continue
        n_remove = units_to_remove(g, target)
        check_whole_layer(g, n_remove, target)
        whole = alive_units(g, alive[g.id])
        need = n_remove - int((~whole).sum())
        if need <= 0:
            continue
        s = torch.where(whole, scores[g.id], torch.full_like(scores[g.id], float("inf")))
        out[g.id] = unit_channels(g, lexsort(s, *ties[g.id])[:need])
    return out


def select_global(
    config: "PruneConfig", groups: Sequence[Group], alive: Mapping[str, torch.Tensor],
    scores: Mapping[str, torch.Tensor], ties: TieKeys, sparsity: float, fraction: float,
) -> Dict[str, torch.Tensor]:
    """Channels to remove ranked across groups (scores in units of their group's mean), each group
    keeping at least one unit (budgeted groups: at most their budget)."""
    eligible = [g for g in groups if group_target(config, g, sparsity) > 0]
    total = sum(g.channels for g in eligible)
    goal = int(math.floor(total * sparsity * fraction + 0.5))
    removed = sum(int((~alive[g.id]).sum()) for g in eligible)
    pool = []
    caps = {}
    for gi, g in enumerate(eligible):
        whole = alive_units(g, alive[g.id])
        budgeted = any(c in config.budgets for c in g.components)
        cap_units = units_to_remove(g, group_target(config, g, sparsity)) if budgeted else g.units - 1
        caps[g.id] = min(cap_units, g.units - 1) - int((~whole).sum())
        s, (fisher, draw) = scores[g.id], ties[g.id]
        mean = torch.nanmean(s).clamp_min(1e-30)
        fmean = fisher[whole].mean().clamp_min(1e-30) if bool(whole.any()) else torch.tensor(1.0)
        for u in torch.nonzero(whole).squeeze(1).tolist():
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
    by_id = {g.id: g for g in eligible}
    return {gid: unit_channels(by_id[gid], torch.tensor(us)) for gid, us in chosen.items()}
