"""inotify-only behaviour: close-after-write, links, real queue overflow, watch exhaustion, idle CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fileconveyor.fsmonitor.base import Event

from .conftest import CHILD_PRELUDE, PRESENT, Collector, Harness, final, pairs

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED
REPO = Path(__file__).resolve().parents[2]


def test_many_writes_then_close_is_one_event(inotify: Harness, tree: Path) -> None:
    got = Collector()
    monitor = inotify.start(tree, got)
    path = str(tree / "big.bin")
    with open(path, "wb") as f:
        for _ in range(100):
            f.write(b"x" * 4096)
            f.flush()
    got.wait_paths({path: C})
    inotify.settle(monitor)
    assert got.events == [got.events[0]] and got.events[0].event == C


def test_links_are_reported_without_a_close(inotify: Harness, tree: Path) -> None:
    original = tree / "a.txt"
    original.write_text("a")
    got = Collector()
    inotify.start(tree, got)
    os.link(original, tree / "hard.txt")
    os.symlink(original, tree / "soft.txt")
    got.wait_paths({str(tree / "hard.txt"): C, str(tree / "soft.txt"): C})


def test_real_queue_overflow_triggers_a_rescan_that_loses_nothing(inotify: Harness, tree: Path) -> None:
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    if os.geteuid() != 0 or not os.access(knob, os.W_OK):
        pytest.skip("needs root to lower fs.inotify.max_queued_events for a moment")
    got = Collector()
    got.gate = threading.Event()  # the pipeline is stuck: delivery blocks, the reader falls behind
    old = knob.read_text()
    try:
        knob.write_text("64")
        # The queue size is fixed when the inotify instance is created (in the constructor), so
        # the limit is lowered only for that moment: other inotify users on this machine keep theirs.
        monitor = inotify.create(got, max_pending=1)
    finally:
        knob.write_text(old)
    for d in range(3):
        (tree / f"d{d}").mkdir()
    got.gate.set()
    monitor.add_tree(str(tree))
    monitor.start()
    inotify.settle(monitor)  # every directory is watched before the reader is made to fall behind
    got.gate.clear()
    files = []
    for i in range(300):
        path = tree / f"d{i % 3}" / f"f{i}"
        path.write_text(str(i))
        files.append(str(path))
    got.gate.set()
    got.wait_paths({p: PRESENT for p in files}, timeout=20)
    inotify.settle(monitor)
    assert monitor.overflows >= 1
    assert set(final(got.events)) == set(files)


_WATCH_LIMIT_SCRIPT = CHILD_PRELUDE + textwrap.dedent("""
    from fileconveyor.fsmonitor.inotify import InotifyMonitor
    base = sys.argv[1]
    # This process runs in its own user namespace: the limit below is that namespace's own and
    # does not touch fs.inotify.max_user_watches of anyone else on the machine.
    with open("/proc/sys/user/max_inotify_watches", "w") as f:
        f.write("3")
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))
    logging.getLogger("fileconveyor").addHandler(Keep())
    logging.getLogger("fileconveyor").setLevel(logging.INFO)
    events = []
    small, big = os.path.join(base, "small"), os.path.join(base, "big")
    m = InotifyMonitor(events.extend, os.path.join(base, "fsmonitor.db"), poll_interval=0.2)
    m.add_tree(small)
    m.add_tree(big)
    m.start()
    wait(lambda: m.is_idle)
    initial = sorted(e.path for e in events)
    with open(os.path.join(small, "live.txt"), "w") as f:
        f.write("x")
    with open(os.path.join(big, "d5", "polled.txt"), "w") as f:
        f.write("x")
    wait(lambda: {os.path.join(small, "live.txt"), os.path.join(big, "d5", "polled.txt")} <= {e.path for e in events})
    m.stop()
    print(json.dumps({"polled": sorted(m.polled_trees), "initial": initial,
                      "events": sorted(e.path for e in events), "records": records}))
""")


def test_watch_limit_falls_back_to_polling_for_that_tree(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    files = []
    for i in range(8):
        (big / f"d{i}").mkdir(parents=True)
        (big / f"d{i}" / "f").write_text("x")
        files.append(str(big / f"d{i}" / "f"))
    probe = subprocess.run(["unshare", "-Ur", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a user namespace to lower the watch limit safely: {probe.stderr!r}")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        ["unshare", "-Ur", sys.executable, "-c", _WATCH_LIMIT_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["polled"] == [str(big)]
    assert result["initial"] == sorted(files)
    assert str(small / "live.txt") in result["events"] and str(big / "d5" / "polled.txt") in result["events"]
    errors = [m for level, m in result["records"] if level == "ERROR"]
    assert len(errors) == 1 and "fs.inotify.max_user_watches" in errors[0] and "sysctl" in errors[0]


def test_idle_monitor_uses_no_cpu(inotify: Harness, tree: Path) -> None:
    for i in range(50):
        (tree / f"f{i}").write_text("x")
    monitor = inotify.start(tree, Collector())
    assert monitor.is_idle
    before = time.process_time()
    time.sleep(1.5)  # measuring idle CPU over a span, not waiting for anything
    used = time.process_time() - before
    print(f"idle CPU over 1.5 s: {used:.4f} s")
    assert used < 0.5


def test_moved_directory_keeps_no_stale_watches(inotify: Harness, tree: Path, tmp_path: Path) -> None:
    (tree / "a" / "b").mkdir(parents=True)
    got = Collector()
    monitor = inotify.start(tree, got)
    os.rename(tree / "a", tree / "z")
    os.rename(tree / "z", tmp_path / "gone")
    inotify.settle(monitor)
    watched = set(monitor._path_wd)  # noqa: SLF001 - white-box check of the watch map
    assert watched == {str(tree)}
    assert pairs(got.events) == set()
