#!/usr/bin/env python
"""The paper's autoencoder study (arXiv 2601.19794) on real handwritten digits.

An MLP autoencoder (components `encoder` and `decoder`; the latent, written by the encoder and
read by the decoder, is the coupling group that discovery finds) is trained for 200 epochs with a
`tdmpc_prune.Pruner` attached (statistics from every optimizer step; the cosine group lasso on
or off).  For every latent size d in {8, 64, 256, 512}:

1. the importance of every group over training under grad, fisher, bayes and magnitude, with
   the crossovers of the groups' order marked (`autoencoder_importance_d<d>.png`);
2. the test reconstruction loss after pruning the trained model to 30 / 50 / 70 % with every
   criterion (grad, fisher, bayes, combined; magnitude and random as baselines), the latent
   protected or pruned, and the encoder or the decoder alone (`autoencoder_prune.csv`);
3. for d = 512: pruning to 50 % (latent included) at epoch 50 / 100 / 150 / 200, the loss right
   after pruning and after training on to epoch 200 (`autoencoder_timing.png`).

Data: scikit-learn's bundled `load_digits` (1,797 8x8 digits, shipped inside the package; no
download at run time).  Each finished training run appends its rows to the CSVs in `--out`
(with the project commit they ran at), so an interrupted study resumes where it stopped; the
figures and `autoencoder.md` are rebuilt from the CSVs.

    python scripts/reproduce_autoencoder.py                 # the full study (5 seeds) into docs/
    python scripts/reproduce_autoencoder.py --quick --out /tmp/ae   # reduced, < 2 min on one thread
    python scripts/reproduce_autoencoder.py --report-only   # figures + tables from the CSVs

The last line printed is JSON: the mean test loss per d, lasso setting, criterion, coupling
mode and sparsity (and the dense loss).
"""
from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tdmpc_prune import Pruner  # noqa: E402
from tdmpc_prune.errors import PruneError  # noqa: E402

from results import commit_of  # noqa: E402

PRUNE_CRITERIA = ("grad", "fisher", "bayes", "combined", "magnitude", "random")
# combined is a within-group rank (its group mean is 0.5 by construction) and random is uniform:
# neither says anything about one group against another, so only these are followed over time
TRACKED = ("grad", "fisher", "bayes", "magnitude")
SPARSITIES = (0.3, 0.5, 0.7)
# scope of a pruning: every group (latent protected or pruned) or one component alone
SCOPES = ("all", "encoder", "decoder")
COMPONENTS = {"encoder": "encoder", "decoder": "decoder"}

IMPORTANCE_FILE = "autoencoder_importance.csv"
PRUNE_FILE = "autoencoder_prune.csv"
TIMING_FILE = "autoencoder_timing.csv"
GROUPS_FILE = "autoencoder_groups.csv"
RUN_KEY = ("d", "l1", "seed")
PRUNE_COLUMNS = ["d", "l1", "seed", "epoch", "criterion", "scope", "coupling", "sparsity", "params_ratio", "test_loss", "commit"]
TIMING_COLUMNS = ["d", "l1", "seed", "criterion", "prune_epoch", "sparsity", "coupling", "loss_at_prune", "loss_final", "dense_final", "commit"]
GROUP_COLUMNS = ["d", "group", "kind", "components", "channels"]


@dataclass
class Study:
    """Everything that defines one study (the full one, or `--quick`)."""

    dims: Tuple[int, ...] = (8, 64, 256, 512)
    l1s: Tuple[float, ...] = (0.0, 5e-4)  # lambda_max of the cosine group lasso (a norm shrink per step): off, on
    seeds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 200
    batch: int = 256
    lr: float = 1e-3
    hidden: Tuple[int, int] = (128, 64)  # encoder 64 -> 128 -> 64 -> d, decoder d -> 64 -> 128 -> 64
    log_every: int = 5  # epochs between importance records
    timing_d: int = 512
    timing_epochs: Tuple[int, ...] = (50, 100, 150, 200)
    timing_sparsity: float = 0.5
    persist: int = 2  # a crossover counts when the new order holds for this many records

    @classmethod
    def quick(cls) -> "Study":
        return cls(seeds=(0,), epochs=20, log_every=1, timing_epochs=(5, 10, 15, 20))


# ---------------------------------------------------------------------------------------- data, model
def load_digits_split(test_fraction: float = 0.2) -> Tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits scaled to [0, 1]; one fixed train/test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this study needs scikit-learn (its bundled digits): pip install -e '.[study]'") from None
    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = int(round(len(x) * test_fraction))
    return x[perm[n_test:]], x[perm[:n_test]]


class Autoencoder(nn.Module):
    """MLP autoencoder: `encoder` 64 -> h0 -> h1 -> d, `decoder` d -> h1 -> h0 -> 64."""

    def __init__(self, d: int, hidden: Sequence[int] = (128, 64), pixels: int = 64):
        super().__init__()
        h0, h1 = hidden
        self.encoder = nn.Sequential(nn.Linear(pixels, h0), nn.ReLU(), nn.Linear(h0, h1), nn.ReLU(), nn.Linear(h1, d))
        self.decoder = nn.Sequential(nn.Linear(d, h1), nn.ReLU(), nn.Linear(h1, h0), nn.ReLU(), nn.Linear(h0, pixels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@torch.no_grad()
def test_loss(model: nn.Module, x: torch.Tensor) -> float:
    was = model.training
    model.eval()
    loss = float((model(x) - x).pow(2).mean())
    model.train(was)
    return loss


def make_pruner(model: nn.Module, example: torch.Tensor, **options: Any) -> Pruner:
    """A pruner on the autoencoder: groups come from discovery, with encoder and decoder as components."""
    return Pruner(model, components=COMPONENTS, example_inputs=(example,), **options)


def never_fires(total_steps: int) -> Dict[str, Any]:
    """Options for a pruner whose own schedule never fires: the study prunes with prune_to()."""
    return dict(schedule="oneshot", start=total_steps + 1)


def coupling_group(pruner: Pruner) -> str:
    """The id of the latent: the one coupling group discovery found (spanning encoder and decoder)."""
    found = [g for g in pruner.groups if g.kind == "coupling"]
    if len(found) != 1 or set(found[0].components) != set(COMPONENTS):
        raise PruneError(f"expected one coupling group spanning {sorted(COMPONENTS)}, discovery found {[(g.id, g.components) for g in found]}")
    return found[0].id


def group_importance(pruner: Pruner, criterion: str) -> Dict[str, float]:
    """Mean importance of every group under `criterion`, from the statistics the pruner observes."""
    pruner.use_criterion(criterion)
    return {gid: float(torch.nanmean(s)) for gid, s in pruner.scores().items()}


# ---------------------------------------------------------------------------------------- one run
@dataclass
class Snapshot:
    epoch: int
    model: Dict[str, torch.Tensor]
    optimizer: Dict[str, Any]
    pruner: Dict[str, Any]
    loss: float


@dataclass
class RunResult:
    importance: List[Dict[str, Any]] = field(default_factory=list)
    prune: List[Dict[str, Any]] = field(default_factory=list)
    timing: List[Dict[str, Any]] = field(default_factory=list)
    groups: List[Dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains one autoencoder (d, l1, seed) with the pruner attached and evaluates prunings of it."""

    def __init__(self, study: Study, d: int, l1: float, seed: int, data: Tuple[torch.Tensor, torch.Tensor]):
        self.study, self.d, self.l1, self.seed = study, d, l1, seed
        self.train_x, self.test_x = data
        self.steps_per_epoch = -(-len(self.train_x) // study.batch)
        self.total_steps = study.epochs * self.steps_per_epoch
        self.example = self.train_x[:4]

    def build(self) -> Autoencoder:
        return Autoencoder(self.d, self.study.hidden)

    def pruner_options(self, criterion: str, sparsity: float = 0.5, coupling: str = "prune", **extra: Any) -> Dict[str, Any]:
        options = dict(criterion=criterion, sparsity=sparsity, coupling=coupling, l1=self.l1, seed=self.seed, every_n_updates=1,
                       **never_fires(self.total_steps))  # every update observed, as when the committed results were measured
        return {**options, **extra}

    def epoch_batches(self, epoch: int) -> List[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.train_x), generator=g)
        return [self.train_x[perm[i : i + self.study.batch]] for i in range(0, len(perm), self.study.batch)]

    def train_epochs(self, model: nn.Module, optimizer: torch.optim.Optimizer, pruner: Pruner, first: int, last: int, on_epoch=None) -> None:
        """Epochs first..last (1-based, inclusive); the pruner's clock is the optimizer step."""
        for epoch in range(first, last + 1):
            for x in self.epoch_batches(epoch):
                loss = (model(x) - x).pow(2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                pruner.step()
            if on_epoch is not None:
                on_epoch(epoch)

    def run(self, commit: str) -> RunResult:
        st = self.study
        torch.manual_seed(self.seed)
        model = self.build()
        optimizer = torch.optim.Adam(model.parameters(), lr=st.lr)
        # observing every studied criterion gathers all their statistics in one run; coupling=prune
        # puts the group lasso on every group, the latent included; no event fires during training
        pruner = make_pruner(model, self.example, **self.pruner_options("fisher", observe=PRUNE_CRITERIA))
        coupling_group(pruner)  # the latent must be found by discovery
        pruner.attach(optimizer, total_steps=self.total_steps)
        out = RunResult()
        key = dict(d=self.d, l1=self.l1, seed=self.seed)
        out.groups = [
            dict(d=self.d, group=g.id, kind=g.kind, components=",".join(g.components), channels=g.channels) for g in pruner.groups
        ]
        snapshots: Dict[int, Snapshot] = {}
        timing_at = set(st.timing_epochs) if self.d == st.timing_d else set()

        def on_epoch(epoch: int) -> None:
            if epoch % st.log_every == 0 or epoch == 1:
                loss = test_loss(model, self.test_x)
                for crit in TRACKED:
                    row = {**key, "epoch": epoch, "criterion": crit, "test_loss": loss}
                    row.update(group_importance(pruner, crit))
                    out.importance.append(row)
            if epoch in timing_at or epoch == st.epochs:
                snapshots[epoch] = Snapshot(
                    epoch, copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
                    copy.deepcopy(pruner.state_dict()), test_loss(model, self.test_x),
                )

        self.train_epochs(model, optimizer, pruner, 1, st.epochs, on_epoch)
        pruner.detach()
        final = snapshots[st.epochs]
        out.prune = [dict(key, **r) for r in self.evaluate_prunings(final)]
        for r in out.importance + out.prune:
            r["commit"] = commit
        if timing_at:
            out.timing = [dict(key, **r, commit=commit) for r in self.timing(snapshots, final.loss)]
        return out

    # ------------------------------------------------------------------------------ evaluations
    def restore(self, snap: Snapshot, criterion: str, **options: Any) -> Tuple[Autoencoder, Pruner]:
        """A fresh model with the snapshot's weights and a fresh pruner with its statistics."""
        model = self.build()
        model.load_state_dict(snap.model)
        pruner = make_pruner(model, self.example, **self.pruner_options(criterion, **options))
        pruner.load_state_dict(snap.pruner)
        return model, pruner

    def evaluate_prunings(self, snap: Snapshot) -> List[Dict[str, Any]]:
        """Test loss after pruning the snapshot to each sparsity (masks, nested 30 -> 50 -> 70 %)."""
        rows = [dict(epoch=snap.epoch, criterion="dense", scope="all", coupling="", sparsity=0.0, params_ratio=1.0, test_loss=snap.loss)]
        settings = [("all", "protect"), ("all", "prune"), ("encoder", "protect"), ("decoder", "protect")]
        for crit in PRUNE_CRITERIA:
            for scope, coupling in settings:
                # one component alone: the other one's budget is 0 (the latent is protected)
                budgets = {c: 0.0 for c in COMPONENTS if c != scope} if scope != "all" else {}
                model, pruner = self.restore(snap, crit, coupling=coupling, budgets=budgets, physical=False)
                for s in SPARSITIES:
                    metrics = pruner.prune_to(s)
                    rows.append(
                        dict(
                            epoch=snap.epoch, criterion=crit, scope=scope, coupling=coupling, sparsity=s,
                            params_ratio=round(metrics["params_ratio"], 4), test_loss=test_loss(model, self.test_x),
                        )
                    )
        return rows

    def timing(self, snapshots: Dict[int, Snapshot], dense_final: float) -> List[Dict[str, Any]]:
        """Prune (physically, latent included) at each snapshot epoch, then train on to the last epoch."""
        st = self.study
        rows = []
        for epoch in st.timing_epochs:
            snap = snapshots[epoch]
            for crit in PRUNE_CRITERIA:
                # the group lasso is off after the (last) pruning event, as the pruner's own schedule does
                model, pruner = self.restore(snap, crit, sparsity=st.timing_sparsity, coupling="prune", l1=0.0)
                optimizer = torch.optim.Adam(model.parameters(), lr=st.lr)
                optimizer.load_state_dict(snap.optimizer)
                pruner.attach(optimizer, total_steps=self.total_steps)
                pruner.prune_to(st.timing_sparsity)  # also shrinks Adam's moments
                at_prune = test_loss(model, self.test_x)
                self.train_epochs(model, optimizer, pruner, epoch + 1, st.epochs)
                pruner.detach()
                rows.append(
                    dict(
                        criterion=crit, prune_epoch=epoch, sparsity=st.timing_sparsity, coupling="prune",
                        loss_at_prune=at_prune, loss_final=test_loss(model, self.test_x), dense_final=dense_final,
                    )
                )
        return rows


# ---------------------------------------------------------------------------------------- CSV store
def read_csv(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _number(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def append_rows(path: Path, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        return
    new = not path.exists()
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(columns):
            raise SystemExit(f"{path} has columns {header}, this study writes {list(columns)}: move the old file away or use another --out")
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r[k]) for k in columns})


def drop_rows(path: Path, key: Dict[str, Any]) -> None:
    """Remove rows of one run (left by a run killed between two files) before it is run again."""
    rows = read_csv(path)
    if not rows:
        return
    keep = [r for r in rows if any(r[k] != key[k] for k in RUN_KEY)]
    if len(keep) == len(rows):
        return
    columns = list(rows[0].keys())
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in keep:
            w.writerow({k: _fmt(r[k]) for k in columns})
    tmp.replace(path)


def done_runs(out: Path) -> set:
    """A run is done when its pruning rows (written last) are in the table."""
    return {tuple(r[k] for k in RUN_KEY) for r in read_csv(out / PRUNE_FILE)}


def save_run(out: Path, result: RunResult, group_ids: List[str]) -> None:
    known = {(r["d"], r["group"]) for r in read_csv(out / GROUPS_FILE)}
    append_rows(out / GROUPS_FILE, [g for g in result.groups if (g["d"], g["group"]) not in known], GROUP_COLUMNS)
    columns = ["d", "l1", "seed", "epoch", "criterion", "test_loss", *group_ids, "commit"]
    append_rows(out / IMPORTANCE_FILE, result.importance, columns)
    append_rows(out / TIMING_FILE, result.timing, TIMING_COLUMNS)
    append_rows(out / PRUNE_FILE, result.prune, PRUNE_COLUMNS)


# ---------------------------------------------------------------------------------------- analysis
def crossovers(curves: np.ndarray, persist: int) -> List[Tuple[int, int, int]]:
    """Crossovers of the groups' order: (record index, group a, group b) where a and b swap order
    and the new order holds for `persist` records.  `curves`: records x groups (log importance)."""
    events = []
    n = curves.shape[1]
    for a in range(n):
        for b in range(a + 1, n):
            sign = np.sign(curves[:, a] - curves[:, b])
            current = sign[0]
            for t in range(1, len(sign)):
                if sign[t] != 0 and sign[t] != current:
                    window = sign[t : t + persist]
                    if len(window) == persist and (window == sign[t]).all():
                        if current != 0:
                            events.append((t, a, b))
                        current = sign[t]
    return events


def importance_curves(rows: Sequence[Dict[str, Any]], d: int, l1: float, crit: str, groups: List[str], seed: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(epochs, records x groups of log10 importance), the mean over seeds unless `seed` is given."""
    sel = [r for r in rows if r["d"] == d and r["l1"] == l1 and r["criterion"] == crit and (seed is None or r["seed"] == seed)]
    epochs = np.array(sorted({r["epoch"] for r in sel}))
    if not len(epochs):
        return epochs, np.zeros((0, len(groups)))
    by_epoch: Dict[int, List[List[float]]] = {}
    for r in sel:
        by_epoch.setdefault(r["epoch"], []).append([np.log10(max(float(r[g]), 1e-30)) for g in groups])
    return epochs, np.array([np.mean(by_epoch[e], axis=0) for e in epochs])


def crossover_table(rows: Sequence[Dict[str, Any]], groups: List[str], persist: int) -> List[Dict[str, Any]]:
    """Crossovers per seed (mean, std over seeds) for each d, lasso setting and tracked criterion."""
    out = []
    for d in sorted({r["d"] for r in rows}):
        for l1 in sorted({r["l1"] for r in rows if r["d"] == d}):
            seeds = sorted({r["seed"] for r in rows if r["d"] == d and r["l1"] == l1})
            for crit in TRACKED:
                counts = []
                for s in seeds:
                    _, c = importance_curves(rows, d, l1, crit, groups, s)
                    ev = crossovers(c, persist)
                    counts.append(len(ev))
                out.append(dict(d=d, l1=l1, criterion=crit, seeds=len(seeds), mean=float(np.mean(counts)), std=float(np.std(counts))))
    return out


def group_order(groups_rows: Sequence[Dict[str, Any]], d: int) -> Tuple[List[str], str]:
    sel = [g for g in groups_rows if g["d"] == d]
    latent = next(g["group"] for g in sel if g["kind"] == "coupling")
    return [g["group"] for g in sel], latent


# ---------------------------------------------------------------------------------------- figures, tables
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_importance(rows, groups_rows, d: int, persist: int, path: Path) -> None:
    plt = _plt()
    groups, latent = group_order(groups_rows, d)
    l1s = sorted({r["l1"] for r in rows if r["d"] == d})
    fig, axes = plt.subplots(len(l1s), len(TRACKED), figsize=(4.2 * len(TRACKED), 3.3 * len(l1s)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, l1 in enumerate(l1s):
        for j, crit in enumerate(TRACKED):
            ax = axes[i][j]
            epochs, c = importance_curves(rows, d, l1, crit, groups)
            for k, g in enumerate(groups):
                label = f"{g} (latent, coupling)" if g == latent else g
                ax.plot(epochs, c[:, k], color=colors[k % len(colors)], lw=2.2 if g == latent else 1.2, ls="-" if g.startswith("decoder") or g == latent else "--", label=label)
            ev = crossovers(c, persist)
            for t, a, b in ev:
                ax.plot(epochs[t], (c[t, a] + c[t, b]) / 2, "kx", ms=6, mew=1.5)
            n_seeds = len({r["seed"] for r in rows if r["d"] == d and r["l1"] == l1})
            ax.set_title(f"{crit}, lasso {'on' if l1 > 0 else 'off'}: {len(ev)} crossovers", fontsize=9)
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel(f"log10 group importance\n(mean of {n_seeds} seeds)")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"d = {d}: importance of each group over training (x: a crossover of two groups that holds {persist} records)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_timing(rows, path: Path) -> None:
    plt = _plt()
    l1s = sorted({r["l1"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what, title in ((axes[0], "loss_at_prune", "right after pruning"), (axes[1], "loss_final", "after training on to the last epoch")):
        for ci, crit in enumerate(PRUNE_CRITERIA):
            for l1 in l1s:
                sel = [r for r in rows if r["criterion"] == crit and r["l1"] == l1]
                epochs = sorted({r["prune_epoch"] for r in sel})
                mean = [np.mean([r[what] for r in sel if r["prune_epoch"] == e]) for e in epochs]
                std = [np.std([r[what] for r in sel if r["prune_epoch"] == e]) for e in epochs]
                spacing = (max(epochs) - min(epochs)) / max(1, len(epochs) - 1) if epochs else 1.0
                shift = (ci - (len(PRUNE_CRITERIA) - 1) / 2) * 0.04 * spacing  # side by side, so equal losses stay visible
                ax.errorbar(np.array(epochs) + shift, mean, yerr=std, marker="o" if l1 == 0 else "s", ls="-" if l1 == 0 else ":",
                            color=f"C{ci}", capsize=2, label=f"{crit}, lasso {'on' if l1 > 0 else 'off'}")
        for l1 in l1s:
            dense = np.mean([r["dense_final"] for r in rows if r["l1"] == l1])
            ax.axhline(dense, color="black", lw=1, ls="--" if l1 == 0 else ":", label=f"dense, lasso {'on' if l1 > 0 else 'off'}, last epoch")
        ax.set_yscale("log")
        ax.set_xlabel("epoch of the pruning event")
        ax.set_ylabel("test reconstruction MSE")
        ax.set_title(title, fontsize=10)
    axes[1].legend(fontsize=6, ncol=2)
    d = rows[0]["d"]
    sp = int(round(100 * rows[0]["sparsity"]))
    n = len({r["seed"] for r in rows})
    fig.suptitle(f"d = {d}: pruning {sp} % of every group (latent included) at different epochs (mean ± std, {n} seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cell(vals: Sequence[float]) -> str:
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if len(vals) else "–"


def summary(prune_rows) -> Dict[str, Any]:
    """Mean test loss per d, lasso, criterion, coupling/scope and sparsity (the JSON line)."""
    out: Dict[str, Any] = {}
    for r in prune_rows:
        lasso = "lasso_on" if r["l1"] > 0 else "lasso_off"
        node = out.setdefault(f"d={r['d']}", {}).setdefault(lasso, {})
        if r["criterion"] == "dense":
            node.setdefault("dense", []).append(r["test_loss"])
            continue
        mode = r["coupling"] if r["scope"] == "all" else f"{r['scope']}_only"
        node.setdefault(r["criterion"], {}).setdefault(mode, {}).setdefault(str(r["sparsity"]), []).append(r["test_loss"])

    def mean(x):
        return round(float(np.mean(x)), 6) if isinstance(x, list) else {k: mean(v) for k, v in x.items()}

    return mean(out)


def markdown(prune_rows, timing_rows, cross_rows, study: Study, record_every: int) -> str:
    lines = ["# Autoencoder study (generated by `scripts/reproduce_autoencoder.py`)", ""]
    commits = sorted({r["commit"] for r in prune_rows})
    seeds = sorted({r["seed"] for r in prune_rows})
    lines.append(f"Test reconstruction MSE (mean ± std over {len(seeds)} seeds) of the model trained for "
                 f"{max(r['epoch'] for r in prune_rows)} epochs, pruned once at the end with masks (no fine-tuning). "
                 f"Commit(s): {', '.join(map(str, commits))}.")
    lines.append("")
    for title, modes in (("Every hidden group pruned; the latent protected or pruned too", ("protect", "prune")),
                         ("One component's hidden groups pruned alone (latent protected)", ("encoder", "decoder"))):
        lines += [f"**{title}**", ""]
        lines.append("| d | lasso | criterion | dense | " + " | ".join(f"{m} {int(s * 100)} %" for m in modes for s in SPARSITIES) + " |")
        lines.append("|---|---|---|---|" + "---|" * (len(modes) * len(SPARSITIES)))
        for d in sorted({r["d"] for r in prune_rows}):
            for l1 in sorted({r["l1"] for r in prune_rows if r["d"] == d}):
                base = [r for r in prune_rows if r["d"] == d and r["l1"] == l1]
                dense = _cell([r["test_loss"] for r in base if r["criterion"] == "dense"])
                for crit in PRUNE_CRITERIA:
                    cells = [
                        _cell([
                            r["test_loss"] for r in base
                            if r["criterion"] == crit and r["sparsity"] == s
                            and ((r["scope"] == "all" and r["coupling"] == mode) or r["scope"] == mode)
                        ])
                        for mode in modes for s in SPARSITIES
                    ]
                    lines.append(f"| {d} | {'on' if l1 > 0 else 'off'} | {crit} | {dense} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Crossovers per seed (a swap of two groups' order that holds {study.persist} records, "
              f"records every {record_every} epochs), mean ± std over seeds:", ""]
    lines += ["| d | lasso | " + " | ".join(TRACKED) + " |", "|---|---|" + "---|" * len(TRACKED)]
    for d in sorted({r["d"] for r in cross_rows}):
        for l1 in sorted({r["l1"] for r in cross_rows if r["d"] == d}):
            cells = [next(f"{r['mean']:.1f} ± {r['std']:.1f}" for r in cross_rows if r["d"] == d and r["l1"] == l1 and r["criterion"] == c) for c in TRACKED]
            lines.append(f"| {d} | {'on' if l1 > 0 else 'off'} | " + " | ".join(cells) + " |")
    if timing_rows:
        d = timing_rows[0]["d"]
        lines += ["", f"Pruning time, d = {d}, {int(timing_rows[0]['sparsity'] * 100)} % of every group (latent included), "
                  "test MSE right after pruning / at the last epoch:", ""]
        epochs = sorted({r["prune_epoch"] for r in timing_rows})
        lines += ["| lasso | criterion | " + " | ".join(f"epoch {e}" for e in epochs) + " |", "|---|---|" + "---|" * len(epochs)]
        for l1 in sorted({r["l1"] for r in timing_rows}):
            for crit in PRUNE_CRITERIA:
                cells = []
                for e in epochs:
                    sel = [r for r in timing_rows if r["l1"] == l1 and r["criterion"] == crit and r["prune_epoch"] == e]
                    cells.append(f"{np.mean([r['loss_at_prune'] for r in sel]):.4f} / {np.mean([r['loss_final'] for r in sel]):.4f}")
                lines.append(f"| {'on' if l1 > 0 else 'off'} | {crit} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_effects(prune_rows, a: Tuple[str, str], b: Tuple[str, str], sparsity: float) -> List[str]:
    """Markdown rows: per d and lasso setting, for each criterion, the mean over seeds of
    (loss under setting `a` - loss under `b`) / loss under `b`, and in how many seeds it is > 0.
    A setting is (scope, coupling)."""
    def loss(rows, crit, scope, coupling):
        return next((r["test_loss"] for r in rows if r["criterion"] == crit and r["scope"] == scope
                     and r["coupling"] == coupling and r["sparsity"] == sparsity), None)

    lines = ["| d | lasso | " + " | ".join(PRUNE_CRITERIA) + " |", "|---|---|" + "---|" * len(PRUNE_CRITERIA)]
    for d in sorted({r["d"] for r in prune_rows}):
        for l1 in sorted({r["l1"] for r in prune_rows if r["d"] == d}):
            cells = []
            for crit in PRUNE_CRITERIA:
                effects = []
                for seed in sorted({r["seed"] for r in prune_rows if r["d"] == d and r["l1"] == l1}):
                    rows = [r for r in prune_rows if r["d"] == d and r["l1"] == l1 and r["seed"] == seed]
                    la, lb = loss(rows, crit, *a), loss(rows, crit, *b)
                    if la is not None and lb is not None:
                        effects.append((la - lb) / lb)
                cells.append(f"{100 * np.mean(effects):+.0f} % ({sum(e > 0 for e in effects)}/{len(effects)})" if effects else "–")
            lines.append(f"| {d} | {'on' if l1 > 0 else 'off'} | " + " | ".join(cells) + " |")
    return lines


def latent_share_markdown(imp_rows, groups_rows) -> List[str]:
    """Per d and lasso: the latent's importance over the mean of the other groups at the last record
    (geometric mean over seeds) and its rank among the groups (1 = most important), per tracked criterion."""
    lines = ["| d | lasso | " + " | ".join(TRACKED) + " |", "|---|---|" + "---|" * len(TRACKED)]
    for d in sorted({r["d"] for r in imp_rows}):
        groups, latent = group_order(groups_rows, d)
        last = max(r["epoch"] for r in imp_rows if r["d"] == d)
        for l1 in sorted({r["l1"] for r in imp_rows if r["d"] == d}):
            cells = []
            for crit in TRACKED:
                sel = [r for r in imp_rows if r["d"] == d and r["l1"] == l1 and r["criterion"] == crit and r["epoch"] == last]
                ratios = [r[latent] / np.mean([r[g] for g in groups if g != latent]) for r in sel]
                ranks = [1 + sum(r[g] > r[latent] for g in groups if g != latent) for r in sel]
                cells.append(f"×{np.exp(np.mean(np.log(ratios))):.2g} (rank {np.mean(ranks):.1f})")
            lines.append(f"| {d} | {'on' if l1 > 0 else 'off'} | " + " | ".join(cells) + " |")
    return lines


def effects_markdown(prune_rows, imp_rows, groups_rows) -> str:
    lines = ["", "Importance of the latent at the last epoch, relative to the mean of the other groups (geometric mean "
             f"over seeds) and its rank among the {len(group_order(groups_rows, prune_rows[0]['d'])[0])} groups (mean over seeds):", ""]
    lines += latent_share_markdown(imp_rows, groups_rows)
    for s in (0.5, 0.7):
        lines += ["", f"Cost of pruning the latent too, {int(s * 100)} %: (loss with `coupling=prune` - loss with "
                  "`coupling=protect`) / loss with `coupling=protect`, mean over seeds (seeds where it is > 0):", ""]
        lines += paired_effects(prune_rows, ("all", "prune"), ("all", "protect"), s)
    for s in (0.5, 0.7):
        lines += ["", f"Decoder against encoder, {int(s * 100)} % of one component's hidden groups: (loss pruning the "
                  "decoder alone - loss pruning the encoder alone) / loss pruning the encoder alone (seeds where it is > 0):", ""]
        lines += paired_effects(prune_rows, ("decoder", "protect"), ("encoder", "protect"), s)
    return "\n".join(lines) + "\n"


def report(out: Path, study: Study) -> Dict[str, Any]:
    imp, prune, timing, groups_rows = (read_csv(out / f) for f in (IMPORTANCE_FILE, PRUNE_FILE, TIMING_FILE, GROUPS_FILE))
    if not prune:
        raise SystemExit(f"no results in {out / PRUNE_FILE}: run the study first")
    cross = []
    for d in sorted({r["d"] for r in imp}):
        groups, _ = group_order(groups_rows, d)
        plot_importance(imp, groups_rows, d, study.persist, out / f"autoencoder_importance_d{d}.png")
        cross += crossover_table([r for r in imp if r["d"] == d], groups, study.persist)
    if timing:
        plot_timing(timing, out / "autoencoder_timing.png")
    epochs = sorted({r["epoch"] for r in imp})
    record_every = int(np.median(np.diff(epochs))) if len(epochs) > 1 else 1
    (out / "autoencoder.md").write_text(markdown(prune, timing, cross, study, record_every) + effects_markdown(prune, imp, groups_rows))
    return summary(prune)


# ---------------------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 20 epochs (pruning times 5/10/15/20): < 2 min on one thread")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where the CSVs, PNGs and autoencoder.md go")
    p.add_argument("--seeds", nargs="+", type=int, help="override the seeds")
    p.add_argument("--dims", nargs="+", type=int, help="override the latent sizes")
    p.add_argument("--l1", type=float, help="lambda_max of the group lasso when it is on")
    p.add_argument("--report-only", action="store_true", help="figures and tables from the CSVs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    study = Study.quick() if args.quick else Study()
    if args.seeds:
        study.seeds = tuple(args.seeds)
    if args.dims:
        study.dims = tuple(args.dims)
    if args.l1 is not None:
        study.l1s = (0.0, args.l1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        data = load_digits_split()
        _plt()
        # every Pruner's discovery runs gc.collect(); leave the long-lived heap (torch, sklearn,
        # matplotlib) out of those collections, or they cost ~0.2 s each instead of a few ms
        gc.freeze()
        commit = commit_of(ROOT)
        done = done_runs(out)
        todo = [(d, l1, s) for d in study.dims for s in study.seeds for l1 in study.l1s if (d, l1, s) not in done]
        print(f"{len(study.dims) * len(study.seeds) * len(study.l1s) - len(todo)} runs done, {len(todo)} to go (commit {commit})", flush=True)
        for d, l1, seed in todo:
            t0 = time.process_time()
            key = dict(d=d, l1=l1, seed=seed)
            for f in (IMPORTANCE_FILE, TIMING_FILE):
                drop_rows(out / f, key)
            trainer = Trainer(study, d, l1, seed, data)
            result = trainer.run(commit)
            save_run(out, result, [g["group"] for g in result.groups])
            dense = next(r["test_loss"] for r in result.prune if r["criterion"] == "dense")
            print(f"d={d:<4d} l1={l1:g} seed={seed}: dense test MSE {dense:.4f}  ({time.process_time() - t0:.1f} s CPU)", flush=True)
    result = report(out, study)
    print(json.dumps({"data": "sklearn load_digits 8x8", "recon_loss": result}))
    return result


if __name__ == "__main__":
    main()
