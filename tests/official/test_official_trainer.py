"""The official `OnlineTrainer` with `--prune` on CPU, through the launcher's own composition and training code.

The command line goes through `train_prune.split_argv` and the launcher's primary config over the
real official config.yaml; the run is `train_prune.train_pruned` on the official trainer, agent,
buffer, logger and dm-control environment. One change to the official run: 500 seed steps (one
episode, when the first episode reaches the buffer) instead of max(1000, 5 * 500), so that a few
hundred steps reach the pruning events (the official 2,500 seed updates alone would take minutes).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plugin_launcher import load_launcher

STEPS, SEED_STEPS = 700, 500
PRUNE = ["--prune", "prune.criterion=bayes", "prune.sparsity=0.5", "prune.schedule=gradual", "prune.start=0.2",
         "prune.end=0.8", "prune.iterations=3", "prune.l1=1e-4", "prune.log_every=50"]


def test_official_online_trainer_prunes_while_it_trains(official, tmp_path, monkeypatch) -> None:
    pytest.importorskip("torchrl", reason="the official replay buffer needs torchrl (installed in .venv-official)")
    tp = load_launcher()
    monkeypatch.chdir(tmp_path)  # parse_cfg puts work_dir under the original working directory
    prune, argv, base = tp.split_argv([*PRUNE, f"steps={STEPS}", "eval_episodes=1", f"eval_freq={10 * STEPS}"])
    assert prune and base == "config"
    cfg = official.compose(*argv, config_name=tp.register_primary(base))
    opts = tp.pop_prune_options(cfg)
    assert "prune" not in cfg and opts["criterion"] == "bayes" and opts["log_every"] == 50
    cfg = official.module("common.parser").parse_cfg(cfg)
    official.module("common.seed").set_seed(cfg.seed)
    env = official.module("envs").make_env(cfg)
    assert cfg.seed_steps == 2500  # the official choice
    cfg.seed_steps = SEED_STEPS
    agent = official.agent(cfg)
    trainer = official.module("trainer.online_trainer").OnlineTrainer(
        cfg=cfg, env=env, agent=agent, buffer=official.module("common.buffer").Buffer(cfg),
        logger=official.module("common.logger").Logger(cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = tp.train_pruned(trainer, cfg, opts, offline=False)

    span = STEPS - SEED_STEPS
    events = [h["clock"] for h in pruner.history]
    assert len(events) == 3 and SEED_STEPS + 0.2 * span <= events[0] < events[-1] <= SEED_STEPS + 0.8 * span
    assert trainer._step == STEPS + 1 and agent.model._dynamics[0].out_features == 16  # mlp_dim 32 halved
    dense, params = pruner.dense_params, pruner.param_count()
    assert params < 0.6 * dense
    state = torch.load(cfg.work_dir / "prune_state.pt", weights_only=False)
    assert state["first_step"] == SEED_STEPS and state["clock"] == STEPS and len(state["history"]) == 3

    acc = EventAccumulator(str(cfg.work_dir / "tb"), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    sparsity = acc.Scalars("prune/sparsity")
    assert {e.step for e in sparsity} >= set(events)  # written at every event (and every 50 updates)
    logged_params = [e.value for e in acc.Scalars("prune/params")]
    assert logged_params[0] == dense > logged_params[-1] == params
    assert all(a >= b for a, b in zip(logged_params, logged_params[1:]))  # parameters only fall
    assert any(t.startswith("prune/importance_hist/") for t in acc.Tags()["histograms"])
    heatmap_warnings = [w for w in caught if "importance_heatmap" in str(w.message)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the official environment has no matplotlib: skipped, said once
        assert len(heatmap_warnings) == 1 and acc.Tags()["images"] == []
    else:
        assert heatmap_warnings == [] and acc.Tags()["images"] == ["prune/importance_heatmap"]
