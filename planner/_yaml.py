"""YAML reading with one-line errors that carry the line number."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from planner.errors import InputError, NotFoundError


def read_yaml(path: str | os.PathLike) -> object:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"{path}:{where}: {problem}") from None


def ensure_writable(path: str | os.PathLike) -> None:
    """Fail before a long computation, not after it, when `path` could not be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path}: cannot write (it is a directory)")
    if not parent.is_dir():
        raise InputError(f"{path}: cannot write (no directory {parent})")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: cannot write (permission denied)")


def write_yaml_atomic(path: str | os.PathLike, data: object) -> None:
    """Write YAML to a temporary file beside `path`, then rename: never half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            yaml.safe_dump(data, handle, sort_keys=False, default_flow_style=None, width=100)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({exc.strerror})") from None
