"""Checks shared by every option set (`TDMPC2Config`, `PruneConfig`, the SB3 callback).

Each check raises the caller's error class with one line that names the key, the value given,
what is allowed and how to fix it, e.g.

    grad_clip_norm=-1.0: must be a finite number > 0 (the gradient-norm clip); e.g. grad_clip_norm=20.0
"""
from __future__ import annotations

import math
import numbers
import typing
from typing import Any, Optional, Type, Union


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def describe(hint: Any) -> str:
    """A type annotation in words ("an integer", "a list of integers", ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" (or none)" if type(None) in args else "")
    if origin in (list, tuple, typing.Sequence, typing.get_origin(typing.Sequence[int])):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin is dict:
        return f"a mapping of {describe(args[0]).split(' ', 1)[-1]}s to {describe(args[1]).split(' ', 1)[-1]}s" if args else "a mapping"
    names = {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the annotation `hint` (ints are numbers; bools are not numbers)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple) or origin is typing.get_origin(typing.Sequence[int]):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_number(value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_type(error: Type[Exception], key: str, value: Any, hint: Any, example: Optional[str] = None) -> None:
    if not matches(value, hint):
        fix = f"; e.g. {key}={example}" if example is not None else ""
        raise error(f"{key}={value!r}: expected {describe(hint)}, got {type(value).__name__}{fix}")


def check_number(
    error: Type[Exception],
    key: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
    example: Any = None,
    integer: bool = False,
) -> None:
    """`value` is a finite number (an int if `integer`) within the given bounds."""
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if low is not None and high is not None:
        bounds.append(f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
    elif low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    elif high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    allowed = f"must be {kind}" + (f" {bounds[0]}" if bounds else "") + (f" ({what})" if what else "")
    fix = f"; e.g. {key}={example!r}" if example is not None else ""
    ok = (_is_int(value) if integer else _is_number(value)) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (low is None or (v > low if low_open else v >= low)) and (high is None or (v < high if high_open else v <= high))
    if not ok:
        raise error(f"{key}={value!r}: {allowed}{fix}")


def check_order(error: Type[Exception], low_key: str, low: Any, high_key: str, high: Any, strict: bool = False) -> None:
    """`low <= high` (or `<` if strict) for two options that bound one range."""
    bad = low >= high if strict else low > high
    if bad:
        rel = "<" if strict else "<="
        raise error(
            f"{low_key}={low!r} and {high_key}={high!r}: {low_key} must be {rel} {high_key}; "
            f"raise {high_key} or lower {low_key}"
        )


def check_choice(error: Type[Exception], key: str, value: Any, choices: typing.Sequence[str]) -> None:
    if value not in choices:
        import difflib

        close = difflib.get_close_matches(str(value), list(choices), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise error(f"{key}={value!r}: choose one of {', '.join(choices)}.{hint}")
