"""`--prune` for `tdmpc-prune train`: a trainer callback that owns the Pruner of the agent.

The schedule clock is the trainer's environment step (the x-axis of every TensorBoard curve);
fractional `prune.start`/`prune.end` are fractions of the training span that follows the seed
steps (random actions, no updates), so `prune.start=0.2` is 20 % into the updates. After every
agent update the callback advances the clock (pruning when an event is due); it writes the shared `prune/*` view every `log_freq` updates
(scalars) and at every evaluation and pruning event (histograms, heatmap, planning latency).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ..config import PruneConfig
from ..errors import PruneError
from ..pruner import Pruner
from ..tensorboard import ImportanceHeatmap, OncePerStep, WriterSink, log_pruner, prune_hparams
from ..timing import Timing, time_calls
from .wiring import attach


class PruneCallback:
    """Prunes the trainer's agent during training (see `tdmpc_prune.tdmpc2.attach`)."""

    name = "prune"

    def __init__(self, config: PruneConfig, explicit: bool = True, latency_repeats: int = 5):
        self.config = config
        self.explicit = explicit  # options given by the user (on resume they must match the checkpoint's)
        self.latency_repeats = latency_repeats
        self.pruner: Optional[Pruner] = None
        self.heatmap = ImportanceHeatmap()
        self.original_cfg: Optional[Dict[str, Any]] = None
        self._sink: Optional[OncePerStep] = None
        self._full_step: Optional[int] = None

    # ------------------------------------------------------------------------------ wiring
    def _build(self, trainer) -> Pruner:
        self.original_cfg = self.original_cfg or trainer.cfg.to_dict()
        # fractions of the run count from the end of the seed steps, when updates (and statistics) begin
        self.pruner = attach(trainer.agent, total_steps=trainer.total_steps, config=self.config,
                             first_step=trainer.cfg.seed_env_steps)
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
        self._build(trainer)
        self.pruner.load_state_dict(state["pruner"])
        self.heatmap.columns = [c for c in state.get("heatmap", {}).get("columns", [])]
        self.heatmap.steps = list(state.get("heatmap", {}).get("steps", []))

    def state_dict(self) -> Dict[str, Any]:
        return {
            "pruner": self.pruner.state_dict(),
            "original_cfg": self.original_cfg,
            "heatmap": {"columns": list(self.heatmap.columns), "steps": list(self.heatmap.steps)},
        }

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer) -> None:
        if self.pruner is None:
            self._build(trainer)
        print(f"[tdmpc-prune] pruning {len(self.pruner.groups)} groups to sparsity {self.config.sparsity} "
              f"({self.config.criterion}, {self.config.schedule})")
        if not trainer.resumed:  # a resumed run logged this step before its checkpoint
            self._log(trainer, full=True)

    def on_update(self, trainer, step: int, info: Mapping[str, torch.Tensor]) -> None:
        report = self.pruner.step(trainer.step)
        if report is not None:
            print(f"[tdmpc-prune] step {trainer.step:,}: sparsity {report['sparsity']:.3f}, "
                  f"params {int(report['params']):,} ({report['params_ratio']:.2f} of dense)")
            self._log(trainer, full=True)
        elif trainer.updates % max(1, trainer.cfg.log_freq) == 0:
            self._log(trainer, full=False)

    def on_eval(self, trainer, step: int, metrics: Mapping[str, float]) -> None:
        self._log(trainer, full=True)

    # ------------------------------------------------------------------------------ logging
    def _log(self, trainer, full: bool) -> None:
        """Write the view at the trainer's step; a tag already written at this step is not written again
        (an update, an evaluation and the start of the run can all fall on one step)."""
        step = trainer.step
        if self._sink is None or self._sink.writer is not trainer.writer:
            self._sink = OncePerStep(WriterSink(trainer.writer))
        sink = self._sink
        if full:
            if self._full_step == step:
                return
            self._full_step = step
            heatmap = self.heatmap if not (self.heatmap.steps and self.heatmap.steps[-1] == step) else None
            log_pruner(sink, self.pruner, step, heatmap)
            sink.scalar("prune/plan_ms", plan_latency_ms(trainer.agent, self.latency_repeats), step)
        else:
            for k, v in self.pruner.metrics(with_flops=False).items():
                sink.scalar(f"prune/{k}", v, step)


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


@torch.no_grad()
def time_act(agent, obs: torch.Tensor, eval_mode: bool = True, repeats: int = 1) -> Timing:
    """Times of `repeats` calls of `agent.act` (MPPI planning), CUDA synchronised around each."""
    return time_calls(lambda: agent.act(obs, t0=False, eval_mode=eval_mode), agent.device, repeats)


@torch.no_grad()
def plan_latency_ms(agent, repeats: int = 5) -> float:
    """Median `agent.act` time in ms (thread CPU time on one CPU thread, else wall), leaving the
    global RNG and the planner's warm start untouched."""
    obs = torch.zeros(agent.cfg.obs_dim, device=agent.device)
    saved = agent.planner.prev_mean.clone()
    with torch.random.fork_rng(devices=[agent.device] if agent.device.type == "cuda" else []):
        time_act(agent, obs)  # the first call warms caches up
        ms = time_act(agent, obs, repeats=repeats).ms
    agent.planner.prev_mean.copy_(saved)
    return ms
