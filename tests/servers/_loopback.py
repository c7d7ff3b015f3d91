"""Helpers shared by the real-server fixtures: loopback-only ports, bounded waits, process trees.

Not a pytest plugin (the leading underscore keeps tests/conftest.py from loading it). Every helper
refuses a host that is not loopback before sending the first packet: test servers and the
transporters pointed at them must never reach the network.
"""
from __future__ import annotations

import functools
import http.server
import ipaddress
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator

LOOPBACK = "127.0.0.1"


def require_loopback(host: str) -> str:
    """`host` if it is a loopback address; raise otherwise (checked before any packet is sent)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise RuntimeError(f"test servers only run on loopback, not on {host!r}")
    return host


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    require_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    """Poll `condition` until it holds; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        # The polling interval of a bounded condition wait, not a sleep standing in for one.
        time.sleep(interval)


def banner_ready(host: str, port: int, prefix: bytes, timeout: float = 1.0) -> bool:
    """Does a server at host:port accept a connection and greet with `prefix`?"""
    require_loopback(host)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            return conn.recv(len(prefix) + 64).startswith(prefix)
    except OSError:
        return False


def port_accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    require_loopback(host)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Direct children of `pid` from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants. sshd's per-connection processes call setsid(), so a
    process-group kill would miss them; walking /proc catches them all."""
    tree, todo = [], [pid]
    while todo and len(tree) < 10_000:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def kill_tree(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL `process` and every descendant, then reap it."""
    if process.poll() is None:
        for pid in process_tree(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    process.wait(timeout)


def stop_tree(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM `process` and its descendants; SIGKILL whatever is left after `timeout`."""
    if process.poll() is not None:
        return
    pids = process_tree(process.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    kill_tree(process, timeout)


def start_daemon(argv: list[str], log_path: pathlib.Path, ready: Callable[[], bool],
                 what: str, timeout: float, cwd: pathlib.Path | None = None
                 ) -> subprocess.Popen[bytes]:
    """Start a server process logging to `log_path` and wait until `ready()`; if it exits or
    never gets ready, kill it and raise with the end of its log."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log)
    try:
        wait_until(lambda: process.poll() is not None or ready(), timeout, what)
    except TimeoutError:
        kill_tree(process)
        raise
    if process.poll() is not None:
        raise RuntimeError(f"{what} exited with {process.returncode}: "
                           f"{log_path.read_text(errors='replace')[-2000:]}")
    return process


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        pass


class DirectoryHTTPServer:
    """A static HTTP server on loopback for a directory, so URL tests fetch real URLs (the
    server percent-decodes the path exactly as a web server in front of the SFTP/FTP root would).
    """

    def __init__(self, root: pathlib.Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://{LOOPBACK}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="test-http",
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def fetch(url: str, timeout: float = 10.0) -> bytes | None:
    """GET a loopback `url`; None on 404."""
    import urllib.error
    import urllib.parse
    import urllib.request

    host = urllib.parse.urlsplit(url).hostname or ""
    require_loopback(host)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def files_below(root: pathlib.Path) -> list[str]:
    """Every regular file below `root`, as sorted relative POSIX paths (hidden files included)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            found.append(pathlib.Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def iter_lines(path: pathlib.Path) -> Iterator[str]:
    try:
        yield from path.read_text(errors="replace").splitlines()
    except OSError:
        return
