"""The bounded run of the torture suite, part of the normal test suite (issue 7, "The proof").

A fixed seed (FC_TORTURE_SEED replays another; FC_TORTURE_CODE=DIR runs the daemon from another
copy of the package), a few rounds of random operations and every
fault kind, within a time budget of about two minutes on a 2-core machine; it stops at the
first violation and fails with its report (seed, round, operations, differences). The long soak
is scripts/torture.sh --rounds N --seed S.
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

from tests.e2e.harness import REPO
from tests.servers.moto import MotoServer
from tests.servers.sshd import SSHServer
from tests.torture.runner import FAULTS, Runner
from tests.torture.world import Servers

SEED = int(os.environ.get("FC_TORTURE_SEED", "20261201"))
#: Run the daemon from another copy of the package (a `git archive` snapshot of a commit).
CODE_DIR = os.path.abspath(os.environ.get("FC_TORTURE_CODE", REPO))
ROUNDS = 12
#: Seconds after which no new round starts (the servers' start and the last round come on top).
BUDGET = 110.0
SETTLE_TIMEOUT = 30.0


@pytest.mark.timeout(420)
def test_random_operations_and_faults_leave_every_destination_as_the_model_says(
        tmp_path: pathlib.Path, sshd_restartable: SSHServer, moto_server: MotoServer) -> None:
    servers = Servers(tmp_path, sshd_restartable, moto_server, CODE_DIR)
    try:
        runner = Runner(servers, SEED, FAULTS, operations=(5, 25), settle_timeout=SETTLE_TIMEOUT,
                        out=sys.stdout)
        summary = runner.run(ROUNDS, budget=BUDGET, stop_on_violation=True)
    finally:
        servers.close()
    assert not summary.violations, "\n\n".join(v.report() for v in summary.violations)
    left_out = {"disk_full": servers.tmpfs_problem, "inotify_overflow": servers.inotify_problem}
    missing = {fault: reason for fault, reason in left_out.items() if reason}
    if missing:
        pytest.skip(f"{summary.rounds} rounds passed, but without the fault(s) "
                    + "; ".join(f"{f}: {r}" for f, r in missing.items()))
