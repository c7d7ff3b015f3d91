"""What the metrics and the HTTP endpoint cost (issue 10): initial syncs with and without
HTTP_ADDRESS, in the same run, figures printed (nothing passes or fails).

    python3 bench/bench_metrics.py [--files 5000] [--rounds 3] [--copy]

* The same tree of --files small files (bench/core_daemon.py's build_tree, warm page cache) is
  synced by a fresh daemon (fresh state and destination) per round, to the harness's local
  `symlink_or_copy` server (maxConnections 4), MAX_FILES_IN_PIPELINE 50. Variants alternate
  (A B B A A B ...) so that a change in the machine's load, and the disk writeback a run leaves
  to the next one, hit both alike:
  - "no endpoint": HTTP_ADDRESS unset (the counters are still counted: they are always on);
  - "endpoint, scraped": HTTP_ADDRESS on loopback, and this process scrapes /metrics every
    second and fetches /status every 2 s (what the status page does), harder than a Prometheus
    server at its usual 15 s;
* Wall time runs from spawning the daemon until synced_files.db has --files rows and the queues
  are empty (read-only SQLite polls every 50 ms, the same for every variant); CPU seconds are the
  daemon's utime+stime from /proc. The median of each variant's rounds is compared.
* The counting itself is always on, so no run of today's daemon is without it: its cost is
  measured in this process instead, with the daemon's own `Metrics` object: the calls one
  uploaded file makes (transfer timed, uploaded with size and latency, trip completed), timed
  over 200,000 files, beside the daemon's wall time per file in the "no endpoint" rounds.
* The endpoint's own cost, less noisy than whole syncs on a shared machine: the daemon's CPU
  per /metrics and per /status request once it is synced and idle (its idle CPU subtracted).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import types
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from core_daemon import (  # noqa: E402
    REPO,
    BenchError,
    Daemon,
    borrowed_tree,
    build_tree,
    cpu_seconds,
    synced_and_empty,
    wait_cpu_idle,
    wait_for,
    warm_read,
)
from tests.e2e import harness  # noqa: E402
from tests.servers._loopback import free_port  # noqa: E402


class Scraper:
    """Fetches /metrics every second and /status every 2 s until closed; counts what it got."""

    def __init__(self, url: str, paths: tuple[str, ...] = ("/metrics", "/status")) -> None:
        self.url = url
        self.paths = paths
        self.scrapes = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(1.0):
            tick += 1
            for path in [p for p in self.paths if p == "/metrics" or tick % 2 == 0]:
                try:
                    with urllib.request.urlopen(self.url + path, timeout=10) as response:
                        response.read()
                    self.scrapes += 1
                except OSError:
                    self.errors += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)


def one_sync(work: str, tree: str, files: int, label: str, round_: int, endpoint: bool, code_dir: str,
             copy: bool, timeout: float, paths: tuple[str, ...] = ("/metrics", "/status")) -> tuple[float, float, str]:
    root = os.path.join(work, f"run-{round_}-{label.split()[0]}")
    settings = {"FILE_LOGGER_LEVEL": "INFO"}
    port = free_port()
    if endpoint:
        settings["HTTP_ADDRESS"] = f"127.0.0.1:{port}"
    setup = harness.write_config(root, processors=("tests.e2e.processors.Copy",) if copy else (), settings=settings)
    note = ""
    with borrowed_tree(tree, setup):
        daemon = Daemon(setup, code_dir=code_dir)
        scraper = None
        try:
            daemon.start()
            if endpoint:
                scraper = Scraper(f"http://127.0.0.1:{port}", paths)
            done_at = wait_for(lambda: synced_and_empty(setup, files), timeout, f"{files} synced ({label})",
                               alive=daemon.alive)
            cpu = cpu_seconds(daemon.pid)
        finally:
            if scraper is not None:
                scraper.close()
                note = f"{scraper.scrapes} requests, {scraper.errors} errors"
            try:
                daemon.stop()
            finally:
                daemon.kill()
    shutil.rmtree(root, ignore_errors=True)
    return done_at - daemon.started_at, cpu, note


def counting_seconds_per_file(files: int = 200_000) -> float:
    """What the hooks of one uploaded file cost, with the daemon's own Metrics object."""
    from fileconveyor.metrics import Metrics

    metrics = Metrics(types.SimpleNamespace(pipeline=None, pools={}, monitor=None))  # type: ignore[arg-type]
    queued_at = time.time()
    started = time.perf_counter()
    for _ in range(files):
        metrics.transfer_timed("cdn", "upload", 0.004)
        metrics.uploaded("cdn", 2048, queued_at)
        metrics.completed(1)
    return (time.perf_counter() - started) / files


def request_costs(work: str, tree: str, files: int, timeout: float) -> tuple[float, float]:
    """Daemon CPU seconds per /metrics and per /status request, on the synced, idle daemon (its
    own idle CPU over the same time subtracted); /status requests 1.1 s apart, past its cache."""
    port = free_port()
    setup = harness.write_config(os.path.join(work, "run-requests"),
                                 settings={"FILE_LOGGER_LEVEL": "INFO", "HTTP_ADDRESS": f"127.0.0.1:{port}"})
    url = f"http://127.0.0.1:{port}"
    with borrowed_tree(tree, setup):
        daemon = Daemon(setup)
        try:
            daemon.start()
            wait_for(lambda: synced_and_empty(setup, files), timeout, "the sync", alive=daemon.alive)
            wait_cpu_idle(daemon.pid, 120)
            started, before = time.monotonic(), cpu_seconds(daemon.pid)
            time.sleep(5.0)  # the idle rate (status thread) over a fixed window
            idle_rate = (cpu_seconds(daemon.pid) - before) / (time.monotonic() - started)

            def cost(path: str, count: int, gap: float) -> float:
                started, before = time.monotonic(), cpu_seconds(daemon.pid)
                for _ in range(count):
                    with urllib.request.urlopen(url + path, timeout=30) as response:
                        response.read()
                    time.sleep(gap)
                spent = cpu_seconds(daemon.pid) - before - idle_rate * (time.monotonic() - started)
                return max(0.0, spent) / count

            return cost("/metrics", 100, 0.0), cost("/status", 15, 1.1)
        finally:
            try:
                daemon.stop()
            finally:
                daemon.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="syncs per variant (alternating)")
    parser.add_argument("--copy", action="store_true", help="copy every file (processor chain) instead of linking")
    parser.add_argument("--requests", choices=("both", "metrics", "status"), default="both",
                        help="what the scraper fetches: /metrics every second and /status every 2 s (both)")
    parser.add_argument("--sync-timeout", type=float, default=900.0)
    parser.add_argument("--dir", default=None, help="parent of the work directory (default: $TMPDIR)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="fc-bench-metrics-", dir=args.dir)
    variants = [("no endpoint", False, REPO), ("endpoint, scraped", True, REPO)]
    paths = {"both": ("/metrics", "/status"), "metrics": ("/metrics",), "status": ("/status",)}[args.requests]
    try:
        tree = os.path.join(work, "tree")
        build_tree(tree, args.files)
        warm_read(tree)
        figures: dict[str, list[tuple[float, float]]] = {label: [] for label, _e, _c in variants}
        print(f"{args.files} files, {args.rounds} round(s), {os.cpu_count()} cores, "
              f"{'copy' if args.copy else 'symlink'} mode", flush=True)
        for round_ in range(args.rounds):
            # A B, then B A: whichever runs second also meets the first one's disk writeback.
            for label, endpoint, code_dir in (variants if round_ % 2 == 0 else variants[::-1]):
                try:
                    seconds, cpu, note = one_sync(work, tree, args.files, label, round_, endpoint, code_dir,
                                                  args.copy, args.sync_timeout, paths)
                except BenchError as error:
                    print(f"  round {round_ + 1} {label:<24} FAILED: {error}", flush=True)
                    continue
                figures[label].append((seconds, cpu))
                print(f"  round {round_ + 1} {label:<24} {seconds:7.2f} s {args.files / seconds:8.1f} files/s "
                      f"CPU {cpu:6.2f} s  load {os.getloadavg()[0]:.2f}  {note}", flush=True)
        per_metrics, per_status = request_costs(work, tree, args.files, args.sync_timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'variant':<28} {'median s':>9} {'files/s':>9} {'CPU s':>8} {'vs no endpoint':>15}")
    reference = figures.get("no endpoint")
    base_rate = args.files / statistics.median(s for s, _c in reference) if reference else None
    for label, rows in figures.items():
        if not rows:
            print(f"{label:<28} no successful round")
            continue
        seconds = statistics.median(s for s, _c in rows)
        cpu = statistics.median(c for _s, c in rows)
        rate = args.files / seconds
        versus = f"{100 * (rate / base_rate - 1):+.1f} %" if base_rate else ""
        print(f"{label:<28} {seconds:9.2f} {rate:9.1f} {cpu:8.2f} {versus:>15}")
    hooks = counting_seconds_per_file()
    line = f"counting (always on): {hooks * 1e6:.1f} µs of one thread per uploaded file"
    if base_rate:
        line += f", {100 * hooks * base_rate:.2f} % of the daemon's wall time per file (no endpoint)"
    print(line)
    print(f"daemon CPU per request: /metrics {per_metrics * 1e3:.1f} ms, /status {per_status * 1e3:.1f} ms; "
          f"a scrape every 15 s plus one status page open (/status every 2 s): "
          f"{100 * (per_metrics / 15 + per_status / 2):.2f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
