"""The torture suite's world: real servers, the generated config.xml, the daemon, faults, readers.

* SFTP: OpenSSH's sshd (tests/servers/sshd.py), killed with every session and started again on
  the same port for an outage.
* S3: moto (tests/servers/moto.py) behind a `TCPProxy`. An S3 outage closes the proxy (every
  connection dropped, nothing listening) and opens it again on the same port: killing moto itself
  would lose every object (moto keeps its data in memory), which is not an outage but a wiped
  server.
* local: symlink_or_copy into a directory. The local and SFTP destinations live on a small tmpfs
  mounted here (root only), so that "destination file system full" is a real ENOSPC.
* inotify overflow: the daemon is started while /proc/sys/fs/inotify/max_queued_events is lowered
  (the limit is read when an inotify instance is created) and the value is put back as soon as
  it is ready, so other processes on the machine see the low value only for that moment.

One `Servers` serves many `World`s: after a violation the runner starts a fresh world (new trees,
state, bucket and directories) so that one defect is reported once, not in every later round.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import stat
import subprocess
import sys
import urllib.parse
from typing import Any, Iterator
from xml.sax.saxutils import escape, quoteattr

from tests.e2e.harness import REPO, Daemon, Setup, query
from tests.e2e.remote_trees import s3_objects
from tests.servers._loopback import fetch
from tests.servers.moto import FAKE_KEY_ID, FAKE_SECRET, MotoServer, TCPProxy, empty_bucket, new_bucket_name
from tests.servers.sshd import SSHServer
from tests.torture.model import OUTBOX, PINNED, RULES, SourceModel

INOTIFY_QUEUE = "/proc/sys/fs/inotify/max_queued_events"
#: The lowered inotify queue: a SIGSTOPped daemon overflows it after ~85 new files.
LOW_INOTIFY_QUEUE = 256
TMPFS_SIZE = "64m"
LOCAL_URL = "http://local.test/"
SFTP_URL = "http://sftp.test/"
SETTINGS = {
    "PID_FILE": "fileconveyor.pid", "LOG_FILE": "fileconveyor.log",
    "PERSISTENT_DATA_DB": "persistent_data.db", "SYNCED_FILES_DB": "synced_files.db",
    "FSMONITOR_DB": "fsmonitor.db", "WORKING_DIR": "work", "FILE_LOGGER_LEVEL": "INFO",
    "RETRY_INTERVAL": "0.5", "RETRY_MAX_INTERVAL": "2", "RESTART_INTERVAL": "0.5",
    "MAX_SIMULTANEOUS_PROCESSORCHAINS": "2", "SHUTDOWN_TIMEOUT": "5",
}


def _mount_tmpfs(path: pathlib.Path) -> str | None:
    """Mount a tmpfs at `path`; the reason it cannot be done, or None."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs",
                             str(path)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"cannot mount a tmpfs at {path}: {result.stderr.strip() or result.returncode}"
    return None


def _inotify_problem() -> str | None:
    """Why the inotify queue limit cannot be lowered here, or None."""
    try:
        with open(INOTIFY_QUEUE, encoding="ascii") as handle:
            value = handle.read().strip()
        with open(INOTIFY_QUEUE, "w", encoding="ascii") as handle:
            handle.write(value)
    except OSError as error:
        return f"cannot set {INOTIFY_QUEUE} ({error.strerror}); lowering it needs root"
    return None


@contextlib.contextmanager
def lowered_inotify_queue(value: int) -> Iterator[None]:
    with open(INOTIFY_QUEUE, encoding="ascii") as handle:
        old = handle.read().strip()
    with open(INOTIFY_QUEUE, "w", encoding="ascii") as handle:
        handle.write(str(value))
    try:
        yield
    finally:
        with open(INOTIFY_QUEUE, "w", encoding="ascii") as handle:
            handle.write(old)


class Servers:
    """sshd, moto behind a proxy, the destinations' tmpfs; shared by every world of a run."""

    def __init__(self, base: pathlib.Path, sshd: SSHServer, moto: MotoServer, code_dir: str = REPO) -> None:
        self.base = base
        #: Where the daemon's `fileconveyor` package comes from (a snapshot: see runner --code).
        self.code_dir = code_dir
        self.sshd = sshd
        self.moto = moto
        self.proxy: TCPProxy | None = TCPProxy(moto.port)
        self.proxy_port = self.proxy.port
        self.tmpfs = base / "dests"
        self.tmpfs_problem = _mount_tmpfs(self.tmpfs)
        self.inotify_problem = _inotify_problem()
        self.filler = self.tmpfs / "filler"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def stop_s3(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None

    def start_s3(self) -> None:
        if self.proxy is None:
            self.proxy = TCPProxy(self.moto.port, listen_port=self.proxy_port)

    def stop_sftp(self) -> None:
        self.sshd.kill()

    def start_sftp(self) -> None:
        if self.sshd.process is None or self.sshd.process.poll() is not None:
            self.sshd.start()

    def fill_disk(self) -> int:
        """Fill the destinations' tmpfs to the last byte; returns the bytes written."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 16, 4096, 512):
                block = b"\0" * chunk
                for _ in range(1 << 18):  # far more than the tmpfs holds in any chunk size
                    try:
                        count = os.write(fd, block)
                    except OSError:
                        break
                    written += count
                    if count < chunk:
                        break
        finally:
            os.close(fd)
        return written

    def free_disk(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.filler)

    def close(self) -> None:
        self.free_disk()
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self.tmpfs_problem is None:
            if subprocess.run(["umount", str(self.tmpfs)], capture_output=True, timeout=60).returncode:
                subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True, timeout=60)


class World:
    """Two source trees, three destinations, one state directory and the daemon for them."""

    def __init__(self, servers: Servers, index: int) -> None:
        self.servers = servers
        self.index = index
        base = servers.base / f"world{index}"
        self.alpha, self.beta = str(base / "alpha"), str(base / "beta")
        self.staging, self.state = str(base / "staging"), str(base / "state")
        outside = base / "outside"
        for directory in (self.alpha, self.beta, self.staging, self.state, outside):
            os.makedirs(directory)
        self.outside_file = str(outside / "secret.txt")
        pathlib.Path(self.outside_file).write_bytes(b"never publish me\n")
        dests = (servers.tmpfs if servers.tmpfs_problem is None else base) / f"world{index}"
        self.local = str(dests / "local")
        self.sftp_root = str(dests / "sftp")
        os.makedirs(self.local)
        os.makedirs(self.sftp_root)
        self.bucket = new_bucket_name("fc-torture")
        self.s3 = servers.moto.client()
        self.s3.create_bucket(Bucket=self.bucket)
        self.url_bases = {"local": LOCAL_URL, "sftp": SFTP_URL,
                          "s3": f"{servers.s3_endpoint}/{self.bucket}"}
        self.model = SourceModel({"alpha": self.alpha, "beta": self.beta})
        for directory in (os.path.join(self.alpha, PINNED), os.path.join(self.beta, PINNED),
                          os.path.join(self.beta, OUTBOX)):
            os.makedirs(directory)
            self.model.dirs.add(directory)
        config = os.path.join(self.state, "config.xml")
        pathlib.Path(config).write_text(self._config_xml(), encoding="utf-8")
        self.setup = Setup(root=str(base), source=self.alpha, dest=self.local, state=self.state,
                           config=config)
        self.daemon: Daemon | None = None

    def _config_xml(self) -> str:
        settings = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in SETTINGS.items())
        server_settings = {
            "local": ("symlink_or_copy", {"location": self.local, "url": LOCAL_URL}),
            "sftp": ("sftp", self.servers.sshd.settings(pathlib.Path(self.sftp_root), url=SFTP_URL)),
            "s3": ("s3", {"bucket_name": self.bucket, "endpoint_url": self.servers.s3_endpoint,
                          "access_key_id": FAKE_KEY_ID, "secret_access_key": FAKE_SECRET}),
        }
        servers = "".join(
            f'<server name="{name}" transporter="{transporter}" maxConnections="2">'
            + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in values.items()) + "</server>"
            for name, (transporter, values) in server_settings.items())
        rules = []
        for rule in RULES:
            conditions = "".join(f"<{tag}>{':'.join(values)}</{tag}>" for tag, values in (
                ("paths", rule.paths), ("extensions", rule.extensions),
                ("ignoredDirs", rule.ignored_dirs)) if values)
            chain = "".join(f"<processor name={quoteattr(p)}/>" for p in rule.processors)
            destinations = "".join(f"<destination server={quoteattr(d.server)} path={quoteattr(d.path)}/>"
                                   for d in rule.destinations)
            delay = (f' fileDeletionDelayAfterSync="{rule.deletion_delay:g}"'
                     if rule.deletion_delay is not None else "")
            rules.append(f'<rule for="{rule.source}" label="{rule.label}"{delay}>'
                         + (f"<filter>{conditions}</filter>" if conditions else "")
                         + (f"<processorChain>{chain}</processorChain>" if chain else "")
                         + f"<destinations>{destinations}</destinations></rule>")
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<config>
  <settings>{settings}</settings>
  <sources ignoredDirs=".git">
    <source name="alpha" scanPath={quoteattr(self.alpha)} />
    <source name="beta" scanPath={quoteattr(self.beta)} />
  </sources>
  <servers>{servers}</servers>
  <rules>{"".join(rules)}</rules>
</config>
"""

    # --- the daemon ---------------------------------------------------------------------------------

    def start_daemon(self) -> None:
        daemon = Daemon(self.setup, self.servers.code_dir)
        if self.servers.inotify_problem is None:
            with lowered_inotify_queue(LOW_INOTIFY_QUEUE):
                daemon.start(timeout=90)
        else:
            daemon.start(timeout=90)
        self.daemon = daemon

    def kill_daemon(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()
            self.daemon = None

    def stop_daemon(self) -> int | None:
        if self.daemon is None:
            return None
        try:
            return self.daemon.terminate(60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            return None
        finally:
            self.daemon = None

    def daemon_alive(self) -> bool:
        return (self.daemon is not None and self.daemon.process is not None
                and self.daemon.process.poll() is None)

    def log_tail(self, lines: int = 40) -> str:
        return Daemon(self.setup).log_tail(lines)

    def self_restarts(self) -> int:
        try:
            return pathlib.Path(self.setup.log_file).read_text(errors="replace").count("has restarted itself")
        except OSError:
            return 0

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fileconveyor", *args, "--config", self.setup.config],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=self.servers.code_dir), cwd=self.state)

    def status(self) -> dict[str, Any]:
        result = self.command("status", "--json")
        if result.returncode != 0:
            raise RuntimeError(f"fileconveyor status --json exited {result.returncode}: {result.stderr[-2000:]}")
        return dict(json.loads(result.stdout))

    # --- state, read around the daemon ----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        db = self.setup.db("persistent_data.db")
        return {t: (query(db, f"SELECT COUNT(*) FROM {t}") or [(0,)])[0][0]
                for t in ("pipeline_queue", "pipeline_list", "failed_files_list", "files_to_delete_list")}

    def paused_servers(self) -> list[str]:
        """Servers the running daemon reports paused (its runtime status file, read directly)."""
        try:
            with open(os.path.join(self.state, "fileconveyor.status.json"), encoding="utf-8") as handle:
                servers = json.load(handle).get("servers", {})
        except (OSError, ValueError):
            return []
        return sorted(name for name, state in servers.items() if state.get("paused"))

    def failed(self) -> list[tuple[Any, ...]]:
        return query(self.setup.db("persistent_data.db"),
                     "SELECT input_file, kind, reason FROM failed_files_list ORDER BY input_file LIMIT 10")

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(input_file, server, url, transported_file_basename) of every synced_files row."""
        return [tuple(r) for r in query(self.setup.db("synced_files.db"),  # type: ignore[misc]
                                        "SELECT input_file, server, url, transported_file_basename "
                                        "FROM synced_files")]

    def destinations(self) -> tuple[dict[str, dict[str, bytes]], list[str]]:
        """Every destination's files ({server: {remote path: bytes}}) and oddities found there."""
        problems: list[str] = []
        held = {"local": _read_directory(self.local, "local", problems),
                "sftp": _read_directory(self.sftp_root, "sftp", problems)}
        try:
            held["s3"] = s3_objects(self.s3, self.bucket)
        except Exception as error:  # noqa: BLE001 - reported as a check failure with its cause
            problems.append(f"s3: cannot list bucket {self.bucket}: {error}")
            held["s3"] = {}
        return held, problems

    def fetch(self, url: str, s3_held: dict[str, bytes] | None = None) -> bytes | None:
        """What `url` serves: local and SFTP URLs map to their root on this machine (a web server in
        front of them would percent-decode the path the same way), S3 URLs are fetched from moto
        (or taken from `s3_held`, this bucket's objects as just listed and read, when the URL's
        bucket is this world's: one GET per object per check instead of two)."""
        for base, root in ((LOCAL_URL, self.local), (SFTP_URL, self.sftp_root)):
            if url.startswith(base):
                path = os.path.join(root, urllib.parse.unquote(url[len(base):]))
                try:
                    with open(path, "rb") as handle:
                        return handle.read()
                except OSError:
                    return None
        s3_base = self.servers.s3_endpoint + "/"
        if url.startswith(s3_base):
            # moto refuses anonymous GETs of private objects, so the URL's bucket and key are
            # fetched with a signed request (what a CDN in front of the bucket would do).
            bucket, _, key = urllib.parse.unquote(url[len(s3_base):]).partition("/")
            if s3_held is not None and bucket == self.bucket and key in s3_held:
                return s3_held[key]
            try:
                return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except self.s3.exceptions.NoSuchKey:
                return None
        return fetch(url)

    def close(self) -> None:
        if self.daemon is not None:
            self.stop_daemon()
        with contextlib.suppress(Exception):
            empty_bucket(self.s3, self.bucket)
            self.s3.delete_bucket(Bucket=self.bucket)


def _read_directory(root: str, server: str, problems: list[str]) -> dict[str, bytes]:
    """Every non-directory entry below `root` with its content (symlinks followed); temporary
    names are kept (they must not be there), dangling links and special files are reported."""
    found: dict[str, bytes] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            if os.path.islink(os.path.join(directory, name)):
                problems.append(f"{server}: symlink to a directory {os.path.join(directory, name)}")
        for name in files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    problems.append(f"{server}: {relative} is not a regular file")
                    continue
                with open(path, "rb") as handle:
                    found[relative] = handle.read()
            except OSError as error:
                target = os.readlink(path) if os.path.islink(path) else "(not a link)"
                problems.append(f"{server}: {relative} cannot be read ({error.strerror}); "
                                f"symlink to {target}")
    return found
