"""The one override parser: hydra's grammar for `key=value` tokens, then one conversion to each option's type.

Hydra parses a token into a Python value (`steps=1e5` -> 100000.0, `compile=on` -> 'on',
`q_dims=[64,32]` -> [64, 32], `seed=1,2,3` -> a sweep).  `coerce` turns such a value into the
type a dataclass field is annotated with, the same way for every option set (`TDMPC2Config`,
`PruneConfig`), whether the value came from a command line, a composed hydra config or a sweep:

* a boolean takes true/false, on/off, yes/no, 1/0;
* an integer takes an integral number (`1e5`, `20_000`, `1000.0`);
* a number takes an integer (`lr=1` -> 1.0);
* a step (`int | float`) keeps what was written: `1000` is a step, `0.5` a fraction;
* `none`/`null` is None where the option allows it.

A value that fits none of these is one error line naming the key, the value and the type expected.
"""
from __future__ import annotations

import typing
from typing import Any, List, Sequence, Type, Union

from .validation import describe

NONE = ("none", "null", "~")
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_SEQUENCES = (list, tuple, typing.get_origin(typing.Sequence[int]))


def parse(tokens: Sequence[str], error: Type[Exception]) -> List[Any]:
    """Hydra `Override` objects of `tokens`; a token hydra cannot parse is one `error` line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    out = []
    for tok in tokens:
        if "=" not in tok:
            raise error(f"bad argument {tok!r}: overrides are written key=value (e.g. task=pendulum-swingup)")
        try:
            out.extend(parser.parse_overrides([tok]))
        except OverrideParseException as e:
            detail = " ".join(str(e).split("\n")[1:2]).strip()
            raise error(f"cannot parse the override {tok!r} ({detail}); write key=value, quote values with "
                        "special characters (key='a b'), sweep with key=a,b (see hydra's override grammar)") from None
    return out


def value_of(override: Any) -> Any:
    """The plain Python value of a non-sweep override (hydra containers -> lists and dicts)."""
    return _plain(override.value())


def _plain(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def coerce(error: Type[Exception], key: str, value: Any, hint: Any) -> Any:
    """`value` (as hydra parsed it, or a Python value) converted to the annotation `hint`; else an `error`."""
    value = _plain(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Union:
        allows_none = type(None) in args
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE):
            if allows_none:
                return None
        options = [a for a in args if a is not type(None)]
        for option in options:  # a value that already has one of the types keeps it (1000 a step, 0.5 a fraction)
            if _exactly(value, option):
                return coerce(error, key, value, option)
        for option in options:
            try:
                return coerce(error, key, value, option)
            except error:
                pass
        raise _bad(error, key, value, hint)
    if origin in _SEQUENCES:
        if isinstance(value, str) and origin is not list and args and args[0] is str:
            value = [value]  # one name stands for a list of one
        if not isinstance(value, (list, tuple)):
            example = "[256,256]" if args and args[0] is int else "[a,b]"
            raise error(f"{key}={value!r}: expected {describe(hint)} such as {key}={example}")
        items = [coerce(error, f"{key} item", v, args[0]) if args else v for v in value]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(error, key, value, hint)
        return {coerce(error, key, k, args[0]): coerce(error, f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if hint is bool:
        return _boolean(error, key, value)
    if hint is int:
        return _integer(error, key, value)
    if hint is float:
        return _number(error, key, value)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):  # `exp_name=5`; quote a value to keep it verbatim
            return str(value).lower() if isinstance(value, bool) else str(value)
        raise _bad(error, key, value, hint)
    return value  # callables, Criterion instances, ...: checked by the config's own validation


def _exactly(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, float)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    from .validation import matches

    return matches(value, hint)


def _bad(error: Type[Exception], key: str, value: Any, hint: Any) -> Exception:
    return error(f"{key}={value!r}: expected {describe(hint)}")


def _boolean(error: Type[Exception], key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise error(f"{key}={value!r}: expected a boolean (true or false; on/off and yes/no work too)")


def _integer(error: Type[Exception], key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = value
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise error(f"{key}={value!r}: expected an integer")


def _number(error: Type[Exception], key: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            pass
    raise error(f"{key}={value!r}: expected a number")
