"""TD-MPC2 for the sensitivity protocol (`scripts/sensitivity.py --algo tdmpc2 --env <dm-control task>`).

The observed dense agent is one `tdmpc-prune train` run with the pruner attached in observe-only
mode (`--prune prune.sparsity=0 prune.observe=[all]`: every criterion's statistics gathered from the
training gradients, nothing removed).  A cell reloads its checkpoint (the pruner's statistics with
it), prunes one-shot and evaluates with planning (`oneshot`) or with the policy prior alone
(`oneshot_prior`, `mpc=false`); `dense` / `dense_prior` are the unpruned references.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

PROTOCOLS = ["dense", "dense_prior", "oneshot", "oneshot_prior"]
DEFAULT_STEPS = 100_000
OBSERVER = ["--prune", "prune.sparsity=0", "prune.observe=[all]", "prune.l1=0"]


def tokens(task: str, steps: int, seed: int, workdir: str, extra: Sequence[str] = ()) -> List[str]:
    """`tdmpc-prune train` overrides of the observed dense run: the CPU preset, 1000 seed steps, one
    evaluation at the end; `extra` (key=value) replaces or adds any of them."""
    options = dict(task=task, model_size="cpu", steps=steps, seed_steps=1000, eval_freq=steps, eval_episodes=1,
                   progress="false", threads=1, logdir=workdir, seed=seed, exp_name="observed")
    options.update(t.split("=", 1) for t in extra)
    return [f"{k}={v}" for k, v in options.items()] + OBSERVER


def train_dense(task: str, steps: int, seed: int, workdir: str, extra: Sequence[str], say: Callable[[str], None]) -> float:
    """Train (or reuse) the observed dense agent; returns the training seconds (0 when reused)."""
    from tdmpc_prune.tdmpc2.train import run_directory, train

    args = tokens(task, steps, seed, workdir, extra)
    seconds_file = Path(run_directory(args)) / "train_seconds.txt"
    if seconds_file.exists():
        return 0.0
    resume = os.path.exists(os.path.join(run_directory(args), "checkpoint.pt"))
    say(f"seed {seed}: {'resuming' if resume else 'training'} the observed dense agent, {steps} steps")
    t0 = time.time()
    train(args + (["resume=true"] if resume else []))
    seconds = time.time() - t0
    seconds_file.write_text(f"{seconds:.1f}\n")
    return seconds


def load(task: str, steps: int, seed: int, workdir: str, extra: Sequence[str]):
    """The trainer of the observed run, rebuilt from its checkpoint with its pruner (and statistics)."""
    from tdmpc_prune.config import PruneConfig
    from tdmpc_prune.tdmpc2.config import parse_overrides
    from tdmpc_prune.tdmpc2.prune_callback import PruneCallback
    from tdmpc_prune.tdmpc2.train import build, resume_config, run_directory

    args = tokens(task, steps, seed, workdir, extra)
    directory = run_directory(args)
    cfg, state = resume_config(parse_overrides(args).cfg, [], directory)
    callback = PruneCallback(PruneConfig.from_dict(state["callbacks"]["prune"]["pruner"]["config"]), explicit=False)
    trainer = build(cfg, [callback], directory=None)
    trainer.load_state_dict(state)
    return trainer


def run_cell(task: str, steps: int, seed: int, workdir: str, extra: Sequence[str], criterion: str, sparsity: float,
             protocol: str, episodes: int, say: Callable[[str], None]) -> Dict[str, Any]:
    """One cell: prune the observed agent one-shot by `criterion` (unless dense) and evaluate it."""
    t0 = time.time()
    trainer = load(task, steps, seed, workdir, extra)
    info: Dict[str, Any] = {}
    if not protocol.startswith("dense"):
        pruner = trainer.callbacks[0].pruner
        pruner.use_criterion(criterion)
        report = pruner.prune_to(sparsity=sparsity)
        info = {"params_ratio": report["params_ratio"], "flops_ratio": report.get("flops_ratio")}
    trainer.agent.cfg.mpc = not protocol.endswith("_prior")  # the policy prior alone: no planning
    ret = trainer.evaluate(episodes)["episode_reward"]
    trainer.close()
    seconds = time.time() - t0
    trained = Path(trainer.directory) / "train_seconds.txt"
    if protocol == "dense" and trained.exists():  # the dense row carries the training time, as for SB3
        seconds += float(trained.read_text())
    say(f"seed {seed} {protocol:<13} {criterion:<9} {sparsity:.2f}: return {ret:7.1f}  ({seconds:.0f} s)")
    return {"eval_return": ret, "seconds": seconds, **info}
