"""OpenSSH's sshd on a loopback port, for the SFTP transporter's tests and benchmark.

The real daemon (Debian's openssh-server), not a Python imitation: what paramiko must get right
(host key checks, posix-rename@openssh.com, keepalives, a connection that dies mid-transfer) only
shows against it. Everything lives in a temporary directory: a generated ed25519 host key, a
throwaway user key authorised through `AuthorizedKeysFile`, a known_hosts file written from the
generated host key (tests never accept an unknown key), the sshd_config and its log.

sshd must run as root for a real login (privilege separation); the tests log in as the user that
runs them (root here and in CI) by key only. `internal-sftp` serves SFTP, so no sftp-server binary
is needed. Killing sshd hard means killing every per-connection child too: they call setsid(), so
`kill_tree` walks /proc.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import pathlib
import shutil
import signal
import subprocess
import uuid
from typing import Iterator

import pytest

from tests.servers._loopback import (
    LOOPBACK,
    banner_ready,
    free_port,
    kill_tree,
    process_tree,
    require_loopback,
    start_daemon,
    stop_tree,
)

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
PRIVSEP_DIR = "/run/sshd"
START_TIMEOUT = 20.0


def sshd_unavailable_reason() -> str | None:
    """Why sshd cannot run here (None if it can)."""
    if not os.path.exists(SSHD) or not os.path.exists(SSH_KEYGEN):
        return "OpenSSH server not installed (run scripts/deps/31-sftp.sh)"
    if os.geteuid() != 0:
        return "sshd needs root for a real login (the tests and CI run as root)"
    return None


def keygen(path: pathlib.Path, passphrase: str = "", comment: str = "fileconveyor-test") -> str:
    """Generate an ed25519 key pair at `path` (+ .pub); return the public key line."""
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", passphrase, "-C", comment,
                    "-f", str(path)], check=True, capture_output=True, timeout=30)
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclasses.dataclass
class SSHServer:
    """One sshd on 127.0.0.1:`port` whose files live in `base`."""

    base: pathlib.Path
    host: str = LOOPBACK
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        require_loopback(self.host)
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        #: A second port where internal-sftp runs read-only (-R): writes get "permission denied".
        self.readonly_port = free_port(self.host)
        self.user = getpass.getuser()
        self.host_key = self.base / "ssh_host_ed25519_key"
        self.client_key = self.base / "id_ed25519"
        self.other_key = self.base / "id_other"          # a key the server does not authorise
        self.passphrase_key = self.base / "id_passphrase"
        self.passphrase = "correct horse battery staple"
        self.known_hosts = self.base / "known_hosts"
        self.config = self.base / "sshd_config"
        self.log = self.base / "sshd.log"
        self.data = self.base / "data"
        self.data.mkdir(exist_ok=True)
        host_pub = keygen(self.host_key, comment="fileconveyor-test-host")
        authorized = [keygen(self.client_key), keygen(self.passphrase_key, self.passphrase)]
        keygen(self.other_key)
        (self.base / "authorized_keys").write_text("\n".join(authorized) + "\n")
        key_type, key_blob = host_pub.split()[:2]
        self.host_key_line = f"[{self.host}]:{self.port} {key_type} {key_blob}"
        self.known_hosts.write_text(
            f"{self.host_key_line}\n[{self.host}]:{self.readonly_port} {key_type} {key_blob}\n")
        self.config.write_text("\n".join([
            f"Port {self.port}",
            f"Port {self.readonly_port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.base / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "PrintMotd no",
            "UseDNS no",
            # The benchmark opens one connection per worker at once.
            "MaxStartups 128",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            f"Match LocalPort {self.readonly_port}",
            "    ForceCommand internal-sftp -R",
        ]) + "\n")

    def start(self) -> None:
        """Start sshd in the foreground (-D) and wait for its banner."""
        os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        require_loopback(self.host)
        # sshd re-executes itself, so it must be started with its absolute path.
        self.process = start_daemon(
            [SSHD, "-D", "-e", "-f", str(self.config)], self.log,
            lambda: banner_ready(self.host, self.port, b"SSH-2.0-"),
            f"sshd on {self.host}:{self.port}", START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL sshd and every connection it serves (a crash, as the kill test wants)."""
        if self.process is not None:
            kill_tree(self.process)

    def drop_sessions(self) -> int:
        """SIGKILL every connection sshd serves (its per-connection processes) but not the
        listener: a session dropped as by a network cut or an admin's kill, with the server still
        accepting new connections. Returns how many processes were killed."""
        assert self.process is not None, "sshd is not running"
        sessions = process_tree(self.process.pid)[1:]
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(sessions)

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)

    def new_root(self) -> pathlib.Path:
        """A fresh, empty directory to use as one transporter's `path`."""
        root = self.data / uuid.uuid4().hex[:12]
        root.mkdir()
        return root

    def settings(self, root: pathlib.Path, url: str = "http://cdn.example.test/static"
                 ) -> dict[str, str]:
        """Working SFTPTransporter settings for `root` on this server (no ~/.ssh/config)."""
        return {
            "host": self.host,
            "port": str(self.port),
            "username": self.user,
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "ssh_config": "none",
            "path": str(root),
            "url": url,
        }


def _started(base: pathlib.Path) -> Iterator[SSHServer]:
    reason = sshd_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SSHServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """One sshd for the whole session; use `new_root()` for a fresh destination per test."""
    yield from _started(tmp_path_factory.mktemp("sshd"))


@pytest.fixture
def sshd_restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """An sshd of the test's own, which the test may kill() and start() again on the same port."""
    yield from _started(tmp_path_factory.mktemp("sshd-restartable"))
