"""Time one agent update and one MPPI plan per model-size preset.

    python -m tdmpc_prune.tdmpc2.bench --sizes cpu 1 5 --threads 1

Uses the official defaults (batch 256, horizon 3, 512 samples x 6 iterations) on a synthetic
replay buffer; reports medians over `--repeats` timed calls (after warm-up calls) of the calling
thread's CPU time -- robust when other processes share the cores -- and of wall time.
Baselines for the speed work: `--all-q` computes min/avg Q the official way (evaluate every
member, then pick two); `--native-mish` uses `F.mish` also where no gradient is needed.
"""
from __future__ import annotations

import argparse
import copy
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

from ..timing import time_calls
from . import layers, world_model
from .agent import TDMPC2
from .buffer import ReplayBuffer
from .config import TDMPC2Config, make_config


@contextmanager
def all_members_q() -> Iterator[None]:
    """Temporarily evaluate every critic and index two afterwards (official behaviour)."""
    original = world_model._ensemble_subset

    def full_then_pick(ens, idx, x):
        return ens(x).index_select(0, idx)

    world_model._ensemble_subset = full_then_pick
    try:
        yield
    finally:
        world_model._ensemble_subset = original


@contextmanager
def native_mish() -> Iterator[None]:
    """Temporarily use `F.mish` everywhere (no cheaper inference forward)."""
    original = layers.Mish.forward
    layers.Mish.forward = lambda self, x: F.mish(x)
    try:
        yield
    finally:
        layers.Mish.forward = original


def pruned_copies(cfg: TDMPC2Config, sparsities: Sequence[float], seed: int = 0) -> Dict[str, TDMPC2]:
    """A fresh agent of `cfg` ("dense") and copies of it physically pruned by each sparsity.

    Every width (hidden widths and the latent, in whole SimNorm simplices) loses the fraction
    given, by weight magnitude: benchmark models whose speed is that of a run pruned to that size.
    """
    from ..config import PruneConfig
    from .wiring import attach

    torch.manual_seed(seed)
    dense = TDMPC2(cfg)
    agents = {"dense": dense}
    for s in sparsities:
        agent = TDMPC2(copy.deepcopy(cfg))
        agent.model.load_state_dict(dense.model.state_dict())
        pruner = attach(agent, config=PruneConfig(criterion="magnitude", sparsity=s, coupling="prune", physical=True))
        pruner.prune_to(s)
        agents[str(s)] = agent
    return agents


@torch.no_grad()
def plan_flops(agent: TDMPC2, obs: torch.Tensor) -> int:
    """FLOPs of one `agent.act` (MPPI plan), from `torch.utils.flop_counter` (matrix products)."""
    return plan_work(agent, obs)["matmul_flops"]


@torch.no_grad()
def plan_work(agent: TDMPC2, obs: torch.Tensor, plan: Optional[Callable[[], object]] = None) -> Dict[str, int]:
    """What one MPPI plan computes: `matmul_flops` (`torch.utils.flop_counter`: the matrix products,
    Q-ensemble and prior rollouts included) and `other_elements` (output elements of every other op
    that is not a view: LayerNorm, Mish, SimNorm, the bin softmaxes, sampling, elite weighting, copies).

    `plan` is the call to count (default: `agent.act`), e.g. the exported planner module.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    flop_ops = set(FlopCounterMode(display=False).flop_registry)

    class ElementCounter(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket not in flop_ops and not func.is_view:
                self.elements += sum(t.numel() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
            return out

    flops, elements = FlopCounterMode(display=False), ElementCounter()
    with flops, elements:
        (plan or (lambda: agent.act(obs, t0=False, eval_mode=False)))()
    return {"matmul_flops": int(flops.get_total_flops()), "other_elements": int(elements.elements)}


def bench(size: str, obs_dim: int, action_dim: int, repeats: int, warmup: int, device: str, **overrides) -> Dict[str, float]:
    cfg = make_config(model_size=size, obs_dim=obs_dim, action_dim=action_dim, device=device, **overrides)
    agent = TDMPC2(cfg)
    buf = ReplayBuffer(4 * 501, obs_dim, action_dim, cfg.horizon, cfg.batch_size, agent.device)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        buf.add(torch.randn(501, obs_dim, generator=g), torch.rand(501, action_dim, generator=g) * 2 - 1,
                torch.rand(501, generator=g), torch.zeros(501))
    obs = torch.randn(obs_dim)
    u = time_calls(lambda: agent.update(buf), agent.device, repeats, warmup)
    p = time_calls(lambda: agent.act(obs), agent.device, repeats, warmup)
    return {"params": agent.model.total_params, "update_cpu": u.cpu_ms, "update_wall": u.wall_ms,
            "plan_cpu": p.cpu_ms, "plan_wall": p.wall_ms}


def measure_step(cfg: TDMPC2Config) -> Dict[str, float]:
    """Seconds of one agent update and one MPPI plan of a fresh agent of `cfg`, on a synthetic buffer.

    Cheap enough for start-up (one call each, no warm-up); the global RNG is left untouched."""
    import time

    with torch.random.fork_rng(devices=[]):
        agent = TDMPC2(copy.deepcopy(cfg))
        length = max(cfg.horizon + 2, 64)
        buf = ReplayBuffer(length, cfg.obs_dim, cfg.action_dim, cfg.horizon, cfg.batch_size, agent.device)
        buf.add(torch.randn(length, cfg.obs_dim), torch.rand(length, cfg.action_dim) * 2 - 1,
                torch.rand(length), torch.zeros(length))
        t = time.perf_counter()
        agent.update(buf)
        update = time.perf_counter() - t
        t = time.perf_counter()
        agent.act(torch.zeros(cfg.obs_dim, device=agent.device), t0=True)
        plan = time.perf_counter() - t
    return {"update_s": update, "plan_s": plan}


def cost_notice(cfg: TDMPC2Config, start_step: int = 0) -> str:
    """One line naming a slow CPU model size: its measured cost per step, the run's estimate, the alternative."""
    t = measure_step(cfg)
    agent_steps = max(0, cfg.steps - max(start_step, cfg.seed_env_steps)) / cfg.action_repeat
    remaining = max(0, cfg.steps - start_step)
    evals = (-(-remaining // cfg.eval_freq) + (start_step == 0)) * cfg.eval_episodes * cfg.episode_length  # incl. step 0 and the end
    train_s = agent_steps * (t["update_s"] + t["plan_s"])
    eval_s = evals * t["plan_s"]
    hours = lambda s: f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"  # noqa: E731
    return (f"model_size={cfg.model_size} on the CPU is slow: one update {t['update_s']:.2f} s + one plan "
            f"{t['plan_s']:.2f} s (measured now), so this run needs ~{hours(train_s)} of training and "
            f"~{hours(eval_s)} of evaluation ({cfg.eval_episodes} episodes x {cfg.episode_length} plans each); "
            "model_size=cpu (the CPU preset, 0.5 M parameters) plans and updates ~4x faster than model_size=5")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["cpu", "1", "5"])
    ap.add_argument("--obs-dim", type=int, default=5, help="5 = cartpole")
    ap.add_argument("--action-dim", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--all-q", action="store_true", help="baseline: evaluate all critics for min/avg Q")
    ap.add_argument("--native-mish", action="store_true", help="baseline: F.mish also without autograd")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    baseline = [name for name, on in (("all critics for min/avg Q", args.all_q), ("native Mish", args.native_mish)) if on]
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, obs {args.obs_dim}, "
          f"action {args.action_dim}" + (f"; baseline: {', '.join(baseline)}" if baseline else ""))
    print("| preset | params | ms/update (CPU / wall) | ms/plan (CPU / wall) |")
    print("|---|---:|---:|---:|")
    for size in args.sizes:
        with all_members_q() if args.all_q else _null(), native_mish() if args.native_mish else _null():
            r = bench(size, args.obs_dim, args.action_dim, args.repeats, args.warmup, args.device)
        print(f"| {size} | {r['params']:,} | {r['update_cpu']:.0f} / {r['update_wall']:.0f} | "
              f"{r['plan_cpu']:.0f} / {r['plan_wall']:.0f} |", flush=True)


@contextmanager
def _null() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
