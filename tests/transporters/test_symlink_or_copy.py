"""`symlink_or_copy` through the shared conformance suite, in both of its modes: copying (processed
files, from outside every source) and linking (unprocessed files below a source's scanPath)."""
from __future__ import annotations

import os
import pathlib
import urllib.parse

import pytest

from fileconveyor.transporters.base import TransporterContext
from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter
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
