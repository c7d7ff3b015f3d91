"""An FTP / explicit-FTPS server on loopback (pyftpdlib), for the FTP transporter's tests.

pyftpdlib runs in a subprocess of its own (this module is also its entry point:
`python -m tests.servers.ftpd ...`), so that a test can SIGKILL it in the middle of a transfer and
start it again on the same port, as a crashed server would behave. Passive data ports are picked by
the kernel on 127.0.0.1.

With TLS, the control *and* data channels must be protected (`tls_control_required`,
`tls_data_required`): a client that forgets PROT P fails, so the tests prove the data is encrypted.
The certificate is signed by a throwaway CA generated here with `cryptography` (no openssl
binary needed); the transporter verifies it through its `ca_file` setting, with the IP address
127.0.0.1 in the subjectAltName, as a strict client expects.

Users: `tester` may do everything below the root; `reader` may only list and read (writes get
550, the "permission denied" case).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import logging
import pathlib
import shutil
import subprocess
import sys
import uuid
from typing import Iterator

import pytest

from tests.servers._loopback import (
    LOOPBACK,
    banner_ready,
    free_port,
    kill_tree,
    require_loopback,
    start_daemon,
    stop_tree,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
USER, PASSWORD = "tester", "s3cret pass"
READER = "reader"


def make_certificates(directory: pathlib.Path, host: str = LOOPBACK) -> tuple[pathlib.Path,
                                                                                pathlib.Path,
                                                                                pathlib.Path]:
    """A throwaway CA and a server certificate for `host` signed by it: (ca, cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fileconveyor test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(validity[0]).not_valid_after(validity[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0]).not_valid_after(validity[1])
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


@dataclasses.dataclass
class FTPServer:
    """pyftpdlib on 127.0.0.1:`port` serving `base`/data, plain or with required TLS."""

    base: pathlib.Path
    tls: bool = False
    host: str = LOOPBACK
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        require_loopback(self.host)
        self.base.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        self.data = self.base / "data"
        self.data.mkdir(exist_ok=True)
        self.log = self.base / "ftpd.log"
        self.ca_file, self.cert_file, self.key_file = make_certificates(self.base, self.host)

    def start(self) -> None:
        require_loopback(self.host)
        argv = [sys.executable, "-m", "tests.servers.ftpd", "--host", self.host,
                "--port", str(self.port), "--root", str(self.data)]
        if self.tls:
            argv += ["--cert", str(self.cert_file), "--key", str(self.key_file)]
        self.process = start_daemon(
            argv, self.log, lambda: banner_ready(self.host, self.port, b"220"),
            f"ftpd on {self.host}:{self.port}", START_TIMEOUT, cwd=REPO_ROOT)

    def kill(self) -> None:
        if self.process is not None:
            kill_tree(self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_tree(self.process)

    def new_root(self) -> pathlib.Path:
        root = self.data / uuid.uuid4().hex[:12]
        root.mkdir()
        return root

    def settings(self, root: pathlib.Path, url: str = "http://cdn.example.test/static"
                 ) -> dict[str, str]:
        """Working FTPTransporter settings for `root` (the FTP path is relative to /)."""
        settings = {"host": self.host, "port": str(self.port), "username": USER,
                    "password": PASSWORD, "path": "/" + root.relative_to(self.data).as_posix(),
                    "url": url}
        if self.tls:
            settings.update(tls="true", ca_file=str(self.ca_file))
        return settings


def _started(base: pathlib.Path, tls: bool) -> Iterator[FTPServer]:
    pytest.importorskip("pyftpdlib")
    if tls:
        pytest.importorskip("OpenSSL", reason="pyftpdlib's TLS needs pyopenssl")
    server = FTPServer(base, tls=tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def ftpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """Plain FTP for the whole session; `new_root()` gives each test its own directory."""
    yield from _started(tmp_path_factory.mktemp("ftpd"), tls=False)


@pytest.fixture(scope="session")
def ftpsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """Explicit FTPS (AUTH TLS, PROT P required) for the whole session."""
    yield from _started(tmp_path_factory.mktemp("ftpsd"), tls=True)


@pytest.fixture
def ftpd_restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """A plain FTP server of the test's own, which it may kill() and start() on the same port."""
    yield from _started(tmp_path_factory.mktemp("ftpd-restartable"), tls=False)


@pytest.fixture
def ftpsd_restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FTPServer]:
    """An FTPS server of the test's own, which it may kill() and start() on the same port."""
    yield from _started(tmp_path_factory.mktemp("ftpsd-restartable"), tls=True)


def serve(argv: list[str]) -> None:
    """The server process: pyftpdlib until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args(argv)
    require_loopback(args.host)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer as PyFTPServer

    logging.basicConfig(level=logging.WARNING)
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, args.root, perm="elradfmwMT")
    authorizer.add_user(READER, PASSWORD, args.root, perm="elr")
    handler: type[FTPHandler]
    if args.cert:
        from pyftpdlib.handlers import TLS_FTPHandler

        class Handler(TLS_FTPHandler):
            certfile = args.cert
            keyfile = args.key
            tls_control_required = True
            tls_data_required = True
        handler = Handler
    else:
        class PlainHandler(FTPHandler):
            pass
        handler = PlainHandler
    handler.authorizer = authorizer
    handler.auth_failed_timeout = 0.05   # the default 3 s delay only slows the tests down
    handler.timeout = 60
    server = PyFTPServer((args.host, args.port), handler)
    server.max_cons = 256
    server.serve_forever(handle_exit=False)


if __name__ == "__main__":
    serve(sys.argv[1:])
