"""The file system monitor contract and the event vocabulary shared by the whole daemon.

A backend translates OS notifications into `FSEvent`s about *files* (never directories: a directory
created, moved in or moved out stands for every file below it, and the backend expands it). It hands
them to one callback, in batches. The callback returns only once the events are durable (committed
to the pipeline queue); only then does the monitor record them in its path index (`fsmonitor.db`),
so that a crash between the two can cause a repeat but never a loss.

Threading model (written once, here): a backend owns one thread that runs `_run()`; `stop()` sets an
event and joins it. Any exception escaping `_run()` is reported through `on_crash` rather than
killing the thread silently (the original's monitor died on vanished files and kept the daemon
running deaf: original issues #94, #141, #143).
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import threading
from typing import Callable, Iterable, Sequence

log = logging.getLogger(__name__)


class Event(enum.IntEnum):
    """What happened to a file. Values as in the original, so old databases read back unchanged."""

    CREATED = 1
    MODIFIED = 2
    DELETED = 4


@dataclasses.dataclass(frozen=True)
class FSEvent:
    """One change to one file: `path` is absolute, as found under the watched tree (not resolved)."""

    path: str
    event: Event


EventBatchCallback = Callable[[Sequence[FSEvent]], None]
"""Receives a batch of events and returns once they are durably queued. May raise; the monitor
then keeps the batch and does not update its index (the next rescan finds the changes again)."""

CrashCallback = Callable[[BaseException], None]


class MonitorError(Exception):
    """A tree cannot be watched; the message says why and what to do."""


class Monitor(abc.ABC):
    """Watches trees and reports file events through one callback.

    Life cycle: `add_tree()` for every tree (before or after `start()`), `start()`, later `stop()`.
    On `add_tree()` the backend first establishes its live watch and then compares the tree with its
    path index, so that changes made while the daemon was down (on a first run: every file) are
    reported; this is the initial sync.
    """

    #: True for OS notification backends (inotify, FSEvents), False for polling.
    is_native: bool = False
    #: Name used in logs and in `status`.
    name: str = "base"

    def __init__(
        self,
        callback: EventBatchCallback,
        index_path: str,
        ignored_dirs: Iterable[str] = (),
        on_crash: CrashCallback | None = None,
    ) -> None:
        self.callback = callback
        self.index_path = index_path
        self.ignored_dirs = frozenset(ignored_dirs)
        self.on_crash = on_crash

    @abc.abstractmethod
    def add_tree(self, path: str) -> None:
        """Watch `path` recursively and report what changed since the index last saw it."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the backend's thread(s)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop and join every thread; pending events are flushed through the callback first."""

    def rescan(self, path: str | None = None) -> None:
        """Compare the index with the disk for `path` (or every tree) and report the differences.

        Used after an event queue overflow and by `fileconveyor` itself after errors."""
        raise NotImplementedError

    @property
    def is_idle(self) -> bool:
        """True when no scan is running and no event is waiting to be delivered (used by tests)."""
        return True


class MonitorThread(threading.Thread):
    """A daemon thread whose uncaught exception is logged and reported, never swallowed."""

    def __init__(self, name: str, target: Callable[[], None], on_crash: CrashCallback | None) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._on_crash = on_crash

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as error:  # noqa: BLE001 - reported, not swallowed
            log.critical("Thread %s died: %s", self.name, error, exc_info=True)
            if self._on_crash is not None:
                self._on_crash(error)
