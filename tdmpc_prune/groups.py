"""Structural groups: what must shrink together, and which components it spans.

A `Group` is a set of channels that can only be removed together across every tensor they touch
(the rows of a Linear, its LayerNorm, the columns of every consumer, through concats and
ensembles).  Its `kind` is `component` when all of its tensors live in one component and
`coupling` when it spans several (e.g. the TD-MPC2 latent: written by the encoder and the dynamics,
read by dynamics, reward, Q and policy).  Discovery uses torch-pruning's `DependencyGraph` on a
traced view of the model (see `tracing.py` for what the view fixes).
"""
from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch_pruning as tp

from .errors import PruneError
from .tracing import BlockMarker, InputMarker, TraceMap, input_markers, mark_inputs, trace_view

ComponentSpec = Union[str, nn.Module, Sequence[Union[str, nn.Module]]]


@dataclass
class Member:
    """One tensor dim that a group's channels index: `pos[i]` (original position) holds channel `chan[i]`."""

    name: str
    tensor: torch.Tensor
    dim: int
    pos: torch.Tensor
    chan: torch.Tensor
    component: str


@dataclass
class NormRef:
    """A LayerNorm whose normalised channels belong to a group (for masked statistics)."""

    name: str
    module: nn.LayerNorm
    pos: torch.Tensor
    chan: torch.Tensor


@dataclass
class Group:
    id: str
    kind: str  # "component" | "coupling"
    components: Tuple[str, ...]
    channels: int  # channels at discovery (the original width)
    unit: int  # channels per structural unit: 8 for a SimNorm latent, else 1
    members: List[Member]
    norms: List[NormRef] = field(default_factory=list)

    @property
    def units(self) -> int:
        return self.channels // self.unit

    def unit_of(self, chan: torch.Tensor) -> torch.Tensor:
        return torch.div(chan, self.unit, rounding_mode="floor")


# --------------------------------------------------------------------------------- components
def resolve_components(model: nn.Module, components: Optional[Mapping[str, ComponentSpec]]) -> Dict[str, List[str]]:
    """Component name -> module-name prefixes.  Default: each top-level child is a component."""
    names = {id(m): n for n, m in model.named_modules()}
    if not components:
        return {name: [name] for name, _ in model.named_children()} or {"model": [""]}
    known = set(names.values())
    out: Dict[str, List[str]] = {}
    for comp, spec in components.items():
        specs = [spec] if isinstance(spec, (str, nn.Module)) else list(spec)
        prefixes = []
        for s in specs:
            if isinstance(s, nn.Module):
                if id(s) not in names:
                    raise PruneError(f"component {comp!r}: the module given is not part of the model; pass a submodule of it")
                prefixes.append(names[id(s)])
            elif s in known:
                prefixes.append(s)
            else:
                import difflib

                close = difflib.get_close_matches(s, sorted(known), n=3, cutoff=0.6)
                hint = f" Close module names: {', '.join(close)}." if close else ""
                raise PruneError(
                    f"component {comp!r}: {s!r} matches no module of the model.{hint} "
                    "Give module names as printed by model.named_modules()."
                )
        out[comp] = prefixes
    return out


def check_exclude(model: nn.Module, exclude: Sequence[str]) -> None:
    """Every `exclude` entry names a module or tensor of the model (or a prefix of one at a dot)."""
    from .tracing import named_tensors

    names = {n for n, _ in model.named_modules() if n} | set(named_tensors(model))
    names |= {n for n, _ in model.named_parameters()}
    for entry in exclude:
        if entry in names or any(n.startswith(entry + ".") for n in names):
            continue
        import difflib

        close = difflib.get_close_matches(entry, sorted(names), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PruneError(
            f"exclude entry {entry!r} matches no module of the model.{hint} "
            "Give module names as printed by model.named_modules()."
        )


def component_of(name: str, comps: Mapping[str, Sequence[str]]) -> str:
    best, best_len = None, -1
    for comp, prefixes in comps.items():
        for p in prefixes:
            if (p == "" or name == p or name.startswith(p + ".")) and len(p) > best_len:
                best, best_len = comp, len(p)
    return best if best is not None else name.split(".")[0]


# --------------------------------------------------------------------------------- discovery
_OUT_TENSORS = {
    nn.Linear: (("weight", 0), ("bias", 0)),
    nn.modules.conv._ConvNd: (("weight", 0), ("bias", 0)),
    nn.LayerNorm: (("weight", 0), ("bias", 0)),
    nn.modules.batchnorm._BatchNorm: (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    nn.Embedding: (("weight", 1),),
}
_IN_TENSORS = {
    nn.Linear: (("weight", 1),),
    nn.modules.conv._ConvNd: (("weight", 1),),
    nn.LayerNorm: (("weight", 0), ("bias", 0)),
    nn.modules.batchnorm._BatchNorm: (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    nn.Embedding: (),
}


def _layout(module: Any, is_out: bool) -> Optional[Tuple[Tuple[str, int], ...]]:
    table = _OUT_TENSORS if is_out else _IN_TENSORS
    for cls, spec in table.items():
        if isinstance(module, cls):
            if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
                return None
            return spec
    return None


class _BlockPruner(tp.ops.ElementWisePruner):
    """Registers `BlockMarker` with torch-pruning as a pass-through op so it shows up in groups."""


class _InputPruner(tp.ops.DummyPruner):
    """Registers `InputMarker` with torch-pruning: a source of known width that is never pruned."""

    def get_out_channels(self, layer: InputMarker) -> int:
        return layer.width

    get_in_channels = get_out_channels


def _unbind_keeps_channels(dg: tp.DependencyGraph) -> None:
    """Iterating over a tensor (`for a in actions`) unbinds its leading (time/batch) dim.

    torch-pruning maps an unbind over dim 0 as a split of the channels (right for attention's
    stacked q/k/v, wrong for a rollout over a horizon); for features on the last dim it keeps them.
    """
    from torch_pruning.dependency.constants import INDEX_MAPPING_PLACEHOLDER

    unbind = [n for n in dg.module2node.values() if n.type == tp.ops.OPTYPE.UNBIND]
    for node in unbind:
        node.enable_index_mapping = False
    for node in dg.module2node.values():
        for dep in node.dependencies:
            if dep.source in unbind or dep.target in unbind:
                dep.index_mapping[0] = INDEX_MAPPING_PLACEHOLDER


class _Traced(nn.Module):
    """The model plus one marker per input, so torch-pruning's hooks see the inputs' widths."""

    def __init__(self, model: nn.Module, markers: nn.ModuleList):
        super().__init__()
        self.model = model
        self.markers = markers

    @staticmethod
    def run(forward_fn: Callable[[nn.Module, Any], Any]) -> Callable[["_Traced", Any], Any]:
        return lambda traced, inputs: forward_fn(traced.model, mark_inputs(inputs, traced.markers))


def _is_dummy(module: Any) -> bool:
    return type(module).__module__.startswith("torch_pruning") or isinstance(module, (BlockMarker, InputMarker))


def discover_groups(
    model: nn.Module,
    forward_fn: Callable[[nn.Module, Any], Any],
    example_inputs: Any,
    components: Optional[Mapping[str, ComponentSpec]] = None,
    exclude: Sequence[str] = (),
) -> Tuple[List[Group], List[str]]:
    """Trace `forward_fn(model, example_inputs)` and return (prunable groups, notes on skipped ones).

    Everything `forward_fn` returns is a model output: channels that reach it (action heads, value
    bins, ...) are never pruned; observation inputs are never a group.
    """
    comps = resolve_components(model, components)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    groups: List[Group] = []
    notes: List[str] = []
    with trace_view(model) as tmap, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = _Traced(model, input_markers(example_inputs))
        dg = tp.DependencyGraph().build_dependency(
            traced,
            example_inputs,
            forward_fn=_Traced.run(forward_fn),
            customized_pruners={BlockMarker: _BlockPruner(), InputMarker: _InputPruner()},
            verbose=False,
        )
        _unbind_keeps_channels(dg)
        roots = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)
        for tp_group in dg.get_all_groups(root_module_types=roots):
            group, note = _convert(tp_group, dg, tmap, comps, exclude, order)
            if group is not None:
                groups.append(group)
            elif note:
                notes.append(note)
    # The traced graph holds grad_fn (and AccumulateGrad) nodes of the parameters; a live
    # AccumulateGrad remembers the old shape and breaks backward after a physical prune.
    dg.module2node.clear()
    del dg
    gc.collect()
    groups.sort(key=lambda g: (order.get(g.id, len(order)), g.id))
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):  # should not happen; keep ids unique and stable anyway
        seen: Dict[str, int] = {}
        for g in groups:
            seen[g.id] = seen.get(g.id, 0) + 1
            if seen[g.id] > 1:
                g.id = f"{g.id}#{seen[g.id]}"
    return groups, notes


def _convert(
    tp_group: Any,
    dg: tp.DependencyGraph,
    tmap: TraceMap,
    comps: Mapping[str, Sequence[str]],
    exclude: Sequence[str],
    order: Mapping[str, int],
) -> Tuple[Optional[Group], Optional[str]]:
    items = list(tp_group.items)
    root_view = items[0].dep.target.module
    root_name = tmap.names.get(id(root_view), type(root_view).__name__)
    channels = len(items[0].root_idxs)
    merged: Dict[Tuple[int, int], Dict[str, Any]] = {}
    norms: Dict[int, NormRef] = {}
    producers: List[str] = []
    unit = 1
    for it in items:
        view = it.dep.target.module
        node = dg.module2node.get(view)
        is_out = dg.is_out_channel_pruning_fn(it.dep.handler)
        if isinstance(view, BlockMarker):
            unit = view.block
            continue
        if node is not None and not node.outputs and is_out:
            return None, f"{root_name}: reaches a model output (kept whole)"
        if isinstance(view, nn.Parameter):
            real, lead = tmap.tensor(view)
            layout: Tuple[Tuple[Any, int], ...] = ((view, node.pruning_dim if node is not None else -1),)
            owner_name = dg._module2name.get(view, "parameter").removeprefix("model.")
        elif _is_dummy(view):
            continue
        else:
            layout = _layout(view, is_out)
            owner_name = tmap.names.get(id(view), "?")
            if layout is None:
                if any(True for _ in view.parameters(recurse=False)):
                    return None, f"{root_name}: touches {owner_name} ({type(view).__name__}), a layer we cannot slice"
                continue
        if is_out and any(owner_name == e or owner_name.startswith(e + ".") for e in exclude):
            return None, f"{root_name}: would shrink the outputs of excluded module {owner_name}"
        if is_out and isinstance(view, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)):
            producers.append(owner_name)
        pos = torch.as_tensor(list(it.idxs), dtype=torch.long)
        chan = torch.as_tensor(list(it.root_idxs), dtype=torch.long)
        if isinstance(view, nn.LayerNorm):
            real_ln = tmap.module(view)
            norms[id(real_ln)] = NormRef(owner_name, real_ln, pos, chan)
        for attr, dim in layout:
            t = attr if isinstance(attr, torch.Tensor) else getattr(view, attr, None)
            if not isinstance(t, torch.Tensor):
                continue
            real, lead = tmap.tensor(t)
            d = (dim % t.dim()) + lead
            key = (id(real), d)
            tname = owner_name if isinstance(attr, torch.Tensor) else f"{owner_name}.{attr}"
            entry = merged.setdefault(key, {"name": tname, "tensor": real, "dim": d, "pos": [], "chan": [], "owner": owner_name})
            entry["pos"].append(pos)
            entry["chan"].append(chan)
    if not merged:
        return None, None
    members = []
    for e in merged.values():
        pos, inv = torch.unique(torch.cat(e["pos"]), return_inverse=True)
        chan = torch.empty_like(pos)
        chan[inv] = torch.cat(e["chan"])
        members.append(Member(e["name"], e["tensor"], e["dim"], pos, chan, component_of(e["owner"], comps)))
    if channels % unit:
        raise PruneError(
            f"group {root_name}: {channels} channels feed a SimNorm of {unit}-simplices; the width must be a multiple of {unit}"
        )
    components = tuple(sorted({m.component for m in members}, key=lambda c: list(comps).index(c) if c in comps else len(comps)))
    ranked = sorted(set(producers or [root_name]), key=lambda n: (order.get(n, len(order)), n))
    return (
        Group(
            id=ranked[0],
            kind="coupling" if len(components) > 1 else "component",
            components=components,
            channels=channels,
            unit=unit,
            members=members,
            norms=list(norms.values()),
        ),
        None,
    )
