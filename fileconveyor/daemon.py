"""Running as a daemon: the PID file, signals, the restart loop, detaching and stopping.

* SIGTERM and SIGINT stop for good (the original treated SIGTERM as a crash and restarted 10 s
  later). Handlers only set flags; the main thread does the work.
* SIGHUP (`fileconveyor reload`) reopens the log file and reloads config.xml, the way nginx does:
  a config that does not load is refused with its errors logged, and the daemon goes on with the
  old one; a good one replaces the arbitrator in this process. Arbitrator.stop() lets running
  transfers finish and leaves the rest in pipeline_list, which the new arbitrator recovers (the
  self-restart path below does the same), so nothing queued or in flight is lost or sent twice.
* SIGUSR1 wakes the dispatcher: `verify --requeue` and `reconcile` queue rows from another process
  and ask the daemon to take them now rather than at its next 30 s look.
* Under systemd (Type=notify) the main thread reports READY=1 once the arbitrator is up, the
  backlog in STATUS=, RELOADING=1, STOPPING=1 and WATCHDOG=1 (fileconveyor/systemd.py).
* An unexpected exception that escapes any thread's loop stops the arbitrator; with
  RESTART_AFTER_UNHANDLED_EXCEPTION the daemon reloads its config and starts again after
  RESTART_INTERVAL, otherwise it exits non-zero.
* `start` runs `fileconveyor run` in a new session and waits on a pipe for the child to say it is
  up (or why it is not), so its exit status tells the truth.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from typing import Callable

from fileconveyor.config import Config, ConfigError, load_config
from fileconveyor.localfile import ensure_private_directory
from fileconveyor.settings import Settings
from fileconveyor.systemd import Notifier
from fileconveyor.pipeline.db import DatabaseDamaged

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
        fd = os.open(pid_file, os.O_RDONLY | os.O_CLOEXEC)
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
#: Attempts at locking a PID file that another process unlinks at the same time.
_LOCK_ATTEMPTS = 10


def _lock_pid_file(pid_file: str) -> int | None:
    """An open descriptor of `pid_file` holding its exclusive lock, or None when a live process
    holds it. The lock must be on the file the path names now: a daemon that is exiting unlinks
    its PID file while still holding the lock, and a lock taken on that unlinked file would let
    two daemons run, each "holding" a different PID file."""
    for _attempt in range(_LOCK_ATTEMPTS):
        fd = os.open(pid_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            named = os.stat(pid_file, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        opened = os.fstat(fd)
        if named is not None and (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
            return fd
        os.close(fd)  # unlinked (or replaced) meanwhile: lock what the path names now
    raise DaemonError(f"the PID file {pid_file} keeps being replaced by another process; "
                      "is another File Conveyor starting and stopping with this config?")


def write_pid_file(pid_file: str) -> None:
    """Create or take over `pid_file` (mode 0600), lock it for the life of this process, write our PID."""
    global _pid_fd
    os.makedirs(os.path.dirname(os.path.abspath(pid_file)), exist_ok=True)
    fd = _lock_pid_file(pid_file)
    if fd is None:
        holder = read_pid(pid_file)
        raise DaemonError(f"File Conveyor is already running with PID {holder} (PID file {pid_file}); "
                          "stop it first with `fileconveyor stop`")
    if os.fstat(fd).st_size:
        log.warning("Replacing stale PID file %s", pid_file)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    os.fsync(fd)
    _pid_fd = fd


def remove_pid_file(pid_file: str) -> None:
    """Unlink our PID file, then release its lock. The caller exits right after: the PID file
    must never be gone while this process still lives (a second daemon could start beside it)."""
    global _pid_fd
    if _pid_fd is None:
        return
    try:
        os.unlink(pid_file)
    except FileNotFoundError:
        pass
    os.close(_pid_fd)  # releases the lock
    _pid_fd = None


def remove_stale_pid_file(pid_file: str) -> bool:
    """Remove `pid_file` if no live process holds its lock (a daemon killed with SIGKILL could
    not remove it). True when it was removed."""
    try:
        fd = _lock_pid_file(pid_file) if os.path.lexists(pid_file) else None
    except (OSError, DaemonError):
        return False
    if fd is None:
        return False
    try:
        os.unlink(pid_file)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# --- the PID file of older versions ------------------------------------------------------------

#: The default PID file before this version (the original's too), expanded for whoever ran the
#: command: root's init script and the web server user saw different files (#26, #152).
LEGACY_PID_FILE = "~/.fileconveyor.pid"


def legacy_daemon_pid(pid_file: str) -> int | None:
    """The PID of a live File Conveyor named by the PID file `pid_file` of an older version, or
    None. Earlier builds of this version lock it (that is proof); the original did not, so its PID
    counts only if that process runs the original's `arbitrator.py` (PIDs are reused)."""
    locked = running_pid(pid_file)
    if locked is not None:
        return locked if locked > 0 else None
    pid = read_pid(pid_file)
    if pid is None or pid == os.getpid() or not is_alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return pid  # no /proc: trust the file
    return pid if b"arbitrator.py" in command else None


def legacy_pid_file_note(settings: Settings | types.SimpleNamespace) -> str | None:
    """What a user upgrading from an older version must know about `~/.fileconveyor.pid`, when
    that file exists and this config does not set PID_FILE; None otherwise."""
    legacy = os.path.expanduser(LEGACY_PID_FILE)
    if "PID_FILE" in settings.explicit or not os.path.lexists(legacy):
        return None
    pid = legacy_daemon_pid(legacy)
    moved = (f"the default PID file moved from {LEGACY_PID_FILE} to the directory of the state "
             f"databases ({settings.PID_FILE}), so that every user finds the same one")
    if pid is not None:
        return (f"{legacy} names a File Conveyor that is still running (PID {pid}), probably started "
                f"by an older version: {moved}. This command cannot see or stop that daemon: stop it "
                f"with `kill -TERM {pid}` before starting this version (or set PID_FILE in config.xml)")
    return f"{legacy} is no longer used ({moved}); remove it"


def refuse_beside_legacy_daemon(settings: Settings | types.SimpleNamespace) -> None:
    """Refuse to start while a daemon started by an older version (PID file at the old default)
    runs: two daemons would work on the same state."""
    if "PID_FILE" in settings.explicit:
        return
    legacy = os.path.expanduser(LEGACY_PID_FILE)
    if os.path.lexists(legacy) and legacy_daemon_pid(legacy) is not None:
        raise DaemonError(str(legacy_pid_file_note(settings)))


# --- foreground run ---------------------------------------------------------------------------

#: Seconds that threads still busy after the arbitrator stopped (a processor in a long tool run,
#: a thread blocked in a system call) get before the process exits without them.
STRAGGLER_GRACE = 5.0


def check_working_dir(working_dir: str) -> None:
    """Create WORKING_DIR (0700) or refuse one that another user could write in."""
    try:
        ensure_private_directory(working_dir, "WORKING_DIR")
    except OSError as error:
        raise DaemonError(str(error)) from None


def _threads_that_block_exit() -> list[threading.Thread]:
    """The threads that the interpreter waits for at exit: non-daemon threads, and the workers of
    every ThreadPoolExecutor (joined by an exit hook of concurrent.futures, daemon or not)."""
    import concurrent.futures.thread as executor_threads

    workers = set(getattr(executor_threads, "_threads_queues", {}).keys())
    return [t for t in threading.enumerate()
            if t is not threading.current_thread() and (not t.daemon or t in workers)]


def _wait_for_threads(timeout: float) -> list[threading.Thread]:
    """Join every thread that would keep the process alive, within `timeout` seconds in all;
    those still alive."""
    deadline = time.monotonic() + timeout
    others = _threads_that_block_exit()
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in others if t.is_alive()]


def _where(thread: threading.Thread) -> str:
    """`name (in function at file:line)`: where a thread that does not stop is stuck."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return thread.name
    summary = traceback.extract_stack(frame)[-1]
    return f"{thread.name} (in {summary.name} at {summary.filename}:{summary.lineno})"


#: Settings a reload cannot change: the daemon's own files. Changing them needs a restart (a new
#: PID file would leave `stop` unable to find this process; new state databases would orphan the
#: queue of the old ones).
RESTART_ONLY_SETTINGS = ("PID_FILE", "PERSISTENT_DATA_DB", "SYNCED_FILES_DB", "FSMONITOR_DB",
                         "WORKING_DIR", "LOG_FILE", "FILE_LOGGER_LEVEL", "CONSOLE_LOGGER_LEVEL")
#: Seconds between STATUS= updates to systemd when no watchdog asks for more often.
NOTIFY_STATUS_INTERVAL = 10.0


class Runner:
    """`fileconveyor run`: the main thread waits on flags set by signal handlers and crashes."""

    def __init__(self, config_path: str, config: Config, reopen_logs: Callable[[], None],
                 ready: Callable[[str | None], None] = lambda error: None,
                 notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.reopen_logs = reopen_logs
        self.ready = ready
        self.notifier = notifier if notifier is not None else Notifier()
        self.stop_requested = threading.Event()
        self.stop_signal = ""
        self.reload_requested = threading.Event()
        self.poke_requested = threading.Event()
        self.wake = threading.Event()
        #: Restarts in a row that failed, or crashed within STABLE_UPTIME; each doubles the wait (up
        #: to MAX_RESTART_WAIT), so a daemon that cannot run does not spin (the original retried
        #: every 10 s forever).
        self.failed_restarts = 0

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        self.stop_signal = signal.Signals(signum).name  # logged by the main thread (no I/O here)
        self.stop_requested.set()
        self.wake.set()

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.reload_requested.set()
        self.wake.set()

    def _on_usr1(self, _signum: int, _frame: object) -> None:
        self.poke_requested.set()
        self.wake.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        pid_file = self.config.settings.PID_FILE
        try:
            check_working_dir(self.config.settings.WORKING_DIR)
            refuse_beside_legacy_daemon(self.config.settings)
            write_pid_file(pid_file)
        except DaemonError as error:
            self.ready(str(error))
            raise
        status, stopped = 1, False
        try:
            status = self._loop()
            stopped = True
        finally:
            self.notifier.stopping()
            # The PID file goes last, and the process goes with it: a thread that ignores the
            # stop (blocked in a system call) would keep the process alive for ever after the
            # PID file said it had stopped, and a second daemon could start beside it.
            stragglers = _wait_for_threads(STRAGGLER_GRACE)
            if stragglers:
                log.critical("%d thread(s) did not stop within %.0f s; exiting without them (work in "
                             "flight is resumed at the next start): %s", len(stragglers),
                             STRAGGLER_GRACE, "; ".join(_where(thread) for thread in stragglers))
            if stopped:
                log.warning("File Conveyor stopped")
            remove_pid_file(pid_file)
            self.notifier.close()
            if stragglers:
                logging.shutdown()
                os._exit(status)
        return status

    def _loop(self) -> int:
        """Start the arbitrator, wait for a stop, a reload or a crash, restart; the exit status."""
        from fileconveyor.arbitrator import Arbitrator  # imports backends; keep `--help` fast

        how = "is starting"
        crash: str | None = None
        while not self.stop_requested.is_set():
            arbitrator = Arbitrator(self.config, on_crash=lambda _error: self.wake.set())
            log.warning("File Conveyor %s (PID %d, config %s)", how, os.getpid(), self.config_path)
            try:
                arbitrator.start()
            except Exception as error:
                arbitrator.stop(timeout=5)
                if how != "is starting":
                    self.failed_restarts += 1
                    log.critical("Restart failed (%d in a row): %s", self.failed_restarts, error, exc_info=True)
                    if isinstance(error, DatabaseDamaged):
                        log.critical("A damaged state database is not repaired by restarting; stopping (%s)", error)
                        return 1
                    if self._wait_for_restart():
                        continue
                    return 1
                self.ready(f"{type(error).__name__}: {error}")
                raise
            self.ready(None)
            self.ready = lambda error: None
            if crash is not None:  # original #70: tell the administrators about the crash
                arbitrator.events.emit("daemon_restarted", error=crash, restarts_in_a_row=self.failed_restarts)
                crash = None
            self.notifier.ready(self._backlog(arbitrator))
            started_at = time.monotonic()
            reloaded = self._serve(arbitrator)
            if self.stop_requested.is_set():
                log.warning("Received %s: stopping", self.stop_signal or "a stop signal")
            if reloaded is None:
                self.notifier.stopping()
            else:
                self.notifier.reloading()
            arbitrator.stop()
            if self.stop_requested.is_set():
                break
            if reloaded is not None:
                self.config = reloaded
                how = "has reloaded its config"
                continue
            log.critical("File Conveyor stopped after an unexpected error: %s", arbitrator.crash_error)
            crash = f"{type(arbitrator.crash_error).__name__}: {arbitrator.crash_error}"
            if time.monotonic() - started_at < STABLE_UPTIME:
                self.failed_restarts += 1  # crashing again soon after a start: back off
            else:
                self.failed_restarts = 0
            if not self._wait_for_restart():
                return 1
            how = "has restarted itself"
        return 0

    def _serve(self, arbitrator: object) -> Config | None:
        """Run until a stop, a crash or an accepted reload; the new config for a reload, else None.
        Meanwhile: wake the dispatcher on SIGUSR1, and keep systemd informed."""
        interval = min(NOTIFY_STATUS_INTERVAL, self.notifier.watchdog_interval or NOTIFY_STATUS_INTERVAL)
        next_beat = time.monotonic() + interval
        while not self.stop_requested.is_set() and not arbitrator.crashed.is_set():  # type: ignore[attr-defined]
            self.wake.wait(max(0.0, next_beat - time.monotonic()))
            self.wake.clear()
            if self.stop_requested.is_set():
                break
            if self.poke_requested.is_set():
                self.poke_requested.clear()
                log.info("Woken (SIGUSR1): looking at the queue now")
                arbitrator.wake()  # type: ignore[attr-defined]
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reopen_logs()
                log.warning("Received SIGHUP: log file reopened; reloading %s", self.config_path)
                config = self._reload()
                if config is not None:
                    return config
            if time.monotonic() >= next_beat:
                self.notifier.watchdog()
                if self.notifier.enabled:
                    self.notifier.status(self._backlog(arbitrator))
                next_beat = time.monotonic() + interval
        return None

    def _reload(self) -> Config | None:
        """The new config if it loads, validates and changes nothing that needs a restart; None
        (with the reasons logged) to keep the running one."""
        try:
            config = load_config(self.config_path, for_daemon=True)
        except ConfigError as error:
            problems = [str(p) for p in error.problems if p.severity == "error"]
            log.error("Reload refused: %s has %d error(s); still running with the previous config:\n%s",
                      self.config_path, len(problems), "\n".join(problems))
            return None
        except Exception as error:  # noqa: BLE001 - any reason to refuse keeps the daemon up
            log.error("Reload refused: cannot load %s (%s); still running with the previous config",
                      self.config_path, error)
            return None
        old, new = self.config.settings, config.settings
        changed = [name for name in RESTART_ONLY_SETTINGS if getattr(old, name) != getattr(new, name)]
        if changed:
            log.error("Reload refused: %s changes %s, which only a restart can change (`fileconveyor stop` "
                      "then `start`); still running with the previous config", self.config_path,
                      ", ".join(changed))
            return None
        for warning in config.warnings:
            log.warning("%s", warning)
        log.warning("Config reloaded: %d source(s), %d server(s), %d rule(s); letting running transfers "
                    "finish, then going on with the new config", len(config.sources), len(config.servers),
                    len(config.rules))
        return config

    @staticmethod
    def _backlog(arbitrator: object) -> str:
        """STATUS= for systemd: the backlog, as `status` counts it."""
        try:
            counts = arbitrator.pipeline.counts()  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001 - a status line must never stop the daemon
            return f"running (backlog unknown: {error})"
        return ("syncing: {waiting} waiting, {in_flight} in flight, {failed} failed".format(**counts)
                if counts["waiting"] or counts["in_flight"] else
                "idle: everything synced" + (f", {counts['failed']} failed" if counts["failed"] else ""))

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
            config = load_config(self.config_path)
            check_working_dir(config.settings.WORKING_DIR)
            self.config = config
        except Exception as error:  # noqa: BLE001 - keep the last good config
            log.error("The config can no longer be used (%s); restarting with the previous one", error)
        return True


def signal_daemon(pid_file: str, signum: int) -> int | None:
    """Send `signum` to the daemon holding `pid_file`; its PID, or None when none is running."""
    pid = _daemon_pid(pid_file, "this command")
    return pid if pid is not None and _signal(pid, signum) else None


def _daemon_pid(pid_file: str, command: str) -> int | None:
    """The running daemon's PID, None when none runs; DaemonError (saying what to do instead of
    `command`) when the PID file cannot tell."""
    pid = running_pid(pid_file)
    if pid is None and os.path.exists(pid_file) and not os.access(pid_file, os.R_OK):
        raise DaemonError(f"this user may not read the PID file {pid_file}: it belongs to the user "
                          f"File Conveyor runs as; run {command} as that user")
    if pid is not None and pid <= 0:
        raise DaemonError(f"{pid_file} is locked by a running File Conveyor but holds no valid PID; "
                          "find the process with `fuser` and signal it yourself")
    return pid


def wake_daemon(pid_file: str) -> int | None:
    """Ask a running daemon to look at its queue now (files queued by another process); its PID,
    or None when none runs (it takes them at its next start). Never raises: the rows are queued
    whatever happens here, and the daemon also looks every 30 s."""
    try:
        return signal_daemon(pid_file, signal.SIGUSR1)
    except DaemonError as error:
        log.warning("Could not wake the running daemon (%s); it takes the queued files within 30 s", error)
        return None


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


@dataclasses.dataclass(frozen=True)
class Stopped:
    """What `stop_daemon` did: the PID it stopped, and whether SIGKILL was needed."""

    pid: int
    killed: bool = False


#: Seconds to wait for the exit after SIGKILL (the kernel needs a moment on a loaded machine).
KILL_WAIT = 10.0


def stop_daemon(pid_file: str, timeout: float, kill: bool = False) -> Stopped | None:
    """SIGTERM the daemon named by the PID file and wait up to `timeout` s for its PROCESS to exit
    (not for its PID file: the file going is no proof). Returns what was stopped, or None when no
    daemon was running. If it is still alive after `timeout`: with `kill`, SIGKILL it and remove
    its PID file; otherwise raise DaemonError saying that it is still running."""
    pid = _daemon_pid(pid_file, "`fileconveyor stop`")
    if pid is None:
        return None
    if not _signal(pid, signal.SIGTERM):
        remove_stale_pid_file(pid_file)
        return Stopped(pid)
    if _wait_for_exit(pid, timeout):
        remove_stale_pid_file(pid_file)  # normally already gone: the daemon removes it last
        return Stopped(pid)
    if not kill:
        raise DaemonError(
            f"File Conveyor is still running (PID {pid}), not stopped: it did not exit within "
            f"{timeout:.0f} s of SIGTERM (see its log for what it is doing). Run `fileconveyor stop` "
            f"again to wait longer, or `fileconveyor stop --kill` to force it (nothing is lost: work "
            f"in flight resumes at the next start)")
    log.warning("File Conveyor (PID %d) did not exit within %.0f s of SIGTERM; sending SIGKILL", pid, timeout)
    if _signal(pid, signal.SIGKILL) and not _wait_for_exit(pid, KILL_WAIT):
        raise DaemonError(f"File Conveyor is still running (PID {pid}), not stopped, even after SIGKILL "
                          f"(a process stuck in the kernel, state D?); check `ps -o stat,wchan -p {pid}`")
    remove_stale_pid_file(pid_file)
    return Stopped(pid, killed=True)


def _signal(pid: int, signum: int) -> bool:
    """Send `signum`; False when the process is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise DaemonError(f"not allowed to signal File Conveyor (PID {pid}): it runs as another user; "
                          "run `fileconveyor stop` as that user (or as root)") from None
    return True


def is_alive(pid: int) -> bool:
    """Does process `pid` exist and has not exited? A zombie (exited, not yet reaped by its
    parent) has exited."""
    try:
        # A child of ours (tests, or `start` right after forking) stays a zombie until reaped.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            fields = dict(line.split(b":", 1) for line in handle.read().splitlines() if b":" in line)
    except OSError:
        return True  # no /proc (macOS): os.kill said it exists
    # The main thread of a process whose other threads are still exiting (still holding its
    # files, the PID file's lock among them) is a zombie too: only a lone zombie has exited.
    state, threads = fields.get(b"State", b"").strip()[:1], fields.get(b"Threads", b"1").strip()
    return state not in (b"Z", b"X") or threads not in (b"0", b"1")


def _wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for `pid` to exit; True when it did."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.25)
    return True
