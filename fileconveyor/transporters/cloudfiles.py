"""Rackspace Cloud Files / OpenStack Swift transporter (python-swiftclient).

Also reachable as `mosso` and `cumulus`, the original's historical names. The original settings
`username`, `api_key` and `container` keep their meaning; by default they authenticate against
Rackspace's legacy v1.0 identity endpoint with the API key, exactly what python-cloudfiles and
django-cumulus did. Any other Swift: set `auth_url` and `auth_version` (1 for tempauth/swauth;
2 or 3 for Keystone, which also needs python-keystoneclient) and the tenant/project settings.

Protocol notes this module is shaped by:

* **Atomic by nature.** Swift makes an object visible only once the whole PUT has arrived, so
  there is no temporary name. Integrity: the request carries the MD5 as `ETag`, and Swift refuses
  (422) a body that does not match it.
* **The URL.** `url_base` if set (a CDN domain, e.g. Rackspace's `https://....rackcdn.com`);
  otherwise the container's public URL, the storage URL from the auth reply + `/container`. That
  needs an auth reply, but `url_for` is on the hot path (every synced file): the storage URL is
  learnt once and kept in `cloudfiles-url.json` in the state directory (0600, written atomically,
  one entry per auth URL, auth version, user, tenant/project and region), so a restart does not
  authenticate either. Every operation that (re)authenticates compares the connection's storage
  URL with the cached one and replaces it when the renewed auth moved the account.
  Objects are only readable there if the container is public: `public = true` gives a container
  this transporter creates, or one whose read ACL lacks it, `X-Container-Read: .r:*`.
* **Retries.** swiftclient's own retry loop is switched off (`retries=0`): the pipeline retries
  with backoff, and a retry hidden in here would hide a dead server from the pool.
* **Errors.** `ClientException.http_status`: 401 bad credentials (configuration), 403/400/413
  refused (permanent), 404 container gone (recreated once), 408/422/429/498/5xx transient. No
  status means the connection failed: refused connections are ServerUnavailableError. A 401 on a
  request for one object (swiftclient has already re-authenticated once) pauses the server only
  if authenticating fails too; otherwise only that object is refused (PermanentError). A missing
  container that these credentials may not create is a ConfigurationError.
* **Headers.** Content-Type from the name (`base.content_type_for`, as S3: a `.gz` name is sent
  as gzip, never as the inner type without an encoding); `cache_control` and `expires` (none by
  default), which a destination may set for its own objects (original issue #159); a
  pre-compressed copy goes up with the Content-Type of the file it compresses and its
  Content-Encoding. Swift has no per-object ACL (read access is the container's), so a
  destination cannot make single objects private: give private files a container of their own.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import tempfile
import urllib.parse
from typing import Any, Callable, ClassVar, Iterator, Mapping, TypeVar

import requests
import swiftclient.client
from swiftclient.exceptions import ClientException

from fileconveyor.transporters.base import (
    ConfigurationError,
    ObjectOptions,
    PermanentError,
    RemoteEntry,
    RetryableError,
    ServerUnavailableError,
    Transporter,
    TransporterContext,
    TransporterError,
    content_type_for,
    http_date_problems,
    join_url,
    listing_prefix,
    normalize_remote_path,
    open_local_file,
)

logger = logging.getLogger(__name__)

TRANSPORTER_CLASS = "CloudFilesTransporter"

T = TypeVar("T")

RACKSPACE_AUTH_URL = "https://auth.api.rackspacecloud.com/v1.0"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_RETRYABLE_STATUS = {408, 409, 422, 429, 498, 499}
_HASH_BLOCK = 1024 * 1024
_OS_OPTIONS = {"project_name": "project_name", "user_domain_name": "user_domain_name",
               "project_domain_name": "project_domain_name", "region": "region_name",
               "tenant_name": "tenant_name"}


def _refused(error: BaseException) -> bool:
    """Did the TCP connection never open (refused, unreachable, DNS, connect timeout)?"""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if not isinstance(error, requests.exceptions.ConnectionError):
        return False
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo and len(seen) < 20:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        name = type(item).__name__
        if name in ("NewConnectionError", "NameResolutionError", "ConnectionRefusedError"):
            return True
        todo.extend(a for a in getattr(item, "args", ()) if isinstance(a, BaseException))
        for attr in ("reason", "__cause__", "__context__"):
            value = getattr(item, attr, None)
            if isinstance(value, BaseException):
                todo.append(value)
    return False


class CloudFilesTransporter(Transporter):
    """Upload objects to one Swift container; URLs on `url_base` or the container's URL."""

    name = "cloudfiles"
    valid_settings = frozenset({
        "username", "api_key", "container", "auth_url", "auth_version", "tenant_name",
        "project_name", "user_domain_name", "project_domain_name", "region", "url_base",
        "public", "cache_control", "expires",
    })
    required_settings = frozenset({"username", "api_key", "container"})
    object_settings = frozenset({"cache_control", "expires"})
    keeps_object_metadata = True
    default_settings: ClassVar[Mapping[str, str]] = {
        "auth_url": RACKSPACE_AUTH_URL, "auth_version": "1", "public": "false",
    }
    can_list = True

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        self._conn: swiftclient.client.Connection | None = None
        self._container_ready = False
        self._storage_url: str | None = None  # learnt or read from the URL cache

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        for key in ("auth_url", "url_base"):
            value = settings.get(key, "")
            if value and urllib.parse.urlsplit(value).scheme not in ("http", "https"):
                problems.append(f"<{key}> must be an http:// or https:// URL, not {value!r}")
        version = settings.get("auth_version", "1").strip()
        if version not in ("1", "1.0", "2", "2.0", "3"):
            problems.append(f"<auth_version> must be 1, 2 or 3, not {version!r}")
        public = settings.get("public", "false").strip().lower()
        if public not in _TRUE | _FALSE:
            problems.append(f"<public> must be true or false, not {public!r}")
        if "/" in settings.get("container", ""):
            problems.append("<container> is a container name and cannot contain '/'")
        return problems + http_date_problems(settings, "expires")

    def _headers(self, relative: str, options: ObjectOptions | None) -> dict[str, str]:
        """Content-Type and the other headers of the object: the server's settings, overridden
        by the destination's and by what the processor said the file is."""
        options = options or ObjectOptions()
        headers = {"Content-Type": content_type_for(options.typed_as or relative)}
        if options.content_encoding:
            headers["Content-Encoding"] = options.content_encoding
        for setting, header in (("cache_control", "Cache-Control"), ("expires", "Expires")):
            value = options.setting(setting, (self.settings.get(setting) or "").strip())
            if value:
                headers[header] = value
        return headers

    @property
    def container(self) -> str:
        return self.settings["container"].strip()

    # -- connection --------------------------------------------------------------------------------

    def _connection(self) -> swiftclient.client.Connection:
        if self._conn is None:
            os_options = {option: self.settings[key].strip()
                          for key, option in _OS_OPTIONS.items() if self.settings.get(key)}
            self._conn = swiftclient.client.Connection(
                authurl=self.settings["auth_url"].strip(), user=self.settings["username"],
                key=self.settings["api_key"], auth_version=self.settings["auth_version"].strip(),
                tenant_name=self.settings.get("tenant_name") or None, os_options=os_options,
                retries=0, timeout=self.context.timeout, retry_on_ratelimit=False)
            self._container_ready = False
        return self._conn

    def _error(self, action: str, error: BaseException) -> TransporterError:
        where = f"Swift {action}"
        if isinstance(error, ClientException):
            status = error.http_status
            if status == 401:
                return ConfigurationError(
                    f"{where}: authentication failed ({error.msg}); check <username>, <api_key> "
                    f"and <auth_url> ({self.settings['auth_url']})")
            if status is None:
                return RetryableError(f"{where} failed: {error}")
            if status >= 500 or status in _RETRYABLE_STATUS:
                return RetryableError(f"{where}: transient server error {status} ({error.msg})")
            return PermanentError(f"{where} refused: {status} {error.reason or error.msg}")
        if _refused(error):
            return ServerUnavailableError(f"{where}: cannot connect to "
                                          f"{self.settings['auth_url']}: {error}")
        return RetryableError(f"{where} failed: {error or type(error).__name__}")

    def _run(self, action: str, operation: Callable[[swiftclient.client.Connection], T]) -> T:
        conn = self._connection()
        try:
            result = operation(conn)
            if conn.url and conn.url != self._storage_url and not self.settings.get("url_base"):
                self._remember_storage_url(str(conn.url))  # (re)authenticated: new endpoint?
            return result
        except TransporterError:
            raise
        except Exception as error:
            classified = self._error(action, error)
            if isinstance(error, ClientException) and error.http_status == 401 \
                    and action != "authentication" and self._authenticates(conn):
                classified = PermanentError(
                    f"Swift {action} refused (401) although these credentials authenticate: "
                    "the account may not access this object")
            if isinstance(classified, RetryableError) or isinstance(error, ClientException) and \
                    error.http_status == 401:
                self.close()  # a fresh connection (and token) for the next attempt
            raise classified from None

    @staticmethod
    def _authenticates(conn: swiftclient.client.Connection) -> bool:
        """Do the settings still get a token? (Only asked after a 401, to tell bad credentials,
        which pause the server, from one refused object, which does not.)"""
        try:
            conn.get_auth()
        except Exception:  # noqa: BLE001 - any failure: not usable, the 401 stands
            return False
        return True

    def _ensure_container(self, conn: swiftclient.client.Connection) -> None:
        """Create the container if missing; make it public if `public` says so."""
        if self._container_ready:
            return
        public = self.settings["public"].strip().lower() in _TRUE
        try:
            headers = conn.head_container(self.container)
        except ClientException as error:
            if error.http_status != 404:
                raise
            try:
                conn.put_container(self.container, headers={"X-Container-Read": ".r:*"}
                                   if public else {})
            except ClientException as refused:
                if refused.http_status not in (401, 403):
                    raise
                raise ConfigurationError(
                    f"Swift container {self.container!r} does not exist and these credentials "
                    f"may not create it ({refused.http_status}); create it, or fix <container>"
                ) from None
            logger.info("created Swift container %s%s", self.container,
                        " (public)" if public else "")
        else:
            if public and ".r:*" not in headers.get("x-container-read", ""):
                conn.post_container(self.container, headers={"X-Container-Read": ".r:*"})
                logger.info("made Swift container %s public (X-Container-Read: .r:*)",
                            self.container)
        self._container_ready = True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing to save
                logger.debug("error while closing a Swift connection", exc_info=True)

    # -- URLs ----------------------------------------------------------------------------------------

    URL_CACHE = "cloudfiles-url.json"

    def _url_cache_key(self) -> str:
        """Who the cached storage URL belongs to: a change of any of these asks again."""
        parts = [self.settings[key].strip() for key in ("auth_url", "auth_version", "username")]
        parts += [self.settings.get(key, "").strip() for key in _OS_OPTIONS]
        return json.dumps(parts)

    def _url_cache_path(self) -> str:
        return os.path.join(self.context.state_dir, self.URL_CACHE)

    def _read_url_cache(self) -> dict[str, str]:
        try:
            with open(self._url_cache_path(), encoding="utf-8") as cache:
                data = json.load(cache)
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: authenticate once and write it again
        return {k: v for k, v in data.items() if isinstance(v, str)} \
            if isinstance(data, dict) else {}

    def _remember_storage_url(self, url: str) -> None:
        """Keep `url` in memory and, atomically and 0600, in the state directory."""
        self._storage_url = url
        cache = self._read_url_cache()
        if cache.get(self._url_cache_key()) == url:
            return
        cache[self._url_cache_key()] = url
        try:
            os.makedirs(self.context.state_dir, mode=0o700, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".cloudfiles-url.", dir=self.context.state_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp: 0600 already
                    json.dump(cache, out, indent=1, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self._url_cache_path())
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:  # only a cache: the next start authenticates once more
            logger.warning("cannot write the Swift URL cache %s: %s", self._url_cache_path(), error)
        else:
            logger.info("Swift storage URL for %s is %s", self.container, url)

    def url_for(self, remote_path: str) -> str:
        relative = normalize_remote_path(remote_path)
        base = self.settings.get("url_base", "").strip()
        if base:
            return join_url(base, relative)
        storage_url = self._storage_url or self._read_url_cache().get(self._url_cache_key())
        if storage_url is None:
            storage_url = self._run("authentication", lambda conn: str(conn.get_auth()[0]))
            self._remember_storage_url(storage_url)
        self._storage_url = storage_url
        container_url = storage_url.rstrip("/") + "/" + urllib.parse.quote(self.container)
        return join_url(container_url, relative)

    # -- operations --------------------------------------------------------------------------------

    def upload(self, local_path: str, remote_path: str, options: ObjectOptions | None = None) -> str:
        relative = normalize_remote_path(remote_path)
        headers = self._headers(relative, options)
        with open_local_file(local_path, self.source_root_for(local_path)) as local:
            md5 = hashlib.md5(usedforsecurity=False)
            for block in iter(lambda: local.read(_HASH_BLOCK), b""):
                md5.update(block)
            size = local.tell()

            def put(conn: swiftclient.client.Connection) -> None:
                for attempt in (1, 2):
                    self._ensure_container(conn)
                    local.seek(0)
                    try:
                        conn.put_object(self.container, relative, contents=local,
                                        content_length=size, etag=md5.hexdigest(),
                                        content_type=headers["Content-Type"], headers=headers)
                        return
                    except ClientException as error:
                        if error.http_status != 404 or attempt == 2:
                            raise
                        self._container_ready = False  # deleted under us: create it again

            self._run(f"upload of {relative}", put)
        logger.debug("uploaded %s to swift %s/%s", local_path, self.container, relative)
        return self.url_for(relative)

    def delete(self, remote_path: str) -> None:
        relative = normalize_remote_path(remote_path)

        def remove(conn: swiftclient.client.Connection) -> None:
            try:
                conn.delete_object(self.container, relative)
            except ClientException as error:
                if error.http_status != 404:
                    raise

        self._run(f"delete of {relative}", remove)

    def exists(self, remote_path: str) -> bool:
        relative = normalize_remote_path(remote_path)

        def head(conn: swiftclient.client.Connection) -> bool:
            try:
                conn.head_object(self.container, relative)
                return True
            except ClientException as error:
                if error.http_status == 404:
                    return False
                raise

        return self._run(f"HEAD of {relative}", head)

    def list_files(self, prefix: str = "") -> Iterator[RemoteEntry]:
        """The container listing, page by page (`list_page_size` names, Swift's default
        10,000) with `prefix` and `marker`, in Swift's order (UTF-8 bytes of the name). An
        object's `hash` is the MD5 of its content, except for a static large object's manifest
        (listed with `slo_etag`, or `swift_bytes` in its content type): None there. A container
        that does not exist yet lists nothing."""
        start = listing_prefix(prefix)
        marker = ""
        while True:
            def page(conn: swiftclient.client.Connection, marker: str = marker) -> list[Any]:
                self.listing_requests += 1
                try:
                    return list(conn.get_container(
                        self.container, prefix=start + "/" if start else None, marker=marker,
                        limit=self.list_page_size, full_listing=False)[1])
                except ClientException as error:
                    if error.http_status == 404:
                        return []
                    raise

            items = self._run(f"listing of {start or 'the container'}", page)
            for item in items:
                if "name" not in item:
                    continue  # a `subdir` entry (only with a delimiter, which is not sent)
                etag = str(item.get("hash") or "") or None
                large = "slo_etag" in item or "swift_bytes=" in str(item.get("content_type"))
                yield RemoteEntry(item["name"], int(item.get("bytes") or 0),
                                  md5=None if large or etag is None else etag, etag=etag,
                                  mtime=_swift_time(item.get("last_modified")))
            if not items:
                return
            marker = items[-1].get("name") or items[-1].get("subdir") or ""
            if not marker:
                return

    def probe(self) -> None:
        self._run("probe", lambda conn: conn.head_account())


def _swift_time(text: object) -> float | None:
    """Swift's listing time (`2024-01-31T12:00:00.123456`, UTC without a zone) as epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()
