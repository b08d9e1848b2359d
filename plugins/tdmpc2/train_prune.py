"""Train an official tdmpc2 agent with tdmpc_prune: the official `train.py` plus `--prune`.

Run it from inside an official checkout's `tdmpc2/` folder (where train.py and config.yaml are):

    cd tdmpc2/tdmpc2
    python /path/to/plugins/tdmpc2/train_prune.py task=dog-run steps=1000000 --prune prune.sparsity=0.5

Without `--prune` the command line goes to hydra untouched and the run is the official training:
the same environment variables, warning filter, torch backend settings,
`@hydra.main(config_name='config', config_path=<the checkout's tdmpc2/ folder>)` with no
`version_base` (as upstream: hydra's 1.1 defaults, so the job runs inside hydra's output folder),
the `cfg.steps` and CUDA asserts, `parse_cfg`, `set_seed`, `OfflineTrainer` for multi-task configs
and `OnlineTrainer` otherwise, `trainer.train()`.

With `--prune` the primary config is a small one held in hydra's ConfigStore, `tdmpc_prune_train`:
defaults `[config, prune: default, _self_]`, i.e. the official config.yaml and then the `prune`
group of conf/prune/ (on hydra's search path). It is not `+prune=default` on the official config:
that config's defaults list holds only `override hydra/launcher: submitit_local` and no `_self_`,
and hydra (1.3) then composes an appended group *without the config's own keys*. Another option of
the group is chosen with `prune=<name>`. The `prune` node is removed from the config before
`parse_cfg`, so the agent sees exactly the official config. `tdmpc_prune.tdmpc2.attach` registers
the world model's components and groups and wires `agent.optim` / `agent.pi_optim`; `UpdateHook`
wraps `agent.update`, the method both trainers call (`agent.update(buffer)`), and advances the
pruning schedule after each update. The clock is the online trainer's environment step (fractions
of the run count from the end of the seed steps, when updates begin) or, for the offline
(multi-task) trainer, the number of updates. `prune/*` goes to TensorBoard under `<work_dir>/tb`;
the pruner state is saved to `<work_dir>/prune_state.pt` when training ends or fails.

Importing this file needs neither the official code, nor torch, nor hydra: they load in main().
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, List, MutableMapping, Optional, Sequence, Tuple

PLUGIN_CONF = Path(__file__).resolve().parent / "conf"
PRUNE_FLAG = "--prune"
PRIMARY = "tdmpc_prune_train"  # the ConfigStore primary config of a --prune run
OFFICIAL_CONFIG = "config"  # the official config_name
# keys of the `prune` config group read by this launcher, not PruneConfig options
LAUNCHER_KEYS: Dict[str, Any] = {"log_every": 1000}
OFFICIAL_FILES = ("train.py", "config.yaml", "tdmpc2.py")


def official_environment(environ: MutableMapping[str, str] = os.environ) -> None:
    """The environment variables the official train.py sets before importing torch."""
    environ["MUJOCO_GL"] = environ.get("MUJOCO_GL", "egl")
    environ["LAZY_LEGACY_OP"] = "0"
    environ["TORCHDYNAMO_INLINE_INBUILT_NN_MODULES"] = "1"
    environ["TORCH_LOGS"] = "+recompiles"


def primary_config(base: str = OFFICIAL_CONFIG) -> Dict[str, Any]:
    """The primary config of a --prune run: the official config, then the `prune` group."""
    return {"defaults": [base, {"prune": "default"}, "_self_"]}


def _selects_group(arg: str) -> bool:
    return arg.startswith(("prune=", "+prune=", "++prune="))


def _overrides_prune(arg: str) -> bool:
    return arg.lstrip("+~").startswith("prune.")


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def _searchpath_entry(conf_dir: Path) -> str:
    path = str(conf_dir)
    if "'" in path:
        raise ValueError(f"the plugin's config folder {path!r} has a quote in its path; move the plugin")
    return f"'file://{path}'"


def _take_config_name(argv: List[str]) -> Tuple[str, List[str]]:
    """The official config the user named with --config-name/-cn (it becomes the wrapper's base)."""
    name, rest, i = OFFICIAL_CONFIG, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config-name", "-cn") and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if arg.startswith(("--config-name=", "-cn=")):
            name = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return name, rest


def split_argv(argv: Sequence[str], conf_dir: Path = PLUGIN_CONF) -> Tuple[bool, List[str], str]:
    """(prune?, the hydra command line, the official config's name) from this launcher's command line.

    Pruning is on with `--prune` (anywhere) or when the command line picks a `prune` option
    (`prune=<name>`; `+prune=<name>` is read the same way). It then adds the plugin's config folder
    to hydra's search path (into the user's `hydra.searchpath=[...]` when there is one), in front
    of the first override: hydra's argparse takes the overrides as one run of positional
    arguments, so none may land after a flag such as `--cfg job` that follows them. A
    `--config-name` is taken out: it names the official config the primary config composes.
    Without pruning the command line is returned unchanged (the official run).
    """
    argv = list(argv)
    prune = PRUNE_FLAG in argv or any(_selects_group(a) for a in argv)
    argv = [a for a in argv if a != PRUNE_FLAG]
    if not prune:
        stray = [a for a in argv if _overrides_prune(a)]
        if stray:
            raise ValueError(f"{' '.join(stray)}: prune options need {PRUNE_FLAG}")
        return False, argv, OFFICIAL_CONFIG
    base, argv = _take_config_name(argv)
    argv = ["prune=" + a.split("=", 1)[1] if _selects_group(a) else a for a in argv]
    entry, key = _searchpath_entry(conf_dir), "hydra.searchpath="
    added: List[str] = []
    user = [i for i, a in enumerate(argv) if a.startswith(key)]
    if user:
        value = argv[user[-1]][len(key):].strip()
        if not (value.startswith("[") and value.endswith("]")):
            raise ValueError(f"{argv[user[-1]]}: give hydra.searchpath as a list, [a,b]")
        body = value[1:-1].strip()
        argv[user[-1]] = f"{key}[{body + ',' if body else ''}{entry}]"
    else:
        added.append(f"{key}[{entry}]")
    at = next((i for i, a in enumerate(argv) if _is_override(a)), len(argv))
    return True, argv[:at] + added + argv[at:], base


def register_primary(base: str = OFFICIAL_CONFIG) -> str:
    """Put the --prune primary config into hydra's ConfigStore; returns its name."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=PRIMARY, node=primary_config(base))
    return PRIMARY


def pop_prune_options(cfg: Any) -> Optional[Dict[str, Any]]:
    """Remove the `prune` node from a composed hydra config and return it as a plain dict (None if absent).

    The official `parse_cfg` turns every top-level key into a field of the agent's config; removing
    `prune` first keeps that config exactly the official one.
    """
    from omegaconf import OmegaConf, open_dict

    if "prune" not in cfg:
        return None
    opts = OmegaConf.to_container(cfg.prune, resolve=True)
    with open_dict(cfg):
        del cfg["prune"]
    return opts


def split_options(opts: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """(PruneConfig, launcher options) from the `prune` node's values; unknown keys raise PruneConfigError."""
    from tdmpc_prune import PruneConfig

    opts = dict(opts)
    launcher = {k: opts.pop(k, default) for k, default in LAUNCHER_KEYS.items()}
    return PruneConfig.from_dict(opts), launcher


def _official_dir() -> Path:
    here = Path.cwd()
    missing = [f for f in OFFICIAL_FILES if not (here / f).exists()]
    if missing:
        sys.exit(f"train_prune.py: run it from inside the official checkout's tdmpc2/ folder "
                 f"(next to {', '.join(OFFICIAL_FILES)}); {here} has no {', '.join(missing)}")
    return here


NO_CUDA = ("train_prune.py: the official tdmpc2 trainer needs a CUDA GPU (it runs on cuda:0); on this machine "
           "train the bundled TD-MPC2 agent instead: tdmpc-prune train task=<task> --prune prune.<option>=<value>")
NO_CUDA_GRAPHS = ("[tdmpc-prune] compile=true: the update is compiled without CUDA graphs (mode='default', not "
                  "'reduce-overhead') while a pruner is attached: its optimizer hooks keep state across updates")


def compile_update_without_cuda_graphs(agent: Any) -> None:
    """Re-compile the official `agent._update` in torch.compile's default mode (no CUDA graphs).

    The official agent compiles `_update` with mode="reduce-overhead"; the pruner's step pre-hooks run
    inside it and keep tensors (statistics, EMA, group-lasso norms) across updates, which CUDA-graph
    replays may overwrite. The planner keeps the official mode: no pruner code runs in it.
    """
    import types

    import torch

    agent._update = torch.compile(types.MethodType(type(agent)._update, agent))
    print(NO_CUDA_GRAPHS)


def train_pruned(trainer: Any, cfg: Any, opts: Dict[str, Any], offline: bool) -> Any:
    """`trainer.train()` with a pruner attached to its agent; returns the pruner (its state saved in work_dir)."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from tdmpc_prune.tdmpc2 import attach
    from tdmpc_prune.tdmpc2.wiring import TDMPC2Adapter
    from tdmpc_prune.update_hook import UpdateHook

    config, launcher = split_options(opts)
    total = int(cfg.steps)
    # online: the clock is the env step and updates begin at seed_steps; offline: one update per iteration
    first = 0 if offline else int(cfg.seed_steps)
    pruner = attach(trainer.agent, total_steps=total, config=config, first_step=first)
    if getattr(cfg, "compile", False):
        compile_update_without_cuda_graphs(trainer.agent)
    print(pruner)
    work_dir = Path(cfg.work_dir)
    writer = SummaryWriter(str(work_dir / "tb"))
    hook: Any = None
    clock = (lambda: hook.updates) if offline else (lambda: trainer._step)
    hook = UpdateHook(trainer.agent, pruner, clock=clock, writer=writer, log_every=int(launcher["log_every"]),
                      adapter=TDMPC2Adapter(trainer.agent)).install()
    evals: list = []
    official_eval = getattr(trainer, "eval", None)

    def eval_and_keep() -> Any:  # the closing summary reports the last evaluation
        metrics = official_eval()
        evals.append(metrics)
        return metrics

    if official_eval is not None:
        trainer.eval = eval_and_keep
    try:
        trainer.train()
        last = float(evals[-1]["episode_reward"]) if evals and "episode_reward" in evals[-1] else None
        episodes = getattr(cfg, "eval_episodes", None)
        hook.finish(last, f"eval return (mean of {episodes} episodes)" if episodes else "eval return", logdir=str(work_dir / "tb"))
    finally:
        state = work_dir / "prune_state.pt"
        torch.save(pruner.state_dict(), str(state) + ".tmp")
        os.replace(str(state) + ".tmp", state)
        writer.close()
    return pruner


def main(argv: Optional[Sequence[str]] = None) -> None:
    try:
        prune, hydra_argv, base = split_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        sys.exit(f"train_prune.py: {e}")
    official = _official_dir()

    # the official train.py, in its order: environment, warnings, imports, torch backend settings
    official_environment()
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    sys.path.insert(0, str(official))  # where `python train.py` finds common/, envs/, trainer/
    import hydra
    from termcolor import colored

    from common.parser import parse_cfg
    from common.seed import set_seed
    from common.buffer import Buffer
    from envs import make_env
    from tdmpc2 import TDMPC2
    from trainer.offline_trainer import OfflineTrainer
    from trainer.online_trainer import OnlineTrainer
    from common.logger import Logger

    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")

    @hydra.main(config_name=register_primary(base) if prune else OFFICIAL_CONFIG, config_path=str(official))
    def train(cfg: Any) -> None:
        if not torch.cuda.is_available():
            sys.exit(NO_CUDA)
        assert torch.cuda.is_available()
        assert cfg.steps > 0, "Must train for at least 1 step."
        opts = pop_prune_options(cfg) if prune else None
        cfg = parse_cfg(cfg)
        set_seed(cfg.seed)
        print(colored("Work dir:", "yellow", attrs=["bold"]), cfg.work_dir)

        trainer_cls = OfflineTrainer if cfg.multitask else OnlineTrainer
        trainer = trainer_cls(
            cfg=cfg,
            env=make_env(cfg),
            agent=TDMPC2(cfg),
            buffer=Buffer(cfg),
            logger=Logger(cfg),
        )
        if opts is None:
            trainer.train()
        else:
            train_pruned(trainer, cfg, opts, offline=trainer_cls is OfflineTrainer)
        print("\nTraining completed successfully")

    sys.argv[1:] = hydra_argv  # hydra.main reads sys.argv
    train()


if __name__ == "__main__":
    main()
