"""plugins/tdmpc2: the `prune` hydra config group and train_prune.py, the official train.py plus `--prune`.

No official checkout is needed: the config group is composed with the real hydra over a minimal
`config.yaml`, and `main()` runs against a stub of the official layout (train.py, config.yaml,
tdmpc2.py, common/, envs/, trainer/) whose agent is the official-layout world model of
`official_layout.py`, so `attach`, `UpdateHook` and the saved pruner state are the real ones.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from tdmpc_prune import PruneConfig, PruneConfigError

from plugin_launcher import PLUGIN, load_launcher

DEFAULT_YAML = PLUGIN / "conf" / "prune" / "default.yaml"
TESTS = Path(__file__).resolve().parent


tp = load_launcher()


pytestmark = pytest.mark.filterwarnings("ignore:(?s).*version_base=.1.1. selects Hydra 1.1")  # upstream leaves version_base unset: 1.1


@pytest.fixture(autouse=True)
def _fresh_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


# ------------------------------------------------------------------------------------ the config group
def test_default_yaml_keys_are_prune_config_fields_and_its_defaults():
    values = OmegaConf.to_container(OmegaConf.load(DEFAULT_YAML))
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    assert set(tp.LAUNCHER_KEYS) <= set(values) and not set(tp.LAUNCHER_KEYS) & fields
    options = {k: v for k, v in values.items() if k not in tp.LAUNCHER_KEYS}
    assert set(options) <= fields, set(options) - fields
    assert set(options) == fields, fields - set(options)  # the README promises every option
    config = PruneConfig.from_dict(options)
    assert config.to_dict() == PruneConfig().to_dict()  # the YAML repeats the library's defaults
    assert values["log_every"] == tp.LAUNCHER_KEYS["log_every"]


def test_launcher_imports_without_the_official_code_torch_or_hydra():
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('tp', sys.argv[1]); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
            "print(sorted(set(sys.modules) & {'common', 'envs', 'trainer', 'tdmpc2', 'torch', 'hydra', 'omegaconf'}))")
    out = subprocess.run([sys.executable, "-c", code, str(PLUGIN / "train_prune.py")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert tp.PLUGIN_CONF == PLUGIN / "conf" and (tp.PLUGIN_CONF / "prune" / "default.yaml").exists()


# ------------------------------------------------------------------------------------ the command line
def test_without_prune_the_command_line_is_the_official_one():
    argv = ["task=dog-run", "steps=1000", "model_size=5", "--config-name", "config", "--cfg", "job"]
    assert tp.split_argv(argv) == (False, argv, "config")


SEARCHPATH = f"hydra.searchpath=['file://{PLUGIN / 'conf'}']"


def test_prune_flag_adds_the_search_path_in_front_of_the_overrides():
    prune, argv, base = tp.split_argv(["task=dog-run", "--prune", "prune.sparsity=0.3", "+prune.budgets.Q=0.2"])
    assert prune and base == "config"
    assert argv == [SEARCHPATH, "task=dog-run", "prune.sparsity=0.3", "+prune.budgets.Q=0.2"]
    # hydra's argparse reads the overrides as one run: nothing may follow a trailing flag
    assert tp.split_argv(["--prune", "--cfg", "job"])[1] == ["--cfg", "job", SEARCHPATH]
    assert tp.split_argv(["--cfg", "job", "task=x", "--prune"])[1] == ["--cfg", "job", SEARCHPATH, "task=x"]


def test_choosing_a_group_option_turns_pruning_on():
    prune, argv, _ = tp.split_argv(["+prune=mine", "prune.l1=1e-4"])
    assert prune and argv == [SEARCHPATH, "prune=mine", "prune.l1=1e-4"]  # an override of the primary's default
    assert tp.split_argv(["--prune", "prune=mine"])[1] == [SEARCHPATH, "prune=mine"]


def test_config_name_becomes_the_base_of_the_primary_config():
    prune, argv, base = tp.split_argv(["--prune", "--config-name", "mine", "task=x"])
    assert (prune, argv, base) == (True, [SEARCHPATH, "task=x"], "mine")
    assert tp.split_argv(["-cn=other", "--prune"])[2] == "other"
    assert tp.primary_config("mine") == {"defaults": ["mine", {"prune": "default"}, "_self_"]}


def test_the_users_search_path_is_extended_not_replaced():
    _, argv, _ = tp.split_argv(["--prune", "hydra.searchpath=[pkg://mine]"])
    assert argv == [f"hydra.searchpath=[pkg://mine,'file://{PLUGIN / 'conf'}']"]


@pytest.mark.parametrize("stray", ["prune.sparsity=0.3", "+prune.budgets.Q=0.2", "~prune.l1"])
def test_prune_options_without_the_flag_are_refused(stray):
    with pytest.raises(ValueError, match="--prune"):
        tp.split_argv(["task=dog-run", stray])


def test_main_refuses_to_run_outside_the_official_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="official checkout's tdmpc2/ folder"):
        tp.main(["task=dog-run"])
    with pytest.raises(SystemExit, match="prune options need --prune"):
        tp.main(["prune.sparsity=0.3"])


def test_official_environment_preamble():
    env = {"MUJOCO_GL": "osmesa"}
    tp.official_environment(env)
    assert env == {"MUJOCO_GL": "osmesa", "LAZY_LEGACY_OP": "0", "TORCHDYNAMO_INLINE_INBUILT_NN_MODULES": "1",
                   "TORCH_LOGS": "+recompiles"}
    env = {}
    tp.official_environment(env)
    assert env["MUJOCO_GL"] == "egl"


# ------------------------------------------------------------------------------------ composed overrides
# like the official config.yaml: a defaults list with only a hydra override and no `_self_` (upstream
# overrides hydra/launcher with submitit_local, a plugin not installed here; `basic` stands in)
OFFICIAL_LIKE = "defaults:\n    - override hydra/launcher: basic\n\ntask: dog-run\nsteps: 1000\nseed: 1\n"


def _compose(tmp_path, *args):
    (tmp_path / "config.yaml").write_text(OFFICIAL_LIKE)
    prune, argv, base = tp.split_argv(list(args))
    name = tp.register_primary(base) if prune else tp.OFFICIAL_CONFIG
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.1"):  # upstream's (unset) version_base
        return prune, compose(name, overrides=argv)


def test_the_prune_group_keeps_every_official_key(tmp_path):
    """Regression: `+prune=default` on a config whose defaults hold only an override drops its keys."""
    _, cfg = _compose(tmp_path, "--prune")
    assert set(cfg) == {"task", "steps", "seed", "prune"} and cfg.task == "dog-run" and cfg.steps == 1000
    GlobalHydra.instance().clear()
    _, official = _compose(tmp_path)
    tp.pop_prune_options(cfg)
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(official)


def test_composed_overrides_reach_prune_config(tmp_path):
    prune, cfg = _compose(tmp_path, "task=cup-catch", "--prune", "prune.sparsity=0.3", "+prune.budgets.Q=0.2",
                          "+prune.budgets.policy=0.1", "prune.start=1000", "prune.end=0.9", "prune.exclude=[_pi.0]",
                          "prune.coupling_sparsity=0.25", "prune.criterion=magnitude", "prune.log_every=50")
    assert prune and OmegaConf.is_struct(cfg)
    opts = tp.pop_prune_options(cfg)
    assert "prune" not in cfg and OmegaConf.to_container(cfg) == {"task": "cup-catch", "steps": 1000, "seed": 1}
    config, launcher = tp.split_options(opts)
    assert launcher == {"log_every": 50}
    assert config.sparsity == 0.3 and config.budgets == {"Q": 0.2, "policy": 0.1}
    assert config.start == 1000 and isinstance(config.start, int)  # an absolute step
    assert config.end == 0.9 and isinstance(config.end, float)  # a fraction
    assert list(config.exclude) == ["_pi.0"] and config.coupling_sparsity == 0.25 and config.criterion == "magnitude"


def test_budgets_need_a_plus_in_struct_mode(tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"\+prune\.budgets\.Q=0\.2"):
        _compose(tmp_path, "--prune", "prune.budgets.Q=0.2")


def test_the_plain_group_gives_the_default_prune_config(tmp_path):
    _, cfg = _compose(tmp_path, "--prune")
    config, launcher = tp.split_options(tp.pop_prune_options(cfg))
    assert config.to_dict() == PruneConfig().to_dict() and launcher == tp.LAUNCHER_KEYS


def test_unknown_and_invalid_options_fail_before_training(tmp_path):
    _, cfg = _compose(tmp_path, "--prune", "+prune.sparsty=0.3")
    with pytest.raises(PruneConfigError, match="sparsity"):
        tp.split_options(tp.pop_prune_options(cfg))
    GlobalHydra.instance().clear()
    _, cfg = _compose(tmp_path, "--prune", "prune.sparsity=1.0")
    with pytest.raises(PruneConfigError, match="sparsity"):
        tp.split_options(tp.pop_prune_options(cfg))


def test_without_the_group_there_is_nothing_to_pop(tmp_path):
    prune, cfg = _compose(tmp_path, "task=cup-catch")
    assert not prune and tp.pop_prune_options(cfg) is None and cfg.task == "cup-catch"


def test_another_option_of_the_group(tmp_path):
    (tmp_path / "prune").mkdir()
    (tmp_path / "prune" / "light.yaml").write_text("sparsity: 0.2\ncriterion: magnitude\n")
    prune, cfg = _compose(tmp_path, "prune=light", f"hydra.searchpath=[file://{tmp_path}]")
    assert prune and tp.split_options(tp.pop_prune_options(cfg))[0].sparsity == 0.2


# ------------------------------------------------------------------------------------ main() on a stub
STUB = {
    "train.py": "# the launcher only checks that the official files are here\n",
    "config.yaml": "defaults:\n  - override hydra/launcher: basic\n\ntask: toy\nsteps: 40\nseed: 3\nexp_name: default\n",
    "common/__init__.py": "CALLS = []\n",
    "common/parser.py": """
        from pathlib import Path
        from types import SimpleNamespace

        import hydra
        from omegaconf import OmegaConf

        from common import CALLS


        def parse_cfg(cfg):
            CALLS.append(("parse_cfg", sorted(cfg.keys())))
            d = OmegaConf.to_container(cfg)
            d["work_dir"] = Path(hydra.utils.get_original_cwd()) / "logs" / d["task"]
            d["multitask"] = d["task"].startswith("mt")
            return SimpleNamespace(**d)
    """,
    "common/seed.py": """
        from common import CALLS


        def set_seed(seed):
            CALLS.append(("set_seed", seed))
    """,
    "common/buffer.py": """
        class Buffer:
            def __init__(self, cfg):
                self.cfg = cfg
    """,
    "common/logger.py": """
        class Logger:
            def __init__(self, cfg):
                self.cfg = cfg
    """,
    "envs/__init__.py": """
        def make_env(cfg):
            cfg.seed_steps = 10
            return object()
    """,
    "tdmpc2.py": """
        import torch

        from official_layout import OfficialInitWorldModel, official_cfg


        class TDMPC2(torch.nn.Module):
            def __init__(self, cfg):
                super().__init__()
                self.cfg = cfg
                self.model = OfficialInitWorldModel(official_cfg())
                m = self.model
                self.optim = torch.optim.Adam([
                    {"params": m._encoder.parameters()}, {"params": m._dynamics.parameters()},
                    {"params": m._reward.parameters()}, {"params": m._Qs.parameters()}], lr=1e-3)
                self.pi_optim = torch.optim.Adam(m._pi.parameters(), lr=1e-3, eps=1e-5)
                self.updates = 0

            def update(self, buffer):
                self.updates += 1
                m = self.model
                obs, a = torch.randn(8, m.cfg.obs_dim), torch.rand(8, m.cfg.action_dim) * 2 - 1
                z = m.encode(obs, None)
                loss = m.Q(z, a, None, return_type="all").mean() + m.next(z, a, None).pow(2).mean() + m.reward(z, a, None).mean()
                loss.backward()
                self.optim.step()
                self.optim.zero_grad(set_to_none=True)
                action, _ = m.pi(z.detach(), None)
                (-m.Q(z.detach(), action, None, return_type="avg", detach=True).mean()).backward()
                self.pi_optim.step()
                self.pi_optim.zero_grad(set_to_none=True)
                m.soft_update_target_Q()
                return {"total_loss": loss.detach()}
    """,
    "trainer/__init__.py": "",
    "trainer/online_trainer.py": """
        from common import CALLS


        class OnlineTrainer:  # the official loop: seed_steps updates at step == seed_steps, then one per step
            def __init__(self, cfg, env, agent, buffer, logger):
                self.cfg, self.env, self.agent, self.buffer, self.logger = cfg, env, agent, buffer, logger
                self._step = 0

            def train(self):
                CALLS.append(("train", self))
                while self._step <= self.cfg.steps:
                    if self._step >= self.cfg.seed_steps:
                        n = self.cfg.seed_steps if self._step == self.cfg.seed_steps else 1
                        for _ in range(n):
                            self.agent.update(self.buffer)
                    self._step += 1
    """,
    "trainer/offline_trainer.py": """
        from common import CALLS


        class OfflineTrainer:
            def __init__(self, cfg, env, agent, buffer, logger):
                self.cfg, self.env, self.agent, self.buffer, self.logger = cfg, env, agent, buffer, logger

            def train(self):
                CALLS.append(("train", self))
                for i in range(self.cfg.steps):
                    self.agent.update(self.buffer)
    """,
}
OFFICIAL_MODULES = ("common", "envs", "trainer", "tdmpc2")
PRUNE = ["--prune", "prune.criterion=magnitude", "prune.schedule=oneshot", "prune.start=0.5", "prune.sparsity=0.5",
         "prune.log_every=5"]


@pytest.fixture
def stub(tmp_path, monkeypatch):
    root = tmp_path / "tdmpc2"
    for rel, text in STUB.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["train_prune.py"])
    monkeypatch.setattr(sys, "path", [str(TESTS), *sys.path])
    termcolor = types.ModuleType("termcolor")  # an official dependency, not one of ours
    termcolor.colored = lambda text, *args, **kwargs: text
    monkeypatch.setitem(sys.modules, "termcolor", termcolor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the official assert; nothing here uses CUDA
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setenv("MUJOCO_GL", "disable")
    for key in ("LAZY_LEGACY_OP", "TORCHDYNAMO_INLINE_INBUILT_NN_MODULES", "TORCH_LOGS"):
        monkeypatch.delenv(key, raising=False)  # restored after main() sets them
    backend = (torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision())
    yield root
    torch.backends.cudnn.benchmark = backend[0]
    torch.set_float32_matmul_precision(backend[1])
    for name in list(sys.modules):
        if name.split(".")[0] in OFFICIAL_MODULES:
            del sys.modules[name]


def _run(*args):
    tp.main([*args, "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
    calls = sys.modules["common"].CALLS
    trainer = next(c[1] for c in calls if c[0] == "train")
    return calls, trainer


def test_main_without_prune_is_the_official_run(stub):
    calls, trainer = _run("steps=20")
    assert ("parse_cfg", ["exp_name", "seed", "steps", "task"]) in calls and ("set_seed", 3) in calls
    assert type(trainer).__name__ == "OnlineTrainer" and "update" not in vars(trainer.agent)  # not wrapped
    assert trainer.agent.updates == 10 + 10  # seed_steps at step 10, then one per step to 20
    assert not (stub / "logs" / "toy" / "prune_state.pt").exists()
    assert os.environ["LAZY_LEGACY_OP"] == "0" and os.environ["TORCHDYNAMO_INLINE_INBUILT_NN_MODULES"] == "1"
    assert os.environ["TORCH_LOGS"] == "+recompiles" and os.environ["MUJOCO_GL"] == "disable"
    assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"


def test_main_with_prune_online_clock_counts_from_the_seed_steps(stub):
    calls, trainer = _run(*PRUNE)
    assert ("parse_cfg", ["exp_name", "seed", "steps", "task"]) in calls  # `prune` removed before parse_cfg
    agent = trainer.agent
    assert type(trainer).__name__ == "OnlineTrainer" and "update" in vars(agent)  # the UpdateHook
    state = torch.load(stub / "logs" / "toy" / "prune_state.pt", weights_only=False)
    assert state["first_step"] == 10 and state["total_steps"] == 40 and state["clock"] == 40
    assert [h["clock"] for h in state["history"]] == [10 + 15]  # start=0.5 of the span [10, 40]
    assert state["config"]["criterion"] == "magnitude" and state["config"]["sparsity"] == 0.5
    assert agent.model._dynamics[0].out_features == 24  # mlp_dim 48 halved, and the model trained on
    assert agent.updates == 10 + 30
    assert any(f.name.startswith("events.out.tfevents") for f in (stub / "logs" / "toy" / "tb").iterdir())


def test_main_with_prune_offline_clock_counts_updates(stub):
    _, trainer = _run("task=mt-toy", *PRUNE)
    assert type(trainer).__name__ == "OfflineTrainer"
    state = torch.load(stub / "logs" / "mt-toy" / "prune_state.pt", weights_only=False)
    assert state["first_step"] == 0 and state["clock"] == 40 and [h["clock"] for h in state["history"]] == [20]
