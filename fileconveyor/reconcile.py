"""`fileconveyor reconcile`: compare what a destination really holds with the sources and records.

File Conveyor otherwise trusts its own records. This command looks (autosync's approach): per
server, a sorted merge of three streams, joined on the remote path:

* E, the expected copies: every source tree walked in sorted order, each file through the rules
  (`routing`), at the remote path each destination on this server gives it;
* R, the recorded copies: `synced_copies` of this server (and `synced_files` rows of older
  versions without copies, placed through the config), read in short chunks in remote path order;
* L, the listing: `Transporter.list_files` of the destination paths, in the same order.

A stream is a generator, and the walk, the chunks and the pages are bounded, so memory does not
grow with the number of files (see bench/bench_reconcile.py). What each combination means:

| at one remote path | kind | what is done |
|---|---|---|
| R and L, same size (and MD5 where known) | (in order) | nothing |
| R, not in L | `missing` | the source is queued (MODIFIED) |
| R and L, other size or MD5 | `different` | the source is queued (MODIFIED) |
| R whose source file is gone | `orphaned` | queued as DELETED: the daemon deletes the copy and the row |
| R kept as an old version for its grace period | (in order) | nothing: the daemon deletes it when the period ends |
| R whose source no rule sends here now | `unmanaged` | listed only (as the daemon does) |
| E, not in R | `unrecorded` | queued (MODIFIED); or, for a file without processors whose object in L has the same size and MD5, the copy is recorded as it is: `adopted` |
| L only | `unknown` | listed; deleted with `--delete-unknown` |
| L only, a temporary name | `leftover` | deleted once an hour old (an upload may still be writing it) |

Queued work goes through the normal pipeline (`PersistentPipeline.put_many`), so processors run
and per-path order holds: only the daemon transfers, and it may be running (it picks the queue up
within seconds) or not (it does at its next start). A file with processors whose row is missing is
queued too (its remote name is only known once processed). Adopted copies are written after the
merge (spooled to a private temporary file meanwhile), so the chunked read of R never meets them.
Nothing is changed with `--dry-run`.
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
from typing import IO, Any, Iterable, Iterator, TextIO

from fileconveyor import fingerprint, localfile, routing
from fileconveyor.config import Config, Rule, Source
from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline import db as database
from fileconveyor.pipeline import state
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline.synced_files import (
    COPY_FINGERPRINT_COLUMNS,
    SyncedFiles,
    Upload,
    forget_contents,
    record_uploads,
)
from fileconveyor.transporters.base import (
    DirectoryEntry,
    RemoteEntry,
    Transporter,
    TransporterContext,
    TransporterError,
    listing_key,
    resolve_transporter,
    walk_sorted,
)

log = logging.getLogger(__name__)

#: The kinds of findings, in the order the summary shows them.
KINDS = ("missing", "different", "unrecorded", "adopted", "orphaned", "unmanaged", "unknown", "leftover")
#: Examples kept per kind for the summary.
EXAMPLES = 10
#: Rows of R read per query: each read is a short transaction, never a lock held across a listing.
CHUNK = 1000
#: Events queued per transaction.
QUEUE_BATCH = 1000
#: A temporary name younger than this may belong to an upload in progress: left alone.
LEFTOVER_AGE = 3600.0


class ReconcileError(Exception):
    """Bad usage (an unknown server); the message says what to write."""


@dataclasses.dataclass
class ServerResult:
    server: str
    counts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    queued: int = 0
    adopted: int = 0
    deleted: int = 0
    listed: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def found(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "counts": {k: self.counts[k] for k in KINDS if self.counts[k]},
                "examples": {k: v for k, v in self.examples.items() if v}, "queued": self.queued,
                "adopted": self.adopted, "deleted": self.deleted, "listed": self.listed,
                "problems": self.problems}


# --- the three streams ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Expected:
    remote_path: str
    source_path: str
    rule: Rule
    processed: bool


@dataclasses.dataclass(frozen=True)
class Recorded:
    remote_path: str
    input_file: str
    size: int | None
    md5: str | None
    #: An old version kept for its grace period (`keepOldVersionsFor`): the daemon deletes it when
    #: the period ends; reconcile leaves it alone.
    expiring: bool = False


def source_files(config: Config, source: Source) -> Iterator[str]:
    """Every file of `source` the daemon would sync, as absolute paths, sorted by `listing_key`
    of the path relative to the scan path (so a destination prefix keeps the order). Ignored
    directories are not entered; symlinks count only where the daemon follows them."""
    root = source.scan_path
    unsafe = bool(getattr(config.settings, "SYNC_UNSAFE_SYMLINKS", False))

    def read(relative: str) -> list[DirectoryEntry] | None:
        directory = os.path.join(root, relative)
        found: list[DirectoryEntry] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    path = f"{relative}/{entry.name}" if relative else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name not in config.ignored_dirs:
                            found.append((entry.name, None))
                        continue
                    if entry.is_symlink() and not unsafe and not localfile.is_safe_link(entry.path, root):
                        continue
                    try:
                        if entry.is_file():
                            found.append((entry.name, RemoteEntry(path, 0)))
                    except OSError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as error:
            log.warning("reconcile: cannot read %s (%s); its files are not compared", directory, error)
            return None
        return found

    for entry in walk_sorted(read, ""):
        yield os.path.join(root, entry.path)


def expected_copies(config: Config, server: str) -> Iterator[Expected]:
    """E: one sorted stream per (rule, destination on `server`), merged."""
    streams = []
    for rule in config.rules:
        source = config.sources[rule.source]
        for destination in rule.destinations:
            if destination.server == server:
                streams.append(_expected_for(config, rule, destination, source))
    return heapq.merge(*streams, key=lambda e: listing_key(e.remote_path))


def _expected_for(config: Config, rule: Rule, destination: Any, source: Source) -> Iterator[Expected]:
    for path in source_files(config, source):
        if rule not in routing.matching_rules(config, path, is_deleted=False):
            continue
        remote = routing.remote_path(destination, source, path, os.path.basename(path))
        yield Expected(remote, path, rule, bool(rule.processors))


def copy_stream(conn: sqlite3.Connection, server: str) -> Iterator[Recorded]:
    """The recorded copies of `server` in remote path order, CHUNK rows per query (keyset pages:
    each a short read, never a lock held while the listing is fetched)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(synced_copies)")}
    if not present:
        return
    columns = ", ".join(name if name in present else "NULL" for name, _ in COPY_FINGERPRINT_COLUMNS)
    columns += ", delete_after IS NOT NULL" if "delete_after" in present else ", 0"
    last: tuple[str, str] = ("", "")
    while True:  # ends when a page is short
        rows = conn.execute(
            f"SELECT remote_path, input_file, {columns} FROM synced_copies WHERE server = ? AND "
            f"(remote_path, input_file) > (?, ?) ORDER BY remote_path, input_file LIMIT {CHUNK}",
            (server, *last)).fetchall()
        for row in rows:
            yield Recorded(*row)
        if len(rows) < CHUNK:
            return
        last = (rows[-1][0], rows[-1][1])


def rows_without_copies(conn: sqlite3.Connection, server: str) -> list[tuple[str, str]]:
    """(input_file, transported basename) of the rows of `server` that have no recorded copy
    (written by older versions or by the original), whose place only the config tells."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(synced_copies)")}
    try:
        return conn.execute(
            "SELECT input_file, transported_file_basename FROM synced_files f WHERE server = ? AND NOT EXISTS "
            "(SELECT 1 FROM synced_copies c WHERE c.input_file = f.input_file AND c.server = f.server)"
            if present else "SELECT input_file, transported_file_basename FROM synced_files WHERE server = ?",
            (server,)).fetchall()
    except sqlite3.Error:  # no synced_files table yet: nothing recorded
        return []


def recorded_copies(conn: sqlite3.Connection, config: Config, server: str) -> Iterator[Recorded]:
    """R: the copies of `server` in remote path order, merged with the rows without a recorded
    copy, placed through the config (in memory: bounded by the number of such rows)."""
    legacy = []
    for input_file, basename in rows_without_copies(conn, server):
        for remote in routing.remote_paths_on_server(config, input_file, server, basename)[:1]:
            legacy.append(Recorded(remote, input_file, None, None))
    legacy.sort(key=lambda r: listing_key(r.remote_path))
    return heapq.merge(copy_stream(conn, server), legacy, key=lambda r: listing_key(r.remote_path))


def listing_prefixes(config: Config, conn: sqlite3.Connection, server: str) -> list[str]:
    """The destination paths of `server` (and the top directories of copies recorded outside
    them, after a config change), without nesting, in listing order; [''] for everything."""
    paths = {d.path.strip("/") for rule in config.rules for d in rule.destinations if d.server == server}
    try:
        tops = {row[0] for row in conn.execute(
            "SELECT DISTINCT CASE WHEN instr(remote_path, '/') > 0 THEN substr(remote_path, 1, "
            "instr(remote_path, '/') - 1) ELSE '' END FROM synced_copies WHERE server = ?", (server,))}
    except sqlite3.Error:
        tops = set()
    for top in tops:  # copies placed by an earlier config are listed too
        if not any(not p or top == p or top.startswith(p + "/") for p in paths):
            paths.add(top)
    if "" in paths:
        return [""]
    kept = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
    return sorted(kept, key=lambda p: listing_key(p + "/"))


def listed(transporter: Transporter, prefixes: list[str]) -> Iterator[RemoteEntry]:
    """L: the listings of `prefixes` one after the other (disjoint, in order: one sorted stream)."""
    for prefix in prefixes:
        yield from transporter.list_files(prefix)


# --- the merge -----------------------------------------------------------------------------------------

def merged(expected: Iterable[Expected], recorded: Iterable[Recorded],
           listing: Iterable[RemoteEntry]) -> Iterator[tuple[str, list[Expected], list[Recorded], RemoteEntry | None]]:
    """(remote path, E items, R items, L entry) per remote path, in order."""
    tagged = heapq.merge(((listing_key(e.remote_path), 0, e) for e in expected),
                         ((listing_key(r.remote_path), 1, r) for r in recorded),
                         ((listing_key(entry.path), 2, entry) for entry in listing),
                         key=lambda item: (item[0], item[1]))
    for _key, group in itertools.groupby(tagged, key=lambda item: item[0]):
        es: list[Expected] = []
        rs: list[Recorded] = []
        entry: RemoteEntry | None = None
        path = ""
        for _, tag, item in group:
            if tag == 0:
                es.append(item)  # type: ignore[arg-type]
                path = item.remote_path  # type: ignore[union-attr]
            elif tag == 1:
                rs.append(item)  # type: ignore[arg-type]
                path = item.remote_path  # type: ignore[union-attr]
            else:
                entry = item  # type: ignore[assignment]
                path = item.path  # type: ignore[union-attr]
        yield path, es, rs, entry


class _Queue:
    """Events for the daemon, written in batches (nothing with dry_run). The recorded content of
    a copy found missing or different is forgotten first, or the daemon would take the unchanged
    file as already there (`synced_files.recorded_content`)."""

    def __init__(self, config: Config, server: str, dry_run: bool) -> None:
        self.config, self.server, self.dry_run = config, server, dry_run
        self.pipeline: PersistentPipeline | None = None
        self.synced: SyncedFiles | None = None
        self.waiting: dict[str, Event] = {}
        self.forget: set[str] = set()
        self.count = 0

    def put(self, path: str, event: Event, forget_content: bool = False) -> None:
        self.waiting[path] = event
        if forget_content:
            self.forget.add(path)
        if len(self.waiting) >= QUEUE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.waiting and not self.dry_run:
            if self.forget:
                if self.synced is None:
                    self.synced = state.open_synced_files(self.config.settings)
                forget_contents(self.synced, [(path, self.server) for path in sorted(self.forget)])
            if self.pipeline is None:
                self.pipeline = PersistentPipeline(self.config.settings.PERSISTENT_DATA_DB)
            self.pipeline.put_many(sorted(self.waiting.items()))
        self.count += len(self.waiting)
        self.waiting.clear()
        self.forget.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for opened in (self.pipeline, self.synced):
                if opened is not None:
                    opened.close()


class Reconciler:
    def __init__(self, config: Config, dry_run: bool = False, delete_unknown: bool = False,
                 deep: bool = False) -> None:
        self.config = config
        self.dry_run = dry_run
        self.delete_unknown = delete_unknown
        #: Read copies back where the listing gives no MD5 (local, SFTP, FTP): to find copies
        #: changed without a change of size, and to adopt identical files.
        self.deep = deep
        self.now = time.time()

    def transporter_for(self, server: str) -> Transporter:
        settings = self.config.servers[server]
        state_dir = os.path.join(os.path.dirname(os.path.abspath(self.config.settings.PERSISTENT_DATA_DB)),
                                 "transporter_state")
        return resolve_transporter(settings.transporter)(settings.settings, TransporterContext(
            server_name=server, state_dir=state_dir,
            source_roots=tuple(s.scan_path for s in self.config.sources.values()),
            allow_unsafe_links=bool(getattr(self.config.settings, "SYNC_UNSAFE_SYMLINKS", False)),
            timeout=self.config.settings.VERIFY_TIMEOUT))

    def run(self, server: str) -> ServerResult:
        result = ServerResult(server)
        transporter = self.transporter_for(server)
        if not transporter.can_list:
            result.problems.append(f"{server}: transporter {transporter.name!r} cannot list a destination; "
                                   "reconcile needs a listing")
            return result
        path = self.config.settings.SYNCED_FILES_DB
        conn = database.connect(path, readonly=True) if os.path.exists(path) and os.path.getsize(path) else \
            sqlite3.connect(":memory:")
        queue = _Queue(self.config, server, self.dry_run)
        with tempfile.TemporaryFile("w+", encoding="utf-8", prefix="fc-adopt-") as spool:
            try:
                self._merge(server, transporter, conn, queue, spool, result)
            except TransporterError as error:
                result.problems.append(f"{server}: cannot list the destination: {error}")
            except sqlite3.Error as error:  # BUSY past the busy timeout, a damaged file
                result.problems.append(f"{server}: cannot read {path}: {error}; try again (or see "
                                       "docs/state.md if the file is damaged)")
            finally:
                queue.close()
                conn.close()
                transporter.close()
            result.queued = queue.count
            if not result.problems and not self.dry_run:
                self._write_adoptions(spool, result)
        return result

    def _merge(self, server: str, transporter: Transporter, conn: sqlite3.Connection, queue: _Queue,
               spool: IO[str], result: ServerResult) -> None:
        prefixes = listing_prefixes(self.config, conn, server)
        for remote, es, rs, entry in merged(expected_copies(self.config, server),
                                            recorded_copies(conn, self.config, server),
                                            listed(transporter, prefixes)):
            if entry is not None:
                result.listed += 1
            if rs:
                self._recorded(server, remote, rs, entry, transporter, queue, result)
            elif es:
                self._unrecorded(server, remote, es, entry, conn, transporter, queue, spool, result)
            elif entry is not None:
                self._unexplained(server, entry, transporter, result)

    def _md5_of(self, entry: RemoteEntry, transporter: Transporter) -> str | None:
        """The listed MD5, or with --deep the copy read back (where the transporter can)."""
        if entry.md5 is not None or not self.deep or not transporter.can_read_back:
            return entry.md5
        return transporter.read_back_md5(entry.path)

    def _recorded(self, server: str, remote: str, rs: list[Recorded], entry: RemoteEntry | None,
                  transporter: Transporter, queue: _Queue, result: ServerResult) -> None:
        for copy in rs:
            if copy.expiring:
                continue
            if not os.path.lexists(copy.input_file):
                result.found("orphaned", f"{copy.input_file} -> {remote}")
                queue.put(copy.input_file, Event.DELETED)
                continue
            if not any(d.server == server for rule in routing.matching_rules(self.config, copy.input_file, False)
                       for d in rule.destinations):
                result.found("unmanaged", f"{copy.input_file} -> {remote}")
                continue
            if entry is None:
                result.found("missing", f"{copy.input_file} -> {remote}")
                queue.put(copy.input_file, Event.MODIFIED, forget_content=True)
                continue
            why = fingerprint.difference(copy.size, copy.md5, entry)
            if why is None and copy.md5 is not None and entry.md5 is None and self.deep:
                why = fingerprint.difference(None, copy.md5, entry, self._md5_of(entry, transporter))
            if why is not None:
                result.found("different", f"{copy.input_file} -> {remote}: {why}")
                queue.put(copy.input_file, Event.MODIFIED, forget_content=True)

    def _unrecorded(self, server: str, remote: str, es: list[Expected], entry: RemoteEntry | None,
                    conn: sqlite3.Connection, transporter: Transporter, queue: _Queue, spool: IO[str],
                    result: ServerResult) -> None:
        for item in es:
            if item.processed:
                # Its remote name is only known once processed: what matters is whether it has a row.
                if not _has_row(conn, item.source_path, server):
                    result.found("unrecorded", f"{item.source_path} (processed)")
                    queue.put(item.source_path, Event.MODIFIED)
                continue
            content = fingerprint.of_file(item.source_path) if entry is not None and not entry.temporary \
                and (entry.md5 is not None or self.deep) else None
            if entry is not None and content is not None and content.size == entry.size:
                if content.md5 == self._md5_of(entry, transporter):
                    result.found("adopted", f"{item.source_path} -> {remote}")
                    spool.write(json.dumps([item.source_path, remote, self.config.rules.index(item.rule),
                                            content.size, content.md5]) + "\n")
                    continue
            result.found("unrecorded", f"{item.source_path} -> {remote}"
                         + (" (a different object is there)" if entry is not None else ""))
            queue.put(item.source_path, Event.MODIFIED)

    def _unexplained(self, server: str, entry: RemoteEntry, transporter: Transporter,
                     result: ServerResult) -> None:
        age = self.now - entry.mtime if entry.mtime is not None else None
        if entry.temporary:
            result.found("leftover", entry.path)
            if age is not None and age >= LEFTOVER_AGE and not self.dry_run:
                self._delete(transporter, entry.path, result)
            return
        if self.delete_unknown and not self.dry_run and self._upload_in_flight(server, entry.path):
            result.found("unknown", f"{entry.path} ({entry.size} bytes; kept: an upload of the daemon "
                         "that is not recorded yet)")
            return
        result.found("unknown", f"{entry.path} ({entry.size} bytes)")
        if self.delete_unknown and not self.dry_run:
            self._delete(transporter, entry.path, result)

    def _upload_in_flight(self, server: str, remote: str) -> bool:
        """Is `remote` the target of an upload the daemon started and has not recorded yet? (Its
        intent is in pending_uploads from before the upload until its row is written.)"""
        path = self.config.settings.PERSISTENT_DATA_DB
        if not os.path.exists(path):
            return False
        conn = database.connect(path, readonly=True)
        try:
            return conn.execute("SELECT 1 FROM pending_uploads WHERE server = ? AND remote_path = ?",
                                (server, remote)).fetchone() is not None
        except sqlite3.Error:
            return False
        finally:
            conn.close()

    @staticmethod
    def _delete(transporter: Transporter, remote: str, result: ServerResult) -> None:
        try:
            transporter.delete(remote)
        except TransporterError as error:
            result.problems.append(f"{result.server}: cannot delete {remote}: {error}")
            return
        result.deleted += 1

    def _write_adoptions(self, spool: IO[str], result: ServerResult) -> None:
        spool.seek(0)
        transporter = self.transporter_for(result.server)
        synced = state.open_synced_files(self.config.settings)
        try:
            batch: list[Upload] = []
            for line in spool:
                path, remote, rule_index, size, md5 = json.loads(line)
                # The recorded URL of (file, server) is the first rule's copy (docs/architecture.md).
                first = next((r for r in routing.matching_rules(self.config, path, False)
                              if any(d.server == result.server for d in r.destinations)), None)
                primary = first is None or first == self.config.rules[rule_index]
                batch.append(Upload(path, result.server, remote, os.path.basename(path),
                                    transporter.url_for(remote), primary, (), size=size, md5=md5))
                if len(batch) >= QUEUE_BATCH:
                    record_uploads(synced, batch)
                    result.adopted += len(batch)
                    batch = []
            if batch:
                record_uploads(synced, batch)
                result.adopted += len(batch)
        finally:
            synced.close()
            transporter.close()


def _has_row(conn: sqlite3.Connection, input_file: str, server: str) -> bool:
    try:
        return conn.execute("SELECT 1 FROM synced_files WHERE input_file = ? AND server = ?",
                            (input_file, server)).fetchone() is not None
    except sqlite3.Error:
        return False


def reconcile(config: Config, servers: list[str] | None = None, dry_run: bool = False,
              delete_unknown: bool = False, as_json: bool = False, out: TextIO | None = None,
              deep: bool = False) -> int:
    """Reconcile `servers` (default: every server a rule sends to); print the summary.

    Exit status: 0 when every server was reconciled (with --dry-run: and nothing was found to
    do); 1 when a server could not be (listed, read) or, with --dry-run, something would be done.
    Raises ReconcileError for an unknown server name."""
    out = out or sys.stdout
    for warning in state.check(config.settings, pipeline=not dry_run):  # a lost or damaged state: raises
        print(f"warning: {warning}", file=sys.stderr)
    used = [name for name in config.servers if any(d.server == name for r in config.rules for d in r.destinations)]
    for name in servers or []:
        if name not in config.servers:
            raise ReconcileError(f"unknown server {name!r}; the config has: {', '.join(sorted(config.servers))}")
    chosen = servers or used
    reconciler = Reconciler(config, dry_run=dry_run, delete_unknown=delete_unknown, deep=deep)
    results = [reconciler.run(server) for server in chosen]
    if as_json:
        json.dump({"dry_run": dry_run, "servers": [r.as_dict() for r in results]}, out, indent=1, sort_keys=True)
        out.write("\n")
    else:
        for result in results:
            _print(result, dry_run, out)
    failed = any(r.problems for r in results)
    actionable = any(r.counts[k] for r in results for k in KINDS if k not in ("unmanaged",))
    return 1 if failed or (dry_run and actionable) else 0


def _print(result: ServerResult, dry_run: bool, out: TextIO) -> None:
    counts = ", ".join(f"{result.counts[k]} {k}" for k in KINDS if result.counts[k]) or "everything in order"
    print(f"{result.server}: {result.listed} object(s) listed; {counts}", file=out)
    for kind in KINDS:
        for example in result.examples.get(kind, []):
            print(f"  {kind.upper()}: {example}", file=out)
        if result.counts[kind] > len(result.examples.get(kind, [])):
            print(f"  ... and {result.counts[kind] - len(result.examples[kind])} more {kind}", file=out)
    if dry_run:
        print("  (dry run: nothing queued, recorded or deleted)", file=out)
    else:
        print(f"  queued {result.queued} file(s) for the daemon, adopted {result.adopted}, "
              f"deleted {result.deleted} object(s)", file=out)
    for problem in result.problems:
        print(f"  PROBLEM: {problem}", file=out)
