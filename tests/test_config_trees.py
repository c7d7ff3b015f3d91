"""What a watched tree may hold (issue 7 items 4, 9 and 17): check-config refuses a local destination,
another source, or the daemon's own state inside a watched tree (it would sync its own output for
ever: 3 files became 3,039 copies, 1,013 levels deep) unless that directory is ignored, and a tree
holding system directories unless the config confirms it; a missing scanPath stops `start` only.

Each refusal failed before (the config loaded). Broken configs are small documents written to
tmp_path, with the line the problem must be reported on marked `<!--HERE-->`."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from fileconveyor.config import ConfigError, check_config, load_config, written_by_daemon

from .test_config import MARK, REPO, RULES, doc, write


def local_server(location: str, mark: bool = True) -> str:
    return ('<servers>\n    <server name="web" transporter="symlink_or_copy">\n'
            f'      <location>{location}</location>{MARK if mark else ""}\n'
            '      <url>http://localhost/static/</url>\n    </server>\n  </servers>')


LOCAL_RULES = RULES.replace('server="cdn"', 'server="web"')


def sources(attributes: str = "", *extra: str) -> str:
    lines = [f'    <source name="site" scanPath="{{scan}}"/>'] + [f"    {e}" for e in extra]
    return f"<sources {attributes}>\n" + "\n".join(lines) + "\n  </sources>"


def errors(path: str) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in check_config(path) if p.severity == "error"]


def test_local_destination_inside_a_source_tree_is_refused(tmp_path: pathlib.Path) -> None:
    path, line = write(tmp_path, doc(servers=local_server("{scan}/cdn"), rules=LOCAL_RULES))
    found = errors(path)
    assert [n for n, _ in found] == [line], found
    message = found[0][1]
    assert "inside the watched tree of source 'site'" in message and "for ever" in message
    assert "write a location outside it" in message and "add 'cdn' to <sources ignoredDirs" in message


def test_a_refused_tree_does_not_stop_the_commands_that_do_not_watch(tmp_path: pathlib.Path) -> None:
    """`stop` must be able to stop a daemon whose location became a symlink into its tree."""
    path, _ = write(tmp_path, doc(servers=local_server("{scan}/cdn"), rules=LOCAL_RULES))
    with pytest.raises(ConfigError, match="inside the watched tree"):
        load_config(path)
    config = load_config(path, for_daemon=False)
    assert [w.message for w in config.warnings if "inside the watched tree" in w.message]


def test_local_destination_in_an_ignored_directory_is_accepted(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(sources=sources('ignoredDirs="cdn"'), servers=local_server("{scan}/cdn/static"),
                                  rules=LOCAL_RULES))
    assert errors(path) == []


def test_local_destination_reached_through_a_symlink_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "site")
    path, line = write(tmp_path, doc(servers=local_server(str(tmp_path / "alias" / "cdn")), rules=LOCAL_RULES))
    assert [n for n, _ in errors(path)] == [line]


def test_destination_path_leading_into_a_source_tree_is_refused(tmp_path: pathlib.Path) -> None:
    rules = ('<rules>\n    <rule for="site" label="all">\n      <destinations>\n'
             f'        <destination server="web" path="site/static"/>{MARK}\n'
             '      </destinations>\n    </rule>\n  </rules>')
    path, line = write(tmp_path, doc(servers=local_server(str(tmp_path), mark=False), rules=rules))
    found = errors(path)
    assert [n for n, _ in found] == [line], found
    assert "destination path 'site/static'" in found[0][1]


def test_location_beside_the_tree_is_accepted(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(servers=local_server(str(tmp_path / "site-cdn")), rules=LOCAL_RULES))
    assert errors(path) == []  # "site-cdn" is not inside "site": whole components, not prefixes


def test_source_inside_another_source_is_refused_unless_ignored(tmp_path: pathlib.Path) -> None:
    (tmp_path / "site" / "files").mkdir(parents=True)
    inner = f'<source name="files" scanPath="{tmp_path}/site/files"/>{MARK}'
    path, line = write(tmp_path, doc(sources=sources("", inner)))
    found = errors(path)
    assert [n for n, _ in found] == [line], found
    assert "source 'files'" in found[0][1] and "inside the tree of source 'site'" in found[0][1]
    path, _ = write(tmp_path, doc(sources=sources('ignoredDirs="files"', inner)))
    assert errors(path) == []


def test_state_inside_a_source_tree_is_refused(tmp_path: pathlib.Path) -> None:
    settings = f"<settings>\n    <PERSISTENT_DATA_DB>site/state/p.db</PERSISTENT_DATA_DB>{MARK}\n  </settings>"
    path, line = write(tmp_path, doc(extra=settings))
    found = errors(path)
    assert line in [n for n, _ in found], found
    message = dict(found)[line]
    assert "PERSISTENT_DATA_DB" in message and "its own state" in message and "add 'state' to" in message


def test_config_in_the_tree_it_watches_is_refused(tmp_path: pathlib.Path) -> None:
    """The default state files live beside config.xml: a config inside its own scanPath."""
    path, _ = write(tmp_path, doc(sources='<sources>\n    <source name="site" scanPath="."/>\n  </sources>'))
    found = " ".join(m for _, m in errors(path))
    assert "FSMONITOR_DB" in found and "move config.xml" in found


def test_root_of_the_file_system_needs_confirmation(tmp_path: pathlib.Path) -> None:
    path, line = write(tmp_path, doc(sources=f'<sources>\n    <source name="all" scanPath="/"/>{MARK}\n  </sources>',
                                     rules=RULES.replace('for="site"', 'for="all"')))
    system = [(n, m) for n, m in errors(path) if "system directories" in m]
    assert [n for n, _ in system] == [line], system
    assert "/proc" in system[0][1] and "/sys" in system[0][1] and 'allowSystemDirectories="true"' in system[0][1]
    confirmed = f'<source name="all" scanPath="/" allowSystemDirectories="true"/>{MARK}'
    path, line = write(tmp_path, doc(sources=f"<sources>\n    {confirmed}\n  </sources>",
                                     rules=RULES.replace('for="site"', 'for="all"')))
    problems = check_config(path)
    assert not [p for p in problems if p.severity == "error" and "system directories" in p.message]
    assert [p.line for p in problems if p.severity == "warning" and "system directories" in p.message] == [line]


def test_a_tree_inside_proc_is_refused(tmp_path: pathlib.Path) -> None:
    path, line = write(tmp_path, doc(sources=f'<sources>\n    <source name="site" scanPath="/proc/self"/>{MARK}\n'
                                             '  </sources>'))
    assert any(n == line and "system directories" in m for n, m in errors(path))


def test_a_pseudo_file_system_mounted_in_the_tree_is_refused(tmp_path: pathlib.Path) -> None:
    """A chroot or container root below the tree, with its own /proc mounted."""
    proc = tmp_path / "site" / "jail" / "proc"
    proc.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(proc)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount proc here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        path, line = write(tmp_path, doc(sources=f'<sources>\n    <source name="site" scanPath="{{scan}}"/>{MARK}\n'
                                                 '  </sources>'))
        found = [(n, m) for n, m in errors(path) if "system directories" in m]
        assert [n for n, _ in found] == [line] and str(proc) in found[0][1], found
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=True)


def test_allow_system_directories_takes_true_or_false(tmp_path: pathlib.Path) -> None:
    path, line = write(tmp_path, doc(sources=f'<sources>\n    <source name="site" scanPath="{{scan}}" '
                                             f'allowSystemDirectories="yes"/>{MARK}\n  </sources>'))
    assert line in [n for n, _ in errors(path)]


def test_missing_scan_path_stops_only_the_commands_that_watch(tmp_path: pathlib.Path) -> None:
    """Item 9: stop, status and verify must work while a tree is missing (they exited 2)."""
    path, _ = write(tmp_path, doc(sources='<sources>\n    <source name="site" scanPath="gone"/>\n  </sources>'))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(path)
    config = load_config(path, for_daemon=False)
    assert config.sources["site"].scan_path == str(tmp_path / "gone")
    assert any("does not exist" in w.message for w in config.warnings)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command, expected in (("status", 3), ("stop", 0), ("verify", 0), ("check-config", 2), ("start", 2)):
        argv = [sys.executable, "-m", "fileconveyor", command, path] if command == "check-config" else \
            [sys.executable, "-m", "fileconveyor", command, "--config", path]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=str(tmp_path), env=env)
        output = result.stdout + result.stderr
        assert "Traceback" not in output
        if expected == 2:
            assert result.returncode == 2 and "does not exist" in result.stderr, (command, output)
        else:
            assert result.returncode != 2, (command, output)


def test_written_by_daemon_lists_local_destinations_and_state(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(servers=local_server(str(tmp_path / "webroot"), mark=False), rules=LOCAL_RULES))
    paths = written_by_daemon(load_config(path))
    assert str(tmp_path / "webroot") in paths
    assert {str(tmp_path / "fsmonitor.db"), str(tmp_path / "fsmonitor.db-wal"),
            str(tmp_path / "persistent_data.db-journal"), str(tmp_path / "processor_work")} <= set(paths)


def test_a_destination_holding_a_source_tree_is_a_warning(tmp_path: pathlib.Path) -> None:
    """location=/var/www with scanPath=/var/www/site: site/x of the source would land on site/x."""
    path, line = write(tmp_path, doc(servers=local_server(str(tmp_path), mark=False),
                                     rules=LOCAL_RULES.replace('<destination server="web"/>',
                                                               f'<destination server="web"/>{MARK}')))
    problems = check_config(path)
    assert not [p for p in problems if p.severity == "error"], problems
    warned = [p for p in problems if "holds the tree of source 'site'" in p.message]
    assert [p.line for p in warned] == [line] and "below 'site/'" in warned[0].message
