"""The persistent pipeline on real SQLite files: merging, per-path order, recovery, retries."""
from __future__ import annotations

import os
import random
import stat
import sqlite3

import pytest

from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline.db import DatabaseError
from fileconveyor.pipeline.queue import PersistentPipeline, merge, retry_delay
from fileconveyor.pipeline.synced_files import SyncedFiles

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED


@pytest.mark.parametrize("waiting,new,expected", [
    (C, C, C), (C, M, C), (C, D, D),
    (M, C, M), (M, M, M), (M, D, D),
    (D, C, M), (D, M, M), (D, D, D),
])
def test_merge_table(waiting, new, expected):
    assert merge(waiting, new) is expected


def test_retry_delay_grows_and_is_capped():
    rng = random.Random(1)
    delays = [retry_delay(n, 30, 3600, rng) for n in range(1, 12)]
    assert 22 <= delays[0] <= 38
    assert delays[3] > delays[0] * 4
    assert all(d <= 3600 for d in delays)
    assert delays[-1] >= 3600 * 0.75


@pytest.fixture
def pipeline(tmp_path):
    p = PersistentPipeline(str(tmp_path / "persistent_data.db"))
    yield p
    p.close()


def test_files_are_created_0600(tmp_path, pipeline):
    mode = stat.S_IMODE(os.stat(tmp_path / "persistent_data.db").st_mode)
    assert mode == 0o600


def test_merging_keeps_the_place_in_the_queue(pipeline):
    pipeline.put_many([("/a", C), ("/b", C), ("/c", C)])
    pipeline.put_many([("/a", M), ("/b", D)])
    items = pipeline.claim(10)
    assert [(i.input_file, i.event) for i in items] == [("/a", C), ("/b", D), ("/c", C)]


def test_in_flight_path_is_not_dispatched_twice(pipeline):
    pipeline.put_many([("/a", C)])
    [first] = pipeline.claim(10)
    pipeline.put_many([("/a", M), ("/b", C)])
    assert [i.input_file for i in pipeline.claim(10)] == ["/b"]
    pipeline.complete("/a")
    assert [(i.input_file, i.event) for i in pipeline.claim(10)] == [("/a", M)]


def test_crash_recovery_puts_in_flight_items_in_front(tmp_path):
    path = str(tmp_path / "p.db")
    p = PersistentPipeline(path)
    p.put_many([("/a", C), ("/b", C)])
    p.claim(1)
    p.put_many([("/c", C), ("/a", D)])
    # Simulate kill -9: no close(), reopen from disk.
    p2 = PersistentPipeline(path)
    assert p2.recover_in_flight() == 1
    order = [(i.input_file, i.event) for i in p2.claim(10)]
    assert order[0] == ("/a", D) or ("/a", D) in order
    assert sorted(i for i, _ in order) == ["/a", "/b", "/c"]
    assert p2.counts()["in_flight"] == 3


def test_failure_keeps_reason_attempts_and_next_try(pipeline):
    pipeline.put_many([("/a", C)])
    [item] = pipeline.claim(1)
    failed = pipeline.fail(item, "retryable", "connection reset", delay=0.0, done=["r|s1"])
    assert failed is not None and failed.attempts == 1
    [row] = pipeline.failed_items()
    assert (row.reason, row.kind, row.attempts) == ("connection reset", "retryable", 1)
    assert pipeline.requeue_due() == 1
    [again] = pipeline.claim(1)
    assert again.attempts == 1 and again.done == frozenset({"r|s1"})


def test_new_event_supersedes_a_failed_one(pipeline):
    pipeline.put_many([("/a", D)])
    [item] = pipeline.claim(1)
    pipeline.fail(item, "retryable", "x", delay=3600)
    pipeline.put_many([("/a", C)])
    assert pipeline.counts()["failed"] == 0
    [again] = pipeline.claim(1)
    assert (again.event, again.attempts, again.done) == (M, 0, frozenset())


def test_failure_merges_into_a_newer_waiting_event(pipeline):
    pipeline.put_many([("/a", C)])
    [item] = pipeline.claim(1)
    pipeline.put_many([("/a", M)])
    assert pipeline.fail(item, "retryable", "x", delay=10) is None
    [again] = pipeline.claim(1)
    assert again.event is C


def test_legacy_database_is_refused_with_upgrade_hint(tmp_path):
    path = tmp_path / "persistent_data.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pipeline_queue(id INTEGER PRIMARY KEY AUTOINCREMENT, item pickle, key CHAR(32))")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="fileconveyor upgrade"):
        PersistentPipeline(str(path))


def test_synced_files_rows_are_updated_in_place(tmp_path):
    synced = SyncedFiles(str(tmp_path / "synced_files.db"))
    assert synced.record("/a", "s1", "a.css", "http://x/a.css") is None
    synced.record("/b", "s1", "b.css", "http://x/b.css")
    old = synced.record("/a", "s1", "a_1.css", "http://x/a_1.css")
    assert old is not None and old.transported_file_basename == "a.css"
    conn = sqlite3.connect(tmp_path / "synced_files.db")
    rows = conn.execute("SELECT rowid, input_file, url FROM synced_files ORDER BY rowid").fetchall()
    assert rows == [(1, "/a", "http://x/a_1.css"), (2, "/b", "http://x/b.css")]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_stale_event_does_not_lift_the_deleted_by_us_mark(pipeline):
    """A rescan that looked at a file before fileDeletionDelayAfterSync deleted it may queue a
    MODIFIED after the unlink. If that lifted the 'deleted by us' mark, the DELETED that follows was
    propagated and the file existed nowhere (torture suite, seed 6 rounds 22 and 27)."""
    from fileconveyor.pipeline.queue import SourceIdentity
    pipeline.schedule_deletion("/s/upload.bin", 0.0, SourceIdentity(3, 1, 1))
    pipeline.mark_deleted_by_us("/s/upload.bin")
    pipeline.put_many([("/s/upload.bin", M), ("/s/upload.bin", D)])
    assert pipeline.deletion_state("/s/upload.bin") == "deleted"


def test_any_event_cancels_a_scheduled_source_deletion(pipeline):
    from fileconveyor.pipeline.queue import SourceIdentity
    pipeline.schedule_deletion("/s/a", 0.0, SourceIdentity(3, 1, 1))
    pipeline.put_many([("/s/a", M)])
    assert pipeline.deletion_state("/s/a") is None and pipeline.due_deletions(1e12) == []


def test_only_the_first_rules_copy_is_ever_the_recorded_url(tmp_path):
    """Two rules send a file to one server: a non-primary copy recorded first must not be the row's
    URL even for a moment (a stylesheet processed meanwhile embedded it: torture F16)."""
    from fileconveyor.pipeline.synced_files import Upload, record_uploads
    synced = SyncedFiles(str(tmp_path / "synced_files.db"))
    try:
        record_uploads(synced, [Upload("/s/a.png", "cdn", "cdn/a_123.png", "a_123.png", "http://x/cdn/a_123.png", False)])
        assert synced.url("/s/a.png", "cdn") is None
        record_uploads(synced, [Upload("/s/a.png", "cdn", "plain/a.png", "a.png", "http://x/plain/a.png", True)])
        assert synced.url("/s/a.png", "cdn") == "http://x/plain/a.png"
        record_uploads(synced, [Upload("/s/a.png", "cdn", "cdn/a_456.png", "a_456.png", "http://x/cdn/a_456.png", False)])
        assert synced.url("/s/a.png", "cdn") == "http://x/plain/a.png"
    finally:
        synced.close()
