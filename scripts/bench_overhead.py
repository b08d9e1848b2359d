"""Overhead of the pruner's training-time work on a TD-MPC2 update step, measured in one run.

Builds our TD-MPC2 agent at the 5M preset (by default), fills a replay buffer with random
transitions, and times `agent.update()` with the pruner attached (statistics from the optimizer
step + cosine group-lasso pressure) and detached, interleaved in blocks so drift on a shared machine
hits both equally.  The last line of output is JSON:

    {"overhead_ratio": r, "stats_bytes": ..., "param_bytes": ..., ...}

Targets: r <= 1.02; statistics memory <= 1 % of parameter memory.

    python scripts/bench_overhead.py [--model-size 5] [--blocks 6] [--updates 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import json

import torch

from tdmpc_prune import PruneConfig
from tdmpc_prune.tdmpc2 import TDMPC2, ReplayBuffer, make_config
from tdmpc_prune.tdmpc2 import attach
from tdmpc_prune.timing import Timing, time_calls


def _filled_buffer(cfg, device, episodes: int = 4) -> ReplayBuffer:
    """Random transitions (timing does not depend on their values)."""
    n = cfg.episode_length + 1
    buf = ReplayBuffer(episodes * n, cfg.obs_dim, cfg.action_dim, cfg.horizon, cfg.batch_size, device)
    g = torch.Generator().manual_seed(0)
    for _ in range(episodes):
        buf.add(torch.randn(n, cfg.obs_dim, generator=g), torch.rand(n, cfg.action_dim, generator=g) * 2 - 1,
                torch.rand(n, generator=g), torch.zeros(n))
    return buf


def _time_updates(agent, buffer, n: int) -> Timing:
    return time_calls(lambda: agent.update(buffer), agent.device, n)


def _hook_ms(pruner, agent, repeats: int) -> float:
    """Time of the pruner's own work per update (both optimizers' pre-step hooks), timed directly."""
    opts = (agent.optim, agent.pi_optim)
    for p in agent.model.parameters():  # the hooks read gradients: give every tensor one
        p.grad = torch.randn_like(p)
    hooks = [pruner._pre_hook(i, {id(p) for g in o.param_groups for p in g["params"]}) for i, o in enumerate(opts)]

    def run_hooks():
        for hook, opt in zip(hooks, opts):
            hook(opt, (), {})
        pruner.stats.commit()

    return time_calls(run_hooks, agent.device, repeats).ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-size", default="5")
    ap.add_argument("--blocks", type=int, default=6, help="alternating on/off blocks")
    ap.add_argument("--updates", type=int, default=5, help="updates per block")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--l1", type=float, default=1e-4, help="lambda_max of the group lasso (0: statistics only)")
    ap.add_argument("--criterion", default="bayes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = make_config(task="cartpole-balance", model_size=args.model_size, obs_dim=5, action_dim=1,
                      batch_size=args.batch_size, device=args.device)
    agent = TDMPC2(cfg)
    buffer = _filled_buffer(cfg, agent.device)
    pruner = attach(agent, total_steps=10_000, config=PruneConfig(criterion=args.criterion, l1=args.l1, l1_period=100, sparsity=0.5))

    _time_updates(agent, buffer, 2)  # warm-up (allocator, first-call costs)
    on, off = _time_updates(agent, buffer, 0), _time_updates(agent, buffer, 0)  # empty, right clock
    for b in range(args.blocks):
        for state in ((True, False) if b % 2 == 0 else (False, True)):
            if state:
                pruner.attach([agent.optim, agent.pi_optim], total_steps=10_000)
                on.extend(_time_updates(agent, buffer, args.updates))
            else:
                pruner.detach()
                off.extend(_time_updates(agent, buffer, args.updates))
    pruner.detach()
    hook_ms = _hook_ms(pruner, agent, repeats=10)
    param_bytes = sum(p.numel() * p.element_size() for p in agent.model.parameters())
    result = {
        "overhead_ratio": round(on.ms / off.ms, 4),
        "ms_update_on": round(on.ms, 2),
        "ms_update_off": round(off.ms, 2),
        "wall_ratio": round(on.wall_ms / off.wall_ms, 4),
        "hook_ms": round(hook_ms, 3),
        "hook_ratio": round(1 + hook_ms / off.ms, 4),
        "clock": "thread CPU time" if on.use_cpu else "wall time",
        "stats_bytes": pruner.stats.stats_bytes(),
        "param_bytes": param_bytes,
        "stats_fraction": round(pruner.stats.stats_bytes() / param_bytes, 5),
        "params": sum(p.numel() for p in agent.model.parameters()),
        "groups": len(pruner.groups),
        "channels": pruner.stats.size,
        "model_size": args.model_size,
        "device": str(agent.device),
        "threads": args.threads,
        "l1": args.l1,
        "criterion": args.criterion,
    }
    print(f"update: {result['ms_update_off']} ms without the pruner, {result['ms_update_on']} ms with statistics + L1; "
          f"the pruner's hooks alone: {result['hook_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
