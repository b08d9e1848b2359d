"""Batch-1 acting latency of dense and pruned controllers in eager PyTorch, torch.compile and ONNX Runtime.

Models: the TD-MPC2 5M planner (MPPI, 512 samples x 6 iterations, horizon 3) and its policy prior
(obs -> deterministic action), and an SB3 SAC actor (Pendulum-v1, [256, 256]), each dense and
physically pruned by 50 and 75 % of every width (TD-MPC2: as `bench_planning.py`, latent included;
SAC: magnitude, every hidden width). Backends, each timed as a deployment calls it:

* eager:   the agent's own `act` (planner; it draws its noise) / the PyTorch module (prior, SAC actor)
* compile: `torch.compile` of the exported module (planner: noise drawn with torch, then the graph)
* ort:     the exported ONNX graph on ONNX Runtime, one intra-op thread (planner: numpy draws the noise)

All (model, variant, backend) cells are timed in interleaved rounds so that load on a shared
machine hits them alike; p50/p99 over every call of the calling thread's CPU time with one torch
thread (wall time beside it). The last line is JSON with every p50/p99 (ms), the speed-ups vs the
same backend's dense model divided by the FLOP reduction (target >= 0.8 for compile and ort at 50 and
75 %) and `speedup_ort_p75_vs_eager_dense` (the 5M planner; target >= 10).

    python scripts/bench_latency.py [--rounds 60] [--calls 20] [--backends eager compile ort]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from tdmpc_prune.tdmpc2 import make_config
from tdmpc_prune.tdmpc2.bench import plan_flops, pruned_copies
from tdmpc_prune.tdmpc2.deploy import ExportWorldModel, PlannerGraph, PolicyGraph, export_agent
from tdmpc_prune.tdmpc2.runtime import OrtController

SPARSITIES = (0.5, 0.75)


def tdmpc2_cells(args, tmp: str) -> Tuple[Dict[str, Callable[[], object]], Dict[str, float], Dict[str, int]]:
    """Timed callables of the 5M planner and prior per variant and backend; FLOP ratios of a plan; parameters."""
    cfg = make_config(task="cartpole-balance", model_size="5", obs_dim=5, action_dim=1, device="cpu")
    agents = pruned_copies(cfg, SPARSITIES)
    obs = torch.randn(cfg.obs_dim)
    obs_np = obs.numpy()
    cells: Dict[str, Callable[[], object]] = {}
    for k, agent in agents.items():
        model = ExportWorldModel(agent.model)
        if "eager" in args.backends:
            cells[f"planner/{k}/eager"] = lambda a=agent: a.act(obs, eval_mode=False)
            prior = PolicyGraph(model)
            cells[f"prior/{k}/eager"] = lambda p=prior: p(obs[None])
        if "compile" in args.backends:
            graph = torch.compile(PlannerGraph(model, agent.planner, agent.discount))
            prev = torch.zeros(cfg.horizon, cfg.action_dim)

            def plan(a=agent, g=graph, p=prev):
                noise = a.planner.draw_noise(len(a.model._Qs), "cpu")
                return g(obs[None], p, *noise)

            cells[f"planner/{k}/compile"] = plan
            prior_c = torch.compile(PolicyGraph(model))
            cells[f"prior/{k}/compile"] = lambda p=prior_c: p(obs[None])
        if "ort" in args.backends:
            t = time.perf_counter()
            export_agent(agent, f"{tmp}/tdmpc2-{k}", only=["planner", "policy"])
            print(f"exported {k} in {time.perf_counter() - t:.0f} s", flush=True)
            ctrl = OrtController(f"{tmp}/tdmpc2-{k}", seed=0)
            cells[f"planner/{k}/ort"] = lambda c=ctrl: c.act(obs_np)
            cells[f"prior/{k}/ort"] = lambda c=ctrl: c.policy(obs_np)
    flops = {k: plan_flops(a, obs) for k, a in agents.items()}
    return cells, {k: flops[k] / flops["dense"] for k in flops}, {k: a.model.total_params for k, a in agents.items()}


def sac_cells(args, tmp: str) -> Dict[str, Callable[[], object]]:
    """Timed callables of a SAC actor (Pendulum-v1) per variant and backend."""
    from stable_baselines3 import SAC

    from tdmpc_prune.sb3 import export
    from tdmpc_prune.sb3.deploy import ActingGraph
    from tdmpc_prune.sb3.saving import bind

    cells: Dict[str, Callable[[], object]] = {}
    obs = np.random.default_rng(0).uniform(-1, 1, size=(1, 3)).astype(np.float32)
    for k, s in (("dense", 0.0), *((str(s), s) for s in SPARSITIES)):
        model = SAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu")
        if s:
            bind(model, dict(criterion="magnitude", sparsity=s)).prune_to(s)
        graph = ActingGraph(model.policy, model.action_space).eval()
        if "eager" in args.backends:
            cells[f"sac_actor/{k}/eager"] = lambda g=graph: g(torch.as_tensor(obs))
        if "compile" in args.backends:
            gc = torch.compile(graph)
            cells[f"sac_actor/{k}/compile"] = lambda g=gc: g(torch.as_tensor(obs))
        if "ort" in args.backends:
            from tdmpc_prune import deploy

            sess = deploy.session(export(model, f"{tmp}/sac-{k}.onnx")["path"])
            cells[f"sac_actor/{k}/ort"] = lambda s_=sess: s_.run(None, {"obs": obs})
    return cells


def measure(cells: Dict[str, Callable[[], object]], rounds: int, calls: int, warmup: int) -> Dict[str, Dict[str, List[float]]]:
    """Interleaved rounds: every cell `calls` times per round (the planner once), thread CPU time and wall time."""
    times = {k: {"cpu": [], "wall": []} for k in cells}
    with torch.no_grad():
        for k, fn in cells.items():  # compiles on the first call
            t = time.perf_counter()
            for _ in range(warmup):
                fn()
            print(f"warm-up {k}: {time.perf_counter() - t:.1f} s", flush=True)
        for r in range(rounds):
            for k, fn in cells.items():
                for _ in range(1 if k.startswith("planner/") else calls):
                    w, c = time.perf_counter(), time.thread_time()
                    fn()
                    times[k]["cpu"].append((time.thread_time() - c) * 1e3)
                    times[k]["wall"].append((time.perf_counter() - w) * 1e3)
            if (r + 1) % max(1, rounds // 5) == 0:
                print(f"round {r + 1}/{rounds}", flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=60, help="interleaved rounds (one plan per cell and round)")
    ap.add_argument("--calls", type=int, default=20, help="prior / SAC calls per cell and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=["eager", "compile", "ort"], choices=["eager", "compile", "ort"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cells, flop_ratio, params = tdmpc2_cells(args, tmp)
        cells.update(sac_cells(args, tmp))
        times = measure(cells, args.rounds, args.calls, args.warmup)
    stats = {k: {f"{q}_{clock}": round(float(np.percentile(v[clock], p)), 3)
                 for clock in ("cpu", "wall") for q, p in (("p50", 50), ("p99", 99))} | {"n": len(v["cpu"])}
             for k, v in times.items()}
    print(f"torch {torch.__version__}, 1 thread; ms per call, thread CPU time (wall)")
    print(f"{'cell':28s} {'p50':>16s} {'p99':>16s}")
    for k, s in stats.items():
        print(f"{k:28s} {s['p50_cpu']:8.3f} ({s['p50_wall']:7.3f}) {s['p99_cpu']:8.3f} ({s['p99_wall']:7.3f})")
    p50 = {k: s["p50_cpu"] for k, s in stats.items()}
    follow = {}
    for backend in args.backends:
        for sp in SPARSITIES:
            dense, pruned = p50.get(f"planner/dense/{backend}"), p50.get(f"planner/{sp}/{backend}")
            if dense and pruned:
                speedup = dense / pruned
                follow[f"{backend}_{sp}"] = {"speedup": round(speedup, 3), "flop_reduction": round(1 / flop_ratio[str(sp)], 3),
                                             "fraction_of_flop_reduction": round(speedup * flop_ratio[str(sp)], 3)}
    result = {
        "p50_p99_ms": stats,
        "planner_speedup_vs_flop_reduction": follow,
        "flop_ratio": {k: round(v, 4) for k, v in flop_ratio.items()},
        "params": params,
        "clock": "thread CPU time, 1 torch thread, ORT intra_op_num_threads=1",
    }
    if "planner/0.75/ort" in p50 and "planner/dense/eager" in p50:
        result["speedup_ort_p75_vs_eager_dense"] = round(p50["planner/dense/eager"] / p50["planner/0.75/ort"], 3)
    for name, v in follow.items():
        print(f"planner {name}: {v['speedup']}x for a {v['flop_reduction']}x FLOP cut ({v['fraction_of_flop_reduction']})")
    if "speedup_ort_p75_vs_eager_dense" in result:
        print(f"75 %-pruned planner on ONNX Runtime vs dense eager: {result['speedup_ort_p75_vs_eager_dense']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
