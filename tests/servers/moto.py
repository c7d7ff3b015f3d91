"""moto's standalone server (S3, CloudFront, IAM) on loopback, and a throttling/delaying TCP proxy.

Fixtures:

* `moto_server` (session): one `python -m moto.server` on a free 127.0.0.1 port, shared.
* `s3_bucket` (function): a fresh bucket on it; emptied (objects and open multipart uploads)
  at teardown, because moto keeps every byte in memory.
* `moto_restartable` (function): a server of its own that a test may `kill()` (SIGKILL) and
  `start()` again on the same port. moto keeps no state across restarts: everything is gone.
* `moto_auth_server` (module): a server of its own that enforces IAM authentication: an IAM user
  with a full-access key is created first, then `/moto-api/reset-auth` switches checking on, so
  unknown keys get `InvalidAccessKeyId` and wrong secrets `SignatureDoesNotMatch` as on AWS.
* `throttled_proxy` (function): a factory for `TCPProxy` in front of any loopback port.

Every endpoint is checked to be on loopback before the first packet is sent.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pathlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable, Iterator

import pytest

#: moto accepts any credentials unless auth is enforced; these are the conventional fakes.
FAKE_KEY_ID = "testing"
FAKE_SECRET = "testing"


def assert_loopback(url_or_host: str) -> None:
    """Refuse to talk to anything but this machine."""
    host = urllib.parse.urlsplit(url_or_host).hostname if "://" in url_or_host else url_or_host
    if host is None or not ipaddress.ip_address(host).is_loopback:
        raise RuntimeError(f"test endpoint {url_or_host!r} is not on loopback; refusing")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None,
                  log: pathlib.Path | None = None) -> None:
    """Poll until something accepts on 127.0.0.1:`port` (bounded); fail early if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"test server exited with {process.returncode}: {detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)  # poll interval of a bounded wait
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} after {timeout}s")


class MotoServer:
    """One moto server process on a fixed loopback port; restartable on the same port."""

    def __init__(self, log_dir: pathlib.Path, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        assert_loopback(self.endpoint)
        self.log = log_dir / f"moto-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        # moto must not reach for real AWS credentials or endpoints.
        self.env.update({"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
                         "AWS_DEFAULT_REGION": "us-east-1"})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        wait_for_port(self.port, 30, self.process, self.log)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits for the process to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def client(self, service: str = "s3", **credentials: str) -> Any:
        import boto3
        import botocore.config

        return boto3.client(
            service, endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=credentials.get("key_id", FAKE_KEY_ID),
            aws_secret_access_key=credentials.get("secret", FAKE_SECRET),
            config=botocore.config.Config(connect_timeout=5, read_timeout=60,
                                          retries={"total_max_attempts": 1},
                                          s3={"addressing_style": "path"}))

    def post(self, path: str, body: bytes) -> bytes:
        # text/plain: with urllib's default form type, moto's werkzeug would eat the body.
        request = urllib.request.Request(self.endpoint + path, data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())


def empty_bucket(client: Any, bucket: str) -> None:
    """Delete every object and abort every multipart upload in `bucket` (bounded pages)."""
    for _page in range(1000):
        listed = client.list_objects_v2(Bucket=bucket)
        keys = [{"Key": item["Key"]} for item in listed.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        if not listed.get("IsTruncated"):
            break
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                      UploadId=upload["UploadId"])


def new_bucket_name(prefix: str = "fc-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> Iterator[str]:
    client = moto_server.client()
    name = new_bucket_name()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_bucket(client, name)
        client.delete_bucket(Bucket=name)


@pytest.fixture
def moto_restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto-restartable"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclasses.dataclass(frozen=True)
class AuthMoto:
    server: MotoServer
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def moto_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMoto]:
    server = MotoServer(tmp_path_factory.mktemp("moto-auth"))
    server.start()
    try:
        iam = server.client("iam")
        iam.create_user(UserName="conveyor")
        iam.put_user_policy(
            UserName="conveyor", PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="conveyor")["AccessKey"]
        answer = json.loads(server.post("/moto-api/reset-auth", b"0"))
        assert answer["status"] == "ok", answer
        yield AuthMoto(server, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()


class TCPProxy:
    """A loopback TCP proxy that can cap throughput and add latency, for tests and benchmarks.

    `rate` (bytes/s, shared by all connections and both directions; 0 = unlimited) makes large
    uploads last long enough to interrupt them at a chosen moment. `delay` (seconds, one way)
    holds every chunk that long before forwarding it, so a request/response costs 2 x delay:
    a round trip on loopback, since the kernel here has no netem. Each connection gets two pump
    threads; when either side closes, both sockets are closed and both threads end."""

    def __init__(self, upstream_port: int, rate: float = 0.0, delay: float = 0.0,
                 chunk: int = 64 * 1024, listen_port: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rate = rate
        self.delay = delay
        self.chunk = chunk
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(512)
        self.port = int(self._listener.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._allowance = 0.0
        self._allowance_time = time.monotonic()
        self._acceptor = threading.Thread(target=self._accept, name=f"proxy-{self.port}",
                                          daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
                self._threads = [t for t in self._threads if t.is_alive()]
                for source, target in ((client, upstream), (upstream, client)):
                    thread = threading.Thread(target=self._pump, args=(source, target),
                                              name=f"proxy-{self.port}-pump", daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _throttle(self, size: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._allowance_time)
                                  * self.rate) - size
            self._allowance_time = now
            debt = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if debt:
            self._closed.wait(debt)  # the throttle itself: hold the bytes back this long

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        delayed: queue.Queue[tuple[float, bytes]] | None = None
        writer: threading.Thread | None = None
        if self.delay:
            # A delay line: the reader stamps each chunk with its due time and a writer sends it
            # then, so latency is added once per chunk without capping throughput.
            delayed = queue.Queue()
            writer = threading.Thread(target=self._deliver, args=(delayed, target),
                                      name=f"proxy-{self.port}-delay", daemon=True)
            writer.start()
        try:
            while not self._closed.is_set():
                data = source.recv(self.chunk)
                if not data:
                    break
                self._throttle(len(data))
                if delayed is not None:
                    delayed.put((time.monotonic() + self.delay, data))
                else:
                    target.sendall(data)
        except OSError:
            pass
        finally:
            if delayed is not None and writer is not None:
                delayed.put((0.0, b""))
                writer.join(30)
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(target)

    def _deliver(self, delayed: "queue.Queue[tuple[float, bytes]]", target: socket.socket) -> None:
        try:
            while True:
                due, data = delayed.get(timeout=600)
                if not data:
                    return
                remaining = due - time.monotonic()
                if remaining > 0 and self._closed.wait(remaining):  # the emulated latency
                    return
                target.sendall(data)
        except (OSError, queue.Empty):
            return

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the acceptor blocked in accept()
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in [self._acceptor, *threads]:
            thread.join(10)


@pytest.fixture
def throttled_proxy() -> Iterator[Callable[..., TCPProxy]]:
    proxies: list[TCPProxy] = []

    def make(upstream_port: int, rate: float = 0.0, delay: float = 0.0) -> TCPProxy:
        proxy = TCPProxy(upstream_port, rate=rate, delay=delay)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@dataclasses.dataclass(frozen=True)
class Distribution:
    id: str
    domain_name: str


@pytest.fixture
def cloudfront_distribution(moto_server: MotoServer, s3_bucket: str) -> Distribution:
    """A CloudFront distribution on moto with `s3_bucket` as its origin. (moto completes
    invalidations at once: nothing is ever "in progress" there.)"""
    created = moto_server.client("cloudfront").create_distribution(DistributionConfig={
        "CallerReference": uuid.uuid4().hex, "Comment": "fileconveyor test", "Enabled": True,
        "Origins": {"Quantity": 1, "Items": [{
            "Id": "origin", "DomainName": f"{s3_bucket}.s3.amazonaws.com",
            "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
        "DefaultCacheBehavior": {
            "TargetOriginId": "origin", "ViewerProtocolPolicy": "allow-all", "MinTTL": 0,
            "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}},
            "TrustedSigners": {"Enabled": False, "Quantity": 0}}})["Distribution"]
    return Distribution(created["Id"], created["DomainName"])
