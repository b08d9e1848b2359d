"""Stable-Baselines3 integration: prune PPO, A2C, SAC, TD3 and DQN policies while they train.

    from stable_baselines3 import PPO
    from tdmpc_prune.sb3 import PruningCallback, wrap, load

    model = wrap(PPO("MlpPolicy", "CartPole-v1"), criterion="bayes", sparsity=0.75)
    model.learn(100_000)                    # or: PPO(...).learn(100_000, callback=PruningCallback(sparsity=0.75))
    model.save("ppo_pruned")                # stock save; PPO.load works when net_arch can express the widths
    model = load("ppo_pruned")              # always works; learn() continues the schedule
    export(model, "ppo_pruned.onnx")        # deterministic acting graph for ONNX Runtime, checked vs predict()
"""
from .callback import LoggerSink, PruningCallback
from .components import Wiring, wiring
from .deploy import export
import sys as _sys

from . import saving as _saving
from .saving import PruningState, get_pruner
from .wrap import load, pruned_class, wrap

# models saved before the module was renamed pickle `tdmpc_prune.sb3.io.PruningState`; this alias
# lets them load (tests/test_sb3_compat.py) without a module that shadows the standard `io`
_sys.modules.setdefault(f"{__name__}.io", _saving)

__all__ = ["PruningCallback", "wrap", "load", "export", "get_pruner", "LoggerSink", "PruningState", "Wiring", "wiring", "pruned_class"]
