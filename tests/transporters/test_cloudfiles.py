"""The cloudfiles transporter against OpenStack Swift on loopback (tests/servers/swift.py).

The harness looks at Swift with plain HTTP requests (urllib and a tempauth token of its own),
never through python-swiftclient. Swift-specific tests below: the historical aliases, the public
container URL without `url_base`, `public` making a container readable, ETag integrity, and
reconnecting after the proxy restarts.
"""
from __future__ import annotations

import http.server
import json
import pathlib
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator

import pytest

pytest.importorskip("swiftclient")

from fileconveyor.transporters.base import (  # noqa: E402
    ConfigurationError,
    TransporterContext,
    resolve_transporter,
)
from fileconveyor.transporters.cloudfiles import CloudFilesTransporter  # noqa: E402
from tests.servers._loopback import fetch, free_port  # noqa: E402
from tests.servers.swift import SwiftServer  # noqa: E402
from tests.transporters.conformance import (  # noqa: E402
    MiB,
    RemoteHarness,
    TransporterConformance,
    _process_read_bytes,
)


def _request(url: str, token: str, method: str = "GET") -> bytes | None:
    request = urllib.request.Request(url, method=method, headers={"X-Auth-Token": token})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


class SwiftHarness(RemoteHarness):
    transporter_class = CloudFilesTransporter

    def __init__(self, state_dir: pathlib.Path, server: SwiftServer) -> None:
        super().__init__(state_dir)
        self.server = server
        self.container = server.new_container()

    def settings(self) -> dict[str, str]:
        # url_base = the container's public URL, as a user with a CDN domain would set it: the
        # suite wants url_for() without I/O, which needs url_base (without it, the first
        # url_for() authenticates once; test_url_is_the_public_container_url covers that path).
        storage_url = self.server.storage_url
        return {**self.server.settings(self.container), "public": "true",
                "url_base": f"{storage_url}/{self.container}"}

    def _container_url(self) -> tuple[str, str]:
        storage_url, token = self.server.auth()
        return f"{storage_url}/{urllib.parse.quote(self.container)}", token

    def read(self, remote_path: str) -> bytes | None:
        url, token = self._container_url()
        return _request(f"{url}/{urllib.parse.quote(remote_path)}", token)

    def list(self) -> list[str]:
        url, token = self._container_url()
        body = _request(f"{url}?format=json&limit=10000", token)
        return sorted(item["name"] for item in json.loads(body or b"[]"))

    def unreachable_settings(self) -> dict[str, str]:
        return {"auth_url": f"http://127.0.0.1:{free_port()}/auth/v1.0"}

    def bad_credentials_settings(self) -> dict[str, str]:
        return {"api_key": "wrong"}

    def fetch_url(self, url: str) -> bytes | None:
        return fetch(url)

    def transfer_in_progress(self, remote_path: str, baseline_read_bytes: int) -> bool:
        # The transporter reads the file once for its MD5, then again while sending it.
        return _process_read_bytes() - baseline_read_bytes > self.large_file_size + 4 * MiB

    def kill_server(self) -> None:
        self.server.kill_proxy()

    def start_server(self) -> None:
        self.server.start_proxy()


class TestCloudFilesConformance(TransporterConformance):
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    def harness(self, swift: SwiftServer, tmp_path: pathlib.Path) -> SwiftHarness:
        return SwiftHarness(tmp_path / "state", swift)

    @pytest.fixture
    def restartable_harness(self, swift: SwiftServer, tmp_path: pathlib.Path) -> SwiftHarness:
        # Same Swift: its proxy is killed and started again (storage servers keep running).
        return SwiftHarness(tmp_path / "state-restartable", swift)


# -- Swift-specific -------------------------------------------------------------------------------------


def _context(tmp_path: pathlib.Path) -> TransporterContext:
    return TransporterContext(server_name="swift-test", state_dir=str(tmp_path), timeout=10.0)


@pytest.fixture
def make(swift: SwiftServer, tmp_path: pathlib.Path) -> Iterator:
    made: list[CloudFilesTransporter] = []

    def factory(**overrides: str) -> CloudFilesTransporter:
        settings = {**swift.settings(swift.new_container()), **overrides}
        transporter = CloudFilesTransporter(settings, _context(tmp_path))
        made.append(transporter)
        return transporter

    yield factory
    for transporter in made:
        transporter.close()


@pytest.fixture
def small_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "small.css"
    path.write_bytes(b"body{}")
    return str(path)


def test_historical_names_resolve() -> None:
    for name in ("cloudfiles", "mosso", "cumulus", "transporters.transporter_cloudfiles"):
        assert resolve_transporter(name) is CloudFilesTransporter


def test_url_is_the_public_container_url(make, swift: SwiftServer, small_file: str) -> None:
    transporter = make(public="true")
    url = transporter.upload(small_file, "css/a b.css")
    storage_url, _token = swift.auth()
    assert url == f"{storage_url}/{transporter.container}/css/a%20b.css"
    assert fetch(url) == b"body{}"   # anonymous read: the container was created public


def test_private_by_default(make, small_file: str) -> None:
    transporter = make()
    url = transporter.upload(small_file, "a.css")
    with pytest.raises(urllib.error.HTTPError) as caught:
        fetch(url)
    assert caught.value.code in (401, 403)


def test_url_base_and_content_type(make, swift: SwiftServer, small_file: str) -> None:
    transporter = make(url_base="https://cdn.example.test/files")
    assert transporter.upload(small_file, "x/a#b.css") == \
        "https://cdn.example.test/files/x/a%23b.css"
    storage_url, token = swift.auth()
    request = urllib.request.Request(
        f"{storage_url}/{transporter.container}/x/a%23b.css", method="HEAD",
        headers={"X-Auth-Token": token})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        assert response.headers["Content-Type"] == "text/css; charset=utf-8"
        assert response.headers["Etag"].strip('"') == "aa676972bbd2b68e94ef8e91e81d20be"


def test_reconnects_after_proxy_restart(make, swift: SwiftServer, small_file: str) -> None:
    transporter = make()
    transporter.upload(small_file, "one.css")
    swift.kill_proxy()
    swift.start_proxy()
    transporter.upload(small_file, "two.css")  # a fresh connection, no error
    assert transporter.exists("one.css") and transporter.exists("two.css")


def test_check_settings_values(swift: SwiftServer) -> None:
    good = swift.settings("c")
    assert CloudFilesTransporter.check_settings(good) == []
    problems = "\n".join(CloudFilesTransporter.check_settings(
        {**good, "auth_url": "ftp://x", "auth_version": "4", "public": "sometimes",
         "container": "a/b"}))
    for expected in ("<auth_url>", "<auth_version>", "<public>", "<container>"):
        assert expected in problems


class _AuthProxy:
    """A loopback tempauth front that counts authentications and can move the storage URL (as
    a renewed auth may): it asks the real Swift and passes its reply on, with `host` in the
    X-Storage-Url instead of 127.0.0.1 when set. Storage requests go to Swift directly."""

    def __init__(self, swift: SwiftServer) -> None:
        self.count = 0
        self.host: str | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                proxy.count += 1
                request = urllib.request.Request(swift.auth_url, headers={
                    name: value for name, value in self.headers.items()
                    if name.lower().startswith("x-")})
                try:
                    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
                        storage_url = reply.headers["X-Storage-Url"]
                        token = reply.headers["X-Auth-Token"]
                except urllib.error.HTTPError as refused:  # bad credentials: pass it on
                    self.send_response(refused.code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if proxy.host:
                    storage_url = storage_url.replace("127.0.0.1", proxy.host)
                self.send_response(200)
                for name, value in (("X-Storage-Url", storage_url), ("X-Auth-Token", token),
                                    ("X-Storage-Token", token), ("Content-Length", "0")):
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth/v1.0"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def auth_proxy(swift: SwiftServer) -> Iterator[_AuthProxy]:
    proxy = _AuthProxy(swift)
    yield proxy
    proxy.stop()


def test_url_for_authenticates_once_and_caches_the_url(
        make, swift: SwiftServer, auth_proxy: _AuthProxy, small_file: str,
        tmp_path: pathlib.Path) -> None:
    first = make(auth_url=auth_proxy.url)
    container = first.container
    urls = [first.url_for(f"css/{n}.css") for n in range(200)]
    assert auth_proxy.count == 1
    assert urls[7] == f"{swift.storage_url}/{container}/css/7.css"

    # A restart: a new instance reads the cache and does not authenticate at all.
    second = make(auth_url=auth_proxy.url, container=container)
    assert second.url_for("a.css") == f"{swift.storage_url}/{container}/a.css"
    assert auth_proxy.count == 1
    cache = tmp_path / "cloudfiles-url.json"
    assert cache.stat().st_mode & 0o777 == 0o600

    # A renewed authentication moves the account: the next operation learns the new URL,
    # url_for uses it, and so does the next start.
    auth_proxy.host = "localhost"
    second.close()  # a new connection: it authenticates again
    moved = swift.storage_url.replace("127.0.0.1", "localhost")
    assert second.upload(small_file, "b.css") == f"{moved}/{container}/b.css"
    assert auth_proxy.count == 2
    assert second.url_for("c.css") == f"{moved}/{container}/c.css"
    third = make(auth_url=auth_proxy.url, container=container)
    assert third.url_for("c.css") == f"{moved}/{container}/c.css"
    assert auth_proxy.count == 2
    assert moved in cache.read_text()


def test_url_cache_unreadable_or_for_other_credentials(
        make, swift: SwiftServer, auth_proxy: _AuthProxy, tmp_path: pathlib.Path) -> None:
    (tmp_path / "cloudfiles-url.json").write_text("{not json")
    first = make(auth_url=auth_proxy.url)
    assert first.url_for("a.css").startswith(swift.storage_url + "/")
    assert auth_proxy.count == 1
    other = make(auth_url=auth_proxy.url, username="test2:tester2")  # another account: no reuse
    with pytest.raises(ConfigurationError):  # asked tempauth: an unknown user
        other.url_for("a.css")
    assert auth_proxy.count == 2
