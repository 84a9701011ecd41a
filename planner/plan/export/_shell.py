"""Text that reaches a shell, a comment or a config file without escaping it.

Plans carry free text (model names and sources, device names, profile paths, draft models)
that ends up in exported scripts. Comments are one line each, so every control character
(a newline would end the comment and run the rest as a command) is written as a visible
escape; values go into single quotes; settings a user may change are shell variables whose
defaults come from the plan, assigned without any expansion of the default.
"""

from __future__ import annotations

import shlex
import unicodedata
from dataclasses import dataclass

# Characters Python, YAML or a shell may treat as a line end besides the C0 controls.
_LINE_BREAKS = {"\x85", "\u2028", "\u2029"}


def one_line(text: str) -> str:
    """`text` with every control or line-break character replaced by a visible \\xNN or \\uNNNN escape."""
    def safe(char: str) -> str:
        if unicodedata.category(char).startswith("C") or char in _LINE_BREAKS:
            return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
        return char

    return "".join(safe(c) for c in text)


def comment_block(lines: list[str]) -> str:
    """`# line` per line; a line can never end its comment early."""
    return "".join(f"# {one_line(line)}\n" for line in lines)


def default(name: str, value: object, why: str) -> str:
    """Assign `value` to shell variable `name` unless the environment set it (no expansion of `value`)."""
    return f'[ -n "${{{name}:-}}" ] || {name}={shlex.quote(str(value))}  # {one_line(why)}\n'


@dataclass(frozen=True)
class Ref:
    """A shell variable in a command line, written as "$NAME"."""

    name: str


def words(args: list[str | Ref]) -> str:
    """Command-line words: variable references double-quoted, everything else single-quoted as needed."""
    return " ".join(f'"${a.name}"' if isinstance(a, Ref) else shlex.quote(a) for a in args)


def script(header: list[str], variables: list[tuple[str, object, str]], body: str) -> str:
    """A POSIX sh script: the header as comments, one overridable variable per setting, then `body`."""
    return ("#!/bin/sh\n" + comment_block(header) + "set -eu\n"
            + "".join(default(name, value, why) for name, value, why in variables) + body)


def serving_variables(model: str, draft_model: str | None, port: int, tensor_parallel: int) -> list[tuple[str, object, str]]:
    """MODEL, DRAFT_MODEL, HOST, PORT and TP: the settings every serving script shares."""
    variables = [("MODEL", model, "hub id or local checkpoint directory")]
    if draft_model is not None:
        variables.append(("DRAFT_MODEL", draft_model, "hub id or local directory of the draft model"))
    return variables + [("HOST", "0.0.0.0", "address to listen on"), ("PORT", port, "port to listen on"),
                        ("TP", tensor_parallel, "tensor parallel size (GPUs)")]
