"""The prune/* view through SB3's own logger: dense and pruned runs side by side in one logdir."""
from __future__ import annotations

import os

import pytest
import torch as th
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdmpc_prune.sb3 import get_pruner, wrap
from tdmpc_prune.tensorboard import repeated_steps
from test_sb3 import SCHEDULE, STEPS, make

th.set_num_threads(1)


def read(run_dir: str) -> EventAccumulator:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_dense_and_pruned_runs_side_by_side(tmp_path) -> None:
    logdir = str(tmp_path)
    dense = make("ppo", tensorboard_log=logdir)
    dense.learn(STEPS, tb_log_name="ppo_dense")
    pruned = wrap(make("ppo", tensorboard_log=logdir), criterion="bayes", **{**SCHEDULE, "heatmap": True, "log_freq": 64})
    pruned.learn(STEPS, tb_log_name="ppo_bayes_50")
    assert sorted(os.listdir(logdir)) == ["ppo_bayes_50_1", "ppo_dense_1"]

    d = read(os.path.join(logdir, "ppo_dense_1"))
    assert "rollout/ep_rew_mean" in d.Tags()["scalars"]
    assert not [t for t in d.Tags()["scalars"] if t.startswith("prune/")]

    acc = read(os.path.join(logdir, "ppo_bayes_50_1"))
    assert not repeated_steps(os.path.join(logdir, "ppo_bayes_50_1"))  # no tag twice at one step
    tags = acc.Tags()
    assert "rollout/ep_rew_mean" in tags["scalars"]
    pruner = get_pruner(pruned)
    last = {t: acc.Scalars(t)[-1] for t in tags["scalars"] if t.startswith("prune/")}
    assert last["prune/sparsity"].value == pytest.approx(pruner.sparsity(), abs=1e-6)
    assert last["prune/sparsity"].value == pytest.approx(0.5, abs=0.02)
    assert last["prune/sparsity"].step == STEPS
    assert acc.Scalars("prune/sparsity")[0].value == 0.0  # logged before the first event, too
    assert last["prune/params"].value == pruner.param_count() < pruner.dense_params
    assert 0 < last["prune/flops"].value < acc.Scalars("prune/flops")[0].value
    assert last["prune/params_ratio"].value == pytest.approx(pruner.param_count() / pruner.dense_params)
    for g in pruner.groups:  # per-group importance
        assert f"prune/importance/{g.id}" in last
    assert {"prune/importance_hist/policy_net", "prune/importance_hist/value_net"} <= set(tags["histograms"])
    assert "prune/importance_heatmap" in tags["images"]
    image = acc.Images("prune/importance_heatmap")[-1]
    assert image.width > 100 and image.height > 50


def test_no_media_work_without_a_media_output(monkeypatch, tmp_path) -> None:
    """Without TensorBoard (stdout/log/csv only) no histogram or heatmap is computed; with it, they are."""
    from stable_baselines3.common.logger import configure

    from tdmpc_prune.sb3.callback import LoggerSink
    from tdmpc_prune.tensorboard import ImportanceHeatmap, log_pruner

    renders, render = [], ImportanceHeatmap.render
    monkeypatch.setattr(ImportanceHeatmap, "render", lambda self, labels=None: renders.append(1) or render(self, labels))
    model = wrap(make("ppo"), criterion="bayes", total_timesteps=100_000, **SCHEDULE)
    model.learn(128)  # statistics gathered, no event
    pruner = get_pruner(model)
    text_only = LoggerSink(configure(str(tmp_path), ["csv"]))
    assert not text_only.shows_media
    heatmap = ImportanceHeatmap()
    for step in (1, 2):
        log_pruner(text_only, pruner, step, heatmap)
    assert not renders and len(heatmap.columns) == 2  # columns kept for a later writer, nothing rendered

    class Media:
        def write(self, key_values, key_excluded, step=0):
            pass

        def close(self):
            pass

    logger = configure(str(tmp_path), ["csv"])
    logger.output_formats.append(Media())
    assert LoggerSink(logger).shows_media
    log_pruner(LoggerSink(logger), pruner, 3, heatmap)
    assert renders == [1]
