"""Masks and physical removal of group channels, keeping everything that refers to a tensor consistent.

Every tensor is shrunk *in place* (`t.data = t.data.index_select(dim, keep)`), so the Parameter
objects held by optimizers, ensembles and tensordicts stay the same objects.  Alongside each
tensor we slice its `.grad`, every optimizer state entry of the same shape (Adam's `exp_avg`,
`exp_avg_sq`, SGD momentum, ...) and every registered mirror: a *shared* mirror (a detached view)
is re-pointed at the new storage, a *copy* mirror (a target network, an EMA copy) is sliced with
the same indices.  Positions are tracked as original indices, so several groups can shrink the
same tensor (rows for one group, columns for another) in any order.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import PruneError
from .groups import Group, Member
from .tracing import masked_norm_hook, sync_shape_attributes

Key = Tuple[int, int]


@dataclass
class _Dim:
    tensor: torch.Tensor
    dim: int
    kept: torch.Tensor  # sorted original positions still present (on CPU)


def _reset_grad_accumulator(t: torch.Tensor) -> None:
    """Drop the tensor's cached AccumulateGrad node.

    A leaf's AccumulateGrad records the leaf's shape when it is created and is reused for as long
    as any old graph (a `loss` still referenced by the training loop) keeps it alive; after a
    shape change backward would then fail.  `set_data` drops the cached node only when the dtype
    or device changes, so we pass through a different dtype once.
    """
    other = torch.float64 if t.dtype != torch.float64 else torch.float32
    t.data = torch.empty(0, dtype=other, device=t.device)


class Surgeon:
    """Applies masks or removals to the tensors of a fixed set of groups."""

    def __init__(self, model: nn.Module, groups: Sequence[Group]):
        self.groups = list(groups)
        self.roots: List[nn.Module] = [model]  # modules whose size attributes follow their tensors
        self.dims: Dict[Key, _Dim] = {}
        self.norm_kept: Dict[int, torch.Tensor] = {}
        self.norm_modules: Dict[int, List[nn.LayerNorm]] = {}
        for g in self.groups:
            for m in g.members:
                key = (id(m.tensor), m.dim)
                if key not in self.dims:
                    self.dims[key] = _Dim(m.tensor, m.dim, torch.arange(m.tensor.shape[m.dim]))
            for n in g.norms:
                self.norm_kept.setdefault(id(n.module), torch.arange(n.module.normalized_shape[-1]))
                self.norm_modules.setdefault(id(n.module), [n.module])
        self.mirrors: Dict[int, List[Tuple[torch.Tensor, bool]]] = {}
        self.optimizers: List[torch.optim.Optimizer] = []
        self.masked: Dict[str, torch.Tensor] = {}  # group id -> masked original channels
        self._zero_plan: List[Tuple[torch.Tensor, int, torch.Tensor]] = []
        self._hooks: List[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------------------ lookup
    def current(self, member: Member, chans: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(current positions, channels) of the member's entries still present (optionally only `chans`)."""
        kept = self.dims[(id(member.tensor), member.dim)].kept
        present = torch.isin(member.pos, kept)
        if chans is not None:
            present &= torch.isin(member.chan, chans)
        pos = member.pos[present]
        return torch.searchsorted(kept, pos), member.chan[present]

    # ------------------------------------------------------------------------------ mirrors
    def add_mirror(self, online: torch.Tensor, mirror: torch.Tensor, shared: bool) -> None:
        if online.shape != mirror.shape:
            raise PruneError(f"mirror shape {tuple(mirror.shape)} differs from its online tensor {tuple(online.shape)}")
        entries = self.mirrors.setdefault(id(online), [])
        if not any(m is mirror for m, _ in entries):
            entries.append((mirror, shared))

    def add_norm_mirror(self, online: nn.LayerNorm, mirror: nn.LayerNorm) -> None:
        if id(online) in self.norm_modules and mirror not in self.norm_modules[id(online)]:
            self.norm_modules[id(online)].append(mirror)

    # ------------------------------------------------------------------------------ removal
    def remove(self, removals: Mapping[str, torch.Tensor]) -> None:
        """Physically remove original channels `removals[group_id]` from every tensor they touch."""
        by_key: Dict[Key, List[torch.Tensor]] = {}
        by_norm: Dict[int, List[torch.Tensor]] = {}
        for g in self.groups:
            chans = removals.get(g.id)
            if chans is None or chans.numel() == 0:
                continue
            for m in g.members:
                by_key.setdefault((id(m.tensor), m.dim), []).append(m.pos[torch.isin(m.chan, chans)])
            for n in g.norms:
                by_norm.setdefault(id(n.module), []).append(n.pos[torch.isin(n.chan, chans)])
            if g.id in self.masked:
                rest = self.masked[g.id][~torch.isin(self.masked[g.id], chans)]
                self.masked[g.id] = rest
        for key, parts in by_key.items():
            d = self.dims[key]
            keep = ~torch.isin(d.kept, torch.cat(parts))
            if keep.all():
                continue
            sel = torch.nonzero(keep).squeeze(1)
            d.kept = d.kept[keep]
            self._slice(d.tensor, d.dim, sel)
        for nid, parts in by_norm.items():
            kept = self.norm_kept[nid]
            self.norm_kept[nid] = kept[~torch.isin(kept, torch.cat(parts))]
            for ln in self.norm_modules[nid]:
                ln.normalized_shape = (int(self.norm_kept[nid].numel()),)
        self._sync_attributes()
        self._rebuild_masks()

    @contextmanager
    def trial(self, removals: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Remove `removals` for the duration of the block, then put every tensor, gradient,
        optimizer state, mirror, norm width, size attribute and mask back exactly as it was."""
        dims = {k: (d.kept, d.tensor.data, d.tensor.grad) for k, d in self.dims.items()}
        mirrors = [(m, m.data) for entries in self.mirrors.values() for m, _ in entries]
        states = [(opt.state[d.tensor], dict(opt.state[d.tensor])) for opt in self.optimizers
                  for d in self.dims.values() if d.tensor in opt.state]
        norms = {nid: (kept, [ln.normalized_shape for ln in self.norm_modules[nid]]) for nid, kept in self.norm_kept.items()}
        masked = dict(self.masked)
        try:
            self.remove(removals)
            yield
        finally:
            with torch.no_grad():
                for key, (kept, data, grad) in dims.items():
                    d = self.dims[key]
                    d.kept = kept
                    if d.tensor.data is not data:
                        _reset_grad_accumulator(d.tensor)
                        d.tensor.data = data
                        d.tensor.grad = grad
                for mirror, data in mirrors:
                    mirror.data = data
                for state, saved in states:
                    state.clear()
                    state.update(saved)
            for nid, (kept, shapes) in norms.items():
                self.norm_kept[nid] = kept
                for ln, shape in zip(self.norm_modules[nid], shapes):
                    ln.normalized_shape = shape
            self.masked = masked
            self._sync_attributes()
            self._rebuild_masks()

    def _slice(self, t: torch.Tensor, dim: int, sel: torch.Tensor) -> None:
        old_shape = t.shape
        sel = sel.to(t.device)
        grad = t.grad
        with torch.no_grad():
            new = t.data.index_select(dim, sel)
            _reset_grad_accumulator(t)
            t.data = new
            if grad is not None:
                t.grad = grad.index_select(dim, sel)
            for opt in self.optimizers:
                state = opt.state.get(t)
                if not state:
                    continue
                for k, v in list(state.items()):
                    if torch.is_tensor(v) and v.shape == old_shape:
                        state[k] = v.index_select(dim, sel.to(v.device))
            for mirror, shared in self.mirrors.get(id(t), []):
                mirror.data = t.data if shared else mirror.data.index_select(dim, sel.to(mirror.device))

    def _sync_attributes(self) -> None:
        for root in self.roots:
            sync_shape_attributes(root)

    # ------------------------------------------------------------------------------ masks
    def mask(self, additions: Mapping[str, torch.Tensor]) -> None:
        """Mask (zero, reversibly) original channels `additions[group_id]` on top of the current masks."""
        for gid, chans in additions.items():
            if chans.numel():
                prev = self.masked.get(gid, torch.empty(0, dtype=torch.long))
                self.masked[gid] = torch.unique(torch.cat([prev, chans]))
        self._rebuild_masks()
        self.reapply_masks(include_optimizer_state=True)

    def unmask(self) -> None:
        self.masked.clear()
        self._rebuild_masks()

    def _rebuild_masks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        plan: Dict[Key, List[torch.Tensor]] = {}
        norm_zero: Dict[int, List[torch.Tensor]] = {}
        for g in self.groups:
            chans = self.masked.get(g.id)
            if chans is None or chans.numel() == 0:
                continue
            for m in g.members:
                pos, _ = self.current(m, chans)
                plan.setdefault((id(m.tensor), m.dim), []).append(pos)
            for n in g.norms:
                kept = self.norm_kept[id(n.module)]
                orig = n.pos[torch.isin(n.chan, chans) & torch.isin(n.pos, kept)]
                norm_zero.setdefault(id(n.module), []).append(torch.searchsorted(kept, orig))
        self._zero_plan = []
        for key, parts in plan.items():
            d = self.dims[key]
            self._zero_plan.append((d.tensor, d.dim, torch.unique(torch.cat(parts)).to(d.tensor.device)))
        device_of = {id(n.module): g.members[0].tensor.device for g in self.groups for n in g.norms}
        for nid, parts in norm_zero.items():
            width = int(self.norm_kept[nid].numel())
            keep = torch.ones(width, device=device_of[nid])
            keep[torch.cat(parts).to(keep.device)] = 0.0
            for ln in self.norm_modules[nid]:
                self._hooks.append(ln.register_forward_hook(masked_norm_hook(keep)))

    @torch.no_grad()
    def reapply_masks(self, include_optimizer_state: bool = False) -> None:
        """Zero the masked entries again (after an optimizer step moved them)."""
        for t, dim, idx in self._zero_plan:
            t.data.index_fill_(dim, idx, 0.0)
            for mirror, shared in self.mirrors.get(id(t), []):
                if not shared:
                    mirror.data.index_fill_(dim, idx.to(mirror.device), 0.0)
            if include_optimizer_state:
                for opt in self.optimizers:
                    for v in opt.state.get(t, {}).values():
                        if torch.is_tensor(v) and v.shape == t.shape:
                            v.index_fill_(dim, idx.to(v.device), 0.0)

    def masked_counts(self) -> Dict[Key, int]:
        """Number of masked positions per (tensor, dim)."""
        return {(id(t), dim): int(idx.numel()) for t, dim, idx in self._zero_plan}
