"""Proof for fixes of the original's issues that had none (issue 11, "Fixed, but nothing proves it").

Each test names the original issue it proves (docs/original-issues.md lists them all) and fails on a
version that has the old behaviour. The daemon tests can run another copy of the package
(FC_TEST_CODE_DIR, as tests/torture does with --commit), which is how they were checked against
deliberately broken versions.
"""
from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import sys
import time

import pytest

from fileconveyor.config import check_config
from fileconveyor.transporters.base import TransporterNotFound, resolve_transporter
from tests.e2e.harness import REPO, Daemon, Setup, counts, query, synced_inputs, wait_for, write_config

CODE_DIR = os.environ.get("FC_TEST_CODE_DIR", REPO)
COPY = "tests.e2e.processors.Copy"


def _daemon(setup: Setup) -> Daemon:
    return Daemon(setup, code_dir=CODE_DIR)


def _write(path: str, data: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(data)


def _working_dir_entries(setup: Setup) -> list[str]:
    work = os.path.join(setup.state, "work")
    return sorted(os.listdir(work)) if os.path.isdir(work) else []


def _all_queues_empty(setup: Setup) -> bool:
    rows = query(setup.db("persistent_data.db"), "SELECT COUNT(*) FROM files_to_delete_list")
    return all(n == 0 for n in counts(setup).values()) and bool(rows) and rows[0][0] == 0


# --- #162: a third-party transporter module without TRANSPORTER_CLASS -------------------------------

@pytest.mark.parametrize("source, problem", [
    ("X = 1\n", "defines no TRANSPORTER_CLASS"),
    ("TRANSPORTER_CLASS = 'Mine'\n", "has TRANSPORTER_CLASS = 'Mine', but no such class"),
    ("TRANSPORTER_CLASS = 'Mine'\nclass Mine:\n    pass\n", "which is not a subclass of Transporter"),
])
def test_162_a_transporter_module_without_its_class_is_named(tmp_path: pathlib.Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              source: str, problem: str) -> None:
    module = tmp_path / "acme_cdn.py"
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_cdn", raising=False)
    with pytest.raises(TransporterNotFound) as raised:
        resolve_transporter("acme_cdn")
    message = str(raised.value)
    assert "'acme_cdn'" in message and str(module) in message and problem in message
    assert "could not be found" not in message  # the original's misleading words
    # check-config says it on the line of the <server>, without a traceback.
    scan = tmp_path / "site"
    scan.mkdir()
    config = tmp_path / "config.xml"
    config.write_text(f'<config><sources><source name="s" scanPath="{scan}"/></sources>\n'
                      '<servers>\n<server name="cdn" transporter="acme_cdn"/>\n</servers>'
                      '<rules><rule for="s"><destinations><destination server="cdn"/></destinations></rule>'
                      '</rules></config>')
    monkeypatch.delitem(sys.modules, "acme_cdn", raising=False)
    errors = [p for p in check_config(str(config)) if p.severity == "error"]
    assert any(p.line == 3 and problem in p.message and "acme_cdn" in p.message for p in errors), errors


# --- #30: WORKING_DIR holds nothing after a burst, after failures, after kill -9 --------------------

def test_30_working_dir_is_empty_after_a_burst_and_after_failures(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path, processors=(COPY, "tests.e2e.failing_processors.WriteThenFail"),
                         settings={"RETRY_INTERVAL": "3600", "RETRY_MAX_INTERVAL": "3600",
                                   "MAX_SIMULTANEOUS_PROCESSORCHAINS": "4"})
    good = [f"burst/{i // 20}/file {i}.txt" for i in range(120)]
    bad = [f"burst/bad{i}.bad" for i in range(6)]
    with _daemon(setup) as daemon:
        for name in good + bad:
            _write(os.path.join(setup.source, name), name * 50)

        def settled() -> bool:
            c = counts(setup)
            return (c["pipeline_queue"] == 0 and c["pipeline_list"] == 0 and c["failed_files_list"] == len(bad)
                    and len(synced_inputs(setup)) == len(good))
        wait_for(settled, 90, "the burst synced and the bad files failed")
        wait_for(lambda: _working_dir_entries(setup) == [], 30,
                 f"WORKING_DIR to be emptied (it holds {_working_dir_entries(setup)[:5]})")
        assert daemon.terminate() == 0
    assert _working_dir_entries(setup) == []


def test_30_working_dir_is_emptied_after_kill_9(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path, processors=(COPY, "tests.e2e.processors.Gate"))
    names = [f"n{i}.txt" for i in range(20)] + ["held.held"]
    for name in names:
        _write(os.path.join(setup.source, name), name)
    daemon = _daemon(setup).start()
    try:
        wait_for(lambda: os.path.exists(os.path.join(setup.root, "entered-held.held")), 60,
                 "a processor run to be under way")
        daemon.kill()
    finally:
        daemon.kill()
    # What a crash leaves behind: at least the directory of the run the gate held (else this test
    # would prove nothing).
    assert _working_dir_entries(setup), "no working directory left by the killed daemon"
    pathlib.Path(setup.root, "open-gate").touch()
    with _daemon(setup) as restarted:
        wait_for(lambda: _all_queues_empty(setup) and len(synced_inputs(setup)) == len(names), 60,
                 "everything synced after the restart")
        wait_for(lambda: _working_dir_entries(setup) == [], 30,
                 f"WORKING_DIR to be emptied (it holds {_working_dir_entries(setup)[:5]})")
        assert restarted.terminate() == 0


# --- the original's pipeline leak after a self-deletion (§4.3 `break`, fileDeletionDelayAfterSync) ---

def test_pipeline_is_empty_after_a_self_deletion_was_processed(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path, processors=(COPY,), deletion_delay="0.2")
    names = [f"upload{i}.txt" for i in range(10)]
    with _daemon(setup) as daemon:
        for name in names:
            _write(os.path.join(setup.source, name), name)

        def deletions_processed() -> int:
            with open(setup.log_file, encoding="utf-8", errors="replace") as log:
                return sum("was deleted by File Conveyor after its sync" in line for line in log)
        # Only once the DELETED event of every self-deletion has been through the pipeline may the
        # lists be checked: before it they are empty anyway.
        wait_for(lambda: deletions_processed() >= len(names), 60, "the self-deletions to be processed")
        wait_for(lambda: _all_queues_empty(setup), 30, "empty pipeline lists")
        assert not [n for n in names if os.path.exists(os.path.join(setup.source, n))]
        published = sorted(n for n in os.listdir(setup.dest) if not n.startswith("."))
        assert published == sorted(names), "the deletion is not propagated"
        assert daemon.pid > 0 and daemon.process is not None
        os.kill(daemon.pid, signal.SIGTERM)
        assert daemon.process.wait(60) == 0


# --- #129: CREATED for a file already synced, with a per-server processor, must not stall ---------

def test_129_created_events_for_synced_files_with_a_per_server_chain_do_not_stall(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path, processors=("link_updater.CSSURLUpdater",),
                         settings={"MAX_FILES_IN_PIPELINE": "2"})
    names = [f"css/s{i}.css" for i in range(12)]
    for name in names:
        _write(os.path.join(setup.source, name), "body { color: red }")
    expected = {os.path.join(setup.source, name) for name in names}
    with _daemon(setup) as daemon:
        wait_for(lambda: synced_inputs(setup) == expected and _all_queues_empty(setup), 60, "the first sync")
        assert daemon.terminate() == 0
    # What the original met after a restart without its index: CREATED for files already synced.
    db = sqlite3.connect(setup.db("persistent_data.db"))
    with db:
        db.executemany("INSERT INTO pipeline_queue(input_file, event, queued_at) VALUES (?, 1, ?)",
                       [(path, time.time()) for path in sorted(expected)])
    db.close()
    with _daemon(setup) as daemon:
        wait_for(lambda: _all_queues_empty(setup), 60,
                 "every CREATED event to go through a pipeline of 2 paths")
        assert synced_inputs(setup) == expected
        assert daemon.terminate() == 0


# --- the recorder: one commit for many files, and a reader's lock waited out (#149's kind) ----------

def _change_counter(path: str) -> int:
    """SQLite's file change counter (header bytes 24-27): one more per committed write
    transaction in rollback-journal mode (synced_files.db's default)."""
    with open(path, "rb") as handle:
        header = handle.read(28)
    return int.from_bytes(header[24:28], "big")


def test_recorder_batches_a_burst_and_waits_out_a_readers_lock(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path)
    names = [f"burst/f{i}.txt" for i in range(40)]  # below MAX_FILES_IN_PIPELINE: all in flight at once
    expected = {os.path.join(setup.source, name) for name in names}
    with _daemon(setup) as daemon:
        before = _change_counter(setup.db("synced_files.db"))
        # A reader (the Drupal module, sqlite3 in a shell) holding its SHARED lock: no commit to
        # synced_files.db completes until it is done, and once the recorder waits to commit, no
        # other reader of the file gets in either: trips that read it wait too.
        reader = sqlite3.connect(setup.db("synced_files.db"), isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM synced_files").fetchone() == (0,)
        try:
            for name in names:
                _write(os.path.join(setup.source, name), name)
            burst = os.path.join(setup.dest, "burst")
            # Every path in flight, and at least one upload done: its record waits for the reader.
            wait_for(lambda: counts(setup)["pipeline_queue"] == 0 and counts(setup)["pipeline_list"] > 0
                     and os.path.isdir(burst) and len(os.listdir(burst)) > 0,
                     60, "the burst in flight with an upload done while the reader holds its lock")
            assert _change_counter(setup.db("synced_files.db")) == before, "a record got past the reader's lock"
        finally:
            reader.execute("COMMIT")
            reader.close()
        wait_for(lambda: synced_inputs(setup) == expected and _all_queues_empty(setup), 60,
                 "every upload recorded once the reader let go")
        commits = _change_counter(setup.db("synced_files.db")) - before
        print(f"{commits} commits to synced_files.db for {len(names)} records")
        assert commits <= len(names) // 2, f"{commits} commits for {len(names)} records: the recorder does not batch"
        failed = query(setup.db("persistent_data.db"), "SELECT COUNT(*) FROM failed_files_list")
        assert failed == [(0,)]
        assert daemon.terminate() == 0


# --- #2: the whole daemon idle on a synced tree -----------------------------------------------------

IDLE_FILES = int(os.environ.get("FC_IDLE_FILES", "5000"))  # 100000 for the original's tree size
#: CPU seconds the whole daemon may use per second of idleness (2 % of one core).
IDLE_CPU_SHARE = 0.02


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_2_the_whole_daemon_idles_near_zero_cpu_on_a_synced_tree(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path, settings={"FILE_LOGGER_LEVEL": "INFO", "MAX_FILES_IN_PIPELINE": "500"})
    for d in range(-(-IDLE_FILES // 100)):
        directory = os.path.join(setup.source, f"d{d:04}")
        os.mkdir(directory)
        for f in range(min(100, IDLE_FILES - d * 100)):
            with open(os.path.join(directory, f"f{f}.txt"), "w") as handle:
                handle.write("x")
    with _daemon(setup) as daemon:
        wait_for(lambda: len(synced_inputs(setup)) == IDLE_FILES and _all_queues_empty(setup),
                 max(120, IDLE_FILES / 50), f"{IDLE_FILES} files synced")
        window = 3.0
        before, started = _cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(window)  # measuring CPU over a span of idleness, not waiting for anything
        used = _cpu_seconds(daemon.pid) - before
        elapsed = time.monotonic() - started
        print(f"idle CPU of the whole daemon on {IDLE_FILES} synced files: {used:.2f} s over {elapsed:.1f} s")
        assert used <= IDLE_CPU_SHARE * elapsed + 0.02, f"{used:.2f} s of CPU in {elapsed:.1f} s of idleness"
        assert daemon.terminate() == 0
