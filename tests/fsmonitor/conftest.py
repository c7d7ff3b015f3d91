"""Fixtures for the monitor tests: a callback that collects events, and monitors that are always
stopped and checked for leaked threads. Tests wait on conditions (`wait_for`), never on sleeps."""
from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from fileconveyor.fsmonitor.base import Event, FSEvent
from fileconveyor.fsmonitor.common import TreeMonitor
from fileconveyor.fsmonitor.inotify import InotifyMonitor
from fileconveyor.fsmonitor.polling import PollingMonitor

TIMEOUT = 10.0


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll `predicate` (cheap, in-process state) until true; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


#: The start of a script run in a child process (`python -c`): its own bounded `wait`.
CHILD_PRELUDE = """
import json, logging, os, sys, time
def wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
    return pred()
"""

#: Capabilities a root child drops so that file permissions apply to it (mode 000 is unreadable).
_DAC = "-dac_override,-dac_read_search"


def without_permission_overrides() -> list[str]:
    """Command prefix that runs a child under which mode 000 means unreadable even for root
    (`setpriv`, util-linux); [] when not root. Skips the test when it cannot be done."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's permission overrides in a child")
    return ["setpriv", "--bounding-set", _DAC, "--inh-caps", _DAC]


class Collector:
    """The pipeline stand-in: records every delivered batch under a Condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[FSEvent] = []
        self.batches = 0
        self.fail_next = 0
        self.gate: threading.Event | None = None

    def __call__(self, batch: Any) -> None:
        if self.gate is not None:
            self.gate.wait(TIMEOUT * 3)
        with self.cond:
            if self.fail_next > 0:
                self.fail_next -= 1
                self.cond.notify_all()
                raise RuntimeError("pipeline queue unavailable (test)")
            self.events.extend(batch)
            self.batches += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[list[FSEvent]], bool], timeout: float = TIMEOUT, what: str = "events") -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.events), timeout):
                got = self.events if len(self.events) <= 20 else f"{len(self.events)} events, last {self.events[-5:]}"
                raise AssertionError(f"timed out waiting for {what:.300}; got {got}")

    def wait_paths(self, expected: dict[str, Event | frozenset[Event]], timeout: float = TIMEOUT) -> None:
        """Wait until the last event of each path in `expected` is the expected one (or one of)."""
        def done(evs: list[FSEvent]) -> bool:
            state = final(evs)
            return all(state.get(p) in (e if isinstance(e, frozenset) else {e}) for p, e in expected.items())
        self.wait(done, timeout, what=f"final events {expected}")

    def take(self) -> list[FSEvent]:
        with self.cond:
            events, self.events = self.events, []
            return events


PRESENT = frozenset({Event.CREATED, Event.MODIFIED})
"""A new file found by a scan while its writer was still closing it is reported CREATED by the
scan and then MODIFIED by the close, when the CREATED was already delivered: both are right."""


def final(events: list[FSEvent]) -> dict[str, Event]:
    """Path -> last event: what the pipeline ends up doing once it merged everything."""
    state: dict[str, Event] = {}
    for event in events:
        state[event.path] = event.event
    return state


def pairs(events: list[FSEvent]) -> set[tuple[str, Event]]:
    return {(e.path, e.event) for e in events}


BACKENDS = {
    "inotify": lambda cb, idx, ignored, **kw: InotifyMonitor(cb, idx, ignored, **kw),
    "polling": lambda cb, idx, ignored, **kw: PollingMonitor(cb, idx, ignored, interval=0.2, **kw),
}


class Harness:
    """Creates monitors for one backend; stops every one of them at teardown."""

    def __init__(self, backend: str, tmp_path: Any) -> None:
        self.backend = backend
        self.index = str(tmp_path / "fsmonitor.db")
        self.crashes: list[BaseException] = []
        self.monitors: list[TreeMonitor] = []

    def create(self, collector: Collector, ignored: tuple[str, ...] = (".svn", "CVS"), **kw: Any) -> TreeMonitor:
        monitor = BACKENDS[self.backend](collector, self.index, ignored, on_crash=self.crashes.append, **kw)
        self.monitors.append(monitor)
        return monitor

    def start(self, tree: Any, collector: Collector, ignored: tuple[str, ...] = (".svn", "CVS"),
              monitor: TreeMonitor | None = None, **kw: Any) -> TreeMonitor:
        if monitor is None:
            monitor = self.create(collector, ignored, **kw)
        monitor.add_tree(str(tree))
        monitor.start()
        self.settle(monitor)
        return monitor

    def settle(self, monitor: TreeMonitor) -> None:
        """Wait until the monitor has reported everything it can see now. A polling monitor is
        asked for a pass first, so 'nothing reported' means nothing changed, not 'not looked yet'."""
        if not monitor.is_native:
            wait_for(lambda: monitor.is_idle, what="monitor idle")
            monitor.rescan()
        wait_for(lambda: monitor.is_idle, what="monitor idle")

    def stop(self, monitor: TreeMonitor) -> None:
        monitor.stop()
        self.monitors.remove(monitor)

    def close(self) -> None:
        for monitor in list(self.monitors):
            self.stop(monitor)
        leaked = [t.name for t in threading.enumerate() if t.name.startswith(("inotify-", "polling-"))]
        assert not leaked, f"threads left after stop(): {leaked}"
        assert not self.crashes, f"monitor threads crashed: {self.crashes}"


@pytest.fixture(params=sorted(BACKENDS))
def harness(request: Any, tmp_path: Any) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path)
    yield h
    h.close()


@pytest.fixture
def inotify(tmp_path: Any) -> Iterator[Harness]:
    h = Harness("inotify", tmp_path)
    yield h
    h.close()


@pytest.fixture
def tree(tmp_path: Any) -> Any:
    root = tmp_path / "tree"
    root.mkdir()
    return root
