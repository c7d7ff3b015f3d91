"""One behaviour suite for every backend that runs here (inotify, polling), on a real file system."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from fileconveyor.fsmonitor.base import Event, FSEvent

from .conftest import BACKENDS, PRESENT, Collector, Harness, final, pairs

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED


def write(path: Path, text: str = "x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_first_run_reports_every_file_once_as_created(harness: Harness, tree: Path) -> None:
    files = [write(tree / "a.css"), write(tree / "img" / "b.png"), write(tree / "img" / "deep" / "c.js")]
    (tree / "empty").mkdir()
    got = Collector()
    harness.start(tree, got)
    assert sorted((e.path, e.event) for e in got.events) == sorted((f, C) for f in files)


def test_restart_on_unchanged_tree_reports_nothing(harness: Harness, tree: Path) -> None:
    write(tree / "a"), write(tree / "d" / "b")
    harness.stop(harness.start(tree, Collector()))
    again = Collector()
    harness.start(tree, again)
    assert again.events == []


def test_changes_while_stopped_are_found_at_start(harness: Harness, tree: Path) -> None:
    kept, same_size, gone = write(tree / "kept"), write(tree / "d" / "same", "abc"), write(tree / "d" / "gone")
    harness.stop(harness.start(tree, Collector()))
    st = os.stat(same_size)
    Path(same_size).write_text("xyz")  # same size: only mtime_ns tells
    os.utime(same_size, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    os.unlink(gone)
    new = write(tree / "new" / "n")
    got = Collector()
    harness.start(tree, got)
    assert pairs(got.events) == {(same_size, M), (gone, D), (new, C)}
    assert kept not in final(got.events)


def test_create_modify_touch_delete(harness: Harness, tree: Path) -> None:
    got = Collector()
    monitor = harness.start(tree, got)
    path = write(tree / "f.txt", "one")
    got.wait_paths({path: PRESENT})
    assert got.events[0] == FSEvent(path, C)
    with open(path, "a") as f:
        f.write("two")
    got.wait(lambda evs: (path, M) in pairs(evs), what="MODIFIED")
    got.take()
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # what `touch` does
    got.wait_paths({path: M})
    os.chmod(path, 0o600)  # attributes we do not sync: nothing to report
    harness.settle(monitor)
    got.take()
    os.unlink(path)
    got.wait_paths({path: D})
    harness.settle(monitor)
    assert final(got.events) == {path: D}


def test_editor_save_by_rename_reports_the_original(harness: Harness, tree: Path) -> None:
    original = write(tree / "style.css", "a{}")
    got = Collector()
    monitor = harness.start(tree, got)
    got.take()
    temp = write(tree / ".style.css.swp", "b{color:red}")
    os.rename(temp, original)
    got.wait_paths({original: M})
    harness.settle(monitor)
    assert final(got.events).get(temp) in (None, D)
    assert final(got.events)[original] == M


def test_move_file_within_tree(harness: Harness, tree: Path) -> None:
    old = write(tree / "a" / "old.txt")
    (tree / "b").mkdir()
    got = Collector()
    harness.start(tree, got)
    got.take()
    new = str(tree / "b" / "new.txt")
    os.rename(old, new)
    got.wait_paths({old: D, new: C})


def test_move_directory_within_tree_then_write_into_it(harness: Harness, tree: Path) -> None:
    olds = [write(tree / "d" / "x"), write(tree / "d" / "sub" / "y")]
    got = Collector()
    harness.start(tree, got)
    got.take()
    os.rename(tree / "d", tree / "e")
    news = [str(tree / "e" / "x"), str(tree / "e" / "sub" / "y")]
    got.wait_paths({**{p: D for p in olds}, **{p: C for p in news}})
    later = write(tree / "e" / "sub" / "later")
    got.wait_paths({later: PRESENT})


def test_move_directory_in_and_out(harness: Harness, tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    inside_names = ["x", "sub/y", "sub/deeper/z"]
    for name in inside_names:
        write(outside / "d" / name)
    got = Collector()
    monitor = harness.start(tree, got)
    os.rename(outside / "d", tree / "d")
    got.wait_paths({str(tree / "d" / n): C for n in inside_names})
    write(tree / "d" / "sub" / "new")
    got.wait_paths({str(tree / "d" / "sub" / "new"): PRESENT})
    got.take()
    os.rename(tree / "d", outside / "back")
    expected = {str(tree / "d" / n): D for n in inside_names + ["sub/new"]}
    got.wait_paths(expected)
    write(outside / "back" / "sub" / "after-leaving")  # no longer ours
    harness.settle(monitor)
    assert set(final(got.events)) == set(expected)


def test_mkdir_p_then_immediate_writes_lose_nothing(harness: Harness, tree: Path) -> None:
    got = Collector()
    harness.start(tree, got)
    expected: dict[str, frozenset[Event]] = {}
    for i in range(20):
        deep = tree / f"r{i}" / "a" / "b" / "c"
        os.makedirs(deep)
        for level in (deep.parent.parent, deep.parent, deep):
            expected[write(level / "f.txt", str(i))] = PRESENT
    got.wait_paths(expected, timeout=20)


def test_ignored_directories_at_any_depth(harness: Harness, tree: Path) -> None:
    write(tree / ".svn" / "entries"), write(tree / "lib" / ".svn" / "deep" / "entries")
    visible = write(tree / "lib" / "ok.js")
    got = Collector()
    monitor = harness.start(tree, got)
    assert pairs(got.events) == {(visible, C)}
    write(tree / "lib" / ".svn" / "deep" / "live")
    os.makedirs(tree / "new" / "CVS" / "x")
    write(tree / "new" / "CVS" / "x" / "f")
    marker = write(tree / "new" / "marker")
    got.wait_paths({marker: PRESENT})
    harness.settle(monitor)
    assert set(final(got.events)) == {visible, marker}


def test_deleting_a_directory_reports_only_its_files(harness: Harness, tree: Path) -> None:
    img = [write(tree / "img" / "a.png"), write(tree / "img" / "s" / "b.png")]
    img2 = write(tree / "img2" / "c.png")
    img_x = write(tree / "img_x" / "d.png")  # '_' is a LIKE wildcard: must not match either
    got = Collector()
    monitor = harness.start(tree, got)
    got.take()
    for path in img:
        os.unlink(path)
    os.rmdir(tree / "img" / "s")
    os.rmdir(tree / "img")
    got.wait_paths({p: D for p in img})
    harness.settle(monitor)
    assert set(final(got.events)) == set(img)
    assert img2 and img_x


def test_files_that_vanish_at_once_do_not_stop_the_monitor(harness: Harness, tree: Path) -> None:
    got = Collector()
    monitor = harness.start(tree, got)
    transient = []
    for i in range(100):
        transient.append(write(tree / f"4913-{i}"))
        os.unlink(transient[-1])
    survivor = write(tree / "survivor")
    got.wait_paths({survivor: PRESENT})
    harness.settle(monitor)
    assert all(final(got.events).get(p) in (None, D) for p in transient)


def test_non_utf8_name_warns_once_and_is_skipped(harness: Harness, tree: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="fileconveyor.fsmonitor")
    write(tree / "before.txt")
    os.close(os.open(os.fsencode(tree) + b"/bad-old\xff.txt", os.O_CREAT | os.O_WRONLY, 0o644))
    got = Collector()
    monitor = harness.start(tree, got)
    fd = os.open(os.fsencode(tree) + b"/bad\xff.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"data")
    os.close(fd)
    after = write(tree / "after.txt")
    got.wait_paths({after: PRESENT})
    harness.settle(monitor)
    harness.settle(monitor)  # a polling monitor looks twice more: still one warning per name
    assert set(final(got.events)) == {str(tree / "before.txt"), after}
    warnings = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert any("bad\\xff.txt" in w for w in warnings) and any("bad-old\\xff.txt" in w for w in warnings)


def test_symlinks_to_files_count_symlinks_to_dirs_are_not_descended(harness: Harness, tree: Path, tmp_path: Path) -> None:
    target_file = write(tmp_path / "elsewhere" / "t.txt")
    write(tmp_path / "elsewhere" / "d" / "inner.txt")
    os.symlink(target_file, tree / "link.txt")
    os.symlink(tmp_path / "elsewhere" / "d", tree / "linkdir")
    got = Collector()
    harness.start(tree, got)
    assert pairs(got.events) == {(str(tree / "link.txt"), C)}


def test_failed_delivery_is_retried_and_index_waits_for_it(harness: Harness, tree: Path) -> None:
    got = Collector()
    monitor = harness.start(tree, got)
    got.fail_next = 2
    path = write(tree / "f")
    got.wait_paths({path: PRESENT}, timeout=15)
    harness.settle(monitor)
    assert monitor.scanner.get((str(tree), "f")) is not None


def test_index_is_not_updated_when_delivery_never_succeeds(harness: Harness, tree: Path) -> None:
    path = write(tree / "f")
    got = Collector()
    got.fail_next = 10**6
    failing = BACKENDS[harness.backend](got, harness.index, ())
    failing.add_tree(str(tree))
    failing.start()
    got.wait(lambda evs: got.fail_next < 10**6, what="a delivery attempt")
    failing.stop()
    again = Collector()
    harness.start(tree, again)
    assert pairs(again.events) == {(path, C)}
