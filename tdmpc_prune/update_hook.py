"""`UpdateHook`: pruning for training loops we do not own (the official tdmpc2 `OnlineTrainer`, any
agent with an `update(...)` method): wrap `agent.update`.

After every `agent.update(...)` the hook hands the clock (`clock()`, e.g. the trainer's step
counter) to a `PruneDriver`, which prunes when an event is due, prints, and writes the shared
`prune/*` view to a SummaryWriter every `log_every` clock steps and at each pruning event. Call
`finish(...)` when the run ends for the closing summary. The wrapped agent is otherwise untouched.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .driver import PruneDriver, RunSummary
from .errors import RunError
from .tensorboard import WriterSink

if TYPE_CHECKING:
    from .adapter import Adapter
    from .pruner import Pruner


class UpdateHook:
    """Drives `pruner` from `agent.update` (see the module docstring); `adapter` provides `prune/plan_ms`."""

    def __init__(self, agent: Any, pruner: "Pruner", clock: Callable[[], int], writer: Optional[Any] = None,
                 log_every: int = 1000, adapter: Optional["Adapter"] = None, verbose: int = 1):
        self.agent, self.pruner, self.clock, self.writer = agent, pruner, clock, writer
        self.updates = 0
        self.driver = PruneDriver(pruner, adapter, sink=WriterSink(writer) if writer is not None else None,
                                  log_every=log_every, verbose=verbose)
        self._original = None

    @property
    def heatmap(self):
        return self.driver.heatmap

    def install(self) -> "UpdateHook":
        if self._original is not None:
            raise RunError("UpdateHook is already installed: call remove() first, or keep the one you have")
        self._original = self.agent.update
        self.agent.update = self._update  # an instance attribute shadows the class method
        self.driver.start(self.pruner.clock, log=False)
        return self

    def remove(self) -> None:
        if self._original is not None:
            del self.agent.update
            self._original = None

    def finish(self, eval_return: Optional[float] = None, eval_what: str = "eval return",
               logdir: Optional[str] = None, tensorboard_logdir: Optional[str] = None) -> RunSummary:
        """The run ended: the final state logged and the closing summary printed and logged."""
        return self.driver.finish(self.pruner.clock, eval_return, eval_what, logdir, tensorboard_logdir)

    def _update(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        info = self._original(*args, **kwargs)
        self.updates += 1
        self.driver.step(self.clock())
        return info
