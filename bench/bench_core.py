"""Core daemon benchmark (issue 2): the real daemon, a local destination, figures printed in one run.

    python3 bench/bench_core.py [--files 10000] [--latency-files 2000] [--rate 100]
                                [--rescan-files 100000] [--quick] [--no-profile] [--dir DIR]

What it measures, and how (figures only; nothing passes or fails):

* Initial sync of --files small files (512..4096 random bytes, 100 per directory) to a local
  `symlink_or_copy` server, beside `cp -a SRC DST` and `rsync -a SRC/ DST/` of the same tree.
  The daemon runs as a subprocess (`python -m fileconveyor run --config F --ready-fd N`) on a fresh
  state and destination per variant: symlink mode (the transporter links unprocessed source files)
  and copy mode (the rule's chain runs `tests.e2e.processors.Copy`, so every file is copied, which
  is the fair comparison with cp and rsync; note the transporter fsyncs every copy, cp and rsync
  do not), each with MAX_FILES_IN_PIPELINE 50 (default) and 200. Wall time runs from spawning the
  daemon until synced_files.db has --files rows and pipeline_queue and pipeline_list are empty
  (read-only SQLite polls every 50 ms: a few ms of the daemon's time per second at most). CPU
  seconds are utime+stime of the daemon from /proc/PID/stat. The tree is read once before the
  first contender (warm page cache for all); each contender runs once, on a fresh destination.
* Latency from a file's close to its arrival: with the daemon idle after its initial sync, this
  process writes --latency-files files of 1 KiB into the source's top directory at a steady --rate
  files/s, recording the time of each close(); a thread reads inotify events of the destination's
  top directory (IN_CREATE/IN_MOVED_TO: the transporter publishes by renaming a temp name) and
  records the first time each final name appears. p50, p99 and max of the differences, in ms.
* Idle CPU: after the initial sync (and once the daemon's CPU use has settled), its CPU seconds
  over --idle-seconds (30 by default), as a percentage of one core.
* Start-up rescan of --rescan-files unchanged, already-synced files: the tree is first synced in
  symlink mode (log level WARNING, MAX_FILES_IN_PIPELINE 200, to prime it quickly), the daemon is
  stopped with SIGTERM and started again at log level DEBUG. The readiness pipe says "ready" BEFORE
  the start-up scan (the monitor's add_tree only queues the scan for its thread), so the figure is
  the time from spawn until the monitor's DEBUG line "Scanned ROOT in X s: N changes" appears in
  the log (polled every 20 ms), beside `find TREE -type f` (lines counted here) on the same, warm
  tree. The daemon's own "X s" is printed too.
* Peak RSS: VmHWM from /proc/PID/status at the end of each phase.
* Load: the 1-minute load average when each figure was taken; on a busy machine (tests running
  beside the benchmark) every figure above is slower than the daemon can be, cp and rsync too.
* With py-spy installed (pip install py-spy) and without --no-profile, one more initial sync per
  mode (symlink, copy) runs under `py-spy record --format raw --nonblocking --threads` (CPU
  samples, idle threads left out) with a `py-spy dump` of every thread at a third of the way; the
  top frames (per thread, self and inclusive samples) are printed and the raw files are kept in
  the work directory while it is kept (--keep).

Everything happens below one temporary directory (removed at the end unless --keep); no network.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import math
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyinotify  # noqa: E402

from core_daemon import (  # noqa: E402
    BenchError,
    Daemon,
    LogWatcher,
    Setup,
    Variant,
    borrowed_tree,
    build_tree,
    configure,
    count_files,
    count_rows,
    cpu_seconds,
    peak_rss_mib,
    synced_and_empty,
    wait_cpu_idle,
    wait_for,
    warm_read,
)

SCANNED = re.compile(r"Scanned (?P<root>.+) in (?P<seconds>[0-9.]+) s: (?P<changes>\d+) changes")


@dataclasses.dataclass
class Row:
    """One line of the final table."""

    phase: str
    contender: str
    files: int | None = None
    seconds: float | None = None
    cpu: float | None = None
    rss_mib: float | None = None
    note: str = ""
    #: 1-minute load average when the figure was taken: other work on the machine skews it.
    load: float = dataclasses.field(default_factory=lambda: os.getloadavg()[0])

    @property
    def rate(self) -> float | None:
        if self.files is None or not self.seconds:
            return None
        return self.files / self.seconds


@dataclasses.dataclass
class Results:
    rows: list[Row] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.phase:<14} {row.contender:<38} " + format_row(row), flush=True)


def format_row(row: Row) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None else "-"
    return (f"{fmt(row.files, ',d'):>9} {fmt(row.seconds, '.2f'):>9} {fmt(row.rate, ',.0f'):>9} "
            f"{fmt(row.cpu, '.2f'):>8} {fmt(row.rss_mib, '.1f'):>8} {row.load:>5.1f}  {row.note}")


# --- baselines ------------------------------------------------------------------------------------

def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_tool(argv: list[str], timeout: float) -> tuple[float, float]:
    """Run a command (argument list, no shell); returns (wall seconds, CPU seconds)."""
    cpu_before = children_cpu()
    started = time.monotonic()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, timeout=timeout)
    return time.monotonic() - started, children_cpu() - cpu_before


def baselines(results: Results, source: str, work: str, files: int) -> None:
    for label, argv_of in (("cp -a SRC DST", lambda dst: ["cp", "-a", source, dst]),
                           ("rsync -a SRC/ DST/", lambda dst: ["rsync", "-a", source + "/", dst + "/"])):
        tool = argv_of("x")[0]
        if shutil.which(tool) is None:
            results.add(Row("initial sync", label, note=f"{tool} not installed"))
            continue
        destination = os.path.join(work, f"dst-{tool}")
        shutil.rmtree(destination, ignore_errors=True)
        wall, cpu = run_tool(argv_of(destination), timeout=600)
        copied = count_files(destination)
        results.add(Row("initial sync", label, copied, wall, cpu, None, "no fsync"))
        shutil.rmtree(destination, ignore_errors=True)


# --- initial sync, idle CPU, latency ----------------------------------------------------------------

def initial_sync(results: Results, work: str, tree: str, files: int, variant: Variant,
                 timeout: float, after_sync=None) -> None:  # type: ignore[no-untyped-def]
    """Sync `tree` with a fresh daemon; `after_sync(daemon, setup)` runs while it is still up."""
    root = os.path.join(work, "run-" + re.sub(r"[^a-z0-9]+", "-", variant.label.lower()).strip("-"))
    setup = configure(root, variant)
    with borrowed_tree(tree, setup):
        daemon = Daemon(setup)
        try:
            daemon.start()
            done_at = wait_for(lambda: synced_and_empty(setup, files), timeout,
                               f"{files} synced files ({variant.label})", alive=daemon.alive)
            cpu = cpu_seconds(daemon.pid)
            rss = peak_rss_mib(daemon.pid)
            results.add(Row("initial sync", f"fileconveyor {variant.label}", files,
                            done_at - daemon.started_at, cpu, rss, f"ready after {daemon.to_ready:.2f} s"))
            if after_sync is not None:
                after_sync(daemon, setup)
        finally:
            try:
                daemon.stop()
            finally:
                daemon.kill()
                remove_latency_files(setup.source)
    shutil.rmtree(root, ignore_errors=True)


def idle_cpu(results: Results, daemon: Daemon, label: str, seconds: float) -> None:
    wait_cpu_idle(daemon.pid, timeout=60)
    before = cpu_seconds(daemon.pid)
    time.sleep(seconds)
    used = cpu_seconds(daemon.pid) - before
    results.add(Row("idle CPU", f"fileconveyor {label}", None, seconds, used, peak_rss_mib(daemon.pid),
                    f"{100 * used / seconds:.2f} % of one core"))


class ArrivalWatcher:
    """Records the monotonic time at which each name first appears in one directory (inotify)."""

    _HEADER = struct.Struct("iIII")

    def __init__(self, directory: str, prefix: str) -> None:
        self.prefix = prefix
        self.arrivals: dict[str, float] = {}
        self._wm = pyinotify.WatchManager()
        self._fd = self._wm.get_fd()
        self._wm.add_watch(directory, pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="arrivals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            now = time.monotonic()
            if self._stop_r in ready:
                return
            data = os.read(self._fd, 256 * 1024)
            offset = 0
            while offset + self._HEADER.size <= len(data):
                _wd, _mask, _cookie, length = self._HEADER.unpack_from(data, offset)
                offset += self._HEADER.size
                name = data[offset:offset + length].rstrip(b"\0").decode("utf-8", "replace")
                offset += length
                if name.startswith(self.prefix) and ".fctmp-" not in name:
                    self.arrivals.setdefault(name, now)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._wm.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def latency(results: Results, daemon: Daemon, setup: Setup, label: str, count: int, rate: float) -> None:
    prefix = "lat-"
    watcher = ArrivalWatcher(setup.dest, prefix)
    closed: dict[str, float] = {}
    payload = os.urandom(1024)
    try:
        started = time.monotonic()
        for i in range(count):
            due = started + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            name = f"{prefix}{i:06d}.bin"
            with open(os.path.join(setup.source, name), "wb") as handle:
                handle.write(payload)
            closed[name] = time.monotonic()
        writing = time.monotonic() - started
        try:
            wait_for(lambda: len(watcher.arrivals) >= count, 120, f"{count} files at the destination",
                     interval=0.05, alive=daemon.alive)
        except BenchError as error:
            print(f"  (latency {label}: {error}; {len(watcher.arrivals)} arrived)", flush=True)
    finally:
        watcher.close()
    delays = sorted(1000 * (watcher.arrivals[n] - t) for n, t in closed.items() if n in watcher.arrivals)
    missing = count - len(delays)
    if not delays:
        results.add(Row("latency", f"fileconveyor {label}", count, note="nothing arrived"))
        return
    note = (f"p50 {percentile(delays, 0.5):.1f} ms, p99 {percentile(delays, 0.99):.1f} ms, "
            f"max {delays[-1]:.1f} ms; written at {count / writing:.1f} files/s"
            + (f"; {missing} never arrived" if missing else ""))
    results.add(Row("latency", f"fileconveyor {label}", len(delays), writing, None,
                    peak_rss_mib(daemon.pid), note))
    results.extra.append(f"latency {label}: p50 {percentile(delays, 0.5):.1f} ms, p90 "
                         f"{percentile(delays, 0.9):.1f} ms, p99 {percentile(delays, 0.99):.1f} ms, "
                         f"max {delays[-1]:.1f} ms over {len(delays)} files")


def remove_latency_files(source: str) -> None:
    for path in glob.glob(os.path.join(source, "lat-*.bin")):
        os.unlink(path)


# --- rescan -----------------------------------------------------------------------------------------

def rescan(results: Results, work: str, files: int, sync_timeout: float) -> None:
    root = os.path.join(work, "rescan")
    prime = Variant("symlink, MFP 200, log WARNING", copy=False, max_files_in_pipeline=200, log_level="WARNING")
    setup = configure(root, prime)
    print(f"  building {files:,} tiny files for the rescan ...", flush=True)
    started = time.monotonic()
    build_tree(setup.source, files, min_size=8, max_size=8, seed=3)
    print(f"  built in {time.monotonic() - started:.1f} s", flush=True)
    daemon = Daemon(setup)
    try:
        daemon.start()
        done_at = wait_for(lambda: synced_and_empty(setup, files), sync_timeout,
                           f"{files} synced files (rescan priming)", interval=0.5, alive=daemon.alive)
        results.add(Row("prime rescan", f"fileconveyor {prime.label}", files, done_at - daemon.started_at,
                        cpu_seconds(daemon.pid), peak_rss_mib(daemon.pid), "first sync of the rescan tree"))
        stop_started = time.monotonic()
        daemon.stop()
        results.extra.append(f"SIGTERM to exit after syncing {files:,} files: {time.monotonic() - stop_started:.2f} s")
    finally:
        daemon.kill()

    configure(root, dataclasses.replace(prime, label="symlink, log DEBUG", log_level="DEBUG"))
    watcher = LogWatcher(setup.log_file)
    daemon = Daemon(setup)
    try:
        daemon.start()
        found: list[re.Match[str]] = []

        def scanned() -> bool:
            match = watcher.find(SCANNED)
            if match:
                found.append(match)
            return bool(found)
        seen_at = wait_for(scanned, 600, "the start-up scan's log line", interval=0.02, alive=daemon.alive)
        idle_at = wait_cpu_idle(daemon.pid, timeout=120)
        match = found[0]
        results.add(Row("rescan", "fileconveyor restart (spawn -> scanned)", files, seen_at - daemon.started_at,
                        cpu_seconds(daemon.pid), peak_rss_mib(daemon.pid),
                        f"ready after {daemon.to_ready:.2f} s; scan itself {match['seconds']} s, "
                        f"{match['changes']} changes; CPU idle from {idle_at - daemon.started_at:.2f} s"))
    finally:
        try:
            daemon.stop()
        finally:
            daemon.kill()

    for attempt in ("warm-up", "measured"):
        started = time.monotonic()
        cpu_before = children_cpu()
        output = subprocess.run(["find", setup.source, "-type", "f"], check=True, capture_output=True,
                                timeout=300).stdout
        wall, cpu = time.monotonic() - started, children_cpu() - cpu_before
        if attempt == "measured":
            results.add(Row("rescan", "find TREE -type f", output.count(b"\n"), wall, cpu, None,
                            "second run (first one warms up)"))
    shutil.rmtree(root, ignore_errors=True)


# --- profile ----------------------------------------------------------------------------------------

def summarise_profile(path: str, top: int = 15) -> list[str]:
    """Self and inclusive sample counts per frame from py-spy's raw (collapsed stack) output."""
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            if frames and frames[0].startswith(("thread ", "process ")):
                threads[frames[0]] += count
                frames = [f for f in frames if not f.startswith(("thread ", "process "))]
            total += count
            if frames:
                self_samples[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    lines = [f"{total} samples"]
    if threads:
        lines.append("by thread:")
        lines += [f"  {100 * c / total:5.1f}%  {t}" for t, c in threads.most_common(top)]
    lines.append("self (leaf frame):")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_samples.most_common(top)]
    lines.append("inclusive:")
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return lines


def profile(results: Results, work: str, tree: str, files: int, timeout: float, copy: bool) -> None:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        results.extra.append("profile: py-spy is not installed (pip install py-spy); skipped")
        return
    mode = "copy" if copy else "symlink"
    variant = Variant(f"{mode}, MFP 50 (defaults), under py-spy", copy=copy)
    output = os.path.join(work, f"profile-{mode}.txt")
    dump = os.path.join(work, f"dump-{mode}.txt")

    setup = configure(os.path.join(work, "run-profile"), variant)
    with borrowed_tree(tree, setup):
        profile_run(results, setup, variant, files, timeout, py_spy, output, dump)
    shutil.rmtree(setup.root, ignore_errors=True)
    if os.path.exists(output):
        results.extra.append(f"profile of a {mode}-mode initial sync ({output}; thread dump at a third: {dump}):")
        results.extra += ["  " + line for line in summarise_profile(output)]


def profile_run(results: Results, setup: Setup, variant: Variant, files: int, timeout: float, py_spy: str,
                output: str, dump: str) -> None:
    daemon = Daemon(setup)
    recorder: subprocess.Popen[bytes] | None = None
    try:
        daemon.start()
        # FC_PROFILE_GIL=1: only threads holding the GIL (Python CPU), not those waiting in system calls.
        gil = ["--gil"] if os.environ.get("FC_PROFILE_GIL") else []
        recorder = subprocess.Popen([py_spy, "record", "--format", "raw", "--nonblocking", "--threads", *gil,
                                     "-r", "100", "-d", str(int(timeout)), "-o", output, "-p", str(daemon.pid)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        synced = setup.db("synced_files.db")
        wait_for(lambda: (count_rows(synced, "synced_files") or 0) >= files // 3, timeout, "a third synced",
                 alive=daemon.alive)
        with open(dump, "wb") as handle:
            subprocess.run([py_spy, "dump", "-p", str(daemon.pid)], stdout=handle, stderr=subprocess.STDOUT,
                           timeout=60)
        done_at = wait_for(lambda: synced_and_empty(setup, files), timeout, "synced (profile)",
                           alive=daemon.alive)
        results.add(Row("initial sync", f"fileconveyor {variant.label}", files, done_at - daemon.started_at,
                        cpu_seconds(daemon.pid), peak_rss_mib(daemon.pid), "profiled: slower"))
    finally:
        if recorder is not None:
            if recorder.poll() is None:
                recorder.send_signal(signal.SIGINT)
            try:
                _, err = recorder.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                err = b""
            if not os.path.exists(output):
                results.extra.append(f"profile: py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        try:
            daemon.stop()
        finally:
            daemon.kill()


# --- main -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=None, help="initial sync size (default 10,000)")
    parser.add_argument("--latency-files", type=int, default=None, help="files written for latency (2,000)")
    parser.add_argument("--rate", type=float, default=100.0, help="files/s written for latency (100)")
    parser.add_argument("--rescan-files", type=int, default=None, help="rescan tree size (100,000; 0 skips)")
    parser.add_argument("--idle-seconds", type=float, default=None, help="idle CPU window (30 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 / 200 / 10,000, idle 5 s")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy runs")
    parser.add_argument("--sync-timeout", type=float, default=900.0, help="deadline of each sync (s)")
    parser.add_argument("--dir", default=None, help="parent of the work directory (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    quick = {"files": 1000, "latency_files": 200, "rescan_files": 10_000, "idle_seconds": 5.0}
    full = {"files": 10_000, "latency_files": 2000, "rescan_files": 100_000, "idle_seconds": 30.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = tempfile.mkdtemp(prefix="fc-bench-core-", dir=args.dir)
    results = Results()
    print(f"work directory {work}; {os.cpu_count()} cores; Python {sys.version.split()[0]}", flush=True)
    print(f"  {'phase':<14} {'contender':<38} {'files':>9} {'seconds':>9} {'files/s':>9} {'CPU s':>8} "
          f"{'RSS MiB':>8} {'load':>5}  note", flush=True)
    try:
        source = os.path.join(work, "tree")
        size = build_tree(source, args.files)
        warmed = warm_read(source)
        results.extra.append(f"initial-sync tree: {warmed:,} files, {size / 1e6:.1f} MB, read once before "
                             "the first contender (page cache warm for all; nothing dropped)")
        baselines(results, source, work, args.files)

        def idle_and_latency(label: str):  # type: ignore[no-untyped-def]
            def after(daemon: Daemon, setup: Setup) -> None:
                idle_cpu(results, daemon, label, args.idle_seconds)
                latency(results, daemon, setup, label, args.latency_files, args.rate)
            return after

        variants = [
            (Variant("symlink, MFP 50 (defaults)", copy=False), True),
            (Variant("symlink, MFP 200", copy=False, max_files_in_pipeline=200), False),
            (Variant("copy, MFP 50 (defaults)", copy=True), True),
            (Variant("copy, MFP 200, 2 chains", copy=True, max_files_in_pipeline=200, processor_chains=2), False),
        ]
        for variant, with_latency in variants:
            try:
                initial_sync(results, work, source, args.files, variant, args.sync_timeout,
                             idle_and_latency(variant.label) if with_latency else None)
            except BenchError as error:
                results.add(Row("initial sync", f"fileconveyor {variant.label}", note=f"FAILED: {error}"))
        if not args.no_profile:
            for copy in (False, True):
                try:
                    profile(results, work, source, args.files, args.sync_timeout, copy)
                except BenchError as error:
                    results.extra.append(f"profile failed: {error}")
        if args.rescan_files:
            try:
                rescan(results, work, args.rescan_files, args.sync_timeout)
            except BenchError as error:
                results.add(Row("rescan", "fileconveyor restart", note=f"FAILED: {error}"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"File Conveyor core benchmark: {os.cpu_count()} cores, servers: one symlink_or_copy "
          f"(maxConnections 4), MFP = MAX_FILES_IN_PIPELINE")
    print(f"{'phase':<14} {'contender':<46} {'files':>9} {'seconds':>9} {'files/s':>9} {'CPU s':>8} "
          f"{'RSS MiB':>8} {'load':>5}  note")
    for row in results.rows:
        print(f"{row.phase:<14} {row.contender:<46} " + format_row(row))
    print()
    for line in results.extra:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
