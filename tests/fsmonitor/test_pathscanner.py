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
    Key,
    Known,
    PathScanner,
    UndecodableNames,
    scan_tree,
)
from fileconveyor.fsmonitor.polling import PollingMonitor

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED


class VanishedDir(FileNotFoundError):
    """A directory when its parent is listed, gone when it is listed itself."""


class FakeEntry:
    def __init__(self, directory: str, name: str, value: Any) -> None:
        self.name, self.path, self.value = name, f"{directory}/{name}", value

    def is_dir(self, follow_symlinks: bool = True) -> bool:
        return isinstance(self.value, (dict, PermissionError, VanishedDir))

    def is_symlink(self) -> bool:
        return False

    def stat(self, follow_symlinks: bool = True) -> os.stat_result:
        if isinstance(self.value, OSError):
            raise self.value
        mtime, size = self.value
        return os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, 0, 0, 0, 0, 0, 0, 0, mtime, 0))


def fake_scandir(disk: dict[str, Any]) -> Any:
    """A tree as nested dicts: {name: {…}} is a directory, {name: (mtime_ns, size)} a file,
    {name: PermissionError()} an unreadable directory, {name: VanishedDir()} one deleted between
    the listings of its parent and of itself."""
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


class Differ:
    """Runs scan_tree over a fake disk against rows in memory (`known_below`) or against the index
    itself (read one directory at a time, as the monitor's scan does)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def index(self, known: dict[Key, Entry]) -> Any:
        if self.kind == "rows in memory":
            return dict(known)
        scanner = PathScanner(":memory:")
        scanner.apply(known.items())
        return scanner

    def ordered(self, disk: dict[str, Any], known: dict[Key, Entry], ignored: frozenset[str] = frozenset()) -> tuple[list[FSEvent], list[Any]]:
        events: list[FSEvent] = []
        ops: list[Any] = []
        for evs, chunk_ops in scan_tree("/r", self.index(known), ignored, UndecodableNames(), scandir=fake_scandir(disk)):
            events.extend(evs)
            ops.extend(chunk_ops)
        return events, ops

    def __call__(self, disk: dict[str, Any], known: dict[Key, Entry], ignored: frozenset[str] = frozenset()) -> tuple[set[Any], dict[Any, Any]]:
        events, ops = self.ordered(disk, known, ignored)
        return {(e.path, e.event) for e in events}, dict(ops)


@pytest.fixture(params=["rows in memory", "index"])
def diff(request: Any) -> Differ:
    return Differ(request.param)


def test_scan_diff_created_modified_deleted_unchanged(diff: Differ) -> None:
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


def test_scan_same_size_new_mtime_is_modified(diff: Differ) -> None:
    events, _ = diff({"f": (2_000_000_001, 3)}, {("/r", "f"): Entry(2_000_000_000, 3)})
    assert events == {("/r/f", M)}


def test_scan_keeps_rows_of_unreadable_directories(diff: Differ) -> None:
    known = {("/r", "locked"): DIR_ENTRY, ("/r/locked", "f"): Entry(1, 1)}
    events, ops = diff({"locked": PermissionError(13, "Permission denied")}, known)
    assert events == set() and ops == {}


def test_scan_of_missing_root_reports_no_deletions(diff: Differ) -> None:
    def unmounted(path: str) -> Any:
        raise FileNotFoundError(2, "No such file or directory", path)

    known = {("/r", "f"): Entry(1, 1)}
    events = list(scan_tree("/r", diff.index(known), frozenset(), UndecodableNames(), scandir=unmounted))
    assert events == []


def test_scan_skips_ignored_dirs_and_vanished_files(diff: Differ) -> None:
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


def test_a_deleted_directory_is_matched_by_path_components_not_prefix(diff: Differ) -> None:
    known = {
        ("/r", "img"): DIR_ENTRY, ("/r/img", "a"): Entry(1, 1), ("/r/img", "s"): DIR_ENTRY, ("/r/img/s", "b"): Entry(1, 1),
        ("/r", "img2"): DIR_ENTRY, ("/r/img2", "c"): Entry(1, 1), ("/r", "img.x"): DIR_ENTRY, ("/r/img.x", "d"): Entry(1, 1),
    }
    events, ops = diff({"img2": {"c": (1, 1)}, "img.x": {"d": (1, 1)}}, known)
    assert events == {("/r/img/a", D), ("/r/img/s/b", D)}
    assert {k for k, e in ops.items() if e is None} == {("/r", "img"), ("/r/img", "a"), ("/r/img", "s"), ("/r/img/s", "b")}


def test_deletions_come_last_and_a_directory_row_goes_after_the_rows_below_it(diff: Differ) -> None:
    """A crash between two index transactions must not leave rows under a directory whose own row
    is gone (or now a file): the next scan would never look there again."""
    known = {("/r", "x"): DIR_ENTRY, ("/r/x", "f"): Entry(1, 1), ("/r", "gone"): DIR_ENTRY, ("/r/gone", "g"): Entry(1, 1),
             ("/r", "old"): Entry(1, 1)}
    events, ops = diff.ordered({"x": (5, 5), "new": (1, 1)}, known)
    assert [(e.path, e.event) for e in events][0] == ("/r/new", C)
    assert {(e.path, e.event) for e in events} == {("/r/new", C), ("/r/old", D), ("/r/x/f", D), ("/r/gone/g", D), ("/r/x", C)}
    keys = [k for k, _ in ops]
    assert keys.index(("/r/x", "f")) < keys.index(("/r", "x")) and dict(ops)[("/r", "x")] == Entry(5, 5)
    assert keys.index(("/r/gone", "g")) < keys.index(("/r", "gone"))


def test_a_directory_that_vanishes_before_it_is_listed_loses_its_files(diff: Differ) -> None:
    known = {("/r", "d"): DIR_ENTRY, ("/r/d", "f"): Entry(1, 1)}
    events, ops = diff({"d": VanishedDir(2, "gone")}, known)
    assert events == {("/r/d/f", D)} and ops == {("/r/d", "f"): None}


class CountingIndex(PathScanner):
    """The index, recording the most rows any one read returned."""

    largest_read = 0

    def children(self, directory: str) -> dict[str, Entry]:
        rows = super().children(directory)
        self.largest_read = max(self.largest_read, len(rows))
        return rows

    def below(self, directory: str, page: int = 2000) -> Any:
        for rows in super().below(directory, page=3):
            self.largest_read = max(self.largest_read, len(rows))
            yield rows


def test_a_scan_reads_the_index_one_directory_or_page_at_a_time() -> None:
    """Memory is bounded by the largest directory (or a page), not by the tree."""
    disk: dict[str, Any] = {f"d{i}": {f"f{j}": (1, 1) for j in range(i + 1)} for i in range(10)}
    known: dict[Key, Entry] = {("/r", f"d{i}"): DIR_ENTRY for i in range(10)}
    known.update({(f"/r/d{i}", f"f{j}"): Entry(1, 1) for i in range(10) for j in range(i + 1)})
    known.update({("/r", "gone"): DIR_ENTRY, **{("/r/gone", f"g{j}"): Entry(1, 1) for j in range(8)}})
    scanner = CountingIndex(":memory:")
    scanner.apply(known.items())
    events = [e for evs, _ in scan_tree("/r", scanner, frozenset(), UndecodableNames(), scandir=fake_scandir(disk)) for e in evs]
    assert sorted(e.path for e in events) == sorted(f"/r/gone/g{j}" for j in range(8))
    assert {e.event for e in events} == {D}
    assert scanner.largest_read == 11  # /r itself: d0..d9 and gone; d9 holds 10, pages hold 3


def test_below_pages_by_components_and_survives_deletes_between_pages() -> None:
    scanner = PathScanner(":memory:")
    rows = {("/a/img", f"f{i}"): Entry(i, 1) for i in range(5)}
    rows.update({("/a/img/s", f"g{i}"): Entry(i, 1) for i in range(4)})
    scanner.apply([*rows.items(), (("/a/img2", "x"), Entry(1, 1)), (("/a/img.s", "y"), Entry(1, 1)), (("/a", "img"), DIR_ENTRY)])
    seen: list[Key] = []
    for page in scanner.below("/a/img", page=2):
        assert len(page) <= 2
        seen.extend(k for k, _ in page)
        scanner.apply((k, None) for k, _ in page)  # what the delivery thread does meanwhile
    assert seen == sorted(rows)


def test_below_the_file_system_root_lists_each_row_once() -> None:
    scanner = PathScanner(":memory:")
    scanner.apply([(("/", "f"), Entry(1, 1)), (("/", "d"), DIR_ENTRY), (("/d", "g"), Entry(1, 1))])
    assert sorted(k for page in scanner.below("/") for k, _ in page) == [("/", "d"), ("/", "f"), ("/d", "g")]


def test_the_monitor_reads_the_index_through_its_uncommitted_ops(tmp_path: Path) -> None:
    """What a scan compares with is the index plus what was reported but not yet committed."""
    monitor = PollingMonitor(lambda batch: None, str(tmp_path / "i.db"), ())
    try:
        monitor.scanner.apply([(("/r", "kept"), Entry(1, 1)), (("/r", "dropped"), Entry(1, 1)),
                               (("/r/d", "old"), Entry(1, 1))])
        monitor.report([], [(("/r", "dropped"), None), (("/r", "added"), Entry(2, 2)),
                            (("/r/d", "old"), None), (("/r/d/e", "new"), Entry(3, 3))])  # not started: not delivered
        known: Known = monitor
        assert known.children("/r") == {"kept": Entry(1, 1), "added": Entry(2, 2)}
        assert sorted(k for page in known.below("/r/d") for k, _ in page) == [("/r/d/e", "new")]
        assert monitor.lookup(("/r", "dropped")) is None and monitor.lookup(("/r", "added")) == Entry(2, 2)
    finally:
        monitor.stop()


def test_a_path_that_changed_type_deletes_everything_below_and_creates_the_file(diff: Differ) -> None:
    """dir -> file: every indexed file below (at any depth) DELETED, the file CREATED, its row
    replacing the directory's; file -> dir: the file DELETED, the files now below it CREATED."""
    known = {("/r", "d"): DIR_ENTRY, ("/r/d", "a"): Entry(1, 1), ("/r/d", "s"): DIR_ENTRY,
             ("/r/d/s", "b"): Entry(1, 1), ("/r", "f"): Entry(1, 1)}
    events, ops = diff({"d": (2, 2), "f": {"c": (3, 3)}}, known)
    assert events == {("/r/d/a", D), ("/r/d/s/b", D), ("/r/d", C), ("/r/f", D), ("/r/f/c", C)}
    assert ops == {("/r/d", "a"): None, ("/r/d", "s"): None, ("/r/d/s", "b"): None,
                   ("/r", "d"): Entry(2, 2), ("/r", "f"): DIR_ENTRY, ("/r/f", "c"): Entry(3, 3)}
