"""The record of temporary names (transporters/temporary.py) under a sweep that runs while an
upload is between creating its marker and locking it: a new worker's first sweep met another
worker's upload in a burst, and that upload failed with ENOENT ("the destination changed
meanwhile"; tests/e2e/test_original_issues.py failed 1 run in 8 under load).
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import time

import pytest

from fileconveyor.transporters import temporary
from fileconveyor.transporters.base import temporary_name
from fileconveyor.transporters.temporary import PARTIAL_MARKER_AGE, PendingTemporaryNames


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def test_a_sweep_between_a_markers_creation_and_its_lock_leaves_it_alone(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pending = PendingTemporaryNames(str(tmp_path / "state"), "local")
    temp = temporary_name(str(tmp_path / "dest" / "a.txt"))
    real_flock = fcntl.flock
    swept: list[int] = []

    def flock_after_a_sweep(fd: int, operation: int) -> None:
        # The uploader's blocking lock of its fresh `.partial-` marker: let another worker's
        # sweep run first, exactly in the window the race needs.
        if operation == fcntl.LOCK_EX and not swept:
            swept.append(pending.sweep(_remove))
        real_flock(fd, operation)

    monkeypatch.setattr(temporary.fcntl, "flock", flock_after_a_sweep)
    with pending.recorded(temp) as forget:
        assert pending.recorded_names() == [temp]
        forget()
    assert swept == [0]


def test_a_partial_marker_left_by_a_dead_writer_is_swept_once_old(tmp_path: pathlib.Path) -> None:
    pending = PendingTemporaryNames(str(tmp_path / "state"), "local")
    os.makedirs(pending.directory)
    fresh = os.path.join(pending.directory, ".partial-fresh")
    old = os.path.join(pending.directory, ".partial-old")
    for path in (fresh, old):
        open(path, "w").close()
    long_ago = time.time() - PARTIAL_MARKER_AGE - 5
    os.utime(old, (long_ago, long_ago))
    pending.sweep(_remove)
    assert os.path.exists(fresh) and not os.path.exists(old)
