"""End-to-end helpers: a real daemon process on real trees, real inotify, real SQLite files.

Waiting is done on observable conditions (files at the destination, rows in the databases) with a
bounded deadline, never with fixed sleeps.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Callable
from xml.sax.saxutils import escape, quoteattr

from fileconveyor.daemon import read_readiness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


@dataclasses.dataclass
class Setup:
    root: str
    source: str
    dest: str
    state: str
    config: str

    @property
    def pid_file(self) -> str:
        return os.path.join(self.state, "fileconveyor.pid")

    @property
    def log_file(self) -> str:
        return os.path.join(self.state, "fileconveyor.log")

    def db(self, name: str) -> str:
        return os.path.join(self.state, name)


def write_config(tmp_path, processors: tuple[str, ...] = (), settings: dict[str, str] | None = None,
                 rule_extra: str = "", filter_xml: str = "", deletion_delay: str | None = None,
                 url: str = "http://cdn.example.test/static/") -> Setup:
    root = str(tmp_path)
    source = os.path.join(root, "source")
    dest = os.path.join(root, "dest")
    state = os.path.join(root, "state")
    for d in (source, dest, state):
        os.makedirs(d, exist_ok=True)
    all_settings = {"PID_FILE": "fileconveyor.pid", "LOG_FILE": "fileconveyor.log",
                    "PERSISTENT_DATA_DB": "persistent_data.db", "SYNCED_FILES_DB": "synced_files.db",
                    "FSMONITOR_DB": "fsmonitor.db", "WORKING_DIR": os.path.join(state, "work"),
                    "FILE_LOGGER_LEVEL": "DEBUG", "RETRY_INTERVAL": "0.5", "RETRY_MAX_INTERVAL": "2",
                    "RESTART_INTERVAL": "0.5", "MAX_SIMULTANEOUS_PROCESSORCHAINS": "2"}
    all_settings.update(settings or {})
    settings_xml = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in all_settings.items())
    chain = "".join(f"<processor name={quoteattr(p)}/>" for p in processors)
    delay = f" fileDeletionDelayAfterSync={quoteattr(deletion_delay)}" if deletion_delay is not None else ""
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<config>
  <settings>{settings_xml}</settings>
  <sources ignoredDirs=".git:CVS">
    <source name="site" scanPath={quoteattr(source)} />
  </sources>
  <servers>
    <server name="local" transporter="symlink_or_copy" maxConnections="4">
      <location>{escape(dest)}</location>
      <url>{escape(url)}</url>
    </server>
  </servers>
  <rules>
    <rule for="site" label="everything"{delay}>
      {filter_xml}
      {"<processorChain>" + chain + "</processorChain>" if chain else ""}
      <destinations><destination server="local" /></destinations>
      {rule_extra}
    </rule>
  </rules>
</config>
"""
    config = os.path.join(state, "config.xml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(xml)
    return Setup(root, source, dest, state, config)


class Daemon:
    """`fileconveyor run` as a child process; `start()` returns once it reports readiness."""

    def __init__(self, setup: Setup, code_dir: str = REPO, env: dict[str, str] | None = None) -> None:
        self.setup = setup
        #: Extra environment variables for the daemon (NOTIFY_SOCKET, WATCHDOG_USEC, ...).
        self.env = env or {}
        #: The directory whose `fileconveyor` package runs (the torture suite can run a snapshot).
        self.code_dir = code_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> "Daemon":
        read_end, write_end = os.pipe()
        env = dict(os.environ, PYTHONPATH=self.code_dir + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   **self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fileconveyor", "run", "--config", self.setup.config,
             "--ready-fd", str(write_end)],
            pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.setup.state, "stderr.txt"), "ab"), env=env, cwd=self.setup.root)
        os.close(write_end)
        message = read_readiness(read_end, timeout)
        if message != "ready":
            self.kill()
            holder_lines: list[str] = []
            if shutil.which("fuser"):
                holders = subprocess.run(["fuser", "-v", self.setup.pid_file], capture_output=True, text=True)
                holder_lines = [line for line in (holders.stderr + holders.stdout).splitlines()
                                if "Cannot stat" not in line]
            raise AssertionError(f"daemon did not start: {message!r}; PID file holders: {holder_lines}; "
                                 f"log:\n{self.log_tail()}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            with open(self.setup.log_file, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                self.kill()


def tree(root: str) -> dict[str, bytes]:
    """Relative path -> content of every file below `root` (following symlinks to files)."""
    result: dict[str, bytes] = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in (".git", "CVS")]
        for name in files:
            if ".fctmp-" in name:
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    result[os.path.relpath(path, root)] = handle.read()
            except FileNotFoundError:
                continue
    return result


def digest(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


def query(db_path: str, sql: str) -> list[tuple]:
    if not os.path.exists(db_path):
        return []
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def counts(setup: Setup) -> dict[str, int]:
    db = setup.db("persistent_data.db")
    return {t: (query(db, f"SELECT COUNT(*) FROM {t}") or [(0,)])[0][0]
            for t in ("pipeline_queue", "pipeline_list", "failed_files_list")}


def synced_inputs(setup: Setup) -> set[str]:
    return {r[0] for r in query(setup.db("synced_files.db"), "SELECT input_file FROM synced_files")}


def in_sync(setup: Setup) -> bool:
    """Destination equals source, synced_files lists exactly the source files, queues empty."""
    source = digest(tree(setup.source))
    if digest(tree(setup.dest)) != source:
        return False
    expected = {os.path.join(setup.source, p) for p in source}
    if synced_inputs(setup) != expected:
        return False
    return all(v == 0 for v in counts(setup).values())


def describe_difference(setup: Setup) -> str:
    source, dest = digest(tree(setup.source)), digest(tree(setup.dest))
    missing = sorted(set(source) - set(dest))[:10]
    extra = sorted(set(dest) - set(source))[:10]
    differ = sorted(p for p in set(source) & set(dest) if source[p] != dest[p])[:10]
    rows = synced_inputs(setup)
    expected = {os.path.join(setup.source, p) for p in source}
    return (f"missing at destination: {missing}\nextra at destination: {extra}\ndiffering: {differ}\n"
            f"rows not in source: {sorted(rows - expected)[:10]}\nsource files without row: "
            f"{sorted(expected - rows)[:10]}\ncounts: {counts(setup)}")


def wait_in_sync(setup: Setup, daemon: Daemon | None = None, timeout: float = 60.0) -> None:
    try:
        wait_for(lambda: in_sync(setup), timeout, "destination == source")
    except AssertionError as error:
        tail = daemon.log_tail() if daemon is not None else ""
        raise AssertionError(f"{error}\n{describe_difference(setup)}\nlog tail:\n{tail}") from None
