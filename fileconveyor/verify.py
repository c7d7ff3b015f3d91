"""Is every recorded file really at its destination?

Every copy recorded in `synced_copies` (and every older row of `synced_files` without one, at the
remote path the config gives) is looked up in ONE listing of its destination where the server's
transporter can list (`can_list`: a page of 1,000 S3 keys per request instead of a HEAD per file),
else with `exists` per copy. The original sent a plain-HTTP HEAD to the URL, which failed for HTTPS
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
import sys
from typing import Callable, Sequence, TextIO

from fileconveyor import fingerprint, routing
from fileconveyor.config import Config, ConfigError, load_config
from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline import state
from fileconveyor.pipeline.db import DatabaseError
from fileconveyor.pipeline.synced_files import Copy, SyncedFile, copies_on_server, forget_contents
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

    missing: list[SyncedFile] = dataclasses.field(default_factory=list)
    #: (row, remote path, why it is not the recorded content)
    different: list[tuple[SyncedFile, str, str]] = dataclasses.field(default_factory=list)
    #: problems that prevented checks (the rows concerned are counted as missing)
    problems: list[str] = dataclasses.field(default_factory=list)
    listing_requests: int = 0


def _check_server(config: Config, server: str, rows: list[SyncedFile], copies: list[Copy],
                  deep: bool = False) -> ServerReport:
    """Check `rows` (of `server`) against the server, with one listing of the destination where
    the transporter can list, else one `exists` per copy.

    A row is present when EVERY copy recorded for it in `synced_copies` is there (two rules may send
    one file to one server at two places), and different when a copy's listed size, or its MD5 where
    the listing gives one (or `deep` reads it back), is not what was recorded. A row without
    recorded copies (written by an older version or by the original) is located through the config,
    where any one place will do, and only its presence is checked."""
    report = ServerReport()
    settings = config.servers[server]
    state_dir = os.path.join(os.path.dirname(os.path.abspath(config.settings.PERSISTENT_DATA_DB)),
                             "transporter_state")
    transporter = resolve_transporter(settings.transporter)(
        settings.settings,
        TransporterContext(server_name=server, state_dir=state_dir,
                           source_roots=tuple(s.scan_path for s in config.sources.values()),
                           timeout=config.settings.VERIFY_TIMEOUT))
    by_file: dict[str, list[Copy]] = {}
    for copy in copies:
        by_file.setdefault(copy.input_file, []).append(copy)
    legacy = {row.input_file: routing.remote_paths_on_server(
        config, row.input_file, server, row.transported_file_basename)
        for row in rows if row.input_file not in by_file}
    wanted = {copy.remote_path for copy in copies} | {r for paths in legacy.values() for r in paths}
    try:
        found = _look_up(transporter, wanted)
        for row in rows:
            recorded = by_file.get(row.input_file)
            if recorded is None:
                if not any(found(remote) for remote in legacy[row.input_file]):
                    report.missing.append(row)
                continue
            present = True
            for copy in recorded:
                entry = found(copy.remote_path)
                if entry is None:
                    present = False
                    continue
                if isinstance(entry, RemoteEntry):
                    read_back = None
                    if deep and entry.md5 is None and copy.md5 is not None and transporter.can_read_back:
                        read_back = transporter.read_back_md5(copy.remote_path)
                    why = fingerprint.difference(copy.size, copy.md5, entry, read_back)
                    if why is not None:
                        report.different.append((row, copy.remote_path, why))
            if not present:
                report.missing.append(row)
    except TransporterError as error:
        report.problems.append(f"{server}: cannot check: {error}")
        checked = {row.input_file for row in report.missing} | {d[0].input_file for d in report.different}
        report.missing.extend(row for row in rows if row.input_file not in checked)
    finally:
        report.listing_requests = transporter.listing_requests
        transporter.close()
    return report


def _look_up(transporter: Transporter,
             wanted: set[str]) -> Callable[[str], RemoteEntry | bool | None]:
    """A lookup of the wanted remote paths: their listed entries, from as few listings as cover
    them (the top-level directories they are in, or everything if one is at the top), or, where
    the transporter cannot list, `exists` per path (True: present, None: absent)."""
    if not transporter.can_list:
        return lambda remote: True if transporter.exists(remote) else None
    tops = {remote.split("/", 1)[0] if "/" in remote else "" for remote in wanted}
    found: dict[str, RemoteEntry] = {}
    for prefix in sorted(tops) if "" not in tops else [""]:
        for entry in transporter.list_files(prefix):
            if entry.path in wanted and not entry.temporary:
                found[entry.path] = entry
    return found.get


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
        rows = list(synced.all())
        copies = {server: copies_on_server(synced, server) for server in config.servers}
    finally:
        synced.close()
    by_server: dict[str, list[SyncedFile]] = {}
    unknown = 0
    for row in rows:
        if row.server in config.servers:
            by_server.setdefault(row.server, []).append(row)
        else:
            unknown += 1
    missing: list[SyncedFile] = []
    different: list[tuple[SyncedFile, str, str]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(by_server)))) as pool:
        futures = {pool.submit(_check_server, config, server, server_rows, copies[server], deep): server
                   for server, server_rows in by_server.items()}
        for future in concurrent.futures.as_completed(futures):
            report = future.result()
            for problem in report.problems:
                print(problem, file=out)
            missing.extend(report.missing)
            different.extend(report.different)
    for row in sorted(missing, key=lambda r: (r.server, r.input_file)):
        print(f"MISSING on {row.server}: {row.input_file} ({row.url})", file=out)
    for row, remote, why in sorted(different, key=lambda d: (d[0].server, d[0].input_file, d[1])):
        print(f"DIFFERENT on {row.server}: {row.input_file} at {remote}: {why}", file=out)
    checked = len(rows) - unknown
    wrong = {(row.input_file, row.server) for row in missing} | {(d[0].input_file, d[0].server) for d in different}
    print(f"Checked {checked} file(s) on {len(by_server)} server(s): {checked - len(wrong)} present, "
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
    return 1 if wrong else 0


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
