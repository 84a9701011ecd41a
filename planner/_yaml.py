"""YAML reading and writing: one-line errors that carry the file and the line, atomic writes."""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path

import yaml

from planner._files import read_utf8, write_atomic
from planner.errors import InputError


class _Loader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: YAML would keep the last
    value silently, dropping one the user wrote."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class says what is wrong with it
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> object:
    """The YAML document in `path` (UTF-8).

    Raises:
        NotFoundError: no such file.
        InputError: unreadable, not UTF-8, or not valid YAML (with the line where it breaks).
    """
    path = Path(path)
    text = read_utf8(path)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}:{where} {problem}") from None
    except ValueError as exc:  # a tagged or timestamp-like scalar Python cannot build, e.g. 2001-13-01
        raise InputError(f"{path}: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply") from None


def write_yaml_atomic(path: str | os.PathLike, data: object) -> None:
    """Write `data` as YAML to `path`, never half-written (planner._files.write_atomic).

    Raises:
        InputError: `path` cannot be written.
    """
    write_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100))
