"""Plot our TD-MPC2 eval curve(s) beside the official TD-MPC2 curve for the same task.

    python scripts/plot_tdmpc2.py runs/cartpole-balance/cpu-preset --out docs/tdmpc2_cartpole_balance.png

Each positional argument is a run directory (`logdir/<task>/<exp_name>/seed-<seed>`) or a parent
holding several `seed-*` directories; `eval/episode_reward` is read from their TensorBoard events.
The official curve comes from `<reference>/tdmpc2/<task>.csv` (columns step,reward,seed; env steps).
Also prints a markdown table of our curve for the README.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "tdmpc2-results")


def read_eval(run_dir: str) -> List[Tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    ea.Reload()
    if "eval/episode_reward" not in ea.Tags()["scalars"]:
        raise SystemExit(f"{run_dir}: no eval/episode_reward in its TensorBoard events")
    by_step = {e.step: e.value for e in ea.Scalars("eval/episode_reward")}  # a resumed run may repeat a step
    return sorted(by_step.items())


def run_dirs(path: str) -> List[str]:
    seeds = sorted(glob.glob(os.path.join(path, "seed-*")))
    return seeds or [path]


def read_reference(reference: str, algo: str, task: str) -> Dict[int, List[float]]:
    path = os.path.join(reference, algo, f"{task}.csv")
    if not os.path.exists(path):
        raise SystemExit(f"no reference curve {path}; available: {', '.join(sorted(os.listdir(os.path.join(reference, algo))))}")
    out: Dict[int, List[float]] = defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            out[int(float(row["step"]))].append(float(row["reward"]))
    return dict(sorted(out.items()))


NAMES = {"tdmpc2": "official TD-MPC2 5M", "sac": "SAC (official results)"}


def draw_reference(ax, reference: str, algo: str, task: str, max_step: int, color: str = "k", marker: str = "s") -> Dict[int, float]:
    """Mark the official curve of `algo` (tdmpc2 | sac) up to the first logged step past `max_step` on `ax`:
    mean and min-max over its seeds; returns {step: mean}."""
    ref = read_reference(reference, algo, task)
    ref_steps = np.array(list(ref))
    shown = ref_steps[: max(int(np.searchsorted(ref_steps, max_step)) + 1, 2)]
    mean = np.array([np.mean(ref[s]) for s in shown])
    lo = np.array([np.min(ref[s]) for s in shown])
    hi = np.array([np.max(ref[s]) for s in shown])
    # the official curves are logged every 100k env steps: markers only, a line would invent the shape between
    ax.errorbar(shown, mean, yerr=[mean - lo, hi - mean], fmt=marker, color=color, capsize=4,
                label=f"{NAMES.get(algo, algo)}: mean, min-max of {len(ref[shown[0]])} seeds (logged every {int(ref_steps[1]):,} steps)")
    return {int(s): float(m) for s, m in zip(shown, mean)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (or parents of seed-* directories)")
    ap.add_argument("--task", help="task name (default: taken from the run path)")
    ap.add_argument("--label", action="append", help="legend label per run argument")
    ap.add_argument("--reference", default=REFERENCE)
    ap.add_argument("--out", default="tdmpc2_curve.png")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task = args.task or os.path.normpath(run_dirs(args.runs[0])[0]).split(os.sep)[-3]  # logdir/<task>/<exp>/seed-N
    fig, ax = plt.subplots(figsize=(7, 4.2))
    max_step = 0
    for i, path in enumerate(args.runs):
        label = (args.label or [])[i] if args.label and i < len(args.label) else f"ours: {os.path.basename(os.path.normpath(path))}"
        for j, d in enumerate(run_dirs(path)):
            curve = read_eval(d)
            steps, rewards = zip(*curve)
            max_step = max(max_step, steps[-1])
            ax.plot(steps, rewards, "o-", ms=3, color=f"C{i}", label=label if j == 0 else None)
            print(f"\n{d}\n\n| env steps | eval return |\n|---:|---:|")
            for s, r in curve:
                print(f"| {s:,} | {r:.1f} |")
    shown = draw_reference(ax, args.reference, "tdmpc2", task, max_step)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval episode return")
    ax.set_title(args.title or task)
    ax.set_ylim(0, 1050)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nofficial TD-MPC2 {task}: " + ", ".join(f"{s:,}: {v:.1f}" for s, v in shown.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
