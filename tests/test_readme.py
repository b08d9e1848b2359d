"""The README's promises: its Python example runs, its main command prunes within the run it starts."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch

from tdmpc_prune import PruneConfig
from tdmpc_prune.schedule import Schedule
from tdmpc_prune.tdmpc2.config import parse_overrides

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_30_second_example_runs_and_prunes(tmp_path, monkeypatch, capsys) -> None:
    section = README[README.index("## 30-second example"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model, pruner = namespace["model"], namespace["pruner"]
    assert model.actor[0].out_features == 32 and model.critic[0].out_features == 32  # halved
    assert model.trunk[0].out_features == 64  # the coupling group (trunk -> actor, critic) is protected
    kinds = {g.id: g.kind for g in pruner.groups}
    assert kinds == {"trunk.0": "coupling", "actor.0": "component", "critic.0": "component"}
    assert "coupling" in capsys.readouterr().out
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert pruner.sparsity() == 0.5 and pruner.schedule.finished
    assert saved["pruner"]["history"] == pruner.history and len(pruner.history) >= 5  # gradual: several events


def test_the_main_command_prunes_after_the_seed_steps_and_before_the_end() -> None:
    line = next(l for l in README.splitlines() if l.startswith("bash scripts/setup.sh && .venv/bin/tdmpc-prune train"))
    tokens = shlex.split(line.split(".venv/bin/tdmpc-prune train", 1)[1])
    parsed = parse_overrides(tokens)
    cfg = parsed.cfg
    assert parsed.prune_flag and cfg.model_size == "cpu" and cfg.task == "cartpole-balance"
    assert cfg.seed_env_steps < cfg.steps
    events = Schedule.from_config(PruneConfig.from_overrides(parsed.prune_overrides), cfg.steps, cfg.seed_env_steps).events
    assert len(events) == PruneConfig().iterations
    assert all(cfg.seed_env_steps < t <= cfg.steps for t, _ in events)  # updates (and statistics) come first


def test_the_extending_example_registers_what_it_says() -> None:
    from tdmpc_prune.criteria import CRITERIA
    from tdmpc_prune.importance import STATISTICS
    from tdmpc_prune.schedule import SCHEDULES

    section = README[README.index("## Extending"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    try:
        exec(compile(code, "README.md", "exec"), {})
        assert CRITERIA["cubic"].needs == frozenset({"cube"}) and "cube" in STATISTICS
        assert SCHEDULES["two_steps"](10, 20, 3) == [(10, 0.5), (20, 1.0)]
        PruneConfig(criterion="cubic", schedule="two_steps")
    finally:
        CRITERIA.pop("cubic", None), STATISTICS.pop("cube", None), SCHEDULES.pop("two_steps", None)


def test_every_import_the_readmes_show_gives_what_they_name() -> None:
    """`from tdmpc_prune.tdmpc2 import attach` is the function (no submodule may shadow it), and so on."""
    import importlib
    import types

    root = Path(__file__).resolve().parents[1]
    texts = README + (root / "plugins" / "tdmpc2" / "README.md").read_text()
    lines = set(re.findall(r"^\s*from (tdmpc_prune[\w.]*) import ([\w, ]+)$", texts, re.M))
    assert ("tdmpc_prune.tdmpc2", "attach") in lines
    for module, names in lines:
        for name in (n.strip() for n in names.split(",")):
            obj = getattr(importlib.import_module(module), name)
            assert not isinstance(obj, types.ModuleType), f"from {module} import {name} gives a module"
    import tdmpc_prune.tdmpc2.wiring  # noqa: F401  (importing submodules must not shadow the function)
    from tdmpc_prune.tdmpc2 import attach

    assert callable(attach) and attach.__module__ == "tdmpc_prune.tdmpc2.wiring"


def test_the_new_framework_example_prunes_through_the_adapter_and_the_driver(tmp_path, monkeypatch, capsys) -> None:
    from tdmpc_prune.tensorboard import logged_steps

    section = README[README.index("**A new framework**"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["policy"][0].out_features == 32  # half of the hidden width removed, physically
    summary = namespace["summary"]
    assert summary.params < summary.dense_params and summary.sparsity == 0.5 and summary.events >= 5
    out = capsys.readouterr().out
    assert "[tdmpc-prune] run finished at step 400" in out and "tensorboard --logdir runs/example" in out
    tags = logged_steps(str(tmp_path / "runs" / "example"))
    assert tags["prune/sparsity"][0] == 0 and tags["prune/sparsity"][-1] == 400 and "prune/plan_ms" in tags
