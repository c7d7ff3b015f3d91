"""What the destinations must hold, computed from a model of the source trees. Pure: no I/O.

The model is the test's own account of the trees (it is told every change the operations make),
not a scan of the disk, so a file the daemon removes or alters behind the test's back shows up as
a difference instead of being silently believed. Only the daemon's own removals after sync
(`fileDeletionDelayAfterSync`) are expected; they are checked against what was synced and then
kept as `published` entries, whose remote copies must stay.

The rules mirror the config that `world.py` writes (one place: `RULES`):

* alpha "plain": every file, no processors -> local `plain/`, sftp `alpha/`;
* alpha "assets": css and png, `link_updater.CSSURLUpdater` then `unique_filename.MD5` -> local
  `cdn/` (overlapping "plain" on the same server), s3 `assets/`;
* beta "outbox": files below `outbox/`, deleted from the source 1 s after sync -> sftp, s3 `out/`;
* beta "rest": every other beta file -> local `beta/`, sftp `beta/`.

Symlinks are published only when they resolve to a file inside their own source tree (issue 7,
item 17: rsync's "safe links"); FIFOs and dangling links never. Where two rules send one file to
one server, synced_files holds one row, with the first rule's URL (README, "Behaviour" 10: every
rule's copy is kept, the recorded URL is the first rule's).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import re
import urllib.parse

SERVERS = ("local", "sftp", "s3")
OUTBOX = "outbox"
#: Symlink targets live in `<source>/pinned/` and are never changed (a change to a link's target
#: produces no event for the link: no watcher can see it, so it is not part of the model).
PINNED = "pinned"
CSS_URL = re.compile(rb'url\("([^"]*)"\)')


@dataclasses.dataclass(frozen=True)
class Destination:
    server: str
    path: str


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    label: str
    source: str
    destinations: tuple[Destination, ...]
    extensions: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    ignored_dirs: tuple[str, ...] = ()
    processors: tuple[str, ...] = ()
    deletion_delay: float | None = None


RULES: tuple[RuleSpec, ...] = (
    RuleSpec("plain", "alpha", (Destination("local", "plain"), Destination("sftp", "alpha"))),
    RuleSpec("assets", "alpha", (Destination("local", "cdn"), Destination("s3", "assets")),
             extensions=("css", "png"),
             processors=("link_updater.CSSURLUpdater", "unique_filename.MD5")),
    RuleSpec("outbox", "beta", (Destination("sftp", "out"), Destination("s3", "out")),
             paths=(OUTBOX,), deletion_delay=1.0),
    RuleSpec("rest", "beta", (Destination("local", "beta"), Destination("sftp", "beta")),
             ignored_dirs=(OUTBOX,)),
)


@dataclasses.dataclass(frozen=True)
class Node:
    """A non-directory entry of a source tree: a regular file, a symlink or a FIFO."""

    kind: str  # "file", "link" or "fifo"
    content: bytes = b""
    target: str = ""


def is_within(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def extension(name: str) -> str:
    return os.path.splitext(name)[1][1:].lower()


def render_css(refs: list[str], salt: str) -> bytes:
    """A stylesheet in the one shape the generator writes: one `url("...")` per reference."""
    lines = [f"/* {salt} */"] + [f'.c{i} {{ background: url("{ref}"); }}' for i, ref in enumerate(refs)]
    return ("\n".join(lines) + "\n").encode()


def url_for(base: str, remote: str) -> str:
    """Issue 7, item 16: everything but RFC 3986 unreserved characters and `/` is percent-encoded."""
    return base.rstrip("/") + "/" + urllib.parse.quote(remote, safe="/")


class SourceModel:
    """The test's account of both source trees."""

    def __init__(self, roots: dict[str, str]) -> None:
        self.roots = dict(roots)
        self.nodes: dict[str, Node] = {}
        self.dirs: set[str] = set()
        #: Removed by the daemon after sync: path -> content whose remote copies must stay.
        self.published: dict[str, bytes] = {}
        #: Found gone by an operation (the daemon's deletion after sync), not yet checked against
        #: the destinations: path -> every content the removed file may have had.
        self.vanished: dict[str, set[bytes]] = {}

    # --- where a path belongs --------------------------------------------------------------------

    def source_of(self, path: str) -> str | None:
        for name, root in self.roots.items():
            if is_within(root, path) and path != root:
                return name
        return None

    def relative(self, path: str) -> str:
        source = self.source_of(path)
        assert source is not None, path
        return os.path.relpath(path, self.roots[source])

    def matching_rules(self, path: str) -> list[RuleSpec]:
        source = self.source_of(path)
        if source is None:
            return []
        relative = self.relative(path)
        parts = relative.split("/")
        rules = []
        for rule in RULES:
            if rule.source != source:
                continue
            if rule.extensions and extension(parts[-1]) not in rule.extensions:
                continue
            if rule.paths and not any(relative.startswith(p + "/") for p in rule.paths):
                continue
            if rule.ignored_dirs and any(d in rule.ignored_dirs for d in parts[:-1]):
                continue
            rules.append(rule)
        return rules

    def deleted_after_sync(self, path: str) -> bool:
        rules = self.matching_rules(path)
        return bool(rules) and all(r.deletion_delay is not None for r in rules)

    def is_frozen(self, path: str) -> bool:
        """Below a pinned directory or the outbox directory itself (never moved or removed)."""
        source = self.source_of(path)
        if source is None:
            return True
        relative = self.relative(path)
        return relative.split("/")[0] == PINNED or relative == OUTBOX

    # --- content ------------------------------------------------------------------------------

    def published_content(self, path: str) -> bytes | None:
        """What File Conveyor must publish for `path` now (None: nothing)."""
        node = self.nodes.get(path)
        if node is None or node.kind == "fifo":
            return None
        if node.kind == "file":
            return node.content
        source = self.source_of(path)
        target = self.nodes.get(node.target)
        if (source is None or target is None or target.kind != "file"
                or not is_within(self.roots[source], node.target)):
            return None
        return target.content

    def sent_to(self, path: str, server: str) -> bool:
        return self.published_content(path) is not None and any(
            d.server == server for r in self.matching_rules(path) for d in r.destinations)

    # --- changes ------------------------------------------------------------------------------

    def put(self, path: str, node: Node) -> None:
        assert self.source_of(path) is not None, path
        self.nodes[path] = node
        self.published.pop(path, None)
        self.vanished.pop(path, None)

    def remove(self, path: str) -> Node | None:
        return self.nodes.pop(path, None)

    def vanish(self, path: str, contents: set[bytes]) -> None:
        """An operation found `path` gone: the daemon removed it after sync (checked later)."""
        self.nodes.pop(path, None)
        self.vanished[path] = contents

    def below(self, directory: str) -> list[str]:
        return sorted(p for p in self.nodes if is_within(directory, p) and p != directory)

    def move_dir(self, old: str, new: str) -> None:
        for path in self.below(old):
            self.nodes[new + path[len(old):]] = self.nodes.pop(path)
        self.dirs = {new + d[len(old):] if is_within(old, d) else d for d in self.dirs}

    def remove_dir(self, directory: str) -> None:
        for path in self.below(directory):
            del self.nodes[path]
        self.dirs = {d for d in self.dirs if not is_within(directory, d)}


@dataclasses.dataclass
class Expectation:
    """What every destination and synced_files must hold."""

    #: server -> remote path -> bytes
    files: dict[str, dict[str, bytes]]
    #: (input_file, server) -> {URL of each matching rule, first rule first: the bytes it serves}
    rows: dict[tuple[str, str], dict[str, bytes]]
    #: Things the model cannot decide (a stylesheet whose image has no row on that server).
    problems: list[str]


def expect(model: SourceModel, url_bases: dict[str, str],
           row_urls: dict[tuple[str, str], str]) -> Expectation:
    """The destinations' expected contents. `row_urls` (the actual synced_files URLs) decide what
    a rewritten stylesheet must refer to; that they are the right URLs is checked separately."""
    result = Expectation({s: {} for s in SERVERS}, {}, [])
    entries = [(p, c) for p in sorted(model.nodes) if (c := model.published_content(p)) is not None]
    entries += sorted(model.published.items())
    for path, content in entries:
        source = model.source_of(path)
        assert source is not None
        relative_dir = posixpath.dirname(model.relative(path))
        for rule in model.matching_rules(path):
            for destination in rule.destinations:
                name, data = _transform(model, rule, path, content, destination.server, row_urls,
                                        result.problems)
                remote = posixpath.join(*[p for p in (destination.path, relative_dir) if p], name)
                held = result.files[destination.server]
                if remote in held and held[remote] != data:
                    result.problems.append(f"model: two rules write {remote} on {destination.server}")
                held[remote] = data
                candidates = result.rows.setdefault((path, destination.server), {})
                candidates[url_for(url_bases[destination.server], remote)] = data
    return result


def _transform(model: SourceModel, rule: RuleSpec, path: str, content: bytes, server: str,
               row_urls: dict[tuple[str, str], str], problems: list[str]) -> tuple[str, bytes]:
    """(transported basename, bytes) of `path` through `rule`'s processors for `server`."""
    name = os.path.basename(path)
    if not rule.processors:
        return name, content
    assert rule.processors == ("link_updater.CSSURLUpdater", "unique_filename.MD5"), rule
    if extension(name) == "css":
        content = _rewrite_css(model, path, content, server, row_urls, problems)
    stem, ext = os.path.splitext(name)
    return f"{stem}_{hashlib.md5(content).hexdigest()}{ext}", content


def _rewrite_css(model: SourceModel, path: str, content: bytes, server: str,
                 row_urls: dict[tuple[str, str], str], problems: list[str]) -> bytes:
    def replace(match: re.Match[bytes]) -> bytes:
        reference = match.group(1).decode()
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path), reference))
        if not model.sent_to(target, server):
            return match.group(0)
        url = row_urls.get((target, server))
        if url is None:
            problems.append(f"{path} on {server}: refers to {target}, which has no synced_files row")
            return match.group(0)
        return b'url("' + url.encode() + b'")'

    return CSS_URL.sub(replace, content)
