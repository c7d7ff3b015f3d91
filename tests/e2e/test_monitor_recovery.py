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

from .harness import REPO, Daemon, counts, synced_inputs, wait_for, wait_in_sync, write_config


def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def command(config: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "fileconveyor", *argv, "--config", config],
                          capture_output=True, text=True, timeout=120, env=env)


def unwatched(config: str) -> dict[str, str]:
    return {u["path"]: u["reason"] for u in runtime(config).get("unwatched", [])}


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


def test_destination_re_pointed_into_a_source_tree_is_never_synced_back(tmp_path) -> None:
    """Item 4, defence in depth: check-config refuses a location inside a tree, but a location that
    becomes a symlink into one while the daemon runs must not start the loop (3 files became 3,039
    copies, 1,013 levels deep). (Re-pointed before the first upload: a location replaced after the
    transporter made its private temporary directory is another matter, see the report.)"""
    setup = write_config(tmp_path)
    inside = os.path.join(setup.source, "cdn")
    with Daemon(setup) as daemon:
        os.makedirs(inside)
        os.rmdir(setup.dest)
        os.symlink(inside, setup.dest)
        wait_for(lambda: inside in excluded(setup.config), timeout=15, what="the monitor excluding the destination")
        write(os.path.join(setup.source, "b.css"), "b{}")
        try:
            wait_for(lambda: os.path.lexists(os.path.join(inside, "b.css")), what="b.css published")
        except AssertionError:
            raise AssertionError(daemon.log_tail(30)) from None
        wait_for(lambda: all(v == 0 for v in counts(setup).values()), what="queues empty")
        # A later file, once published and its queue drained, proves the monitor reported
        # (in order) whatever it saw of the first one's copy.
        write(os.path.join(setup.source, "z.css"), "z{}")
        wait_for(lambda: os.path.lexists(os.path.join(inside, "z.css")), what="z.css published")
        wait_for(lambda: all(v == 0 for v in counts(setup).values()), what="queues empty")
        assert [n for n in sorted(os.listdir(inside)) if not n.startswith(".")] == ["b.css", "z.css"]
        assert synced_inputs(setup) == {os.path.join(setup.source, n) for n in ("b.css", "z.css")}


def runtime(config: str) -> dict:
    return json.loads(command(config, "status", "--json").stdout).get("runtime") or {}


def excluded(config: str) -> list[str]:
    return runtime(config).get("excluded", [])
