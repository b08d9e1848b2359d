"""`tdmpc-prune train key=value ...`: build env, agent, buffer and trainer from overrides and run.

On `resume=true` the run's checkpoint supplies the configuration (so a model whose widths changed
during training is rebuilt with its checkpointed widths); only run-control keys may be overridden.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..config import PruneConfig
from ..errors import ResumeError
from .config import ConfigError, TDMPC2Config
from .rundir import RunLock, claim, default_exp_name, missing_dirs, remove_if_unused
from .trainer import CHECKPOINT, Trainer, run_dir, seed_everything

# Keys that may differ between a checkpoint and the command that resumes it.
RESUMABLE_KEYS = ("steps", "eval_freq", "eval_episodes", "save_freq", "log_freq", "progress", "device", "compile",
                  "threads", "resume", "logdir")
# Keys that never enter a derived run name: run control, and what the run directory path already holds.
PATH_KEYS = ("task", "seed", "exp_name", "logdir")  # <logdir>/<task>/<exp_name>/seed-<seed>
UNNAMED_KEYS = RESUMABLE_KEYS + PATH_KEYS
CHECKPOINT_KEYS = ("version", "cfg", "agent", "buffer", "counters")


def build(cfg: TDMPC2Config, callbacks: Sequence[Any] = (), directory: Optional[str] = None,
          lock: Optional[RunLock] = None) -> Trainer:
    """Environments (train, eval), agent, buffer and trainer for a fresh run of `cfg` (seeds everything)."""
    from .agent import TDMPC2
    from .buffer import ReplayBuffer
    from .envs import make_env

    if cfg.multitask:
        raise ConfigError("multi-task training is not implemented by `tdmpc-prune train`; give one task (task=...)")
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    env = make_env(cfg.task, cfg.seed, cfg.episode_length, cfg.action_repeat)
    eval_env = make_env(cfg.task, cfg.seed + 10_000, cfg.episode_length, cfg.action_repeat)
    if cfg.obs_dim is None or cfg.action_dim is None:
        cfg = replace(cfg, obs_dim=env.obs_dim, action_dim=env.action_dim)
    elif (cfg.obs_dim, cfg.action_dim) != (env.obs_dim, env.action_dim):
        raise ConfigError(
            f"obs_dim/action_dim={cfg.obs_dim}/{cfg.action_dim} do not match task {cfg.task} "
            f"({env.obs_dim}/{env.action_dim}); leave them unset"
        )
    seed_everything(cfg.seed)
    agent = TDMPC2(cfg)
    agent_steps = -(-cfg.steps // cfg.action_repeat)
    episodes = -(-agent_steps // cfg.episode_length) + 1
    capacity = min(cfg.buffer_size, episodes * (cfg.episode_length + 1))
    storage = agent.device if agent.device.type == "cuda" and capacity * (env.obs_dim + env.action_dim) < 2**28 else None
    buffer = ReplayBuffer(capacity, env.obs_dim, env.action_dim, cfg.horizon, cfg.batch_size, agent.device, storage)
    return Trainer(cfg, agent, env, eval_env, buffer, callbacks, directory, lock=lock)


def resume_config(cfg: TDMPC2Config, given: Sequence[str], directory: str) -> Tuple[TDMPC2Config, Dict[str, Any]]:
    """Load `directory`'s checkpoint and merge the run-control overrides of `cfg` into its config."""
    state = load_checkpoint(os.path.join(directory, CHECKPOINT))
    pruned = state.get("callbacks", {}).get("prune")
    # a pruning run is rebuilt from its original (unpruned) config; the pruner then replays its history
    saved = dict(pruned["original_cfg"] if pruned is not None else state["cfg"])
    given = list(dict.fromkeys(given))
    changed = [k for k in given if k not in RESUMABLE_KEYS and getattr(cfg, k) != saved.get(k)]
    if changed:
        raise ResumeError(
            f"cannot change {', '.join(changed)} when resuming (the checkpoint has "
            + ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
            + f"); only {', '.join(RESUMABLE_KEYS)} may differ"
        )
    for k in given:
        if k in RESUMABLE_KEYS:
            saved[k] = getattr(cfg, k)
    return TDMPC2Config.from_dict(saved), state


def load_checkpoint(path: str) -> Dict[str, Any]:
    """The training state saved at `path`; a missing, empty, truncated or foreign file is a `ResumeError`."""
    if not os.path.exists(path):
        raise ResumeError(
            f"resume=true but there is no checkpoint at {path}; start the run without resume=true "
            "(or check task, exp_name, seed and logdir: a run started without exp_name= is named after its "
            "options, so repeat them, prune.* included)"
        )
    keep = "the file was left as it is: restore it from a copy, or start a new run with another exp_name="
    if os.path.getsize(path) == 0:
        raise ResumeError(f"the checkpoint {path} is empty (0 bytes); {keep}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, foreign pickle, ...: torch raises many kinds
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise ResumeError(
            f"the checkpoint {path} cannot be read ({type(e).__name__}: {detail}): it is truncated or not a "
            f"tdmpc-prune checkpoint; {keep}"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        what = f"a dict without {', '.join(missing)}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ResumeError(f"{path} is not a tdmpc-prune training checkpoint (it holds {what}); {keep}")
    return state


def usage() -> str:
    """`tdmpc-prune train --help`: every override key with its default, and the prune options."""
    from dataclasses import fields

    from ..config import PruneConfig

    def table(cls, prefix: str = "") -> List[str]:
        default = cls()
        return [f"  {prefix}{f.name}={getattr(default, f.name)!r}" for f in fields(cls)]

    return "\n".join(
        ["usage: tdmpc-prune train [-m] key=value ... [--prune prune.key=value ...]",
         "A hydra application: -m/--multirun sweeps (seed=1,2,3 prune.sparsity=0.5,0.75), each run in its own",
         "directory; hydra/launcher=joblib (this machine), slurm or ray_cluster launch the runs; --cfg job shows",
         "the composed config.",
         "Steps are environment steps (agent steps x action_repeat). Keys and defaults:"]
        + table(TDMPC2Config)
        + ["--prune options (fractional start/end/l1_period: fractions of the updates after the seed steps):"]
        + table(PruneConfig, "prune.")
    )


def train(tokens: Sequence[str], callbacks: Sequence[Any] = ()) -> Optional[Trainer]:
    """`tdmpc-prune train <tokens>`: a hydra application (see `hydra_app`); returns the finished trainer.

    `--prune` adds a `PruneCallback` configured by the `prune.*` tokens (see `prune_callback.py`);
    `-m`/`--multirun` sweeps (then None is returned); `-h`/`--help` prints every key with its default.
    """
    if any(t in ("-h", "--help") for t in tokens):
        print(usage())
        return None
    from .hydra_app import launch

    return launch(tokens, run, callbacks)


def run_directory(tokens: Sequence[str]) -> str:
    """The directory a single run of `tdmpc-prune train <tokens>` trains in (`logdir/<task>/<name>/seed-<seed>`)."""
    from ..overrides import parse
    from .config import parse_overrides

    parsed = parse_overrides(tokens)
    given = [o.key_or_group for o in parse([t for t in tokens if t != "--prune" and t not in parsed.prune_overrides], ConfigError)]
    prune = PruneConfig.from_overrides(parsed.prune_overrides) if parsed.prune_flag else None
    cfg = parsed.cfg if "exp_name" in given else replace(parsed.cfg, exp_name=_derived_name(parsed.cfg, given, prune))
    return run_dir(cfg)


def run(cfg: TDMPC2Config, given: Sequence[str], prune: Optional[PruneConfig] = None, explicit_prune: bool = False,
        callbacks: Sequence[Any] = (), swept: Sequence[str] = ()) -> Trainer:
    """Build (or resume) the run of `cfg` and train it.

    `given`: the agent keys the command set (they name the run and may differ on resume); `prune`: prune
    while training; `swept`: keys a sweep varies (they always enter the run name).
    """
    callbacks = list(callbacks) + _prune_callbacks(prune, explicit_prune)
    if "exp_name" not in given:  # runs with different options never share a directory
        cfg = replace(cfg, exp_name=_derived_name(cfg, given, prune, swept))
    elif any(k not in PATH_KEYS for k in swept):  # a named sweep: the name plus the values this run takes
        cfg = replace(cfg, exp_name=_swept_name(cfg, prune, swept))
    directory = run_dir(cfg)
    if cfg.resume and not os.path.exists(os.path.join(directory, CHECKPOINT)):
        load_checkpoint(os.path.join(directory, CHECKPOINT))  # the clear "no checkpoint" error, nothing created
    created = missing_dirs(directory)
    lock = claim(directory, stale=(CHECKPOINT + ".tmp",))
    try:
        state = None
        if cfg.resume:
            cfg, state = resume_config(cfg, given, directory)
            pruning = "prune" in state.get("callbacks", {})
            if pruning and prune is None:
                raise ResumeError("this run was pruning during training: resume it with --prune (its prune options come from the checkpoint)")
            if prune is not None and not pruning:
                raise ResumeError(
                    f"the run in {directory} was trained dense (its checkpoint at step {state['counters']['step']:,} has no "
                    "pruner): --prune cannot join it midway, its past pruning events would all fire at once on one update "
                    "of statistics; resume it without --prune, or start a pruning run (without resume=true)"
                )
        elif os.path.exists(os.path.join(directory, CHECKPOINT)):
            raise ResumeError(
                f"{directory} already holds a run ({CHECKPOINT}); continue it with resume=true, or start a new run "
                "beside it with another exp_name= (or seed=, logdir=)"
            )
        trainer = build(cfg, callbacks, directory, lock=lock)
        if state is not None:
            trainer.load_state_dict(state)
        print(f"[tdmpc-prune] {cfg.task} seed {cfg.seed}: {trainer.agent.model.total_params:,} params on {trainer.agent.device}; "
              f"logging to {directory}" + (f" (resumed at step {trainer.step:,})" if state is not None else ""))
        trainer.train()
    except BaseException:
        lock.release()
        remove_if_unused(created)  # a run refused before it wrote anything leaves no directory behind
        raise
    finally:
        lock.release()
    return trainer


def _derived_name(cfg: TDMPC2Config, given: Sequence[str], prune: Optional[PruneConfig], swept: Sequence[str] = ()) -> str:
    """`default` / `pruned`, plus the options that differ from their defaults (see `rundir.default_exp_name`).

    A key a sweep varies enters the name even when it is a run-control key (`steps`), so that the runs of a
    sweep never share a directory; the task and the seed are in the path already.
    """
    from ..config import PruneConfig

    defaults = TDMPC2Config().to_dict()
    named = [k for k in given if k not in UNNAMED_KEYS or (k in swept and k not in PATH_KEYS)]
    options = {k: getattr(cfg, k) for k in named}
    if prune is None:
        return default_exp_name("default", options, defaults, first=swept)
    return default_exp_name("pruned", options, defaults, prune.to_dict(), PruneConfig().to_dict(), first=swept)


def _swept_name(cfg: TDMPC2Config, prune: Optional[PruneConfig], swept: Sequence[str]) -> str:
    """`exp_name` of a sweep's run: the given name plus every swept key's value (`sweep-steps=2000`)."""
    keys = [k for k in swept if k not in PATH_KEYS]
    options = {k: getattr(cfg, k) for k in keys if not k.startswith("prune.")}
    prune_options = prune.to_dict() if prune is not None else {}
    pruned = {k[len("prune."):]: prune_options.get(k[len("prune."):]) for k in keys if k.startswith("prune.")}
    return default_exp_name(cfg.exp_name, options, {}, pruned, {})


def _prune_callbacks(prune: Optional[PruneConfig], explicit: bool) -> List[Any]:
    """The PruneCallback of `--prune`; a dense run gets the CostCallback (the same cost tags, no pruning)."""
    from .prune_callback import CostCallback, PruneCallback

    if prune is None:
        return [CostCallback()]

    return [PruneCallback(prune, explicit=explicit)]
