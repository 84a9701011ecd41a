"""Where a shared study lives: one string names an Optuna storage, and its failures are one line.

    sqlite:///study.db              a database URL (SQLite, PostgreSQL, MySQL: any SQLAlchemy URL)
    studies/plan.log                a journal file (.log or .journal) that many processes append to

Optuna and SQLAlchemy report a bad URL, a missing driver or an unreachable database as long
tracebacks; here each becomes one InputError naming the storage. A study remembers what it
searches (model, GPU, budget, space): another search cannot add its trials to it.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from pathlib import Path

from planner.errors import InputError, MissingDependencyError

JOURNAL_SUFFIXES = (".log", ".journal")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_EXAMPLES = "sqlite:///study.db, postgresql://user@host/db, or a journal file such as study.log"


SQLITE_BUSY_TIMEOUT_S = 60  # a worker waits this long for another's write to a shared SQLite file
HEARTBEAT_S = 60  # database storages: a trial whose worker has been silent for 2 heartbeats is marked failed
_OPEN_ATTEMPTS = 5  # workers starting together on a fresh database race to create its tables


def open_study(storage: str | None, study_name: str | None, *, sampler, directions: list[str], fingerprint: dict,
               pruner=None, heartbeat: bool = False):
    """(the Optuna study `study_name` in `storage`, whether this call created it): created,
    or loaded to resume; in memory when `storage` is None. Of several workers that start
    together exactly one creates the study (and should queue its seed trials). `heartbeat`:
    a database storage marks failed a trial whose worker stopped beating (trials that take
    seconds; analytical ones take microseconds and need none).

    Raises:
        InputError: `storage` is no URL or journal file name, names a directory that does not
            exist, an unknown database, one that cannot be opened, or holds a study of this
            name made by another search (`fingerprint` differs) or for other objectives.
        MissingDependencyError: the database's driver is not installed.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    with storage_errors(storage):
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                study, created = _create_or_load(storage, study_name, sampler=sampler, directions=directions, pruner=pruner,
                                                 heartbeat=heartbeat)
                break
            except (OperationalError, IntegrityError, ProgrammingError):
                # another worker is creating the same tables (SQLite: locked; PostgreSQL: a duplicate
                # type or table): wait, then load them
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
            raise InputError(f"`study_name` {study_name} in {storage} was made for {len(study.directions)} objective(s), "
                             f"not {len(directions)}: use another study name")
        made_for = study.user_attrs.get("fingerprint")
        if made_for is None:
            study.set_user_attr("fingerprint", fingerprint)
        elif made_for != fingerprint:
            changed = [key for key in fingerprint if made_for.get(key) != fingerprint[key]]
            changed += [key for key in made_for if key not in fingerprint]
            raise InputError(f"`study_name` {study_name} in {storage} holds another search "
                             f"({', '.join(f'{k} {made_for.get(k)!r}, not {fingerprint.get(k)!r}' for k in changed)}): "
                             "use another study name")
    return study, created


def _create_or_load(storage, study_name, *, sampler, directions, pruner, heartbeat):
    import optuna

    try:
        backend = _backend(storage, heartbeat)
        try:
            return optuna.create_study(study_name=study_name, storage=backend, sampler=sampler, pruner=pruner,
                                       directions=directions), True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=study_name, storage=backend, sampler=sampler, pruner=pruner), False
    except ImportError as exc:
        missing = exc.__cause__ or exc.__context__ or exc
        raise MissingDependencyError(f"`storage` {storage}: its database driver is not installed ({missing})") from None
    except (OSError, ValueError) as exc:  # a journal file that cannot be written, or is not a journal
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"not an Optuna journal ({exc})"
        raise InputError(f"`storage` {storage}: {reason}") from None


def _backend(storage: str | None, heartbeat: bool = False):
    """What optuna.create_study takes for `storage`: None, an RDBStorage, or a JournalStorage.
    With `heartbeat`, database storages beat one, so a trial left running by a worker that died
    is marked failed instead of counting as running for ever; SQLite files wait for each
    other's writes instead of failing at once."""
    if storage is None:
        return None
    if "://" in storage:
        import optuna
        from optuna.storages import RDBStorage

        engine_kwargs = {}
        if _sqlite_file(storage):
            _check_directory(storage, _sqlite_file(storage))
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        elif storage.startswith("sqlite:"):
            return storage
        if not heartbeat:
            return RDBStorage(storage, engine_kwargs=engine_kwargs)
        with warnings.catch_warnings():  # the heartbeat is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(storage, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                              grace_period=2 * HEARTBEAT_S)
    path = _journal_file(storage)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def check_storage(storage: str | None) -> None:
    """Refuse, without connecting to it, a storage no study could be opened in: for a run
    that measures for minutes before it opens its study.

    Raises:
        InputError: `storage` is no URL or journal file name, SQLAlchemy knows no such database,
            or the SQLite or journal file is a directory or cannot be written where it is.
        MissingDependencyError: the database's driver is not installed.
    """
    if storage is None:
        return
    if "://" not in storage:
        _journal_file(storage)
        return
    from sqlalchemy import create_engine

    with storage_errors(storage):
        try:
            create_engine(storage).dispose()  # resolves the dialect and imports its driver; connects to nothing
        except ImportError as exc:
            raise MissingDependencyError(f"`storage` {storage}: its database driver is not installed ({exc})") from None
    if _sqlite_file(storage):
        _check_directory(storage, _sqlite_file(storage))


def _sqlite_file(storage: str) -> Path | None:
    """The file of a sqlite:///FILE URL; None for any other storage (an in-memory SQLite included)."""
    if storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        return Path(storage[len("sqlite:///"):])
    return None


def _journal_file(storage: str) -> Path:
    """The journal file `storage` names, checked: a journal's suffix, in a writable directory,
    and empty or a journal already."""
    path = Path(storage)
    if path.suffix in _SQLITE_SUFFIXES:
        raise InputError(f"`storage` {storage}: a database needs a URL: sqlite:///{storage}")
    if path.suffix not in JOURNAL_SUFFIXES:
        raise InputError(f"`storage` {storage!r}: neither a database URL nor a journal file name (e.g. {_EXAMPLES})")
    _check_directory(storage, path)
    _check_journal(storage, path)
    return path


def _check_journal(storage: str, path: Path) -> None:
    """A journal is JSON lines: a file whose first line is no JSON object is not one, and
    Optuna would append to it before noticing."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        with path.open("rb") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError) as exc:
        first = exc
    if not isinstance(first, dict):
        raise InputError(f"`storage` {storage}: not an Optuna journal (its first line is no JSON object)")


def _check_directory(storage: str, path: Path) -> None:
    """The file `path` of `storage` can be created or opened for writing where it is."""
    from planner._files import ensure_writable

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"`storage` {storage}: {path} is a directory")
    if not parent.is_dir():
        raise InputError(f"`storage` {storage}: no directory {parent}")
    try:
        ensure_writable(path)
    except InputError as exc:
        raise InputError(f"`storage` {storage}: {exc}") from None


@contextlib.contextmanager
def storage_errors(storage: str | None):
    """SQLAlchemy's failures (a bad URL, an unknown database, one that cannot be opened or is
    locked) as one InputError naming the storage."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        yield
    except NoSuchModuleError:
        scheme = str(storage).split("://")[0]
        raise InputError(f"`storage` {storage}: SQLAlchemy knows no database '{scheme}' ({_EXAMPLES})") from None
    except ArgumentError:
        raise InputError(f"`storage` {storage!r}: not a database URL ({_EXAMPLES})") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise InputError(f"`storage` {storage}: {reason}") from None
