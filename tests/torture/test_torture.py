"""The bounded run of the torture suite, part of the normal test suite (issue 7, "The proof").

Two fixed seeds (FC_TORTURE_SEED replays another; FC_TORTURE_CODE=DIR runs the daemon from another
copy of the package), up to twelve rounds each, cycling through every fault kind (in a fixed order
per seed, at a random instant), within a time budget of about two minutes on a 2-core machine.
Each stops at its first violation and fails with its report (seed, round, operations,
differences). The long soak is scripts/torture.sh --rounds N --seed S.
"""
from __future__ import annotations

import os
import pathlib
import random
import sqlite3
import sys

import pytest

from tests.e2e.harness import REPO
from tests.servers.moto import MotoServer
from tests.servers.sshd import SSHServer
from tests.torture.invariants import compare_state, settle
from tests.torture.ops import Operations
from tests.torture.runner import FAULTS, Runner
from tests.torture.world import Servers, World

#: Two fixed seeds; FC_TORTURE_SEED replays another (for both cases).
SEEDS = (int(os.environ["FC_TORTURE_SEED"]),) * 2 if "FC_TORTURE_SEED" in os.environ else (20261201, 7)
#: Run the daemon from another copy of the package (a `git archive` snapshot of a commit).
CODE_DIR = os.path.abspath(os.environ.get("FC_TORTURE_CODE", REPO))
#: Every fault kind once per seed, in a different order for each, and one quiet round.
PLANS: tuple[tuple[str | None, ...], ...] = (
    (None, "kill9", "sftp_outage", "s3_outage", "disk_full", "inotify_overflow"),
    ("inotify_overflow", "disk_full", "s3_outage", None, "sftp_outage", "kill9"),
)
ROUNDS = 12
#: Seconds after which no new round starts (the servers' start and the last round come on top).
BUDGET = 55.0
#: Seconds a round may take to become quiet. Above the transporters' network timeout (60 s, and S3
#: tries a request twice): a request cut by a fault (a SIGSTOP, an outage) may take that long to fail
#: and be retried, which is slow but correct; a path that never settles still fails the round. (CI once failed at 30 s with
#: one S3 upload still in flight after a SIGSTOP round: seed 20261201, round 6; see the issue note.)
SETTLE_TIMEOUT = 130.0


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", [0, 1], ids=[f"seed{s}" for s in SEEDS])
def test_random_operations_and_faults_leave_every_destination_as_the_model_says(
        case: int, tmp_path: pathlib.Path, sshd_restartable: SSHServer, moto_server: MotoServer) -> None:
    servers = Servers(tmp_path, sshd_restartable, moto_server, CODE_DIR)
    try:
        runner = Runner(servers, SEEDS[case], FAULTS, operations=(5, 25), settle_timeout=SETTLE_TIMEOUT,
                        out=sys.stdout, fault_plan=PLANS[case])
        summary = runner.run(ROUNDS, budget=BUDGET, stop_on_violation=True)
    finally:
        servers.close()
    assert not summary.violations, "\n\n".join(v.report() for v in summary.violations)
    left_out = {"disk_full": servers.tmpfs_problem, "inotify_overflow": servers.inotify_problem}
    missing = {fault: reason for fault, reason in left_out.items() if reason}
    if missing:
        pytest.skip(f"{summary.rounds} rounds passed, but without the fault(s) "
                    + "; ".join(f"{f}: {r}" for f, r in missing.items()))


def test_the_checks_catch_damage_planted_behind_the_daemons_back(
        tmp_path: pathlib.Path, sshd_restartable: SSHServer, moto_server: MotoServer) -> None:
    """The invariants can fail: a synced world, then damage of each kind planted at the
    destinations and in synced_files, each of which the checks must name."""
    servers = Servers(tmp_path, sshd_restartable, moto_server, CODE_DIR)
    world = None
    try:
        world = World(servers, 1)
        ops = Operations(world.model, world.staging, world.outside_file, random.Random(SEEDS[0]))
        for _ in range(12):
            ops.op_create()
        world.start_daemon()
        problems, view, _seconds = settle(world, world.model, SETTLE_TIMEOUT)
        assert problems == [], problems
        held, _ = world.destinations()
        s3_key = sorted(held["s3"])[0]
        sftp_path = sorted(held["sftp"])[0]
        world.stop_daemon()
        pathlib.Path(world.local, "plain", "planted.txt").write_bytes(b"x")
        pathlib.Path(world.local, "plain", ".n1.txt.fctmp-0123456789ab").write_bytes(b"half")
        world.s3.delete_object(Bucket=world.bucket, Key=s3_key)
        sftp_file = pathlib.Path(world.sftp_root, sftp_path)
        sftp_file.write_bytes(sftp_file.read_bytes() + b"!")
        connection = sqlite3.connect(world.setup.db("synced_files.db"))
        with connection:
            connection.execute("UPDATE synced_files SET url = url || '?stale' WHERE server = 'sftp'")
        connection.close()
        found, _view = compare_state(world, world.model)
    finally:
        if world is not None:
            world.close()
        servers.close()
    text = "\n".join(found)
    for expected in ("local: 2 extra", "planted.txt", ".fctmp-", f"s3: 1 missing, e.g. ['{s3_key}']",
                     f"sftp: {sftp_path} holds", "synced_files: ", "?stale"):
        assert expected in text, f"{expected!r} not reported:\n{text}"
