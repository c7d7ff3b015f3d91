"""Shared fixtures. Real-server fixtures live in tests/servers/<name>.py and are loaded here as
pytest plugins, so a new server is one new module and no edit to this file."""
from __future__ import annotations

import pathlib

_SERVERS = pathlib.Path(__file__).parent / "servers"
pytest_plugins = sorted(
    f"tests.servers.{p.stem}" for p in _SERVERS.glob("*.py") if not p.stem.startswith("_")
)

import os

import pytest

#: Words in the reason of a skip caused by a missing tool or privilege rather than by a documented
#: capability gap ("known gap: ...", "has no multipart upload", ...).
_ENVIRONMENT_SKIPS = ("not installed", "needs root", "cannot create a user namespace", "importorskip",
                      "could not import")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """With FILECONVEYOR_STRICT_SKIPS=1 (set by scripts/test.sh, which installs every tool), a
    skip for a missing tool or privilege is a failure: it would otherwise hide lost coverage."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("FILECONVEYOR_STRICT_SKIPS") != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(word in reason.lower() for word in _ENVIRONMENT_SKIPS):
        report.outcome = "failed"
        report.longrepr = (f"skipped for a missing tool or privilege, which scripts/test.sh should have "
                           f"installed: {reason}")
