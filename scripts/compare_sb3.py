#!/usr/bin/env python
"""Dense vs pruned SB3 runs: PPO on CartPole-v1 and SAC on Pendulum-v1 with rl-zoo3's tuned settings.

Every run writes TensorBoard events under one logdir (`--logdir`, one `tb_log_name` per run), so
`tensorboard --logdir runs/compare_sb3` shows the dense and pruned runs side by side.  Each
finished run appends one row to `<out>/compare_sb3.csv` (columns algo,env,criterion,sparsity,seed,
eval_return), so an interrupted grid resumes where it stopped; the markdown table and the PNG plot
(final evaluation return vs sparsity, one line per criterion) are rebuilt from the CSV.

    python scripts/compare_sb3.py                       # the full grid: every criterion x 50/75/90 % x 3 seeds
    python scripts/compare_sb3.py --plan recorded       # the reduced grid (see plan())
    python scripts/compare_sb3.py --jobs 2 --algos ppo  # two processes, PPO only
    python scripts/compare_sb3.py --report-only         # table + plot from the CSV
"""
from __future__ import annotations

import argparse
import csv
import itertools
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ["algo", "env", "criterion", "sparsity", "seed", "eval_return"]
ALL_CRITERIA = ["grad", "fisher", "bayes", "combined", "magnitude", "taylor", "random"]
# rl-zoo3's tuned hyperparameters (rl_zoo3/hyperparams/{ppo,sac}.yml)
SETUPS: Dict[str, Dict[str, Any]] = {
    "ppo": dict(
        env="CartPole-v1",
        n_envs=8,
        timesteps=100_000,
        kwargs=dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    ),
    # rl-zoo3 trains SAC for 20k steps; we stop at 10k (Pendulum is solved by then) to fit the CPU budget
    "sac": dict(env="Pendulum-v1", n_envs=1, timesteps=10_000, kwargs=dict(learning_rate=1e-3)),
}
BASELINES = ["bayes", "magnitude", "random"]
# the pruning schedule: gradual from 10 % to 60 % of the run, then 40 % of the run to recover
SCHEDULE = dict(schedule="gradual", start=0.1, end=0.6, iterations=10)


@dataclass(frozen=True)
class Run:
    algo: str
    criterion: str  # "dense" for the unpruned baseline
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        what = "dense" if self.criterion == "dense" else f"{self.criterion}_{int(round(self.sparsity * 100))}"
        return f"{self.algo}_{what}_s{self.seed}"

    def key(self) -> Tuple[str, str, float, int]:
        return (self.algo, self.criterion, round(self.sparsity, 4), self.seed)


def _schedule(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress: progress * start
    return value


def train_and_evaluate(run: Run, logdir: str, eval_episodes: int, timesteps: Optional[int]) -> float:
    """Train one run (dense or pruned) and return its mean deterministic evaluation return."""
    import torch as th
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from tdmpc_prune.sb3 import PruningCallback

    th.set_num_threads(1)
    setup = SETUPS[run.algo]
    algo = {"ppo": PPO, "sac": SAC}[run.algo]
    env = make_vec_env(setup["env"], n_envs=setup["n_envs"], seed=run.seed)
    kwargs = {k: _schedule(v) for k, v in setup["kwargs"].items()}
    model = algo("MlpPolicy", env, seed=run.seed, device="cpu", tensorboard_log=logdir, verbose=0, **kwargs)
    callback = None
    if run.criterion != "dense":
        callback = PruningCallback(criterion=run.criterion, sparsity=run.sparsity, seed=run.seed, log_freq=2000, **SCHEDULE)
    model.learn(timesteps or setup["timesteps"], callback=callback, tb_log_name=run.name)
    eval_env = make_vec_env(setup["env"], n_envs=1, seed=10_000 + run.seed)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    return float(mean)


def _worker(args: Tuple[Run, str, int, Optional[int]]) -> Tuple[Run, float, float]:
    run = args[0]
    t0 = time.time()
    ret = train_and_evaluate(*args)
    return run, ret, time.time() - t0


# ---------------------------------------------------------------------------------------- results
def read_rows(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [
            {**r, "sparsity": float(r["sparsity"]), "seed": int(r["seed"]), "eval_return": float(r["eval_return"])}
            for r in csv.DictReader(f)
        ]


def append_row(path: Path, run: Run, ret: float) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(COLUMNS)
        w.writerow([run.algo, SETUPS[run.algo]["env"], run.criterion, run.sparsity, run.seed, f"{ret:.2f}"])


def _cells(rows: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str, float], List[float]]:
    cells: Dict[Tuple[str, str, float], List[float]] = {}
    for r in rows:
        cells.setdefault((r["algo"], r["criterion"], r["sparsity"]), []).append(r["eval_return"])
    return cells


def markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Mean ± std of the evaluation return over seeds (n seeds), and % of the dense mean."""
    cells = _cells(rows)
    out = []
    for algo in sorted({r["algo"] for r in rows}):
        env = SETUPS[algo]["env"]
        sparsities = sorted({s for (a, c, s) in cells if a == algo and c != "dense"})
        dense = cells.get((algo, "dense", 0.0))
        base = float(np.mean(dense)) if dense else None
        out.append(f"**{algo.upper()} {env}** (dense: {_fmt(dense)})\n")
        out.append("| criterion | " + " | ".join(f"{int(round(s * 100))} %" for s in sparsities) + " |")
        out.append("|---|" + "---|" * len(sparsities))
        for crit in [c for c in ALL_CRITERIA if any((algo, c, s) in cells for s in sparsities)]:
            row = []
            for s in sparsities:
                vals = cells.get((algo, crit, s))
                pct = ""
                if vals and base is not None:  # % of dense for positive returns, the difference otherwise
                    pct = f" ({100 * np.mean(vals) / base:.0f} %)" if base > 0 else f" (Δ {np.mean(vals) - base:+.1f})"
                row.append(_fmt(vals) + pct)
            out.append(f"| {crit} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def _fmt(vals: Optional[List[float]]) -> str:
    if not vals:
        return "–"
    return f"{np.mean(vals):.1f} ± {np.std(vals):.1f} (n={len(vals)})"


def plot(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(rows)
    algos = sorted({r["algo"] for r in rows})
    fig, axes = plt.subplots(1, len(algos), figsize=(5.5 * len(algos), 4), squeeze=False)
    for ax, algo in zip(axes[0], algos):
        dense = cells.get((algo, "dense", 0.0))
        if dense:
            ax.axhline(np.mean(dense), color="black", ls="--", lw=1, label="dense")
        shown = [c for c in ALL_CRITERIA if any(a == algo and k == c for (a, k, _) in cells)]
        for i, crit in enumerate(shown):
            pts = sorted((s, v) for (a, c, s), v in cells.items() if a == algo and c == crit)
            shift = (i - (len(shown) - 1) / 2) * 0.6  # side by side, so equal returns stay visible
            xs = [100 * s + shift for s, _ in pts]
            ax.errorbar(xs, [np.mean(v) for _, v in pts], yerr=[np.std(v) for _, v in pts], marker="o", capsize=3, label=crit)
        ax.set_xticks(sorted({100 * s for (a, c, s) in cells if a == algo and c != "dense"}))
        ax.set_title(f"{algo.upper()} {SETUPS[algo]['env']}")
        ax.set_xlabel("sparsity (% of hidden channels removed)")
        ax.set_ylabel("final evaluation return (mean ± std over seeds)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(csv_path: Path, out: Path) -> None:
    rows = read_rows(csv_path)
    if not rows:
        print(f"no results in {csv_path}")
        return
    table = markdown(rows)
    (out / "compare_sb3.md").write_text(table + "\n")
    plot(rows, out / "compare_sb3.png")
    print(table)


# ---------------------------------------------------------------------------------------- main
def plan(
    name: str, algos: Sequence[str], seeds: Sequence[int], sac_seeds: Sequence[int], criteria: Sequence[str], sparsities: Sequence[float]
) -> List[Run]:
    """The runs, most informative first (dense, then 75 %).

    full (the default): every criterion at every sparsity.  recorded (a reduced grid sized for ~1.5 h
    on two shared cores): PPO every criterion at 75 % and bayes/magnitude/random at 50 and 90 %;
    SAC bayes/magnitude/random at every sparsity.
    """
    runs: List[Run] = []
    order = sorted(sparsities, key=lambda s: (s != 0.75, s))
    for algo in algos:
        algo_seeds = seeds if algo == "ppo" else sac_seeds
        runs += [Run(algo, "dense", 0.0, s) for s in algo_seeds]
        for sp, seed, crit in itertools.product(order, algo_seeds, criteria):
            if name == "full" or (algo == "ppo" and sp == 0.75) or crit in BASELINES:
                runs.append(Run(algo, crit, sp, seed))
    return runs


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", nargs="+", default=["ppo", "sac"], choices=sorted(SETUPS))
    p.add_argument("--plan", choices=["recorded", "full"], default="full", help="which (criterion, sparsity) cells to run, see plan()")
    p.add_argument("--criteria", nargs="+", default=ALL_CRITERIA, choices=ALL_CRITERIA)
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sac-seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the SAC runs (they are ~5x slower)")
    p.add_argument("--timesteps", type=int, default=None, help="override the rl-zoo3 run length (for smoke tests)")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1, help="parallel processes, one thread each")
    p.add_argument("--logdir", default=str(ROOT / "runs" / "compare_sb3"))
    p.add_argument("--out", default=str(ROOT / "docs"), help="where compare_sb3.{csv,md,png} go")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "compare_sb3.csv"
    if not args.report_only:
        done = {(r["algo"], r["criterion"], round(r["sparsity"], 4), r["seed"]) for r in read_rows(csv_path)}
        runs = plan(args.plan, args.algos, args.seeds, args.sac_seeds, args.criteria, args.sparsities)
        todo = [r for r in runs if r.key() not in done]
        print(f"{len(runs) - len(todo)} runs done, {len(todo)} to go; logdir {args.logdir}", flush=True)
        jobs = [(r, args.logdir, args.eval_episodes, args.timesteps) for r in todo]
        ctx = mp.get_context("spawn")
        with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
            for run, ret, secs in pool.imap_unordered(_worker, jobs):
                append_row(csv_path, run, ret)
                print(f"{run.name:28s} eval_return={ret:8.1f}  ({secs:.0f} s)", flush=True)
    report(csv_path, out)


if __name__ == "__main__":
    main()
