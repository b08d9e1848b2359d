"""Run an exported TD-MPC2 controller with ONNX Runtime: planning needs nothing but the graphs.

    from tdmpc_prune.tdmpc2.runtime import OrtController
    ctrl = OrtController("deploy/cartpole")          # the --out directory of `tdmpc-prune export`
    action = ctrl.act(obs, t0=True)                  # first step of an episode, then t0=False
    action = ctrl.policy(obs)                        # the policy prior alone (no planning)

`act` draws the planner's noise inputs with numpy (distributions in `controller.json`), feeds the
warm start back (the previous plan's mean) and returns the action; no PyTorch call is made, so the
same loop ports to any ONNX Runtime binding.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from .. import deploy
from ..errors import RunError
from .deploy import MANIFEST


class OrtController:
    """MPPI planning (or the policy prior) of an exported controller on ONNX Runtime, one CPU thread by default."""

    def __init__(self, directory: str, seed: Optional[int] = None, threads: int = 1):
        with open(os.path.join(directory, MANIFEST)) as f:
            self.manifest = json.load(f)
        graphs = self.manifest["graphs"]
        self.planner = deploy.session(os.path.join(directory, graphs["planner"]["file"]), threads) if "planner" in graphs else None
        self.prior = deploy.session(os.path.join(directory, graphs["policy"]["file"]), threads) if "policy" in graphs else None
        self.rng = np.random.default_rng(seed)
        m = self.manifest
        self.prev_mean = np.zeros((m["horizon"], m["action_dim"]), np.float32)
        self._inputs = {i.name for i in self.planner.get_inputs()} if self.planner is not None else set()

    def noise(self, eval_mode: bool = False) -> Dict[str, np.ndarray]:
        """One plan's random draws (the `PlanNoise` inputs of the planner graph)."""
        m, r = self.manifest, self.rng
        H, N, P, A, I = m["horizon"], m["num_samples"], m["num_pi_trajs"], m["action_dim"], m["iterations"]
        out = {
            "prior_noise": r.standard_normal((H, P, A), np.float32),
            "sample_noise": r.standard_normal((I, H, N - P, A), np.float32),
            "value_noise": r.standard_normal((I, N, A), np.float32),
            "critic_draws": r.random((I, m["num_q"]), np.float32),
            "gumbel": -np.log(r.standard_exponential(m["num_elites"], np.float32)),
            "action_noise": np.zeros(A, np.float32) if eval_mode else r.standard_normal(A, np.float32),
        }
        return {k: v for k, v in out.items() if k in self._inputs}

    def act(self, obs: np.ndarray, t0: bool = False, eval_mode: bool = False) -> np.ndarray:
        """Plan from one observation (obs_dim,): the action (action_dim,) in [-1, 1]."""
        if self.planner is None:
            raise RunError("this export has no planner graph; export it without `only=` or use policy()")
        if t0:
            self.prev_mean[:] = 0
        feed = {"obs": np.asarray(obs, np.float32).reshape(1, -1), "prev_mean": self.prev_mean, **self.noise(eval_mode)}
        action, self.prev_mean = self.planner.run(["action", "next_mean"], feed)
        return action

    def policy(self, obs: np.ndarray) -> np.ndarray:
        """The policy prior's deterministic action for observations (..., obs_dim)."""
        if self.prior is None:
            raise RunError("this export has no policy graph")
        obs = np.asarray(obs, np.float32)
        return self.prior.run(["action"], {"obs": obs.reshape(-1, obs.shape[-1])})[0].reshape(*obs.shape[:-1], -1)
