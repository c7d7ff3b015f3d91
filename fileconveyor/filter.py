"""Rule filters: which files of a source a rule applies to.

The conditions are the original File Conveyor's (`paths`, `extensions`, `ignoredDirs`, `pattern`,
`size`), all of which must hold. An `<exclude>` inside the filter (original issues #52 and #154) holds
the same conditions (but `ignoredDirs`, which already excludes) with the same meaning, negated: a
file that satisfies every condition of any `<exclude>` is left out. So exclusions read like the
rest of the grammar, instead of the original's only workaround, a negative lookahead in `<pattern>`. Everything here is a pure decision on path strings, except the one
`stat` the size condition needs, so the arbitrator can evaluate thousands of paths per second and the
tests need no threads or sleeps.

Containment is decided by path components, never by string prefix: the original treated
`/srv/site2/x` as inside `/srv/site`, and excluded `CVS.txt` for an ignored directory `CVS`. The
deliberate deviations from the original are listed in docs/configuration.md.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

CONDITIONS: tuple[str, ...] = ("paths", "extensions", "ignoredDirs", "pattern", "size")
SIZE_TYPES: tuple[str, ...] = ("minimum", "maximum")
#: The element, inside `<filter>`, whose conditions exclude the files they match; it may repeat.
EXCLUDE = "exclude"
#: What an `<exclude>` may hold: the conditions that select files (`ignoredDirs` excludes already).
EXCLUDE_CONDITIONS: tuple[str, ...] = ("paths", "extensions", "pattern", "size")

# Characters the original refused in list items (`:` separates items, so it never reaches here).
_PATHS_FORBIDDEN = frozenset('*"[]:;|=,<>')
_EXTENSIONS_FORBIDDEN = _PATHS_FORBIDDEN | frozenset("/\\.")
_IGNORED_DIRS_FORBIDDEN = _PATHS_FORBIDDEN | frozenset("/\\")


class FilterError(ValueError):
    """An invalid filter condition; the message says what to write instead.

    `condition` names the offending condition (`paths`, `size`, ...) so that config.xml problems can
    point at the line of that element; it is None when the conditions as a whole are wrong. In the
    N-th `<exclude>` (from 0) it is `exclude/N/paths`, or `exclude/N` for the exclusion as a whole."""

    def __init__(self, message: str, condition: str | None = None) -> None:
        super().__init__(message)
        self.condition = condition


def _normalise(path: str) -> str:
    return os.path.normpath(path) if path else path


def is_within(root: str, path: str) -> bool:
    """Is `path` the directory `root` itself or anything below it, by whole path components?

    `/srv/site` contains `/srv/site/a/b` but not `/srv/site2/x`. Neither argument is resolved
    against the file system (symlinks are compared as written)."""
    root = _normalise(root)
    path = _normalise(path)
    if not root or not path:
        return False
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


def _directories_below(root: str, path: str) -> list[str]:
    """Names of the directories between `root` (excluded) and the file `path` (excluded)."""
    if not is_within(root, path):
        return []
    relative = os.path.relpath(_normalise(path), _normalise(root))
    if relative == os.curdir:
        return []
    return relative.split(os.sep)[:-1]


def in_ignored_dir(root: str, path: str, ignored_dirs: frozenset[str]) -> bool:
    """Does any directory component of `path` below `root` have a name in `ignored_dirs`?

    The file's own name is not a directory component (a file `CVS.txt`, or even `CVS`, is not
    ignored by `CVS`), and neither are the components of `root` itself (a scan path
    `/home/CVS/site` does not ignore everything). Paths outside `root` are never ignored."""
    if not ignored_dirs:
        return False
    return any(name in ignored_dirs for name in _directories_below(root, path))


def extension_of(path: str) -> str:
    """The text after the last dot of the basename, lower-cased; '' for none (`.htaccess`)."""
    return os.path.splitext(os.path.basename(path))[1][1:].lower()


def split_list(value: object, condition: str, forbidden: frozenset[str], example: str) -> tuple[str, ...]:
    """Items of a colon-separated condition (or of a list of strings), stripped and checked."""
    if isinstance(value, str):
        raw: Iterable[object] = value.split(":")
    elif isinstance(value, (list, tuple, set, frozenset)):
        raw = value
    else:
        raw = ()
    items = [item.strip() if isinstance(item, str) else item for item in raw]
    if not items or any(not isinstance(item, str) or not item for item in items):
        raise FilterError(
            f"<{condition}> needs a colon-separated list of non-empty names; write for example "
            f"<{condition}>{example}</{condition}>", condition)
    for item in items:
        assert isinstance(item, str)
        bad = sorted(set(item) & forbidden)
        if bad:
            hint = ""
            if condition == "extensions" and item.startswith("."):
                hint = f" (write {item.lstrip('.')!r}, without the dot)"
            raise FilterError(
                f"<{condition}> item {item!r} contains {' '.join(repr(c) for c in bad)}, which is not "
                f"allowed{hint}; write for example <{condition}>{example}</{condition}>", condition)
    return tuple(item for item in items if isinstance(item, str))


def _parse_paths(value: object, root: str) -> tuple[str, ...]:
    entries = split_list(value, "paths", _PATHS_FORBIDDEN, "misc:modules/system")
    directories = []
    for entry in entries:
        relative = entry.strip("/")
        parts = [part for part in relative.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise FilterError(
                f"<paths> entry {entry!r} leaves the scan path; write a directory relative to the "
                "source's scanPath, for example <paths>misc:modules/system</paths>", "paths")
        directories.append(os.path.join(_normalise(root), *parts) if parts else _normalise(root))
    return tuple(directories)


def _parse_pattern(value: object) -> re.Pattern[str]:
    if not isinstance(value, str) or not value.strip():
        raise FilterError(
            "<pattern> is empty; write a Python regular expression matched against the start of "
            r"the absolute path, for example <pattern>.*\.(css|js)$</pattern>", "pattern")
    try:
        return re.compile(value.strip())
    except re.error as error:
        raise FilterError(
            f"<pattern> {value.strip()!r} is not a valid Python regular expression ({error}); "
            r"write for example <pattern>.*/images/.*\.png$</pattern>", "pattern") from None


def _parse_size(value: object) -> tuple[str, int]:
    example = '<size conditionType="minimum">1024</size>'
    if not isinstance(value, Mapping):
        raise FilterError(f"<size> needs a condition type and a number of bytes; write {example}", "size")
    condition_type = value.get("conditionType")
    condition_type = condition_type.strip() if isinstance(condition_type, str) else condition_type
    if condition_type not in SIZE_TYPES:
        raise FilterError(
            f"<size> conditionType {condition_type!r} is not valid; write conditionType=\"minimum\" "
            f"or conditionType=\"maximum\", for example {example}", "size")
    # The original spelled it "treshold"; both spellings are accepted.
    given = [value[key] for key in ("treshold", "threshold") if value.get(key) is not None]
    if len(given) == 2 and str(given[0]).strip() != str(given[1]).strip():
        raise FilterError("<size> has two different thresholds; give it one number of bytes", "size")
    threshold = str(given[0]).strip() if given else ""
    try:
        number = int(threshold)
    except ValueError:
        raise FilterError(
            f"<size> threshold {threshold!r} is not a whole number of bytes; write for example "
            f"{example}", "size") from None
    if number < 0:
        raise FilterError(f"<size> threshold {number} is negative; write 0 or more bytes", "size")
    return condition_type, number


class Filter:
    """The conditions of one rule's `<filter>`, validated once, evaluated per path.

    `conditions` maps condition names to their values; `conditions["exclude"]`, if present, is a
    list of such mappings, one per `<exclude>`."""

    def __init__(self, conditions: Mapping[str, object], root: str) -> None:
        if not conditions:
            raise FilterError(
                "a filter needs at least one condition; write one of "
                + ", ".join(f"<{name}>" for name in (*CONDITIONS, EXCLUDE)) + " inside <filter>, or remove <filter>")
        unknown = sorted(set(conditions) - set(CONDITIONS) - {EXCLUDE})
        if unknown:
            raise FilterError(
                f"unknown filter condition <{unknown[0]}>; write one of "
                + ", ".join(f"<{name}>" for name in (*CONDITIONS, EXCLUDE)), unknown[0])
        self.root = _normalise(root)
        self.conditions = dict(conditions)
        self.paths: tuple[str, ...] = ()
        self.extensions: frozenset[str] = frozenset()
        self.ignored_dirs: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None
        self.size: tuple[str, int] | None = None
        if "paths" in conditions:
            self.paths = _parse_paths(conditions["paths"], self.root)
        if "extensions" in conditions:
            self.extensions = frozenset(
                item.lower() for item in split_list(conditions["extensions"], "extensions",
                                                    _EXTENSIONS_FORBIDDEN, "css:js:png"))
        if "ignoredDirs" in conditions:
            self.ignored_dirs = frozenset(split_list(conditions["ignoredDirs"], "ignoredDirs",
                                                     _IGNORED_DIRS_FORBIDDEN, "CVS:.svn:.git"))
        if "pattern" in conditions:
            self.pattern = _parse_pattern(conditions["pattern"])
        if "size" in conditions:
            self.size = _parse_size(conditions["size"])
        self.exclusions: tuple[Filter, ...] = tuple(
            _exclusion(index, given, self.root) for index, given in enumerate(_exclude_list(conditions)))

    def __repr__(self) -> str:
        return f"Filter({self.conditions!r}, root={self.root!r})"

    def matches(self, path: str, is_deleted: bool = False) -> bool:
        """Do all conditions hold for the absolute `path`, and does no `<exclude>` take it out?
        The size condition is skipped for deleted files, and a file that vanished before it could
        be measured does not match. An `<exclude>` with a size condition never excludes a deleted
        file: its deletion must reach the servers if its last version was synced."""
        if not self._holds(path, is_deleted):
            return False
        for exclusion in self.exclusions:
            if is_deleted and exclusion.size is not None:
                continue
            if exclusion._holds(path, is_deleted, whole_paths=True):
                return False
        return True

    def _holds(self, path: str, is_deleted: bool, whole_paths: bool = False) -> bool:
        """Do this filter's own conditions hold? `whole_paths`: a `paths` entry also matches the
        path itself (an exclusion may name a file), not only what is below it."""
        normalised = _normalise(path)
        if not is_within(self.root, path) or normalised == self.root:
            return False
        if self.paths and not any(is_within(d, path) and (whole_paths or normalised != d) for d in self.paths):
            return False
        if self.extensions and extension_of(path) not in self.extensions:
            return False
        if self.ignored_dirs and in_ignored_dir(self.root, path, self.ignored_dirs):
            return False
        if self.pattern is not None and self.pattern.match(path) is None:
            return False
        if self.size is not None and not is_deleted:
            try:
                size = os.stat(path).st_size
            except OSError as error:
                log.debug("%s vanished before its size could be checked: %s", path, error)
                return False
            condition_type, threshold = self.size
            if condition_type == "minimum" and not size > threshold:
                return False
            if condition_type == "maximum" and not size < threshold:
                return False
        return True


def _exclude_list(conditions: Mapping[str, object]) -> list[Mapping[str, object]]:
    value = conditions.get(EXCLUDE)
    if value is None:
        return []
    items = [value] if isinstance(value, Mapping) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, Mapping) for item in items):
        raise FilterError("<exclude> must hold conditions, for example <exclude><paths>tmp</paths></exclude>",
                          EXCLUDE)
    return list(items)


def _exclusion(index: int, conditions: Mapping[str, object], root: str) -> Filter:
    """The N-th `<exclude>` as a Filter of its own; its errors say they are in an exclusion."""
    where = f"{EXCLUDE}/{index}"
    listing = ", ".join(f"<{name}>" for name in EXCLUDE_CONDITIONS)
    if not conditions:
        raise FilterError(f"<exclude> is empty; write at least one of {listing} inside it, for example "
                          "<exclude><paths>tmp:cache</paths></exclude>, or remove it", where)
    if "ignoredDirs" in conditions:
        raise FilterError("<ignoredDirs> is not allowed in <exclude> (it already excludes); move it into "
                          "<filter>, or write <paths> to exclude directories relative to scanPath",
                          f"{where}/ignoredDirs")
    unknown = sorted(set(conditions) - set(EXCLUDE_CONDITIONS))
    if unknown:
        raise FilterError(f"<{unknown[0]}> is not allowed in <exclude>; write one of {listing}",
                          f"{where}/{unknown[0]}")
    try:
        return Filter(conditions, root)
    except FilterError as error:
        inner = f"{where}/{error.condition}" if error.condition else where
        raise FilterError(f"in <exclude>: {error}", inner) from None


def parse_ignored_dirs(value: str) -> frozenset[str]:
    """The global `<sources ignoredDirs="...">`: like the rule condition, but may be empty."""
    if not value.strip():
        return frozenset()
    return frozenset(split_list(value, "ignoredDirs", _IGNORED_DIRS_FORBIDDEN, "CVS:.svn:.git"))


def may_overlap(a: "Filter | None", b: "Filter | None") -> bool:
    """Can one file match both filters (None: a rule without a filter matches everything)?

    Decided on what is certain: disjoint extension lists, disjoint `paths` (neither directory
    inside the other), or size limits that exclude each other keep two filters apart; anything
    else (patterns, exclusions) may overlap. Used to warn about rules that send one file twice."""
    if a is None or b is None:
        return True
    if a.extensions and b.extensions and not (a.extensions & b.extensions):
        return False
    if a.paths and b.paths and not any(is_within(p, q) or is_within(q, p) for p in a.paths for q in b.paths):
        return False
    if a.size is not None and b.size is not None:
        limits = {a.size[0]: a.size[1], b.size[0]: b.size[1]} if a.size[0] != b.size[0] else {}
        if limits and limits.get("maximum", 0) < limits.get("minimum", 0):
            return False
    return True
