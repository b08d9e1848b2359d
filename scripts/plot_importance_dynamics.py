#!/usr/bin/env python
"""Importance dynamics of a run (the paper's figure): each group's importance over training under the
gradient criteria grad, fisher and bayes, component groups solid and coupling groups dashed, with the
crossovers (two groups swapping rank) marked.

The run must observe the criteria (`prune.observe=[all]`), so that its TensorBoard events hold
`prune/importance_by/<criterion>/<kind>/<group>` (tdmpc_prune/tensorboard.py), e.g.

    tdmpc-prune train task=cartpole-balance model_size=cpu steps=30000 --prune prune.observe=[all]
    python scripts/plot_importance_dynamics.py runs/cartpole-balance/pruned-observe=all,model_size=cpu/seed-1 --out dynamics.png

Each criterion's scores are shown as shares of that step's total over the groups (the criteria live
on different scales).  The JSON last line gives, per criterion, the number of crossovers, where
they happen and the final ranking.
"""
from __future__ import annotations

import argparse
import json
from itertools import combinations
from typing import Dict, List, Tuple

import numpy as np

PREFIX = "prune/importance_by/"
Series = Dict[str, Dict[Tuple[str, str], Tuple[np.ndarray, np.ndarray]]]


def read(run_dir: str) -> Series:
    """{criterion: {(kind, group): (steps, importance share)}} from the run's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    ea.Reload()
    raw: Dict[str, Dict[Tuple[str, str], Dict[int, float]]] = {}
    for tag in ea.Tags()["scalars"]:
        if tag.startswith(PREFIX):
            criterion, kind, group = tag[len(PREFIX):].split("/", 2)
            raw.setdefault(criterion, {})[(kind, group)] = {e.step: e.value for e in ea.Scalars(tag)}
    if not raw:
        raise SystemExit(f"{run_dir}: no {PREFIX}* scalars; train the run with --prune prune.observe=[all]")
    out: Series = {}
    for criterion, groups in raw.items():
        steps = sorted(set.intersection(*(set(v) for v in groups.values())))
        values = np.array([[groups[g][s] for s in steps] for g in groups])
        total = values.sum(0, keepdims=True)
        share = np.divide(values, total, out=np.zeros_like(values), where=total > 0)
        out[criterion] = {g: (np.array(steps), share[i]) for i, g in enumerate(groups)}
    return out


def crossovers(series: Dict[Tuple[str, str], Tuple[np.ndarray, np.ndarray]]) -> List[Tuple[float, float, str, str]]:
    """(step, share, group a, group b) where two groups' curves cross (linear interpolation between logs)."""
    out = []
    for (ga, (steps, a)), (gb, (_, b)) in combinations(series.items(), 2):
        d = a - b
        for i in np.nonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0)[0]:
            t = d[i] / (d[i] - d[i + 1])
            out.append((float(steps[i] + t * (steps[i + 1] - steps[i])), float(a[i] + t * (a[i + 1] - a[i])), ga[1], gb[1]))
    return sorted(out)


def plot(data: Series, out: str, title: str) -> Dict[str, object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    criteria = [c for c in ("grad", "fisher", "bayes") if c in data] + sorted(set(data) - {"grad", "fisher", "bayes"})
    fig, axes = plt.subplots(len(criteria), 1, figsize=(7.5, 2.6 * len(criteria)), sharex=True, squeeze=False)
    summary: Dict[str, object] = {}
    for ax, criterion in zip(axes[:, 0], criteria):
        series = data[criterion]
        for i, ((kind, group), (steps, share)) in enumerate(sorted(series.items(), key=lambda kv: kv[0][1])):
            ax.plot(steps, share, "--" if kind == "coupling" else "-", color=f"C{i % 10}", lw=1.4,
                    label=f"{group.lstrip('_')}{' (coupling)' if kind == 'coupling' else ''}")
        cross = crossovers(series)
        if cross:
            ax.plot([c[0] for c in cross], [c[1] for c in cross], "kx", ms=5, label=f"crossovers ({len(cross)})")
        ax.set_ylabel(f"{criterion}\nshare of importance")
        ax.grid(alpha=0.3)
        final = sorted(series, key=lambda g: -series[g][1][-1])
        summary[criterion] = {"crossovers": len(cross), "first_crossovers": [(round(s), a, b) for s, _, a, b in cross[:5]],
                              "final_ranking": [g for _, g in final]}
    axes[0, 0].set_title(title)
    axes[0, 0].legend(fontsize=7, ncol=2, loc="upper right")
    axes[-1, 0].set_xlabel("env step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory with prune/importance_by/* scalars")
    ap.add_argument("--out", default="importance_dynamics.png")
    ap.add_argument("--title", default="importance dynamics per group")
    args = ap.parse_args(argv)
    summary = plot(read(args.run), args.out, args.title)
    print(f"wrote {args.out}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
