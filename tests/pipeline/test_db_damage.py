"""Damaged, lost and replaced state databases, found at start (fileconveyor.pipeline.state) on real
files: a lost synced_files.db is refused instead of silently trusted, a damaged index is rebuilt,
and a rebuilt or reset index leads to a full comparison that also finds deleted files."""
from __future__ import annotations

import os
import sqlite3
import types

import pytest

from fileconveyor.fsmonitor.base import Event, FSEvent
from fileconveyor.fsmonitor.pathscanner import Entry, PathScanner, UndecodableNames, scan_tree
from fileconveyor.pipeline import state
from fileconveyor.pipeline.db import DatabaseDamaged, DatabaseError
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline.synced_files import SyncedFiles


@pytest.fixture
def settings(tmp_path):
    return types.SimpleNamespace(PERSISTENT_DATA_DB=str(tmp_path / "persistent_data.db"),
                                 SYNCED_FILES_DB=str(tmp_path / "synced_files.db"),
                                 FSMONITOR_DB=str(tmp_path / "fsmonitor.db"), SYNCED_FILES_WAL=False,
                                 PERSISTENT_DATA_WAL=False)


@pytest.fixture
def synced_tree(tmp_path, settings):
    """A source tree whose two files were synced: rows in synced_files.db, entries in the index."""
    source = tmp_path / "source"
    (source / "css").mkdir(parents=True)
    files = [source / "a.txt", source / "css" / "b.css"]
    for f in files:
        f.write_text(f.name)
    state.prepare(settings)
    PersistentPipeline(settings.PERSISTENT_DATA_DB).close()
    synced = SyncedFiles(settings.SYNCED_FILES_DB)
    for f in files:
        synced.record(str(f), "cdn", f.name, f"https://cdn.example/{f.name}")
    synced.close()
    assert _scan(settings, source) == {("a.txt", Event.CREATED), ("css/b.css", Event.CREATED)}
    return source


def _scan(settings, source) -> set[tuple[str, Event]]:
    index = PathScanner(settings.FSMONITOR_DB)
    try:
        events: list[FSEvent] = []
        for chunk_events, ops in scan_tree(str(source), index, frozenset(), UndecodableNames()):
            events.extend(chunk_events)
            index.apply(ops)
        return {(os.path.relpath(e.path, source), e.event) for e in events}
    finally:
        index.close()


def test_an_unchanged_state_starts_and_a_fresh_one_too(settings, synced_tree, tmp_path):
    assert state.prepare(settings) == []
    assert _scan(settings, synced_tree) == set()
    fresh = types.SimpleNamespace(**{k: (str(tmp_path / "fresh" / os.path.basename(v)) if k.endswith("_DB") else v)
                                     for k, v in vars(settings).items()})
    assert state.prepare(fresh) == []


@pytest.mark.parametrize("damage", ["deleted", "zero-length", "table dropped", "replaced"])
def test_a_lost_synced_files_db_is_refused_at_start_with_what_to_do(settings, synced_tree, damage):
    path = settings.SYNCED_FILES_DB
    if damage == "deleted":
        os.unlink(path)
    elif damage == "zero-length":
        os.truncate(path, 0)
    elif damage == "table dropped":
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE synced_files")
        conn.commit()
        conn.close()
    else:
        os.unlink(path)
        SyncedFiles(path).close()  # another, empty synced_files.db (new generation)
    with pytest.raises(DatabaseError) as raised:
        state.prepare(settings)
    message = str(raised.value)
    assert path in message and settings.FSMONITOR_DB in message
    assert "fileconveyor upgrade --resync-all" in message and "backup" in message
    with pytest.raises(DatabaseError):  # read-only commands (status, verify) say the same
        state.check(settings)


def test_resync_all_accepts_the_loss_and_compares_every_file(settings, synced_tree):
    os.truncate(settings.SYNCED_FILES_DB, 0)
    state.reset_index(settings)
    assert state.prepare(settings) == []
    (synced_tree / "new.txt").write_text("new")
    # Nothing was recorded any more, so nothing can be found deleted; every file is new.
    assert _scan(settings, synced_tree) == {("a.txt", Event.CREATED), ("css/b.css", Event.CREATED),
                                            ("new.txt", Event.CREATED)}


def test_a_lost_index_is_seeded_from_synced_files_so_deletions_while_down_are_found(settings, synced_tree):
    os.unlink(settings.FSMONITOR_DB)
    (synced_tree / "css" / "b.css").unlink()
    (synced_tree / "css").rmdir()
    report = state.prepare(settings)
    assert any("2 file(s)" in line for line in report)
    assert _scan(settings, synced_tree) == {("a.txt", Event.MODIFIED), ("css/b.css", Event.DELETED)}


def _corrupt_pages(path: str) -> None:
    """Overwrite the middle of the file (b-tree pages, not the header): only quick_check finds it."""
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\xa5" * 4096)


def _fill(path: str, table_sql: str, insert_sql: str, rows: int = 3000) -> None:
    conn = sqlite3.connect(path)
    conn.execute(table_sql)
    conn.executemany(insert_sql, [(f"/src/dir{i // 100}/file-{i:06d}.jpg",) for i in range(rows)])
    conn.commit()
    conn.close()


def test_a_damaged_index_is_moved_aside_rebuilt_and_seeded(settings, synced_tree, tmp_path):
    index = PathScanner(settings.FSMONITOR_DB)
    index.apply([((f"/elsewhere/d{i // 100}", f"f{i:06d}"), Entry(i, i)) for i in range(5000)])
    index.close()
    _corrupt_pages(settings.FSMONITOR_DB)
    (synced_tree / "a.txt").unlink()
    state.prepare(settings)
    assert [n for n in os.listdir(tmp_path) if n.startswith("fsmonitor.db.damaged-")]
    assert _scan(settings, synced_tree) == {("a.txt", Event.DELETED), ("css/b.css", Event.MODIFIED)}


def test_a_damaged_index_found_by_the_monitor_itself_is_rebuilt_not_a_crash(tmp_path):
    """Without this, a corrupt fsmonitor.db crashed the monitor at every (re)start: a restart loop."""
    path = str(tmp_path / "fsmonitor.db")
    index = PathScanner(path)
    index.apply([((f"/src/d{i // 100}", f"f{i:06d}"), Entry(i, i)) for i in range(5000)])
    index.close()
    _corrupt_pages(path)
    index = PathScanner(path)
    try:
        assert index.rebuilt and index.count() == 0
    finally:
        index.close()
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 500)
    index = PathScanner(str(tmp_path / "garbage.db"))
    assert index.rebuilt
    index.close()


@pytest.mark.parametrize("name,table", [("persistent_data.db", "pipeline_queue"), ("synced_files.db", "synced_files")])
def test_a_damaged_pipeline_or_synced_files_db_is_refused_at_start(settings, tmp_path, name, table):
    path = str(tmp_path / name)
    _fill(path, f"CREATE TABLE {table}(input_file TEXT)", f"INSERT INTO {table} VALUES (?)")
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE INDEX i ON {table}(input_file)")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    _corrupt_pages(path)
    with pytest.raises(DatabaseDamaged) as raised:
        state.prepare(settings)
    assert path in str(raised.value) and "--resync-all" in str(raised.value)
    # A self-restart opens the files directly: it stops there too, instead of crashing later.
    with pytest.raises(DatabaseDamaged, match="quick_check"):
        (PersistentPipeline if name == "persistent_data.db" else SyncedFiles)(path)


def test_damage_met_while_running_moves_the_index_aside_so_the_restart_rebuilds(tmp_path):
    """quick_check passed at open; the damage appears later (a disk error): the error must not
    come back at every restart (a crash/restart loop)."""
    path = str(tmp_path / "fsmonitor.db")
    index = PathScanner(path)
    index.apply([((f"/src/d{i // 100:04d}", f"file-with-a-long-name-{i:06d}"), Entry(i, i)) for i in range(60000)])
    index.close()
    index = PathScanner(path)
    index.db.query("PRAGMA cache_size = 1")  # read pages from the file, not from the cache
    _corrupt_pages(path)
    with pytest.raises(DatabaseDamaged):
        index.known_below("/src")
    index.close()
    assert [n for n in os.listdir(tmp_path) if n.startswith("fsmonitor.db.damaged-")]
    restarted = PathScanner(path)
    try:
        assert restarted.count() == 0 and not restarted.rebuilt  # a new file, nothing damaged in it
    finally:
        restarted.close()


@pytest.mark.parametrize("wal", [False, True])
def test_the_journal_of_each_file_follows_its_setting_across_reopens(settings, wal):
    settings.PERSISTENT_DATA_WAL = settings.SYNCED_FILES_WAL = wal
    state.prepare(settings)
    PersistentPipeline(settings.PERSISTENT_DATA_DB).close()  # the daemon's opens keep the mode
    SyncedFiles(settings.SYNCED_FILES_DB).close()
    for path in (settings.PERSISTENT_DATA_DB, settings.SYNCED_FILES_DB):
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == ("wal" if wal else "delete")
        finally:
            conn.close()
