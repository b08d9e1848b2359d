"""Mirrors: tensors outside the traced model that must shrink with it (target nets, EMA copies, views).

`add_module_mirror` registers a whole module mirror tensor by tensor (and its LayerNorms);
`register_implicit_mirrors` finds the ones the model itself reveals: tensors sharing storage with a
group tensor (detached views) and `StackedEnsemble` copies sharing a template with a traced
ensemble (targets).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from .ensemble import StackedEnsemble
from .errors import PruneError
from .groups import Group
from .surgery import Surgeon
from .tracing import named_norms, named_tensors


def add_module_mirror(
    surgeon: Surgeon, online: Union[nn.Module, torch.Tensor], mirror: Union[nn.Module, torch.Tensor], shared: bool
) -> None:
    """Keep `mirror` sliced like `online` (`shared`: it shares storage and is re-pointed instead)."""
    if isinstance(online, torch.Tensor):
        surgeon.add_mirror(online, mirror, shared)
        return
    on, mi = named_tensors(online), named_tensors(mirror)
    if set(on) != set(mi):
        missing = sorted(set(on) ^ set(mi))[:5]
        raise PruneError(f"mirror does not have the structure of its online module (differing tensors: {missing})")
    for name, t in on.items():
        if t.shape != mi[name].shape:
            raise PruneError(
                f"mirror tensor {name!r} has shape {tuple(mi[name].shape)} but the online one {tuple(t.shape)}: "
                "a mirror must have the structure of its online module"
            )
        surgeon.add_mirror(t, mi[name], shared)
    on_norms, mi_norms = named_norms(online), named_norms(mirror)
    for name, ln in on_norms.items():
        if name in mi_norms and mi_norms[name] is not ln:
            surgeon.add_norm_mirror(ln, mi_norms[name])
    surgeon.roots.append(mirror)


def register_implicit_mirrors(surgeon: Surgeon, model: nn.Module, groups: Sequence[Group]) -> None:
    """Register detached views and `StackedEnsemble` target copies of the groups' tensors."""
    members = {}
    for g in groups:
        for m in g.members:
            members[id(m.tensor)] = m.tensor
    by_ptr = {(t.data_ptr(), tuple(t.shape)): t for t in members.values()}
    for _, t in named_tensors(model).items():
        online = by_ptr.get((t.data_ptr(), tuple(t.shape)))
        if online is not None and online is not t:
            surgeon.add_mirror(online, t, shared=True)
    ensembles = [m for m in model.modules() if isinstance(m, StackedEnsemble)]
    traced = [e for e in ensembles if any(id(t) in members for _, t in e.named_tensors())]
    for e in ensembles:
        if e.mode != "copy":
            continue
        for o in traced:
            if o.template is e.template and o is not e:
                online = o.tensor_dict()
                for name, t in e.named_tensors():
                    surgeon.add_mirror(online[name], t, shared=False)
