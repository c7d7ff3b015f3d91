"""The optional HTTP endpoint: /metrics, /status, /healthz and a status page at /.

Why it is shaped like this:
* Off unless HTTP_ADDRESS is set, and loopback-only unless a token is configured (HTTP_TOKEN or
  HTTP_TOKEN_FILE): the status names every failing file and every server, which is nobody else's
  business. With a token, every data request must carry `Authorization: Bearer <token>`
  (compared in constant time). The page at `/` is a static shell with no data in it; it reads the
  token from the URL's fragment (`/#token=...`), which browsers never send to a server or put in
  its logs, and sends it as that header when it fetches /status.
* The standard library's ThreadingHTTPServer in one daemon thread (plus one per request): a
  scrape must never wait for the pipeline and the pipeline never waits for a scrape. The
  arbitrator starts and stops it, so a self-restart releases the port before binding it again.
* /status is `fileconveyor status --json`, computed the same way (read-only database connections
  and the runtime status file), so the page, scripts and the command can never disagree.
* Without a token, a request whose Host header is not a loopback address or `localhost` is
  refused (DNS rebinding: a page elsewhere must not read the status through a name that resolves
  to 127.0.0.1).
* The page has no external assets (it must work on an air-gapped host) and renders every value
  with textContent, never as HTML: file names and error messages come from the outside world.
"""
from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fileconveyor.daemon import DaemonError

if TYPE_CHECKING:
    from fileconveyor.arbitrator import Arbitrator
    from fileconveyor.settings import Settings

log = logging.getLogger(__name__)


#: Seconds a computed /status is served again (the page of every viewer polls every 2 s).
STATUS_MAX_AGE = 1.0


class EndpointError(DaemonError):
    """The endpoint cannot be started as configured; the message says what to change."""


def split_address(address: str) -> tuple[str, int]:
    host, _sep, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def configured_token(settings: "Settings") -> str | None:
    """HTTP_TOKEN, or the first line of HTTP_TOKEN_FILE (which others must not be able to read)."""
    if settings.HTTP_TOKEN:
        return str(settings.HTTP_TOKEN)
    path = settings.HTTP_TOKEN_FILE
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            if os.fstat(handle.fileno()).st_mode & 0o007:
                raise EndpointError(f"HTTP_TOKEN_FILE {path} can be read by every user: chmod o-rwx {path}")
            token = handle.readline().strip()
    except OSError as error:
        raise EndpointError(f"cannot read HTTP_TOKEN_FILE {path}: {error.strerror}") from None
    if not token:
        raise EndpointError(f"HTTP_TOKEN_FILE {path} is empty: write the token on its first line")
    return token


def endpoint_problem(settings: "Settings") -> str | None:
    """Why the endpoint as configured would be refused at start (for `check-config` too), or None."""
    if not settings.HTTP_ADDRESS:
        return None
    try:
        token = configured_token(settings)
    except EndpointError as error:
        return str(error)
    if token is None and not is_loopback(split_address(settings.HTTP_ADDRESS)[0]):
        return (f"HTTP_ADDRESS {settings.HTTP_ADDRESS} is not a loopback address: set HTTP_TOKEN or "
                "HTTP_TOKEN_FILE (every request must then carry it), or listen on 127.0.0.1")
    return None


def health(arbitrator: "Arbitrator", now: float | None = None) -> str | None:
    """None when healthy; otherwise why not (the body of a 503)."""
    if arbitrator.crashed.is_set():
        return f"the daemon is restarting after an unexpected error: {arbitrator.crash_error}"
    now = time.time() if now is None else now
    limit = arbitrator.settings.HTTP_HEALTH_PAUSED_MAX
    reasons = []
    for name, pool in sorted(arbitrator.pools.items()):
        since, reason = pool.paused_since, pool.paused_reason
        if since is not None and reason is not None and now - since >= limit:
            reasons.append(f"server {name!r} paused for {now - since:.0f} s: {reason}")
    return "; ".join(reasons) or None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], endpoint: "StatusEndpoint") -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.endpoint = endpoint
        super().__init__(address, _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "fileconveyor"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        endpoint = self.server.endpoint
        path = self.path.split("?", 1)[0]
        if not endpoint.host_allowed(self.headers.get("Host")):
            self._send(403, "text/plain; charset=utf-8",
                       b"this endpoint answers only to its own address (Host header); set HTTP_TOKEN to serve others\n")
            return
        if path == "/":
            self._send(200, "text/html; charset=utf-8", PAGE.encode("utf-8"))
            return
        if not endpoint.authorized(self.headers.get("Authorization")):
            self._send(401, "text/plain; charset=utf-8", b"send Authorization: Bearer <HTTP_TOKEN>\n",
                       {"WWW-Authenticate": 'Bearer realm="fileconveyor"'})
            return
        try:
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(endpoint.arbitrator.metrics.registry))
            elif path == "/status":
                body = json.dumps(endpoint.status(), indent=1, sort_keys=True).encode("utf-8")
                self._send(200, "application/json", body)
            elif path == "/healthz":
                problem = health(endpoint.arbitrator)
                self._send(503 if problem else 200, "text/plain; charset=utf-8",
                           f"{problem or 'ok'}\n".encode("utf-8"))
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /, /status, /metrics or /healthz\n")
        except Exception as error:  # noqa: BLE001 - one failed request, never the daemon
            log.error("HTTP endpoint: %s failed", path, exc_info=True)
            self._send(500, "text/plain; charset=utf-8", f"{type(error).__name__}: {error}\n".encode("utf-8"))

    def _send(self, code: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                         "connect-src 'self'")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class StatusEndpoint:
    """Started and stopped by the arbitrator when HTTP_ADDRESS is set."""

    def __init__(self, arbitrator: "Arbitrator") -> None:
        self.arbitrator = arbitrator
        settings = arbitrator.settings
        self.address = settings.HTTP_ADDRESS
        host, port = split_address(self.address)
        problem = endpoint_problem(settings)
        if problem:
            raise EndpointError(problem)
        self._token = configured_token(settings)
        try:
            self._server = _Server((host, port), self)
        except OSError as error:
            raise EndpointError(f"cannot listen on HTTP_ADDRESS {self.address}: {error.strerror or error}; "
                                "choose another address or stop what uses it") from None
        self._thread: threading.Thread | None = None
        self._status_lock = threading.Lock()
        self._status: tuple[float, dict[str, Any]] | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="http", daemon=True)
        self._thread.start()
        log.info("HTTP endpoint on http://%s/ (/metrics, /status, /healthz)%s", self.address,
                 "; a bearer token is required" if self._token else "")

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def host_allowed(self, header: str | None) -> bool:
        """Without a token, only requests addressed to a loopback name: a web page the user opens
        elsewhere must not read the status through DNS rebinding (a name of the attacker's that
        resolves to 127.0.0.1). With a token, the token is the protection."""
        if self._token is not None:
            return True
        host = (header or "").strip().lower()
        host = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] if ":" in host else host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def authorized(self, header: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _sep, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token.encode())

    def status(self) -> dict[str, Any]:
        """`status --json`, computed at most once per STATUS_MAX_AGE for every viewer together
        (about 10 ms of database reads each time; its runtime part changes once a second)."""
        from fileconveyor.cli import status_report  # the one definition of `status --json`

        with self._status_lock:
            if self._status is None or time.monotonic() - self._status[0] >= STATUS_MAX_AGE:
                self._status = (time.monotonic(), status_report(self.arbitrator.config))
            return self._status[1]


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>File Conveyor</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff} td,th{border:1px solid #ddd;padding:.3em .5em;
text-align:left;vertical-align:top} th{background:#f0f0f0} .num{text-align:right}
.bar{height:1em;background:#e5e5e5;border-radius:3px;overflow:hidden;max-width:40em}
.bar>div{height:100%;background:#3a7d44;width:0} .paused{color:#b00020;font-weight:bold}
.active{color:#3a7d44} .muted{color:#777} #error{color:#b00020;font-weight:bold}
td.reason{word-break:break-word}
</style></head>
<body>
<h1>File Conveyor</h1>
<div id="daemon" class="muted">loading&hellip;</div>
<div id="error"></div>
<h2>Sync progress</h2>
<div class="bar"><div id="bar"></div></div>
<p id="progress"></p>
<p id="latency"></p>
<h2>Servers</h2>
<table><thead><tr><th>server</th><th>state</th><th class="num">transfers in flight</th>
<th class="num">files waiting</th><th class="num">synced</th></tr></thead><tbody id="servers"></tbody></table>
<h2>Recent failures <span id="failed-count" class="muted"></span></h2>
<table><thead><tr><th>file</th><th>kind</th><th class="num">attempts</th><th>next try</th><th>reason</th></tr></thead>
<tbody id="failures"></tbody></table>
<div id="problems"></div>
<p class="muted">Refreshes every 2 s. Also: <a href="status">/status</a> (JSON), <a href="metrics">/metrics</a>,
<a href="healthz">/healthz</a>.</p>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
function $(id) { return document.getElementById(id); }
function duration(s) {
  if (s === null || s === undefined) return "unknown";
  s = Math.max(0, s);
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 7200) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}
function row(cells, classes) {
  const tr = document.createElement("tr");
  cells.forEach(function (text, i) {
    const td = document.createElement("td");
    td.textContent = text;
    if (classes && classes[i]) td.className = classes[i];
    tr.appendChild(td);
  });
  return tr;
}
function fill(id, rows) { $(id).replaceChildren.apply($(id), rows); }
function render(s) {
  const now = Date.now() / 1000;
  const rt = s.runtime || {};
  $("daemon").textContent = (s.running ? "running, PID " + s.pid : "NOT RUNNING") +
    (rt.monitor ? "; monitor " + rt.monitor : "") + "; updated " + new Date().toLocaleTimeString();
  const p = rt.progress;
  if (p) {
    const pct = p.total ? 100 * p.completed / p.total : 100;
    $("bar").style.width = pct.toFixed(1) + "%";
    $("progress").textContent = p.completed + " of " + p.total + " files done since start (" +
      pct.toFixed(1) + " %, " + bytes(p.bytes) + "); " + p.backlog + " to go; rate " +
      (p.rate === null ? "measuring" : p.rate.toFixed(1) + " files/s") + "; ETA " +
      (p.backlog === 0 ? "done" : p.blocked ? "unknown: " + p.blocked + " wait for a paused server" : duration(p.eta));
    $("latency").textContent = p.latency_median === null ? "Latency: no file synced yet" :
      "Latency from change to destination (recent files): median " + duration(p.latency_median) +
      ", max " + duration(p.latency_max);
  } else {
    $("progress").textContent = "waiting: " + s.waiting + ", in flight: " + s.in_flight;
  }
  const servers = rt.servers || {};
  const names = Object.keys(Object.assign({}, s.synced || {}, servers)).sort();
  fill("servers", names.map(function (name) {
    const st = servers[name] || {};
    let state = st.paused ? "PAUSED for " + duration(now - (st.paused_since || now)) + ": " + st.paused
                          : (s.running ? "active" : "stopped");
    (st.large_uploads || []).forEach(function (u) {
      state += "; uploading " + u.remote + ": " + (u.sent === null ? bytes(u.size) + ", progress unknown" :
        bytes(u.sent) + " of " + bytes(u.size) + " (" + (100 * u.sent / u.size).toFixed(0) + " %)") +
        " in " + duration(now - u.started);
    });
    return row([name, state, String((st.busy || 0) + (st.queued || 0)), String(st.files_waiting || 0),
                String(s.synced ? s.synced[name] : "")], ["", st.paused ? "paused" : "active", "num", "num", "num"]);
  }));
  const failed = s.failed_files || [];
  $("failed-count").textContent = "(" + (s.failed === null ? "unknown" : s.failed) + " in all)";
  fill("failures", failed.length ? failed.slice(0, 20).map(function (f) {
    return row([f.file, f.kind, String(f.attempts), "in " + duration(f.next_try - now), f.reason],
               ["", "", "num", "", "reason"]);
  }) : [row(["none", "", "", "", ""], ["muted"])]);
  fill("problems", (s.problems || []).map(function (text) {
    const d = document.createElement("p"); d.className = "paused"; d.textContent = "PROBLEM: " + text; return d;
  }));
}
function refresh() {
  fetch("status", {headers: token ? {"Authorization": "Bearer " + token} : {}, cache: "no-store"})
    .then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status + (r.status === 401 ? ": open this page as /#token=<token>" : ""));
      return r.json();
    })
    .then(function (s) { $("error").textContent = ""; render(s); })
    .catch(function (e) { $("error").textContent = "Cannot read the status: " + e.message; })
    .finally(function () { setTimeout(refresh, 2000); });
}
refresh();
</script>
</body></html>
"""
