"""`tdmpc-prune train --prune`: real short dm-control runs, the prune/* TensorBoard view, resume mid-pruning."""
from __future__ import annotations

import os

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdmpc_prune.cli import main
from tdmpc_prune.tdmpc2.train import train
from test_tdmpc2_train import Crash, assert_same_state, tokens

PRUNE = ["--prune", "prune.schedule=iterative", "prune.start=100", "prune.end=200", "prune.iterations=2",
         "prune.sparsity=0.5", "prune.l1=1e-4", "prune.l1_period=50"]


def _events(run_dir: str) -> EventAccumulator:
    ea = EventAccumulator(run_dir, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _hparams(ea: EventAccumulator) -> dict:
    """The run's hparams as the TensorBoard HPARAMS plugin reads them (session start info)."""
    from google.protobuf.json_format import MessageToDict
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = ea.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/episode_reward"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert data.WhichOneof("data") == "session_start_info"
    hparams = {k: MessageToDict(v) for k, v in data.session_start_info.hparams.items()}
    assert {h.name for h in experiment.hparam_infos} == set(hparams)  # every logged value is declared
    return hparams


def test_pruned_and_dense_runs_side_by_side(tmp_path):
    dense = train(tokens(tmp_path, "dense", 250, 100, 250))
    pruned = train(tokens(tmp_path, "pruned", 250, 100, 250, *PRUNE))
    task_dir = lambda run: os.path.dirname(os.path.dirname(run.directory))  # noqa: E731  logdir/<task>/<exp>/seed-1
    assert task_dir(dense) == task_dir(pruned) and os.path.basename(pruned.directory) == "seed-1"
    ea = _events(pruned.directory)
    tags = ea.Tags()
    for tag in ("prune/sparsity", "prune/params", "prune/params_ratio", "prune/flops", "prune/flops_ratio",
                "prune/plan_ms", "prune/importance/_encoder.state.1", "prune/lambda/_dynamics.0",
                "eval/episode_reward", "train/episode_reward"):
        assert tag in tags["scalars"], tag
    assert any(t.startswith("prune/importance_hist/") for t in tags["histograms"])
    assert "prune/importance_heatmap" in tags["images"]
    sparsity = {e.step: e.value for e in ea.Scalars("prune/sparsity")}
    params = [e.value for e in ea.Scalars("prune/params")]
    assert sparsity[0] == 0.0 and abs(max(sparsity.values()) - 0.5) < 1e-9
    assert params[0] == dense.agent.model.total_params and params[-1] < 0.6 * params[0]  # params fall
    assert min(e.step for e in ea.Scalars("prune/sparsity") if e.value > 0) >= 100  # not before prune.start
    # the pruned model trained on, evaluated, and its config describes its shape
    assert pruned.agent.model._dynamics[0].out_features == 16 and pruned.cfg.dynamics_dims == [16, 16]
    assert len(ea.Scalars("eval/episode_reward")) == len(_events(dense.directory).Scalars("eval/episode_reward"))
    # the prune options are hparams of the run, with the values given on the command line
    hp = _hparams(ea)
    from tdmpc_prune.config import PruneConfig

    expected = {"prune.schedule": "iterative", "prune.start": 100, "prune.end": 200, "prune.iterations": 2,
                "prune.sparsity": 0.5, "prune.l1": 1e-4, "prune.l1_period": 50,
                "prune.criterion": PruneConfig().criterion, "prune.coupling": PruneConfig().coupling,
                "prune.physical": True, "task": "cartpole-balance", "total_params": params[0]}
    for key, value in expected.items():
        assert key in hp, (key, sorted(hp))
        assert hp[key] == value, (key, hp[key], value)
    assert not any(k.startswith("prune.") for k in _hparams(_events(dense.directory)))  # only the pruned run
    # params and FLOPs fall, the planner latency is measured
    flops = [e.value for e in ea.Scalars("prune/flops")]
    plan_ms = [e.value for e in ea.Scalars("prune/plan_ms")]
    assert params[-1] < params[0] and flops[-1] < flops[0] and flops[-1] < 0.6 * flops[0]
    assert all(b <= a for a, b in zip(params, params[1:])) and all(b <= a for a, b in zip(flops, flops[1:]))
    assert plan_ms and all(v > 0 for v in plan_ms)


def test_resume_mid_pruning_reproduces_the_uninterrupted_run(tmp_path):
    full = train(tokens(tmp_path, "full", 250, 100, 50, *PRUNE))
    with pytest.raises(KeyboardInterrupt):
        train(tokens(tmp_path, "crash", 250, 100, 50, *PRUNE), callbacks=[Crash(at=160)])
    ckpt = torch.load(os.path.join(tmp_path, "cartpole-balance", "crash", "seed-1", "checkpoint.pt"), weights_only=False)
    assert ckpt["counters"]["step"] == 150 and len(ckpt["callbacks"]["prune"]["pruner"]["history"]) == 1  # mid-pruning
    assert ckpt["cfg"]["latent_dim"] < ckpt["callbacks"]["prune"]["original_cfg"]["latent_dim"] or \
        ckpt["cfg"]["dynamics_dims"] != ckpt["callbacks"]["prune"]["original_cfg"]["dynamics_dims"]
    resumed = train(tokens(tmp_path, "crash", 250, 100, 50, "resume=true", "--prune"))
    prune = next(cb for cb in resumed.callbacks if getattr(cb, "name", "") == "prune")
    ref = next(cb for cb in full.callbacks if getattr(cb, "name", "") == "prune")
    assert prune.pruner.history == ref.pruner.history and len(ref.pruner.history) == 2
    assert_same_state(ref.pruner.state_dict(), prune.pruner.state_dict())
    assert_same_state(full.agent.state_dict(), resumed.agent.state_dict())


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prune", "prune.sparsty=0.5"], "unknown prune option 'prune.sparsty'. Did you mean 'sparsity'"),
        (["--prune", "prune.sparsity=1.5"], "sparsity must be a fraction in [0, 1)"),
        (["--prune", "prune.criterion=fischer"], "Did you mean 'fisher'"),
        (["prune.sparsity=0.5"], "add --prune"),
        (["--prune", "prune.schedule=oneshot", "prune.start=0", "prune.sparsity=0.99"], "whole layer"),
        (["--prune", "prune.coupling=prune", "prune.coupling_sparsity=0.9", "prune.schedule=oneshot", "prune.start=0"],
         "cannot go below one simplex"),
    ],
)
def test_cli_rejects_bad_prune_input(tmp_path, capsys, extra, message):
    assert main(["train"] + tokens(tmp_path, "bad", 60, 60, 60) + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_resume_of_a_pruning_run_needs_prune(tmp_path, capsys):
    train(tokens(tmp_path, "p", 120, 100, 100, "--prune", "prune.schedule=oneshot", "prune.start=100"))
    assert main(["train"] + tokens(tmp_path, "p", 200, 100, 100, "resume=true")) == 2
    assert "resume it with --prune" in capsys.readouterr().err
    assert main(["train"] + tokens(tmp_path, "p", 200, 100, 100, "resume=true", "--prune", "prune.sparsity=0.3")) == 2
    assert "different prune options" in capsys.readouterr().err


def test_a_pruning_run_is_the_dense_run_until_its_first_event(tmp_path):
    """Attaching, statistics and the prune/* logging consume no randomness and change no gradient
    (l1=0): before its first event a pruned run is bit for bit the dense run it is compared with."""
    dense = train(tokens(tmp_path, "dense", 150, 50, 150))
    watched = train(tokens(tmp_path, "watched", 150, 50, 150, "--prune", "prune.schedule=oneshot", "prune.start=100000"))
    assert watched.callbacks[-1].pruner.history == [] and watched.callbacks[-1].pruner.stats.n_obs > 0
    assert_same_state(dense.agent.state_dict(), watched.agent.state_dict())
    rewards = lambda t: [(e.step, e.value) for e in _events(t.directory).Scalars("eval/episode_reward")]  # noqa: E731
    assert rewards(dense) == rewards(watched) and len(rewards(dense)) == 4
