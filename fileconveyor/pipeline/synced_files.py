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
from typing import Iterator

from fileconveyor.pipeline.db import Database, Journal

SCHEMA_VERSION = 2

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS synced_files(input_file text, transported_file_basename text, "
    "url text, server text)",
    "CREATE UNIQUE INDEX IF NOT EXISTS file_unique_per_server ON synced_files (input_file, server)",
)


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
    def __init__(self, path: str, *, readonly: bool = False, wal: bool = False) -> None:
        self.db = Database(path, SCHEMA, SCHEMA_VERSION, readonly=readonly,
                           journal=Journal.WAL if wal else Journal.ROLLBACK)
        if not readonly and not self.generation:
            generation = new_generation()
            self.db.write(lambda conn: conn.execute(f"PRAGMA application_id = {generation}"))

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

