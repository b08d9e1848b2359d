"""Trace stand-ins: what torch-pruning's dependency graph cannot see, and how we show it.

Group discovery traces a *view* of the model in which three kinds of layer are swapped, in place
and only for the duration of the trace, for plain equivalents that torch-pruning understands:

* a Linear subclass that owns its LayerNorm and activation (tdmpc2's `NormedLinear`) becomes
  `Linear -> Dropout -> LayerNorm -> act` sharing the very same Parameters and LayerNorm module;
* a SimNorm (softmax over groups of `dim` channels) becomes a `BlockMarker`: an element-wise op
  that tells discovery to prune the channels it sees in whole simplices of `dim`;
* a vmapped ensemble over stacked parameters (our `StackedEnsemble`, or tensordict `from_modules`
  as in the official tdmpc2) becomes its first member as ordinary modules; every tensor of that
  member maps back to the stacked tensor with one leading (member) dim, so one channel width is
  shared by all members.

`TraceMap` records how to get from the traced view back to the real tensors and modules.
This module also holds the masked LayerNorm used by mask mode.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from .ensemble import StackedEnsemble
from .errors import ModelError


class BlockMarker(nn.Module):
    """Trace-time stand-in for SimNorm: element-wise, remembers the simplex size."""

    def __init__(self, block: int):
        super().__init__()
        self.block = int(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


class InputMarker(nn.Module):
    """Trace-time pass-through for a model input, so the graph knows its width.

    torch-pruning computes `torch.cat` offsets from the traced inputs only; a raw input (the
    observation in `cat([obs, task_emb])`) would shift every offset after it.
    """

    def __init__(self, width: int):
        super().__init__()
        self.width = int(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """`model(*inputs)` for a tuple or list, `model(**inputs)` for a dict, else `model(inputs)`."""
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


def _markable(x) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0


def _flat_tensors(inputs) -> List[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, (tuple, list)):
        return [t for x in inputs for t in _flat_tensors(x)]
    if isinstance(inputs, dict):
        return [t for v in inputs.values() for t in _flat_tensors(v)]
    return []


def input_markers(inputs) -> nn.ModuleList:
    """One `InputMarker` per floating-point tensor of a nested input structure (in traversal order)."""
    return nn.ModuleList(InputMarker(t.shape[-1]) for t in _flat_tensors(inputs) if _markable(t))


def mark_inputs(inputs, markers: nn.ModuleList):
    """Pass the floating-point tensors of `inputs` through `markers`, in traversal order."""
    it = iter(markers)

    def walk(x):
        if _markable(x):
            return next(it)(x.detach().requires_grad_(True))
        if isinstance(x, (tuple, list)):
            return type(x)(walk(v) for v in x)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        return x

    return walk(inputs)


class _NormedLinearView(nn.Module):
    """Trace-time stand-in for a Linear that owns its LayerNorm (shares Parameters and the LN)."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        lin.weight = layer.weight
        lin.bias = layer.bias
        self.lin = lin
        self.dropout = getattr(layer, "dropout", None) or nn.Identity()
        self.ln = layer.ln
        self.act = layer.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.ln(self.dropout(self.lin(x))))


class _EnsembleView(nn.Module):
    """Trace-time stand-in for a vmapped ensemble: member 0 as plain modules, output stacked."""

    def __init__(self, member: nn.Module, n: int):
        super().__init__()
        self.member = member
        self.n = n

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        y = self.member(*args)
        return y.unsqueeze(0).expand(self.n, *y.shape)


@dataclass
class TraceMap:
    """Maps traced-view objects back to the real model."""

    tensors: Dict[int, Tuple[torch.Tensor, int]] = field(default_factory=dict)  # id(view tensor) -> (real, lead dims)
    modules: Dict[int, nn.Module] = field(default_factory=dict)  # id(view module) -> real module
    names: Dict[int, str] = field(default_factory=dict)  # id(view module) -> real qualified name

    def tensor(self, t: torch.Tensor) -> Tuple[torch.Tensor, int]:
        return self.tensors.get(id(t), (t, 0))

    def module(self, m: nn.Module) -> nn.Module:
        return self.modules.get(id(m), m)


# ----------------------------------------------------------------------------------- detection
def is_normed_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) and type(m) is not nn.Linear and isinstance(getattr(m, "ln", None), nn.LayerNorm)


def is_simnorm(m: nn.Module) -> bool:
    return type(m).__name__ == "SimNorm" and isinstance(getattr(m, "dim", None), int)


def is_tensordict_ensemble(m: nn.Module) -> bool:
    params = getattr(m, "params", None)
    return (
        hasattr(params, "flatten_keys")
        and hasattr(params, "batch_size")
        and isinstance(getattr(m, "module", None), nn.Module)
    )


def is_ensemble(m: nn.Module) -> bool:
    return isinstance(m, StackedEnsemble) or is_tensordict_ensemble(m)


def ensemble_tensors(m: nn.Module) -> Dict[str, torch.Tensor]:
    """Stacked tensors of an ensemble by template parameter name (same objects, not copies)."""
    if isinstance(m, StackedEnsemble):
        return m.tensor_dict()
    td = m.params
    out: Dict[str, torch.Tensor] = {}
    for key in td.keys(include_nested=True, leaves_only=True):
        name = ".".join(key) if isinstance(key, tuple) else key
        out[name] = td.get(key)
    return out


def ensemble_template(m: nn.Module) -> nn.Module:
    return m.template if isinstance(m, StackedEnsemble) else m.module


def named_tensors(m: nn.Module) -> Dict[str, torch.Tensor]:
    """Every tensor that carries state of `m`: stacked ensemble tensors or parameters and buffers."""
    out: Dict[str, torch.Tensor] = {}
    for name, sub in m.named_modules():
        prefix = f"{name}." if name else ""
        if is_ensemble(sub):
            for k, v in ensemble_tensors(sub).items():
                out[f"{prefix}{k}"] = v
    inside = tuple(f"{n}." for n, s in m.named_modules() if is_ensemble(s) and n)
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if t.is_meta or name in out or (inside and name.startswith(inside)):
            continue  # meta tensors belong to ensemble templates, which hold no data
        if not (is_ensemble(m) and name.startswith("params")):
            out[name] = t
    return out


def named_norms(m: nn.Module) -> Dict[str, nn.LayerNorm]:
    """LayerNorms of `m` by name, ensemble templates included (under the ensemble's name)."""
    out: Dict[str, nn.LayerNorm] = {}
    for name, sub in m.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(sub, nn.LayerNorm):
            out[name] = sub
        if is_ensemble(sub):
            for tname, tsub in ensemble_template(sub).named_modules():
                if isinstance(tsub, nn.LayerNorm):
                    out[f"{prefix}{tname}"] = tsub
    return out


# ----------------------------------------------------------------------------------- the view
def _as_parameter(member: nn.Module, name: str, value: torch.Tensor, ens_name: str) -> nn.Parameter:
    """Install `value` as the Parameter `name` of `member` (the template copy) and return it.

    The template may hold the slot as a Parameter (tensordict >= 0.14, our `StackedEnsemble`) or as
    a plain tensor attribute (tensordict < 0.14 `from_modules`, e.g. the official pin 0.8.3).
    """
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = member.get_submodule(owner_name) if owner_name else member
    except AttributeError as e:
        raise ModelError(f"ensemble {ens_name!r}: stacked tensor {name!r} has no module in its template") from e
    if attr not in owner._parameters and not isinstance(getattr(owner, attr, None), torch.Tensor):
        raise ModelError(f"ensemble {ens_name!r}: stacked tensor {name!r} has no slot in its template module")
    param = nn.Parameter(value, requires_grad=True)
    if attr not in owner._parameters:
        delattr(owner, attr)  # a plain tensor attribute (or a buffer): re-registered as a Parameter
    owner._parameters[attr] = param
    return param


def _ensemble_view(ens: nn.Module, name: str, tmap: TraceMap) -> nn.Module:
    template = ensemble_template(ens)
    stacked = ensemble_tensors(ens)
    first = next(iter(stacked.values()))
    member = copy.deepcopy(template).to_empty(device=first.device)
    for pname, t in stacked.items():
        param = _as_parameter(member, pname, t[0].detach().clone(), name)
        tmap.tensors[id(param)] = (t, 1)
    real_modules = dict(template.named_modules())
    for mname, mod in member.named_modules():
        tmap.modules[id(mod)] = real_modules[mname]
        tmap.names[id(mod)] = f"{name}.{mname}" if mname else name
    return _EnsembleView(member, int(first.shape[0]))


def _swap(module: nn.Module, name: str, tmap: TraceMap) -> Optional[nn.Module]:
    """Return the trace-time stand-in for `module`, or None if it needs none."""
    if is_ensemble(module):
        return _ensemble_view(module, name, tmap)
    if is_normed_linear(module):
        view = _NormedLinearView(module)
        tmap.names[id(view.lin)] = tmap.names.get(id(module), name)
        tmap.modules[id(view.lin)] = tmap.modules.get(id(module), module)
        return view
    if is_simnorm(module):
        return BlockMarker(module.dim)
    return None


@contextlib.contextmanager
def trace_view(model: nn.Module) -> Iterator[TraceMap]:
    """Swap the special layers of `model` for traceable stand-ins; restore them (and train mode) on exit."""
    tmap = TraceMap()
    for name, mod in model.named_modules():
        tmap.names[id(mod)] = name
    swapped: List[Tuple[nn.Module, str, nn.Module]] = []
    training = {m: m.training for m in model.modules()}
    try:
        stack: List[Tuple[nn.Module, str]] = [(model, "")]
        while stack:
            parent, pname = stack.pop()
            for child_name, child in list(parent._modules.items()):
                if child is None:
                    continue
                qual = tmap.names.get(id(child)) or (f"{pname}.{child_name}" if pname else child_name)
                tmap.names.setdefault(id(child), qual)
                view = _swap(child, qual, tmap)
                if view is not None:
                    parent._modules[child_name] = view
                    swapped.append((parent, child_name, child))
                    child = view
                stack.append((child, qual))
        yield tmap
    finally:
        for parent, child_name, original in reversed(swapped):
            parent._modules[child_name] = original
        for m, mode in training.items():
            m.training = mode


@contextlib.contextmanager
def side_effect_free(model: nn.Module) -> Iterator[None]:
    """Run a trace (discovery, FLOP counting) without changing the model or the global RNG.

    Restored on exit: every buffer's values (BatchNorm running statistics and batch counters),
    every module's train/eval flag, and the CPU and CUDA random states (dropout draws).
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    training = {m: m.training for m in model.modules()}
    devices = sorted({b.device.index or 0 for b in (*model.parameters(), *model.buffers()) if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    if b.shape == saved.shape:
                        b.copy_(saved)
            for m, mode in training.items():
                m.training = mode


# ----------------------------------------------------------------------------------- masked LN
def masked_layer_norm(
    x: torch.Tensor, keep: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float
) -> torch.Tensor:
    """LayerNorm over the kept channels only; masked channels come out as exact zeros.

    With `k = sum(keep)`: mean = sum(x*keep)/k, var = sum(((x-mean)*keep)^2)/k,
    y = ((x-mean)/sqrt(var+eps)*weight + bias) * keep -- identical to LayerNorm on the kept slice.
    """
    m = keep.to(x.dtype)
    k = m.sum()
    mean = (x * m).sum(-1, keepdim=True) / k
    centred = (x - mean) * m
    var = (centred * centred).sum(-1, keepdim=True) / k
    y = centred * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


def masked_norm_hook(keep: torch.Tensor) -> Callable:
    """A forward hook that recomputes a LayerNorm's output over the kept channels."""

    def hook(module: nn.LayerNorm, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return masked_layer_norm(inputs[0], keep, module.weight, module.bias, module.eps)

    return hook


# ----------------------------------------------------------------------------------- shape sync
def sync_shape_attributes(root: nn.Module) -> None:
    """Make the size attributes of standard layers agree with their (possibly shrunken) tensors."""
    ensembles = [m for m in root.modules() if is_ensemble(m)]
    in_template = {id(t) for e in ensembles for t in ensemble_template(e).modules()}  # sized from the stacked tensors
    for e in ensembles:
        sync_ensemble_template(e)
    for m in root.modules():
        if id(m) not in in_template:
            _sync_one(m)


def _sync_one(m: nn.Module, shape: Optional[Tuple[int, ...]] = None) -> None:
    """Size attributes of `m` from its weight's shape (or from `shape`, a per-member weight shape)."""
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        return
    s = tuple(int(d) for d in (w.shape if shape is None else shape))
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = s[0], s[1]
    elif isinstance(m, nn.LayerNorm):
        m.normalized_shape = s
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = s[0], s[1]
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels, m.in_channels = s[0], s[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = s[0]


def sync_ensemble_template(ens: nn.Module) -> None:
    """Resize the (meta) template of an ensemble to its stacked tensors, then sync its attributes.

    A placeholder keeps the layout it was built with: per-member shape, or with the leading member
    dim (the official tdmpc2 `init()` gives its detached/target copies' templates the stacked shape),
    so a pruned model's `state_dict` loads strictly into one rebuilt from the new widths.
    """
    template = ensemble_template(ens)
    stacked = ensemble_tensors(ens)
    for name, t in stacked.items():
        owner_name, _, attr = name.rpartition(".")
        owner = template.get_submodule(owner_name) if owner_name else template
        current = getattr(owner, attr, None)
        keeps_member_dim = isinstance(current, torch.Tensor) and current.dim() == t.dim()
        shape = tuple(t.shape) if keeps_member_dim else tuple(t.shape[1:])
        if isinstance(current, torch.Tensor) and tuple(current.shape) == shape:
            continue
        meta = torch.empty(shape, device="meta", dtype=t.dtype)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(meta, requires_grad=t.requires_grad)
        elif attr in owner._buffers:
            owner._buffers[attr] = meta
        else:
            setattr(owner, attr, meta)
    for mod_name, m in template.named_modules():
        w = stacked.get(f"{mod_name}.weight" if mod_name else "weight")
        _sync_one(m, tuple(w.shape[1:]) if w is not None else None)
