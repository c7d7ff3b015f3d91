"""The HTTP endpoint (HTTP_ADDRESS) and `status --watch`, against a real daemon: /metrics scraped
during a sync must move and agree with synced_files.db; the status page is loaded in Debian's
headless Chromium while the daemon syncs and while an FTP server is down (real pyftpdlib, killed),
and we check what a person would see; the token is required when one is configured."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from xml.sax.saxutils import escape

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fileconveyor.httpd import EndpointError, configured_token
from fileconveyor.settings import resolve
from fileconveyor.statusview import watch_frame
from tests.e2e.harness import REPO, Daemon, Setup, query, wait_for, write_config
from tests.servers._loopback import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8")


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(url + "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def synced_rows(setup: Setup) -> int:
    return (query(setup.db("synced_files.db"), "SELECT COUNT(*) FROM synced_files") or [(0,)])[0][0]


def cli(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fileconveyor", *args, "--config", setup.config],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)


def test_metrics_move_during_a_sync_and_agree_with_synced_files(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    setup = write_config(tmp_path, processors=("tests.e2e.processors.Copy",),
                         settings={"HTTP_ADDRESS": f"127.0.0.1:{port}"})
    count = 1500
    sizes = 0
    for i in range(count):
        with open(os.path.join(setup.source, f"f{i:04d}.txt"), "w") as handle:
            handle.write("x" * (i % 300 + 1))
        sizes += i % 300 + 1
    uploaded = ("fileconveyor_transferred_files_total", (("server", "local"),))
    seen: list[float] = []
    with Daemon(setup):
        def scrape_until_done() -> bool:
            value = samples(url).get(uploaded, 0.0)
            rows = synced_rows(setup)  # read after the scrape: a counted upload is already recorded
            assert value <= rows, f"counted {value} uploads but synced_files has {rows} rows"
            seen.append(value)
            return value == count

        wait_for(scrape_until_done, timeout=120, what="every upload counted")
        assert seen == sorted(seen), "a counter went down"
        assert any(0 < v < count for v in seen), f"no scrape saw the sync in progress: {seen[:5]}...{seen[-5:]}"
        wait_for(lambda: samples(url).get(("fileconveyor_pipeline_in_flight_files", ()), 1) == 0, timeout=60,
                 what="pipeline empty")
        final = samples(url)
        assert synced_rows(setup) == count
        assert final[("fileconveyor_transferred_bytes_total", (("server", "local"),))] == sizes
        assert final[("fileconveyor_sync_latency_seconds_count", (("server", "local"),))] == count
        assert final[("fileconveyor_completed_files_total", ())] == count
        assert final[("fileconveyor_transfer_duration_seconds_count", (("action", "upload"), ("server", "local")))] == count
        assert final[("fileconveyor_server_paused", (("server", "local"),))] == 0
        processed = {labels: value for (name, labels), value in final.items()
                     if name == "fileconveyor_processed_files_total"}
        assert list(processed.values()) == [count] and dict(next(iter(processed)))["outcome"] == "ok", processed
        assert sum(value for (name, _labels), value in final.items()
                   if name == "fileconveyor_processor_seconds_total") > 0
        assert final[("fileconveyor_pipeline_waiting_files", ())] == 0
        assert ("fileconveyor_process_resident_memory_bytes", ()) in final
        assert ("fileconveyor_startup_scan_seconds", ()) in final
        assert get(url + "/healthz") == (200, "ok\n")
        families = set(re.findall(r"^# TYPE (\w+) ", get(url + "/metrics")[1], re.M))
        for contrib in ("contrib/grafana-dashboard.json", "contrib/alerts.yml"):
            with open(os.path.join(REPO, contrib), encoding="utf-8") as handle:
                used = set(re.findall(r"fileconveyor_\w+", handle.read()))
            unknown = {name for name in used
                       if name not in families and re.sub(r"_(bucket|count|sum)$", "", name) not in families}
            assert not unknown, f"{contrib} uses metrics the daemon does not export: {sorted(unknown)}"
        status, body = get(url + "/status")
        assert status == 200
        from_http = json.loads(body)
        from_cli = json.loads(cli(setup, "status", "--json").stdout)
        assert set(from_http) == set(from_cli)
        assert from_http["synced"] == from_cli["synced"] == {"local": count}
        # The runtime part is the status file, refreshed every second.
        wait_for(lambda: json.loads(get(url + "/status")[1])["runtime"]["progress"]["completed"] == count,
                 timeout=10, what="the progress in /status")
        assert get(url + "/nothing")[0] == 404
        for host, expected in ((f"localhost:{port}", 200), (f"[::1]:{port}", 200),
                               (f"rebound.example:{port}", 403), ("", 403)):
            request = urllib.request.Request(url + "/status", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    code = response.status
            except urllib.error.HTTPError as error:
                code = error.code
            assert code == expected, host


def test_a_token_is_required_when_configured_and_a_public_address_needs_one(tmp_path):
    setup = write_config(tmp_path / "public", settings={"HTTP_ADDRESS": "192.0.2.1:9380"})
    result = cli(setup, "run")
    assert result.returncode == 1
    assert "HTTP_ADDRESS 192.0.2.1:9380 is not a loopback address: set HTTP_TOKEN or HTTP_TOKEN_FILE" \
        in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    checked = cli(setup, "check-config")
    assert checked.returncode == 2 and ":1: " not in checked.stderr, checked.stderr
    assert "is not a loopback address" in checked.stderr

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    token_file.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    setup = write_config(tmp_path / "private", settings={"HTTP_ADDRESS": f"127.0.0.1:{port}",
                                                         "HTTP_TOKEN_FILE": str(token_file)})
    with Daemon(setup):
        for path in ("/metrics", "/status", "/healthz"):
            assert get(url + path)[0] == 401, path
            assert get(url + path, "wrong")[0] == 401, path
            assert get(url + path, "s3cret-token")[0] == 200, path
        status, page = get(url + "/")  # the shell holds no data; its script sends the token
        assert status == 200 and "File Conveyor" in page and "local" not in page


def test_token_file_readable_by_everyone_is_refused(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t\n")
    token_file.chmod(0o644)
    settings = resolve({"HTTP_TOKEN_FILE": str(token_file)}, str(tmp_path))
    with pytest.raises(EndpointError, match="can be read by every user"):
        configured_token(settings)
    token_file.chmod(0o600)
    assert configured_token(settings) == "t"


def test_http_address_is_checked_when_the_config_is_read(tmp_path):
    for bad in ("9380", "localhost", "127.0.0.1:99999", "::1:9380"):
        with pytest.raises(ValueError, match="write host:port"):
            resolve({"HTTP_ADDRESS": bad}, str(tmp_path))
    assert resolve({"HTTP_ADDRESS": "[::1]:9380"}, str(tmp_path)).HTTP_ADDRESS == "[::1]:9380"


def chromium(url: str, out_dir: str, name: str) -> str:
    """The DOM the page rendered after its first refresh; a screenshot beside it. Fails on any
    script error Chromium reports on its console."""
    assert CHROMIUM is not None
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
              "--v=0", f"--user-data-dir={os.path.join(out_dir, 'chromium-profile')}",
              "--virtual-time-budget=4000"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    shot = os.path.join(out_dir, f"{name}.png")
    subprocess.run(common + ["--window-size=1100,720", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    assert os.path.getsize(shot) > 1000
    return dom.stdout


def text_of(dom: str, element_id: str) -> str:
    start = dom.index(f'id="{element_id}"')
    start = dom.index(">", start) + 1
    return dom[start:dom.index("</", start)]


@pytest.mark.skipif(CHROMIUM is None, reason="status page: Debian's chromium is not installed "
                                             "(scripts/deps/50-status-page.sh)")
def test_status_page_in_chromium_while_syncing_and_while_a_server_is_down(tmp_path, ftpd_restartable):
    server = ftpd_restartable
    remote_root = server.new_root()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    setup = write_config(tmp_path, settings={"HTTP_ADDRESS": f"127.0.0.1:{port}", "HTTP_HEALTH_PAUSED_MAX": "1"})
    ftp_settings = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in server.settings(remote_root).items())
    config = open(setup.config, encoding="utf-8").read()
    config = config.replace('</servers>', f'<server name="ftp" transporter="ftp" maxConnections="1">'
                                          f'{ftp_settings}</server></servers>')
    config = config.replace('<destination server="local" />',
                            '<destination server="local" /><destination server="ftp" />')
    open(setup.config, "w", encoding="utf-8").write(config)
    artifacts = str(tmp_path / "artifacts")
    os.makedirs(artifacts)
    for i in range(400):
        with open(os.path.join(setup.source, f"first{i:03d}.txt"), "w") as handle:
            handle.write(f"first {i}")
    with Daemon(setup):
        wait_for(lambda: 0 < synced_rows(setup), timeout=60, what="the sync under way")
        dom = chromium(url, artifacts, "syncing")
        assert text_of(dom, "error") == ""
        assert "files done since start" in text_of(dom, "progress")
        assert text_of(dom, "daemon").startswith("running, PID")
        assert "<td>ftp</td>" in dom and "<td>local</td>" in dom
        def first_sync_done() -> bool:
            report = json.loads(get(url + "/status")[1])
            return report["waiting"] == 0 and report["in_flight"] == 0

        wait_for(first_sync_done, timeout=120, what="first sync done")

        server.kill()
        for i in range(150):
            with open(os.path.join(setup.source, f"during{i:03d}.txt"), "w") as handle:
                handle.write(f"during {i}")
        wait_for(lambda: get(url + "/healthz")[0] == 503, timeout=60, what="/healthz reports the pause")
        status, reason = get(url + "/healthz")
        assert "server 'ftp' paused for" in reason, reason
        wait_for(lambda: json.loads(get(url + "/status")[1]).get("runtime", {}).get("servers", {})
                 .get("ftp", {}).get("files_waiting", 0) >= 100, timeout=60, what="files waiting for ftp")
        dom = chromium(url, artifacts, "server-down")
        assert text_of(dom, "error") == ""
        assert "PAUSED for" in dom and '<td class="paused">' in dom
        assert '<td class="active">active</td>' in dom  # the local server goes on

        frames = cli(setup, "status", "--watch", "--count", "2", "--interval", "0.5")
        assert frames.returncode == 0, frames.stderr
        assert frames.stdout.count("File Conveyor running (PID") == 2
        assert "ftp: PAUSED for" in frames.stdout and "local: active" in frames.stdout
        assert "ETA unknown: 150 wait for a paused server" in frames.stdout
        with open(os.path.join(artifacts, "status-watch.txt"), "w") as handle:
            handle.write(frames.stdout)
        plain = cli(setup, "status")
        assert "progress:  " in plain.stdout and "to go" in plain.stdout, plain.stdout

        server.start()
        wait_for(lambda: get(url + "/healthz")[0] == 200, timeout=90, what="/healthz ok after the server is back")


def test_watch_frame_shows_the_page_facts():
    now = 1_000_000.0
    report = {"running": True, "pid": 42, "waiting": 3800, "in_flight": 10, "failed": 1, "problems": [],
              "synced": {"cdn": 1200, "ftp": 50},
              "failed_files": [{"file": "/s/a.css", "kind": "retryable", "attempts": 2, "next_try": now + 30,
                                "reason": "timed out"}],
              "runtime": {"progress": {"completed": 1200, "total": 5010, "backlog": 3810, "bytes": 3 * 2**20,
                                       "rate": 100.0, "eta": 38.1, "latency_median": 0.25, "latency_max": 4.0},
                          "servers": {"cdn": {"paused": None, "busy": 4, "queued": 6, "files_waiting": 0},
                                      "ftp": {"paused": "connection refused", "paused_since": now - 90,
                                              "busy": 0, "queued": 0, "files_waiting": 120}}}}
    lines = watch_frame(report, now)
    text = "\n".join(lines)
    assert "File Conveyor running (PID 42)" in lines[0]
    assert "1200 of 5010 files done since start (24.0 %, 3.0 MiB), 3810 to go, 100.0 files/s, ETA 38 s" in text
    assert "median 250 ms, max 4.0 s" in text
    assert "cdn: active; 10 in flight, 0 waiting, 1200 synced" in text
    assert "ftp: PAUSED for 90 s: connection refused; 0 in flight, 120 waiting, 50 synced" in text
    assert "/s/a.css (retryable, 2 attempt(s), next try in 30 s): timed out" in text
    assert all(len(line) <= 60 for line in watch_frame(report, now, width=60))


def test_a_large_upload_is_shown_with_how_far_it_has_read(tmp_path):
    """An upload of 64 MiB or more is listed with the offset its transporter has read to (from
    /proc/self/fdinfo: no transporter reports progress), for `status`, --watch and the page."""
    import types

    from fileconveyor.metrics import LARGE_UPLOAD, large_uploads, read_position
    from fileconveyor.pipeline.workers import TransportTask
    from fileconveyor.statusview import large_upload_line

    big = tmp_path / "big.iso"
    with open(big, "wb") as handle:
        handle.truncate(LARGE_UPLOAD + 2**20)  # sparse: no 65 MiB written to the test's disk
    small = tmp_path / "small.css"
    small.write_bytes(b"a{}")
    pool = types.SimpleNamespace(running={
        1: (TransportTask("upload", "media/big.iso", str(big), lambda url, error: None), 1000.0),
        2: (TransportTask("upload", "css/small.css", str(small), lambda url, error: None), 1000.0),
        3: (TransportTask("delete", "old/big.iso", None, lambda url, error: None), 1000.0)})
    assert large_uploads(pool) == [{"remote": "media/big.iso", "size": LARGE_UPLOAD + 2**20, "started": 1000.0,
                                    "sent": None}]  # not open: nothing read yet
    with open(big, "rb") as reader:
        reader.read(16 * 2**20)
        assert read_position(str(big)) == 16 * 2**20
        (upload,) = large_uploads(pool)
        assert upload["sent"] == 16 * 2**20
        assert large_upload_line(upload, 1045.0) == "uploading media/big.iso: 16.0 MiB of 65.0 MiB (25 %) in 45 s"
