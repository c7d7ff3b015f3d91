"""The state-database gate (fileconveyor.pipeline.db) on real SQLite files: journal per kind, a full
database and a lock held by another process retried and shown, read-only opens, errors naming files.

A full disk is produced by SQLite itself (`PRAGMA max_page_count`: SQLITE_FULL, "database or disk
is full", exactly what ENOSPC gives), a held lock by a second connection in BEGIN IMMEDIATE, as
another process (verify --requeue, an audit) would hold it.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline import db
from fileconveyor.pipeline.db import Database, DatabaseDamaged, DatabaseError, DatabaseUnavailable, Journal, readonly_uri
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline.synced_files import SyncedFiles
from tests.e2e.harness import wait_for

SCHEMA = ("CREATE TABLE IF NOT EXISTS t(x)",)


def _in_thread(body) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    """Run `body` in a thread; returns it, an event set when it ended, and what it raised."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            errors.append(error)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, done, errors


def _insert_big(database: Database) -> None:
    database.write(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,)))


def _journal_mode(path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_persistent_data_uses_a_rollback_journal_and_synchronous_full(tmp_path):
    """WAL would make read-only readers (the Drupal module as the web server user) fail."""
    path = tmp_path / "persistent_data.db"
    pipeline = PersistentPipeline(str(path))
    try:
        assert pipeline.db.query("PRAGMA synchronous")[0][0] == 2  # FULL: safe on power loss
    finally:
        pipeline.close()
    assert _journal_mode(path) == "delete"


def test_synced_files_wal_is_a_choice_that_other_openers_keep(tmp_path):
    path = tmp_path / "synced_files.db"
    SyncedFiles(str(path)).close()
    assert _journal_mode(path) == "delete"
    SyncedFiles(str(path), wal=True).close()
    assert _journal_mode(path) == "wal"
    SyncedFiles(str(path)).close()  # an opener that does not know SYNCED_FILES_WAL
    assert _journal_mode(path) == "wal"
    SyncedFiles(str(path), wal=False).close()
    assert _journal_mode(path) == "delete"


def test_a_full_database_is_reported_as_full_not_hidden_by_a_failed_rollback(tmp_path):
    """SQLite rolls back by itself on SQLITE_FULL; a second ROLLBACK fails with "no transaction is
    active", which used to replace the real error."""
    database = Database(str(tmp_path / "d.db"), SCHEMA, 2)
    database.query("PRAGMA max_page_count = 3")
    with pytest.raises(DatabaseUnavailable, match="full") as raised:
        with database.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert str(tmp_path / "d.db") in str(raised.value) and raised.value.problem == "disk full"
    assert [d.problem for d in db.degraded() if d.path == database.path] == ["disk full"]  # for `status`
    database.query("PRAGMA max_page_count = 1000000")
    with database.transaction() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert all(d.path != database.path for d in db.degraded())
    database.close()


def test_a_write_on_a_full_disk_waits_shows_degraded_and_completes_when_space_returns(tmp_path):
    path = str(tmp_path / "d.db")
    database = Database(path, SCHEMA, 2)
    database.query("PRAGMA max_page_count = 3")
    thread, done, errors = _in_thread(lambda: _insert_big(database))
    wait_for(lambda: any(d.path == path and d.problem == "disk full" for d in db.degraded()) or done.is_set(),
             10, "the full disk to show in degraded()")
    assert not done.is_set(), errors
    database.query("PRAGMA max_page_count = 1000000")  # space comes back
    assert done.wait(30)
    thread.join(5)
    assert errors == []
    assert database.query("SELECT length(x) FROM t") == [(100_000,)]
    assert all(d.path != path for d in db.degraded())
    database.close()


def test_a_lock_held_by_another_process_is_waited_for_and_shown(tmp_path, monkeypatch):
    """BUSY past the busy timeout used to escape as sqlite3.OperationalError: a thread crash."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_SECONDS", 0.2)
    path = str(tmp_path / "persistent_data.db")
    pipeline = PersistentPipeline(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    thread, done, errors = _in_thread(lambda: pipeline.put_many([("/a", Event.CREATED)]))
    wait_for(lambda: any(d.path == path and d.problem.startswith("busy") for d in db.degraded()) or done.is_set(),
             10, "the held lock to show in degraded()")
    assert not done.is_set(), errors
    other.execute("COMMIT")
    other.close()
    assert done.wait(30)
    thread.join(5)
    assert errors == []
    assert pipeline.counts()["waiting"] == 1
    pipeline.close()


def test_closing_ends_a_write_that_waits_for_space(tmp_path):
    database = Database(str(tmp_path / "d.db"), SCHEMA, 2)
    database.query("PRAGMA max_page_count = 3")
    thread, _, errors = _in_thread(lambda: _insert_big(database))
    wait_for(lambda: any(d.path == database.path for d in db.degraded()), 10, "the write to wait")
    database.close()
    thread.join(10)
    assert not thread.is_alive() and isinstance(errors[0], db.DatabaseClosed)


def test_readonly_opens_create_nothing_and_cannot_write(tmp_path):
    path = tmp_path / "persistent_data.db"
    with pytest.raises(DatabaseError, match="does not exist"):
        PersistentPipeline(str(path), readonly=True)
    assert not path.exists()
    PersistentPipeline(str(path)).close()
    os.chmod(path, 0o400)
    reader = PersistentPipeline(str(path), readonly=True)
    try:
        assert reader.counts()["waiting"] == 0
        with pytest.raises(DatabaseError, match="read-only"):
            reader.put_many([("/a", Event.CREATED)])
    finally:
        reader.close()
    assert sorted(os.listdir(tmp_path)) == ["persistent_data.db"]


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000])
def test_a_damaged_file_is_named_with_what_to_do(tmp_path, content):
    path = tmp_path / "synced_files.db"
    path.write_bytes(content)
    with pytest.raises(DatabaseDamaged) as raised:
        SyncedFiles(str(path))
    message = str(raised.value)
    assert str(path) in message and "--resync-all" in message and "backup" in message


def test_every_journal_kind_has_its_synchronous_level(tmp_path):
    levels = {}
    for journal in Journal:
        database = Database(str(tmp_path / f"{journal.value}.db"), SCHEMA, 2, journal=journal)
        levels[journal] = database.query("PRAGMA synchronous")[0][0]
        database.close()
    assert levels == {Journal.ROLLBACK: 2, Journal.WAL: 1}


def test_a_read_only_open_after_an_interrupted_write_says_what_to_do(tmp_path):
    """The image of a kill -9 in the middle of a commit: the database plus its hot journal."""
    path = tmp_path / "persistent_data.db"
    writer = Database(str(path), SCHEMA, 2)
    writer.query("PRAGMA cache_size = 1")  # spill to the file during the transaction
    crash = tmp_path / "crash"
    crash.mkdir()
    with writer.transaction() as conn:
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,) for _ in range(2000)])
        for name in ("persistent_data.db", "persistent_data.db-journal"):
            (crash / name).write_bytes((tmp_path / name).read_bytes())
    writer.close()
    with pytest.raises(DatabaseError, match="start the daemon") as raised:
        Database(str(crash / "persistent_data.db"), SCHEMA, 2, readonly=True).query("SELECT COUNT(*) FROM t")
    assert str(crash / "persistent_data.db") in str(raised.value)
    recovered = Database(str(crash / "persistent_data.db"), SCHEMA, 2)  # a writer rolls it back
    assert recovered.query("SELECT COUNT(*) FROM t") == [(0,)]
    recovered.close()


def test_group_commit_is_durable_per_body_and_isolates_failures(tmp_path):
    """Threads writing at once share commits; each body returns only once its row is durable
    (seen by another connection), and a body that raises loses only its own row."""
    path = str(tmp_path / "g.db")
    database = Database(path, ("CREATE TABLE IF NOT EXISTS t(thread INTEGER, n INTEGER)",), 2)
    problems: list[str] = []
    start = threading.Barrier(8)
    bodies, commits = database.bodies, database.commits

    def worker(number: int) -> None:
        other = sqlite3.connect(readonly_uri(path), uri=True, timeout=30)
        start.wait()
        for n in range(40):
            try:
                with database.transaction() as conn:
                    conn.execute("INSERT INTO t VALUES (?, ?)", (number, n))
                    if n % 10 == 9:
                        raise ValueError("this body fails")
            except ValueError:
                continue
            if other.execute("SELECT COUNT(*) FROM t WHERE thread = ? AND n = ?", (number, n)).fetchone() != (1,):
                problems.append(f"thread {number} row {n} not durable when transaction() returned")
        other.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert problems == []
    rows = set(database.query("SELECT thread, n FROM t"))
    assert rows == {(t, n) for t in range(8) for n in range(40) if n % 10 != 9}
    assert database.bodies - bodies == 8 * 40 and database.commits - commits < 8 * 40
    database.close()


def test_a_transaction_inside_a_transaction_is_refused_not_a_deadlock(tmp_path):
    database = Database(str(tmp_path / "n.db"), SCHEMA, 2)
    with pytest.raises(DatabaseError, match="inside a transaction"):
        with database.transaction():
            with database.transaction():
                pass
    assert database.query("SELECT COUNT(*) FROM t") == [(0,)]  # usable afterwards
    database.close()


def test_transactions_nested_in_another_databases_do_not_deadlock(tmp_path):
    """Threads that write B inside a transaction of A (always in that order, as with any locks)
    beside threads that write B alone: group commit must not make either wait for ever."""
    first = Database(str(tmp_path / "a.db"), SCHEMA, 2)
    second = Database(str(tmp_path / "b.db"), SCHEMA, 2)

    def nested() -> None:
        for n in range(30):
            with first.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (n,))
                with second.transaction() as inner_conn:
                    inner_conn.execute("INSERT INTO t VALUES (?)", (n,))

    def alone() -> None:
        for n in range(30):
            with second.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (n,))

    threads = [threading.Thread(target=nested if i % 2 else alone, daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "deadlock"
    assert first.query("SELECT COUNT(*) FROM t") == [(90,)] and second.query("SELECT COUNT(*) FROM t") == [(180,)]
    first.close()
    second.close()
