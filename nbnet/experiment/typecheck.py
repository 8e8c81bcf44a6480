"""Config values checked against their dataclass annotations, and one-line errors for unknown keys."""

from __future__ import annotations

import difflib
import types
import typing

from nbnet.errors import NbnetError

_HINTS: dict = {}  # class -> its resolved annotations


def type_hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def type_name(tp) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(value, tp, key: str):
    """``value`` checked against the annotation ``tp`` (int, float, bool, str, dict, X | None,
    tuple[int, ...], tuple[float, float]); lists become tuples, ints are accepted as floats,
    "true"/"false"/"none" strings as bools/None. Raises NbnetError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except NbnetError:
                pass
        raise NbnetError(f"{key} must be {type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis and isinstance(value, int) and not isinstance(value, bool):
                value = (value,)  # hidden_layer_sizes=64 means (64,)
            else:
                raise NbnetError(f"{key} must be a list like {example(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise NbnetError(f"{key} must have {len(args)} values like {example(tp)}, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise NbnetError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NbnetError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NbnetError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise NbnetError(f"{key} must be a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise NbnetError(f"{key} must be a table like {{key = value}}, got {value!r}")
        return dict(value)
    if tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise NbnetError(f"{key} must be a list, got {value!r}")
        return tuple(value)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not the user's


def example(tp) -> str:
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return "[128, 64]"
    return "[" + ", ".join("0.9" if a is float else "1" for a in args) + "]"


def unknown_key(key: str, valid) -> NbnetError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1) or difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return NbnetError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}")
