"""Is every recorded file really at its destination?

Every copy recorded in `synced_copies` (and every older row of `synced_files` without one, at the
remote path the config gives) is looked up in ONE listing of its destination where the server's
transporter can list (`can_list`: a page of 1,000 S3 keys per request instead of a HEAD per file),
else with `exists` per copy. The copies (read in short chunks) and the listing are merged as two
streams sorted by remote path, as `reconcile` does: memory holds what is wrong, not every row
(100,000 copies: 37 MB; it was 196 MB with every row in memory). The original sent a plain-HTTP HEAD to the URL, which failed for HTTPS
URLs and for servers that are not web servers. Servers are checked in parallel, one transporter
(connection) each.

Content: the listed size is compared with the size recorded at upload, always; the MD5 where the
listing gives one (S3 single-part objects, Swift); with `--deep`, where it gives none, the copy is
read back (local, SFTP, FTP: costs a download of every file). A copy overwritten behind File
Conveyor's back is reported DIFFERENT. Copies recorded before sizes were (NULL) are checked for
presence only.

Exit status: 0 when everything is there, 1 when anything is missing, different or could not be
checked. `--requeue` queues the missing and different files again (MODIFIED if the source still
exists, else DELETED so that the stale row goes away); the running daemon picks them up within
seconds. Without
`--requeue` the databases are opened read-only: a user who may only read them can verify.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sqlite3
import sys
from typing import Iterator, Sequence, TextIO

from fileconveyor import fingerprint, reconcile, routing
from fileconveyor.config import Config, ConfigError, load_config
from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline import state
from fileconveyor.pipeline.db import DatabaseError
from fileconveyor.pipeline import db as database
from fileconveyor.pipeline.synced_files import SyncedFile, forget_contents
from fileconveyor.transporters.base import (
    RemoteEntry,
    Transporter,
    TransporterContext,
    TransporterError,
    resolve_transporter,
)


@dataclasses.dataclass
class ServerReport:
    """What checking one server found."""

    server: str = ""
    #: rows of this server in synced_files (the files checked)
    rows: int = 0
    missing: list[SyncedFile] = dataclasses.field(default_factory=list)
    #: (row, remote path, why it is not the recorded content)
    different: list[tuple[SyncedFile, str, str]] = dataclasses.field(default_factory=list)
    #: problems that prevented checks (then verify fails: not everything could be checked)
    problems: list[str] = dataclasses.field(default_factory=list)
    listing_requests: int = 0


def _check_server(config: Config, server: str, deep: bool = False) -> ServerReport:
    """Check every row of `server`: with one listing of the destination merged with its recorded
    copies (both sorted by remote path, both streamed: memory holds what is wrong, not what is
    right), where the transporter can list; else with `exists` per copy.

    A row is present when EVERY copy recorded for it in `synced_copies` is there (two rules may send
    one file to one server at two places), and different when a copy's listed size, or its MD5 where
    the listing gives one (or `deep` reads it back), is not what was recorded. A row without
    recorded copies (written by an older version or by the original) is located through the config,
    where any one place will do, and only its presence is checked."""
    report = ServerReport(server)
    settings = config.servers[server]
    state_dir = os.path.join(os.path.dirname(os.path.abspath(config.settings.PERSISTENT_DATA_DB)),
                             "transporter_state")
    transporter = resolve_transporter(settings.transporter)(
        settings.settings,
        TransporterContext(server_name=server, state_dir=state_dir,
                           source_roots=tuple(s.scan_path for s in config.sources.values()),
                           timeout=config.settings.VERIFY_TIMEOUT))
    conn = database.connect(config.settings.SYNCED_FILES_DB, readonly=True)  # locks nothing for long
    try:
        report.rows = conn.execute("SELECT COUNT(*) FROM synced_files WHERE server = ?", (server,)).fetchone()[0]
        legacy: dict[str, list[str]] = {}  # remote path -> rows without copies that may sit there
        for input_file, basename in reconcile.rows_without_copies(conn, server):
            for remote in routing.remote_paths_on_server(config, input_file, server, basename):
                legacy.setdefault(remote, []).append(input_file)
        unseen = {f for files in legacy.values() for f in files}
        missing: dict[str, list[str]] = {}  # input file -> its copies not listed
        different: list[tuple[str, str, str, tuple[int | None, str | None]]] = []
        if transporter.can_list:
            found = reconcile.merged((), reconcile.copy_stream(conn, server),
                                     reconcile.listed(transporter, reconcile.listing_prefixes(config, conn, server)))
        else:
            found = _each_copy(transporter, conn, server, legacy)
        for remote, _expected, copies, entry in found:
            if entry is not None and remote in legacy:
                unseen.difference_update(legacy[remote])
            for copy in copies:
                if entry is None:
                    missing.setdefault(copy.input_file, []).append(remote)
                    continue
                read_back = None
                if deep and entry.md5 is None and copy.md5 is not None and transporter.can_read_back:
                    read_back = transporter.read_back_md5(remote)
                why = fingerprint.difference(copy.size, copy.md5, entry, read_back)
                if why is not None:
                    different.append((copy.input_file, remote, why, (copy.size, copy.md5)))
        # The daemon may record, replace or delete copies while the listing is read: what looks
        # wrong is looked at again (a request per problem, not per file).
        gone = {f for f, remotes in missing.items()
                if any(_still_recorded(conn, f, server, r) and not transporter.exists(r) for r in remotes)}
        gone |= {f for f in unseen
                 if not any(transporter.exists(r) for r, files in legacy.items() if f in files)}
        report.missing = [_row(conn, f, server) for f in sorted(gone)]
        report.different = [(_row(conn, f, server), remote, why) for f, remote, why, content in different
                            if _still_recorded(conn, f, server, remote, content)]
    except TransporterError as error:
        report.problems.append(f"{server}: cannot check: {error}")
    except sqlite3.Error as error:
        report.problems.append(f"{server}: cannot read {config.settings.SYNCED_FILES_DB}: {error}")
    finally:
        report.listing_requests = transporter.listing_requests
        conn.close()
        transporter.close()
    return report


def _each_copy(transporter: Transporter, conn: sqlite3.Connection, server: str, legacy: dict[str, list[str]]
               ) -> Iterator[tuple[str, tuple[()], list[reconcile.Recorded], RemoteEntry | None]]:
    """For a transporter that cannot list: `exists` per recorded copy and per place of a row
    without copies, in the shape of the merge (an entry of unknown size when present)."""
    for copy in reconcile.copy_stream(conn, server):
        present = transporter.exists(copy.remote_path)
        yield copy.remote_path, (), [dataclasses.replace(copy, size=None, md5=None)], \
            RemoteEntry(copy.remote_path, -1) if present else None
    for remote in legacy:
        yield remote, (), [], RemoteEntry(remote, -1) if transporter.exists(remote) else None


def _still_recorded(conn: sqlite3.Connection, input_file: str, server: str, remote: str,
                    content: tuple[int | None, str | None] | None = None) -> bool:
    """Is the copy still recorded (with the (size, md5) it was compared with, if given)? A copy
    replaced or forgotten meanwhile is not reported."""
    # Only a difference found needs the columns (a file from before them has none to compare).
    row = conn.execute(f"SELECT {'size, md5' if content is not None else '1'} FROM synced_copies "
                       "WHERE input_file = ? AND server = ? AND remote_path = ?",
                       (input_file, server, remote)).fetchone()
    return row is not None and (content is None or tuple(row) == content)


def _row(conn: sqlite3.Connection, input_file: str, server: str) -> SyncedFile:
    row = conn.execute("SELECT input_file, transported_file_basename, url, server FROM synced_files "
                       "WHERE input_file = ? AND server = ?", (input_file, server)).fetchone()
    return SyncedFile(*row) if row else SyncedFile(input_file, os.path.basename(input_file), "", server)


def verify(config: Config, requeue: bool = False, out: TextIO = sys.stdout, deep: bool = False) -> int:
    """Raises DatabaseError (naming the file) when synced_files.db is damaged, unreadable, or lost
    while the path index says files were synced: "checked 0, all present" would be a lie then."""
    for warning in state.check(config.settings, pipeline=requeue):
        print(f"warning: {warning}", file=out)
    path = config.settings.SYNCED_FILES_DB
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        print(f"No synced files yet ({path} {'does not exist' if not os.path.exists(path) else 'is empty'})",
              file=out)
        return 0
    synced = state.open_synced_files(config.settings, readonly=True)  # creates nothing, locks nothing
    try:
        per_server = synced.counts_per_server()
    finally:
        synced.close()
    servers = [server for server in per_server if server in config.servers]
    unknown = sum(count for server, count in per_server.items() if server not in config.servers)
    missing: list[SyncedFile] = []
    different: list[tuple[SyncedFile, str, str]] = []
    checked = 0
    failed = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(servers)))) as pool:
        futures = {pool.submit(_check_server, config, server, deep): server for server in servers}
        for future in concurrent.futures.as_completed(futures):
            report = future.result()
            for problem in report.problems:
                print(problem, file=out)
            failed = failed or bool(report.problems)
            checked += report.rows
            missing.extend(report.missing)
            different.extend(report.different)
    for row in sorted(missing, key=lambda r: (r.server, r.input_file)):
        print(f"MISSING on {row.server}: {row.input_file} ({row.url})", file=out)
    for row, remote, why in sorted(different, key=lambda d: (d[0].server, d[0].input_file, d[1])):
        print(f"DIFFERENT on {row.server}: {row.input_file} at {remote}: {why}", file=out)
    wrong = {(row.input_file, row.server) for row in missing} | {(d[0].input_file, d[0].server) for d in different}
    print(f"Checked {checked} file(s) on {len(servers)} server(s): {checked - len(wrong)} present, "
          f"{len(missing)} missing, {len({(d[0].input_file, d[0].server) for d in different})} different"
          + (f"; {unknown} row(s) for servers no longer configured" if unknown else ""),
          file=out)
    if wrong and requeue:
        # Or the daemon would take an unchanged file as already there (recorded_content).
        writer = state.open_synced_files(config.settings)
        try:
            forget_contents(writer, sorted(wrong))
        finally:
            writer.close()
        pipeline = PersistentPipeline(config.settings.PERSISTENT_DATA_DB)
        try:
            paths = sorted({input_file for input_file, _server in wrong})
            pipeline.put_many((p, Event.MODIFIED if os.path.isfile(p) else Event.DELETED) for p in paths)
        finally:
            pipeline.close()
        print(f"Queued {len(paths)} file(s) again", file=out)
    return 1 if wrong or failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fileconveyor.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.xml")
    parser.add_argument("--requeue", action="store_true")
    parser.add_argument("--deep", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(os.path.abspath(args.config), for_daemon=False)
    except ConfigError as error:
        for problem in error.problems:
            print(str(problem), file=sys.stderr)
        return 2
    try:
        return verify(config, requeue=args.requeue, deep=args.deep)
    except DatabaseError as error:
        print(f"verify: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
