"""The one conformance suite every transporter must pass (after rclone's `fstest/fstests`).

How to plug a transporter in
============================

A transporter's test file is a few lines: a `RemoteHarness` subclass that knows how to look at the
server *without* going through the transporter, and a test class that inherits
`TransporterConformance` and provides the `harness` fixture::

    # tests/transporters/test_sftp.py
    from tests.transporters.conformance import RemoteHarness, TransporterConformance

    class SFTPHarness(RemoteHarness):
        transporter_class = SFTPTransporter
        def settings(self): return {"host": "127.0.0.1", "port": ..., "path": ..., "url": ...}
        def read(self, remote_path): ...       # bytes at remote_path, or None if absent
        def list(self): ...                    # every file below the root, temp files included
        def unreachable_settings(self): ...    # settings pointing at a closed loopback port
        # optional hooks, see RemoteHarness: fetch_url, bad_credentials_settings,
        # missing_root_settings, transfer_in_progress, leftovers, kill_server, start_server

    class TestSFTP(TransporterConformance):
        known_gaps = {"test_url_resolves": "no HTTP server serves the SFTP root in tests"}

        @pytest.fixture
        def harness(self, sshd, tmp_path):          # your server fixture, from tests/servers/
            return SFTPHarness(tmp_path, sshd)

        @pytest.fixture
        def restartable_harness(self, sshd_restartable, tmp_path):   # optional
            return SFTPHarness(tmp_path, sshd_restartable)

Rules of the suite
------------------

* `harness` gives a fresh, empty destination root per test (a new bucket, directory, container).
* `restartable_harness` (optional; without it the kill test is skipped as a gap) runs on a server
  of its own that `kill_server()` stops hard (SIGKILL) and `start_server()` starts again on the
  same address with an empty root that exists (moto, for one, loses everything on restart).
* `known_gaps` maps a test name to the reason the transporter cannot pass it; those tests are
  skipped with that reason, so the gap is visible in every run instead of hidden in a comment.
  Keep it short and explain each entry, as rclone does.
* Every transporter a test makes through `make()` is closed at teardown, and the suite fails a test
  that leaves threads running after close() (watchdog's rule: no leaked threads).
* Nothing here sleeps to wait: every wait is a bounded poll of a named condition.

What the suite checks: upload/overwrite/delete/double delete/exists, empty and 50 MiB files,
multipart where `multipart_settings` is given, hostile names (spaces, quotes, `%`, `#`, `?`, `+`,
non-ASCII, decomposed Unicode) landing at exactly the right name with a URL that resolves back,
`../` refused with nothing written, no reader ever seeing a partial file at the final name,
errors classified (unreachable -> ServerUnavailableError, bad credentials -> ConfigurationError,
missing bucket/root -> ConfigurationError or PermanentError), and a server killed in the middle of
a transfer and started again, after which a retry with the same transporter instance delivers the
file exactly once (one file at the name, right content, no leftovers).
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Callable, ClassVar, Iterator, Mapping, Protocol

import pytest

from fileconveyor.transporters.base import (
    TEMP_MARKER,
    ConfigurationError,
    PermanentError,
    RetryableError,
    ServerUnavailableError,
    SourceVanishedError,
    Transporter,
    TransporterContext,
)
from tests.servers._loopback import fetch, files_below, free_port
from tests.transporters.conformance_tree import TreeConformance

MiB = 1024 * 1024

#: Names that broke the original or break naive URL/path handling. Decomposed Unicode must stay
#: decomposed: a transporter never normalises names (macOS users upload NFD names).
HOSTILE_NAMES: tuple[str, ...] = (
    "with space.txt",
    "dir with space/file name.txt",
    "quote'single.txt",
    'quote"double.txt',
    "percent%20literal%.txt",
    "hash#fragment.txt",
    "question?mark.txt",
    "plus+sign.txt",
    "ampersand&equals=.txt",
    "non-ascii-\u00e9\u00e8\u00fc\u4e2d\u6587.txt",
    "decomposed-e\u0301.txt",
    "emoji-\U0001f600.txt",
    "semicolon;colon:.txt",
    "tilde~bang!.txt",
)

#: The longest names a POSIX file system takes (NAME_MAX = 255 bytes) in 2-, 3- and 4-byte
#: characters: a temporary name cut by characters instead of bytes could not be created for them.
LONGEST_NAMES: tuple[str, ...] = (
    "\u00e9" * 125 + "a.txt",
    "\u4e2d" * 83 + "ab.txt",
    "\U0001f600" * 62 + "abc.txt",
)
assert all(len(name.encode("utf-8")) == 255 for name in LONGEST_NAMES)
#: What a URL path may contain after the one encoding (base.encode_url_path).
URL_PATH = re.compile(r"[A-Za-z0-9\-._~/]*(%[0-9A-F]{2}[A-Za-z0-9\-._~/]*)*")


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.02) -> None:
    """Poll `condition` until true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        # Polling interval of a bounded condition wait, not a sleep standing in for a condition.
        time.sleep(interval)


def write_random(path: pathlib.Path, size: int, seed: int = 0) -> bytes:
    """Write `size` deterministic pseudo-random bytes (incompressible) and return them."""
    chunks = []
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    counter = 0
    remaining = size
    while remaining > 0:
        # Vary each MiB so that equal parts cannot be deduplicated by a clever server.
        piece = hashlib.sha256(f"{seed}-{counter}".encode()).digest() + block[32:]
        piece = piece[:min(MiB, remaining)]
        chunks.append(piece)
        remaining -= len(piece)
        counter += 1
    data = b"".join(chunks)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _process_read_bytes() -> int:
    """Bytes this process has read through read() so far (Linux /proc/self/io `rchar`)."""
    try:
        with open("/proc/self/io", encoding="ascii") as io:
            for line in io:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class RemoteHarness(abc.ABC):
    """What the suite needs to know about one transporter and its test server.

    Every hook that looks at the server must bypass the transporter under test (another client,
    the server's directory on disk), so that a transporter cannot pass by agreeing with itself.
    """

    #: The transporter under test.
    transporter_class: ClassVar[type[Transporter]]
    #: Settings overrides that make the transporter use multipart (None: it has no multipart).
    multipart_settings: ClassVar[Mapping[str, str] | None] = None
    #: Size of the "large file" tests.
    large_file_size: ClassVar[int] = 50 * MiB
    #: Does the transporter upload under temporary names (which `leftovers()` lists)?
    temporary_names: ClassVar[bool] = False
    #: Longest name in bytes the destination takes, if it is a file system (None: no limit).
    name_max: ClassVar[int | None] = None

    def __init__(self, state_dir: pathlib.Path) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.made: list[Transporter] = []

    @abc.abstractmethod
    def settings(self) -> dict[str, str]:
        """Working settings for the fresh, empty root of this test."""

    @abc.abstractmethod
    def read(self, remote_path: str) -> bytes | None:
        """The bytes stored at `remote_path` (relative to the root), or None if there is none."""

    @abc.abstractmethod
    def list(self) -> list[str]:
        """Every file below the root as relative paths, temporary and partial files included."""

    @abc.abstractmethod
    def unreachable_settings(self) -> dict[str, str]:
        """Overrides that point at a loopback port where nothing listens (connection refused)."""

    def context(self) -> TransporterContext:
        return TransporterContext(server_name="conformance", state_dir=str(self.state_dir),
                                  timeout=10.0)

    def make(self, **overrides: str) -> Transporter:
        """A new transporter (no I/O yet), closed by the suite at teardown."""
        transporter = self.transporter_class({**self.settings(), **overrides}, self.context())
        self.made.append(transporter)
        return transporter

    def fetch_url(self, url: str) -> bytes | None:
        """GET `url` as a browser would (None on 404). Raise NotImplementedError if the test
        server serves no URLs: list `test_url_resolves` as a known gap then."""
        raise NotImplementedError

    def bad_credentials_settings(self) -> dict[str, str] | None:
        """Overrides with credentials the server rejects, or None if the server cannot check."""
        return None

    def missing_root_settings(self) -> dict[str, str] | None:
        """Overrides naming a bucket/container/root that does not exist, or None."""
        return None

    def transfer_in_progress(self, remote_path: str, baseline_read_bytes: int) -> bool:
        """Has an upload to `remote_path` visibly started but not finished?

        The default watches this process read the local file (more than 4 MiB read since
        `baseline_read_bytes`); a harness that can see partial state on the server (an open
        multipart upload with parts, a growing temp file) should say so instead."""
        return _process_read_bytes() - baseline_read_bytes > 4 * MiB

    def leftovers(self) -> list[str]:
        """Incomplete uploads or temporary files left on the server (should be none)."""
        return []

    def kill_server(self) -> None:
        """Stop the server hard (SIGKILL). Only `restartable_harness` must implement it."""
        raise NotImplementedError

    def start_server(self) -> None:
        """Start the server again on the same address, with an empty, existing root."""
        raise NotImplementedError

    def close_all(self) -> None:
        for transporter in self.made:
            transporter.close()


class LocalRootHarness(RemoteHarness):
    """A destination whose root is a directory on this machine (the SFTP and FTP test servers'
    roots, symlink_or_copy's location), looked at on disk: never through the protocol."""

    root: pathlib.Path
    temporary_names = True
    name_max = 255

    def read(self, remote_path: str) -> bytes | None:
        path = self.root / remote_path
        return path.read_bytes() if path.is_file() else None

    def list(self) -> list[str]:
        return files_below(self.root)

    def leftovers(self) -> list[str]:
        return [name for name in self.list() if TEMP_MARKER in name]

    def transfer_in_progress(self, remote_path: str, baseline_read_bytes: int) -> bool:
        # A temporary file growing on the server's disk is the transfer, seen from the server.
        for name in self.leftovers():
            try:
                if (self.root / name).stat().st_size > MiB:
                    return True
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
        return False


class ServerRootHarness(LocalRootHarness):
    """A LocalRootHarness for a test server of tests/servers/ (sshd, ftpd) that serves a fresh
    directory per test (`new_root()`), can be killed and started again, and has a web server in
    front of its data directory (optional) so that URLs are fetched for real."""

    def __init__(self, state_dir: pathlib.Path, server: "ServesDirectories",
                 base_url: str | None = None) -> None:
        super().__init__(state_dir)
        self.server = server
        self.root = server.new_root()
        self.url = (f"{base_url}/{self.root.name}" if base_url
                    else "http://cdn.example.test/static")

    def settings(self) -> dict[str, str]:
        return self.server.settings(self.root, url=self.url)

    def unreachable_settings(self) -> dict[str, str]:
        return {"port": str(free_port())}

    def fetch_url(self, url: str) -> bytes | None:
        if not url.startswith("http://127.0.0.1"):
            raise NotImplementedError
        return fetch(url)

    def kill_server(self) -> None:
        self.server.kill()

    def start_server(self) -> None:
        self.server.start()


class ServesDirectories(Protocol):
    """What ServerRootHarness needs of a test server (tests.servers.sshd.SSHServer, ftpd's)."""

    def new_root(self) -> pathlib.Path: ...
    def settings(self, root: pathlib.Path, url: str = ...) -> dict[str, str]: ...
    def kill(self) -> None: ...
    def start(self) -> None: ...


class TransporterConformance(TreeConformance):
    """Inherit this and provide the `harness` fixture (and optionally `restartable_harness`).
    Directories in the way and listings are tested by `TreeConformance` (conformance_tree.py)."""

    #: Test name -> why this transporter cannot pass it (the test is skipped with this reason).
    known_gaps: ClassVar[Mapping[str, str]] = {}

    # -- fixtures ---------------------------------------------------------------------------------

    @pytest.fixture
    def harness(self) -> RemoteHarness:
        raise NotImplementedError("a conformance test class must provide the `harness` fixture")

    @pytest.fixture
    def restartable_harness(self) -> RemoteHarness:
        pytest.skip("known gap: this transporter's tests have no restartable server")

    @pytest.fixture(autouse=True)
    def _skip_known_gaps(self, request: pytest.FixtureRequest) -> None:
        name = request.node.originalname
        if name in self.known_gaps:
            pytest.skip(f"known gap: {self.known_gaps[name]}")

    @pytest.fixture
    def transporter(self, harness: RemoteHarness) -> Iterator[Transporter]:
        yield harness.make()

    @pytest.fixture(autouse=True)
    def _closes_without_leaking_threads(self, request: pytest.FixtureRequest) -> Iterator[None]:
        harnesses: list[RemoteHarness] = []
        for name in ("harness", "restartable_harness"):
            if name in request.fixturenames:
                harnesses.append(request.getfixturevalue(name))
        before = set(threading.enumerate())
        yield
        for item in harnesses:
            item.close_all()
        deadline = time.monotonic() + 10.0
        for thread in set(threading.enumerate()) - before:
            thread.join(max(0.0, deadline - time.monotonic()))
        leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        assert not leaked, f"threads still running 10s after close(): {leaked}"

    # -- basic operations ---------------------------------------------------------------------------

    def test_upload_then_read_back(self, harness: RemoteHarness, transporter: Transporter,
                                   tmp_path: pathlib.Path) -> None:
        data = write_random(tmp_path / "a.bin", 100_000)
        url = transporter.upload(str(tmp_path / "a.bin"), "static/misc/a.bin")
        assert harness.read("static/misc/a.bin") == data
        assert url == transporter.url_for("static/misc/a.bin")
        assert url.startswith(("http://", "https://", "ftp://", "sftp://", "file://", "/"))
        assert harness.list() == ["static/misc/a.bin"]

    def test_leading_slash_and_dots_are_normalised(self, harness: RemoteHarness,
                                                   transporter: Transporter,
                                                   tmp_path: pathlib.Path) -> None:
        (tmp_path / "n.txt").write_bytes(b"normalised")
        url = transporter.upload(str(tmp_path / "n.txt"), "/x//./y/../n.txt")
        assert harness.list() == ["x/n.txt"]
        assert url == transporter.url_for("x/n.txt")

    def test_overwrite_replaces_content(self, harness: RemoteHarness, transporter: Transporter,
                                        tmp_path: pathlib.Path) -> None:
        (tmp_path / "v1").write_bytes(b"version one, longer than the second")
        (tmp_path / "v2").write_bytes(b"version two")
        transporter.upload(str(tmp_path / "v1"), "f.css")
        transporter.upload(str(tmp_path / "v2"), "f.css")
        assert harness.read("f.css") == b"version two"
        assert harness.list() == ["f.css"]

    def test_delete_and_double_delete(self, harness: RemoteHarness, transporter: Transporter,
                                      tmp_path: pathlib.Path) -> None:
        (tmp_path / "d").write_bytes(b"doomed")
        transporter.upload(str(tmp_path / "d"), "sub/d.txt")
        transporter.delete("sub/d.txt")
        assert harness.read("sub/d.txt") is None
        transporter.delete("sub/d.txt")  # already gone: not an error
        transporter.delete("never/existed.txt")
        assert harness.list() == []

    def test_delete_of_a_file_whose_name_is_now_a_directory_is_done(
            self, harness: RemoteHarness, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        """A file replaced by a directory: the directory's file may be published before the old
        file's deletion runs. That deletion is done (the file is gone), not an error retried for
        ever (local said "Is a directory", SFTP "Failure"); the directory stays."""
        (tmp_path / "f").write_bytes(b"file")
        transporter.upload(str(tmp_path / "f"), "n.txt")
        transporter.delete("n.txt")
        transporter.upload(str(tmp_path / "f"), "n.txt/inner")
        transporter.delete("n.txt")
        assert harness.list() == ["n.txt/inner"]

    def test_delete_below_a_name_that_is_now_a_file_is_done(
            self, harness: RemoteHarness, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        """A directory replaced by a file: deleting a file that was below the directory is done
        (local refused it as "outside of the location" for ever); the new file stays."""
        (tmp_path / "f").write_bytes(b"file")
        transporter.upload(str(tmp_path / "f"), "d/n.txt")
        transporter.delete("d/n.txt")
        transporter.upload(str(tmp_path / "f"), "d")
        transporter.delete("d/n.txt")
        assert harness.list() == ["d"] and harness.read("d") == b"file"

    def test_exists(self, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        (tmp_path / "e").write_bytes(b"here")
        assert transporter.exists("e.txt") is False
        transporter.upload(str(tmp_path / "e"), "e.txt")
        assert transporter.exists("e.txt") is True
        assert transporter.exists("e.tx") is False
        transporter.delete("e.txt")
        assert transporter.exists("e.txt") is False

    def test_empty_file(self, harness: RemoteHarness, transporter: Transporter,
                        tmp_path: pathlib.Path) -> None:
        (tmp_path / "empty").write_bytes(b"")
        transporter.upload(str(tmp_path / "empty"), "empty.txt")
        assert harness.read("empty.txt") == b""
        assert transporter.exists("empty.txt")

    def test_large_file(self, harness: RemoteHarness, transporter: Transporter,
                        tmp_path: pathlib.Path) -> None:
        data = write_random(tmp_path / "big", harness.large_file_size, seed=1)
        transporter.upload(str(tmp_path / "big"), "big/file.bin")
        assert harness.read("big/file.bin") == data
        assert harness.leftovers() == []

    def test_multipart(self, harness: RemoteHarness, tmp_path: pathlib.Path) -> None:
        if harness.multipart_settings is None:
            pytest.skip("this transporter has no multipart upload")
        transporter = harness.make(**harness.multipart_settings)
        # Not a multiple of any part size: the short last part is where off-by-ones live.
        data = write_random(tmp_path / "mp", 23 * MiB + 12345, seed=2)
        transporter.upload(str(tmp_path / "mp"), "mp.bin")
        assert harness.read("mp.bin") == data
        assert harness.leftovers() == []

    # -- names --------------------------------------------------------------------------------------

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    def test_hostile_name_lands_at_exact_name(self, name: str, harness: RemoteHarness,
                                              transporter: Transporter,
                                              tmp_path: pathlib.Path) -> None:
        content = f"content of {name}".encode()
        (tmp_path / "src").write_bytes(content)
        transporter.upload(str(tmp_path / "src"), "h/" + name)
        assert harness.list() == ["h/" + name]
        assert harness.read("h/" + name) == content
        assert transporter.exists("h/" + name)

    @pytest.mark.parametrize("name", LONGEST_NAMES, ids=["2-byte", "3-byte", "4-byte"])
    def test_longest_multibyte_name_is_published(self, name: str, harness: RemoteHarness,
                                                 transporter: Transporter,
                                                 tmp_path: pathlib.Path) -> None:
        (tmp_path / "src").write_bytes(b"long name")
        url = transporter.upload(str(tmp_path / "src"), "long/" + name)
        assert harness.list() == ["long/" + name]
        assert harness.read("long/" + name) == b"long name"
        assert urllib.parse.unquote(url).endswith("/long/" + name)

    def test_name_longer_than_name_max_is_permanent(self, harness: RemoteHarness,
                                                    transporter: Transporter,
                                                    tmp_path: pathlib.Path) -> None:
        if harness.name_max is None:
            pytest.skip("the destination is not a file system with a limit on name length")
        (tmp_path / "src").write_bytes(b"too long")
        with pytest.raises(PermanentError, match="bytes"):
            transporter.upload(str(tmp_path / "src"), "long/" + "\u00e9" * 128 + ".txt")
        assert harness.list() == []

    def test_url_encodes_all_but_unreserved_characters(self, transporter: Transporter) -> None:
        """One encoding everywhere: only RFC 3986's unreserved characters and `/` stay as they
        are, so `'` (ends a CSS url('') or an HTML attribute), `;` (path parameters), `+`, `#`,
        `?`, `%`, spaces and non-ASCII are all percent-encoded."""
        for name in HOSTILE_NAMES + LONGEST_NAMES:
            url = transporter.url_for("u/" + name)
            parts = urllib.parse.urlsplit(url)
            assert not parts.query and not parts.fragment, url
            assert URL_PATH.fullmatch(parts.path), f"{url!r} leaves characters unencoded"
            assert urllib.parse.unquote(parts.path).endswith("/u/" + name), url

    def test_url_resolves(self, harness: RemoteHarness, transporter: Transporter,
                          tmp_path: pathlib.Path) -> None:
        for index, name in enumerate(HOSTILE_NAMES):
            content = f"{index}: {name}".encode()
            (tmp_path / f"s{index}").write_bytes(content)
            url = transporter.upload(str(tmp_path / f"s{index}"), "u/" + name)
            try:
                fetched = harness.fetch_url(url)
            except NotImplementedError:
                pytest.skip("the harness cannot fetch URLs; list test_url_resolves as a gap")
            assert fetched == content, f"{url} did not resolve to {name!r}"

    @pytest.mark.parametrize("bad", ["../escape.txt", "a/../../escape.txt", "/../escape.txt",
                                     "..", "a/\x00b"])
    def test_escaping_path_is_refused(self, bad: str, harness: RemoteHarness,
                                      transporter: Transporter,
                                      tmp_path: pathlib.Path) -> None:
        (tmp_path / "x").write_bytes(b"must not arrive")
        with pytest.raises(PermanentError):
            transporter.upload(str(tmp_path / "x"), bad)
        with pytest.raises(PermanentError):
            transporter.delete(bad)
        assert harness.list() == []

    # -- atomicity ----------------------------------------------------------------------------------

    def test_reader_never_sees_partial_file(self, harness: RemoteHarness,
                                            transporter: Transporter,
                                            tmp_path: pathlib.Path) -> None:
        data = write_random(tmp_path / "big", 24 * MiB, seed=3)
        (tmp_path / "old").write_bytes(b"the previous version")
        transporter.upload(str(tmp_path / "old"), "atomic.bin")
        seen: list[int] = []
        errors: list[BaseException] = []

        def upload() -> None:
            try:
                transporter.upload(str(tmp_path / "big"), "atomic.bin")
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        thread = threading.Thread(target=upload, name="conformance-upload")
        thread.start()
        deadline = time.monotonic() + 120
        try:
            while thread.is_alive() and time.monotonic() < deadline:
                content = harness.read("atomic.bin")
                assert content in (b"the previous version", data), (
                    f"a reader saw {len(content or b'')} bytes at the final name mid-upload")
                seen.append(len(content or b""))
        finally:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "upload did not finish within 120s"
        assert not errors, errors
        assert harness.read("atomic.bin") == data
        assert seen, "the reader never looked while the upload ran"

    # -- errors -------------------------------------------------------------------------------------

    def test_unreachable_server_is_server_unavailable(self, harness: RemoteHarness,
                                                      tmp_path: pathlib.Path) -> None:
        """Real condition: nothing listens on the port (ECONNREFUSED)."""
        transporter = harness.make(**harness.unreachable_settings())
        (tmp_path / "f").write_bytes(b"x")
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError):
            transporter.upload(str(tmp_path / "f"), "f.txt")
        with pytest.raises(ServerUnavailableError):
            transporter.probe()
        with pytest.raises(ServerUnavailableError):
            transporter.exists("f.txt")
        assert time.monotonic() - started < 30, "refused connections must fail fast, not retry"

    def test_bad_credentials_are_configuration_errors(self, harness: RemoteHarness,
                                                      tmp_path: pathlib.Path) -> None:
        overrides = harness.bad_credentials_settings()
        if overrides is None:
            pytest.skip("the test server cannot reject credentials")
        transporter = harness.make(**overrides)
        (tmp_path / "f").write_bytes(b"x")
        with pytest.raises(ConfigurationError):
            transporter.upload(str(tmp_path / "f"), "f.txt")
        with pytest.raises(ConfigurationError):
            transporter.probe()

    def test_missing_root_is_not_retryable(self, harness: RemoteHarness,
                                           tmp_path: pathlib.Path) -> None:
        overrides = harness.missing_root_settings()
        if overrides is None:
            pytest.skip("the transporter creates its root, or the server has none to miss")
        transporter = harness.make(**overrides)
        (tmp_path / "f").write_bytes(b"x")
        with pytest.raises((ConfigurationError, PermanentError)) as caught:
            transporter.upload(str(tmp_path / "f"), "f.txt")
        assert not isinstance(caught.value, RetryableError)
        with pytest.raises((ConfigurationError, PermanentError)):
            transporter.probe()

    def test_missing_local_file_is_not_a_server_problem(self, harness: RemoteHarness,
                                                        transporter: Transporter,
                                                        tmp_path: pathlib.Path) -> None:
        # One classification in every transporter (issue 7's decision): a vanished source is
        # neither the server's problem nor a failure of the file; its DELETED event follows.
        missing = str(tmp_path / "does-not-exist")
        with pytest.raises(SourceVanishedError) as caught:
            transporter.upload(missing, "x.txt")
        assert caught.value.kind == "vanished" and caught.value.local_path == missing
        assert not isinstance(caught.value, (RetryableError, PermanentError, ConfigurationError))
        # A directory on the way that has become a file is the same: the path is gone.
        (tmp_path / "was-a-dir").write_bytes(b"")
        with pytest.raises(SourceVanishedError):
            transporter.upload(str(tmp_path / "was-a-dir" / "f.txt"), "y.txt")
        assert harness.list() == []

    def test_a_fifo_in_place_of_the_file_is_never_opened(self, harness: RemoteHarness,
                                                         transporter: Transporter,
                                                         tmp_path: pathlib.Path) -> None:
        # Issue 7 item 8: a FIFO swapped in for the file blocked the transfer thread in open()
        # for ever (and with it `stop`). It is refused at once: the regular file is gone.
        fifo = str(tmp_path / "pipe.css")
        os.mkfifo(fifo)
        outcome: list[BaseException | str] = []

        def upload() -> None:
            try:
                outcome.append(transporter.upload(fifo, "pipe.css"))
            except BaseException as error:  # noqa: BLE001 - handed to the test
                outcome.append(error)

        thread = threading.Thread(target=upload, name="fifo-upload", daemon=True)
        thread.start()
        thread.join(30)
        if thread.is_alive():
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # release the blocked reader
            thread.join(30)
            pytest.fail("upload() blocked on a FIFO")
        assert isinstance(outcome[0], SourceVanishedError), outcome[0]
        assert "FIFO" in str(outcome[0])
        assert harness.list() == []

    def test_probe_succeeds(self, transporter: Transporter) -> None:
        transporter.probe()

    def test_construction_does_no_io(self, harness: RemoteHarness) -> None:
        # Settings that point nowhere: constructing must still work (check-config builds one).
        transporter = harness.make(**harness.unreachable_settings())
        assert transporter.url_for("a b.txt")
        assert not transporter.check_settings({**harness.settings()})

    # -- interrupted uploads leave nothing behind -----------------------------------------------------

    def test_kill_9_mid_upload_leaves_nothing_after_the_next_start(
            self, harness: RemoteHarness) -> None:
        """Real condition: a process uploading in a loop is SIGKILLed while a temporary name
        exists on the destination; a new transporter of the same server (as after a restart)
        removes it on its first upload. An in-memory list of temporary names cannot do this."""
        if not harness.temporary_names:
            pytest.skip("this transporter writes no temporary names")
        with tempfile.TemporaryDirectory(prefix="fc-kill9-") as outside:
            # Outside every source root: symlink_or_copy copies it (a link has no "mid-way").
            local = pathlib.Path(outside) / "big.bin"
            write_random(local, 32 * MiB, seed=5)
            child = _start_upload_loop(harness, str(local))
            try:
                _kill_while_a_temporary_name_exists(harness, child)
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait(30)
            assert harness.leftovers(), "the kill left no temporary name: the test proves nothing"
            transporter = harness.make()
            (pathlib.Path(outside) / "small").write_bytes(b"after the restart")
            transporter.upload(str(pathlib.Path(outside) / "small"), "after.txt")
        assert harness.leftovers() == [], f"left behind: {harness.leftovers()}"
        assert harness.read("after.txt") == b"after the restart"

    def test_server_killed_mid_transfer_then_a_new_transporter_removes_the_leftover(
            self, restartable_harness: RemoteHarness, tmp_path: pathlib.Path) -> None:
        """The pool discards a transporter whose connection died; the next one of the same
        server must still remove what the dead transfer left."""
        harness = restartable_harness
        transporter = harness.make(**(harness.multipart_settings or {}))
        write_random(tmp_path / "big", harness.large_file_size, seed=6)
        errors = _kill_server_mid_upload(harness, transporter, str(tmp_path / "big"),
                                         "killed/big.bin")
        assert len(errors) == 1 and isinstance(errors[0], RetryableError), errors
        transporter.close()
        harness.start_server()
        (tmp_path / "small").write_bytes(b"small")
        harness.make().upload(str(tmp_path / "small"), "small.txt")
        assert harness.leftovers() == [], f"left behind: {harness.leftovers()}"
        assert harness.list() == ["small.txt"]

    # -- server killed mid-transfer -------------------------------------------------------------------

    def test_server_killed_mid_transfer_then_file_arrives_once(
            self, restartable_harness: RemoteHarness, tmp_path: pathlib.Path) -> None:
        harness = restartable_harness
        transporter = harness.make(**(harness.multipart_settings or {}))
        data = write_random(tmp_path / "big", harness.large_file_size, seed=4)
        errors = _kill_server_mid_upload(harness, transporter, str(tmp_path / "big"),
                                         "killed/big.bin")
        assert len(errors) == 1 and isinstance(errors[0], RetryableError), (
            f"killing the server must give a RetryableError, got {errors!r}")
        harness.start_server()
        # The pipeline retries with the same transporter instance: it must reconnect by itself.
        url = transporter.upload(str(tmp_path / "big"), "killed/big.bin")
        assert url == transporter.url_for("killed/big.bin")
        assert harness.list() == ["killed/big.bin"]
        assert harness.read("killed/big.bin") == data
        assert harness.leftovers() == []


def _kill_server_mid_upload(harness: RemoteHarness, transporter: Transporter, local: str,
                            remote: str) -> list[BaseException]:
    """Upload `local` in a thread and kill the server once the transfer is visibly under way;
    the errors the upload raised."""
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            transporter.upload(local, remote)
        except BaseException as error:  # inspected by the caller
            errors.append(error)

    baseline = _process_read_bytes()
    thread = threading.Thread(target=upload, name="conformance-killed-upload")
    thread.start()
    try:
        wait_for(lambda: harness.transfer_in_progress(remote, baseline)
                 or not thread.is_alive(), 60, "the upload to start")
        assert thread.is_alive(), (
            f"the upload ended before the server could be killed: {errors or 'success'}; "
            "make the harness's transfer_in_progress() fire earlier")
        harness.kill_server()
    finally:
        thread.join(120)
    assert not thread.is_alive(), "the upload hung after the server died (missing timeout?)"
    return errors


#: A child process that uploads one file again and again (to `loop/<n>.bin`) until killed.
_UPLOAD_LOOP = """
import json, sys
from fileconveyor.transporters.base import TransporterContext, resolve_transporter
spec = json.loads(sys.stdin.read())
context = TransporterContext(spec["server_name"], spec["state_dir"], tuple(spec["source_roots"]),
                             spec["timeout"])
transporter = resolve_transporter(spec["transporter"])(spec["settings"], context)
for number in range(1000):
    transporter.upload(spec["local"], f"loop/{number}.bin")
"""


def _start_upload_loop(harness: RemoteHarness, local: str) -> subprocess.Popen[bytes]:
    context = harness.context()
    spec = {"transporter": harness.transporter_class.__module__ + "."
            + harness.transporter_class.__name__, "settings": harness.settings(),
            "server_name": context.server_name, "state_dir": context.state_dir,
            "source_roots": list(context.source_roots), "timeout": context.timeout,
            "local": local}
    repo = str(pathlib.Path(__file__).resolve().parents[2])
    child = subprocess.Popen([sys.executable, "-c", _UPLOAD_LOOP], stdin=subprocess.PIPE,
                             cwd=repo, env={**os.environ, "PYTHONPATH": repo})
    assert child.stdin is not None
    child.stdin.write(json.dumps(spec).encode())
    child.stdin.close()
    return child


def _kill_while_a_temporary_name_exists(harness: RemoteHarness,
                                        child: subprocess.Popen[bytes]) -> None:
    """SIGKILL `child` at an instant when one of its temporary names exists: stop it, look,
    and let it go on if it is between two uploads (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.poll() is None, f"the uploading process exited with {child.returncode}"
        if harness.leftovers():
            os.kill(child.pid, signal.SIGSTOP)
            if harness.leftovers():
                os.kill(child.pid, signal.SIGKILL)
                return
            os.kill(child.pid, signal.SIGCONT)
        time.sleep(0.005)  # polling interval of the bounded wait above
    pytest.fail("never saw a temporary name of the uploading process within 60 s")


__all__ = [
    "HOSTILE_NAMES", "LocalRootHarness", "MiB", "RemoteHarness", "ServerRootHarness",
    "TransporterConformance", "wait_for", "write_random",
]
