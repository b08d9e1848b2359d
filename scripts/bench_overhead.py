"""Overhead of the pruner's training-time work, measured in one run.

1. TD-MPC2: builds our agent at the 5M preset (by default), fills a replay buffer with random
   transitions, and times `agent.update()` with the pruner attached (statistics from the optimizer
   step + cosine group-lasso pressure) and detached, in `--pairs` pairs of blocks of
   `--every-n-updates` updates (each block holds one observed update) whose order alternates (on/off, off/on, ...), so drift on a shared machine hits both alike. The ratio
   is the median over pairs of on/off; its interquartile range says how well it is resolved. The
   pruner's hooks are also timed alone on real-sized gradients (`hook_ratio`).
2. SB3 (default on): whole training runs with SB3's default hyper-parameters — PPO on CartPole-v1
   and SAC on Pendulum-v1 — plain and with `tdmpc_prune.sb3.wrap` (bayes, group lasso on, sparsity
   0.5 with the schedule beyond the run, so statistics, pressure and logging all run and nothing is
   removed), `--repeats` pairs of short whole runs each, the order alternating per pair. A run's
   time covers building the model and `learn()`. Ratios pruned/plain per pair: the median (and
   interquartile range) over pairs, for the thread's CPU time (one torch thread: the work done, not
   inflated by other load; the figure to trust on a loaded machine) and for wall time. The hooks
   are timed alone too (`hook_us` per optimizer step on the run's real gradients, and the share of
   a run they make: `hook_share`), averaged over blocks of `--every-n-updates` updates.

The pruner runs at the library default `every_n_updates` unless `--every-n-updates` is given.

The last line of output is JSON:

    {"overhead_ratio": r, "stats_bytes": ..., "sb3": {"ppo_cartpole": {"cpu_ratio_median": ...}, ...}, ...}

Targets: r <= 1.02 and SB3 whole-run ratios <= 1.02; statistics memory <= 1 % of parameter memory.

    python scripts/bench_overhead.py [--model-size 5] [--pairs 40] [--device cpu]
                                     [--repeats 4] [--ppo-steps 8192] [--sac-steps 2000] [--no-sb3] [--no-tdmpc2]
                                     [--every-n-updates N]
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


def _time_updates(agent, buffer, n: int, block: int = 1) -> Timing:
    """`n` timed calls of `block` updates each (a block of every_n_updates holds one observed update)."""
    return time_calls(lambda: [agent.update(buffer) for _ in range(block)], agent.device, n)


def _hook_ms(pruner, opts, device, repeats: int, grads: bool = True) -> float:
    """Time of the pruner's own work per update (every optimizer's pre- and post-step hook), timed directly
    over blocks of `every_n_updates` updates (one of them observed)."""
    from tdmpc_prune.training import post_step_hook, pre_step_hook

    params = [p for o in opts for g in o.param_groups for p in g["params"]]
    for p in params:  # the hooks read gradients: give every tensor one (or keep the run's last ones)
        if grads or p.grad is None:
            p.grad = torch.randn_like(p)
    ids = [frozenset(id(p) for g in o.param_groups for p in g["params"]) for o in opts]
    hooks = [(pre_step_hook(pruner, i, ids[i]), post_step_hook(pruner, ids[i])) for i in range(len(opts))]
    saved = [p.detach().clone() for p in params]

    block = pruner.config.every_n_updates

    def run_hooks():
        for _ in range(block):
            for (pre, post), opt in zip(hooks, opts):
                pre(opt, (), {})
                post(opt, (), {})

    ms = time_calls(run_hooks, device, repeats, warmup=2).ms / block
    with torch.no_grad():  # the shrink moved the weights: put them back
        for p, s in zip(params, saved):
            p.copy_(s)
    return ms


def _spread(ratios: List[float]) -> Dict[str, float]:
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {"median": round(statistics.median(ratios), 4), "q25": round(q[0], 4), "q75": round(q[2], 4), "n": len(ratios)}


SB3_CASES = {  # name -> (algorithm, env id, steps argument); every hyper-parameter at SB3's default
    "ppo_cartpole": ("PPO", "CartPole-v1", "ppo_steps"),
    "sac_pendulum": ("SAC", "Pendulum-v1", "sac_steps"),
}
SB3_PRUNE: Dict[str, Any] = dict(criterion="bayes", sparsity=0.5, l1=1e-4)  # + total_timesteps: 10x the run (no event fires)


def _sb3_run(algo_name: str, env_id: str, steps: int, pruned: bool, seed: int) -> Tuple[float, float, Any]:
    """(wall s, thread CPU s, model) of building the model and `learn(steps)`."""
    import stable_baselines3
    from tdmpc_prune.sb3 import wrap

    wall, cpu = time.perf_counter(), time.thread_time()
    model = getattr(stable_baselines3, algo_name)("MlpPolicy", env_id, seed=seed, device="cpu")
    if pruned:
        model = wrap(model, total_timesteps=10 * steps, **SB3_PRUNE)
    model.learn(steps)
    return time.perf_counter() - wall, time.thread_time() - cpu, model


def _optimizer_steps(model: Any) -> int:
    """Gradient updates of a finished run (each steps every optimizer once; PPO counts epochs of minibatches)."""
    if hasattr(model, "n_epochs"):
        return int(model._n_updates) * -(-model.n_steps * model.n_envs // model.batch_size)
    return int(model._n_updates)


def bench_sb3(args: argparse.Namespace) -> Dict[str, Any]:
    """Whole-run time ratios pruned/plain for each SB3 case, the order alternating per pair."""
    from tdmpc_prune.sb3 import get_pruner
    from tdmpc_prune.sb3.components import optimizers

    out: Dict[str, Any] = {}
    for name, (algo, env_id, steps_arg) in SB3_CASES.items():
        if name not in args.sb3_cases.split(","):
            continue
        steps = getattr(args, steps_arg)
        _sb3_run(algo, env_id, min(steps, 512), True, seed=0)  # warm-up: imports, first-call costs
        runs: Dict[bool, List[Tuple[float, float]]] = {True: [], False: []}
        model = None
        for r in range(args.repeats):
            for pruned in ((True, False) if r % 2 == 0 else (False, True)):
                wall, cpu, m = _sb3_run(algo, env_id, steps, pruned, seed=r)
                runs[pruned].append((wall, cpu))
                model = m if pruned else model
        wall = [on[0] / off[0] for on, off in zip(runs[True], runs[False])]
        cpu = [on[1] / off[1] for on, off in zip(runs[True], runs[False])]
        pruner = get_pruner(model)
        opts = optimizers(model)
        hook_us = 1e3 * _hook_ms(pruner, opts, "cpu", repeats=200, grads=False)
        updates = _optimizer_steps(model)
        plain_cpu = statistics.median(c for _, c in runs[False])
        out[name] = {
            "steps": steps,
            "cpu_ratio": _spread(cpu),
            "wall_ratio": _spread(wall),
            "cpu_ratio_median": round(statistics.median(cpu), 4),
            "wall_ratio_median": round(statistics.median(wall), 4),
            "cpu_s_plain": [round(c, 2) for _, c in runs[False]],
            "cpu_s_pruned": [round(c, 2) for _, c in runs[True]],
            "wall_s_plain": [round(w, 1) for w, _ in runs[False]],
            "updates_per_run": updates,
            "hook_us": round(hook_us, 1),
            "hook_share": round(updates * hook_us * 1e-6 / plain_cpu, 4),
        }
        print(f"{name}: {steps} steps, pruned/plain CPU time {out[name]['cpu_ratio']}, wall {out[name]['wall_ratio_median']}; "
              f"hooks {hook_us:.0f} us per update x {updates} updates = {out[name]['hook_share']:.3f} of a plain run", flush=True)
    out["options"] = {**SB3_PRUNE, "total_timesteps": "10 x steps"}
    return out


def bench_tdmpc2(args: argparse.Namespace) -> Dict[str, Any]:
    """The 5M (default) TD-MPC2 update with the pruner attached and detached, in alternating blocks."""
    torch.manual_seed(0)

    cfg = make_config(task="cartpole-balance", model_size=args.model_size, obs_dim=5, action_dim=1,
                      batch_size=args.batch_size, device=args.device)
    agent = TDMPC2(cfg)
    buffer = _filled_buffer(cfg, agent.device)
    pruner = attach(agent, total_steps=10_000, config=PruneConfig(criterion=args.criterion, l1=args.l1, l1_period=100, sparsity=0.5,
                                                                  every_n_updates=args.every_n_updates))
    block = args.every_n_updates  # each timed call: one block of updates, one of them observed

    opts = [agent.optim, agent.pi_optim]
    _time_updates(agent, buffer, 2, block)  # warm-up (allocator, first-call costs)
    on, off = _time_updates(agent, buffer, 0), _time_updates(agent, buffer, 0)  # empty, right clock
    ratios, wall_ratios = [], []
    for b in range(args.pairs):
        pair = {}
        for state in ((True, False) if b % 2 == 0 else (False, True)):
            if state:
                pruner.attach(opts, total_steps=10_000)
            else:
                pruner.detach()
            pair[state] = _time_updates(agent, buffer, 1, block)
            (on if state else off).extend(pair[state])
        ratios.append(pair[True].ms / pair[False].ms)
        wall_ratios.append(pair[True].wall_ms / pair[False].wall_ms)
    pruner.detach()
    hook_ms = _hook_ms(pruner, opts, agent.device, repeats=10)
    param_bytes = sum(p.numel() * p.element_size() for p in agent.model.parameters())
    result = {
        "overhead_ratio": round(statistics.median(ratios), 4),
        "overhead_ratio_spread": _spread(ratios),
        "ms_update_on": round(on.ms / block, 2),
        "ms_update_off": round(off.ms / block, 2),
        "wall_ratio": round(statistics.median(wall_ratios), 4),
        "hook_ms": round(hook_ms, 3),
        "hook_ratio": round(1 + hook_ms * block / off.ms, 4),
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
        "every_n_updates": block,
    }
    print(f"update: {result['ms_update_off']} ms without the pruner, {result['ms_update_on']} ms with statistics + L1; "
          f"the pruner's hooks alone: {result['hook_ms']} ms")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-size", default="5")
    ap.add_argument("--pairs", type=int, default=40, help="pairs of single updates, on/off in alternating order")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--l1", type=float, default=1e-4, help="lambda_max of the group lasso (0: statistics only)")
    ap.add_argument("--criterion", default="bayes")
    ap.add_argument("--every-n-updates", type=int, default=PruneConfig.every_n_updates,
                    help="statistics and group lasso on every n-th update (the PruneConfig default unless given)")
    ap.add_argument("--no-tdmpc2", action="store_true", help="skip the TD-MPC2 update benchmark")
    ap.add_argument("--no-sb3", action="store_true", help="skip the SB3 whole-run benchmarks")
    ap.add_argument("--sb3-cases", default=",".join(SB3_CASES), help=f"comma-separated, of: {', '.join(SB3_CASES)}")
    ap.add_argument("--repeats", type=int, default=4, help="plain/pruned pairs of whole runs per SB3 case (order alternating)")
    ap.add_argument("--ppo-steps", type=int, default=8192, help="PPO CartPole-v1 timesteps (4 rollouts of 2048, 1280 updates)")
    ap.add_argument("--sac-steps", type=int, default=2000, help="SAC Pendulum-v1 timesteps (updates from step 100)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    SB3_PRUNE["every_n_updates"] = args.every_n_updates
    result: Dict[str, Any] = {} if args.no_tdmpc2 else bench_tdmpc2(args)
    if not args.no_sb3:
        result["sb3"] = bench_sb3(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
