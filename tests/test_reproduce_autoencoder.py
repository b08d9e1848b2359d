"""scripts/reproduce_autoencoder.py: `--quick` runs the whole study small, its JSON and files are complete, it resumes."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_autoencoder.py"
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce_autoencoder as ra  # noqa: E402

CRITERIA = ["grad", "fisher", "bayes", "combined", "magnitude", "random"]
MODES = ["protect", "prune", "encoder_only", "decoder_only"]


def _run(out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rows(path: Path) -> list:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    proc = _run(out)
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def test_quick_prints_the_loss_of_every_d_criterion_mode_and_sparsity(quick) -> None:
    _, result = quick
    losses = result["recon_loss"]
    assert sorted(losses) == ["d=256", "d=512", "d=64", "d=8"]
    for d, by_lasso in losses.items():
        assert sorted(by_lasso) == ["lasso_off", "lasso_on"]
        for node in by_lasso.values():
            dense = node["dense"]
            assert 0 < dense < 0.2  # trained: below the ~0.2 of an untrained net on [0, 1] pixels
            assert sorted(k for k in node if k != "dense") == sorted(CRITERIA)
            for crit in CRITERIA:
                assert sorted(node[crit]) == sorted(MODES)
                for mode in MODES:
                    vals = [node[crit][mode][s] for s in ("0.3", "0.5", "0.7")]
                    assert all(np.isfinite(vals)) and min(vals) >= dense * 0.99
            # the gradient criteria beat random pruning on a trained model
            assert node["grad"]["protect"]["0.7"] < node["random"]["protect"]["0.7"]


def test_quick_writes_the_csvs_figures_and_table(quick) -> None:
    out, _ = quick
    for d in (8, 64, 256, 512):
        png = out / f"autoencoder_importance_d{d}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "autoencoder_timing.png").read_bytes()[:4] == b"\x89PNG"
    groups = _rows(out / "autoencoder_groups.csv")
    for d in (8, 64, 256, 512):
        latent = [g for g in groups if int(g["d"]) == d and g["kind"] == "coupling"]
        # discovery found the latent: one coupling group of width d spanning encoder and decoder
        assert len(latent) == 1 and int(latent[0]["channels"]) == d and latent[0]["components"] == "encoder,decoder"
    prune = _rows(out / "autoencoder_prune.csv")
    runs = {(r["d"], r["l1"], r["seed"]) for r in prune}
    assert len(runs) == 8  # 4 d x lasso off/on x 1 seed
    assert len(prune) == 8 * (1 + len(CRITERIA) * len(MODES) * 3)
    assert all(r["commit"] and r["commit"] != "unknown" for r in prune)
    imp = _rows(out / "autoencoder_importance.csv")
    assert {r["criterion"] for r in imp} == set(ra.TRACKED)
    assert len(imp) == 8 * len(ra.TRACKED) * 20  # every epoch of 20
    timing = _rows(out / "autoencoder_timing.csv")
    assert {int(r["prune_epoch"]) for r in timing} == {5, 10, 15, 20} and {r["d"] for r in timing} == {"512"}
    for r in timing:
        if int(r["prune_epoch"]) == 20:  # nothing left to train after the last epoch
            assert r["loss_final"] == r["loss_at_prune"]
    md = (out / "autoencoder.md").read_text()
    assert "| 8 | off | grad |" in md and "Crossovers" in md and "Pruning time" in md


def test_a_second_run_skips_the_finished_runs(quick) -> None:
    out, result = quick
    before = (out / "autoencoder_prune.csv").read_text()
    proc = _run(out)
    assert "8 runs done, 0 to go" in proc.stdout
    assert (out / "autoencoder_prune.csv").read_text() == before
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result


def test_crossovers_count_only_swaps_that_hold() -> None:
    t = np.arange(10, dtype=float)
    a = t  # rising
    b = np.full(10, 4.5)  # flat: a crosses it once, between records 4 and 5
    c = np.where(t == 2, 10.0, -1.0)  # a one-record spike above a and b: not a lasting crossover
    events = ra.crossovers(np.stack([a, b, c], 1), persist=2)
    assert events == [(5, 0, 1)]
    assert ra.crossovers(np.stack([a, b, c], 1), persist=1) == [(5, 0, 1), (2, 0, 2), (3, 0, 2), (2, 1, 2), (3, 1, 2)]
