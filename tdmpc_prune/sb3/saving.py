"""The pruner of an SB3 model: creation, persistence through `model.save()`, and reloading.

The pruner lives on the model as `model.tdmpc_prune`, a `PruningState`.  Stock `model.save()`
pickles that attribute like any other: it then stores the pruner's `state_dict()` (schedule
position, statistics, pruning history) and the *unpruned* `policy_kwargs`, never the live objects.

After each physical pruning event the new hidden widths are written back into
`model.policy_kwargs["net_arch"]` when `net_arch` can express them (checked by building a policy
from it), so stock `ALGO.load()` rebuilds the pruned shapes.  `load()` below always works: it builds
the unpruned policy, replays the pruning history on it, then loads the weights (`tdmpc_prune.sb3.load`,
in `wrap.py`, which makes the loaded model prune as it continues training).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, Mapping, Optional

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from ..config import PruneConfig
from ..errors import PruneError
from ..pruner import Pruner
from .components import (
    build_policy,
    check_supported,
    check_visible,
    net_arch,
    optimizers,
    refresh_aliases,
    reset_noise,
    wiring,
)

ATTR = "tdmpc_prune"
STATE_VERSION = 1


def _cpu(x: Any) -> Any:
    if th.is_tensor(x):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    return x


class PruningState:
    """`model.tdmpc_prune`: the live pruner while training; its saved state after `ALGO.load()`."""

    __slots__ = ("algo", "policy_kwargs", "pruner", "saved", "callback", "warned")

    def __init__(self, algo: str, policy_kwargs: Dict[str, Any]):
        self.algo = algo  # "module:QualName" of the algorithm class
        self.policy_kwargs = policy_kwargs  # the unpruned architecture
        self.pruner: Optional[Pruner] = None
        self.saved: Optional[Dict[str, Any]] = None  # a pruner state_dict read back from a file
        self.callback: Any = None  # the callback `wrap()` adds to learn(); never saved
        self.warned = False

    def snapshot(self) -> Optional[Dict[str, Any]]:
        return _cpu(self.pruner.state_dict()) if self.pruner is not None else self.saved

    def __getstate__(self) -> Dict[str, Any]:
        return {"version": STATE_VERSION, "algo": self.algo, "policy_kwargs": self.policy_kwargs, "pruner": self.snapshot()}

    def __setstate__(self, d: Mapping[str, Any]) -> None:
        if d.get("version") != STATE_VERSION:
            raise PruneError(f"tdmpc_prune state version {d.get('version')!r} is not {STATE_VERSION}")
        self.__init__(d["algo"], d["policy_kwargs"])
        self.saved = d["pruner"]

    def __repr__(self) -> str:
        state = self.snapshot() or {}
        return f"PruningState(algo={self.algo.rsplit(':', 1)[-1]}, events={len(state.get('history', []))}, live={self.pruner is not None})"


# ------------------------------------------------------------------------------------ creation
def _make_pruner(model: BaseAlgorithm, config: PruneConfig) -> Pruner:
    w = wiring(model)
    check_visible(model.policy, w, config.exclude)
    return w.build(config)


def _activate(model: BaseAlgorithm, state: PruningState, pruner: Pruner) -> Pruner:
    state.pruner = pruner
    state.saved = None
    # Slice the Adam moments at every removal, also outside learn() (e.g. finalize() after load()).
    # attach() sets this too, but it needs the run length, known only once learn() starts.
    pruner.surgeon.optimizers = optimizers(model)
    setattr(model, ATTR, state)
    pruner.on_structure_change(lambda _: after_surgery(model, state))
    return pruner


def _same_options(config: PruneConfig, options: Mapping[str, Any]) -> bool:
    return PruneConfig.from_dict({**config.to_dict(), **options}).to_dict() == config.to_dict()


def bind(model: BaseAlgorithm, options: Mapping[str, Any]) -> Pruner:
    """The model's pruner: the live one, one restored from a saved state, or a new one from `options`."""
    state = getattr(model, ATTR, None)
    if isinstance(state, PruningState) and state.pruner is not None:
        if state.pruner.model is not model.policy:
            raise PruneError(
                "model.policy was replaced after pruning started; the pruner still holds the old policy. "
                "Save the model and load it with tdmpc_prune.sb3.load() instead of rebuilding the policy"
            )
        if not _same_options(state.pruner.config, options):
            raise PruneError(
                f"this model is already being pruned with options {state.pruner.config.to_dict()}; give a PruningCallback "
                "the same options (or none, to reuse them). To change them, save the model and continue after loading it"
            )
        return state.pruner
    if isinstance(state, PruningState) and state.saved is not None:
        return restore(model, state, options, rebuild=True)
    check_supported(model)
    config = PruneConfig.from_dict(options)
    algo = f"{type(model).__module__}:{type(model).__qualname__}"
    state = PruningState(algo, copy.deepcopy(model.policy_kwargs))
    return _activate(model, state, _make_pruner(model, config))


def restore(model: BaseAlgorithm, state: PruningState, options: Mapping[str, Any], rebuild: bool) -> Pruner:
    """Make a saved state live: replay its history on an unpruned policy, then put the weights back.

    `rebuild=True`: the current policy has the pruned shapes (stock `ALGO.load`); its weights and
    optimizer states are kept while an unpruned policy is built and pruned the same way.
    `rebuild=False`: the current policy is unpruned and the caller loads the weights afterwards.
    """
    saved = state.saved
    if saved is None:
        raise PruneError("no saved pruning state to restore")
    if "version" not in saved or "config" not in saved:
        raise PruneError("the saved tdmpc_prune state is incomplete; was the file written by tdmpc_prune?")
    config = PruneConfig.from_dict({**saved["config"], **options})
    if config.to_dict() != PruneConfig.from_dict(saved["config"]).to_dict():
        warnings.warn(
            f"continuing a pruned model with options {dict(options)} that differ from the saved ones; "
            "the schedule position (events already fired) and the pruning history are kept",
            stacklevel=3,
        )
    check_supported(model)
    params = model.get_parameters() if rebuild else None
    if rebuild:
        model.policy = build_policy(model, state.policy_kwargs)
        refresh_aliases(model)
    pruner = _make_pruner(model, config)
    pruner.load_state_dict(saved)
    if params is not None:
        BaseAlgorithm.set_parameters(model, params, exact_match=True, device=model.device)
    _activate(model, state, pruner)
    state.warned = True  # whoever restores knows the widths; warn only about new pruning
    after_surgery(model, state)
    return pruner


def get_pruner(model: BaseAlgorithm) -> Pruner:
    """The `Pruner` of a wrapped, callback-trained or loaded model (restoring a saved one if needed)."""
    state = getattr(model, ATTR, None)
    if isinstance(state, PruningState) and state.pruner is not None:
        return state.pruner
    if isinstance(state, PruningState) and state.saved is not None:
        return restore(model, state, {}, rebuild=True)
    raise PruneError(
        "this model has no pruner: wrap it with tdmpc_prune.sb3.wrap(model, ...) or pass "
        "tdmpc_prune.sb3.PruningCallback(...) to learn()"
    )


# ------------------------------------------------------------------------------------ after surgery
def _shapes(module: th.nn.Module) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def after_surgery(model: BaseAlgorithm, state: PruningState) -> None:
    """Refresh SB3's cached views, write the pruned widths into `policy_kwargs` where `net_arch` can
    express them, and resample gSDE noise."""
    # SAC/TD3/DQN cache their batch-norm statistics as state_dict() views: detached tensors that
    # keep the old storage and shape after a buffer shrinks, so polyak_update would copy stale stats.
    refresh_aliases(model)
    pruner = state.pruner
    if pruner is not None and any(h["physical"] for h in pruner.history):
        arch = net_arch(model)
        kwargs = {**state.policy_kwargs, "net_arch": arch}
        if arch is not None and _shapes(build_policy(model, kwargs)) == _shapes(model.policy):
            model.policy_kwargs = kwargs
            model.policy.net_arch = arch
        else:
            model.policy_kwargs = copy.deepcopy(state.policy_kwargs)
            if not state.warned:
                state.warned = True
                warnings.warn(
                    "the pruned widths cannot be expressed by policy_kwargs['net_arch'] (a pruned features "
                    "extractor, or critics pruned to different widths): stock ALGO.load() cannot rebuild this "
                    "model; load it with tdmpc_prune.sb3.load(path)",
                    stacklevel=2,
                )
    reset_noise(model)
