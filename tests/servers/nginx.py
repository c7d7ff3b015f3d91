"""nginx serving a directory on loopback, with `gzip_static` and, where Debian's module is
installed, `brotli_static`: the web server that pre-compressed copies (precompress.Gzip/Brotli,
original issue #3) are made for. Installed by scripts/deps/41-precompress.sh.

Fixture `nginx_static` (function): a factory `start(root) -> NginxServer`; each server is its own
nginx (master_process off, so one process) on a free 127.0.0.1 port, with every path it writes
(pid, logs, temporary files) in the test's directory and nothing taken from /etc/nginx. Stopped at
teardown.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import urllib.request
from typing import Callable, Iterator

import pytest

from tests.servers._loopback import LOOPBACK, free_port, port_accepts, require_loopback, start_daemon, stop_tree

#: Where Debian puts nginx's dynamic modules.
MODULES = pathlib.Path("/usr/lib/nginx/modules")
BROTLI_STATIC = MODULES / "ngx_http_brotli_static_module.so"
START_TIMEOUT = 20.0

#: Enough MIME types for the assets the tests serve (nginx's own mime.types is not relied on).
_TYPES = {"text/css": "css", "application/javascript": "js", "text/html": "html htm",
          "image/svg+xml": "svg", "application/json": "json", "text/plain": "txt"}


@dataclasses.dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class NginxServer:
    root: pathlib.Path
    port: int
    has_brotli: bool
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    def get(self, path: str, accept_encoding: str | None = None) -> Response:
        """GET `path` (relative to the root), sending Accept-Encoding only when given; the body is
        returned as sent (never decoded)."""
        request = urllib.request.Request(self.base_url + path.lstrip("/"))
        if accept_encoding is not None:
            request.add_header("Accept-Encoding", accept_encoding)
        require_loopback(LOOPBACK)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return Response(response.status, {k.lower(): v for k, v in response.headers.items()},
                            bytes(response.read()))


def _config(root: pathlib.Path, port: int, work: pathlib.Path, brotli: bool) -> str:
    types = "".join(f"        {mime} {extensions};\n" for mime, extensions in _TYPES.items())
    return f"""
{f'load_module {BROTLI_STATIC};' if brotli else ''}
daemon off;
master_process off;
pid {work}/nginx.pid;
error_log {work}/error.log info;
events {{ worker_connections 64; }}
http {{
    types {{
{types}    }}
    default_type application/octet-stream;
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    gzip off;
    gzip_static on;
    {'brotli_static on;' if brotli else ''}
    server {{
        listen {LOOPBACK}:{port};
        root {root};
    }}
}}
"""


def nginx_unavailable_reason() -> str | None:
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        return "nginx is not installed (scripts/deps/41-precompress.sh installs it)"
    return None


@pytest.fixture
def nginx_static(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[pathlib.Path], NginxServer]]:
    reason = nginx_unavailable_reason()
    if reason:
        pytest.skip(reason)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    started: list[NginxServer] = []

    def start(root: pathlib.Path) -> NginxServer:
        work = tmp_path_factory.mktemp("nginx")
        port = free_port()
        brotli = BROTLI_STATIC.exists()
        conf = work / "nginx.conf"
        conf.write_text(_config(root, port, work, brotli))
        process = start_daemon([binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
                               work / "stderr.log", lambda: port_accepts(LOOPBACK, port), "nginx",
                               START_TIMEOUT)
        server = NginxServer(root, port, brotli, process)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop_tree(server.process)
