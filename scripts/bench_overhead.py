"""Overhead of the pruner's training-time work, measured in one run.

1. TD-MPC2: builds our agent at the 5M preset (by default), fills a replay buffer with random
   transitions, and times `agent.update()` with the pruner attached (statistics from the optimizer
   step + cosine group-lasso pressure) and detached, interleaved in blocks so drift on a shared
   machine hits both equally.
2. SB3 (`--sb3`, default on): whole training runs with SB3's default hyper-parameters — PPO on
   CartPole-v1 and SAC on Pendulum-v1 — each run once plain and once with `tdmpc_prune.sb3.wrap`
   (bayes, group lasso on, sparsity 0.5 with the schedule beyond the run, so statistics, pressure
   and logging all run and nothing is removed), the two orders alternating over `--repeats`
   repeats. A run's time covers building the model and `learn()`. Ratios are pruned/plain per
   repeat pair; the median and the min over pairs are reported, for wall time and for the thread's
   CPU time (one torch thread: the work done, not inflated by other load).

The last line of output is JSON:

    {"overhead_ratio": r, "stats_bytes": ..., "sb3": {"ppo_cartpole": {"wall_ratio_median": ...}, ...}, ...}

Targets: r <= 1.02 and SB3 whole-run ratios <= 1.02; statistics memory <= 1 % of parameter memory.

    python scripts/bench_overhead.py [--model-size 5] [--blocks 6] [--updates 5] [--device cpu]
                                     [--repeats 3] [--ppo-steps 16384] [--sac-steps 3000] [--no-sb3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Dict, List, Tuple

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


SB3_CASES = {  # name -> (algorithm, env id, steps argument); every hyper-parameter at SB3's default
    "ppo_cartpole": ("PPO", "CartPole-v1", "ppo_steps"),
    "sac_pendulum": ("SAC", "Pendulum-v1", "sac_steps"),
}
SB3_PRUNE = dict(criterion="bayes", sparsity=0.5, l1=1e-4)  # + total_timesteps: 10x the run (no event fires)


def _sb3_run(algo_name: str, env_id: str, steps: int, pruned: bool, seed: int) -> Tuple[float, float]:
    """(wall s, thread CPU s) of building the model and `learn(steps)`."""
    import stable_baselines3
    from tdmpc_prune.sb3 import wrap

    wall, cpu = time.perf_counter(), time.thread_time()
    model = getattr(stable_baselines3, algo_name)("MlpPolicy", env_id, seed=seed, device="cpu")
    if pruned:
        model = wrap(model, total_timesteps=10 * steps, **SB3_PRUNE)
    model.learn(steps)
    return time.perf_counter() - wall, time.thread_time() - cpu


def bench_sb3(args: argparse.Namespace) -> Dict[str, Any]:
    """Whole-run time ratios pruned/plain for each SB3 case, the orders alternating per repeat."""
    out: Dict[str, Any] = {}
    for name, (algo, env_id, steps_arg) in SB3_CASES.items():
        steps = getattr(args, steps_arg)
        _sb3_run(algo, env_id, min(steps, 512), True, seed=0)  # warm-up: imports, first-call costs
        runs: Dict[bool, List[Tuple[float, float]]] = {True: [], False: []}
        for r in range(args.repeats):
            for pruned in ((True, False) if r % 2 == 0 else (False, True)):
                runs[pruned].append(_sb3_run(algo, env_id, steps, pruned, seed=r))
        wall = [on[0] / off[0] for on, off in zip(runs[True], runs[False])]
        cpu = [on[1] / off[1] for on, off in zip(runs[True], runs[False])]
        out[name] = {
            "steps": steps,
            "wall_ratio_median": round(statistics.median(wall), 4),
            "wall_ratio_min": round(min(wall), 4),
            "cpu_ratio_median": round(statistics.median(cpu), 4),
            "cpu_ratio_min": round(min(cpu), 4),
            "wall_s_plain": [round(w, 2) for w, _ in runs[False]],
            "wall_s_pruned": [round(w, 2) for w, _ in runs[True]],
        }
        print(f"{name}: {steps} steps, pruned/plain wall {out[name]['wall_ratio_median']} (median of {args.repeats}), "
              f"CPU time {out[name]['cpu_ratio_median']}", flush=True)
    out["options"] = {**SB3_PRUNE, "total_timesteps": "10 x steps"}
    return out


def bench_tdmpc2(args: argparse.Namespace) -> Dict[str, Any]:
    """The 5M (default) TD-MPC2 update with the pruner attached and detached, in alternating blocks."""
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
    return result


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
    ap.add_argument("--no-tdmpc2", action="store_true", help="skip the TD-MPC2 update benchmark")
    ap.add_argument("--no-sb3", action="store_true", help="skip the SB3 whole-run benchmarks")
    ap.add_argument("--repeats", type=int, default=3, help="alternating plain/pruned pairs per SB3 case")
    ap.add_argument("--ppo-steps", type=int, default=16_384, help="PPO CartPole-v1 timesteps (8 rollouts of 2048)")
    ap.add_argument("--sac-steps", type=int, default=3_000, help="SAC Pendulum-v1 timesteps (updates from step 100)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: Dict[str, Any] = {} if args.no_tdmpc2 else bench_tdmpc2(args)
    if not args.no_sb3:
        result["sb3"] = bench_sb3(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
