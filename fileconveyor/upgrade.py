"""`fileconveyor upgrade`: bring the three state databases to the current schema, keeping every item.

Why it is shaped like this:

* **One procedure for every file** (`_upgrade_file`): detect the schema version (PRAGMA user_version
  plus the shape of the tables, because the original File Conveyor never set user_version: an
  original database reads as version 0 with tables present, and counts as version 1), back the
  file up, migrate inside ONE exclusive transaction, set user_version, VACUUM. A failure rolls the
  transaction back, so a database is either fully migrated or untouched. Running it again finds
  version 2 and reports "already current": the command is idempotent. A version newer than this
  program knows is refused before anything is written.
* **Backups** go to `<file>.bak-<timestamp>` (mode 0600) through SQLite's backup API rather than a
  file copy: closing a second descriptor of a database file drops the POSIX locks SQLite holds on
  it, and a copied file would miss a hot journal. The backup is taken while no other process holds
  the database (checked with BEGIN EXCLUSIVE); `PRAGMA data_version` then proves nobody wrote to it
  between the backup and the migration.
* **The original's pickles.** The original stored `cPickle` (protocol 2) blobs. This project never
  keeps pickles in its state (DESIGN.md section 5); reading the original's is the one exception,
  and only through `_LegacyUnpickler`, whose `find_class` refuses every global: the original's
  items are tuples of unicode/byte strings and numbers, which protocol 2 encodes with plain opcodes
  (BINUNICODE, SHORT_BINSTRING, BININT*, LONG1, BINFLOAT, TUPLE2), so no legitimate item needs a
  global, and a hostile blob (`__reduce__` -> `os.system`) fails before anything is called. Every
  loaded value is then checked for its exact shape; a row that fails is refused with a report line
  naming its table, id and reason, and the migration goes on.
* **Merging.** The new `pipeline_queue` holds one row per path, so the original's duplicates (the
  unkeyed queue, or the keyed one where recovery and retry used the tuple as key) are merged in id
  order with `fileconveyor.pipeline.queue.merge`, keeping the first occurrence's place. Items that
  were in flight (`pipeline_list`) go back in FRONT of the queue, exactly as
  `PersistentPipeline.recover_in_flight` does at start-up (merged into a waiting row for the same
  path, in that row's place). Failed items keep their own list (attempt 1, reason "imported from the
  original File Conveyor", next try now), so `status` shows where they came from and the daemon
  retries them on its first pass; a failed path that also waits or was in flight is merged into
  that row instead (the failure is the older event), as `PersistentPipeline.put_many` would.
* **DELETE_OLD_FILE** (0xFFFFFFFF, original-spec 8.2) appears in failed items: the original's
  pending deletion of a remote file's OLD processed name, carried as `dirname(source)/old_basename`.
  The current daemon has no such pseudo-event and no record of which server held that name, so it
  becomes MODIFIED for that path: if such a file exists it is synced again, otherwise the daemon
  skips it (a MODIFIED path that is no file is dropped by the arbitrator's planning). The old remote copy may stay on the server; each such row gets a report line
  so the user can remove it by hand. Unknown event values are refused and reported, never guessed.
* **synced_files.db** keeps its table (the Drupal CDN module reads it) and is migrated IN PLACE, not
  copied: its rowids are its order, which the module's server selection depends on. For the same
  reason it is not VACUUMed (VACUUM may renumber rowids of a table without an INTEGER PRIMARY KEY).
* **fsmonitor.db** is converted against `fileconveyor.fsmonitor.pathscanner`'s own DDL; why each
  file is stat()ed during the upgrade instead of converting seconds blindly is in
  `convert_pathscanner_row`.
* **Locks.** Detection takes no lock, so "already current" is answered even while a daemon runs;
  a file that needs migrating must not be held by anyone (BEGIN EXCLUSIVE, LOCK_TIMEOUT_SECONDS).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import pickle
import sqlite3
import stat as statmod
import sys
import time
import types
from typing import Callable, Iterable, Mapping, Sequence

from fileconveyor.fsmonitor import pathscanner
from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline import db
from fileconveyor.pipeline import queue as pipeline_schema
from fileconveyor.pipeline import synced_files as synced_files_schema

log = logging.getLogger(__name__)

#: The schema version this program writes. Version 1 is the original File Conveyor's format.
CURRENT_VERSION = 2
ORIGINAL_VERSION = 1

#: The original's internal pseudo-event for "delete the old remote name" (original-spec 8.2).
DELETE_OLD_FILE = 0xFFFFFFFF

IMPORTED_REASON = "imported from the original File Conveyor"

#: How long to wait for another process (a running daemon, an audit) to let go of a database.
LOCK_TIMEOUT_SECONDS = 5.0


class UpgradeError(Exception):
    """The upgrade cannot go on; the message says which file, why, and what to do."""


@dataclasses.dataclass(frozen=True)
class UpgradeOptions:
    #: fsmonitor.db: keep files whose whole-second mtime is unchanged as unchanged (see
    #: convert_pathscanner_row); False marks every file changed, so the next start re-syncs all.
    trust_mtime_seconds: bool = True


# --- reading the original's pickles -------------------------------------------------------------

class RefusedItem(Exception):
    """One legacy row cannot be converted; the message is the reason for the report."""


class _GlobalRefused(pickle.UnpicklingError):
    """The pickle asked for a global (a class or function): never legitimate in the original's items."""


class _LegacyUnpickler(pickle.Unpickler):
    """Reads the original's protocol-2 items without ever importing or calling anything.

    Tuples, unicode strings, byte strings and numbers need no global, so refusing EVERY global
    refuses exactly the pickles that could run code (REDUCE, BUILD, NEWOBJ and EXT* all need a
    callable that only `find_class` can supply). Persistent ids are refused by the base class."""

    def find_class(self, module: str, name: str) -> type:
        raise _GlobalRefused(f"refused: the pickle asks for {module}.{name}, which no "
                                     "item of the original File Conveyor contains")


def load_legacy_pickle(blob: bytes) -> object:
    """Unpickle one blob of the ORIGINAL File Conveyor's state (legacy data only: this project
    stores no pickles). Python 2 `str` values come back as bytes (encoding="bytes"), never guessed."""
    # The ONLY unpickling in this project, and for LEGACY data only: the original File Conveyor's
    # rows, read once to convert them. Our own state never holds pickles (DESIGN.md section 5).
    try:
        return _LegacyUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except _GlobalRefused as error:
        raise RefusedItem(str(error)) from None
    except Exception as error:  # truncated or garbage blobs raise many types; all mean "refuse"
        detail = " ".join(str(error).split())
        raise RefusedItem(f"not a readable pickle ({type(error).__name__}: {detail})") from None


def decode_legacy_path(value: object) -> tuple[str, str | None]:
    """The path as text, plus a note for the report when it had to be guessed.

    Byte-string paths come from databases older than the original's unicode fix (#62). They are
    decoded as UTF-8 (silently: that is what the fix itself assumed, and an old database may hold
    thousands); if that fails, as Latin-1 (every byte maps to a character, so the path is kept and
    can be checked by hand; a tree renamed to UTF-8 with convmv since then is found again)."""
    if isinstance(value, str):
        text, note = value, None
    elif isinstance(value, bytes):
        try:
            text, note = value.decode("utf-8"), None
        except UnicodeDecodeError:
            text, note = value.decode("latin-1"), "byte-string path is not UTF-8; decoded as Latin-1, check it"
    else:
        raise RefusedItem(f"path is a {type(value).__name__}, not a string")
    if not text:
        raise RefusedItem("empty path")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RefusedItem(f"path {text!r} contains lone surrogates and cannot be stored as text") from None
    return text, note


def _legacy_pair(blob: object, value_types: tuple[type, ...], what: str) -> tuple[str, int | float, str | None]:
    if not isinstance(blob, bytes):
        raise RefusedItem(f"item is stored as {type(blob).__name__}, not as a pickle blob")
    item = load_legacy_pickle(blob)
    if not (isinstance(item, tuple) and len(item) == 2):
        raise RefusedItem(f"item is {type(item).__name__} {_short(item)}, not a (path, {what}) tuple")
    raw_path, value = item
    # bool is an int subclass and protocol 2 has opcodes for it; the original never stored one.
    if isinstance(value, bool) or not isinstance(value, value_types):
        raise RefusedItem(f"{what} is {_short(value)}, not a number")
    path, note = decode_legacy_path(raw_path)
    return path, value, note  # type: ignore[return-value]  # checked against value_types above


def legacy_event_item(blob: object) -> tuple[str, int, str | None]:
    """(path, raw event value, note) from an original `(input_file, event)` item."""
    path, event, note = _legacy_pair(blob, (int,), "event")
    return path, int(event), note


def legacy_deletion_item(blob: object) -> tuple[str, float, str | None]:
    """(path, unix time, note) from an original `(input_file, deletion_time)` item."""
    path, when, note = _legacy_pair(blob, (int, float), "deletion time")
    return path, float(when), note


def map_legacy_event(value: int) -> tuple[Event, str | None]:
    """The current event for an original event value, plus a note when it was translated."""
    if value == DELETE_OLD_FILE:
        return Event.MODIFIED, ("the original's pending deletion of an old processed name (DELETE_OLD_FILE) "
                                "is queued as MODIFIED; the old remote copy may remain on the server")
    try:
        return Event(value), None
    except ValueError:
        raise RefusedItem(f"unknown event value {value} (known: 1 created, 2 modified, 4 deleted, "
                       f"{DELETE_OLD_FILE:#x} delete old file)") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the pipeline plan (pure) -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """What the new persistent_data.db holds: the queue in dispatch order, failed items, deletions."""

    queue: list[tuple[str, Event]]
    failed: list[tuple[str, Event]]
    deletions: list[tuple[str, float]]
    merged: int


def _collapse(items: Iterable[tuple[str, Event]]) -> tuple[dict[str, Event], int]:
    result: dict[str, Event] = {}
    merged = 0
    for path, event in items:
        if path in result:
            result[path] = pipeline_schema.merge(result[path], event)
            merged += 1
        else:
            result[path] = event
    return result, merged


def plan_pipeline(queued: Sequence[tuple[str, Event]], in_flight: Sequence[tuple[str, Event]],
                  failed: Sequence[tuple[str, Event]], to_delete: Sequence[tuple[str, float]]) -> PipelinePlan:
    """Combine the original's four lists (each in id order) into the current pipeline's content.

    Age order per path: a failed item is the oldest (the original retried it by queueing it again),
    then what was in flight, then what waits. `merged` counts rows folded into another row."""
    waiting, merged_waiting = _collapse(queued)
    flying, merged_flying = _collapse(in_flight)
    front: dict[str, Event] = {}
    for path, event in flying.items():
        if path in waiting:
            waiting[path] = pipeline_schema.merge(event, waiting[path])
        else:
            front[path] = event
    failing, merged_failing = _collapse(failed)
    still_failed: list[tuple[str, Event]] = []
    for path, event in failing.items():
        if path in front:
            front[path] = pipeline_schema.merge(event, front[path])
        elif path in waiting:
            waiting[path] = pipeline_schema.merge(event, waiting[path])
        else:
            still_failed.append((path, event))
    # files_to_delete_list: the last schedule for a path wins, as PersistentPipeline.schedule_deletion does.
    deletions: dict[str, float] = {}
    for path, when in to_delete:
        deletions.pop(path, None)
        deletions[path] = when
    merged = (merged_waiting + merged_flying + merged_failing + len(flying) - len(front)
              + len(failing) - len(still_failed))
    return PipelinePlan(queue=list(front.items()) + list(waiting.items()), failed=still_failed,
                        deletions=list(deletions.items()), merged=merged)


# --- inspecting a database ----------------------------------------------------------------------

def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """User tables and their column names (SQLite's own sqlite_* tables left out)."""
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")]
    return {name: [c[1] for c in conn.execute(f'PRAGMA table_info("{name}")')] for name in names}


#: The column lists a table of an older format may have.
_Layouts = frozenset[tuple[str, ...]]


def _refuse_newer(label: str, path: str, version: int) -> None:
    if version > CURRENT_VERSION:
        raise UpgradeError(f"{path} has schema version {version}, newer than this fileconveyor knows "
                           f"({CURRENT_VERSION}); it was written by a newer fileconveyor. Use that version, "
                           f"or restore the {label} backup made before it upgraded")


def _version_from_shape(label: str, path: str, conn: sqlite3.Connection,
                        original: Mapping[str, _Layouts]) -> int | None:
    """Schema version of a database; None for an empty file. `original` maps each table of the
    original's format to its accepted column lists; anything else is refused, never guessed."""
    version = _user_version(conn)
    _refuse_newer(label, path, version)
    tables = _tables(conn)
    if version == CURRENT_VERSION:
        return CURRENT_VERSION
    if not tables:
        return None
    for name, columns in tables.items():
        if name not in original:
            raise UpgradeError(f"{path} has a table {name!r} that no File Conveyor {label} contains "
                               f"(expected {', '.join(sorted(original))}); is this the right file? "
                               "Nothing was changed")
        if tuple(columns) not in original[name]:
            raise UpgradeError(f"{path}: table {name} has columns ({', '.join(columns)}), which is not "
                               f"a layout this upgrade knows; nothing was changed")
    if version not in (0, ORIGINAL_VERSION):
        raise UpgradeError(f"{path} has schema version {version} but the original File Conveyor's tables; "
                           "nothing was changed")
    return ORIGINAL_VERSION


# --- persistent_data.db -------------------------------------------------------------------------

_LIST_COLUMNS: _Layouts = frozenset({("id", "item")})
_PERSISTENT_ORIGINAL: dict[str, _Layouts] = {
    # keyed (Aug 2011 and later) and unkeyed (older, README.txt) pipeline_queue
    "pipeline_queue": frozenset({("id", "item", "key"), ("id", "item")}),
    "pipeline_list": _LIST_COLUMNS,
    "failed_files_list": _LIST_COLUMNS,
    "files_to_delete_list": _LIST_COLUMNS,
}


def _detect_persistent(path: str, conn: sqlite3.Connection) -> int | None:
    return _version_from_shape("persistent_data.db", path, conn, _PERSISTENT_ORIGINAL)


def _legacy_rows(conn: sqlite3.Connection, table: str, tables: dict[str, list[str]]) -> list[tuple[int, object]]:
    if table not in tables:
        return []
    # CAST: the blob comes back as bytes whatever storage class Python 2's sqlite3 gave it.
    return conn.execute(f"SELECT id, CAST(item AS BLOB) FROM {table} ORDER BY id").fetchall()


def _read_events(conn: sqlite3.Connection, table: str, tables: dict[str, list[str]],
                 report: list[str]) -> list[tuple[str, Event]]:
    items: list[tuple[str, Event]] = []
    for row_id, blob in _legacy_rows(conn, table, tables):
        try:
            path, value, note = legacy_event_item(blob)
            event, event_note = map_legacy_event(value)
        except RefusedItem as refusal:
            report.append(f"  refused {table} row {row_id}: {refusal}")
            continue
        for text in (note, event_note):
            if text:
                report.append(f"  note {table} row {row_id} ({path}): {text}")
        items.append((path, event))
    return items


def _read_deletions(conn: sqlite3.Connection, tables: dict[str, list[str]],
                    report: list[str]) -> list[tuple[str, float]]:
    items: list[tuple[str, float]] = []
    for row_id, blob in _legacy_rows(conn, "files_to_delete_list", tables):
        try:
            path, when, note = legacy_deletion_item(blob)
        except RefusedItem as refusal:
            report.append(f"  refused files_to_delete_list row {row_id}: {refusal}")
            continue
        if note:
            report.append(f"  note files_to_delete_list row {row_id} ({path}): {note}")
        items.append((path, when))
    return items


def _migrate_persistent(conn: sqlite3.Connection, report: list[str], options: UpgradeOptions) -> None:
    """Original format -> version 2, inside the caller's transaction.

    The old tables are renamed out of the way, the current SCHEMA (the very DDL PersistentPipeline
    runs) creates the new ones under their real names, rows are copied, the old tables dropped."""
    tables = _tables(conn)
    layout = "keyed" if "key" in tables.get("pipeline_queue", []) else "unkeyed"
    report.append(f"  original format ({layout} pipeline_queue)")
    queued = _read_events(conn, "pipeline_queue", tables, report)
    in_flight = _read_events(conn, "pipeline_list", tables, report)
    failed = _read_events(conn, "failed_files_list", tables, report)
    to_delete = _read_deletions(conn, tables, report)
    plan = plan_pipeline(queued, in_flight, failed, to_delete)

    for name in tables:
        conn.execute(f"ALTER TABLE {name} RENAME TO {name}_original")
    for statement in pipeline_schema.SCHEMA:
        conn.execute(statement)
    now = time.time()
    conn.executemany("INSERT INTO pipeline_queue(id, input_file, event, queued_at) VALUES (?, ?, ?, ?)",
                     [(n, path, int(event), now) for n, (path, event) in enumerate(plan.queue, start=1)])
    conn.executemany("INSERT INTO failed_files_list(input_file, event, attempts, done, kind, reason, failed_at, "
                     "next_try) VALUES (?, ?, 1, '[]', 'retryable', ?, ?, ?)",
                     [(path, int(event), IMPORTED_REASON, now, now) for path, event in plan.failed])
    conn.executemany("INSERT INTO files_to_delete_list(input_file, delete_at, state) VALUES (?, ?, 'scheduled')",
                     plan.deletions)
    for name in tables:
        conn.execute(f"DROP TABLE {name}_original")

    report.append(f"  read: {len(queued)} queued, {len(in_flight)} in flight, {len(failed)} failed, "
                  f"{len(to_delete)} scheduled deletions")
    report.append(f"  pipeline_queue: {len(plan.queue)} paths (in-flight items first; "
                  f"{plan.merged} rows merged into another row for the same path)")
    report.append(f"  failed_files_list: {len(plan.failed)} paths, retried on the daemon's first pass")
    report.append(f"  files_to_delete_list: {len(plan.deletions)} scheduled")


# --- synced_files.db ----------------------------------------------------------------------------

_SYNCED_COLUMNS = ("input_file", "transported_file_basename", "url", "server")
_SYNCED_ORIGINAL: dict[str, _Layouts] = {"synced_files": frozenset({_SYNCED_COLUMNS})}


def _has_unique_index(conn: sqlite3.Connection) -> bool:
    for _, name, unique, *_ in conn.execute("PRAGMA index_list(synced_files)").fetchall():
        columns = [c[2] for c in conn.execute(f'PRAGMA index_info("{name}")')]
        if unique and columns == ["input_file", "server"]:
            return True
    return False


def _detect_synced(path: str, conn: sqlite3.Connection) -> int | None:
    """Version 2 also needs the unique index: databases from before June 2009 lack it."""
    version = _version_from_shape("synced_files.db", path, conn, _SYNCED_ORIGINAL)
    if version == CURRENT_VERSION and "synced_files" in _tables(conn) and not _has_unique_index(conn):
        return ORIGINAL_VERSION
    return version


def _migrate_synced(conn: sqlite3.Connection, report: list[str], options: UpgradeOptions) -> None:
    """In place: the table's shape is unchanged; make sure the unique index exists."""
    if "synced_files" not in _tables(conn):
        for statement in synced_files_schema.SCHEMA:
            conn.execute(statement)
        report.append("  synced_files: created (empty)")
        return
    rows = conn.execute("SELECT COUNT(*) FROM synced_files").fetchone()[0]
    if _has_unique_index(conn):
        report.append(f"  synced_files: {rows} rows kept as they are")
        return
    # Keep the last row per (input_file, server): the original updated rows in place, so the
    # highest rowid is the latest record. NULLs are distinct under a unique index, so rows with
    # a NULL key never collide and are kept.
    dropped = conn.execute(
        "DELETE FROM synced_files WHERE input_file IS NOT NULL AND server IS NOT NULL AND rowid NOT IN "
        "(SELECT MAX(rowid) FROM synced_files WHERE input_file IS NOT NULL AND server IS NOT NULL "
        "GROUP BY input_file, server)").rowcount
    stale = conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'file_unique_per_server'"
                         ).fetchone()
    if stale:
        conn.execute("DROP INDEX file_unique_per_server")
    for statement in synced_files_schema.SCHEMA:
        conn.execute(statement)
    report.append(f"  synced_files: {rows - dropped} rows kept; unique index on (input_file, server) created; "
                  f"{dropped} duplicate rows dropped (the last row per file and server was kept)")


# --- fsmonitor.db -------------------------------------------------------------------------------

_PATHSCANNER_ORIGINAL: dict[str, _Layouts] = {"pathscanner": frozenset({("path", "filename", "mtime")})}
_NS_PER_SECOND = 1_000_000_000


def _detect_fsmonitor(path: str, conn: sqlite3.Connection) -> int | None:
    return _version_from_shape("fsmonitor.db", path, conn, _PATHSCANNER_ORIGINAL)


def convert_pathscanner_row(directory: str, name: str, mtime: int, *, trust_mtime_seconds: bool = True,
                            stat: Callable[[str], os.stat_result] = os.stat) -> tuple[str, str, int, int, int]:
    """One original index row (mtime in whole seconds, -1 for directories) as a current row
    (path, filename, mtime_ns, size, is_dir).

    The current scanner (fileconveyor.fsmonitor.pathscanner) reports a file MODIFIED whenever its
    (mtime_ns, size) differs from the index; it has no notion of "size unknown" or "compare at
    second resolution". Writing `mtime * 10**9` with size -1 would therefore make the first scan
    after the upgrade re-sync EVERY file: safe, but for a large tree hours of needless uploads.

    So the file is looked at now, with the original's own rule: if it is a regular file whose
    whole-second mtime equals the recorded one, the original would have found no change at its next
    start, and the current (mtime_ns, size) is recorded, so the next scan finds none either.
    Anything else (changed, gone, unreadable, no longer a regular file) gets `mtime * 10**9` and
    size -1, which never matches the disk, so the scan reports it (MODIFIED, or DELETED when gone).
    The one blind spot is the original's: a change within the same second as the recorded mtime
    goes unnoticed until the file changes again. `trust_mtime_seconds=False` closes it by marking
    every file changed (full re-sync), for those who prefer that.

    Directory rows (-1) become the scanner's directory entry. A trailing '/' on the directory (a
    scanPath configured with one) is removed: the scanner's keys have none, and an unmatched key
    would read as the file deleted and created again in one scan."""
    directory = directory.rstrip("/") or "/"
    if mtime < 0:
        entry = pathscanner.DIR_ENTRY
        return directory, name, entry.mtime_ns, entry.size, int(entry.is_dir)
    if trust_mtime_seconds:
        try:
            st = stat(pathscanner.join_key((directory, name)))
        except (OSError, ValueError):
            st = None
        if st is not None and statmod.S_ISREG(st.st_mode) and st.st_mtime_ns // _NS_PER_SECOND == mtime:
            return directory, name, st.st_mtime_ns, st.st_size, 0
    return directory, name, mtime * _NS_PER_SECOND, -1, 0


def _migrate_fsmonitor(conn: sqlite3.Connection, report: list[str], options: UpgradeOptions) -> None:
    """Original pathscanner -> the current one (schema from fileconveyor.fsmonitor.pathscanner)."""
    conn.execute("ALTER TABLE pathscanner RENAME TO pathscanner_original")
    conn.execute("DROP INDEX IF EXISTS file_unique_per_path")
    conn.execute(pathscanner.CREATE_TABLE)
    conn.execute(pathscanner.CREATE_INDEX)
    rows = conn.execute("SELECT rowid, path, filename, mtime FROM pathscanner_original ORDER BY rowid").fetchall()
    converted: list[tuple[str, str, int, int, int]] = []
    for row_id, directory, name, mtime in rows:
        if not (isinstance(directory, str) and isinstance(name, str) and isinstance(mtime, int)
                and directory and name):
            report.append(f"  refused pathscanner row {row_id}: {_short((directory, name, mtime))} is not "
                          "(directory, name, integer mtime); the next scan treats that entry as new")
            continue
        converted.append(convert_pathscanner_row(directory, name, mtime, trust_mtime_seconds=options.trust_mtime_seconds))
    # INSERT OR REPLACE: two original rows can meet once a trailing '/' is removed; the later wins.
    conn.executemany("INSERT OR REPLACE INTO pathscanner(path, filename, mtime, size, is_dir) VALUES (?, ?, ?, ?, ?)",
                     converted)
    conn.execute("DROP TABLE pathscanner_original")
    directories = sum(1 for row in converted if row[4])
    unchanged = sum(1 for row in converted if not row[4] and row[3] >= 0)
    changed = len(converted) - directories - unchanged
    report.append(f"  pathscanner: {len(converted)} of {len(rows)} entries converted: {directories} directories, "
                  f"{unchanged} files unchanged since the original saw them (current mtime and size recorded), "
                  f"{changed} files changed, gone or not checked (the next scan reports them)")


# --- the procedure ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Kind:
    label: str
    detect: Callable[[str, sqlite3.Connection], int | None]
    #: One migration per version: MIGRATIONS[v] brings version v to v + 1, in the caller's transaction.
    migrations: dict[int, Callable[[sqlite3.Connection, list[str], UpgradeOptions], None]]
    vacuum: bool


_PERSISTENT = _Kind("persistent_data.db", _detect_persistent, {ORIGINAL_VERSION: _migrate_persistent}, True)
_SYNCED = _Kind("synced_files.db", _detect_synced, {ORIGINAL_VERSION: _migrate_synced}, False)
_FSMONITOR = _Kind("fsmonitor.db", _detect_fsmonitor, {ORIGINAL_VERSION: _migrate_fsmonitor}, True)


def _connect(path: str) -> sqlite3.Connection:
    """Through the state-database gate (its busy timeout, errors naming the file), with a short
    timeout: a daemon holding the file is reported, not waited for."""
    try:
        return db.connect(path, timeout=LOCK_TIMEOUT_SECONDS)
    except db.DatabaseError as error:
        raise UpgradeError(f"{error}; nothing was changed") from None


def _backup_path(path: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = f"{path}.bak-{stamp}"
    n = 1
    while os.path.lexists(candidate):
        candidate = f"{path}.bak-{stamp}-{n}"
        n += 1
    return candidate


def _backup(conn: sqlite3.Connection, path: str) -> str:
    """A consistent copy of the database, mode 0600 (it holds the same paths as the original)."""
    target = _backup_path(path)
    fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    os.chmod(target, 0o600)
    copy = _connect(target)
    try:
        conn.backup(copy)
    finally:
        copy.close()
    return target


def _in_use(path: str, error: sqlite3.Error) -> UpgradeError:
    return UpgradeError(f"{path} is in use by another process ({error}); stop fileconveyor (and anything "
                        "else using the file), then run the upgrade again")


def _begin_exclusive(conn: sqlite3.Connection, path: str) -> None:
    try:
        conn.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as error:
        raise _in_use(path, error) from None


def _upgrade_file(path: str, kind: _Kind, options: UpgradeOptions) -> list[str]:
    header = f"{kind.label} ({path})"
    if not os.path.exists(path):
        return [f"{header}: not found, nothing to do"]
    conn = _connect(path)
    try:
        return _upgrade_open_file(path, kind, conn, header, options)
    except sqlite3.Error as error:
        raise UpgradeError(f"{path}: {error}; the file was not changed (a failed migration is rolled "
                           "back). Check it with `sqlite3 FILE 'PRAGMA integrity_check'`") from None
    finally:
        conn.close()


def _upgrade_open_file(path: str, kind: _Kind, conn: sqlite3.Connection, header: str,
                       options: UpgradeOptions) -> list[str]:
    """Detect (no lock: a current database needs none, so re-running is harmless while the daemon
    runs), make sure nobody else holds the file, back it up, then migrate under an exclusive lock."""
    version = kind.detect(path, conn)
    if version is None:
        return [f"{header}: empty, nothing to do"]
    if version == CURRENT_VERSION:
        return [f"{header}: already current (schema {CURRENT_VERSION})"]
    _begin_exclusive(conn, path)
    conn.execute("ROLLBACK")  # only proving that nobody holds the file
    data_version = conn.execute("PRAGMA data_version").fetchone()[0]
    backup = _backup(conn, path)
    report = [f"{header}: schema {version} -> {CURRENT_VERSION}; backup: {backup}"]
    _begin_exclusive(conn, path)
    try:
        if (conn.execute("PRAGMA data_version").fetchone()[0] != data_version
                or kind.detect(path, conn) != version):
            raise UpgradeError(f"{path} was changed by another process during the upgrade; stop fileconveyor, "
                               "then run the upgrade again (the file was not changed by the upgrade)")
        while version < CURRENT_VERSION:
            kind.migrations[version](conn, report, options)
            version += 1
        conn.execute(f"PRAGMA user_version = {CURRENT_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # SQLite rolls back by itself on a full disk; that error is the one to show
            conn.execute("ROLLBACK")
        raise
    if kind.vacuum:
        conn.execute("VACUUM")
    log.info("upgraded %s to schema %d", path, CURRENT_VERSION)
    return report


def _refuse_newer_files(paths: Sequence[tuple[str, _Kind]]) -> None:
    """Before anything is written: a file from a newer fileconveyor stops the whole upgrade."""
    for path, kind in paths:
        if not os.path.exists(path):
            continue
        conn = _connect(path)
        try:
            version = _user_version(conn)
        except sqlite3.Error as error:
            if "locked" in str(error):
                raise _in_use(path, error) from None
            if isinstance(db.classify(path, error), db.DatabaseDamaged):
                raise UpgradeError(f"{path} is damaged ({error}); nothing was changed. Restore it from a "
                                   "backup, or move it aside and run `fileconveyor upgrade --resync-all`") from None
            raise UpgradeError(f"cannot read {path}: {error}; nothing was changed") from None
        finally:
            conn.close()
        _refuse_newer(kind.label, path, version)


def upgrade_databases(persistent_data_db: str, synced_files_db: str, fsmonitor_db: str,
                      options: UpgradeOptions | None = None) -> list[str]:
    """Bring the three state databases to the current schema; returns the report, line by line.

    Every file is migrated atomically, one after the other; on an UpgradeError the files before it
    stay upgraded (the message repeats their report) and the failing one is unchanged."""
    options = options or UpgradeOptions()
    files = ((persistent_data_db, _PERSISTENT), (synced_files_db, _SYNCED), (fsmonitor_db, _FSMONITOR))
    _refuse_newer_files(files)
    report: list[str] = []
    for path, kind in files:
        try:
            report.extend(_upgrade_file(path, kind, options))
        except UpgradeError as error:
            if report:
                raise UpgradeError(f"{error}\n(before this, the upgrade reported:\n" + "\n".join(report) + ")") from None
            raise
    return report


# --- command line -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fileconveyor upgrade",
        description="Bring File Conveyor's state databases (persistent_data.db, synced_files.db, fsmonitor.db) "
                    "to the current schema, including those of the original File Conveyor. Every pending item "
                    "is kept; each changed file is backed up first as FILE.bak-TIMESTAMP. Stop the daemon first.")
    parser.add_argument("--config", metavar="FILE",
                        help="config.xml whose <settings> name the databases (default: the default file names "
                             "in the current directory, where the original File Conveyor kept them)")
    parser.add_argument("--persistent-data-db", metavar="FILE", help="overrides PERSISTENT_DATA_DB")
    parser.add_argument("--synced-files-db", metavar="FILE", help="overrides SYNCED_FILES_DB")
    parser.add_argument("--fsmonitor-db", metavar="FILE", help="overrides FSMONITOR_DB")
    parser.add_argument("--resync-all", action="store_true",
                        help="compare every file again at the next start: the path index (fsmonitor.db) is "
                             "emptied and seeded from synced_files.db, so files still on disk are synced again "
                             "and files gone are deleted remotely; also the way to accept a synced_files.db "
                             "that was lost or replaced. For an original fsmonitor.db: mark every file changed "
                             "(default: files whose whole-second mtime is unchanged are kept as synced)")
    return parser


def _state_settings(args: argparse.Namespace) -> types.SimpleNamespace:
    """The database paths (explicit options first, then the config's settings, then the defaults),
    SYNCED_FILES_WAL and PID_FILE. Raises ConfigError/SettingError/OSError for a config that
    cannot be read."""
    from fileconveyor import settings as settings_module

    explicit = tuple(os.path.abspath(p) if p else None
                     for p in (args.persistent_data_db, args.synced_files_db, args.fsmonitor_db))
    if args.config:
        from fileconveyor.config import load_config

        settings = load_config(args.config, for_daemon=False).settings
    else:
        settings = settings_module.defaults(os.getcwd())
    return types.SimpleNamespace(
        PERSISTENT_DATA_DB=explicit[0] or settings.PERSISTENT_DATA_DB,
        SYNCED_FILES_DB=explicit[1] or settings.SYNCED_FILES_DB,
        FSMONITOR_DB=explicit[2] or settings.FSMONITOR_DB,
        SYNCED_FILES_WAL=settings.SYNCED_FILES_WAL, PID_FILE=settings.PID_FILE, explicit=settings.explicit)


def resync_all(settings: types.SimpleNamespace) -> list[str]:
    """`--resync-all` for current databases: the next start compares every file with the disk
    (fileconveyor.pipeline.state.reset_index). Refused while the daemon runs."""
    from fileconveyor.daemon import running_pid
    from fileconveyor.pipeline import state

    pid = running_pid(settings.PID_FILE)
    if pid is not None:
        raise UpgradeError(f"File Conveyor is running (PID {pid}, PID file {settings.PID_FILE}); stop it "
                           "first with `fileconveyor stop`, then run `fileconveyor upgrade --resync-all` again")
    try:
        return state.reset_index(settings)
    except db.DatabaseError as error:
        raise UpgradeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """`fileconveyor upgrade`: 0 when every database is current, 2 for a bad config, 1 otherwise."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse already printed usage or help
        return exit_request.code if isinstance(exit_request.code, int) else 2
    try:
        settings = _state_settings(args)
    except Exception as error:  # ConfigError, SettingError, OSError: all mean "fix the config"
        log.debug("loading %s failed", args.config, exc_info=True)
        print(f"fileconveyor upgrade: cannot use the config {args.config}:\n{error}", file=sys.stderr)
        return 2
    from fileconveyor.daemon import DaemonError, legacy_pid_file_note, refuse_beside_legacy_daemon
    try:
        refuse_beside_legacy_daemon(settings)  # an older daemon may be using the files to convert
        report = upgrade_databases(settings.PERSISTENT_DATA_DB, settings.SYNCED_FILES_DB, settings.FSMONITOR_DB,
                                   UpgradeOptions(trust_mtime_seconds=not args.resync_all))
        if args.resync_all:
            report.extend(resync_all(settings))
        report.extend(f"NOTE: {note}" for note in (legacy_pid_file_note(settings),) if note)
    except (UpgradeError, DaemonError) as error:
        print(f"fileconveyor upgrade: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # last resort: no traceback may reach a user
        log.debug("upgrade failed unexpectedly", exc_info=True)
        print(f"fileconveyor upgrade: unexpected error ({type(error).__name__}: {error}); the database being "
              "upgraded is unchanged and its backup is beside it. Please report this as a bug", file=sys.stderr)
        return 1
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(threadName)s %(name)s: %(message)s")
    sys.exit(main())
