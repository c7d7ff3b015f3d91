"""The daemon with one config that uses every transporter at once, under churn; then each
destination compared with the source by listing and content (issue 3, "How we will know").

One source, one rule, seven destinations on real servers on loopback: `s3` and `cf` on moto (two
buckets; a CloudFront distribution created in moto for `cf`), `sftp` on OpenSSH's sshd, `ftp` and
`ftps` (explicit TLS, PROT P required) on pyftpdlib, `cloudfiles` on an all-in-one OpenStack
Swift, and `symlink_or_copy` to a local directory.

The tree starts with ~200 files in nested directories, some with hostile names; the daemon starts
and, while it makes its initial sync, a seeded random churn creates, modifies, deletes and renames
files and directories for a few seconds (the seed is printed; set FC_E2E_SEED to replay one).
Then, once the pipeline is empty and synced_files.db has one row per (source file, server), every
destination is listed and read around the daemon and must equal the source byte for byte.

Every server fixture either starts or fails the test (sshd and Swift skip with their reason when
their binaries are missing; the skip reason shows in pytest's summary with -rs).
"""
from __future__ import annotations

import os
import pathlib
import random
import time
from typing import Callable

import pytest

from tests.e2e.harness import Daemon, Setup, counts, tree, wait_for, write_config
from tests.e2e.remote_trees import (
    add_servers,
    compare,
    directory_files,
    s3_objects,
    swift_objects,
    synced_rows,
    temp_leftovers,
)
from tests.servers.ftpd import FTPServer
from tests.servers.moto import (
    FAKE_KEY_ID,
    FAKE_SECRET,
    Distribution,
    MotoServer,
    empty_bucket,
    new_bucket_name,
)
from tests.servers.sshd import SSHServer
from tests.servers.swift import SwiftServer

HOSTILE_NAMES = (
    "with space.txt",
    "hash#fragment.css",
    "question?mark.js",
    "percent%20literal%.txt",
    "plus+sign.html",
    "non-ascii-\u00e9\u00e8\u00fc\u4e2d\u6587.txt",
    "emoji-\U0001f600.txt",
    "quote'single.txt",
)
INITIAL_FILES = 200
CHURN_SECONDS = 4.0
#: Upper bound on churn operations, whatever the clock says.
MAX_CHURN_OPS = 400
SYNC_TIMEOUT = 90.0


class Churn:
    """Seeded random changes to a tree: create, modify, delete, rename files and directories."""

    def __init__(self, root: str, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.counter = 0
        self.done: dict[str, int] = {}

    def _name(self, stem: str) -> str:
        self.counter += 1
        hostile = self.rng.choice(HOSTILE_NAMES) if self.rng.random() < 0.2 else "f.txt"
        return f"{stem}{self.counter}-{hostile}"

    def write(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        size = self.rng.choice((0, 1, 100, 4096, 30_000))
        with open(path, "wb") as handle:
            handle.write(self.rng.randbytes(size))

    def files(self) -> list[str]:
        return sorted(os.path.join(self.root, p) for p in tree(self.root))

    def directories(self) -> list[str]:
        return sorted(d for d, _dirs, _files in os.walk(self.root) if d != self.root)

    def populate(self, count: int) -> None:
        for index in range(count):
            depth = self.rng.randint(0, 3)
            parts = [f"d{self.rng.randint(0, 4)}" for _ in range(depth)]
            name = HOSTILE_NAMES[index] if index < len(HOSTILE_NAMES) else f"file{index}.txt"
            if index == len(HOSTILE_NAMES):
                parts = ["dir with space", "\u00fcber#dir"]
            self.write(os.path.join(self.root, *parts, name))

    def step(self) -> None:
        files, directories = self.files(), self.directories()
        operation = self.rng.choices(
            ["create", "modify", "delete", "rename", "rename_dir", "new_dir"],
            weights=[30, 30, 15, 15, 3, 3])[0]
        if operation in ("modify", "delete", "rename") and not files:
            operation = "create"
        if operation == "rename_dir" and not directories:
            operation = "new_dir"
        if operation == "create":
            parent = self.rng.choice([self.root, *directories])
            self.write(os.path.join(parent, self._name("new")))
        elif operation == "modify":
            path = self.rng.choice(files)
            with open(path, "ab") as handle:
                handle.write(self.rng.randbytes(self.rng.randint(1, 5000)))
        elif operation == "delete":
            os.remove(self.rng.choice(files))
        elif operation == "rename":
            path = self.rng.choice(files)
            target = self.rng.choice([self.root, *directories])
            os.rename(path, os.path.join(target, self._name("moved")))
        elif operation == "rename_dir":
            path = self.rng.choice(directories)
            os.rename(path, os.path.join(os.path.dirname(path), self._name("dir").replace(".", "_")))
        else:
            directory = os.path.join(self.rng.choice([self.root, *directories]), self._name("nd"))
            for index in range(self.rng.randint(1, 5)):
                self.write(os.path.join(directory, f"inner{index}.txt"))
        self.done[operation] = self.done.get(operation, 0) + 1

    def run(self, seconds: float, max_ops: int) -> None:
        deadline = time.monotonic() + seconds
        for _op in range(max_ops):
            if time.monotonic() >= deadline:
                return
            self.step()
            # Pacing, not waiting: spread the churn over the initial sync instead of one burst.
            time.sleep(0.01)


@pytest.fixture
def second_bucket(moto_server: MotoServer, request: pytest.FixtureRequest) -> str:
    """A bucket of its own for `s3` (`s3_bucket` is the CloudFront origin used by `cf`)."""
    client = moto_server.client()
    name = new_bucket_name("fc-all")
    client.create_bucket(Bucket=name)

    def remove() -> None:
        empty_bucket(client, name)
        client.delete_bucket(Bucket=name)

    request.addfinalizer(remove)
    return name


def test_every_transporter_at_once_under_churn(
        tmp_path: pathlib.Path, moto_server: MotoServer, s3_bucket: str, second_bucket: str,
        cloudfront_distribution: Distribution, sshd: SSHServer, ftpd: FTPServer,
        ftpsd: FTPServer, swift: SwiftServer) -> None:
    seed = int(os.environ.get("FC_E2E_SEED", time.time_ns() % 2**32))
    print(f"\nchurn seed: {seed} (replay with FC_E2E_SEED={seed})")
    rng = random.Random(seed)

    setup = write_config(tmp_path)
    s3_settings = {"endpoint_url": moto_server.endpoint, "access_key_id": FAKE_KEY_ID,
                   "secret_access_key": FAKE_SECRET}
    sftp_root, ftp_root, ftps_root = sshd.new_root(), ftpd.new_root(), ftpsd.new_root()
    container = swift.new_container()
    add_servers(setup, {
        "s3": ("s3", {**s3_settings, "bucket_name": second_bucket}, 4),
        "cf": ("cf", {**s3_settings, "bucket_name": s3_bucket,
                      "distro_domain_name": cloudfront_distribution.domain_name,
                      "cloudfront_endpoint_url": moto_server.endpoint,
                      "invalidation_window": "0.2"}, 4),
        "sftp": ("sftp", sshd.settings(sftp_root), 3),
        "ftp": ("ftp", ftpd.settings(ftp_root), 3),
        "ftps": ("ftp", ftpsd.settings(ftps_root), 3),
        "swift": ("cloudfiles", swift.settings(container), 3),
    })
    s3 = moto_server.client()
    readers: dict[str, Callable[[], dict[str, bytes]]] = {
        "local": lambda: tree(setup.dest),
        "s3": lambda: s3_objects(s3, second_bucket),
        "cf": lambda: s3_objects(s3, s3_bucket),
        "sftp": lambda: directory_files(sftp_root),
        "ftp": lambda: directory_files(ftp_root),
        "ftps": lambda: directory_files(ftps_root),
        "swift": lambda: swift_objects(swift.auth_url, swift.user, swift.key, container),
    }

    churn = Churn(setup.source, rng)
    churn.populate(INITIAL_FILES)
    started = time.monotonic()
    with Daemon(setup) as daemon:
        churn.run(CHURN_SECONDS, MAX_CHURN_OPS)
        print(f"churn: {sum(churn.done.values())} operations {dict(sorted(churn.done.items()))}")
        source = tree(setup.source)
        expected_rows = {(os.path.join(setup.source, p), server)
                         for p in source for server in readers}
        _wait_synced(setup, daemon, expected_rows)
        synced_after = time.monotonic() - started
        problems: list[str] = []
        for name, read in readers.items():
            remote = read()
            problems += compare(name, source, remote)
            print(f"  {name:6} {len(remote)} files, {sum(map(len, remote.values()))} bytes")
        for name, root in (("sftp", sftp_root), ("ftp", ftp_root), ("ftps", ftps_root)):
            leftovers = temp_leftovers(root)
            if leftovers:
                problems.append(f"{name}: temporary files left behind: {leftovers[:5]}")
        rows = synced_rows(setup)
        problems += _row_problems(rows, expected_rows, cloudfront_distribution.domain_name)
        assert not problems, "\n".join(problems) + f"\nseed {seed}; log tail:\n{daemon.log_tail()}"
        assert daemon.terminate() == 0
    print(f"{len(source)} source files x {len(readers)} servers in sync {synced_after:.1f} s "
          f"after start; {len(rows)} synced_files rows")


def _wait_synced(setup: Setup, daemon: Daemon, expected_rows: set[tuple[str, str]]) -> None:
    """Pipeline empty (queue, in flight, failed) and one synced_files row per (file, server)."""
    def synced() -> bool:
        if any(counts(setup).values()):
            return False
        return {(r[0], r[1]) for r in synced_rows(setup)} == expected_rows

    try:
        wait_for(synced, SYNC_TIMEOUT, "pipeline empty and every file recorded on every server")
    except AssertionError as error:
        rows = {(r[0], r[1]) for r in synced_rows(setup)}
        raise AssertionError(
            f"{error}\ncounts: {counts(setup)}\nrows missing: {sorted(expected_rows - rows)[:10]}"
            f"\nrows extra: {sorted(rows - expected_rows)[:10]}\nlog tail:\n{daemon.log_tail()}"
        ) from None


def _row_problems(rows: list[tuple[str, str, str]], expected: set[tuple[str, str]],
                  domain: str) -> list[str]:
    problems = []
    keys = [(r[0], r[1]) for r in rows]
    if len(keys) != len(set(keys)):
        problems.append("synced_files has more than one row for a (file, server)")
    if set(keys) != expected:
        problems.append(f"synced_files rows differ: missing {sorted(expected - set(keys))[:5]}, "
                        f"extra {sorted(set(keys) - expected)[:5]}")
    bad_urls = [r for r in rows if not (r[2] or "").startswith(("http://", "https://"))]
    if bad_urls:
        problems.append(f"rows without an absolute URL: {bad_urls[:5]}")
    for server in {r[1] for r in rows}:
        urls = [r[2] for r in rows if r[1] == server]
        if len(urls) != len(set(urls)):
            problems.append(f"{server}: two files recorded with the same URL")
    cf_off_domain = [r for r in rows if r[1] == "cf" and not r[2].startswith(f"https://{domain}/")]
    if cf_off_domain:
        problems.append(f"cf URLs not on the distribution's domain {domain}: {cf_off_domain[:3]}")
    return problems

