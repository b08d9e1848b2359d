"""`PruningCallback`: prune an SB3 model while it trains, and log the `prune/*` view through SB3's logger."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import (
    CSVOutputFormat, HParam, HumanOutputFormat, Image, JSONOutputFormat, KVWriter, Logger, TensorBoardOutputFormat,
)
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import safe_mean

from ..config import PruneConfig
from ..driver import PruneDriver
from ..errors import PruneConfigError
from ..pruner import Pruner
from ..validation import check_number, check_type
from ..tensorboard import prune_hparams
from .components import optimizers, wiring
from .saving import bind

CALLBACK_OPTIONS = ("total_timesteps", "log_freq", "heatmap", "verbose")
TENSORBOARD_ONLY = ("stdout", "log", "json", "csv")
_TEXT_FORMATS = (HumanOutputFormat, JSONOutputFormat, CSVOutputFormat)
_ON_STDOUT = ("prune/sparsity", "prune/params", "prune/params_ratio", "prune/flops_ratio", "prune/events")


class LoggerSink:
    """A `tdmpc_prune.tensorboard.Sink` over SB3's logger (values are written at its next dump)."""

    def __init__(self, logger: Logger):
        self.logger = logger

    @property
    def shows_media(self) -> bool:
        """Whether an output format other than the text ones (stdout, log, json, csv) takes histograms and images."""
        return any(not isinstance(f, (*_TEXT_FORMATS, DumpWatch)) for f in self.logger.output_formats)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.logger.record(tag, float(value), exclude=None if tag in _ON_STDOUT else ("stdout", "log"))

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self.logger.record(tag, th.as_tensor(np.asarray(values, dtype=np.float32)), exclude=TENSORBOARD_ONLY)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self.logger.record(tag, Image(image_hwc, "HWC"), exclude=TENSORBOARD_ONLY)

    def text(self, tag: str, text: str, step: int) -> None:
        self.logger.record(tag, text, exclude=TENSORBOARD_ONLY)


def first_update(model: Any) -> int:
    """The timestep at which the first gradient update happens: fractions of the run count from there.

    Off-policy algorithms train only after `learning_starts`; on-policy ones after their first rollout.
    """
    if isinstance(model, OnPolicyAlgorithm):
        return int(model.n_steps * model.n_envs)
    return int(getattr(model, "learning_starts", 0))


class DumpWatch(KVWriter):
    """An output format that writes nothing: it remembers the step and tags of the logger's last dump."""

    def __init__(self) -> None:
        self.step: Optional[int] = None
        self.tags: set = set()

    def write(self, key_values: Dict[str, Any], key_excluded: Dict[str, Any], step: int = 0) -> None:
        if step != self.step:
            self.step, self.tags = step, set()
        self.tags |= set(key_values)

    def close(self) -> None:
        return None


class PruningCallback(BaseCallback):
    """Prunes the model's policy during `learn()`, between rollouts, on the core schedule.

    Options (same names as the TD-MPC2 `prune.*` options, see `PruneConfig`): criterion, sparsity,
    schedule, start, end, iterations, budgets, coupling, coupling_sparsity, scope, l1, l1_period,
    physical, ema, prior_strength, exclude, seed.  `start`/`end` as floats are fractions of the run.

    Args:
        total_timesteps: run length that fractional start/end/l1_period refer to (default: the
            `total_timesteps` of the first `learn()`, kept by later calls and by saved models).
        log_freq: write the `prune/*` view every `log_freq` timesteps (and at every pruning event).
        heatmap: also log the importance heatmap image at pruning events and at the end.
        verbose: 1 (default) prints the start line, a line per pruning event and the closing
            summary of each `learn()` (`[tdmpc-prune] ...`); 0 prints nothing.

    The core `PruneDriver` does the clock, the console lines, the `prune/*` tags and the summary;
    this callback says when (SB3 events) and writes through SB3's logger.
    """

    def __init__(
        self,
        total_timesteps: Optional[int] = None,
        log_freq: int = 1000,
        heatmap: bool = True,
        verbose: int = 1,
        **options: Any,
    ):
        super().__init__(verbose)
        try:
            PruneConfig.from_dict(options)  # a bad option fails here, naming it
        except PruneConfigError as e:
            if set(options) - set(PruneConfig().to_dict()):
                raise PruneConfigError(f"{e}; PruningCallback itself also takes {', '.join(CALLBACK_OPTIONS)}") from None
            raise
        if total_timesteps is not None:
            check_number(PruneConfigError, "total_timesteps", total_timesteps, low=1, integer=True,
                         what="the run length; none: that of the first learn()", example=100_000)
        check_number(PruneConfigError, "log_freq", log_freq, low=1, integer=True, what="timesteps between prune/* logs", example=1000)
        check_type(PruneConfigError, "heatmap", heatmap, bool, "True")
        check_number(PruneConfigError, "verbose", verbose, low=0, integer=True, example=1)
        self.options = dict(options)
        self.total_timesteps = total_timesteps
        self.log_freq = log_freq
        self.heatmap = heatmap
        self.pruner: Optional[Pruner] = None
        self.driver: Optional[PruneDriver] = None
        self._ended_at: Optional[int] = None
        self._dumps: Optional[DumpWatch] = None

    # ------------------------------------------------------------------------------ SB3 events
    def _init_callback(self) -> None:
        self.pruner = bind(self.model, self.options)
        if self.driver is None or self.driver.pruner is not self.pruner:
            self.driver = PruneDriver(self.pruner, wiring(self.model), log_every=self.log_freq, heatmap=self.heatmap,
                                      verbose=self.verbose)

    def _on_training_start(self) -> None:
        pruner = self.pruner
        now = self.model.num_timesteps
        if now < pruner.clock:
            warnings.warn(
                f"the timestep counter went back from {pruner.clock} to {now} (learn() with reset_num_timesteps=True): "
                "pruning events already fired stay done; pass reset_num_timesteps=False to continue a run",
                stacklevel=2,
            )
        total = self.total_timesteps or pruner.total_steps or int(self.locals["total_timesteps"])
        pruner.attach(optimizers(self.model), total_steps=total, first_step=first_update(self.model))
        self.logger.record(
            "hparams", HParam(prune_hparams(pruner), {"prune/sparsity": 0.0, "rollout/ep_rew_mean": 0.0}), exclude=TENSORBOARD_ONLY
        )
        watches = [f for f in self.logger.output_formats if isinstance(f, DumpWatch)]
        if not watches:  # SB3 configures a logger per learn()
            watches = [DumpWatch()]
            self.logger.output_formats.append(watches[0])
        self._dumps = watches[0]
        self.driver.sink = LoggerSink(self.logger)
        fresh = self._ended_at != now  # a learn() continuing at the step the last one ended on logged it already
        self.driver.start(now, log=fresh)
        if fresh:
            self.logger.dump(now)  # the state before this learn() (dense on a fresh run) gets its own point

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.driver.step(self.model.num_timesteps)

    def _on_training_end(self) -> None:
        step = self.model.num_timesteps
        episodes = [ep["r"] for ep in self.model.ep_info_buffer or []]
        tensorboard = any(isinstance(f, TensorBoardOutputFormat) for f in self.logger.output_formats)
        self.driver.finish(
            step, eval_return=safe_mean(episodes) if episodes else None,
            eval_what=f"mean return of the last {len(episodes)} training episodes",
            logdir=self.logger.get_dir() if tensorboard else None,
            tensorboard_logdir=self.model.tensorboard_log if tensorboard else None,
        )
        # SB3 may have dumped this very step already: the final dump writes only the tags it has not
        # written at this step; the others stay pending for the next dump, as SB3 leaves them
        held = {}
        if self._dumps is not None and self._dumps.step == step:
            for key in [k for k in self.logger.name_to_value if k in self._dumps.tags]:
                held[key] = (self.logger.name_to_value.pop(key), self.logger.name_to_excluded.pop(key, None),
                             self.logger.name_to_count.pop(key, None))
        self.logger.dump(step)
        for key, (value, excluded, count) in held.items():
            self.logger.name_to_value[key] = value
            if excluded is not None:
                self.logger.name_to_excluded[key] = excluded
            if count is not None:
                self.logger.name_to_count[key] = count
        self._ended_at = step
        self.pruner.detach()
