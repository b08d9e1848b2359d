"""The adapter contract: what a training framework provides so the core can prune its model.

A framework (SB3, our TD-MPC2 agent, the official tdmpc2 checkout, a CleanRL script) implements
one `Adapter`; the core builds the `Pruner` from it (`adapter.build(...)`), hooks its optimizers
(`adapter.attach(pruner, ...)`) and calls its hooks after every pruning event. A framework
implements (template methods, as SB3's `BaseCallback` has `_on_step`):

    model()             the nn.Module that is pruned (one object holding every component)
    components()        component name -> module name(s) or module(s) inside `model()`
    forward(model, x)   the traced forward: returns every head's output (outputs never shrink);
                        trace a multi-step rollout when an output is fed back (a latent)
    example_inputs()    one batch of inputs for `forward` (shapes matter, values do not)
    optimizers()        the optimizers that train the model, in the order they step in one update
    mirrors()           (online, mirror, shared) triples: target networks (shared=False, sliced with
                        the same indices) and storage-sharing copies (shared=True, re-pointed)
    after_surgery(p)    what the framework must redo after a pruning event: re-alias cached
                        views, write the pruned widths into its config, recompile
    act_latency_ms()    optional: time of one decision (a plan, a policy call) for `prune/plan_ms`;
                        the default times `forward` on the example inputs

`Wiring` is the ready-made adapter for a plain PyTorch loop: pass the pieces, no subclass needed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Mapping, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn

from .tracing import default_forward

if TYPE_CHECKING:  # the pruner imports nothing from here; keep it that way
    from .config import PruneConfig
    from .groups import ComponentSpec
    from .pruner import Pruner


class Mirror(NamedTuple):
    """A copy of `online` kept sliced like it (see `Pruner.add_mirror`)."""

    online: Union[nn.Module, torch.Tensor]
    mirror: Union[nn.Module, torch.Tensor]
    shared: bool = False


class Adapter:
    """The contract between a training framework and the core (see the module docstring)."""

    # ------------------------------------------------------------------ what a framework implements
    def model(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement model(): the nn.Module to prune")

    def components(self) -> Mapping[str, "ComponentSpec"]:
        raise NotImplementedError(f"{type(self).__name__} must implement components(): name -> module(s)")

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Default: `model(*inputs)` (a dict is passed as keywords, anything else as one argument)."""
        return default_forward(model, inputs)

    def example_inputs(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement example_inputs(): one batch for forward()")

    def optimizers(self) -> List[torch.optim.Optimizer]:
        raise NotImplementedError(f"{type(self).__name__} must implement optimizers(): the ones that train model()")

    def mirrors(self) -> Sequence[Mirror]:
        return ()

    def after_surgery(self, pruner: "Pruner") -> None:
        """Called after every pruning event (and after a saved history was replayed)."""
        return None

    @torch.no_grad()
    def act_latency_ms(self) -> Optional[float]:
        """Median ms of one decision; default: the traced forward on the example inputs (RNG untouched)."""
        from .timing import time_calls

        model, inputs = self.model(), self.example_inputs()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self.forward(model, inputs)  # warm caches up
            return time_calls(lambda: self.forward(model, inputs), device, repeats=3).ms

    # ------------------------------------------------------------------ what the core does with it
    def build(self, config: Optional["PruneConfig"] = None, **options: Any) -> "Pruner":
        """The `Pruner` of this framework's model: traced, mirrors registered, `after_surgery` hooked."""
        from .pruner import Pruner

        pruner = Pruner(self.model(), self.components(), self.example_inputs(), self.forward, config=config, **options)
        for online, mirror, shared in self.mirrors():
            pruner.add_mirror(online, mirror, shared=shared)
        pruner.on_structure_change(self.after_surgery)
        return pruner

    def attach(self, pruner: "Pruner", total_steps: Optional[int] = None, first_step: int = 0) -> "Pruner":
        """Hook the framework's optimizers: statistics and pressure from now on (see `Pruner.attach`)."""
        return pruner.attach(self.optimizers(), total_steps=total_steps, first_step=first_step)


class Wiring(Adapter):
    """An adapter from its pieces (a plain PyTorch / CleanRL loop needs nothing else)."""

    def __init__(
        self,
        model: nn.Module,
        components: Mapping[str, "ComponentSpec"],
        example_inputs: Any,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
        mirrors: Sequence[Union[Mirror, tuple]] = (),
        after_surgery: Optional[Callable[["Pruner"], None]] = None,
    ):
        self._model = model
        self._components = dict(components)
        self._example_inputs = example_inputs
        self._optimizers = list(optimizers)
        self.forward_fn = forward_fn
        self._mirrors = [Mirror(*m) for m in mirrors]
        self._after_surgery = after_surgery

    def model(self) -> nn.Module:
        return self._model

    def components(self) -> Mapping[str, "ComponentSpec"]:
        return self._components

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        return self.forward_fn(model, inputs) if self.forward_fn is not None else super().forward(model, inputs)

    def example_inputs(self) -> Any:
        return self._example_inputs

    def optimizers(self) -> List[torch.optim.Optimizer]:
        return list(self._optimizers)

    def mirrors(self) -> Sequence[Mirror]:
        return list(self._mirrors)

    def after_surgery(self, pruner: "Pruner") -> None:
        if self._after_surgery is not None:
            self._after_surgery(pruner)
