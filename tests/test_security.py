"""Local security: special files, symlinks out of a source tree, private directories, log modes
(issue 7, items 8 and 17) and the PID file's default place (issue 11, item 2; original #26, #152).

Real files, FIFOs and directories in tmp_path; nothing is mocked. A call that could block on a
FIFO runs in a thread with a deadline, and the FIFO is then opened for writing to release it, so
a regression fails the test instead of hanging it.
"""
from __future__ import annotations

import fcntl
import logging
import logging.handlers
import os
import pathlib
import subprocess
import sys
import threading
from typing import Any, Callable

import pytest

from fileconveyor import cli, localfile
from fileconveyor.daemon import LEGACY_PID_FILE, legacy_pid_file_note
from fileconveyor.processors.base import ProcessorChain, ProcessorContext, copy_to, resolve_processor, run_tool
from fileconveyor.settings import Settings, defaults, resolve
from fileconveyor.transporters.base import (
    PermanentError,
    SourceVanishedError,
    TransporterContext,
    local_file_error,
    open_local_file,
)
from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter
from tests.e2e.harness import REPO
from tests.e2e.test_readonly_state import _as_reader, _reader_python, reader, shared_root  # noqa: F401 (fixtures)

DEADLINE = 10.0


def finishes(call: Callable[[], Any], fifo: str) -> BaseException | Any:
    """Run `call` in a thread; it must finish within DEADLINE. Returns its result or exception.
    If it blocks (on `fifo`), a writer releases it and the test fails."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # releases the blocked reader
        thread.join(DEADLINE)
        pytest.fail(f"blocked on the FIFO {fifo}")
    return outcome[0]


@pytest.fixture
def fifo(tmp_path: pathlib.Path) -> str:
    path = str(tmp_path / "tree" / "pipe.css")
    os.makedirs(os.path.dirname(path))
    os.mkfifo(path)
    return path


def _context(tmp_path: pathlib.Path, original: str, work: str = "work", **extra: Any) -> ProcessorContext:
    working_dir = tmp_path / work
    working_dir.mkdir(exist_ok=True)
    return ProcessorContext(original_file=original, document_root=None, base_path=None, server=None,
                            working_dir=str(working_dir), **extra)


# --- special files never block ------------------------------------------------------------------

def test_open_regular_refuses_a_fifo_without_blocking(fifo: str) -> None:
    error = finishes(lambda: localfile.open_regular(fifo), fifo)
    assert isinstance(error, localfile.NotRegularFileError) and "FIFO" in str(error)


def test_open_regular_refuses_a_device_and_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(localfile.NotRegularFileError, match="character device"):
        localfile.open_regular("/dev/null")
    with pytest.raises(localfile.NotRegularFileError, match="directory"):
        localfile.open_regular(str(tmp_path))


def test_open_regular_reads_a_file_in_blocking_mode(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"x" * 100_000)
    with localfile.open_regular(str(path)) as handle:
        assert os.get_blocking(handle.fileno())  # O_NONBLOCK cleared after the checks
        assert handle.read() == b"x" * 100_000


def test_open_regular_without_following_refuses_a_symlink(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_text("a")
    os.symlink("a", tmp_path / "link")
    with pytest.raises(OSError):
        localfile.open_regular(str(tmp_path / "link"), follow_symlinks=False)
    assert localfile.open_regular(str(tmp_path / "link")).read() == b"a"


@pytest.mark.parametrize("processor", ["minify.CSS", "link_updater.CSSURLUpdater",
                                       "filename.SpacesToUnderscores", "unique_filename.MD5",
                                       "tests.e2e.processors.Copy"])
def test_a_processor_chain_never_opens_a_fifo(tmp_path: pathlib.Path, fifo: str, processor: str) -> None:
    """The chain reads the source once, safely; every processor works on that copy."""
    chain = ProcessorChain([resolve_processor(processor)])
    renamed = fifo.replace("pipe.css", "pi pe.css")
    os.rename(fifo, renamed)  # so that SpacesToUnderscores has something to do
    error = finishes(lambda: chain.run(_context(tmp_path, renamed)), renamed)
    assert isinstance(error, localfile.NotRegularFileError), error


def test_copy_to_and_run_tool_refuse_a_fifo(tmp_path: pathlib.Path, fifo: str) -> None:
    context = _context(tmp_path, fifo)
    assert isinstance(finishes(lambda: copy_to(context, fifo, "out.css"), fifo), localfile.NotRegularFileError)
    assert isinstance(finishes(lambda: run_tool(["cat"], stdin_path=fifo), fifo), localfile.NotRegularFileError)


def test_the_chain_works_on_a_snapshot_and_keeps_the_source_when_nothing_changed(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "tree" / "a.css"
    source.parent.mkdir()
    source.write_bytes(b"a{color:red}")
    os.utime(source, ns=(1_000_000_000, 1_700_000_000_123_456_789))
    context = _context(tmp_path, str(source))
    # Already minified: nothing changes, so the source itself comes back (a link can point to it).
    assert ProcessorChain([resolve_processor("minify.CSS")]).run(context) == str(source)
    snapshot = pathlib.Path(context.working_dir, ".source", "a.css")
    assert snapshot.read_bytes() == b"a{color:red}" and snapshot.stat().st_mtime_ns == 1_700_000_000_123_456_789
    # unique_filename.Mtime names by the mtime: the snapshot keeps it.
    out = ProcessorChain([resolve_processor("unique_filename.Mtime")]).run(
        _context(tmp_path, str(source), work="work2"))
    assert os.path.basename(out) == "a_1700000000.css"


def test_transporters_refuse_a_fifo_as_a_vanished_source(tmp_path: pathlib.Path, fifo: str) -> None:
    error = finishes(lambda: open_local_file(fifo), fifo)
    assert isinstance(error, SourceVanishedError) and "FIFO" in str(error)
    transporter = _local_transporter(tmp_path, roots=(os.path.dirname(fifo),))
    error = finishes(lambda: transporter.upload(fifo, "pipe.css"), fifo)
    assert isinstance(error, SourceVanishedError)
    assert not os.path.lexists(tmp_path / "web" / "pipe.css")


def _local_transporter(tmp_path: pathlib.Path, roots: tuple[str, ...], allow: bool = False) -> SymlinkOrCopyTransporter:
    context = TransporterContext(server_name="web", state_dir=str(tmp_path / "state"), source_roots=roots,
                                 allow_unsafe_links=allow)
    return SymlinkOrCopyTransporter({"location": str(tmp_path / "web"), "url": "http://web.test/"}, context)


# --- safe links ---------------------------------------------------------------------------------

@pytest.fixture
def links(tmp_path: pathlib.Path) -> pathlib.Path:
    """tree/ with a file, links inside and out, a directory link out, and a dangling link."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "real.txt").write_text("real")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.txt").write_text("outside")
    os.symlink("sub/real.txt", tree / "inside.txt")
    os.symlink(secret, tree / "out.txt")
    os.symlink("../secret.txt", tree / "relative-out.txt")
    os.symlink(tmp_path / "outside", tree / "outdir")
    os.symlink("sub/nothing", tree / "dangling.txt")
    os.symlink(tree, tmp_path / "tree-link")
    return tree


@pytest.mark.parametrize("name, safe", [
    ("sub/real.txt", True), ("inside.txt", True), ("dangling.txt", True),
    ("out.txt", False), ("relative-out.txt", False), ("outdir/x.txt", False),
])
def test_is_safe_link(links: pathlib.Path, name: str, safe: bool) -> None:
    assert localfile.is_safe_link(str(links / name), str(links)) is safe
    # A root given as a symlink (#135) is resolved like the paths below it.
    via_link = links.parent / "tree-link"
    assert localfile.is_safe_link(str(via_link / name), str(via_link)) is safe
    reason = localfile.unsafe_link_reason(str(links / name), str(links))
    assert (reason is None) is safe
    if not safe:
        assert "outside its source tree" in reason and "SYNC_UNSAFE_SYMLINKS" in reason


def test_link_escape_reason_is_a_pure_decision() -> None:
    assert localfile.link_escape_reason("/t/a", "/t/b/c", "/t", "/t") is None
    assert localfile.link_escape_reason("/t/a", "/t2/c", "/t", "/t") is not None
    assert localfile.link_escape_reason("/t/a", "/etc/shadow", "/t", "/t") is not None


def test_a_file_replaced_while_it_is_opened_counts_as_gone_not_as_unsafe(links: pathlib.Path) -> None:
    """An editor's atomic save between open() and the check: not a refusal of the file (which
    would fail it for a long backoff), but a vanished version whose successor has its own event."""
    path = links / "sub" / "real.txt"
    with open(path, "rb") as opened:
        (links / "sub" / "new.txt").write_text("new")
        os.replace(links / "sub" / "new.txt", path)
        with pytest.raises(localfile.SourceReplacedError) as caught:
            localfile._check_opened_inside(str(path), os.fstat(opened.fileno()), str(links))
    assert isinstance(caught.value, FileNotFoundError)
    assert isinstance(local_file_error(str(path), caught.value), SourceVanishedError)


def test_a_link_out_of_the_tree_is_neither_processed_nor_sent(links: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = str(links / "out.txt")
    context = _context(tmp_path, out, source_root=str(links))
    with pytest.raises(localfile.UnsafeLinkError):
        ProcessorChain([resolve_processor("tests.e2e.processors.Copy")]).run(context)
    allowed = _context(tmp_path, out, work="work-allowed", source_root=str(links), allow_unsafe_links=True)
    output = ProcessorChain([resolve_processor("tests.e2e.processors.Copy")]).run(allowed)
    assert open(output).read() == "TOP SECRET"
    transporter = _local_transporter(tmp_path, roots=(str(links),))
    with pytest.raises(PermanentError, match="outside its source tree"):
        transporter.upload(out, "out.txt")  # link mode: no link to the link either
    assert not os.path.lexists(tmp_path / "web" / "out.txt")
    url = transporter.upload(str(links / "inside.txt"), "inside.txt")
    assert url == "http://web.test/inside.txt" and (tmp_path / "web" / "inside.txt").read_text() == "real"
    permissive = _local_transporter(tmp_path, roots=(str(links),), allow=True)
    permissive.upload(out, "out.txt")
    assert (tmp_path / "web" / "out.txt").read_text() == "TOP SECRET"


# --- private working directory --------------------------------------------------------------------

def test_working_dir_defaults_beside_the_state_databases_and_is_created_private(tmp_path: pathlib.Path) -> None:
    settings = defaults(str(tmp_path))
    assert settings.WORKING_DIR == str(tmp_path / "processor_work")
    assert not settings.WORKING_DIR.startswith("/tmp/fileconveyor")
    old_umask = os.umask(0)
    try:
        localfile.ensure_private_directory(settings.WORKING_DIR)
    finally:
        os.umask(old_umask)
    assert os.stat(settings.WORKING_DIR).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("make, problem", [
    (lambda p: (os.mkdir(p), os.chmod(p, 0o1777)), "can be written by other users"),
    (lambda p: (os.mkdir(p), os.chmod(p, 0o775)), "can be written by other users"),
    (lambda p: os.symlink("/tmp", p), "symbolic link"),
    (lambda p: open(p, "w").close(), "regular file"),
])
def test_an_unsafe_working_dir_is_refused(tmp_path: pathlib.Path, make: Callable[[str], Any], problem: str) -> None:
    path = str(tmp_path / "work")
    make(path)
    assert problem in (localfile.private_directory_problem(path) or "")
    with pytest.raises(localfile.UnsafeDirectoryError, match="WORKING_DIR"):
        localfile.ensure_private_directory(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_working_dir_of_another_user_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "work"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    assert "belongs to user id 65534" in (localfile.private_directory_problem(str(path)) or "")


def _config(tmp_path: pathlib.Path, settings: str = "") -> str:
    (tmp_path / "src").mkdir(exist_ok=True)
    path = tmp_path / "config.xml"
    path.write_text(f"""<?xml version="1.0"?>
<config>
  <settings>{settings}</settings>
  <sources><source name="s" scanPath="{tmp_path / 'src'}"/></sources>
  <servers><server name="w" transporter="symlink_or_copy"><location>{tmp_path / 'web'}</location>
    <url>http://web.test/</url></server></servers>
  <rules><rule for="s"><destinations><destination server="w"/></destinations></rule></rules>
</config>
""")
    return str(path)


def _fileconveyor(*args: str, home: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if home is not None:
        env["HOME"] = home
    return subprocess.run([sys.executable, "-m", "fileconveyor", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_check_config_and_run_refuse_a_world_writable_working_dir(tmp_path: pathlib.Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = _config(tmp_path, f"\n    <WORKING_DIR>{shared}</WORKING_DIR>\n  ")
    checked = _fileconveyor("check-config", config)
    assert checked.returncode == 2
    assert f"{config}:4: error: WORKING_DIR {shared} can be written by other users (mode 1777)" in checked.stderr
    started = _fileconveyor("start", "--config", config)
    assert started.returncode == 1 and "can be written by other users" in started.stderr
    assert "Traceback" not in started.stderr + checked.stderr
    shared.chmod(0o700)
    assert _fileconveyor("check-config", config).returncode == 0


# --- logs ---------------------------------------------------------------------------------------

def test_rotated_and_reopened_logs_are_0600(tmp_path: pathlib.Path) -> None:
    log_file = tmp_path / "logs" / "fc.log"
    settings = Settings({**defaults(str(tmp_path)).as_dict(), "LOG_FILE": str(log_file)})
    old_umask = os.umask(0o022)
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        reopen = cli.setup_logging(settings, console=False)
        logging.getLogger("fileconveyor.test").warning("first")
        assert log_file.stat().st_mode & 0o777 == 0o600
        # Rotation is external (logrotate); the handler notices the move and reopens by itself.
        os.rename(log_file, tmp_path / "logs" / "fc.log.1")
        logging.getLogger("fileconveyor.test").warning("after rotation")
        assert log_file.stat().st_mode & 0o777 == 0o600
        assert "after rotation" in log_file.read_text()
        os.rename(log_file, tmp_path / "logs" / "fc.log.rotated-by-logrotate")
        reopen()
        logging.getLogger("fileconveyor.test").warning("after reopen")
        assert log_file.stat().st_mode & 0o777 == 0o600
        assert "after reopen" in log_file.read_text()
    finally:
        os.umask(old_umask)
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


# --- the PID file (#26, #152) --------------------------------------------------------------------

def test_the_default_pid_file_does_not_depend_on_the_user(tmp_path: pathlib.Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "root-home"))
    as_root = resolve({}, str(tmp_path)).PID_FILE
    monkeypatch.setenv("HOME", str(tmp_path / "www-data-home"))
    assert resolve({}, str(tmp_path)).PID_FILE == as_root == str(tmp_path / "fileconveyor.pid")
    explicit = resolve({"PID_FILE": "~/run/fc.pid"}, str(tmp_path))
    assert explicit.PID_FILE == str(tmp_path / "www-data-home" / "run" / "fc.pid")


def test_users_of_the_old_default_are_told(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = _config(tmp_path)
    legacy = home / ".fileconveyor.pid"
    # A stale PID file at the old default: it is no longer used, and status says so.
    legacy.write_text("999999\n")
    status = _fileconveyor("status", "--config", config, home=str(home))
    assert "NOTE: " + str(legacy) + " is no longer used" in status.stdout
    assert str(tmp_path / "fileconveyor.pid") in status.stdout
    upgraded = _fileconveyor("upgrade", "--config", config, home=str(home))
    assert upgraded.returncode == 0 and f"NOTE: {legacy} is no longer used" in upgraded.stdout, upgraded.stderr
    stopped = _fileconveyor("stop", "--config", config, home=str(home))
    assert "not running" in stopped.stdout and f"NOTE: {legacy} is no longer used" in stopped.stderr
    # A PID that is alive but not the original's daemon (PIDs are reused) is not mistaken for one.
    legacy.write_text(f"{os.getpid()}\n")
    assert "is no longer used" in _fileconveyor("status", "--config", config, home=str(home)).stdout
    # The original's daemon (`python arbitrator.py`, no lock) still running with it: starting
    # beside it is refused.
    old = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "arbitrator.py"],
                           stdin=subprocess.PIPE)
    try:
        legacy.write_text(f"{old.pid}\n")
        started = _fileconveyor("start", "--config", config, home=str(home))
        assert started.returncode == 1
        assert f"still running (PID {old.pid})" in started.stderr and f"kill -TERM {old.pid}" in started.stderr
        upgraded = _fileconveyor("upgrade", "--config", config, home=str(home))
        assert upgraded.returncode == 1 and f"PID {old.pid}" in upgraded.stderr
    finally:
        old.communicate(b"", timeout=30)
    # An earlier build of this version locks the file: the lock is proof enough.
    legacy.write_text(f"{os.getpid()}\n")
    fd = os.open(legacy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = _fileconveyor("start", "--config", config, home=str(home))
        assert started.returncode == 1 and f"still running (PID {os.getpid()})" in started.stderr
    finally:
        os.close(fd)
    # An explicit PID_FILE keeps working and silences the note.
    explicit = _config(tmp_path, f"<PID_FILE>{legacy}</PID_FILE>")
    assert "NOTE" not in _fileconveyor("status", "--config", explicit, home=str(home)).stdout
    assert legacy_pid_file_note(resolve({"PID_FILE": LEGACY_PID_FILE}, str(tmp_path))) is None


def test_stop_by_a_user_who_may_not_read_the_pid_file_says_so(reader: Any, shared_root: str) -> None:
    """The PID file is 0600, the daemon's user's: another user's `stop` must not say "not running"."""
    python = _reader_python(reader)
    if python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that another user may run")
    config = _config(pathlib.Path(shared_root))
    os.chmod(config, 0o644)
    os.chmod(shared_root, 0o755)
    fd = os.open(os.path.join(shared_root, "fileconveyor.pid"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        result = _as_reader(reader, [python, "-m", "fileconveyor", "stop", "--config", config])
    finally:
        os.close(fd)
    assert result.returncode == 1 and "may not read the PID file" in result.stderr, result.stdout + result.stderr
    assert "not running" not in result.stdout and "Traceback" not in result.stderr
