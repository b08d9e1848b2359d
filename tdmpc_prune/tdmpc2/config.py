"""`TDMPC2Config`: every hyper-parameter of our TD-MPC2 agent and trainer, plus the `key=value` parser.

Defaults are the official TD-MPC2 ones (Hansen, Su, Wang, ICLR 2024).  Step counts that the user
sets (`steps`, `seed_steps`, `eval_freq`, `save_freq`) are *environment* steps, i.e. agent steps
times `action_repeat` -- the unit of the reference curves in `shared/reference/tdmpc2-results`.

Model size: `model_size` picks a preset (1, 5, 19, 48, 317 million parameters as in the paper, or
`cpu`, a ~0.5M agent that trains on one CPU core); explicitly given width keys override the preset.
Per-component hidden widths (`enc_dims`, `dynamics_dims`, `reward_dims`, `termination_dims`,
`pi_dims`, `q_dims`) default to the preset's `enc_dim`/`mlp_dim`; set them to rebuild a pruned model.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, fields
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

from ..errors import ConfigError
from ..overrides import coerce, parse, value_of
from ..validation import check_number, check_order, check_type

# Presets of the paper (official `MODEL_SIZE`) plus a small CPU preset.  Keys: str(model_size).
MODEL_SIZES: Dict[str, Dict[str, int]] = {
    "cpu": dict(enc_dim=128, mlp_dim=256, latent_dim=64, num_enc_layers=2, num_q=2),
    "1": dict(enc_dim=256, mlp_dim=384, latent_dim=128, num_enc_layers=2, num_q=2),
    "5": dict(enc_dim=256, mlp_dim=512, latent_dim=512, num_enc_layers=2, num_q=5),
    "19": dict(enc_dim=1024, mlp_dim=1024, latent_dim=768, num_enc_layers=3, num_q=5),
    "48": dict(enc_dim=1792, mlp_dim=1792, latent_dim=768, num_enc_layers=4, num_q=5),
    "317": dict(enc_dim=4096, mlp_dim=4096, latent_dim=1376, num_enc_layers=5, num_q=8),
}

# component -> the config key that records its hidden widths (pruning writes them back here)
WIDTH_KEYS: Dict[str, str] = {
    "encoder": "enc_dims",
    "dynamics": "dynamics_dims",
    "reward": "reward_dims",
    "termination": "termination_dims",
    "policy": "pi_dims",
    "Q": "q_dims",
}
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TDMPC2Config:
    """Hyper-parameters of the agent (official TD-MPC2 defaults) and of `tdmpc-prune train`."""

    # environment
    task: str = "cartpole-balance"
    obs: str = "state"
    episodic: bool = False  # learn a termination head (`_termination`) and use it in TD targets / planning
    action_repeat: int = 2
    episode_length: int = 500  # agent steps per episode (dm-control: 1000 physics steps / action repeat 2)
    # evaluation / run
    steps: int = 100_000  # environment steps to train for
    seed: int = 1
    eval_episodes: int = 10
    eval_freq: int = 10_000  # environment steps between evaluations (also one at step 0)
    save_freq: int = 10_000  # checkpoint at the first episode end after every save_freq env steps
    log_freq: int = 100  # updates between train/* loss scalars (averaged over the interval)
    logdir: str = "runs"
    exp_name: str = "default"  # run name; not given: "default"/"pruned" plus the options changed (see rundir.py)
    resume: bool = False
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False  # torch.compile the update and the planner
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    # training
    batch_size: int = 256
    reward_coef: float = 0.1
    value_coef: float = 0.1
    termination_coef: float = 1.0
    consistency_coef: float = 20.0
    rho: float = 0.5
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    tau: float = 0.01
    discount_denom: float = 5.0
    discount_min: float = 0.95
    discount_max: float = 0.995
    buffer_size: int = 1_000_000  # transitions (agent steps)
    seed_steps: Optional[int] = None  # env steps of random actions before planning; None = max(1000, 5 episodes) agent steps
    # planning
    mpc: bool = True
    iterations: int = 6
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    horizon: int = 3
    min_std: float = 0.05
    max_std: float = 2.0
    temperature: float = 0.5
    # actor
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    entropy_coef: float = 1e-4
    # critic
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    # architecture
    model_size: Union[int, str, None] = 5
    num_enc_layers: int = 2
    enc_dim: int = 256
    mlp_dim: int = 512
    latent_dim: int = 512
    task_dim: int = 0  # task-embedding width (multitask only; 96 when `tasks` has several entries and 0 is given)
    num_q: int = 5
    dropout: float = 0.01
    simnorm_dim: int = 8
    enc_dims: Optional[List[int]] = None
    dynamics_dims: Optional[List[int]] = None
    reward_dims: Optional[List[int]] = None
    termination_dims: Optional[List[int]] = None
    pi_dims: Optional[List[int]] = None
    q_dims: Optional[List[int]] = None
    # filled from the environment (stored so that a checkpoint can rebuild the model)
    obs_dim: Optional[int] = None
    action_dim: Optional[int] = None
    tasks: Optional[List[str]] = None  # multitask world model: task names (index = task id)
    action_dims: Optional[List[int]] = None  # multitask: true action dim of each task (for masks)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------ derived values
    @property
    def multitask(self) -> bool:
        return bool(self.tasks) and len(self.tasks) > 1

    @property
    def num_tasks(self) -> int:
        return len(self.tasks) if self.multitask else 1

    @property
    def discount(self) -> float:
        """Official heuristic: (L/denom - 1)/(L/denom) for episode length L, clipped to [min, max]."""
        frac = self.episode_length / self.discount_denom
        return min(max((frac - 1) / frac, self.discount_min), self.discount_max)

    @property
    def seed_env_steps(self) -> int:
        if self.seed_steps is not None:
            return int(self.seed_steps)
        return max(1000, 5 * self.episode_length) * self.action_repeat

    def widths(self) -> Dict[str, List[int]]:
        """Hidden widths of every component: explicit `<component>_dims` or derived from the preset."""
        default = {
            "enc_dims": max(self.num_enc_layers - 1, 1) * [self.enc_dim],
            "dynamics_dims": 2 * [self.mlp_dim],
            "reward_dims": 2 * [self.mlp_dim],
            "termination_dims": 2 * [self.mlp_dim],
            "pi_dims": 2 * [self.mlp_dim],
            "q_dims": 2 * [self.mlp_dim],
        }
        return {k: list(getattr(self, k) or v) for k, v in default.items()}

    # ------------------------------------------------------------------------------ validation
    def validate(self) -> "TDMPC2Config":
        """Check every option (type, finiteness, range, ordered pairs) before anything is built."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            check_type(ConfigError, f.name, getattr(self, f.name), hints[f.name], _example(f.default))
        if str(self.model_size) not in MODEL_SIZES and self.model_size is not None:
            raise ConfigError(
                f"model_size={self.model_size!r} is not a preset; choose one of {', '.join(MODEL_SIZES)} "
                "(millions of parameters; `cpu` is a ~0.5M agent for one CPU core)"
            )
        positive = ("steps", "batch_size", "horizon", "iterations", "num_samples", "num_elites", "num_q",
                    "episode_length", "action_repeat", "eval_freq", "save_freq", "log_freq", "buffer_size",
                    "enc_dim", "mlp_dim", "latent_dim", "num_enc_layers", "simnorm_dim")
        for key in positive:
            check_number(ConfigError, key, getattr(self, key), low=1, integer=True, example=_default(key))
        for key in ("seed", "eval_episodes", "task_dim", "num_bins", "num_pi_trajs"):
            check_number(ConfigError, key, getattr(self, key), low=0, integer=True, example=_default(key))
        for key, what in (("seed_steps", "env steps of random actions; none for the default"),
                          ("threads", "torch threads; none keeps torch's default"),
                          ("obs_dim", "leave unset: filled from the task"), ("action_dim", "leave unset: filled from the task")):
            value = getattr(self, key)
            if value is not None:
                check_number(ConfigError, key, value, low=0 if key == "seed_steps" else 1, integer=True, what=what,
                             example={"seed_steps": 1000, "threads": 1}.get(key))
        for key in ("reward_coef", "value_coef", "termination_coef", "consistency_coef", "enc_lr_scale", "entropy_coef"):
            check_number(ConfigError, key, getattr(self, key), low=0, example=_default(key))
        for key, what in (("lr", "the learning rate"), ("grad_clip_norm", "the gradient-norm clip"),
                          ("discount_denom", "episode_length/discount_denom sets the discount"),
                          ("temperature", "the MPPI temperature"), ("max_std", "the planner's largest action std")):
            check_number(ConfigError, key, getattr(self, key), low=0, low_open=True, what=what, example=_default(key))
        check_number(ConfigError, "tau", self.tau, 0, 1, low_open=True, what="the target-network update rate", example=0.01)
        check_number(ConfigError, "rho", self.rho, 0, 1, low_open=True, what="the temporal weight of the losses", example=0.5)
        for key in ("discount_min", "discount_max"):
            check_number(ConfigError, key, getattr(self, key), 0, 1, example=_default(key))
        check_number(ConfigError, "min_std", self.min_std, low=0, example=0.05)
        check_number(ConfigError, "dropout", self.dropout, 0, 1, high_open=True, example=0.01)
        for key in ("log_std_min", "log_std_max", "vmin", "vmax"):
            check_number(ConfigError, key, getattr(self, key), example=_default(key))
        check_order(ConfigError, "discount_min", self.discount_min, "discount_max", self.discount_max)
        check_order(ConfigError, "min_std", self.min_std, "max_std", self.max_std)
        check_order(ConfigError, "log_std_min", self.log_std_min, "log_std_max", self.log_std_max, strict=True)
        if self.vmax <= self.vmin:
            raise ConfigError(f"vmax={self.vmax} must exceed vmin={self.vmin}; raise vmax or lower vmin")
        if self.latent_dim % self.simnorm_dim:
            lo = max(self.simnorm_dim, self.latent_dim // self.simnorm_dim * self.simnorm_dim)
            raise ConfigError(
                f"latent_dim={self.latent_dim} is not a multiple of the SimNorm group size simnorm_dim={self.simnorm_dim}; "
                f"use e.g. latent_dim={lo} or latent_dim={lo + self.simnorm_dim}"
            )
        for key in WIDTH_KEYS.values():
            dims = getattr(self, key)
            if dims is not None and (not dims or any(int(d) < 1 for d in dims)):
                raise ConfigError(f"{key}={dims!r}: give a non-empty list of positive widths, e.g. {key}=[256,256]")
        if self.num_q < 2:
            raise ConfigError(f"num_q must be >= 2 (two members are subsampled for min/avg Q), got {self.num_q}")
        if self.num_elites > self.num_samples:
            raise ConfigError(f"num_elites={self.num_elites} exceeds num_samples={self.num_samples}; lower num_elites")
        if not 0 <= self.num_pi_trajs < self.num_samples:
            raise ConfigError(f"num_pi_trajs={self.num_pi_trajs} must be in [0, num_samples={self.num_samples})")
        if self.episode_length < self.horizon:
            raise ConfigError(
                f"episode_length={self.episode_length} is shorter than the planning horizon={self.horizon}: "
                f"training windows of horizon+1 steps would not fit an episode; raise episode_length or lower horizon"
            )
        if self.buffer_size < self.episode_length + 1:
            raise ConfigError(
                f"buffer_size={self.buffer_size} cannot hold one episode ({self.episode_length} steps + its first "
                f"observation); give buffer_size >= {self.episode_length + 1}"
            )
        if self.obs != "state":
            raise ConfigError(f"obs={self.obs!r}: only state observations are supported (obs=state)")
        dev = str(self.device)
        if not (dev in DEVICES or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"device={dev!r}: choose auto, cpu, cuda or cuda:<index>")
        for key in ("task", "logdir", "exp_name"):
            if not getattr(self, key).strip():
                raise ConfigError(f"{key}={getattr(self, key)!r}: must not be empty; e.g. {key}={_default(key)}")
        if self.exp_name in (".", "..") or any(c in self.exp_name for c in "/\\\0"):
            raise ConfigError(
                f"exp_name={self.exp_name!r}: a run name is one directory name (no '/', '\\', '.' or '..'); "
                "put nesting into logdir= instead"
            )
        if self.multitask and self.task_dim < 1:
            self.task_dim = 96
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TDMPC2Config":
        names = {f.name for f in fields(cls)}
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ConfigError(f"unknown config key {unknown[0]!r}.{_near(unknown[0], names)}")
        return cls(**d)


def _default(key: str) -> Any:
    return next(f.default for f in fields(TDMPC2Config) if f.name == key)


def _example(default: Any) -> Optional[str]:
    if default is None or default is dataclasses.MISSING:
        return None
    return str(default).lower() if isinstance(default, bool) else str(default)


# ---------------------------------------------------------------------------------------- parser
class ParsedArgs(NamedTuple):
    """Result of `parse_overrides`: the config, untouched `prune.*` tokens and whether `--prune` was given."""

    cfg: TDMPC2Config
    prune_overrides: List[str]
    prune_flag: bool


def _near(key: str, options) -> str:
    close = difflib.get_close_matches(key, sorted(options), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_overrides(tokens: Sequence[str], base: Optional[Dict[str, Any]] = None) -> ParsedArgs:
    """Parse hydra `key=value` tokens into a `TDMPC2Config` (hydra's grammar, `overrides.coerce` types).

    `model_size` is applied first (wherever it appears); explicitly given keys override the preset.
    `prune.<option>=<value>` tokens are returned untouched, and so is a bare `--prune` flag.
    `base` holds starting values (e.g. a checkpoint's config) that the tokens override.
    Raises `ConfigError` naming close matches for an unknown key and the expected type for a bad value.
    """
    flag = "--prune" in tokens
    prune = [t for t in tokens if t != "--prune" and t.split("=", 1)[0].strip().lstrip("+~").startswith("prune.")]
    agent = [t for t in tokens if t != "--prune" and t not in prune]
    values: Dict[str, Any] = {}
    for override in parse(agent, ConfigError):
        key = override.key_or_group
        if override.is_sweep_override():
            raise ConfigError(f"{key}: a sweep ({override.input_line!r}) needs -m/--multirun: tdmpc-prune train -m ...")
        values[key] = agent_value(key, value_of(override))
    return ParsedArgs(make_config(base, **values), prune, flag)


def agent_value(key: str, value: Any) -> Any:
    """`value` (as hydra parsed it) converted to the type of the option `key`; an unknown key is a `ConfigError`."""
    hints = typing.get_type_hints(TDMPC2Config)
    if key not in hints:
        names = [f.name for f in fields(TDMPC2Config)]
        raise ConfigError(f"unknown override key {key!r}.{_near(key, names)} Valid keys: {', '.join(names)}")
    return coerce(ConfigError, key, value, hints[key])


def make_config(base: Optional[Dict[str, Any]] = None, **values: Any) -> TDMPC2Config:
    """Build a config from `base` values and explicit `values`, applying the `model_size` preset first.

    `make_config(model_size="cpu", batch_size=32)` gives the CPU preset's widths with batch 32;
    explicit width keys (`latent_dim=96`, `q_dims=[64, 64]`) win over the preset.
    """
    merged: Dict[str, Any] = dict(base or {})
    size = values.get("model_size", merged.get("model_size", TDMPC2Config.model_size))
    if size is not None:
        if str(size) not in MODEL_SIZES:
            raise ConfigError(
                f"model_size={size!r} is not a preset; choose one of {', '.join(MODEL_SIZES)} "
                "(millions of parameters; `cpu` is a ~0.5M agent for one CPU core)"
            )
        if "model_size" in values:  # a newly chosen preset replaces the base's widths
            merged.update(MODEL_SIZES[str(size)])
        else:
            merged = {**MODEL_SIZES[str(size)], **merged}
    merged.update(values)
    return TDMPC2Config.from_dict(merged)
