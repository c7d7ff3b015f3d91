"""Polling backend: compare every tree with the index every `interval` seconds.

For platforms without a native monitor, file systems that do not deliver notifications (NFS, SMB,
some FUSE and container mounts), or when `FSMONITOR_BACKEND` is `polling`. Changes are detected by
(mtime in nanoseconds, size), so a change within the same second is seen (the original compared
whole seconds only). Latency is up to one interval and every pass costs a full tree listing, so
keep the interval well above the time one pass takes (see bench/bench_rescan.py).

A file still being written may be reported mid-write; the next pass reports it again once its
mtime or size changed (polling cannot see a close). `scandir` is injectable so that the diff logic
(`pathscanner.scan_tree`) is tested without sleeping.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from fileconveyor.fsmonitor.common import TreeMonitor

log = logging.getLogger(__name__)


class PollingMonitor(TreeMonitor):
    is_native = False
    name = "polling"

    def __init__(self, *args: Any, interval: float = 10.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interval = interval
        self._wakeup = threading.Event()
        self._scanning = False

    def _wake(self) -> None:
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stop_event.is_set():
            with self._lock:
                self._scanning = True
                self._wakeup.clear()
            todo = self._take_requests() or list(self.trees)
            try:
                for tree in todo:
                    if self._stop_event.is_set():
                        break
                    self.scan(tree)
            finally:
                self._scanning = False
            self._wakeup.wait(self.interval)

    def _backend_idle(self) -> bool:
        with self._lock:
            return not self._requests and not self._scanning
