"""The FTP transporter against pyftpdlib on loopback (tests/servers/ftpd.py), plain and FTPS.

The FTPS server *requires* TLS on both channels, so every conformance test that passes over FTPS
also proves that the data channel is encrypted (PROT P). FTP-specific tests below: read-only user
(550 -> permanent), TLS refusals (configuration), active mode, and reconnecting after a restart.
"""
from __future__ import annotations

import pathlib
from typing import Iterator

import pytest

from fileconveyor.transporters.base import (
    ConfigurationError,
    PermanentError,
    TransporterContext,
    resolve_transporter,
)
from fileconveyor.transporters.ftp import FTPTransporter
from tests.servers._loopback import DirectoryHTTPServer, files_below
from tests.servers.ftpd import READER, FTPServer
from tests.transporters.conformance import ServerRootHarness, TransporterConformance


class FTPHarness(ServerRootHarness):
    transporter_class = FTPTransporter

    def bad_credentials_settings(self) -> dict[str, str]:
        return {"password": "wrong"}


@pytest.fixture(scope="module")
def ftp_http(ftpd: FTPServer) -> Iterator[DirectoryHTTPServer]:
    http = DirectoryHTTPServer(ftpd.data)
    yield http
    http.close()


@pytest.fixture(scope="module")
def ftps_http(ftpsd: FTPServer) -> Iterator[DirectoryHTTPServer]:
    http = DirectoryHTTPServer(ftpsd.data)
    yield http
    http.close()


class TestFTPConformance(TransporterConformance):
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    def harness(self, ftpd: FTPServer, ftp_http: DirectoryHTTPServer,
                tmp_path: pathlib.Path) -> FTPHarness:
        return FTPHarness(tmp_path / "state", ftpd, ftp_http.base_url)

    @pytest.fixture
    def restartable_harness(self, ftpd_restartable: FTPServer,
                            tmp_path: pathlib.Path) -> FTPHarness:
        return FTPHarness(tmp_path / "state-restartable", ftpd_restartable)


class TestFTPSConformance(TransporterConformance):
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    def harness(self, ftpsd: FTPServer, ftps_http: DirectoryHTTPServer,
                tmp_path: pathlib.Path) -> FTPHarness:
        return FTPHarness(tmp_path / "state", ftpsd, ftps_http.base_url)

    @pytest.fixture
    def restartable_harness(self, ftpsd_restartable: FTPServer,
                            tmp_path: pathlib.Path) -> FTPHarness:
        return FTPHarness(tmp_path / "state-restartable", ftpsd_restartable)


# -- FTP-specific -------------------------------------------------------------------------------------


def _context(tmp_path: pathlib.Path) -> TransporterContext:
    return TransporterContext(server_name="ftp-test", state_dir=str(tmp_path), timeout=10.0)


@pytest.fixture
def make(ftpsd: FTPServer, tmp_path: pathlib.Path) -> Iterator:
    made: list[FTPTransporter] = []
    root = ftpsd.new_root()

    def factory(**overrides: str) -> FTPTransporter:
        transporter = FTPTransporter({**ftpsd.settings(root), **overrides}, _context(tmp_path))
        made.append(transporter)
        return transporter

    factory.root = root  # type: ignore[attr-defined]
    yield factory
    for transporter in made:
        transporter.close()


@pytest.fixture
def small_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "small.txt"
    path.write_bytes(b"small")
    return str(path)


def test_resolves_by_original_name() -> None:
    assert resolve_transporter("ftp") is FTPTransporter


def test_read_only_user_gets_permanent_errors(make, small_file: str) -> None:
    (make.root / "existing.txt").write_bytes(b"keep")
    transporter = make(username=READER)
    assert transporter.exists("existing.txt")
    with pytest.raises(PermanentError):
        transporter.upload(small_file, "new/a.txt")
    with pytest.raises(PermanentError):
        transporter.delete("existing.txt")
    transporter.delete("never-existed.txt")   # 550 for a missing file is still fine
    assert files_below(make.root) == ["existing.txt"]


def test_plain_ftp_to_a_tls_only_server_says_to_enable_tls(make, small_file: str) -> None:
    with pytest.raises(ConfigurationError, match="<tls>true</tls>"):
        make(tls="false").upload(small_file, "a.txt")


def test_untrusted_certificate_is_a_configuration_error(make, small_file: str) -> None:
    with pytest.raises(ConfigurationError, match="ca_file"):
        make(ca_file="").upload(small_file, "a.txt")


def test_unverified_tls_still_encrypts(make, small_file: str) -> None:
    make(ca_file="", tls_verify="false").upload(small_file, "a.txt")
    assert files_below(make.root) == ["a.txt"]


def test_active_mode(ftpd: FTPServer, tmp_path: pathlib.Path, small_file: str) -> None:
    root = ftpd.new_root()
    transporter = FTPTransporter({**ftpd.settings(root), "passive": "false"}, _context(tmp_path))
    try:
        transporter.upload(small_file, "d/active.txt")
    finally:
        transporter.close()
    assert (root / "d/active.txt").read_bytes() == b"small"


def test_file_in_the_way_of_a_directory_is_permanent(make, small_file: str) -> None:
    (make.root / "blocker").write_bytes(b"a file, not a directory")
    with pytest.raises(PermanentError, match="cannot create directory"):
        make().upload(small_file, "blocker/a.txt")


def test_reconnects_after_server_restart(ftpsd_restartable: FTPServer,
                                         tmp_path: pathlib.Path, small_file: str) -> None:
    root = ftpsd_restartable.new_root()
    transporter = FTPTransporter(ftpsd_restartable.settings(root), _context(tmp_path))
    try:
        transporter.upload(small_file, "one.txt")
        ftpsd_restartable.kill()
        ftpsd_restartable.start()
        transporter.upload(small_file, "two.txt")  # the dead connection is replaced, no error
    finally:
        transporter.close()
    assert files_below(root) == ["one.txt", "two.txt"]


def test_check_settings_values(ftpsd: FTPServer, tmp_path: pathlib.Path) -> None:
    good = ftpsd.settings(ftpsd.new_root())
    assert FTPTransporter.check_settings(good) == []
    problems = "\n".join(FTPTransporter.check_settings(
        {**good, "port": "x", "url": "/static", "tls": "maybe",
         "ca_file": str(tmp_path / "missing.pem")}))
    for expected in ("<port>", "<url>", "<tls>", "<ca_file>"):
        assert expected in problems


def test_listing_with_list_on_a_server_without_mlsd(make, tmp_path: pathlib.Path) -> None:
    # pyftpdlib has MLSD; a server without it is imitated by hiding MLST from the features the
    # transporter read at login (FEAT), so the same server answers the LIST fallback.
    from tests.transporters.conformance_tree import TREE, _upload_tree
    from fileconveyor.transporters.base import listing_key

    transporter = make()
    _upload_tree(transporter, tmp_path)
    transporter._features.discard("MLST")
    entries = list(transporter.list_files())
    assert [e.path for e in entries] == sorted(TREE, key=listing_key)
    assert [e.size for e in entries] == [len(TREE[e.path]) for e in entries]
    assert [e.path for e in transporter.list_files("a/b")] == ["a/b/c.txt", "a/b/d e.txt"]
    assert list(transporter.list_files("nope")) == []
