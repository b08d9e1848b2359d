"""`--prune` for `tdmpc-prune train`: a trainer callback that owns the Pruner of the agent.

The schedule clock is the trainer's environment step (the x-axis of every TensorBoard curve);
fractional `prune.start`/`prune.end` are fractions of the training span that follows the seed
steps (random actions, no updates), so `prune.start=0.2` is 20 % into the updates. The callback
only says *when*; the core `PruneDriver` steps the clock after every agent update, prints, and
writes the shared `prune/*` view every `log_freq` updates (scalars) and in full at the start, at
every evaluation and pruning event (histograms, heatmap, planning latency), and the closing
summary when the run ends.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ..config import PruneConfig
from ..errors import PruneError
from ..pruner import Pruner
from ..driver import PruneDriver
from ..tensorboard import OncePerStep, WriterSink, prune_hparams
from .wiring import TDMPC2Adapter, plan_latency_ms, time_act  # noqa: F401  (time_act, plan_latency_ms: their old home)


class PruneCallback:
    """Prunes the trainer's agent during training (see `tdmpc_prune.tdmpc2.attach`)."""

    name = "prune"

    def __init__(self, config: PruneConfig, explicit: bool = True, latency_repeats: int = 5):
        self.config = config
        self.explicit = explicit  # options given by the user (on resume they must match the checkpoint's)
        self.latency_repeats = latency_repeats
        self.pruner: Optional[Pruner] = None
        self.driver: Optional[PruneDriver] = None
        self.original_cfg: Optional[Dict[str, Any]] = None
        self._heatmap_state: Dict[str, Any] = {}

    # ------------------------------------------------------------------------------ wiring
    def _build(self, trainer) -> Pruner:
        self.original_cfg = self.original_cfg or trainer.cfg.to_dict()
        adapter = TDMPC2Adapter(trainer.agent, latency_repeats=self.latency_repeats)
        self.pruner = adapter.build(self.config)
        # fractions of the run count from the end of the seed steps, when updates (and statistics) begin
        adapter.attach(self.pruner, total_steps=trainer.total_steps, first_step=trainer.cfg.seed_env_steps)
        log_every = max(1, trainer.cfg.log_freq) * trainer.cfg.action_repeat  # log_freq updates, in env steps
        self.driver = PruneDriver(self.pruner, adapter, log_every=log_every)
        self.driver.load_state_dict(self._heatmap_state)
        return self.pruner

    def hparams(self) -> Dict[str, Any]:
        """The prune options, merged into the run's TensorBoard hparams by the trainer."""
        return prune_hparams(self.config)

    def on_resume(self, trainer, state: Mapping[str, Any]) -> None:
        """Before the agent's weights are loaded: rebuild the pruner and replay its history (layers shrink)."""
        saved = PruneConfig.from_dict(state["pruner"]["config"])
        if self.explicit and saved.to_dict() != self.config.to_dict():
            diff = sorted(k for k, v in saved.to_dict().items() if self.config.to_dict()[k] != v)
            raise PruneError(
                f"resume with different prune options ({', '.join(f'{k}={saved.to_dict()[k]!r}' for k in diff)} in the checkpoint); "
                "drop the prune.* overrides to continue with the checkpoint's"
            )
        self.config = saved
        self.original_cfg = dict(state["original_cfg"])
        self._heatmap_state = {"heatmap": state.get("heatmap", {})}
        self._build(trainer)
        self.pruner.load_state_dict(state["pruner"])

    def state_dict(self) -> Dict[str, Any]:
        return {"pruner": self.pruner.state_dict(), "original_cfg": self.original_cfg, **self.driver.state_dict()}

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer) -> None:
        if self.pruner is None:
            self._build(trainer)
        self.driver.sink = WriterSink(trainer.writer)
        self.driver.start(trainer.step, log=not trainer.resumed)  # a resumed run logged this step before its checkpoint

    def on_update(self, trainer, step: int, info: Mapping[str, torch.Tensor]) -> None:
        self.driver.sink = WriterSink(trainer.writer)
        self.driver.step(trainer.step)

    def on_eval(self, trainer, step: int, metrics: Mapping[str, float]) -> None:
        self.driver.sink = WriterSink(trainer.writer)
        self.driver.log(trainer.step, full=True)

    def on_train_end(self, trainer, metrics: Mapping[str, float]) -> None:
        self.driver.sink = WriterSink(trainer.writer)
        self.driver.finish(
            trainer.step, eval_return=metrics.get("episode_reward"),
            eval_what=f"eval return (mean of {trainer.cfg.eval_episodes} episodes)",
            logdir=trainer.directory, tensorboard_logdir=trainer.cfg.logdir,
        )


class CostCallback:
    """The cost tags of a dense run: `prune/params`, `prune/flops` (ratios 1, sparsity 0) and `prune/plan_ms`,
    written when the run starts and at every evaluation, as a pruning run writes them, so that TensorBoard
    shows cost next to return for every run.  It never touches the agent's training (no hooks, RNG forked)."""

    name = "cost"
    TAGS = ("sparsity", "params", "params_ratio", "flops", "flops_ratio")

    def __init__(self, latency_repeats: int = 5):
        self.latency_repeats = latency_repeats
        self._sink: Optional[OncePerStep] = None
        self._metrics: Optional[Dict[str, float]] = None

    def on_train_start(self, trainer) -> None:
        if not trainer.resumed:  # a resumed run logged its start before the checkpoint
            self._log(trainer)

    def on_eval(self, trainer, step: int, metrics: Mapping[str, float]) -> None:
        self._log(trainer)

    def dense_metrics(self, trainer) -> Dict[str, float]:
        """Parameters and FLOPs of the world model, counted by an (unattached) `Pruner` as for a pruned run."""
        if self._metrics is None:
            from .wiring import components, example_inputs, rollout, world_model_of

            wm = world_model_of(trainer.agent)
            with torch.random.fork_rng(devices=[trainer.agent.device] if trainer.agent.device.type == "cuda" else []):
                counter = Pruner(wm, components(wm), example_inputs(wm), rollout, config=PruneConfig(sparsity=0.0))
                metrics = counter.metrics()
            self._metrics = {k: metrics[k] for k in self.TAGS if k in metrics}
        return self._metrics

    def _log(self, trainer) -> None:
        if self._sink is None or self._sink.writer is not trainer.writer:
            self._sink = OncePerStep(WriterSink(trainer.writer))
        for k, v in self.dense_metrics(trainer).items():
            self._sink.scalar(f"prune/{k}", v, trainer.step)
        self._sink.scalar("prune/plan_ms", plan_latency_ms(trainer.agent, self.latency_repeats), trainer.step)
