"""Operating the daemon (issue 10): systemd notifications, reload, prompt hand-offs, logging.

Everything runs against the real thing: a real daemon process, a real AF_UNIX datagram socket
standing in for systemd's NOTIFY_SOCKET, real inotify watching the destination to count uploads.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from fileconveyor import cli
from fileconveyor.config import load_config
from fileconveyor.systemd import Notifier
from tests.e2e.harness import REPO, Daemon, counts, query, wait_for, wait_in_sync, write_config

COPY = ("tests.e2e.processors.Copy",)
#: The code under test; another checkout's to show that a test fails without the fix (as in
#: tests/e2e/test_original_issues.py).
CODE_DIR = os.environ.get("FC_TEST_CODE_DIR", REPO)


def write(path: str, data: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(data)


def fileconveyor(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=CODE_DIR + os.pathsep + REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fileconveyor", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def log_text(setup) -> str:
    with open(setup.log_file, encoding="utf-8", errors="replace") as handle:
        return handle.read()


# --- a systemd stand-in: the NOTIFY_SOCKET datagram socket -------------------------------------

class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects every message."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[dict[str, str]] = []

    def drain(self, timeout: float) -> None:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        while readable:
            data = self.sock.recv(65536).decode()
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
            readable, _, _ = select.select([self.sock], [], [], 0)

    def wait_for(self, predicate, what: str, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} within {timeout:.0f} s; got {self.messages}")
            self.drain(min(remaining, 0.5))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_status_watchdog_stopping(tmp_path, abstract):
    """Type=notify: READY=1 only once the daemon is up (it has a PID file and answers), STATUS=
    with the backlog, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    setup = write_config(tmp_path)
    name = f"fc-test-{os.getpid()}-{id(tmp_path)}"
    address = "\0" + name if abstract else str(tmp_path / "notify.sock")
    listener = NotifySocket(address)
    env = {"NOTIFY_SOCKET": "@" + name if abstract else address, "WATCHDOG_USEC": "400000"}
    try:
        for i in range(5):
            write(os.path.join(setup.source, f"f{i}.txt"), f"{i}")
        with Daemon(setup, CODE_DIR, env=env) as daemon:
            ready = listener.wait_for(lambda m: m.get("READY") == "1", "READY=1")
            assert ready["MAINPID"] == str(daemon.pid)
            assert os.path.exists(setup.pid_file)
            wait_in_sync(setup, daemon)
            listener.wait_for(lambda m: m.get("STATUS", "").startswith("idle: everything synced"), "idle STATUS=")
            first = len([m for m in listener.messages if m.get("WATCHDOG") == "1"])
            listener.wait_for(lambda m: len([x for x in listener.messages if x.get("WATCHDOG") == "1"]) >= first + 3,
                              "three more WATCHDOG=1 (every 0.2 s)", timeout=15)
            assert daemon.terminate() == 0
        listener.drain(0.2)
        stopping = [i for i, m in enumerate(listener.messages) if m.get("STOPPING") == "1"]
        ready_at = next(i for i, m in enumerate(listener.messages) if m.get("READY") == "1")
        assert stopping and stopping[0] > ready_at
    finally:
        listener.close()


def test_notifier_is_silent_without_systemd_and_survives_a_vanished_socket(tmp_path):
    assert not Notifier({}).send(ready=1)
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert gone.enabled and not gone.ready("up")  # logged once, never raised


# --- logging under systemd ----------------------------------------------------------------------

def test_under_systemd_the_log_goes_to_stderr_unless_a_file_is_configured(tmp_path, monkeypatch):
    # A config that does not set LOG_FILE (the default names a file beside config.xml).
    setup = write_config(tmp_path / "b")
    xml = open(setup.config, encoding="utf-8").read().replace("<LOG_FILE>fileconveyor.log</LOG_FILE>", "")
    write(setup.config, xml)
    config = load_config(setup.config)
    assert "LOG_FILE" not in config.settings.explicit and config.settings.LOG_FILE
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
        cli.setup_logging(config.settings, console=True)
        assert not [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        streams = [h for h in root.handlers if type(h) is logging.StreamHandler]
        assert streams and streams[0].level == config.settings.FILE_LOGGER_LEVEL  # INFO lines reach the journal
        explicit = write_config(tmp_path / "c")  # sets LOG_FILE: the file is kept
        cli.setup_logging(load_config(explicit.config).settings, console=True)
        assert [h for h in root.handlers if isinstance(h, logging.FileHandler)]
        monkeypatch.delenv("INVOCATION_ID")
        cli.setup_logging(config.settings, console=True)
        assert [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def test_a_log_file_moved_by_logrotate_is_reopened_without_a_signal(tmp_path):
    """The one rotation scheme: external (logrotate), noticed by the daemon itself; 0600 kept."""
    setup = write_config(tmp_path)
    with Daemon(setup, CODE_DIR) as daemon:
        os.rename(setup.log_file, setup.log_file + ".1")
        write(os.path.join(setup.source, "after-rotation.txt"), "x")
        wait_for(lambda: os.path.exists(setup.log_file) and "after-rotation.txt" in log_text(setup),
                 what="new lines in a new log file")
        assert os.stat(setup.log_file).st_mode & 0o777 == 0o600
        assert daemon.terminate() == 0


# --- counting uploads at the destination with real inotify ---------------------------------------

IN_CLOSE_WRITE, IN_MOVED_TO = 0x8, 0x80


class DestinationWatch:
    """Counts every file that lands in a directory (created and closed, or moved in) by name."""

    def __init__(self, directory: str) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, directory.encode(), IN_CLOSE_WRITE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.landed: dict[str, int] = {}

    def read(self) -> None:
        for _round in range(10_000):
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                assert not mask & 0x4000, "inotify queue overflow: counts are incomplete"
                if name and ".fctmp-" not in name:
                    self.landed[name] = self.landed.get(name, 0) + 1

    def close(self) -> None:
        os.close(self.fd)


def test_reload_under_load_good_and_bad_config_nothing_lost_nothing_sent_twice(tmp_path):
    """SIGHUP with a bad config mid-burst is refused (errors logged, old config kept, same process);
    `fileconveyor reload` with a good one mid-burst takes effect (new URL for what is synced after)
    without losing a file or sending one twice (every upload counted at the destination)."""
    settings = {"MAX_FILES_IN_PIPELINE": "8", "SHUTDOWN_TIMEOUT": "30"}
    setup = write_config(tmp_path, processors=COPY, settings=settings, url="http://old.example.test/")
    good_xml = open(setup.config, encoding="utf-8").read().replace("http://old.example.test/",
                                                                   "http://new.example.test/")
    watch = DestinationWatch(setup.dest)
    try:
        with Daemon(setup, CODE_DIR) as daemon:
            for i in range(400):
                write(os.path.join(setup.source, f"burst-{i:03}.txt"), f"file {i} " * 50)
            wait_for(lambda: counts(setup)["pipeline_list"] > 0 and 20 <= len(query(
                setup.db("synced_files.db"), "SELECT 1 FROM synced_files")) < 300, what="a burst in flight")
            good = open(setup.config, encoding="utf-8").read()
            write(setup.config, good.replace('server="local"', 'server="nowhere"'))
            refused = fileconveyor("reload", "--config", setup.config)
            assert refused.returncode == 2 and "nowhere" in refused.stderr and "Traceback" not in refused.stderr
            daemon.process.send_signal(signal.SIGHUP)  # the daemon must refuse it too
            wait_for(lambda: "Reload refused" in log_text(setup), what="the refusal in the log")
            assert "nowhere" in log_text(setup)
            in_flight_at_reload = counts(setup)["pipeline_list"]
            write(setup.config, good_xml)
            reloaded = fileconveyor("reload", "--config", setup.config)
            assert reloaded.returncode == 0, reloaded.stderr
            wait_for(lambda: "has reloaded its config" in log_text(setup), what="the new config in effect")
            assert daemon.process.poll() is None
            wait_in_sync(setup, daemon, timeout=120)
            write(os.path.join(setup.source, "after.txt"), "after")
            wait_for(lambda: query(setup.db("synced_files.db"),
                                   "SELECT url FROM synced_files WHERE input_file LIKE '%after.txt'"),
                     what="after.txt synced")
            url = query(setup.db("synced_files.db"), "SELECT url FROM synced_files WHERE input_file LIKE '%after.txt'")
            assert url[0][0].startswith("http://new.example.test/")
            watch.read()
            assert daemon.terminate() == 0
        expected = {f"burst-{i:03}.txt" for i in range(400)} | {"after.txt"}
        assert set(watch.landed) == expected
        twice = {name: n for name, n in watch.landed.items() if n != 1}
        assert not twice, f"sent more than once: {twice} ({in_flight_at_reload} in flight at the reload)"
        assert log_text(setup).count("Received SIGHUP") == 2
    finally:
        watch.close()


def test_reload_without_a_daemon_says_so(tmp_path):
    setup = write_config(tmp_path)
    result = fileconveyor("reload", "--config", setup.config)
    assert result.returncode == 1 and "not running" in result.stderr


def test_reload_refuses_a_change_that_needs_a_restart(tmp_path):
    setup = write_config(tmp_path)
    with Daemon(setup, CODE_DIR) as daemon:
        xml = open(setup.config, encoding="utf-8").read()
        write(setup.config, xml.replace("<PERSISTENT_DATA_DB>persistent_data.db", "<PERSISTENT_DATA_DB>other.db"))
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "only a restart can change" in log_text(setup), what="the refusal")
        assert "PERSISTENT_DATA_DB" in log_text(setup) and daemon.process.poll() is None
        assert not os.path.exists(setup.db("other.db"))
        assert daemon.terminate() == 0


# --- prompt hand-offs ---------------------------------------------------------------------------

def test_verify_requeue_wakes_the_daemon(tmp_path):
    """`verify --requeue` queues from another process and sends SIGUSR1: the daemon re-uploads at
    once, not at its next 30 s look at the queue."""
    setup = write_config(tmp_path, processors=COPY)
    write(os.path.join(setup.source, "a.txt"), "a")
    with Daemon(setup, CODE_DIR) as daemon:
        wait_in_sync(setup, daemon)
        os.remove(os.path.join(setup.dest, "a.txt"))
        result = fileconveyor("verify", "--requeue", "--config", setup.config)
        assert result.returncode == 1 and "Queued 1 file(s) again" in result.stdout, result.stdout + result.stderr
        queued_at = time.monotonic()
        wait_for(lambda: os.path.exists(os.path.join(setup.dest, "a.txt")), timeout=25, what="a.txt again")
        took = time.monotonic() - queued_at
        assert took < 5, f"the daemon took {took:.1f} s to start on the requeued file"
        assert "Woken (SIGUSR1)" in log_text(setup)
        assert daemon.terminate() == 0
