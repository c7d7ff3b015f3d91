"""`s3`: Amazon S3 and any S3-compatible store (MinIO, Ceph, Swift's S3 layer, moto, s3rver).

Why it is shaped this way:

* **Names and settings of the original** (`access_key_id`, `secret_access_key`, `bucket_name`,
  `bucket_prefix`), with `bucket_prefix` back to its first meaning: the real bucket name is
  `bucket_prefix + bucket_name` (the original accepted and silently ignored it after 2011). The
  credentials are optional: without them boto3's own chain (environment, `~/.aws`, instance role).
* **One boto3 session and client per instance**, made lazily on first use (construction does no
  I/O) and dropped after a network failure so the next call reconnects. botocore's own retries are
  limited to one extra attempt: the pipeline retries with backoff, and a pool paused on a dead
  server must hear about it within seconds, not after botocore's minutes of retrying.
* **Errors classified here**, from botocore exception types and S3 error codes (`_classify`).
  A `HEAD` response has no body, so a 403/404 on `head_bucket` carries no error code: the probe
  turns both into a ConfigurationError that names the bucket. A refusal of one request is the
  file's error, never a pause of the server: an ACL the bucket does not take, a storage class the
  endpoint lacks, a 403 on one key are PermanentErrors that name the setting to fix. A
  credentials or bucket error on a request for one object pauses the server only if the bucket
  itself then refuses these settings too (a HEAD of the bucket, in the error path only): an
  object denied by a bucket policy, or a key a server signs wrongly, fails alone.
* **Integrity**: every single PUT and every multipart part carries `Content-MD5`, so S3 rejects a
  body damaged in transit (`BadDigest`, retryable). After `CompleteMultipartUpload` the returned
  ETag is compared with the one computed locally (MD5 of the parts' MD5s, `-N`).
* **Streamed, hashed once**: a PUT or a part is read from the file twice, once to compute its MD5
  and once by botocore to send it (`FileRange`), never held in memory whole; botocore adds no
  checksum of its own (`request_checksum_calculation="when_required"`). Over plain http only,
  SigV4 signs the payload, which hashes it once more (SHA-256): botocore insists. Bodies up to
  1 MiB are read in one read and sent from memory, without `Expect: 100-continue` (a round trip
  per small file); streamed ones keep it.
* **Multipart resumable across crashes**: above `multipart_threshold` the file goes up in parts,
  `multipart_concurrency` at a time. The upload id and every completed part (number, ETag, size)
  are checkpointed in `s3-multipart.db` (SQLite, 0600) in the context's state directory, keyed by
  bucket, key, local path, size and mtime (ns). A later upload of the unchanged file lists the
  parts the server has, keeps those whose size and ETag match the checkpoint, sends the rest and
  completes; a changed file's old upload is aborted. Permanent failures abort the upload, and on
  start (first upload or probe) checkpoints whose file has changed or gone are aborted, so no
  orphaned uploads (which S3 bills for) are left behind.
* **URLs are permanent and unsigned**; every character of the key but
  `A-Za-z0-9-._~/` is percent-encoded (`base.encode_url_path`; S3 reads a `+` in a path as a
  space). With `url_base`
  the URL is on that domain; with `endpoint_url` it is path-style `endpoint/bucket/key`; otherwise
  virtual-hosted `scheme://bucket.s3[.region].amazonaws.com/key`. `url_scheme` defaults to https
  (the original recorded http).
* **Headers**: Content-Type from the name (`mimetypes`), with `; charset=utf-8` for text, JS,
  JSON, XML and SVG; the original's far-future `Cache-Control` and `Expires` by default (an empty
  setting sends none); no ACL unless `acl` is set (`public-read` is the original's behaviour).
  A destination may set its own `acl`, `cache_control`, `expires` and `storage_class`
  (`ObjectOptions`, original issue #159: private files beside public ones on one bucket), and a
  pre-compressed copy (`name.css.gz`) goes up with the Content-Type of `name.css` and its
  Content-Encoding.
"""
from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from typing import Any, Callable, ClassVar, Iterator, Mapping, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.handlers
import botocore.loaders
import botocore.session

from fileconveyor.localfile import open_regular_fd
from fileconveyor.transporters.base import (
    ConfigurationError,
    ObjectOptions,
    PermanentError,
    RemoteEntry,
    RetryableError,
    ServerUnavailableError,
    SourceVanishedError,
    Transporter,
    TransporterContext,
    TransporterError,
    content_type_for,
    http_date_problems,
    join_url,
    listing_prefix,
    local_file_error,
    normalize_remote_path,
)

logger = logging.getLogger(__name__)

TRANSPORTER_CLASS = "S3Transporter"

MiB = 1024 * 1024
#: S3's limits: parts of at least 5 MiB (but the last), at most 10,000 parts, 5 GiB per part.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000

CANNED_ACLS = frozenset({
    "private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
    "bucket-owner-read", "bucket-owner-full-control",
})
STORAGE_CLASSES = frozenset({
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
    "GLACIER", "DEEP_ARCHIVE", "GLACIER_IR", "OUTPOSTS", "SNOW", "EXPRESS_ONEZONE",
})

#: S3 error codes that mean "the settings are wrong": nothing works until the user fixes them.
CONFIGURATION_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId",
    "InvalidBucketName", "NoSuchBucket", "PermanentRedirect", "AllAccessDisabled",
    "AccountProblem", "RequestTimeTooSkewed",
})
#: Codes that refuse one request because of a setting it carried; the endpoint still works (the
#: probe succeeds), so they are the file's permanent error, with what to change.
REQUEST_SETTING_CODES: Mapping[str, str] = {
    "AccessControlListNotSupported":
        "the bucket does not take ACLs (its object ownership is 'bucket owner enforced'); "
        "leave <acl> empty, or change the bucket's object ownership",
    "InvalidStorageClass":
        "the endpoint does not offer the <storage_class> set; write one it offers, or leave it "
        "empty",
    "NotImplemented":
        "the endpoint does not implement something this request asked for (<acl>, "
        "<storage_class>, <expires>?); leave those settings empty",
}
#: Codes worth retrying: throttling, server trouble, a body damaged in transit.
RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "RequestTimeout", "InternalError", "ServiceUnavailable", "BadDigest",
    "OperationAborted", "RequestLimitExceeded", "IncompleteBody",
})

_T = TypeVar("_T")
#: An ETag that may be an MD5 (a multipart upload's ends in `-<parts>`).
_MD5_HEX = re.compile(r"[0-9a-f]{32}")


def parse_size(text: str) -> int:
    """`8388608`, `8M`, `8MiB`, `512k` -> bytes (binary multiples); ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a size (write e.g. 8388608, 8M or 8MiB)")
    unit = {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[match.group(2).lower()]
    return int(match.group(1)) * unit


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (write true or false)")


def _error_code(error: botocore.exceptions.ClientError) -> tuple[str, int]:
    response: Mapping[str, Any] = error.response or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _classify(error: Exception, what: str, bucket: str) -> TransporterError:
    """The classified error for a botocore/boto3 failure while doing `what`."""
    if isinstance(error, TransporterError):
        return error
    if isinstance(error, (botocore.exceptions.NoCredentialsError,
                          botocore.exceptions.PartialCredentialsError,
                          botocore.exceptions.CredentialRetrievalError)):
        return ConfigurationError(
            f"{what}: no usable S3 credentials ({error}); set <access_key_id> and "
            "<secret_access_key>, or configure boto3's credential chain (AWS_ACCESS_KEY_ID, "
            "~/.aws/credentials, an instance role)")
    if isinstance(error, botocore.exceptions.SSLError):
        return ConfigurationError(
            f"{what}: TLS failed ({error}); check <endpoint_url> and the CA bundle")
    if isinstance(error, (botocore.exceptions.EndpointConnectionError,
                          botocore.exceptions.ConnectTimeoutError,
                          botocore.exceptions.ProxyConnectionError)):
        return ServerUnavailableError(f"{what}: cannot reach the S3 endpoint ({error})")
    if isinstance(error, (botocore.exceptions.ReadTimeoutError,
                          botocore.exceptions.ConnectionClosedError,
                          botocore.exceptions.ConnectionError,
                          botocore.exceptions.HTTPClientError,
                          botocore.exceptions.ResponseStreamingError)):
        return RetryableError(f"{what}: connection failed mid-request ({error})")
    if isinstance(error, botocore.exceptions.ParamValidationError):
        return PermanentError(f"{what}: request refused by the S3 client ({error})")
    if isinstance(error, botocore.exceptions.ClientError):
        code, status = _error_code(error)
        message = f"{what}: S3 answered {status} {code or '(no code)'}"
        if code == "NoSuchBucket":
            return ConfigurationError(
                f"{message}: bucket {bucket!r} does not exist; create it, or fix <bucket_name> "
                "(and <bucket_prefix>, which is prepended to it)")
        if code == "RequestTimeTooSkewed":
            return ConfigurationError(f"{message}: this machine's clock is wrong; fix it (NTP)")
        if code in REQUEST_SETTING_CODES:
            return PermanentError(f"{message}: {REQUEST_SETTING_CODES[code]} ({error})")
        if code in CONFIGURATION_CODES:
            return ConfigurationError(
                f"{message}: check <access_key_id>, <secret_access_key>, <bucket_name>, "
                f"<region> and <storage_class> ({error})")
        if code in RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableError(f"{message} ({error})")
        if code == "AccessDenied" or status == 403:
            return PermanentError(
                f"{message}: access denied; the credentials may not write to bucket {bucket!r} "
                "(or <acl> is forbidden by the bucket's object ownership setting)")
        return PermanentError(f"{message} ({error})")
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return RetryableError(f"{what}: {error}")
    if isinstance(error, FileNotFoundError):
        return SourceVanishedError(f"{what}: the local file is gone ({error})",
                                   error.filename or "")
    if isinstance(error, OSError):
        return RetryableError(f"{what}: {error}")
    raise error


@dataclasses.dataclass
class MultipartStats:
    """Counters for reports and tests: how much a resume saved."""

    uploads: int = 0
    resumed: int = 0
    parts_sent: int = 0
    parts_reused: int = 0
    #: Parts a checkpoint said were sent that had to be sent again (server lost them, or they
    #: did not match).
    parts_resent: int = 0
    aborted: int = 0


class SQLiteState:
    """A small private SQLite file for a transporter's durable state (huey's pattern), opened
    through the state-database gate (fileconveyor.pipeline.db): one lock, one short transaction per
    access, BUSY and a full disk retried at BEGIN/COMMIT, errors naming the file; created 0600; WAL
    (only this process reads it, so no reader needs to write a -shm file)."""

    #: CREATE statements run at open (each IF NOT EXISTS).
    DDL: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str) -> None:
        from fileconveyor.pipeline.db import Database, Journal

        self.path = path
        self._database = Database(path, self.DDL, None, journal=Journal.WAL)

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._database.transaction()

    def close(self) -> None:
        self._database.close()


class MultipartCheckpoints(SQLiteState):
    """Durable record of in-progress multipart uploads (one file per state directory).
    Upload ids are capabilities, hence the private file."""

    # Keyed by what identifies the *content* being uploaded: resuming is only safe for the same
    # bytes, and size + mtime_ns is the same-file test the rest of the daemon uses.
    DDL_UPLOADS = """
        CREATE TABLE IF NOT EXISTS multipart_uploads (
            bucket TEXT NOT NULL, key TEXT NOT NULL, local_path TEXT NOT NULL,
            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, part_size INTEGER NOT NULL,
            upload_id TEXT NOT NULL, created REAL NOT NULL,
            PRIMARY KEY (bucket, key, local_path))"""
    # One row per part acknowledged by the server; written as soon as the part's response
    # arrives, so a crash loses at most the parts in flight.
    DDL_PARTS = """
        CREATE TABLE IF NOT EXISTS multipart_parts (
            upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, etag TEXT NOT NULL,
            size INTEGER NOT NULL, PRIMARY KEY (upload_id, part_number))"""
    DDL = (DDL_UPLOADS, DDL_PARTS)

    def find(self, bucket: str, key: str, local_path: str) -> tuple[str, int, int, int] | None:
        """(upload_id, size, mtime_ns, part_size) of the checkpointed upload, if any."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT upload_id, size, mtime_ns, part_size FROM multipart_uploads "
                "WHERE bucket = ? AND key = ? AND local_path = ?",
                (bucket, key, local_path)).fetchone()
        return tuple(row) if row else None  # type: ignore[return-value]

    def start(self, bucket: str, key: str, local_path: str, size: int, mtime_ns: int,
              part_size: int, upload_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO multipart_uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (bucket, key, local_path, size, mtime_ns, part_size, upload_id, time.time()))

    def parts(self, upload_id: str) -> dict[int, tuple[str, int]]:
        with self._transaction() as db:
            rows = db.execute("SELECT part_number, etag, size FROM multipart_parts "
                              "WHERE upload_id = ?", (upload_id,)).fetchall()
        return {number: (etag, size) for number, etag, size in rows}

    def add_part(self, upload_id: str, part_number: int, etag: str, size: int) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO multipart_parts VALUES (?, ?, ?, ?)",
                       (upload_id, part_number, etag, size))

    def forget(self, upload_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM multipart_parts WHERE upload_id = ?", (upload_id,))
            db.execute("DELETE FROM multipart_uploads WHERE upload_id = ?", (upload_id,))

    def all_for_bucket(self, bucket: str) -> list[tuple[str, str, str, int, int]]:
        """(upload_id, key, local_path, size, mtime_ns) of every checkpoint in `bucket`."""
        with self._transaction() as db:
            rows = db.execute("SELECT upload_id, key, local_path, size, mtime_ns "
                              "FROM multipart_uploads WHERE bucket = ?", (bucket,)).fetchall()
        return [tuple(row) for row in rows]  # type: ignore[misc]


#: (checkpoint db path, bucket) pairs whose stale uploads were cleaned up by this process.
_cleaned_up: set[tuple[str, str]] = set()
_cleaned_up_lock = threading.Lock()


#: One botocore data loader for every client of the process. Making a client parses S3's model
#: and endpoint rules (several MB of JSON): ~130 ms of CPU with a fresh loader, ~20 ms with a
#: loader that has them cached. The pool makes one transporter, hence one client, per worker,
#: and a new one after every network failure, so this was half the CPU of the S3 benchmark.
_shared_loader: botocore.loaders.Loader | None = None
_shared_loader_lock = threading.Lock()


def _botocore_session() -> botocore.session.Session:
    """A new botocore session (sessions are not thread-safe: one per transporter) whose data
    loader is the process-wide one."""
    global _shared_loader
    session = botocore.session.get_session()
    with _shared_loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        session.register_component("data_loader", _shared_loader)
    return session


#: Bodies up to this size are read into memory in one read and sent from there; larger ones are
#: streamed (`FileRange`). For 4 KiB files, streaming's extra system calls each give up and
#: wait for the GIL that 32 workers contend for (bench_s3.py: 5000 x 4 KiB, ~190 files/s).
IN_MEMORY_MAX = 1 * MiB
#: Reads of the hashing pass: large enough that hashlib (which drops the GIL above 2 KiB) does
#: the work, small enough that 32 workers hold little memory.
HASH_CHUNK = 1 * MiB


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def _expect_continue_when_streamed(params: dict[str, Any], **_kwargs: Any) -> None:
    """botocore's `add_expect_header` asks for `100-continue` before every body (bytes are
    wrapped in a file object first): a round trip more per PUT. Worth it only for a streamed
    body, where an auth error or redirect is then heard before megabytes are sent."""
    if isinstance(params.get("body"), FileRange):
        params["headers"]["Expect"] = "100-continue"


class FileRange:
    """`length` bytes of an open file from `start`, as a read-only seekable stream for botocore.

    A part or a whole object is sent from the page cache instead of being held in memory (32
    workers x 64 MiB would be 2 GiB). `md5()` is the one hashing pass; botocore reads the range
    again to send it (and, over plain http only, once more for the SigV4 payload hash), seeking
    back to 0 before a retry. The file descriptor belongs to the caller.

    If the file shrinks after the hashing pass, a read raises RetryableError: the Content-Length
    is already on the wire, and a short body would hang the request until the read timeout. If
    its bytes change in place, the server refuses the body (`BadDigest`, retryable)."""

    def __init__(self, fd: int, start: int, length: int, what: str) -> None:
        self._fd = fd
        self._start = start
        self._length = length
        self._what = what
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def md5(self) -> tuple[str, bytes, int]:
        """(Content-MD5 as base64, raw digest, bytes found): bytes found is less than the length
        if the file ended early."""
        digest = hashlib.md5()
        found = 0
        while found < self._length:
            chunk = os.pread(self._fd, min(HASH_CHUNK, self._length - found), self._start + found)
            if not chunk:
                break
            digest.update(chunk)
            found += len(chunk)
        raw = digest.digest()
        return base64.b64encode(raw).decode("ascii"), raw, found

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size == 0:
            return b""
        data = os.pread(self._fd, size, self._start + self._position)
        if not data:
            raise RetryableError(f"{self._what}: the file shrank during the upload; it will be "
                                 "sent again")
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._length}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class S3Transporter(Transporter):
    """Upload to one S3 bucket; see the module docstring for the protocol details."""

    name = "s3"
    valid_settings = frozenset({
        "access_key_id", "secret_access_key", "bucket_name", "bucket_prefix", "endpoint_url",
        "region", "acl", "cache_control", "expires", "storage_class", "url_base", "url_scheme",
        "multipart_threshold", "multipart_chunksize", "multipart_concurrency",
    })
    required_settings = frozenset({"bucket_name"})
    object_settings = frozenset({"acl", "cache_control", "expires", "storage_class"})
    keeps_object_metadata = True
    default_settings: ClassVar[Mapping[str, str]] = {
        "bucket_prefix": "",
        "acl": "",
        # The original's far-future headers (~10 years; the date predates 2038 on purpose).
        "cache_control": "max-age=315360000",
        "expires": "Tue, 20 Jan 2037 03:00:00 GMT",
        "storage_class": "",
        "url_scheme": "https",
        # Files below 64 MiB go up in one PUT (rclone: 200 MiB, s5cmd: 50 MB; aws-cli: 8 MiB):
        # one request instead of create + parts + complete, and no server-side reassembly
        # (bench_s3.py, 20 x 20 MiB on s3rver: ~65 -> ~120 MB/s). At most 64 MiB is sent again
        # after a crash. Above it, 8 MiB parts, small enough that a resume saves much (16 MiB
        # parts were no faster).
        "multipart_threshold": "64MiB",
        "multipart_chunksize": "8MiB",
        "multipart_concurrency": "4",
    }
    can_resume_multipart = True
    can_list = True

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        s = self.settings
        self.bucket = (s.get("bucket_prefix") or "") + s["bucket_name"].strip()
        self.endpoint_url = (s.get("endpoint_url") or "").strip().rstrip("/") or None
        self.region = (s.get("region") or "").strip() or None
        self.acl = (s.get("acl") or "").strip() or None
        self.cache_control = (s.get("cache_control") or "").strip() or None
        expires = (s.get("expires") or "").strip()
        self.expires = email.utils.parsedate_to_datetime(expires) if expires else None
        self.storage_class = (s.get("storage_class") or "").strip() or None
        self.url_scheme = (s.get("url_scheme") or "https").strip()
        self.multipart_threshold = parse_size(s["multipart_threshold"])
        self.multipart_chunksize = parse_size(s["multipart_chunksize"])
        self.multipart_concurrency = int(s["multipart_concurrency"])
        self.stats = MultipartStats()
        self._session: boto3.session.Session | None = None
        self._client: Any = None
        self._checkpoints: MultipartCheckpoints | None = None

    # -- settings -------------------------------------------------------------------------------

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        merged = {**cls.default_settings, **settings}
        bucket = (merged.get("bucket_prefix") or "") + (merged.get("bucket_name") or "").strip()
        if merged.get("bucket_name", "").strip() and not re.fullmatch(
                r"[a-z0-9][a-z0-9.\-_]{1,253}[a-z0-9]", bucket):
            problems.append(
                f"bucket {bucket!r} (<bucket_prefix> + <bucket_name>) is not a valid bucket name: "
                "use 3-63 lowercase letters, digits, dots and hyphens")
        if bool(merged.get("access_key_id")) != bool(merged.get("secret_access_key")):
            problems.append("set both <access_key_id> and <secret_access_key>, or neither "
                            "(to use boto3's credential chain)")
        acl = (merged.get("acl") or "").strip()
        if acl and acl not in CANNED_ACLS:
            problems.append(f"<acl> {acl!r} is not a canned ACL; write one of "
                            f"{', '.join(sorted(CANNED_ACLS))}, or leave it empty")
        storage = (merged.get("storage_class") or "").strip()
        if storage and storage not in STORAGE_CLASSES:
            problems.append(f"<storage_class> {storage!r} is unknown; write one of "
                            f"{', '.join(sorted(STORAGE_CLASSES))}")
        for name in ("endpoint_url", "url_base"):
            value = (merged.get(name) or "").strip()
            if not value:
                continue
            if name == "url_base" and "://" not in value:
                value = "https://" + value
            parsed = urllib.parse.urlsplit(value)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query:
                problems.append(f"<{name}> {merged[name]!r} is not an http(s) URL such as "
                                "https://cdn.example.com")
        if (merged.get("url_scheme") or "").strip() not in ("http", "https"):
            problems.append("<url_scheme> must be http or https")
        problems += http_date_problems(merged, "expires")
        sizes: dict[str, int] = {}
        for name in ("multipart_threshold", "multipart_chunksize"):
            try:
                sizes[name] = parse_size(merged[name])
            except ValueError as error:
                problems.append(f"<{name}>: {error}")
        if sizes.get("multipart_chunksize", MIN_PART_SIZE) < MIN_PART_SIZE:
            problems.append("<multipart_chunksize> must be at least 5MiB (S3's smallest part)")
        if sizes.get("multipart_chunksize", 0) > MAX_PART_SIZE:
            problems.append("<multipart_chunksize> must be at most 5GiB (S3's largest part)")
        if sizes.get("multipart_threshold", MIN_PART_SIZE) < MIN_PART_SIZE:
            problems.append("<multipart_threshold> must be at least 5MiB")
        if sizes.get("multipart_threshold", 0) > MAX_PART_SIZE:
            problems.append("<multipart_threshold> must be at most 5GiB (S3's largest PUT)")
        try:
            if not 1 <= int(merged["multipart_concurrency"]) <= 64:
                raise ValueError
        except ValueError:
            problems.append("<multipart_concurrency> must be a whole number from 1 to 64")
        region = (merged.get("region") or "").strip()
        if region and not re.fullmatch(r"[a-z]{2}(-[a-z0-9]+)+-\d+|[a-z0-9-]+", region):
            problems.append(f"<region> {region!r} does not look like a region (e.g. eu-west-1)")
        return problems

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> Any:
        """The S3 client, made on first use (one session and client per instance)."""
        if self._client is None:
            self._session = boto3.session.Session(
                botocore_session=_botocore_session(),
                aws_access_key_id=self.settings.get("access_key_id") or None,
                aws_secret_access_key=self.settings.get("secret_access_key") or None,
                region_name=self.region or ("us-east-1" if self.endpoint_url else None),
            )
            self._client = self._session.client(
                "s3", endpoint_url=self.endpoint_url, config=self._client_config())
            events = self._client.meta.events
            events.unregister("before-call.s3", botocore.handlers.add_expect_header)
            events.register("before-call.s3", _expect_continue_when_streamed)
        return self._client

    def _client_config(self) -> botocore.config.Config:
        timeout = self.context.timeout
        return botocore.config.Config(
            connect_timeout=min(timeout, 10.0),
            read_timeout=timeout,
            # One retry at most: the pipeline owns retries and backoff.
            retries={"total_max_attempts": 2, "mode": "standard"},
            max_pool_connections=self.multipart_concurrency + 2,
            # Path style for custom endpoints: they rarely have wildcard DNS for buckets.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # We send Content-MD5 ourselves; botocore's extra CRC32 would hash every byte again.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    def _call(self, what: str, operation: Callable[..., _T], **kwargs: Any) -> _T:
        """Run one client operation; classify its failure and drop the client if the
        connection is suspect (the next call reconnects)."""
        try:
            return operation(**kwargs)
        except Exception as error:  # classified below; unknown types re-raise
            classified = self._confirm_server_wide(_classify(error, what, self.bucket))
            if isinstance(classified, RetryableError):
                self._drop_client()
            raise classified from error

    def _confirm_server_wide(self, classified: TransporterError) -> TransporterError:
        """A ConfigurationError from a request on one object stands (and pauses the server) only
        if the bucket refuses these settings too; if a HEAD of the bucket succeeds, the refusal
        was about this object and it fails alone, as a PermanentError."""
        if not isinstance(classified, ConfigurationError):
            return classified
        try:
            self._connect().head_bucket(Bucket=self.bucket)
        except Exception:  # noqa: BLE001 - any failure: the bucket is unusable, as reported
            return classified
        return PermanentError(f"{classified} -- yet bucket {self.bucket!r} answers with these "
                              "settings, so only this object is refused")

    def _drop_client(self) -> None:
        client, self._client, self._session = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def close(self) -> None:
        self._drop_client()
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None

    @property
    def checkpoint_path(self) -> str:
        return os.path.abspath(os.path.join(self.context.state_dir, "s3-multipart.db"))

    @property
    def checkpoints(self) -> MultipartCheckpoints:
        if self._checkpoints is None:
            self._checkpoints = MultipartCheckpoints(self.checkpoint_path)
        return self._checkpoints

    # -- URLs ------------------------------------------------------------------------------------

    def base_url(self) -> str:
        url_base = (self.settings.get("url_base") or "").strip()
        if url_base:
            return url_base if "://" in url_base else f"{self.url_scheme}://{url_base}"
        if self.endpoint_url:
            return f"{self.endpoint_url}/{urllib.parse.quote(self.bucket)}"
        region = f".{self.region}" if self.region and self.region != "us-east-1" else ""
        return f"{self.url_scheme}://{self.bucket}.s3{region}.amazonaws.com"

    def url_for(self, remote_path: str) -> str:
        # base.encode_url_path, the one encoding: S3 decodes `+` in a path as a space (a legacy
        # of its form-encoding) and some S3 servers split at `;`; both are encoded.
        return join_url(self.base_url(), normalize_remote_path(remote_path))

    # -- operations ------------------------------------------------------------------------------

    def probe(self) -> None:
        client = self._connect()
        try:
            client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as error:
            code, status = _error_code(error)
            if status == 404 or code in ("404", "NoSuchBucket"):
                raise ConfigurationError(
                    f"bucket {self.bucket!r} does not exist; create it, or fix <bucket_name> "
                    "(and <bucket_prefix>, which is prepended to it)") from error
            if status in (400, 401, 403) or code in ("403", "400"):
                raise ConfigurationError(
                    f"S3 refused access to bucket {self.bucket!r} ({status}); check "
                    "<access_key_id>, <secret_access_key> and the bucket's policy") from error
            raise _classify(error, f"probing bucket {self.bucket!r}", self.bucket) from error
        except Exception as error:
            classified = _classify(error, f"probing bucket {self.bucket!r}", self.bucket)
            if isinstance(classified, RetryableError):
                self._drop_client()
            raise classified from error
        self._cleanup_stale_uploads()

    def remove_leftovers(self) -> None:
        # Multipart uploads of files that changed or went (unchanged ones are kept to resume).
        self._connect()
        self._cleanup_stale_uploads()

    def exists(self, remote_path: str) -> bool:
        key = normalize_remote_path(remote_path)
        client = self._connect()
        try:
            client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as error:
            code, status = _error_code(error)
            if status == 404 or code in ("404", "NoSuchKey", "NotFound"):
                return False
            if status == 403:
                # A HEAD answer has no body: bad credentials and a missing permission look the
                # same (and without s3:ListBucket, S3 answers 403 for a missing key too).
                raise self._confirm_server_wide(ConfigurationError(
                    f"S3 refused to say whether {key!r} exists in bucket {self.bucket!r} (403); "
                    "check the credentials, and grant s3:GetObject and s3:ListBucket")) from error
            raise self._confirm_server_wide(
                _classify(error, f"checking {key!r}", self.bucket)) from error
        except Exception as error:
            classified = _classify(error, f"checking {key!r}", self.bucket)
            if isinstance(classified, RetryableError):
                self._drop_client()
            raise classified from error
        return True

    def list_files(self, prefix: str = "") -> Iterator[RemoteEntry]:
        """ListObjectsV2, page by page (`list_page_size` keys, S3's default 1,000), in S3's
        order (UTF-8 bytes of the key). The ETag is the MD5 of the content only for an object
        uploaded in one PUT (no `-N` suffix) and not encrypted with SSE-KMS or SSE-C: the bucket's
        default encryption is asked once per listing (without permission to read it, ETags are
        taken as MD5s, which is right for every bucket that does not use KMS)."""
        start = listing_prefix(prefix)
        client = self._connect()
        etags_are_md5 = self._etags_are_md5(client)
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": start + "/" if start else ""}
        if self.list_page_size:
            arguments["MaxKeys"] = self.list_page_size
        while True:
            self.listing_requests += 1
            page = self._call(f"listing {arguments['Prefix'] or 'the bucket'}",
                              client.list_objects_v2, **arguments)
            for item in page.get("Contents", ()):
                etag = str(item.get("ETag", "")).strip('"') or None
                md5 = etag if etags_are_md5 and etag and _MD5_HEX.fullmatch(etag) else None
                modified = item.get("LastModified")
                yield RemoteEntry(item["Key"], int(item.get("Size", 0)), md5=md5, etag=etag,
                                  mtime=modified.timestamp() if modified is not None else None)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            arguments["ContinuationToken"] = token

    def _etags_are_md5(self, client: Any) -> bool:
        """False if the bucket encrypts new objects with KMS by default (then no ETag is an MD5)."""
        try:
            reply = client.get_bucket_encryption(Bucket=self.bucket)
        except Exception as error:  # noqa: BLE001 - no configuration, or no permission to read it
            logger.debug("bucket %s: default encryption unknown (%s); ETags taken as MD5s",
                         self.bucket, error)
            return True
        rules = reply.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        return not any("kms" in str(rule.get("ApplyServerSideEncryptionByDefault", {})
                                    .get("SSEAlgorithm", "")).lower() for rule in rules)

    def delete(self, remote_path: str) -> None:
        key = normalize_remote_path(remote_path)
        client = self._connect()
        # S3 answers 204 whether or not the key existed: a missing file is not an error.
        self._call(f"deleting {key!r}", client.delete_object, Bucket=self.bucket, Key=key)
        logger.debug("deleted s3://%s/%s", self.bucket, key)

    def upload(self, local_path: str, remote_path: str, options: ObjectOptions | None = None) -> str:
        key = normalize_remote_path(remote_path)
        arguments = self._object_arguments(key, options)
        try:
            stat = os.stat(local_path)
        except OSError as error:
            raise local_file_error(local_path, error) from error
        self._connect()
        self._cleanup_stale_uploads()
        if stat.st_size >= self.multipart_threshold:
            self._upload_multipart(local_path, key, stat.st_size, stat.st_mtime_ns, arguments)
        else:
            self._upload_single(local_path, key, arguments)
        logger.debug("uploaded %s to s3://%s/%s", local_path, self.bucket, key)
        return self.url_for(key)

    def _object_arguments(self, key: str, options: ObjectOptions | None = None) -> dict[str, Any]:
        """Bucket, key and metadata of the object: the server's settings, overridden by the
        destination's and by what the processor said the file is (`options`)."""
        options = options or ObjectOptions()
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": key,
                                     "ContentType": content_type_for(options.typed_as or key)}
        if options.content_encoding:
            arguments["ContentEncoding"] = options.content_encoding
        cache_control = options.setting("cache_control", self.cache_control)
        if cache_control:
            arguments["CacheControl"] = cache_control
        expires = options.setting("expires", None)
        expires_at = self.expires if expires is None else (
            email.utils.parsedate_to_datetime(expires) if expires else None)
        if expires_at:
            arguments["Expires"] = expires_at
        acl = options.setting("acl", self.acl)
        if acl:
            arguments["ACL"] = acl
        storage_class = options.setting("storage_class", self.storage_class)
        if storage_class:
            arguments["StorageClass"] = storage_class
        return arguments

    def _upload_single(self, local_path: str, key: str, arguments: Mapping[str, Any]) -> None:
        # Below the threshold (at most 5 GiB). Up to IN_MEMORY_MAX: one read, sent from memory.
        # Above: hashed in one pass, then streamed from the file; the object is the bytes the
        # hashing pass read (a file still growing is sent up to there).
        what = f"uploading {local_path!r} to {key!r}"
        try:
            fd = open_regular_fd(local_path, self.source_root_for(local_path))
        except OSError as error:
            raise local_file_error(local_path, error) from error
        try:
            head = os.read(fd, IN_MEMORY_MAX + 1)
            body: bytes | FileRange
            if len(head) <= IN_MEMORY_MAX:
                body = head
                md5_b64, length = _md5_b64(head), len(head)
            else:
                md5_b64, _digest, length = FileRange(fd, 0, MAX_PART_SIZE, what).md5()
                body = FileRange(fd, 0, length, what)
            self._call(what, self._connect().put_object, Body=body, ContentMD5=md5_b64,
                       ContentLength=length, **arguments)
        except OSError as error:
            raise RetryableError(f"cannot read {local_path!r}: {error}") from error
        finally:
            os.close(fd)

    # -- multipart -------------------------------------------------------------------------------

    def part_size_for(self, size: int) -> int:
        """The configured chunk size, grown (in whole MiB) to stay within 10,000 parts."""
        part_size = max(self.multipart_chunksize, MIN_PART_SIZE)
        if -(-size // part_size) > MAX_PARTS:
            part_size = -(-(-(-size // MAX_PARTS)) // MiB) * MiB
        return part_size

    def _upload_multipart(self, local_path: str, key: str, size: int, mtime_ns: int,
                          arguments: Mapping[str, Any]) -> None:
        client = self._connect()
        checkpoints = self.checkpoints
        part_size = self.part_size_for(size)
        part_count = -(-size // part_size)
        what = f"uploading {local_path!r} to {key!r}"
        self.stats.uploads += 1

        upload_id: str | None = None
        reusable: dict[int, tuple[str, int]] = {}
        previous = checkpoints.find(self.bucket, key, local_path)
        if previous is not None:
            old_id, old_size, old_mtime, old_part_size = previous
            if (old_size, old_mtime, old_part_size) == (size, mtime_ns, part_size):
                recorded = checkpoints.parts(old_id)
                server_parts = self._list_parts(key, old_id)
                if server_parts is None:
                    logger.info("multipart upload of %s is unknown to the server; starting over",
                                key)
                    self.stats.parts_resent += len(recorded)
                    checkpoints.forget(old_id)
                else:
                    upload_id = old_id
                    reusable = self._verified_parts(recorded, server_parts, size, part_size,
                                                    part_count)
                    self.stats.parts_resent += len(set(recorded) - set(reusable))
                    self.stats.resumed += 1
                    logger.info("resuming multipart upload of %s: %d of %d parts already there",
                                key, len(reusable), part_count)
            else:
                logger.info("%s changed since its multipart upload began; aborting that upload",
                            local_path)
                self._abort(key, old_id)
        if upload_id is None:
            created = self._call(what, client.create_multipart_upload, **arguments)
            upload_id = str(created["UploadId"])
            checkpoints.start(self.bucket, key, local_path, size, mtime_ns, part_size, upload_id)

        try:
            etags = self._send_parts(local_path, key, upload_id, size, part_size, part_count,
                                     reusable)
            expected_etag = self._complete(key, upload_id, etags)
        except (PermanentError, ConfigurationError):
            self._abort(key, upload_id)
            raise
        checkpoints.forget(upload_id)
        logger.debug("completed multipart upload of %s (%d parts, ETag %s)", key, part_count,
                     expected_etag)

    def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]] | None:
        """The server's parts of `upload_id` (number -> (ETag, size)); None if it has no such
        upload (completed, aborted, expired, or a server that lost its state)."""
        client = self._connect()
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        for _page in range(MAX_PARTS // 1000 + 1):
            try:
                response = client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumberMarker=marker)
            except botocore.exceptions.ClientError as error:
                code, status = _error_code(error)
                if code == "NoSuchUpload" or status == 404:
                    return None
                raise _classify(error, f"listing parts of {key!r}", self.bucket) from error
            except Exception as error:
                raise _classify(error, f"listing parts of {key!r}", self.bucket) from error
            for part in response.get("Parts", []):
                parts[int(part["PartNumber"])] = (str(part["ETag"]).strip('"'), int(part["Size"]))
            if not response.get("IsTruncated"):
                break
            marker = int(response.get("NextPartNumberMarker", 0))
        return parts

    def _verified_parts(self, recorded: Mapping[int, tuple[str, int]],
                        server: Mapping[int, tuple[str, int]], size: int, part_size: int,
                        part_count: int) -> dict[int, tuple[str, int]]:
        """Parts safe to keep: on the server with the size and ETag the checkpoint recorded.

        A part the server has but the checkpoint lacks (the crash came between the server's
        answer and our commit) is sent again: without its recorded MD5 we cannot vouch for it."""
        keep: dict[int, tuple[str, int]] = {}
        for number, (etag, part_bytes) in recorded.items():
            if not 1 <= number <= part_count:
                continue
            expected = min(part_size, size - (number - 1) * part_size)
            if server.get(number) == (etag, part_bytes) and part_bytes == expected:
                keep[number] = (etag, part_bytes)
        return keep

    def _send_parts(self, local_path: str, key: str, upload_id: str, size: int, part_size: int,
                    part_count: int, reusable: Mapping[int, tuple[str, int]]) -> dict[int, str]:
        """Upload the missing parts, `multipart_concurrency` at a time; ETags by part number."""
        etags = {number: etag for number, (etag, _size) in reusable.items()}
        self.stats.parts_reused += len(reusable)
        missing = [n for n in range(1, part_count + 1) if n not in reusable]
        if not missing:
            return etags
        try:
            fd = open_regular_fd(local_path, self.source_root_for(local_path))
        except OSError as error:
            raise local_file_error(local_path, error) from error
        client = self._connect()
        stop = threading.Event()

        def send(number: int) -> tuple[int, str]:
            if stop.is_set():
                raise RetryableError("multipart upload stopped after another part failed")
            offset = (number - 1) * part_size
            length = min(part_size, size - offset)
            what = f"uploading part {number}/{part_count} of {key!r}"
            body = FileRange(fd, offset, length, what)
            md5_b64, digest, found = body.md5()
            if found != length:
                raise PermanentError(f"{local_path!r} shrank during the upload; it will be "
                                     "uploaded again when it is complete")
            response = self._call(
                what, client.upload_part, Bucket=self.bucket, Key=key, UploadId=upload_id,
                PartNumber=number, Body=body, ContentMD5=md5_b64, ContentLength=length)
            etag = str(response["ETag"]).strip('"')
            if re.fullmatch(r"[0-9a-f]{32}", etag) and etag != digest.hex():
                raise RetryableError(f"part {number} of {key!r}: the server stored different "
                                     "bytes (ETag is not the part's MD5)")
            self.checkpoints.add_part(upload_id, number, etag, length)
            self.stats.parts_sent += 1
            return number, etag

        errors: list[TransporterError] = []
        try:
            workers = min(self.multipart_concurrency, len(missing))
            with concurrent.futures.ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix=f"s3-parts-{key[-20:]}") as pool:
                futures = [pool.submit(send, number) for number in missing]
                for future in concurrent.futures.as_completed(futures):
                    try:
                        number, etag = future.result()
                        etags[number] = etag
                    except Exception as failure:  # classified; the other parts stop
                        stop.set()
                        errors.append(failure if isinstance(failure, TransporterError) else
                                      RetryableError(f"uploading a part of {key!r}: {failure}"))
        finally:
            os.close(fd)
        if errors:
            # The most severe error decides what the pipeline does with the file.
            for kind in (ConfigurationError, PermanentError, ServerUnavailableError):
                for candidate in errors:
                    if isinstance(candidate, kind):
                        raise candidate
            raise errors[0]
        return etags

    def _complete(self, key: str, upload_id: str, etags: Mapping[int, str]) -> str:
        numbers = sorted(etags)
        expected = hashlib.md5(b"".join(bytes.fromhex(etags[n]) for n in numbers
                                        if re.fullmatch(r"[0-9a-f]{32}", etags[n])))
        expected_etag = f"{expected.hexdigest()}-{len(numbers)}"
        response = self._call(
            f"completing the multipart upload of {key!r}", self._connect().complete_multipart_upload,
            Bucket=self.bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{etags[n]}"'}
                                       for n in numbers]})
        etag = str(response.get("ETag", "")).strip('"')
        if re.fullmatch(r"[0-9a-f]{32}-\d+", etag) and etag != expected_etag:
            raise RetryableError(f"multipart upload of {key!r} completed with ETag {etag}, "
                                 f"expected {expected_etag}: the object is corrupt; retrying")
        return etag

    def _abort(self, key: str, upload_id: str) -> None:
        """Abort an upload and forget its checkpoint; an upload the server no longer knows is
        fine. Failures are logged: the checkpoint stays so a later start-up cleans it up."""
        try:
            self._connect().abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
        except botocore.exceptions.ClientError as error:
            code, status = _error_code(error)
            if code != "NoSuchUpload" and status != 404:
                logger.warning("could not abort multipart upload of %s: %s", key, error)
                return
        except Exception as error:  # network trouble: keep the checkpoint for later
            logger.warning("could not abort multipart upload of %s: %s", key, error)
            return
        self.stats.aborted += 1
        self.checkpoints.forget(upload_id)

    def _cleanup_stale_uploads(self) -> None:
        """Once per process and bucket: abort checkpointed uploads whose file changed or went."""
        path = self.checkpoint_path
        with _cleaned_up_lock:
            if (path, self.bucket) in _cleaned_up:
                return
            _cleaned_up.add((path, self.bucket))
        if not os.path.exists(path):
            return
        for upload_id, key, local_path, size, mtime_ns in self.checkpoints.all_for_bucket(
                self.bucket):
            try:
                stat = os.stat(local_path)
                unchanged = (stat.st_size, stat.st_mtime_ns) == (size, mtime_ns)
            except OSError:
                unchanged = False
            if not unchanged:
                logger.info("aborting the stale multipart upload of %s (%s changed or is gone)",
                            key, local_path)
                self._abort(key, upload_id)


def forget_cleanup_marks() -> None:
    """Tests: make the next transporter clean up stale uploads again, as after a restart."""
    with _cleaned_up_lock:
        _cleaned_up.clear()
