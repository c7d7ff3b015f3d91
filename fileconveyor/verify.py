"""Is every recorded file really at its destination?

For every row of `synced_files.db`, the server's own transporter is asked (`exists`: HEAD, stat,
SIZE...) at the remote path the config gives for that file. The original sent a plain-HTTP HEAD to
the URL, which failed for HTTPS URLs and for servers that are not web servers. Servers are checked
in parallel, one transporter (connection) each.

Exit status: 0 when everything is there, 1 when anything is missing or could not be checked.
`--requeue` queues the missing files again (MODIFIED if the source still exists, else DELETED so
that the stale row goes away); the running daemon picks them up within seconds. Without
`--requeue` the databases are opened read-only: a user who may only read them can verify.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
from typing import Sequence, TextIO

from fileconveyor import routing
from fileconveyor.config import Config, ConfigError, load_config
from fileconveyor.fsmonitor.base import Event
from fileconveyor.pipeline.queue import PersistentPipeline
from fileconveyor.pipeline import state
from fileconveyor.pipeline.db import DatabaseError
from fileconveyor.pipeline.synced_files import SyncedFile, all_copies
from fileconveyor.transporters.base import TransporterContext, TransporterError, resolve_transporter


def _check_server(config: Config, server: str, rows: list[SyncedFile],
                  copies: dict[tuple[str, str], list[str]]) -> tuple[list[SyncedFile], list[str]]:
    """Returns (missing rows, problems that prevented checks).

    A row is present when EVERY copy recorded for it in `synced_copies` is there (two rules may send
    one file to one server at two places). A row without recorded copies (written by an older
    version or by the original) is located through the config, where any one place will do."""
    missing: list[SyncedFile] = []
    problems: list[str] = []
    settings = config.servers[server]
    state_dir = os.path.join(os.path.dirname(os.path.abspath(config.settings.PERSISTENT_DATA_DB)),
                             "transporter_state")
    transporter = resolve_transporter(settings.transporter)(
        settings.settings,
        TransporterContext(server_name=server, state_dir=state_dir,
                           source_roots=tuple(s.scan_path for s in config.sources.values()),
                           timeout=config.settings.VERIFY_TIMEOUT))
    try:
        for row in rows:
            recorded = copies.get((row.input_file, server))
            remotes = recorded or routing.remote_paths_on_server(
                config, row.input_file, server, row.transported_file_basename)
            try:
                present = [transporter.exists(remote) for remote in remotes]
                if not present or not (all(present) if recorded else any(present)):
                    missing.append(row)
            except TransporterError as error:
                problems.append(f"{row.input_file} on {server}: cannot check: {error}")
                missing.append(row)
    finally:
        transporter.close()
    return missing, problems


def verify(config: Config, requeue: bool = False, out: TextIO = sys.stdout) -> int:
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
        copies = all_copies(synced)
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
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(by_server)))) as pool:
        futures = {pool.submit(_check_server, config, server, server_rows, copies): server
                   for server, server_rows in by_server.items()}
        for future in concurrent.futures.as_completed(futures):
            server_missing, problems = future.result()
            for problem in problems:
                print(problem, file=out)
            missing.extend(server_missing)
    for row in sorted(missing, key=lambda r: (r.server, r.input_file)):
        print(f"MISSING on {row.server}: {row.input_file} ({row.url})", file=out)
    checked = len(rows) - unknown
    print(f"Checked {checked} file(s) on {len(by_server)} server(s): {checked - len(missing)} present, "
          f"{len(missing)} missing" + (f"; {unknown} row(s) for servers no longer configured" if unknown else ""),
          file=out)
    if missing and requeue:
        pipeline = PersistentPipeline(config.settings.PERSISTENT_DATA_DB)
        try:
            paths = sorted({row.input_file for row in missing})
            pipeline.put_many((p, Event.MODIFIED if os.path.isfile(p) else Event.DELETED) for p in paths)
        finally:
            pipeline.close()
        print(f"Queued {len(paths)} file(s) again", file=out)
    return 1 if missing else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fileconveyor.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.xml")
    parser.add_argument("--requeue", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(os.path.abspath(args.config), for_daemon=False)
    except ConfigError as error:
        for problem in error.problems:
            print(str(problem), file=sys.stderr)
        return 2
    try:
        return verify(config, requeue=args.requeue)
    except DatabaseError as error:
        print(f"verify: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
