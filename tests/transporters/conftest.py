"""Skip lines name the transporter they belong to (issue 10, item 7).

The conformance suite's skips are shared by every transporter ("this transporter cannot list"), so
a skip line alone did not say which transporter lacks what. The module's name does
(`test_sftp.py` -> sftp); it is put in front of every skip reason of this directory.
"""
from __future__ import annotations

from typing import Any

import pytest


def transporter_of(module_name: str) -> str:
    """`tests.transporters.test_sftp` -> `sftp`; '' for a module that is not a transporter's."""
    leaf = module_name.rsplit(".", 1)[-1]
    return leaf[len("test_"):] if leaf.startswith("test_") else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    name = transporter_of(getattr(item.module, "__name__", "")) if getattr(item, "module", None) else ""
    if report.skipped and name and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, line, reason = report.longrepr
        prefix = "Skipped: "
        text = reason[len(prefix):] if reason.startswith(prefix) else reason
        if not text.startswith(f"{name}:"):
            report.longrepr = (path, line, f"{prefix}{name}: {text}")
