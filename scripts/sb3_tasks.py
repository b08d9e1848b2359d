"""The SB3 tasks of the evidence grids: rl-zoo3's tuned settings, env construction, evaluation.

Shared by `sensitivity.py` (one-shot pruning of a trained agent) and `compare_sb3.py` (pruning
during training), so both measure the same agents the same way.

PPO uses SB3's default hyper-parameters (`MlpPolicy`: separate 64x64 tanh actor and critic,
n_steps 2048, 10 epochs, batch 64, lr 3e-4), 1M steps: about 10 minutes of one core here.  rl-zoo3's
tuned HalfCheetah/Hopper settings (VecNormalize, 256x256 ReLU, n_steps 512, 20 epochs) cost 3.1 CPU-s
per 1000 steps on this machine (52 CPU-min per 1M-step run; measured with `scripts/sb3_tasks.py
--time`), which puts 10 seeds x 2 tasks out of reach of a 2-core machine; they stay available as
`--zoo`.  The small default nets are also where capacity matters: a 64-wide hidden layer pruned
to 90 % keeps 6 channels.  SAC uses rl-zoo3's MuJoCo defaults (SB3's SAC, 256x256, with
`learning_starts=10000`) at a budget this CPU allows: `--steps` (default 100k; ~9 ms an update).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

PPO_ZOO: Dict[str, Dict[str, Any]] = {  # rl-zoo3 hyperparams/ppo.yml, HalfCheetah-v4 / Hopper-v4
    "HalfCheetah-v5": dict(
        batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05, ent_coef=0.000401762, clip_range=0.1,
        n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8, vf_coef=0.58096,
    ),
    "Hopper-v5": dict(
        batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05, ent_coef=0.00229519, clip_range=0.2,
        n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7, vf_coef=0.835671,
    ),
}
PPO_STEPS = 1_000_000
SAC_STEPS = 100_000
SAC_LEARNING_STARTS = 10_000


def _ppo_policy_kwargs() -> Dict[str, Any]:
    import torch.nn as nn

    return dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU, net_arch=dict(pi=[256, 256], vf=[256, 256]))


def make_model(algo: str, env_id: str, seed: int, zoo: bool = False) -> Tuple[Any, Any]:
    """A fresh (model, training VecEnv), seeded: SB3 defaults, or rl-zoo3's tuned PPO with `zoo`."""
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = make_vec_env(env_id, n_envs=1, seed=seed)
    if algo == "ppo" and not zoo:
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu")
    elif algo == "ppo":
        if env_id not in PPO_ZOO:
            raise SystemExit(f"no tuned PPO settings for {env_id}; choose one of {', '.join(PPO_ZOO)}")
        venv = VecNormalize(venv, gamma=PPO_ZOO[env_id]["gamma"])
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu", policy_kwargs=_ppo_policy_kwargs(), **PPO_ZOO[env_id])
    elif algo == "sac":
        model = SAC("MlpPolicy", venv, seed=seed, device="cpu", learning_starts=SAC_LEARNING_STARTS)
    else:
        raise SystemExit(f"unknown algo {algo!r}: ppo or sac")
    return model, venv


def default_steps(algo: str) -> int:
    return PPO_STEPS if algo == "ppo" else SAC_STEPS


REPLAY_BUFFER = "replay_buffer.pkl"


def save(model: Any, venv: Any, path: Path) -> None:
    """model.zip (+ vecnormalize.pkl when the env normalises, + the replay buffer of an off-policy
    agent), written atomically enough: a checkpoint directory is complete once model.zip exists,
    which is written last."""
    from stable_baselines3.common.vec_env import VecNormalize

    path.mkdir(parents=True, exist_ok=True)
    if isinstance(venv, VecNormalize):
        venv.save(str(path / "vecnormalize.pkl"))
    if getattr(model, "replay_buffer", None) is not None:  # SAC: a fine-tune continues from it
        model.save_replay_buffer(str(path / REPLAY_BUFFER))
    tmp = path / "model.tmp.zip"
    model.save(str(tmp))
    os.replace(tmp, path / "model.zip")


def load(algo: str, env_id: str, seed: int, path: Path, training: bool) -> Tuple[Any, Any]:
    """(pruning-aware model, VecEnv) from a checkpoint directory written by `save`."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from tdmpc_prune.sb3 import load as load_pruned

    venv = make_vec_env(env_id, n_envs=1, seed=seed)
    if (path / "vecnormalize.pkl").exists():
        venv = VecNormalize.load(str(path / "vecnormalize.pkl"), venv)
        venv.training = training
    model = load_pruned(str(path / "model.zip"), env=venv, device="cpu")
    if training and hasattr(model, "replay_buffer"):
        load_replay_buffer(model, path)
    return model, venv


def load_replay_buffer(model: Any, path: Path) -> None:
    """Give an off-policy agent that will train on the replay buffer of the run that wrote `path`.

    Continuing SAC with an empty buffer is not a short fine-tune: its first updates would fit a few
    transitions sampled hundreds of times each.  The buffer is not committed with the checkpoints
    (~300 MB a SAC agent: SB3 pickles all 1M slots), so a checkpoint copied without it cannot be fine-tuned."""
    buffer = path / REPLAY_BUFFER
    if not buffer.exists():
        raise SystemExit(f"{buffer} is missing: the fine-tune continues from the dense run's replay buffer, "
                         f"which is saved only where that run trained; copy it from there, train the dense agent "
                         f"again in a new --workdir, or run only the protocols that need no training "
                         f"(--protocols dense,oneshot,compensated)")
    model.load_replay_buffer(str(buffer))


def evaluation_env(env_id: str, seed: int, train_env: Any) -> Any:
    """A separate env (seed + 10_000) that normalises observations with the training stats, frozen."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if isinstance(train_env, VecNormalize):
        env = VecNormalize(env, training=False, norm_reward=False, gamma=train_env.gamma)
        env.obs_rms = train_env.obs_rms
    return env


def evaluate(model: Any, env_id: str, seed: int, train_env: Any, episodes: int) -> float:
    """Mean undiscounted return of `episodes` deterministic episodes."""
    from stable_baselines3.common.evaluation import evaluate_policy

    env = evaluation_env(env_id, seed, train_env)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    env.close()
    return float(mean)


def observations(model: Any, env_id: str, seed: int, train_env: Any, steps: int) -> np.ndarray:
    """Normalised observations the trained policy visits (deterministic actions): calibration data."""
    env = evaluation_env(env_id, seed + 1, train_env)
    obs = env.reset()
    out = []
    for _ in range(steps):
        out.append(obs.copy())
        action, _ = model.predict(obs, deterministic=True)
        obs, _, _, _ = env.step(action)
    env.close()
    return np.concatenate(out, 0).astype(np.float32)


def calibrate(model: Any, obs: np.ndarray, batch: int = 256) -> None:
    """Run the policy's networks over `obs` (what training forwards see), e.g. for bias compensation."""
    import torch as th

    policy = model.policy
    with th.no_grad():
        for i in range(0, len(obs), batch):
            x = th.as_tensor(obs[i : i + batch], device=policy.device)
            if hasattr(policy, "evaluate_actions"):  # actor-critic: actor and critic trunks
                features = policy.extract_features(x)
                policy.mlp_extractor(features)
            else:  # SAC / TD3: the actor and every critic on the actor's actions
                actions = policy.actor(x)
                policy.critic(x, actions)


def progress_printer(prefix: str) -> Callable[[str], None]:
    def say(msg: str) -> None:
        print(f"[{prefix}] {msg}", flush=True)

    return say


def maybe_int(x: Optional[str]) -> Optional[int]:
    return None if x is None else int(float(x))


if __name__ == "__main__":  # `--time`: CPU seconds per 1000 PPO steps, default vs zoo settings
    import sys
    import time

    import torch

    if "--time" in sys.argv:
        torch.set_num_threads(1)
        for zoo in (False, True):
            model, _ = make_model("ppo", "HalfCheetah-v5", 0, zoo=zoo)
            t0 = time.process_time()
            model.learn(4096)
            print(f"{'zoo' if zoo else 'default'}: {(time.process_time() - t0) / 4.096:.2f} CPU-s per 1000 steps", flush=True)
