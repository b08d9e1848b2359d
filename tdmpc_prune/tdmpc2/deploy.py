"""Deploy a (pruned) TD-MPC2 controller as ONNX graphs that run with ONNX Runtime alone.

    tdmpc-prune export RUN_DIR --out DIR [--samples N] [--iterations I]

writes to DIR (see `GRAPHS`): the policy prior (`policy.onnx`: obs -> deterministic mean action;
`pi.onnx`: latent + noise -> sampled and mean action), the world-model heads the planner uses
(`encode`, `next`, `reward`, `q`: min and mean of two critics), the MPPI planner (`planner.onnx`:
a fixed number of iterations and samples; every random draw is an input, `PlanNoise`) and
`controller.json` (shapes, noise distributions, checks). Every graph is compared with the agent's
own PyTorch code on random inputs before anything is written (max abs difference <= 1e-5; the
planner fed the same noise tensors as `MPPIPlanner.plan` gives the same action and next mean).

A pruned run is rebuilt as `resume=true` does: the original model, then the pruner's history
replayed (the layers shrink), then the weights; channels a mask-mode run only masked are removed.
The exported graphs hold plain matrix products: the vmapped Q-ensemble becomes a batched matmul
over its members (`stacked_mlp`, equal to the vmapped one).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import deploy
from ..ensemble import StackedEnsemble
from ..errors import ExportError
from . import functional as Fn
from .wiring import hidden_widths
from .layers import NormedLinear
from .planner import MPPIPlanner, PlanNoise
from .world_model import WorldModel, critic_pair

MANIFEST = "controller.json"
FORMAT = 1
# graph -> (inputs, outputs, inputs with a batch dim)
GRAPHS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = {
    "policy": (("obs",), ("action",), ("obs",)),
    "encode": (("obs",), ("z",), ("obs",)),
    "next": (("z", "action"), ("next_z",), ("z", "action")),
    "reward": (("z", "action"), ("reward",), ("z", "action")),
    "q": (("z", "action", "critic_draws"), ("q_min", "q_avg"), ("z", "action")),
    "pi": (("z", "eps"), ("action", "mean"), ("z", "eps")),
    "planner": (("obs", "prev_mean") + PlanNoise._fields, ("action", "next_mean"), ()),
}
NOISE = {
    "prior_noise": "standard normal",
    "sample_noise": "standard normal",
    "value_noise": "standard normal",
    "critic_draws": "uniform [0, 1)",
    "gumbel": "standard Gumbel (-log of a standard exponential)",
    "action_noise": "standard normal (zeros: eval mode)",
}


# ------------------------------------------------------------------------------------ export-friendly model
def stacked_mlp(ens: StackedEnsemble, x: torch.Tensor, members: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`ens(x)` (an eval-mode ensemble of TD-MPC2 `mlp`s) by batched matmul over the member dim.

    x (..., in) is shared by all members; returns (M, ..., out) for all members or those in `members`.
    """
    t = ens.tensor_dict()
    if members is not None:
        t = {k: v.index_select(0, members) for k, v in t.items()}
    m = next(iter(t.values())).shape[0]
    lead = x.shape[:-1]
    h = x.reshape(1, -1, x.shape[-1]).expand(m, -1, -1)
    for i, layer in enumerate(ens.template):
        h = torch.baddbmm(t[f"{i}.bias"].unsqueeze(1), h, t[f"{i}.weight"].transpose(1, 2))
        if isinstance(layer, NormedLinear):
            h = F.layer_norm(h, layer.ln.normalized_shape, eps=layer.ln.eps)
            h = h * t[f"{i}.ln.weight"].unsqueeze(1) + t[f"{i}.ln.bias"].unsqueeze(1)
            h = layer.act(h)
        elif not isinstance(layer, nn.Linear):
            raise ExportError(f"cannot export a Q-ensemble layer of type {type(layer).__name__}")
    return h.reshape(m, *lead, h.shape[-1])


class ExportWorldModel(nn.Module):
    """The heads of a single-task `WorldModel` in export-friendly ops, sharing its tensors (no copy).

    Same methods and results as the world model (in eval mode); Q runs the ensemble by batched
    matmul instead of `torch.vmap`, and every random draw is an argument.
    """

    def __init__(self, wm: WorldModel):
        super().__init__()
        if wm.cfg.multitask:
            raise ExportError("exporting a multi-task world model is not supported; export a single-task run")
        self.wm = wm
        self.cfg = wm.cfg

    def encode(self, obs: torch.Tensor, task: None = None) -> torch.Tensor:
        return self.wm.encode(obs)

    def next(self, z: torch.Tensor, a: torch.Tensor, task: None = None) -> torch.Tensor:
        return self.wm.next(z, a)

    def reward(self, z: torch.Tensor, a: torch.Tensor, task: None = None) -> torch.Tensor:
        return self.wm.reward(z, a)

    def termination(self, z: torch.Tensor, task: None = None) -> torch.Tensor:
        return self.wm.termination(z)

    def pi(self, z: torch.Tensor, task: None = None, eps: Optional[torch.Tensor] = None):
        return self.wm.pi(z, eps=eps)

    def Q(self, z: torch.Tensor, a: torch.Tensor, task: None = None, return_type: str = "avg",
          draws: Optional[torch.Tensor] = None) -> torch.Tensor:
        """min / avg of two critics (the two largest `draws`; the whole ensemble when it has two)."""
        ens = self.wm._Qs
        members = None if len(ens) == 2 else critic_pair(draws)
        q = Fn.two_hot_inv(stacked_mlp(ens, torch.cat([z, a], dim=-1), members), self.cfg.num_bins, self.cfg.vmin, self.cfg.vmax)
        return q.min(0).values if return_type == "min" else q.mean(0)


# ------------------------------------------------------------------------------------ graphs
class _Head(nn.Module):
    def __init__(self, model: ExportWorldModel):
        super().__init__()
        self.model = model


class PolicyGraph(_Head):
    """obs (B, obs_dim) -> the policy prior's deterministic action tanh(mean) (B, A)."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.pi(self.model.encode(obs), eps=torch.zeros(()))[1]["mean"]


class EncodeGraph(_Head):
    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.encode(obs)


class NextGraph(_Head):
    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.model.next(z, action)


class RewardGraph(_Head):
    """Decoded reward (B, 1) of (z, action)."""

    def forward(self, z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        cfg = self.model.cfg
        return Fn.two_hot_inv(self.model.reward(z, action), cfg.num_bins, cfg.vmin, cfg.vmax)


class QGraph(_Head):
    """(min, mean) of the two critics picked by `critic_draws` (num_q,) uniform."""

    def forward(self, z: torch.Tensor, action: torch.Tensor, critic_draws: torch.Tensor):
        return (self.model.Q(z, action, return_type="min", draws=critic_draws),
                self.model.Q(z, action, return_type="avg", draws=critic_draws))


class PiGraph(_Head):
    """(sampled action tanh(mean + eps * std), mean action tanh(mean)) for eps (B, A) standard normal."""

    def forward(self, z: torch.Tensor, eps: torch.Tensor):
        action, info = self.model.pi(z, eps=eps)
        return action, info["mean"]


class PlannerGraph(nn.Module):
    """One MPPI plan from obs (1, obs_dim) and the previous plan's mean (H, A) (zeros at an episode start).

    The warm start is the previous mean shifted by one step, as in `MPPIPlanner.plan`; the noise
    inputs are the fields of `PlanNoise`. Returns the action (A,) and the mean (H, A) to feed back.
    """

    def __init__(self, model: ExportWorldModel, planner: MPPIPlanner, discount: float):
        super().__init__()
        self.model = model
        self.planner = planner
        self.discount = float(discount)

    def forward(self, obs: torch.Tensor, prev_mean: torch.Tensor, *noise: torch.Tensor):
        z = self.model.encode(obs)
        mean = torch.cat([prev_mean[1:], torch.zeros_like(prev_mean[:1])])
        action, mean, _ = self.planner.search(self.model, z, mean, PlanNoise(*noise), self.discount)
        return action, mean


# ------------------------------------------------------------------------------------ export + checks
def _planner(agent, num_samples: Optional[int], iterations: Optional[int]) -> MPPIPlanner:
    cfg = agent.cfg
    changes = {k: v for k, v in (("num_samples", num_samples), ("iterations", iterations)) if v is not None}
    if changes:
        try:
            cfg = replace(cfg, **changes)  # validated like any config (e.g. num_elites <= num_samples)
        except ValueError as e:
            raise ExportError(f"bad planner size: {e}") from None
    return MPPIPlanner(cfg, agent.device)


def _inputs(agent, planner: MPPIPlanner, batch: int, g: torch.Generator) -> Dict[str, Dict[str, torch.Tensor]]:
    """Random inputs for every graph (latents from the encoder, so they lie on the SimNorm simplices)."""
    cfg, wm, dev = agent.cfg, agent.model, agent.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dev)

    obs = randn(batch, cfg.obs_dim)
    with torch.no_grad():
        z = wm.encode(randn(batch, cfg.obs_dim))
    a = (torch.rand(batch, cfg.action_dim, generator=g) * 2 - 1).to(dev)
    draws = torch.rand(len(wm._Qs), generator=g).to(dev)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=g)))
        noise = planner.draw_noise(len(wm._Qs), dev)
    prev = (torch.rand(cfg.horizon, cfg.action_dim, generator=g) * 2 - 1).to(dev)
    plan = {"obs": obs[:1], "prev_mean": prev, **noise._asdict()}
    return {
        "policy": {"obs": obs}, "encode": {"obs": obs}, "next": {"z": z, "action": a}, "reward": {"z": z, "action": a},
        "q": {"z": z, "action": a, "critic_draws": draws}, "pi": {"z": z, "eps": randn(batch, cfg.action_dim)},
        "planner": plan,
    }


@torch.no_grad()
def _reference(agent, planner: MPPIPlanner, name: str, x: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """What the agent's own PyTorch code (vmapped ensemble, `MPPIPlanner.plan`) returns for graph `name`'s inputs."""
    wm, cfg = agent.model, agent.cfg
    if name == "policy":
        return {"action": wm.pi(wm.encode(x["obs"]))[1]["mean"]}
    if name == "encode":
        return {"z": wm.encode(x["obs"])}
    if name == "next":
        return {"next_z": wm.next(x["z"], x["action"])}
    if name == "reward":
        return {"reward": Fn.two_hot_inv(wm.reward(x["z"], x["action"]), cfg.num_bins, cfg.vmin, cfg.vmax)}
    if name == "q":
        return {"q_min": wm.Q(x["z"], x["action"], return_type="min", draws=x["critic_draws"]),
                "q_avg": wm.Q(x["z"], x["action"], return_type="avg", draws=x["critic_draws"])}
    if name == "pi":
        action, info = wm.pi(x["z"], eps=x["eps"])
        return {"action": action, "mean": info["mean"]}
    ref = MPPIPlanner(planner.cfg, agent.device)
    ref.prev_mean.copy_(x["prev_mean"])
    noise = PlanNoise(*(x[k] for k in PlanNoise._fields))
    action = ref.plan(wm, x["obs"], t0=False, discount=agent.discount, noise=noise)
    return {"action": action, "next_mean": ref.prev_mean}


def graphs(agent, planner: MPPIPlanner) -> Dict[str, nn.Module]:
    """The export modules of `agent` (sharing its tensors), by graph name."""
    model = ExportWorldModel(agent.model)
    return {
        "policy": PolicyGraph(model), "encode": EncodeGraph(model), "next": NextGraph(model), "reward": RewardGraph(model),
        "q": QGraph(model), "pi": PiGraph(model), "planner": PlannerGraph(model, planner, agent.discount),
    }


def export_agent(
    agent, out: str, num_samples: Optional[int] = None, iterations: Optional[int] = None, seed: int = 0,
    only: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Export `agent`'s controller to directory `out`; returns the manifest (also in `out/controller.json`).

    `num_samples` / `iterations` fix the planner's size (default: the agent's config); `only`
    restricts the export to some of `GRAPHS`. Each graph is checked against the agent's PyTorch code.
    """
    deploy.require_onnx()
    out = deploy.writable_dir(out)
    names = list(GRAPHS) if only is None else list(only)
    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise ExportError(f"unknown graph(s) {unknown}; choose from {list(GRAPHS)}")
    planner = _planner(agent, num_samples, iterations)
    modules = graphs(agent, planner)
    g = torch.Generator().manual_seed(seed)
    example, check_inputs = _inputs(agent, planner, 3, g), _inputs(agent, planner, 5, g)
    was_training = agent.model.training
    agent.model.eval()
    entries = {}
    try:
        with deploy.staging(out) as stage:
            for name in names:
                inputs, outputs, batch = GRAPHS[name]
                path = os.path.join(stage, f"{name}.onnx")
                deploy.export_onnx(modules[name], [example[name][k] for k in inputs], path, inputs, outputs, batch)
                diff = deploy.check(path, check_inputs[name], _reference(agent, planner, name, check_inputs[name]), what=name)
                entries[name] = {
                    "file": f"{name}.onnx",
                    "inputs": {k: _shape(check_inputs[name][k], k in batch) for k in inputs if k in deploy.input_names(path)},
                    "outputs": list(outputs),
                    "max_abs_diff": diff,
                }
            manifest = _manifest(agent, planner, entries)
            with open(os.path.join(stage, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=1)
    finally:
        agent.model.train(was_training)
    return manifest


def _shape(t: torch.Tensor, batch: bool) -> List[Any]:
    return (["batch"] if batch else [int(t.shape[0])]) + [int(s) for s in t.shape[1:]]


def _manifest(agent, planner: MPPIPlanner, entries: Dict[str, Any]) -> Dict[str, Any]:
    cfg = planner.cfg
    return {
        "format": FORMAT,
        "obs_dim": cfg.obs_dim, "action_dim": cfg.action_dim, "horizon": cfg.horizon,
        "num_samples": cfg.num_samples, "num_pi_trajs": cfg.num_pi_trajs, "num_elites": cfg.num_elites,
        "iterations": planner.iterations, "num_q": len(agent.model._Qs), "discount": float(agent.discount),
        "params": int(agent.model.total_params),
        "widths": {"latent": int(agent.model._dynamics[-1].out_features), **hidden_widths(agent.model)},
        "noise": NOISE,
        "atol": deploy.ATOL,
        "graphs": entries,
    }


# ------------------------------------------------------------------------------------ runs and the command
def checkpoint_path(run_dir: str) -> str:
    """`run_dir`'s checkpoint, or one clear error when there is none."""
    from .trainer import CHECKPOINT

    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        where = "does not exist" if not os.path.exists(run_dir) else f"has no {CHECKPOINT}"
        raise ExportError(
            f"run directory {run_dir} {where}; give the directory of a `tdmpc-prune train` run "
            f"(<logdir>/<task>/<exp_name>/seed-<seed>, where it writes {CHECKPOINT} every save_freq steps and at the end)"
        )
    return path


def load_run(run_dir: str, device: str = "cpu"):
    """The agent of a `tdmpc-prune train` run directory, pruned as it was saved (masks removed)."""
    from ..config import PruneConfig
    from .agent import TDMPC2
    from .wiring import attach
    from .config import TDMPC2Config

    state = torch.load(checkpoint_path(run_dir), map_location="cpu", weights_only=False)
    pruned = state.get("callbacks", {}).get("prune")
    cfg = TDMPC2Config.from_dict(pruned["original_cfg"] if pruned is not None else state["cfg"])
    agent = TDMPC2(replace(cfg, compile=False), device=device)
    pruner = None
    if pruned is not None:  # as resume=true: replay the history on the original model, then load the weights
        # wired to the agent's optimizers, so finalize() slices their loaded state with the weights
        pruner = attach(agent, config=PruneConfig.from_dict(pruned["pruner"]["config"]))
        pruner.load_state_dict(pruned["pruner"])
    agent.load_state_dict(state["agent"])
    if pruner is not None and any(not h["physical"] for h in pruner.history):
        pruner.finalize()  # masked channels are zero: remove them for real
    return agent


def command(tokens: Sequence[str]) -> Dict[str, Any]:
    """`tdmpc-prune export RUN_DIR --out DIR [--samples N] [--iterations I]`."""
    ap = argparse.ArgumentParser(prog="tdmpc-prune export", description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", help="directory of a `tdmpc-prune train` run (holds checkpoint.pt)")
    ap.add_argument("--out", required=True, help="directory for the .onnx graphs and controller.json")
    ap.add_argument("--samples", type=int, default=None, help="MPPI samples of the planner graph (default: the run's)")
    ap.add_argument("--iterations", type=int, default=None, help="MPPI iterations of the planner graph (default: the run's)")
    args = ap.parse_args(list(tokens))
    deploy.require_onnx()
    checkpoint_path(args.run_dir)  # fail before creating or loading anything
    deploy.writable_dir(args.out)
    agent = load_run(args.run_dir)
    manifest = export_agent(agent, args.out, args.samples, args.iterations)
    worst = max(e["max_abs_diff"] for e in manifest["graphs"].values())
    print(f"[tdmpc-prune] exported {len(manifest['graphs'])} graphs of a {manifest['params']:,}-parameter controller to "
          f"{args.out} (planner: {manifest['num_samples']} samples x {manifest['iterations']} iterations; "
          f"max abs diff to PyTorch {worst:.2g})")
    return manifest
