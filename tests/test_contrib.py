"""What contrib/ ships is accepted by the tools that read it: the unit file by `systemd-analyze
verify` (systemd's own checker), the logrotate snippet by `logrotate -d` (issue 10, item 3)."""
from __future__ import annotations

import getpass
import grp
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
CONTRIB = REPO / "contrib"


def _executable() -> str:
    """The installed `fileconveyor` command (verify checks that ExecStart= names an executable)."""
    found = shutil.which("fileconveyor") or os.path.join(os.path.dirname(sys.executable), "fileconveyor")
    if not os.access(found, os.X_OK):
        pytest.skip("systemd unit: no installed `fileconveyor` command to put in ExecStart= (pip install .)")
    return found


def test_the_unit_file_passes_systemd_analyze_verify(tmp_path: pathlib.Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd unit: systemd-analyze is missing (scripts/deps/51-systemd.sh installs it)")
    text = (CONTRIB / "fileconveyor.service").read_text()
    for wanted in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=",
                   "User=fileconveyor", "Restart=on-failure", "WatchdogSec=", "ExecReload="):
        assert wanted in text, wanted
    unit = tmp_path / "fileconveyor.service"
    unit.write_text(text.replace("/usr/local/bin/fileconveyor", _executable()))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr
    # It has teeth: a misspelt key is reported.
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    broken = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "NoNewPrivilege" in broken.stderr


def test_the_logrotate_snippet_parses(tmp_path: pathlib.Path) -> None:
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate snippet: logrotate is missing (scripts/deps/51-systemd.sh installs it)")
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (logs / "fileconveyor.log").write_text("a line\n")
    text = (CONTRIB / "fileconveyor.logrotate").read_text()
    assert "copytruncate" not in text.replace("no copytruncate", "")
    conf = tmp_path / "fileconveyor.logrotate"
    conf.write_text(text.replace("fileconveyor fileconveyor", f"{user} {group}")
                    .replace("/var/log/fileconveyor", str(logs)))
    conf.chmod(0o644)
    result = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
    assert "considering log" in result.stderr + result.stdout
