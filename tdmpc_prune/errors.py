"""Errors raised for bad input: each message names the problem and the fix.

One tree: every error the package raises for bad input or misuse is a `PruneError`, so
`except PruneError` catches them all (the CLI prints them as one line). Each also keeps the
built-in base it had before the tree was unified (`ValueError`, `RuntimeError`, `TypeError`,
`KeyError`), so existing `except ValueError:` code keeps working::

    PruneError (ValueError)
    ├── PruneConfigError          a pruning option has a bad value
    │   └── UnknownStatisticError (+ KeyError)
    ├── ConfigError               a bad TD-MPC2 agent/run option (tdmpc2.config)
    ├── UnknownTaskError          not a dm-control task (tdmpc2.envs)
    ├── ExportError               a model cannot be exported as given
    ├── ArgumentError (+ TypeError)   arguments of the wrong kind (registering a non-callable, ...)
    ├── ModelError (+ TypeError)  a model or layer the package cannot build or trace as given
    └── RunError (+ RuntimeError) a run cannot start or go on: directory, lock, checkpoint, state
        └── ResumeError           resume=true cannot continue (tdmpc2.train)
"""


class PruneError(ValueError):
    """The model, its components or a pruning request cannot be handled as given (the root)."""


class PruneConfigError(PruneError):
    """A pruning option has a bad value."""


class UnknownStatisticError(PruneConfigError, KeyError):
    """A statistic name that no criterion registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(PruneError):
    """A bad TD-MPC2 override key or value; the message names the problem and the fix."""


class UnknownTaskError(PruneError):
    """The task name is not a dm-control suite task."""


class ExportError(PruneError):
    """A model cannot be exported for deployment as given (or its export does not match PyTorch)."""


class ArgumentError(PruneError, TypeError):
    """Arguments of the wrong kind or combination: a criterion, schedule or statistic that cannot be
    registered (not callable, no name), `wrap()` given both a callback and options."""


class ModelError(PruneError, TypeError):
    """A model, layer or buffer that cannot be built or traced with the arguments given."""


class RunError(PruneError, RuntimeError):
    """A run cannot start or go on as asked: its directory, lock, checkpoint, filesystem or state."""


class ResumeError(RunError):
    """`resume=true` cannot continue: no checkpoint, an unreadable one, or an incompatible override."""
