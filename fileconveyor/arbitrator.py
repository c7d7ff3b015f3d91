"""The arbitrator wires monitor -> pipeline -> processors -> transporters -> synced files.

Threads and who wakes them (an idle daemon uses no CPU: every thread blocks on a condition):
* the monitor's thread(s) call `_on_events`, which commits the batch to `pipeline_queue` and wakes
  the dispatcher; only then does the monitor update its index (see fsmonitor/base.py);
* the dispatcher claims up to MAX_FILES_IN_PIPELINE paths (never one path twice), plans each into
  processing units and transport tasks, requeues due retries and runs due source deletions. It
  sleeps until woken or until the next retry or deletion is due;
* a pool of MAX_SIMULTANEOUS_PROCESSORCHAINS threads runs processor chains, each in a private
  working directory that is removed when the file is done;
* per server, a TransporterPool (pipeline/workers.py).

One path's trip is a `Job`: it counts its outstanding units; the last one to finish decides
whether the path is complete (removed from `pipeline_list`) or failed (to `failed_files_list`,
with the reason and the next try). Errors inside a job fail that file only; an exception that
escapes a thread's loop is a crash, reported through `on_crash` so the daemon can restart.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import functools
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
import uuid
from typing import Sequence

from fileconveyor.config import Config, Rule
from fileconveyor.settings import Settings
from fileconveyor.fsmonitor import Event, FSEvent, Monitor
from fileconveyor.fsmonitor import get_monitor
from fileconveyor.pipeline.queue import Item, PersistentPipeline, retry_delay
from fileconveyor.pipeline.synced_files import SyncedFile, SyncedFiles
from fileconveyor.pipeline.workers import TransportTask, TransporterPool
from fileconveyor.processors.base import (
    ProcessorChain,
    ProcessorContext,
    ProcessorError,
    WaitForFiles,
    resolve_processor,
)
from fileconveyor import routing
from fileconveyor.transporters.base import (
    TransporterContext,
    TransporterError,
    resolve_transporter,
)

log = logging.getLogger(__name__)

#: Severity order of failure kinds: the worst one decides how long a failed file waits.
_KIND_ORDER = ("waiting", "retryable", "permanent", "configuration")
WORK_DIR_PREFIX = "run-"
#: errnos of local file operations that no retry can fix (a retry waits RETRY_MAX_INTERVAL).
_PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR}


@dataclasses.dataclass
class _Failure:
    kind: str
    reason: str


@dataclasses.dataclass
class _Record:
    """A change to synced_files.db waiting for the recorder's next batch."""

    action: str  # "record" or "remove"
    job: "Job"
    server: str
    remote: str
    basename: str | None = None
    url: str | None = None
    done_key: str | None = None


RECORD_BATCH = 500


@dataclasses.dataclass
class _Uploads:
    """Uploads planned but not started: their intents are written together before any starts."""

    intents: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    tasks: list[tuple[str, TransportTask]] = dataclasses.field(default_factory=list)

#: Seconds dispatching waits at start-up for the monitor's comparison of the trees with its index.
STARTUP_SCAN_WAIT = 120.0


def runtime_status_path(settings: Settings) -> str:
    """Beside persistent_data.db: the running daemon's view of its servers and monitor."""
    return os.path.join(os.path.dirname(os.path.abspath(settings.PERSISTENT_DATA_DB)), "fileconveyor.status.json")


class Job:
    """One in-flight path: counts outstanding units and finishes exactly once."""

    def __init__(self, arbitrator: "Arbitrator", item: Item) -> None:
        self.arbitrator = arbitrator
        self.item = item
        self.path = item.input_file
        self._lock = threading.Lock()
        self._pending = 1  # the planning phase itself
        self.failures: list[_Failure] = []
        self.done: set[str] = set(item.done)
        self.work_dirs: list[str] = []
        self.rules: list[Rule] = []
        self.synced_any = False

    def add_pending(self, count: int = 1) -> None:
        with self._lock:
            self._pending += count

    def finish_unit(self, failure: _Failure | None = None, done_key: str | None = None) -> None:
        with self._lock:
            if failure is not None:
                self.failures.append(failure)
            elif done_key is not None:
                self.done.add(done_key)
            self._pending -= 1
            last = self._pending == 0
        if last:
            self.arbitrator._finish(self)


class Arbitrator:
    def __init__(self, config: Config, on_crash=None) -> None:
        self.config = config
        self.settings = config.settings
        self._on_crash_callback = on_crash
        self.crashed = threading.Event()
        self.crash_error: BaseException | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self.pipeline: PersistentPipeline | None = None
        self.synced: SyncedFiles | None = None
        self.monitor: Monitor | None = None
        self.pools: dict[str, TransporterPool] = {}
        self.chains: dict[str, ProcessorChain] = {}
        self._dispatcher: threading.Thread | None = None
        self._records: queue.Queue[_Record | None] = queue.Queue()
        self._recorder: threading.Thread | None = None
        #: Working directories of finished files, removed off the hot threads.
        self._cleanup: queue.Queue[list[str] | None] = queue.Queue()
        self._cleaner: threading.Thread | None = None
        self._last_status = ""
        self._processors: concurrent.futures.ThreadPoolExecutor | None = None

    # --- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self.pipeline = PersistentPipeline(s.PERSISTENT_DATA_DB)
        self.synced = SyncedFiles(s.SYNCED_FILES_DB)
        recovered = self.pipeline.recover_in_flight()
        if recovered:
            log.warning("Recovered %d file(s) that were in flight when File Conveyor last stopped", recovered)
        self._prepare_working_dir()
        for rule in self.config.rules:
            chain = ProcessorChain([resolve_processor(name) for name in rule.processors])
            for cls in chain.processor_classes:
                cls.check_available()
            self.chains[rule.key] = chain
        slots = threading.BoundedSemaphore(s.MAX_SIMULTANEOUS_TRANSPORTERS)
        roots = tuple(src.scan_path for src in self.config.sources.values())
        state_dir = os.path.join(os.path.dirname(os.path.abspath(s.PERSISTENT_DATA_DB)), "transporter_state")
        for server in self.config.servers.values():
            transporter_class = resolve_transporter(server.transporter)
            context = TransporterContext(server_name=server.name, state_dir=state_dir, source_roots=roots)
            limit = min(server.max_connections or s.MAX_SIMULTANEOUS_TRANSPORTERS, s.MAX_SIMULTANEOUS_TRANSPORTERS)
            self.pools[server.name] = TransporterPool(
                server.name, functools.partial(transporter_class, server.settings, context),
                limit, slots, self._crash, on_state_change=self._wake.set)
        self._processors = concurrent.futures.ThreadPoolExecutor(
            max_workers=s.MAX_SIMULTANEOUS_PROCESSORCHAINS, thread_name_prefix="processor")
        self._recorder = threading.Thread(target=self._guarded, args=(self._record_loop,),
                                          name="recorder", daemon=True)
        self._recorder.start()
        self._cleaner = threading.Thread(target=self._guarded, args=(self._cleanup_loop,),
                                         name="cleaner", daemon=True)
        self._cleaner.start()
        # The monitor first: its start-up comparison must queue what changed while the daemon was
        # down before anything is dispatched, or a file recovered from pipeline_list could be
        # uploaded, then uploaded again for the MODIFIED event the comparison finds for it.
        self.monitor = get_monitor(s.FSMONITOR_BACKEND, self._on_events, s.FSMONITOR_DB,
                                   self.config.ignored_dirs, on_crash=self._crash,
                                   poll_interval=s.POLL_INTERVAL)
        self.monitor.start()
        for source in self.config.sources.values():
            self.monitor.add_tree(source.scan_path)
        self._dispatcher = threading.Thread(target=self._guarded, args=(self._dispatch_loop,),
                                            name="dispatcher", daemon=True)
        self._dispatcher.start()
        log.info("File Conveyor is up: %d source(s), %d server(s), %d rule(s); monitor: %s",
                 len(self.config.sources), len(self.config.servers), len(self.config.rules), self.monitor.name)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work, give running transfers `timeout` seconds, flush and close.

        Transfers that have not started are not begun; they, and any still running after the
        timeout, stay in `pipeline_list` and are resumed at the next start: nothing is lost."""
        timeout = self.settings.SHUTDOWN_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + timeout
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
        image_optimizer = sys.modules.get("fileconveyor.processors.image_optimizer")
        if image_optimizer is not None:
            image_optimizer.shutdown_workers()
        if self._recorder is not None:
            self._records.put(None)  # flush what finished transfers reported, then stop
            self._recorder.join(max(1.0, deadline - time.monotonic()))
        if self._cleaner is not None:
            self._cleanup.put(None)
            self._cleaner.join(max(1.0, deadline - time.monotonic()))
        with self._jobs_lock:
            left = len(self._jobs)
            self._jobs.clear()
        if left:
            log.warning("%d file(s) still in flight at shutdown; they will be resumed at the next start", left)
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

    def _guarded(self, body) -> None:
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
        assert self.pipeline is not None
        with self._jobs_lock:
            if self._jobs:
                return False
        counts = self.pipeline.counts()
        return counts["waiting"] == 0 and counts["in_flight"] == 0 and (self.monitor is None or self.monitor.is_idle)

    # --- events in ----------------------------------------------------------------------------

    def _on_events(self, batch: Sequence[FSEvent]) -> None:
        assert self.pipeline is not None
        accepted = [(e.path, e.event) for e in batch if not routing.is_ignored(self.config, e.path)]
        if accepted:
            self.pipeline.put_many(accepted)
            log.debug("Queued %d event(s)", len(accepted))
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

    def _dispatch_loop(self) -> None:
        assert self.pipeline is not None
        s = self.settings
        self._wait_for_startup_scan()
        while not self._stopping.is_set():
            self._wake.clear()
            self._write_runtime_status()
            now = time.time()
            self.pipeline.requeue_due(now)
            self._delete_due_sources(now)
            with self._jobs_lock:
                capacity = s.MAX_FILES_IN_PIPELINE - len(self._jobs)
            items = self.pipeline.claim(capacity) if capacity > 0 else []
            uploads = _Uploads()
            for item in items:
                job = Job(self, item)
                with self._jobs_lock:
                    self._jobs[item.input_file] = job
                try:
                    self._plan(job, uploads)
                except Exception as error:  # noqa: BLE001 - one file's problem, not the daemon's
                    log.error("Cannot plan %r", item.input_file, exc_info=True)
                    job.failures.append(_Failure("retryable", f"unexpected {type(error).__name__}: {error}"))
                job.finish_unit()
            self._start_uploads(uploads)
            if items and len(items) == capacity:
                continue  # more may be waiting; loop again without sleeping
            self._wake.wait(self._sleep_time())

    def runtime_status(self) -> dict[str, object]:
        """What only the running daemon knows: paused servers, the monitor's state."""
        monitor = self.monitor
        return {
            "pid": os.getpid(),
            "monitor": monitor.name if monitor is not None else None,
            "polled_trees": sorted(getattr(monitor, "polled_trees", {}) or {}),
            "overflows": getattr(monitor, "overflows", 0),
            "servers": {name: {"paused": pool.paused_reason, "busy": pool.busy, "queued": pool.queued}
                        for name, pool in self.pools.items()},
        }

    def _write_runtime_status(self) -> None:
        """Publish runtime_status() for `fileconveyor status` (written only when it changed)."""
        status = self.runtime_status()
        summary = json.dumps({k: v for k, v in status.items() if k != "servers"} |
                             {"paused": {n: s["paused"] for n, s in status["servers"].items()}},  # type: ignore[attr-defined]
                             sort_keys=True)
        if summary == self._last_status:
            return
        self._last_status = summary
        path = runtime_status_path(self.settings)
        temporary = f"{path}.tmp"
        fd = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(status, handle, indent=1, sort_keys=True)
        os.replace(temporary, path)

    def _sleep_time(self) -> float:
        assert self.pipeline is not None
        now = time.time()
        candidates = [30.0]  # also picks up rows queued by other processes (verify --requeue)
        for due in (self.pipeline.next_retry_time(), self.pipeline.next_deletion_time()):
            if due is not None:
                candidates.append(max(0.05, due - now))
        return min(candidates)

    def _delete_due_sources(self, now: float) -> None:
        assert self.pipeline is not None
        for path in self.pipeline.due_deletions(now):
            with self._jobs_lock:
                if path in self._jobs:
                    continue  # a newer version is being synced; try again after it
            try:
                os.unlink(path)
                log.info("Deleted source file %s (fileDeletionDelayAfterSync)", path)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.error("Cannot delete source file %s: %s", path, error)
                continue
            self.pipeline.mark_deleted_by_us(path)

    # --- planning one path -------------------------------------------------------------------------

    def _plan(self, job: Job, uploads: "_Uploads") -> None:
        assert self.pipeline is not None and self.synced is not None
        path, event = job.path, job.item.event
        if event is Event.DELETED:
            self._plan_deletion(job)
            return
        if not os.path.isfile(path):
            log.debug("%s vanished before it could be synced; its deletion event follows", path)
            return
        if self.pipeline.deletion_state(path) == "deleted":
            self.pipeline.forget_deletion(path)  # the file came back after we deleted it
        job.rules = routing.matching_rules(self.config, path, is_deleted=False)
        if not job.rules:
            log.debug("No rule matches %s", path)
            return
        seen: set[tuple[str, str]] = set()
        for rule in job.rules:
            chain = self.chains[rule.key]
            destinations = [d for d in rule.destinations if f"{rule.key}|{d.server}" not in job.done]
            if not destinations:
                continue
            if not chain.processor_classes:
                self._send(job, rule, destinations, path, seen, uploads)
            elif chain.depends_on_server(path):
                for destination in destinations:
                    self._process(job, rule, chain, [destination], destination.server, seen)
            else:
                self._process(job, rule, chain, destinations, None, seen)

    def _process(self, job: Job, rule: Rule, chain: ProcessorChain, destinations, server, seen) -> None:
        assert self._processors is not None and self.synced is not None
        source = self.config.sources[rule.source]
        work_dir = os.path.join(self.settings.WORKING_DIR, f"{WORK_DIR_PREFIX}{uuid.uuid4().hex}")
        job.work_dirs.append(work_dir)
        synced = self.synced
        context = ProcessorContext(
            original_file=job.path, document_root=source.document_root, base_path=source.base_path,
            server=server, working_dir=work_dir,
            synced_url=functools.partial(synced.url, server=server),
            will_be_synced=functools.partial(self._will_be_synced, server=server))
        job.add_pending()

        def run() -> None:
            try:
                os.makedirs(work_dir, mode=0o700)
                output = chain.run(context)
            except WaitForFiles as wait:
                for destination in destinations:
                    self.pipeline.set_dependencies(job.path, destination.server, wait.paths)  # type: ignore[union-attr]
                job.finish_unit(_Failure("waiting", f"{rule.key}: {wait}"))
                return
            except (ProcessorError, OSError) as error:
                kind = ("permanent" if isinstance(error, OSError) and error.errno in _PERMANENT_ERRNOS
                        else "retryable")
                log.warning("Processing %s for rule %r failed (%s): %s", job.path, rule.key, kind, error)
                job.finish_unit(_Failure(kind, f"{rule.key}: processing failed: {error}"))
                return
            except Exception as error:  # noqa: BLE001 - a bug in a processor fails this file only
                log.error("Processor chain of rule %r crashed on %s", rule.key, job.path, exc_info=True)
                job.finish_unit(_Failure("retryable", f"{rule.key}: unexpected {type(error).__name__}: {error}"))
                return
            for destination in destinations:
                self.pipeline.set_dependencies(job.path, destination.server, context.dependencies)  # type: ignore[union-attr]
            try:
                uploads = _Uploads()
                self._send(job, rule, destinations, output, seen, uploads)
                self._start_uploads(uploads)
            finally:
                job.finish_unit()

        self._processors.submit(self._guarded_unit, job, run)

    def _will_be_synced(self, path: str, server: str | None) -> bool:
        for rule in routing.matching_rules(self.config, path, is_deleted=True):
            if server is None or any(d.server == server for d in rule.destinations):
                return True
        return False

    def _guarded_unit(self, job: Job, body) -> None:
        try:
            body()
        except BaseException as error:  # noqa: BLE001
            log.critical("Unexpected error while syncing %s", job.path, exc_info=True)
            job.finish_unit(_Failure("retryable", f"unexpected {type(error).__name__}: {error}"))

    def _send(self, job: Job, rule: Rule, destinations, output: str, seen: set[tuple[str, str]],
              uploads: "_Uploads") -> None:
        """Add `output`'s uploads to `uploads`; `_start_uploads` records their intents and starts them."""
        source = self.config.sources[rule.source]
        basename = os.path.basename(output)
        for destination in destinations:
            remote = routing.remote_path(destination, source, job.path, basename)
            key = (destination.server, remote)
            if key in seen:
                continue  # two rules send this file to the same place: upload it once
            seen.add(key)
            done_key = f"{rule.key}|{destination.server}"
            job.add_pending()
            uploads.intents.append((job.path, destination.server, remote))
            uploads.tasks.append((destination.server, TransportTask(
                "upload", remote, output,
                functools.partial(self._uploaded, job, destination.server, remote, basename, done_key))))

    def _start_uploads(self, uploads: "_Uploads") -> None:
        """Make the intents durable (one transaction for a whole dispatch batch), then upload."""
        assert self.pipeline is not None
        self.pipeline.add_pending_uploads(uploads.intents)
        for server, task in uploads.tasks:
            self.pools[server].submit(task)

    def _uploaded(self, job: Job, server: str, remote: str, basename: str, done_key: str, url: str | None,
                  error: TransporterError | None) -> None:
        assert self.synced is not None and self.pipeline is not None
        if error is not None:
            log.warning("Upload of %s to %s failed: %s", job.path, server, error)
            job.finish_unit(_Failure(error.kind, f"{server}: {error}"))
            return
        self._records.put(_Record("record", job, server, remote, basename, url, done_key))

    def _cleanup_loop(self) -> None:
        while True:
            work_dirs = self._cleanup.get()
            if work_dirs is None:
                return
            for work_dir in work_dirs:
                shutil.rmtree(work_dir, ignore_errors=True)

    def _record_loop(self) -> None:
        """Write synced_files.db in batches: whatever finished while the last commit's fsync ran
        goes into the next transaction. A file is completed only after its row is durable."""
        assert self.synced is not None
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
            previous = self.synced.apply_many(
                [(r.action, r.job.path, r.server, r.basename, r.url) for r in batch])
            assert self.pipeline is not None
            self.pipeline.clear_pending_uploads([(r.job.path, r.server, r.remote) for r in batch])
            for record, old in zip(batch, previous):
                try:
                    self._recorded(record, old)
                except Exception as error:  # noqa: BLE001 - one file's follow-up, not the daemon
                    log.error("After recording %s on %s", record.job.path, record.server, exc_info=True)
                    record.job.finish_unit(_Failure("retryable", f"unexpected {type(error).__name__}: {error}"))
            if stop:
                return

    def _recorded(self, record: _Record, old: SyncedFile | None) -> None:
        assert self.pipeline is not None
        job, server = record.job, record.server
        if record.action == "remove":
            log.info("Deleted %s from %s (%s)", job.path, server, record.remote)
            job.finish_unit()
            return
        assert record.basename is not None and record.url is not None
        basename, url, remote = record.basename, record.url, record.remote
        log.info("Synced %s to %s: %s", job.path, server, url)
        if old is None or old.url != url:
            dependents = self.pipeline.dependents_of(job.path, server)
            if dependents:
                log.info("Queueing %d file(s) that embed the URL of %s", len(dependents), job.path)
                self.pipeline.put_many((d, Event.MODIFIED) for d in dependents if d != job.path)
                self._wake.set()
        stale = {leftover for leftover_server, leftover in self.pipeline.pending_uploads(job.path)
                 if leftover_server == server and leftover != remote}
        if old is not None and old.transported_file_basename != basename:
            stale.add(remote[: -len(basename)] + old.transported_file_basename)
        for old_remote in sorted(stale):
            job.add_pending()
            self.pools[server].submit(TransportTask(
                "delete", old_remote, None,
                functools.partial(self._old_deleted, job, server, old_remote)))
        job.finish_unit(done_key=record.done_key)

    def _old_deleted(self, job: Job, server: str, remote: str, _url: str | None,
                     error: TransporterError | None) -> None:
        if error is not None:
            # The new file is recorded; retrying the whole file would not retry this deletion, so
            # it is reported instead of failing the file.
            log.warning("Could not delete the old copy %r on %s (now orphaned): %s", remote, server, error)
        else:
            log.info("Deleted old copy %r on %s", remote, server)
            assert self.pipeline is not None
            self.pipeline.clear_pending_uploads([(job.path, server, remote)])
        job.finish_unit()

    def _plan_deletion(self, job: Job) -> None:
        assert self.synced is not None and self.pipeline is not None
        path = job.path
        state = self.pipeline.deletion_state(path)
        if state == "deleted":
            self.pipeline.forget_deletion(path)
            log.info("%s was deleted by File Conveyor after its sync; the deletion is not propagated", path)
            return
        if state == "scheduled":
            self.pipeline.forget_deletion(path)
        self.pipeline.forget_dependent(path)
        targets: dict[str, set[str]] = {}
        for row in self.synced.for_file(path):
            if row.server not in self.pools:
                log.warning("%s was synced to server %r, which is no longer configured; its row is kept",
                            path, row.server)
                continue
            remotes = routing.remote_paths_on_server(self.config, path, row.server, row.transported_file_basename)
            if not remotes:
                log.warning("Cannot tell where %s sits on %r (no rule sends it there any more); "
                            "forgetting its row", path, row.server)
                self.synced.remove(path, row.server)
                continue
            targets.setdefault(row.server, set()).update(remotes)
        # Uploads that were started but never recorded (a crash in between) may have landed too.
        for server, remote in self.pipeline.pending_uploads(path):
            if server in self.pools:
                targets.setdefault(server, set()).add(remote)
        for server, server_remotes in sorted(targets.items()):
            for remote in sorted(server_remotes):
                job.add_pending()
                self.pools[server].submit(TransportTask(
                    "delete", remote, None,
                    functools.partial(self._deleted, job, server, remote)))

    def _deleted(self, job: Job, server: str, remote: str, _url: str | None,
                 error: TransporterError | None) -> None:
        assert self.synced is not None
        if error is not None:
            log.warning("Deletion of %r on %s failed: %s", remote, server, error)
            job.finish_unit(_Failure(error.kind, f"{server}: delete failed: {error}"))
            return
        self._records.put(_Record("remove", job, server, remote))

    # --- the end of a path's trip ---------------------------------------------------------------

    def _finish(self, job: Job) -> None:
        assert self.pipeline is not None
        s = self.settings
        if job.work_dirs:
            self._cleanup.put(job.work_dirs)
        try:
            if not job.failures:
                self.pipeline.complete(job.path)
                self._schedule_source_deletion(job)
            else:
                kind = max((f.kind for f in job.failures), key=_KIND_ORDER.index)
                reason = "; ".join(f.reason for f in job.failures)[:2000]
                attempts = job.item.attempts + 1
                if kind in ("permanent", "configuration"):
                    delay = s.RETRY_MAX_INTERVAL
                else:
                    delay = retry_delay(attempts, s.RETRY_INTERVAL, s.RETRY_MAX_INTERVAL)
                failed = self.pipeline.fail(job.item, kind, reason, delay, job.done)
                if failed is not None and kind == "waiting":
                    log.info("%s waits for files it references (%s); next try in %.0f s at the latest",
                             job.path, reason, delay)
                elif failed is not None:
                    log.warning("Sync of %s failed (attempt %d, %s): %s; next try in %.0f s",
                                job.path, attempts, kind, reason, delay)
        finally:
            with self._jobs_lock:
                self._jobs.pop(job.path, None)
            self._wake.set()

    def _schedule_source_deletion(self, job: Job) -> None:
        """fileDeletionDelayAfterSync, per rule: the source goes only if every rule that matched it
        asks for deletion, after the longest of their delays (a rule without the attribute keeps
        its files)."""
        assert self.pipeline is not None
        if job.item.event is Event.DELETED or not job.rules:
            return
        delays = [rule.deletion_delay for rule in job.rules]
        if any(d is None for d in delays):
            return
        self.pipeline.schedule_deletion(job.path, time.time() + max(d for d in delays if d is not None))
        self._wake.set()

