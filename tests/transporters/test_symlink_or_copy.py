"""`symlink_or_copy` through the shared conformance suite, in both of its modes: copying (processed
files, from outside every source) and linking (unprocessed files below a source's scanPath)."""
from __future__ import annotations

import os
import pathlib
import shutil
import stat
import subprocess
import urllib.parse
from typing import Callable, Iterator

import pytest

from fileconveyor.transporters.base import (
    ConfigurationError,
    PermanentError,
    ServerUnavailableError,
    TransporterContext,
)
from fileconveyor.transporters.symlink_or_copy import TEMP_DIRECTORY, SymlinkOrCopyTransporter
from tests.servers._loopback import files_below
from tests.transporters.conformance import LocalRootHarness, TransporterConformance

BASE_URL = "http://static.example.com/files/"


class SymlinkOrCopyHarness(LocalRootHarness):
    """Looks at the destination directory directly (following links, as a web server does)."""

    transporter_class = SymlinkOrCopyTransporter

    def __init__(self, tmp_path: pathlib.Path, link_sources: bool) -> None:
        super().__init__(tmp_path / "state")
        self.root = tmp_path / "www"
        self.sources = str(tmp_path) if link_sources else None

    def context(self) -> TransporterContext:
        roots = (self.sources,) if self.sources else ()
        return TransporterContext(server_name="local", state_dir=str(self.state_dir),
                                  source_roots=roots, timeout=10.0)

    def settings(self) -> dict[str, str]:
        return {"location": str(self.root), "url": BASE_URL}

    def fetch_url(self, url: str) -> bytes | None:
        # What a web server with `root` as its document root at BASE_URL would serve.
        assert url.startswith(BASE_URL), url
        relative = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
        relative = relative[len(urllib.parse.urlsplit(BASE_URL).path):]
        return self.read(relative)

    def unreachable_settings(self) -> dict[str, str]:
        return {"location": "/nonexistent/fileconveyor-test/www"}

    def missing_root_settings(self) -> dict[str, str] | None:
        # Real condition: the location lies below a regular file, so it can never be created.
        blocker = self.state_dir / "a-file"
        blocker.write_bytes(b"")
        return {"location": str(blocker / "www")}


_GAPS = {
    "test_unreachable_server_is_server_unavailable":
        "a local directory has no server that could be unreachable",
    "test_bad_credentials_are_configuration_errors": "a local directory takes no credentials",
}


class TestSymlinkOrCopyCopying(TransporterConformance):
    known_gaps = _GAPS

    @pytest.fixture
    def harness(self, tmp_path: pathlib.Path) -> SymlinkOrCopyHarness:
        return SymlinkOrCopyHarness(tmp_path, link_sources=False)

    def test_copies_are_regular_files(self, harness: SymlinkOrCopyHarness,
                                      tmp_path: pathlib.Path) -> None:
        (tmp_path / "a").write_bytes(b"a")
        harness.make().upload(str(tmp_path / "a"), "a.txt")
        assert not (harness.root / "a.txt").is_symlink()


class TestSymlinkOrCopyLinking(TransporterConformance):
    known_gaps = _GAPS

    @pytest.fixture
    def harness(self, tmp_path: pathlib.Path) -> SymlinkOrCopyHarness:
        return SymlinkOrCopyHarness(tmp_path, link_sources=True)

    def test_sources_are_linked(self, harness: SymlinkOrCopyHarness,
                                tmp_path: pathlib.Path) -> None:
        (tmp_path / "a").write_bytes(b"a")
        harness.make().upload(str(tmp_path / "a"), "a.txt")
        assert os.readlink(harness.root / "a.txt") == str(tmp_path / "a")


# -- temporary names and file systems (issue 7, item 11) ---------------------------------------------


def _transporter(tmp_path: pathlib.Path) -> SymlinkOrCopyTransporter:
    return SymlinkOrCopyTransporter(
        {"location": str(tmp_path / "www"), "url": BASE_URL},
        TransporterContext(server_name="local", state_dir=str(tmp_path / "state"), timeout=10.0))


def test_temporary_names_live_in_a_private_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    seen: list[str] = []
    transporter = _transporter(tmp_path)
    real_replace = os.replace

    def watching_replace(source: str, target: str) -> None:
        seen.append(source)
        real_replace(source, target)

    # Observe where the copy was made: os.replace is the rename into place.
    os.replace = watching_replace  # type: ignore[assignment]
    try:
        transporter.upload(str(tmp_path / "a"), "sub/a.txt")
    finally:
        os.replace = real_replace  # type: ignore[assignment]
    private = tmp_path / "www" / TEMP_DIRECTORY
    assert [os.path.dirname(path) for path in seen] == [str(private)]
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert os.listdir(private) == []


def test_a_foreign_temporary_directory_is_refused(tmp_path: pathlib.Path) -> None:
    """Real condition: someone made `.fileconveyor-tmp` a symlink to a directory they can read;
    copies written through it could be read or replaced before they are published."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / TEMP_DIRECTORY).symlink_to(elsewhere)
    (tmp_path / "a").write_bytes(b"a")
    transporter = _transporter(tmp_path)
    with pytest.raises(ConfigurationError, match="mode 0700"):
        transporter.upload(str(tmp_path / "a"), "a.txt")
    with pytest.raises(ConfigurationError):
        transporter.probe()
    assert os.listdir(elsewhere) == [] and not (tmp_path / "www" / "a.txt").exists()


def test_a_location_replaced_while_running_gets_a_new_private_directory(tmp_path: pathlib.Path) -> None:
    """Real condition: the web root is deleted and re-created (a deployment) while the daemon
    runs. The private directory checked at the first upload is gone; every later upload failed
    with ENOENT, retried for ever. It is made and checked again, and refused if it is foreign."""
    (tmp_path / "a").write_bytes(b"a")
    transporter = _transporter(tmp_path)
    transporter.upload(str(tmp_path / "a"), "a.txt")
    www = tmp_path / "www"
    shutil.rmtree(www)
    www.mkdir()
    transporter.upload(str(tmp_path / "a"), "sub/a.txt")
    assert (www / "sub" / "a.txt").read_bytes() == b"a"
    assert stat.S_IMODE((www / TEMP_DIRECTORY).stat().st_mode) == 0o700
    shutil.rmtree(www)
    www.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    (www / TEMP_DIRECTORY).symlink_to(elsewhere)
    with pytest.raises(ConfigurationError, match="mode 0700"):
        transporter.upload(str(tmp_path / "a"), "b.txt")
    assert os.listdir(elsewhere) == [] and not (www / "b.txt").exists()


@pytest.fixture
def mount_tmpfs() -> Iterator[Callable[..., pathlib.Path]]:
    """Mount small tmpfs file systems (root only); unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mounted: list[pathlib.Path] = []

    def mount(path: pathlib.Path, read_only: bool = False) -> pathlib.Path:
        path.mkdir(parents=True, exist_ok=True)
        options = "size=4m,mode=0755" + (",ro" if read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "fileconveyor-test", str(path)],
                       check=True, capture_output=True, timeout=30)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=30)


def test_a_target_on_another_file_system_is_still_atomic(
        tmp_path: pathlib.Path, mount_tmpfs: Callable[..., pathlib.Path]) -> None:
    """Real condition: a file system mounted inside the web root. A rename cannot cross it, so
    the temporary name is made beside the target there (and still swept, still removed)."""
    mount_tmpfs(tmp_path / "www" / "mounted")
    (tmp_path / "a").write_bytes(b"across")
    transporter = _transporter(tmp_path)
    transporter.upload(str(tmp_path / "a"), "mounted/sub/a.txt")
    assert (tmp_path / "www" / "mounted" / "sub" / "a.txt").read_bytes() == b"across"
    assert files_below(tmp_path / "www") == ["mounted/sub/a.txt"]


def test_read_only_destination_pauses_the_server_a_read_only_part_fails_the_file(
        tmp_path: pathlib.Path, mount_tmpfs: Callable[..., pathlib.Path]) -> None:
    (tmp_path / "a").write_bytes(b"a")
    mount_tmpfs(tmp_path / "www")
    mount_tmpfs(tmp_path / "www" / "frozen", read_only=True)
    transporter = _transporter(tmp_path)
    with pytest.raises(PermanentError, match="Read-only"):
        transporter.upload(str(tmp_path / "a"), "frozen/a.txt")
    transporter.upload(str(tmp_path / "a"), "fine.txt")
    whole = _transporter(tmp_path / "ro")
    mount_tmpfs(tmp_path / "ro" / "www", read_only=True)
    with pytest.raises(ServerUnavailableError, match="remount"):
        whole.upload(str(tmp_path / "a"), "a.txt")
