"""Result rows of the evidence grids: one CSV schema, resumable appends, rliable aggregation.

Every row is one run: `algo,env,criterion,sparsity,seed,l1,protocol,eval_return,seconds,commit,command`.
`commit` is the project commit the row ran at; `command` re-runs exactly that row from a clean
checkout and prints, as its last line, JSON with at least `eval_return`.

Aggregation follows Agarwal et al. (2021) through `rliable`: interquartile mean (IQM) over seeds
with 95 % stratified-bootstrap confidence intervals, and the probability of improvement.
"""
from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

COLUMNS = ["algo", "env", "criterion", "sparsity", "seed", "l1", "protocol", "eval_return", "seconds", "commit", "command"]
Key = Tuple[str, str, str, float, int, float, str]


def key(row: Mapping[str, object]) -> Key:
    return (
        str(row["algo"]), str(row["env"]), str(row["criterion"]), round(float(row["sparsity"]), 4),
        int(row["seed"]), float(row["l1"]), str(row["protocol"]),
    )


def read(path: Path) -> List[Dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and list(rows[0].keys()) != COLUMNS:
        raise SystemExit(f"{path}: columns {list(rows[0].keys())} are not {COLUMNS}; move the old file away")
    return rows


def done(path: Path) -> set:
    return {key(r) for r in read(path)}


def settings_of(command: str, flags: Sequence[str]) -> Dict[str, List[str]]:
    """The values a row's `command` gives each of `flags` (settings that change a result but are not in its key)."""
    words, out = shlex.split(command), {}
    for flag, value in zip(words, words[1:]):
        if flag in flags:
            out.setdefault(flag, []).append(value)
    return out


def refuse_other_settings(path: Path, planned: Iterable[Tuple[Mapping[str, object], str]],
                          flags_of: Callable[[Mapping[str, object]], Sequence[str]]) -> None:
    """Stop a grid, before anything runs, if `path` holds one of its `planned` (row, command) cells run with other
    values of the settings `flags_of(row)` names: rows are keyed without them, so the grid would skip that cell."""
    recorded = {key(r): r["command"] for r in read(path)}
    for row, command in planned:
        old = recorded.get(key(row))
        if old is None:
            continue
        flags = flags_of(row)
        then, now = settings_of(old, flags), settings_of(command, flags)
        if then != now:
            differ = ", ".join(f"{f} {' '.join(then.get(f, ['(none)']))} there, {' '.join(now.get(f, ['(none)']))} here"
                               for f in flags if then.get(f) != now.get(f))
            cell = " ".join(str(row[c]) for c in ("protocol", "criterion", "sparsity"))
            raise SystemExit(f"{path} already holds seed {row['seed']} {cell}, run with other settings ({differ}); rows are keyed "
                             "without them, so this grid would skip it: pass another --csv, or the settings the CSV records")


def append(path: Path, row: Mapping[str, object]) -> None:
    """Append one row (header first if the file is new) and flush it to disk at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({c: row[c] for c in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def commit_of(root: Path) -> str:
    """The project commit the code runs at (`+dirty` when the tree has uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(csv_path: Optional[Path], row: Dict[str, object], out: Mapping[str, object], commit: str, command: str) -> Dict[str, object]:
    """Complete `row` with the run's outcome and provenance, append it (if a CSV is given), return row + extras."""
    row.update(eval_return=round(float(out["eval_return"]), 3), seconds=round(float(out["seconds"]), 1), commit=commit, command=command)
    if csv_path:
        append(csv_path, row)
    return {**row, **out}


def print_last(last: Optional[Mapping[str, object]]) -> None:
    """The JSON last line of a grid script: the last row it ran (a row's `command` runs exactly one)."""
    print(json.dumps(dict(last) if last is not None else {"eval_return": None, "note": "every selected row is already in the CSV"}))


def by_task(paths: Sequence[str]) -> Iterable[Tuple[str, str, List[Dict[str, str]]]]:
    """(algo, env, rows) for every task in the CSV files, sorted."""
    rows = [r for p in paths for r in read(Path(p))]
    for algo, env in sorted({(r["algo"], r["env"]) for r in rows}):
        yield algo, env, [r for r in rows if r["algo"] == algo and r["env"] == env]


# ------------------------------------------------------------------------------------ aggregation
def cells(rows: Iterable[Mapping[str, str]], group: Sequence[str]) -> Dict[tuple, Dict[int, float]]:
    """{cell key over `group` columns: {seed: eval_return}}."""
    out: Dict[tuple, Dict[int, float]] = {}
    for r in rows:
        out.setdefault(tuple(r[c] for c in group), {})[int(r["seed"])] = float(r["eval_return"])
    return out


def iqm_ci(scores: Mapping[str, np.ndarray], reps: int = 2000, seed: int = 0) -> Dict[str, Tuple[float, float, float]]:
    """{name: (IQM, CI low, CI high)}: rliable's IQM with 95 % stratified-bootstrap intervals.

    `scores[name]` is an array (runs,) or (runs, tasks) of returns (normalised when tasks are mixed).
    """
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global RNG
    data = {k: np.asarray(v, dtype=float).reshape(len(v), -1) for k, v in scores.items() if len(v)}
    point, interval = rly.get_interval_estimates(data, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    return {k: (float(point[k][0]), float(interval[k][0][0]), float(interval[k][1][0])) for k in data}


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0) -> Tuple[float, float, float]:
    """P(X > Y) over runs (rliable), with its 95 % stratified-bootstrap interval."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)
    pair = {"x,y": (np.asarray(x, float).reshape(len(x), -1), np.asarray(y, float).reshape(len(y), -1))}
    point, interval = rly.get_interval_estimates(pair, metrics.probability_of_improvement, reps=reps)
    lo, hi = np.ravel(interval["x,y"])[:2]
    return float(np.ravel(point["x,y"])[0]), float(lo), float(hi)


# the return of a uniformly random policy (D4RL's reference scores of the same MuJoCo tasks), so a
# pruned agent's score is 0 at random behaviour and 1 at its dense twin, whatever the sign of returns
RANDOM_RETURN = {"HalfCheetah-v5": -280.178953, "Hopper-v5": -20.272305, "Walker2d-v5": 1.629008}


def normalise(ret: float, dense: float, floor: float) -> float:
    """Score 0 at `floor` (a random policy) and 1 at the dense agent's return of the same seed."""
    return (ret - floor) / max(1e-9, dense - floor)


def normalised_scores(rows: Sequence[Mapping[str, str]], dense: Mapping[int, float], label, name: str, sparsity: float) -> np.ndarray:
    """Dense-normalised returns (by seed) of the rows labelled `name` at `sparsity`, seeds with a dense twin only."""
    floor = RANDOM_RETURN.get(str(rows[0]["env"]), 0.0) if rows else 0.0
    vals = {int(r["seed"]): float(r["eval_return"]) for r in rows if label(r) == name and float(r["sparsity"]) == sparsity}
    return np.array([normalise(vals[k], dense[k], floor) for k in sorted(vals) if k in dense])


def fmt_ci(v: Optional[Tuple[float, float, float]], digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


# ------------------------------------------------------------------------------------ tables, plots
Cell = Optional[Tuple[Tuple[float, float, float], int]]  # ((IQM, lo, hi), n seeds)


def ratio_table(
    rows: Sequence[Mapping[str, str]], dense: Mapping[int, float], label, sparsities: Sequence[float], order: Sequence[str] = ()
) -> Tuple[List[str], Dict[str, Dict[float, Cell]]]:
    """Markdown rows and {label: {sparsity: cell}}: IQM over seeds of the dense-normalised return,
    (R - R_random) / (R_dense - R_random) with the same seed's dense return (`RANDOM_RETURN`; 0 when unknown).

    `label(row)` names the table row a result belongs to (e.g. its criterion, or criterion + l1).
    """
    labels = sorted({label(r) for r in rows}, key=lambda x: (list(order).index(x.split(" ")[0]) if x.split(" ")[0] in order else len(order), x))
    table: Dict[str, Dict[float, Cell]] = {}
    lines = ["| | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    for name in labels:
        table[name] = {}
        for s in sparsities:
            ratio = normalised_scores(rows, dense, label, name, s)
            table[name][s] = (iqm_ci({name: ratio})[name], len(ratio)) if len(ratio) else None
        cells = [f"{fmt_ci(c[0], 2)} (n={c[1]})" if c else "–" for c in (table[name][s] for s in sparsities)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines, table


def plot_ratio(table: Mapping[str, Mapping[float, Cell]], sparsities: Sequence[float], title: str, path: Path) -> None:
    """Return / dense (IQM, 95 % CI band) against sparsity, one line per table row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: no plot {path.name}")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_s in table.items():
        xs = [s for s in sparsities if by_s.get(s)]
        if not xs:
            continue
        ax.plot(xs, [by_s[s][0][0] for s in xs], marker="o", label=name)
        ax.fill_between(xs, [by_s[s][0][1] for s in xs], [by_s[s][0][2] for s in xs], alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("sparsity (fraction of hidden channels removed)")
    ax.set_ylabel("IQM of dense-normalised return (95 % CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def improvement_table(
    rows: Sequence[Mapping[str, str]], dense: Mapping[int, float], label, sparsities: Sequence[float], reference: str, order: Sequence[str] = ()
) -> List[str]:
    """Markdown rows of P(row > `reference`) on the dense-normalised return (rliable, 95 % CI) per sparsity;
    empty when no row is labelled `reference`."""
    def scores(name: str, s: float) -> np.ndarray:
        return normalised_scores(rows, dense, label, name, s)

    labels = sorted({label(r) for r in rows} - {reference}, key=lambda x: (list(order).index(x) if x in order else len(order), x))
    if not labels or not any(len(scores(reference, s)) for s in sparsities):
        return []
    lines = [f"P(row > {reference}), probability of improvement with 95 % CI:", "",
             "| | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    for name in labels:
        cells = []
        for s in sparsities:
            x, y = scores(name, s), scores(reference, s)
            cells.append(fmt_ci(probability_of_improvement(x, y), 2) if len(x) > 1 and len(y) > 1 else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def section(rows: Sequence[Mapping[str, str]], dense: Mapping[int, float], label, order: Sequence[str], title: str, png: Path,
            references: Sequence[str] = ("magnitude", "random")) -> Tuple[List[str], Dict[str, Dict[str, object]]]:
    """One report section: a titled rliable table over the rows' sparsities, the probability of
    improvement over each of `references`, its plot, and its summary."""
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    table_lines, table = ratio_table(rows, dense, label, sparsities, order)
    plot_ratio(table, sparsities, png.stem.replace("_", " "), png)
    summary = {k: {f"{s:g}": (v[0] if v else None) for s, v in by_s.items()} for k, by_s in table.items()}
    extra = [line for ref in references for line in improvement_table(rows, dense, label, sparsities, ref, order)]
    return [title, ""] + table_lines + [""] + extra, summary


def write_report(lines: List[str], summary: Mapping[str, object], path: Path) -> None:
    """Write the markdown report, print it, and print the summary as the JSON last line."""
    text = "\n".join(lines)
    path.write_text(text + "\n")
    print(text)
    print(json.dumps(summary))
