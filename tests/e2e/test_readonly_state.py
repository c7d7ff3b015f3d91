"""A user with read permission only (the web server user, files 0640 as the README tells admins)
reads the state while the daemon writes it and after it stopped.

For real: the databases belong to root, group of a throwaway system user created here, and the
reads run as that user (subprocess `user=`/`group=`), with the `sqlite3` shell (which, like PHP's
PDO, falls back to read-only when it cannot open a file for writing) and with `fileconveyor status`
and `verify`. In WAL mode this failed ("unable to open database file" while the daemon ran, "attempt
to write a readonly database" after it stopped): the reader must create or write the -shm file.
Needs root (creating a user, changing owners); CI runs as root.
"""
from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from tests.e2e.harness import REPO, Daemon, wait_for, wait_in_sync, write_config
from tests.e2e.test_daemon import write

READER = "fcreader"
DATABASES = ("persistent_data.db", "synced_files.db")


@pytest.fixture(scope="module")
def reader() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("creating a user and root-owned files needs root (CI runs as root)")
    if shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 shell is not installed (scripts/deps installs it)")
    try:
        return pwd.getpwnam(READER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--shell", "/usr/sbin/nologin", READER], check=True)
        return pwd.getpwnam(READER)


@pytest.fixture
def shared_root(reader):
    """A directory the reader may enter (pytest's tmp_path is 0700 root)."""
    root = tempfile.mkdtemp(prefix="fc-readonly-", dir="/tmp")
    os.chmod(root, 0o750)
    os.chown(root, 0, reader.pw_gid)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _as_reader(reader: pwd.struct_passwd, argv: list[str]) -> subprocess.CompletedProcess[str]:
    # The test's own site-packages: an interpreter of the same version run by the reader finds lxml.
    pythonpath = os.pathsep.join(dict.fromkeys([REPO, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "PYTHONPATH": pythonpath,
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, user=reader.pw_uid, group=reader.pw_gid, extra_groups=[], env=env,
                          capture_output=True, text=True, timeout=120, cwd="/")


def _reader_python(reader: pwd.struct_passwd) -> str | None:
    """An interpreter of this Python version that the reader may run (this one may live in /root)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in dict.fromkeys([sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}",
                                    f"/usr/local/bin/python{version}"]):
        try:
            if _as_reader(reader, [candidate, "-c", "import lxml, fileconveyor.cli"]).returncode == 0:
                return candidate
        except OSError:  # not there, or not executable for the reader
            continue
    return None


def _count(reader, db: str, table: str) -> int:
    # A busy timeout, as PHP's PDO has one (60 s by default): a writer's commit holds the lock briefly.
    result = _as_reader(reader, ["sqlite3", "-cmd", ".timeout 10000", db, f"SELECT COUNT(*) FROM {table}"])
    assert result.returncode == 0 and result.stdout.strip().isdigit(), (db, table, result.stderr)
    return int(result.stdout)


def _readable_by_group(paths: list[str], gid: int) -> None:
    for path in paths:
        os.chown(path, 0, gid)
        os.chmod(path, 0o750 if os.path.isdir(path) else 0o640)


def _reads_everything(reader, setup, python: str | None) -> None:
    for table in ("pipeline_queue", "pipeline_list"):
        _count(reader, setup.db("persistent_data.db"), table)
    _count(reader, setup.db("synced_files.db"), "synced_files")
    if python is not None:
        status = _as_reader(reader, [python, "-m", "fileconveyor", "status", "--config", setup.config])
        assert status.returncode == 0 and "waiting:" in status.stdout, status.stdout + status.stderr
        assert "Traceback" not in status.stderr


@pytest.mark.parametrize("commands", ["sqlite3", "sqlite3 and fileconveyor"])
def test_a_read_only_user_reads_the_state_while_the_daemon_writes_and_after(reader, shared_root, commands):
    python = _reader_python(reader) if "fileconveyor" in commands else None
    if "fileconveyor" in commands and python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that {READER} may run "
                    f"({sys.executable} is not reachable for other users)")
    setup = write_config(shared_root)
    write(os.path.join(setup.source, "first.txt"), "first")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
    assert grp.getgrgid(reader.pw_gid).gr_name == READER
    _readable_by_group([setup.state, setup.config] + [setup.db(name) for name in DATABASES], reader.pw_gid)
    before = sorted(os.listdir(setup.state))
    with Daemon(setup) as daemon:
        for batch in range(10):
            for i in range(20):
                write(os.path.join(setup.source, f"d{batch}", f"f{i}.txt"), f"{batch}-{i}")
            _reads_everything(reader, setup, python)  # while the daemon queues, claims and records
        wait_in_sync(setup, daemon)
        assert _count(reader, setup.db("synced_files.db"), "synced_files") == 201
        if python is not None:
            verify = _as_reader(reader, [python, "-m", "fileconveyor", "verify", "--config", setup.config])
            assert verify.returncode == 0 and "201 present" in verify.stdout, verify.stdout + verify.stderr
            assert "Traceback" not in verify.stderr
    wait_for(lambda: not os.path.exists(setup.pid_file), 30, "the daemon to remove its PID file")
    _reads_everything(reader, setup, python)
    assert _count(reader, setup.db("persistent_data.db"), "pipeline_queue") == 0
    for name in DATABASES:  # the daemon kept the modes an admin gave its files
        assert os.stat(setup.db(name)).st_mode & 0o777 == 0o640
    assert not {n for n in os.listdir(setup.state) if n.endswith(("-wal", "-shm"))} - set(before)
