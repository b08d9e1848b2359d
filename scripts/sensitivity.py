#!/usr/bin/env python
"""Sensitivity protocol: which criterion's channels can an already trained agent lose?

For each seed, one dense agent is trained with the pruner attached in observe-only mode
(`sparsity=0`, `observe=["all"]`: every criterion's statistics are gathered from the training
gradients, nothing is removed) and saved.  Then for each criterion and sparsity a copy is pruned
one-shot (physically) and evaluated with deterministic actions:

* `oneshot`      as is;
* `compensated`  as is, with each removed channel's mean activation (over 2000 on-policy
                 observations) folded into the next layer's bias (`compensate=True`);
* `finetune`     after a short fine-tune (`--finetune` of the training steps, default 5 %).
* `finetune_explore` (PPO, opt-in: name it in `--protocols`) the same with the action log-std reset to 0 first.
* `finetune_actor` (SAC, opt-in) the same fine-tune with only the actor pruned: the critics keep every unit.
* `finetune_warmup` (SAC, opt-in) the `finetune` cell with the actor frozen for the first `--warmup` of the
                 fine-tune (default 20 %): the pruned critics adapt before the actor follows their dQ/da.

One training run per seed serves every cell.  Rows go to `--csv` as they finish (the grid resumes
from it: rows already there are skipped, the dense checkpoints are reused from `--workdir`).

    python scripts/sensitivity.py --algo ppo --env HalfCheetah-v5 --seeds 0-9 --csv docs/sensitivity_ppo.csv
    python scripts/sensitivity.py --report docs/sensitivity_ppo.csv        # rliable table + plot
    # one row, from a clean checkout (trains the dense agent if --workdir has none), JSON last line:
    python scripts/sensitivity.py --algo ppo --env HalfCheetah-v5 --seeds 3 --criteria fisher --sparsities 0.9 --protocols finetune

TD-MPC2 (`--algo tdmpc2 --env <dm-control task>`, `scripts/tdmpc2_tasks.py`): the observed dense agent
is one `tdmpc-prune train` run (CPU preset; `--set key=value` adds overrides); each cell is pruned
one-shot and evaluated with planning (`oneshot`) and with the policy prior alone (`oneshot_prior`),
against the dense agent evaluated the same two ways (`dense`, `dense_prior`):

    python scripts/sensitivity.py --algo tdmpc2 --env cartpole-balance --steps 100000 --seeds 1-3 \
        --criteria bayes,fisher,magnitude,random --sparsities 0.5,0.75 --csv docs/sensitivity_tdmpc2.csv
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import results  # noqa: E402
import sb3_tasks  # noqa: E402
import tdmpc2_tasks  # noqa: E402

CRITERIA = ["grad", "fisher", "bayes", "combined", "taylor", "magnitude", "random"]
SPARSITIES = [0.5, 0.75, 0.9, 0.95]
PROTOCOLS = ["dense", "oneshot", "compensated", "finetune"]  # SB3; TD-MPC2: tdmpc2_tasks.PROTOCOLS
# opt-in (never in the default list): `finetune_explore` resets PPO's action log-std to 0 (std 1, as
# PPO starts training) before the fine-tune, to test whether a trained policy's shrunken exploration
# is what keeps a fine-tune near where pruning left it
# `finetune_actor` (SAC) prunes the actor alone before the fine-tune, to test whether fine-tuning
# against pruned critics is what undoes a good one-shot actor (the one-shot rows never use a critic)
# `finetune_warmup` (SAC) freezes the actor for the first `--warmup` of the fine-tune, to test whether
# the actor is pulled off in the first updates by pruned critics that have not re-fit yet
OPT_IN = {"ppo": ["finetune_explore"], "sac": ["finetune_actor", "finetune_warmup"]}
# every update observed (every_n_updates=1), as when the committed results were measured
OBSERVER = dict(criterion="bayes", sparsity=0.0, observe=["all"], l1=0.0, heatmap=False, log_freq=10**9, every_n_updates=1)


def parse_seeds(text: str) -> List[int]:
    out: List[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    return out


def protocols_of(algo: str) -> List[str]:
    """The default protocols of `algo`."""
    return tdmpc2_tasks.PROTOCOLS if algo == "tdmpc2" else PROTOCOLS


def known_protocols(algo: str) -> List[str]:
    """The default protocols of `algo` and its opt-in ones."""
    return protocols_of(algo) + OPT_IN.get(algo, [])


def dense_protocol(protocol: str) -> str:
    """The dense reference of a protocol: `dense_prior` for the policy-prior evaluations, else `dense`."""
    return "dense_prior" if protocol.endswith("_prior") else "dense"


def dense_dir(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.workdir) / f"{args.algo}{'-zoo' if args.zoo else ''}-{args.env}-s{seed}-{args.steps}" / "dense"


def actor_warmup(steps: int) -> Any:
    """An SB3 callback that keeps SAC's actor frozen for the first `steps` environment steps of a `learn`."""
    from stable_baselines3.common.callbacks import BaseCallback

    class ActorWarmup(BaseCallback):
        def _on_training_start(self) -> None:
            self.start = self.num_timesteps
            self._freeze(steps > 0)

        def _freeze(self, frozen: bool) -> None:
            self.frozen = frozen
            for p in self.model.actor.parameters():
                p.requires_grad_(not frozen)  # no gradient, so Adam leaves the actor as it is

        def _on_step(self) -> bool:
            if self.frozen and self.num_timesteps - self.start > steps:
                self._freeze(False)  # SAC's next gradient step is the actor's first
            return True

        def _on_training_end(self) -> None:
            self._freeze(False)

    return ActorWarmup()


def train_dense(args: argparse.Namespace, seed: int, say) -> float:
    """Train (or reuse) the observed dense agent of `seed`; returns the training seconds (0 if reused)."""
    import torch as th

    from tdmpc_prune.sb3 import wrap

    path = dense_dir(args, seed)
    if (path / "model.zip").exists():
        return 0.0
    th.manual_seed(seed)
    model, venv = sb3_tasks.make_model(args.algo, args.env, seed, zoo=args.zoo)
    model = wrap(model, **OBSERVER)
    say(f"seed {seed}: training the observed dense agent, {args.steps} steps")
    t0 = time.time()
    model.learn(args.steps)
    seconds = time.time() - t0
    sb3_tasks.save(model, venv, path)
    (path / "train_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def run_cell(args: argparse.Namespace, seed: int, criterion: str, sparsity: float, protocol: str, say) -> Dict[str, Any]:
    import torch

    from tdmpc_prune.sb3 import get_pruner

    path = dense_dir(args, seed)
    t0 = time.time()
    finetune = protocol.startswith("finetune")
    model, venv = sb3_tasks.load(args.algo, args.env, seed, path, training=finetune)
    info: Dict[str, Any] = {}
    if protocol != "dense":
        pruner = get_pruner(model)  # the observer, with every criterion's statistics of the whole run
        pruner.use_criterion(criterion)
        if protocol == "compensated":
            pruner.use_compensation()
            sb3_tasks.calibrate(model, sb3_tasks.observations(model, args.env, seed, venv, args.calibration))
        if protocol == "finetune_actor":
            pruner.config.budgets = {c: 0.0 for g in pruner.groups for c in g.components if c != "actor"}
        report = pruner.prune_to(sparsity=sparsity)
        info = {"params_ratio": report["params_ratio"], "flops_ratio": report.get("flops_ratio")}
        if finetune:
            if protocol == "finetune_explore":
                with torch.no_grad():
                    model.policy.log_std.zero_()
            steps = int(round(args.finetune * args.steps))
            warmup = actor_warmup(int(round(args.warmup * steps))) if protocol == "finetune_warmup" else None
            model.learn(steps, reset_num_timesteps=False, callback=warmup)
            info["finetune_steps"] = steps
    ret = sb3_tasks.evaluate(model, args.env, seed, venv, args.episodes)
    seconds = time.time() - t0
    if protocol == "dense":
        trained = path / "train_seconds.txt"
        seconds += float(trained.read_text()) if trained.exists() else 0.0
    say(f"seed {seed} {protocol:<11} {criterion:<9} {sparsity:.2f}: return {ret:9.1f}  ({seconds:.0f} s)")
    return {"eval_return": ret, "seconds": seconds, **info}


def row_command(args: argparse.Namespace, seed: int, criterion: str, sparsity: float, protocol: str) -> str:
    cell = f"--criteria {criterion} --sparsities {sparsity:g}" if protocol != "dense" else ""
    return (
        f"python scripts/sensitivity.py --algo {args.algo} --env {args.env} --steps {args.steps} --seeds {seed} "
        f"--protocols {protocol} {cell} --episodes {args.episodes} --finetune {args.finetune:g}{' --zoo' if args.zoo else ''}"
        + (f" --warmup {args.warmup:g}" if protocol == "finetune_warmup" else "")
        + "".join(f" --set {shlex.quote(t)}" for t in args.set)
    ).replace("  ", " ")


def settings(row: Mapping[str, object]) -> List[str]:
    """The flags that change a `row`'s result but not its CSV key."""
    protocol = str(row["protocol"])
    return (["--steps", "--episodes", "--set"] + (["--finetune"] if protocol.startswith("finetune") else [])
            + (["--warmup"] if protocol == "finetune_warmup" else []))


def planned_rows(args: argparse.Namespace) -> Iterator[Tuple[int, str, str, float, Dict[str, Any]]]:
    """Every cell of the grid, seed-major: a grid cut short leaves whole seeds, and each dense agent is needed once."""
    for seed in args.seeds:
        for protocol in args.protocols:
            cells = [("dense", 0.0)] if protocol.startswith("dense") else [(c, s) for s in args.sparsities for c in args.criteria]
            for criterion, sparsity in cells:
                row = dict(algo=args.algo + ("-zoo" if args.zoo else ""), env=args.env, criterion=criterion, sparsity=sparsity, seed=seed, l1=0.0, protocol=protocol)
                yield seed, protocol, criterion, sparsity, row


def grid(args: argparse.Namespace) -> None:
    say = sb3_tasks.progress_printer("sensitivity")
    csv_path = Path(args.csv) if args.csv else None
    if csv_path:
        planned = ((row, row_command(args, seed, c, s, p)) for seed, p, c, s, row in planned_rows(args))
        results.refuse_other_settings(csv_path, planned, settings)
    done = results.done(csv_path) if csv_path else set()
    commit = results.commit_of(ROOT)
    last: Optional[Dict[str, Any]] = None
    for seed, protocol, criterion, sparsity, row in planned_rows(args):
        if results.key(row) in done:
            continue
        if args.algo == "tdmpc2":
            where = (args.env, args.steps, seed, args.workdir, args.set)
            tdmpc2_tasks.train_dense(*where, say)
            out = tdmpc2_tasks.run_cell(*where, criterion, sparsity, protocol, args.episodes, say)
        else:
            train_dense(args, seed, say)
            out = run_cell(args, seed, criterion, sparsity, protocol, say)
        last = results.record(csv_path, row, out, commit, row_command(args, seed, criterion, sparsity, protocol))
    results.print_last(last)


# ------------------------------------------------------------------------------------ report
def report(paths: List[str], out_dir: Path) -> None:
    """Markdown tables (IQM of the return as a share of each seed's dense return, 95 % CIs) and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []
    summary: Dict[str, Any] = {}
    for algo, env, mine in results.by_task(paths):
        dense_of = {p: {int(r["seed"]): float(r["eval_return"]) for r in mine if r["protocol"] == p} for p in ("dense", "dense_prior")}
        if not dense_of["dense"]:
            continue
        lines += [f"### {algo.upper()} {env}: {len(dense_of['dense'])} dense seeds", ""]
        for protocol in [p for p in known_protocols(algo) if not p.startswith("dense") and any(r["protocol"] == p for r in mine)]:
            dense = dense_of[dense_protocol(protocol)]
            title = (f"**{protocol}**: IQM over seeds of the dense-normalised return (R - R_random) / (R_dense - R_random), "
                     "same seed; 95 % stratified-bootstrap CI")
            sub = [r for r in mine if r["protocol"] == protocol]
            part, summary[f"{algo}/{env}/{protocol}"] = results.section(
                sub, dense, lambda r: r["criterion"], CRITERIA, title, out_dir / f"sensitivity_{algo}_{env}_{protocol}.png"
            )
            lines += part
        for protocol in [p for p in known_protocols(algo) if p.startswith("finetune") and any(r["protocol"] == p for r in mine)]:
            part, summary[f"{algo}/{env}/{protocol}_diagnostics"] = finetune_diagnostics(mine, dense_of["dense"], protocol)
            lines += part
    results.write_report(lines, summary, out_dir / "sensitivity.md")


def finetune_diagnostics(rows: List[Dict[str, str]], dense: Dict[int, float], protocol: str = "finetune") -> Tuple[List[str], Dict[str, Any]]:
    """What decides a fine-tuned (`protocol`) cell: its one-shot start (Spearman over paired cells) or the seed vs the criterion."""
    from scipy.stats import spearmanr

    floor = results.RANDOM_RETURN.get(str(rows[0]["env"]), 0.0)
    norm = {p: {(r["criterion"], float(r["sparsity"]), int(r["seed"])): results.normalise(float(r["eval_return"]), dense[int(r["seed"])], floor)
                for r in rows if r["protocol"] == p and int(r["seed"]) in dense} for p in ("oneshot", protocol)}
    norm["finetune"] = norm.pop(protocol)
    lines = [f"**{protocol} diagnostics** (dense-normalised returns of paired cells; variances of the per-seed and the per-criterion means)", "",
             f"| sparsity | cells | Spearman(oneshot, {protocol}) | var of seed means | var of criterion means |", "|---|---|---|---|---|"]
    out: Dict[str, Any] = {}
    for s in sorted({k[1] for k in norm["finetune"]}):
        keys = sorted(k for k in norm["finetune"] if k[1] == s and k in norm["oneshot"])
        ft = np.array([norm["finetune"][k] for k in keys])
        rho = float(spearmanr([norm["oneshot"][k] for k in keys], ft)[0]) if len(keys) > 2 else float("nan")
        var = {}
        for axis, idx in (("seed", 2), ("criterion", 0)):
            groups = {k[idx] for k in keys}
            var[axis] = float(np.var([ft[[k[idx] == g for k in keys]].mean() for g in groups], ddof=1)) if len(groups) > 1 else float("nan")
        out[f"{s:g}"] = dict(cells=len(keys), spearman=rho, var_seed_means=var["seed"], var_criterion_means=var["criterion"])
        lines.append(f"| {s:.0%} | {len(keys)} | {rho:.2f} | {var['seed']:.3f} | {var['criterion']:.3f} |")
    pairs = [(c, seed) for (c, s, seed) in norm["finetune"] if s == 0.5 and (c, 0.75, seed) in norm["finetune"]]
    below = sum(norm["finetune"][(c, 0.5, seed)] < norm["finetune"][(c, 0.75, seed)] for c, seed in pairs)
    out["finetune_50_below_75"] = [below, len(pairs)]
    lines += ["", f"Fine-tuned 50 % below fine-tuned 75 % in {below} of {len(pairs)} (criterion, seed) pairs.", ""]
    return lines, out


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", choices=["ppo", "sac", "tdmpc2"], default="ppo")
    ap.add_argument("--env", default="HalfCheetah-v5", help="a Gymnasium MuJoCo env (ppo, sac) or a dm-control task (tdmpc2)")
    ap.add_argument("--steps", type=int, default=None, help="training steps of the dense agent (default: PPO 1M, SAC 100k)")
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-9"))
    ap.add_argument("--criteria", type=lambda s: s.split(","), default=CRITERIA)
    ap.add_argument("--sparsities", type=lambda s: [float(x) for x in s.split(",")], default=SPARSITIES)
    ap.add_argument("--protocols", type=lambda s: s.split(","), default=None, help="default: every protocol of --algo")
    ap.add_argument("--set", action="append", default=[], help="tdmpc2: one more `tdmpc-prune train` override of the dense run")
    ap.add_argument("--zoo", action="store_true", help="PPO with rl-zoo3's tuned settings instead of SB3's defaults")
    ap.add_argument("--episodes", type=int, default=10, help="deterministic evaluation episodes per row")
    ap.add_argument("--finetune", type=float, default=0.05, help="fine-tune length as a fraction of --steps")
    ap.add_argument("--warmup", type=float, default=0.2, help="finetune_warmup: the share of the fine-tune with the actor frozen (rows are keyed without it: a CSV holding another value refuses the run)")
    ap.add_argument("--calibration", type=int, default=2000, help="on-policy observations for the compensated means")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "tdmpc_prune_sensitivity"), help="dense checkpoints")
    ap.add_argument("--csv", default=None, help="append rows here (resumes: rows already present are skipped; a row held under other settings is refused)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", nargs="*", default=None, help="CSV files to aggregate (no training)")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where --report writes sensitivity.md and the plots")
    args = ap.parse_args(argv)
    if args.report is not None:
        report(args.report, Path(args.out))
        return
    args.protocols = args.protocols or protocols_of(args.algo)
    for p in args.protocols:
        if p not in known_protocols(args.algo):
            raise SystemExit(f"unknown protocol {p!r} for {args.algo}; choose from {', '.join(known_protocols(args.algo))}")
    for c in args.criteria:
        if c not in CRITERIA:
            raise SystemExit(f"unknown criterion {c!r}; choose from {', '.join(CRITERIA)}")
    args.steps = args.steps or (tdmpc2_tasks.DEFAULT_STEPS if args.algo == "tdmpc2" else sb3_tasks.default_steps(args.algo))
    import torch

    torch.set_num_threads(args.threads)
    grid(args)


if __name__ == "__main__":
    main()
