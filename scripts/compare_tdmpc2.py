#!/usr/bin/env python
"""TD-MPC2 grid on top of `tdmpc-prune train -m`: dense vs criteria x sparsities x seeds on one task.

Each cell (dense, or one criterion at one sparsity) is one hydra sweep over the seeds it still
misses (`--launcher basic|joblib|slurm|ray_cluster`, see tdmpc_prune/tdmpc2/conf/hydra/launcher);
each run trains in its own directory under `--logdir` (named after its overrides), so TensorBoard
shows the whole grid as one tree.  Every finished run appends one row to `--csv` in the schema of
`scripts/results.py` (protocol `during`: pruned gradually while training; `seconds` is the run's
training wall-clock), so the grid resumes; a row's `command` re-runs that row alone and prints JSON
with its `eval_return` last.  `--report` writes the rliable table (IQM of the dense-normalised
return, 95 % CIs), the wall-clock of each pruned run against its dense twin, and a plot of eval
return vs env steps beside the official TD-MPC2 and SAC curves.

    python scripts/compare_tdmpc2.py --task cartpole-balance --steps 100000 --seeds 1-3 \\
        --criteria bayes,fisher,magnitude,random --sparsities 0.5,0.75 --launcher joblib --jobs 2 \\
        --csv docs/compare_tdmpc2.csv --logdir runs/compare
    python scripts/compare_tdmpc2.py --report docs/compare_tdmpc2.csv --logdir runs/compare
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import results  # noqa: E402
from plot_tdmpc2 import REFERENCE, draw_reference, read_eval  # noqa: E402
from sensitivity import parse_seeds  # noqa: E402

CRITERIA = ["bayes", "fisher", "magnitude", "random"]
ORDER = ["dense", "bayes", "fisher", "grad", "combined", "taylor", "magnitude", "random"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib"], "slurm": ["hydra/launcher=slurm"],
             "ray_cluster": ["hydra/launcher=ray_cluster"]}


def base_tokens(args: argparse.Namespace) -> List[str]:
    """The `tdmpc-prune train` overrides every run of the grid shares."""
    return [f"task={args.task}", f"model_size={args.model_size}", f"steps={args.steps}", f"seed_steps={args.seed_steps}",
            f"eval_freq={args.eval_freq}", f"eval_episodes={args.episodes}", f"threads={args.threads}", "progress=false",
            f"logdir={args.logdir}", *args.set]


def cell_tokens(criterion: str, sparsity: float) -> List[str]:
    if criterion == "dense":
        return []
    # every update observed, as when the committed results were measured
    return ["--prune", f"prune.criterion={criterion}", f"prune.sparsity={sparsity:g}", "prune.every_n_updates=1"]


def cells(args: argparse.Namespace) -> List[Tuple[str, float]]:
    out = [] if args.no_dense else [("dense", 0.0)]
    return out + [(c, s) for s in args.sparsities for c in args.criteria]


def l1_of(args: argparse.Namespace) -> float:
    given = [t.split("=", 1)[1] for t in args.set if t.startswith("prune.l1=")]
    return float(given[-1]) if given else 0.0


def outcome(directory: str, steps: int) -> Optional[Dict[str, Any]]:
    """eval_return at the last step, training seconds and cost ratios of a finished run; None if unfinished."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    checkpoint = os.path.join(directory, "checkpoint.pt")
    if not os.path.exists(checkpoint):
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["counters"]["step"] < steps:
        return None
    curve = read_eval(directory)
    ea = EventAccumulator(directory, size_guidance={"scalars": 0})
    ea.Reload()
    last = {t: ea.Scalars(t)[-1].value for t in ("prune/params_ratio", "prune/flops_ratio", "prune/plan_ms") if t in ea.Tags()["scalars"]}
    return {"eval_return": curve[-1][1], "seconds": float(state["counters"]["elapsed"]), "directory": directory,
            "params_ratio": last.get("prune/params_ratio"), "flops_ratio": last.get("prune/flops_ratio"),
            "plan_ms": last.get("prune/plan_ms")}


SETTINGS = ("--model-size", "--steps", "--seed-steps", "--eval-freq", "--episodes", "--set")  # change a run's result, are not in its row's key


def row_command(args: argparse.Namespace, seed: int, criterion: str, sparsity: float) -> str:
    what = "--criteria none" if criterion == "dense" else f"--criteria {criterion} --sparsities {sparsity:g} --no-dense"
    extra = "".join(f" --set {shlex.quote(t)}" for t in args.set)
    return (f"python scripts/compare_tdmpc2.py --task {args.task} --model-size {args.model_size} --steps {args.steps} "
            f"--seed-steps {args.seed_steps} --eval-freq {args.eval_freq} --episodes {args.episodes} --seeds {seed} "
            f"{what}{extra}")


def sweep(args: argparse.Namespace, seeds: Sequence[int], tokens: List[str]) -> None:
    """One hydra multirun over `seeds` (runs already started resume instead)."""
    from tdmpc_prune.tdmpc2.train import run_directory, train

    fresh = [s for s in seeds if not os.path.exists(os.path.join(run_directory([*tokens, f"seed={s}"]), "checkpoint.pt"))]
    for s in (s for s in seeds if s not in fresh):  # a killed run of an earlier grid: continue it
        train([*tokens, f"seed={s}", "resume=true"])
    if fresh:
        launcher = LAUNCHERS[args.launcher] + ([f"hydra.launcher.n_jobs={args.jobs}"] if args.launcher == "joblib" else [])
        train(["-m", *launcher, *tokens, f"seed={','.join(map(str, fresh))}"])


def grid(args: argparse.Namespace) -> None:
    from tdmpc_prune.tdmpc2.train import run_directory

    csv_path = Path(args.csv) if args.csv else None

    def rows_of(criterion: str, sparsity: float) -> Dict[int, Dict[str, Any]]:
        return {seed: dict(algo="tdmpc2", env=args.task, criterion=criterion, sparsity=sparsity, seed=seed, l1=l1_of(args),
                           protocol="during") for seed in args.seeds}

    if csv_path:
        planned = ((row, row_command(args, seed, c, s)) for c, s in cells(args) for seed, row in rows_of(c, s).items())
        results.refuse_other_settings(csv_path, planned, lambda row: SETTINGS)
    done = results.done(csv_path) if csv_path else set()
    commit = results.commit_of(ROOT)
    last: Optional[Dict[str, Any]] = None
    for criterion, sparsity in cells(args):
        rows = rows_of(criterion, sparsity)
        todo = [seed for seed, row in rows.items() if results.key(row) not in done]
        if not todo:
            continue
        tokens = base_tokens(args) + cell_tokens(criterion, sparsity)
        unfinished = [s for s in todo if outcome(run_directory([*tokens, f"seed={s}"]), args.steps) is None]
        if unfinished:
            sweep(args, unfinished, tokens)
        for seed in todo:
            out = outcome(run_directory([*tokens, f"seed={seed}"]), args.steps)
            print(f"[compare_tdmpc2] seed {seed} {criterion:<9} {sparsity:.2f}: return {out['eval_return']:7.1f} "
                  f"({out['seconds']:.0f} s)", flush=True)
            last = results.record(csv_path, rows[seed], out, commit, row_command(args, seed, criterion, sparsity))
    results.print_last(last)


# ------------------------------------------------------------------------------------ report
def seconds_table(mine: Sequence[Dict[str, str]], dense_seconds: Dict[int, float]) -> List[str]:
    """Wall-clock of each pruned run over its dense twin (same seed): mean and range over seeds."""
    import numpy as np

    lines = ["| criterion | sparsity | wall-clock / dense twin: mean [min, max] | seeds |", "|---|---:|---|---:|"]
    for (criterion, sparsity), by_seed in sorted(results.cells([r for r in mine if r["criterion"] != "dense"], ["criterion", "sparsity"]).items()):
        rows = [r for r in mine if r["criterion"] == criterion and r["sparsity"] == sparsity and int(r["seed"]) in dense_seconds]
        ratio = np.array([float(r["seconds"]) / dense_seconds[int(r["seed"])] for r in rows])
        if len(ratio):
            lines.append(f"| {criterion} | {float(sparsity):.0%} | {ratio.mean():.2f} [{ratio.min():.2f}, {ratio.max():.2f}] | {len(ratio)} |")
    return lines


def plot_curves(mine: Sequence[Dict[str, str]], task: str, reference: str, path: Path) -> None:
    """Eval return vs env steps (mean over seeds) of every cell, beside the official TD-MPC2 and SAC curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    max_step = 0
    labels = sorted({(r["criterion"], float(r["sparsity"])) for r in mine}, key=lambda c: (ORDER.index(c[0]) if c[0] in ORDER else 99, c[1]))
    for i, (criterion, sparsity) in enumerate(labels):
        curves = [dict(read_eval(r["directory"])) for r in mine
                  if r["criterion"] == criterion and float(r["sparsity"]) == sparsity and os.path.isdir(r.get("directory") or "")]
        if not curves:
            continue
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [np.mean([c[s] for c in curves]) for s in steps]
        max_step = max(max_step, steps[-1])
        name = "dense" if criterion == "dense" else f"{criterion} {sparsity:.0%}"
        ax.plot(steps, mean, "o-", ms=3, color=f"C{i}", label=f"ours, {name} (mean of {len(curves)} seeds)")
    for algo, color, marker in (("tdmpc2", "k", "s"), ("sac", "0.5", "^")):
        try:
            draw_reference(ax, reference, algo, task, max_step, color=color, marker=marker)
        except SystemExit as e:  # a task without an official curve of this algorithm
            print(e)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval episode return")
    ax.set_title(f"TD-MPC2 {task}: pruned while training vs dense")
    ax.set_ylim(0, 1050)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(paths: List[str], out_dir: Path, logdir: Optional[str], reference: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    summary: Dict[str, Any] = {}
    for algo, env, mine in results.by_task(paths):
        if algo != "tdmpc2":
            continue
        for r in mine:  # where the row's run lies under --logdir (its command's options name it)
            r["directory"] = _directory_of(r, logdir) if logdir else None
        dense = {int(r["seed"]): float(r["eval_return"]) for r in mine if r["criterion"] == "dense"}
        dense_seconds = {int(r["seed"]): float(r["seconds"]) for r in mine if r["criterion"] == "dense"}
        pruned = [r for r in mine if r["criterion"] != "dense"]
        if dense and pruned:
            title = (f"### TD-MPC2 {env}, pruned while training: IQM over seeds of the return / dense return "
                     "(same seed); 95 % stratified-bootstrap CI")
            part, summary[f"{algo}/{env}"] = results.section(pruned, dense, lambda r: r["criterion"], ORDER, title,
                                                             out_dir / f"compare_tdmpc2_{env}.png")
            lines += part + seconds_table(mine, dense_seconds) + [""]
        if logdir:
            plot_curves(mine, env, reference, out_dir / f"compare_tdmpc2_{env}_curves.png")
            lines += [f"![eval return vs env steps](compare_tdmpc2_{env}_curves.png)", ""]
    results.write_report(lines, summary, out_dir / "compare_tdmpc2.md")


def _directory_of(row: Dict[str, str], logdir: str) -> Optional[str]:
    """The run directory of a CSV row: its command's options, with --logdir in place of the temporary one."""
    from tdmpc_prune.tdmpc2.train import run_directory

    argv = shlex.split(row["command"])[2:]
    args = parse_args(argv + ["--logdir", logdir])
    tokens = base_tokens(args) + cell_tokens(row["criterion"], float(row["sparsity"])) + [f"seed={row['seed']}"]
    directory = run_directory(tokens)
    return directory if os.path.isdir(directory) else None


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cartpole-balance")
    ap.add_argument("--model-size", default="cpu")
    ap.add_argument("--steps", type=int, default=100_000, help="environment steps of every run")
    ap.add_argument("--seed-steps", type=int, default=1000, help="environment steps of random actions before updates")
    ap.add_argument("--eval-freq", type=int, default=10_000)
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("1-3"))
    ap.add_argument("--criteria", type=lambda s: [] if s == "none" else s.split(","), default=CRITERIA)
    ap.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.75])
    ap.add_argument("--no-dense", action="store_true", help="skip the dense rows")
    ap.add_argument("--set", action="append", default=[], help="one more `tdmpc-prune train` override for every run (repeatable)")
    ap.add_argument("--launcher", choices=list(LAUNCHERS), default="basic")
    ap.add_argument("--jobs", type=int, default=2, help="parallel runs of the joblib launcher")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", default=None, help="append rows here (resumes: rows already present are skipped)")
    ap.add_argument("--logdir", default=str(Path(tempfile.gettempdir()) / "tdmpc_prune_compare_tdmpc2"))
    ap.add_argument("--report", nargs="*", default=None, help="CSV files to aggregate (no training)")
    ap.add_argument("--reference", default=REFERENCE)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.report is not None:
        report(args.report, Path(args.out), args.logdir if os.path.isdir(args.logdir) else None, args.reference)
        return
    grid(args)


if __name__ == "__main__":
    main()
