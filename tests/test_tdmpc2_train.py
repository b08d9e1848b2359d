"""`tdmpc-prune train`: real short dm-control runs, TensorBoard events, callbacks, resume, bad input."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdmpc_prune.cli import main
from tdmpc_prune.tdmpc2.train import train

os.environ["MUJOCO_GL"] = "disable"
torch.set_num_threads(1)

TINY = ["task=cartpole-balance", "model_size=cpu", "enc_dim=32", "mlp_dim=32", "latent_dim=16", "num_q=2",
        "episode_length=25", "seed_steps=50", "batch_size=8", "num_samples=16", "num_elites=4", "num_pi_trajs=2",
        "iterations=1", "eval_episodes=1", "log_freq=10", "progress=false", "threads=1"]


def tokens(logdir, name: str, steps: int = 200, eval_freq: int = 100, save_freq: int = 100, *extra: str):
    return TINY + [f"logdir={logdir}", f"exp_name={name}", f"steps={steps}", f"eval_freq={eval_freq}",
                   f"save_freq={save_freq}", *extra]


def scalars(run_dir: str) -> EventAccumulator:
    ea = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    ea.Reload()
    return ea


def assert_same_state(a, b, path: str = "") -> None:
    """Exact equality of nested checkpoint state (tensors bit-for-bit)."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=f"{path} differs")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


class Recorder:
    """A stateful callback: counts what it sees and logs through the trainer's writer."""

    name = "recorder"

    def __init__(self):
        self.updates = 0
        self.episodes = []
        self.evals = []
        self.started_with = None

    def on_train_start(self, trainer):
        self.started_with = (trainer.step, self.updates)

    def on_update(self, trainer, step, info):
        self.updates += 1
        assert isinstance(info["total_loss"], torch.Tensor)

    def on_episode_end(self, trainer, step, info):
        self.episodes.append((step, info["episode_reward"]))
        trainer.writer.add_scalar("custom/updates_seen", self.updates, step)

    def on_eval(self, trainer, step, metrics):
        self.evals.append(step)

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, d):
        self.updates = d["updates"]


class Crash:
    """Simulates a killed process: raises once the run passes `at` env steps."""

    def __init__(self, at: int):
        self.at = at

    def on_episode_end(self, trainer, step, info):
        if step >= self.at:
            raise KeyboardInterrupt("simulated crash")


def test_short_run_logs_everything_to_tensorboard(tmp_path):
    rec = Recorder()
    trainer = train(tokens(tmp_path, "short"), callbacks=[rec])
    run_dir = os.path.join(tmp_path, "cartpole-balance", "short", "seed-1")
    assert trainer.directory == run_dir and trainer.total_steps == 200 and trainer.step == 200
    assert os.path.exists(os.path.join(run_dir, "checkpoint.pt")) and not glob.glob(os.path.join(run_dir, "*.tmp"))
    ea = scalars(run_dir)
    tags = set(ea.Tags()["scalars"])
    losses = {"consistency_loss", "reward_loss", "value_loss", "total_loss", "grad_norm", "pi_loss", "pi_grad_norm",
              "pi_entropy", "pi_scaled_entropy", "pi_scale"}
    assert {f"train/{k}" for k in losses} <= tags
    assert {"eval/episode_reward", "eval/episode_length", "train/episode_reward", "train/steps_per_second",
            "custom/updates_seen"} <= tags
    assert [e.step for e in ea.Scalars("eval/episode_reward")] == [0, 100, 200]
    train_rewards = ea.Scalars("train/episode_reward")
    assert [e.step for e in train_rewards] == [50, 100, 150, 200]
    assert all(0 <= e.value <= 2 * 25 for e in train_rewards)  # reward <= 1 per physics step, 2 per agent step
    assert [e.value for e in ea.Scalars("eval/episode_length")] == [25, 25, 25]
    assert all(e.value > 0 for e in ea.Scalars("train/steps_per_second"))
    assert all(e.value == e.value for e in ea.Scalars("train/total_loss"))
    # pretraining: one update per agent step collected when the seed steps end, then one per step
    assert trainer.updates == 25 + 75 == rec.updates
    assert [s for s, _ in rec.episodes] == [50, 100, 150, 200] and rec.evals == [0, 100, 200]
    assert "_hparams_/experiment" in ea.PluginTagToContent("hparams")


def test_resume_after_a_crash_is_bit_for_bit(tmp_path):
    full = train(tokens(tmp_path, "full", 250, 100, 50))
    with pytest.raises(KeyboardInterrupt):
        train(tokens(tmp_path, "crash", 250, 100, 50), callbacks=[Recorder(), Crash(at=150)])
    ckpt = torch.load(os.path.join(tmp_path, "cartpole-balance", "crash", "seed-1", "checkpoint.pt"), weights_only=False)
    assert ckpt["counters"]["step"] == 100 and ckpt["callbacks"]["recorder"]["updates"] > 0
    rec = Recorder()
    resumed = train(tokens(tmp_path, "crash", 250, 100, 50, "resume=true"), callbacks=[rec])
    assert rec.started_with == (100, ckpt["callbacks"]["recorder"]["updates"])  # restored before training went on
    assert resumed.step == full.step == 250 and resumed.updates == full.updates == rec.updates
    assert_same_state(full.agent.state_dict(), resumed.agent.state_dict())
    assert_same_state(full.buffer.state_dict(), resumed.buffer.state_dict())
    ea_full = scalars(full.directory)
    ea_res = scalars(resumed.directory)
    # an evaluation between the checkpoint and the crash is repeated on resume, with the same result
    by_step = lambda ea: {e.step: e.value for e in ea.Scalars("eval/episode_reward")}  # noqa: E731
    assert by_step(ea_full) == by_step(ea_res) and sorted(by_step(ea_full)) == [0, 100, 200, 250]


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    args = tokens(tmp_path, "killed", 400, 200, 100)
    cmd = [sys.executable, "-m", "tdmpc_prune.cli", "train", *args]
    env = {**os.environ, "MUJOCO_GL": "disable"}
    ckpt = os.path.join(tmp_path, "cartpole-balance", "killed", "seed-1", "checkpoint.pt")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    step = torch.load(ckpt, weights_only=False)["counters"]["step"]
    assert 0 < step < 400
    resumed = train(args + ["resume=true"])
    full = train(tokens(tmp_path, "reference", 400, 200, 100))
    assert_same_state(full.agent.state_dict(), resumed.agent.state_dict())
    assert_same_state(full.buffer.state_dict(), resumed.buffer.state_dict())


@pytest.mark.parametrize(
    "args, message",
    [
        (["task=cartpole-balanse"], "unknown dm-control task 'cartpole-balanse'. Did you mean cartpole-balance"),
        (["task=walker-wlak"], "Did you mean walker-walk"),
        (["stepz=10"], "unknown override key 'stepz'. Did you mean 'steps'"),
        (["steps=many"], "steps='many': expected an integer"),
        (["progress=sometimes"], "expected a boolean"),
        (["latent_dim=20"], "latent_dim=20 is not a multiple of the SimNorm group size simnorm_dim=8"),
        (["resume=true"], "resume=true but there is no checkpoint"),
        (["device=tpu"], "choose auto, cpu, cuda"),
        pytest.param(["device=cuda"], "CUDA is not available; use device=cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    ],
)
def test_cli_rejects_bad_input_with_a_clear_message(tmp_path, capsys, args, message):
    code = main(["train", f"logdir={tmp_path}", "progress=false", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_cli_usage_and_unknown_command(capsys):
    assert main([]) == 0 and "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "  steps=100000" in out and "  model_size=5" in out and "  prune.sparsity=0.5" in out
    assert main(["trian"]) == 2 and "Did you mean 'train'" in capsys.readouterr().err


def test_resume_refuses_architecture_changes(tmp_path, capsys):
    train(tokens(tmp_path, "arch", 100, 100, 50))
    code = main(["train", *tokens(tmp_path, "arch", 150, 100, 50, "resume=true", "mlp_dim=64")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot change mlp_dim when resuming" in err
    resumed = train(tokens(tmp_path, "arch", 150, 100, 50, "resume=true"))  # more steps is fine
    assert resumed.step == 150


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path, capsys):
    first = train(tokens(tmp_path, "keep", 50, 50, 50))
    ckpt = os.path.join(first.directory, "checkpoint.pt")
    with open(ckpt, "rb") as f:
        saved = f.read()
    assert main(["train", *tokens(tmp_path, "keep", 100, 50, 50)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "resume=true" in err and "exp_name=" in err
    with open(ckpt, "rb") as f:
        assert f.read() == saved  # the first run's data is untouched


def test_runs_with_different_options_get_different_default_directories(tmp_path):
    run = TINY + [f"logdir={tmp_path}", "steps=100", "eval_freq=100", "save_freq=100"]
    dense = train(run)
    pruned = train(run + ["--prune", "prune.schedule=oneshot", "prune.start=60", "prune.sparsity=0.25"])
    name = lambda trainer: os.path.basename(os.path.dirname(trainer.directory))  # noqa: E731
    assert os.path.dirname(os.path.dirname(dense.directory)) == os.path.join(str(tmp_path), "cartpole-balance")
    assert name(dense).startswith("default-batch_size=8,enc_dim=32,episode_length=25,iterations=1,")
    assert name(pruned).startswith("pruned-schedule=oneshot,sparsity=0.25,start=60,batch_size=8,")
    assert len(name(pruned)) <= 120 and "/" not in name(pruned)
    assert pruned.agent.model.total_params < dense.agent.model.total_params
