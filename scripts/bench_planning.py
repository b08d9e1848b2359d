"""Planning latency, parameters and FLOPs of a TD-MPC2 agent, dense vs physically pruned, in one run.

Builds our agent at the 5M preset (by default) and copies of it pruned physically by 25, 50 and
75 % of every width removed (hidden widths of every component and the latent, in whole SimNorm simplices),
then times `agent.act` (MPPI planning: 6 iterations, 512 samples, horizon 3) on all of them in
interleaved rounds so that load on a shared machine hits every variant alike.  With one CPU
thread the speed-ups come from the calling thread's CPU time (not inflated by other processes on
the cores; wall time is printed beside it), on CUDA from wall time.  FLOPs of one plan
come from `torch.utils.flop_counter`.  The last line is JSON:

    {"0.25": {"plan_speedup": s, "param_ratio": p, "flop_ratio": f}, "0.5": {...}, "0.75": {...}}

Targets at 50 %: plan_speedup >= 2 on CPU, param_ratio <= 0.4, plan_speedup >= 0.8 / flop_ratio.

    python scripts/bench_planning.py [--model-size 5] [--rounds 5] [--device cpu] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from tdmpc_prune import PruneConfig
from tdmpc_prune.tdmpc2 import TDMPC2, make_config
from tdmpc_prune.tdmpc2 import attach
from tdmpc_prune.tdmpc2.prune_callback import time_act

SPARSITIES = (0.25, 0.5, 0.75)


@torch.no_grad()
def _plan_flops(agent, obs: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        agent.act(obs, t0=False, eval_mode=False)
    return int(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-size", default="5")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median taken)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = make_config(task="cartpole-balance", model_size=args.model_size, obs_dim=5, action_dim=1, device=args.device)
    dense = TDMPC2(cfg)
    agents = {"dense": dense}
    for s in SPARSITIES:
        agent = TDMPC2(copy.deepcopy(cfg))
        agent.model.load_state_dict(dense.model.state_dict())
        pruner = attach(agent, config=PruneConfig(criterion="magnitude", sparsity=s, coupling="prune", physical=True))
        pruner.prune_to(s)
        agents[str(s)] = agent
    obs = torch.randn(cfg.obs_dim)
    times = {k: time_act(agent, obs, eval_mode=False) for k, agent in agents.items()}  # warm-up, discarded
    times = {k: time_act(agent, obs, eval_mode=False, repeats=0) for k, agent in agents.items()}
    for _ in range(args.rounds):
        for k, agent in agents.items():
            times[k].extend(time_act(agent, obs, eval_mode=False))
    ms = {k: t.ms for k, t in times.items()}
    params = {k: sum(p.numel() for p in a.model.parameters()) for k, a in agents.items()}
    flops = {k: _plan_flops(a, obs) for k, a in agents.items()}
    clock = "thread CPU time" if times["dense"].use_cpu else "wall time"
    print(f"model_size={args.model_size} device={dense.device} threads={args.threads}; speed-ups from {clock}")
    print(f"{'variant':>8} {'plan ms CPU':>12} {'plan ms wall':>13} {'params':>11} {'plan GFLOP':>11} {'latent':>7}")
    for k, a in agents.items():
        print(f"{k:>8} {times[k].cpu_ms:12.1f} {times[k].wall_ms:13.1f} {params[k]:11,d} {flops[k] / 1e9:11.3f} "
              f"{a.model._dynamics[-1].out_features:7d}")
    result = {
        str(s): {
            "plan_speedup": round(ms["dense"] / ms[str(s)], 3),
            "param_ratio": round(params[str(s)] / params["dense"], 4),
            "flop_ratio": round(flops[str(s)] / flops["dense"], 4),
            "plan_ms": round(ms[str(s)], 2),
        }
        for s in SPARSITIES
    }
    print("dense: " + json.dumps({"plan_ms": round(ms["dense"], 2), "params": params["dense"], "plan_flops": flops["dense"], "clock": clock}))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
