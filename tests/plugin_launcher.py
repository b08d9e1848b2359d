"""plugins/tdmpc2/train_prune.py loaded as a module (it is a script, not part of the package)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "tdmpc2"


def load_launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tdmpc2_plugin_train_prune", PLUGIN / "train_prune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
