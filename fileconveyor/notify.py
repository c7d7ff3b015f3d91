"""Webhook notifications: tell a chat room or an incident tool when something needs a person.

Asked for by the original's users (#70: "notify when a file fails to sync", #94: a callback when
the initial sync is done). Events, each a JSON POST to WEBHOOK_URL:

* `file_failed`: a file failed for a reason retrying will not cure (kind `permanent` or
  `configuration`); once per file per run, however often it is retried;
* `server_paused` / `server_resumed`: a server stopped answering, and came back;
* `initial_sync_done`: the backlog found at start (the initial sync on a first run) is done;
* `backlog_high`: more than WEBHOOK_BACKLOG_THRESHOLD files wait or are in flight (again only
  after it fell below half of that).

The pipeline never waits for a webhook: events go into a bounded in-memory queue (the oldest is
dropped when it is full, counted and logged) that one sender thread drains, retrying a failed POST
with exponential backoff. Notifications are best effort: they are not persisted, and a daemon that
stops drops what it could not send within a second or two (logged). With WEBHOOK_SECRET, each
request carries `X-FileConveyor-Signature: sha256=<hex HMAC-SHA256 of the body>` (GitHub's
scheme). Neither the secret nor the URL's credentials or query ever reach the log.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import hmac
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

log = logging.getLogger(__name__)

EVENTS = ("file_failed", "server_paused", "server_resumed", "initial_sync_done", "backlog_high",
          "daemon_restarted")
#: Events kept when the receiver is down; the oldest is dropped beyond this.
QUEUE_SIZE = 1000
#: Attempts at one POST (1, 2, 4, ... s apart, at most MAX_BACKOFF) before it is dropped.
MAX_ATTEMPTS = 8
MAX_BACKOFF = 60.0
#: Seconds `stop()` gives the sender to deliver what is queued.
FLUSH_TIMEOUT = 2.0
#: Files remembered as already notified (file_failed is sent once per file per run).
NOTIFIED_FILES = 10_000


def parse_webhook_url(text: str) -> str:
    """WEBHOOK_URL: an absolute http(s) URL, or empty for none."""
    url = text.strip()
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("write an absolute http:// or https:// URL, such as https://hooks.example.com/fc")
    return url


def parse_webhook_events(text: str) -> frozenset[str]:
    """WEBHOOK_EVENTS: `all`, or event names separated by commas or spaces."""
    names = {n for n in text.replace(",", " ").split() if n}
    if not names or names == {"all"}:
        return frozenset(EVENTS)
    unknown = sorted(names - set(EVENTS))
    if unknown:
        raise ValueError(f"write all, or some of {', '.join(EVENTS)} (not {', '.join(unknown)})")
    return frozenset(names)


def redacted(url: str) -> str:
    """The URL without credentials, path secrets or query: what the log may show."""
    parts = urllib.parse.urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/..."


class Webhooks:
    """The event queue and its sender thread; every method returns at once."""

    def __init__(self, settings: Any) -> None:
        self.url: str = getattr(settings, "WEBHOOK_URL", "")
        self.events: frozenset[str] = getattr(settings, "WEBHOOK_EVENTS", frozenset(EVENTS))
        self._secret: bytes = getattr(settings, "WEBHOOK_SECRET", "").encode("utf-8")
        self.threshold: int = getattr(settings, "WEBHOOK_BACKLOG_THRESHOLD", 10_000)
        self.timeout: float = getattr(settings, "WEBHOOK_TIMEOUT", 10.0)
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.sent = 0
        self._paused: dict[str, str | None] = {}
        self._notified: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._initial_done = False
        self._backlog_high = False
        self._host = socket.gethostname()

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = FLUSH_TIMEOUT) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            left = len(self._queue)
        if left:
            log.warning("%d webhook notification(s) not sent at shutdown (%s does not answer)",
                        left, redacted(self.url))

    # --- what the arbitrator reports ---------------------------------------------------------

    def emit(self, event: str, **data: Any) -> None:
        if not self.enabled or event not in self.events:
            return
        body = {"event": event, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "host": self._host, "pid": os.getpid(), **data}
        with self._cond:
            if len(self._queue) >= QUEUE_SIZE:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:
                    log.warning("Webhook queue full (%d events; %s does not keep up): dropped the oldest, "
                                "%d dropped so far", QUEUE_SIZE, redacted(self.url), self.dropped)
            self._queue.append(body)
            self._cond.notify_all()

    def file_failed(self, path: str, kind: str, reason: str, attempts: int) -> None:
        if kind not in ("permanent", "configuration") or not self.enabled:
            return
        with self._cond:
            if path in self._notified:
                return
            self._notified[path] = None
            if len(self._notified) > NOTIFIED_FILES:
                self._notified.popitem(last=False)
        self.emit("file_failed", file=path, kind=kind, reason=reason, attempts=attempts)

    def servers_changed(self, paused: Mapping[str, str | None]) -> None:
        """`paused`: server name -> why it is paused, or None when it is active."""
        if not self.enabled:
            return
        changes = []
        with self._cond:
            for server, reason in paused.items():
                before = self._paused.get(server)
                if (before is None) != (reason is None):
                    changes.append((server, reason))
                self._paused[server] = reason
        for server, reason in changes:
            if reason is None:
                self.emit("server_resumed", server=server)
            else:
                self.emit("server_paused", server=server, reason=reason)

    def backlog(self, waiting: int, in_flight: int, failed: int, settled: bool) -> None:
        """Called about once a second; `settled`: the start-up scan has delivered its events."""
        if not self.enabled:
            return
        backlog = waiting + in_flight
        if not self._initial_done and settled and backlog == 0:
            self._initial_done = True
            self.emit("initial_sync_done", failed=failed)
        if backlog > self.threshold and not self._backlog_high:
            self._backlog_high = True
            self.emit("backlog_high", waiting=waiting, in_flight=in_flight, threshold=self.threshold)
        elif backlog < self.threshold / 2:
            self._backlog_high = False

    # --- the sender ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                body = self._queue.popleft()  # the one being sent no longer counts toward the bound
            delivered = self._deliver(body)
            with self._cond:
                if delivered:
                    self.sent += 1
                if self._stopping and not delivered:
                    return

    def _deliver(self, body: dict[str, Any]) -> bool:
        """POST `body`, retrying with backoff; True when the receiver took it (2xx)."""
        data = json.dumps(body, sort_keys=True).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "fileconveyor-webhook"}
        if self._secret:
            digest = hmac.new(self._secret, data, hashlib.sha256).hexdigest()
            headers["X-FileConveyor-Signature"] = f"sha256={digest}"
        delay = 1.0
        for attempt in range(1, MAX_ATTEMPTS + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read(65536)
                return True
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code}"
                if 400 <= error.code < 500 and error.code not in (408, 429):
                    log.error("Webhook %s refused the %s event (%s); not retried", redacted(self.url),
                              body["event"], problem)
                    return False
            except (OSError, ValueError) as error:  # URLError, timeouts, resets
                problem = str(getattr(error, "reason", error)) or type(error).__name__
            log.warning("Webhook %s: %s event not delivered (attempt %d of %d: %s)", redacted(self.url),
                        body["event"], attempt, MAX_ATTEMPTS, problem)
            with self._cond:
                if attempt == MAX_ATTEMPTS or self._cond.wait_for(lambda: self._stopping, delay):
                    break
            delay = min(delay * 2, MAX_BACKOFF)
        log.error("Webhook %s: gave up on the %s event", redacted(self.url), body["event"])
        return False
