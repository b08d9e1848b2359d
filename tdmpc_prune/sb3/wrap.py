"""`wrap(model, **options)`: the model, ready to `learn()` with pruning attached; `load(path)`: a
saved pruned model, wrapped the same way."""
from __future__ import annotations

import importlib
import io
import pathlib
from typing import Any, Dict, List, Optional, Union

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.save_util import load_from_zip_file

from ..errors import ArgumentError, PruneError
from .callback import PruningCallback
from .saving import ATTR, PruningState, restore

_CLASSES: Dict[type, type] = {}


def _has_pruning(callback: Any) -> bool:
    if isinstance(callback, PruningCallback):
        return True
    if isinstance(callback, CallbackList):
        return any(_has_pruning(c) for c in callback.callbacks)
    if isinstance(callback, (list, tuple)):
        return any(_has_pruning(c) for c in callback)
    return False


def _as_list(callback: Any) -> List[BaseCallback]:
    if callback is None:
        return []
    if isinstance(callback, (list, tuple)):
        return [c for cb in callback for c in _as_list(cb)]
    if isinstance(callback, BaseCallback):
        return [callback]
    return [ConvertCallback(callback)]


def _learn_callback(model: BaseAlgorithm, callback: Any) -> Any:
    """`callback` with the model's `PruningCallback` in front (unless one is there already)."""
    if _has_pruning(callback):
        return callback
    state = getattr(model, ATTR, None)
    cb = state.callback if isinstance(state, PruningState) and state.callback is not None else PruningCallback()
    if isinstance(state, PruningState):
        state.callback = cb
    return CallbackList([cb, *_as_list(callback)])


def _restore_saved(model: BaseAlgorithm) -> None:
    state = getattr(model, ATTR, None)
    if isinstance(state, PruningState) and state.pruner is None and state.saved is not None:
        restore(model, state, {}, rebuild=False)


def pruned_class(algo: type) -> type:
    """`Pruned<ALGO>`: a subclass of the algorithm whose `learn()` prunes (cached per algorithm).

    It also restores a saved pruner before `set_parameters()` loads weights, which is how `load()`
    rebuilds pruned shapes that `net_arch` cannot express.
    """
    if getattr(algo, "_tdmpc_pruned", False):
        return algo
    if algo in _CLASSES:
        return _CLASSES[algo]

    def learn(self: BaseAlgorithm, total_timesteps: int, callback: Any = None, **kwargs: Any) -> Any:
        return super(cls, self).learn(total_timesteps, callback=_learn_callback(self, callback), **kwargs)

    def set_parameters(self: BaseAlgorithm, load_path_or_dict: Any, exact_match: bool = True, device: Any = "auto") -> None:
        _restore_saved(self)
        super(cls, self).set_parameters(load_path_or_dict, exact_match=exact_match, device=device)

    namespace = {"learn": learn, "set_parameters": set_parameters, "_tdmpc_pruned": True, "__module__": __name__}
    cls = type(f"Pruned{algo.__name__}", (algo,), namespace)
    _CLASSES[algo] = cls
    return cls


def wrap(model: BaseAlgorithm, callback: Optional[PruningCallback] = None, **options: Any) -> BaseAlgorithm:
    """Attach pruning to `model` and return it; `model.learn(...)` then prunes as it trains.

    `options` are the `PruneConfig` options (criterion, sparsity, schedule, start, end, budgets,
    coupling, l1, physical, ema, ...) plus the callback's own (`total_timesteps`, `log_freq`,
    `heatmap`, `verbose`); or pass a ready `callback`.  The pruner is built now, so a bad option or
    an unsupported policy fails here.  The model stays an instance of its algorithm class
    (`isinstance(model, PPO)` holds) and saves with stock `model.save()`.
    """
    if callback is not None and options:
        raise ArgumentError("wrap() takes either a PruningCallback or prune options, not both")
    cb = callback if callback is not None else PruningCallback(**options)
    cb.init_callback(model)
    getattr(model, ATTR).callback = cb
    model.__class__ = pruned_class(type(model))
    return model


def _algo_class(path: str) -> type:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def load(
    path: Union[str, pathlib.Path, io.BufferedIOBase],
    env: Any = None,
    device: Union[th.device, str] = "auto",
    custom_objects: Optional[Dict[str, Any]] = None,
    **kwargs: Any,
) -> BaseAlgorithm:
    """Load a model saved (with stock `model.save()`) while or after pruning.

    Rebuilds the unpruned policy, replays the saved pruning history on it (same shapes, same masks),
    loads the weights and optimizer states, and returns the model wrapped: `learn()` continues the
    pruning schedule where it stopped (pass `reset_num_timesteps=False` to keep the clock).
    Arguments are those of `ALGO.load`.
    """
    data, _, _ = load_from_zip_file(path, device="cpu", custom_objects=custom_objects)
    state = (data or {}).get(ATTR)
    if not isinstance(state, PruningState) or state.saved is None:
        raise PruneError(
            f"{path} holds no tdmpc_prune state (it was not saved from a pruned model); load it with ALGO.load()"
        )
    if hasattr(path, "seek"):
        path.seek(0)
    algo = _algo_class(state.algo)
    objects = {**(custom_objects or {}), "policy_kwargs": state.policy_kwargs}
    return pruned_class(algo).load(path, env=env, device=device, custom_objects=objects, **kwargs)
