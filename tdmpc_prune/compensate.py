r"""Bias compensation: a removed channel's mean activation is folded into the next layer's bias.

A channel :math:`c` that a consumer layer :math:`y = Wx + b` reads contributes :math:`W_{:,c}\,x_c`.
Removing it replaces :math:`x_c` by 0; replacing it by its mean :math:`\bar x_c` instead is exact
for a channel whose output is constant (a saturated tanh, a ReLU that is always on) and the
best constant in the least-squares sense otherwise.  So before a removal
:math:`b \leftarrow b + W_{:,c}\,\bar x_c`.  Gradient criteria rank such channels low (a
saturated unit has almost no gradient) while they still shift every downstream pre-activation:
without compensation that shift is the damage.

The means are an EMA (the statistics' :math:`\gamma`) of each consumer's input per column, taken by
forward pre-hooks on the plain `nn.Linear` consumers that have a bias (layers inside vmapped
ensembles and bias-free layers are not compensated).  Cost: one mean over the batch per consumer
call, and only with `compensate=True`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .groups import Group, Member
    from .surgery import Surgeon


class BiasCompensation:
    """Tracks consumers' mean inputs and folds removed channels into their biases."""

    def __init__(self, model: nn.Module, groups: List["Group"], gamma: float):
        self.gamma = float(gamma)
        by_weight = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Linear)}
        self.consumers: Dict[str, List[Tuple["Member", nn.Linear]]] = {}
        self.means: Dict[int, torch.Tensor] = {}
        self._handles: List[Any] = []
        hooked = set()
        for g in groups:
            for m in g.members:
                layer = by_weight.get(id(m.tensor))
                if layer is None or m.dim != 1 or layer.bias is None:
                    continue
                self.consumers.setdefault(g.id, []).append((m, layer))
                if id(layer) not in hooked:
                    hooked.add(id(layer))
                    self._handles.append(layer.register_forward_pre_hook(self._observe))

    @torch.no_grad()
    def _observe(self, layer: nn.Linear, args: Tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.shape[-1] != layer.in_features:
            return
        mean = x.detach().reshape(-1, x.shape[-1]).mean(0).to(layer.bias.dtype)
        old = self.means.get(id(layer))
        if old is None or old.shape != mean.shape:  # first call, or the layer shrank since
            self.means[id(layer)] = mean
        else:
            old.mul_(self.gamma).add_(mean, alpha=1.0 - self.gamma)

    @torch.no_grad()
    def fold(self, removals: Mapping[str, torch.Tensor], surgeon: "Surgeon") -> int:
        """Add W[:, c] * mean[c] to each consumer's bias for the channels about to be removed; returns
        how many consumer layers were compensated (a layer never called has no mean and is skipped)."""
        done = 0
        for gid, chans in removals.items():
            for member, layer in self.consumers.get(gid, []):
                mean = self.means.get(id(layer))
                if mean is None or mean.numel() != layer.in_features:
                    continue
                pos, _ = surgeon.current(member, chans)
                if pos.numel() == 0:
                    continue
                pos = pos.to(mean.device)
                layer.bias.add_(layer.weight[:, pos] @ mean[pos])
                mean[pos] = 0.0  # a masked channel now feeds zeros; never fold it twice
                done += 1
        return done

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
