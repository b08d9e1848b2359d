"""One concern over every integration: SB3 PPO and SAC, our TD-MPC2 trainer and the CleanRL script
write the same `prune/*` tag set (`driver.TAGS`) into real event files and print the closing summary."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Set, Tuple

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdmpc_prune.driver import PREFIX, TAGS
from tdmpc_prune.pruner import Pruner

ROOT = Path(__file__).resolve().parent.parent
PRUNE = dict(sparsity=0.5, schedule="iterative", iterations=2, start=0.2, end=0.6, l1=1e-4)


def _events(directory: str) -> Dict[str, Set[str]]:
    ea = EventAccumulator(directory, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    return {kind: set(tags[kind]) for kind in ("scalars", "histograms", "images", "tensors")}


def templates(tags: Set[str], pruner: Pruner) -> Set[str]:
    """`prune/*` tags with group ids and component names replaced by `<group>` / `<component>`."""
    groups = {g.id for g in pruner.groups}
    components = {c for g in pruner.groups for c in g.components} | {"coupling"}
    out = set()
    for tag in tags:
        if not tag.startswith("prune/"):
            continue
        tag = re.sub(r"/text_summary$", "", tag)  # how TensorBoard stores a text tag
        head, _, tail = tag.rpartition("/")
        if head in ("prune/importance", "prune/lambda") and tail in groups:
            tag = f"{head}/<group>"
        elif head == "prune/importance_hist" and tail in components:
            tag = f"{head}/<component>"
        out.add(tag)
    return out


def _sb3(name: str, tmp_path: Path) -> Tuple[str, Pruner]:
    from test_sb3 import make

    from tdmpc_prune.sb3 import get_pruner, wrap

    model = wrap(make(name, tensorboard_log=str(tmp_path)), criterion="bayes", log_freq=64, **PRUNE)
    model.learn(320, tb_log_name=name)
    return str(tmp_path / f"{name}_1"), get_pruner(model)


def _tdmpc2(tmp_path: Path) -> Tuple[str, Pruner]:
    from test_tdmpc2_train import tokens

    from tdmpc_prune.tdmpc2.train import train

    options = [f"prune.{k}={v}" for k, v in PRUNE.items()]
    trainer = train(tokens(tmp_path, "pruned", 250, 125, 250, "--prune", *options))
    callback = next(cb for cb in trainer.callbacks if getattr(cb, "name", "") == "prune")
    return trainer.directory, callback.pruner


def _cleanrl(tmp_path: Path) -> Tuple[str, Pruner]:
    spec = importlib.util.spec_from_file_location("cleanrl_sac", ROOT / "plugins" / "cleanrl" / "sac_continuous_action_pruned.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    pruners = []
    original = script.PruneDriver

    class Keep(original):  # the script's own driver, remembered so the test can read its pruner
        def __init__(self, pruner: Pruner, *args: Any, **kwargs: Any):
            pruners.append(pruner)
            super().__init__(pruner, *args, **kwargs)

    script.PruneDriver = Keep
    args = script.Args(total_timesteps=1200, learning_starts=300, batch_size=32, hidden=32, logdir=str(tmp_path),
                       cuda=False, prune_iterations=2, prune_l1=PRUNE["l1"])
    result = script.main(args)
    assert result["events"] == 2 and result["params"] < 0.6 * result["dense_params"]  # pruning fired, parameters fell
    cleanrl_tags = {"charts/episodic_return", "charts/SPS", "losses/qf1_loss", "losses/actor_loss", "losses/alpha"}
    assert cleanrl_tags <= _events(result["run_dir"])["scalars"]  # CleanRL's own tags beside prune/*
    return result["run_dir"], pruners[0]


RUNS: Dict[str, Callable[[Path], Tuple[str, Pruner]]] = {
    "sb3_ppo": lambda p: _sb3("ppo", p),
    "sb3_sac": lambda p: _sb3("sac", p),
    "tdmpc2": _tdmpc2,
    "cleanrl_sac": _cleanrl,
}


@pytest.mark.parametrize("integration", sorted(RUNS))
def test_every_integration_writes_one_tag_set_and_a_closing_summary(integration, tmp_path, capsys) -> None:
    run_dir, pruner = RUNS[integration](tmp_path)
    assert pruner.history, "no pruning event fired"
    tags = _events(run_dir)
    found = set().union(*(templates(t, pruner) for t in tags.values()))
    assert found == set(TAGS), (sorted(set(TAGS) - found), sorted(found - set(TAGS)))
    assert {f"prune/importance/{g.id}" for g in pruner.groups} <= tags["scalars"]  # every group, not only couplings
    assert "prune/importance_heatmap" in tags["images"]
    out = capsys.readouterr().out
    assert f"{PREFIX} run finished at step" in out and f"{PREFIX}   view: tensorboard --logdir " in out, out[-2000:]
    assert re.search(r"params [\d,]+ of [\d,]+ dense \(0\.\d+\), FLOPs", out)
    assert "tdmpc_prune]" not in out  # one prefix
