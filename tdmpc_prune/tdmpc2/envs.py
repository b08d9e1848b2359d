"""dm-control suite tasks behind a small TD-MPC2-style interface.

`make_env("cartpole-balance", seed)` returns a `DMControlEnv`: actions scaled to [-1, 1], action
repeat 2 (rewards summed), episodes of 500 agent steps, flat float32 observations.  Task names
are `domain-task` with `-` for `_` (`ball_in_cup-catch` may be written `cup-catch`).
"""
from __future__ import annotations

import difflib
import os
from typing import Any, Dict, List, Tuple

import numpy as np

from ..errors import UnknownTaskError

os.environ.setdefault("MUJOCO_GL", "egl")  # rendering is never needed; egl avoids needing a display

DOMAIN_ALIASES = {"cup": "ball_in_cup", "pointmass": "point_mass"}


def _suite():
    try:
        from dm_control import suite
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("dm-control is not installed: pip install 'tdmpc-prune[tdmpc2]'") from e
    return suite


def available_tasks() -> List[str]:
    """Every dm-control suite task in `domain-task` form."""
    return sorted(f"{d}-{t}".replace("_", "-") for d, t in _suite().ALL_TASKS)


def parse_task(name: str) -> Tuple[str, str]:
    """`'cartpole-balance'` -> `('cartpole', 'balance')`; unknown names list near matches."""
    suite = _suite()
    lookup = {f"{d}-{t}".replace("_", "-"): (d, t) for d, t in suite.ALL_TASKS}
    key = name.strip().lower().replace("_", "-")
    domain, _, rest = key.partition("-")
    if domain in DOMAIN_ALIASES:
        key = f"{DOMAIN_ALIASES[domain]}-{rest}".replace("_", "-")
    if key in lookup:
        return lookup[key]
    options = sorted(lookup)
    close = difflib.get_close_matches(key, options, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownTaskError(f"unknown dm-control task {name!r}.{hint} Available: {', '.join(options)}")


class DMControlEnv:
    """A dm-control task with action repeat, a fixed episode length and [-1, 1] actions."""

    def __init__(self, task: str, seed: int, episode_length: int = 500, action_repeat: int = 2):
        domain, name = parse_task(task)
        from dm_control.suite.wrappers import action_scale

        env = _suite().load(domain, name, task_kwargs={"random": int(seed)}, visualize_reward=False)
        self._env = action_scale.Wrapper(env, minimum=-1.0, maximum=1.0)
        self.task = task
        self.episode_length = int(episode_length)
        self.action_repeat = int(action_repeat)
        self.obs_dim = int(sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values()))
        self.action_dim = int(self._env.action_spec().shape[0])
        self._t = 0

    @staticmethod
    def _flat(observation: Dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])

    def reset(self) -> np.ndarray:
        self._t = 0
        return self._flat(self._env.reset().observation)

    def step(self, action: np.ndarray) -> Tuple[np.ndarray, float, bool, Dict[str, bool]]:
        """Apply `action` for `action_repeat` physics steps; done at the episode length or a terminal step."""
        action = np.asarray(action, dtype=np.float64)
        reward, terminated, ts = 0.0, False, None
        for _ in range(self.action_repeat):
            ts = self._env.step(action)
            reward += float(ts.reward or 0.0)
            if ts.last():
                terminated = ts.discount == 0  # a true terminal state, not a time limit
                break
        self._t += 1
        truncated = (self._t >= self.episode_length or ts.last()) and not terminated
        return self._flat(ts.observation), reward, bool(terminated or truncated), {"terminated": bool(terminated), "truncated": bool(truncated)}

    def rand_act(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)

    # The task's RandomState drives resets; saving it (at an episode boundary) makes resumes exact.
    def get_state(self) -> Any:
        return self._env.task.random.get_state()

    def set_state(self, state: Any) -> None:
        self._env.task.random.set_state(state)


def make_env(task: str, seed: int, episode_length: int = 500, action_repeat: int = 2) -> DMControlEnv:
    return DMControlEnv(task, seed, episode_length, action_repeat)
