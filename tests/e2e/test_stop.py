"""`fileconveyor stop` tells the truth (issue 7, item 8).

The PID file is the only thing `start`, `stop` and `status` know a daemon by, so it must exist
exactly as long as the process does: a PID file removed while the process lives let a second
daemon start beside the first, and `stop` said "stopped" about a process that still ran.
"""
from __future__ import annotations

import os
import signal

from fileconveyor.daemon import is_alive, read_pid
from tests.e2e.harness import wait_for, write_config
from tests.e2e.test_daemon import cli, write


def _kill_if_alive(pid: int | None) -> None:
    if pid is not None and is_alive(pid):
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not is_alive(pid), 30, f"PID {pid} to die")


def test_a_thread_stuck_in_a_system_call_does_not_outlive_the_pid_file(tmp_path):
    """A processor blocked in open() on a FIFO ignores the stop: the daemon must still exit (after
    SHUTDOWN_TIMEOUT and a grace period, saying which thread it left), and only then may its PID
    file go; `stop` waits for the process, not for the file."""
    setup = write_config(tmp_path, processors=("tests.e2e.processors.StuckInOpen",),
                         settings={"SHUTDOWN_TIMEOUT": "2"})
    os.mkfifo(os.path.join(setup.root, "stuck.fifo"))
    pid = None
    try:
        started = cli("start", "--config", setup.config)
        assert started.returncode == 0, started.stderr
        pid = read_pid(setup.pid_file)
        assert pid is not None
        write(os.path.join(setup.source, "x.stuck"), "x")
        wait_for(lambda: os.path.exists(os.path.join(setup.root, "stuck-entered")), 30,
                 "the processor to be stuck")
        stopped = cli("stop", "--config", setup.config, timeout=120)
        alive = is_alive(pid)
        assert not (alive and not os.path.exists(setup.pid_file)), \
            "the PID file is gone while the daemon still runs"
        assert stopped.returncode == 0 and f"(PID {pid}) stopped" in stopped.stdout, stopped.stderr
        assert not alive and not os.path.exists(setup.pid_file)
        log = open(setup.log_file, encoding="utf-8").read()
        assert "did not stop within" in log and "e2e/processors.py" in log  # which thread, where
        again = cli("start", "--config", setup.config)
        assert again.returncode == 0, again.stderr
        pid = read_pid(setup.pid_file)
    finally:
        _kill_if_alive(pid)


def test_stop_reports_a_daemon_that_does_not_exit_and_kill_forces_it(tmp_path):
    setup = write_config(tmp_path)
    pid = None
    try:
        assert cli("start", "--config", setup.config).returncode == 0
        pid = read_pid(setup.pid_file)
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it cannot act on SIGTERM
        stopped = cli("stop", "--timeout", "1", "--config", setup.config)
        assert stopped.returncode == 1
        assert f"still running (PID {pid}), not stopped" in stopped.stderr
        assert "Traceback" not in stopped.stderr and "stopped" not in stopped.stdout
        assert is_alive(pid) and read_pid(setup.pid_file) == pid
        second = cli("start", "--config", setup.config)
        assert second.returncode == 1 and "already running" in second.stderr
        assert "running (PID" in cli("status", "--config", setup.config).stdout
        killed = cli("stop", "--timeout", "1", "--kill", "--config", setup.config)
        assert killed.returncode == 0 and "SIGKILL" in killed.stdout, killed.stderr
        assert not is_alive(pid) and not os.path.exists(setup.pid_file)
        assert "not running" in cli("stop", "--config", setup.config).stdout
    finally:
        _kill_if_alive(pid)


def test_stop_rejects_a_bad_timeout(tmp_path):
    setup = write_config(tmp_path)
    result = cli("stop", "--timeout", "soon", "--config", setup.config)
    assert result.returncode == 2 and "not a number of seconds" in result.stderr


def test_stop_removes_a_stale_pid_file(tmp_path):
    """Left by a daemon killed with SIGKILL: the Drupal module takes the file's existence for
    "running", so `stop` (asked to make sure nothing runs) removes it."""
    setup = write_config(tmp_path)
    with open(setup.pid_file, "w") as handle:
        handle.write("999999\n")
    result = cli("stop", "--config", setup.config)
    assert result.returncode == 0 and "not running" in result.stdout
    assert "Removed the stale PID file" in result.stdout and not os.path.exists(setup.pid_file)
