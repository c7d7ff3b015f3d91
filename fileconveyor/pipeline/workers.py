"""Transporter pools: per server, worker threads each owning one transporter (one connection).

* Workers are started lazily, up to the server's `maxConnections` (0: no per-server limit), and
  every transfer also holds one slot of a global semaphore of MAX_SIMULTANEOUS_TRANSPORTERS, which
  is released after each file (the original's global counter was never decremented: #145).
* Idle workers block on a condition: an idle daemon uses no CPU.
* A `ServerUnavailableError` or `ConfigurationError` pauses the server's pool: the task goes back
  to the front of its queue, queued work waits (nothing fails, nothing is lost), and a probe thread
  checks the server with exponential backoff. When a probe succeeds the pool resumes at once.
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
    RetryableError,
    ServerUnavailableError,
    Transporter,
    TransporterError,
)

log = logging.getLogger(__name__)

PROBE_FIRST_DELAY = 1.0
PROBE_MAX_DELAY = 60.0


@dataclasses.dataclass
class TransportTask:
    action: str  # "upload" or "delete"
    remote_path: str
    local_path: str | None
    #: Called exactly once from a worker thread: (url or None, error or None).
    on_done: Callable[["str | None", "TransporterError | None"], None]


class TransporterPool:
    def __init__(self, server: str, factory: Callable[[], Transporter], max_connections: int,
                 global_slots: threading.BoundedSemaphore, on_crash: Callable[[BaseException], None],
                 on_state_change: Callable[[], None] = lambda: None) -> None:
        self.server = server
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
        self._probe_thread: threading.Thread | None = None

    # --- API used by the arbitrator -----------------------------------------------------

    def submit(self, task: TransportTask) -> None:
        with self._cond:
            if self._stopping:
                return  # the item stays in flight and is recovered at the next start
            self._queue.append(task)
            if self._idle == 0 and len(self._workers) < self._limit and self.paused_reason is None:
                self._start_worker()
            self._cond.notify()

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
                        transporter = self._run(transporter, task)
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
                url: str | None = transporter.upload(task.local_path, task.remote_path)
            else:
                transporter.delete(task.remote_path)
                url = None
        except (ServerUnavailableError, ConfigurationError) as error:
            transporter.close()
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
        task.on_done(url, None)
        return transporter

    # --- pause and probe ----------------------------------------------------------------

    def _pause(self, task: TransportTask, error: TransporterError) -> None:
        with self._cond:
            self._queue.appendleft(task)
            if self.paused_reason is not None:
                return
            self.paused_reason = str(error)
            log.error("Server %r paused: %s. Queued files wait; probing it with backoff.", self.server, error)
            self._probe_thread = threading.Thread(target=self._guarded, args=(self._probe,),
                                                  name=f"probe-{self.server}", daemon=True)
            self._probe_thread.start()
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
                log.warning("Server %r is reachable again; resuming %d queued transfer(s)",
                            self.server, len(self._queue))
                self.paused_reason = None
                while len(self._workers) < min(self._limit, len(self._queue)):
                    self._start_worker()
                self._cond.notify_all()
            self._on_state_change()
            return
