"""Special files and symlinks in a source tree, against the real daemon (issue 7, items 8 and 17).

A FIFO swapped in for a file that is in flight must not hang a processor thread (and with it the
pipeline and `stop`), and a symlink out of the source tree must never publish what it points to.
"""
from __future__ import annotations

import os

import pytest

from tests.e2e.harness import Daemon, counts, query, tree, wait_for, write_config
from tests.e2e.test_daemon import cli, write

GATED_MINIFY = ("tests.e2e.processors.Gate", "minify.CSS")
COPY = ("tests.e2e.processors.Copy",)


def test_a_fifo_swapped_in_for_a_file_in_flight_blocks_no_thread(tmp_path):
    """Issue 7 item 8: while the only processor thread is busy (a held file), b.css is planned,
    then replaced by a FIFO before its chain runs. The chain must not open the FIFO (minify.CSS
    blocked for ever in open()): later files are still processed, and `stop` stops the process.

    If the swap happens to beat the planning (which then skips the FIFO), the test passes without
    exercising the chain: the planning runs within milliseconds of the file entering the in-flight
    list, which the test waits for, so that is rare."""
    setup = write_config(tmp_path, processors=GATED_MINIFY,
                         settings={"MAX_SIMULTANEOUS_PROCESSORCHAINS": "1", "SHUTDOWN_TIMEOUT": "5"})
    swapped = os.path.join(setup.source, "b.css")
    daemon = Daemon(setup).start()
    try:
        write(os.path.join(setup.source, "a.held"), "a")
        wait_for(lambda: os.path.exists(os.path.join(setup.root, "entered-a.held")), 30,
                 "the processor thread to be busy")
        write(swapped, "b  {  color : red ;  }\n")
        wait_for(lambda: swapped in in_flight(setup), 30, "b.css to be in flight")
        staged = os.path.join(setup.root, "staged.fifo")
        os.mkfifo(staged)
        os.rename(staged, swapped)
        open(os.path.join(setup.root, "open-gate"), "w").close()
        write(os.path.join(setup.source, "c.css"), "c  {  color : blue ;  }\n")
        try:
            wait_for(lambda: tree(setup.dest).get("c.css") == b"c{color:blue}", 30,
                     "a later file to be processed and published")
        except AssertionError as error:
            raise AssertionError(f"{error}; the processor thread is stuck?\n{daemon.log_tail()}") from None
        assert "b.css" not in tree(setup.dest)
        stopped = cli("stop", "--config", setup.config, timeout=120)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert daemon.process is not None and daemon.process.wait(10) == 0
        assert not os.path.exists(setup.pid_file)
        assert "did not stop within" not in daemon.log_tail(400)
    finally:
        daemon.kill()


def in_flight(setup) -> set[str]:
    return {row[0] for row in query(setup.db("persistent_data.db"), "SELECT input_file FROM pipeline_list")}


def _leaky_tree(setup_root: str, source: str) -> str:
    """A secret outside the tree, a link to it, and a safe link inside the tree. Returns the secret."""
    secret = os.path.join(setup_root, "secret.txt")
    write(secret, "TOP SECRET shadow line")
    os.chmod(secret, 0o600)
    write(os.path.join(source, "sub", "real.txt"), "real content")
    os.symlink(secret, os.path.join(source, "leak.txt"))
    os.symlink(os.path.join("sub", "real.txt"), os.path.join(source, "ok.txt"))
    return secret


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_a_symlink_out_of_the_source_tree_is_not_published(tmp_path, mode):
    """Issue 7 item 17: a link to /etc/shadow in a web-writable upload directory published its
    content. Only links that resolve inside their source tree are synced (rsync's safe links)."""
    setup = write_config(tmp_path, processors=COPY if mode == "copy" else ())
    _leaky_tree(setup.root, setup.source)
    with Daemon(setup) as daemon:
        wait_for(lambda: tree(setup.dest).get("ok.txt") == b"real content"
                 and tree(setup.dest).get(os.path.join("sub", "real.txt")) == b"real content"
                 and counts(setup)["pipeline_queue"] == counts(setup)["pipeline_list"] == 0,
                 30, "the safe files to be published and the pipeline to be quiet")
        published = tree(setup.dest)
        assert "leak.txt" not in published, daemon.log_tail()
        assert not any(b"TOP SECRET" in data for data in published.values())
        assert not os.path.lexists(os.path.join(setup.dest, "leak.txt"))


def test_the_explicit_setting_syncs_links_out_of_the_tree(tmp_path):
    setup = write_config(tmp_path, processors=COPY, settings={"SYNC_UNSAFE_SYMLINKS": "true"})
    _leaky_tree(setup.root, setup.source)
    with Daemon(setup):
        wait_for(lambda: tree(setup.dest).get("leak.txt") == b"TOP SECRET shadow line", 30,
                 "the link out of the tree to be published, as the setting asks")


@pytest.mark.parametrize("backend", ["inotify", "polling"])
def test_a_synced_file_replaced_by_a_fifo_is_unpublished(tmp_path, backend):
    """As a file it is gone: its published copy goes (in link mode a web server following the
    link would open the FIFO and hang)."""
    setup = write_config(tmp_path, settings={"FSMONITOR_BACKEND": backend, "POLL_INTERVAL": "0.2"})
    path = os.path.join(setup.source, "a.txt")
    published = os.path.join(setup.dest, "a.txt")
    with Daemon(setup) as daemon:
        write(path, "a")
        wait_for(lambda: tree(setup.dest).get("a.txt") == b"a", 30, "a.txt to be published")
        staged = os.path.join(setup.root, "staged.fifo")
        os.mkfifo(staged)
        os.rename(staged, path)
        try:
            wait_for(lambda: not os.path.lexists(published), 30, "the published copy to be removed")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{daemon.log_tail()}") from None


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_a_synced_file_replaced_by_a_link_out_of_the_tree_is_unpublished(tmp_path, mode):
    """The planning refuses the link, but the copy published before must go as well: in link mode
    the web root's link points at the source path, which now leads to the secret."""
    setup = write_config(tmp_path, processors=COPY if mode == "copy" else ())
    secret = _leaky_tree(setup.root, setup.source)
    path = os.path.join(setup.source, "a.txt")
    with Daemon(setup) as daemon:
        write(path, "a")
        wait_for(lambda: tree(setup.dest).get("a.txt") == b"a", 30, "a.txt to be published")
        staged = os.path.join(setup.root, "staged-link")
        os.symlink(secret, staged)
        os.rename(staged, path)
        try:
            wait_for(lambda: "a.txt" not in tree(setup.dest), 30, "the published copy to be removed")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{daemon.log_tail()}") from None
        assert not any(b"TOP SECRET" in data for data in tree(setup.dest).values())


def test_a_self_restart_refuses_a_working_dir_made_unsafe_in_the_config(tmp_path):
    """The config is reloaded at each self-restart: a WORKING_DIR that another user can write is
    refused then too (the previous config is kept), not only at start."""
    setup = write_config(tmp_path)
    marker = os.path.join(setup.state, "crash-now")
    config = open(setup.config).read().replace('transporter="symlink_or_copy"', 'transporter="tests.e2e.crashy"')
    open(setup.config, "w").write(config.replace("</location>", f"</location><crash_marker>{marker}</crash_marker>"))
    shared = os.path.join(setup.root, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    open(marker, "w").close()
    with Daemon(setup) as daemon:
        text = open(setup.config).read()
        start = text.index("<WORKING_DIR>") + len("<WORKING_DIR>")
        open(setup.config, "w").write(text[:start] + shared + text[text.index("</WORKING_DIR>"):])
        write(os.path.join(setup.source, "a.txt"), "a")
        wait_for(lambda: "has restarted itself" in open(setup.log_file).read(), 30, "a self-restart")
        log = open(setup.log_file).read()
        assert "The config can no longer be used" in log and "WORKING_DIR" in log, daemon.log_tail()
        os.remove(marker)
        wait_for(lambda: tree(setup.dest).get("a.txt") == b"a", 30, "a.txt to be published")
        assert os.listdir(shared) == []
