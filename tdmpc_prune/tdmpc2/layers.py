"""Building blocks of the TD-MPC2 world model: `NormedLinear`, `SimNorm` and the `mlp` builder.

The layer types and their attribute names follow the official tdmpc2 so that one set of pruning
hooks (see `tdmpc_prune.tracing`) serves both: a `NormedLinear` is an `nn.Linear` that owns its
LayerNorm (`ln`), activation (`act`) and optional dropout (`dropout`), computing
`act(ln(dropout(linear(x))))`; `SimNorm` is a softmax over consecutive groups of `dim` channels.
Widths are never cached outside the tensors: `in_features`/`out_features` are read from the
weights in `extra_repr`, so a layer shrunk in place still prints its true size.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ModelError


def num_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) held by `module`; meta tensors count too."""
    return sum(p.numel() for p in module.parameters())


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax over consecutive groups of `dim` channels of the last axis."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if shape[-1] % self.dim:
            raise ModelError(
                f"SimNorm got {shape[-1]} channels, not a multiple of its group size {self.dim}; "
                "the latent width must be a multiple of simnorm_dim"
            )
        # Same values as softmax over the last axis of the (..., groups, dim) view, but taken along the
        # groups-major axis of its transpose: the CPU kernel for a last axis of 8 is ~5x slower
        # (forward and backward), and SimNorm was ~1/6 of a 5M plan.
        groups = x.view(*shape[:-1], -1, self.dim).transpose(-1, -2)
        return F.softmax(groups, dim=-2).transpose(-1, -2).reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Mish(nn.Mish):
    """`nn.Mish` with a cheaper forward when no gradient is needed (planning, TD targets).

    x * tanh(softplus(x)) == x - 2x / ((1 + e^x)^2 + 1): one exp and four more passes instead of
    exp, log1p and tanh (~2x faster on CPU). It stays exact at the extremes (e^x = inf gives x; e^x = 0
    gives 0) and agrees with `F.mish` to ~2e-6. With grad mode on, the native op (and its backward) runs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # (x.requires_grad is not reliable inside torch.vmap)
            return F.mish(x)
        d = torch.exp(x).add_(1)
        d.mul_(d).add_(1)  # (1 + e^x)^2 + 1 (mul_ rather than square_: it has a vmap batching rule)
        return torch.addcdiv(x, x, d, value=-2)  # x - 2x/d in one pass


class NormedLinear(nn.Linear):
    """Linear layer followed by (optional) dropout, LayerNorm and an activation (Mish by default)."""

    def __init__(
        self, in_features: int, out_features: int, dropout: float = 0.0, act: Optional[nn.Module] = None, bias: bool = True
    ):
        super().__init__(in_features, out_features, bias=bias)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else Mish()
        self.dropout = nn.Dropout(dropout, inplace=False) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight, self.bias)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))

    def __repr__(self) -> str:  # compact one-liner instead of nested children
        out, inp = self.weight.shape
        drop = f", dropout={self.dropout.p}" if self.dropout is not None else ""
        return f"NormedLinear({inp}->{out}{drop}, act={type(self.act).__name__}, params={num_params(self):,})"


def mlp(
    in_dim: int,
    hidden_dims: Union[int, Sequence[int]],
    out_dim: int,
    act: Optional[nn.Module] = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """The TD-MPC2 MLP: `NormedLinear` hidden layers (dropout on the first only), then a plain Linear.

    With `act` given (e.g. `SimNorm`), the output layer is a `NormedLinear` ending in `act` instead.
    """
    hidden = [int(hidden_dims)] if isinstance(hidden_dims, int) else [int(d) for d in hidden_dims]
    if not hidden:
        raise ModelError("mlp needs at least one hidden layer")
    dims = [int(in_dim)] + hidden + [int(out_dim)]
    layers: list[nn.Module] = [
        NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0) for i in range(len(dims) - 2)
    ]
    layers.append(NormedLinear(dims[-2], dims[-1], act=act) if act is not None else nn.Linear(dims[-2], dims[-1]))
    return _MLP(*layers)


class _MLP(nn.Sequential):
    """`nn.Sequential` with a tdmpc2-style compact repr: widths and parameter count on one line."""

    def __repr__(self) -> str:
        widths = [str(self[0].weight.shape[1])] + [str(m.weight.shape[0]) for m in self if hasattr(m, "weight")]
        tail = f", out={type(self[-1].act).__name__}" if isinstance(self[-1], NormedLinear) else ""
        drop = next((m.dropout.p for m in self if isinstance(m, NormedLinear) and m.dropout is not None), None)
        drop_s = f", dropout={drop}" if drop else ""
        return f"MLP({'->'.join(widths)}{drop_s}{tail}, params={num_params(self):,})"


def weight_init(m: nn.Module) -> None:
    """TD-MPC2 initialisation: truncated-normal(0.02) Linear weights, zero biases, uniform(+-0.02) embeddings."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.uniform_(m.weight, -0.02, 0.02)
