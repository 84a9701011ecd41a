"""Atomic writes: concurrent writers of one path and a reader that never sees a partial file."""

import multiprocessing
import os
import stat

import pytest

from planner._files import ensure_writable, ensure_writable_dir, write_atomic
from planner.errors import InputError

WRITERS, WRITES = 3, 60


def _payload(writer: int, n: int) -> bytes:
    # ~200 KB, every line naming its writer and write: a mixed or cut file cannot pass for a whole one
    return "".join(f"{writer} {n} {i}\n" for i in range(20_000)).encode()


def _is_whole(data: bytes) -> bool:
    lines = data.decode().splitlines()
    first = lines[0].split()[:2] if lines else None
    return bool(lines) and data == _payload(int(first[0]), int(first[1]))


def _write_many(path: str, writer: int) -> None:
    for n in range(WRITES):
        write_atomic(path, _payload(writer, n))


def test_concurrent_writers_never_show_a_partial_file(tmp_path):
    path = tmp_path / "plan.yaml"
    write_atomic(path, _payload(9, 0))
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(str(path), w)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    reads = 0
    while any(p.is_alive() for p in writers) or reads < 10:
        assert _is_whole(path.read_bytes())
        reads += 1
    for process in writers:
        process.join()
        assert process.exitcode == 0  # no failed save
    assert _is_whole(path.read_bytes())
    assert [p.name for p in tmp_path.iterdir()] == ["plan.yaml"]  # no temporary file left


def test_permissions_follow_the_umask_and_scripts_are_executable(tmp_path):
    mask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.yaml", "x: 1\n")
        write_atomic(tmp_path / "serve.sh", "#!/bin/sh\n", executable=True)
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.yaml").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "serve.sh").stat().st_mode) == 0o755


def test_unwritable_places_are_one_line_and_leave_nothing(tmp_path):
    with pytest.raises(InputError, match=r"no/such/dir/x.yaml: cannot write \(No such file or directory\)"):
        write_atomic(tmp_path / "no" / "such" / "dir" / "x.yaml", "x")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="cannot write"):
        write_atomic(tmp_path / "d", "x")  # a directory stands where the file would go
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list((tmp_path / "d").iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_place_that_takes_no_new_file_is_refused_before_the_work():
    """os.access calls /proc writable for root; the checks try to create a file, as the write will."""
    with pytest.raises(InputError, match=r"^/proc/x.yaml: cannot write \("):
        ensure_writable("/proc/x.yaml")
    with pytest.raises(InputError, match=r"^/proc/adapter: cannot write \("):
        ensure_writable_dir("/proc/adapter")
