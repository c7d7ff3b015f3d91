"""The path index (`fsmonitor.db`, table `pathscanner`) and the tree scan that compares it with the disk.

The index is the monitor's memory across restarts: what it last *reported and saw committed* for
every directory entry of every watched tree. Comparing it with the disk finds what was created,
modified or deleted while the daemon was down (on a first run: everything, which is the initial
sync), and after an inotify queue overflow.

Schema (PRAGMA user_version = 2; the original File Conveyor's format, which had no user_version,
counts as version 1)::

    CREATE TABLE pathscanner(
        path     TEXT NOT NULL,               -- containing directory, absolute, no trailing '/'
        filename TEXT NOT NULL,               -- entry name
        mtime    INTEGER NOT NULL,            -- st_mtime_ns (v1: whole seconds); -1 for directories
        size     INTEGER NOT NULL DEFAULT -1, -- st_size; -1 for directories          (new in v2)
        is_dir   INTEGER NOT NULL DEFAULT 0   -- 1 for directories and symlinks to them (new in v2)
    );
    CREATE UNIQUE INDEX file_unique_per_path ON pathscanner (path, filename);

Version 1 (original) had only `path, filename, mtime` (mtime in whole seconds, -1 for
directories). Opening a version 1 file raises `MonitorError` asking for `fileconveyor upgrade`:
silently reinterpreting seconds as nanoseconds would report every file MODIFIED. A damaged file
is moved aside and rebuilt (see `PathScanner`).

Why it is shaped like this:

* A scan compares the disk with the index one directory at a time: `WHERE path = ?` per listed
  directory (the unique index serves it), so a scan holds one directory's rows, never the whole
  tree's (a million-file tree would need ~400 MB). Rows below a directory that is gone are read
  in pages of an exact-prefix *range* on `path` (`path = d`, then `path >= d || '/' AND
  path < d || '0'`, '0' being the character after '/'), again by the unique index. The original
  used `LIKE 'd%'`: `img` also matched `img2`, and `_`/`%` in names were wildcards.
* mtime in nanoseconds plus size: integer seconds missed changes made within the same second.
* Only names that are valid UTF-8 are stored (SQLite text cannot hold Python's surrogate escapes);
  others are refused with one warning per name (`UndecodableNames`).
* Writes come from the monitor only after the pipeline committed the matching events, in one
  transaction per delivered batch. WAL with synchronous=NORMAL: a power cut may lose the last
  index transactions, which only makes the next scan report those files again (a repeat, never
  a loss). The file is created 0600 before SQLite opens it (SQLite gives -wal/-shm the same mode).
  It is opened through the state-database gate (`fileconveyor.pipeline.db`: busy timeout, retries
  on BUSY and a full disk, errors that name the file). Only the daemon reads it, so WAL's -shm
  file costs no reader anything.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat as statmod
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Protocol

from fileconveyor.fsmonitor.base import Event, FSEvent, MonitorError
from fileconveyor.pipeline.db import Database, DatabaseDamaged, DatabaseError, Journal

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# DDL kept as named constants: upgrade.py reads them to know the current format.
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS pathscanner("
    "path TEXT NOT NULL, filename TEXT NOT NULL, mtime INTEGER NOT NULL, "
    "size INTEGER NOT NULL DEFAULT -1, is_dir INTEGER NOT NULL DEFAULT 0)"
)
# Name kept from the original so that audits and upgrade.py find it.
CREATE_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS file_unique_per_path ON pathscanner (path, filename)"
_SELECT_BELOW = (
    "SELECT path, filename, mtime, size, is_dir FROM pathscanner "
    "WHERE path = ? OR (path >= ? AND path < ?)"
)
_SELECT_CHILDREN = "SELECT filename, mtime, size, is_dir FROM pathscanner WHERE path = ?"
# Keyset pages (row values, SQLite >= 3.15): each page starts after the last key of the previous
# one, so rows deleted behind it meanwhile (by the scan's own ops) do not shift it.
_SELECT_CHILDREN_PAGE = (
    "SELECT path, filename, mtime, size, is_dir FROM pathscanner "
    "WHERE path = ? AND filename > ? ORDER BY filename LIMIT ?"
)
_SELECT_RANGE_PAGE = (
    "SELECT path, filename, mtime, size, is_dir FROM pathscanner "
    "WHERE path < ? AND (path, filename) > (?, ?) ORDER BY path, filename LIMIT ?"
)
_SELECT_ONE = "SELECT mtime, size, is_dir FROM pathscanner WHERE path = ? AND filename = ?"
_UPSERT = "INSERT OR REPLACE INTO pathscanner(path, filename, mtime, size, is_dir) VALUES (?, ?, ?, ?, ?)"
_DELETE = "DELETE FROM pathscanner WHERE path = ? AND filename = ?"
_LEGACY_HINT = ("is in the original File Conveyor's format (version 1, mtime in seconds); run "
                "`fileconveyor upgrade` to convert it")


class Entry(NamedTuple):
    """What the index knows about one directory entry (a tuple: cheap to make by the million)."""

    mtime_ns: int
    size: int
    is_dir: bool = False


DIR_ENTRY = Entry(-1, -1, True)

Key = tuple[str, str]
"""(containing directory, name): the index's primary key."""

Op = tuple[Key, "Entry | None"]
"""One index change: put `Entry`, or delete the row when None."""


def split_key(path: str) -> Key:
    head, _, name = path.rpartition("/")
    return (head or "/", name)


def join_key(key: Key) -> str:
    head, name = key
    return head + name if head.endswith("/") else f"{head}/{name}"


def prefix_range(directory: str) -> tuple[str, str]:
    """Bounds of every path strictly below `directory`, for `lo <= path < hi` (by components)."""
    prefix = directory.rstrip("/") + "/"
    return prefix, prefix[:-1] + "0"


def is_below(path: str, directory: str) -> bool:
    """True for `directory` itself and every path under it (by components: img is not img2)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


class UndecodableNames:
    """Refuses names that are not valid UTF-8, warning once per name (not once per event or scan)."""

    def __init__(self) -> None:
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def is_valid(self, directory: str, name: str) -> bool:
        try:
            name.encode("utf-8")
            return True
        except UnicodeEncodeError:
            pass
        full = f"{directory}/{name}"
        with self._lock:
            if full in self._warned:
                return False
            self._warned.add(full)
        raw = name.encode("utf-8", "surrogateescape")
        log.warning(
            "Ignoring %r in %s: the name is not valid UTF-8, so it cannot be recorded or synced; "
            "rename it (e.g. with convmv) to sync it", raw, directory,
        )
        return False


class IndexDatabaseError(MonitorError, DatabaseError):
    """fsmonitor.db cannot be used (a format this version does not read, or it cannot be opened)."""


class PathScanner:
    """The `pathscanner` table of `fsmonitor.db`; thread-safe (one connection, through the
    state-database gate `fileconveyor.pipeline.db`).

    A damaged index (not a database, or failing `PRAGMA quick_check` at open) is moved aside as
    `fsmonitor.db.damaged-<time>` and started anew, with an ERROR naming both files: the index
    only remembers what the disk looked like, so losing it costs a full comparison (every file
    re-checked; with `fileconveyor.pipeline.state`, deletions found from synced_files.db), never
    a lost change. Refusing to start instead would leave the daemon in a restart loop over a
    file it can rebuild by itself."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        #: True when a damaged index was moved aside and this one started empty.
        self.rebuilt = False
        self._moved_aside = False
        try:
            self.db = self._open()
        except DatabaseDamaged as error:
            self.db = self._rebuild(str(error))

    def _open(self, check: bool = True) -> Database:
        """`check`: PRAGMA quick_check first (a DatabaseDamaged when it fails)."""
        try:
            return Database(self.db_path, (CREATE_TABLE, CREATE_INDEX), SCHEMA_VERSION,
                            journal=Journal.WAL, legacy_hint=_LEGACY_HINT, check=check)
        except DatabaseDamaged:
            raise
        except DatabaseError as error:
            raise IndexDatabaseError(str(error), self.db_path) from None

    def _move_aside(self, reason: str, consequence: str) -> None:
        aside = f"{self.db_path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.db_path, aside)
        for suffix in ("-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.db_path + suffix, aside + suffix)
        log.error("The path index %s is damaged (%s); moved it to %s: %s", self.db_path, reason, aside, consequence)

    def _rebuild(self, reason: str) -> Database:
        self._move_aside(reason, "started a new index; every file of every watched tree is compared "
                                 "again (re-synced) at this start")
        self.rebuilt = True
        return self._open(check=False)  # a new, empty file

    @contextlib.contextmanager
    def _damage_moves_aside(self) -> Iterator[None]:
        """Damage met while running (after a good quick_check at open) moves the file aside at
        once, so that the restart this error causes opens a new index instead of the same damage."""
        try:
            yield
        except DatabaseDamaged as error:
            if self.db_path != ":memory:" and os.path.exists(self.db_path) and not self._moved_aside:
                self._moved_aside = True
                self._move_aside(str(error), "the next start builds a new one and compares every file again")
            raise

    def close(self) -> None:
        self.db.close()

    def get(self, key: Key) -> Entry | None:
        with self._damage_moves_aside():
            rows = self.db.query(_SELECT_ONE, key)
        return None if not rows else Entry(rows[0][0], rows[0][1], bool(rows[0][2]))

    def known_below(self, directory: str) -> dict[Key, Entry]:
        """Every row inside `directory` (its entries and everything below them), one query.
        Holds them all in memory: for tools and tests; scans use `children` and `below`."""
        lo, hi = prefix_range(directory)
        with self._damage_moves_aside():
            rows = self.db.query(_SELECT_BELOW, (directory, lo, hi))
        return {(p, f): Entry(m, s, d == 1) for p, f, m, s, d in rows}

    def children(self, directory: str) -> dict[str, Entry]:
        """The rows of `directory`'s own entries, by name (one indexed query)."""
        with self._damage_moves_aside():
            rows = self.db.query(_SELECT_CHILDREN, (directory,))
        return {f: Entry(m, s, d == 1) for f, m, s, d in rows}

    def below(self, directory: str, page: int = 2000) -> Iterator[list[tuple[Key, Entry]]]:
        """Every row inside `directory` (its entries, then everything deeper), in pages of at
        most `page` rows. The lock is held per page only, so the delivery thread can apply the
        ops a caller reports between pages; each page starts after the previous page's last key,
        so rows deleted behind it meanwhile do not shift it."""
        lo, hi = prefix_range(directory)
        if lo != directory:  # "/" is its own prefix: the range covers its entries
            yield from self._pages(_SELECT_CHILDREN_PAGE, lambda last: (directory, last[1], page), page)
        yield from self._pages(_SELECT_RANGE_PAGE, lambda last: (hi, last[0] or lo, last[1], page), page)

    def _pages(self, sql: str, params: Callable[[Key], tuple[Any, ...]], page: int) -> Iterator[list[tuple[Key, Entry]]]:
        last: Key = ("", "")
        while True:
            with self._damage_moves_aside():
                rows = self.db.query(sql, params(last))
            if rows:
                yield [((p, f), Entry(m, s, d == 1)) for p, f, m, s, d in rows]
            if len(rows) < page:
                return
            last = (rows[-1][0], rows[-1][1])

    def apply(self, ops: Iterable[Op]) -> None:
        """Apply index changes in order (last one per key wins), in one transaction."""
        final: dict[Key, Entry | None] = {}
        for key, entry in ops:
            final[key] = entry
        if not final:
            return
        puts = [(k[0], k[1], e.mtime_ns, e.size, int(e.is_dir)) for k, e in final.items() if e is not None]
        deletes = [k for k, e in final.items() if e is None]

        def write(conn: sqlite3.Connection) -> None:
            if puts:
                conn.executemany(_UPSERT, puts)
            if deletes:
                conn.executemany(_DELETE, deletes)
        with self._damage_moves_aside():
            self.db.write(write)

    def count(self) -> int:
        with self._damage_moves_aside():
            return int(self.db.query("SELECT COUNT(*) FROM pathscanner")[0][0])


Chunk = tuple[list[FSEvent], list[Op]]
Scandir = Callable[[str], Any]
"""`os.scandir`-compatible: returns a context manager iterating DirEntry-like objects."""

_VANISHED = (errno.ENOENT, errno.ENOTDIR)


class Known(Protocol):
    """What a scan compares the disk with, read one directory (or one page) at a time:
    `PathScanner`, or the monitor's index plus its not-yet-committed ops."""

    def children(self, directory: str) -> dict[str, Entry]: ...

    def below(self, directory: str) -> Iterator[list[tuple[Key, Entry]]]: ...


class KnownRows:
    """`Known` over rows already in memory (`PathScanner.known_below`): for tools and tests."""

    def __init__(self, rows: Mapping[Key, Entry]) -> None:
        self._dirs: dict[str, dict[str, Entry]] = {}
        for (directory, name), entry in rows.items():
            self._dirs.setdefault(directory, {})[name] = entry

    def children(self, directory: str) -> dict[str, Entry]:
        return dict(self._dirs.get(directory, {}))

    def below(self, directory: str) -> Iterator[list[tuple[Key, Entry]]]:
        for path in sorted(p for p in self._dirs if is_below(p, directory)):
            yield [((path, name), entry) for name, entry in sorted(self._dirs[path].items())]


def entry_of(dirent: Any) -> Entry | None:
    """Index entry for a DirEntry, or None when it is not something we record (fifo, socket,
    broken symlink) or it vanished. Symlinks: to a file count as that file (its target's mtime and
    size); to a directory are recorded as a directory but never descended (no loops, and a link
    out of the tree cannot pull foreign trees in)."""
    try:
        if dirent.is_dir(follow_symlinks=False):
            return DIR_ENTRY
        st = dirent.stat(follow_symlinks=True)
    except OSError as error:
        log.debug("Skipping %s: %s", dirent.path, error)
        return None
    if statmod.S_ISREG(st.st_mode):
        return Entry(st.st_mtime_ns, st.st_size, False)
    if statmod.S_ISDIR(st.st_mode):
        return DIR_ENTRY
    return None


def compare(path: str, old: Entry | None, new: Entry) -> FSEvent | None:
    """The event for one file whose index entry was `old` and is now `new` (None: no change)."""
    if new.is_dir:
        return None
    if old is None or old.is_dir:
        return FSEvent(path, Event.CREATED)
    if old != new:
        return FSEvent(path, Event.MODIFIED)
    return None


def deleted_below(known: Known, directory: str) -> Iterator[Chunk]:
    """DELETED for every file known inside `directory`, and the ops dropping their rows, one
    page at a time (the directory's own row is the caller's: drop it after these)."""
    for rows in known.below(directory):
        yield [FSEvent(join_key(k), Event.DELETED) for k, e in rows if not e.is_dir], [(k, None) for k, _ in rows]


def scan_tree(
    root: str,
    known: Known | Mapping[Key, Entry],
    ignored_dirs: frozenset[str] | set[str],
    names: UndecodableNames,
    *,
    before_listing: Callable[[str], None] | None = None,
    scandir: Scandir = os.scandir,
    excluded: frozenset[str] | set[str] = frozenset(),
    unlistable: Callable[[str, OSError], None] | None = None,
) -> Iterator[Chunk]:
    """Walk `root` and yield, per directory, the events and index ops that bring the index
    (`known`: a `Known`, or rows in memory) up to date with the disk; deletions come last.

    Each listed directory is compared with its own rows only (`known.children`), so memory is
    bounded by the largest directory, not by the tree. What is gone is remembered as keys and as
    directories, whose rows are read in pages at the end (`deleted_below`). A directory's own row
    is dropped (or, when it became a file, replaced) only after the rows below it: a crash in
    between leaves rows the next scan still finds through it, never orphans.

    `before_listing(dir)` runs before each directory is listed: the inotify backend adds the
    directory's watch there, so a file created after it is listed is reported by an event and one
    created before is seen by the listing (nothing falls between the two).

    A directory that cannot be listed (EACCES) keeps its index rows: unreadable is not deleted.
    If `root` itself cannot be listed nothing is reported: an unmounted or missing source tree
    must not read as "every file deleted". Either is passed to `unlistable(directory, error)` when
    given (the monitor retries it later), else logged. A directory that vanished while the scan
    ran is not "unlistable": its rows are dropped as deleted.

    Paths in `excluded` (absolute, as found under `root`) are skipped like ignored directories,
    files or directories alike: the daemon's own output must never be reported.
    """
    index = KnownRows(known) if isinstance(known, Mapping) else known
    gone_files: list[Key] = []
    #: (directory whose rows below are gone, the op and event for its own row afterwards)
    gone_dirs: list[tuple[str, Op | None, FSEvent | None]] = []
    if root in excluded:
        return
    stack = [root]
    while stack:
        directory = stack.pop()
        if before_listing is not None:
            before_listing(directory)
        try:
            with scandir(directory) as it:
                dirents = list(it)
        except OSError as error:
            vanished = error.errno in _VANISHED
            if directory != root and vanished:
                log.debug("Directory vanished before it was scanned: %s", directory)
                gone_dirs.append((directory, None, None))
            elif unlistable is not None:
                unlistable(directory, error)
            elif directory == root:
                log.error("Cannot list watched tree %s (%s); not reporting anything for it", root, error)
            else:
                log.warning("Cannot list %s (%s); its files are left as they were", directory, error)
            if directory == root:
                return
            continue
        old_entries = index.children(directory)
        events: list[FSEvent] = []
        ops: list[Op] = []
        for dirent in dirents:
            name = dirent.name
            if not name.isascii() and not names.is_valid(directory, name):
                continue
            if excluded and dirent.path in excluded:
                # Rows from before it was excluded stay: excluding is not deleting (as for ignored
                # directories, the copies already published are left alone).
                old_entries.pop(name, None)
                continue
            new = entry_of(dirent)
            if new is None or (new.is_dir and name in ignored_dirs):
                continue
            old = old_entries.pop(name, None)
            if old == new and not new.is_dir:
                continue  # the common case of a rescan: an unchanged file
            key = (directory, name)
            path = dirent.path
            descend = new.is_dir and not dirent.is_symlink()
            if old is not None and old.is_dir and not descend:
                # Was a directory, now a file or a link: the rows below go first. (A link to a
                # directory that was one already costs a query that finds nothing.)
                if old != new:
                    gone_dirs.append((path, (key, new), compare(path, old, new)))
                else:
                    gone_dirs.append((path, None, None))
                continue
            if old is not None and not old.is_dir and new.is_dir:
                events.append(FSEvent(path, Event.DELETED))
            event = compare(path, old, new)
            if event is not None:
                events.append(event)
            if old != new:
                ops.append((key, new))
            if descend:
                stack.append(path)
        for name, old in old_entries.items():
            if old.is_dir:
                gone_dirs.append((join_key((directory, name)), ((directory, name), None), None))
            else:
                gone_files.append((directory, name))
        if events or ops:
            yield events, ops
    for start in range(0, len(gone_files), 2000):
        keys = gone_files[start:start + 2000]
        yield [FSEvent(join_key(k), Event.DELETED) for k in keys], [(k, None) for k in keys]
    for directory, own_op, own_event in gone_dirs:
        yield from deleted_below(index, directory)
        if own_op is not None:
            yield ([own_event] if own_event is not None else []), [own_op]
