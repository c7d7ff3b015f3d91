"""What the daemon counts for Prometheus (`/metrics`), the status page and `status --watch`.

Why it is shaped like this:
* One private `CollectorRegistry` per Arbitrator, never prometheus_client's global one: a daemon
  that restarts itself (and a test process that runs several daemons) must not register the same
  names twice or mix the figures of two arbitrators.
* Events are counted where they happen with one call each (an increment takes a lock for well
  under a microsecond); everything that already exists as state (queue sizes, paused servers, the
  monitor's overflows) is read at scrape time by `_StateCollector`; the pipeline's counts are the
  ones the status thread reads once a second anyway, so a scrape never touches a database (a
  scrape that queried SQLite every second cost a sync several percent of its throughput).
* `Progress` keeps what the status page and `status --watch` need that Prometheus leaves to its
  server (a rate, an ETA, recent latencies): samples taken by the status thread once a second.
Names follow Prometheus conventions: `fileconveyor_` prefix, base units, `_total` for counters.
"""
from __future__ import annotations

import collections
import os
import statistics
import threading
import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fileconveyor.arbitrator import Arbitrator
    from fileconveyor.pipeline.synced_files import SyncedFiles
    from fileconveyor.pipeline.workers import TransporterPool

#: Transfers last from milliseconds (a local copy) to many minutes (a large object over a slow link).
TRANSFER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
#: From a change seen to its copy recorded: the backlog of an initial sync can make it hours.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
#: Seconds of completions the rate (and so the ETA) is computed over.
RATE_WINDOW = 60.0
#: Latencies kept for the status page's median and maximum.
RECENT_LATENCIES = 200
#: Uploads at least this large are listed with their progress by `status` and the page.
LARGE_UPLOAD = 64 * 2**20


class Metrics:
    """The counters and histograms of one arbitrator, and its progress for humans."""

    def __init__(self, arbitrator: "Arbitrator") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.transferred_files = Counter(
            "fileconveyor_transferred_files", "Files uploaded and recorded in synced_files.db, per server",
            ["server"], registry=r)
        self.transferred_bytes = Counter(
            "fileconveyor_transferred_bytes", "Bytes of the files uploaded and recorded, per server",
            ["server"], registry=r)
        self.remote_deletions = Counter(
            "fileconveyor_remote_deletions", "Remote copies deleted, per server", ["server"], registry=r)
        self.failures = Counter(
            "fileconveyor_transfer_failures",
            "Uploads and deletions that failed, per server and kind (retryable, permanent, paused, ...)",
            ["server", "kind"], registry=r)
        self.transfer_seconds = Histogram(
            "fileconveyor_transfer_duration_seconds", "Time one upload or deletion took, per server",
            ["server", "action"], buckets=TRANSFER_BUCKETS, registry=r)
        self.processed_files = Counter(
            "fileconveyor_processed_files", "Processor chain runs, per rule and outcome",
            ["rule", "outcome"], registry=r)
        self.processor_seconds = Counter(
            "fileconveyor_processor_seconds", "Time spent in processor chains, per rule", ["rule"], registry=r)
        self.latency = Histogram(
            "fileconveyor_sync_latency_seconds",
            "From a change queued to its copy recorded at a destination, per server",
            ["server"], buckets=LATENCY_BUCKETS, registry=r)
        self.completed_files = Counter(
            "fileconveyor_completed_files", "Paths whose trip ended with every destination done", registry=r)
        self.startup_scan_seconds = Gauge(
            "fileconveyor_startup_scan_seconds",
            "How long the start-up comparison of the trees with the index took", registry=r)
        ProcessCollector(namespace="fileconveyor", registry=r)
        r.register(_StateCollector(arbitrator, self))
        self.progress = Progress()
        #: The pipeline's counts and the paths blocked per server, as the status thread last read
        #: them (once a second): a scrape reads no database and never waits for a writer.
        self.pipeline_counts: dict[str, int] = {}
        self.blocked_counts: dict[str, int] = {}

    def pipeline_state(self, counts: dict[str, int], blocked: dict[str, int],
                       synced: "SyncedFiles | None") -> dict[str, object]:
        """Keep the status thread's counts for scrapes; the progress snapshot for the status."""
        follow_ups = synced.db.query("SELECT COUNT(*) FROM follow_ups")[0][0] if synced is not None else 0
        self.pipeline_counts, self.blocked_counts = {**counts, "follow_ups": follow_ups}, blocked
        return self.progress.snapshot(counts["waiting"] + counts["in_flight"], sum(blocked.values()))

    # --- hooks: one call where the event happens ----------------------------------------------

    def transfer_timed(self, server: str, action: str, seconds: float) -> None:
        self.transfer_seconds.labels(server, action).observe(seconds)

    def uploaded(self, server: str, size: int | None, queued_at: float | None) -> None:
        self.transferred_files.labels(server).inc()
        if size:
            self.transferred_bytes.labels(server).inc(size)
            self.progress.add_bytes(size)
        if queued_at is not None:
            latency = max(0.0, time.time() - queued_at)
            self.latency.labels(server).observe(latency)
            self.progress.add_latency(latency)

    def failed(self, server: str, kind: str) -> None:
        self.failures.labels(server, kind).inc()

    def deleted(self, server: str) -> None:
        self.remote_deletions.labels(server).inc()

    def processed(self, rule: str, seconds: float, outcome: str = "ok") -> None:
        self.processed_files.labels(rule, outcome).inc()
        self.processor_seconds.labels(rule).inc(seconds)

    def completed(self, count: int) -> None:
        self.completed_files.inc(count)
        self.progress.add_completed(count)


class Progress:
    """Completions since start, their rate over the last minute, recent latencies (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.completed = 0
        self.bytes = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._latencies: collections.deque[float] = collections.deque(maxlen=RECENT_LATENCIES)

    def add_completed(self, count: int) -> None:
        with self._lock:
            self.completed += count

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes += count

    def add_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds)

    def snapshot(self, backlog: int, blocked: int = 0, now: float | None = None) -> dict[str, object]:
        """Files done since start, of done + backlog; the rate over RATE_WINDOW; an ETA when
        there is a rate and no file of the backlog waits for a paused server (`blocked`: no rate
        says when that one comes back). Called once a second by the status thread (it also takes
        the sample)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            completed, done_bytes = self.completed, self.bytes
            self._samples.append((now, completed))
            while len(self._samples) > 1 and now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
            first_time, first_count = self._samples[0]
            latencies = list(self._latencies)
        span = now - first_time
        rate = (completed - first_count) / span if span >= 1.0 else None
        return {
            "started_at": self.started_at, "completed": completed, "bytes": done_bytes,
            "backlog": backlog, "blocked": blocked, "total": completed + backlog, "rate": rate,
            "eta": 0.0 if not backlog else (backlog / rate) if rate and not blocked else None,
            "latency_median": statistics.median(latencies) if latencies else None,
            "latency_max": max(latencies) if latencies else None,
        }


def large_uploads(pool: "TransporterPool") -> list[dict[str, object]]:
    """The pool's running uploads of LARGE_UPLOAD bytes or more, with how far each has got."""
    uploads: list[dict[str, object]] = []
    for task, started in list(pool.running.values()):
        if task.action != "upload" or not task.local_path:
            continue
        try:
            size = os.stat(task.local_path).st_size
        except OSError:
            continue
        if size >= LARGE_UPLOAD:
            uploads.append({"remote": task.remote_path, "size": size, "started": started,
                            "sent": read_position(os.path.realpath(task.local_path))})
    return uploads


def read_position(path: str) -> int | None:
    """How far this process has read the file at `path` (the furthest offset of its descriptors
    open on it, from /proc/self/fdinfo), or None where that cannot be known. Every transporter
    reads its local file front to back (S3's multipart parts too, in order), so this is the
    upload's progress, ahead of the bytes acknowledged by at most a buffer or a part, without
    any transporter reporting it."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    furthest: int | None = None
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != path:
                continue
            with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("pos:"):
                        furthest = max(furthest or 0, int(line.split()[1]))
        except (OSError, ValueError):
            continue
    return furthest


class _StateCollector(Collector):
    """Gauges read from the arbitrator's state at scrape time: the pools' and the monitor's
    attributes, and the counts the status thread took (no database is read here)."""

    def __init__(self, arbitrator: "Arbitrator", metrics: Metrics) -> None:
        self._arbitrator = arbitrator
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        conveyor = self._arbitrator
        counts = self._metrics.pipeline_counts
        if not counts:
            return  # not started yet
        for key, name, text in (
                ("waiting", "waiting", "Paths waiting in pipeline_queue (including those blocked on a paused server)"),
                ("in_flight", "in_flight", "Paths in flight (pipeline_list)"),
                ("failed", "failed", "Paths in failed_files_list, waiting for their next try"),
                ("to_delete", "scheduled_deletions", "Source files scheduled for deletion after sync")):
            yield GaugeMetricFamily(f"fileconveyor_pipeline_{name}_files", text, value=counts[key])
        yield GaugeMetricFamily("fileconveyor_pipeline_follow_ups_files",
                                "Files to queue again because a URL they embed changed",
                                value=counts.get("follow_ups", 0))
        blocked = self._metrics.blocked_counts
        paused = GaugeMetricFamily("fileconveyor_server_paused", "1 while the server is paused", labels=["server"])
        paused_for = GaugeMetricFamily("fileconveyor_server_paused_seconds",
                                       "How long the server has been paused (0 when active)", labels=["server"])
        busy = GaugeMetricFamily("fileconveyor_server_transfers_in_flight",
                                 "Uploads and deletions running now", labels=["server"])
        queued = GaugeMetricFamily("fileconveyor_server_transfers_queued",
                                   "Transfers handed to the server's pool, not started", labels=["server"])
        waiting = GaugeMetricFamily("fileconveyor_server_blocked_files",
                                    "Paths waiting for the server to come back", labels=["server"])
        now = time.time()
        for server, pool in sorted(conveyor.pools.items()):
            since = pool.paused_since
            paused.add_metric([server], 0 if pool.paused_reason is None else 1)
            paused_for.add_metric([server], now - since if since is not None else 0)
            busy.add_metric([server], pool.busy)
            queued.add_metric([server], pool.queued)
            waiting.add_metric([server], blocked.get(server, 0))
        yield from (paused, paused_for, busy, queued, waiting)
        monitor = conveyor.monitor
        if monitor is not None:
            state = monitor.runtime_status()
            yield CounterMetricFamily("fileconveyor_monitor_overflows",
                                    "Event queue overflows since start (each rescanned its tree)",
                                    value=state.get("overflows", 0))
            yield GaugeMetricFamily("fileconveyor_monitor_polled_trees",
                                    "Trees polled because the native monitor ran out of watches",
                                    value=len(state.get("polled_trees", [])))
            yield GaugeMetricFamily("fileconveyor_monitor_unwatched_directories",
                                    "Directories not watched (see the log and `status`)",
                                    value=state.get("unwatched_count", len(state.get("unwatched", []))))
