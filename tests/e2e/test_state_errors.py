"""Commands facing damaged, lost or unwritable state: a clear line and an exit code, never a traceback.

The commands run as real processes (`python -m fileconveyor`) on real files: a closed stdout pipe,
corrupt databases, a synced_files.db emptied behind the daemon's back, and a full file system (a
small tmpfs, which needs root: CI runs as root).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from tests.e2e.harness import REPO, Daemon, query, wait_for, wait_in_sync, write_config
from tests.e2e.test_daemon import cli, write


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr


def _synced_once(tmp_path, files: int = 3):
    setup = write_config(tmp_path)
    for i in range(files):
        write(os.path.join(setup.source, f"f{i}.txt"), str(i))
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
    return setup


def test_status_into_a_pipe_closed_early_exits_quietly(tmp_path):
    setup = write_config(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already exited
    env = dict(os.environ, PYTHONPATH=REPO)
    try:
        result = subprocess.run([sys.executable, "-m", "fileconveyor", "status", "--config", setup.config],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_status_and_verify_create_nothing_beside_the_databases(tmp_path):
    setup = _synced_once(tmp_path)
    before = sorted(os.listdir(setup.state))
    for command in ("status", "verify"):
        result = cli(command, "--config", setup.config)
        assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(setup.state)) == before  # e.g. no fsmonitor.db-wal/-shm


def test_status_and_verify_name_a_corrupt_database_in_one_line(tmp_path):
    setup = _synced_once(tmp_path)
    for name in ("persistent_data.db", "synced_files.db"):
        with open(setup.db(name), "r+b") as handle:
            handle.write(b"garbage garbage garbage!")  # the header: "file is not a database"
    status = cli("status", "--config", setup.config)
    _no_traceback(status)
    assert status.returncode == 1
    assert "File Conveyor is not running" in status.stdout
    assert any(setup.db("persistent_data.db") in line and "PROBLEM" in line for line in status.stdout.splitlines())
    verify = cli("verify", "--config", setup.config)
    _no_traceback(verify)
    assert verify.returncode == 1
    [line] = [line for line in verify.stderr.splitlines() if setup.db("synced_files.db") in line]
    assert "--resync-all" in line
    started = cli("start", "--config", setup.config)
    _no_traceback(started)
    assert started.returncode == 1 and setup.db("persistent_data.db") in started.stderr


def test_an_emptied_synced_files_db_is_not_accepted_and_resync_all_repairs(tmp_path):
    """It used to be accepted silently: rows lost, nothing synced again, `verify` "Checked 0"."""
    setup = _synced_once(tmp_path)
    os.truncate(setup.db("synced_files.db"), 0)
    os.remove(os.path.join(setup.source, "f0.txt"))  # deleted while down: must go from the CDN too
    verify = cli("verify", "--config", setup.config)
    _no_traceback(verify)
    assert verify.returncode == 1 and setup.db("synced_files.db") in verify.stderr
    started = cli("start", "--config", setup.config)
    assert started.returncode == 1 and "--resync-all" in started.stderr, started.stderr
    assert not os.path.exists(setup.pid_file)
    upgraded = cli("upgrade", "--config", setup.config, "--resync-all")
    assert upgraded.returncode == 0, upgraded.stderr
    with Daemon(setup) as daemon:
        # The rows come back; f0.txt, known nowhere any more, stays on the destination: that is
        # the price of losing synced_files.db, said in docs/state.md.
        wait_for(lambda: {r[0] for r in query(setup.db("synced_files.db"), "SELECT input_file FROM synced_files")}
                 == {os.path.join(setup.source, f"f{i}.txt") for i in (1, 2)}, 60, "rows recorded again",)
        del daemon
    assert cli("verify", "--config", setup.config).returncode == 0


def test_a_lost_index_finds_files_deleted_while_the_daemon_was_down(tmp_path):
    setup = _synced_once(tmp_path)
    os.remove(setup.db("fsmonitor.db"))
    os.remove(os.path.join(setup.source, "f1.txt"))
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)  # f1.txt gone from the destination and from synced_files


def test_a_corrupt_index_is_rebuilt_at_start_without_a_restart_loop(tmp_path):
    setup = _synced_once(tmp_path)
    with open(setup.db("fsmonitor.db"), "r+b") as handle:
        handle.write(b"garbage garbage garbage!")
    os.remove(os.path.join(setup.source, "f2.txt"))
    write(os.path.join(setup.source, "new.txt"), "new")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        status = cli("status", "--config", setup.config)
        assert status.returncode == 0 and "PROBLEM" not in status.stdout, status.stdout
        log = open(setup.log_file, encoding="utf-8").read()
        assert "restarted itself" not in log and "fsmonitor.db" in log
    assert [n for n in os.listdir(setup.state) if n.startswith("fsmonitor.db.damaged-")]


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs as the state directory (tests.e2e.harness.write_config(tmp_path) puts the
    config and the databases there), filled up when the test says so."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "state"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)], check=True)

    def fill() -> None:
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(10_000):  # bounded: 2 MiB needs 512 of them
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_status_and_verify_on_a_full_disk(tmp_path, full_disk):
    _, fill = full_disk
    setup = write_config(tmp_path)
    write(os.path.join(setup.source, "a.txt"), "a")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
    fill()
    for command in ("status", "verify"):
        result = cli(command, "--config", setup.config)
        _no_traceback(result)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    assert "local: 1" in cli("status", "--config", setup.config).stdout
    conn = sqlite3.connect(setup.db("persistent_data.db"))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()


def test_a_full_state_disk_while_running_waits_shows_and_recovers(tmp_path, full_disk):
    """Writes that meet a full disk are retried and shown by `status`, never a crash and restart."""
    mount, fill = full_disk
    setup = write_config(tmp_path, settings={"LOG_FILE": os.path.join(tmp_path, "fileconveyor.log"),
                                             "WORKING_DIR": os.path.join(tmp_path, "work")})
    write(os.path.join(setup.source, "before.txt"), "before")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        fill()
        for i in range(20):
            write(os.path.join(setup.source, f"during{i}.txt"), "x" * 2000)

        def degraded_in_status() -> bool:
            result = cli("status", "--config", setup.config)
            _no_traceback(result)
            return "database " in result.stdout and "disk full" in result.stdout
        wait_for(degraded_in_status, 60, "status to show the full disk")
        os.remove(os.path.join(mount, "filler"))
        wait_in_sync(setup, daemon, timeout=120)
        wait_for(lambda: "disk full" not in cli("status", "--config", setup.config).stdout, 60,
                 "status to stop showing the full disk")
        assert "restarted itself" not in open(os.path.join(tmp_path, "fileconveyor.log"), encoding="utf-8").read()
