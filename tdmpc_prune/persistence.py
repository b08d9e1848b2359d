"""A `Pruner`'s saved state: what `state_dict()` holds and how `load_state_dict()` replays it.

The state is plain data (lists, ints, CPU tensors): the config, the groups' sizes (to refuse a
state from another model), clock and schedule position, the pruning history and the statistics.
Loading needs a fresh `Pruner` on the *unpruned* model: the history is replayed (the layers shrink
to the saved shapes), then the statistics are put back. `STATE_VERSION` 1 is the only format so
far; a state saved by any earlier release loads (tested on a state written before the Pruner was
split into modules, `tests/data/pruner_state_v1.pt`).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, Mapping

import torch

from .errors import PruneError
from .schedule import Schedule

if TYPE_CHECKING:
    from .pruner import Pruner

STATE_VERSION = 1


def state_dict(pruner: "Pruner") -> Dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "config": pruner.config.to_dict(),
        "groups": {g.id: {"channels": g.channels, "unit": g.unit, "kind": g.kind} for g in pruner.groups},
        "clock": pruner.clock,
        "updates": pruner.updates,
        "total_steps": pruner.total_steps,
        "first_step": pruner.first_step,
        "events_done": pruner.schedule.done if pruner.schedule is not None else 0,
        "history": [dict(h) for h in pruner.history],
        "stats": pruner.stats.state_dict(),
        "dense_params": pruner.dense_params,
        "dense_flops": pruner.dense_flops,
    }


def check_loadable(pruner: "Pruner", state: Mapping[str, Any]) -> None:
    """Refuse a state of another version or model, or a pruner that has already pruned."""
    if state.get("version") != STATE_VERSION:
        raise PruneError(f"pruner state version {state.get('version')!r} is not {STATE_VERSION}")
    if pruner.history:
        raise PruneError("load_state_dict needs a fresh Pruner on an unpruned model; this one has already pruned")
    mine = {g.id: g.channels for g in pruner.groups}
    theirs = {gid: info["channels"] for gid, info in state["groups"].items()}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))[:5]
        raise PruneError(
            "the saved pruner state does not match this model's groups "
            f"(differing: {', '.join(f'{k}: {mine.get(k)} vs saved {theirs.get(k)}' for k in diff)}). "
            "Build the model from its original (unpruned) configuration, create the Pruner, then load."
        )


def load_state_dict(pruner: "Pruner", state: Mapping[str, Any]) -> None:
    """Replay the pruning history on this (unpruned) model, then restore statistics and schedule."""
    check_loadable(pruner, state)
    saved_every = state.get("config", {}).get("every_n_updates", 1)  # states from before the option observed every update
    if saved_every != pruner.config.every_n_updates:
        warnings.warn(f"this pruner state was saved with every_n_updates={saved_every}, this pruner has "
                      f"{pruner.config.every_n_updates}: statistics and pressure continue at the new rate; build the "
                      f"pruner with every_n_updates={saved_every} to continue the run as it was", stacklevel=3)
    for event in state["history"]:
        removed = {gid: torch.tensor(ch, dtype=torch.long) for gid, ch in event["removed"].items()}
        pruner._apply(removed, physical=bool(event["physical"]))
    pruner.history = [dict(h) for h in state["history"]]
    pruner.stats.load_state_dict(state["stats"])
    pruner.clock = int(state["clock"])
    pruner.updates = int(state.get("updates", 0))  # a state from before every_n_updates: 0 (only its phase differs)
    pruner.total_steps = state.get("total_steps", pruner.total_steps)
    pruner.first_step = int(state.get("first_step", pruner.first_step))
    pruner.schedule = Schedule.from_config(pruner.config, pruner.total_steps, pruner.first_step)
    pruner.schedule.done = int(state["events_done"])
    pruner.dense_params = int(state["dense_params"])
    pruner.dense_flops = state.get("dense_flops")
    if pruner.optimizers:
        pruner.attach(pruner.optimizers, pruner.total_steps, pruner.first_step)
