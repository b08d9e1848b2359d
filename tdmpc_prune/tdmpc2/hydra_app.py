"""`tdmpc-prune train` as a hydra application: hydra parses, composes, sweeps (`-m`) and launches.

The command line keeps its short forms and hydra's own:

    tdmpc-prune train task=cartpole-balance model_size=cpu steps=1e5 --prune prune.sparsity=0.75
    tdmpc-prune train -m seed=1,2,3 --prune prune.criterion=bayes,fisher        # basic launcher, one by one
    tdmpc-prune train -m hydra/launcher=joblib hydra.launcher.n_jobs=2 seed=1,2  # parallel on this machine
    tdmpc-prune train -m hydra/launcher=slurm ...  /  hydra/launcher=ray_cluster ...  (conf/hydra/launcher)

`--prune` stands for `prune=default` (the `prune` config group, PruneConfig's defaults) and a budget
`prune.budgets.<component>=x` for hydra's `+prune.budgets.<component>=x`.  Every key and value is checked
before hydra starts (one `ConfigError` line); each run of a sweep is one job that builds its configs with
`overrides.coerce` and trains in its own run directory, named after its overrides (`rundir`).  Keys that
vary across a sweep always enter the run name, even run-control ones such as `steps`, so no two runs of
a sweep share a directory; all of them sit under one `logdir`, one TensorBoard tree.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..overrides import coerce, parse, value_of
from .config import ConfigError, TDMPC2Config, agent_value

if TYPE_CHECKING:
    from .trainer import Trainer

CONFIG_NAME = "train"
OPTIONS_NODE = "tdmpc2_options"
SWEPT = "TDMPC_PRUNE_SWEPT"  # hydra.job.env_set entry: the keys a sweep varies (they always name the run)


def register_configs() -> None:
    """Store the agent's options and the `prune/default` option in hydra's ConfigStore (from the dataclasses)."""
    from hydra.core.config_store import ConfigStore

    from ..config import PruneConfig

    store = ConfigStore.instance()
    store.store(name=OPTIONS_NODE, node=TDMPC2Config().to_dict())
    store.store(group="prune", name="default", node=PruneConfig().to_dict())


register_configs()  # at import: also in the worker processes of joblib, submitit and ray


class Job:
    """The hydra task function: one run of `tdmpc-prune train` from a composed config (picklable)."""

    def __init__(self, train_run: Callable[..., "Trainer"], callbacks: Sequence[Any] = ()):
        self.train_run = train_run  # `train.run` (module-level, so the job pickles by reference)
        self.callbacks = list(callbacks)
        self.trainers: List["Trainer"] = []  # the runs this process trained (run mode, basic launcher)
        self.error: Optional[BaseException] = None  # a single run's refusal, re-raised by `launch`

    def __call__(self, node: Any) -> Optional[str]:
        """Train one run; a single run's error is kept for `launch` (a sweep's is hydra's: it names the job)."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        try:
            return self.run(node)
        except BaseException as e:
            if HydraConfig.get().mode != RunMode.RUN:
                raise
            self.error = e
            return None

    def run(self, node: Any) -> str:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        from ..config import PruneConfig

        hydra = HydraConfig.get()
        overrides = parse(list(hydra.overrides.task), ConfigError)
        given = [o.key_or_group for o in overrides if _is_agent_key(o.key_or_group)]
        swept = [k for k in str(hydra.job.env_set.get(SWEPT, "")).split(",") if k]
        values = OmegaConf.to_container(node, resolve=True)
        prune_values = values.pop("prune", None)
        defaults = TDMPC2Config().to_dict()
        explicit = list(dict.fromkeys(given + [k for k, v in values.items() if v != defaults.get(k)]))
        cfg_values = {k: agent_value(k, values[k]) for k in explicit}
        from .config import make_config

        cfg = make_config(**cfg_values)
        prune = None if prune_values is None else PruneConfig.from_values(prune_values)
        explicit_prune = any(o.key_or_group.startswith("prune.") for o in overrides)
        trainer = self.train_run(cfg, given, prune, explicit_prune, self.callbacks, swept)
        self.trainers.append(trainer)
        return trainer.directory


def _is_agent_key(key: str) -> bool:
    return not (key == "prune" or key.startswith(("prune.", "hydra.", "hydra/")) or key == "hydra")


def hydra_arguments(tokens: Sequence[str]) -> Tuple[List[str], bool]:
    """`tokens` as hydra's command line (short forms expanded, every key and value checked), and multirun."""
    from hydra._internal.utils import get_args_parser

    from ..config import PruneConfig

    rest = [t for t in tokens if t != "--prune"]
    args, unknown = get_args_parser().parse_known_intermixed_args(rest)  # flags anywhere
    if unknown:
        raise ConfigError(
            f"unknown flag {unknown[0]!r}: tdmpc-prune train takes key=value overrides, --prune [prune.key=value ...] "
            "and hydra's flags (-m/--multirun, --cfg job, -cd DIR, --info); see tdmpc-prune train --help"
        )
    flags = [t for t in rest if t not in args.overrides]
    overrides = parse(args.overrides, ConfigError)
    pruning = "--prune" in tokens or any(o.key_or_group == "prune" and o.value() not in (None, "null") for o in overrides)
    out: List[str] = []
    swept: List[str] = []
    for token, override in zip(args.overrides, overrides):
        key = override.key_or_group
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [value_of(override)]
        if override.is_sweep_override():
            if not args.multirun:
                raise ConfigError(f"{token!r} is a sweep: add -m (tdmpc-prune train -m {token} ...) to run each value")
            swept.append(key)
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            out.append(token)
            continue
        if key == "prune":
            out.append(token)
            continue
        if key.startswith("prune."):
            if not pruning:
                raise ConfigError(f"{token!r} is a pruning option: add --prune to prune during training")
            option = key[len("prune."):]
            for value in values:
                budget = option.startswith("budgets.")
                PruneConfig.from_values({"budgets": {option[len("budgets."):]: value}} if budget else {option: value})
            if option.startswith("budgets.") and not token.startswith("+"):
                token = "+" + token  # budgets is an empty mapping: hydra adds its entries with `+`
            out.append(token)
            continue
        for value in values:
            agent_value(key, value)
        out.append(token)
    if pruning and not any(t.split("=", 1)[0].lstrip("+") == "prune" for t in out):
        out.insert(0, "prune=default")
    if swept:
        out.append(f"++hydra.job.env_set.{SWEPT}='{','.join(swept)}'")
    return flags + out, bool(args.multirun)


def _logging_state() -> Dict[str, Tuple[List[logging.Handler], int, bool, bool]]:
    loggers = {"": logging.getLogger()}
    loggers.update((n, lg) for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger))
    return {n: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for n, lg in loggers.items()}


def _restore_logging(saved: Dict[str, Tuple[List[logging.Handler], int, bool, bool]]) -> None:
    for name, lg in [("", logging.getLogger())] + list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        handlers, level, propagate, disabled = saved.get(name, ([], logging.NOTSET, True, False))
        for h in lg.handlers:
            if h not in handlers:
                with contextlib.suppress(Exception):
                    h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


@contextlib.contextmanager
def _hydra_process_state(argv: List[str]) -> Iterator[None]:
    """hydra.main reads sys.argv; HYDRA_FULL_ERROR makes it raise (we turn its errors into one line).

    hydra also configures the process's logging for its job (handlers bound to the sys.stdout/stderr of
    the moment); the caller's logging is restored afterwards, so an in-process run leaves it as it was.
    """
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    saved_logging = _logging_state()
    console = logging.StreamHandler(sys.stdout)  # hydra's own messages (launching, sweep directory)
    console.setFormatter(logging.Formatter("[%(asctime)s][HYDRA] %(message)s"))
    for name in ("hydra", "hydra_plugins"):
        lg = logging.getLogger(name)
        lg.addHandler(console)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    sys.argv = argv
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        _restore_logging(saved_logging)
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def launch(tokens: Sequence[str], train_run: Callable[..., "Trainer"], callbacks: Sequence[Any] = ()) -> Optional["Trainer"]:
    """Run `tdmpc-prune train <tokens>` through hydra, each run by `train_run` (`train.run`); the trainer
    of a single run, None after a sweep."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv, multirun = hydra_arguments(tokens)
    if multirun and callbacks:
        raise ConfigError("callbacks are objects of this process: pass them to single runs, not to a -m sweep")
    job = Job(train_run, callbacks)
    app = hydra.main(version_base=None, config_path="conf", config_name=CONFIG_NAME)(job)
    with _hydra_process_state(["tdmpc-prune train", *argv]):
        try:
            app()
        except (HydraException, OmegaConfBaseException) as e:
            first = " ".join(str(e).split())
            raise ConfigError(f"hydra: {first}") from None
    if job.error is not None:
        raise job.error
    return None if multirun or not job.trainers else job.trainers[-1]
