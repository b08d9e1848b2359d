"""`PruneDriver`: the one training-loop side of pruning, shared by every integration.

The SB3 `PruningCallback`, the TD-MPC2 `PruneCallback`, the official-trainer `UpdateHook` and a
plain loop (see `plugins/cleanrl/`) each own a driver and only tell it *when*:

    driver = PruneDriver(pruner, adapter, sink=writer, log_every=1000)   # a SummaryWriter or any Sink
    driver.start(step)                 # the start line, the state before training (dense) logged
    for ...:                           # after every training update
        driver.step(env_step)          # clock, pruning events, console line, logs
    driver.finish(step, eval_return=..., logdir=..., tensorboard_logdir=...)   # closing summary

The driver decides which tags exist (`TAGS`, x-axis: the clock, i.e. environment steps); an
integration provides values only: its sink (SummaryWriter, SB3's logger) and, through its
`Adapter`, the latency of one decision (`prune/plan_ms`). Every log computes the scores once;
FLOPs are traced once per pruning event, not at every log.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from .tensorboard import ImportanceHeatmap, OncePerStep, Sink, WriterSink, log_pruner, prune_scalars

if TYPE_CHECKING:
    from .adapter import Adapter
    from .pruner import Pruner

PREFIX = "[tdmpc-prune]"

# The tag set of every integration ("<group>": every group id, "<component>": every component).
TAGS: Tuple[str, ...] = (
    "prune/sparsity", "prune/params", "prune/params_ratio", "prune/flops", "prune/flops_ratio",
    "prune/skipped_steps", "prune/events", "prune/importance/<group>", "prune/lambda/<group>",
    "prune/plan_ms", "prune/importance_hist/<component>", "prune/importance_heatmap", "prune/summary",
)
# at every log (cheap); the others at full logs only: the start, each pruning event, each evaluation, the end
EVERY_LOG = ("prune/sparsity", "prune/params", "prune/params_ratio", "prune/flops", "prune/flops_ratio",
             "prune/skipped_steps", "prune/events", "prune/importance/<group>", "prune/lambda/<group>")


def _target(sink: Any) -> Any:
    """What a sink writes to (two sinks over one SummaryWriter or logger are one)."""
    return getattr(sink, "writer", None) or getattr(sink, "logger", None) or sink


def say(message: str) -> None:
    """One console line with the project's prefix."""
    print(f"{PREFIX} {message}", flush=True)


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


@dataclass
class RunSummary:
    """What a finished run reports: return, size against dense, time, and where its logs are."""

    step: int
    wall_s: float
    sparsity: float
    events: int
    params: int
    dense_params: int
    flops: Optional[float] = None
    dense_flops: Optional[float] = None
    eval_return: Optional[float] = None
    eval_what: str = "eval return"
    logdir: Optional[str] = None
    tensorboard_logdir: Optional[str] = None

    @property
    def tensorboard_command(self) -> Optional[str]:
        where = self.tensorboard_logdir or self.logdir
        return f"tensorboard --logdir {shlex.quote(where)}" if where else None

    def lines(self) -> List[str]:
        ret = "not measured" if self.eval_return is None or self.eval_return != self.eval_return else f"{self.eval_return:.2f}"
        out = [
            f"run finished at step {self.step:,} after {_duration(self.wall_s)}",
            f"  {self.eval_what}: {ret}",
            f"  params {self.params:,} of {self.dense_params:,} dense ({self.params / max(1, self.dense_params):.3f})"
            + (f", FLOPs {_si(self.flops)} of {_si(self.dense_flops)} ({self.flops / self.dense_flops:.3f})"
               if self.flops is not None and self.dense_flops else ""),
            f"  sparsity {self.sparsity:.3f} after {self.events} pruning event(s)",
            f"  logs: {self.logdir}" if self.logdir else "  logs: none (no TensorBoard writer was given)",
        ]
        if self.tensorboard_command:
            out.append(f"  view: {self.tensorboard_command}")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


class PruneDriver:
    """Steps the pruner's clock, prints, logs the `prune/*` view and the closing summary.

    Args:
        pruner: the pruner to drive (built by an `Adapter`).
        adapter: provides the decision latency (`prune/plan_ms`); None: that tag is not written.
        sink: where the tags go (a SummaryWriter, any `tensorboard.Sink`, SB3's `LoggerSink`); settable later
            (`driver.sink = ...`) when the writer changes (a resumed run, a new `learn()`).
        log_every: clock units between the cheap logs (pruning events log at once, in full).
        heatmap: keep and log the importance heatmap image.
        verbose: 0 silent, 1 the start line, one line per pruning event and the closing summary.
    """

    def __init__(
        self,
        pruner: "Pruner",
        adapter: Optional["Adapter"] = None,
        sink: Optional[Sink] = None,
        log_every: int = 1000,
        heatmap: bool = True,
        verbose: int = 1,
    ):
        self.pruner = pruner
        self.adapter = adapter
        self.log_every = max(1, int(log_every))
        self.heatmap: Optional[ImportanceHeatmap] = ImportanceHeatmap() if heatmap else None
        self.verbose = verbose
        self._sink: Optional[OncePerStep] = None
        self.sink = sink
        self._last_log: Optional[int] = None
        self._full_step: Optional[int] = None
        self._flops: Optional[Tuple[int, Dict[str, float]]] = None  # (history length, flops entries)
        self._started = time.perf_counter()

    @property
    def sink(self) -> Optional[OncePerStep]:
        return self._sink

    @sink.setter
    def sink(self, sink: Optional[Sink]) -> None:
        if hasattr(sink, "add_scalar") and not hasattr(sink, "scalar"):  # a SummaryWriter itself
            sink = WriterSink(sink)
        if sink is None or isinstance(sink, OncePerStep):
            self._sink = sink
        elif self._sink is None or _target(self._sink.sink) is not _target(sink):  # a new writer: start afresh
            self._sink = OncePerStep(sink)

    # ------------------------------------------------------------------------------ the loop
    def start(self, step: int, log: bool = True) -> None:
        """A run (or a resumed run) begins at `step`: the start line, and its state logged in full."""
        self._started = time.perf_counter()
        cfg = self.pruner.config
        if self.verbose:
            say(f"pruning {len(self.pruner.groups)} groups to sparsity {cfg.sparsity} ({cfg.criterion}, {cfg.schedule})")
        if log:
            self.log(step, full=True)
        else:
            self._last_log = step

    def step(self, clock: int) -> Optional[Dict[str, float]]:
        """Advance the clock after a training update; fires a due pruning event (returns its report)."""
        report = self.pruner.step(clock)
        if report is not None:
            if self.verbose:
                say(f"step {clock:,}: sparsity {report['sparsity']:.3f}, params {int(report['params']):,} "
                    f"({report['params_ratio']:.2f} of dense)")
            self.log(clock, full=True)
        elif self._last_log is None or clock - self._last_log >= self.log_every:
            self.log(clock)
        return report

    def log(self, step: int, full: bool = False) -> None:
        """Write the view at `step`: the scalars always; in full also histograms, heatmap and latency.

        A tag already written at `step` is not written again (an update, an evaluation and the start
        of a run can fall on one step)."""
        self._last_log = step
        if self._sink is None:
            return
        if not full:
            for tag, value in prune_scalars(self.pruner, metrics=self._metrics()).items():
                self._sink.scalar(tag, value, step)
            return
        if self._full_step == step:
            return
        self._full_step = step
        heatmap = self.heatmap if self.heatmap is None or not (self.heatmap.steps and self.heatmap.steps[-1] == step) else None
        log_pruner(self._sink, self.pruner, step, heatmap, metrics=self._metrics())
        latency = self.adapter.act_latency_ms() if self.adapter is not None else None
        if latency is not None:
            self._sink.scalar("prune/plan_ms", latency, step)

    def finish(
        self,
        step: int,
        eval_return: Optional[float] = None,
        eval_what: str = "eval return",
        logdir: Optional[str] = None,
        tensorboard_logdir: Optional[str] = None,
    ) -> RunSummary:
        """The run ended at `step`: log the final state in full, then print and log the closing summary.

        `eval_what` says what `eval_return` is (e.g. "mean training return of the last 100 episodes");
        `tensorboard_logdir` is the folder to give `tensorboard --logdir` (default: `logdir`)."""
        self.log(step, full=True)
        metrics = self._metrics()
        summary = RunSummary(
            step=int(step), wall_s=time.perf_counter() - self._started, sparsity=float(metrics["sparsity"]),
            events=len(self.pruner.history), params=int(metrics["params"]), dense_params=int(self.pruner.dense_params),
            flops=metrics.get("flops"), dense_flops=(metrics["flops"] / metrics["flops_ratio"]) if metrics.get("flops_ratio") else None,
            eval_return=None if eval_return is None else float(eval_return), eval_what=eval_what,
            logdir=logdir, tensorboard_logdir=tensorboard_logdir,
        )
        if self._sink is not None:
            self._sink.text("prune/summary", "    " + summary.text().replace("\n", "\n    "), step)  # markdown: verbatim
        if self.verbose:
            for line in summary.lines():
                say(line)
        return summary

    # ------------------------------------------------------------------------------ values
    def _metrics(self) -> Dict[str, float]:
        """`pruner.metrics()` with the FLOPs traced once per pruning event (they change only there)."""
        metrics = self.pruner.metrics(with_flops=False)
        version = len(self.pruner.history)
        if self._flops is None or self._flops[0] != version:
            full = self.pruner.metrics(with_flops=True)
            self._flops = (version, {k: v for k, v in full.items() if k.startswith("flops")})
        metrics.update(self._flops[1])
        return metrics

    # ------------------------------------------------------------------------------ persistence
    def state_dict(self) -> Dict[str, Any]:
        h = self.heatmap
        return {"heatmap": {"columns": list(h.columns), "steps": list(h.steps)} if h is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state.get("heatmap", {})
        if self.heatmap is not None:
            self.heatmap.columns = list(saved.get("columns", []))
            self.heatmap.steps = list(saved.get("steps", []))
