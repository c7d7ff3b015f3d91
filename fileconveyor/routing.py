"""Pure decisions about where a file goes: which rules apply and at which remote path it lands.

Kept free of I/O (but the filter's size stat) so that the arbitrator, `verify` and deletions agree
on one answer, and so that it can be tested with tables.

Remote path (original-spec 7.3, minus its string-prefix bugs): the destination's `path`, then the
file's directory relative to its source's scanPath, then the transported basename (which a
processor may have changed). `synced_files.db` stores only the basename, so the remote location of
a recorded file is recomputed from the config when it must be deleted or verified.
"""
from __future__ import annotations

import os
import posixpath

from fileconveyor.config import Config, Destination, Rule, Source
from fileconveyor.filter import in_ignored_dir, is_within


def source_of(config: Config, rule: Rule) -> Source:
    return config.sources[rule.source]


def sources_containing(config: Config, path: str) -> list[Source]:
    return [s for s in config.sources.values() if is_within(s.scan_path, path)]


def is_ignored(config: Config, path: str) -> bool:
    """Is `path` below a globally ignored directory of every source that contains it?"""
    sources = sources_containing(config, path)
    return not sources or all(in_ignored_dir(s.scan_path, path, config.ignored_dirs) for s in sources)


def matching_rules(config: Config, path: str, is_deleted: bool) -> list[Rule]:
    """Every rule whose source contains `path` (by path components) and whose filter matches."""
    rules = []
    for rule in config.rules:
        source = config.sources[rule.source]
        if not is_within(source.scan_path, path):
            continue
        if in_ignored_dir(source.scan_path, path, config.ignored_dirs):
            continue
        if rule.filter is not None and not rule.filter.matches(path, is_deleted=is_deleted):
            continue
        rules.append(rule)
    return rules


def relative_dir(source: Source, path: str) -> str:
    """Directory of `path` relative to the source's scanPath, with `/` separators ('' at the top)."""
    relative = os.path.relpath(os.path.dirname(path), source.scan_path)
    return "" if relative == "." else relative.replace(os.sep, "/")


def remote_path(destination: Destination, source: Source, path: str, basename: str) -> str:
    """Where `path`, transported as `basename`, lands on the destination's server."""
    parts = [p for p in (destination.path.strip("/"), relative_dir(source, path)) if p]
    return posixpath.join(*parts, basename) if parts else basename


def remote_paths_on_server(config: Config, path: str, server: str, basename: str) -> list[str]:
    """Every remote path at which `path` (transported as `basename`) may sit on `server`.

    Uses the rules that match the path now; if none of them sends it to `server` any more (the
    config changed since it was synced), falls back to any rule of a source containing it."""
    found: list[str] = []
    for candidates in (matching_rules(config, path, is_deleted=True), list(config.rules)):
        for rule in candidates:
            source = config.sources[rule.source]
            if not is_within(source.scan_path, path):
                continue
            for destination in rule.destinations:
                if destination.server == server:
                    remote = remote_path(destination, source, path, basename)
                    if remote not in found:
                        found.append(remote)
        if found:
            break
    return found
