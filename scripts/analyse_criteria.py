#!/usr/bin/env python
"""What does each criterion remove, and why? Layer-by-layer analysis of one trained SB3 agent.

Takes a dense checkpoint written by `sensitivity.py` (trained with every criterion's statistics
observed) and, over on-policy observations, measures for every hidden channel of the actor and
critic MLPs:

* its **true damage**: how much the network's output (the deterministic action for the actor,
  the value for the critic) moves, RMS over the observations, when that channel alone is removed
  (its activation set to 0) -- and when it is removed *with compensation* (set to its mean, which
  is what folding it into the next bias does);
* its **saturation**: the share of observations where |tanh| > 0.99, and its activation spread;
* each criterion's score.

It prints, per layer, the Spearman rank correlation of each criterion's score with the true damage
(with and without compensation) and with saturation, and the overlap (Jaccard) of the channels two
criteria remove at `--sparsity`.  Last line: JSON with every number.

    python scripts/analyse_criteria.py --checkpoint runs/sensitivity/ppo-HalfCheetah-v5-s0-1000000/dense --env HalfCheetah-v5
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import sb3_tasks  # noqa: E402

CRITERIA = ["grad", "fisher", "bayes", "combined", "taylor", "magnitude", "random"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def _layers(policy: Any) -> Dict[str, Dict[str, Any]]:
    """Group id -> (activation module after the layer, head that reads the net, which output)."""
    out = {}
    for net_name, head in (("policy_net", "action"), ("value_net", "value")):
        net = getattr(policy.mlp_extractor, net_name)
        for i, layer in enumerate(net):
            if isinstance(layer, torch.nn.Linear):
                out[f"mlp_extractor.{net_name}.{i}"] = {"act": net[i + 1], "output": head}
    return out


@torch.no_grad()
def _outputs(policy: Any, obs: torch.Tensor) -> Dict[str, torch.Tensor]:
    features = policy.extract_features(obs)
    pi, vf = policy.mlp_extractor(features)
    return {"action": policy.action_net(pi), "value": policy.value_net(vf)}


@torch.no_grad()
def true_damage(policy: Any, obs: torch.Tensor, act: torch.nn.Module, output: str, width: int) -> Dict[str, np.ndarray]:
    """RMS change of the output when each channel is replaced by 0 (removed) or by its mean (compensated)."""
    base = _outputs(policy, obs)[output]
    captured: List[torch.Tensor] = []
    h = act.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    _outputs(policy, obs)
    h.remove()
    a = captured[0]
    means = a.mean(0)
    scale = base.std(0).clamp_min(1e-8)
    out = {"removed": np.zeros(width), "compensated": np.zeros(width),
           "saturation": (a.abs() > 0.99).float().mean(0).numpy(), "spread": a.std(0).numpy()}
    for c in range(width):
        for kind, value in (("removed", 0.0), ("compensated", means[c])):
            def patch(m, i, o, c=c, value=value):
                o = o.clone()
                o[:, c] = value
                return o

            h = act.register_forward_hook(patch)
            moved = _outputs(policy, obs)[output]
            h.remove()
            out[kind][c] = float((((moved - base) / scale) ** 2).mean().sqrt())
    return out


def analyse(args: argparse.Namespace) -> Dict[str, Any]:
    from tdmpc_prune.sb3 import get_pruner

    path = Path(args.checkpoint)
    model, venv = sb3_tasks.load("ppo", args.env, args.seed, path, training=False)
    obs = torch.as_tensor(sb3_tasks.observations(model, args.env, args.seed, venv, args.observations))
    policy = model.policy
    pruner = get_pruner(model)
    scores: Dict[str, Dict[str, np.ndarray]] = {}
    for c in CRITERIA:
        pruner.use_criterion(c)
        scores[c] = {gid: s.numpy() for gid, s in pruner.scores().items()}
    report: Dict[str, Any] = {}
    for gid, info in _layers(policy).items():
        width = len(scores["grad"][gid])
        dmg = true_damage(policy, obs, info["act"], info["output"], width)
        k = int(round(args.sparsity * width))
        removed = {c: set(np.argsort(scores[c][gid], kind="stable")[:k].tolist()) for c in CRITERIA}
        oracle = set(np.argsort(dmg["removed"])[:k].tolist())
        oracle_comp = set(np.argsort(dmg["compensated"])[:k].tolist())
        report[gid] = {
            "spearman_vs_damage": {c: spearman(scores[c][gid], dmg["removed"]) for c in CRITERIA},
            "spearman_vs_damage_compensated": {c: spearman(scores[c][gid], dmg["compensated"]) for c in CRITERIA},
            "spearman_vs_saturation": {c: spearman(scores[c][gid], dmg["saturation"]) for c in CRITERIA},
            "overlap_with_oracle": {c: jaccard(removed[c], oracle) for c in CRITERIA},
            "overlap_with_oracle_compensated": {c: jaccard(removed[c], oracle_comp) for c in CRITERIA},
            "overlap": {f"{a}/{b}": jaccard(removed[a], removed[b]) for i, a in enumerate(CRITERIA) for b in CRITERIA[i + 1 :]},
            "saturated_channels": int((dmg["saturation"] > 0.5).sum()),
            "damage_removed_vs_compensated": float(np.median(dmg["compensated"] / np.maximum(1e-12, dmg["removed"]))),
            "width": width,
        }
    return report


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a dense checkpoint directory of sensitivity.py (model.zip inside)")
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.75)
    ap.add_argument("--observations", type=int, default=2000)
    args = ap.parse_args(argv)
    if not (Path(args.checkpoint) / "model.zip").exists():
        raise SystemExit(f"{args.checkpoint} holds no model.zip: give a dense checkpoint directory written by scripts/sensitivity.py")
    torch.set_num_threads(1)
    report = analyse(args)
    for gid, r in report.items():
        print(f"\n{gid} (width {r['width']}, {r['saturated_channels']} channels saturated > 50 % of the time; "
              f"median damage compensated / removed {r['damage_removed_vs_compensated']:.2f})")
        print(f"  {'criterion':<10} {'rho dmg':>8} {'rho dmg+c':>9} {'rho sat':>8} {'J oracle':>9} {'J orc+c':>8}")
        for c in CRITERIA:
            print(f"  {c:<10} {r['spearman_vs_damage'][c]:8.2f} {r['spearman_vs_damage_compensated'][c]:9.2f} "
                  f"{r['spearman_vs_saturation'][c]:8.2f} {r['overlap_with_oracle'][c]:9.2f} {r['overlap_with_oracle_compensated'][c]:8.2f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
