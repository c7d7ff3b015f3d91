"""The three state databases checked together: damaged, lost or mismatched files are found at start.

Each database alone cannot tell that another one was lost. The dangerous case is
`synced_files.db` deleted, truncated to zero bytes or replaced while `fsmonitor.db` survives: the
index says every file is unchanged, so nothing is synced again, and the record of where each file
was published is silently gone (`verify` checks 0 rows and reports success). So:

* `synced_files.db` carries a random *generation* (`PRAGMA application_id`, given when it is
  created) and `fsmonitor.db` records, in its own `application_id`, the generation it was built
  alongside. An index with rows whose recorded generation is not that of an existing, non-empty
  `synced_files.db` with its table is refused at start with a message naming both files and the
  two ways out: restore the file from a backup, or `fileconveyor upgrade --resync-all` (an
  explicit full comparison). An index recorded before generations existed (0) adopts the current one.
* A damaged `persistent_data.db` or `synced_files.db` (not a database, or failing
  `PRAGMA quick_check`) is refused at start: both hold facts that cannot be rebuilt from the disk.
  A damaged `fsmonitor.db` is moved aside and rebuilt (it is only a cache of the disk; see
  `fileconveyor.fsmonitor.pathscanner.PathScanner`).
* A lost or empty index next to a `synced_files.db` with rows is *seeded* from it: every recorded
  source path goes into the new index with an entry that never matches the disk, and its
  directories as directories. The start-up scan then reports every such file still on disk as
  modified (re-checked and uploaded again) and every one gone as deleted (its remote copies are
  deleted): a full comparison, never a silent loss of what was published.

`check()` reads only (read-only URIs: `status` and `verify` use it and create nothing);
`prepare()` runs at daemon start and may write (it sets the journal modes the settings ask for,
gives generations and seeds the index);
`reset_index()` is `fileconveyor upgrade --resync-all`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
from typing import Any

from fileconveyor.fsmonitor import pathscanner
from fileconveyor.pipeline.db import (
    Database,
    DatabaseDamaged,
    DatabaseError,
    Journal,
    classify,
    connect,
    damaged_hint,
)
from fileconveyor.pipeline.synced_files import SyncedFiles

log = logging.getLogger(__name__)

#: Index entry of a seeded file: matches no file on disk, so the scan reports it.
SEEDED_ENTRY = pathscanner.Entry(-2, -2, False)
_SEED_BATCH = 5000


@dataclasses.dataclass(frozen=True)
class FileState:
    """What one state file looks like, read without creating or locking anything."""

    path: str
    exists: bool
    size: int = 0
    tables: frozenset[str] = frozenset()
    generation: int = 0
    #: Rows of the file's main table (None: table absent or not counted).
    rows: int | None = None
    #: Why the file is damaged, or None.
    damage: str | None = None
    #: Why the file could not be read at all (permissions, WAL without -shm access), or None.
    unreadable: str | None = None


def inspect(path: str, table: str, *, quick_check: bool) -> FileState:
    """Look at a state file read-only; never raises for a damaged or unreadable file."""
    if not os.path.exists(path):
        return FileState(path, exists=False)
    try:
        size = os.path.getsize(path)
    except OSError as error:
        return FileState(path, exists=True, unreadable=str(error))
    if size == 0:
        return FileState(path, exists=True, size=0)
    try:
        conn = connect(path, readonly=True)
    except DatabaseDamaged as error:
        return FileState(path, exists=True, size=size, damage=str(error))
    except DatabaseError as error:
        return FileState(path, exists=True, size=size, unreadable=str(error))
    try:
        tables = frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        generation = int(conn.execute("PRAGMA application_id").fetchone()[0])
        if quick_check:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                return FileState(path, True, size, tables, generation,
                                 damage=f"{path} failed PRAGMA quick_check: {'; '.join(problems[:3])}")
        rows = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] if table in tables else None
        return FileState(path, True, size, tables, generation, rows)
    except sqlite3.Error as error:
        problem = classify(path, error)
        if isinstance(problem, DatabaseDamaged):
            return FileState(path, exists=True, size=size, damage=str(problem))
        return FileState(path, exists=True, size=size, unreadable=str(problem))
    finally:
        conn.close()


def _lost_synced_files(synced: FileState, index: FileState) -> str | None:
    """Why the index cannot be trusted next to this synced_files.db, or None when it can."""
    if not index.rows or not index.generation or synced.unreadable:
        # An empty index compares everything anyway; generation 0 was recorded before generations
        # existed; a file this user cannot read is reported by whoever opens it next.
        return None
    if not synced.exists:
        what = "does not exist"
    elif synced.size == 0:
        what = "is empty (0 bytes)"
    elif "synced_files" not in synced.tables:
        what = "has no synced_files table"
    elif synced.generation != index.generation:
        what = f"is not the file the index was built with (generation {synced.generation}, expected {index.generation})"
    else:
        return None
    return (f"{synced.path} {what}, but the path index {index.path} lists {index.rows} entries that were "
            f"synced and recorded in it: the record of where those files were published is lost, and the "
            f"index would keep them from being synced again. Restore {synced.path} from a backup, or run "
            f"`fileconveyor upgrade --resync-all` to compare and sync every file again")


def check(settings: Any, *, quick_check: bool = False, pipeline: bool = True) -> list[str]:
    """Read-only check of the three files; raises DatabaseError (naming the file and what to do) for
    a damaged persistent_data.db (unless `pipeline` is False: the caller does not use it) or
    synced_files.db, or a lost synced_files.db; returns warnings (a damaged index) to show."""
    warnings: list[str] = []
    files = [(settings.SYNCED_FILES_DB, "synced_files")]
    if pipeline:
        files.insert(0, (settings.PERSISTENT_DATA_DB, "pipeline_queue"))
    for path, table in files:
        state = inspect(path, table, quick_check=quick_check)
        if state.damage:
            raise DatabaseDamaged(f"{state.damage}. {damaged_hint(path)}", path)
    synced = inspect(settings.SYNCED_FILES_DB, "synced_files", quick_check=False)
    index = inspect(settings.FSMONITOR_DB, "pathscanner", quick_check=quick_check)
    if index.damage:
        warnings.append(f"{index.damage}; the daemon moves it aside and rebuilds it at its next start "
                        "(every file is compared again)")
    elif index.unreadable:
        log.debug("cannot read %s: %s", index.path, index.unreadable)
    lost = _lost_synced_files(synced, index)
    if lost:
        raise DatabaseError(lost, settings.SYNCED_FILES_DB)
    return warnings


def set_pipeline_journal(settings: Any) -> None:
    """Put persistent_data.db in the journal mode PERSISTENT_DATA_WAL asks for; PersistentPipeline
    keeps whatever mode the file has, so this is the one place that chooses it."""
    journal = Journal.WAL if settings.PERSISTENT_DATA_WAL else Journal.ROLLBACK
    Database(settings.PERSISTENT_DATA_DB, (), None, journal=journal, check=False).close()


def open_synced_files(settings: Any, *, readonly: bool = False) -> SyncedFiles:
    """synced_files.db as the settings want it (SYNCED_FILES_WAL): the one way the daemon opens it,
    so that no caller switches its journal mode back and forth."""
    return SyncedFiles(settings.SYNCED_FILES_DB, readonly=readonly, wal=bool(settings.SYNCED_FILES_WAL))


def _open_index(path: str) -> Database:
    return Database(path, (pathscanner.CREATE_TABLE, pathscanner.CREATE_INDEX), pathscanner.SCHEMA_VERSION,
                    journal=Journal.WAL)


def seed_index(index: Database, synced: SyncedFiles) -> int:
    """Put every source path recorded in synced_files.db into an empty index (module docstring).
    Returns the number of files seeded."""
    paths = sorted({r[0] for r in synced.db.query("SELECT DISTINCT input_file FROM synced_files "
                                                 "WHERE input_file LIKE '/%'")})
    directories: set[pathscanner.Key] = set()
    rows: list[tuple[str, str, int, int, int]] = []
    for path in paths:
        directory, name = pathscanner.split_key(path)
        rows.append((directory, name, SEEDED_ENTRY.mtime_ns, SEEDED_ENTRY.size, 0))
        while directory != "/":
            key = pathscanner.split_key(directory)
            if key in directories:
                break
            directories.add(key)
            directory = key[0]
    dir_entry = pathscanner.DIR_ENTRY
    rows.extend((d, n, dir_entry.mtime_ns, dir_entry.size, 1) for d, n in sorted(directories))
    for start in range(0, len(rows), _SEED_BATCH):
        batch = rows[start:start + _SEED_BATCH]
        index.write(lambda conn: conn.executemany(
            "INSERT OR IGNORE INTO pathscanner(path, filename, mtime, size, is_dir) VALUES (?, ?, ?, ?, ?)", batch))
    return len(paths)


def _bind_index(settings: Any, synced: SyncedFiles, reset: bool) -> list[str]:
    """Record the synced generation in the index; seed an empty index from synced_files.db."""
    report: list[str] = []
    index = _open_index(settings.FSMONITOR_DB)
    try:
        if reset:
            index.write(lambda conn: conn.execute("DELETE FROM pathscanner"))
        rows = int(index.query("SELECT COUNT(*) FROM pathscanner")[0][0])
        if rows == 0:
            seeded = seed_index(index, synced)
            if seeded:
                report.append(f"{settings.FSMONITOR_DB}: the path index is empty; {seeded} file(s) recorded in "
                              f"{settings.SYNCED_FILES_DB} are compared with the disk at the next start "
                              "(re-synced if present, deleted remotely if gone)")
        generation = synced.generation
        index.write(lambda conn: conn.execute(f"PRAGMA application_id = {int(generation)}"))
    finally:
        index.close()
    return report


def prepare(settings: Any) -> list[str]:
    """Daemon start: `check()` with quick_check, then give synced_files.db a generation, record it
    in the index and seed an empty index. Returns lines worth logging; raises DatabaseError."""
    if check(settings, quick_check=True):  # the only warning: a damaged index
        # PathScanner moves it aside; done here so that the new index is seeded before the scan.
        pathscanner.PathScanner(settings.FSMONITOR_DB).close()
    set_pipeline_journal(settings)
    synced = open_synced_files(settings)
    try:
        return _bind_index(settings, synced, reset=False)
    finally:
        synced.close()


def reset_index(settings: Any) -> list[str]:
    """`fileconveyor upgrade --resync-all`: empty the index (moving a damaged one aside), accept the
    synced_files.db that is there now (creating it if needed), and seed the index from it, so the
    next start compares every file. Returns the report."""
    index = inspect(settings.FSMONITOR_DB, "pathscanner", quick_check=True)
    report = []
    if index.damage:
        pathscanner.PathScanner(settings.FSMONITOR_DB).close()
        report.append(f"{settings.FSMONITOR_DB}: damaged; moved aside and started anew")
    synced = open_synced_files(settings)
    try:
        report.append(f"{settings.FSMONITOR_DB}: path index emptied ({index.rows or 0} entries); every file is "
                      "compared with the disk at the next start")
        report.extend(_bind_index(settings, synced, reset=True))
    finally:
        synced.close()
    return report
