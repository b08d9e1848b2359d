#!/usr/bin/env python
"""During-training grid: SB3 agents pruned gradually while they train, against dense twins.

Rows: dense; the full method (a gradient criterion + the cosine-scheduled group lasso, `--l1`);
its `l1=0` ablation; and the baselines magnitude, taylor and random (l1=0), each at every
`--sparsities` value, over `--seeds`.  Gradual schedule from 10 % to 60 % of the training span
(10 events), then 40 % of the run to recover; evaluation: `--episodes` deterministic episodes.

Every finished run appends one row to `--csv` (`scripts/results.py` schema) so the grid resumes;
`command` re-runs that row alone and prints JSON with its `eval_return` last.  TensorBoard events
of every run land under `--logdir` (one `tb_log_name` per run) for a side-by-side look.

    python scripts/compare_sb3.py --algo ppo --env HalfCheetah-v5 --seeds 0-9 --csv docs/during_training_ppo.csv
    python scripts/compare_sb3.py --report docs/during_training_ppo.csv
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import results  # noqa: E402
import sb3_tasks  # noqa: E402
from sensitivity import parse_seeds  # noqa: E402

SCHEDULE = dict(schedule="gradual", start=0.1, end=0.6, iterations=10)
BASELINES = ["magnitude", "taylor", "random"]
ORDER = ["dense", "bayes", "fisher", "grad", "combined", "taylor", "magnitude", "random"]


def cells(args: argparse.Namespace) -> List[Tuple[str, float, float]]:
    """(criterion, sparsity, l1) of every pruned run; dense is (dense, 0, 0)."""
    out: List[Tuple[str, float, float]] = [("dense", 0.0, 0.0)]
    for s in args.sparsities:
        for c in args.method:
            out += [(c, s, l1) for l1 in args.l1s]
        out += [(c, s, 0.0) for c in args.baselines]
    return list(dict.fromkeys(out))


def runs(args: argparse.Namespace) -> List[Tuple[int, str, float, float]]:
    """(seed, criterion, sparsity, l1) in the order they run: seed-major, so a grid cut short leaves whole seeds."""
    return [(seed, *cell) for seed in args.seeds for cell in cells(args) if not (cell[0] == "dense" and args.no_dense)]


def run_one(args: argparse.Namespace, seed: int, criterion: str, sparsity: float, l1: float) -> Dict[str, Any]:
    import torch as th

    from tdmpc_prune.sb3 import get_pruner, wrap

    th.manual_seed(seed)
    model, venv = sb3_tasks.make_model(args.algo, args.env, seed, zoo=args.zoo)
    name = "dense" if criterion == "dense" else f"{criterion}_{round(sparsity * 100)}_l1-{l1:g}"
    model.tensorboard_log = args.logdir
    if criterion != "dense":
        model = wrap(model, criterion=criterion, sparsity=sparsity, l1=l1, seed=seed, heatmap=False, log_freq=20_000,
                     every_n_updates=1, **SCHEDULE)  # every update observed, as when the committed results were measured
    t0 = time.time()
    model.learn(args.steps, tb_log_name=f"{args.algo}_{args.env}_{name}_s{seed}")
    seconds = time.time() - t0
    ret = sb3_tasks.evaluate(model, args.env, seed, venv, args.episodes)
    out: Dict[str, Any] = {"eval_return": ret, "seconds": seconds}
    if criterion != "dense":
        m = get_pruner(model).metrics()
        out.update(params_ratio=m["params_ratio"], flops_ratio=m.get("flops_ratio"))
    return out


SETTINGS = ("--steps", "--episodes")  # change a run's result, are not in its row's key


def row_command(args: argparse.Namespace, seed: int, criterion: str, sparsity: float, l1: float) -> str:
    if criterion == "dense":
        what = "--method dense --baselines none --sparsities 0"
    else:
        what = f"--method {criterion} --l1s {l1:g} --baselines none --sparsities {sparsity:g} --no-dense"
    return (
        f"python scripts/compare_sb3.py --algo {args.algo} --env {args.env} --steps {args.steps} --seeds {seed} {what} "
        f"--episodes {args.episodes}{' --zoo' if args.zoo else ''}"
    )


def grid(args: argparse.Namespace) -> None:
    say = sb3_tasks.progress_printer("compare_sb3")
    csv_path = Path(args.csv) if args.csv else None
    algo = args.algo + ("-zoo" if args.zoo else "")
    rows = [(dict(algo=algo, env=args.env, criterion=c, sparsity=s, seed=seed, l1=l1, protocol="during"), (seed, c, s, l1)) for seed, c, s, l1 in runs(args)]
    if csv_path:
        results.refuse_other_settings(csv_path, ((row, row_command(args, *run)) for row, run in rows), lambda row: SETTINGS)
    done = results.done(csv_path) if csv_path else set()
    commit = results.commit_of(ROOT)
    last: Optional[Dict[str, Any]] = None
    for row, (seed, criterion, sparsity, l1) in rows:
        if results.key(row) in done:
            continue
        out = run_one(args, seed, criterion, sparsity, l1)
        say(f"seed {seed} {criterion:<9} {sparsity:.2f} l1={l1:g}: return {out['eval_return']:9.1f} ({out['seconds']:.0f} s)")
        last = results.record(csv_path, row, out, commit, row_command(args, seed, criterion, sparsity, l1))
    results.print_last(last)


def ablations(rows: List[Dict[str, str]]) -> List[str]:
    """The `l1=0` label of every criterion that also ran with the group lasso (its ablation)."""
    return sorted({f"{r['criterion']} l1=0" for r in rows if float(r["l1"]) > 0})


def dense_twins(paths: List[str]) -> Dict[Tuple[str, str], Dict[int, float]]:
    """Dense returns by (algo, env) and seed from other grids' CSVs: the sensitivity grid's observed
    agents train exactly as dense ones (observing changes no weight; tests/test_evidence_scripts.py)."""
    out: Dict[Tuple[str, str], Dict[int, float]] = {}
    for algo, env, rows in results.by_task(paths):
        out[(algo, env)] = {int(r["seed"]): float(r["eval_return"]) for r in rows if r["criterion"] == "dense" and r["protocol"] == "dense"}
    return out


def report(paths: List[str], out_dir: Path, dense_from: Optional[List[str]] = None, seeds: Optional[List[int]] = None) -> None:
    """Aggregate `paths` into `<out_dir>/<first CSV's stem>.md` (and one plot per task): the rliable
    table, and the probability of improvement over magnitude, random and each lassoed criterion's `l1=0` ablation.
    Seeds without a dense row of their own take their dense twin from the `dense_from` CSVs; with
    `seeds`, only those seeds' rows count (e.g. the seeds a grid in progress has completed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(paths[0]).stem
    twins = dense_twins(dense_from or [])
    lines: List[str] = []
    summary: Dict[str, Any] = {}
    for algo, env, mine in results.by_task(paths):
        mine = [r for r in mine if seeds is None or int(r["seed"]) in seeds]
        dense = {int(r["seed"]): float(r["eval_return"]) for r in mine if r["criterion"] == "dense"}
        pruned = [r for r in mine if r["criterion"] != "dense"]
        pruned_seeds = {int(r["seed"]) for r in pruned}
        borrowed = {s: v for s, v in twins.get((algo, env), {}).items() if s not in dense and s in pruned_seeds}
        dense.update(borrowed)
        if not dense or not pruned:
            continue
        title = (f"### {algo.upper()} {env}, pruned while training: IQM of the dense-normalised return "
                 "(R - R_random) / (R_dense - R_random), same seed; 95 % CI")
        label = lambda r: f"{r['criterion']} l1={float(r['l1']):g}"  # noqa: E731
        part, summary[f"{algo}/{env}"] = results.section(pruned, dense, label, ORDER, title, out_dir / f"{name}_{algo}_{env}.png",
                                                         references=tuple(dict.fromkeys(("magnitude l1=0", "random l1=0", *ablations(pruned)))))
        if borrowed:
            part += [f"Dense twins of seeds {', '.join(map(str, sorted(borrowed)))} from {', '.join(dense_from or [])} "
                     "(observed dense agents, trained exactly as dense).", ""]
        lines += part
    results.write_report(lines, summary, out_dir / f"{name}.md")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", choices=["ppo", "sac"], default="ppo")
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--zoo", action="store_true", help="PPO with rl-zoo3's tuned settings instead of SB3's defaults")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: PPO 1M, SAC 100k)")
    ap.add_argument("--seeds", type=parse_seeds, default=None, help="default 0-9; with --report, only these seeds' rows (default: all)")
    ap.add_argument("--method", type=lambda s: [] if s in ("dense", "none") else s.split(","), default=["bayes"],
                    help="criteria run with the group lasso at each --l1s value")
    ap.add_argument("--l1s", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 1e-5],
                    help="group-lasso strengths of the method rows (0 is the ablation)")
    ap.add_argument("--baselines", type=lambda s: [] if s == "none" else s.split(","), default=BASELINES)
    ap.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",") if float(x) > 0], default=[0.5, 0.75, 0.9])
    ap.add_argument("--no-dense", action="store_true", help="skip the dense row")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--logdir", default=str(Path(tempfile.gettempdir()) / "tdmpc_prune_compare_sb3"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", nargs="*", default=None, help="CSV files to aggregate (no training)")
    ap.add_argument("--dense-from", nargs="*", default=None,
                    help="report: dense twins for seeds without a dense row, from a sensitivity CSV (its observed dense agents)")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    if args.report is not None:
        report(args.report, Path(args.out), args.dense_from, args.seeds)
        return
    args.seeds = args.seeds if args.seeds is not None else parse_seeds("0-9")
    args.steps = args.steps or sb3_tasks.default_steps(args.algo)
    import torch

    torch.set_num_threads(args.threads)
    grid(args)


if __name__ == "__main__":
    main()
