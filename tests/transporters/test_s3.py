"""`s3` against moto's standalone server: the shared conformance suite plus S3's own features
(crash-resumable multipart, headers, URL forms, settings checks, error classification)."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import signal
import sqlite3
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import botocore.exceptions
import pytest

from fileconveyor.transporters import s3
from fileconveyor.transporters.base import (
    ConfigurationError,
    PermanentError,
    RetryableError,
    ServerUnavailableError,
    SourceVanishedError,
    TransporterContext,
    resolve_transporter,
)
from tests.servers.moto import (
    FAKE_KEY_ID,
    FAKE_SECRET,
    AuthMoto,
    MotoServer,
    TCPProxy,
    assert_loopback,
    free_port,
    new_bucket_name,
)
from tests.transporters.conformance import (
    MiB,
    RemoteHarness,
    TransporterConformance,
    wait_for,
    write_random,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


class S3Harness(RemoteHarness):
    """Looks at the bucket through a separate boto3 client (never through the transporter)."""

    transporter_class = s3.S3Transporter
    multipart_settings = {"multipart_threshold": "5MiB", "multipart_chunksize": "5MiB",
                          "multipart_concurrency": "3"}

    def __init__(self, state_dir: pathlib.Path, server: MotoServer, bucket: str,
                 endpoint: str | None = None, auth: AuthMoto | None = None) -> None:
        super().__init__(state_dir)
        self.server = server
        self.bucket = bucket
        #: Where the transporter connects (a proxy in front of the server, or the server).
        self.endpoint = endpoint or server.endpoint
        assert_loopback(self.endpoint)
        self.auth = auth
        self.client = server.client()

    def settings(self) -> dict[str, str]:
        return {"bucket_name": self.bucket, "endpoint_url": self.endpoint,
                "access_key_id": FAKE_KEY_ID, "secret_access_key": FAKE_SECRET}

    def read(self, remote_path: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=remote_path)["Body"].read())
        except botocore.exceptions.ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def list(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.bucket)
        assert not listed.get("IsTruncated")
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def fetch_url(self, url: str) -> bytes | None:
        assert_loopback(url)
        # Anonymous like a browser: the bucket policy (not an object ACL, which the transporter
        # does not set by default) makes the objects public, as a CDN origin's would.
        self.client.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{self.bucket}/*"}]}))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def unreachable_settings(self) -> dict[str, str]:
        # Real condition: a loopback port nobody listens on -> ECONNREFUSED.
        return {"endpoint_url": f"http://127.0.0.1:{free_port()}"}

    def bad_credentials_settings(self) -> dict[str, str] | None:
        # Real condition: moto with IAM auth enforced answers InvalidAccessKeyId for this key.
        if self.auth is None:
            return None
        return {"endpoint_url": self.auth.server.endpoint, "access_key_id": "AKIAUNKNOWN0000000",
                "secret_access_key": "not-the-secret"}

    def missing_root_settings(self) -> dict[str, str] | None:
        # Real condition: a bucket that was never created -> NoSuchBucket.
        return {"bucket_name": new_bucket_name("fc-missing")}

    def uploads(self) -> list[dict[str, Any]]:
        return list(self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []))

    def transfer_in_progress(self, remote_path: str, baseline_read_bytes: int) -> bool:
        for upload in self.uploads():
            if upload["Key"] == remote_path and self.client.list_parts(
                    Bucket=self.bucket, Key=remote_path,
                    UploadId=upload["UploadId"]).get("Parts"):
                return True
        return False

    def leftovers(self) -> list[str]:
        return [f"multipart upload of {u['Key']}" for u in self.uploads()]

    def kill_server(self) -> None:
        self.server.kill()

    def start_server(self) -> None:
        self.server.start()
        self.client = self.server.client()
        self.client.create_bucket(Bucket=self.bucket)  # moto lost everything


@pytest.fixture
def s3_harness(tmp_path: pathlib.Path, moto_server: MotoServer, s3_bucket: str,
               moto_auth_server: AuthMoto) -> S3Harness:
    return S3Harness(tmp_path / "state", moto_server, s3_bucket, auth=moto_auth_server)


class TestS3Conformance(TransporterConformance):
    known_gaps: dict[str, str] = {}

    @pytest.fixture
    def harness(self, s3_harness: S3Harness) -> S3Harness:
        return s3_harness

    @pytest.fixture
    def restartable_harness(self, tmp_path: pathlib.Path, moto_restartable: MotoServer,
                            throttled_proxy: Callable[..., TCPProxy]) -> S3Harness:
        # 40 MB/s through a proxy: the 50 MiB upload lasts over a second, long enough to kill
        # the server while parts are in flight.
        proxy = throttled_proxy(moto_restartable.port, rate=40e6)
        bucket = new_bucket_name()
        moto_restartable.client().create_bucket(Bucket=bucket)
        return S3Harness(tmp_path / "state", moto_restartable, bucket, endpoint=proxy.endpoint)


# -- S3's own features --------------------------------------------------------------------------

def test_resolves_by_original_names() -> None:
    assert resolve_transporter("s3") is s3.S3Transporter
    assert resolve_transporter("transporters.transporter_s3") is s3.S3Transporter
    assert s3.TRANSPORTER_CLASS == "S3Transporter"
    assert s3.S3Transporter.can_resume_multipart


CRASHING_UPLOAD = """
import json, sys
from fileconveyor.transporters.s3 import S3Transporter
from fileconveyor.transporters.base import TransporterContext
settings, state_dir, local, key = json.loads(sys.argv[1])
S3Transporter(settings, TransporterContext("crash", state_dir)).upload(local, key)
print("upload finished before the kill", flush=True)
"""


def _checkpointed_parts(db: pathlib.Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
        try:
            return int(connection.execute("SELECT COUNT(*) FROM multipart_parts").fetchone()[0])
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def _crash_mid_upload(harness: S3Harness, proxy: TCPProxy, local: pathlib.Path,
                      key: str) -> int:
    """Upload `local` in a child process through a slow proxy and SIGKILL it once at least two
    parts are checkpointed; returns the number of checkpointed parts at the kill."""
    settings = {**harness.settings(), **harness.multipart_settings, "endpoint_url": proxy.endpoint,
                "multipart_concurrency": "2"}
    db = harness.state_dir / "s3-multipart.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_UPLOAD,
         json.dumps([settings, str(harness.state_dir), str(local), key])],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _checkpointed_parts(db) >= 2 or child.poll() is not None, 60,
                 "two checkpointed parts")
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    return _checkpointed_parts(db)


@pytest.fixture
def slow_proxy(moto_server: MotoServer,
               throttled_proxy: Callable[..., TCPProxy]) -> TCPProxy:
    return throttled_proxy(moto_server.port, rate=20e6)


def test_kill_9_mid_multipart_then_resume_sends_only_missing_parts(
        s3_harness: S3Harness, slow_proxy: TCPProxy, tmp_path: pathlib.Path) -> None:
    local = tmp_path / "big.bin"
    data = write_random(local, 50 * MiB + 777, seed=10)
    part_count = -(-len(data) // (5 * MiB))
    done_before_kill = _crash_mid_upload(s3_harness, slow_proxy, local, "resume/big.bin")
    assert s3_harness.read("resume/big.bin") is None
    assert len(s3_harness.uploads()) == 1

    s3.forget_cleanup_marks()  # a fresh process
    transporter = s3_harness.make(**s3_harness.multipart_settings)
    transporter.upload(str(local), "resume/big.bin")
    stats = transporter.stats
    print(f"resume: {part_count} parts, {stats.parts_reused} reused, "
          f"{stats.parts_sent} sent, {stats.parts_resent} re-sent")
    assert stats.resumed == 1
    assert stats.parts_reused == done_before_kill >= 2
    assert stats.parts_sent == part_count - done_before_kill
    assert stats.parts_resent == 0
    assert s3_harness.read("resume/big.bin") == data
    assert s3_harness.uploads() == []
    assert _checkpointed_parts(s3_harness.state_dir / "s3-multipart.db") == 0


def test_changed_file_aborts_old_upload(s3_harness: S3Harness, slow_proxy: TCPProxy,
                                        tmp_path: pathlib.Path) -> None:
    local = tmp_path / "big.bin"
    write_random(local, 30 * MiB, seed=11)
    _crash_mid_upload(s3_harness, slow_proxy, local, "changed/big.bin")
    old_ids = [u["UploadId"] for u in s3_harness.uploads()]
    assert len(old_ids) == 1
    new_data = write_random(local, 30 * MiB + 5, seed=12)

    s3.forget_cleanup_marks()
    transporter = s3_harness.make(**s3_harness.multipart_settings)
    transporter.upload(str(local), "changed/big.bin")
    assert transporter.stats.aborted == 1 and transporter.stats.parts_reused == 0
    assert s3_harness.uploads() == []
    assert s3_harness.read("changed/big.bin") == new_data


def test_probe_at_start_aborts_uploads_of_changed_files(s3_harness: S3Harness,
                                                        slow_proxy: TCPProxy,
                                                        tmp_path: pathlib.Path) -> None:
    local = tmp_path / "gone.bin"
    write_random(local, 30 * MiB, seed=13)
    _crash_mid_upload(s3_harness, slow_proxy, local, "gone/big.bin")
    local.unlink()
    s3.forget_cleanup_marks()
    s3_harness.make().probe()
    assert s3_harness.uploads() == []
    assert _checkpointed_parts(s3_harness.state_dir / "s3-multipart.db") == 0


def test_checkpoint_db_is_private(s3_harness: S3Harness, tmp_path: pathlib.Path) -> None:
    write_random(tmp_path / "f", 6 * MiB)
    s3_harness.make(**s3_harness.multipart_settings).upload(str(tmp_path / "f"), "f.bin")
    mode = stat.S_IMODE(os.stat(s3_harness.state_dir / "s3-multipart.db").st_mode)
    assert mode == 0o600


def test_default_headers_are_the_originals(s3_harness: S3Harness,
                                           tmp_path: pathlib.Path) -> None:
    (tmp_path / "style.css").write_text("body{}")
    transporter = s3_harness.make()
    transporter.upload(str(tmp_path / "style.css"), "css/style.css")
    head = s3_harness.client.head_object(Bucket=s3_harness.bucket, Key="css/style.css")
    assert head["ContentType"] == "text/css; charset=utf-8"
    assert head["CacheControl"] == "max-age=315360000"
    assert head["Expires"] == datetime.datetime(2037, 1, 20, 3, 0, tzinfo=datetime.timezone.utc)
    grants = s3_harness.client.get_object_acl(Bucket=s3_harness.bucket,
                                              Key="css/style.css")["Grants"]
    assert not any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in grants)


def test_acl_storage_class_and_disabled_headers(s3_harness: S3Harness,
                                                tmp_path: pathlib.Path) -> None:
    (tmp_path / "logo.png").write_bytes(b"\x89PNG")
    transporter = s3_harness.make(acl="public-read", cache_control="", expires="",
                                  storage_class="STANDARD_IA")
    transporter.upload(str(tmp_path / "logo.png"), "logo.png")
    head = s3_harness.client.head_object(Bucket=s3_harness.bucket, Key="logo.png")
    assert head["ContentType"] == "image/png"
    assert "CacheControl" not in head and "Expires" not in head
    assert head.get("StorageClass") == "STANDARD_IA"
    grants = s3_harness.client.get_object_acl(Bucket=s3_harness.bucket, Key="logo.png")["Grants"]
    assert any(g["Grantee"].get("URI", "").endswith("AllUsers") and g["Permission"] == "READ"
               for g in grants)


def test_bucket_prefix_is_prepended(moto_server: MotoServer, tmp_path: pathlib.Path) -> None:
    real = new_bucket_name()
    prefix, name = real[:8], real[8:]
    client = moto_server.client()
    client.create_bucket(Bucket=real)
    transporter = s3.S3Transporter(
        {"bucket_prefix": prefix, "bucket_name": name, "endpoint_url": moto_server.endpoint,
         "access_key_id": FAKE_KEY_ID, "secret_access_key": FAKE_SECRET},
        TransporterContext("s3", str(tmp_path)))
    (tmp_path / "x").write_bytes(b"x")
    try:
        url = transporter.upload(str(tmp_path / "x"), "x.txt")
        assert url == f"{moto_server.endpoint}/{real}/x.txt"
        assert client.get_object(Bucket=real, Key="x.txt")["Body"].read() == b"x"
    finally:
        transporter.close()
        client.delete_object(Bucket=real, Key="x.txt")
        client.delete_bucket(Bucket=real)


def test_wrong_secret_is_configuration_error(moto_auth_server: AuthMoto,
                                             tmp_path: pathlib.Path) -> None:
    """Real condition: a known access key signed with the wrong secret (SignatureDoesNotMatch);
    the right secret works, so the failure is the secret's."""
    auth = moto_auth_server
    bucket = new_bucket_name()
    auth.server.client(key_id=auth.key_id, secret=auth.secret).create_bucket(Bucket=bucket)
    (tmp_path / "f").write_bytes(b"f")
    base = {"bucket_name": bucket, "endpoint_url": auth.server.endpoint,
            "access_key_id": auth.key_id}
    good = s3.S3Transporter({**base, "secret_access_key": auth.secret},
                            TransporterContext("s3", str(tmp_path)))
    bad = s3.S3Transporter({**base, "secret_access_key": "wrong" + auth.secret},
                           TransporterContext("s3", str(tmp_path)))
    try:
        good.upload(str(tmp_path / "f"), "f.txt")
        with pytest.raises(ConfigurationError, match="SignatureDoesNotMatch"):
            bad.upload(str(tmp_path / "f"), "f.txt")
        with pytest.raises(ConfigurationError):
            bad.probe()
        good.delete("f.txt")
    finally:
        good.close()
        bad.close()


def test_storage_class_the_endpoint_lacks_fails_the_file_not_the_server(
        s3_harness: S3Harness, tmp_path: pathlib.Path) -> None:
    """Real condition: SNOW is a storage class check-config accepts (S3 has it) but moto does not
    offer, so it answers InvalidStorageClass to the PUT. That request is refused, the bucket
    works: a ConfigurationError here paused the server, the probe succeeded, and the same file
    paused it again, for ever (issue 7, item 6)."""
    transporter = s3_harness.make(storage_class="SNOW")
    (tmp_path / "f").write_bytes(b"f")
    with pytest.raises(PermanentError, match="<storage_class>"):
        transporter.upload(str(tmp_path / "f"), "f.txt")
    transporter.probe()
    assert s3_harness.list() == []


@pytest.fixture
def restricted_user(moto_auth_server: AuthMoto) -> Iterator[tuple[str, str, str]]:
    """(bucket, key id, secret) of an IAM user who may do anything but touch `private/*`."""
    auth = moto_auth_server
    admin = auth.server.client(key_id=auth.key_id, secret=auth.secret)
    bucket = new_bucket_name()
    admin.create_bucket(Bucket=bucket)
    iam = auth.server.client("iam", key_id=auth.key_id, secret=auth.secret)
    user = f"restricted-{bucket[-8:]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="no-private", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:*",
             "Resource": f"arn:aws:s3:::{bucket}/private/*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    yield bucket, key["AccessKeyId"], key["SecretAccessKey"]
    for item in admin.list_objects_v2(Bucket=bucket).get("Contents", []):
        admin.delete_object(Bucket=bucket, Key=item["Key"])
    admin.delete_bucket(Bucket=bucket)


def test_access_denied_on_one_key_fails_that_file_only(
        moto_auth_server: AuthMoto, restricted_user: tuple[str, str, str],
        tmp_path: pathlib.Path) -> None:
    """Real condition: an IAM policy denies one prefix. A 403 there is that file's error
    (PermanentError), for the upload and for the existence check (a HEAD has no error code, so
    it used to be taken for bad credentials: a ConfigurationError, pausing the server)."""
    bucket, key_id, secret = restricted_user
    transporter = s3.S3Transporter(
        {"bucket_name": bucket, "endpoint_url": moto_auth_server.server.endpoint,
         "access_key_id": key_id, "secret_access_key": secret},
        TransporterContext("s3", str(tmp_path)))
    (tmp_path / "f").write_bytes(b"f")
    try:
        transporter.upload(str(tmp_path / "f"), "public/f.txt")
        with pytest.raises(PermanentError, match="403"):
            transporter.upload(str(tmp_path / "f"), "private/f.txt")
        with pytest.raises(PermanentError, match="only this object"):
            transporter.exists("private/f.txt")
        assert transporter.exists("public/f.txt")
        transporter.probe()
    finally:
        transporter.close()


def test_url_forms() -> None:
    context = TransporterContext("s3", "/nonexistent")

    def url(**settings: str) -> str:
        return s3.S3Transporter({"bucket_name": "b", **settings}, context).url_for("a b/c#d.css")

    assert url() == "https://b.s3.amazonaws.com/a%20b/c%23d.css"
    assert url(url_scheme="http") == "http://b.s3.amazonaws.com/a%20b/c%23d.css"
    assert url(region="eu-west-1") == "https://b.s3.eu-west-1.amazonaws.com/a%20b/c%23d.css"
    assert url(endpoint_url="http://127.0.0.1:9000/") == "http://127.0.0.1:9000/b/a%20b/c%23d.css"
    assert url(url_base="cdn.example.com") == "https://cdn.example.com/a%20b/c%23d.css"
    assert url(url_base="http://x.example/static/") == "http://x.example/static/a%20b/c%23d.css"
    assert url(bucket_prefix="p-") == "https://p-b.s3.amazonaws.com/a%20b/c%23d.css"


@pytest.mark.parametrize("name, expected", [
    ("a.css", "text/css; charset=utf-8"),
    ("a.js", "charset=utf-8"),
    ("a.json", "application/json; charset=utf-8"),
    ("a.svg", "image/svg+xml; charset=utf-8"),
    ("a.xml", "charset=utf-8"),
    ("a.html", "text/html; charset=utf-8"),
    ("a.png", "image/png"),
    ("a.css.gz", "application/gzip"),
    ("noextension", "application/octet-stream"),
])
def test_content_type(name: str, expected: str) -> None:
    assert s3.content_type_for(name).endswith(expected)


@pytest.mark.parametrize("settings, fragment", [
    ({"acl": "public"}, "<acl>"),
    ({"storage_class": "cheap"}, "<storage_class>"),
    ({"multipart_chunksize": "1MiB"}, "at least 5MiB"),
    ({"multipart_threshold": "lots"}, "<multipart_threshold>"),
    ({"multipart_concurrency": "0"}, "<multipart_concurrency>"),
    ({"endpoint_url": "ftp://x"}, "<endpoint_url>"),
    ({"url_base": "https://"}, "<url_base>"),
    ({"url_scheme": "gopher"}, "<url_scheme>"),
    ({"expires": "next year"}, "<expires>"),
    ({"bucket_name": "Bad_Bucket!"}, "not a valid bucket name"),
    ({"access_key_id": "only-one"}, "set both"),
    ({"bucket": "x"}, "unknown setting <bucket>"),
])
def test_check_settings_values(settings: dict[str, str], fragment: str) -> None:
    problems = s3.S3Transporter.check_settings({"bucket_name": "ok-bucket", **settings})
    assert any(fragment in problem for problem in problems), problems


def test_check_settings_accepts_good_values() -> None:
    assert s3.S3Transporter.check_settings({
        "bucket_name": "assets", "bucket_prefix": "example-", "acl": "public-read",
        "storage_class": "STANDARD", "multipart_threshold": "64MiB", "multipart_chunksize": "16M",
        "multipart_concurrency": "8", "endpoint_url": "https://s3.example.com",
        "url_base": "cdn.example.com", "url_scheme": "http", "expires": "", "region": "eu-west-1",
    }) == []
    assert "bucket_name" in " ".join(s3.S3Transporter.check_settings({}))


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code},
         "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("error, expected", [
    (_client_error("SlowDown", 503), RetryableError),
    (_client_error("InternalError", 500), RetryableError),
    (_client_error("BadDigest", 400), RetryableError),
    (_client_error("RequestTimeout", 400), RetryableError),
    (_client_error("AccessDenied", 403), PermanentError),
    (_client_error("NoSuchBucket", 404), ConfigurationError),
    (_client_error("InvalidAccessKeyId", 403), ConfigurationError),
    (_client_error("SignatureDoesNotMatch", 403), ConfigurationError),
    (_client_error("EntityTooLarge", 400), PermanentError),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
     ServerUnavailableError),
    (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), ServerUnavailableError),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), RetryableError),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), RetryableError),
    (botocore.exceptions.NoCredentialsError(), ConfigurationError),
    (FileNotFoundError("x"), SourceVanishedError),
    # Refusals of one request because of a setting: the file's error, never a server pause.
    (_client_error("AccessControlListNotSupported", 400), PermanentError),
    (_client_error("InvalidStorageClass", 400), PermanentError),
    (_client_error("NotImplemented", 501), PermanentError),
    (_client_error("RequestTimeTooSkewed", 403), ConfigurationError),
])
def test_error_classification(error: Exception, expected: type) -> None:
    classified = s3._classify(error, "uploading x", "bucket")
    assert type(classified) is expected
    assert "uploading x" in str(classified)


def test_part_size_grows_to_stay_within_10000_parts() -> None:
    transporter = s3.S3Transporter({"bucket_name": "b"}, TransporterContext("s3", "/x"))
    assert transporter.part_size_for(100 * MiB) == 8 * MiB
    size = 200 * 1024 * MiB
    part = transporter.part_size_for(size)
    assert part % MiB == 0 and -(-size // part) <= 10_000


def test_parse_size() -> None:
    assert s3.parse_size("8MiB") == s3.parse_size("8M") == 8 * MiB
    assert s3.parse_size("1024") == 1024
    with pytest.raises(ValueError):
        s3.parse_size("8 megs")


@pytest.fixture(autouse=True)
def _fresh_cleanup_marks() -> Iterator[None]:
    s3.forget_cleanup_marks()
    yield
