"""The arbitrator wires monitor -> pipeline -> processors -> transporters -> synced files.

Threads and who wakes them (an idle daemon uses no CPU: every thread blocks on a condition):
* the monitor's thread(s) call `_on_events`, which commits the batch to `pipeline_queue` and wakes
  the dispatcher; only then does the monitor update its index (see fsmonitor/base.py);
* the dispatcher claims up to MAX_FILES_IN_PIPELINE paths (never one path twice) and starts a
  `Trip` for each (fileconveyor/trip.py: one path's whole trip, which completes exactly once),
  requeues due retries, queues the files of a server that came back, and runs due source
  deletions. It sleeps until woken or until the next retry or deletion is due;
* a pool of MAX_SIMULTANEOUS_PROCESSORCHAINS threads runs processor chains;
* per server, a TransporterPool (pipeline/workers.py). A paused server's tasks end at once, so its
  files wait in the failed list (kind "paused") and never hold a place in the pipeline;
* the recorder writes finished uploads to synced_files.db in batches (one fsync for many files).

The arbitrator knows no backend: it talks to monitors, processors and transporters only through
their base contracts. Errors inside a trip fail that file only; an exception that escapes a
thread's loop is a crash, reported through `on_crash` so the daemon can restart.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import queue
import shutil
import stat
import threading
import time
from typing import Callable, Sequence

from fileconveyor.config import Config, written_by_daemon
from fileconveyor.localfile import kind_of, unsafe_link_reason
from fileconveyor.settings import Settings
from fileconveyor.fsmonitor import Event, FSEvent, Monitor
from fileconveyor.fsmonitor import get_monitor
from fileconveyor.httpd import StatusEndpoint
from fileconveyor.metrics import Metrics, large_uploads
from fileconveyor.notify import Webhooks
from fileconveyor.pipeline.db import degraded
from fileconveyor.pipeline.queue import PAUSED, Item, PersistentPipeline, SourceIdentity
from fileconveyor.pipeline.synced_files import SyncedFiles, Upload, clear_requeues, pending_requeues, record_uploads
from fileconveyor.pipeline.synced_files import due_old_versions, old_versions_summary, postpone_old_versions
from fileconveyor.pipeline.workers import TransportTask, TransporterPool
from fileconveyor.processors.base import ProcessorChain, resolve_processor
from fileconveyor import routing
from fileconveyor.transporters.base import RetryableError, TransporterContext, resolve_transporter
from fileconveyor.trip import WORK_DIR_PREFIX, PlannedUpload, Trip

log = logging.getLogger(__name__)

RECORD_BATCH = 500


@dataclasses.dataclass
class _Record:
    """A finished upload waiting for the recorder's next batch."""

    trip: Trip
    planned: PlannedUpload

#: Seconds between refreshes of the runtime status file (written only when it changed).
STATUS_INTERVAL = 1.0
#: Seconds dispatching waits at start-up for the monitor's comparison of the trees with its index.
STARTUP_SCAN_WAIT = 120.0


def runtime_status_path(settings: Settings) -> str:
    """Beside persistent_data.db: the running daemon's view of its servers and monitor."""
    return os.path.join(os.path.dirname(os.path.abspath(settings.PERSISTENT_DATA_DB)), "fileconveyor.status.json")


class Arbitrator:
    def __init__(self, config: Config, on_crash: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.settings = config.settings
        self._on_crash_callback = on_crash
        self.crashed = threading.Event()
        self.crash_error: BaseException | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        #: Set when a server paused or came back: its waiting files are queued again.
        self._servers_changed = threading.Event()
        self._trips: dict[str, Trip] = {}
        self._trips_lock = threading.Lock()
        self.pipeline: PersistentPipeline = None  # type: ignore[assignment]  # set by start()
        self.synced: SyncedFiles = None  # type: ignore[assignment]
        self.monitor: Monitor | None = None
        self.pools: dict[str, TransporterPool] = {}
        self.chains: dict[str, ProcessorChain] = {}
        self._dispatcher: threading.Thread | None = None
        self._records: queue.Queue[_Record | None] = queue.Queue()
        self._completions: queue.Queue[Trip | None] = queue.Queue()
        self._completer: threading.Thread | None = None
        self._recorder: threading.Thread | None = None
        #: Working directories of finished files, removed off the hot threads.
        self._cleanup: queue.Queue[list[str] | None] = queue.Queue()
        self._cleaner: threading.Thread | None = None
        self._last_status = ""
        self._status_writer: threading.Thread | None = None
        self._status_error: int | None = None
        self._processors: concurrent.futures.ThreadPoolExecutor | None = None
        self.metrics = Metrics(self)
        self._endpoint: StatusEndpoint | None = None
        #: Webhook notifications (fileconveyor/notify.py); never blocks the caller.
        self.events = Webhooks(config.settings)

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.pipeline = PersistentPipeline(s.PERSISTENT_DATA_DB)
        self.synced = SyncedFiles(s.SYNCED_FILES_DB)
        recovered = self.pipeline.recover_in_flight()
        if recovered:
            log.warning("Recovered %d file(s) that were in flight when File Conveyor last stopped", recovered)
        # Files that waited for a paused server in an earlier run: the servers are tried afresh.
        self.pipeline.unblock()
        self.queue_follow_ups()
        self._recover_source_deletions()
        self._prepare_working_dir()
        for rule in self.config.rules:
            chain = ProcessorChain([resolve_processor(name) for name in rule.processors],
                                   rule.processor_settings)
            for cls, settings in zip(chain.processor_classes, chain.settings):
                cls.check_available_with(settings)
            self.chains[rule.key] = chain
        slots = threading.BoundedSemaphore(s.MAX_SIMULTANEOUS_TRANSPORTERS)
        roots = tuple(src.scan_path for src in self.config.sources.values())
        state_dir = os.path.join(os.path.dirname(os.path.abspath(s.PERSISTENT_DATA_DB)), "transporter_state")
        for server in self.config.servers.values():
            transporter_class = resolve_transporter(server.transporter)
            context = TransporterContext(server_name=server.name, state_dir=state_dir, source_roots=roots,
                                         allow_unsafe_links=s.SYNC_UNSAFE_SYMLINKS)
            limit = min(server.max_connections or s.MAX_SIMULTANEOUS_TRANSPORTERS, s.MAX_SIMULTANEOUS_TRANSPORTERS)
            self.pools[server.name] = TransporterPool(
                server.name, functools.partial(transporter_class, server.settings, context),
                limit, slots, self._crash, on_state_change=self._server_state_changed,
                on_timed=self.metrics.transfer_timed)
            self.pools[server.name].sweep_leftovers()
        self._processors = concurrent.futures.ThreadPoolExecutor(
            max_workers=s.MAX_SIMULTANEOUS_PROCESSORCHAINS, thread_name_prefix="processor")
        self._recorder = threading.Thread(target=self._guarded, args=(self._record_loop,),
                                          name="recorder", daemon=True)
        self._recorder.start()
        self._completer = threading.Thread(target=self._guarded, args=(self._completion_loop,),
                                           name="completer", daemon=True)
        self._completer.start()
        self._cleaner = threading.Thread(target=self._guarded, args=(self._cleanup_loop,),
                                         name="cleaner", daemon=True)
        self._cleaner.start()
        # The monitor first: its start-up comparison must queue what changed while the daemon was
        # down before anything is dispatched, or a file recovered from pipeline_list could be
        # uploaded, then uploaded again for the MODIFIED event the comparison finds for it.
        self.monitor = get_monitor(s.FSMONITOR_BACKEND, self._on_events, s.FSMONITOR_DB,
                                   self.config.ignored_dirs, on_crash=self._crash,
                                   poll_interval=s.POLL_INTERVAL, excluded=written_by_daemon(self.config))
        self.monitor.start()
        for source in self.config.sources.values():
            self.monitor.add_tree(source.scan_path)
        self._dispatcher = threading.Thread(target=self._guarded, args=(self._dispatch_loop,),
                                            name="dispatcher", daemon=True)
        self._dispatcher.start()
        # Its own thread: the status must stay current while a database write is being retried.
        self._status_writer = threading.Thread(target=self._guarded, args=(self._status_loop,),
                                               name="status", daemon=True)
        self._status_writer.start()
        if s.HTTP_ADDRESS:
            self._endpoint = StatusEndpoint(self)
            self._endpoint.start()
        self.events.start()
        log.info("File Conveyor is up: %d source(s), %d server(s), %d rule(s); monitor: %s",
                 len(self.config.sources), len(self.config.servers), len(self.config.rules), self.monitor.name)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, give running transfers `timeout` seconds, flush and close.

        Transfers that have not started are not begun; they, and any still running after the
        timeout, stay in `pipeline_list` and are resumed at the next start: nothing is lost."""
        timeout = self.settings.SHUTDOWN_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if self._endpoint is not None:
            self._endpoint.stop()
        if self.monitor is not None:
            try:
                self.monitor.stop()
            except Exception:  # noqa: BLE001 - shutting down anyway; the index rescan repairs
                log.error("Error while stopping the monitor", exc_info=True)
        self._stopping.set()
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.join(max(0.0, deadline - time.monotonic()))
        for pool in self.pools.values():
            pool.stop(max(0.0, deadline - time.monotonic()))
        if self._processors is not None:
            self._processors.shutdown(wait=False, cancel_futures=True)
        for chain in self.chains.values():
            chain.shutdown()
        if self._recorder is not None:
            self._records.put(None)  # flush what finished transfers reported, then stop
            self._recorder.join(max(1.0, deadline - time.monotonic()))
        if self._completer is not None:
            self._completions.put(None)  # after the recorder: its last records complete trips
            self._completer.join(max(1.0, deadline - time.monotonic()))
        if self._cleaner is not None:
            self._cleanup.put(None)
            self._cleaner.join(max(1.0, deadline - time.monotonic()))
        with self._trips_lock:
            left = len(self._trips)
            self._trips.clear()
        if left:
            log.warning("%d file(s) still in flight at shutdown; they will be resumed at the next start", left)
        if self._status_writer is not None:
            self._status_writer.join(STATUS_INTERVAL + 1.0)
        self.events.stop()
        try:
            os.unlink(runtime_status_path(self.settings))
        except OSError:
            pass
        if self.pipeline is not None:
            counts = self.pipeline.counts()
            log.info("Stopped: %(waiting)d waiting, %(in_flight)d in flight, %(failed)d failed", counts)
            self.pipeline.close()
        if self.synced is not None:
            self.synced.close()

    def _crash(self, error: BaseException) -> None:
        if self._stopping.is_set():
            return
        self.crash_error = error
        self.crashed.set()
        if self._on_crash_callback is not None:
            self._on_crash_callback(error)

    def _guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as error:  # noqa: BLE001 - reported, never silent
            log.critical("Thread %s died: %s", threading.current_thread().name, error, exc_info=True)
            self._crash(error)

    def _prepare_working_dir(self) -> None:
        working_dir = self.settings.WORKING_DIR
        os.makedirs(working_dir, mode=0o700, exist_ok=True)
        for entry in os.listdir(working_dir):
            if entry.startswith(WORK_DIR_PREFIX):
                shutil.rmtree(os.path.join(working_dir, entry), ignore_errors=True)

    # --- status for tests and `status` --------------------------------------------------------

    @property
    def is_idle(self) -> bool:
        """Nothing waiting, nothing in flight, monitor idle (failed files may be waiting to retry)."""
        with self._trips_lock:
            if self._trips:
                return False
        counts = self.pipeline.counts()
        return counts["waiting"] == 0 and counts["in_flight"] == 0 and (self.monitor is None or self.monitor.is_idle)

    def runtime_status(self) -> dict[str, object]:
        """What only the running daemon knows: paused servers, the monitor's state."""
        monitor = self.monitor
        status: dict[str, object] = {"pid": os.getpid(), "monitor": None, "polled_trees": [], "overflows": 0}
        if monitor is not None:
            status.update(monitor.runtime_status())
        status["databases_degraded"] = [dataclasses.asdict(d) for d in degraded()]
        counts = self.pipeline.counts()
        self.events.backlog(counts["waiting"], counts["in_flight"], counts["failed"],
                            settled=monitor is not None and monitor.is_idle)
        blocked = self.pipeline.blocked_counts()
        status["progress"] = self.metrics.pipeline_state(counts, blocked, self.synced)
        status["servers"] = {
            name: {"paused": pool.paused_reason, "paused_since": pool.paused_since,
                   "busy": pool.busy, "queued": pool.queued, "files_waiting": blocked.get(name, 0),
                   "large_uploads": large_uploads(pool)}
            for name, pool in self.pools.items()}
        return status

    def _status_loop(self) -> None:
        while not self._stopping.is_set():
            self._write_runtime_status()
            self._stopping.wait(STATUS_INTERVAL)

    def _write_runtime_status(self) -> None:
        """Publish runtime_status() for `fileconveyor status` (written only when it changed).

        The file is padded to whole 4 KiB pages so that, when the disk is full (when the status
        matters most), it can still be overwritten in place without new space; any other error
        keeps the last good file and is logged once: the status never stops the daemon."""
        status = self.runtime_status()
        summary = json.dumps(status, sort_keys=True)
        if summary == self._last_status:
            return
        text = json.dumps(status, indent=1, sort_keys=True) + "\n"
        data = (text + " " * (-len(text) % 4096)).encode("utf-8")
        path = runtime_status_path(self.settings)
        temporary = f"{path}.tmp"
        try:
            fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            if not (error.errno in (errno.ENOSPC, errno.EDQUOT) and self._overwrite_status_in_place(path, data)):
                if self._status_error != error.errno:
                    log.warning("Cannot update %s (%s); `status` shows older facts until it can", path, error)
                self._status_error = error.errno
                return
        self._status_error = None
        self._last_status = summary

    @staticmethod
    def _overwrite_status_in_place(path: str, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            return False
        try:
            if os.fstat(fd).st_size < len(data):
                return False
            os.write(fd, data)
            os.ftruncate(fd, len(data))
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    # --- events in ----------------------------------------------------------------------------

    def _on_events(self, batch: Sequence[FSEvent]) -> None:
        accepted = [(e.path, e.event) for e in batch if not routing.is_ignored(self.config, e.path)]
        if accepted:
            self.pipeline.put_many(accepted)
            log.debug("Queued %d event(s)", len(accepted))
            self._wake.set()

    def _server_state_changed(self) -> None:
        self._servers_changed.set()
        self._wake.set()
        self.events.servers_changed({name: pool.paused_reason for name, pool in self.pools.items()})

    def wake(self) -> None:
        """Look at the queue now: another process (verify --requeue, reconcile) queued rows."""
        self._wake.set()

    # --- dispatcher -----------------------------------------------------------------------------

    def _wait_for_startup_scan(self) -> None:
        """Hold dispatching until the monitor has delivered its start-up comparison (bounded: a
        tree under constant churn may never look idle)."""
        started = time.monotonic()
        while self.monitor is not None and not self.monitor.is_idle and not self._stopping.is_set():
            if time.monotonic() - started > STARTUP_SCAN_WAIT:
                log.warning("The start-up scan is still running after %.0f s; dispatching anyway", STARTUP_SCAN_WAIT)
                return
            self._stopping.wait(0.05)
        log.info("Start-up scan delivered after %.2f s; dispatching", time.monotonic() - started)
        self.metrics.startup_scan_seconds.set(time.monotonic() - started)

    def _dispatch_loop(self) -> None:
        s = self.settings
        self._wait_for_startup_scan()
        while not self._stopping.is_set():
            self._wake.clear()
            now = time.time()
            if self._servers_changed.is_set():
                self._servers_changed.clear()
                for name, pool in self.pools.items():
                    if pool.paused_reason is None:
                        unblocked = self.pipeline.unblock(name)
                        if unblocked:
                            log.info("%d file(s) that waited for server %r go on", unblocked, name)
            self.pipeline.requeue_due(now)
            self._delete_due_sources(now)
            self._expire_old_versions(now)
            with self._trips_lock:
                capacity = s.MAX_FILES_IN_PIPELINE - len(self._trips)
                busy = set(self._trips)
            items = self.pipeline.claim(capacity, busy) if capacity > 0 else []
            intents: list[tuple[str, str, str]] = []
            tasks: list[tuple[str, TransportTask]] = []
            for item in items:
                self._begin(item).start(intents, tasks)
            self.start_uploads(intents, tasks)
            if items and len(items) == capacity:
                continue  # more may be waiting; loop again without sleeping
            self._wake.wait(self._sleep_time())

    def _begin(self, item: Item) -> Trip:
        trip = Trip(self, item)
        with self._trips_lock:
            self._trips[item.input_file] = trip
        return trip

    def _sleep_time(self) -> float:
        now = time.time()
        candidates = [30.0]  # also picks up rows queued by other processes (verify --requeue)
        for due in (self.pipeline.next_retry_time(), self.pipeline.next_deletion_time(),
                    old_versions_summary(self.synced)[1]):
            if due is not None:
                candidates.append(max(0.05, due - now))
        return min(candidates)

    # --- services used by trips ----------------------------------------------------------------

    def unsyncable_reason(self, path: str) -> str | None:
        """Why `path` is not synced, or None: it is not a regular file (a FIFO, a device, gone),
        or it is a symlink (or lies below one) that leads out of its source tree, unless
        SYNC_UNSAFE_SYMLINKS allows that (rsync's "safe links")."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None  # vanished: the trip says so, and the DELETED event follows
        except OSError as error:
            return f"cannot stat it: {error.strerror}"
        if not stat.S_ISREG(info.st_mode):
            return f"it is {kind_of(info.st_mode)}, not a regular file"
        if not self.settings.SYNC_UNSAFE_SYMLINKS:
            for source in routing.sources_containing(self.config, path):
                reason = unsafe_link_reason(path, source.scan_path)
                if reason is not None:
                    return reason
        return None

    def will_be_synced(self, path: str, server: str | None) -> bool:
        for rule in routing.matching_rules(self.config, path, is_deleted=True):
            if server is None or any(d.server == server for d in rule.destinations):
                return True
        return False

    def run_processor(self, body: Callable[[], None]) -> None:
        assert self._processors is not None
        self._processors.submit(body)

    def start_uploads(self, intents: list[tuple[str, str, str]], tasks: list[tuple[str, TransportTask]]) -> None:
        """Make upload intents durable (one transaction for a batch), then start the uploads.

        If the intents cannot be written, no upload starts and each task ends with that error
        (its trip fails and is retried): an upload is never made that a crash could orphan."""
        try:
            self.pipeline.add_pending_uploads(intents)
        except Exception as error:  # noqa: BLE001 - these files fail; the daemon goes on
            log.error("Cannot record %d upload intent(s) in %s: %s", len(intents),
                      self.settings.PERSISTENT_DATA_DB, error)
            for _server, task in tasks:
                task.on_done(None, RetryableError(f"cannot record the upload intent: {error}"))
            return
        for server, task in tasks:
            self.pools[server].submit(task)

    def record(self, trip: Trip, planned: PlannedUpload, url: str) -> None:
        planned.url = url
        self._records.put(_Record(trip, planned))

    def complete(self, trip: Trip) -> None:
        """The end of a path's trip (called exactly once per trip, by Trip._complete). A successful
        one is completed with its batch by the completer; `trip_ended` follows in every case."""
        if trip.work_dirs:
            self._cleanup.put(trip.work_dirs)
        try:
            trip.finish_records()
            if trip.expiry_only:
                self._finish_expiry(trip)
            elif not trip.failures:
                self._completions.put(trip)
                return
            else:
                self._fail(trip)
        except Exception:  # noqa: BLE001 - the path stays in pipeline_list and is resumed at restart
            log.error("Cannot complete the trip of %s; it is resumed at the next start", trip.path, exc_info=True)
        self.trip_ended(trip)

    def _finish_expiry(self, trip: Trip) -> None:
        """Old versions that could not be deleted now are tried again later (they stay marked)."""
        failed = [(trip.path, server, remote) for server, remote in trip.expiry_copies
                  if (server, remote) not in set(trip.deleted)]
        if failed:
            retry_at = time.time() + max(self.settings.RETRY_INTERVAL, 1.0)
            postpone_old_versions(self.synced, failed, retry_at)
            log.warning("Could not delete %d old version(s) of %s; trying again at %s", len(failed), trip.path,
                        time.strftime("%H:%M:%S", time.localtime(retry_at)))

    def _expire_old_versions(self, now: float) -> None:
        """Delete old versions whose grace period is over, one expiry trip per path (never while
        the path itself is in flight or waiting: its own trip deletes them then)."""
        due: dict[str, list[tuple[str, str]]] = {}
        for path, server, remote in due_old_versions(self.synced, now):
            if server in self.pools:
                due.setdefault(path, []).append((server, remote))
        for path, copies in due.items():
            with self._trips_lock:
                if path in self._trips:
                    continue
            if self.pipeline.has_pending_event(path):
                continue
            trip = self._begin(Item(path, Event.MODIFIED))
            trip.expiry_copies = copies
            trip.start_expiry(copies)

    def _completion_loop(self) -> None:
        """Complete successful trips in batches: whatever finished while the last commit ran."""
        while True:
            first = self._completions.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < RECORD_BATCH:
                try:
                    trip = self._completions.get_nowait()
                except queue.Empty:
                    break
                if trip is None:
                    stop = True
                    break
                batch.append(trip)
            try:
                self.pipeline.complete_many([trip.path for trip in batch])
                self.metrics.completed(len(batch))
                for trip in batch:
                    self._schedule_source_deletion(trip)
            finally:
                for trip in batch:
                    self.trip_ended(trip)
            if stop:
                return

    def _fail(self, trip: Trip) -> None:
        s = self.settings
        server = trip.paused_server()
        if server is not None:
            if self.pipeline.block(trip.item, server, trip.done):
                log.info("%s waits for server %r, which is paused", trip.path, server)
                if self.pools[server].paused_reason is None:  # it came back meanwhile
                    self._server_state_changed()
            return
        kind, reason, delay = trip.failure_summary(s.RETRY_INTERVAL, s.RETRY_MAX_INTERVAL)
        failed = self.pipeline.fail(trip.item, kind, reason, delay, trip.done)
        if failed is None:
            return
        if kind == "waiting":
            log.info("%s waits for files it references (%s); next try in %.0f s at the latest", trip.path, reason, delay)
        else:
            log.warning("Sync of %s failed (attempt %d, %s): %s; next try in %.0f s",
                        trip.path, failed.attempts, kind, reason, delay)
            self.events.file_failed(trip.path, kind, reason, failed.attempts)

    def trip_ended(self, trip: Trip) -> None:
        with self._trips_lock:
            if self._trips.get(trip.path) is trip:  # never a newer trip of the same path
                del self._trips[trip.path]
        self._wake.set()

    # --- the recorder ------------------------------------------------------------------------------

    def _cleanup_loop(self) -> None:
        while True:
            work_dirs = self._cleanup.get()
            if work_dirs is None:
                return
            for work_dir in work_dirs:
                shutil.rmtree(work_dir, ignore_errors=True)

    def _record_loop(self) -> None:
        """Write synced_files.db in batches: whatever finished while the last commit's fsync ran
        goes into the next transaction. An upload's unit settles only after its row is durable."""
        while True:
            first = self._records.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < RECORD_BATCH:
                try:
                    record = self._records.get_nowait()
                except queue.Empty:
                    break
                if record is None:
                    stop = True
                    break
                batch.append(record)
            self._record_batch(batch)
            if stop:
                return

    def _record_batch(self, batch: list[_Record]) -> None:
        uploads = []
        for record in batch:
            planned = record.planned
            assert planned.url is not None
            dependents = tuple(self.pipeline.dependents_of(record.trip.path, planned.server))
            content = planned.content
            uploads.append(Upload(record.trip.path, planned.server, planned.remote, planned.basename,
                                  planned.url, planned.primary, dependents,
                                  size=content.size if content else None, md5=content.md5 if content else None))
        try:
            record_uploads(self.synced, uploads)
            self.pipeline.clear_pending_uploads([(u.input_file, u.server, u.remote_path) for u in uploads])
        except Exception as error:  # noqa: BLE001 - the files fail and are retried; the daemon goes on
            log.error("Cannot record %d upload(s) in %s: %s", len(batch), self.settings.SYNCED_FILES_DB, error)
            for record in batch:
                record.trip.record_failed(record.planned, error)
            return
        for record in batch:
            record.trip.recorded(record.planned)
        if any(u.dependents for u in uploads):
            self.queue_follow_ups()

    def queue_follow_ups(self) -> None:
        """Queue the files whose embedded URLs changed (written beside the row that changed them)."""
        while True:
            requeue = pending_requeues(self.synced)
            if not requeue:
                return
            log.info("Queueing %d file(s) that embed a URL that changed", len(requeue))
            self.pipeline.put_many((path, Event.MODIFIED) for path in requeue)
            clear_requeues(self.synced, requeue)
            self._wake.set()

    # --- source deletion after sync -----------------------------------------------------------------

    def _schedule_source_deletion(self, trip: Trip) -> None:
        """fileDeletionDelayAfterSync, per rule: the source goes only if every rule that matched it
        asks for deletion, after the longest of their delays (a rule without the attribute keeps
        its files), and only while it is still the content that was synced."""
        if trip.item.event is Event.DELETED or not trip.rules or trip.identity is None:
            return
        delays = [rule.deletion_delay for rule in trip.rules]
        if any(d is None for d in delays):
            return
        if not trip.still_the_synced_content():
            log.info("%s changed while it was synced; its deletion waits for the sync of the new version", trip.path)
            return
        self.pipeline.schedule_deletion(trip.path, time.time() + max(d for d in delays if d is not None),
                                        trip.identity)
        self._wake.set()

    def _delete_due_sources(self, now: float) -> None:
        retry_at = now + max(self.settings.RETRY_INTERVAL, 1.0)
        for path, synced in self.pipeline.due_deletions_with_identity(now):
            with self._trips_lock:
                if path in self._trips:
                    continue  # a newer version is being synced; its completion decides
            if self.pipeline.has_pending_event(path):
                # A newer version waits (queued or failed): its sync will schedule it again.
                self.pipeline.forget_deletion(path)
                continue
            try:
                current = SourceIdentity.of(os.stat(path))
            except FileNotFoundError:
                self.pipeline.mark_deleted_by_us(path)
                continue
            except OSError as error:
                log.error("Cannot check source file %s before deleting it: %s; trying again later", path, error)
                self.pipeline.reschedule_deletion(path, retry_at)
                continue
            if synced is not None and current != synced:
                log.info("Not deleting %s: it is not the version that was synced", path)
                self.pipeline.forget_deletion(path)
                continue
            self.pipeline.mark_deleted_by_us(path)
            try:
                os.unlink(path)
                log.info("Deleted source file %s (fileDeletionDelayAfterSync)", path)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.error("Cannot delete source file %s: %s; trying again later", path, error)
                self.pipeline.reschedule_deletion(path, retry_at)

    def _recover_source_deletions(self) -> None:
        """A source marked as deleted by us that still exists: the daemon died between the mark and
        the unlink. Its deletion is due again (with every check made again)."""
        now = time.time()
        for path in self.pipeline.deleted_by_us():
            if os.path.lexists(path):
                self.pipeline.reschedule_deletion(path, now)
