"""`tdmpc-prune train` as a real hydra application: one parser, -m sweeps, launchers, run names, cost tags."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdmpc_prune.cli import main
from tdmpc_prune.config import PruneConfig
from tdmpc_prune.errors import PruneConfigError
from tdmpc_prune.tdmpc2.config import ConfigError, parse_overrides
from tdmpc_prune.tensorboard import ImportanceHeatmap
from test_tdmpc2_train import TINY

os.environ["MUJOCO_GL"] = "disable"
torch.set_num_threads(1)
ENV = {**os.environ, "MUJOCO_GL": "disable", "PYTHONWARNINGS": "ignore"}
COST_TAGS = {"prune/params", "prune/params_ratio", "prune/flops", "prune/flops_ratio", "prune/sparsity", "prune/plan_ms"}


def events(run_dir: str) -> EventAccumulator:
    ea = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def run_dirs(logdir) -> list:
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(str(logdir), "*", "*", "seed-*", "checkpoint.pt")))


# ------------------------------------------------------------------------------------ one parser
def test_agent_and_prune_options_are_parsed_alike():
    cfg = parse_overrides(["compile=on", "steps=1e5", "progress=no", "seed_steps=1_000"]).cfg
    assert (cfg.compile, cfg.steps, cfg.progress, cfg.seed_steps) == (True, 100_000, False, 1000)
    prune = PruneConfig.from_overrides(["prune.physical=on", "prune.iterations=1e3", "prune.compensate=yes",
                                        "prune.start=1000", "prune.end=0.9", "prune.observe=all"])
    assert (prune.physical, prune.iterations, prune.compensate) == (True, 1000, True)
    assert isinstance(prune.start, int) and isinstance(prune.end, float) and tuple(prune.observe) == ("all",)
    with pytest.raises(ConfigError, match=r"^compile='maybe': expected a boolean \(true or false"):
        parse_overrides(["compile=maybe"])
    with pytest.raises(PruneConfigError, match=r"^prune.physical='maybe': expected a boolean \(true or false"):
        PruneConfig.from_overrides(["prune.physical=maybe"])
    with pytest.raises(ConfigError, match=r"^steps=2.5: expected an integer$"):
        parse_overrides(["steps=2.5"])
    with pytest.raises(PruneConfigError, match=r"^prune.iterations=2.5: expected an integer$"):
        PruneConfig.from_overrides(["prune.iterations=2.5"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["seed=1,2"], "'seed=1,2' is a sweep: add -m"),
        (["-m", "seed=1,two"], "seed='two': expected an integer"),  # every value of a sweep is checked up front
        (["-m", "--prune", "prune.sparsity=0.5,1.5"], "sparsity must be a fraction in [0, 1), got 1.5"),
        (["-m", "stepz=1,2"], "unknown override key 'stepz'. Did you mean 'steps'"),
        (["--frobnicate"], "unknown flag '--frobnicate'"),
        (["steps=[1"], "cannot parse the override 'steps=[1'"),
        (["hydra/launcher=nope"], "hydra: "),
    ],
)
def test_bad_sweeps_and_flags_fail_in_one_line_before_any_run(tmp_path, capsys, args, words):
    assert main(["train", f"logdir={tmp_path / 'runs'}", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------ sweeps
def test_a_sweep_gives_every_run_its_own_directory_and_a_dense_run_logs_the_cost_tags(tmp_path, capsys):
    """The basic launcher: a sweep of a run-control key (steps, which a single run's name leaves out)
    gives one directory per run; all sit under one logdir; the dense runs write the pruned run's cost tags."""
    logdir = tmp_path / "runs"
    base = [*TINY, f"logdir={logdir}", "eval_freq=100", "save_freq=100"]
    assert main(["train", "-m", *base, "steps=50,60"]) == 0
    assert main(["train", *base, "steps=60", "--prune", "prune.schedule=oneshot", "prune.start=55", "prune.sparsity=0.25"]) == 0
    dirs = run_dirs(logdir)
    names = [os.path.basename(os.path.dirname(d)) for d in dirs]
    assert len(dirs) == 3 and len(set(names)) == 3, names
    assert {n.split(",")[0] for n in names if n.startswith("default-")} == {"default-steps=50", "default-steps=60"}
    assert os.path.exists(logdir / "multirun.yaml")  # the sweep's configuration beside its runs
    pruned = next(d for d in dirs if "pruned-" in d)
    dense = [d for d in dirs if d != pruned]
    pruned_tags = set(events(pruned).Tags()["scalars"])
    assert COST_TAGS <= pruned_tags
    for d in dense:
        ea = events(d)
        assert COST_TAGS <= set(ea.Tags()["scalars"]), ea.Tags()["scalars"]
        assert [e.value for e in ea.Scalars("prune/params_ratio")] == [1.0, 1.0]  # at the start and the eval
        assert ea.Scalars("prune/params")[0].value == events(pruned).Scalars("prune/params")[0].value  # same dense model
        assert ea.Scalars("prune/plan_ms")[-1].value > 0
    heatmap = events(pruned).Images("prune/importance_heatmap")[-1]
    assert heatmap.width <= 640 and heatmap.height >= 26 * 10  # one readable row per group (10 groups)
    # a named sweep: the name plus the swept values
    assert main(["train", "-m", *base, "exp_name=named", "steps=50", "batch_size=8,16"]) == 0
    assert {"named-batch_size=8", "named-batch_size=16"} <= set(os.listdir(logdir / "cartpole-balance"))


def test_joblib_launcher_runs_two_tiny_runs_in_parallel(tmp_path):
    """hydra-joblib-launcher: two CPU-preset runs of a few hundred steps at once, each in its own process
    and directory, under one TensorBoard logdir."""
    logdir = tmp_path / "runs"
    args = ["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "task=cartpole-balance", "model_size=cpu",
            "steps=200", "seed_steps=100", "episode_length=50", "eval_freq=200", "save_freq=200", "eval_episodes=1",
            "iterations=2", "num_samples=64", "num_elites=8", "num_pi_trajs=4", "batch_size=32", "progress=false",
            "threads=1", f"logdir={logdir}", "seed=1,2", "--prune", "prune.schedule=oneshot", "prune.start=150"]
    proc = subprocess.run([sys.executable, "-m", "tdmpc_prune.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    dirs = run_dirs(logdir)
    assert [os.path.basename(d) for d in dirs] == ["seed-1", "seed-2"] and len({os.path.dirname(d) for d in dirs}) == 1
    spans = []
    for d in dirs:
        ea = events(d)
        assert ea.Scalars("eval/episode_reward")[-1].step == 200 and ea.Scalars("prune/sparsity")[-1].value == 0.5
        times = [e.wall_time for tag in ea.Tags()["scalars"] for e in ea.Scalars(tag)]
        spans.append((min(times), max(times)))
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the two runs overlapped in time


def test_the_shipped_launcher_configs_compose(capsys):
    """hydra/launcher=slurm (submitit) composes from the shipped config; ray_cluster needs the `ray` extra."""
    assert main(["train", "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=cpu"]) == 0
    out = capsys.readouterr().out
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in out
    assert "cpus_per_task: 2" in out and "partition: cpu" in out
    if importlib_util_find("hydra_plugins.hydra_ray_launcher"):
        assert main(["train", "--cfg", "hydra", "hydra/launcher=ray_cluster"]) == 0
        assert "RayLauncher" in capsys.readouterr().out


def importlib_util_find(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_the_heatmap_has_one_readable_row_per_group():
    heatmap = ImportanceHeatmap()
    heatmap.labels = [f"group.{i} · component" for i in range(12)]
    heatmap.columns = [torch.rand(12).numpy() + 1e-6 for _ in range(30)]
    heatmap.steps = list(range(0, 30_000, 1000))
    image = heatmap.render()
    assert image.shape[1] == 600 and image.shape[0] >= 26 * 12 and image.shape[2] == 3
