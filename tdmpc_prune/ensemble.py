"""A vectorised ensemble: n copies of one template module run in a single `torch.vmap` call.

The parameters of the members are stacked along a new leading dim (like
`torch.func.stack_module_state` or tensordict's `from_modules`).  The template module keeps its
structure (and attributes such as `LayerNorm.normalized_shape`) but holds no data of its own: it
lives on the meta device and is not registered as a submodule, so `parameters()` only yields the
stacked tensors.  Mirrors of an ensemble (a detached view sharing storage, a target copy) share the
same template object, so shape attributes and hooks on the template serve all of them.
"""
from __future__ import annotations

import copy
from typing import Dict, Iterator, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
from torch.func import functional_call

from .errors import ModelError

_SEP = "__"  # ParameterDict keys cannot contain '.'


def _key(name: str) -> str:
    return name.replace(".", _SEP)


def _name(key: str) -> str:
    return key.replace(_SEP, ".")


class _TensorBag(nn.Module):
    """Holds plain tensors as buffers (persistent or not) under flattened names."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], persistent: bool):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(_key(name), t, persistent=persistent)


class StackedEnsemble(nn.Module):
    """`n` members of one architecture evaluated together under `torch.vmap`.

    Output shape is `(n, *member_output_shape)`.  Build it with `StackedEnsemble.from_modules`.
    `mode` is `'params'` (trainable `nn.Parameter`s), `'shared'` (a detached view that shares
    storage with another ensemble; not saved in `state_dict`) or `'copy'` (an independent,
    non-trainable copy such as a target network; saved in `state_dict`).
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], template: nn.Module, mode: str = "params"):
        super().__init__()
        if mode == "params":
            self.params = nn.ParameterDict({_key(k): nn.Parameter(v) for k, v in tensors.items()})
        elif mode in ("shared", "copy"):
            self.params = _TensorBag(tensors, persistent=(mode == "copy"))
        else:
            raise ModelError(f"mode must be 'params', 'shared' or 'copy', got {mode!r}")
        self.mode = mode
        object.__setattr__(self, "template", template)  # deliberately not a registered submodule
        first = next(iter(tensors.values()))
        self._n = int(first.shape[0])

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module]) -> "StackedEnsemble":
        if len(modules) < 1:
            raise ModelError("StackedEnsemble needs at least one module")
        names = [n for n, _ in modules[0].named_parameters()]
        stacked = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in modules]).clone() for n in names
        }
        template = copy.deepcopy(modules[0]).to("meta")
        return cls(stacked, template, mode="params")

    def shared_view(self) -> "StackedEnsemble":
        """A detached ensemble whose tensors share storage with this one (no gradients flow back)."""
        return StackedEnsemble({k: v.detach() for k, v in self.named_tensors()}, self.template, mode="shared")

    def copy(self) -> "StackedEnsemble":
        """An independent, non-trainable copy (for example a target network)."""
        return StackedEnsemble({k: v.detach().clone() for k, v in self.named_tensors()}, self.template, mode="copy")

    def named_tensors(self) -> Iterator[Tuple[str, torch.Tensor]]:
        """(template parameter name, stacked tensor) pairs, in template order."""
        source = self.params.named_parameters() if self.mode == "params" else self.params.named_buffers()
        for k, v in source:
            yield _name(k), v

    def tensor_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self.named_tensors())

    def __len__(self) -> int:
        return self._n

    def train(self, mode: bool = True) -> "StackedEnsemble":
        super().train(mode)
        self.template.train(mode)
        return self

    def _member(self, params: Dict[str, torch.Tensor], *args):
        return functional_call(self.template, params, args)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        in_dims = (0,) + (None,) * len(args)
        return torch.vmap(self._member, in_dims=in_dims, randomness="different")(self.tensor_dict(), *args)

    def extra_repr(self) -> str:
        numel = sum(t.numel() for _, t in self.named_tensors())
        return f"n={self._n}, mode={self.mode}, params={numel:,}, member={self.template}"
