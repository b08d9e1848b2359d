#!/usr/bin/env python
"""How far does one-shot pruning move a trained SAC agent's actor and critics from the dense ones?

Takes a dense SAC checkpoint written by `sensitivity.py` (observed statistics and the replay
buffer beside it) and, on `--samples` transitions drawn from the replay buffer, measures for every
criterion and sparsity, after pruning the whole agent one-shot as the grid does:

* `actor_rms`: RMS change of the deterministic action (actions in [-1, 1]);
* `critic_rel_rms`: RMS change of Q1(s, a) on the buffer's (s, a), over the dense Q1's spread;
* `critic_corr`: Pearson correlation of the pruned and the dense Q1 there;
* `dq_da_cos`: median cosine between the pruned and the dense critics' action gradient
  d min(Q1, Q2) / da at the dense actor's action -- the direction the actor follows in a fine-tune;
* `dq_da_norm_ratio`: ratio of their median norms.

One-shot evaluations use the actor alone; a fine-tune also follows the critics, so these say what
each criterion leaves the fine-tune to start from.  Last line: JSON with every number.

    python scripts/analyse_sac_pruning.py --checkpoint runs/sensitivity/sac-HalfCheetah-v5-s1-100000/dense --sparsities 0.5,0.75
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import sb3_tasks  # noqa: E402

CRITERIA = ["grad", "fisher", "bayes", "combined", "taylor", "magnitude", "random"]


def action_gradient(model: Any, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """d min(Q1, Q2) / da at (obs, action), one row per sample."""
    a = action.clone().requires_grad_(True)
    q = torch.min(*model.critic(obs, a)[:2]).sum() if model.critic.n_critics > 1 else model.critic(obs, a)[0].sum()
    return torch.autograd.grad(q, a)[0]


def distances(model: Any, dense: Any, obs: torch.Tensor, act: torch.Tensor) -> Dict[str, float]:
    with torch.no_grad():
        q, q0 = model.critic(obs, act)[0].squeeze(1), dense.critic(obs, act)[0].squeeze(1)
        a, a0 = model.actor(obs, deterministic=True), dense.actor(obs, deterministic=True)
    g, g0 = action_gradient(model, obs, a0), action_gradient(dense, obs, a0)
    return dict(
        actor_rms=float((a - a0).pow(2).mean().sqrt()),
        critic_rel_rms=float((q - q0).pow(2).mean().sqrt() / q0.std()),
        critic_corr=float(torch.corrcoef(torch.stack([q, q0]))[0, 1]),
        dq_da_cos=float(torch.nn.functional.cosine_similarity(g, g0, dim=1).median()),
        dq_da_norm_ratio=float(g.norm(dim=1).median() / g0.norm(dim=1).median()),
    )


def analyse(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    from tdmpc_prune.sb3 import get_pruner

    path = Path(args.checkpoint)
    dense, _ = sb3_tasks.load("sac", args.env, args.seed, path, training=True)  # with its replay buffer
    buffer = dense.replay_buffer
    idx = torch.randint(0, buffer.size(), (args.samples,), generator=torch.Generator().manual_seed(args.seed)).numpy()
    obs = torch.as_tensor(buffer.observations[idx, 0], dtype=torch.float32)
    act = torch.as_tensor(buffer.actions[idx, 0], dtype=torch.float32)
    out: Dict[str, Dict[str, float]] = {}
    for sparsity in args.sparsities:
        for criterion in args.criteria:
            model, _ = sb3_tasks.load("sac", args.env, args.seed, path, training=False)
            pruner = get_pruner(model)
            pruner.use_criterion(criterion)
            pruner.prune_to(sparsity=sparsity)
            out[f"{criterion}@{sparsity:g}"] = d = distances(model, dense, obs, act)
            print(f"{criterion:<9} {sparsity:.2f}  " + "  ".join(f"{k} {v:6.3f}" for k, v in d.items()), flush=True)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a dense SAC directory of sensitivity.py (model.zip, replay_buffer.pkl)")
    ap.add_argument("--env", default="HalfCheetah-v5")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample draw and of the env the model loads with")
    ap.add_argument("--criteria", type=lambda s: s.split(","), default=CRITERIA)
    ap.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.75])
    ap.add_argument("--samples", type=int, default=5000, help="replay-buffer transitions to measure on")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (Path(args.checkpoint) / sb3_tasks.REPLAY_BUFFER).exists():
        raise SystemExit(f"{args.checkpoint}: no {sb3_tasks.REPLAY_BUFFER} beside model.zip; point --checkpoint at a dense "
                         "SAC directory written by scripts/sensitivity.py --algo sac")
    print(json.dumps(analyse(args)))


if __name__ == "__main__":
    main()
