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
from tdmpc_prune import deploy
from tdmpc_prune.tdmpc2.bench import plan_work, pruned_copies
from tdmpc_prune.tdmpc2.deploy import ExportWorldModel, PlannerGraph, PolicyGraph, export_agent
from tdmpc_prune.tdmpc2.runtime import OrtController

SPARSITIES = (0.5, 0.75)
MATMUL_OPS = {"Gemm", "MatMul", "FusedMatMul", "FusedGemm"}


def op_category(name: str, op: str) -> str:
    """The part of a TD-MPC2 plan an ONNX node belongs to (from its op type and exporter scope name)."""
    if op in MATMUL_OPS:
        return "matmul"
    if op == "LayerNormalization":
        return "layernorm"
    if any(part.startswith("act") for part in name.split("/")):  # the modules' activations
        return "simnorm" if op in ("Softmax", "Reshape", "Transpose") else "mish"
    if op == "Softmax":
        return "bin_softmax"
    return "other"  # two-hot decoding, LayerNorm affine of the stacked critics, Q min/avg, sampling, elites, glue


def ort_breakdown(directory: str, feed: Dict[str, np.ndarray], runs: int) -> Dict[str, Dict[str, float]]:
    """ms per plan and node count of each part of the exported planner, from ONNX Runtime's profiler."""
    nodes = deploy.profile(f"{directory}/planner.onnx", feed, runs)
    parts: Dict[str, Dict[str, float]] = {}
    for name, v in nodes.items():
        part = parts.setdefault(op_category(name, str(v["op"])), {"ms": 0.0, "nodes": 0})
        part["ms"] += float(v["us"]) / 1e3
        part["nodes"] += 1
    total = sum(p["ms"] for p in parts.values())
    return {k: {"ms": round(p["ms"], 2), "share": round(p["ms"] / total, 3), "nodes": int(p["nodes"])}
            for k, p in sorted(parts.items(), key=lambda kv: -kv[1]["ms"])}


def tdmpc2_cells(args, tmp: str) -> Tuple[Dict[str, Callable[[], object]], Dict[str, Dict[str, int]], Dict[str, int], Dict[str, object]]:
    """Timed callables of the 5M planner and prior per variant and backend; the work of one plan
    (`plan_work`, counted on the agent's `act` and on the exported planner module); parameters;
    the ONNX Runtime profile of each planner graph."""
    cfg = make_config(task="cartpole-balance", model_size="5", obs_dim=5, action_dim=1, device="cpu")
    agents = pruned_copies(cfg, SPARSITIES)
    obs = torch.randn(cfg.obs_dim)
    obs_np = obs.numpy()
    cells: Dict[str, Callable[[], object]] = {}
    work: Dict[str, Dict[str, int]] = {}
    profiles: Dict[str, object] = {}
    for k, agent in agents.items():
        model = ExportWorldModel(agent.model)
        graph = PlannerGraph(model, agent.planner, agent.discount).eval()
        noise = agent.planner.draw_noise(len(agent.model._Qs), "cpu")
        work[k] = plan_work(agent, obs)
        exported = plan_work(agent, obs, lambda g=graph, n=noise: g(obs[None], torch.zeros(cfg.horizon, cfg.action_dim), *n))
        work[k]["exported_matmul_flops"] = exported["matmul_flops"]
        work[k]["exported_other_elements"] = exported["other_elements"]
        if "eager" in args.backends:
            cells[f"planner/{k}/eager"] = lambda a=agent: a.act(obs, eval_mode=False)
            prior = PolicyGraph(model)
            cells[f"prior/{k}/eager"] = lambda p=prior: p(obs[None])
        if "compile" in args.backends:
            compiled = torch.compile(graph, dynamic=False)
            prev = torch.zeros(cfg.horizon, cfg.action_dim)

            def plan(a=agent, g=compiled, p=prev):
                noise = a.planner.draw_noise(len(a.model._Qs), "cpu")
                return g(obs[None], p, *noise)

            cells[f"planner/{k}/compile"] = plan
            prior_c = torch.compile(PolicyGraph(model), dynamic=False)
            cells[f"prior/{k}/compile"] = lambda p=prior_c: p(obs[None])
        if "ort" in args.backends:
            t = time.perf_counter()
            export_agent(agent, f"{tmp}/tdmpc2-{k}", only=["planner", "policy"])
            print(f"exported {k} in {time.perf_counter() - t:.0f} s", flush=True)
            ctrl = OrtController(f"{tmp}/tdmpc2-{k}", seed=0)
            cells[f"planner/{k}/ort"] = lambda c=ctrl: c.act(obs_np)
            if args.profile_runs:
                feed = {"obs": obs_np[None], "prev_mean": ctrl.prev_mean, **ctrl.noise()}
                profiles[k] = ort_breakdown(f"{tmp}/tdmpc2-{k}", feed, args.profile_runs)
            cells[f"prior/{k}/ort"] = lambda c=ctrl: c.policy(obs_np)
    return cells, work, {k: a.model.total_params for k, a in agents.items()}, profiles


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
    ap.add_argument("--profile-runs", type=int, default=3, help="profiled ORT plans per planner graph (0: no profile)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cells, work, params, profiles = tdmpc2_cells(args, tmp)
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
    flop_ratio = {k: w["matmul_flops"] / work["dense"]["matmul_flops"] for k, w in work.items()}
    other_ratio = {k: w["other_elements"] / work["dense"]["other_elements"] for k, w in work.items()}
    follow = {}
    for backend in args.backends:
        for sp in SPARSITIES:
            dense, pruned = p50.get(f"planner/dense/{backend}"), p50.get(f"planner/{sp}/{backend}")
            if dense and pruned:
                speedup = dense / pruned
                follow[f"{backend}_{sp}"] = {"speedup": round(speedup, 3), "flop_reduction": round(1 / flop_ratio[str(sp)], 3),
                                             "fraction_of_flop_reduction": round(speedup * flop_ratio[str(sp)], 3),
                                             "other_elements_reduction": round(1 / other_ratio[str(sp)], 3)}
    result = {
        "p50_p99_ms": stats,
        "planner_speedup_vs_flop_reduction": follow,
        "flop_ratio": {k: round(v, 4) for k, v in flop_ratio.items()},
        "other_elements_ratio": {k: round(v, 4) for k, v in other_ratio.items()},
        "plan_work": work,
        "ort_planner_profile": profiles,
        "params": params,
        "clock": "thread CPU time, 1 torch thread, ORT intra_op_num_threads=1",
    }
    if "planner/0.75/ort" in p50 and "planner/dense/eager" in p50:
        result["speedup_ort_p75_vs_eager_dense"] = round(p50["planner/dense/eager"] / p50["planner/0.75/ort"], 3)
    for name, v in follow.items():
        print(f"planner {name}: {v['speedup']}x for a {v['flop_reduction']}x FLOP cut ({v['fraction_of_flop_reduction']})")
    for k, parts in profiles.items():
        print(f"ORT planner {k} (profiled): " + ", ".join(f"{n} {p['ms']:.1f} ms ({p['share']:.0%}, {p['nodes']} nodes)" for n, p in parts.items()))
    if "speedup_ort_p75_vs_eager_dense" in result:
        print(f"75 %-pruned planner on ONNX Runtime vs dense eager: {result['speedup_ort_p75_vs_eager_dense']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
