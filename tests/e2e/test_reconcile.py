"""`fileconveyor reconcile` (issue 9 item 2) against real destinations and a real daemon.

* A bucket that another tool (boto3 here) filled before File Conveyor was pointed at it is adopted:
  identical objects are recorded without being uploaded again, different and missing ones are
  queued, foreign objects stay (until --delete-unknown).
* Copies deleted, truncated or left unrecorded behind File Conveyor's back, and a row whose source
  is gone, are found and repaired while the daemon runs (local); deleted, truncated and foreign
  files on SFTP (sshd); an object altered at the same size on Swift (found by its ETag).
* `--deep` adopts identical files of a directory another tool filled; `kill -9` mid-way loses
  nothing.
"""
from __future__ import annotations

import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import time

from fileconveyor.reconcile import QUEUE_BATCH
from tests.e2e.harness import (
    REPO, Daemon, counts, query, synced_inputs, wait_for, wait_in_sync, write_config,
)
from tests.e2e.remote_trees import add_servers
from tests.e2e.test_daemon import cli
from tests.e2e.test_verify_content import send_only_to_s3, sync_files
from tests.servers._loopback import free_port
from tests.servers.moto import FAKE_KEY_ID, FAKE_SECRET, MotoServer
from tests.servers.sshd import SSHServer
from tests.servers.swift import SwiftServer

COPY = ("tests.e2e.processors.Copy",)


def reconcile_json(config: str, *options: str) -> tuple[int, dict]:
    result = cli("reconcile", "--config", config, "--json", *options)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)["servers"][0]


def test_a_bucket_filled_by_another_tool_is_adopted_without_uploading_identical_files(
        tmp_path, moto_server: MotoServer, s3_bucket: str):
    setup = write_config(tmp_path)
    send_only_to_s3(setup, moto_server, s3_bucket)
    xml = pathlib.Path(setup.config).read_text()
    pathlib.Path(setup.config).write_text(xml.replace('<destination server="s3" />',
                                                      '<destination server="s3" path="static" />'))
    s3 = moto_server.client()
    for i in range(20):
        name = f"dir {i % 3}/f\u00e9{i:02}.txt"
        pathlib.Path(setup.source, name).parent.mkdir(exist_ok=True)
        pathlib.Path(setup.source, name).write_text(f"file {i:02}")
        if i < 15:       # what the other tool uploaded, identical
            s3.put_object(Bucket=s3_bucket, Key=f"static/{name}", Body=f"file {i:02}".encode())
        elif i < 17:     # an older version, other content
            s3.put_object(Bucket=s3_bucket, Key=f"static/{name}", Body=b"stale")
    s3.put_object(Bucket=s3_bucket, Key="static/foreign.txt", Body=b"not ours")
    s3.put_object(Bucket=s3_bucket, Key="elsewhere/also-foreign.txt", Body=b"not below static")
    before = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}

    code, dry = reconcile_json(setup.config, "--dry-run")
    assert code == 1
    assert dry["counts"] == {"adopted": 15, "unrecorded": 5, "unknown": 1}, dry
    assert dry["examples"]["unknown"] == ["static/foreign.txt (8 bytes)"]
    assert not os.path.exists(setup.db("synced_files.db")) or not synced_inputs(setup)

    code, done = reconcile_json(setup.config)
    assert code == 0, done
    assert done["adopted"] == 15 and done["queued"] == 5, done
    assert len(synced_inputs(setup)) == 15
    assert counts(setup)["pipeline_queue"] == 5
    with Daemon(setup) as daemon:
        wait_for(lambda: len(synced_inputs(setup)) == 20 and not any(counts(setup).values()),
                 timeout=60, what="the 5 queued files to be synced")
        assert daemon.terminate() == 0
    uploads = [line for line in open(setup.log_file, encoding="utf-8") if "Synced " in line]
    assert len(uploads) == 5, uploads
    after = {o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    adopted = [k for k in before if k.startswith("static/dir") and before[k] == after[k]]
    assert len(adopted) == 15  # never uploaded again
    for i in range(20):
        key = f"static/dir {i % 3}/f\u00e9{i:02}.txt"
        assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == f"file {i:02}".encode()
    assert cli("verify", "--config", setup.config).returncode == 0

    code, again = reconcile_json(setup.config)
    assert code == 0 and again["counts"] == {"unknown": 1}, again  # foreign objects stay
    code, cleaned = reconcile_json(setup.config, "--delete-unknown")
    assert code == 0 and cleaned["deleted"] == 1, cleaned
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert "static/foreign.txt" not in keys and "elsewhere/also-foreign.txt" in keys


def test_copies_changed_behind_the_daemons_back_are_repaired_while_it_runs(tmp_path):
    setup = write_config(tmp_path, processors=COPY)
    for i in range(10):
        pathlib.Path(setup.source, "d", f"f{i}.txt").parent.mkdir(exist_ok=True)
        pathlib.Path(setup.source, "d", f"f{i}.txt").write_text(f"content {i}")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert cli("reconcile", "--config", setup.config).returncode == 0
        dest = pathlib.Path(setup.dest, "d")
        (dest / "f1.txt").unlink()                       # deleted
        (dest / "f2.txt").write_text("trunc")            # truncated
        (dest / "foreign.txt").write_text("someone's")   # not ours
        f3 = os.path.join(setup.source, "d", "f3.txt")
        gone = os.path.join(setup.source, "d", "gone.txt")
        with sqlite3.connect(setup.db("synced_files.db")) as conn:
            conn.execute("DELETE FROM synced_files WHERE input_file = ?", (f3,))
            conn.execute("DELETE FROM synced_copies WHERE input_file = ?", (f3,))
            conn.execute("INSERT INTO synced_files VALUES (?, 'gone.txt', 'http://x/d/gone.txt', 'local')",
                         (gone,))
            conn.execute("INSERT INTO synced_copies(input_file, server, remote_path, url) "
                         "VALUES (?, 'local', 'd/gone.txt', 'http://x/d/gone.txt')", (gone,))

        code, found = reconcile_json(setup.config)
        assert code == 0, found
        assert found["counts"] == {"missing": 1, "different": 1, "unrecorded": 1, "orphaned": 1,
                                   "unknown": 1}, found
        assert found["queued"] == 4
        wait_for(lambda: gone not in synced_inputs(setup) and (dest / "f1.txt").exists()
                 and (dest / "f2.txt").read_text() == "content 2"
                 and f3 in synced_inputs(setup) and not any(counts(setup).values()),
                 timeout=60, what="the daemon to repair what reconcile queued")
        assert (dest / "foreign.txt").exists()
        code, cleaned = reconcile_json(setup.config, "--delete-unknown")
        assert code == 0 and cleaned["counts"] == {"unknown": 1} and cleaned["deleted"] == 1, cleaned
        wait_in_sync(setup, daemon)
        assert daemon.terminate() == 0
    assert query(setup.db("synced_files.db"), "SELECT COUNT(*) FROM synced_copies")[0][0] == 10


def test_usage_errors_and_a_server_that_cannot_be_reached(tmp_path):
    setup = write_config(tmp_path)
    result = cli("reconcile", "--config", setup.config, "--server", "nosuch")
    assert result.returncode == 2 and "unknown server 'nosuch'" in result.stderr
    assert "Traceback" not in result.stderr
    pathlib.Path(setup.source, "a.txt").write_text("a")
    add_servers(setup, {"s3": ("s3", {"endpoint_url": f"http://127.0.0.1:{free_port()}",
                                      "access_key_id": FAKE_KEY_ID, "secret_access_key": FAKE_SECRET,
                                      "bucket_name": "nowhere"}, 1)})
    result = cli("reconcile", "--config", setup.config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PROBLEM: s3: cannot list the destination" in result.stdout
    assert "local: 0 object(s) listed; 1 unrecorded" in result.stdout  # the other server is done
    assert "Traceback" not in result.stderr
    assert counts(setup)["pipeline_queue"] == 1


def test_kill_9_during_a_reconcile_loses_nothing(tmp_path):
    """SIGKILL while reconcile has queued some batches and not others: a second run queues the
    rest (events merge), and the daemon then syncs every file exactly as after one run."""
    setup = write_config(tmp_path, processors=COPY)
    total = 3 * QUEUE_BATCH + 17
    for i in range(total):
        directory = pathlib.Path(setup.source, f"d{i // 500}")
        directory.mkdir(exist_ok=True)
        (directory / f"f{i}.txt").write_text(str(i))
    child = subprocess.Popen([sys.executable, "-m", "fileconveyor", "reconcile", "--config", setup.config],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, PYTHONPATH=REPO))
    queued_at_kill = 0
    try:
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if os.path.exists(setup.db("persistent_data.db")):
                queued_at_kill = counts(setup)["pipeline_queue"]
                if queued_at_kill:
                    child.kill()
                    break
            time.sleep(0.002)  # polling interval of the bounded wait above
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
    print(f"killed with {queued_at_kill} of {total} queued (returncode {child.returncode})")
    code, again = reconcile_json(setup.config)
    assert code == 0, again
    assert counts(setup)["pipeline_queue"] == total
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon, timeout=180)
        assert daemon.terminate() == 0
    code, last = reconcile_json(setup.config)
    assert code == 0 and last["counts"] == {} and last["listed"] == total, last


def test_deep_adopts_identical_files_of_a_directory_filled_by_another_tool(tmp_path):
    """A web root that rsync filled: its listing has no hash, so only --deep (reading copies back)
    can tell identical files; they are recorded, and the daemon uploads only the others."""
    setup = write_config(tmp_path)
    for i in range(10):
        pathlib.Path(setup.source, f"f{i}.txt").write_text(f"file {i}")
        if i < 8:
            pathlib.Path(setup.dest, f"f{i}.txt").write_text(f"file {i}")
    pathlib.Path(setup.dest, "f8.txt").write_text("FILE 8")  # same size, other bytes
    code, shallow = reconcile_json(setup.config, "--dry-run")
    assert code == 1 and shallow["counts"] == {"unrecorded": 10}, shallow
    code, deep = reconcile_json(setup.config, "--deep")
    assert code == 0 and deep["counts"] == {"adopted": 8, "unrecorded": 2}, deep
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert daemon.terminate() == 0
    uploads = [line for line in open(setup.log_file, encoding="utf-8") if "Synced " in line]
    assert len(uploads) == 2, uploads
    assert not os.path.islink(os.path.join(setup.dest, "f0.txt"))  # the adopted copy stays as it was
    assert os.path.islink(os.path.join(setup.dest, "f8.txt"))


def _sync_then_damage(setup, servers: dict, damage) -> dict:
    """Sync 10 files to `servers` (instead of the local one), stop, `damage()` the destination
    around File Conveyor, reconcile; the JSON of the one server."""
    add_servers(setup, servers, keep_local=False)
    sync_files(setup, "s", [(f"f{i}.txt", f"content {i}") for i in range(10)])
    damage()
    code, found = reconcile_json(setup.config)
    assert code == 0, found
    return found


def test_sftp_copies_deleted_or_truncated_are_found(tmp_path, sshd: SSHServer):
    setup = write_config(tmp_path)
    root = sshd.new_root()

    def damage() -> None:
        (root / "s" / "f1.txt").unlink()
        (root / "s" / "f2.txt").write_text("cut")
        (root / "s" / "stray.txt").write_text("not ours")

    found = _sync_then_damage(setup, {"sftp": ("sftp", sshd.settings(root), 2)}, damage)
    assert found["counts"] == {"missing": 1, "different": 1, "unknown": 1}, found
    assert found["listed"] == 10 and found["queued"] == 2


def test_swift_objects_altered_at_the_same_size_are_found_by_their_etag(tmp_path, swift: SwiftServer):
    import swiftclient

    setup = write_config(tmp_path)
    container = swift.new_container()

    def damage() -> None:
        connection = swiftclient.Connection(authurl=swift.auth_url, user=swift.user, key=swift.key,
                                            auth_version="1", timeout=30, retries=0)
        try:
            connection.put_object(container, "s/f3.txt", contents=b"CONTENT 3")
            connection.delete_object(container, "s/f4.txt")
        finally:
            connection.close()

    found = _sync_then_damage(setup, {"swift": ("cloudfiles", swift.settings(container), 2)}, damage)
    assert found["counts"] == {"missing": 1, "different": 1}, found
    assert "content differs" in found["examples"]["different"][0]


def test_an_old_version_kept_for_its_grace_period_is_left_to_the_daemon(tmp_path):
    setup = write_config(tmp_path)
    pathlib.Path(setup.source, "a.txt").write_text("a")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert daemon.terminate() == 0
    # As keepOldVersionsFor leaves a deleted file: its copy stays, marked for deletion later.
    gone = os.path.join(setup.source, "gone.txt")
    pathlib.Path(setup.dest, "gone.txt").write_text("old version")
    with sqlite3.connect(setup.db("synced_files.db")) as conn:
        conn.execute("INSERT INTO synced_copies(input_file, server, remote_path, url, delete_after) "
                     "VALUES (?, 'local', 'gone.txt', 'http://x/gone.txt', ?)", (gone, time.time() + 3600))
    code, found = reconcile_json(setup.config)
    assert code == 0 and found["counts"] == {} and found["queued"] == 0, found
