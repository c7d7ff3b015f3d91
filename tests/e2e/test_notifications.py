"""Webhook notifications (issue 10, item 5), asked for by the original's users: #70 (tell me when a
file fails to sync) and #94 (a callback when the initial sync is done).

Against a real HTTP server on loopback (http.server in this process) that fails, hangs past the
timeout and recovers; and a real daemon that sends the events.
"""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import threading
import time
import types
from typing import Any, Iterator

import pytest

from fileconveyor import notify
from fileconveyor.processors.base import Processor
from tests.e2e.harness import Daemon, wait_for, wait_in_sync, write_config


class Denied(Processor):
    """A processor whose tool is refused the file (EACCES): a permanent failure, for `*.denied`."""

    valid_extensions = (".denied",)

    def run(self, input_file: str) -> str:
        raise PermissionError(13, "Permission denied (a test processor)", input_file)


class Receiver:
    """A webhook receiver on 127.0.0.1 whose answers follow a script: `fail` (HTTP 500), `hang`
    (answers nothing until released, longer than the client's timeout), `ok` (204); `ok` once the
    script is used up."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.received: list[tuple[dict, Any]] = []
        self.attempts = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.attempts += 1
                    action = receiver.script.pop(0) if receiver.script else "ok"
                if action == "hang":
                    receiver.release.wait(10)
                    return
                if action == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append((json.loads(body), self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/s3cr3t-path?token=t0ps3cret"

    def events(self, name: str) -> list[dict]:
        with self.lock:
            return [body for body, _headers in self.received if body["event"] == name]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made: list[Receiver] = []

    def make(script: list[str]) -> Receiver:
        made.append(Receiver(script))
        return made[-1]

    yield make  # type: ignore[misc]
    for r in made:
        r.close()


def _settings(url: str, **extra: object) -> types.SimpleNamespace:
    values = {"WEBHOOK_URL": url, "WEBHOOK_EVENTS": frozenset(notify.EVENTS), "WEBHOOK_SECRET": "hmac-key",
              "WEBHOOK_BACKLOG_THRESHOLD": 10, "WEBHOOK_TIMEOUT": 0.5}
    values.update(extra)
    return types.SimpleNamespace(**values)


def test_delivery_survives_a_failure_and_a_timeout_and_is_signed(receiver, monkeypatch, caplog):
    """#70: the receiver fails (500), then hangs past the timeout, then recovers: the event arrives
    exactly once, signed, and emit() never waited for any of it."""
    monkeypatch.setattr(notify, "MAX_BACKOFF", 0.2)
    server = receiver(["fail", "hang", "ok"])
    hooks = notify.Webhooks(_settings(server.url))
    hooks.start()
    try:
        started = time.monotonic()
        hooks.file_failed("/site/a.css", "permanent", "403 Forbidden", 1)
        hooks.file_failed("/site/a.css", "permanent", "403 Forbidden", 2)   # once per file
        hooks.file_failed("/site/b.css", "retryable", "timeout", 1)         # not a permanent failure
        assert time.monotonic() - started < 0.1
        wait_for(lambda: server.events("file_failed"), timeout=30, what="the event after the receiver recovered")
        assert server.attempts == 3
        [body] = server.events("file_failed")
        assert body["file"] == "/site/a.css" and body["kind"] == "permanent" and body["reason"] == "403 Forbidden"
        headers = server.received[0][1]
        data = json.dumps(body, sort_keys=True).encode()
        assert headers["X-FileConveyor-Signature"] == "sha256=" + hmac.new(b"hmac-key", data, hashlib.sha256).hexdigest()
        assert headers["Content-Type"] == "application/json"
    finally:
        hooks.stop()
    logged = caplog.text
    assert "not delivered (attempt 1" in logged and "HTTP 500" in logged and "attempt 2" in logged
    assert "s3cr3t-path" not in logged and "t0ps3cret" not in logged and "hmac-key" not in logged


def test_the_queue_is_bounded_and_drops_the_oldest(receiver, monkeypatch, caplog):
    monkeypatch.setattr(notify, "QUEUE_SIZE", 5)
    server = receiver(["hang"])
    hooks = notify.Webhooks(_settings(server.url, WEBHOOK_TIMEOUT=5.0))
    hooks.start()
    try:
        hooks.emit("server_paused", server="first")
        wait_for(lambda: server.attempts == 1, what="the sender stuck on a hanging receiver")
        started = time.monotonic()
        for i in range(20):
            hooks.emit("server_paused", server=f"s{i}")
        assert time.monotonic() - started < 0.1, "emit() waited for the receiver"
        assert hooks.dropped == 15
        server.release.set()
        wait_for(lambda: len(server.events("server_paused")) >= 5, timeout=30, what="the queued events")
        names = [body["server"] for body in server.events("server_paused")]
        assert names[-5:] == [f"s{i}" for i in range(15, 20)]  # the newest were kept
    finally:
        hooks.stop()
    assert "dropped the oldest" in caplog.text


def test_events_are_checked_where_they_are_configured() -> None:
    assert notify.parse_webhook_events("all") == frozenset(notify.EVENTS)
    assert notify.parse_webhook_events("file_failed, server_paused") == {"file_failed", "server_paused"}
    with pytest.raises(ValueError, match="server_paused"):
        notify.parse_webhook_events("server_pause")
    with pytest.raises(ValueError, match="https://"):
        notify.parse_webhook_url("hooks.example.com/x")


def test_a_daemon_reports_backlog_initial_sync_and_a_permanent_failure(tmp_path, receiver):
    """#94: the initial sync's end is announced; a backlog over the threshold is, once; #70: a file
    that fails permanently is, with its reason."""
    server = receiver(["fail"])
    # Two `*.held` files fill the pipeline (Gate holds them until `open-gate` exists): the others
    # wait, so the backlog stays above the threshold until the test opens the gate.
    setup = write_config(tmp_path, processors=("tests.e2e.processors.Gate", f"{__name__}.Denied"),
                         settings={"WEBHOOK_URL": server.url, "WEBHOOK_SECRET": "hmac-key",
                                   "WEBHOOK_BACKLOG_THRESHOLD": "5", "MAX_FILES_IN_PIPELINE": "2"})
    for name in ("a.held", "b.held"):
        with open(os.path.join(setup.source, name), "w") as handle:
            handle.write(name)
    with Daemon(setup) as daemon:
        wait_for(lambda: all(os.path.exists(os.path.join(setup.root, f"entered-{n}.held")) for n in "ab"),
                 what="the pipeline held by the two *.held files")
        for i in range(20):
            with open(os.path.join(setup.source, f"f{i}.txt"), "w") as handle:
                handle.write(f"{i}")
        wait_for(lambda: server.events("backlog_high"), timeout=30, what="backlog_high")
        assert not server.events("initial_sync_done")
        open(os.path.join(setup.root, "open-gate"), "w").close()
        wait_in_sync(setup, daemon)
        wait_for(lambda: server.events("initial_sync_done"), timeout=30, what="initial_sync_done")
        [high] = server.events("backlog_high")
        assert high["threshold"] == 5 and high["waiting"] + high["in_flight"] > 5
        with open(os.path.join(setup.source, "locked.denied"), "w") as handle:
            handle.write("x")
        wait_for(lambda: server.events("file_failed"), timeout=30, what="file_failed")
        [failed] = server.events("file_failed")
        assert failed["file"].endswith("locked.denied") and failed["kind"] == "permanent"
        assert "Permission denied" in failed["reason"]
        assert len(server.events("initial_sync_done")) == 1
        assert daemon.terminate() == 0
    log = open(setup.log_file, encoding="utf-8").read()
    assert "hmac-key" not in log and "t0ps3cret" not in log


def test_a_server_pausing_and_resuming_is_reported_once_each(receiver):
    server = receiver([])
    hooks = notify.Webhooks(_settings(server.url, WEBHOOK_EVENTS=frozenset({"server_paused", "server_resumed"})))
    hooks.start()
    try:
        hooks.servers_changed({"ftp": None, "s3": None})
        hooks.servers_changed({"ftp": "cannot connect: refused", "s3": None})
        hooks.servers_changed({"ftp": "cannot connect: timed out", "s3": None})  # still paused: nothing new
        hooks.servers_changed({"ftp": None, "s3": None})
        hooks.emit("initial_sync_done")  # not among WEBHOOK_EVENTS
        wait_for(lambda: server.events("server_resumed"), what="server_resumed")
        hooks.stop()
        assert [(b["event"], b["server"]) for b, _h in server.received] == [("server_paused", "ftp"),
                                                                            ("server_resumed", "ftp")]
        assert server.events("server_paused")[0]["reason"] == "cannot connect: refused"
    finally:
        hooks.stop()


def test_a_crash_and_self_restart_is_reported(tmp_path, receiver):
    """#70: restart after a crash, *with a notification*: the administrators get `daemon_restarted`
    with the error once the daemon is up again (a transporter that crashes its thread on purpose)."""
    hooks = receiver([])
    setup = write_config(tmp_path, settings={"WEBHOOK_URL": hooks.url, "WEBHOOK_EVENTS": "daemon_restarted"})
    marker = os.path.join(setup.state, "crash-now")
    config = open(setup.config).read().replace('transporter="symlink_or_copy"', 'transporter="tests.e2e.crashy"')
    config = config.replace("</location>", f"</location><crash_marker>{marker}</crash_marker>")
    open(setup.config, "w").write(config)
    open(marker, "w").close()
    with open(os.path.join(setup.source, "a.txt"), "w") as handle:
        handle.write("a")
    with Daemon(setup):
        wait_for(lambda: hooks.events("daemon_restarted"), timeout=60, what="the restart notification")
        os.remove(marker)
    [event] = hooks.events("daemon_restarted")[:1]
    assert "injected crash" in event["error"] and event["restarts_in_a_row"] >= 0
