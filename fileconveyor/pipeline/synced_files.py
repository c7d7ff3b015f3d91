"""`synced_files.db`: where every file went. Read by web applications, so its shape is frozen.

The table and its unique index are exactly the original's (original-spec section 8.1), because the
Drupal CDN module queries them (section 9.3). Rules that matter to such readers:
* one row per (input_file, server), updated IN PLACE (an upsert keeps the rowid; the module's
  "consistent hashing" between servers depends on row order);
* `url` is absolute, permanent and unsigned; `input_file` is the absolute source path, not encoded;
* rollback-journal mode, not WAL: readers such as PHP running as the web server user often cannot
  create the -shm file WAL needs next to the database. Writers use a busy timeout instead.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

from fileconveyor.pipeline.db import Database

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


class SyncedFiles:
    def __init__(self, path: str) -> None:
        self.db = Database(path, SCHEMA, SCHEMA_VERSION, wal=False)

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
        with self.db.transaction() as conn:
            row = conn.execute("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                               "WHERE input_file = ? AND server = ?", (input_file, server)).fetchone()
            conn.execute(
                "INSERT INTO synced_files(input_file, transported_file_basename, url, server) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(input_file, server) DO UPDATE SET "
                "transported_file_basename = excluded.transported_file_basename, url = excluded.url",
                (input_file, basename, url, server))
        return SyncedFile(*row) if row else None

    def apply_many(self, operations: "list[tuple[str, str, str, str | None, str | None]]") -> list[SyncedFile | None]:
        """Apply ("record", input_file, server, basename, url) and ("remove", input_file, server, None,
        None) operations in ONE transaction (one fsync for the batch); returns each one's previous row.

        Per-file commits in rollback-journal mode cost an fsync each (about 90 files/s here)."""
        previous: list[SyncedFile | None] = []
        with self.db.transaction() as conn:
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
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM synced_files WHERE input_file = ? AND server = ?", (input_file, server))

    def all(self) -> Iterator[SyncedFile]:
        rows = self.db.query("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                             "ORDER BY server, input_file")
        return (SyncedFile(*r) for r in rows)

    def counts_per_server(self) -> dict[str, int]:
        return dict(self.db.query("SELECT server, COUNT(*) FROM synced_files GROUP BY server"))
