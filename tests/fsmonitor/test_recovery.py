"""Trees that go away, come back, cannot be read, are symlinks or unmounted, and paths the daemon
writes itself: on every backend here, on a real file system (issue 7 items 4 and 9, issue 11 #135).

Each test failed before the monitor re-checked its roots: a deleted and re-created root, a root
missing at start, an unmounted one, an unreadable directory that became readable were never watched
again until a restart, and a symlinked root lost its live events on inotify."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from fileconveyor.fsmonitor.base import Event

from .conftest import (CHILD_PRELUDE, PRESENT, Collector, Harness, final, pairs, wait_for,
                       without_permission_overrides)

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED
REPO = Path(__file__).resolve().parents[2]
#: Seconds between rechecks of missing roots and unreadable directories in these tests.
RECHECK = 0.2


def write(path: Path, text: str = "x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def unwatched(monitor: Any) -> dict[str, str]:
    return {u["path"]: u["reason"] for u in monitor.runtime_status()["unwatched"]}


def test_symlinked_root_reports_live_events_under_its_configured_path(harness: Harness, tmp_path: Path) -> None:
    """#135: the watch on a symlinked root failed (IN_DONT_FOLLOW); only the first scan worked."""
    real = tmp_path / "real"
    write(real / "old.txt")
    link = tmp_path / "link"
    link.symlink_to(real)
    got = Collector()
    monitor = harness.start(link, got)
    assert pairs(got.events) == {(str(link / "old.txt"), C)}
    top = write(link / "new.txt")
    (link / "newdir").mkdir()
    deep = write(link / "newdir" / "f.txt")
    got.wait_paths({top: PRESENT, deep: PRESENT})
    harness.settle(monitor)
    assert all(e.path.startswith(f"{link}/") for e in got.events), got.events
    assert monitor.scanner.get((str(link), "new.txt")) is not None  # the index keeps the configured prefix
    status = monitor.runtime_status()
    assert status["resolved_roots"] == {str(link): str(real)}
    assert status["unwatched"] == []


def test_symlinked_root_re_pointed_is_watched_at_its_new_target(harness: Harness, tmp_path: Path) -> None:
    """No event tells a monitor that a link it watches through now points elsewhere: the recheck does."""
    old_target, new_target = tmp_path / "release-1", tmp_path / "release-2"
    write(old_target / "app.css", "1")
    write(new_target / "app.css", "2 is longer")
    write(new_target / "new.js")
    link = tmp_path / "current"
    link.symlink_to(old_target)
    got = Collector()
    monitor = harness.start(link, got, recheck_interval=RECHECK)
    got.take()
    swap = tmp_path / "current.tmp"
    swap.symlink_to(new_target)
    os.rename(swap, link)  # how deployments switch releases: atomically
    got.wait_paths({str(link / "app.css"): M, str(link / "new.js"): C})
    wait_for(lambda: monitor.runtime_status()["resolved_roots"] == {str(link): str(new_target)},
             what="the new target in runtime_status")
    write(old_target / "stale.txt")  # the old release is no longer watched
    live = write(new_target / "live.txt")
    got.wait_paths({str(link / "live.txt"): PRESENT})
    harness.settle(monitor)
    assert str(link / "stale.txt") not in final(got.events)
    assert live


def test_root_deleted_and_recreated_is_watched_and_rescanned(harness: Harness, tree: Path) -> None:
    old = write(tree / "d" / "a")
    got = Collector()
    monitor = harness.start(tree, got, recheck_interval=RECHECK)
    shutil.rmtree(tree)  # inotify reports the deletions now; polling once the root is back
    wait_for(lambda: str(tree) in unwatched(monitor), what="the missing root in runtime_status")
    assert monitor.runtime_status()["unwatched"][0]["kind"] == "tree"
    tree.mkdir()
    new = write(tree / "b")
    got.wait_paths({new: PRESENT, old: D})
    wait_for(lambda: not unwatched(monitor), what="the root watched again")
    later = write(tree / "sub" / "c")  # the live watch is back, new directories included
    got.wait_paths({later: PRESENT})


def test_root_moved_away_then_recreated(harness: Harness, tree: Path, tmp_path: Path) -> None:
    """The moved root's watches must not report the moved directory's changes under the old path;
    its files are gone from the tree only once a new root is scanned (not while it is missing)."""
    old = write(tree / "d" / "a")
    got = Collector()
    monitor = harness.start(tree, got, recheck_interval=RECHECK)
    got.take()
    os.rename(tree, tmp_path / "moved")
    wait_for(lambda: str(tree) in unwatched(monitor), what="the moved root in runtime_status")
    write(tmp_path / "moved" / "d" / "later")
    os.makedirs(tree / "d")  # the same names as before, in a new root
    write(tree / "d" / "later", "new root")
    got.wait_paths({str(tree / "d" / "later"): PRESENT, old: D})
    harness.settle(monitor)
    assert set(final(got.events)) == {old, str(tree / "d" / "later")}


def test_root_missing_at_start_is_watched_once_created(harness: Harness, tree: Path) -> None:
    missing = tree / "not-yet"
    got = Collector()
    monitor = harness.create(got, recheck_interval=RECHECK)
    monitor.add_tree(str(missing))  # raised MonitorError before: the daemon could not start
    monitor.start()
    harness.settle(monitor)
    assert "does not exist" in unwatched(monitor)[str(missing)]
    assert got.events == []
    first = write(missing / "f")
    got.wait_paths({first: PRESENT})
    wait_for(lambda: not unwatched(monitor), what="the root watched")
    second = write(missing / "g")
    got.wait_paths({second: PRESENT})


def test_excluded_paths_are_never_reported(harness: Harness, tree: Path) -> None:
    """Item 4: a destination inside the tree (and the daemon's state) must never feed itself."""
    write(tree / "cdn" / "published.txt")
    write(tree / "fsmonitor.db", "state")
    visible = write(tree / "site.css")
    got = Collector()
    monitor = harness.start(tree, got, excluded=[str(tree / "cdn"), str(tree / "fsmonitor.db")])
    assert pairs(got.events) == {(visible, C)}
    write(tree / "cdn" / "new.txt")
    write(tree / "cdn" / "deeper" / "x.txt")
    write(tree / "fsmonitor.db", "changed state")
    marker = write(tree / "marker")
    got.wait_paths({marker: PRESENT})
    harness.settle(monitor)
    assert set(final(got.events)) == {visible, marker}
    assert monitor.runtime_status()["excluded"] == sorted([str(tree / "cdn"), str(tree / "fsmonitor.db")])


def test_excluded_path_given_resolved_below_a_symlinked_root(harness: Harness, tmp_path: Path) -> None:
    real = tmp_path / "real"
    write(real / "cdn" / "published.txt")
    link = tmp_path / "link"
    link.symlink_to(real)
    got = Collector()
    monitor = harness.start(link, got, excluded=[str(real / "cdn")])
    write(link / "cdn" / "new.txt")
    marker = write(link / "marker")
    got.wait_paths({marker: PRESENT})
    harness.settle(monitor)
    assert set(final(got.events)) == {marker}
    assert monitor.runtime_status()["excluded"] == [str(link / "cdn")]


def test_excluded_path_turned_into_a_symlink_into_the_tree_is_excluded(harness: Harness, tree: Path,
                                                                        tmp_path: Path) -> None:
    """A destination re-pointed into a tree while the daemon runs (check-config saw it outside)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (tree / "cdn").mkdir()
    got = Collector()
    monitor = harness.start(tree, got, excluded=[str(dest)], recheck_interval=RECHECK)
    dest.rmdir()
    dest.symlink_to(tree / "cdn")
    wait_for(lambda: monitor.runtime_status()["excluded"] == [str(tree / "cdn")], what="the new exclusion")
    write(dest / "published.txt")
    marker = write(tree / "marker")
    got.wait_paths({marker: PRESENT})
    harness.settle(monitor)
    assert set(final(got.events)) == {marker}


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A directory on which the test mounts a small tmpfs; unmounted at teardown."""
    point = tmp_path / "mnt"
    point.mkdir()
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode(errors='replace').strip()}")
    subprocess.run(["umount", str(point)], check=True)
    try:
        yield point
    finally:
        while os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], check=True)


def test_unmounted_root_is_not_read_as_every_file_deleted(harness: Harness, mount_point: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    kept, gone = write(mount_point / "kept"), write(mount_point / "d" / "gone")
    got = Collector()
    monitor = harness.start(mount_point, got, recheck_interval=RECHECK)
    got.take()
    subprocess.run(["umount", str(mount_point)], check=True)
    wait_for(lambda: "unmounted" in unwatched(monitor).get(str(mount_point), ""), what="the unmounted root")
    harness.settle(monitor)
    harness.settle(monitor)  # a polling monitor looks at the empty mount point twice more
    assert got.events == [], "an unmounted tree was reported as deleted"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    write(mount_point / "kept", "after the remount")
    got.wait_paths({kept: PRESENT, gone: D})
    wait_for(lambda: not unwatched(monitor), what="the remounted root watched")
    live = write(mount_point / "live")
    got.wait_paths({live: PRESENT})


_UNREADABLE_SCRIPT = CHILD_PRELUDE + textwrap.dedent("""
    backend, base = sys.argv[1], sys.argv[2]
    if backend == "inotify":
        from fileconveyor.fsmonitor.inotify import InotifyMonitor as Monitor
        kw = {}
    else:
        from fileconveyor.fsmonitor.polling import PollingMonitor as Monitor
        kw = {"interval": 0.2}
    events = []
    m = Monitor(events.extend, os.path.join(base, "fsmonitor.db"), recheck_interval=0.2, **kw)
    t1, t2 = os.path.join(base, "t1"), os.path.join(base, "t2")
    def status():
        report = getattr(m, "runtime_status", None)
        return {u["path"]: u["reason"] for u in report()["unwatched"]} if report else None
    m.add_tree(t1)
    m.add_tree(t2)
    m.start()
    wait(lambda: m.is_idle)
    if backend == "polling":
        m.rescan()
        wait(lambda: m.is_idle)
    initial = sorted(e.path for e in events)
    unreadable = status()
    os.chmod(os.path.join(t1, "locked"), 0o755)
    os.chmod(t2, 0o755)
    recovered = {os.path.join(t1, "locked", "f"), os.path.join(t2, "h")}
    wait(lambda: recovered <= {e.path for e in events})
    live = os.path.join(t1, "locked", "live")
    if recovered <= {e.path for e in events}:
        with open(live, "w") as f:
            f.write("x")
        wait(lambda: live in {e.path for e in events})
    wait(lambda: not status())
    after = status()
    m.stop()
    print(json.dumps({"initial": initial, "events": sorted({e.path for e in events}),
                      "unreadable": unreadable, "after": after}))
""")


@pytest.mark.parametrize("backend", ["inotify", "polling"])
def test_unreadable_directory_and_root_are_scanned_once_readable(backend: str, tmp_path: Path) -> None:
    """Runs in a child without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so that mode 000 means
    unreadable even for root (the child may still chmod: it owns the directories)."""
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    visible, hidden, later = write(t1 / "ok" / "g"), write(t1 / "locked" / "f"), write(t2 / "h")
    os.chmod(t1 / "locked", 0)
    os.chmod(t2, 0)
    prefix = without_permission_overrides()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        run = subprocess.run([*prefix, sys.executable, "-c", _UNREADABLE_SCRIPT, backend, str(tmp_path)],
                             capture_output=True, text=True, timeout=60, env=env)
    finally:
        os.chmod(t1 / "locked", 0o755)
        os.chmod(t2, 0o755)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["initial"] == [visible]
    assert result["events"] == sorted([visible, hidden, later, str(t1 / "locked" / "live")]), run.stderr[-2000:]
    assert result["unreadable"] is not None and set(result["unreadable"]) == {str(t1 / "locked"), str(t2)}
    assert all("Permission denied" in reason for reason in result["unreadable"].values())
    assert result["after"] == {}


_LOCKED_WHILE_WATCHED_SCRIPT = CHILD_PRELUDE + textwrap.dedent("""
    from fileconveyor.fsmonitor.inotify import InotifyMonitor
    base = sys.argv[1]
    tree, docs = os.path.join(base, "tree"), os.path.join(base, "tree", "docs")
    events = []
    m = InotifyMonitor(events.extend, os.path.join(base, "fsmonitor.db"), recheck_interval=60)
    m.add_tree(tree)
    m.start()
    wait(lambda: m.is_idle)
    os.chmod(docs, 0)
    wait(lambda: m.is_idle)
    print("locked", flush=True)
    sys.stdin.readline()  # the parent (with its permission overrides) wrote a file into docs
    os.chmod(docs, 0o755)
    during = os.path.join(docs, "during.txt")
    wait(lambda: during in {e.path for e in events})
    m.stop()
    print(json.dumps(sorted({e.path for e in events})), flush=True)
""")


def test_changes_in_a_directory_while_it_was_unreadable_are_found_when_it_is_readable(tmp_path: Path) -> None:
    """inotify: the events in a watched directory made unreadable (chmod 000) could not be examined
    and were dropped, and its chmod back was ignored: the file written meanwhile was never reported.
    The recheck is set to a minute, so only the chmod's IN_ATTRIB can bring it back in time."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to write into a mode 000 directory while the child cannot read it")
    (tmp_path / "tree" / "docs").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([*without_permission_overrides(), sys.executable, "-c",
                              _LOCKED_WHILE_WATCHED_SCRIPT, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        write(tmp_path / "tree" / "docs" / "during.txt", "written while unreadable")
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.chmod(tmp_path / "tree" / "docs", 0o755)
    assert child.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == [str(tmp_path / "tree" / "docs" / "during.txt")], err[-2000:]
