"""OpenStack Swift, all in one, on loopback: for the cloudfiles transporter's tests.

Debian's Swift packages (swift-proxy, -account, -container, -object; they run under the system
python3, which is fine: the transporter under test uses python-swiftclient from our own venv)
configured under a temporary directory, the way Swift's SAIO guide does it:

* `swift.conf` with a hash prefix/suffix and one storage policy, read from `swift_dir` (every
  server is told `swift_dir`, so /etc/swift is never touched);
* account, container and object rings with one device each (part power 6, one replica), built
  with `swift-ring-builder` (argument lists, no shell);
* each server with `devices` = a temporary directory, `mount_check = false`, `workers = 0` (one
  process, nothing forked, so a SIGKILL really kills it) and `user` = the current user;
* the proxy with tempauth (`user_test_tester = testing .admin`, auth URL `/auth/v1.0`) and a
  memcached of its own, which tempauth needs for its tokens.

The proxy is waited for on `/healthcheck` and then with a real authenticated account HEAD, so the
fixture only hands out a Swift that can store objects. `kill_proxy()`/`start_proxy()` restart the
proxy on the same port (the storage servers and the data stay).
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import pathlib
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from typing import Iterator

import pytest

from tests.servers._loopback import (
    LOOPBACK,
    free_port,
    kill_tree,
    port_accepts,
    require_loopback,
    stop_tree,
    wait_until,
)

BINARIES = {name: f"/usr/bin/swift-{name}-server"
            for name in ("account", "container", "object", "proxy")}
RING_BUILDER = "/usr/bin/swift-ring-builder"
MEMCACHED = "/usr/bin/memcached"
START_TIMEOUT = 60.0
ACCOUNT, USER, KEY = "test", "tester", "testing"


def swift_unavailable_reason() -> str | None:
    missing = [path for path in [*BINARIES.values(), RING_BUILDER, MEMCACHED]
               if not os.path.exists(path)]
    if missing:
        return f"Swift not installed ({', '.join(missing)}); run scripts/deps/33-swift.sh"
    return None


def _server_conf(kind: str, port: int, devices: pathlib.Path, swift_dir: pathlib.Path,
                 user: str) -> str:
    return f"""[DEFAULT]
bind_ip = {LOOPBACK}
bind_port = {port}
workers = 0
devices = {devices}
mount_check = false
swift_dir = {swift_dir}
user = {user}
log_name = {kind}-server
log_level = WARNING
disable_fallocate = true

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}

[{kind}-replicator]
[{kind}-updater]
[{kind}-auditor]
"""


def _proxy_conf(port: int, swift_dir: pathlib.Path, user: str, memcached_port: int) -> str:
    return f"""[DEFAULT]
bind_ip = {LOOPBACK}
bind_port = {port}
workers = 0
swift_dir = {swift_dir}
user = {user}
log_name = proxy-server
log_level = WARNING

[pipeline:main]
pipeline = catch_errors healthcheck proxy-logging cache tempauth proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_{ACCOUNT}_{USER} = {KEY} .admin
reseller_prefix = AUTH

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:cache]
use = egg:swift#memcache
memcache_servers = {LOOPBACK}:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:proxy-logging]
use = egg:swift#proxy_logging
"""


@dataclasses.dataclass
class SwiftServer:
    """Swift (tempauth) with its auth URL at http://127.0.0.1:`proxy_port`/auth/v1.0."""

    base: pathlib.Path
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        require_loopback(self.host)
        self.swift_dir = self.base / "etc"
        self.devices = self.base / "srv"
        self.logs = self.base / "log"
        for directory in (self.swift_dir, self.devices / "sdb1", self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port(self.host) for name in BINARIES}
        self.memcached_port = free_port(self.host)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        user = getpass.getuser()
        (self.swift_dir / "swift.conf").write_text(
            "[swift-hash]\nswift_hash_path_prefix = fileconveyor-test\n"
            "swift_hash_path_suffix = fileconveyor-test\n\n"
            "[storage-policy:0]\nname = gold\ndefault = yes\n")
        for kind in ("account", "container", "object"):
            (self.swift_dir / f"{kind}-server.conf").write_text(
                _server_conf(kind, self.ports[kind], self.devices, self.swift_dir, user))
            builder = str(self.swift_dir / f"{kind}.builder")
            for args in (["create", "6", "1", "1"],
                         ["add", f"r1z1-{self.host}:{self.ports[kind]}/sdb1", "1"],
                         ["rebalance"]):
                result = subprocess.run([RING_BUILDER, builder, *args], capture_output=True,
                                        timeout=60)
                # rebalance exits 1 for "warnings" (e.g. one replica); the ring file is what counts.
                if result.returncode not in (0, 1):
                    raise RuntimeError(f"swift-ring-builder {args[0]} failed: "
                                       f"{result.stdout!r} {result.stderr!r}")
            if not (self.swift_dir / f"{kind}.ring.gz").exists():
                raise RuntimeError(f"swift-ring-builder wrote no {kind}.ring.gz")
        (self.swift_dir / "proxy-server.conf").write_text(
            _proxy_conf(self.ports["proxy"], self.swift_dir, user, self.memcached_port))
        self.auth_url = f"http://{self.host}:{self.ports['proxy']}/auth/v1.0"
        self.user, self.key = f"{ACCOUNT}:{USER}", KEY

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                    stderr=log)

    def _start_server(self, kind: str) -> None:
        self._spawn(kind, [BINARIES[kind], str(self.swift_dir / f"{kind}-server.conf")])

    def start(self) -> None:
        """Start memcached and the four servers, and wait until the proxy stores objects."""
        self._spawn("memcached", [MEMCACHED, "-l", self.host, "-p", str(self.memcached_port),
                                  "-U", "0", "-m", "16", "-u", getpass.getuser()])
        for kind in BINARIES:
            self._start_server(kind)
        for name, port in [*self.ports.items(), ("memcached", self.memcached_port)]:
            self._wait_port(name, port)
        self._wait_ready()
        self.storage_url = self.auth()[0]

    def _wait_port(self, name: str, port: int) -> None:
        process = self.processes[name]
        try:
            wait_until(lambda: process.poll() is not None or port_accepts(self.host, port),
                       START_TIMEOUT, f"swift {name} on port {port}")
        except TimeoutError:
            self.stop()
            raise
        if process.poll() is not None:
            log = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"swift {name} exited with {process.returncode}: {log}")

    def _wait_ready(self) -> None:
        def ready() -> bool:
            try:
                storage_url, token = self.auth()
                request = urllib.request.Request(storage_url, method="HEAD",
                                                 headers={"X-Auth-Token": token})
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                    return bool(200 <= response.status < 300)
            except (OSError, urllib.error.URLError):
                return False

        wait_until(ready, START_TIMEOUT, "swift proxy to accept an authenticated request",
                   interval=0.1)

    def auth(self) -> tuple[str, str]:
        """(storage URL, token) from tempauth, without python-swiftclient."""
        request = urllib.request.Request(self.auth_url, headers={
            "X-Auth-User": self.user, "X-Auth-Key": self.key})
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            return response.headers["X-Storage-Url"], response.headers["X-Auth-Token"]

    def kill_proxy(self) -> None:
        kill_tree(self.processes["proxy"])

    def start_proxy(self) -> None:
        self._start_server("proxy")
        self._wait_port("proxy", self.ports["proxy"])
        self._wait_ready()

    def stop(self) -> None:
        for process in self.processes.values():
            stop_tree(process)

    def new_container(self) -> str:
        return "c-" + uuid.uuid4().hex[:12]

    def settings(self, container: str) -> dict[str, str]:
        """Working CloudFilesTransporter settings for `container` (created on first upload)."""
        return {"username": self.user, "api_key": self.key, "container": container,
                "auth_url": self.auth_url, "auth_version": "1"}


def _started(base: pathlib.Path) -> Iterator[SwiftServer]:
    reason = swift_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SwiftServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    """One Swift for the session; each test uses a container of its own."""
    yield from _started(tmp_path_factory.mktemp("swift"))


@pytest.fixture(scope="session")
def swift_restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    """A second Swift whose proxy the kill test may SIGKILL and start again (session-scoped: a
    Swift takes seconds to start; the test leaves it running again)."""
    yield from _started(tmp_path_factory.mktemp("swift-restartable"))
