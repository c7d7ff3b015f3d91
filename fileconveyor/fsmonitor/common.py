"""What every backend shares: the path index, batched delivery, and "index only after commit".

A backend (inotify, polling, FSEvents) only turns what it sees into `report(events, ops)` calls:
events for the pipeline and the index ops that record what it saw. This module

* batches events (up to `max_batch`, or what arrived within `batch_latency` seconds) so that an
  initial scan of 10,000 files is ~20 callbacks, not 10,000;
* calls the callback from ONE delivery thread, in report order, and applies a batch's index ops
  only after the callback returned (the events are durable in the pipeline queue by then); if the
  callback raises, the same batch is retried with backoff and the index is not touched, so a crash
  at any moment causes a repeat, never a loss;
* keeps the not-yet-committed ops in an in-memory overlay (by directory, then name), so a backend
  deciding CREATED vs MODIFIED, or which files a deleted directory held, sees what it already
  reported; scans read the index through it one directory (or one page) at a time (`Known`), so
  a rescan holds one directory's rows, not the tree's;
* drops a CREATED/MODIFIED for a path that already has one waiting (the pipeline reads the file
  when it processes it, so the waiting event already covers the newer content);
* applies backpressure: `report()` blocks while `max_pending` events wait, so a stuck pipeline
  makes the inotify reader fall behind, the kernel queue overflows, and the overflow rescan
  recovers everything, instead of memory growing without bound;
* keeps what is not watched and why (`_unwatched`): a root checked before each scan (missing, not
  a directory, unmounted) and every directory a scan could not list; `recheck()`, run by each
  backend every `recheck_interval` seconds, finds roots that came back or were replaced and
  directories to try again, and a successful scan clears them. A root that was a mount point and
  is not one any more is "unmounted": its empty mount point is not scanned (that would read as
  every file deleted) until something is mounted there again.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import stat as statmod
import threading
import time
from typing import Any, Iterable, Iterator, Sequence

from fileconveyor.fsmonitor.base import (
    CrashCallback,
    Event,
    EventBatchCallback,
    FSEvent,
    Monitor,
    MonitorError,
    MonitorThread,
    UNWATCHED_SHOWN,
)
from fileconveyor.fsmonitor.pathscanner import (
    Entry,
    Key,
    Op,
    PathScanner,
    Scandir,
    UndecodableNames,
    deleted_below,
    is_below,
    scan_tree,
)

log = logging.getLogger(__name__)

_SeqOp = tuple[Key, "Entry | None", int]


UNMOUNTED = ("was unmounted; its mount point is not scanned (that would read as every file deleted) "
             "until it is mounted again (restart File Conveyor if it is no longer meant to be a mount point)")


@dataclasses.dataclass(frozen=True)
class RootState:
    """What a watched root was when it was last watched: a change means it was replaced."""

    resolved: str
    dev: int
    ino: int
    is_mount: bool


@dataclasses.dataclass(frozen=True)
class Unwatched:
    path: str
    is_tree: bool
    reason: str
    since: float


class TreeMonitor(Monitor):
    """Shared implementation of the Monitor contract; subclasses provide `_run` and `_backend_idle`."""

    def __init__(
        self,
        callback: EventBatchCallback,
        index_path: str,
        ignored_dirs: Iterable[str] = (),
        on_crash: CrashCallback | None = None,
        *,
        max_batch: int = 500,
        batch_latency: float = 0.05,
        max_pending: int = 10_000,
        scandir: Scandir = os.scandir,
        excluded: Iterable[str] = (),
        recheck_interval: float = 5.0,
    ) -> None:
        super().__init__(callback, index_path, ignored_dirs, on_crash, excluded)
        self.scanner = PathScanner(index_path)
        self.names = UndecodableNames()
        self.trees: list[str] = []
        self.max_batch = max_batch
        self.batch_latency = batch_latency
        self.max_pending = max(1, max_pending)
        self._scandir = scandir
        self._cond = threading.Condition()
        self._chunks: collections.deque[tuple[list[FSEvent], list[_SeqOp]]] = collections.deque()
        self._pending_events = 0
        self._first_put = 0.0
        self._waiting: dict[str, FSEvent] = {}
        #: directory -> name -> (entry, or None for a deletion; the op's sequence number)
        self._overlay: dict[str, dict[str, tuple[Entry | None, int]]] = {}
        self._seq = 0
        self._in_flight = False
        self._closing = False
        self._stop_event = threading.Event()
        self._threads: list[MonitorThread] = []
        self._started = False
        self._lock = threading.Lock()
        #: Trees (or directories) the backend thread is to scan: added trees and rescans.
        self._requests: list[str] = []
        #: How many times events were lost and every tree rescanned (inotify's queue overflow).
        self.overflows = 0
        #: Trees polled although the backend is native (inotify's watch limit), with the time
        #: of their next pass.
        self.polled_trees: dict[str, float] = {}
        self.recheck_interval = recheck_interval
        self._next_recheck = time.monotonic() + recheck_interval
        #: Each watched root as it was when last watched (kept while it is not watched: its
        #: `is_mount` tells an unmounted tree from a deleted one).
        self._root_states: dict[str, RootState] = {}
        #: Roots and directories not watched now, by path (under `_lock`: status reads it).
        self._unwatched: dict[str, Unwatched] = {}
        #: Unwatched paths (re)noted by the scan that is running (backend thread only).
        self._noted: set[str] = set()
        self._excluded_here: frozenset[str] = frozenset()

    def add_tree(self, path: str) -> None:
        root = self._check_tree(path)
        if root is None:
            return
        with self._lock:
            self.trees.append(root)
            self._requests.append(root)
        self._update_exclusions()
        log.info("Watching %s with the %s monitor", root, self.name)
        self._wake()

    def rescan(self, path: str | None = None) -> None:
        with self._lock:
            self._requests.extend([path] if path else self.trees)
        self._wake()

    def _take_requests(self) -> list[str]:
        with self._lock:
            todo = list(dict.fromkeys(self._requests))
            self._requests.clear()
            return todo

    # -- trees -------------------------------------------------------------------------------

    def _check_tree(self, path: str) -> str | None:
        """Normalised root, or None when it is already watched; MonitorError when unusable."""
        root = os.path.abspath(path)
        try:
            root.encode("utf-8")
        except UnicodeEncodeError:
            raise MonitorError(f"Cannot watch {root!r}: the path is not valid UTF-8") from None
        for tree in self.trees:
            if tree == root:
                return None
            outer, inner = (tree, root) if is_below(root, tree) else (root, tree)
            if is_below(inner, outer) and not self.ignored_dirs & set(os.path.relpath(inner, outer).split("/")):
                log.warning("Watched trees %s and %s overlap; files in both are reported twice", tree, root)
        return root

    def _update_exclusions(self) -> None:
        """`excluded` as paths under the configured roots: each excluded path (as given and
        resolved) that lies below a root (as configured or resolved) is named with the root's
        configured prefix, the one scans and events use."""
        here: set[str] = set()
        for given in self.excluded:
            for path in {os.path.abspath(given), os.path.realpath(given)}:
                for tree in list(self.trees):
                    state = self._root_states.get(tree)
                    for prefix in {tree, state.resolved if state else os.path.realpath(tree)}:
                        if is_below(path, prefix):
                            here.add(os.path.normpath(os.path.join(tree, os.path.relpath(path, prefix))))
        self._excluded_here = frozenset(here)

    def is_excluded(self, path: str) -> bool:
        """Is `path` an excluded path or below one? (A handful of paths: cheap per event.)"""
        return any(is_below(path, excluded) for excluded in self._excluded_here)

    def _root_problem(self, tree: str) -> tuple[str | None, RootState | None]:
        """(why `tree` cannot be watched now, or None; what it is now)."""
        try:
            st = os.stat(tree)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return "does not exist; it is watched again once it is created", None
            return f"cannot be examined ({error.strerror}); it is retried", None
        if not statmod.S_ISDIR(st.st_mode):
            return "is not a directory; it is watched once a directory is there", None
        resolved = os.path.realpath(tree)
        now = RootState(resolved, st.st_dev, st.st_ino, os.path.ismount(resolved))
        before = self._root_states.get(tree)
        if before is not None and before.is_mount and not now.is_mount:
            return UNMOUNTED, None
        if self.is_excluded(tree):
            return "is excluded: File Conveyor writes there itself (a destination or its state)", None
        return None, now

    def _root_ready(self, tree: str) -> bool:
        """Before a tree's root is scanned: True when it can be, with its state recorded; else
        it is noted as not watched (and the backend drops its watches)."""
        problem, state = self._root_problem(tree)
        if problem is not None or state is None:
            self._unwatch(tree)
            self._note_unwatched(tree, problem or "cannot be watched")
            return False
        before = self._root_states.get(tree)
        self._root_states[tree] = state
        resolved_anew = before is None or before.resolved != state.resolved
        if resolved_anew and state.resolved != tree:
            log.info("Watched tree %s is a symlink: watching %s (paths are reported under %s)",
                     tree, state.resolved, tree)
        if resolved_anew or self.excluded:  # (an excluded path may have become a symlink into it)
            self._update_exclusions()
        return True

    def _note_unwatched(self, path: str, reason: str) -> None:
        """Record that `path` is not watched; logged once per reason, not once per retry."""
        self._noted.add(path)
        with self._lock:
            old = self._unwatched.get(path)
            if old is not None and old.reason == reason:
                return
            is_tree = path in self.trees
            self._unwatched[path] = Unwatched(path, is_tree, reason, old.since if old else time.time())
        if is_tree:
            log.error("Watched tree %s %s", path, reason)
        else:
            log.warning("Directory %s is not watched: it %s", path, reason)

    def _clear_unwatched(self, paths: Iterable[str]) -> None:
        with self._lock:
            cleared = [self._unwatched.pop(p) for p in paths if p in self._unwatched]
        for item in cleared:
            if item.is_tree or os.path.isdir(item.path):
                log.info("%s %s is watched again and was compared with the index",
                         "Tree" if item.is_tree else "Directory", item.path)
            else:
                log.info("Directory %s, which was not watched, is gone", item.path)

    def _unwatch(self, tree: str) -> None:
        """Drop the backend's watches of `tree` (it is gone or replaced)."""

    def recheck(self) -> list[str]:
        """Every `recheck_interval` seconds (the backend's thread calls it): the trees and
        directories to scan again now. A root that vanished, was replaced (deleted and
        re-created, moved away, its symlink re-pointed) or unmounted loses its watches here;
        one that came back, and every directory that could not be listed, is returned."""
        now = time.monotonic()
        if now < self._next_recheck:
            return []
        self._next_recheck = now + self.recheck_interval
        if self.excluded:
            self._update_exclusions()  # an excluded path may have become a symlink into a tree
        todo: list[str] = []
        with self._lock:
            unwatched = dict(self._unwatched)
        for tree in list(self.trees):
            problem, state = self._root_problem(tree)
            before = self._root_states.get(tree)
            if tree in unwatched:
                if problem is None:
                    todo.append(tree)
                else:
                    self._note_unwatched(tree, problem)
            elif before is not None and (problem is not None or state != before):
                self._root_gone(tree, problem or (
                    "was replaced (deleted and re-created, moved, or its symlink re-pointed)"))
                if problem is None:
                    todo.append(tree)
        todo.extend(p for p, item in unwatched.items()
                    if not item.is_tree and (self.tree_of(p) or p) not in unwatched)
        return todo

    def _root_gone(self, tree: str, reason: str) -> None:
        """`tree`'s root went away (or was replaced): drop its watches, say so once. Its index
        rows stay: a tree that is gone is not a tree whose files were deleted."""
        self._unwatch(tree)
        self._note_unwatched(tree, reason)

    def recheck_due(self) -> float:
        """Monotonic time of the next `recheck()`."""
        return self._next_recheck

    def runtime_status(self) -> dict[str, Any]:
        with self._lock:
            unwatched = sorted(self._unwatched.values(), key=lambda u: (not u.is_tree, u.path))
        resolved = {t: s.resolved for t, s in list(self._root_states.items()) if s.resolved != t}
        return {
            "monitor": self.name, "native": self.is_native,
            "polled_trees": sorted(list(self.polled_trees)),
            "overflows": self.overflows,
            "unwatched": [{"path": u.path, "kind": "tree" if u.is_tree else "directory", "reason": u.reason,
                           "since": u.since} for u in unwatched[:UNWATCHED_SHOWN]],
            "unwatched_count": len(unwatched),
            "resolved_roots": resolved,
            "excluded": sorted(self._excluded_here),
        }

    def tree_of(self, path: str) -> str | None:
        best = None
        for tree in self.trees:
            if is_below(path, tree) and (best is None or len(tree) > len(best)):
                best = tree
        return best

    # -- what the monitor knows --------------------------------------------------------------

    def lookup(self, key: Key) -> Entry | None:
        """The entry as last reported: the overlay of uncommitted ops first, then the index.
        (The delivery thread writes the index before it drops an op from the overlay.)"""
        with self._cond:
            pending = self._overlay.get(key[0])
            if pending is not None and key[1] in pending:
                return pending[key[1]][0]
        return self.scanner.get(key)

    # `Known` for scan_tree. The overlay is read before the index: an op committed in between is
    # then in both (the overlay's, being the latest, wins); read after, it could be in neither.
    # Only this (the backend's) thread reports ops, so none is added meanwhile.

    def children(self, directory: str) -> dict[str, Entry]:
        with self._cond:
            pending = list(self._overlay.get(directory, {}).items())
        entries = self.scanner.children(directory)
        for name, (entry, _) in pending:
            if entry is None:
                entries.pop(name, None)
            else:
                entries[name] = entry
        return entries

    def below(self, directory: str) -> Iterator[list[tuple[Key, Entry]]]:
        with self._cond:
            pending = {
                (path, name): entry
                for path, names in self._overlay.items() if is_below(path, directory)
                for name, (entry, _) in names.items()
            }
        for rows in self.scanner.below(directory):
            if pending:
                merged: list[tuple[Key, Entry]] = []
                for key, entry in rows:
                    latest = pending.pop(key, entry)
                    if latest is not None:
                        merged.append((key, latest))
                rows = merged
            if rows:
                yield rows
        added = [(k, e) for k, e in pending.items() if e is not None]
        if added:
            yield added

    def scan(self, root: str, before_listing=None) -> bool:  # type: ignore[no-untyped-def]
        """Compare the disk below `root` with what is known and report the differences. False
        when `root` could not be listed (noted as not watched, retried by `recheck`)."""
        if root in self.trees and not self._root_ready(root):
            return False
        if self.is_excluded(root):
            return True  # a directory event below the daemon's own output (FSEvents names those)
        started = time.monotonic()
        reported = 0
        with self._lock:
            before = [p for p in self._unwatched if is_below(p, root)]
        self._noted = set()
        listed = True

        def unlistable(directory: str, error: OSError) -> None:
            nonlocal listed
            if directory == root:
                listed = False
            if directory == root and error.errno in (errno.ENOENT, errno.ENOTDIR) and root not in self.trees:
                # Vanished just after its event (its parent's events report it), or a directory
                # retried after it was unreadable that is gone now: nothing left to watch.
                with self._lock:
                    self._unwatched.pop(root, None)
                return
            self._note_unwatched(directory, f"cannot be listed ({error.strerror}); it is retried")

        for events, ops in scan_tree(
            root, self, self.ignored_dirs, self.names, before_listing=before_listing, scandir=self._scandir,
            excluded=self._excluded_here, unlistable=unlistable,
        ):
            reported += len(events)
            self.report(events, ops)
        if listed:
            # Listed now, or no longer in the tree: either way nothing is left to retry there.
            self._clear_unwatched(p for p in before if p not in self._noted)
        log.debug("Scanned %s in %.2f s: %d changes", root, time.monotonic() - started, reported)
        return listed

    def report_deleted_tree(self, directory: str, own_key: Key | None) -> None:
        """DELETED for every file known below `directory`; drop their rows, then its own."""
        for events, ops in deleted_below(self, directory):
            self.report(events, ops)
        if own_key is not None:
            self.report([], [(own_key, None)])

    # -- delivery ----------------------------------------------------------------------------

    def report(self, events: Sequence[FSEvent], ops: Sequence[Op]) -> None:
        """Queue events and the index ops to apply once they are delivered. Blocks while
        `max_pending` events wait (backpressure), except while stopping."""
        if not events and not ops:
            return
        with self._cond:
            while self._pending_events >= self.max_pending and not self._stop_event.is_set():
                self._cond.wait()
            kept: list[FSEvent] = []
            for event in events:
                waiting = self._waiting.get(event.path)
                if waiting is not None and Event.DELETED not in (waiting.event, event.event):
                    continue
                self._waiting[event.path] = event
                kept.append(event)
                log.debug("%s %s", event.event.name, event.path)
            seq_ops: list[_SeqOp] = []
            for key, entry in ops:
                self._seq += 1
                self._overlay.setdefault(key[0], {})[key[1]] = (entry, self._seq)
                seq_ops.append((key, entry, self._seq))
            if not self._chunks:
                self._first_put = time.monotonic()
            # Oversized chunks (a deleted tree) are split; the ops ride with the last piece.
            pieces = [kept[i:i + self.max_batch] for i in range(0, len(kept), self.max_batch)] or [[]]
            for piece in pieces[:-1]:
                self._chunks.append((piece, []))
            self._chunks.append((pieces[-1], seq_ops))
            self._pending_events += len(kept)
            self._cond.notify_all()

    def _take_batch(self) -> tuple[list[FSEvent], list[_SeqOp]] | None:
        with self._cond:
            while not self._chunks and not self._closing:
                self._cond.wait()
            if not self._chunks:
                return None
            deadline = self._first_put + self.batch_latency
            while self._pending_events < self.max_batch and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            events: list[FSEvent] = []
            ops: list[_SeqOp] = []
            while self._chunks and (not events or len(events) + len(self._chunks[0][0]) <= self.max_batch):
                chunk_events, chunk_ops = self._chunks.popleft()
                events.extend(chunk_events)
                ops.extend(chunk_ops)
            for event in events:
                if self._waiting.get(event.path) is event:
                    del self._waiting[event.path]
            self._pending_events -= len(events)
            self._first_put = time.monotonic()
            self._in_flight = True
            self._cond.notify_all()
            return events, ops

    def _deliver_loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._deliver(*batch)
            finally:
                with self._cond:
                    self._in_flight = False
                    self._cond.notify_all()

    def _deliver(self, events: list[FSEvent], ops: list[_SeqOp]) -> None:
        attempt = 0
        while events:
            try:
                self.callback(events)
                break
            except Exception as error:  # noqa: BLE001 - any pipeline failure: keep the batch
                if self._stop_event.is_set() and attempt > 0:
                    log.error(
                        "Giving up delivering %d events while stopping (%s); the next start-up "
                        "scan reports them again", len(events), error,
                    )
                    return
                delay = min(30.0, 0.5 * 2 ** attempt)
                log.warning("Could not queue %d events (%s); retrying in %.1f s", len(events), error, delay)
                attempt += 1
                self._stop_event.wait(delay)
        self.scanner.apply((key, entry) for key, entry, _ in ops)
        with self._cond:
            for (directory, name), _, seq in ops:
                pending = self._overlay.get(directory)
                if pending is not None and name in pending and pending[name][1] == seq:
                    del pending[name]
                    if not pending:
                        del self._overlay[directory]

    # -- life cycle --------------------------------------------------------------------------

    def _spawn(self, name: str, target) -> None:  # type: ignore[no-untyped-def]
        thread = MonitorThread(f"{self.name}-{name}", target, self.on_crash)
        self._threads.append(thread)
        thread.start()

    def start(self) -> None:
        if self._started:
            raise MonitorError(f"{self.name} monitor already started")
        self._started = True
        self._spawn("delivery", self._deliver_loop)
        self._spawn("monitor", self._run)

    def _run(self) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        """Interrupt the backend thread's wait (stop, new tree, rescan)."""

    def stop(self) -> None:
        """Stop the backend thread, deliver what is pending, join everything, close the index."""
        self._stop_event.set()
        self._wake()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads[1:]:
            thread.join()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._threads:
            self._threads[0].join()
        self._threads.clear()
        self._close()
        self.scanner.close()

    def _close(self) -> None:
        """Release backend resources after every thread has stopped."""

    @property
    def is_idle(self) -> bool:
        # Order matters: the backend hands work to delivery before it clears its own flag.
        if not self._backend_idle():
            return False
        with self._cond:
            return not self._chunks and not self._in_flight

    def _backend_idle(self) -> bool:
        return True
