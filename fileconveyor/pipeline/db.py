"""The one gate to SQLite: every state database of File Conveyor is opened and written through here.

Why it is shaped like this (after huey's storage and persist-queue):
* One connection per database file per process, guarded by a lock: SQLite serialises writers
  anyway, and one connection avoids "database is locked" between our own threads (original #149).
  Other processes (`fileconveyor verify --requeue`, the Drupal module, `sqlite3` audits) are
  handled by the busy timeout, the same for every file.
* The journal is chosen per file kind (`Journal`), and the synchronous level follows from it, here
  and nowhere else: a rollback journal (the original's, and SQLite's default) with
  synchronous=FULL, or WAL with synchronous=NORMAL (durable against kill -9; a power cut may drop
  the last transactions). Files read by other users (`persistent_data.db`, `synced_files.db`: the
  Drupal module, PHP as the web server user) use the rollback journal: a WAL reader must be able
  to write the -shm file beside the database, which a read-only user cannot. Measured cost:
  docs/state.md and bench/bench_journal.py.
* `write(body)` is the way to write: BEGIN IMMEDIATE, body, COMMIT, the COMMIT inside the error
  handling. SQLITE_BUSY (another process holds the lock longer than the busy timeout), a full disk
  and I/O errors are retried with backoff for as long as they last, and shown by `degraded()` (the
  daemon publishes it in `status`), instead of crashing a thread. `transaction()` is the same as a
  context manager for bodies that cannot be re-run: it retries BEGIN and COMMIT in place, and
  raises `DatabaseUnavailable` when SQLite itself rolled the transaction back (disk full).
  ROLLBACK is only sent when a transaction is still open: a ROLLBACK after SQLite already rolled
  back fails with "no transaction is active" and used to hide "database or disk is full".
* Every sqlite3 error leaves this module as a `DatabaseError` whose message names the file and
  says what to do; a damaged file is a `DatabaseDamaged`, which a restart does not cure.
* `readonly=True` opens with a `file:...?mode=ro` URI: no file is created, no write lock taken,
  no schema written, so `status` and `verify` work for a user who may only read the files.
* Files are created 0600 before SQLite opens them (SQLite gives its -journal/-wal/-shm files the
  same mode as the database).
* The schema version lives in `PRAGMA user_version`, which `upgrade.py` reads. Version 1 is the
  original File Conveyor's format (pickled rows); this project starts at 2.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long SQLite itself waits for another process's lock before an attempt reports BUSY.
BUSY_TIMEOUT_SECONDS = 30.0
#: Backoff between attempts of a write that met BUSY, a full disk or an I/O error.
RETRY_FIRST_DELAY = 0.5
RETRY_MAX_DELAY = 30.0
#: A lasting problem is logged again at most this often (it is in `degraded()` all along).
RELOG_INTERVAL = 300.0
#: How long opening a database retries writing its schema (BUSY, disk full) before it fails.
OPEN_PATIENCE_SECONDS = 10.0

# Primary SQLite result codes (https://sqlite.org/rescode.html).
_SQLITE_READONLY, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR = 8, 5, 6, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_FORMAT, _SQLITE_NOTADB = 11, 13, 14, 24, 26
_SQLITE_READONLY_ROLLBACK = 776  # extended: a read-only connection met a hot journal

#: Conditions that pass (a lock is released, space is freed, a disk is remounted): retried.
_TRANSIENT = {
    _SQLITE_BUSY: "busy (another process holds a lock)",
    _SQLITE_LOCKED: "locked",
    _SQLITE_FULL: "disk full",
    _SQLITE_IOERR: "I/O error",
    _SQLITE_CANTOPEN: "cannot open a journal file",
    _SQLITE_READONLY: "read-only",
}
_DAMAGED = (_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_FORMAT)


class Journal(enum.Enum):
    """Journal mode of a state database; the synchronous level follows from it (module docstring)."""

    ROLLBACK = "delete"
    WAL = "wal"


_SYNCHRONOUS = {Journal.ROLLBACK: "FULL", Journal.WAL: "NORMAL"}


class DatabaseError(Exception):
    """A state database cannot be used; the message names the file and says what to do."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DatabaseDamaged(DatabaseError):
    """The file is not a (healthy) SQLite database: restarting does not help, a person must act."""


class DatabaseUnavailable(DatabaseError):
    """A transient condition (lock held elsewhere, disk full, I/O error) stopped a transaction."""

    def __init__(self, message: str, path: str = "", problem: str = "") -> None:
        super().__init__(message, path)
        self.problem = problem


class DatabaseClosed(DatabaseError):
    """The database was closed (the daemon is stopping) while a write waited to be retried."""


def damaged_hint(path: str) -> str:
    """What to do about a damaged state file (the same advice everywhere)."""
    return (f"restore {path} from a backup, or move it aside and run `fileconveyor upgrade --resync-all` "
            "(a new one is created and every file is compared again at the next start)")


#: Python < 3.11 gives no result code: the message texts of the codes that matter.
_CODE_BY_TEXT = (("database is locked", _SQLITE_BUSY), ("disk is full", _SQLITE_FULL),
                 ("disk I/O error", _SQLITE_IOERR), ("readonly database", _SQLITE_READONLY),
                 ("unable to open", _SQLITE_CANTOPEN), ("not a database", _SQLITE_NOTADB),
                 ("malformed", _SQLITE_CORRUPT))


def _code(error: sqlite3.Error) -> int | None:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(error)
    return next((c for fragment, c in _CODE_BY_TEXT if fragment in text), None)


def classify(path: str, error: sqlite3.Error, doing: str = "") -> DatabaseError:
    """The DatabaseError for an sqlite3 error on `path` (naming the file, saying what to do)."""
    code = _code(error)
    where = f"{path}: {doing + ': ' if doing else ''}{error}"
    if getattr(error, "sqlite_errorcode", None) == _SQLITE_READONLY_ROLLBACK:
        return DatabaseError(f"{where}: a write was interrupted (kill -9 or a crash) and its journal "
                             f"{path}-journal must be rolled back first, which a read-only command does "
                             "not do: start the daemon (or open the file once with write access, e.g. "
                             f"`sqlite3 {path} 'PRAGMA quick_check'`), then try again", path)
    if code in _DAMAGED:
        return DatabaseDamaged(f"{where}. The file is damaged: {damaged_hint(path)}", path)
    if code in _TRANSIENT:
        return DatabaseUnavailable(where, path, _TRANSIENT[code])
    return DatabaseError(where, path)


# --- health: what the daemon shows in `status` --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Degraded:
    """A database whose writes are being retried: `problem` ('disk full', 'busy ...') since `since`."""

    path: str
    problem: str
    detail: str
    since: float
    attempts: int


_degraded: dict[str, Degraded] = {}
_degraded_lock = threading.Lock()


def degraded() -> list[Degraded]:
    """Databases of this process whose writes are currently failing and being retried."""
    with _degraded_lock:
        return sorted(_degraded.values(), key=lambda d: d.path)


def _note_problem(path: str, error: DatabaseUnavailable) -> Degraded:
    with _degraded_lock:
        old = _degraded.get(path)
        state = Degraded(path, error.problem, str(error), old.since if old else time.time(),
                         (old.attempts if old else 0) + 1)
        _degraded[path] = state
    return state


def _note_recovered(path: str) -> None:
    with _degraded_lock:
        old = _degraded.pop(path, None)
    if old is not None:
        log.warning("%s works again after %.0f s (%s, %d attempt(s))", path, time.time() - old.since,
                    old.problem, old.attempts)


# --- files ----------------------------------------------------------------------------------------

def create_private_file(path: str) -> None:
    """Create `path` (and its directory) with mode 0600 if it does not exist yet."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _in_wal_mode(path: str) -> bool:
    """The database header's file format versions (bytes 18 and 19) are 2 in WAL mode."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2


def readonly_uri(path: str) -> str:
    """`file:` URI opening `path` read-only: SQLite takes no write lock and creates nothing.

    A WAL file whose -wal is absent (no writer has it open: everything is in the main file) is
    opened `immutable`, or a reader allowed to write the directory would create -wal and -shm
    beside it. A writer starting during that read is the one risk: its changes may be misread,
    by a status line, for the length of one query."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    if _in_wal_mode(path) and not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    return uri


def connect(path: str, *, readonly: bool = False, timeout: float | None = None) -> sqlite3.Connection:
    """A raw connection with this module's busy timeout, in autocommit mode (explicit BEGINs).

    For code that must drive SQLite itself (upgrade's exclusive migrations, tools); the daemon's
    state goes through `Database`. `timeout`: BUSY_TIMEOUT_SECONDS unless given."""
    timeout = BUSY_TIMEOUT_SECONDS if timeout is None else timeout
    try:
        if readonly:
            if not os.path.exists(path):
                raise DatabaseError(f"{path} does not exist", path)
            conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=timeout,
                                   isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    except sqlite3.Error as error:
        raise classify(path, error, "cannot open") from error
    return conn


class Database:
    """A SQLite file with a known schema version, shared safely between threads."""

    def __init__(self, path: str, schema: Sequence[str], version: int | None, *,
                 journal: Journal | None = Journal.ROLLBACK, readonly: bool = False, legacy_hint: str = "",
                 check: bool = True) -> None:
        """`journal`: None keeps the file's current mode (a new file: ROLLBACK), for openers that do
        not know the setting that chose it. `version` None: a private file without a schema
        version (a transporter's state). `legacy_hint`: what to say about a file in the original
        File Conveyor's format. `check`: a writer runs `PRAGMA quick_check` first (0.15 s per
        million rows), so that a damaged file stops a (re)start with a DatabaseDamaged naming it
        instead of crashing a thread later, again at every restart."""
        self.path = path
        self.readonly = readonly
        self.journal = journal
        self._legacy_hint = legacy_hint or ("was written by the original File Conveyor; run `fileconveyor "
                                            "upgrade` to convert it (every pending item is kept)")
        # Who may use the connection (see transaction(): group commit). `_runner`: the thread that
        # runs SQL now; `_group`: the open write transaction; `_writers`/`_readers`: waiting.
        self._cond = threading.Condition(threading.Lock())
        self._runner: int | None = None
        self._group: _Group | None = None
        self._writers = 0
        self._readers = 0
        #: COMMITs made and transaction bodies run: their ratio is what group commit saves.
        self.commits = 0
        self.bodies = 0
        self._closed = threading.Event()
        if not readonly and path != ":memory:":
            try:
                create_private_file(path)
            except OSError as error:
                raise DatabaseError(f"cannot create {path}: {error}", path) from None
        self._conn = connect(path, readonly=readonly)
        try:
            if check and not readonly and path != ":memory:":
                self._quick_check()
            self._open(schema, version)
        except BaseException:
            self._conn.close()
            raise

    def _open(self, schema: Sequence[str], version: int | None) -> None:
        path = self.path
        try:
            if not self.readonly:
                if self.journal is None:
                    current_mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
                    self.journal = Journal.WAL if current_mode == Journal.WAL.value else Journal.ROLLBACK
                mode = self._conn.execute(f"PRAGMA journal_mode = {self.journal.value}").fetchone()[0]
                if mode != self.journal.value:  # another process holds the file: keep going, say so
                    log.warning("%s stays in journal mode %s (wanted %s: another process has it open)",
                                path, mode, self.journal.value)
                self._conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.journal]}")
            current = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self.tables()
        except sqlite3.Error as error:
            raise classify(path, error, "cannot open") from error
        if version is not None and current not in (0, version):
            hint = ("it was written by the original File Conveyor; run `fileconveyor upgrade`"
                    if current in (0, 1) else "run `fileconveyor upgrade`, or use a newer fileconveyor")
            raise DatabaseError(f"{path} has schema version {current}, expected {version}: {hint}", path)
        if version is not None and current == 0 and tables:
            raise DatabaseError(f"{path} {self._legacy_hint}", path)
        if self.readonly:
            return

        def create(conn: sqlite3.Connection) -> None:
            for statement in schema:  # all IF NOT EXISTS: a lost table or index comes back
                conn.execute(statement)
            if version is not None:
                conn.execute(f"PRAGMA user_version = {int(version)}")
        # Bounded: a daemon that cannot write its state at start says so instead of hanging.
        self.write(create, give_up_after=OPEN_PATIENCE_SECONDS)

    def _quick_check(self) -> None:
        try:
            problems = [r[0] for r in self._conn.execute("PRAGMA quick_check")]
        except sqlite3.Error as error:
            raise classify(self.path, error, "cannot open") from error
        if problems != ["ok"]:
            raise DatabaseDamaged(f"{self.path} failed PRAGMA quick_check ({'; '.join(problems[:3])}): "
                                  f"{damaged_hint(self.path)}", self.path)

    def tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                  "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").fetchall()
        return {r[0] for r in rows}

    # --- writing --------------------------------------------------------------------------

    def write(self, body: Callable[[sqlite3.Connection], T], give_up_after: float | None = None) -> T:
        """Run `body(conn)` in one transaction and return its result. BUSY, a full disk and I/O
        errors roll back and re-run the whole transaction after a backoff, for as long as they
        last (shown by `degraded()`), or until `give_up_after` seconds have passed (then the
        DatabaseUnavailable is raised); `body` must therefore only touch the database."""
        delay = RETRY_FIRST_DELAY
        last_log = 0.0
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        while True:
            try:
                with self.transaction(retry=False) as conn:
                    result = body(conn)
            except DatabaseUnavailable as error:
                if deadline is not None and time.monotonic() + delay > deadline:
                    _note_recovered(self.path)  # the caller reports it; nothing keeps retrying
                    raise
                # transaction() has noted the problem for degraded(); say it here, now and then.
                if time.monotonic() - last_log >= RELOG_INTERVAL:
                    last_log = time.monotonic()
                    log.error("Cannot write %s (%s); retrying every %.0f s at most until it works",
                              self.path, error, RETRY_MAX_DELAY)
                log.debug("%s: attempt failed: %s", self.path, error)
                self._backoff(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            _note_recovered(self.path)
            return result

    def _backoff(self, delay: float) -> None:
        if self._closed.wait(delay):
            raise DatabaseClosed(f"{self.path} was closed while a write waited to be retried", self.path)

    @contextlib.contextmanager
    def transaction(self, retry: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, for a body that cannot be re-run; returns once the body's
        changes are durable (committed), or raises.

        Group commit: a body that ends while other threads wait to write leaves the transaction
        open for them (each body runs in its own SAVEPOINT, so an exception undoes only its own
        changes) and waits; the last body of the group (at most GROUP_MAX) commits for all. In
        rollback-journal mode one commit costs two fsyncs, so threads that finish files at the
        same time share them instead of queueing for one each. Nobody reads while a group is
        open, so no one sees changes that are not yet durable.

        COMMIT is retried in place while BUSY (or disk full with the transaction still open), and
        with `retry` BEGIN too (`write()` backs off without holding the connection instead); when
        SQLite has rolled the transaction back itself, a DatabaseUnavailable is raised (nothing of
        the group was written). Prefer `write()`."""
        if self.readonly:
            raise DatabaseError(f"{self.path} was opened read-only", self.path)
        me = threading.get_ident()
        if self._runner == me:
            raise DatabaseError(f"{self.path}: a transaction inside a transaction (a bug)", self.path)
        with self._cond:
            self._writers += 1
            # A new group waits for waiting readers: writes must not starve `query`.
            while self._runner is not None or (self._group is None and self._readers):
                self._cond.wait()
            self._writers -= 1
            self._runner = me
            group = self._group
        try:
            if group is None:
                self._step("BEGIN IMMEDIATE", retry)
                group = self._group = _Group()
            group.members += 1
            self.bodies += 1
            savepoint = f"fc_member_{group.members}"
            self._conn.execute(f"SAVEPOINT {savepoint}")
        except BaseException as error:
            problem = self._problem(error)
            self._end_group(None, problem)
            _raise(problem, error)
        failure: BaseException | None = None
        outer = getattr(_in_transaction, "depth", 0)  # inside another database's transaction?
        _in_transaction.depth = outer + 1
        try:
            yield self._conn
        except BaseException as error:
            failure = error
        finally:
            _in_transaction.depth = outer
        if failure is None:
            try:
                self._conn.execute(f"RELEASE {savepoint}")
            except BaseException as error:
                failure = error
        if failure is not None:
            if self._conn.in_transaction:  # undo this body only; the group goes on
                try:
                    self._conn.execute(f"ROLLBACK TO {savepoint}")
                    self._conn.execute(f"RELEASE {savepoint}")
                except sqlite3.Error:
                    pass
            problem = self._problem(failure)
            if not self._conn.in_transaction:  # SQLite rolled it all back (disk full): group lost
                self._end_group(group, problem)
                _raise(problem, failure)
        with self._cond:
            # A thread inside another database's transaction commits at once: waiting here
            # while holding that one could close a cycle of waits between the two.
            hand_over = self._writers > 0 and not self._readers and group.members < GROUP_MAX and not outer
            if hand_over:
                self._runner = None
                self._cond.notify_all()
                while not group.done:
                    self._cond.wait()
        if not hand_over:
            try:
                self._step("COMMIT", True)  # always safe in place: the group's work stays
            except BaseException as error:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the original error is what matters
                        self._conn.execute("ROLLBACK")
                self._end_group(group, self._problem(error))
            else:
                self.commits += 1
                self._end_group(group, None)
        if failure is not None:
            _raise(problem, failure)
        if group.error is not None:
            raise group.error
        _note_recovered(self.path)

    def _problem(self, error: BaseException) -> BaseException:
        """The exception to raise for `error` (sqlite3 errors become DatabaseErrors), noted in
        degraded() when it is a transient condition."""
        problem = classify(self.path, error) if isinstance(error, sqlite3.Error) else error
        if isinstance(problem, DatabaseUnavailable):
            _note_problem(self.path, problem)  # shown by degraded() until a commit works
        return problem

    def _end_group(self, group: "_Group | None", problem: BaseException | None) -> None:
        """Close the open group (committed, or lost with `problem`) and let the next thread in."""
        with self._cond:
            if group is not None:
                group.error = problem
                group.done = True
                self._group = None
            self._runner = None
            self._cond.notify_all()

    def _step(self, statement: str, retry: bool) -> None:
        """BEGIN or COMMIT, retried in place when that is safe (nothing of the body is lost)."""
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                self._conn.execute(statement)
                if retry and delay > RETRY_FIRST_DELAY:
                    _note_recovered(self.path)
                return
            except sqlite3.Error as error:
                problem = classify(self.path, error, statement.split()[0])
                still_open = statement == "COMMIT" and self._conn.in_transaction
                if not (retry and isinstance(problem, DatabaseUnavailable)
                        and (statement != "COMMIT" or still_open)):
                    raise problem from error
                state = _note_problem(self.path, problem)
                if state.attempts == 1:
                    log.error("Cannot write %s (%s); retrying until it works", self.path, problem)
                self._backoff(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)

    # --- reading --------------------------------------------------------------------------

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement; a read that meets BUSY past the busy timeout is retried."""
        delay = RETRY_FIRST_DELAY
        while True:
            try:
                with self._reading():
                    rows = self._conn.execute(sql, tuple(params)).fetchall()
                if delay > RETRY_FIRST_DELAY:  # only a wait of this read clears its own mark
                    _note_recovered(self.path)
                return rows
            except sqlite3.Error as error:
                problem = classify(self.path, error)
                if _code(error) not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                    raise problem from error
                _note_problem(self.path, problem)  # type: ignore[arg-type]
                self._backoff(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """The connection for one read: not while a write group is open (its changes are not
        durable yet), except from the thread running in it (a body may read)."""
        me = threading.get_ident()
        if self._runner == me:
            yield
            return
        with self._cond:
            self._readers += 1
            while self._runner is not None or self._group is not None:
                self._cond.wait()
            self._readers -= 1
            self._runner = me
        try:
            yield
        finally:
            with self._cond:
                self._runner = None
                self._cond.notify_all()

    def close(self) -> None:
        self._closed.set()
        with self._reading():
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        if self.bodies:
            log.debug("Closed %s: %d transaction bodies in %d commits", self.path, self.bodies, self.commits)


#: Most bodies committed by one group commit (Database.transaction).
GROUP_MAX = 64
#: Per thread: how many Database transactions it is inside (group commit must not wait in a nested one).
_in_transaction = threading.local()


def _raise(problem: BaseException, cause: BaseException) -> NoReturn:
    if problem is cause:
        raise cause
    raise problem from cause


class _Group:
    """One open write transaction shared by the bodies of several threads."""

    def __init__(self) -> None:
        self.members = 0
        self.done = False
        self.error: BaseException | None = None

