"""The SFTP transporter against OpenSSH's sshd on loopback (tests/servers/sshd.py).

The conformance suite does the common work; the tests below it cover what only SFTP has: host key
checking (unknown, changed, accepted on first use), key passphrases, ~/.ssh/config, move, a
read-only server (permission denied), and reconnecting after the server restarts.
"""
from __future__ import annotations

import pathlib
import threading
from typing import Iterator

import pytest

pytest.importorskip("paramiko")

from fileconveyor.transporters.base import (  # noqa: E402
    TEMP_MARKER,
    ConfigurationError,
    PermanentError,
    RetryableError,
    TransporterContext,
    resolve_transporter,
)
from fileconveyor.transporters.sftp import SFTPTransporter  # noqa: E402
from tests.servers._loopback import DirectoryHTTPServer, files_below  # noqa: E402
from tests.servers.sshd import SSHServer  # noqa: E402
from tests.transporters.conformance import (  # noqa: E402
    MiB,
    ServerRootHarness,
    TransporterConformance,
    wait_for,
    write_random,
)


class SFTPHarness(ServerRootHarness):
    transporter_class = SFTPTransporter

    def bad_credentials_settings(self) -> dict[str, str]:
        return {"key": str(self.server.other_key)}


@pytest.fixture(scope="module")
def sshd_http(sshd: SSHServer) -> Iterator[DirectoryHTTPServer]:
    """A web server in front of the SFTP roots, so URLs are fetched for real."""
    http = DirectoryHTTPServer(sshd.data)
    yield http
    http.close()


class TestSFTPConformance(TransporterConformance):
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    def harness(self, sshd: SSHServer, sshd_http: DirectoryHTTPServer,
                tmp_path: pathlib.Path) -> SFTPHarness:
        return SFTPHarness(tmp_path / "state", sshd, sshd_http.base_url)

    @pytest.fixture
    def restartable_harness(self, sshd_restartable: SSHServer,
                            tmp_path: pathlib.Path) -> SFTPHarness:
        return SFTPHarness(tmp_path / "state-restartable", sshd_restartable)


# -- SFTP-specific ------------------------------------------------------------------------------------


def _context(tmp_path: pathlib.Path) -> TransporterContext:
    return TransporterContext(server_name="sftp-test", state_dir=str(tmp_path), timeout=10.0)


@pytest.fixture
def make(sshd: SSHServer, tmp_path: pathlib.Path) -> Iterator:
    made: list[SFTPTransporter] = []
    root = sshd.new_root()

    def factory(**overrides: str) -> SFTPTransporter:
        transporter = SFTPTransporter({**sshd.settings(root), **overrides}, _context(tmp_path))
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
    assert resolve_transporter("sftp") is SFTPTransporter
    assert resolve_transporter("transporters.transporter_sftp") is SFTPTransporter


def test_unknown_host_key_is_refused_with_the_fix(make, tmp_path: pathlib.Path,
                                                  sshd: SSHServer, small_file: str) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    transporter = make(known_hosts=str(empty))
    with pytest.raises(ConfigurationError) as caught:
        transporter.upload(small_file, "a.txt")
    message = str(caught.value)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in message
    assert "accept_new_host_key" in message and "SHA256:" in message
    assert empty.read_text() == ""
    assert files_below(make.root) == []


def test_accept_new_host_key_records_it(make, tmp_path: pathlib.Path, sshd: SSHServer,
                                        small_file: str) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    make(known_hosts=str(known_hosts), accept_new_host_key="true").upload(small_file, "a.txt")
    assert known_hosts.read_text() == sshd.host_key_line + "\n"
    # Recorded: a transporter that does not accept new keys now trusts it.
    make(known_hosts=str(known_hosts)).upload(small_file, "b.txt")
    assert files_below(make.root) == ["a.txt", "b.txt"]


def test_changed_host_key_is_refused_even_when_accepting_new_keys(
        make, tmp_path: pathlib.Path, sshd: SSHServer, small_file: str) -> None:
    key_type, blob = (sshd.other_key.with_name("id_other.pub").read_text().split()[:2])
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {blob}\n")
    transporter = make(known_hosts=str(wrong), accept_new_host_key="true")
    with pytest.raises(ConfigurationError, match="does not match"):
        transporter.upload(small_file, "a.txt")
    with pytest.raises(ConfigurationError, match="ssh-keygen -R"):
        transporter.probe()
    assert files_below(make.root) == []


def test_key_passphrase(make, sshd: SSHServer, small_file: str) -> None:
    with pytest.raises(ConfigurationError, match="key_passphrase"):
        make(key=str(sshd.passphrase_key)).upload(small_file, "a.txt")
    with pytest.raises(ConfigurationError):
        make(key=str(sshd.passphrase_key), key_passphrase="wrong").upload(small_file, "a.txt")
    make(key=str(sshd.passphrase_key), key_passphrase=sshd.passphrase).upload(small_file, "a.txt")
    assert files_below(make.root) == ["a.txt"]


def test_ssh_config_supplies_hostname_port_user_and_identity(
        make, tmp_path: pathlib.Path, sshd: SSHServer, small_file: str) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(f"Host fc-test-alias\n  HostName {sshd.host}\n  Port {sshd.port}\n"
                      f"  User {sshd.user}\n  IdentityFile {sshd.client_key}\n")
    transporter = SFTPTransporter(
        {"host": "fc-test-alias", "url": "http://cdn.example.test/", "ssh_config": str(config),
         "known_hosts": str(sshd.known_hosts), "path": str(make.root)}, _context(tmp_path))
    try:
        assert transporter.upload(small_file, "via alias.txt") == \
            "http://cdn.example.test/via%20alias.txt"
    finally:
        transporter.close()
    assert files_below(make.root) == ["via alias.txt"]


def test_move(make, small_file: str) -> None:
    transporter = make()
    transporter.upload(small_file, "old/name.txt")
    pathlib.Path(small_file).write_bytes(b"replaced")
    transporter.upload(small_file, "new/name.txt")
    assert transporter.can_move
    url = transporter.move("old/name.txt", "new/name.txt")
    assert url == transporter.url_for("new/name.txt")
    assert files_below(make.root) == ["new/name.txt"]
    assert (make.root / "new/name.txt").read_bytes() == b"small"


def test_read_only_server_is_permanent_error(make, sshd: SSHServer, small_file: str) -> None:
    (make.root / "existing.txt").write_bytes(b"keep")
    transporter = make(port=str(sshd.readonly_port))
    assert transporter.exists("existing.txt")
    with pytest.raises(PermanentError, match="denied"):
        transporter.upload(small_file, "a.txt")
    with pytest.raises(PermanentError):
        transporter.delete("existing.txt")
    assert files_below(make.root) == ["existing.txt"]


def test_file_in_the_way_of_a_directory_is_permanent(make, small_file: str) -> None:
    (make.root / "blocker").write_bytes(b"a file, not a directory")
    with pytest.raises(PermanentError, match="not a directory"):
        make().upload(small_file, "blocker/a.txt")


def test_reconnects_after_server_restart(sshd_restartable: SSHServer,
                                         tmp_path: pathlib.Path, small_file: str) -> None:
    root = sshd_restartable.new_root()
    transporter = SFTPTransporter(sshd_restartable.settings(root), _context(tmp_path))
    try:
        transporter.upload(small_file, "one.txt")
        sshd_restartable.kill()
        sshd_restartable.start()
        transporter.upload(small_file, "two.txt")  # the dead session is replaced, no error
    finally:
        transporter.close()
    assert files_below(root) == ["one.txt", "two.txt"]


def test_dropped_session_leftover_is_removed_by_the_next_transporter(
        sshd_restartable: SSHServer, tmp_path: pathlib.Path) -> None:
    """Real condition: the SSH session serving an upload is killed on the server (the listener
    stays up). The transporter fails with a retryable error and the pool discards it with its
    memory; the next transporter of the same server removes the temporary file on connecting."""
    root = sshd_restartable.new_root()
    data = write_random(tmp_path / "big.bin", 64 * MiB, seed=7)
    first = SFTPTransporter(sshd_restartable.settings(root), _context(tmp_path))
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            first.upload(str(tmp_path / "big.bin"), "big.bin")
        except BaseException as error:  # inspected below
            errors.append(error)

    def temporary_growing() -> bool:
        return any((root / name).stat().st_size > MiB for name in files_below(root)
                   if TEMP_MARKER in name)

    thread = threading.Thread(target=upload, name="sftp-dropped-upload")
    thread.start()
    try:
        wait_for(lambda: temporary_growing() or not thread.is_alive(), 60, "the upload to start")
        assert thread.is_alive(), f"the upload ended before the session was dropped: {errors}"
        assert sshd_restartable.drop_sessions() > 0
    finally:
        thread.join(60)
    first.close()
    assert len(errors) == 1 and isinstance(errors[0], RetryableError), errors
    assert [n for n in files_below(root) if TEMP_MARKER in n], "no leftover: proves nothing"
    second = SFTPTransporter(sshd_restartable.settings(root), _context(tmp_path))
    try:
        second.upload(str(tmp_path / "big.bin"), "big.bin")
    finally:
        second.close()
    assert files_below(root) == ["big.bin"]
    assert (root / "big.bin").read_bytes() == data


def test_check_settings_values(sshd: SSHServer, tmp_path: pathlib.Path) -> None:
    good = sshd.settings(tmp_path)
    assert SFTPTransporter.check_settings(good) == []
    problems = SFTPTransporter.check_settings(
        {**good, "port": "70000", "url": "cdn.example.com/static",
         "key": str(tmp_path / "missing"), "accept_new_host_key": "maybe", "bogus": "1"})
    text = "\n".join(problems)
    for expected in ("<port>", "<url>", "<key>", "<accept_new_host_key>", "<bogus>"):
        assert expected in text
