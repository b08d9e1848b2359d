"""Pruning for training loops we do not own (the official tdmpc2 `OnlineTrainer`): wrap `agent.update`.

After every `agent.update(buffer)` the hook advances the pruner's clock (`clock()`, e.g. the
trainer's step counter) and writes the shared `prune/*` view to a SummaryWriter every `log_every`
updates and after each pruning event. The wrapped agent is otherwise untouched.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ..pruner import Pruner
from ..tensorboard import ImportanceHeatmap, WriterSink, log_pruner


class UpdateHook:
    def __init__(self, agent: Any, pruner: Pruner, clock: Callable[[], int], writer: Optional[Any] = None, log_every: int = 1000):
        self.agent, self.pruner, self.clock, self.writer = agent, pruner, clock, writer
        self.log_every = int(log_every)
        self.updates = 0
        self.heatmap = ImportanceHeatmap()
        self._original = None

    def install(self) -> "UpdateHook":
        if self._original is not None:
            raise RuntimeError("UpdateHook is already installed")
        self._original = self.agent.update
        self.agent.update = self._update  # an instance attribute shadows the class method
        return self

    def remove(self) -> None:
        if self._original is not None:
            del self.agent.update
            self._original = None

    def _update(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        info = self._original(*args, **kwargs)
        self.updates += 1
        report = self.pruner.step(self.clock())
        if self.writer is not None and (report is not None or self.updates % self.log_every == 0):
            log_pruner(WriterSink(self.writer), self.pruner, self.pruner.clock, self.heatmap)
        if report is not None:
            print(f"[tdmpc-prune] step {self.pruner.clock:,}: sparsity {report['sparsity']:.3f}, "
                  f"params {int(report['params']):,} ({report['params_ratio']:.2f} of dense)")
        return info
