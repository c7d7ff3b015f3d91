"""Helpers of bench/bench_core.py: trees, configs, the daemon as a subprocess, /proc figures.

The daemon runs exactly as a user runs it (`python -m fileconveyor run --config F`), with the
readiness pipe, config writer and process wrapper of the end-to-end tests (tests/e2e/harness.py). Its state is read from outside only: SQLite files
opened read-only (`mode=ro`), its log file, and /proc/PID/{stat,status}. Every wait is bounded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from typing import Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.e2e import harness  # noqa: E402
from tests.e2e.harness import Setup  # noqa: E402

COPY_PROCESSOR = "tests.e2e.processors.Copy"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A phase could not be measured (daemon did not start, deadline passed); says why."""


# --- trees ------------------------------------------------------------------------------------

def build_tree(root: str, files: int, per_dir: int = 100, min_size: int = 512, max_size: int = 4096,
               prefix: str = "f", seed: int = 2) -> int:
    """`files` files of min_size..max_size random bytes, `per_dir` per directory, two levels
    deep (d00/d0000/f000000.bin). Returns the total number of bytes written."""
    rng = random.Random(seed)
    total = 0
    for i in range(files):
        directory = os.path.join(root, f"d{i // per_dir // 100:02d}", f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(directory, exist_ok=True)
        size = rng.randint(min_size, max_size)
        with open(os.path.join(directory, f"{prefix}{i:06d}.bin"), "wb") as handle:
            handle.write(rng.randbytes(size))
        total += size
    return total


def warm_read(root: str) -> int:
    """Read every file below `root` once (page cache warm for every contender); returns the count."""
    count = 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass
            count += 1
    return count


def count_files(root: str) -> int:
    return sum(len(names) for _d, _s, names in os.walk(root))


@contextlib.contextmanager
def borrowed_tree(tree: str, setup: Setup) -> Iterator[None]:
    """Lend the prepared `tree` to a run as its source directory (a rename each way, so every
    variant syncs the same files without rebuilding them)."""
    os.rmdir(setup.source)
    os.rename(tree, setup.source)
    try:
        yield
    finally:
        os.rename(setup.source, tree)
        os.mkdir(setup.source)


# --- config -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Variant:
    """One daemon configuration under test (the server's maxConnections is the harness's 4)."""

    label: str
    copy: bool  # True: the rule's chain runs tests.e2e.processors.Copy, so files are copied
    max_files_in_pipeline: int = 50
    processor_chains: int = 1
    log_level: str = "INFO"


def configure(root: str, variant: Variant) -> Setup:
    """The end-to-end tests' layout and config (root/source, root/dest, root/state/config.xml,
    log file in the state directory), with the benchmark's settings."""
    settings = {"FILE_LOGGER_LEVEL": variant.log_level,
                "MAX_FILES_IN_PIPELINE": str(variant.max_files_in_pipeline),
                "MAX_SIMULTANEOUS_PROCESSORCHAINS": str(variant.processor_chains)}
    return harness.write_config(root, processors=(COPY_PROCESSOR,) if variant.copy else (), settings=settings)


# --- /proc --------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of `pid`, in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


# --- state, read from outside -------------------------------------------------------------------

def count_rows(db_path: str, table: str) -> int | None:
    """COUNT(*) of `table`, read-only; None while the file or table does not exist yet (or is locked)."""
    if not os.path.exists(db_path):
        return None
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return None
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()


def synced_and_empty(setup: Setup, expected: int) -> bool:
    """synced_files.db has `expected` rows and nothing is waiting or in flight."""
    if count_rows(setup.db("synced_files.db"), "synced_files") != expected:
        return False
    persistent = setup.db("persistent_data.db")
    return (count_rows(persistent, "pipeline_queue") == 0
            and count_rows(persistent, "pipeline_list") == 0)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05,
             alive: Callable[[], bool] = lambda: True) -> float:
    """Poll `predicate` every `interval` s until true; returns time.monotonic() when it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if not alive():
            raise BenchError(f"the daemon exited while waiting for {what}")
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- the daemon ---------------------------------------------------------------------------------

class Daemon(harness.Daemon):
    """The tests' daemon process, plus when it was spawned and when it said "ready"."""

    started_at = 0.0
    ready_at = 0.0

    def start(self, timeout: float = 120.0) -> "Daemon":
        self.started_at = time.monotonic()
        try:
            super().start(timeout)
        except AssertionError as error:
            raise BenchError(str(error)) from None
        self.ready_at = time.monotonic()
        return self

    @property
    def to_ready(self) -> float:
        return self.ready_at - self.started_at

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM and wait (bounded); SIGKILL if it does not exit in time."""
        if not self.alive():
            return
        try:
            self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"the daemon did not stop within {timeout:.0f} s of SIGTERM") from None


class LogWatcher:
    """Follows the daemon's log file from its current end; finds the first line matching a regex."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0
        self._partial = ""

    def find(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                handle.seek(self.offset)
                data = handle.read()
                self.offset = handle.tell()
        except OSError:
            return None
        text = self._partial + data
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            match = pattern.search(line)
            if match:
                return match
        return None


def wait_cpu_idle(pid: int, timeout: float, window: float = 0.5, threshold: float = 0.02) -> float:
    """Wait until `pid` used less than `threshold` CPU seconds over `window` s; returns the
    monotonic time at which that quiet window began."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        start, before = time.monotonic(), cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < threshold:
            return start
    raise BenchError(f"the daemon did not go idle within {timeout:.0f} s")
