"""Frozen dataclasses read from YAML mappings, checked field by field.

The dataclass's type hints drive the checks: unknown and missing keys, types (a string
where a number belongs), numbers that are not finite (YAML's .nan and .inf) and empty
strings each raise one error naming the field by its dotted path, e.g. `peak_tflops.bf16`
or `decoding.skip_layers[3]`. Ranges belong to each file's own rules, given as `check`.
Plan files (planner/plan/schema.py) and hardware profiles (planner/hardware/profile.py)
are read this way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable

from planner.errors import InputError, near_matches

Check = Callable[[str, str, object], None]  # (field name, dotted path, value): raises when out of range


def from_mapping(cls, data, *, check: Check, error: type[InputError] = InputError, path: str = ""):
    """An instance of dataclass `cls` from the mapping `data`.

    Raises:
        error: the first field that is unknown, missing, of the wrong type, not finite, empty,
            or refused by `check`; the message starts with the field's dotted path.
    """
    return _Reader(check, error).mapping(cls, data, path)


def versioned_mapping(data, origin: str, *, what: str, version: int, required: bool = False, hint: str = "") -> dict:
    """`data` (a YAML document: `what`, e.g. "a profile") as a dict without its schema_version,
    which must be `version` (when missing: accepted unless `required`).

    Raises:
        InputError: "<origin>: <what> must be a YAML mapping" (with `hint` in parentheses), or
            "<origin>: schema_version ... is not supported".
    """
    if not isinstance(data, dict):
        raise InputError(f"{origin}: {what} must be a YAML mapping" + (f" ({hint})" if hint else ""))
    data = dict(data)
    found = data.pop("schema_version", None if required else version)
    if isinstance(found, bool) or found != version:
        raise InputError(f"{origin}: schema_version {found!r} is not supported (expected {version})")
    return data


def to_plain(obj):
    """Dataclasses and tuples as the dicts and lists YAML writes."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


@dataclasses.dataclass(frozen=True)
class _Reader:
    check: Check
    error: type[InputError]

    def mapping(self, cls, data, path: str):
        if not isinstance(data, dict):
            raise self.error(f"{path or 'top level'}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        prefix = f"{path}." if path else ""
        for key in data:
            if key not in fields:
                raise self.error(f"{prefix}{key}: unknown field{near_matches(str(key), fields)}")
        values = {}
        for name, f in fields.items():
            if name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise self.error(f"{prefix}{name}: missing")
                continue
            if data[name] is None and type(None) not in typing.get_args(hints[name]):
                raise self.error(f"{prefix}{name}: must not be empty")
            values[name] = self.value(data[name], hints[name], f"{prefix}{name}", name)
        return cls(**values)

    def value(self, value, tp, path: str, name: str):
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            # A union of a scalar and a mapping (e.g. float | dict[int, float]) reads a mapping as its
            # mapping type and anything else as the other one.
            options = [a for a in args if a is not type(None)]
            wanted = [a for a in options if (a is dict or typing.get_origin(a) is dict) == isinstance(value, dict)]
            return self.value(value, (wanted or options)[0], path, name)
        if dataclasses.is_dataclass(tp):
            return self.mapping(tp, value, path)
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                raise self.error(f"{path}: expected a list, got {type(value).__name__}")
            return tuple(self.value(v, args[0], f"{path}[{i}]", name) for i, v in enumerate(value))
        if tp is dict or origin is dict:
            if not isinstance(value, dict):
                raise self.error(f"{path}: expected a mapping, got {type(value).__name__}")
            if not args:
                return value
            for key in value:
                if not isinstance(key, args[0]):
                    raise self.error(f"{path}: key {key!r} is not a {args[0].__name__}")
            return {k: self.value(v, args[1], f"{path}.{k}", name) for k, v in value.items()}
        return self.scalar(value, tp, path, name)

    def scalar(self, value, tp, path: str, name: str):
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            try:
                value = float(value) if ok else value
            except OverflowError:  # an integer beyond any float
                raise self.error(f"{path}: must be a finite number, got an integer too large for one") from None
        else:
            ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if not ok:
            raise self.error(f"{path}: expected {'a number' if tp is float else tp.__name__}, "
                             f"got {type(value).__name__} {value!r}")
        if tp is float and not math.isfinite(value):
            raise self.error(f"{path}: must be a finite number, got {value}")
        if tp is str and not value.strip():
            raise self.error(f"{path}: must not be empty")
        self.check(name, path, value)
        return value
