"""Training text: the Python standard library's sources, split by a hash of each file's path.

Every machine with Python has this text, so the demo model can be rebuilt anywhere. The
split depends only on the path relative to the stdlib root, so it is the same on every
machine with the same Python version; held-out files never reach the tokenizer or training.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from planner.errors import InputError, NotFoundError

# Test suites, the IDLE GUI and the retired 2to3 are large, odd or generated: leave them out.
_EXCLUDED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
HELD_OUT_BUCKETS = 20  # one file in 20 is held out


@dataclass(frozen=True)
class Split:
    root: Path
    train: tuple[Path, ...]
    held_out: tuple[Path, ...]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_held_out(relative: str) -> bool:
    return int(hashlib.sha1(relative.encode()).hexdigest(), 16) % HELD_OUT_BUCKETS == 0


def stdlib_split(root: Path | None = None) -> Split:
    """The standard library's .py files, sorted, divided into train and held-out."""
    root = root or stdlib_root()
    files = sorted(p for p in root.rglob("*.py") if not _EXCLUDED_DIRS & set(p.relative_to(root).parts[:-1]))
    held = tuple(p for p in files if _is_held_out(p.relative_to(root).as_posix()))
    train = tuple(p for p in files if p not in set(held))
    return Split(root, train, held)


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def text_files(paths, *, parameter: str = "data") -> list[Path]:
    """The text files `paths` name (files, or directories searched for *.py/*.txt/*.md).

    Raises NotFoundError for a missing path; InputError when no text is found. The messages
    name the `parameter` the paths came from."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise NotFoundError(f"`{parameter}` {raw}: no such file or directory")
        if path.is_dir():
            found += sorted(p for ext in ("*.py", "*.txt", "*.md") for p in path.rglob(ext) if p.is_file())
        else:
            found.append(path)
    texts = [p for p in found if p.stat().st_size > 0]
    if not texts:
        raise InputError(f"`{parameter}` {' '.join(map(str, paths))}: holds no text")
    return texts
