"""`verify` on content (issue 9 item 3): a copy overwritten behind File Conveyor's back is
reported DIFFERENT, from one listing per destination.

Real daemon, real destinations: a local web root (copies; the listing gives sizes, `--deep` reads
them back) and moto's S3 (the listing's ETag is the MD5 of a single-part object). Each overwrite is
made around File Conveyor, as another tool or a person would.
"""
from __future__ import annotations

import hashlib
import os
import pathlib

from fileconveyor.config import load_config
from fileconveyor.verify import _check_server
from tests.e2e.harness import (
    Daemon, Setup, counts, query, synced_inputs, wait_for, wait_in_sync, write_config,
)
from tests.e2e.remote_trees import add_servers
from tests.e2e.test_daemon import cli
from tests.servers.moto import FAKE_KEY_ID, FAKE_SECRET, MotoServer

COPY = ("tests.e2e.processors.Copy",)


def test_local_copies_overwritten_are_found_by_size_and_by_deep_read_back(tmp_path):
    setup = write_config(tmp_path, processors=COPY)
    for i in range(5):
        pathlib.Path(setup.source, f"f{i}.txt").write_text(f"content {i}")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert daemon.terminate() == 0
    recorded = query(setup.db("synced_files.db"),
                     "SELECT remote_path, size, md5 FROM synced_copies ORDER BY remote_path")
    assert recorded == [(f"f{i}.txt", len(f"content {i}"),
                         hashlib.md5(f"content {i}".encode()).hexdigest()) for i in range(5)]
    assert cli("verify", "--config", setup.config).returncode == 0

    pathlib.Path(setup.dest, "f1.txt").write_text("CONTENT 1")  # same size, other bytes
    result = cli("verify", "--config", setup.config)
    assert result.returncode == 0, result.stdout  # a local listing has no hash: size only
    result = cli("verify", "--deep", "--config", setup.config)
    assert result.returncode == 1, result.stdout
    assert "DIFFERENT on local:" in result.stdout and "f1.txt: content differs" in result.stdout

    pathlib.Path(setup.dest, "f2.txt").write_text("much longer than before")
    result = cli("verify", "--config", setup.config)
    assert result.returncode == 1
    assert "f2.txt: size 23, expected 9" in result.stdout
    assert "0 missing, 1 different" in result.stdout

    assert cli("verify", "--deep", "--requeue", "--config", setup.config).returncode == 1
    with Daemon(setup) as daemon:
        wait_for(lambda: cli("verify", "--deep", "--config", setup.config).returncode == 0,
                 timeout=60, what="the requeued copies to be uploaded again")
        assert daemon.terminate() == 0
    assert pathlib.Path(setup.dest, "f1.txt").read_text() == "content 1"


def send_only_to_s3(setup: Setup, moto_server: MotoServer, bucket: str) -> None:
    """The harness's config with one server, `s3` (moto), instead of the local one."""
    add_servers(setup, {"s3": ("s3", {"endpoint_url": moto_server.endpoint, "access_key_id": FAKE_KEY_ID,
                                      "secret_access_key": FAKE_SECRET, "bucket_name": bucket}, 4)},
                keep_local=False)


def sync_files(setup: Setup, directory: str, files: list[tuple[str, str]]) -> None:
    """Write `files` (name, text) into `directory` of the source, run the daemon until every one
    is recorded and nothing waits, stop it."""
    (pathlib.Path(setup.source) / directory).mkdir(exist_ok=True)
    for name, text in files:
        pathlib.Path(setup.source, directory, name).write_text(text)
    with Daemon(setup) as daemon:
        wait_for(lambda: len(synced_inputs(setup)) == len(files) and not any(counts(setup).values()),
                 timeout=120, what=f"{len(files)} files synced")
        assert daemon.terminate() == 0


def test_s3_objects_overwritten_or_deleted_are_reported_from_one_listing(
        tmp_path, moto_server: MotoServer, s3_bucket: str):
    setup = write_config(tmp_path)
    send_only_to_s3(setup, moto_server, s3_bucket)
    sync_files(setup, "d", [(f"f{i:02}.txt", f"object {i:02}") for i in range(30)])
    s3 = moto_server.client()
    s3.put_object(Bucket=s3_bucket, Key="d/f03.txt", Body=b"OBJECT 03")  # same size
    s3.delete_object(Bucket=s3_bucket, Key="d/f04.txt")

    result = cli("verify", "--config", setup.config)
    assert result.returncode == 1, result.stdout
    assert "DIFFERENT on s3:" in result.stdout and "d/f03.txt: content differs" in result.stdout
    assert "MISSING on s3:" in result.stdout and "f04.txt" in result.stdout
    assert "Checked 30 file(s) on 1 server(s): 28 present, 1 missing, 1 different" in result.stdout

    report = _check_server(load_config(setup.config), "s3")
    assert report.rows == 30 and report.listing_requests == 1  # not one request per file
    assert [(d[1], d[2].split(" (")[0]) for d in report.different] == [("d/f03.txt", "content differs")]
