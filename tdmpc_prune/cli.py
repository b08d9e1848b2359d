"""`tdmpc-prune` command line: `tdmpc-prune <command> [key=value ...]`.

Commands are looked up in `COMMANDS` (name -> (module, function, help)); each function takes the
remaining argv tokens.  Add a subcommand by adding one entry.
"""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Callable, Dict, List, Optional, Sequence, Tuple

COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "train": ("tdmpc_prune.tdmpc2.train", "train",
              "train our TD-MPC2 agent on a dm-control task (add --prune [prune.key=value ...] to prune it while it trains):\n             tdmpc-prune train task=cartpole-balance steps=20000 model_size=cpu --prune prune.sparsity=0.5"),
    "export": ("tdmpc_prune.tdmpc2.deploy", "command",
               "write a trained (pruned) run's controller as ONNX graphs, checked against PyTorch:\n             tdmpc-prune export runs/cartpole-balance/pruned50/seed-1 --out deploy/cartpole"),
}


def _usage() -> str:
    lines = ["usage: tdmpc-prune <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:10s} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _resolve(name: str) -> Callable[[Sequence[str]], object]:
    module, func, _ = COMMANDS[name]
    return getattr(import_module(module), func)


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch to a subcommand; bad input prints one clear error line and returns exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"tdmpc-prune: unknown command {name!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .errors import PruneError

    try:
        _resolve(name)(rest)
    except PruneError as e:  # every bad-input error of the package (errors.py)
        message = " ".join(str(e).split())  # one line, whatever the message holds
        print(f"tdmpc-prune {name}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # a filesystem fault outside the checkpoint writer (event files, the environment)
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"tdmpc-prune {name}: error: {e.strerror or e}{where}; the run stopped and its last checkpoint is intact: "
              "fix the filesystem, then continue with resume=true", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdmpc-prune {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
