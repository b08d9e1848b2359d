"""plugins/tdmpc2/train_prune.py run as a user runs it, from inside the official checkout's tdmpc2/ folder."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plugin_launcher import PLUGIN, load_launcher


def _launch(official, tmp_path, *args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("torchrl", reason="the launcher imports the official buffer, which needs torchrl (.venv-official)")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MUJOCO_GL": "disable"}
    # hydra's run dir goes to tmp: the checkout may be read-only and is never written to
    argv = [sys.executable, str(PLUGIN / "train_prune.py"), f"hydra.run.dir={tmp_path}", *args]
    return subprocess.run(argv, cwd=official.root, env=env, capture_output=True, text=True, timeout=300)


def test_without_cuda_the_launcher_says_so_in_one_line(official, tmp_path) -> None:
    proc = _launch(official, tmp_path, "--prune", "task=cartpole-balance", "steps=1000")
    tp = load_launcher()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [tp.NO_CUDA], proc.stderr[-2000:]
    assert "needs a CUDA GPU" in tp.NO_CUDA and "tdmpc-prune train" in tp.NO_CUDA


def test_the_composed_config_shows_without_a_gpu(official, tmp_path) -> None:
    proc = _launch(official, tmp_path, "--prune", "prune.sparsity=0.3", "task=cartpole-balance", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sparsity: 0.3" in proc.stdout and "task: cartpole-balance" in proc.stdout and "mlp_dim: 512" in proc.stdout


def test_with_a_pruner_the_update_is_compiled_without_cuda_graphs(official, monkeypatch, capsys) -> None:
    """The official agent compiles `_update` with mode="reduce-overhead"; the launcher re-compiles it
    in the default mode. torch.compile is recorded, not run (inductor takes minutes on this CPU)."""
    import torch

    calls = []

    def record(fn, **kwargs):
        calls.append((fn, kwargs))
        return fn

    monkeypatch.setattr(torch, "compile", record)  # the launcher's
    monkeypatch.setattr(official.module("tdmpc2").torch, "compile", record)  # the official agent's (its CPU torch)
    agent = official.agent(official.cfg("compile=true"))
    assert [kw for _, kw in calls] == [{"mode": "reduce-overhead"}]  # the official choice
    tp = load_launcher()
    capsys.readouterr()
    tp.compile_update_without_cuda_graphs(agent)
    fn, kwargs = calls[-1]
    assert kwargs == {} and fn.__func__ is type(agent)._update and fn.__self__ is agent
    assert agent._update is fn and capsys.readouterr().out.strip() == tp.NO_CUDA_GRAPHS
