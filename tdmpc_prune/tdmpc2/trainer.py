"""Online TD-MPC2 training loop with callbacks, TensorBoard logging and exact-resume checkpoints.

Steps are environment steps (agent steps x action repeat).  The loop runs whole episodes:

    eval at step 0 -> { reset -> [act (random during seed steps) -> env step -> update(s)] x episode
    -> add episode to the buffer -> log -> callbacks.on_episode_end -> eval if due -> checkpoint if due }
    -> final eval and checkpoint

Checkpoints are taken only at episode boundaries, where the environments' state is just their
RNG, so `resume=true` continues bit-for-bit (same thread count and device).  Everything logged
at a step is logged before that step's checkpoint, so a resumed run opens its TensorBoard writer
with `purge_step = checkpoint step + 1`: what a killed run wrote after its last checkpoint is
dropped, and the curves continue without a duplicated or backward step.  The run directory is
owned by the trainer while it runs (`rundir.RunLock`); checkpoints are written atomically.

Callbacks are plain objects with any of these optional methods:

    on_train_start(trainer)                called once the run (or a resumed run) is about to go on
    on_update(trainer, step, info)         after every agent update; info: dict of 0-dim tensors
    on_episode_end(trainer, step, info)    info: episode_reward, episode_length, ...
    on_eval(trainer, step, metrics)        metrics: episode_reward, episode_length
    on_train_end(trainer, metrics)         after the final evaluation, before the final checkpoint
    state_dict() / load_state_dict(d)      saved in the checkpoint under the callback's key

A callback's key is its `name` attribute if it has one, else its class name (suffixed `#i` when
several share it).  `trainer.writer` (a SummaryWriter) and `trainer.total_steps` are public.
"""
from __future__ import annotations

import json
import os
import random
import time
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from ..errors import RunError
from .agent import TDMPC2
from .buffer import ReplayBuffer
from .config import TDMPC2Config
from .envs import DMControlEnv
from .rundir import RunLock, atomic_save, claim

CHECKPOINT = "checkpoint.pt"


class Callback(Protocol):
    """Documentation of the callback protocol; every method is optional."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_update(self, trainer: "Trainer", step: int, info: Mapping[str, torch.Tensor]) -> None: ...

    def on_episode_end(self, trainer: "Trainer", step: int, info: Mapping[str, float]) -> None: ...

    def on_eval(self, trainer: "Trainer", step: int, metrics: Mapping[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer", metrics: Mapping[str, float]) -> None: ...


def run_dir(cfg: TDMPC2Config) -> str:
    """`<logdir>/<task>/<exp_name>/seed-<seed>`: runs of one task sit side by side in TensorBoard."""
    return os.path.join(cfg.logdir, cfg.task, cfg.exp_name, f"seed-{cfg.seed}")


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Drives `agent` on `env`, evaluates on `eval_env`, logs to TensorBoard, checkpoints atomically."""

    def __init__(
        self,
        cfg: TDMPC2Config,
        agent: TDMPC2,
        env: DMControlEnv,
        eval_env: DMControlEnv,
        buffer: ReplayBuffer,
        callbacks: Sequence[Any] = (),
        directory: Optional[str] = None,
        lock: Optional[RunLock] = None,
    ):
        self.cfg, self.agent, self.env, self.eval_env, self.buffer = cfg, agent, env, eval_env, buffer
        self.callbacks: List[Any] = list(callbacks)
        self.directory = directory or run_dir(cfg)
        self._lock = lock if lock is not None else claim(self.directory, stale=(CHECKPOINT + ".tmp",))
        self._writer: Optional[SummaryWriter] = None
        self._purge_step: Optional[int] = None
        self._saved_step: Optional[int] = None
        self.total_steps = int(cfg.steps)  # environment steps
        self.step = 0  # environment steps so far
        self.agent_step = 0
        self.episode = 0
        self.updates = 0
        self.pretrained = False
        self.next_eval = 0
        self.next_save = int(cfg.save_freq)
        self.action_rng = np.random.default_rng(cfg.seed)  # random actions during the seed steps
        self.last_episode_reward = float("nan")
        self.last_eval_reward = float("nan")
        self._elapsed = 0.0  # seconds of training before this process (restored on resume)
        self._start = time.time()
        self._step_at_start = 0
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_keys: List[str] = []
        self._loss_count = 0
        self.resumed = False
        self._bar: Any = None

    @property
    def writer(self) -> SummaryWriter:
        """The run's TensorBoard writer (opened on first use; on resume it purges steps after the checkpoint)."""
        if self._writer is None:
            self._writer = SummaryWriter(self.directory, purge_step=self._purge_step)
        return self._writer

    def close(self) -> None:
        """Flush and close the writer and give up the run directory (the trainer can train again later)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._lock.release()

    # ------------------------------------------------------------------------------ callbacks
    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    def _callback_keys(self) -> List[str]:
        names = [getattr(cb, "name", None) or type(cb).__name__ for cb in self.callbacks]
        return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]

    # ------------------------------------------------------------------------------ main loop
    @property
    def seed_steps(self) -> int:
        return self.cfg.seed_env_steps

    @property
    def steps_per_second(self) -> float:
        dt = time.time() - self._start
        return (self.step - self._step_at_start) / dt if dt > 0 else 0.0

    def train(self) -> Dict[str, float]:
        """Run until `total_steps` env steps (whole episodes); return the final evaluation metrics."""
        self._lock.acquire()
        if self.resumed and self.step >= self.total_steps:  # a finished run: nothing to add, nothing to log twice
            self.close()
            return {"episode_reward": self.last_eval_reward} if self.last_eval_reward == self.last_eval_reward else {}
        per_episode = self.cfg.episode_length * self.cfg.action_repeat  # the run ends on an episode boundary
        bar = None
        try:
            self._emit("on_train_start")  # first: a callback that refuses the run (bad prune options) leaves no event file
            if not self.resumed:
                self._log_hparams()
            self._name_a_slow_size()
            bar = _progress(self.cfg.progress, -(-self.total_steps // per_episode) * per_episode, self.step)
            self._bar = bar
            if self.step >= self.next_eval:  # step 0 of a fresh run
                self._evaluate_due()
            while self.step < self.total_steps:
                before = self.step
                self._run_episode()
                if bar is not None:
                    bar.update(self.step - before)
                    self._show(refresh=False)
                if self.step >= self.total_steps:
                    break  # the final evaluation and checkpoint follow
                if self.step >= self.next_eval:
                    self._evaluate_due()
                if self.step >= self.next_save:
                    while self.next_save <= self.step:
                        self.next_save += self.cfg.save_freq
                    self.save_checkpoint()
            metrics = self._evaluate_due()
            self._emit("on_train_end", metrics)
            self.save_checkpoint()
            return metrics
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
            self.close()

    def _name_a_slow_size(self) -> None:
        """On a CPU, say up front when the model size is slow: its measured cost and the CPU preset."""
        size = self.cfg.model_size
        if self.agent.device.type != "cpu" or size is None or str(size) == "cpu":
            return
        from .bench import cost_notice

        print(f"[tdmpc-prune] {cost_notice(self.cfg, self.step)}", flush=True)

    def _show(self, refresh: bool = True, **extra: str) -> None:
        """The progress bar's numbers: speed, last training return, last evaluation (and `extra`)."""
        if self._bar is not None:
            self._bar.set_postfix(sps=f"{self.steps_per_second:.1f}", ret=f"{self.last_episode_reward:.1f}",
                                  eval=f"{self.last_eval_reward:.1f}", **extra, refresh=refresh)

    def _evaluate_due(self) -> Dict[str, float]:
        metrics = self.evaluate_and_log()
        while self.next_eval <= self.step:
            self.next_eval += self.cfg.eval_freq
        return metrics

    def _run_episode(self) -> None:
        cfg, agent = self.cfg, self.agent
        obs = self.env.reset()
        obs_l, act_l, rew_l, term_l = [obs], [np.full(self.env.action_dim, np.nan, np.float32)], [np.nan], [np.nan]
        ep_reward, done, t, info = 0.0, False, 0, {}
        while not done:
            if self.step >= self.seed_steps:
                action = agent.act(torch.from_numpy(obs), t0=t == 0).cpu().numpy()
            else:
                action = self.env.rand_act(self.action_rng)
            obs, reward, done, info = self.env.step(action)
            if info["terminated"] and not cfg.episodic:
                raise RunError(
                    f"task {cfg.task} terminated early but episodic=false; set episodic=true to learn terminations"
                )
            obs_l.append(obs), act_l.append(action), rew_l.append(reward), term_l.append(float(info["terminated"]))
            ep_reward += reward
            t += 1
            self.agent_step += 1
            self.step += cfg.action_repeat
            if self.step >= self.seed_steps and self.buffer.num_eps > 0:
                n = 1 if self.pretrained else self.agent_step  # pretrain on the seed data first (official)
                self.pretrained = True
                for i in range(n):  # a burst of updates at one step logs its losses once, at its end
                    self._update(flush=i == n - 1)
        self.buffer.add(
            torch.from_numpy(np.stack(obs_l)), torch.from_numpy(np.stack(act_l).astype(np.float32)),
            torch.tensor(rew_l, dtype=torch.float32), torch.tensor(term_l, dtype=torch.float32),
        )
        self.episode += 1
        self.last_episode_reward = ep_reward
        ep = {"episode_reward": ep_reward, "episode_length": float(t), "episode": float(self.episode),
              "steps_per_second": self.steps_per_second}
        for k, v in ep.items():
            self.writer.add_scalar(f"train/{k}", v, self.step)
        self._emit("on_episode_end", self.step, ep)

    def _update(self, flush: bool = True) -> None:
        info = self.agent.update(self.buffer)
        self.updates += 1
        self._accumulate(info)
        self._emit("on_update", self.step, info)
        if flush and self._loss_count >= self.cfg.log_freq:
            self._flush_losses()

    def _accumulate(self, info: Mapping[str, torch.Tensor]) -> None:
        """Sum the update statistics on-device; they are turned into floats once per log interval."""
        if self._loss_sum is None or list(info) != self._loss_keys:
            if self._loss_sum is not None:
                self._flush_losses()
            self._loss_keys = list(info)
            self._loss_sum = torch.zeros(len(info), device=next(iter(info.values())).device)
        self._loss_sum += torch.stack([info[k].float().reshape(()) for k in self._loss_keys])
        self._loss_count += 1

    def _flush_losses(self) -> None:
        if self._loss_sum is None or self._loss_count == 0:
            return
        means = (self._loss_sum / self._loss_count).tolist()
        for k, v in zip(self._loss_keys, means):
            self.writer.add_scalar(f"train/{k}", v, self.step)
        self.writer.add_scalar("train/updates", self.updates, self.step)
        self._loss_sum.zero_()
        self._loss_count = 0

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: Optional[int] = None) -> Dict[str, float]:
        """Mean return and length over `episodes` (default cfg.eval_episodes) of the deterministic policy."""
        rewards, lengths = [], []
        n = self.cfg.eval_episodes if episodes is None else episodes
        bar = _progress(self.cfg.progress and n > 0, n * self.cfg.episode_length, 0, desc=f"eval at step {self.step:,}",
                        unit="agent step", leave=False)
        try:
            for i in range(n):
                obs, done, total, t = self.eval_env.reset(), False, 0.0, 0
                while not done:
                    action = self.agent.act(torch.from_numpy(obs), t0=t == 0, eval_mode=True).cpu().numpy()
                    obs, reward, done, _ = self.eval_env.step(action)
                    total += reward
                    t += 1
                    if bar is not None:
                        bar.update(1)
                rewards.append(total)
                lengths.append(t)
                if bar is not None:
                    bar.update((i + 1) * self.cfg.episode_length - bar.n)  # an early termination skips the rest
                    bar.set_postfix(episode=f"{i + 1}/{n}", ret=f"{float(np.mean(rewards)):.1f}")
        finally:
            if bar is not None:
                bar.close()
        if not rewards:
            return {}
        return {"episode_reward": float(np.mean(rewards)), "episode_length": float(np.mean(lengths))}

    def evaluate_and_log(self) -> Dict[str, float]:
        metrics = self.evaluate()
        if metrics:
            for k, v in metrics.items():
                self.writer.add_scalar(f"eval/{k}", v, self.step)
            self.last_eval_reward = metrics["episode_reward"]
            self._show()  # the main bar shows this evaluation at once (the final one too)
            self._emit("on_eval", self.step, metrics)
            self.writer.flush()
        return metrics

    def _log_hparams(self) -> None:
        """Hyper-parameters into the run's own event file (TensorBoard HPARAMS tab) and as text."""
        from torch.utils.tensorboard.summary import hparams

        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.cfg.to_dict().items()}
        hp["total_params"] = self.agent.model.total_params
        for cb in self.callbacks:  # e.g. the prune options
            hp.update(getattr(cb, "hparams", dict)())
        exp, ssi, sei = hparams(hp, {"eval/episode_reward": float("nan")})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(self.cfg.to_dict(), indent=1, default=str) + "\n```", 0)
        self.writer.add_text("model", "```\n" + repr(self.agent.model) + "\n```", 0)

    # ------------------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.directory, CHECKPOINT)

    def state_dict(self) -> Dict[str, Any]:
        self._flush_losses()
        return {
            "version": 1,
            "cfg": self.cfg.to_dict(),
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": rng_state(),
            "action_rng": self.action_rng.bit_generator.state,
            "env": self.env.get_state(),
            "eval_env": self.eval_env.get_state(),
            "counters": {
                "step": self.step, "agent_step": self.agent_step, "episode": self.episode, "updates": self.updates,
                "pretrained": self.pretrained, "next_eval": self.next_eval, "next_save": self.next_save,
                "elapsed": self._elapsed + time.time() - self._start,
                "last_episode_reward": self.last_episode_reward, "last_eval_reward": self.last_eval_reward,
            },
            "callbacks": {k: cb.state_dict() for k, cb in zip(self._callback_keys(), self.callbacks) if hasattr(cb, "state_dict")},
        }

    def save_checkpoint(self, path: Optional[str] = None) -> str:
        """Write the full training state atomically (temporary file, fsync, then `os.replace`).

        A failed write (disk full, read-only) raises `RunError` and leaves the last good checkpoint
        and no partial file behind."""
        path = path or self.checkpoint_path
        state = self.state_dict()
        self.writer.flush()  # the events up to this step are on disk before the checkpoint says they are
        last = f"the checkpoint of step {self._saved_step:,}" if self._saved_step is not None else ""
        atomic_save(state, path, last_good=last)
        self._saved_step = self.step
        return path

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore everything saved by `state_dict`, callbacks included, so training can go on.

        Callbacks with `on_resume(trainer, state)` run first: they may reshape the agent (a pruner
        replaying its history) before the agent's weights and optimizer states are loaded.
        """
        saved = state.get("callbacks", {})
        for key, cb in zip(self._callback_keys(), self.callbacks):
            if key in saved and hasattr(cb, "on_resume"):
                cb.on_resume(self, saved[key])
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.env.set_state(state["env"])
        self.eval_env.set_state(state["eval_env"])
        self.action_rng.bit_generator.state = state["action_rng"]
        c = state["counters"]
        self.step, self.agent_step, self.episode, self.updates = c["step"], c["agent_step"], c["episode"], c["updates"]
        self.pretrained, self.next_eval, self.next_save = c["pretrained"], c["next_eval"], c["next_save"]
        self.last_episode_reward, self.last_eval_reward = c["last_episode_reward"], c["last_eval_reward"]
        self._elapsed = c["elapsed"]
        self._start, self._step_at_start = time.time(), self.step
        self._saved_step = self.step
        self._purge_step = self.step + 1  # everything up to the checkpoint's step was logged before it
        if self._writer is not None:  # reopen: TensorBoard drops what a killed run wrote after the checkpoint
            self._writer.close()
            self._writer = None
        for key, cb in zip(self._callback_keys(), self.callbacks):
            if key in saved and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(saved[key])
        set_rng_state(state["rng"])
        self.resumed = True


def _progress(enabled: bool, total: int, initial: int, **options: Any):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    options = {"unit": "step", "dynamic_ncols": True, "mininterval": 1.0, "smoothing": 0.05, **options}
    return tqdm(total=total, initial=initial, **options)
