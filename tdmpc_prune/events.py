"""A pruning event: choose the units to remove, then mask or remove them and record it.

`choose` ranks by the pruner's criterion (ties: fisher, then a seeded draw) under the config's scope;
`apply` folds removed channels into biases (bias compensation), masks or physically removes them,
appends the event to `pruner.history` (what `load_state_dict` replays), rebuilds the statistics'
layout and calls the structure callbacks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Mapping

import torch

from . import selection
from .mirrors import register_implicit_mirrors

if TYPE_CHECKING:
    from .pruner import Pruner


def generator(pruner: "Pruner", stream: int = 0) -> torch.Generator:
    """The seeded generator of the next event (one stream for the criterion, one for the ties)."""
    return torch.Generator().manual_seed(pruner.config.seed * 100_003 + len(pruner.history) + stream * 7_919)


def choose(pruner: "Pruner", sparsity: float, fraction: float) -> Dict[str, torch.Tensor]:
    """Channels to remove so every group reaches `fraction` x its target at `sparsity`."""
    scores = pruner.scores()
    ties = selection.tie_keys(pruner.stats, pruner.alive, generator(pruner, stream=1))
    select = selection.select_global if pruner.config.scope == "global" else selection.select_local
    return select(pruner.config, pruner.groups, pruner.alive, scores, ties, sparsity, fraction)


def apply(pruner: "Pruner", removals: Mapping[str, torch.Tensor], physical: bool) -> None:
    """Mask or remove channels, record the event in `history`, and tell the structure callbacks."""
    surgeon = pruner.surgeon
    removals = {gid: ch for gid, ch in removals.items() if ch.numel()}
    if pruner.compensation is not None and removals:
        pruner.compensation.fold(removals, surgeon)
    for gid, ch in removals.items():
        pruner.alive[gid][ch] = False
    register_implicit_mirrors(surgeon, pruner.model, pruner.groups)  # views re-created since (.to(), a load)
    if physical:
        record = {gid: ch.clone() for gid, ch in surgeon.masked.items() if ch.numel()}
        for gid, ch in removals.items():
            record[gid] = torch.unique(torch.cat([record.get(gid, torch.empty(0, dtype=torch.long)), ch]))
        if not record:
            return
        surgeon.remove(record)
    else:
        if not removals:
            return
        surgeon.mask(removals)
        record = dict(removals)
    pruner.history.append({"clock": pruner.clock, "physical": physical, "removed": {gid: ch.tolist() for gid, ch in record.items()}})
    pruner.stats.rebuild(surgeon, pruner.alive)
    for fn in pruner._callbacks:
        fn(pruner)
