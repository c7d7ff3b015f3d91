"""A destination server that goes down pauses its own pool; nothing fails, nothing is lost, and work
resumes within seconds of the server coming back. Real pyftpdlib server, killed and restarted."""
from __future__ import annotations

import os
import time
from xml.sax.saxutils import escape

import json
import subprocess
import sys

from tests.e2e.harness import REPO, Daemon, counts, synced_inputs, wait_for, write_config


def status(config: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "fileconveyor", "status", "--json", "--config", config],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def paused(config: str) -> str | None:
    return status(config).get("runtime", {}).get("servers", {}).get("ftp", {}).get("paused")


def test_server_down_pauses_its_pool_and_resumes(tmp_path, ftpd_restartable):
    server = ftpd_restartable
    remote_root = server.new_root()
    setup = write_config(tmp_path)
    ftp_settings = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in server.settings(remote_root).items())
    config = open(setup.config, encoding="utf-8").read()
    config = config.replace('</servers>', f'<server name="ftp" transporter="ftp" maxConnections="2">{ftp_settings}</server></servers>')
    config = config.replace('<destination server="local" />', '<destination server="local" /><destination server="ftp" />')
    open(setup.config, "w", encoding="utf-8").write(config)
    for i in range(10):
        with open(os.path.join(setup.source, f"before{i}.txt"), "w") as handle:
            handle.write(f"before {i}")
    with Daemon(setup) as daemon:
        wait_for(lambda: len(list(remote_root.iterdir())) == 10 and counts(setup)["pipeline_list"] == 0,
                 timeout=60, what="first sync over FTP")
        server.kill()
        for i in range(20):
            with open(os.path.join(setup.source, f"during{i}.txt"), "w") as handle:
                handle.write(f"during {i}")
        wait_for(lambda: "Server 'ftp' paused" in open(setup.log_file).read(), timeout=60, what="pool paused")
        # The local server is unaffected by the FTP outage.
        wait_for(lambda: all(os.path.exists(os.path.join(setup.dest, f"during{i}.txt")) for i in range(20)),
                 timeout=60, what="local destination keeps syncing")
        assert counts(setup)["failed_files_list"] == 0, "a paused server fails nothing"
        wait_for(lambda: paused(setup.config) is not None, timeout=30, what="status shows the pause")
        plain = subprocess.run([sys.executable, "-m", "fileconveyor", "status", "--config", setup.config],
                               capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
        assert "server ftp is PAUSED" in plain.stdout
        server.start()
        restarted = time.monotonic()
        wait_for(lambda: len([p for p in remote_root.iterdir() if not p.name.startswith(".")]) == 30,
                 timeout=90, what="files arrive after the server is back")
        print(f"FTP server back: queued files arrived within {time.monotonic() - restarted:.1f} s")
        wait_for(lambda: all(v == 0 for v in counts(setup).values()), timeout=60, what="queues empty")
        wait_for(lambda: paused(setup.config) is None, timeout=30, what="status shows the server resumed")
        for i in range(20):
            assert (remote_root / f"during{i}.txt").read_text() == f"during {i}"
        assert len(synced_inputs(setup)) == 30
        assert daemon.terminate() == 0
