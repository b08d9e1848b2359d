"""Our TD-MPC2 agent (official layout, CPU or CUDA), its trainer and `tdmpc-prune train`.

Importing this package is cheap: the agent, world model and trainer load on first access.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .config import MODEL_SIZES, ConfigError, TDMPC2Config, make_config, parse_overrides

_LAZY = {
    "attach": ".wiring",  # the function; its module is `wiring`, so no submodule can shadow the name
    "TDMPC2": ".agent",
    "WorldModel": ".world_model",
    "MPPIPlanner": ".planner",
    "ReplayBuffer": ".buffer",
    "Trainer": ".trainer",
    "Callback": ".trainer",
    "make_env": ".envs",
}

__all__ = ["TDMPC2Config", "ConfigError", "MODEL_SIZES", "make_config", "parse_overrides", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
