"""Running as a daemon: the PID file, signals, the restart loop, detaching and stopping.

* SIGTERM and SIGINT stop for good (the original treated SIGTERM as a crash and restarted 10 s
  later). Handlers only set flags; the main thread does the work.
* SIGHUP reopens the log file (for logrotate).
* An unexpected exception that escapes any thread's loop stops the arbitrator; with
  RESTART_AFTER_UNHANDLED_EXCEPTION the daemon reloads its config and starts again after
  RESTART_INTERVAL, otherwise it exits non-zero.
* `start` runs `fileconveyor run` in a new session and waits on a pipe for the child to say it is
  up (or why it is not), so its exit status tells the truth.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from fileconveyor.config import Config, load_config

log = logging.getLogger(__name__)


class DaemonError(Exception):
    """Starting or stopping failed; the message says why and what to do."""

    exit_code = 1


# --- PID file ---------------------------------------------------------------------------------

def read_pid(pid_file: str) -> int | None:
    try:
        with open(pid_file, encoding="ascii") as handle:
            return int(handle.read().strip() or "0") or None
    except (OSError, ValueError):
        return None


def running_pid(pid_file: str) -> int | None:
    """The PID of the daemon holding `pid_file`, or None when the file is stale or absent.

    The daemon holds an exclusive flock on its PID file for as long as it runs, so liveness does not
    depend on the PID (PIDs are reused quickly: pid_max is often 32768)."""
    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_pid(pid_file) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


_pid_fd: int | None = None


def write_pid_file(pid_file: str) -> None:
    """Create or take over `pid_file` (mode 0600), lock it for the life of this process, write our PID."""
    global _pid_fd
    os.makedirs(os.path.dirname(os.path.abspath(pid_file)), exist_ok=True)
    fd = os.open(pid_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = read_pid(pid_file)
        raise DaemonError(f"File Conveyor is already running with PID {holder} (PID file {pid_file}); "
                          "stop it first with `fileconveyor stop`") from None
    if os.fstat(fd).st_size:
        log.warning("Replacing stale PID file %s", pid_file)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    os.fsync(fd)
    _pid_fd = fd


def remove_pid_file(pid_file: str) -> None:
    global _pid_fd
    if _pid_fd is None:
        return
    try:
        os.unlink(pid_file)
    except FileNotFoundError:
        pass
    os.close(_pid_fd)  # releases the lock
    _pid_fd = None


# --- foreground run ---------------------------------------------------------------------------

class Runner:
    """`fileconveyor run`: the main thread waits on flags set by signal handlers and crashes."""

    def __init__(self, config_path: str, config: Config, reopen_logs: Callable[[], None],
                 ready: Callable[[str | None], None] = lambda error: None) -> None:
        self.config_path = config_path
        self.config = config
        self.reopen_logs = reopen_logs
        self.ready = ready
        self.stop_requested = threading.Event()
        self.wake = threading.Event()
        #: Restarts in a row that failed, or crashed within STABLE_UPTIME; each doubles the wait (up
        #: to MAX_RESTART_WAIT), so a daemon that cannot run does not spin (the original retried
        #: every 10 s forever).
        self.failed_restarts = 0

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        log.warning("Received %s: stopping", signal.Signals(signum).name)
        self.stop_requested.set()
        self.wake.set()

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.reopen_logs()
        log.info("Log file reopened (SIGHUP)")

    def run(self) -> int:
        from fileconveyor.arbitrator import Arbitrator  # imports backends; keep `--help` fast

        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        pid_file = self.config.settings.PID_FILE
        try:
            write_pid_file(pid_file)
        except DaemonError as error:
            self.ready(str(error))
            raise
        restarted = False
        try:
            while not self.stop_requested.is_set():
                arbitrator = Arbitrator(self.config, on_crash=lambda _error: self.wake.set())
                log.warning("File Conveyor %s (PID %d, config %s)",
                            "has restarted itself" if restarted else "is starting", os.getpid(), self.config_path)
                try:
                    arbitrator.start()
                except Exception as error:
                    arbitrator.stop(timeout=5)
                    if restarted:
                        self.failed_restarts += 1
                        log.critical("Restart failed (%d in a row): %s", self.failed_restarts, error, exc_info=True)
                        if self._wait_for_restart():
                            continue
                        return 1
                    self.ready(f"{type(error).__name__}: {error}")
                    raise
                self.ready(None)
                self.ready = lambda error: None
                started_at = time.monotonic()
                while not self.stop_requested.is_set() and not arbitrator.crashed.is_set():
                    self.wake.wait(60)
                    self.wake.clear()
                arbitrator.stop()
                if self.stop_requested.is_set():
                    break
                log.critical("File Conveyor stopped after an unexpected error: %s", arbitrator.crash_error)
                if time.monotonic() - started_at < STABLE_UPTIME:
                    self.failed_restarts += 1  # crashing again soon after a start: back off
                else:
                    self.failed_restarts = 0
                if not self._wait_for_restart():
                    return 1
                restarted = True
        finally:
            remove_pid_file(pid_file)
        log.warning("File Conveyor stopped")
        return 0

    def _wait_for_restart(self) -> bool:
        """Wait RESTART_INTERVAL and reload the config; False when the daemon should exit instead."""
        settings = self.config.settings
        if not settings.RESTART_AFTER_UNHANDLED_EXCEPTION:
            return False
        wait = min(settings.RESTART_INTERVAL * (2 ** min(self.failed_restarts, 20)),
                   max(settings.RESTART_INTERVAL, MAX_RESTART_WAIT))
        log.warning("Restarting in %.1f s (RESTART_AFTER_UNHANDLED_EXCEPTION)", wait)
        if self.stop_requested.wait(wait):
            return False
        try:
            self.config = load_config(self.config_path)
        except Exception as error:  # noqa: BLE001 - keep the last good config
            log.error("The config no longer loads (%s); restarting with the previous one", error)
        return True


# --- start / stop -------------------------------------------------------------------------------

READY_TIMEOUT = 120.0
MAX_RESTART_WAIT = 300.0
#: A run this long (seconds) without a crash resets the restart backoff.
STABLE_UPTIME = 60.0


def read_readiness(read_end: int, timeout: float) -> str:
    """What `fileconveyor run --ready-fd` wrote ("ready" or "error: ..."), or '' if it exited or
    said nothing within `timeout`. Closes `read_end`."""
    message = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not message.endswith(b"\n"):
            readable, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            chunk = os.read(read_end, 4096)
            if not chunk:
                break
            message += chunk
    finally:
        os.close(read_end)
    return message.decode("utf-8", "replace").strip()


def start_detached(config_path: str, pid_file: str, log_file: str) -> int:
    """Start `fileconveyor run` in the background; return its PID once it reports that it is up."""
    holder = running_pid(pid_file)
    if holder is not None:
        raise DaemonError(f"File Conveyor is already running with PID {holder} (PID file {pid_file})")
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "fileconveyor", "run", "--config", config_path, "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(write_end,), start_new_session=True, close_fds=True)
    finally:
        os.close(write_end)
    text = read_readiness(read_end, READY_TIMEOUT)
    if text == "ready":
        return child.pid
    if not text:
        status = child.poll()
        if status is None:
            child.terminate()
            text = f"it did not report readiness within {READY_TIMEOUT:.0f} s"
        else:
            text = f"it exited with status {status}"
        text += f"; see the log file {log_file or '(none configured)'}"
    raise DaemonError(f"File Conveyor did not start: {text}")


def stop_daemon(pid_file: str, timeout: float) -> int | None:
    """SIGTERM the daemon named by the PID file and wait for it to exit. Returns its PID, or None
    when no daemon was running."""
    pid = running_pid(pid_file)
    if pid is None:
        return None
    if pid <= 0:
        raise DaemonError(f"{pid_file} is locked by a running File Conveyor but holds no valid PID; "
                          "find the process with `fuser` and stop it with SIGTERM")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError as error:
            if error.errno != errno.EPERM:
                raise
        # A child of ours (tests) stays a zombie until reaped.
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return pid
        except ChildProcessError:
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise DaemonError(f"File Conveyor (PID {pid}) did not stop within {timeout:.0f} s; "
                      f"it may still be finishing a transfer. `kill -KILL {pid}` forces it (nothing is lost)")
