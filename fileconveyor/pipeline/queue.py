"""The persistent pipeline: waiting, in-flight, failed and scheduled-for-deletion files.

`persistent_data.db` keeps the original's table names (the Drupal CDN module counts rows in
`pipeline_queue` and `pipeline_list`) with readable columns instead of pickles:

* `pipeline_queue`: one row per path waiting to be synced, in arrival order (`id`). A new event for
  a waiting path is merged into its row by `merge()` (DESIGN.md section 4) and keeps its place.
* `pipeline_list`: paths in flight. A path is never in flight twice: an event for an in-flight path
  waits in the queue, so two versions of one file never race (the original ran them concurrently).
  Rows move here in the same transaction that takes them off the queue (ack after success, as in
  persist-queue): after a crash, `recover_in_flight()` puts them back in front of the queue.
* `failed_files_list`: paths whose last attempt failed, with the reason, the kind of error, the
  attempt count and the time of the next try. Retries back off exponentially with jitter up to a
  cap and never stop: nothing is dropped silently. A new event for a failed path supersedes the
  wait and merges with the failed event.
* `files_to_delete_list`: source files scheduled for removal by `fileDeletionDelayAfterSync`, then
  (state 'deleted') remembered until the monitor reports their deletion, which is not propagated.
* `dependencies`: which files' URLs a processed file embeds (CSS -> images), per server, so that
  a new URL queues the dependent file again.
"""
from __future__ import annotations

import dataclasses
import json
import random
import time
from typing import Iterable, Sequence

from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline.db import Database

SCHEMA_VERSION = 2

# DDL as named constants. `done` holds the destinations (JSON list of "rule|server" keys) that a
# partly failed attempt already completed, so a retry does not upload there again; a new event
# for the path clears it because the content changed.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pipeline_queue(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        input_file TEXT NOT NULL UNIQUE,
        event INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        done TEXT NOT NULL DEFAULT '[]',
        queued_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pipeline_list(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        input_file TEXT NOT NULL UNIQUE,
        event INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        done TEXT NOT NULL DEFAULT '[]',
        started_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS failed_files_list(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        input_file TEXT NOT NULL UNIQUE,
        event INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        done TEXT NOT NULL DEFAULT '[]',
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        failed_at REAL NOT NULL,
        next_try REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS failed_next_try ON failed_files_list(next_try)",
    # size/mtime_ns/inode: the content that was synced. The source is deleted only while the file on
    # disk is still that content (NULL for rows migrated from the original, which did not know).
    """CREATE TABLE IF NOT EXISTS files_to_delete_list(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        input_file TEXT NOT NULL UNIQUE,
        delete_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'scheduled',
        size INTEGER,
        mtime_ns INTEGER,
        inode INTEGER)""",
    # Upload intents: written before an upload starts, removed once its row is in synced_files.db.
    # A crash in between leaves the row here, so the remote copy can still be found and deleted.
    """CREATE TABLE IF NOT EXISTS pending_uploads(
        input_file TEXT NOT NULL,
        server TEXT NOT NULL,
        remote_path TEXT NOT NULL,
        PRIMARY KEY (input_file, server, remote_path))""",
    """CREATE TABLE IF NOT EXISTS dependencies(
        dependent TEXT NOT NULL,
        dependency TEXT NOT NULL,
        server TEXT NOT NULL,
        PRIMARY KEY (dependency, server, dependent))""",
)

_MERGE = {
    (Event.CREATED, Event.CREATED): Event.CREATED,
    (Event.CREATED, Event.MODIFIED): Event.CREATED,
    (Event.CREATED, Event.DELETED): Event.DELETED,
    (Event.MODIFIED, Event.CREATED): Event.MODIFIED,
    (Event.MODIFIED, Event.MODIFIED): Event.MODIFIED,
    (Event.MODIFIED, Event.DELETED): Event.DELETED,
    (Event.DELETED, Event.CREATED): Event.MODIFIED,
    (Event.DELETED, Event.MODIFIED): Event.MODIFIED,
    (Event.DELETED, Event.DELETED): Event.DELETED,
}


def merge(waiting: Event, new: Event) -> Event:
    """The event that stands for `waiting` followed by `new` (DESIGN.md section 4).

    Unlike the original, CREATED + DELETED is DELETED, not a cancellation: cancelling loses the
    deletion of a file that was synced before its index was lost."""
    return _MERGE[(Event(waiting), Event(new))]


def retry_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next try after `attempts` failures: base * 2^(attempts-1), capped, with
    +-25 % jitter so that many files failing together do not retry in lockstep."""
    exponent = min(max(attempts - 1, 0), 30)
    delay = min(base * (2 ** exponent), cap)
    jitter = (rng or random).uniform(0.75, 1.25)
    return max(0.0, min(delay * jitter, cap))


#: Columns added to existing tables after version 2 was first released: (table, column, type).
ADDED_COLUMNS = (
    ("files_to_delete_list", "size", "INTEGER"),
    ("files_to_delete_list", "mtime_ns", "INTEGER"),
    ("files_to_delete_list", "inode", "INTEGER"),
    # The paused server a waiting path is blocked on: it stays in the queue (the Drupal module and
    # `status` count it as waiting, which it is) but is not claimed until `unblock(server)`.
    ("pipeline_queue", "blocked_on", "TEXT"),
)
#: Indexes on added columns (created after the columns exist).
ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS queue_blocked_on ON pipeline_queue(blocked_on, id)",
)

#: A trip that ended this way waits for a paused server, not for a timer: the path goes back to
#: the queue blocked on that server, holding no place in the pipeline, until the server is back.
PAUSED = "paused"


@dataclasses.dataclass(frozen=True)
class SourceIdentity:
    """What identifies one version of a source file on disk: its size, mtime (ns) and inode."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, stat_result) -> "SourceIdentity":
        return cls(stat_result.st_size, stat_result.st_mtime_ns, stat_result.st_ino)


@dataclasses.dataclass(frozen=True)
class Item:
    input_file: str
    event: Event
    attempts: int = 0
    done: frozenset[str] = frozenset()
    #: When the event was queued (claim() sets it): the start of the change-to-destination latency.
    queued_at: float | None = None


@dataclasses.dataclass(frozen=True)
class FailedItem:
    input_file: str
    event: Event
    attempts: int
    kind: str
    reason: str
    failed_at: float
    next_try: float


def _done(text: str) -> frozenset[str]:
    try:
        return frozenset(json.loads(text))
    except (ValueError, TypeError):
        return frozenset()


class PersistentPipeline:
    """The four lists of persistent_data.db behind one small API; every method is one transaction."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        # journal=None keeps the mode state.prepare() set from PERSISTENT_DATA_WAL (new file: rollback)
        self.db = Database(path, SCHEMA, SCHEMA_VERSION, readonly=readonly, journal=None)
        if not readonly:
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        with self.db.transaction() as conn:
            for table, column, kind in ADDED_COLUMNS:
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in ADDED_INDEXES:
                conn.execute(statement)

    def close(self) -> None:
        self.db.close()

    # --- events in -----------------------------------------------------------------------

    def put_many(self, events: Iterable[tuple[str, Event]]) -> int:
        """Queue events, merging each with what is already waiting or failed for its path.

        Any event cancels a scheduled deletion of the path's source: the file changed (or went)
        after the sync that scheduled it, so that sync no longer vouches for its content."""
        count = 0
        now = time.time()
        with self.db.transaction() as conn:
            for input_file, event in events:
                count += 1
                event = Event(event)
                # A 'deleted' row stays: it is what keeps the DELETED event of our own unlink from
                # being propagated, and an event that says otherwise may be stale (a rescan that
                # looked before the unlink). The trip that finds the file back on disk forgets it.
                conn.execute("DELETE FROM files_to_delete_list WHERE input_file = ? AND state = 'scheduled'",
                             (input_file,))
                row = conn.execute("SELECT event FROM pipeline_queue WHERE input_file = ?",
                                   (input_file,)).fetchone()
                if row is not None:
                    conn.execute("UPDATE pipeline_queue SET event = ?, attempts = 0, done = '[]', blocked_on = NULL "
                                 "WHERE input_file = ?", (int(merge(Event(row[0]), event)), input_file))
                    continue
                failed = conn.execute("SELECT event FROM failed_files_list WHERE input_file = ?",
                                      (input_file,)).fetchone()
                if failed is not None:
                    conn.execute("DELETE FROM failed_files_list WHERE input_file = ?", (input_file,))
                    event = merge(Event(failed[0]), event)
                conn.execute("INSERT INTO pipeline_queue(input_file, event, queued_at) VALUES (?, ?, ?)",
                             (input_file, int(event), now))
        return count

    # --- dispatching -----------------------------------------------------------------------

    def claim(self, limit: int, busy: "frozenset[str] | set[str]" = frozenset()) -> list[Item]:
        """Move up to `limit` of the oldest waiting paths that are neither in flight nor `busy`
        (paths the caller is working on outside the queue) to `pipeline_list`."""
        if limit <= 0:
            return []
        now = time.time()
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT q.id, q.input_file, q.event, q.attempts, q.done, q.queued_at FROM pipeline_queue q "
                "WHERE q.blocked_on IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM pipeline_list l WHERE l.input_file = q.input_file) "
                "ORDER BY q.id LIMIT ?", (limit + len(busy),)).fetchall()
            rows = [r for r in rows if r[1] not in busy][:limit]
            for row_id, input_file, event, attempts, done, _queued_at in rows:
                conn.execute("DELETE FROM pipeline_queue WHERE id = ?", (row_id,))
                conn.execute("INSERT INTO pipeline_list(input_file, event, attempts, done, started_at) "
                             "VALUES (?, ?, ?, ?, ?)", (input_file, event, attempts, done, now))
        return [Item(r[1], Event(r[2]), r[3], _done(r[4]), r[5]) for r in rows]

    def complete(self, input_file: str) -> None:
        self.complete_many([input_file])

    def complete_many(self, input_files: Sequence[str]) -> None:
        """These paths are done: one transaction for all (one commit per file was the daemon's
        main cost with a rollback journal)."""
        with self.db.transaction() as conn:
            conn.executemany("DELETE FROM pipeline_list WHERE input_file = ?", [(f,) for f in input_files])

    def fail(self, item: Item, kind: str, reason: str, delay: float, done: Iterable[str] = ()) -> FailedItem | None:
        """Move an in-flight item to the failed list, or merge it into a newer waiting event.

        Returns the failed entry, or None when a newer event for the path was already waiting
        (then that event, merged with this one, will be dispatched instead)."""
        now = time.time()
        attempts = item.attempts + 1
        with self.db.transaction() as conn:
            if self._land_in_newer_event(conn, item):
                return None
            conn.execute(
                "INSERT OR REPLACE INTO failed_files_list"
                "(input_file, event, attempts, done, kind, reason, failed_at, next_try) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (item.input_file, int(item.event), attempts, json.dumps(sorted(done)), kind, reason,
                 now, now + delay))
        return FailedItem(item.input_file, item.event, attempts, kind, reason, now, now + delay)

    @staticmethod
    def _land_in_newer_event(conn, item: Item) -> bool:
        """Take `item` out of flight; if a newer event for its path waits, merge into it (True)."""
        conn.execute("DELETE FROM pipeline_list WHERE input_file = ?", (item.input_file,))
        waiting = conn.execute("SELECT event FROM pipeline_queue WHERE input_file = ?", (item.input_file,)).fetchone()
        if waiting is None:
            return False
        conn.execute("UPDATE pipeline_queue SET event = ?, attempts = 0, done = '[]', blocked_on = NULL "
                     "WHERE input_file = ?", (int(merge(item.event, Event(waiting[0]))), item.input_file))
        return True

    def requeue_due(self, now: float | None = None, limit: int = 500) -> int:
        """Move failed items whose next try has come back to the end of the queue."""
        now = time.time() if now is None else now
        due = self.next_retry_time()
        if due is None or due > now:
            return 0  # the common case: no write transaction at all
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT input_file, event, attempts, done FROM failed_files_list "
                                "WHERE next_try <= ? ORDER BY next_try LIMIT ?", (now, limit)).fetchall()
            for input_file, event, attempts, done in rows:
                conn.execute("DELETE FROM failed_files_list WHERE input_file = ?", (input_file,))
                conn.execute("INSERT OR IGNORE INTO pipeline_queue(input_file, event, attempts, done, queued_at) "
                             "VALUES (?, ?, ?, ?, ?)", (input_file, event, attempts, done, now))
        return len(rows)

    def requeue_now(self, input_files: Sequence[str]) -> int:
        """Retry these failed items at once (their dependencies were synced, or a user asked)."""
        now = time.time()
        moved = 0
        with self.db.transaction() as conn:
            for input_file in input_files:
                row = conn.execute("SELECT event, attempts, done FROM failed_files_list WHERE input_file = ?",
                                   (input_file,)).fetchone()
                if row is None:
                    continue
                conn.execute("DELETE FROM failed_files_list WHERE input_file = ?", (input_file,))
                conn.execute("INSERT OR IGNORE INTO pipeline_queue(input_file, event, attempts, done, queued_at) "
                             "VALUES (?, ?, ?, ?, ?)", (input_file, row[0], row[1], row[2], now))
                moved += 1
        return moved

    def block(self, item: Item, server: str, done: Iterable[str] = ()) -> bool:
        """Put an in-flight item back in the queue, blocked until `server` is unblocked (it is
        paused). Not an attempt: the backoff does not grow. Returns False when a newer event for
        the path was waiting (it is merged and dispatched as usual)."""
        with self.db.transaction() as conn:
            if self._land_in_newer_event(conn, item):
                return False
            conn.execute("INSERT INTO pipeline_queue(input_file, event, attempts, done, queued_at, blocked_on) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (item.input_file, int(item.event), item.attempts,
                                                       json.dumps(sorted(done)), time.time(), server))
        return True

    def unblock(self, server: str | None = None) -> int:
        """Make the paths blocked on `server` (on any server if None) claimable again."""
        with self.db.transaction() as conn:
            if server is None:
                cursor = conn.execute("UPDATE pipeline_queue SET blocked_on = NULL WHERE blocked_on IS NOT NULL")
            else:
                cursor = conn.execute("UPDATE pipeline_queue SET blocked_on = NULL WHERE blocked_on = ?", (server,))
            return cursor.rowcount

    def blocked_counts(self) -> dict[str, int]:
        """Waiting paths per paused server they are blocked on."""
        return dict(self.db.query("SELECT blocked_on, COUNT(*) FROM pipeline_queue "
                                  "WHERE blocked_on IS NOT NULL GROUP BY blocked_on"))

    def has_pending_event(self, input_file: str) -> bool:
        """Is an event for `input_file` waiting, in flight or failed (and so still to be synced)?"""
        return bool(self.db.query(
            "SELECT 1 FROM pipeline_queue WHERE input_file = ? UNION ALL "
            "SELECT 1 FROM pipeline_list WHERE input_file = ? UNION ALL "
            "SELECT 1 FROM failed_files_list WHERE input_file = ? LIMIT 1", (input_file,) * 3))

    def next_retry_time(self) -> float | None:
        rows = self.db.query("SELECT MIN(next_try) FROM failed_files_list")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def recover_in_flight(self) -> int:
        """Start-up: put everything left in flight by a crash back at the front of the queue."""
        now = time.time()
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT input_file, event, attempts, done FROM pipeline_list "
                                "ORDER BY id DESC").fetchall()
            for input_file, event, attempts, done in rows:
                waiting = conn.execute("SELECT event FROM pipeline_queue WHERE input_file = ?",
                                       (input_file,)).fetchone()
                if waiting is not None:
                    conn.execute("UPDATE pipeline_queue SET event = ? WHERE input_file = ?",
                                 (int(merge(Event(event), Event(waiting[0]))), input_file))
                else:
                    first = conn.execute("SELECT MIN(id) FROM pipeline_queue").fetchone()[0]
                    conn.execute("INSERT INTO pipeline_queue(id, input_file, event, attempts, done, queued_at) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 ((first if first is not None else 1) - 1, input_file, event, attempts, done, now))
            conn.execute("DELETE FROM pipeline_list")
        return len(rows)

    # --- inspection ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        result = {}
        for table, label in (("pipeline_queue", "waiting"), ("pipeline_list", "in_flight"),
                             ("failed_files_list", "failed"), ("files_to_delete_list", "to_delete")):
            result[label] = self.db.query(f"SELECT COUNT(*) FROM {table}")[0][0]
        return result

    def failed_items(self, limit: int = 1000) -> list[FailedItem]:
        rows = self.db.query("SELECT input_file, event, attempts, kind, reason, failed_at, next_try "
                             "FROM failed_files_list ORDER BY next_try LIMIT ?", (limit,))
        return [FailedItem(r[0], Event(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def in_flight(self) -> list[Item]:
        rows = self.db.query("SELECT input_file, event, attempts, done FROM pipeline_list ORDER BY id")
        return [Item(r[0], Event(r[1]), r[2], _done(r[3])) for r in rows]

    # --- source deletion after sync --------------------------------------------------------

    def schedule_deletion(self, input_file: str, delete_at: float, synced: SourceIdentity) -> None:
        """Schedule the source's removal, remembering which version of it was synced."""
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO files_to_delete_list(input_file, delete_at, state, size, mtime_ns, inode) "
                         "VALUES (?, ?, 'scheduled', ?, ?, ?) ON CONFLICT(input_file) DO UPDATE SET "
                         "delete_at = excluded.delete_at, state = 'scheduled', size = excluded.size, "
                         "mtime_ns = excluded.mtime_ns, inode = excluded.inode",
                         (input_file, delete_at, synced.size, synced.mtime_ns, synced.inode))

    def due_deletions(self, now: float, limit: int = 100) -> list[str]:
        return [path for path, _ in self.due_deletions_with_identity(now, limit)]

    def due_deletions_with_identity(self, now: float, limit: int = 100) -> list[tuple[str, SourceIdentity | None]]:
        """Due source deletions with the identity of the synced version (None if unknown)."""
        rows = self.db.query("SELECT input_file, size, mtime_ns, inode FROM files_to_delete_list "
                             "WHERE state = 'scheduled' AND delete_at <= ? ORDER BY delete_at LIMIT ?", (now, limit))
        return [(r[0], SourceIdentity(r[1], r[2], r[3]) if r[1] is not None else None) for r in rows]

    def next_deletion_time(self) -> float | None:
        rows = self.db.query("SELECT MIN(delete_at) FROM files_to_delete_list WHERE state = 'scheduled'")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def mark_deleted_by_us(self, input_file: str) -> None:
        """Written BEFORE the unlink: the DELETED event our unlink causes may be queued at once,
        and it must find the mark (else the deletion is propagated and the file is lost everywhere)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE files_to_delete_list SET state = 'deleted' WHERE input_file = ?", (input_file,))

    def reschedule_deletion(self, input_file: str, delete_at: float) -> None:
        """The unlink did not happen (an error): try again at `delete_at`."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE files_to_delete_list SET state = 'scheduled', delete_at = ? WHERE input_file = ?",
                         (delete_at, input_file))

    def deleted_by_us(self) -> list[str]:
        rows = self.db.query("SELECT input_file FROM files_to_delete_list WHERE state = 'deleted'")
        return [r[0] for r in rows]

    def deletion_state(self, input_file: str) -> str | None:
        rows = self.db.query("SELECT state FROM files_to_delete_list WHERE input_file = ?", (input_file,))
        return rows[0][0] if rows else None

    def forget_deletion(self, input_file: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM files_to_delete_list WHERE input_file = ?", (input_file,))

    # --- upload intents ------------------------------------------------------------------------

    def add_pending_uploads(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Record (input_file, server, remote_path) before those uploads start."""
        if rows:
            with self.db.transaction() as conn:
                conn.executemany("INSERT OR IGNORE INTO pending_uploads(input_file, server, remote_path) "
                                 "VALUES (?, ?, ?)", rows)

    def pending_uploads(self, input_file: str) -> list[tuple[str, str]]:
        """(server, remote_path) of uploads of `input_file` that were started but never recorded."""
        rows = self.db.query("SELECT server, remote_path FROM pending_uploads WHERE input_file = ?", (input_file,))
        return [(r[0], r[1]) for r in rows]

    def clear_pending_uploads(self, rows: Sequence[tuple[str, str, str]]) -> None:
        if rows:
            with self.db.transaction() as conn:
                conn.executemany("DELETE FROM pending_uploads WHERE input_file = ? AND server = ? "
                                 "AND remote_path = ?", rows)

    # --- dependencies between processed files ------------------------------------------------

    def set_dependencies(self, dependent: str, server: str, dependencies: Iterable[str]) -> None:
        dependencies = list(dependencies)
        if not dependencies and not self.db.query(
                "SELECT 1 FROM dependencies WHERE dependent = ? AND server = ? LIMIT 1", (dependent, server)):
            return  # nothing recorded, nothing to record: no write transaction
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM dependencies WHERE dependent = ? AND server = ?", (dependent, server))
            conn.executemany("INSERT OR IGNORE INTO dependencies(dependent, dependency, server) VALUES (?, ?, ?)",
                             [(dependent, d, server) for d in dependencies])

    def dependents_of(self, dependency: str, server: str) -> list[str]:
        rows = self.db.query("SELECT dependent FROM dependencies WHERE dependency = ? AND server = ?",
                             (dependency, server))
        return [r[0] for r in rows]

    def forget_dependent(self, dependent: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM dependencies WHERE dependent = ?", (dependent,))
