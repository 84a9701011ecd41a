"""Files the user gives and gets: read as UTF-8 text with one-line errors; written checked
before the work and replaced atomically after it.

`write_atomic` is the one way specplan writes a plan, a profile, an export, a fleet summary
or a chart: the bytes go to a uniquely named temporary file in the target's directory, are
flushed to disk, and replace the target in one rename. A reader sees the old file or the new
one, never an empty or half-written one, and concurrent writers of the same path each
replace it whole (the last rename wins); an interrupted write leaves no temporary file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.errors import InputError, NotFoundError


def read_utf8(path: str | os.PathLike) -> str:
    """The UTF-8 text of the file at `path`.

    Raises:
        NotFoundError: no such file.
        InputError: unreadable, or not UTF-8 (naming the line and the byte).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


_DIGEST_SPAN = 1 << 20  # bytes read from each end of a file


def content_digest(path: str | os.PathLike) -> str:
    """A SHA-256 (hex) of the file at `path`, or of every file under the directory `path`:
    names, sizes and the first and last MiB of each. Cheap on multi-GiB checkpoints, and
    still changes when weights are replaced (a retrained or requantized file differs in size
    or at its ends; its header at least).

    Raises:
        InputError: a file that cannot be read.
    """
    import hashlib

    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        try:
            size = file.stat().st_size
            with file.open("rb") as handle:
                head = handle.read(_DIGEST_SPAN)
                handle.seek(max(size - _DIGEST_SPAN, 0))
                tail = handle.read(_DIGEST_SPAN)
        except OSError as exc:
            raise InputError(f"{file}: cannot read ({exc.strerror})") from None
        digest.update(f"{file.relative_to(root) if root.is_dir() else file.name}\0{size}\0".encode())
        digest.update(head + tail)
    return digest.hexdigest()


def ensure_writable(path: str | os.PathLike) -> None:
    """Fail before a long computation, not after it, when `path` could not be written.

    Raises:
        InputError: `path` is a directory, its directory does not exist, or it is not writable.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path}: cannot write (it is a directory)")
    if not parent.is_dir():
        raise InputError(f"{path}: cannot write (no directory {parent})")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{path}: cannot write (permission denied)")
    _try_write(parent, path)


def ensure_writable_dir(path: str | os.PathLike) -> None:
    """Fail before a long computation, not after it, when files could not be written in the
    directory `path` (which need not exist yet).

    Raises:
        InputError: `path` is a file, a file stands where one of its parents belongs, or the
            nearest of them that exists is not writable.
    """
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{path}: cannot write (" + ("it is a file)" if existing == path else f"{existing} is a file)"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write (permission denied)")
    _try_write(existing, path)


def _try_write(directory: Path, path: Path) -> None:
    """Create and remove a temporary file in `directory`, as write_atomic would for `path`:
    os.access says yes to root for any directory, /proc and read-only mounts included.

    Raises:
        InputError: the file could not be created (one line: why).
    """
    try:
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(handle)
    os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str, *, executable: bool = False) -> Path:
    """Write `data` (str as UTF-8) to `path` through a unique temporary file beside it, fsync'd,
    then os.replace()d over `path`. The file gets the usual permissions (0666, or 0777 when
    `executable`, less the umask), not the temporary file's 0600. Returns `path`.

    Raises:
        InputError: the directory does not exist or the file cannot be written (one line: why).
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, (0o777 if executable else 0o666) & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C included: never leave the temporary file behind
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write ({exc.strerror})") from None
        raise
    return path
