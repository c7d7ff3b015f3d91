"""config.xml -> typed, validated, immutable objects.

The grammar is the original File Conveyor's (see README, "Configuration"), checked in two passes:
the XML against the RelaxNG schema shipped beside this module (structure), then the meaning
(references between sources, servers and rules; paths that exist; names that resolve). Every
problem is collected, not just the first, and carries the file and line, what is wrong and what to
write instead, so `fileconveyor check-config` can list them all.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from fileconveyor.filter import Filter
from fileconveyor.settings import Settings


@dataclasses.dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int
    message: str
    #: "error" blocks start-up; "warning" is logged.
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.severity}: {self.message}"


class ConfigError(Exception):
    """config.xml cannot be used; `problems` lists every error (and warning) found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid configuration")


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    #: Absolute, normalised (no trailing slash), not symlink-resolved: input_file rows use it as is.
    scan_path: str
    document_root: str | None
    base_path: str | None
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Server:
    name: str
    #: Canonical transporter name (aliases resolved): "s3", "symlink_or_copy", or a dotted name.
    transporter: str
    #: 0 means no per-server limit (MAX_SIMULTANEOUS_TRANSPORTERS still applies).
    max_connections: int
    settings: Mapping[str, str]
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Destination:
    server: str
    #: Parent directory on the server ("" when absent), without leading or trailing slashes.
    path: str
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str
    label: str
    filter: Filter | None
    #: Canonical processor names in order ("filename.SpacesToDashes", "mypkg.mod.Class").
    processors: tuple[str, ...]
    destinations: tuple[Destination, ...]
    #: Seconds after a sync after which the source file is deleted; None = never.
    deletion_delay: float | None
    line: int = 0

    @property
    def key(self) -> str:
        """Stable identity of the rule in logs and state: source + label."""
        return f"{self.source}:{self.label}"


@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    sources: Mapping[str, Source]
    servers: Mapping[str, Server]
    rules: tuple[Rule, ...]
    #: The global `<sources ignoredDirs>`: directory names ignored at any depth, by every rule.
    ignored_dirs: frozenset[str]
    settings: Settings
    warnings: tuple[ConfigProblem, ...] = ()
