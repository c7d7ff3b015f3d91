"""macOS FSEvents backend through macfsevents. UNTESTED HERE: no macOS in CI; keep it thin.

FSEvents coalesces, reorders and may drop events (kernel/user "must scan subdirs" flags), so we
do not translate its flags one by one. Each event only says "something changed at or below this
directory": the directory is queued, and every `settle` seconds the queued directories are compared
with the index by the same `pathscanner.scan_tree` every backend uses (CREATED/MODIFIED/DELETED
by mtime_ns and size; a directory moved in/out/within shows up as files created/deleted).

Ignored directories are filtered here too: an event below one is dropped (the original aborted the
whole batch on the first such event). FSEvents reports resolved paths (/private/var for /var, the
target of a symlinked root): they are translated back to the configured root, the prefix the rules
and the index use. Missing, replaced and unreadable roots are handled by the shared `recheck()`. This module is imported only on macOS (`get_monitor`);
importing `fileconveyor.fsmonitor` on Linux never imports macfsevents.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import fsevents  # type: ignore[import-not-found]  # the macfsevents distribution

from fileconveyor.fsmonitor.common import TreeMonitor
from fileconveyor.fsmonitor.pathscanner import is_below

log = logging.getLogger(__name__)


class FSEventsMonitor(TreeMonitor):
    is_native = True
    name = "fsevents"

    def __init__(self, *args: Any, poll_interval: float = 10.0, settle: float = 0.2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settle = settle
        self._wakeup = threading.Event()
        self._scanning = False
        self._observer = fsevents.Observer()
        self._observer_started = False
        self._streams: list[Any] = []
        #: (resolved root, configured root), to name reported paths as configured.
        self._aliases: list[tuple[str, str]] = []

    def add_tree(self, path: str) -> None:
        super().add_tree(path)
        root = os.path.abspath(path)
        resolved = os.path.realpath(root)
        if resolved != root:
            self._aliases.append((resolved, root))
        stream = fsevents.Stream(self._on_event, root, file_events=True)
        self._streams.append(stream)
        self._observer.schedule(stream)

    def _on_event(self, event: Any) -> None:
        path = os.path.dirname(event.name) if not os.path.isdir(event.name) else event.name
        for resolved, root in self._aliases:
            if is_below(path, resolved) and not any(is_below(path, t) for t in self.trees):
                path = os.path.normpath(os.path.join(root, os.path.relpath(path, resolved)))
                break
        if any(part in self.ignored_dirs for part in path.split("/")) or self.is_excluded(path):
            return
        with self._lock:
            self._requests.append(path)
        self._wakeup.set()

    def _wake(self) -> None:
        self._wakeup.set()

    def _run(self) -> None:
        if not self._observer_started:
            self._observer.start()
            self._observer_started = True
        while not self._stop_event.is_set():
            self._wakeup.wait(max(0.0, self.recheck_due() - time.monotonic()))
            self._stop_event.wait(self.settle)  # let FSEvents' bursts arrive together
            with self._lock:
                self._wakeup.clear()
                self._scanning = True
            try:
                todo = self._take_requests() + self.recheck()
                for directory in todo:
                    if not any(d != directory and is_below(directory, d) for d in todo):
                        self.scan(directory)
            finally:
                self._scanning = False

    def _backend_idle(self) -> bool:
        with self._lock:
            return not self._requests and not self._scanning

    def _close(self) -> None:
        for stream in self._streams:
            self._observer.unschedule(stream)
        if self._observer_started:
            self._observer.stop()
            self._observer.join()
