"""Shared fixtures. Real-server fixtures live in tests/servers/<name>.py and are loaded here as
pytest plugins, so a new server is one new module and no edit to this file."""
from __future__ import annotations

import pathlib

_SERVERS = pathlib.Path(__file__).parent / "servers"
pytest_plugins = sorted(
    f"tests.servers.{p.stem}" for p in _SERVERS.glob("*.py") if not p.stem.startswith("_")
)
