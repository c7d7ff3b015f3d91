"""All SQLite access for the daemon's state goes through `Database`.

Why it is shaped like this (after huey's storage and persist-queue):
* One connection per database file per process, guarded by a lock: SQLite serialises writers
  anyway, and one connection avoids "database is locked" between our own threads (original #149).
  Other processes (`fileconveyor verify --requeue`, the Drupal module, `sqlite3` audits) are
  handled by the busy timeout.
* `transaction()` is the only way to write: BEGIN IMMEDIATE ... COMMIT, so callers batch many rows
  into one short transaction instead of one commit per row.
* Files are created 0600 before SQLite opens them (SQLite gives its -wal/-shm/-journal files the
  same mode as the database).
* The schema version lives in `PRAGMA user_version`, which `upgrade.py` reads. Version 1 is the
  original File Conveyor's format (pickled rows); this project starts at 2.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import Any, Iterable, Iterator, Sequence

BUSY_TIMEOUT_SECONDS = 30.0


class DatabaseError(Exception):
    """A state database cannot be opened or has an unknown schema; the message says what to do."""


def create_private_file(path: str) -> None:
    """Create `path` (and its directory) with mode 0600 if it does not exist yet."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class Database:
    """A SQLite file with a known schema version, shared safely between threads."""

    def __init__(self, path: str, schema: Sequence[str], version: int, wal: bool = True) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            create_private_file(path)
            self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS,
                                         isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            if wal:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable against process crashes (kill -9) in WAL mode; only a power
                # loss can drop the last transactions, which the monitor's rescan then repeats.
                self._conn.execute("PRAGMA synchronous = NORMAL")
            current = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except (sqlite3.Error, OSError) as error:
            raise DatabaseError(f"cannot open {path}: {error}") from None
        if current not in (0, version):
            self._conn.close()
            hint = ("it was written by the original File Conveyor; run `fileconveyor upgrade`"
                    if current in (0, 1) else "run `fileconveyor upgrade`, or use a newer fileconveyor")
            raise DatabaseError(f"{path} has schema version {current}, expected {version}: {hint}")
        if current == 0 and self._has_legacy_tables():
            self._conn.close()
            raise DatabaseError(
                f"{path} was written by the original File Conveyor; run `fileconveyor upgrade` "
                "to convert it (every pending item is kept)")
        with self.transaction() as conn:
            for statement in schema:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")

    def _has_legacy_tables(self) -> bool:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return bool(rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception), under the process-wide lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
