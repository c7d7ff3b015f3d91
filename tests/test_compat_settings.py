"""Settings of the original that were accepted but did nothing (issue 11 item 7): each now either
has a meaning (`symlinkWithin`) or `check-config` says, on its line, that it is ignored and what to
use instead.
"""
from __future__ import annotations

import os
import pathlib

import pytest

from fileconveyor.config import check_config, load_config
from fileconveyor.transporters.base import TransporterContext
from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter
from tests.test_config import MARK, doc, write


@pytest.mark.parametrize("setting, value, advice", [
    ("MAX_TRANSPORTER_QUEUE_SIZE", "4", "maxConnections"),
    ("QUEUE_PROCESS_BATCH_SIZE", "50", "MAX_FILES_IN_PIPELINE"),
    ("CALLBACKS_CONSOLE_OUTPUT", "true", "CONSOLE_LOGGER_LEVEL to INFO"),
])
def test_ignored_settings_are_a_warning_on_their_line(tmp_path: pathlib.Path, setting: str, value: str,
                                                      advice: str) -> None:
    path, line = write(tmp_path, doc(extra=f"<settings>\n    <{setting}>{value}</{setting}>{MARK}\n  </settings>"))
    problems = check_config(path)
    warnings = [p for p in problems if p.line == line and p.severity == "warning"]
    assert len(warnings) == 1, problems
    assert "accepted for compatibility" in warnings[0].message and "ignored" in warnings[0].message
    assert advice in warnings[0].message
    assert not [p for p in problems if p.severity == "error"]
    load_config(path)  # still loads: old configs keep working


def test_meaningful_settings_give_no_such_warning(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(extra="<settings><MAX_FILES_IN_PIPELINE>9</MAX_FILES_IN_PIPELINE></settings>"))
    assert not [p for p in check_config(path) if "ignored" in p.message]


def _transporter(tmp_path: pathlib.Path, **settings: str) -> SymlinkOrCopyTransporter:
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    return SymlinkOrCopyTransporter({"location": str(dest), "url": "http://x/", **settings},
                                    TransporterContext("local", str(tmp_path / "state"),
                                                       source_roots=(str(tmp_path / "src"),)))


@pytest.fixture
def source(tmp_path: pathlib.Path) -> pathlib.Path:
    for relative in ("a.css", "static/b.png"):
        (tmp_path / "src" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / relative).write_bytes(relative.encode())
    return tmp_path / "src"


@pytest.mark.parametrize("within, linked", [
    (None, {"a.css", "static/b.png"}),  # absent: every scan path, as the original injected it
    ("", set()),  # empty: copy everything
    ("{src}/static", {"static/b.png"}),
    ("/elsewhere:{src}/static", {"static/b.png"}),
])
def test_symlink_within_decides_what_is_linked(tmp_path: pathlib.Path, source: pathlib.Path,
                                               within: str | None, linked: set[str]) -> None:
    settings = {} if within is None else {"symlinkWithin": within.replace("{src}", str(source))}
    transporter = _transporter(tmp_path, **settings)
    for relative in ("a.css", "static/b.png"):
        transporter.upload(str(source / relative), relative)
    dest = tmp_path / "dest"
    assert {r for r in ("a.css", "static/b.png") if os.path.islink(dest / r)} == linked
    for relative in ("a.css", "static/b.png"):
        assert (dest / relative).read_bytes() == relative.encode()


def test_relative_symlink_within_is_refused(tmp_path: pathlib.Path) -> None:
    problems = SymlinkOrCopyTransporter.check_settings(
        {"location": "/srv/www", "url": "http://x/", "symlinkWithin": "/srv/site:site/static"})
    assert any("<symlinkWithin> holds 'site/static'" in p for p in problems)
