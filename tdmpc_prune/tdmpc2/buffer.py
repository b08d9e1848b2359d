"""Episode replay buffer that samples sub-trajectories of `horizon + 1` steps within one episode.

Storage is a ring of per-step entries, aligned like the official buffer: entry t of an episode
holds obs_t together with the action and reward that *led to* it (NaN for t = 0).  A sample is
`batch_size` windows of `horizon + 1` consecutive entries of the same episode, returned as
obs (H+1, B, obs_dim), action (H, B, A), reward (H, B, 1), terminated (H, B, 1), task None.
Sampling draws from the global torch RNG, so checkpointing that RNG makes it reproducible.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..errors import ModelError, RunError


class ReplayBuffer:
    """Ring buffer of episodes; `capacity` counts stored entries (agent steps + one reset obs per episode)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, horizon: int, batch_size: int,
                 device: torch.device = torch.device("cpu"), storage_device: Optional[torch.device] = None):
        self.capacity, self.horizon, self.batch_size = int(capacity), int(horizon), int(batch_size)
        self.device = torch.device(device)
        dev = torch.device(storage_device) if storage_device is not None else torch.device("cpu")
        self._obs = torch.zeros(self.capacity, obs_dim, device=dev)
        self._action = torch.zeros(self.capacity, action_dim, device=dev)
        self._reward = torch.zeros(self.capacity, device=dev)
        self._terminated = torch.zeros(self.capacity, device=dev)
        self._episode = torch.full((self.capacity,), -1, dtype=torch.long, device=dev)
        self._valid = torch.zeros(self.capacity, dtype=torch.bool, device=dev)  # window of H+1 starts here
        self._starts = torch.zeros(0, dtype=torch.long, device=dev)
        self._ptr = 0
        self._size = 0
        self.num_eps = 0

    def __len__(self) -> int:
        return self._size

    def add(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, terminated: torch.Tensor) -> int:
        """Append one episode: obs (T+1, obs_dim), action (T+1, A), reward/terminated (T+1,) (row 0: reset)."""
        n = obs.shape[0]
        if n < self.horizon + 1:
            raise ModelError(f"an episode of {n} entries is shorter than horizon+1={self.horizon + 1}")
        if n > self.capacity:
            raise ModelError(f"an episode of {n} entries does not fit a buffer of capacity {self.capacity}; raise buffer_size")
        idx = (self._ptr + torch.arange(n)) % self.capacity
        dev = self._obs.device
        idx = idx.to(dev)
        self._obs[idx] = obs.to(dev, torch.float32)
        self._action[idx] = action.to(dev, torch.float32)
        self._reward[idx] = reward.to(dev, torch.float32).reshape(-1)
        self._terminated[idx] = terminated.to(dev, torch.float32).reshape(-1)
        self._episode[idx] = self.num_eps
        self._valid[idx] = torch.arange(n, device=dev) <= n - 1 - self.horizon
        # windows of older episodes that now run into this one are no longer valid
        before = (self._ptr - torch.arange(1, self.horizon + 1, device=dev)) % self.capacity
        self._valid[before] &= self._episode[before] == self._episode[(before + self.horizon) % self.capacity]
        self._starts = self._valid.nonzero().squeeze(1)
        self._ptr = (self._ptr + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
        self.num_eps += 1
        return self.num_eps

    def sample(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, None]:
        if self._starts.numel() == 0:
            raise RunError("the replay buffer is empty: add an episode before sampling")
        pick = torch.randint(self._starts.numel(), (self.batch_size,))
        start = self._starts[pick.to(self._starts.device)]
        window = (start.unsqueeze(0) + torch.arange(self.horizon + 1, device=start.device).unsqueeze(1)) % self.capacity
        obs = self._obs[window]
        later = window[1:]
        action = self._action[later]
        reward = self._reward[later].unsqueeze(-1)
        terminated = self._terminated[later].unsqueeze(-1)
        to = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        return to(obs), to(action), to(reward), to(terminated), None

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Only the filled part of the storage is saved."""
        n = self._size
        return {
            "capacity": self.capacity, "ptr": self._ptr, "size": n, "num_eps": self.num_eps,
            "obs": self._obs[:n].cpu().clone(), "action": self._action[:n].cpu().clone(),
            "reward": self._reward[:n].cpu().clone(), "terminated": self._terminated[:n].cpu().clone(),
            "episode": self._episode[:n].cpu().clone(), "valid": self._valid[:n].cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a saved buffer; a different capacity keeps the newest entries in chronological order."""
        n, ptr, dev = int(state["size"]), int(state["ptr"]), self._obs.device
        names = ("obs", "action", "reward", "terminated", "episode", "valid")
        if int(state["capacity"]) == self.capacity:
            for name in names:
                getattr(self, f"_{name}")[:n] = state[name].to(dev)
            self._ptr = ptr
        else:
            first = ptr if n == int(state["capacity"]) else 0  # oldest entry of a wrapped ring
            keep = min(n, self.capacity)
            for name in names:
                t = state[name]
                chrono = torch.cat([t[first:], t[:first]])[n - keep:]
                getattr(self, f"_{name}")[:keep] = chrono.to(dev)
            n, self._ptr = keep, keep % self.capacity
        self._size, self.num_eps = n, int(state["num_eps"])
        self._starts = self._valid.nonzero().squeeze(1)
