"""`kill -9` of the daemon in the middle of a large S3 multipart upload: the restart resumes the
upload from the parts the server already has instead of starting over (issue 3, "How we will
know"). And when the file changed while the daemon was down, the stale upload is aborted and the
new content goes up.

Real everything: the daemon as a child process, moto's standalone S3 server behind a throttling
TCP proxy on loopback (12 MiB/s, so a 60 MiB file takes seconds and the kill lands after a few
parts, not after the last one), and SIGKILL.

The figures are counted three independent ways:
* the server: `list_parts` right after the kill (parts the server holds), and moto's request log,
  where every `UploadPart` is one `PUT /bucket/key?partNumber=N&uploadId=...` line, split at the
  moment of the kill;
* the transporter's checkpoint (`transporter_state/s3-multipart.db`, table `multipart_parts`);
* the daemon's own log line after the restart: "resuming multipart upload of KEY: R of M parts
  already there".
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import random
import re
import socket
import time
import urllib.parse
from typing import Any, Iterator

import pytest

from tests.e2e.harness import Daemon, Setup, counts, query, synced_inputs, wait_for, write_config
from tests.e2e.remote_trees import add_servers
from tests.servers.moto import FAKE_KEY_ID, FAKE_SECRET, MotoServer, TCPProxy

MiB = 1024 * 1024
FILE_SIZE = 60 * MiB
PART_SIZE = 5 * MiB                       # S3's smallest part
TOTAL_PARTS = -(-FILE_SIZE // PART_SIZE)  # 12
KEY = "big/video one.bin"                 # a space: the key is percent-encoded in the log lines
#: Throughput of the proxy in front of moto: ~0.4 s per part, ~5 s for the file.
RATE = 12 * MiB
#: Parts the checkpoint must hold before the kill.
PARTS_BEFORE_KILL = 3
RESUME_LINE = re.compile(r"resuming multipart upload of (.+): (\d+) of (\d+) parts already there")


def _close_promptly(proxy: TCPProxy) -> None:
    # TCPProxy.close() leaves its acceptor thread blocked in accept() (closing a listening socket
    # from another thread does not wake it on Linux) and then waits 10 s for it to join; a
    # shutdown() of the listener wakes it at once. See test_tcp_proxy_closes_promptly below.
    try:
        proxy._listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    proxy.close()


@pytest.fixture
def slow_moto(moto_server: MotoServer) -> Iterator[TCPProxy]:
    """moto behind a proxy capped at RATE bytes/s, so a kill lands in the middle of the upload."""
    proxy = TCPProxy(moto_server.port, rate=RATE)
    try:
        yield proxy
    finally:
        _close_promptly(proxy)


def _write_random(path: pathlib.Path, size: int, seed: int) -> str:
    """Incompressible bytes from a seeded RNG (reproducible); returns their MD5."""
    rng = random.Random(seed)
    digest = hashlib.md5()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for _chunk in range(size // MiB):
            block = rng.randbytes(MiB)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def _configure(tmp_path: pathlib.Path, endpoint: str, bucket: str, filter_xml: str = "") -> Setup:
    setup = write_config(tmp_path, filter_xml=filter_xml)
    add_servers(setup, {"s3": ("s3", {
        "bucket_name": bucket, "endpoint_url": endpoint, "access_key_id": FAKE_KEY_ID,
        "secret_access_key": FAKE_SECRET, "multipart_threshold": "5MiB",
        "multipart_chunksize": "5MiB", "multipart_concurrency": "1"}, 1)}, keep_local=False)
    return setup


def _checkpoint(setup: Setup) -> str:
    return os.path.join(setup.state, "transporter_state", "s3-multipart.db")


def _checkpointed_parts(setup: Setup) -> list[int]:
    return [r[0] for r in query(_checkpoint(setup),
                                "SELECT part_number FROM multipart_parts ORDER BY part_number")]


def _open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _part_puts(server: MotoServer, bucket: str, start: int) -> list[tuple[str, int]]:
    """(upload id, part number) of every UploadPart moto logged after byte `start` of its log."""
    with open(server.log, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", errors="replace")
    quoted = urllib.parse.quote(KEY)
    found = []
    for match in re.finditer(r'"PUT /([^/ ]+)/(\S+)\?(\S+) HTTP/1\.1" 200', text):
        if match.group(1) != bucket or match.group(2) != quoted:
            continue
        query_args = urllib.parse.parse_qs(match.group(3))
        if "partNumber" in query_args:
            found.append((query_args["uploadId"][0], int(query_args["partNumber"][0])))
    return found


def _object_md5(client: Any, bucket: str) -> str | None:
    try:
        body = client.get_object(Bucket=bucket, Key=KEY)["Body"]
    except client.exceptions.NoSuchKey:
        return None
    digest = hashlib.md5()
    for _chunk in range(FILE_SIZE // MiB + 2):
        block = body.read(MiB)
        if not block:
            break
        digest.update(block)
    return digest.hexdigest()


def _done(setup: Setup, client: Any, bucket: str, source: str) -> bool:
    """The upload finished: the object is there, the file is recorded, the pipeline is empty."""
    if source not in synced_inputs(setup) or any(counts(setup).values()):
        return False
    return bool(client.list_objects_v2(Bucket=bucket, Prefix=KEY).get("KeyCount"))


@dataclasses.dataclass
class Interrupted:
    """A daemon SIGKILLed in the middle of the multipart upload of `source`."""

    setup: Setup
    client: Any
    source: pathlib.Path
    md5: str
    upload_id: str
    server_parts: list[int]
    checkpointed: list[int]


def _interrupted_upload(tmp_path: pathlib.Path, moto_server: MotoServer, bucket: str,
                        proxy: TCPProxy, seed: int, decoys: int = 0) -> Interrupted:
    """Start the daemon on a FILE_SIZE file, wait for PARTS_BEFORE_KILL checkpointed parts and
    SIGKILL it; record the open upload's id, the parts the server holds and the checkpoint's.
    `decoys` empty files that no rule syncs make the start-up comparison of the tree longer."""
    client = moto_server.client()
    setup = _configure(tmp_path, proxy.endpoint, bucket,
                       "<filter><extensions>bin</extensions></filter>" if decoys else "")
    source = pathlib.Path(setup.source) / KEY
    for index in range(decoys):
        decoy = pathlib.Path(setup.source, f"decoys{index % 10}", f"{index}.txt")
        decoy.parent.mkdir(exist_ok=True)
        decoy.write_bytes(b"")
    md5 = _write_random(source, FILE_SIZE, seed)
    daemon = Daemon(setup).start()
    try:
        wait_for(lambda: len(_checkpointed_parts(setup)) >= PARTS_BEFORE_KILL, timeout=60,
                 what=f"{PARTS_BEFORE_KILL} parts in the multipart checkpoint")
    finally:
        daemon.kill()
    uploads = _open_uploads(client, bucket)
    assert [u["Key"] for u in uploads] == [KEY], f"one open upload expected: {uploads}"
    upload_id = uploads[0]["UploadId"]
    server_parts = sorted(p["PartNumber"] for p in client.list_parts(
        Bucket=bucket, Key=KEY, UploadId=upload_id).get("Parts", []))
    assert len(server_parts) < TOTAL_PARTS, \
        f"the upload finished before the kill ({server_parts}); the proxy is not slowing it"
    return Interrupted(setup, client, source, md5, upload_id, server_parts,
                       _checkpointed_parts(setup))


def test_kill9_during_multipart_upload_resumes_from_the_completed_parts(
        tmp_path: pathlib.Path, moto_server: MotoServer, s3_bucket: str, slow_moto: TCPProxy) -> None:
    run = _interrupted_upload(tmp_path, moto_server, s3_bucket, slow_moto, seed=20250601)
    setup, client, source = run.setup, run.client, run.source
    upload_id, server_parts, checkpointed = run.upload_id, run.server_parts, run.checkpointed

    with Daemon(setup) as daemon:
        wait_for(lambda: _done(setup, client, s3_bucket, str(source)), timeout=90,
                 what="the resumed upload to complete")
        assert daemon.terminate() == 0
    log = pathlib.Path(setup.log_file).read_text(encoding="utf-8", errors="replace")

    resumed = [m.groups() for m in RESUME_LINE.finditer(log)]
    assert resumed, f"no resume logged; log tail:\n{log[-3000:]}"
    reused, total = int(resumed[-1][1]), int(resumed[-1][2])
    sent_after_restart = total - reused
    # Split by process, not by time: bytes the killed daemon had already written into its socket
    # are still delivered (the kernel flushes a dead process's send buffer), so the part in
    # flight at the kill may complete on the server *after* the kill. Hence counted as a whole:
    # every UploadPart the server ever accepted for this key, against the parts of the file.
    puts = _part_puts(moto_server, s3_bucket, 0)
    numbers = sorted(n for _u, n in puts)
    duplicated = sorted(n for n in set(numbers) if numbers.count(n) > 1)
    print(f"\nbefore kill -9: server held parts {server_parts}, checkpoint {checkpointed}")
    print(f"resumed: {reused} of {total} parts reused, {sent_after_restart} sent again after the "
          f"restart; the server accepted {len(puts)} UploadPart requests for {total} parts "
          f"(parts received twice: {duplicated or 'none'})")

    assert total == TOTAL_PARTS
    assert {u for u, _n in puts} == {upload_id}, "the restart must continue the same upload"
    assert reused >= PARTS_BEFORE_KILL and reused == len(checkpointed)
    assert sent_after_restart < TOTAL_PARTS, "it started over instead of resuming"
    assert set(numbers) == set(range(1, TOTAL_PARTS + 1))
    # Only a part in flight at the kill (at most multipart_concurrency = 1 of them) may reach the
    # server twice: the checkpoint had no record of it, so it cannot be vouched for.
    assert len(puts) - TOTAL_PARTS <= 1 and len(duplicated) <= 1, f"parts sent twice: {numbers}"
    assert set(duplicated) <= set(range(1, TOTAL_PARTS + 1)) - set(checkpointed)
    assert _object_md5(client, s3_bucket) == run.md5
    assert _open_uploads(client, s3_bucket) == [], "an orphaned multipart upload is left"
    assert _checkpointed_parts(setup) == [], "the checkpoint outlived the completed upload"
    head = client.head_object(Bucket=s3_bucket, Key=KEY)
    assert head["ContentLength"] == FILE_SIZE and head["ETag"].strip('"').endswith(f"-{TOTAL_PARTS}")


NEW_SIZE = FILE_SIZE - 10 * MiB


@dataclasses.dataclass
class ChangedWhileDown:
    """The file was rewritten while the daemon was down, then the daemon ran until it synced."""

    interrupted: Interrupted
    new_md5: str
    log: str
    #: Part numbers the server accepted for the stale upload, and for each later upload.
    stale_parts: list[int]
    new_uploads: dict[str, list[int]]


def _change_while_down(tmp_path: pathlib.Path, moto_server: MotoServer, bucket: str,
                       proxy: TCPProxy, decoys: int = 0) -> ChangedWhileDown:
    run = _interrupted_upload(tmp_path, moto_server, bucket, proxy, seed=1, decoys=decoys)
    # Other bytes, another size (fewer parts).
    new_md5 = _write_random(run.source, NEW_SIZE, seed=2)
    with Daemon(run.setup) as daemon:
        wait_for(lambda: _done(run.setup, run.client, bucket, str(run.source)), timeout=90,
                 what="the new content to be uploaded")
        assert daemon.terminate() == 0
    log = pathlib.Path(run.setup.log_file).read_text(encoding="utf-8", errors="replace")
    by_upload: dict[str, list[int]] = {}
    for upload, number in _part_puts(moto_server, bucket, 0):
        by_upload.setdefault(upload, []).append(number)
    stale_parts = sorted(by_upload.pop(run.upload_id, []))
    print(f"\nstale upload aborted (the server had parts {stale_parts} of it); the new content "
          f"went up in {len(by_upload)} new upload(s) of {NEW_SIZE // PART_SIZE} parts")
    return ChangedWhileDown(run, new_md5, log, stale_parts, by_upload)


def test_file_changed_while_down_aborts_the_stale_upload_and_sends_the_new_content(
        tmp_path: pathlib.Path, moto_server: MotoServer, s3_bucket: str, slow_moto: TCPProxy) -> None:
    changed = _change_while_down(tmp_path, moto_server, s3_bucket, slow_moto)
    run, log, client = changed.interrupted, changed.log, changed.interrupted.client

    # The stale upload got no part after the restart (at most the one in flight at the kill,
    # delivered late from the dead process's socket buffer).
    assert len(changed.stale_parts) <= len(run.server_parts) + 1
    # Each new upload is a whole one of the new content (how many: see
    # test_file_changed_while_down_is_uploaded_once below).
    assert changed.new_uploads and all(sorted(v) == list(range(1, NEW_SIZE // PART_SIZE + 1))
                                       for v in changed.new_uploads.values())
    assert not RESUME_LINE.search(log), "a changed file must not resume the old upload"
    assert re.search(r"aborting the stale multipart upload|changed since its multipart upload "
                     r"began; aborting", log), f"no abort logged; log tail:\n{log[-3000:]}"
    assert _object_md5(client, s3_bucket) == changed.new_md5
    assert _open_uploads(client, s3_bucket) == [], "the stale upload was not aborted"
    with pytest.raises(client.exceptions.NoSuchUpload):
        client.list_parts(Bucket=s3_bucket, Key=KEY, UploadId=run.upload_id)
    assert _checkpointed_parts(run.setup) == []
    assert query(_checkpoint(run.setup), "SELECT COUNT(*) FROM multipart_uploads") == [(0,)]


def test_file_changed_while_down_is_uploaded_once(
        tmp_path: pathlib.Path, moto_server: MotoServer, s3_bucket: str, slow_moto: TCPProxy) -> None:
    # 3,000 files that no rule syncs: the start-up comparison takes long enough that the recovered
    # file is always dispatched before the scan reports it modified (without them, a loaded
    # machine sometimes lets the scan win and the two merge).
    changed = _change_while_down(tmp_path, moto_server, s3_bucket, slow_moto, decoys=3000)
    synced_lines = re.findall(r"INFO .* Synced .* to s3: ", changed.log)
    assert (len(changed.new_uploads), len(synced_lines)) == (1, 1)


def test_tcp_proxy_closes_promptly(moto_server: MotoServer) -> None:
    """The acceptor must end when the proxy closes (it used to stay blocked in accept(), and
    close() waited out a 10 s join for it)."""
    proxy = TCPProxy(moto_server.port, rate=RATE)
    proxy.close()
    assert not proxy._acceptor.is_alive()
