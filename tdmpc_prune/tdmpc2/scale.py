"""Running scale of Q-values used to normalise the policy objective (TD-MPC2, "percentile scale")."""
from __future__ import annotations

import torch
import torch.nn as nn


class RunningScale(nn.Module):
    """An EMA (rate `tau`) of the 5th-95th percentile range of Q, floored at 1.

    The policy loss divides Q by this value so that one entropy coefficient fits tasks whose
    returns differ by orders of magnitude.  Everything stays on the tensor's device (no host sync).
    """

    def __init__(self, tau: float, low: float = 5.0, high: float = 95.0):
        super().__init__()
        self.tau = float(tau)
        self.register_buffer("value", torch.ones(()))
        self.register_buffer("percentiles", torch.tensor([low, high]) / 100.0)

    def update(self, x: torch.Tensor) -> None:
        """Fold in the spread of a batch `x` (any shape; flattened)."""
        q = torch.quantile(x.detach().flatten().float(), self.percentiles.to(x.device))
        self.value.lerp_(torch.clamp(q[1] - q[0], min=1.0).to(self.value.dtype), self.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value

    def extra_repr(self) -> str:
        return f"tau={self.tau}"
