"""Linux inotify backend (pyinotify for the system calls, our own event loop).

We use pyinotify's `WatchManager` to create the inotify instance and to add and remove watches,
but read and decode the event stream ourselves, because everything that matters here is in what
pyinotify's Notifier does for you, and does wrongly for us:

* `auto_add`/`rec` add watches on new directories, but files written into `mkdir -p a/b/c`
  before the watch on `c` existed are lost (depending on the pyinotify version), and the paths of
  watches below a moved directory are rewritten only when both halves of the move were seen.
* Its move handling is built for renames it can pair; we need unpaired halves to become
  "moved out" (DELETED for everything below) and "moved in" (scan it).

So: one watch per directory (`_MASK`), added *before* the directory is listed, so that a file
either appears in the listing or produces an event after it (`pathscanner.scan_tree`'s
`before_listing`). Our own `wd -> path` map; a directory moved within the tree is re-walked, which
re-adds the (same, kernel-side) watch descriptors under their new paths.

Event mapping (files only; directories stand for the files below them):

* IN_CLOSE_WRITE -> CREATED (unknown to the index) or MODIFIED: a file is reported when it is
  complete, not on every write(). IN_CREATE of a regular file is ignored (its close follows),
  except for hard links and symlinks, which never get a close (a hard link is recognised even
  when its other name is already gone: see `_file_created`).
* IN_ATTRIB with a changed mtime/size -> MODIFIED (`touch` forces a resync: the Drupal CDN
  module relies on it). chmod alone changes nothing we record and reports nothing.
* IN_DELETE -> DELETED (a directory: every file the index knew below it).
* IN_MOVED_FROM/IN_MOVED_TO paired by cookie -> DELETED old + CREATED new; a FROM whose TO does
  not arrive within `move_window` seconds was moved out of the tree (DELETED, watches removed);
  a TO without FROM was moved in (scanned). A directory move applies to every file below.
* IN_Q_OVERFLOW (wd -1): events were lost; WARNING and a rescan of every tree. Never ignored
  (watchdog and the original File Conveyor drop it).
* ENOSPC from inotify_add_watch: fs.inotify.max_user_watches is exhausted; ERROR naming the
  sysctl, and that tree falls back to polling every `poll_interval` seconds on this thread.
* IN_DELETE_SELF/IN_MOVE_SELF/IN_UNMOUNT of a root: its watches are dropped (a moved root's
  watches would report another directory's changes under its old path) and it is re-watched and
  rescanned as soon as it is back (checked at once, then every `recheck_interval` seconds, which
  also catches a root replaced without an event: a parent moved, a symlink re-pointed).
* IN_ATTRIB of a directory (chmod, chown, setfacl): one that cannot be read now is noted as not
  watched; one that was not watched and can be read again is scanned at once.
* A root given as a symlink: its watch is added on the resolved directory (IN_DONT_FOLLOW, which
  every other watch needs so that a symlink inside the tree is never followed, made that watch
  fail: original issue #135), under the configured path, so events keep the configured prefix.

Every stat() can find the file gone (vim's 4913, cache temp files): that is logged at DEBUG and
skipped. The original's notifier thread died on exactly that and left the daemon deaf.
"""
from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import select
import stat as statmod
import struct
import termios
import time
from typing import Any, Iterable

import pyinotify

from fileconveyor.fsmonitor.base import Event, FSEvent
from fileconveyor.fsmonitor.common import UNMOUNTED, TreeMonitor
from fileconveyor.fsmonitor.pathscanner import DIR_ENTRY, Entry, is_below, split_key

log = logging.getLogger(__name__)

_MASK = (
    pyinotify.IN_CLOSE_WRITE | pyinotify.IN_CREATE | pyinotify.IN_DELETE | pyinotify.IN_ATTRIB
    | pyinotify.IN_MOVED_FROM | pyinotify.IN_MOVED_TO | pyinotify.IN_DELETE_SELF
    | pyinotify.IN_MOVE_SELF | pyinotify.IN_ONLYDIR | pyinotify.IN_DONT_FOLLOW
    | pyinotify.IN_EXCL_UNLINK
)
_HEADER = struct.Struct("iIII")
_READ_SIZE = 256 * 1024
_SYSCTL = "/proc/sys/fs/inotify/max_user_watches"


class _WatchLimit(Exception):
    pass


class InotifyMonitor(TreeMonitor):
    is_native = True
    name = "inotify"

    def __init__(self, *args: Any, poll_interval: float = 10.0, move_window: float = 0.1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poll_interval = poll_interval
        self.move_window = move_window
        # The inotify instance is created here, not in start(): its queue size
        # (fs.inotify.max_queued_events) is fixed when it is created.
        self._wm = pyinotify.WatchManager()
        self._fd = self._wm.get_fd()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._busy = False
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._held: dict[int, tuple[str, bool, float]] = {}
        self._closed = False

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the thread is awake already

    def _backend_idle(self) -> bool:
        if self._closed:
            return True
        buf = array.array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, buf)
        if buf[0]:
            return False
        with self._lock:
            return not self._requests and not self._busy and not self._held

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop_event.is_set():
            self._do_requests()
            ready = dict(poller.poll(self._timeout_ms()))
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            if self._fd in ready:
                with self._lock:
                    self._busy = True
                try:
                    data = os.read(self._fd, _READ_SIZE)
                    self._handle_buffer(data)
                finally:
                    with self._lock:
                        self._busy = False
            self._expire_moves(time.monotonic())
            self._poll_fallback_trees(time.monotonic())
            self._rescan_rechecked()

    def _timeout_ms(self) -> int:
        """Until the next move half, polled tree or recheck is due (an idle monitor wakes once
        per `recheck_interval` for a stat() per root)."""
        deadlines = [d for _, _, d in self._held.values()] + list(self.polled_trees.values())
        deadlines.append(self.recheck_due())
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _rescan_rechecked(self) -> None:
        todo = self.recheck()
        if todo:
            with self._lock:
                self._requests.extend(todo)
            self._do_requests()

    def _do_requests(self) -> None:
        with self._lock:
            if not self._requests:
                return
            self._busy = True
        todo = self._take_requests()
        try:
            for root in todo:
                if self._stop_event.is_set():
                    return
                self._scan_tree(root)
        finally:
            with self._lock:
                self._busy = False

    def _scan_tree(self, root: str) -> None:
        """Walk `root` adding watches (unless it is polled), then drop watches of directories that
        are no longer in it (moved out while we were not looking, e.g. during an overflow)."""
        tree = self.tree_of(root) or root
        visited: set[int] = set()

        def watch(directory: str) -> None:
            if tree in self.polled_trees:
                return
            wd = self._add_watch(directory, tree)
            if wd is not None:
                visited.add(wd)

        self.scan(root, before_listing=watch)
        if tree not in self.polled_trees:
            stale = [wd for p, wd in self._path_wd.items() if is_below(p, root) and wd not in visited]
            self._remove_watches(stale)

    # -- watches -----------------------------------------------------------------------------

    def _add_watch(self, directory: str, tree: str) -> int | None:
        # A root may be a symlink (IN_DONT_FOLLOW would refuse it): watch what it resolves to.
        # Below the root the configured path is used: the kernel resolves the root's link in it.
        target = os.path.realpath(directory) if directory == tree else directory
        try:
            wd = self._wm.add_watch(target, _MASK, quiet=False)[target]
        except pyinotify.WatchManagerError:
            code = self._wm._inotify_wrapper.get_errno()  # same thread, right after the call
            if code == errno.ENOSPC:
                self._fall_back_to_polling(tree)
            elif code in (errno.ENOENT, errno.ENOTDIR):
                log.debug("Directory vanished before it could be watched: %s", directory)
            elif code != errno.EACCES:  # unreadable: its listing fails next and notes it
                self._note_unwatched(directory, f"cannot be watched ({os.strerror(code or 0)}); it is retried")
            return None
        old = self._wd_path.get(wd)
        if old is not None and self._path_wd.get(old) == wd:
            del self._path_wd[old]
        self._wd_path[wd] = directory
        self._path_wd[directory] = wd
        return wd

    def _remove_watches(self, wds: Iterable[int]) -> None:
        for wd in list(wds):
            path = self._wd_path.pop(wd, None)
            if path is not None and self._path_wd.get(path) == wd:
                del self._path_wd[path]
            # Straight to the syscall: the kernel may have dropped the watch already (directory
            # deleted, IN_IGNORED not read yet), and pyinotify would log that as an error.
            self._wm._inotify_wrapper.inotify_rm_watch(self._fd, wd)
            self._wm.watches.pop(wd, None)

    def _remove_watches_below(self, directory: str) -> None:
        self._remove_watches([wd for p, wd in self._path_wd.items() if is_below(p, directory)])

    def _unwatch(self, tree: str) -> None:
        self._remove_watches_below(tree)

    def _fall_back_to_polling(self, tree: str) -> None:
        try:
            with open(_SYSCTL, encoding="ascii") as f:
                limit = f.read().strip()
        except OSError:
            limit = "unknown"
        log.error(
            "Cannot watch %s: the inotify watch limit is exhausted (fs.inotify.max_user_watches = %s). "
            "Raise it with `sysctl fs.inotify.max_user_watches=524288` (persist it in "
            "/etc/sysctl.d/) and restart; until then this tree is polled every %.1f s",
            tree, limit, self.poll_interval,
        )
        self.polled_trees[tree] = time.monotonic() + self.poll_interval
        self._remove_watches_below(tree)

    def _poll_fallback_trees(self, now: float) -> None:
        for tree, due in list(self.polled_trees.items()):
            if due <= now and not self._stop_event.is_set():
                with self._lock:
                    self._busy = True
                try:
                    self.scan(tree)
                finally:
                    with self._lock:
                        self._busy = False
                self.polled_trees[tree] = time.monotonic() + self.poll_interval

    # -- events ------------------------------------------------------------------------------

    def _handle_buffer(self, data: bytes) -> None:
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            raw_name = data[start:start + length].rstrip(b"\0")
            offset = start + length
            try:
                self._handle(wd, mask, cookie, raw_name)
            except OSError as error:
                # Anything the file system throws at one event must not stop the monitor.
                log.warning("Skipping an inotify event (%s); the next rescan covers it", error)

    def _handle(self, wd: int, mask: int, cookie: int, raw_name: bytes) -> None:
        if mask & pyinotify.IN_Q_OVERFLOW:
            self._overflow()
            return
        directory = self._wd_path.get(wd)
        if directory is None:
            return  # a watch we already removed: its last events are stale
        if mask & pyinotify.IN_IGNORED:
            self._forget(wd)
            return
        if mask & (pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF | pyinotify.IN_UNMOUNT):
            if directory in self.trees:
                self._root_event(directory, mask)
            return
        is_dir = bool(mask & pyinotify.IN_ISDIR)
        if not raw_name:
            if mask & pyinotify.IN_ATTRIB:
                self._attrib_dir(directory)
            return
        name = os.fsdecode(raw_name)
        if not self.names.is_valid(directory, name):
            return
        path = f"{directory}/{name}"
        if mask & pyinotify.IN_MOVED_FROM:
            self._held[cookie] = (path, is_dir, time.monotonic() + self.move_window)
        elif mask & pyinotify.IN_MOVED_TO:
            moved = self._held.pop(cookie, None)
            if moved is not None:
                self._moved_within(moved[0], path, is_dir)
            else:
                self._arrived(path, is_dir)
        elif mask & pyinotify.IN_DELETE:
            self._deleted(path, is_dir)
        elif mask & pyinotify.IN_CREATE:
            if is_dir:
                self._arrived(path, True)
            else:
                self._file_created(path)
        elif mask & pyinotify.IN_CLOSE_WRITE and not is_dir:
            self._file_changed(path, attrib_only=False)
        elif mask & pyinotify.IN_ATTRIB:
            if is_dir:
                self._attrib_dir(path)
            else:
                self._file_changed(path, attrib_only=True)

    def _root_event(self, tree: str, mask: int) -> None:
        """A root was deleted, moved or unmounted: drop its watches; scan it if it is back."""
        if mask & pyinotify.IN_UNMOUNT:
            # Never scanned from here: the unmount may still be under way, and an empty mount
            # point must not be compared with the index. The recheck decides.
            self._root_gone(tree, UNMOUNTED)
            return
        problem, _ = self._root_problem(tree)
        what = "was deleted" if mask & pyinotify.IN_DELETE_SELF else "was moved away"
        self._root_gone(tree, problem or f"{what} and replaced at once; it is watched again")
        if problem is None:
            self._scan_tree(tree)

    def _attrib_dir(self, directory: str) -> None:
        """Permissions of a directory changed: note it if it cannot be read now (the events
        below it could not be examined), scan it if it was not watched and now can be."""
        if self.is_excluded(directory) or self._ignored(directory, True):
            return
        with self._lock:
            was_unwatched = directory in self._unwatched
        if not os.access(directory, os.R_OK | os.X_OK):
            if os.path.isdir(directory):
                self._remove_watches_below(directory)
                self._note_unwatched(directory, "cannot be read (its permissions changed); it is retried")
        elif was_unwatched:
            self._scan_tree(directory)

    def _forget(self, wd: int) -> None:
        path = self._wd_path.pop(wd, None)
        if path is not None and self._path_wd.get(path) == wd:
            del self._path_wd[path]
        self._wm.watches.pop(wd, None)

    def _ignored(self, path: str, is_dir: bool) -> bool:
        return self.is_excluded(path) or (is_dir and path.rpartition("/")[2] in self.ignored_dirs)

    def _file_created(self, path: str) -> None:
        """A new non-directory entry: only links are reported now (they never get a close).

        A hard link made by link() gets IN_CREATE and nothing else. `st_nlink > 1` alone is not
        enough to recognise it: link()+unlink() of the other name is the usual "atomic move", and
        by the time we look the other name may be gone (nlink 1 again; torture F14: the new name
        was never reported). So a regular file is also reported now when its inode changed after
        its content did (ctime > mtime): link() and unlink() change an inode's ctime, never its
        mtime, while a file that open(O_CREAT) just made has ctime == mtime, and every write()
        moves both together. A writer that chmods its new file before writing it (ctime > mtime)
        is reported early too; its IN_CLOSE_WRITE follows and reports it MODIFIED, so the
        complete content is synced in the end. Left out: a link made within the same clock tick
        as the file's last write (ctime == mtime) whose other name is gone before we look; the
        next rescan finds it.
        """
        try:
            st = os.lstat(path)
        except OSError as error:
            log.debug("Created and gone before it could be examined: %s (%s)", path, error)
            return
        if statmod.S_ISLNK(st.st_mode) or (
            statmod.S_ISREG(st.st_mode) and (st.st_nlink > 1 or st.st_ctime_ns > st.st_mtime_ns)
        ):
            self._file_changed(path, attrib_only=False)

    def _file_changed(self, path: str, attrib_only: bool) -> None:
        if self.is_excluded(path):
            return
        key = split_key(path)
        try:
            st = os.stat(path)
        except OSError as error:
            log.debug("Changed and gone before it could be examined: %s (%s)", path, error)
            return
        old = self.lookup(key)
        if statmod.S_ISDIR(st.st_mode):
            if old is None:  # a symlink to a directory: recorded, not descended, not reported
                self.report([], [(key, DIR_ENTRY)])
            return
        if not statmod.S_ISREG(st.st_mode):
            if old is not None and not old.is_dir:
                # A file replaced by a FIFO, socket or device: as a file, it is gone (its
                # published copy, a link to this path in symlink_or_copy, must go too).
                self.report([FSEvent(path, Event.DELETED)], [(key, None)])
            return
        new = Entry(st.st_mtime_ns, st.st_size, False)
        if old is None or old.is_dir:
            if attrib_only:
                return  # the close of a new file is still to come
            if old is not None:
                # A directory known here is a file now, and its own deletion was not seen yet (a
                # move out of the tree waiting for `move_window`, events lost): every file below
                # it is DELETED first, so that a destination has no directory in the new file's
                # place when it comes (torture F15's symptom).
                self.report_deleted_tree(path, None)
            event = Event.CREATED
        elif attrib_only and old == new:
            return  # chmod/chown: nothing we sync changed
        else:
            event = Event.MODIFIED
        self.report([FSEvent(path, event)], [(key, new)])

    def _deleted(self, path: str, is_dir: bool) -> None:
        key = split_key(path)
        old = self.lookup(key)
        if is_dir and old is not None and not old.is_dir:
            # The directory's deletion comes late (a move out expiring after `move_window`): a
            # later event already made this name a file. Only the rows below it are the
            # directory's (none, normally: `_file_changed` dropped them); the file's row stays
            # while there is a file at that name.
            self.report_deleted_tree(path, None)
            if not os.path.isfile(path):
                self.report([FSEvent(path, Event.DELETED)], [(key, None)])
        elif is_dir or (old is not None and old.is_dir):
            self.report_deleted_tree(path, key)
        elif old is not None:
            self.report([FSEvent(path, Event.DELETED)], [(key, None)])

    def _arrived(self, path: str, is_dir: bool) -> None:
        """Created or moved in: a directory is walked (watch first), a file reported."""
        if not is_dir:
            self._file_changed(path, attrib_only=False)
            return
        if self._ignored(path, True):
            return
        key = split_key(path)
        if self.lookup(key) != DIR_ENTRY:
            self.report([], [(key, DIR_ENTRY)])
        self._scan_tree(path)

    def _departed(self, path: str, is_dir: bool) -> None:
        """Moved out of the tree: everything below is DELETED and no longer watched."""
        self._deleted(path, is_dir)
        if is_dir:
            self._remove_watches_below(path)

    def _moved_within(self, old: str, new: str, is_dir: bool) -> None:
        if is_dir and (self._ignored(new, True) or self._ignored(old, True)):
            if not self._ignored(old, True):
                self._departed(old, True)
            if not self._ignored(new, True):
                self._arrived(new, True)
            return
        self._deleted(old, is_dir)
        if is_dir:
            # The kernel keeps the watches (they follow the inode); forget their old paths, and
            # the walk in _arrived re-adds them, which maps the same wds to the new paths.
            for p in [p for p in self._path_wd if is_below(p, old)]:
                del self._path_wd[p]
        self._arrived(new, is_dir)

    def _expire_moves(self, now: float) -> None:
        for cookie, (path, is_dir, deadline) in list(self._held.items()):
            if deadline <= now:
                del self._held[cookie]
                self._departed(path, is_dir)

    def _overflow(self) -> None:
        self.overflows += 1
        log.warning(
            "The inotify event queue overflowed (fs.inotify.max_queued_events); events were lost, "
            "rescanning every tree"
        )
        for cookie, (path, is_dir, _) in list(self._held.items()):
            del self._held[cookie]
            self._departed(path, is_dir)
        for tree in self.trees:
            if tree not in self.polled_trees:
                self._scan_tree(tree)

    def _close(self) -> None:
        self._closed = True
        self._wm.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
