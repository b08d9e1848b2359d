"""Throw bad inputs and faults at `tdmpc-prune train`, the Pruner API and the SB3 callback; print a tally.

    python scripts/reliability_probe.py             # every case (CLI cases as real subprocesses)
    python scripts/reliability_probe.py --in-process  # CLI bad-input cases through cli.main (faster)
    python scripts/reliability_probe.py -k lock     # only cases whose name contains "lock"

Each case is (name, how it is triggered, what is expected).  Expected of every CLI failure: exit
status 2 and exactly one stderr line without a traceback that contains the given words; of every
fault: besides, no data lost (the last good checkpoint byte-identical, no partial `.tmp` left) and
TensorBoard event files without a repeated or backward step per tag.  The last line is JSON:
{"passed": N, "failed": M, "cases": N + M, "seconds": ..., "failures": [...]}.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("MUJOCO_GL", "disable")

TINY = ["task=cartpole-balance", "model_size=cpu", "enc_dim=32", "mlp_dim=32", "latent_dim=16", "num_q=2",
        "episode_length=25", "seed_steps=50", "batch_size=8", "num_samples=16", "num_elites=4", "num_pi_trajs=2",
        "iterations=1", "eval_episodes=1", "log_freq=10", "progress=false", "threads=1"]
CLI = [sys.executable, "-m", "tdmpc_prune.cli", "train"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
IN_PROCESS = False


class Failed(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def run_args(logdir: str, name: str, steps: int = 50, eval_freq: int = 50, save_freq: int = 50, *extra: str) -> List[str]:
    return TINY + [f"logdir={logdir}", f"exp_name={name}", f"steps={steps}", f"eval_freq={eval_freq}",
                   f"save_freq={save_freq}", *extra]


def run_dir(logdir: str, name: str) -> str:
    return os.path.join(logdir, "cartpole-balance", name, "seed-1")


def cli(args: List[str], preexec_fn: Optional[Callable[[], None]] = None, in_process: bool = False) -> tuple:
    """(exit status, stderr) of `tdmpc-prune train args`."""
    if in_process:
        from tdmpc_prune.cli import main

        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["train", *args])
        return code, err.getvalue()
    proc = subprocess.run(CLI + args, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)
    return proc.returncode, proc.stderr


def expect_error_line(code: int, err: str, words: str) -> str:
    lines = err.strip().splitlines()
    check(code == 2, f"exit status {code}, expected 2; stderr: {err[-400:]!r}")
    check("Traceback" not in err, f"a traceback: {err[-400:]!r}")
    check(len(lines) == 1, f"{len(lines)} stderr lines, expected one: {err[-400:]!r}")
    check(words in lines[0], f"{words!r} not in {lines[0]!r}")
    return lines[0]


def each_step_once(directory: str) -> dict:
    from tdmpc_prune.tensorboard import logged_steps, repeated_steps

    bad = repeated_steps(directory)
    check(not bad, f"steps repeated or going back: {dict(list(bad.items())[:3])}")
    return logged_steps(directory)


def train_in_process(args: List[str]):
    from tdmpc_prune.tdmpc2.train import train

    with contextlib.redirect_stdout(io.StringIO()):
        return train(args)


# ------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    name: str
    how: str
    expected: str
    run: Callable[[str], None]  # gets a fresh temporary directory


def bad_option(name: str, extra: List[str], words: str) -> Case:
    def run(tmp: str) -> None:
        logdir = os.path.join(tmp, "runs")
        code, err = cli(run_args(logdir, "bad", 50, 50, 50, *extra), in_process=IN_PROCESS)
        expect_error_line(code, err, words)
        check(not os.path.exists(logdir), "a run directory was created before the options were refused")

    return Case(name, "tdmpc-prune train " + " ".join(extra), f"exit 2, one line: {words}", run)


def case_logdir_file(tmp: str) -> None:
    path = os.path.join(tmp, "runs.txt")
    open(path, "w").write("keep me")
    code, err = cli(run_args(path, "f"))
    expect_error_line(code, err, "cannot create the run directory")
    check("Not a directory" in err and open(path).read() == "keep me", err)


def _unwritable(tmp: str) -> tuple:
    if os.geteuid() != 0:
        path = os.path.join(tmp, "readonly")
        os.mkdir(path, 0o555)
        return path, "Permission denied"
    return "/sys/kernel", "Operation not permitted"  # root may write anywhere a mode allows


def case_logdir_unwritable(tmp: str) -> None:
    path, reason = _unwritable(tmp)
    code, err = cli(run_args(path, "ro"))
    expect_error_line(code, err, "cannot create the run directory")
    check(reason in err, err)


def case_lock(tmp: str) -> None:
    from tdmpc_prune.tdmpc2.rundir import LOCK, RunLock

    args = run_args(tmp, "shared", 100_000, 100_000, 100_000)
    directory = run_dir(tmp, "shared")
    first = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None:
            lock = os.path.join(directory, LOCK)
            if os.path.exists(lock) and open(lock).read().strip() == str(first.pid):
                break
            time.sleep(0.05)
        check(first.poll() is None, "the first run did not start")
        code, err = cli(args)
        expect_error_line(code, err, f"is in use by another live run (pid {first.pid})")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with RunLock(directory):  # kill -9 released it
        pass


def _limit(size: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def case_disk_full(tmp: str) -> None:
    first = train_in_process(run_args(tmp, "full", 100, 100, 100))
    good = open(first.checkpoint_path, "rb").read()
    code, err = cli(run_args(tmp, "full", 300, 100, 100, "resume=true"), preexec_fn=_limit(len(good) + 512))
    expect_error_line(code, err, "could not write the checkpoint")
    check("the checkpoint of step 100 is kept" in err, err)
    check(open(first.checkpoint_path, "rb").read() == good, "the last good checkpoint changed")
    check(not glob.glob(os.path.join(first.directory, "*.tmp")), "a partial .tmp was left behind")


def damaged_checkpoint(kind: str, words: str) -> Case:
    def run(tmp: str) -> None:
        import torch

        first = train_in_process(run_args(tmp, "dmg"))
        good = open(first.checkpoint_path, "rb").read()
        if kind == "truncated":
            open(first.checkpoint_path, "wb").write(good[: len(good) // 2])
        elif kind == "empty":
            open(first.checkpoint_path, "wb").write(b"")
        else:
            torch.save({"model": torch.zeros(2)}, first.checkpoint_path)
        damaged = open(first.checkpoint_path, "rb").read()
        code, err = cli(run_args(tmp, "dmg", 100, 50, 50, "resume=true"))
        expect_error_line(code, err, words)
        check(open(first.checkpoint_path, "rb").read() == damaged, "the damaged checkpoint was changed")

    return Case(f"{kind} checkpoint on resume", f"resume=true over a {kind} checkpoint.pt", f"exit 2, one line: {words}", run)


def case_no_checkpoint(tmp: str) -> None:
    code, err = cli(run_args(tmp, "none", 50, 50, 50, "resume=true"), in_process=IN_PROCESS)
    expect_error_line(code, err, "resume=true but there is no checkpoint")


def case_overwrite(tmp: str) -> None:
    first = train_in_process(run_args(tmp, "keep"))
    good = open(first.checkpoint_path, "rb").read()
    code, err = cli(run_args(tmp, "keep", 100), in_process=IN_PROCESS)
    expect_error_line(code, err, "already holds a run")
    check(open(first.checkpoint_path, "rb").read() == good, "the first run's checkpoint changed")


def case_dense_resumed_with_prune(tmp: str) -> None:
    first = train_in_process(run_args(tmp, "dense", 100, 100, 100))
    code, err = cli(run_args(tmp, "dense", 200, 100, 100, "resume=true", "--prune"), in_process=IN_PROCESS)
    expect_error_line(code, err, "was trained dense")


def kill_once_logged_past_checkpoint(proc: subprocess.Popen, directory: str, timeout: float = 300) -> None:
    """SIGKILL a training run as soon as its event files hold an evaluation after its checkpoint's step."""
    import torch

    from tdmpc_prune.tensorboard import logged_steps

    ckpt = os.path.join(directory, "checkpoint.pt")
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(ckpt):
            saved = torch.load(ckpt, weights_only=False)["counters"]["step"]
            evals = logged_steps(directory).get("eval/episode_reward", [])
            if evals and max(evals) > saved:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def case_kill_resume_tensorboard(tmp: str) -> None:
    import torch

    from tdmpc_prune.tensorboard import logged_steps

    args = run_args(tmp, "tb", 300, 50, 100)
    directory = run_dir(tmp, "tb")
    ckpt = os.path.join(directory, "checkpoint.pt")
    proc = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_once_logged_past_checkpoint(proc, directory)
    check(proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()[-300:]!r}")
    saved = torch.load(ckpt, weights_only=False)["counters"]["step"]
    check(max(logged_steps(directory)["eval/episode_reward"]) > saved, "nothing was logged past the checkpoint")
    resumed = train_in_process(args + ["resume=true"])
    check(resumed.step == 300, f"resumed run ended at {resumed.step}")
    by_tag = each_step_once(directory)
    check(by_tag["eval/episode_reward"] == list(range(0, 301, 50)), f"eval steps {by_tag['eval/episode_reward']}")


def case_no_double_writes(tmp: str) -> None:
    prune = ["--prune", "prune.schedule=iterative", "prune.start=60", "prune.end=120", "prune.iterations=2", "prune.l1=1e-4"]
    trainer = train_in_process(run_args(tmp, "once", 150, 50, 150, *prune))
    each_step_once(trainer.directory)


def api_error(name: str, how: str, words: str, fn: Callable[[], None], error: str = "PruneError") -> Case:
    def run(tmp: str) -> None:
        import tdmpc_prune

        cls = getattr(tdmpc_prune, error)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
        except cls as e:
            check(words in str(e) and "\n" not in str(e), f"{words!r} not in {str(e)!r}")
            return
        raise Failed("no error was raised")

    return Case(name, how, f"{error}: {words}", run)


def _tied() -> None:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from tdmpc_prune import Pruner

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.mid = nn.Linear(6, 16), nn.Linear(16, 16)
            self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

        def forward(self, x):
            h = torch.relu(self.mid(torch.relu(self.enc(x))))
            return F.linear(h, self.enc.weight.t()), self.head(h)

    model = Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        Pruner(model, components={"enc": "enc", "mid": "mid", "head": "head"}, example_inputs=(torch.randn(4, 6),),
               coupling="prune")
    finally:
        check(all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the model was changed")


def _world_model():
    import torch.nn as nn

    from tdmpc_prune import Pruner

    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    import torch

    return model, Pruner(model, components={"model": ""}, example_inputs=(torch.randn(3, 4),))


def _foreign_optimizer() -> None:
    import torch
    import torch.nn as nn

    _, pruner = _world_model()
    pruner.attach(torch.optim.Adam(nn.Linear(2, 2).parameters()), total_steps=10)


def _unattached_state() -> None:
    import torch

    model, pruner = _world_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    pruner.prune_to()


def _misspelt_exclude() -> None:
    import torch
    import torch.nn as nn

    from tdmpc_prune import Pruner

    Pruner(nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2)), components={"model": ""},
           example_inputs=(torch.randn(3, 4),), exclude=["O"])


def _sb3(**kwargs) -> Callable[[], None]:
    def fn() -> None:
        from tdmpc_prune.sb3 import PruningCallback

        PruningCallback(**kwargs)

    return fn


CASES: List[Case] = [
    bad_option("negative grad clip", ["grad_clip_norm=-1"], "grad_clip_norm=-1.0: must be a finite number > 0"),
    bad_option("tau above 1", ["tau=5"], "tau=5.0: must be a finite number in (0, 1]"),
    bad_option("tau 0", ["tau=0"], "tau=0.0: must be a finite number in (0, 1]"),
    bad_option("negative seed steps", ["seed_steps=-5"], "seed_steps=-5: must be an integer >= 0"),
    bad_option("min_std above max_std", ["min_std=3"], "min_std must be <= max_std"),
    bad_option("discount_min above discount_max", ["discount_min=0.999"], "discount_min must be <= discount_max"),
    bad_option("negative seed", ["seed=-1"], "seed=-1: must be an integer >= 0"),
    bad_option("zero threads", ["threads=0"], "threads=0: must be an integer >= 1"),
    bad_option("negative lr", ["lr=-1"], "lr=-1.0: must be a finite number > 0"),
    bad_option("nan lr", ["lr=nan"], "lr=nan: must be a finite number > 0"),
    bad_option("infinite coefficient", ["consistency_coef=inf"], "consistency_coef=inf: must be a finite number >= 0"),
    bad_option("buffer too small", ["buffer_size=20"], "buffer_size=20 cannot hold one episode"),
    bad_option("episode shorter than horizon", ["episode_length=2", "horizon=3"], "shorter than the planning horizon"),
    bad_option("exp_name with a slash", ["exp_name=a/b"], "a run name is one directory name"),
    bad_option("not an integer", ["steps=many"], "steps='many': expected an integer"),
    bad_option("unknown key", ["stepz=10"], "unknown override key 'stepz'. Did you mean 'steps'"),
    bad_option("infinite prior strength", ["--prune", "prune.prior_strength=inf"], "prior_strength=inf: must be a finite number > 0"),
    bad_option("infinite l1", ["--prune", "prune.l1=inf"], "l1=inf: must be a finite number >= 0"),
    bad_option("sparsity 1.5", ["--prune", "prune.sparsity=1.5"], "sparsity must be a fraction in [0, 1)"),
    bad_option("end before start", ["--prune", "prune.start=100", "prune.end=50"], "end (50) comes before start (100)"),
    bad_option("posterior decay 0", ["--prune", "prune.posterior_decay=0"], "posterior_decay=0.0: must be a finite number in (0, 1]"),
    bad_option("negative prune seed", ["--prune", "prune.seed=-1"], "seed=-1: must be an integer >= 0"),
    bad_option("misspelt prune option", ["--prune", "prune.sparsty=0.5"], "Did you mean 'sparsity'"),
    bad_option("misspelt exclude", ["--prune", "prune.exclude=[_dynamic.0]"], "exclude entry '_dynamic.0' matches no module"),
    bad_option("misspelt budget", ["--prune", "prune.budgets.dynamic=0.3"], "budget for unknown component 'dynamic'"),
    Case("logdir is a file", "logdir=<a regular file>", "exit 2, one line: cannot create the run directory ... Not a directory", case_logdir_file),
    Case("logdir not writable", "logdir=<a directory this user cannot write>", "exit 2, one line: cannot create the run directory", case_logdir_unwritable),
    Case("second live run (lock)", "two tdmpc-prune train on one run directory; then kill -9 the first",
         "exit 2, one line naming the live pid; the lock is free after kill -9", case_lock),
    Case("disk full during checkpoint", "RLIMIT_FSIZE just above the last checkpoint, resume=true",
         "exit 2, one line; the last good checkpoint byte-identical; no .tmp", case_disk_full),
    damaged_checkpoint("truncated", "cannot be read"),
    damaged_checkpoint("empty", "is empty (0 bytes)"),
    damaged_checkpoint("foreign", "is not a tdmpc-prune training checkpoint"),
    Case("resume without checkpoint", "resume=true on a new directory", "exit 2, one line: no checkpoint", case_no_checkpoint),
    Case("fresh run over a run", "the same command twice without resume=true", "exit 2, one line; the first checkpoint kept", case_overwrite),
    Case("dense run resumed with --prune", "resume=true --prune over a dense checkpoint", "exit 2, one line: was trained dense",
         case_dense_resumed_with_prune),
    Case("kill -9 then resume: TensorBoard", "kill -9 after events past the checkpoint, resume=true",
         "every tag's steps strictly increasing; evals at 0, 50, ..., 300", case_kill_resume_tensorboard),
    Case("uninterrupted run: no double writes", "a pruning run with an eval, events and a burst of seed updates",
         "no tag written twice at one step", case_no_double_writes),
    api_error("tied weight with coupling=prune", "Pruner on a decoder reading enc.weight.t(), coupling=prune",
              "cannot be pruned consistently", _tied),
    api_error("attach: optimizer of another model", "pruner.attach(Adam(other.parameters()))", "holds none of the model's parameters",
              _foreign_optimizer),
    api_error("prune_to: unattached optimizer state", "Adam stepped on the model, never attached; prune_to()",
              "an optimizer the pruner is not attached to", _unattached_state),
    api_error("Pruner: misspelt exclude", "exclude=['O'] on nn.Sequential", "exclude entry 'O' matches no module", _misspelt_exclude),
    api_error("SB3 callback: log_freq 0", "PruningCallback(log_freq=0)", "log_freq=0: must be an integer >= 1", _sb3(log_freq=0),
              "PruneConfigError"),
    api_error("SB3 callback: heatmap not a bool", "PruningCallback(heatmap='no')", "heatmap='no': expected a boolean",
              _sb3(heatmap="no"), "PruneConfigError"),
    api_error("SB3 callback: infinite l1", "PruningCallback(l1=inf)", "l1=inf", _sb3(l1=math.inf), "PruneConfigError"),
]


def main() -> None:
    global IN_PROCESS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", default="", help="run only cases whose name contains this")
    parser.add_argument("--in-process", action="store_true", help="run CLI bad-input cases through cli.main")
    args = parser.parse_args()
    IN_PROCESS = args.in_process
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its notes on the purged steps of a resumed run
    start = time.time()
    passed, failures = 0, []
    for case in [c for c in CASES if args.k.lower() in c.name.lower()]:
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
            try:
                case.run(tmp)
                passed += 1
                print(f"PASS  {case.name} ({time.time() - t0:.1f}s): {case.how} -> {case.expected}", flush=True)
            except Exception as e:  # a failed expectation or anything unexpected is a failed case
                failures.append(case.name)
                print(f"FAIL  {case.name} ({time.time() - t0:.1f}s): {case.how} -> expected {case.expected}; "
                      f"got {type(e).__name__}: {str(e)[:300]}", flush=True)
    print(json.dumps({"passed": passed, "failed": len(failures), "cases": passed + len(failures),
                      "seconds": round(time.time() - start, 1), "failures": failures}))


if __name__ == "__main__":
    main()
