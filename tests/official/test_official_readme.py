"""Every code block of plugins/tdmpc2/README.md runs, against the official checkout, on this CPU machine.

Paths are the README's placeholders filled in (`/path/to/tdmpc_prune`, `tdmpc2/tdmpc2`). Without
CUDA the launcher command must stop with its one line; the same command with `--cfg job` shows the
composed config. The Python blocks run in one namespace holding a small official `cfg` and the official replay buffer.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plugin_launcher import PLUGIN, load_launcher

REPO = PLUGIN.parents[1]
README = (PLUGIN / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)


def _commands(block: str):
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield shlex.split(line.replace("/path/to/tdmpc_prune", str(REPO)))


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    assert [lang for lang, _ in BLOCKS] == ["bash", "python", "python"]


def test_the_bash_block(official, tmp_path) -> None:
    pytest.importorskip("torchrl", reason="the launcher imports the official buffer, which needs torchrl (.venv-official)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MUJOCO_GL": "disable"}
    bin_dir = Path(sys.executable).parent
    cwd, ran = tmp_path, []
    for cmd in _commands(BLOCKS[0][1]):
        if cmd[0] == "cd":
            assert cmd[1] == "tdmpc2/tdmpc2"
            cwd = official.root  # the checkout's tdmpc2/ folder
        elif cmd[:3] == ["pip", "install", "-e"]:  # already installed so: check it is this repository, editable
            out = subprocess.run([sys.executable, "-m", "pip", "show", "-f", "tdmpc-prune"], capture_output=True, text=True, check=True).stdout
            assert "Editable project location: " + str(REPO) in out and cmd[3] == str(REPO)
        elif cmd[0] == "python":
            launch = [sys.executable, cmd[1], f"hydra.run.dir={tmp_path / 'run'}", *cmd[2:]]
            proc = subprocess.run(launch, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [load_launcher().NO_CUDA], proc.stderr[-2000:]
            proc = subprocess.run([*launch, "--cfg", "job"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert "budgets:\n    Q: 0.3\n    policy: 0.2" in proc.stdout and "criterion: bayes" in proc.stdout
        elif cmd[0] == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(tmp_path / "logs" / "tb"))  # what a run leaves under logs/
            writer.add_scalar("prune/sparsity", 0.5, 1)
            writer.close()
            proc = subprocess.run([str(bin_dir / "tensorboard"), *cmd[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0 and "prune/sparsity" in proc.stdout, proc.stderr[-2000:]
        else:
            raise AssertionError(f"the test does not know how to run {cmd}")
        ran.append(cmd[0])
    assert ran == ["pip", "cd", "python", "tensorboard"]


def _official_buffer(official, cfg):
    """The official replay buffer holding one random episode of 20 steps."""
    pytest.importorskip("torchrl", reason="the official replay buffer needs torchrl (.venv-official)")
    from tensordict import TensorDict

    n, g = 20, torch.Generator().manual_seed(0)
    buffer = official.module("common.buffer").Buffer(cfg)
    buffer.add(TensorDict({"obs": torch.randn(n, 5, generator=g), "action": torch.rand(n, 1, generator=g) * 2 - 1,
                           "reward": torch.rand(n, generator=g), "terminated": torch.zeros(n)}, batch_size=(n,)))
    return buffer


def test_the_python_blocks(official, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = official.cfg("steps=20", obs_dim=5, action_dim=1)
    cfg.seed_steps = 10
    original = {k: getattr(cfg, k) for k in ("latent_dim", "mlp_dim", "enc_dim")}
    namespace = {"cfg": cfg, "buffer": _official_buffer(official, cfg)}
    try:
        exec(compile(BLOCKS[1][1], "plugins/tdmpc2/README.md", "exec"), namespace)
    except NotImplementedError as e:  # the official WorldModel.to() with tensordict >= 0.14
        official.agent(cfg)  # skips, saying why
        raise
    agent, pruner = namespace["agent"], namespace["pruner"]
    assert pruner.history and agent.model._dynamics[0].out_features < original["mlp_dim"]
    (cfg.work_dir / "models").mkdir(parents=True)
    agent.save(cfg.work_dir / "models" / "final.pt")
    torch.save(pruner.state_dict(), cfg.work_dir / "prune_state.pt")
    for k, v in original.items():  # "the original (unpruned) config"
        setattr(cfg, k, v)
    exec(compile(BLOCKS[2][1], "plugins/tdmpc2/README.md", "exec"), namespace)
    reloaded = namespace["agent"]
    assert reloaded is not agent
    saved = agent.model.state_dict()
    tensors = {k: v for k, v in reloaded.model.state_dict().items() if isinstance(v, torch.Tensor)}
    assert set(tensors) == {k for k, v in saved.items() if isinstance(v, torch.Tensor)}
    for k, v in tensors.items():
        assert torch.equal(v, saved[k]), k
