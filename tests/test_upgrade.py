"""`fileconveyor upgrade` on real SQLite files written in the original File Conveyor's formats."""
from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fileconveyor import upgrade
from fileconveyor.fsmonitor import pathscanner
from fileconveyor.fsmonitor.base import Event, FSEvent
from fileconveyor.pipeline import queue as pipeline_queue
from fileconveyor.pipeline import synced_files as synced_files_module
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline.synced_files import SyncedFiles
from fileconveyor.upgrade import UpgradeError, UpgradeOptions, upgrade_databases
from tests.legacy.original_dbs import (DELETE_OLD_FILE, create_fsmonitor, create_persistent_data,
                                       create_synced_files, hostile_pickle, original_pickle)

C, M, D = Event.CREATED, Event.MODIFIED, Event.DELETED
REPO = Path(__file__).resolve().parent.parent


class Files:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.persistent = str(directory / "persistent_data.db")
        self.synced = str(directory / "synced_files.db")
        self.fsmonitor = str(directory / "fsmonitor.db")

    def upgrade(self, options: UpgradeOptions | None = None) -> list[str]:
        return upgrade_databases(self.persistent, self.synced, self.fsmonitor, options)

    def backups(self) -> list[Path]:
        return sorted(self.dir.glob("*.bak-*"))


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def queue_rows(path: str) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT input_file, event FROM pipeline_queue ORDER BY id").fetchall()


def user_version(path: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the restricted unpickler ---------------------------------------------------------------------

def test_schema_versions_agree():
    """A module moving to a new schema version needs a migration here first."""
    assert pipeline_queue.SCHEMA_VERSION == synced_files_module.SCHEMA_VERSION == upgrade.CURRENT_VERSION
    assert pathscanner.SCHEMA_VERSION == upgrade.CURRENT_VERSION


@pytest.mark.parametrize("item,expected", [
    (("/s/a.css", 1), ("/s/a.css", 1, None)),
    (("/s/caf\xe9.png", 4), ("/s/caf\xe9.png", 4, None)),
    ((b"/s/na\xc3\xafve.js", 2), ("/s/na\xefve.js", 2, None)),
    ((b"/s/na\xefve.js", 2), ("/s/na\xefve.js", 2, "byte-string path is not UTF-8; decoded as Latin-1, check it")),
    (("/s/old.css", DELETE_OLD_FILE), ("/s/old.css", DELETE_OLD_FILE, None)),
    ((b"/s/big", 2**40), ("/s/big", 2**40, None)),
])
def test_original_items_are_read(item, expected):
    assert upgrade.legacy_event_item(original_pickle(item)) == expected


def test_byte_path_pickle_uses_python2_opcodes():
    """The fixture must look like Python 2's str, not Python 3's bytes (which needs a global)."""
    assert pickle.SHORT_BINSTRING in original_pickle((b"/s/x", 1))
    assert b"_codecs" not in original_pickle((b"/s/x", 1))


@pytest.mark.parametrize("blob,reason", [
    (pickle.dumps(["/s/a", 1], protocol=2), "not a (path, event) tuple"),
    (pickle.dumps(("/s/a", 1, 2), protocol=2), "not a (path, event) tuple"),
    (pickle.dumps(("/s/a", True), protocol=2), "event is True, not a number"),
    (pickle.dumps(("/s/a", "1"), protocol=2), "not a number"),
    (pickle.dumps((7, 1), protocol=2), "path is a int"),
    (pickle.dumps(("", 1), protocol=2), "empty path"),
    (pickle.dumps((b"/s/a", 1), protocol=2), "asks for _codecs.encode"),
    (pickle.dumps({("/s/a", 1)}, protocol=2), "asks for __builtin__.set"),
    (b"not a pickle", "not a readable pickle"),
    (original_pickle(("/s/a", 1))[:-3], "not a readable pickle"),
    (b"\x80\x02X\x01\x00\x00\x00aK\x01\x86Q.", "persistent id instruction"),
])
def test_malformed_items_are_refused(blob, reason):
    with pytest.raises(upgrade.RefusedItem, match=reason.replace("(", r"\(").replace(")", r"\)")):
        upgrade.legacy_event_item(blob)


def test_hostile_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    blob = hostile_pickle(str(marker))
    with pytest.raises(upgrade.RefusedItem, match=r"asks for (posix|os|nt)\.system"):
        upgrade.load_legacy_pickle(blob)
    assert not marker.exists()


def test_deletion_items_accept_float_and_int_times():
    assert upgrade.legacy_deletion_item(original_pickle(("/s/a", 1234.5))) == ("/s/a", 1234.5, None)
    assert upgrade.legacy_deletion_item(original_pickle(("/s/a", 99))) == ("/s/a", 99.0, None)


# --- persistent_data.db ---------------------------------------------------------------------------

@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "unkeyed"])
def test_queue_is_migrated_in_order_with_duplicates_merged(files, keyed):
    create_persistent_data(files.persistent, [("/s/a", 1), ("/s/b", 2), ("/s/a", 2), ("/s/c", 4),
                                              ("/s/b", 4), ("/s/d", 1)], keyed=keyed)
    report = files.upgrade()
    assert queue_rows(files.persistent) == [("/s/a", C), ("/s/b", D), ("/s/c", D), ("/s/d", C)]
    assert user_version(files.persistent) == 2
    text = "\n".join(report)
    assert f"original format ({'keyed' if keyed else 'unkeyed'} pipeline_queue)" in text
    assert "read: 6 queued, 0 in flight, 0 failed, 0 scheduled deletions" in text
    assert "pipeline_queue: 4 paths" in text and "2 rows merged" in text


def make_three_lists(files: Files, marker: Path) -> None:
    create_persistent_data(
        files.persistent,
        queue=[("/s/a", 1), ("/s/b", 2), ("/s/a", 2), ("/s/c", 4), hostile_pickle(str(marker)), ("/s/f", 1)],
        pipeline_list=[("/s/x", 2), ("/s/b", 1)],
        failed=[("/s/y", 1), ("/s/c", 1), ("/s/css/style_1.css", DELETE_OLD_FILE), ("/s/x", 4), ("/s/u", 8)],
        to_delete=[("/s/d", 1234.5), ("/s/e", 99), ("/s/d", 2000.0)])


def test_three_lists_are_migrated(files, tmp_path):
    marker = tmp_path / "pwned"
    make_three_lists(files, marker)
    report = "\n".join(files.upgrade())
    assert not marker.exists()
    # In flight first (x, with the older failure merged: D then M -> M); b's in-flight CREATED is
    # merged into its waiting MODIFIED in b's place; c's failed CREATED then waiting DELETED -> D.
    assert queue_rows(files.persistent) == [("/s/x", M), ("/s/a", C), ("/s/b", C), ("/s/c", D), ("/s/f", C)]
    with sqlite3.connect(files.persistent) as conn:
        failed = conn.execute("SELECT input_file, event, attempts, kind, reason FROM failed_files_list "
                              "ORDER BY id").fetchall()
        deletions = conn.execute("SELECT input_file, delete_at, state FROM files_to_delete_list ORDER BY id").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert failed == [("/s/y", C, 1, "retryable", upgrade.IMPORTED_REASON),
                      ("/s/css/style_1.css", M, 1, "retryable", upgrade.IMPORTED_REASON)]
    assert deletions == [("/s/e", 99.0, "scheduled"), ("/s/d", 2000.0, "scheduled")]
    assert not any(t.endswith("_original") for t in tables)
    assert "refused pipeline_queue row 5: refused: the pickle asks for" in report
    assert "refused failed_files_list row 5: unknown event value 8" in report
    assert "(/s/css/style_1.css): the original's pending deletion of an old processed name" in report
    assert "read: 5 queued, 2 in flight, 4 failed, 3 scheduled deletions" in report
    assert "failed_files_list: 2 paths" in report and "files_to_delete_list: 2 scheduled" in report


def test_migrated_pipeline_is_what_persistent_pipeline_reads(files, tmp_path):
    make_three_lists(files, tmp_path / "pwned")
    files.upgrade()
    pipeline = PersistentPipeline(files.persistent)
    try:
        assert pipeline.recover_in_flight() == 0
        claimed = pipeline.claim(10)
        assert [(i.input_file, i.event, i.attempts) for i in claimed] == [
            ("/s/x", M, 0), ("/s/a", C, 0), ("/s/b", C, 0), ("/s/c", D, 0), ("/s/f", C, 0)]
        assert [(f.input_file, f.event, f.reason) for f in pipeline.failed_items()] == [
            ("/s/y", C, upgrade.IMPORTED_REASON), ("/s/css/style_1.css", M, upgrade.IMPORTED_REASON)]
        assert pipeline.requeue_due(time.time() + 1) == 2
        assert [i.input_file for i in pipeline.claim(10)] == ["/s/y", "/s/css/style_1.css"]
        assert pipeline.due_deletions(time.time()) == ["/s/e", "/s/d"]
        assert pipeline.counts() == {"waiting": 0, "in_flight": 7, "failed": 0, "to_delete": 2}
    finally:
        pipeline.close()


def test_byte_string_paths(files):
    create_persistent_data(files.persistent, [(b"/s/caf\xc3\xa9.css", 1), (b"/s/na\xefve.js", 2),
                                              ("/s/caf\xe9.css", 2)], keyed=False)
    report = "\n".join(files.upgrade())
    # The UTF-8 byte path and the unicode path are the same file: merged.
    assert queue_rows(files.persistent) == [("/s/caf\xe9.css", C), ("/s/na\xefve.js", M)]
    assert "row 1" not in report
    assert "row 2 (/s/na\xefve.js): byte-string path is not UTF-8; decoded as Latin-1, check it" in report


def test_unknown_table_is_refused_and_nothing_changes(files):
    create_persistent_data(files.persistent, [("/s/a", 1)])
    with sqlite3.connect(files.persistent) as conn:
        conn.execute("CREATE TABLE mine(x)")
    before = digest(files.persistent)
    with pytest.raises(UpgradeError, match="table 'mine'"):
        files.upgrade()
    assert digest(files.persistent) == before
    assert files.backups() == []


def test_unknown_columns_are_refused(files):
    with sqlite3.connect(files.persistent) as conn:
        conn.execute("CREATE TABLE pipeline_queue(id INTEGER PRIMARY KEY, item pickle, extra)")
    with pytest.raises(UpgradeError, match=r"columns \(id, item, extra\)"):
        files.upgrade()


# --- synced_files.db ------------------------------------------------------------------------------

def test_synced_files_without_unique_index_loses_its_duplicates(files):
    create_synced_files(files.synced, [
        ("/s/a.css", "a.css", "http://cdn/a.css", "s1"),
        ("/s/a.css", "a_2.css", "http://cdn/a_2.css", "s1"),
        ("/s/a.css", "a.css", "http://other/a.css", "s2"),
        ("/s/b.png", "b.png", "http://cdn/b.png", "s1"),
        ("/s/a.css", "a_3.css", "http://cdn/a_3.css", "s1"),
    ], unique_index=False)
    report = "\n".join(files.upgrade())
    assert "3 rows kept; unique index on (input_file, server) created; 2 duplicate rows dropped" in report
    assert user_version(files.synced) == 2
    synced = SyncedFiles(files.synced)
    try:
        assert [(r.transported_file_basename, r.server) for r in synced.for_file("/s/a.css")] == [
            ("a.css", "s2"), ("a_3.css", "s1")]
        assert synced.get("/s/b.png", "s1") is not None
    finally:
        synced.close()
    with sqlite3.connect(files.synced) as conn:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO synced_files VALUES ('/s/b.png', 'b.png', 'x', 's1')")


def test_synced_files_with_index_keeps_its_rows_and_rowids(files):
    rows = [(f"/s/{n}.js", f"{n}.js", f"http://cdn/{n}.js", "s1") for n in range(5)]
    create_synced_files(files.synced, rows)
    with sqlite3.connect(files.synced) as conn:
        before = conn.execute("SELECT rowid, * FROM synced_files ORDER BY rowid").fetchall()
    report = "\n".join(files.upgrade())
    assert "synced_files: 5 rows kept as they are" in report
    with sqlite3.connect(files.synced) as conn:
        assert conn.execute("SELECT rowid, * FROM synced_files ORDER BY rowid").fetchall() == before


# --- fsmonitor.db ---------------------------------------------------------------------------------

def make_tree(root: Path) -> dict[str, int]:
    """Files on disk and the whole-second mtimes the original recorded for them."""
    (root / "sub").mkdir(parents=True)
    recorded: dict[str, int] = {}
    for name, content, seconds in (("same.txt", b"same", 1_600_000_000), ("sub/inner.txt", b"in", 1_600_000_100),
                                   ("changed.txt", b"new content", 1_600_000_200)):
        path = root / name
        path.write_bytes(content)
        os.utime(path, ns=(seconds * 10**9 + 500_000_000, seconds * 10**9 + 500_000_000))
        recorded[name] = seconds
    recorded["changed.txt"] -= 60  # changed a minute after the original last saw it
    return recorded


def make_original_index(files: Files, root: Path, recorded: dict[str, int]) -> None:
    create_fsmonitor(files.fsmonitor, [
        (str(root) + "/", "same.txt", recorded["same.txt"]),  # a scanPath written with a trailing '/'
        (str(root), "changed.txt", recorded["changed.txt"]),
        (str(root), "gone.txt", 1_500_000_000),
        (str(root), "sub", -1),
        (str(root / "sub"), "inner.txt", recorded["sub/inner.txt"]),
    ])


def scan_events(files: Files, root: Path) -> list[FSEvent]:
    scanner = pathscanner.PathScanner(files.fsmonitor)
    try:
        known = scanner.known_below(str(root))
        events: list[FSEvent] = []
        for chunk_events, _ in pathscanner.scan_tree(str(root), known, frozenset(), pathscanner.UndecodableNames()):
            events.extend(chunk_events)
        return events
    finally:
        scanner.close()


def test_pathscanner_keeps_unchanged_files_unchanged(files, tmp_path):
    root = tmp_path / "site"
    recorded = make_tree(root)
    make_original_index(files, root, recorded)
    report = "\n".join(files.upgrade())
    assert ("5 of 5 entries converted: 1 directories, 2 files unchanged since the original saw them "
            "(current mtime and size recorded), 2 files changed, gone or not checked") in report
    scanner = pathscanner.PathScanner(files.fsmonitor)
    try:
        assert scanner.get((str(root), "same.txt")) == pathscanner.Entry(1_600_000_000_500_000_000, 4)
        assert scanner.get((str(root), "sub")) == pathscanner.DIR_ENTRY
        assert scanner.get((str(root), "gone.txt")) == pathscanner.Entry(1_500_000_000 * 10**9, -1)
    finally:
        scanner.close()
    assert sorted(scan_events(files, root), key=lambda e: e.path) == [
        FSEvent(str(root / "changed.txt"), M), FSEvent(str(root / "gone.txt"), D)]


def test_pathscanner_resync_all_reports_every_file(files, tmp_path):
    root = tmp_path / "site"
    make_original_index(files, root, make_tree(root))
    files.upgrade(UpgradeOptions(trust_mtime_seconds=False))
    assert sorted(scan_events(files, root), key=lambda e: e.path) == [
        FSEvent(str(root / "changed.txt"), M), FSEvent(str(root / "gone.txt"), D),
        FSEvent(str(root / "same.txt"), M), FSEvent(str(root / "sub" / "inner.txt"), M)]


# --- the procedure --------------------------------------------------------------------------------

def make_all(files: Files, tmp_path: Path) -> None:
    make_three_lists(files, tmp_path / "pwned")
    create_synced_files(files.synced, [("/s/a", "a", "http://cdn/a", "s1")] * 2, unique_index=False)
    root = tmp_path / "site"
    make_original_index(files, root, make_tree(root))


def test_upgrade_is_idempotent_and_backs_up_with_mode_0600(files, tmp_path):
    make_all(files, tmp_path)
    originals = {path: digest(path) for path in (files.persistent, files.synced, files.fsmonitor)}
    first = files.upgrade()
    backups = files.backups()
    assert len(backups) == 3
    for backup in backups:
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        source = str(backup).split(".bak-")[0]
        with sqlite3.connect(backup) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        assert source in originals
    with sqlite3.connect(next(b for b in backups if b.name.startswith("persistent_data"))) as conn:
        assert conn.execute("SELECT COUNT(*) FROM pipeline_queue").fetchone()[0] == 6
    assert any("schema 1 -> 2" in line for line in first)
    after_first = {path: digest(path) for path in originals}
    second = files.upgrade()
    assert second == [f"persistent_data.db ({files.persistent}): already current (schema 2)",
                      f"synced_files.db ({files.synced}): already current (schema 2)",
                      f"fsmonitor.db ({files.fsmonitor}): already current (schema 2)"]
    assert {path: digest(path) for path in originals} == after_first
    assert files.backups() == backups


def test_missing_and_empty_files_need_nothing(files):
    Path(files.synced).touch()
    assert files.upgrade() == [f"persistent_data.db ({files.persistent}): not found, nothing to do",
                               f"synced_files.db ({files.synced}): empty, nothing to do",
                               f"fsmonitor.db ({files.fsmonitor}): not found, nothing to do"]
    assert files.backups() == []


def test_current_databases_written_by_this_project_are_current(files):
    PersistentPipeline(files.persistent).close()
    SyncedFiles(files.synced).close()
    pathscanner.PathScanner(files.fsmonitor).close()
    assert all("already current" in line for line in files.upgrade())


def test_a_newer_version_is_refused_before_anything_changes(files):
    create_persistent_data(files.persistent, [("/s/a", 1)])
    with sqlite3.connect(files.fsmonitor) as conn:
        conn.execute("PRAGMA user_version = 3")
    with pytest.raises(UpgradeError, match="schema version 3, newer than this fileconveyor knows"):
        files.upgrade()
    assert user_version(files.persistent) == 0
    assert files.backups() == []


def test_a_database_in_use_is_refused(files, monkeypatch):
    monkeypatch.setattr(upgrade, "LOCK_TIMEOUT_SECONDS", 0.1)
    create_persistent_data(files.persistent, [("/s/a", 1)])
    other = sqlite3.connect(files.persistent, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(UpgradeError, match="in use by another process"):
            files.upgrade()
    finally:
        other.close()
    assert user_version(files.persistent) == 0


def test_not_a_database_is_an_upgrade_error(files):
    Path(files.synced).write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(UpgradeError, match=r"synced_files\.db"):
        files.upgrade()


# --- command line ---------------------------------------------------------------------------------

def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fileconveyor.upgrade", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_python_m_upgrade(files, tmp_path):
    make_all(files, tmp_path)
    result = run_module("--persistent-data-db", files.persistent, "--synced-files-db", files.synced,
                        "--fsmonitor-db", files.fsmonitor, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pipeline_queue: 5 paths" in result.stdout
    assert "1 duplicate rows dropped" in result.stdout
    assert result.stderr == ""
    assert queue_rows(files.persistent)[0] == ("/s/x", M)


def test_main_finds_the_databases_through_the_config(files, tmp_path, capsys):
    (tmp_path / "state").mkdir()
    create_persistent_data(str(tmp_path / "state" / "pd.db"), [("/s/a", 1)])
    (tmp_path / "site").mkdir()
    config = tmp_path / "config.xml"
    config.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<config>\n'
        '  <settings><PERSISTENT_DATA_DB>state/pd.db</PERSISTENT_DATA_DB></settings>\n'
        f'  <sources><source name="site" scanPath="{tmp_path / "site"}"/></sources>\n'
        '  <servers><server name="cdn" transporter="tests.configs.plugins"><location>/tmp/cdn</location>'
        '<url>http://cdn.example.com/</url></server></servers>\n'
        '  <rules><rule for="site" label="all"><destinations><destination server="cdn"/></destinations>'
        '</rule></rules>\n</config>\n')
    assert upgrade.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"persistent_data.db ({tmp_path / 'state' / 'pd.db'}): schema 1 -> 2" in out
    assert f"synced_files.db ({tmp_path / 'synced_files.db'}): not found" in out
    assert queue_rows(str(tmp_path / "state" / "pd.db")) == [("/s/a", C)]


def test_main_exit_codes(files, tmp_path, capsys):
    bad = tmp_path / "bad.xml"
    bad.write_text("<config><nonsense/></config>")
    assert upgrade.main(["--config", str(bad)]) == 2
    assert "cannot use the config" in capsys.readouterr().err
    assert upgrade.main(["--config", str(tmp_path / "missing.xml")]) == 2
    with sqlite3.connect(files.synced) as conn:
        conn.execute("PRAGMA user_version = 9")
    assert upgrade.main(["--persistent-data-db", files.persistent, "--synced-files-db", files.synced,
                         "--fsmonitor-db", files.fsmonitor]) == 1
    err = capsys.readouterr().err
    assert "newer than this fileconveyor knows" in err and "Traceback" not in err
    assert upgrade.main(["--no-such-option"]) == 2


def test_a_current_database_is_reported_without_waiting_for_a_running_daemon(files, monkeypatch):
    monkeypatch.setattr(upgrade, "LOCK_TIMEOUT_SECONDS", 0.1)
    pipeline = PersistentPipeline(files.persistent)
    try:
        with pipeline.db.transaction():  # the daemon in the middle of a write
            assert files.upgrade()[0].endswith("already current (schema 2)")
    finally:
        pipeline.close()


def test_a_write_between_backup_and_migration_stops_the_upgrade(files, monkeypatch):
    create_persistent_data(files.persistent, [("/s/a", 1)])
    real_backup = upgrade._backup

    def backup_then_someone_writes(conn: sqlite3.Connection, path: str) -> str:
        target = real_backup(conn, path)
        with sqlite3.connect(path) as other:
            other.execute("INSERT INTO pipeline_queue(item, key) VALUES (?, 'k')", (original_pickle(("/s/b", 1)),))
        return target

    monkeypatch.setattr(upgrade, "_backup", backup_then_someone_writes)
    with pytest.raises(UpgradeError, match="changed by another process during the upgrade"):
        files.upgrade()
    assert user_version(files.persistent) == 0
