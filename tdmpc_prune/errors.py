"""Errors raised for bad input: each message names the problem and the fix."""


class PruneError(ValueError):
    """The model, its components or a pruning request cannot be handled as given."""


class PruneConfigError(PruneError):
    """A pruning option has a bad value."""


class RunError(RuntimeError):
    """A run cannot start or go on as asked: its directory, lock, checkpoint or filesystem."""


class ExportError(PruneError):
    """A model cannot be exported for deployment as given (or its export does not match PyTorch)."""
