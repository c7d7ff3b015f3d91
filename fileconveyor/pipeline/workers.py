"""Transporter pools: per server, worker threads each owning one transporter (one connection).

* Workers are started lazily, up to the server's `maxConnections` (0: no per-server limit), and
  every transfer also holds one slot of a global semaphore of MAX_SIMULTANEOUS_TRANSPORTERS, which
  is released after each file (the original's global counter was never decremented: #145).
* Idle workers block on a condition: an idle daemon uses no CPU.
* A `ServerUnavailableError` or `ConfigurationError` pauses the server's pool, and a probe thread
  checks the server with backoff (capped at PROBE_MAX_DELAY, so transfers resume within a few
  seconds of the server's return without a busy loop while it is down). Tasks for a paused server
  do not wait in memory: they end at once with `ServerPausedError`, so the files they belong to
  leave the pipeline (to the failed list, kind "paused") and files bound for healthy servers keep
  flowing; `on_state_change` tells the arbitrator when the server is back, which queues them again.
* A task whose error pauses the server, retried right after a successful probe and failing the same
  way again, is not the server's problem but this file's (an ACL or storage class the endpoint
  refuses for one key, say): it fails as that file's error instead of pausing the pool again.
* Any other classified error fails only that task; the pipeline retries the file with backoff.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable

from fileconveyor.transporters.base import (
    ConfigurationError,
    ObjectOptions,
    RetryableError,
    ServerUnavailableError,
    Transporter,
    TransporterError,
)

log = logging.getLogger(__name__)

PROBE_FIRST_DELAY = 0.5
PROBE_MAX_DELAY = 4.0


class ServerPausedError(TransporterError):
    """The task was not tried: its server is paused (the reason is in the message)."""

    kind = "paused"


@dataclasses.dataclass
class TransportTask:
    action: str  # "upload" or "delete"
    remote_path: str
    local_path: str | None
    #: Called exactly once from a worker thread: (url or None, error or None).
    on_done: Callable[["str | None", "TransporterError | None"], None]
    #: What the uploaded object carries beyond its bytes (its destination's ACL and headers, the
    #: Content-Encoding of a pre-compressed copy); None: the server's settings.
    options: ObjectOptions | None = None


class TransporterPool:
    def __init__(self, server: str, factory: Callable[[], Transporter], max_connections: int,
                 global_slots: threading.BoundedSemaphore, on_crash: Callable[[BaseException], None],
                 on_state_change: Callable[[], None] = lambda: None,
                 on_timed: Callable[[str, str, float], None] = lambda server, action, seconds: None) -> None:
        self.server = server
        #: Told (server, action, seconds) after every transfer attempt: the metrics' histogram.
        self._on_timed = on_timed
        #: Worker thread id -> (its task, when it started): what `status` shows as running now.
        self.running: dict[int, tuple[TransportTask, float]] = {}
        self._factory = factory
        self._limit = max_connections
        self._global_slots = global_slots
        self._on_crash = on_crash
        self._on_state_change = on_state_change
        self._queue: collections.deque[TransportTask] = collections.deque()
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._busy = 0
        self._stopping = False
        self.paused_reason: str | None = None
        self.paused_since: float | None = None
        self._probe_thread: threading.Thread | None = None
        #: Remote path of the task whose error paused the pool, until the first task after the
        #: resume has run: if that same task fails the same way again, it is the file's error.
        self._suspect: str | None = None

    # --- API used by the arbitrator -----------------------------------------------------

    def submit(self, task: TransportTask) -> None:
        with self._cond:
            if self._stopping:
                return  # the item stays in flight and is recovered at the next start
            paused = self.paused_reason
            if paused is None:
                self._queue.append(task)
                if self._idle == 0 and len(self._workers) < self._limit:
                    self._start_worker()
                self._cond.notify()
                return
        task.on_done(None, ServerPausedError(f"server {self.server!r} is paused: {paused}"))

    def sweep_leftovers(self) -> None:
        """In the background, remove what interrupted uploads left on the server (temporary names,
        unfinished multipart uploads) without waiting for the next upload to connect. A server
        that cannot be reached now is swept by its transporters when they (re)connect."""
        def sweep() -> None:
            transporter = None
            try:
                transporter = self._factory()
                transporter.remove_leftovers()
            except Exception as error:  # noqa: BLE001 - best effort; reconnects sweep again
                log.info("Could not sweep leftovers on server %r now (%s); its transporters do when they connect",
                         self.server, error)
            finally:
                if transporter is not None:
                    transporter.close()

        threading.Thread(target=self._guarded, args=(sweep,), name=f"sweep-{self.server}", daemon=True).start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return self._busy

    def stop(self, timeout: float) -> None:
        """Stop taking work; wait up to `timeout` for transfers in progress to finish."""
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for worker in list(self._workers) + ([self._probe_thread] if self._probe_thread else []):
            worker.join(max(0.0, deadline - time.monotonic()))

    # --- workers ------------------------------------------------------------------------

    def _start_worker(self) -> None:
        index = len(self._workers) + 1
        worker = threading.Thread(target=self._guarded, args=(self._work,),
                                  name=f"transporter-{self.server}-{index}", daemon=True)
        self._workers.append(worker)
        worker.start()

    def _guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as error:  # noqa: BLE001 - a dying thread is reported, never silent
            log.critical("Thread %s died: %s", threading.current_thread().name, error, exc_info=True)
            self._on_crash(error)

    def _next_task(self) -> TransportTask | None:
        with self._cond:
            self._idle += 1
            try:
                while not self._stopping and (not self._queue or self.paused_reason is not None):
                    self._cond.wait()
                if self._stopping:
                    return None
                self._busy += 1
                return self._queue.popleft()
            finally:
                self._idle -= 1

    def _work(self) -> None:
        transporter: Transporter | None = None
        try:
            while True:
                task = self._next_task()
                if task is None:
                    return
                try:
                    if transporter is None:
                        transporter = self._factory()
                    with self._global_slots:
                        started = time.monotonic()
                        self.running[threading.get_ident()] = (task, time.time())
                        try:
                            transporter = self._run(transporter, task)
                        finally:
                            del self.running[threading.get_ident()]
                        self._on_timed(self.server, task.action, time.monotonic() - started)
                finally:
                    with self._cond:
                        self._busy -= 1
        finally:
            if transporter is not None:
                transporter.close()

    def _run(self, transporter: Transporter, task: TransportTask) -> Transporter:
        """Run one task; returns the transporter to use next (a fresh one after a failure)."""
        try:
            if task.action == "upload":
                assert task.local_path is not None
                url: str | None = transporter.upload_object(task.local_path, task.remote_path, task.options)
            else:
                transporter.delete(task.remote_path)
                url = None
        except (ServerUnavailableError, ConfigurationError) as error:
            transporter.close()
            with self._cond:
                again = self._suspect == task.remote_path
                self._suspect = None
            if again:
                log.warning("%s of %r on %r failed again right after the server answered a probe; "
                            "failing this file instead of pausing the server: %s",
                            task.action, task.remote_path, self.server, error)
                task.on_done(None, error)
                return self._factory()
            self._pause(task, error)
            return self._factory()
        except TransporterError as error:
            if isinstance(error, RetryableError):
                transporter.close()  # reconnect lazily before the next task
            task.on_done(None, error)
            return transporter
        except OSError as error:
            transporter.close()
            task.on_done(None, RetryableError(f"{task.action} of {task.remote_path!r}: {error}"))
            return transporter
        except Exception as error:  # noqa: BLE001 - an unclassified bug in a transporter
            log.error("Unexpected error in transporter for server %r on %r", self.server,
                      task.remote_path, exc_info=True)
            transporter.close()
            task.on_done(None, RetryableError(f"unexpected {type(error).__name__}: {error}"))
            return transporter
        with self._cond:
            if self._suspect == task.remote_path:
                self._suspect = None
        task.on_done(url, None)
        return transporter

    # --- pause and probe ----------------------------------------------------------------

    def _pause(self, task: TransportTask, error: TransporterError) -> None:
        """Pause the pool; this task and every queued one end with ServerPausedError."""
        with self._cond:
            first = self.paused_reason is None
            if first:
                self.paused_reason = str(error)
                self.paused_since = time.time()
                self._suspect = task.remote_path
                log.error("Server %r paused: %s. Its files wait in the failed list; probing it.",
                          self.server, error)
                self._probe_thread = threading.Thread(target=self._guarded, args=(self._probe,),
                                                      name=f"probe-{self.server}", daemon=True)
                self._probe_thread.start()
            drained = [task, *self._queue]
            self._queue.clear()
            reason = self.paused_reason
        for waiting in drained:
            waiting.on_done(None, ServerPausedError(f"server {self.server!r} is paused: {reason}"))
        if first:
            self._on_state_change()

    def _probe(self) -> None:
        delay = PROBE_FIRST_DELAY
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=delay)
                if self._stopping:
                    return
            transporter = None
            try:
                transporter = self._factory()
                transporter.probe()
            except Exception as error:  # noqa: BLE001 - every failure means "still down"
                log.info("Server %r still unavailable (%s); next probe in %.0f s", self.server, error,
                         min(delay * 2, PROBE_MAX_DELAY))
                delay = min(delay * 2, PROBE_MAX_DELAY)
                continue
            finally:
                if transporter is not None:
                    transporter.close()
            with self._cond:
                log.warning("Server %r is reachable again after %.0f s; resuming", self.server,
                            time.time() - (self.paused_since or time.time()))
                self.paused_reason = None
                self.paused_since = None
                self._cond.notify_all()
            self._on_state_change()
            return
