"""rl-zoo3 builds the callback from a hyperparameter yaml, with no code (plugins/rl_zoo3/)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
import yaml
from stable_baselines3 import PPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tdmpc_prune.sb3 import PruningCallback, get_pruner

pytest.importorskip("rl_zoo3")
th.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "rl_zoo3"


@pytest.mark.parametrize("name", ["ppo_pruned.yml", "sac_pruned.yml"])
def test_yaml_builds_the_callback(name: str) -> None:
    from rl_zoo3.utils import get_callback_list

    for hyperparams in yaml.safe_load((PLUGIN / name).read_text()).values():
        callbacks = get_callback_list(hyperparams)
        assert len(callbacks) == 1 and isinstance(callbacks[0], PruningCallback)
        assert callbacks[0].options["sparsity"] == 0.75


def test_zoo_trains_and_saves_a_pruned_agent(tmp_path) -> None:
    config = yaml.safe_load((PLUGIN / "ppo_pruned.yml").read_text())
    options = config["CartPole-v1"]["callback"][0]["tdmpc_prune.sb3.PruningCallback"]
    options.update(iterations=3, heatmap=False)  # the plugin's settings, fewer events for a short test
    (tmp_path / "ppo.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "CartPole-v1",
        "-conf", str(tmp_path / "ppo.yml"), "-n", "640", "-f", str(tmp_path / "logs"),
        "-tb", str(tmp_path / "tb"), "--eval-freq", "-1", "--seed", "0", "--num-threads", "1",
        "-params", "n_envs:2", "n_epochs:2",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model = PPO.load(tmp_path / "logs" / "ppo" / "CartPole-v1_1" / "CartPole-v1.zip", device="cpu")
    assert model.policy_kwargs["net_arch"] == {"pi": [16, 16], "vf": [16, 16]}  # 75 % of 64, stock load
    assert get_pruner(model).sparsity() == pytest.approx(0.75)
    acc = EventAccumulator(str(tmp_path / "tb" / "CartPole-v1" / "PPO_1"))
    acc.Reload()
    assert acc.Scalars("prune/sparsity")[-1].value == pytest.approx(0.75)
