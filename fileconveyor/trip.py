"""One path's trip through the conveyor, in one place: plan, process, upload, record, clean up,
complete.

Why it is shaped like this: the work of one path fans out over three kinds of threads (processor
chains, transporter pools, the recorder), and each step finishes in a callback on another thread.
The trip does not count those callbacks by hand (a count decremented twice hangs a path or
reports success with nothing uploaded). Instead every piece of outstanding work is a `_Unit`
object that is opened before the work is handed off and settled exactly once; settling twice is
refused. A unit that hands work on (planning, a processor run) opens its children BEFORE it
settles, so the trip can never look finished early. When the last open unit settles, the trip
moves to its next phase, and `_complete` runs exactly once:

1. transfer: the processor chains run in private work dirs and every destination's pool uploads
   (or, for a DELETED event, deletes) the result; each upload is recorded by the recorder
   (synced_files.db, one transaction per batch) before its unit settles;
2. cleanup (uploads only, when everything succeeded): copies that this trip did not ask for any
   more (a superseded unique-named copy, an upload recorded by nobody after a crash) are deleted.
   They are known from `synced_copies` and `pending_uploads`, which are durable, so a `kill -9`
   or a failed deletion just leaves them for the path's next trip; a failed deletion fails the
   path, which is retried with backoff like any failure and shown by `status`;
3. complete: the path leaves `pipeline_list` (or goes to the failed list with the reason), and a
   `fileDeletionDelayAfterSync` is scheduled with the identity of the content that was synced.

Which copy's URL goes into synced_files when several rules send one file to one server: the copy
of the first such rule in config order (the others are recorded in `synced_copies`, verified and
deleted like it).
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import stat
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable

from fileconveyor import fingerprint, routing
from fileconveyor.config import Destination, Rule
from fileconveyor.fsmonitor import Event
from fileconveyor.fingerprint import Fingerprint
from fileconveyor.localfile import NotRegularFileError, UnsafeLinkError
from fileconveyor.pipeline.queue import PAUSED, Item, SourceIdentity, retry_delay
from fileconveyor.pipeline.synced_files import copies_of, forget_copies, forget_file, recorded_content, copies_with_expiry, expire_copies
from fileconveyor.pipeline.workers import TransportTask
from fileconveyor.processors.base import ProcessorChain, ProcessorContext, ProcessorError, WaitForFiles
from fileconveyor.transporters.base import ObjectOptions, SourceVanishedError, TransporterError

if TYPE_CHECKING:
    from fileconveyor.arbitrator import Arbitrator

log = logging.getLogger(__name__)

#: Severity order of failure kinds: the worst one decides how long a failed file waits.
KIND_ORDER = ("waiting", PAUSED, "vanished", "retryable", "permanent", "configuration")
WORK_DIR_PREFIX = "run-"
#: errnos of local file operations that no retry can fix (a retry waits RETRY_MAX_INTERVAL).
PERMANENT_ERRNOS = {errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR}


@dataclasses.dataclass
class Failure:
    kind: str
    reason: str
    #: For kind PAUSED: the server that is paused.
    server: str | None = None


class _Unit:
    """One piece of outstanding work of a trip; settled exactly once."""

    __slots__ = ("label", "settled")

    def __init__(self, label: str) -> None:
        self.label = label
        self.settled = False

    def __repr__(self) -> str:
        return f"<unit {self.label}>"


@dataclasses.dataclass
class PlannedUpload:
    """One upload of a trip: where it goes, and which rules it stands for."""

    unit: _Unit
    server: str
    remote: str
    basename: str
    local: str
    done_keys: list[str]
    primary: bool
    url: str | None = None
    #: Size and MD5 of `local`, recorded with the copy (verify and reconcile compare listings).
    content: Fingerprint | None = None
    #: The uploads of one output and its siblings to one destination: the destination counts as
    #: done (for a retry) only once all of them are recorded.
    group: "list[PlannedUpload] | None" = None
    recorded: bool = False


def done_key(rule: Rule, server: str, remote: str) -> str:
    """What a retry remembers of a destination finished by an earlier attempt of the same content."""
    return f"{rule.key}|{server}|{remote}"


def _done_entry(done: "frozenset[str] | set[str]", rule: Rule, server: str) -> tuple[bool, list[str] | None]:
    """(is this rule's destination on `server` done?, the remote paths it holds there if known:
    the output and any sibling a processor made, such as a pre-compressed copy)."""
    prefix = f"{rule.key}|{server}|"
    remotes = [entry[len(prefix):] for entry in done if entry.startswith(prefix)]
    if remotes:
        return True, remotes
    if f"{rule.key}|{server}" in done:  # written before remote paths were remembered
        return True, None
    return False, None


class Trip:
    """One in-flight path. Create with `Trip(arbitrator, item)`, then call `start()` once."""

    def __init__(self, arbitrator: "Arbitrator", item: Item) -> None:
        self.conveyor = arbitrator
        self.item = item
        self.path = item.input_file
        self._lock = threading.Lock()
        self._open: set[_Unit] = set()
        self._phase = "transfer"
        self._completed = False
        self.failures: list[Failure] = []
        self.done: set[str] = set(item.done)
        self.work_dirs: list[str] = []
        self.rules: list[Rule] = []
        self.identity: SourceIdentity | None = None
        #: server -> remote paths this trip wants there (planned now or done by an earlier attempt);
        #: None: an earlier attempt's remote is unknown, so nothing there may be cleaned up.
        self.wanted: dict[str, set[str] | None] = {}
        #: (server, remote) -> the upload planned there, so two rules upload one place once.
        self._planned: dict[tuple[str, str], PlannedUpload] = {}
        #: The first rule (config order) of this path that sends it to each server.
        self._primary_rule: dict[str, str] = {}
        #: Deletion trips: (server, remote) deleted so far.
        self.deleted: list[tuple[str, str]] = []
        #: A deletion trip that propagates the deletion (not one of File Conveyor's own deletions).
        self.propagates_deletion = False
        #: A trip that only deletes old versions whose grace period is over (no pipeline row).
        self.expiry_only = False
        self.expiry_copies: list[tuple[str, str]] = []
        #: Copies to keep as old versions: (input_file, server, remote_path, delete_after).
        self._expiring: list[tuple[str, str, str, float]] = []

    # --- units ---------------------------------------------------------------------------------

    def _open_unit(self, label: str) -> _Unit:
        unit = _Unit(label)
        with self._lock:
            if self._completed:
                raise RuntimeError(f"{self.path}: unit {label} opened after the trip completed")
            self._open.add(unit)
        return unit

    def _settle(self, unit: _Unit, failure: Failure | None = None) -> None:
        with self._lock:
            if unit.settled:
                log.error("%s: %r settled twice; ignoring the second (a bug, please report it)", self.path, unit)
                return
            unit.settled = True
            self._open.discard(unit)
            if failure is not None:
                self.failures.append(failure)
            last = not self._open
        if last:
            self._next_phase()

    def _guarded(self, unit: _Unit, body: Callable[[], None]) -> None:
        """Run `body`, which settles `unit`; if it raises before doing so, the unit fails."""
        try:
            body()
        except BaseException as error:  # noqa: BLE001 - one file's problem, never the thread's
            log.error("Unexpected error while syncing %s (%s)", self.path, unit.label, exc_info=True)
            if not unit.settled:
                self._settle(unit, Failure("retryable", f"unexpected {type(error).__name__}: {error}"))

    # --- 1. planning -------------------------------------------------------------------------

    def start(self, intents: list[tuple[str, str, str]], tasks: list[tuple[str, TransportTask]]) -> None:
        """Plan the trip. Uploads that need no processing are appended to `intents`/`tasks`, which
        the dispatcher makes durable and starts for its whole batch at once."""
        unit = self._open_unit("plan")
        self._guarded(unit, lambda: (self._plan(intents, tasks), self._settle(unit)))

    def _plan(self, intents: list[tuple[str, str, str]], tasks: list[tuple[str, TransportTask]]) -> None:
        conveyor = self.conveyor
        if self.item.event is Event.DELETED:
            self._plan_deletion()
            return
        problem = conveyor.unsyncable_reason(self.path)
        if problem is not None:
            # Not an error of the file's servers: nothing to retry until the path changes again.
            # What was published for this path must go: a link in a web root to a source that is
            # now a link out of the tree (or a FIFO) would serve the secret (or hang the server).
            log.info("Not syncing %s: %s", self.path, problem)
            self._plan_deletion()
            return
        try:
            self.identity = SourceIdentity.of(os.stat(self.path))
            if conveyor.pipeline.deletion_state(self.path) == "deleted":
                conveyor.pipeline.forget_deletion(self.path)  # deleted by us after its sync, and back
        except OSError:
            log.debug("%s vanished before it could be synced; its deletion event follows", self.path)
            return
        self.rules = routing.matching_rules(conveyor.config, self.path, is_deleted=False)
        if not self.rules:
            log.debug("No rule matches %s", self.path)
            return
        for rule in self.rules:
            for destination in rule.destinations:
                self._primary_rule.setdefault(destination.server, rule.key)
        for rule in self.rules:
            chain = conveyor.chains[rule.key]
            destinations = []
            for destination in rule.destinations:
                finished, remotes = _done_entry(self.done, rule, destination.server)
                if not finished:
                    destinations.append(destination)
                    self.wanted.setdefault(destination.server, set())
                elif remotes is None:
                    self.wanted[destination.server] = None
                else:
                    for remote in remotes:
                        self._want(destination.server, remote)
            if not destinations:
                continue
            if not chain.processor_classes:
                self._plan_uploads(rule, destinations, self.path, intents, tasks)
            elif chain.depends_on_server(self.path):
                for destination in destinations:
                    self._process(rule, chain, [destination], destination.server)
            else:
                self._process(rule, chain, destinations, None)

    def _want(self, server: str, remote: str) -> None:
        wanted = self.wanted.setdefault(server, set())
        if wanted is not None:
            wanted.add(remote)

    # --- 2. processing -----------------------------------------------------------------------

    def _process(self, rule: Rule, chain: ProcessorChain, destinations: list[Destination], server: str | None) -> None:
        conveyor = self.conveyor
        source = conveyor.config.sources[rule.source]
        work_dir = os.path.join(conveyor.settings.WORKING_DIR, f"{WORK_DIR_PREFIX}{uuid.uuid4().hex}")
        self.work_dirs.append(work_dir)
        context = ProcessorContext(
            original_file=self.path, document_root=source.document_root, base_path=source.base_path,
            server=server, working_dir=work_dir, source_root=source.scan_path,
            allow_unsafe_links=conveyor.settings.SYNC_UNSAFE_SYMLINKS,
            synced_url=functools.partial(conveyor.synced.url, server=server),
            will_be_synced=functools.partial(conveyor.will_be_synced, server=server))
        unit = self._open_unit(f"process {rule.key}" + (f" for {server}" if server else ""))

        def run() -> None:
            try:
                os.makedirs(work_dir, mode=0o700)
                started = time.monotonic()
                try:
                    output = chain.run(context)
                except BaseException:
                    conveyor.metrics.processed(rule.key, time.monotonic() - started, "failed")
                    raise
                conveyor.metrics.processed(rule.key, time.monotonic() - started)
            except WaitForFiles as wait:
                for destination in destinations:
                    conveyor.pipeline.set_dependencies(self.path, destination.server, wait.paths)
                self._settle(unit, Failure("waiting", f"{rule.key}: {wait}"))
                return
            except (ProcessorError, OSError) as error:
                if isinstance(error, (NotRegularFileError, UnsafeLinkError)) or (isinstance(error, OSError) and self._source_vanished()):
                    # Not the file's servers' problem: the change that did it has its own event.
                    log.info("Not processing %s for rule %r: %s", self.path, rule.key, error)
                    self._settle(unit)
                    return
                kind = ("permanent" if isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS
                        else "retryable")
                log.warning("Processing %s for rule %r failed (%s): %s", self.path, rule.key, kind, error)
                self._settle(unit, Failure(kind, f"{rule.key}: processing failed: {error}"))
                return
            for destination in destinations:
                conveyor.pipeline.set_dependencies(self.path, destination.server, context.dependencies)
            intents: list[tuple[str, str, str]] = []
            tasks: list[tuple[str, TransportTask]] = []
            if context.extra_outputs:
                for destination in destinations:  # each destination's output and siblings as one group
                    group: list[PlannedUpload] = []
                    self._plan_uploads(rule, [destination], output, intents, tasks, group=group)
                    for extra in context.extra_outputs:
                        self._plan_uploads(rule, [destination], extra.path, intents, tasks, group=group,
                                           extra=ObjectOptions(typed_as=os.path.basename(output),
                                                               content_encoding=extra.content_encoding))
            else:
                self._plan_uploads(rule, destinations, output, intents, tasks)
            conveyor.start_uploads(intents, tasks)
            self._settle(unit)

        conveyor.run_processor(functools.partial(self._guarded, unit, run))

    # --- 3. uploads and their records ------------------------------------------------------------

    def _plan_uploads(self, rule: Rule, destinations: list[Destination], output: str,
                      intents: list[tuple[str, str, str]], tasks: list[tuple[str, TransportTask]],
                      group: "list[PlannedUpload] | None" = None, extra: ObjectOptions | None = None) -> None:
        """Plan the upload of `output` to each destination. `extra`: it is a sibling a processor
        made (never the recorded URL: primary is False), with these object options; `group`: the
        list the uploads of one destination's output and siblings share."""
        source = self.conveyor.config.sources[rule.source]
        basename = os.path.basename(output)
        content = fingerprint.of_file(output)
        for destination in destinations:
            server = destination.server
            remote = routing.remote_path(destination, source, self.path, basename)
            key = done_key(rule, server, remote)
            primary = extra is None and self._primary_rule.get(server) == rule.key
            self._want(server, remote)
            recorded = recorded_content(self.conveyor.synced, self.path, server, remote)
            if content is not None and recorded is not None and recorded[:2] == content \
                    and (recorded[2] or not primary):
                # Recorded as there with this very content (an object `reconcile` adopted, or an event
                # for a file that did not change): not sent again. verify/reconcile forget the content
                # of copies they find missing or different, so those are sent.
                log.info("Not sending %s to %s:%s again: recorded there with the same size and MD5",
                         self.path, server, remote)
                continue
            with self._lock:
                planned = self._planned.get((server, remote))
                if planned is not None and planned.url is None:
                    # Two rules send this file to the same place: upload it once, for both.
                    planned.done_keys.append(key)
                    planned.primary = planned.primary or primary
                    continue
            unit = self._open_unit(f"upload to {server}:{remote}")
            planned = PlannedUpload(unit, server, remote, basename, output, [key], primary, content=content,
                                    group=group)
            if group is not None:
                group.append(planned)
            with self._lock:
                self._planned[(server, remote)] = planned
            options = destination.options.merged(extra) if extra is not None else destination.options
            intents.append((self.path, server, remote))
            tasks.append((server, TransportTask("upload", remote, output,
                                                functools.partial(self._uploaded, planned),
                                                options or None)))

    def _uploaded(self, planned: PlannedUpload, url: str | None, error: TransporterError | None) -> None:
        if isinstance(error, SourceVanishedError) and self._source_vanished():
            log.info("%s vanished during its upload to %s; its deletion event follows", self.path, planned.server)
            self._settle(planned.unit)
            return
        if error is not None:
            self.conveyor.metrics.failed(planned.server, error.kind)
            if error.kind != PAUSED:
                log.warning("Upload of %s to %s failed: %s", self.path, planned.server, error)
            self._settle(planned.unit, Failure(error.kind, f"{planned.server}: {error}", planned.server))
            return
        assert url is not None
        self.conveyor.record(self, planned, url)

    def recorded(self, planned: PlannedUpload) -> None:
        """Called by the recorder once the upload's row is durable."""
        log.info("Synced %s to %s: %s", self.path, planned.server, planned.url)
        self.conveyor.metrics.uploaded(planned.server, planned.content.size if planned.content else None,
                                       self.item.queued_at)
        with self._lock:
            planned.recorded = True
            if planned.group is None:
                self.done.update(planned.done_keys)
            elif all(member.recorded for member in planned.group):
                for member in planned.group:
                    self.done.update(member.done_keys)
        self._settle(planned.unit)

    def record_failed(self, planned: PlannedUpload, error: BaseException) -> None:
        self._settle(planned.unit, Failure("retryable", f"{planned.server}: cannot record the upload: {error}"))

    # --- deletions ---------------------------------------------------------------------------------

    def _plan_deletion(self) -> None:
        conveyor = self.conveyor
        path = self.path
        state = conveyor.pipeline.deletion_state(path)
        if state == "deleted":
            conveyor.pipeline.forget_deletion(path)
            log.info("%s was deleted by File Conveyor after its sync; the deletion is not propagated", path)
            return
        if state == "scheduled":
            conveyor.pipeline.forget_deletion(path)
        conveyor.pipeline.forget_dependent(path)
        self.propagates_deletion = True
        targets: dict[str, set[str]] = {}
        expiry: dict[tuple[str, str], float | None] = {}
        for server, remote, delete_after in copies_with_expiry(conveyor.synced, path):
            targets.setdefault(server, set()).add(remote)
            expiry[(server, remote)] = delete_after
        for row in conveyor.synced.for_file(path):
            if row.server in targets:
                continue
            # A row without copies: written by an older version (or the original); where it sits is
            # computed from the config.
            remotes = routing.remote_paths_on_server(conveyor.config, path, row.server, row.transported_file_basename)
            if not remotes:
                log.warning("Cannot tell where %s sits on %r (no rule sends it there any more); "
                            "forgetting its row", path, row.server)
                forget_file(conveyor.synced, path, [row.server])
                continue
            targets.setdefault(row.server, set()).update(remotes)
        # Uploads that were started but never recorded (a crash in between) may have landed too.
        for server, remote in conveyor.pipeline.pending_uploads(path):
            targets.setdefault(server, set()).add(remote)
        for server, remotes in sorted(targets.items()):
            if server not in conveyor.pools:
                log.warning("%s was synced to server %r, which is no longer configured; its records are kept",
                            path, server)
                continue
            for remote in sorted(remotes):
                self._retire(server, remote, (server, remote) in expiry, expiry.get((server, remote)))
        self._write_expiries()

    def _retire(self, server: str, remote: str, recorded: bool, delete_after: float | None) -> None:
        """A copy no rule wants any more: deleted now, or, on a server that keeps old versions
        (keepOldVersionsFor), marked to be deleted when its grace period ends (a recorded copy
        only: a leftover nobody was told about goes at once)."""
        grace = self.conveyor.config.servers[server].keep_old_versions_for
        now = time.time()
        if not recorded or grace <= 0 or (delete_after is not None and delete_after <= now):
            self._delete_remote(server, remote)
        elif delete_after is None:
            log.info("Keeping the old copy %r of %s on %s for %.0f s (keepOldVersionsFor)", remote, self.path,
                     server, grace)
            self._expiring.append((self.path, server, remote, now + grace))

    def _write_expiries(self) -> None:
        if self._expiring:
            expire_copies(self.conveyor.synced, self._expiring)
            self._expiring = []

    def start_expiry(self, copies: list[tuple[str, str]]) -> None:
        """A trip that only deletes old versions whose grace period is over ((server, remote))."""
        self.expiry_only = True
        unit = self._open_unit("plan expiry")

        def plan() -> None:
            for server, remote in copies:
                log.info("Deleting the old copy %r of %s on %s: its grace period is over", remote, self.path, server)
                self._delete_remote(server, remote)
            self._settle(unit)

        self._guarded(unit, plan)

    def _delete_remote(self, server: str, remote: str) -> None:
        unit = self._open_unit(f"delete {server}:{remote}")

        def deleted(_url: str | None, error: TransporterError | None) -> None:
            if error is not None:
                self.conveyor.metrics.failed(server, error.kind)
                if error.kind != PAUSED:
                    log.warning("Deletion of %r on %s (for %s) failed: %s", remote, server, self.path, error)
                self._settle(unit, Failure(error.kind, f"{server}: delete of {remote!r} failed: {error}", server))
                return
            log.info("Deleted %r on %s (%s)", remote, server, self.path)
            self.conveyor.metrics.deleted(server)
            with self._lock:
                self.deleted.append((server, remote))
            self._settle(unit)

        self.conveyor.pools[server].submit(TransportTask("delete", remote, None, deleted))

    # --- 4. cleanup of copies nobody wants ----------------------------------------------------------

    def _stale_copies(self) -> list[tuple[str, str]]:
        """Copies of this path on the servers it was just synced to that no rule asks for now."""
        conveyor = self.conveyor
        candidates: set[tuple[str, str]] = set(copies_of(conveyor.synced, self.path))
        candidates.update(conveyor.pipeline.pending_uploads(self.path))
        known = {server for server, _ in candidates}
        for row in conveyor.synced.for_file(self.path):
            if row.server in known or row.server not in self.wanted:
                continue
            for rule in self.rules:  # a row written before copies were recorded
                source = conveyor.config.sources[rule.source]
                for destination in rule.destinations:
                    if destination.server == row.server:
                        candidates.add((row.server, routing.remote_path(
                            destination, source, self.path, row.transported_file_basename)))
        stale = []
        for server, remote in sorted(candidates):
            wanted = self.wanted.get(server, ())
            if wanted is None or server not in self.wanted or remote in wanted or server not in conveyor.pools:
                continue
            stale.append((server, remote))
        return stale

    # --- phases and completion ---------------------------------------------------------------------

    def _next_phase(self) -> None:
        """Every open unit has settled: start the cleanup phase, or complete."""
        with self._lock:
            phase, failed = self._phase, bool(self.failures)
        if (phase == "transfer" and not failed and self.item.event is not Event.DELETED and self.wanted
                and not self.expiry_only):
            with self._lock:
                self._phase = "cleanup"
            unit = self._open_unit("plan cleanup")
            self._guarded(unit, lambda: (self._plan_cleanup(), self._settle(unit)))
            return
        self._complete()

    def _plan_cleanup(self) -> None:
        expiry = {(server, remote): delete_after
                  for server, remote, delete_after in copies_with_expiry(self.conveyor.synced, self.path)}
        for server, remote in self._stale_copies():
            if (server, remote) not in expiry or expiry[(server, remote)] is None:
                log.info("The copy %r of %s on %s is no longer wanted", remote, self.path, server)
            self._retire(server, remote, (server, remote) in expiry, expiry.get((server, remote)))
        self._write_expiries()

    def _complete(self) -> None:
        with self._lock:
            if self._completed:
                log.error("%s: completed twice; ignoring (a bug, please report it)", self.path)
                return
            self._completed = True
        self.conveyor.complete(self)  # which ends the trip, now or with its batch

    def finish_records(self) -> None:
        """Forget the copies this trip deleted (all of a deleted file's records when it succeeded)."""
        conveyor = self.conveyor
        if self.propagates_deletion and not self.failures:
            servers = sorted({server for server, _ in self.deleted} |
                             {row.server for row in conveyor.synced.for_file(self.path) if row.server in conveyor.pools})
            # A deleted file's URL is gone: stylesheets that embed it are processed again.
            dependents = {d for server in servers for d in conveyor.pipeline.dependents_of(self.path, server)}
            forget_file(conveyor.synced, self.path, servers, sorted(dependents))
            if dependents:
                conveyor.queue_follow_ups()
        forget_copies(conveyor.synced, [(self.path, server, remote) for server, remote in self.deleted])
        conveyor.pipeline.clear_pending_uploads([(self.path, server, remote) for server, remote in self.deleted])

    def failure_summary(self, retry_interval: float, retry_max: float) -> tuple[str, str, float]:
        """(kind, reason, delay) of a failed trip: the worst kind decides the wait."""
        kind = max((f.kind for f in self.failures), key=KIND_ORDER.index)
        reason = "; ".join(f.reason for f in self.failures)[:2000]
        if kind in ("permanent", "configuration"):
            delay = retry_max
        else:
            delay = retry_delay(self.item.attempts + 1, retry_interval, retry_max)
        return kind, reason, delay

    def paused_server(self) -> str | None:
        """The server to wait for when every failure of this trip is a paused server's."""
        if self.failures and all(f.kind == PAUSED for f in self.failures):
            return self.failures[0].server
        return None

    def _source_vanished(self) -> bool:
        """Is the source gone, or no longer a regular file, since the trip began?"""
        try:
            return not stat.S_ISREG(os.stat(self.path).st_mode)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def still_the_synced_content(self) -> bool:
        """Is the file on disk still the version this trip started from?"""
        try:
            return self.identity is not None and SourceIdentity.of(os.stat(self.path)) == self.identity
        except OSError:
            return False

