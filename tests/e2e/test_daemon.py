"""The daemon end to end: real process, real inotify, real files, real SQLite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest

from tests.e2e.harness import (
    REPO, Daemon, counts, query, synced_inputs, tree, wait_for, wait_in_sync, write_config,
)

COPY = ("tests.e2e.processors.Copy",)


def write(path: str, data: str | bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def cli(*args: str, cwd: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "fileconveyor", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_initial_sync_then_every_kind_of_change(tmp_path, mode):
    setup = write_config(tmp_path, processors=COPY if mode == "copy" else ())
    for i in range(30):
        write(os.path.join(setup.source, f"dir{i % 4}", "sub", f"file {i}.txt"), f"content {i}")
    write(os.path.join(setup.source, ".git", "HEAD"), "ignored")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert not os.path.exists(os.path.join(setup.dest, ".git"))
        if mode == "symlink":
            assert os.path.islink(os.path.join(setup.dest, "dir0", "sub", "file 0.txt"))
        else:
            assert not os.path.islink(os.path.join(setup.dest, "dir0", "sub", "file 0.txt"))

        write(os.path.join(setup.source, "new.txt"), "new")                       # create
        write(os.path.join(setup.source, "dir1", "sub", "file 1.txt"), "changed")  # modify
        os.remove(os.path.join(setup.source, "dir2", "sub", "file 2.txt"))          # delete
        wait_in_sync(setup, daemon)

        os.rename(os.path.join(setup.source, "new.txt"), os.path.join(setup.source, "moved.txt"))
        os.rename(os.path.join(setup.source, "dir3"), os.path.join(setup.source, "dir3-renamed"))
        wait_in_sync(setup, daemon)

        outside = os.path.join(setup.root, "outside")
        write(os.path.join(outside, "a", "b.txt"), "from outside")
        os.rename(outside, os.path.join(setup.source, "moved-in"))                 # dir moved in
        shutil.move(os.path.join(setup.source, "dir0"), os.path.join(setup.root, "gone"))  # dir moved out
        wait_in_sync(setup, daemon)

        for round_ in range(5):                                                     # mkdir -p + writes
            deep = os.path.join(setup.source, f"new{round_}", "b", "c")
            os.makedirs(deep)
            for level in (deep, os.path.dirname(deep), os.path.dirname(os.path.dirname(deep))):
                write(os.path.join(level, "x.txt"), level)
        wait_in_sync(setup, daemon)

        target = os.path.join(setup.source, "dir1", "sub", "file 5.txt")            # editor-style save
        temporary = target + ".swp"
        write(temporary, "saved by an editor")
        os.replace(temporary, target)
        wait_in_sync(setup, daemon)
        assert tree(setup.dest)["dir1/sub/file 5.txt"] == b"saved by an editor"
        assert daemon.terminate() == 0


def test_changes_while_stopped_are_found_at_start(tmp_path):
    setup = write_config(tmp_path, processors=COPY)
    for i in range(10):
        write(os.path.join(setup.source, f"f{i}.txt"), str(i))
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
    write(os.path.join(setup.source, "f1.txt"), "modified offline")
    os.remove(os.path.join(setup.source, "f2.txt"))
    write(os.path.join(setup.source, "deep", "er", "f10.txt"), "created offline")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)


def test_modified_file_with_a_new_unique_name_replaces_its_old_copy(tmp_path):
    setup = write_config(tmp_path, processors=("unique_filename.MD5",))
    path = os.path.join(setup.source, "css", "site.css")
    write(path, "body{}")
    with Daemon(setup) as daemon:
        wait_for(lambda: len(query(setup.db("synced_files.db"), "SELECT url FROM synced_files")) == 1,
                 what="first sync recorded")
        [(rowid, first_url)] = query(setup.db("synced_files.db"), "SELECT rowid, url FROM synced_files")
        write(path, "body{color:red}")
        wait_for(lambda: query(setup.db("synced_files.db"), "SELECT url FROM synced_files")[0][0] != first_url,
                 what="new URL recorded")
        wait_for(lambda: len(os.listdir(setup.dest + "/css")) == 1, what="old copy deleted")
        [(rowid2, url)] = query(setup.db("synced_files.db"), "SELECT rowid, url FROM synced_files")
        assert rowid2 == rowid, "rows are updated in place"
        [name] = os.listdir(setup.dest + "/css")
        assert url.endswith("/css/" + name) and name.startswith("site_")
        assert open(os.path.join(setup.dest, "css", name)).read() == "body{color:red}"
        assert daemon.terminate() == 0


HOSTILE = ["with space.txt", "quote'single.txt", 'quote"double.txt', "$(touch pwned).txt", "semi;colon.txt",
           "new\nline.txt", "per%25cent.txt", "hash#tag.txt", "question?.txt", "-leading-dash.txt",
           "e\u0301te\u0301.txt", "\u00e9t\u00e9.txt", "x" * 251 + ".txt", "plus+sign.txt", "back\\slash.txt"]


def test_hostile_file_names_are_synced_with_correct_urls(tmp_path):
    base = "http://cdn.example.test/static/"
    setup = write_config(tmp_path, processors=COPY, url=base)
    for name in HOSTILE:
        write(os.path.join(setup.source, "h", name), name)
    bad = os.path.join(os.fsencode(setup.source), b"bad\xff-name.txt")
    with open(bad, "wb") as handle:
        handle.write(b"not utf-8")
    write(os.path.join(setup.source, "after-bad.txt"), "fine")
    with Daemon(setup) as daemon:
        expected = {os.path.join(setup.source, "h", n) for n in HOSTILE} | {os.path.join(setup.source, "after-bad.txt")}
        wait_for(lambda: synced_inputs(setup) == expected and counts(setup)["pipeline_queue"] == 0,
                 what="hostile names synced")
        for input_file, url in query(setup.db("synced_files.db"), "SELECT input_file, url FROM synced_files"):
            relative = os.path.relpath(input_file, setup.source)
            assert url.startswith(base)
            assert urllib.parse.unquote(url[len(base):]) == relative
            assert "#" not in url[len(base):] and "?" not in url[len(base):] and " " not in url
            assert open(os.path.join(setup.dest, relative), "rb").read() == open(input_file, "rb").read()
        assert not os.path.exists(os.path.join(setup.root, "pwned"))
        assert not os.path.exists(os.path.join(setup.state, "pwned"))
        assert daemon.terminate() == 0
    log = open(setup.log_file, encoding="utf-8", errors="replace").read()
    assert sum(1 for line in log.splitlines() if "bad" in line and "UTF-8" in line) >= 1


def test_deletion_after_sync_applies_to_its_rule_only_and_is_not_propagated(tmp_path):
    setup = write_config(tmp_path, processors=COPY, deletion_delay="0.5",
                         filter_xml="<filter><extensions>upload</extensions></filter>")
    # A second rule without deletion for everything else.
    config = open(setup.config, encoding="utf-8").read().replace(
        "</rules>", '<rule for="site" label="keep"><filter><extensions>txt</extensions></filter><destinations><destination server="local" path="kept"/>'
        "</destinations></rule></rules>")
    open(setup.config, "w", encoding="utf-8").write(config)
    write(os.path.join(setup.source, "a.upload"), "temporary")
    write(os.path.join(setup.source, "b.txt"), "permanent")
    with Daemon(setup) as daemon:
        wait_for(lambda: not os.path.exists(os.path.join(setup.source, "a.upload")), what="source deleted")
        wait_for(lambda: counts(setup) == {"pipeline_queue": 0, "pipeline_list": 0, "failed_files_list": 0})
        wait_for(lambda: query(setup.db("persistent_data.db"), "SELECT COUNT(*) FROM files_to_delete_list")[0][0] == 0,
                 what="self-deletion consumed")
        assert open(os.path.join(setup.dest, "a.upload")).read() == "temporary", "deletion not propagated"
        assert os.path.join(setup.source, "a.upload") in synced_inputs(setup)
        assert os.path.exists(os.path.join(setup.source, "b.txt")), "the other rule's files stay"
        assert open(os.path.join(setup.dest, "kept", "b.txt")).read() == "permanent"
        assert daemon.terminate() == 0


def test_start_stop_status_and_sigterm_through_the_pid_file(tmp_path):
    setup = write_config(tmp_path)
    write(os.path.join(setup.source, "a.txt"), "a")
    started = cli("start", "--config", setup.config)
    assert started.returncode == 0, started.stderr
    pid = int(open(setup.pid_file).read())
    assert oct(os.stat(setup.pid_file).st_mode & 0o777) == "0o600"
    again = cli("start", "--config", setup.config)
    assert again.returncode == 1 and "already running" in again.stderr
    wait_in_sync(setup)
    status = cli("status", "--json", "--config", setup.config)
    report = json.loads(status.stdout)
    assert report["running"] and report["pid"] == pid and report["synced"] == {"local": 1}
    os.kill(pid, 15)  # kill -TERM $(cat pidfile)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             timeout=60, what="daemon exit")
    assert not os.path.exists(setup.pid_file)
    # It stays stopped: no restart after RESTART_INTERVAL (0.5 s in this config).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not os.path.exists(setup.pid_file), "the daemon restarted after SIGTERM"
        time.sleep(0.2)
    assert "Received SIGTERM" in open(setup.log_file).read()
    stopped = cli("status", "--config", setup.config)
    assert "not running" in stopped.stdout
    # start + stop through the CLI.
    assert cli("start", "--config", setup.config).returncode == 0
    result = cli("stop", "--config", setup.config)
    assert result.returncode == 0 and "stopped" in result.stdout
    assert not os.path.exists(setup.pid_file)


def test_start_reports_a_bad_config_and_a_stale_pid_file(tmp_path):
    setup = write_config(tmp_path)
    with open(setup.pid_file, "w") as handle:
        handle.write("999999\n")  # stale: no such process
    result = cli("start", "--config", setup.config)
    assert result.returncode == 0, result.stderr
    assert cli("stop", "--config", setup.config).returncode == 0
    broken = open(setup.config).read().replace('for="site"', 'for="nosuchsource"')
    open(setup.config, "w").write(broken)
    result = cli("start", "--config", setup.config)
    assert result.returncode == 2
    assert "config.xml:" in result.stderr and "Traceback" not in result.stderr


def test_verify_finds_missing_files_and_requeue_repairs_them(tmp_path):
    setup = write_config(tmp_path, processors=COPY)
    for i in range(5):
        write(os.path.join(setup.source, f"f{i}.txt"), str(i))
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert cli("verify", "--config", setup.config).returncode == 0
        os.remove(os.path.join(setup.dest, "f3.txt"))
        result = cli("verify", "--config", setup.config)
        assert result.returncode == 1 and "MISSING on local" in result.stdout and "f3.txt" in result.stdout
        module = subprocess.run([sys.executable, "-m", "fileconveyor.verify", "--config", setup.config, "--requeue"],
                                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
        assert module.returncode == 1 and "Queued 1 file(s) again" in module.stdout
        wait_for(lambda: os.path.exists(os.path.join(setup.dest, "f3.txt")), timeout=60, what="requeued file")
        wait_in_sync(setup, daemon)
        assert cli("verify", "--config", setup.config).returncode == 0


def test_unexpected_exception_in_a_thread_restarts_the_daemon(tmp_path):
    setup = write_config(tmp_path)
    marker = os.path.join(setup.state, "crash-now")
    config = open(setup.config).read().replace('transporter="symlink_or_copy"', 'transporter="tests.e2e.crashy"')
    config = config.replace("</location>", f"</location><crash_marker>{marker}</crash_marker>")
    open(setup.config, "w").write(config)
    open(marker, "w").close()
    write(os.path.join(setup.source, "a.txt"), "a")
    with Daemon(setup) as daemon:
        wait_for(lambda: "has restarted itself" in open(setup.log_file).read(), timeout=30, what="restart")
        log = open(setup.log_file).read()
        assert "injected crash" in log and "Traceback" in log
        os.remove(marker)
        wait_in_sync(setup, daemon)
        assert daemon.process.poll() is None
        assert daemon.terminate() == 0


def test_two_rules_sending_a_file_to_the_same_place_upload_it_once(tmp_path):
    setup = write_config(tmp_path, processors=COPY)
    config = open(setup.config, encoding="utf-8").read().replace(
        "</rules>", '<rule for="site" label="css too"><filter><extensions>css</extensions></filter>'
        '<destinations><destination server="local"/></destinations></rule></rules>')
    open(setup.config, "w", encoding="utf-8").write(config)
    checked = cli("check-config", "--config", setup.config)
    assert checked.returncode == 0 and "warning" in checked.stderr
    write(os.path.join(setup.source, "a.css"), "a{}")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        uploads = [line for line in open(setup.log_file) if "Synced " in line and "a.css" in line]
        assert len(uploads) == 1, uploads
        assert daemon.terminate() == 0


def test_sighup_reopens_the_log_file(tmp_path):
    setup = write_config(tmp_path)
    with Daemon(setup) as daemon:
        os.rename(setup.log_file, setup.log_file + ".1")  # what logrotate does
        daemon.process.send_signal(1)
        wait_for(lambda: os.path.exists(setup.log_file), what="log file reopened")
        write(os.path.join(setup.source, "after-rotation.txt"), "x")
        wait_for(lambda: "after-rotation.txt" in open(setup.log_file).read(), what="new lines in the new file")
        assert daemon.terminate() == 0


def test_upgrade_command_converts_an_original_state_directory(tmp_path):
    setup = write_config(tmp_path)
    import sqlite3
    conn = sqlite3.connect(setup.db("synced_files.db"))
    conn.execute("CREATE TABLE synced_files(input_file text, transported_file_basename text, url text, server text)")
    conn.execute("INSERT INTO synced_files VALUES (?, 'a.txt', 'http://x/a.txt', 'local')",
                 (os.path.join(setup.source, "a.txt"),))
    conn.commit()
    conn.close()
    refused = subprocess.run([sys.executable, "-m", "fileconveyor", "run", "--config", setup.config],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    assert refused.returncode == 1 and "fileconveyor upgrade" in refused.stderr
    upgraded = cli("upgrade", "--config", setup.config)
    assert upgraded.returncode == 0, upgraded.stderr
    again = cli("upgrade", "--config", setup.config)
    assert again.returncode == 0
    write(os.path.join(setup.source, "a.txt"), "a")
    with Daemon(setup) as daemon:
        wait_in_sync(setup, daemon)
        assert daemon.terminate() == 0


def test_repeated_crashes_back_off_and_recover(tmp_path):
    setup = write_config(tmp_path)
    marker = os.path.join(setup.state, "crash-now")
    config = open(setup.config).read().replace('transporter="symlink_or_copy"', 'transporter="tests.e2e.crashy"')
    config = config.replace("</location>", f"</location><crash_marker>{marker}</crash_marker>")
    open(setup.config, "w").write(config)
    open(marker, "w").close()
    write(os.path.join(setup.source, "a.txt"), "a")

    def waits() -> list[float]:
        return [float(line.split("Restarting in ")[1].split(" s")[0])
                for line in open(setup.log_file) if "Restarting in " in line]

    with Daemon(setup) as daemon:
        wait_for(lambda: len(waits()) >= 3, timeout=60, what="three restarts")
        first = waits()[:3]
        assert first == sorted(first) and first[2] >= 4 * first[0], first
        os.remove(marker)
        wait_in_sync(setup, daemon, timeout=60)
        assert daemon.process.poll() is None
        assert daemon.terminate() == 0
