"""The daemon keeps watching trees that go away and come back, and symlinked trees (issue 7 item 9,
issue 11 #135), end to end: a real `fileconveyor run`, real inotify, `status`/`verify`/`stop` as a
user runs them.

Before: a source root deleted and re-created was never watched again (new files never synced until
a restart) while `status` showed nothing, and `status`, `verify` and `stop` refused to run (exit 2)
while a scanPath was missing; a symlinked scanPath lost every live event on inotify."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from .harness import REPO, Daemon, synced_inputs, wait_for, wait_in_sync, write_config


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def command(config: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "fileconveyor", *argv, "--config", config],
                          capture_output=True, text=True, timeout=120, env=env)


def unwatched(config: str) -> dict[str, str]:
    result = command(config, "status", "--json")
    runtime = json.loads(result.stdout).get("runtime") or {}
    return {u["path"]: u["reason"] for u in runtime.get("unwatched", [])}


def test_deleted_source_root_is_shown_by_status_and_watched_again(tmp_path) -> None:
    setup = write_config(tmp_path)
    with Daemon(setup) as daemon:
        write(os.path.join(setup.source, "before.css"), "a{}")
        wait_in_sync(setup, daemon)
        shutil.rmtree(setup.source)
        wait_for(lambda: setup.source in unwatched(setup.config), what="status listing the missing tree")
        human = command(setup.config, "status")
        assert human.returncode == 1, human.stdout + human.stderr  # a tree not watched is a problem
        assert f"PROBLEM: source tree {setup.source} is not watched: does not exist" in human.stdout, human.stdout
        checked = command(setup.config, "verify")
        assert checked.returncode != 2 and "Traceback" not in checked.stdout + checked.stderr, checked.stderr
        os.makedirs(os.path.join(setup.source, "img"))
        write(os.path.join(setup.source, "img", "after.css"), "b{}")
        wait_in_sync(setup, daemon)  # before.css unpublished, img/after.css published
        wait_for(lambda: not unwatched(setup.config), what="status without unwatched trees")


def test_stop_works_while_a_scan_path_is_missing(tmp_path) -> None:
    setup = write_config(tmp_path)
    with Daemon(setup) as daemon:
        os.rename(setup.source, setup.source + ".away")
        wait_for(lambda: setup.source in unwatched(setup.config), what="status listing the missing tree")
        stopped = command(setup.config, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert daemon.process is not None and daemon.process.wait(30) == 0


def test_symlinked_scan_path_syncs_live_changes_under_its_configured_path(tmp_path) -> None:
    """#135: only the start-up scan worked; files created later directly in the root were lost."""
    setup = write_config(tmp_path)
    real = setup.source + ".real"
    os.rename(setup.source, real)
    os.symlink(real, setup.source)
    write(os.path.join(real, "first.css"), "a{}")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        write(os.path.join(setup.source, "live.css"), "b{}")
        write(os.path.join(setup.source, "newdir", "deep.css"), "c{}")
        wait_in_sync(setup, daemon)
        assert synced_inputs(setup) == {os.path.join(setup.source, p)
                                        for p in ("first.css", "live.css", "newdir/deep.css")}
        said = f"{setup.source} is a symlink: watching {real}"  # published within a second
        wait_for(lambda: said in command(setup.config, "status").stdout, what=f"status saying {said!r}")
