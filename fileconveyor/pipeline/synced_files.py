"""`synced_files.db`: where every file went. Read by web applications, so its shape is frozen.

The table and its unique index are exactly the original's (original-spec section 8.1), because the
Drupal CDN module queries them (section 9.3). Rules that matter to such readers:
* one row per (input_file, server), updated IN PLACE (an upsert keeps the rowid; the module's
  "consistent hashing" between servers depends on row order);
* `url` is absolute, permanent and unsigned; `input_file` is the absolute source path, not encoded;
* rollback-journal mode by default, not WAL: readers such as PHP running as the web server user
  often cannot create the -shm file WAL needs next to the database. Writers use a busy timeout
  instead. SYNCED_FILES_WAL=true trades that for faster commits (docs/state.md).
* Its identity, the *generation*, is a random number in `PRAGMA application_id`, given when the
  file is created. fsmonitor.db records the generation it was built alongside
  (`fileconveyor.pipeline.state`): an index that says "these files are synced" next to a
  synced_files.db that was deleted, emptied or replaced is refused at start, never trusted.
"""
from __future__ import annotations

import dataclasses
import random
import sqlite3
from typing import Iterable, Iterator

from fileconveyor.pipeline.db import Database, DatabaseError, Journal

SCHEMA_VERSION = 2

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS synced_files(input_file text, transported_file_basename text, "
    "url text, server text)",
    "CREATE UNIQUE INDEX IF NOT EXISTS file_unique_per_server ON synced_files (input_file, server)",
    # Every remote copy File Conveyor made and has not deleted yet. synced_files keeps ONE row per
    # (file, server), but two rules may send a file to one server at two places, and a superseded
    # unique-named copy must stay known until it is really deleted: this table is what makes that
    # deletion durable (it is retried at the file's next trip until it succeeds).
    """CREATE TABLE IF NOT EXISTS synced_copies(
        input_file TEXT NOT NULL,
        server TEXT NOT NULL,
        remote_path TEXT NOT NULL,
        url TEXT NOT NULL,
        PRIMARY KEY (input_file, server, remote_path))""",
    # `reconcile` reads one server's copies in remote path order, in short chunks (a long read
    # would hold the rollback journal's shared lock and stall the daemon's writes).
    "CREATE INDEX IF NOT EXISTS copies_by_place ON synced_copies (server, remote_path)",
    # Work that follows from a recorded change and must survive kill -9: written in the same
    # transaction as the row it follows from. kind 'requeue': `input_file` embeds a URL that changed.
    """CREATE TABLE IF NOT EXISTS follow_ups(
        kind TEXT NOT NULL,
        input_file TEXT NOT NULL,
        PRIMARY KEY (kind, input_file))""",
)


#: Columns added to synced_copies in place (nullable; NULL for copies recorded before them, and
#: for rows the original wrote): what the copy holds, so that `verify` and `reconcile` can compare
#: it with a destination's listing. Added at open by a writer; no schema version change, since
#: readers that do not know them are not affected.
COPY_FINGERPRINT_COLUMNS = (("size", "INTEGER"), ("md5", "TEXT"))
#: When a copy that no rule wants any more is deleted (a server's keepOldVersionsFor); NULL: live.
COPY_EXPIRY_COLUMNS = (("delete_after", "REAL"),)


def _add_fingerprint_columns(conn: sqlite3.Connection) -> None:
    present = {row[1] for row in conn.execute("PRAGMA table_info(synced_copies)")}
    for name, kind in COPY_FINGERPRINT_COLUMNS + COPY_EXPIRY_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE synced_copies ADD COLUMN {name} {kind}")


@dataclasses.dataclass(frozen=True)
class SyncedFile:
    input_file: str
    transported_file_basename: str
    url: str
    server: str


def new_generation() -> int:
    """A random non-zero 31-bit number (application_id is a signed 32-bit integer)."""
    return random.SystemRandom().randint(1, 2**31 - 1)


class SyncedFiles:
    def __init__(self, path: str, *, readonly: bool = False, wal: bool | None = None) -> None:
        """`wal`: None keeps the file's journal mode (rollback for a new file): the daemon sets it
        from SYNCED_FILES_WAL at start (`fileconveyor.pipeline.state.prepare`)."""
        journal = None if wal is None else Journal.WAL if wal else Journal.ROLLBACK
        self.db = Database(path, SCHEMA, SCHEMA_VERSION, readonly=readonly, journal=journal)
        if not readonly and not self.generation:
            generation = new_generation()
            self.db.write(lambda conn: conn.execute(f"PRAGMA application_id = {generation}"))
        if not readonly:
            self.db.write(_add_fingerprint_columns)

    @property
    def generation(self) -> int:
        """This file's identity (0: none yet, e.g. a file from before generations existed)."""
        return int(self.db.query("PRAGMA application_id")[0][0])

    def close(self) -> None:
        self.db.close()

    def get(self, input_file: str, server: str) -> SyncedFile | None:
        rows = self.db.query("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                             "WHERE input_file = ? AND server = ?", (input_file, server))
        return SyncedFile(*rows[0]) if rows else None

    def for_file(self, input_file: str) -> list[SyncedFile]:
        rows = self.db.query("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                             "WHERE input_file = ? ORDER BY rowid", (input_file,))
        return [SyncedFile(*r) for r in rows]

    def url(self, input_file: str, server: str | None) -> str | None:
        if server is None:
            rows = self.db.query("SELECT url FROM synced_files WHERE input_file = ? ORDER BY rowid LIMIT 1",
                                 (input_file,))
        else:
            rows = self.db.query("SELECT url FROM synced_files WHERE input_file = ? AND server = ?",
                                 (input_file, server))
        return rows[0][0] if rows else None

    def record(self, input_file: str, server: str, basename: str, url: str) -> SyncedFile | None:
        """Insert or update in place; returns the previous row (None if new)."""
        return self.apply_many([("record", input_file, server, basename, url)])[0]

    def apply_many(self, operations: "list[tuple[str, str, str, str | None, str | None]]") -> list[SyncedFile | None]:
        """Apply ("record", input_file, server, basename, url) and ("remove", input_file, server, None,
        None) operations in ONE transaction (one fsync for the batch); returns each one's previous row.

        Per-file commits in rollback-journal mode cost an fsync each (about 90 files/s here)."""
        return self.db.write(lambda conn: self._apply(conn, operations))

    @staticmethod
    def _apply(conn: sqlite3.Connection, operations: "list[tuple[str, str, str, str | None, str | None]]"
               ) -> list[SyncedFile | None]:
        previous: list[SyncedFile | None] = []
        # One transaction, re-run as a whole by Database.write after BUSY or a full disk.
        for action, input_file, server, basename, url in operations:
            row = conn.execute("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                               "WHERE input_file = ? AND server = ?", (input_file, server)).fetchone()
            previous.append(SyncedFile(*row) if row else None)
            if action == "record":
                conn.execute(
                    "INSERT INTO synced_files(input_file, transported_file_basename, url, server) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(input_file, server) DO UPDATE SET "
                    "transported_file_basename = excluded.transported_file_basename, url = excluded.url",
                    (input_file, basename, url, server))
            else:
                conn.execute("DELETE FROM synced_files WHERE input_file = ? AND server = ?", (input_file, server))
        return previous

    def remove(self, input_file: str, server: str) -> None:
        self.apply_many([("remove", input_file, server, None, None)])

    def all(self) -> Iterator[SyncedFile]:
        rows = self.db.query("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                             "ORDER BY server, input_file")
        return (SyncedFile(*r) for r in rows)

    def counts_per_server(self) -> dict[str, int]:
        return dict(self.db.query("SELECT server, COUNT(*) FROM synced_files GROUP BY server"))


@dataclasses.dataclass(frozen=True)
class Upload:
    """One finished upload, to be recorded.

    `primary`: this copy's URL is the one recorded in synced_files for (input_file, server): the
    copy of the first rule (in config order) that sends the file there. A non-primary copy is
    recorded in synced_copies only: a row written by it, even for a moment, could be embedded by a
    stylesheet processed meanwhile and never requeued."""

    input_file: str
    server: str
    remote_path: str
    basename: str
    url: str
    primary: bool
    #: Files whose processed content embeds this file's URL on this server (requeued if it changed).
    dependents: tuple[str, ...] = ()
    #: What was uploaded (the processed file): its size and hex MD5, None where unknown.
    size: int | None = None
    md5: str | None = None


def record_uploads(synced: "SyncedFiles", uploads: "list[Upload]") -> None:
    """Record a batch of uploads in ONE transaction (one fsync): each copy, the row of each primary
    copy (updated in place), and, when a row's URL changed, the requeue of its dependents."""
    with synced.db.transaction() as conn:
        for upload in uploads:
            conn.execute("INSERT INTO synced_copies(input_file, server, remote_path, url, size, md5) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(input_file, server, remote_path) DO UPDATE "
                         "SET url = excluded.url, size = excluded.size, md5 = excluded.md5, delete_after = NULL",
                         (upload.input_file, upload.server, upload.remote_path, upload.url, upload.size,
                          upload.md5))
            row = conn.execute("SELECT url FROM synced_files WHERE input_file = ? AND server = ?",
                               (upload.input_file, upload.server)).fetchone()
            if not upload.primary:
                continue  # only the first rule's copy is ever the recorded URL, not even for a moment
            if row is not None and row[0] == upload.url:
                continue
            conn.execute(
                "INSERT INTO synced_files(input_file, transported_file_basename, url, server) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(input_file, server) DO UPDATE SET "
                "transported_file_basename = excluded.transported_file_basename, url = excluded.url",
                (upload.input_file, upload.basename, upload.url, upload.server))
            conn.executemany("INSERT OR IGNORE INTO follow_ups(kind, input_file) VALUES ('requeue', ?)",
                             [(d,) for d in upload.dependents if d != upload.input_file])


def copies_of(synced: "SyncedFiles", input_file: str) -> list[tuple[str, str]]:
    """(server, remote_path) of every copy of `input_file` that File Conveyor made and still knows."""
    rows = synced.db.query("SELECT server, remote_path FROM synced_copies WHERE input_file = ?", (input_file,))
    return [(r[0], r[1]) for r in rows]


def all_copies(synced: "SyncedFiles") -> dict[tuple[str, str], list[str]]:
    """(input_file, server) -> remote paths of its recorded copies (empty for a database written
    before copies were recorded)."""
    found: dict[tuple[str, str], list[str]] = {}
    try:
        rows = synced.db.query("SELECT input_file, server, remote_path FROM synced_copies ORDER BY remote_path")
    except (sqlite3.Error, DatabaseError):  # opened read-only before the table was ever created
        return found
    for input_file, server, remote in rows:
        found.setdefault((input_file, server), []).append(remote)
    return found


@dataclasses.dataclass(frozen=True)
class Copy:
    """One recorded remote copy, with what it holds where known (see COPY_FINGERPRINT_COLUMNS)."""

    input_file: str
    server: str
    remote_path: str
    url: str
    size: int | None = None
    md5: str | None = None


def copies_on_server(synced: "SyncedFiles", server: str) -> list[Copy]:
    """Every recorded copy on `server`, sorted by remote path as SQLite sorts TEXT (its UTF-8
    bytes: `transporters.base.listing_key` order, the order of listings). Works on a file opened
    read-only whose columns were never added (then sizes and MD5s are None)."""
    try:
        present = {row[1] for row in synced.db.query("PRAGMA table_info(synced_copies)")}
        columns = ", ".join(name if name in present else "NULL"
                            for name, _kind in COPY_FINGERPRINT_COLUMNS)
        rows = synced.db.query(f"SELECT input_file, server, remote_path, url, {columns} FROM synced_copies "
                               "WHERE server = ? ORDER BY remote_path", (server,))
    except (sqlite3.Error, DatabaseError):  # opened read-only before the table was ever created
        return []
    return [Copy(*row) for row in rows]


def recorded_content(synced: "SyncedFiles", input_file: str, server: str,
                     remote_path: str) -> "tuple[int, str, bool] | None":
    """(size, md5, is it the URL recorded in synced_files) of a recorded copy whose content is
    known, whose file has a row on `server`, and which is not an old version waiting for its
    deletion (`delete_after`: sending it again is what keeps it); None otherwise. A trip does not
    send content that is recorded as already there (`reconcile` adopts objects this way)."""
    try:
        row = synced.db.query(
            "SELECT c.size, c.md5, c.url = f.url FROM synced_copies c JOIN synced_files f "
            "ON f.input_file = c.input_file AND f.server = c.server "
            "WHERE c.input_file = ? AND c.server = ? AND c.remote_path = ? AND c.delete_after IS NULL",
            (input_file, server, remote_path))
    except (sqlite3.Error, DatabaseError):  # a file without the columns (read-only, never opened by a writer)
        return None
    if not row or row[0][0] is None or row[0][1] is None:
        return None
    return int(row[0][0]), str(row[0][1]), bool(row[0][2])


def forget_contents(synced: "SyncedFiles", files: "Iterable[tuple[str, str]]") -> None:
    """Forget what the copies of these (input_file, server) hold: found missing or different by
    `verify` or `reconcile`, they must be sent again even if the file did not change."""
    with synced.db.transaction() as conn:
        conn.executemany("UPDATE synced_copies SET size = NULL, md5 = NULL WHERE input_file = ? AND server = ?",
                         list(files))


def forget_copies(synced: "SyncedFiles", copies: "list[tuple[str, str, str]]") -> None:
    """Forget deleted copies: (input_file, server, remote_path)."""
    if copies:
        with synced.db.transaction() as conn:
            conn.executemany("DELETE FROM synced_copies WHERE input_file = ? AND server = ? AND remote_path = ?",
                             copies)


def forget_file(synced: "SyncedFiles", input_file: str, servers: "list[str]", requeue: "Iterable[str]" = ()) -> None:
    """The file was deleted from `servers`: drop its rows and copies there and, in the same
    transaction, ask for the files that embed its URL to be processed again (`requeue`)."""
    with synced.db.transaction() as conn:
        for server in servers:
            conn.execute("DELETE FROM synced_files WHERE input_file = ? AND server = ?", (input_file, server))
            # Old versions kept for their grace period stay known until they are deleted.
            conn.execute("DELETE FROM synced_copies WHERE input_file = ? AND server = ? AND delete_after IS NULL",
                         (input_file, server))
        conn.executemany("INSERT OR IGNORE INTO follow_ups(kind, input_file) VALUES ('requeue', ?)",
                         [(d,) for d in requeue if d != input_file])


def pending_requeues(synced: "SyncedFiles", limit: int = 1000) -> list[str]:
    rows = synced.db.query("SELECT input_file FROM follow_ups WHERE kind = 'requeue' LIMIT ?", (limit,))
    return [r[0] for r in rows]


def clear_requeues(synced: "SyncedFiles", input_files: "list[str]") -> None:
    if input_files:
        with synced.db.transaction() as conn:
            conn.executemany("DELETE FROM follow_ups WHERE kind = 'requeue' AND input_file = ?",
                             [(f,) for f in input_files])


# --- old versions kept for a grace period (a server's keepOldVersionsFor) ---------------------------

def copies_with_expiry(synced: "SyncedFiles", input_file: str) -> "list[tuple[str, str, float | None]]":
    """(server, remote_path, delete_after) of every recorded copy of `input_file`."""
    rows = synced.db.query("SELECT server, remote_path, delete_after FROM synced_copies WHERE input_file = ?",
                           (input_file,))
    return [(r[0], r[1], r[2]) for r in rows]


def expire_copies(synced: "SyncedFiles", copies: "list[tuple[str, str, str, float]]") -> None:
    """Mark (input_file, server, remote_path, delete_after) copies as old versions to delete at
    `delete_after`; a copy already marked keeps its earlier time."""
    if copies:
        with synced.db.transaction() as conn:
            conn.executemany("UPDATE synced_copies SET delete_after = ? WHERE input_file = ? AND server = ? "
                             "AND remote_path = ? AND delete_after IS NULL",
                             [(when, path, server, remote) for path, server, remote, when in copies])


def due_old_versions(synced: "SyncedFiles", now: float, limit: int = 500) -> "list[tuple[str, str, str]]":
    """(input_file, server, remote_path) of old versions whose grace period is over."""
    rows = synced.db.query("SELECT input_file, server, remote_path FROM synced_copies WHERE delete_after <= ? "
                           "ORDER BY delete_after LIMIT ?", (now, limit))
    return [(r[0], r[1], r[2]) for r in rows]


def postpone_old_versions(synced: "SyncedFiles", copies: "list[tuple[str, str, str]]", until: float) -> None:
    if copies:
        with synced.db.transaction() as conn:
            conn.executemany("UPDATE synced_copies SET delete_after = ? WHERE input_file = ? AND server = ? "
                             "AND remote_path = ? AND delete_after IS NOT NULL",
                             [(until, path, server, remote) for path, server, remote in copies])


def old_versions_summary(synced: "SyncedFiles") -> "tuple[int, float | None]":
    """(how many old versions wait for their grace period to end, the next end)."""
    try:
        rows = synced.db.query("SELECT COUNT(*), MIN(delete_after) FROM synced_copies WHERE delete_after IS NOT NULL")
    except (sqlite3.Error, DatabaseError):  # a read-only open of a file from before the column
        return 0, None
    return (rows[0][0], rows[0][1]) if rows else (0, None)
