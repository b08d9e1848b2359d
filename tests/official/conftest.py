"""The official tdmpc2 code as a user's checkout: `TDMPC2_DIR` (default ../shared/reference/tdmpc2-official/tdmpc2).

The checkout is imported as it is, never edited or copied. Its CUDA-only bits are redirected in this
test process only (`cpu_redirect`): the official modules' `torch.device('cuda:0')`, `device='cuda:0'`
and `torch.cuda.mem_get_info()` see the CPU, and capturable Adam is allowed on CPU tensors (it
computes the same update; upstream only lists the devices it supports under CUDA graphs).

These tests run twice: here in the main environment (the newest tensordict, where the official
`WorldModel.to()` fails, so agent-level tests skip and say why) and, from
`tests/test_official_pins.py`, in `.venv-official` with the official pins (tensordict 0.8.3).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_DIR = Path(os.environ.get("TDMPC2_DIR") or REPO.parent / "shared" / "reference" / "tdmpc2-official" / "tdmpc2")
OFFICIAL_PACKAGES = ("common", "envs", "trainer", "tdmpc2")  # the checkout's top-level names
REDIRECTED = ("tdmpc2", "common.buffer", "common.scale", "common.seed")  # the modules that name cuda:0
# a small model (the official presets start at 1M parameters): fast on one CPU thread
SMALL = ["enc_dim=32", "mlp_dim=32", "latent_dim=16", "num_q=2", "batch_size=16", "num_samples=16",
         "num_elites=4", "num_pi_trajs=2", "iterations=1", "enable_wandb=false", "save_csv=false", "compile=false"]


def _cpu(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def cpu_torch() -> types.ModuleType:
    """A copy of the `torch` module namespace whose cuda:0 is the CPU (for the official modules' globals)."""
    proxy = types.ModuleType("torch")
    proxy.__dict__.update(vars(torch))
    proxy.device = lambda *args, **kwargs: torch.device(*(_cpu(a) for a in args), **kwargs)
    proxy.tensor = lambda *args, device=None, **kwargs: torch.tensor(*args, device=_cpu(device), **kwargs)
    cuda = types.ModuleType("torch.cuda")
    cuda.__dict__.update(vars(torch.cuda))
    cuda.mem_get_info = lambda *args: (0, 0)  # the buffer then chooses CPU storage
    proxy.cuda = cuda
    return proxy


def _purge() -> Dict[str, types.ModuleType]:
    return {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in OFFICIAL_PACKAGES}


def _has_submitit_launcher() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    except ModuleNotFoundError:
        return False


class Official:
    """The imported checkout: `.module(name)` and a config built the official way (`cfg`)."""

    def __init__(self, root: Path):
        self.root = root

    def module(self, name: str) -> types.ModuleType:
        return importlib.import_module(name)

    def compose(self, *overrides: str, task: str = "cartpole-balance", config_name: str = "config") -> Any:
        """The official config.yaml (or `config_name` on its search path) composed with `overrides`.

        Hydra's runtime config is installed, so `parse_cfg` finds the original working directory.
        """
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict

        launcher = [] if _has_submitit_launcher() else ["hydra/launcher=basic"]  # as the plugin README says
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(self.root), version_base=None):
            given = {o.split("=", 1)[0] for o in overrides}
            small = [o for o in SMALL if o.split("=", 1)[0] not in given]
            cfg = compose(config_name, overrides=[f"task={task}", *launcher, *small, *overrides], return_hydra_config=True)
        GlobalHydra.instance().clear()
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def cfg(self, *overrides: str, task: str = "cartpole-balance", obs_dim: int = 5, action_dim: int = 1) -> Any:
        """`parse_cfg` of the composed official config; the fields the official `make_env` fills in are
        set here for a state-observation task of `obs_dim`/`action_dim` (multi-task: for every task)."""
        cfg = self.module("common.parser").parse_cfg(self.compose(*overrides, task=task))
        cfg.obs_shape = {"state": (obs_dim,)}
        cfg.action_dim = action_dim
        cfg.episode_length = 500
        cfg.seed_steps = max(1000, 5 * cfg.episode_length)
        if cfg.multitask:
            cfg.obs_shapes = [(obs_dim,)] * len(cfg.tasks)
            cfg.action_dims = [action_dim] * len(cfg.tasks)
            cfg.episode_lengths = [500] * len(cfg.tasks)
        return cfg

    def agent(self, cfg: Any) -> Any:
        """The official `TDMPC2(cfg)`; skips where this tensordict breaks the official `WorldModel.to()`."""
        try:
            return self.module("tdmpc2").TDMPC2(cfg)
        except NotImplementedError as e:
            if "meta tensor" not in str(e):
                raise
            import tensordict

            pytest.skip(f"the official WorldModel(cfg).to(device) fails with tensordict {tensordict.__version__} "
                        f"(official pin 0.8.3): {str(e)[:60]}...")


@pytest.fixture(scope="module")
def official() -> Iterator[Official]:
    """The checkout on sys.path with its CUDA-isms redirected to the CPU; removed again afterwards."""
    if not (OFFICIAL_DIR / "tdmpc2.py").exists():
        pytest.skip(f"no official tdmpc2 checkout at {OFFICIAL_DIR} (set TDMPC2_DIR to its tdmpc2/ folder)")
    saved = _purge()
    sys.path.insert(0, str(OFFICIAL_DIR))
    proxy = cpu_torch()
    mp = pytest.MonkeyPatch()
    try:
        for name in REDIRECTED:
            if name == "common.buffer" and importlib.util.find_spec("torchrl") is None:
                continue  # the official replay buffer needs torchrl (in .venv-official, not in the main env)
            mp.setattr(importlib.import_module(name), "torch", proxy)
        import torch.optim.adam as adam

        supported = adam._get_capturable_supported_devices
        mp.setattr(adam, "_get_capturable_supported_devices", lambda supports_xla=True: [*supported(supports_xla), "cpu"])
        yield Official(OFFICIAL_DIR)
    finally:
        mp.undo()
        sys.path.remove(str(OFFICIAL_DIR))
        _purge()
        sys.modules.update(saved)

