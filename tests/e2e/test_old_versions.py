"""keepOldVersionsFor: old remote copies stay for a grace period (issue "Know what is on the remote",
item 5; the original File Conveyor's issue #9 asked for a delay before the old copy of a renamed
file is deleted). Real daemon, real inotify, a local destination, real SQLite files."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.e2e.harness import REPO, Daemon, counts, query, wait_for, write_config

GRACE = 3.0


def write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def published(setup) -> dict[str, str]:
    found = {}
    for name in os.listdir(setup.dest):
        full = os.path.join(setup.dest, name)
        if os.path.isfile(full) and name.startswith("app_"):
            with open(full, encoding="utf-8") as handle:
                found[name] = handle.read()
    return found


def quiet(setup) -> bool:
    return counts(setup) == {"pipeline_queue": 0, "pipeline_list": 0, "failed_files_list": 0}


def expiring(setup) -> int:
    return query(setup.db("synced_files.db"), "SELECT COUNT(*) FROM synced_copies WHERE delete_after IS NOT NULL")[0][0]


def make_setup(tmp_path):
    setup = write_config(tmp_path, processors=("unique_filename.MD5",))
    config = open(setup.config, encoding="utf-8").read().replace(
        'transporter="symlink_or_copy" maxConnections="4"',
        f'transporter="symlink_or_copy" maxConnections="4" keepOldVersionsFor="{GRACE}"')
    open(setup.config, "w", encoding="utf-8").write(config)
    return setup


def test_a_replaced_unique_copy_stays_for_the_grace_period_across_a_restart(tmp_path):
    """#9: v1's copy must survive v2 for keepOldVersionsFor seconds (it was deleted at once), be
    shown by `status`, survive a restart, and be deleted once the period is over."""
    setup = make_setup(tmp_path)
    source = os.path.join(setup.source, "app.js")
    with Daemon(setup):
        write(source, "var version = 1;")
        wait_for(lambda: quiet(setup) and list(published(setup).values()) == ["var version = 1;"], what="v1")
        write(source, "var version = 2;")
        wait_for(lambda: quiet(setup) and sorted(published(setup).values()) == ["var version = 1;", "var version = 2;"]
                 and expiring(setup) == 1, what="v2 beside v1, v1 marked as an old version")
        status = subprocess.run([sys.executable, "-m", "fileconveyor", "status", "--config", setup.config],
                                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
        assert "old versions kept on servers (keepOldVersionsFor): 1" in status.stdout, status.stdout
    # The daemon is down when the grace period ends: the deletion happens after the restart.
    deadline = query(setup.db("synced_files.db"), "SELECT delete_after FROM synced_copies WHERE delete_after IS NOT NULL")[0][0]
    wait_for(lambda: time.time() > deadline, timeout=GRACE + 5, what="the grace period to end while stopped")
    assert sorted(published(setup).values()) == ["var version = 1;", "var version = 2;"]
    with Daemon(setup):
        wait_for(lambda: list(published(setup).values()) == ["var version = 2;"] and expiring(setup) == 0,
                 timeout=30, what="v1 deleted after its grace period")
        assert query(setup.db("synced_files.db"), "SELECT COUNT(*) FROM synced_copies")[0][0] == 1


def test_a_version_that_comes_back_within_the_grace_period_is_kept(tmp_path):
    """Back to v1 before v1's grace period ends: v1's copy is wanted again and must not be deleted
    when the period it was marked with ends; v2's copy becomes the old version instead."""
    setup = make_setup(tmp_path)
    source = os.path.join(setup.source, "app.js")
    with Daemon(setup):
        write(source, "var version = 1;")
        wait_for(lambda: quiet(setup) and len(published(setup)) == 1, what="v1")
        write(source, "var version = 2;")
        wait_for(lambda: quiet(setup) and expiring(setup) == 1, what="v1 kept as an old version")
        write(source, "var version = 1;")
        wait_for(lambda: quiet(setup) and expiring(setup) == 1 and query(
            setup.db("synced_files.db"), "SELECT url FROM synced_files")[0][0].endswith(
                next(n for n, text in published(setup).items() if text == "var version = 1;")),
                 what="v1 recorded again, v2 now the old version")
        wait_for(lambda: list(published(setup).values()) == ["var version = 1;"], timeout=GRACE + 30,
                 what="v2 deleted after its grace period, v1 kept")


def test_a_deleted_file_keeps_its_copy_for_the_grace_period(tmp_path):
    setup = make_setup(tmp_path)
    source = os.path.join(setup.source, "app.js")
    with Daemon(setup):
        write(source, "var gone = true;")
        wait_for(lambda: quiet(setup) and len(published(setup)) == 1, what="synced")
        os.unlink(source)
        wait_for(lambda: quiet(setup) and query(setup.db("synced_files.db"), "SELECT COUNT(*) FROM synced_files")[0][0] == 0,
                 what="row removed at once")
        assert list(published(setup).values()) == ["var gone = true;"], "the copy stays for its grace period"
        wait_for(lambda: not published(setup) and expiring(setup) == 0, timeout=GRACE + 30,
                 what="copy deleted after the grace period")
