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

A tree is never given up on: a root that is missing, unreadable, unmounted or replaced (deleted and
re-created, its symlink re-pointed) and a directory that cannot be listed are re-checked every few
seconds and scanned again when usable, and `runtime_status()` says what is not watched and why (the
original stopped watching such trees until a restart, silently). A root given as a symlink is
watched through its target, but every path reported (and stored in the index) keeps the configured
prefix, the one the rules and `synced_files.input_file` use. `excluded` paths (what the daemon itself
writes: a local destination, its working directory, its state) are never reported nor descended,
so a destination inside a watched tree cannot feed itself.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import threading
from typing import Any, Callable, Iterable, Sequence

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


#: How many unwatched paths `runtime_status()` lists (thousands of unreadable directories must not
#: bloat the status file); `unwatched_count` gives the total.
UNWATCHED_SHOWN = 100


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
        excluded: Iterable[str] = (),
    ) -> None:
        self.callback = callback
        self.index_path = index_path
        self.ignored_dirs = frozenset(ignored_dirs)
        self.on_crash = on_crash
        #: Absolute paths (directories or files) never reported nor descended, wherever they lie.
        self.excluded = frozenset(excluded)

    @abc.abstractmethod
    def add_tree(self, path: str) -> None:
        """Watch `path` recursively and report what changed since the index last saw it.

        A root that does not exist (yet), cannot be read or is not a directory is not an error:
        it is listed by `runtime_status()` with the reason and watched once it becomes usable.
        Raises MonitorError only for a path that can never be watched (not valid UTF-8)."""

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

    def runtime_status(self) -> dict[str, Any]:
        """What `fileconveyor status` shows about the monitor; JSON-serialisable, safe to call from
        any thread. Keys:

        * `monitor` (backend name), `native` (False for polling);
        * `polled_trees`: trees polled because the native watch failed (inotify watch limit);
        * `overflows`: event queue overflows so far (each caused a rescan);
        * `unwatched`: trees and directories not watched now, each `{"path", "kind" ("tree" or
          "directory"), "reason", "since" (epoch seconds)}`, at most `UNWATCHED_SHOWN` of them,
          and `unwatched_count`, how many there are in all;
        * `resolved_roots`: root as configured -> the directory watched, for roots that are symlinks;
        * `excluded`: paths inside watched trees that are never reported (the daemon's own output).
        """
        return {"monitor": self.name, "native": self.is_native, "polled_trees": [], "overflows": 0,
                "unwatched": [], "unwatched_count": 0, "resolved_roots": {}, "excluded": []}


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
