"""The path index and the scan's diff logic (pure: a fake scandir, no threads, no sleeps),
and backend selection."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fileconveyor.fsmonitor import MonitorError, get_monitor
from fileconveyor.fsmonitor.base import Event, FSEvent
from fileconveyor.fsmonitor.inotify import InotifyMonitor
from fileconveyor.fsmonitor.pathscanner import (
    DIR_ENTRY,
    SCHEMA_VERSION,
    Entry,
    PathScanner,
    UndecodableNames,
    scan_tree,
)
from fileconveyor.fsmonitor.polling import PollingMonitor

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED


class FakeEntry:
    def __init__(self, directory: str, name: str, value: Any) -> None:
        self.name, self.path, self.value = name, f"{directory}/{name}", value

    def is_dir(self, follow_symlinks: bool = True) -> bool:
        return isinstance(self.value, (dict, PermissionError))

    def is_symlink(self) -> bool:
        return False

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        if isinstance(self.value, OSError):
            raise self.value
        mtime, size = self.value
        return os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, mtime, 0))


def fake_scandir(disk: dict[str, Any]) -> Any:
    """A tree as nested dicts: {name: {…}} is a directory, {name: (mtime_ns, size)} a file,
    {name: PermissionError()} an unreadable directory."""
    def find(path: str) -> Any:
        node: Any = disk
        for part in path.strip("/").split("/")[1:]:
            node = node[part]
        if isinstance(node, OSError):
            raise node
        return node

    class Listing:
        def __init__(self, path: str) -> None:
            self.entries = [FakeEntry(path, n, v) for n, v in find(path).items()]

        def __enter__(self) -> list[FakeEntry]:
            return self.entries

        def __exit__(self, *exc: Any) -> None:
            return None

    return Listing


def diff(disk: dict[str, Any], known: dict[Any, Entry], ignored: frozenset[str] = frozenset()) -> tuple[set[Any], dict[Any, Any]]:
    events: set[tuple[str, Event]] = set()
    ops: dict[Any, Any] = {}
    for evs, chunk_ops in scan_tree("/r", dict(known), ignored, UndecodableNames(), scandir=fake_scandir(disk)):
        events |= {(e.path, e.event) for e in evs}
        ops.update(chunk_ops)
    return events, ops


def test_scan_diff_created_modified_deleted_unchanged() -> None:
    known = {
        ("/r", "same"): Entry(5, 1), ("/r", "changed"): Entry(5, 1), ("/r", "gone"): Entry(5, 1),
        ("/r", "d"): DIR_ENTRY, ("/r/d", "x"): Entry(7, 2), ("/r", "olddir"): DIR_ENTRY, ("/r/olddir", "y"): Entry(1, 1),
    }
    disk = {"same": (5, 1), "changed": (6, 1), "new": (1, 1), "d": {"x": (7, 2), "sub": {"z": (1, 9)}}}
    events, ops = diff(disk, known)
    assert events == {("/r/changed", M), ("/r/gone", D), ("/r/new", C), ("/r/d/sub/z", C), ("/r/olddir/y", D)}
    assert ops[("/r", "changed")] == Entry(6, 1) and ops[("/r", "gone")] is None
    assert ops[("/r", "olddir")] is None and ops[("/r/d", "sub")] == DIR_ENTRY
    assert ("/r", "same") not in ops


def test_scan_same_size_new_mtime_is_modified() -> None:
    events, _ = diff({"f": (2_000_000_001, 3)}, {("/r", "f"): Entry(2_000_000_000, 3)})
    assert events == {("/r/f", M)}


def test_scan_keeps_rows_of_unreadable_directories() -> None:
    known = {("/r", "locked"): DIR_ENTRY, ("/r/locked", "f"): Entry(1, 1)}
    events, ops = diff({"locked": PermissionError(13, "Permission denied")}, known)
    assert events == set() and ops == {}


def test_scan_of_missing_root_reports_no_deletions() -> None:
    def unmounted(path: str) -> Any:
        raise FileNotFoundError(2, "No such file or directory", path)

    known = {("/r", "f"): Entry(1, 1)}
    events = list(scan_tree("/r", known, frozenset(), UndecodableNames(), scandir=unmounted))
    assert events == []


def test_scan_skips_ignored_dirs_and_vanished_files() -> None:
    disk = {".svn": {"entries": (1, 1)}, "ok": (1, 1), "vanished": FileNotFoundError(2, "gone")}
    events, _ = diff(disk, {}, frozenset({".svn"}))
    assert events == {("/r/ok", C)}


def test_index_file_is_private_versioned_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "fsmonitor.db"
    PathScanner(str(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = [r[1] for r in db.execute("PRAGMA table_info(pathscanner)")]
    assert columns == ["path", "filename", "mtime", "size", "is_dir"]


def test_original_index_format_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "fsmonitor.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE pathscanner(path text, filename text, mtime integer)")
    db.commit()
    db.close()
    with pytest.raises(MonitorError, match="fileconveyor upgrade"):
        PathScanner(str(path))


def test_rows_below_a_directory_are_found_by_path_components(tmp_path: Path) -> None:
    scanner = PathScanner(str(tmp_path / "i.db"))
    rows = ["/a/img", "/a/img/s", "/a/img2", "/a/img_x", "/a/imgXs", "/a/img%"]
    scanner.apply([((p, "f"), Entry(1, 1)) for p in rows] + [(("/a", "img"), DIR_ENTRY)])
    assert set(scanner.known_below("/a/img")) == {("/a/img", "f"), ("/a/img/s", "f")}
    scanner.apply([(("/a/img", "f"), None), (("/a/img", "f"), Entry(2, 2))])  # last op wins
    assert scanner.get(("/a/img", "f")) == Entry(2, 2)
    scanner.close()


def test_get_monitor_picks_and_explains(tmp_path: Path, caplog: Any) -> None:
    def callback(batch: Any) -> None:
        return None

    auto = get_monitor("auto", callback, str(tmp_path / "a.db"), ())
    polling = get_monitor("polling", callback, str(tmp_path / "b.db"), (), poll_interval=3.0)
    try:
        assert isinstance(auto, InotifyMonitor) and auto.is_native
        assert isinstance(polling, PollingMonitor) and polling.interval == 3.0 and not polling.is_native
    finally:
        auto.stop()
        polling.stop()
    with pytest.raises(MonitorError, match="polling"):
        get_monitor("fsevents", callback, str(tmp_path / "c.db"), ())
    with pytest.raises(MonitorError, match="auto, inotify, fsevents or polling"):
        get_monitor("kqueue", callback, str(tmp_path / "d.db"), ())


def test_importing_the_package_loads_no_backend() -> None:
    code = "import sys, fileconveyor.fsmonitor; print(sorted(m for m in sys.modules if 'fsevents' in m or 'pyinotify' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"


def test_fsevent_is_a_small_immutable_value() -> None:
    event = FSEvent("/x", C)
    with pytest.raises(AttributeError):
        event.path = "/y"  # type: ignore[misc]
