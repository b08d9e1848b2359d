"""Reliability of `tdmpc-prune train`, tried as a user and a failing machine would: real CLI runs
(subprocesses), real faults (a live second run, kill -9, a file-size limit, a file as logdir, an
unwritable directory, damaged checkpoints) and the real TensorBoard event files read back."""
from __future__ import annotations

import glob
import os
import resource
import signal
import subprocess
import sys
import time
from typing import Dict, List

import pytest
import torch

from tdmpc_prune.cli import main
from tdmpc_prune.tensorboard import logged_steps, repeated_steps
from tdmpc_prune.tdmpc2.rundir import LOCK, RunLock
from tdmpc_prune.tdmpc2.config import parse_overrides
from tdmpc_prune.config import PruneConfig
from tdmpc_prune.tdmpc2.train import _derived_name, train
from test_tdmpc2_train import tokens

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from reliability_probe import kill_once_logged_past_checkpoint  # noqa: E402  the probe's case, shared

ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}
CLI = [sys.executable, "-m", "tdmpc_prune.cli", "train"]


def run_dir(logdir, name: str) -> str:
    return os.path.join(str(logdir), "cartpole-balance", name, "seed-1")


def cli(args: List[str], preexec_fn=None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, env=ENV, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The CLI failed with exit status 2 and said why in one line, without a traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("tdmpc-prune train: error: ")
    return lines[0]


def assert_each_step_once(directory: str) -> Dict[str, List[int]]:
    assert not repeated_steps(directory), repeated_steps(directory)
    return logged_steps(directory)


# --------------------------------------------------------------------------------------- bad options
def test_a_bad_option_fails_in_one_line_before_anything_is_built(tmp_path):
    logdir = tmp_path / "runs"
    line = one_error_line(cli(tokens(logdir, "bad", 50, 50, 50, "grad_clip_norm=-1")))
    assert "grad_clip_norm=-1.0: must be a finite number > 0 (the gradient-norm clip); e.g. grad_clip_norm=20.0" in line
    assert not logdir.exists()  # refused before any directory, env or agent was made


@pytest.mark.parametrize(
    "extra, words",
    [
        (["episode_length=2", "horizon=3"], "episode_length=2 is shorter than the planning horizon=3"),
        (["buffer_size=20"], "buffer_size=20 cannot hold one episode (25 steps + its first observation)"),
        (["seed=-1"], "seed=-1: must be an integer >= 0"),
        (["--prune", "prune.prior_strength=inf"], "prior_strength=inf: must be a finite number > 0"),
        (["--prune", "prune.l1=inf"], "l1=inf: must be a finite number >= 0"),
        (["--prune", "prune.start=100", "prune.end=50"], "end (50) comes before start (100)"),
        # needs the model: refused once it is built, and the run leaves no directory behind
        (["--prune", "prune.exclude=[_dynamic.0]"], "exclude entry '_dynamic.0' matches no module of the model. Did you mean '_dynamics.0'"),
    ],
)
def test_bad_options_in_the_cli(tmp_path, capsys, extra, words):
    logdir = tmp_path / "runs"
    assert main(["train", *tokens(logdir, "bad", 50, 50, 50, *extra)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and not logdir.exists(), err


# --------------------------------------------------------------------------------------- ownership
def test_a_second_live_run_is_refused_and_kill_9_releases_the_directory(tmp_path, capsys):
    args = tokens(tmp_path, "shared", 100_000, 100_000, 100_000)
    directory = run_dir(tmp_path, "shared")
    first = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = os.path.join(directory, LOCK)
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if os.path.exists(lock) and open(lock).read().strip() == str(first.pid):
                break
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()[-2000:]
        assert main(["train", *args]) == 2  # a second run (this process) on the same directory
        err = capsys.readouterr().err
        assert f"{directory} is in use by another live run (pid {first.pid})" in err and "exp_name=" in err
        assert err.count("\n") == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with RunLock(directory):  # a dead run keeps no lock
        pass


def test_runs_that_differ_in_options_do_not_share_a_default_directory():
    def name(*args: str) -> str:
        parsed = parse_overrides(list(args))
        given = [a.split("=", 1)[0] for a in args if "=" in a and not a.startswith("prune.")]
        prune = PruneConfig.from_overrides(parsed.prune_overrides) if parsed.prune_flag else None
        return _derived_name(parsed.cfg, given, prune)

    assert name() == "default" and name("--prune") == "pruned" and name("steps=5000", "seed=3", "logdir=x") == "default"
    assert name("lr=0.001", "horizon=5") == "default-horizon=5,lr=0.001"
    fisher = name("--prune", "prune.criterion=fisher", "prune.sparsity=0.75")
    assert fisher == "pruned-criterion=fisher,sparsity=0.75" == name("--prune", "prune.sparsity=.750", "prune.criterion=fisher")
    assert name("--prune", "prune.sparsity=0.5") == "pruned"  # the default value is no difference
    both = name("model_size=cpu", "iterations=2", "--prune", "prune.iterations=3", "prune.exclude=[_pi.0]")
    assert both == "pruned-exclude=_pi.0,prune.iterations=3,iterations=2,model_size=cpu"
    long = name(*[f"{k}=7" for k in ("num_elites", "num_pi_trajs", "horizon", "iterations", "batch_size", "num_bins",
                                        "log_freq", "num_enc_layers", "task_dim", "action_repeat", "num_q")], "--prune")
    assert len(long) <= 120 and long.startswith("pruned-action_repeat=7,") and "/" not in long


# --------------------------------------------------------------------------------------- filesystem
def test_a_logdir_that_is_a_file_or_not_writable(tmp_path, capsys):
    afile = tmp_path / "runs.txt"
    afile.write_text("not a directory")
    assert main(["train", *tokens(afile, "f", 50, 50, 50)]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run directory" in err and "Not a directory" in err and "logdir=" in err and err.count("\n") == 1
    assert afile.read_text() == "not a directory"
    if os.geteuid() != 0:  # root writes anywhere a mode allows: use a filesystem that refuses it
        unwritable, reason = tmp_path / "readonly", "Permission denied"
        unwritable.mkdir()
        unwritable.chmod(0o555)
    elif os.path.isdir("/sys/kernel"):
        unwritable, reason = "/sys/kernel", "Operation not permitted"
    else:
        pytest.skip("no unwritable directory for root on this machine")
    assert main(["train", *tokens(unwritable, "ro", 50, 50, 50)]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run directory" in err and reason in err and err.count("\n") == 1, err


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one(tmp_path):
    first = train(tokens(tmp_path, "full", 50, 50, 50))
    ckpt = first.checkpoint_path
    good = open(ckpt, "rb").read()
    # the next checkpoint is a little larger (more replay data): let the filesystem refuse it
    proc = cli(tokens(tmp_path, "full", 150, 50, 50, "resume=true"), preexec_fn=_file_size_limit(len(good) + 256))
    line = one_error_line(proc)
    assert f"could not write the checkpoint {ckpt}: File too large" in line
    assert "the partial file was removed; the checkpoint of step 50 is kept" in line and "resume=true" in line
    assert open(ckpt, "rb").read() == good and not glob.glob(os.path.join(first.directory, "*.tmp"))
    resumed = train(tokens(tmp_path, "full", 100, 50, 50, "resume=true"))  # space is back: it goes on
    assert resumed.step == 100


def test_damaged_checkpoints_on_resume(tmp_path, capsys):
    first = train(tokens(tmp_path, "dmg", 50, 50, 50))
    ckpt = first.checkpoint_path
    good = open(ckpt, "rb").read()
    cases = [(good[: len(good) // 2], "cannot be read", "truncated or not a tdmpc-prune checkpoint"),
             (b"", "is empty (0 bytes)", "restore it"),
             (None, "is not a tdmpc-prune training checkpoint (it holds a dict without", "cfg")]
    for data, words, fix in cases:
        if data is None:
            torch.save({"model": {"w": torch.zeros(2)}}, ckpt)
        else:
            open(ckpt, "wb").write(data)
        damaged = open(ckpt, "rb").read()
        assert main(["train", *tokens(tmp_path, "dmg", 100, 50, 50, "resume=true")]) == 2
        err = capsys.readouterr().err
        assert words in err and fix in err and err.count("\n") == 1, err
        assert open(ckpt, "rb").read() == damaged  # left as it was


def test_a_dense_run_cannot_be_resumed_with_prune(tmp_path, capsys):
    first = train(tokens(tmp_path, "dense", 100, 100, 100))
    good = open(first.checkpoint_path, "rb").read()
    assert main(["train", *tokens(tmp_path, "dense", 200, 100, 100, "resume=true", "--prune")]) == 2
    err = capsys.readouterr().err
    assert "was trained dense" in err and "its past pruning events would all fire at once" in err and err.count("\n") == 1
    assert open(first.checkpoint_path, "rb").read() == good


# --------------------------------------------------------------------------------------- TensorBoard
def test_a_killed_run_resumes_without_duplicated_steps_in_tensorboard(tmp_path):
    args = tokens(tmp_path, "tb", 200, 50, 100)
    directory = run_dir(tmp_path, "tb")
    ckpt = os.path.join(directory, "checkpoint.pt")
    proc = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_once_logged_past_checkpoint(proc, directory, timeout=150)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    saved = torch.load(ckpt, weights_only=False)["counters"]["step"]
    assert max(logged_steps(directory)["eval/episode_reward"]) > saved  # the killed run logged past its checkpoint
    resumed = train(args + ["resume=true"])
    assert resumed.step == 200
    by_tag = assert_each_step_once(directory)
    assert by_tag["eval/episode_reward"] == list(range(0, 201, 50))
    assert by_tag["train/episode_reward"] == list(range(50, 201, 50))


def test_an_uninterrupted_pruning_run_writes_each_tag_once_per_step(tmp_path):
    prune = ["--prune", "prune.schedule=iterative", "prune.start=60", "prune.end=80", "prune.iterations=2", "prune.l1=1e-4"]
    trainer = train(tokens(tmp_path, "once", 100, 50, 100, *prune))
    by_tag = assert_each_step_once(trainer.directory)
    assert by_tag["prune/sparsity"][0] == 0 and 50 in by_tag["prune/plan_ms"]  # the start, the pretraining step
    assert by_tag["train/total_loss"][0] == 52 and "prune/importance_heatmap" in by_tag  # 52: the burst of seed updates
