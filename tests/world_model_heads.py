"""Every head of a TD-MPC2 world model (ours or the official one), for masked-vs-pruned comparisons."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

Q_COPIES = {"": {}, "_detach": {"detach": True}, "_target": {"target": True}}


def randomise(wm: nn.Module, seed: int = 1, skip: Tuple[str, ...] = ("log_std", "_action_masks")) -> nn.Module:
    """Every float tensor random (the zero-initialised heads and the target copy too), in place."""
    from tdmpc_prune.tracing import named_tensors

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(named_tensors(wm).items()):
            if t.is_floating_point() and not any(s in name for s in skip) and not t.is_meta:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    if hasattr(wm, "refresh_views"):
        wm.refresh_views()
    return wm


def heads(wm: nn.Module, inputs, latent_keep: Optional[torch.Tensor] = None, termination: bool = True) -> Dict[str, torch.Tensor]:
    """encode, next, reward, Q (all/min/avg of the online, detached and target copies), pi, termination."""
    obs, actions, task = inputs
    a = actions[0]
    z = wm.encode(obs, task)
    out = {
        "encode": z,
        "next": wm.next(z, a, task),
        "reward": wm.reward(z, a, task),
    }
    for k, (suffix, flags) in enumerate(Q_COPIES.items()):
        out[f"Q{suffix}"] = wm.Q(z, a, task, return_type="all", **flags)
        for j, rt in enumerate(("min", "avg")):
            # min/avg draw two random members: the same seed makes both models draw the same two
            torch.manual_seed(100 + 10 * k + j)
            out[f"Q{suffix}_{rt}"] = wm.Q(z, a, task, return_type=rt, **flags)
    torch.manual_seed(3)
    out["pi_mean"] = wm.pi(z, task)[1]["mean"]
    if termination and getattr(wm, "_termination", None) is not None:
        out["termination"] = wm.termination(z, task)
    if latent_keep is not None:
        out["encode"], out["next"] = out["encode"][..., latent_keep], out["next"][..., latent_keep]
    return out


def expected_heads(termination: bool) -> set:
    names = {"encode", "next", "reward", "pi_mean"} | {f"Q{s}{t}" for s in Q_COPIES for t in ("", "_min", "_avg")}
    return names | ({"termination"} if termination else set())


def assert_trains_every_kept_weight(agent, update, skip: Tuple[str, ...] = ()) -> Dict[str, torch.Tensor]:
    """Run `update()` on a pruned agent: finite losses, Adam moments at the pruned shapes, and more than
    half of the entries of every parameter (but those named in `skip`) changed. Returns the losses."""
    before = {n: p.detach().clone() for n, p in agent.model.named_parameters()}
    info = update()
    assert all(torch.isfinite(v).all() for v in info.values())
    for opt in (agent.optim, agent.pi_optim):
        for group in opt.param_groups:
            for p in group["params"]:
                st = opt.state[p]
                assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape
    for n, p in agent.model.named_parameters():
        if not n.startswith(skip):
            changed = (p.detach() != before[n]).float().mean().item()
            assert changed > 0.5, f"{n}: only {changed:.2f} of its entries trained after pruning"
    return info
