"""A run directory: owned by one live run, named after the run's options, written atomically.

* `RunLock`: an exclusive `flock` on `<run dir>/.lock`, holding the owner's pid.  The kernel drops
  the lock when the process dies (even by `kill -9`), so a dead run never blocks its successor,
  and a second live run on the same directory is refused.
* `default_exp_name`: a run that changes options without naming itself gets a name derived from
  them (`pruned-criterion=fisher,sparsity=0.75`), so runs with different options never share a
  directory.
* `atomic_save`: a checkpoint is written to `<path>.tmp`, synced and renamed over `<path>`; when the
  write fails (disk full, file-size limit, read-only filesystem) the partial file is removed and
  the previous checkpoint stays as it was.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from ..errors import RunError

LOCK = ".lock"
MAX_NAME = 120  # longer derived names keep their start and end in a short hash of the whole
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]+")


class RunLock:
    """Exclusive ownership of a run directory by this process (see the module docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        self._file: Optional[Any] = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "RunLock":
        if self._file is not None:
            return self
        path = os.path.join(self.directory, LOCK)
        try:
            f = open(path, "a+")
        except OSError as e:
            raise RunError(
                f"cannot write in the run directory {self.directory}: {e.strerror or e}; "
                "choose a writable logdir="
            ) from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip() or "?"
            f.close()
            raise RunError(
                f"{self.directory} is in use by another live run (pid {owner}); wait for it to end or stop it, "
                "or start this run with another exp_name= (or seed=, logdir=)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim(directory: str, stale: Iterable[str] = ()) -> RunLock:
    """Create `directory`, take its lock, and remove the partial files (`stale`) a killed run left."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise RunError(f"the run directory {directory} is a file, not a directory; remove it or choose another logdir=")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise RunError(
            f"cannot create the run directory {directory}: {e.strerror or e}"
            f"{f' ({e.filename})' if e.filename and e.filename != directory else ''}; choose a writable logdir="
        ) from None
    lock = RunLock(directory).acquire()
    for name in stale:  # only the owner of the lock may have been writing them
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
    return lock


def missing_dirs(directory: str) -> List[str]:
    """`directory` and those of its parents that do not exist yet, deepest first."""
    out = []
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def remove_if_unused(created: Sequence[str]) -> None:
    """Remove the directories in `created` (deepest first) that hold nothing but a released lock."""
    for path in created:
        with contextlib.suppress(OSError):
            if set(os.listdir(path)) <= {LOCK}:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(path, LOCK))
                os.rmdir(path)


class _RecordingWriter:
    """A file wrapper that keeps the OSError of a failed write (torch.save reports only 'unexpected pos')."""

    def __init__(self, f: Any):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj: Any, path: str, last_good: str = "") -> None:
    """`torch.save(obj, path)` via `<path>.tmp` + fsync + rename; on failure a `RunError`, no `.tmp` left.

    `last_good` describes the checkpoint that stays in place (for the message).
    """
    tmp = path + ".tmp"
    writer: Optional[_RecordingWriter] = None
    try:
        with open(tmp, "wb") as f:
            writer = _RecordingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        cause = writer.error if writer is not None and writer.error is not None else e
        if not isinstance(cause, OSError):
            raise
        with contextlib.suppress(OSError):
            os.remove(tmp)
        kept = f"; {last_good} is kept" if last_good else "; no earlier checkpoint exists"
        raise RunError(
            f"could not write the checkpoint {path}: {cause.strerror or cause} (the partial file was removed{kept}); "
            "free space or fix the logdir, then continue with resume=true"
        ) from None
    with contextlib.suppress(OSError):  # make the rename durable
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------ naming
def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "_".join(_format(v) for v in value) or "none"
    if isinstance(value, dict):
        return "_".join(f"{k}:{_format(v)}" for k, v in sorted(value.items())) or "none"
    return "none" if value is None else str(value)


def _parts(values: Dict[str, Any], defaults: Dict[str, Any], prefix: str = "", clash: Sequence[str] = ()) -> list:
    out = []
    for key in sorted(values):
        if key in defaults and values[key] == defaults[key]:
            continue
        name = f"{prefix}{key}" if key in clash else key
        out.append(f"{name}={_format(values[key])}")
    return out


def default_exp_name(base: str, options: Dict[str, Any], defaults: Dict[str, Any],
                     prune: Optional[Dict[str, Any]] = None, prune_defaults: Optional[Dict[str, Any]] = None,
                     first: Sequence[str] = ()) -> str:
    """`base` plus every option that differs from its default, e.g. `pruned-criterion=fisher,sparsity=0.75`.

    Prune options come first (a key that is also an agent option is written `prune.<key>`), then the
    agent's; keys sorted, values as parsed (so `0.50` and `.5` give one name), filesystem-safe, and
    names longer than MAX_NAME characters end in a hash of the whole.  The agent options in `first` (the
    keys a sweep varies) lead, so that a long name still shows them before its hash.
    """
    lead = {k: v for k, v in options.items() if k in first}
    rest = {k: v for k, v in options.items() if k not in first}
    parts = (_parts(lead, defaults) + _parts(prune or {}, prune_defaults or {}, "prune.", clash=list(defaults))
             + _parts(rest, defaults))
    if not parts:
        return base
    name = _UNSAFE.sub("_", f"{base}-{','.join(parts)}")
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 12]}~{digest}"
    return name
