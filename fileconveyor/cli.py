"""The `fileconveyor` command. The only place that maps errors to exit codes and sets up logging.

Exit codes: 0 success; 1 failure (daemon did not start or stop, files missing in `verify`,
upgrade failed, a state database damaged, lost or unreadable: also for `status`, which still
prints what it could read); 2 bad config or bad usage; 141 stdout closed early (`| head`).
No traceback reaches a user: unexpected errors are logged with their traceback to the log file
only and summarised on stderr in one line.
"""
from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import sys
import time
from typing import Any, Callable, Sequence

from fileconveyor import __version__, statusview
from fileconveyor.config import Config, ConfigError, check_config, load_config
from fileconveyor.settings import Settings

log = logging.getLogger("fileconveyor")

LOG_FORMAT = "%(asctime)s %(levelname)-8s [%(threadName)s] %(name)s: %(message)s"


# --- logging ---------------------------------------------------------------------------------

class _ReopenableFileHandler(logging.handlers.WatchedFileHandler):
    """The one log rotation scheme: rotation is external (logrotate, contrib/fileconveyor.logrotate).
    The handler notices that its file was moved or removed and reopens it by itself (no signal
    needed, no `copytruncate` losing lines); SIGHUP reopens it too. Every log file is created 0600:
    the log names every synced file and error, and a file created by a reopen after logrotate moved
    the old one must not be more readable than the first (logging's own open() follows the umask,
    usually 0644)."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            self._statstream()
        finally:
            self.release()


def setup_logging(settings: Settings, console: bool = True, verbose: bool = False) -> Callable[[], None]:
    """Configure the root logger; returns a function that reopens the log file (SIGHUP).

    Under systemd (JOURNAL_STREAM or INVOCATION_ID set) the log goes to stderr, that is to the
    journal, at FILE_LOGGER_LEVEL, unless config.xml sets LOG_FILE explicitly."""
    from fileconveyor.systemd import under_systemd

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    file_handler: _ReopenableFileHandler | None = None
    levels = []
    journal = console and under_systemd() and "LOG_FILE" not in settings.explicit
    if settings.LOG_FILE and not journal:
        os.makedirs(os.path.dirname(os.path.abspath(settings.LOG_FILE)), exist_ok=True)
        file_handler = _ReopenableFileHandler(settings.LOG_FILE, encoding="utf-8")
        file_handler.setFormatter(formatter)
        file_handler.setLevel(settings.FILE_LOGGER_LEVEL)
        root.addHandler(file_handler)
        levels.append(settings.FILE_LOGGER_LEVEL)
    if console:
        console_handler = logging.StreamHandler(sys.stderr)
        # The journal stamps every line with the time itself.
        console_handler.setFormatter(logging.Formatter("%(levelname)-8s [%(threadName)s] %(name)s: %(message)s")
                                     if journal else formatter)
        level = (logging.DEBUG if verbose else
                 min(settings.FILE_LOGGER_LEVEL, settings.CONSOLE_LOGGER_LEVEL) if journal else
                 settings.CONSOLE_LOGGER_LEVEL)
        console_handler.setLevel(level)
        root.addHandler(console_handler)
        levels.append(level)
    root.setLevel(min(levels) if levels else logging.WARNING)
    return file_handler.reopen if file_handler is not None else (lambda: None)


# --- commands -----------------------------------------------------------------------------------

def _load(args: argparse.Namespace) -> Config:
    # Only the commands that watch the trees need every scanPath to exist: stop, status and
    # verify must work while one is missing (it is a warning for them).
    return load_config(os.path.abspath(args.config), for_daemon=args.command in ("run", "start", "reload"))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or args.config
    problems = check_config(os.path.abspath(path))
    for problem in problems:
        print(str(problem), file=sys.stderr)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        print(f"{len(errors)} error(s) in {path}", file=sys.stderr)
        return 2
    print(f"{path}: OK" + (f" ({len(problems)} warning(s))" if problems else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from fileconveyor.daemon import Runner

    ready_fd = args.ready_fd

    def ready(error: str | None) -> None:
        nonlocal ready_fd
        if ready_fd is None:
            return
        try:
            os.write(ready_fd, (f"error: {error}" if error else "ready").encode("utf-8", "replace") + b"\n")
            os.close(ready_fd)
        except OSError:
            pass
        ready_fd = None

    try:
        config = _load(args)
    except ConfigError as error:
        ready("the config is invalid:\n" + "\n".join(str(p) for p in error.problems if p.severity == "error"))
        raise
    reopen = setup_logging(config.settings, console=args.ready_fd is None, verbose=args.verbose)
    for warning in config.warnings:
        log.warning("%s", warning)
    _prepare_state(config, ready)
    return Runner(os.path.abspath(args.config), config, reopen, ready).run()


def _prepare_state(config: Config, ready: Callable[[str | None], None]) -> None:
    """Check the state databases together before the daemon uses them (fileconveyor.pipeline.state);
    skipped when a daemon already runs (it is told so by the PID file, next)."""
    from fileconveyor.daemon import running_pid
    from fileconveyor.pipeline import state
    from fileconveyor.pipeline.db import DatabaseError

    if running_pid(config.settings.PID_FILE) is not None:
        return
    try:
        for line in state.prepare(config.settings):
            log.warning("%s", line)
    except DatabaseError as error:
        log.critical("%s", error)
        ready(str(error))
        raise


def cmd_start(args: argparse.Namespace) -> int:
    from fileconveyor.daemon import start_detached

    config = _load(args)
    pid = start_detached(os.path.abspath(args.config), config.settings.PID_FILE, config.settings.LOG_FILE)
    print(f"File Conveyor started (PID {pid}); log: {config.settings.LOG_FILE or 'none'}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from fileconveyor.daemon import remove_stale_pid_file, stop_daemon

    config = _load(args)
    timeout = config.settings.SHUTDOWN_TIMEOUT + 30 if args.timeout is None else args.timeout
    stopped = stop_daemon(config.settings.PID_FILE, timeout, kill=args.kill)
    if stopped is None:
        print(f"File Conveyor is not running (no live process in {config.settings.PID_FILE})")
        # Left by a daemon that was killed: the Drupal module takes its mere existence for "running".
        if remove_stale_pid_file(config.settings.PID_FILE):
            print(f"Removed the stale PID file {config.settings.PID_FILE}")
        _tell_about_legacy_pid_file(config)
        return 0
    how = " with SIGKILL: it did not exit after SIGTERM" if stopped.killed else ""
    print(f"File Conveyor (PID {stopped.pid}) stopped{how}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to the running daemon. The config is checked here first, so that a mistake is shown
    to the person who made it (the daemon checks it again, and keeps its old config if it is bad)."""
    import signal

    from fileconveyor.daemon import signal_daemon

    config = _load(args)  # a bad config: its errors, exit 2, and no signal sent
    pid = signal_daemon(config.settings.PID_FILE, signal.SIGHUP)
    if pid is None:
        print(f"File Conveyor is not running (no live process in {config.settings.PID_FILE}); nothing to reload",
              file=sys.stderr)
        return 1
    print(f"Asked File Conveyor (PID {pid}) to reload {os.path.abspath(args.config)}; its log says when the new "
          f"config is in effect")
    return 0


def _wake_daemon(config: Config) -> None:
    """Files were queued by this process: the running daemon (if any) takes them now."""
    from fileconveyor.daemon import wake_daemon

    pid = wake_daemon(config.settings.PID_FILE)
    if pid is not None:
        log.info("Woke the running daemon (PID %d): it starts on the queued files now", pid)


def _tell_about_legacy_pid_file(config: Config) -> None:
    from fileconveyor.daemon import legacy_pid_file_note

    note = legacy_pid_file_note(config.settings)
    if note:
        print(f"NOTE: {note}", file=sys.stderr)


def status_report(config: Config) -> dict[str, Any]:
    """What `status` shows. Reads only: the databases are opened read-only (a user who may only
    read them can run it), and a database that cannot be read is a line in `problems`, not a crash."""
    from fileconveyor.daemon import running_pid
    from fileconveyor.pipeline import state
    from fileconveyor.pipeline.db import DatabaseError
    from fileconveyor.pipeline.queue import PersistentPipeline

    s = config.settings
    report: dict[str, Any] = {"running": False, "pid": None, "pid_file": s.PID_FILE, "problems": []}
    try:
        report["problems"].extend(state.check(s))
    except DatabaseError as error:
        report["problems"].append(str(error))
    pid = running_pid(s.PID_FILE)
    if pid is None and os.path.exists(s.PID_FILE) and not os.access(s.PID_FILE, os.R_OK):
        report["running"] = None  # the PID file is the daemon's (0600): a reader cannot tell
    if pid is not None:
        report.update(running=True, pid=pid)
        from fileconveyor.arbitrator import runtime_status_path
        try:
            with open(runtime_status_path(s), encoding="utf-8") as handle:
                runtime = json.load(handle)
            if runtime.get("pid") == pid:
                report["runtime"] = runtime
                # A source tree that is not watched syncs nothing: a problem (exit status 1).
                report["problems"].extend(f"source tree {u['path']} is not watched: {u['reason']}"
                                          for u in runtime.get("unwatched", []) if u.get("kind") == "tree")
        except (OSError, ValueError):
            pass
    report.update(waiting=0, in_flight=0, failed=0, to_delete=0, in_flight_files=[], failed_files=[])
    if _has_content(s.PERSISTENT_DATA_DB):
        try:
            pipeline = PersistentPipeline(s.PERSISTENT_DATA_DB, readonly=True)
            try:
                report.update(pipeline.counts())
                report["in_flight_files"] = [i.input_file for i in pipeline.in_flight()[:100]]
                report["failed_files"] = [
                    {"file": f.input_file, "event": f.event.name, "attempts": f.attempts, "kind": f.kind,
                     "reason": f.reason, "next_try": f.next_try} for f in pipeline.failed_items(100)]
            finally:
                pipeline.close()
        except DatabaseError as error:
            report.update(waiting=None, in_flight=None, failed=None, to_delete=None)
            report["problems"].append(str(error))
    synced: dict[str, int | None] = {name: 0 for name in config.servers}
    if _has_content(s.SYNCED_FILES_DB):
        try:
            db = state.open_synced_files(s, readonly=True)
            try:
                synced.update(db.counts_per_server())
                from fileconveyor.pipeline.synced_files import old_versions_summary
                count, next_due = old_versions_summary(db)
                report["old_versions"] = {"count": count, "next_deletion": next_due}
            finally:
                db.close()
        except DatabaseError as error:
            synced = {name: None for name in config.servers}
            report["problems"].append(str(error))
    report["synced"] = synced
    report["problems"] = list(dict.fromkeys(report["problems"]))
    from fileconveyor.daemon import legacy_pid_file_note
    report["notes"] = [note for note in (legacy_pid_file_note(s),) if note]
    return report


def _has_content(path: str) -> bool:
    """A database file worth reading: absent or 0 bytes means nothing recorded yet (state.check
    tells when that is itself the problem)."""
    try:
        return os.path.getsize(path) > 0
    except FileNotFoundError:
        return False


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when everything could be read, 1 when a state database is damaged, lost or unreadable."""
    if args.watch:
        config = _load(args)
        return statusview.watch(lambda: status_report(config), args.interval, args.count)
    report = status_report(_load(args))
    status = 1 if report["problems"] else 0
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return status
    state = (f"running (PID {report['pid']})" if report["running"]
             else f"unknown (cannot read the PID file {report['pid_file']})" if report["running"] is None
             else "not running")
    print(f"File Conveyor is {state}")
    runtime = report.get("runtime")
    if runtime:
        print(f"  monitor:   {runtime['monitor']}" + (f", {runtime['overflows']} event queue overflow(s) (rescanned)"
                                                      if runtime.get("overflows") else ""))
        for tree in runtime.get("polled_trees", []):
            print(f"    polled (out of inotify watches): {tree}")
        for tree, target in sorted(runtime.get("resolved_roots", {}).items()):
            print(f"    {tree} is a symlink: watching {target}")
        for item in runtime.get("unwatched", []):  # trees are listed as problems, below
            if item["kind"] != "tree":
                print(f"  directory NOT WATCHED for {time.time() - item['since']:.0f} s: {item['path']}: "
                      f"{item['reason']}")
        hidden = runtime.get("unwatched_count", 0) - len(runtime.get("unwatched", []))
        if hidden > 0:
            print(f"  ... and {hidden} more not watched (see the log)")
        for server, state_ in sorted(runtime.get("servers", {}).items()):
            if state_.get("paused"):
                since = state_.get("paused_since")
                print(f"  server {server} is PAUSED" + (f" for {time.time() - since:.0f} s" if since else "")
                      + f" ({state_.get('files_waiting', 0)} file(s) wait for it): {state_['paused']}")
        for server, state_ in sorted(runtime.get("servers", {}).items()):
            for upload in state_.get("large_uploads", []):
                print(f"  server {server}: {statusview.large_upload_line(upload, time.time())}")
        for database in runtime.get("databases_degraded", []):
            print(f"  database {database['path']}: {database['problem']} for {time.time() - database['since']:.0f} s,"
                  f" writes retried ({database['attempts']} attempt(s)): {database['detail']}")

    def shown(value: int | None) -> str:
        return "unknown" if value is None else str(value)
    print(f"  waiting:   {shown(report['waiting'])}")
    print(f"  in flight: {shown(report['in_flight'])}")
    print(f"  failed:    {shown(report['failed'])}")
    progress = (runtime or {}).get("progress")
    if progress and progress.get("backlog", 0) >= statusview.LARGE_BACKLOG:
        print(f"  progress:  {statusview.progress_line(progress)}")
    now = time.time()
    for failed in report["failed_files"][:20]:
        wait = max(0, failed["next_try"] - now)
        print(f"    {failed['file']} ({failed['event']}, {failed['attempts']} attempt(s), {failed['kind']},"
              f" next try in {wait:.0f} s): {failed['reason']}")
    if report["to_delete"]:
        print(f"  source files scheduled for deletion: {report['to_delete']}")
    old_versions = report.get("old_versions") or {}
    if old_versions.get("count"):
        due = max(0.0, (old_versions["next_deletion"] or now) - now)
        print(f"  old versions kept on servers (keepOldVersionsFor): {old_versions['count']}, "
              f"the next deleted in {due:.0f} s")
    print("  synced per server:")
    for server, count in sorted(report["synced"].items()):
        print(f"    {server}: {shown(count)}")
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}")
    for note in report["notes"]:
        print(f"  NOTE: {note}")
    return status


def cmd_verify(args: argparse.Namespace) -> int:
    from fileconveyor.verify import verify

    config = _load(args)
    try:
        setup_logging(config.settings, console=True, verbose=args.verbose)
    except OSError as error:  # a user who may only read the state cannot write the daemon's log
        setup_logging(Settings({**config.settings.as_dict(), "LOG_FILE": ""}), console=True, verbose=args.verbose)
        log.warning("Not logging to %s (%s); messages go to the console only", config.settings.LOG_FILE, error)
    status = verify(config, requeue=args.requeue, out=sys.stdout, deep=args.deep)
    if args.requeue and status:
        _wake_daemon(config)
    return status


def cmd_reconcile(args: argparse.Namespace) -> int:
    from fileconveyor.reconcile import ReconcileError, reconcile

    config = _load(args)
    try:
        setup_logging(config.settings, console=True, verbose=args.verbose)
    except OSError as error:
        setup_logging(Settings({**config.settings.as_dict(), "LOG_FILE": ""}), console=True, verbose=args.verbose)
        log.warning("Not logging to %s (%s); messages go to the console only", config.settings.LOG_FILE, error)
    try:
        status = reconcile(config, servers=args.server or None, dry_run=args.dry_run,
                           delete_unknown=args.delete_unknown, as_json=args.json, out=sys.stdout,
                           deep=args.deep)
        if not args.dry_run:
            _wake_daemon(config)
        return status
    except ReconcileError as error:
        print(f"fileconveyor reconcile: {error}", file=sys.stderr)
        return 2


def cmd_upgrade(args: argparse.Namespace) -> int:
    from fileconveyor import upgrade

    return upgrade.main(["--config", args.config] + args.upgrade_args)


# --- entry point -----------------------------------------------------------------------------

def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _frames(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of frames (1 or more)")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fileconveyor",
        description="Keeps CDNs, object stores and servers in sync with local directory trees.")
    parser.add_argument("--version", action="version", version=f"fileconveyor {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.xml", metavar="FILE",
                        help="config.xml of the daemon to act on (default: ./config.xml)")
    common.add_argument("-v", "--verbose", action="store_true", help="log DEBUG lines on the console")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", parents=[common], help="run in the foreground")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)
    sub.add_parser("start", parents=[common], help="start in the background (PID file)").set_defaults(func=cmd_start)
    p = sub.add_parser("stop", parents=[common], help="stop the background daemon and wait for it to exit")
    p.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="how long to wait for the exit after SIGTERM (default: SHUTDOWN_TIMEOUT + 30); "
                        "exit status 1 if it is still running then")
    p.add_argument("--kill", action="store_true",
                   help="send SIGKILL if it is still running after the timeout (nothing is lost)")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("reload", parents=[common],
                       help="check config.xml, then make the running daemon reload it (SIGHUP); a bad "
                            "config is refused and the daemon keeps the old one (contrib/README.md)")
    p.set_defaults(func=cmd_reload)
    p = sub.add_parser("status", parents=[common], help="running or not, queue sizes, failures, synced files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true",
                   help="redraw a compact live view until Ctrl-C (successive frames when not on a terminal)")
    p.add_argument("--interval", type=_seconds, default=2.0, metavar="SECONDS",
                   help="--watch refresh period (0.5 to 60; default 2)")
    p.add_argument("--count", type=_frames, default=None, metavar="N", help="--watch: stop after N frames")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("verify", parents=[common], help="check that every synced file is at its destination")
    p.add_argument("--requeue", action="store_true", help="queue the missing and different files again")
    p.add_argument("--deep", action="store_true",
                   help="where a listing gives no hash (local, SFTP, FTP), read every copy back to compare it")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("reconcile", parents=[common],
                       help="compare destinations with the sources and records; queue what is missing or "
                            "different, adopt identical unrecorded objects (docs/reconcile.md)")
    p.add_argument("--server", action="append", metavar="NAME", help="only this server (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="report only: queue, record and delete nothing")
    p.add_argument("--delete-unknown", action="store_true",
                   help="also delete objects under a destination path that File Conveyor did not put there")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.add_argument("--deep", action="store_true",
                   help="where a listing gives no hash (local, SFTP, FTP), read copies back: finds copies changed "
                        "at the same size, and adopts identical files without uploading them")
    p.set_defaults(func=cmd_reconcile)
    p = sub.add_parser("upgrade", parents=[common],
                       help="bring state databases to the current schema (--resync-all, --*-db: see "
                            "python -m fileconveyor.upgrade --help)")
    p.set_defaults(func=cmd_upgrade, upgrade_args=[])
    p = sub.add_parser("check-config", parents=[common], help="validate config.xml; exit 2 on errors")
    p.add_argument("file", nargs="?", default=None, help="config file (default: --config)")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fileconveyor.daemon import DaemonError
    from fileconveyor.pipeline.db import DatabaseError
    from fileconveyor.processors.base import ProcessorNotFound, ProcessorUnavailable
    from fileconveyor.transporters.base import TransporterNotFound

    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "upgrade":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.upgrade_args = unknown
    logging.raiseExceptions = False  # a log write failing (disk full) must not print a traceback
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is reported below, not by Python
        return status
    except BrokenPipeError:
        # `fileconveyor status | head`: the reader left. Nothing more can be said on stdout, and
        # Python must not try to flush it again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by SIGPIPE
    except ConfigError as error:
        for problem in error.problems:
            print(str(problem), file=sys.stderr)
        return 2
    except (ProcessorNotFound, ProcessorUnavailable, TransporterNotFound) as error:
        print(f"fileconveyor: {error}", file=sys.stderr)
        return 2
    except (DaemonError, DatabaseError) as error:
        print(f"fileconveyor: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a state or log file that cannot be read or written: say which
        print(f"fileconveyor: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns a bug into a message
        # The traceback goes to the log FILE only: console handlers (and logging's last-resort
        # handler when none is set up) would print it to the user.
        record = log.makeRecord(log.name, logging.CRITICAL, __file__, 0, "Unexpected error", (), sys.exc_info())
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        print(f"fileconveyor: unexpected {type(error).__name__}: {error} (details in the log file)",
              file=sys.stderr)
        return 1
