"""`cf`: S3 as the origin of a CloudFront distribution, with batched cache invalidations.

Everything about storing objects is `s3`'s (this is a subclass). What is added:

* URLs on the distribution's domain (`distro_domain_name`, as in the original; `url_base` still
  wins when set).
* **Invalidation only where a cached copy can be stale**: when an upload overwrites a key that
  existed (a HEAD before the PUT tells) or a delete removes one. A new key needs none, and unique
  file names (the `unique_filename` processors) make invalidations unnecessary altogether; then
  set `invalidate` to false and the HEAD is skipped too.
* **Coalescing across instances**: the pool gives each worker thread its own transporter, but
  CloudFront's limits are per distribution (at most 3,000 paths in flight; each path beyond the
  free 1,000 a month costs money). So paths go to one module-level `InvalidationCoalescer` per
  distribution, which waits `invalidation_window` seconds after the first pending path, then
  sends one `CreateInvalidation` with every pending path that fits under the in-flight limit. Its
  thread exits when nothing is pending; `close()` (the pipeline calls it on shutdown) flushes.
* **Durable**: pending paths are written to `cf-invalidations.db` (SQLite, 0600) in the state
  directory before `upload`/`delete` return, and removed once CloudFront accepted them, so a
  crash inside the window does not leave stale copies cached for the object's max-age (the
  original's far-future headers make that ten years). They are sent at the next start.
* **distribution_id** may be given; otherwise it is looked up once by domain name (or alias) with
  `ListDistributions`.

CloudFront is a global service: its client is made in us-east-1 and never uses `endpoint_url`
(which may point at an S3-compatible origin); `cloudfront_endpoint_url` exists for tests.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
import uuid
from typing import Any, ClassVar, Mapping

import boto3
import botocore.config
import botocore.exceptions

from fileconveyor.transporters.base import (
    ConfigurationError,
    ObjectOptions,
    PermanentError,
    RetryableError,
    TransporterContext,
    TransporterError,
    normalize_remote_path,
)
from fileconveyor.transporters.s3 import S3Transporter, SQLiteState, _classify, parse_bool

logger = logging.getLogger(__name__)

TRANSPORTER_CLASS = "CloudFrontTransporter"

#: CloudFront allows 3,000 individual paths in flight per distribution.
MAX_PATHS_IN_FLIGHT = 3000
#: Attempts to send one batch before its paths are logged as given up.
MAX_ATTEMPTS = 8


class InvalidationStore(SQLiteState):
    """Pending invalidation paths on disk, per distribution."""

    # A set per distribution: the same path pending twice is invalidated once.
    DDL = ("""
        CREATE TABLE IF NOT EXISTS pending_invalidations (
            distribution TEXT NOT NULL, path TEXT NOT NULL, added REAL NOT NULL,
            PRIMARY KEY (distribution, path))""",)

    def add(self, distribution: str, paths: list[str]) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO pending_invalidations VALUES (?, ?, ?)",
                           [(distribution, path, now) for path in paths])

    def remove(self, distribution: str, paths: list[str]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM pending_invalidations WHERE distribution = ? AND path = ?",
                           [(distribution, path) for path in paths])

    def pending(self, distribution: str) -> list[str]:
        with self._transaction() as db:
            rows = db.execute("SELECT path FROM pending_invalidations WHERE distribution = ? "
                              "ORDER BY added", (distribution,)).fetchall()
        return [row[0] for row in rows]


class InvalidationCoalescer:
    """Batches invalidation paths for one distribution over a window; shared by every
    transporter instance of the process that targets it (see `coalescer_for`)."""

    def __init__(self, client: Any, distribution_key: str, domain_name: str,
                 distribution_id: str | None, window: float, store: InvalidationStore) -> None:
        self.client = client
        self.key = distribution_key
        self.domain_name = domain_name
        self.distribution_id = distribution_id
        self.window = window
        self.store = store
        self._condition = threading.Condition()
        self._pending: dict[str, int] = dict.fromkeys(store.pending(distribution_key), 0)
        self._first_pending: float | None = time.monotonic() if self._pending else None
        self._flush_requested = False
        self._in_flight: dict[str, int] = {}  # invalidation id -> number of paths
        self._thread: threading.Thread | None = None
        #: Ids of every invalidation created, for reports and tests.
        self.created: list[str] = []
        if self._pending:
            logger.info("%d invalidation paths for %s left from the last run; sending them",
                        len(self._pending), domain_name)
            self._ensure_thread()

    def add(self, paths: list[str]) -> None:
        """Queue `paths` (durably) for the next batch."""
        if not paths:
            return
        self.store.add(self.key, paths)
        with self._condition:
            for path in paths:
                self._pending.setdefault(path, 0)
            if self._first_pending is None:
                self._first_pending = time.monotonic()
            self._ensure_thread()
            self._condition.notify_all()

    def flush(self, timeout: float) -> bool:
        """Send everything pending now; True if nothing is left pending within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._condition:
            if not self._pending:
                return True
            self._flush_requested = True
            self._ensure_thread()
            self._condition.notify_all()
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._thread is None:
                    break
                self._condition.wait(remaining)
            return not self._pending

    def _ensure_thread(self) -> None:
        # Called with the condition held.
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"cf-invalidate-{self.domain_name}")
            self._thread.start()

    def _run(self) -> None:
        """Loop: wait out the window, send a batch within the in-flight limit; exit when idle."""
        backoff = 1.0
        while True:
            with self._condition:
                if not self._pending:
                    self._thread = None
                    self._flush_requested = False
                    self._condition.notify_all()
                    return
                due = (self._first_pending or time.monotonic()) + self.window
                if not self._flush_requested and time.monotonic() < due:
                    self._condition.wait(due - time.monotonic())
                    continue
                batch = list(self._pending)[:MAX_PATHS_IN_FLIGHT]
            try:
                sent = self._send(batch)
                backoff = 1.0
            except TransporterError as error:
                if isinstance(error, ConfigurationError):
                    self._give_up(batch, error)
                else:
                    self._record_failure(batch, error)
                with self._condition:
                    self._condition.wait(backoff)  # retry backoff, woken early by flush/close
                backoff = min(backoff * 2, 30.0)
                continue
            if not sent:
                # CloudFront's in-flight limit is reached: wait for our invalidations to finish
                # (they take minutes on AWS), checking again every 15 s; not a failure.
                with self._condition:
                    self._condition.wait(15.0)
                continue
            with self._condition:
                for path in sent:
                    self._pending.pop(path, None)
                self._first_pending = time.monotonic() if self._pending else None
                self._condition.notify_all()

    def _record_failure(self, batch: list[str], error: Exception) -> None:
        with self._condition:
            for path in batch:
                if path in self._pending:
                    self._pending[path] += 1
            dropped = [p for p in batch if self._pending.get(p, 0) >= MAX_ATTEMPTS]
        if dropped:
            self._give_up(dropped, error)
        else:
            logger.warning("invalidating %d paths on %s failed (%s); will retry", len(batch),
                           self.domain_name, error)

    def _give_up(self, paths: list[str], error: Exception) -> None:
        logger.error("gave up invalidating %d paths on %s (%s): %s", len(paths),
                     self.domain_name, error, ", ".join(paths[:20]))
        self.store.remove(self.key, paths)
        with self._condition:
            for path in paths:
                self._pending.pop(path, None)
            self._condition.notify_all()

    def _send(self, batch: list[str]) -> list[str]:
        """Create one invalidation with as much of `batch` as the in-flight limit allows; the
        paths sent (none while the limit is reached)."""
        distribution_id = self.resolve_distribution_id()
        room = self._room_in_flight(distribution_id)
        if room <= 0:
            logger.info("%d paths already being invalidated on %s; waiting for some to complete",
                        MAX_PATHS_IN_FLIGHT, self.domain_name)
            return []
        paths = batch[:room]
        try:
            response = self.client.create_invalidation(
                DistributionId=distribution_id,
                InvalidationBatch={"Paths": {"Quantity": len(paths), "Items": paths},
                                   "CallerReference": f"fileconveyor-{uuid.uuid4()}"})
        except Exception as error:
            raise _classify_cloudfront(error, f"invalidating {len(paths)} paths") from error
        invalidation = response["Invalidation"]
        if str(invalidation.get("Status", "")).lower() != "completed":
            self._in_flight[invalidation["Id"]] = len(paths)
        self.created.append(invalidation["Id"])
        self.store.remove(self.key, paths)
        logger.info("invalidating %d paths on %s (invalidation %s)", len(paths), self.domain_name,
                    invalidation["Id"])
        return paths

    def _room_in_flight(self, distribution_id: str) -> int:
        """Paths we may still send: refresh the status of our in-flight invalidations first."""
        for invalidation_id in list(self._in_flight):
            try:
                status = self.client.get_invalidation(
                    DistributionId=distribution_id, Id=invalidation_id)["Invalidation"]["Status"]
            except Exception as error:
                raise _classify_cloudfront(error, "checking an invalidation") from error
            if str(status).lower() == "completed":
                del self._in_flight[invalidation_id]
        return MAX_PATHS_IN_FLIGHT - sum(self._in_flight.values())

    def resolve_distribution_id(self) -> str:
        """The distribution's id, looked up by domain name (or alias) if not configured."""
        if self.distribution_id:
            return self.distribution_id
        marker = ""
        for _page in range(100):
            try:
                listing = self.client.list_distributions(**({"Marker": marker} if marker else {}))
            except Exception as error:
                raise _classify_cloudfront(error, "listing distributions") from error
            page = listing.get("DistributionList", {})
            for item in page.get("Items", []) or []:
                aliases = item.get("Aliases", {}).get("Items", []) or []
                if self.domain_name == item.get("DomainName") or self.domain_name in aliases:
                    self.distribution_id = str(item["Id"])
                    return self.distribution_id
            marker = page.get("NextMarker", "")
            if not page.get("IsTruncated") or not marker:
                break
        raise ConfigurationError(
            f"no CloudFront distribution has the domain name or alias {self.domain_name!r}; fix "
            "<distro_domain_name>, or give <distribution_id>")


def _classify_cloudfront(error: Exception, what: str) -> TransporterError:
    if isinstance(error, botocore.exceptions.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("TooManyInvalidationsInProgress", "Throttling", "ServiceUnavailable"):
            return RetryableError(f"{what}: CloudFront answered {code}")
        if code in ("NoSuchDistribution", "AccessDenied", "InvalidClientTokenId",
                    "SignatureDoesNotMatch"):
            return ConfigurationError(
                f"{what}: CloudFront answered {code}; check <distribution_id>, "
                "<distro_domain_name> and that the credentials may create invalidations")
    return _classify(error, what, "(cloudfront)")


_coalescers: dict[tuple[str, ...], InvalidationCoalescer] = {}
_coalescers_lock = threading.Lock()


def coalescer_for(transporter: "CloudFrontTransporter") -> InvalidationCoalescer:
    """The process-wide coalescer of the transporter's distribution (made on first use)."""
    key = (transporter.cloudfront_endpoint or "aws", transporter.settings.get("access_key_id", ""),
           transporter.distribution_key)
    with _coalescers_lock:
        coalescer = _coalescers.get(key)
        if coalescer is None:
            coalescer = InvalidationCoalescer(
                transporter.make_cloudfront_client(), transporter.distribution_key,
                transporter.distro_domain_name,
                (transporter.settings.get("distribution_id") or "").strip() or None,
                transporter.invalidation_window,
                InvalidationStore(os.path.join(transporter.context.state_dir,
                                               "cf-invalidations.db")))
            _coalescers[key] = coalescer
        return coalescer


def flush_all(timeout: float = 60.0) -> bool:
    """Flush every coalescer of the process (shutdown, tests)."""
    with _coalescers_lock:
        coalescers = list(_coalescers.values())
    return all(coalescer.flush(timeout) for coalescer in coalescers)


def forget_coalescers() -> None:
    """Tests: drop every coalescer, as a new process would start without them."""
    flush_all()
    with _coalescers_lock:
        _coalescers.clear()


class CloudFrontTransporter(S3Transporter):
    """S3 upload plus CloudFront URLs and coalesced invalidations of overwritten objects."""

    name = "cf"
    valid_settings = S3Transporter.valid_settings | frozenset({
        "distro_domain_name", "distribution_id", "invalidate", "invalidation_window",
        "cloudfront_endpoint_url",
    })
    required_settings = S3Transporter.required_settings | frozenset({"distro_domain_name"})
    default_settings: ClassVar[Mapping[str, str]] = {
        **S3Transporter.default_settings,
        "invalidate": "true",
        # Long enough to gather a burst of overwrites into one invalidation, short enough that
        # a changed file shows on the CDN soon after it was synced.
        "invalidation_window": "5",
    }
    can_invalidate = True

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        self.distro_domain_name = self.settings["distro_domain_name"].strip().rstrip("/")
        self.should_invalidate = parse_bool(self.settings["invalidate"])
        self.invalidation_window = float(self.settings["invalidation_window"])
        self.cloudfront_endpoint = (
            (self.settings.get("cloudfront_endpoint_url") or "").strip().rstrip("/") or None)
        self.distribution_key = ((self.settings.get("distribution_id") or "").strip()
                                 or self.distro_domain_name)

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        merged = {**cls.default_settings, **settings}
        domain = (merged.get("distro_domain_name") or "").strip()
        if domain and ("://" in domain or "/" in domain.rstrip("/")):
            problems.append(f"<distro_domain_name> {domain!r} must be a bare host name such as "
                            "d111111abcdef8.cloudfront.net (no scheme, no path)")
        try:
            parse_bool(merged["invalidate"])
        except ValueError:
            problems.append("<invalidate> must be true or false")
        try:
            window = float(merged["invalidation_window"])
            if not 0 <= window <= 3600:
                raise ValueError
        except ValueError:
            problems.append("<invalidation_window> must be a number of seconds from 0 to 3600")
        endpoint = (merged.get("cloudfront_endpoint_url") or "").strip()
        if endpoint and urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
            problems.append("<cloudfront_endpoint_url> must be an http(s) URL")
        return problems

    def base_url(self) -> str:
        if (self.settings.get("url_base") or "").strip():
            return super().base_url()
        return f"{self.url_scheme}://{self.distro_domain_name}"

    def make_cloudfront_client(self) -> Any:
        """A new CloudFront client; the coalescer owns it (it outlives this instance)."""
        session = boto3.session.Session(
            aws_access_key_id=self.settings.get("access_key_id") or None,
            aws_secret_access_key=self.settings.get("secret_access_key") or None,
            region_name="us-east-1")
        return session.client(
            "cloudfront", endpoint_url=self.cloudfront_endpoint,
            config=botocore.config.Config(
                connect_timeout=min(self.context.timeout, 10.0),
                read_timeout=self.context.timeout,
                retries={"total_max_attempts": 2, "mode": "standard"}))

    def invalidation_path(self, remote_path: str) -> str:
        """The path CloudFront matches: the URL's path, percent-encoded the same way."""
        return urllib.parse.urlsplit(self.url_for(remote_path)).path

    def probe(self) -> None:
        super().probe()
        if self.should_invalidate:
            coalescer_for(self).resolve_distribution_id()

    def _existed(self, key: str) -> bool:
        """Is there a (possibly cached) object at `key`? When S3 will not say, assume so: an
        unneeded invalidation costs little, a stale CDN copy lasts the object's max-age. The
        upload or delete that follows raises the real, classified error."""
        if not self.should_invalidate:
            return False
        try:
            return self.exists(key)
        except (ConfigurationError, PermanentError):
            return True

    def upload(self, local_path: str, remote_path: str, options: ObjectOptions | None = None) -> str:
        key = normalize_remote_path(remote_path)
        existed = self._existed(key)
        url = super().upload(local_path, key, options)
        if existed:
            coalescer_for(self).add([self.invalidation_path(key)])
        return url

    def delete(self, remote_path: str) -> None:
        key = normalize_remote_path(remote_path)
        existed = self._existed(key)
        super().delete(key)
        if existed:
            coalescer_for(self).add([self.invalidation_path(key)])

    def invalidate(self, remote_paths: list[str]) -> None:
        coalescer_for(self).add([self.invalidation_path(p) for p in remote_paths])

    def close(self) -> None:
        # The pipeline closes every transporter on shutdown: send what is pending now rather
        # than leave it to the next start.
        if self.should_invalidate:
            with _coalescers_lock:
                coalescers = [c for c in _coalescers.values() if c.key == self.distribution_key]
            for coalescer in coalescers:
                if not coalescer.flush(self.context.timeout):
                    logger.warning("invalidations for %s still pending at close; they will be "
                                   "sent at the next start", self.distro_domain_name)
        super().close()
