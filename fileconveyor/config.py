"""config.xml -> typed, validated, immutable objects.

The grammar is the original File Conveyor's (see README, "Configuration"), checked in two passes:
the XML against the RelaxNG schema shipped beside this module (structure), then the meaning
(references between sources, servers and rules; paths that exist; names that resolve). Every
problem is collected, not just the first, and carries the file and line, what is wrong and what to
write instead, so `fileconveyor check-config` can list them all.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import types
from typing import Callable, Iterator, Mapping

from lxml import etree

from fileconveyor import settings as settings_module
from fileconveyor.filter import (CONDITIONS, EXCLUDE, EXCLUDE_CONDITIONS, Filter, FilterError,
                                 in_ignored_dir, is_within, may_overlap, parse_ignored_dirs)
from fileconveyor.processors.base import (Processor, ProcessorNotFound, ProcessorUnavailable,
                                          canonical_processor_name, resolve_processor)
from fileconveyor.settings import SettingError, Settings
from fileconveyor.transporters.base import (ObjectOptions, TransporterNotFound, canonical_transporter_name,
                                            resolve_transporter)

log = logging.getLogger(__name__)


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
    #: Seconds a superseded or deleted file's old copy stays on the server before it is deleted
    #: (pages and caches that still use its URL keep working); 0: deleted at once.
    keep_old_versions_for: float = 0.0


@dataclasses.dataclass(frozen=True)
class Destination:
    server: str
    #: Parent directory on the server ("" when absent), without leading or trailing slashes.
    path: str
    line: int = 0
    #: The destination's own object settings (`<acl>`, `<cache_control>`, ...: original issue
    #: #159), overriding the server's for the objects this destination uploads; sorted pairs.
    object_settings: tuple[tuple[str, str], ...] = ()

    @property
    def options(self) -> ObjectOptions:
        """What every upload to this destination carries (see transporters.base.ObjectOptions)."""
        return ObjectOptions(self.object_settings)


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
    #: Each processor's validated settings (child elements of its <processor>), in chain order.
    processor_settings: tuple[Mapping[str, object], ...] = dataclasses.field(default=(), hash=False)

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


# --- structure --------------------------------------------------------------------------------

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.rng")


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What one element of the grammar may hold; mirrors config.rng, with the words for messages."""

    attributes: tuple[str, ...] = ()
    required_attributes: tuple[str, ...] = ()
    #: None: any child element names (transporter settings, <settings>), each holding only text.
    children: tuple[str, ...] | None = ()
    required_children: tuple[str, ...] = ()
    #: Children that may appear more than once.
    repeatable: tuple[str, ...] = ()
    has_text: bool = False


_SHAPES: dict[str, _Shape] = {
    "config": _Shape(children=("sources", "servers", "rules", "settings"),
                     required_children=("sources", "servers", "rules")),
    "sources": _Shape(attributes=("ignoredDirs",), children=("source",), required_children=("source",),
                      repeatable=("source",)),
    "source": _Shape(attributes=("name", "scanPath", "documentRoot", "basePath", "allowSystemDirectories"),
                     required_attributes=("name", "scanPath")),
    "servers": _Shape(children=("server",), repeatable=("server",)),
    "server": _Shape(attributes=("name", "transporter", "maxConnections", "keepOldVersionsFor"),
                     required_attributes=("name", "transporter"), children=None),
    "rules": _Shape(children=("rule",), repeatable=("rule",)),
    "rule": _Shape(attributes=("for", "label", "fileDeletionDelayAfterSync"), required_attributes=("for",),
                   children=("filter", "processorChain", "destinations"),
                   required_children=("destinations",)),
    "filter": _Shape(children=(*CONDITIONS, EXCLUDE), repeatable=(EXCLUDE,)),
    EXCLUDE: _Shape(children=EXCLUDE_CONDITIONS),
    "paths": _Shape(has_text=True),
    "extensions": _Shape(has_text=True),
    "ignoredDirs": _Shape(has_text=True),
    "pattern": _Shape(has_text=True),
    "size": _Shape(attributes=("conditionType",), required_attributes=("conditionType",), has_text=True),
    "processorChain": _Shape(children=("processor",), repeatable=("processor",)),
    "processor": _Shape(attributes=("name",), required_attributes=("name",), children=None),
    "destinations": _Shape(children=("destination",), required_children=("destination",),
                           repeatable=("destination",)),
    # Children: the destination's own object settings, checked against its server's transporter.
    "destination": _Shape(attributes=("server", "path"), required_attributes=("server",), children=None),
    "settings": _Shape(children=None),
}

#: What to write for a missing attribute or element, in messages.
_EXAMPLES: dict[str, str] = {
    "name": "NAME", "scanPath": "/absolute/directory", "transporter": "symlink_or_copy",
    "for": "SOURCE_NAME", "server": "SERVER_NAME", "conditionType": "minimum",
    "sources": '<sources><source name="site" scanPath="/var/www/site"/></sources>',
    "source": '<source name="site" scanPath="/var/www/site"/>',
    "servers": '<servers><server name="cdn" transporter="symlink_or_copy">...</server></servers>',
    "rules": '<rules><rule for="site">...</rule></rules>',
    "destinations": '<destinations><destination server="SERVER_NAME"/></destinations>',
    "destination": '<destination server="SERVER_NAME" path="static"/>',
}

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _suggest(name: str, allowed: "list[str] | tuple[str, ...]") -> str | None:
    """The allowed name the user probably meant: same letters in another case, or a near miss."""
    for candidate in allowed:
        if candidate.lower() == name.lower():
            return candidate
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(name: str, allowed: "list[str] | tuple[str, ...]", kind: str) -> str:
    suggestion = _suggest(name, allowed)
    listing = ", ".join(allowed) if allowed else "none"
    if suggestion:
        return f"did you mean {suggestion}? (names are case-sensitive; {kind}: {listing})"
    return f"write one of: {listing}"


def _elements(parent: etree._Element) -> Iterator[etree._Element]:
    """Child elements only: comments and processing instructions are ignored, as in the original."""
    return parent.iterchildren(tag=etree.Element)


def _line(element: etree._Element | None) -> int:
    line = element.sourceline if element is not None else None
    return line if isinstance(line, int) and line > 0 else 1


def _attr(element: etree._Element, name: str) -> str | None:
    """An attribute value, whitespace-trimmed (the original kept the whitespace)."""
    value = element.get(name)
    return value.strip() if value is not None else None


def _text(element: etree._Element) -> str:
    return (element.text or "").strip()


# --- the loader -------------------------------------------------------------------------------

class _Loader:
    """One pass over one config file: collects every problem and, when there is no error, the Config.

    `for_daemon`: what stops the daemon from watching the trees (a scanPath that is not a
    directory, a tree holding the daemon's own output, nested trees, system directories; see
    `refuse`) is an error only for `run`, `start` and `check-config`; `stop`, `status`, `verify`
    and `upgrade` must work anyway (a tree went missing, a location became a symlink into a tree
    while the daemon ran), so for them it is a warning."""

    def __init__(self, path: str, for_daemon: bool = True) -> None:
        self.path = path
        self.for_daemon = for_daemon
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.problems: list[ConfigProblem] = []

    # problems

    def error(self, where: etree._Element | int | None, message: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.problems.append(ConfigProblem(self.path, line, message, "error"))

    def warning(self, where: etree._Element | int | None, message: str) -> None:
        line = where if isinstance(where, int) else _line(where)
        self.problems.append(ConfigProblem(self.path, line, message, "warning"))

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.problems)

    # reading

    def parse(self) -> etree._Element | None:
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            self.error(0, "the config file does not exist; write the path of an existing config.xml "
                          "(fileconveyor/config.sample.xml is a documented example)")
            return None
        except IsADirectoryError:
            self.error(0, "this is a directory, not a config file; write the path of config.xml")
            return None
        except OSError as error:
            self.error(0, f"the config file cannot be read ({error.strerror or error}); "
                          "check its permissions, or write the path of a readable config.xml")
            return None
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(data, parser)
        except etree.XMLSyntaxError as error:
            self.error(error.lineno or 1, _syntax_message(error))
            return None
        except (ValueError, etree.LxmlError) as error:
            self.error(1, f"the file is not an XML document ({error}); write a config.xml in UTF-8 "
                          "like fileconveyor/config.sample.xml")
            return None
        if root is None:
            self.error(1, "the file is empty; write a <config> document like fileconveyor/config.sample.xml")
        return root

    # structure

    def check_structure(self, root: etree._Element) -> None:
        if root.tag != "config":
            hint = "did you mean config? " if _suggest(str(root.tag), ["config"]) else ""
            if str(root.tag).startswith("{"):
                hint = "remove the xmlns namespace declaration: config.xml has no namespace; "
            self.error(root, f"the root element is <{root.tag}>; {hint}write <config> as the root element, "
                             "with <sources>, <servers> and <rules> inside")
            return
        self._check_element(root, "config")

    def _check_element(self, element: etree._Element, tag: str) -> None:
        shape = _SHAPES[tag]
        present = [str(name) for name in element.attrib]
        for name in present:
            if name not in shape.attributes:
                if shape.attributes:
                    advice = _did_you_mean(name, shape.attributes, f"attributes of <{tag}>")
                else:
                    advice = f"remove it: <{tag}> takes no attributes"
                self.error(element, f"<{tag}> has an unknown attribute {name}; {advice}")
        for name in shape.required_attributes:
            if name in present:
                continue
            if any(other.lower() == name.lower() for other in present):
                continue  # already reported as a case mistake with "did you mean"
            self.error(element, f"<{tag}> is missing the required attribute {name}; write "
                                f"<{tag} {name}=\"{_EXAMPLES.get(name, 'VALUE')}\" ...>")
        text_parts = [element.text or ""] + [child.tail or "" for child in element]
        stray = " ".join(part.strip() for part in text_parts if part.strip())
        if stray and not shape.has_text:
            self.error(element, f"<{tag}> contains the text {stray[:40]!r}, which is not allowed there; "
                                "remove it (values go into attributes or child elements)")
        if shape.children is None:
            self._check_free_children(element, tag)
            return
        seen: dict[str, etree._Element] = {}
        for child in _elements(element):
            name = str(child.tag)
            if name not in shape.children:
                if shape.children:
                    advice = _did_you_mean(name, shape.children, f"elements allowed in <{tag}>")
                else:
                    advice = f"remove it: <{tag}> takes no child elements"
                self.error(child, f"<{name}> is not allowed in <{tag}>; {advice}")
                continue
            if name in seen and name not in shape.repeatable:
                self.error(child, f"<{tag}> has more than one <{name}> (first on line "
                                  f"{_line(seen[name])}); merge them into one")
                continue
            seen.setdefault(name, child)
            self._check_element(child, name)
        for name in shape.required_children:
            if name in seen:
                continue
            if any(str(c.tag).lower() == name.lower() for c in _elements(element)):
                continue
            self.error(element, f"<{tag}> needs a <{name}> element; write {_EXAMPLES.get(name, f'<{name}>')} "
                                f"inside <{tag}>")

    def _check_free_children(self, element: etree._Element, tag: str) -> None:
        seen: dict[str, etree._Element] = {}
        for child in _elements(element):
            name = str(child.tag)
            if name in seen:
                self.error(child, f"<{tag}> sets <{name}> twice (first on line {_line(seen[name])}); "
                                  "keep one of them")
            seen.setdefault(name, child)
            if len(child) or child.attrib:
                self.error(child, f"<{name}> in <{tag}> must hold only a text value; write <{name}>VALUE</{name}>")

    # meaning

    def _directory(self, value: str) -> str:
        """Absolute, normalised, `~` expanded; relative to the config file's directory; not resolved."""
        value = os.path.expanduser(value)
        return os.path.normpath(os.path.join(self.base_dir, value))

    def load_sources(self, root: etree._Element) -> tuple[dict[str, Source], frozenset[str]]:
        sources: dict[str, Source] = {}
        ignored: frozenset[str] = frozenset()
        container = root.find("sources")
        if container is None:
            return sources, ignored
        raw_ignored = _attr(container, "ignoredDirs")
        if raw_ignored is not None:
            try:
                ignored = parse_ignored_dirs(raw_ignored)
            except FilterError as error:
                self.error(container, f"<sources ignoredDirs>: {error}")
        for element in container.findall("source"):
            name = _attr(element, "name")
            scan = _attr(element, "scanPath")
            if name is None or scan is None:
                continue  # reported as structure
            if not _SOURCE_NAME.match(name):
                self.error(element, f"source name {name!r} is not valid; write a name made of letters, "
                                    "digits, - and _ (for example name=\"drupal\")")
            elif name in sources:
                self.error(element, f"there are two sources named {name!r} (the other on line "
                                    f"{sources[name].line}); give each <source> its own name")
                continue
            scan_path = self._directory(scan) if scan else ""
            if not scan:
                self.error(element, f"source {name!r}: scanPath is empty; write the absolute path of the "
                                    "directory to sync, for example scanPath=\"/var/www/site\"")
            elif not os.path.isdir(scan_path):
                what = "is not a directory" if os.path.exists(scan_path) else "does not exist"
                self.refuse(element, f"source {name!r}: scanPath {scan_path!r} {what}; write the path of "
                                     "an existing directory (or create it): the daemon does not start without it")
            document_root = self._document_root(element, name)
            base_path = self._base_path(element, name, document_root)
            sources[name] = Source(name, scan_path, document_root, base_path, _line(element))
        return sources, ignored

    def _document_root(self, element: etree._Element, name: str) -> str | None:
        value = _attr(element, "documentRoot")
        if value is None:
            return None
        if not value:
            self.error(element, f"source {name!r}: documentRoot is empty; write the web server's "
                                "document root, for example documentRoot=\"/var/www\", or remove it")
            return None
        path = self._directory(value)
        if not os.path.isdir(path):
            self.error(element, f"source {name!r}: documentRoot {path!r} is not an existing directory; "
                                "write the web server's document root, or remove the attribute")
        return path

    def _base_path(self, element: etree._Element, name: str, document_root: str | None) -> str | None:
        value = _attr(element, "basePath")
        if value is None:
            return None
        if not (value.startswith("/") and value.endswith("/")):
            fixed = "/" + value.strip("/") + "/" if value.strip("/") else "/"
            self.error(element, f"source {name!r}: basePath {value!r} must start and end with a slash; "
                                f"write basePath=\"{fixed}\"")
            return value
        if document_root and os.path.isdir(document_root):
            logical = os.path.join(document_root, value[1:])
            if not os.path.isdir(logical):
                self.warning(element, f"source {name!r}: {logical!r} (documentRoot + basePath) does not "
                                      "exist; assuming it is reached through a symlink or alias")
        return value

    def load_servers(self, root: etree._Element) -> dict[str, Server]:
        servers: dict[str, Server] = {}
        container = root.find("servers")
        if container is None:
            return servers
        for element in container.findall("server"):
            name = _attr(element, "name")
            transporter = _attr(element, "transporter")
            if name is None or transporter is None:
                continue
            if not name:
                self.error(element, "server name is empty; write a name, for example name=\"cdn\"")
                continue
            if name in servers:
                self.error(element, f"there are two servers named {name!r} (the other on line "
                                    f"{servers[name].line}); give each <server> its own name")
                continue
            max_connections = self._max_connections(element, name)
            settings: dict[str, str] = {}
            setting_lines: dict[str, int] = {}
            for child in _elements(element):
                settings.setdefault(str(child.tag), _text(child))
                setting_lines.setdefault(str(child.tag), _line(child))
            canonical = self._check_transporter(element, name, transporter, settings, setting_lines)
            servers[name] = Server(name, canonical, max_connections, types.MappingProxyType(settings),
                                   _line(element), self._keep_old_versions_for(element, name))
        return servers

    def _keep_old_versions_for(self, element: etree._Element, name: str) -> float:
        value = _attr(element, "keepOldVersionsFor")
        if value is None or value.strip() == "":
            return 0.0
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not seconds >= 0 or seconds == float("inf"):
            self.error(element, f"server {name!r}: keepOldVersionsFor {value!r} is not valid; write a number "
                                "of seconds, 0 or more (for example 86400 for a day; 0 deletes old copies at once)")
            return 0.0
        return seconds

    def _max_connections(self, element: etree._Element, name: str) -> int:
        value = _attr(element, "maxConnections")
        if value is None or value == "":
            return 0
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0:
            self.error(element, f"server {name!r}: maxConnections {value!r} is not valid; write a whole "
                                "number of connections, 0 or more (0 = no per-server limit)")
            return 0
        return number

    def _check_transporter(self, element: etree._Element, server: str, transporter: str,
                           settings: Mapping[str, str], setting_lines: Mapping[str, int]) -> str:
        if not transporter:
            self.error(element, f"server {server!r}: transporter is empty; write a transporter name, "
                                "for example transporter=\"symlink_or_copy\" or transporter=\"s3\"")
            return transporter
        canonical = canonical_transporter_name(transporter)
        try:
            cls = resolve_transporter(transporter)
        except TransporterNotFound as error:
            advice = "" if "write" in str(error) else (
                "; write one of symlink_or_copy, s3, cf, sftp, ftp, cloudfiles, or the dotted name of "
                "a module of your own that defines TRANSPORTER_CLASS")
            self.error(element, f"server {server!r}: {error}{advice}")
            return canonical
        except Exception as error:  # a broken third-party module must not crash check-config
            log.debug("loading transporter %r failed", transporter, exc_info=True)
            self.error(element, f"server {server!r}: transporter {transporter!r} could not be loaded "
                                f"({type(error).__name__}: {error}); fix or reinstall that module, or "
                                "write another transporter name")
            return canonical
        try:
            problems = cls.check_settings(settings)
        except Exception as error:
            log.debug("check_settings of %r failed", transporter, exc_info=True)
            problems = [f"the settings could not be checked ({type(error).__name__}: {error})"]
        for problem in problems:
            mentioned = [key for key in re.findall(r"<([^<>\s/]+)>", problem) if key in setting_lines]
            line = setting_lines[mentioned[0]] if mentioned else _line(element)
            self.error(line, f"server {server!r}: {problem}{_setting_advice(problem, cls.valid_settings)}")
        return canonical

    def load_rules(self, root: etree._Element, sources: Mapping[str, Source],
                   servers: Mapping[str, Server]) -> tuple[Rule, ...]:
        container = root.find("rules")
        if container is None:
            return ()
        rules: list[Rule] = []
        labels: dict[tuple[str, str], int] = {}
        for index, element in enumerate(container.findall("rule"), start=1):
            rule = self._rule(element, index, sources, servers)
            if rule is None:
                continue
            first = labels.setdefault((rule.source, rule.label), rule.line)
            if first != rule.line:
                self.error(element, f"source {rule.source!r} has two rules labelled {rule.label!r} (the "
                                    f"other on line {first}); give each rule its own label=\"...\" (the "
                                    "label identifies the rule in logs and state)")
            rules.append(rule)
        self._warn_overlaps(rules)
        if not rules and not self.has_errors:
            self.warning(container, "there are no rules, so nothing will be synced; write "
                                    "<rule for=\"SOURCE_NAME\">...</rule> inside <rules>")
        return tuple(rules)

    def _rule(self, element: etree._Element, index: int, sources: Mapping[str, Source],
              servers: Mapping[str, Server]) -> Rule | None:
        source_name = _attr(element, "for")
        if source_name is None:
            return None
        source = sources.get(source_name)
        if source is None:
            self.error(element, f"rule for {source_name!r}: there is no source of that name; "
                                + _did_you_mean(source_name, sorted(sources), "sources"))
        label = _attr(element, "label")
        if label is None or label == "":
            label = f"rule {index}"
        delay = self._deletion_delay(element)
        root = source.scan_path if source is not None else os.sep
        rule_filter = self._filter(element.find("filter"), root)
        settings: list[Mapping[str, object]] = []
        processors = self._processors(element.find("processorChain"), settings)
        destinations = self._destinations(element.find("destinations"), servers)
        return Rule(source_name, label, rule_filter, processors, destinations, delay, _line(element),
                    tuple(settings))

    def _deletion_delay(self, element: etree._Element) -> float | None:
        value = _attr(element, "fileDeletionDelayAfterSync")
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < 0:
            self.error(element, f"fileDeletionDelayAfterSync {value!r} is not valid; write a number of "
                                "seconds, 0 or more (0 deletes the source file right after the sync), "
                                "or remove the attribute to keep source files")
            return None
        return number

    def _filter(self, element: etree._Element | None, root: str) -> Filter | None:
        if element is None:
            return None
        lines: dict[str, int] = {}
        conditions = _conditions(element, CONDITIONS, lines, "")
        exclusions = [_conditions(child, EXCLUDE_CONDITIONS, lines, f"{EXCLUDE}/{index}/")
                      for index, child in enumerate(element.findall(EXCLUDE))]
        if exclusions:
            conditions[EXCLUDE] = exclusions
        if not conditions and any(True for _ in _elements(element)):
            return None  # only unknown children: already reported
        try:
            return Filter(conditions, root)
        except FilterError as error:
            self.error(lines.get(error.condition or "", _line(element)), str(error))
            return None

    def _processors(self, element: etree._Element | None,
                    settings: list[Mapping[str, object]]) -> tuple[str, ...]:
        """The chain's processor names; appends each one's validated settings to `settings`."""
        if element is None:
            return ()
        names: list[str] = []
        adding_siblings: str | None = None
        for child in element.findall("processor"):
            name = _attr(child, "name")
            if name is None:
                continue
            if not name:
                self.error(child, "processor name is empty; write for example "
                                  "<processor name=\"unique_filename.MD5\"/>")
                continue
            names.append(canonical_processor_name(name))
            settings.append({})
            try:
                cls = resolve_processor(name)
                settings[-1] = self._processor_settings(child, cls)
                if cls.adds_siblings:
                    adding_siblings = adding_siblings or name
                elif adding_siblings:
                    self.error(child, f"{name} comes after {adding_siblings}, which makes copies of the file "
                                      f"as it is at that point (a pre-compressed .gz/.br); put {adding_siblings} "
                                      "last in the chain, after every processor that changes the file")
                cls.check_available_with(settings[-1])
            except ProcessorNotFound as error:
                advice = "" if "write" in str(error) or "built-in modules" in str(error) else (
                    "; write module.Class, for example unique_filename.MD5 or mypackage.module.MyProcessor")
                self.error(child, f"{error}{advice}")
            except ProcessorUnavailable as error:
                self.error(child, str(error))
            except Exception as error:  # a broken third-party module must not crash check-config
                log.debug("loading processor %r failed", name, exc_info=True)
                self.error(child, f"processor {name!r} could not be loaded ({type(error).__name__}: "
                                  f"{error}); fix or reinstall that module, or remove the processor")
        return tuple(names)

    def _processor_settings(self, element: etree._Element, cls: type[Processor]) -> dict[str, object]:
        """The validated child elements of one <processor>; each bad one is an error at its line."""
        values: dict[str, object] = {}
        for child in _elements(element):
            try:
                values.update(cls.parse_settings({str(child.tag): child.text or ""}))
            except ValueError as error:
                self.error(child, str(error))
        return values

    def _destinations(self, element: etree._Element | None,
                      servers: Mapping[str, Server]) -> tuple[Destination, ...]:
        if element is None:
            return ()
        destinations: list[Destination] = []
        for child in element.findall("destination"):
            server = _attr(child, "server")
            if server is None:
                continue
            if server not in servers:
                self.error(child, f"destination server {server!r} is not defined in <servers>; "
                                  + _did_you_mean(server, sorted(servers), "servers"))
            path = self._destination_path(child)
            object_settings = self._object_settings(child, servers.get(server))
            for other in destinations:
                if other.server == server:
                    self.error(child, f"this rule sends to server {server!r} twice (the other destination "
                                      f"on line {other.line}); keep one <destination server=\"{server}\"> "
                                      "per rule, or make a second rule")
                    break
            else:
                destinations.append(Destination(server, path, _line(child), object_settings))
        return tuple(destinations)

    def _object_settings(self, element: etree._Element, server: Server | None) -> tuple[tuple[str, str], ...]:
        """The destination's own object settings (child elements), checked against what its
        server's transporter takes per destination and with the transporter's own value checks."""
        given = {str(child.tag): child for child in _elements(element)}
        if not given or server is None:
            return ()
        try:
            cls = resolve_transporter(server.transporter)
        except Exception:  # noqa: BLE001 - reported on the <server> already
            return ()
        settings: dict[str, str] = {}
        for name, child in given.items():
            if name in cls.object_settings:
                settings[name] = _text(child)
            elif not cls.object_settings:
                self.error(child, f"<{name}>: server {server.name!r} ({server.transporter}) stores plain files, so "
                                  "a destination cannot set headers or an ACL there (the web server in front "
                                  "decides them); remove it")
            else:
                allowed = sorted(cls.object_settings)
                where = " (it is a setting of the whole <server>)" if name in cls.valid_settings else ""
                self.error(child, f"<{name}> cannot be set per destination of server {server.name!r}{where}; "
                                  + _did_you_mean(name, allowed, f"settings a {server.transporter} destination takes"))
        if settings:
            try:
                problems = cls.check_settings({**server.settings, **settings})
            except Exception as error:  # noqa: BLE001 - a broken third-party check must not crash
                problems = [f"the settings could not be checked ({type(error).__name__}: {error})"]
            for problem in problems:
                mentioned = [key for key in re.findall(r"<([^<>\s/]+)>", problem) if key in settings]
                if mentioned:
                    self.error(given[mentioned[0]], f"destination on server {server.name!r}: {problem}")
        return tuple(sorted(settings.items()))

    def _destination_path(self, element: etree._Element) -> str:
        value = _attr(element, "path") or ""
        parts = [part for part in value.replace("\\", "/").split("/") if part not in ("", ".")]
        if ".." in parts:
            self.error(element, f"destination path {value!r} contains '..'; write a directory below the "
                                "server's root, for example path=\"static\"")
            return ""
        return "/".join(parts)

    def _warn_overlaps(self, rules: list[Rule]) -> None:
        """Say what happens to a file that two rules of one source send to one server, when their
        filters do not keep them apart for certain (only the user knows whether files match both:
        a warning, and it tells the truth)."""
        earlier: dict[tuple[str, str], list[tuple[Rule, str]]] = {}
        for rule in rules:
            for destination in rule.destinations:
                key = (rule.source, destination.server)
                for other, other_path in earlier.get(key, []):
                    if other is rule or not may_overlap(other.filter, rule.filter):
                        continue
                    where = (f"under {destination.path or 'its root'!r}" if destination.path == other_path else
                             f"under {other_path or 'its root'!r} and {destination.path or 'its root'!r}")
                    self.warning(destination.line,
                                 f"rules {other.label!r} (line {other.line}) and {rule.label!r} of source "
                                 f"{rule.source!r} both send to server {destination.server!r} {where}. A file "
                                 "matching both is uploaded once per distinct remote name and every copy is kept, "
                                 "verified and deleted with the file; synced_files.db (one URL per file and server) "
                                 f"records the copy of {other.label!r}, the first of them in this file")
                    break
                earlier.setdefault(key, []).append((rule, destination.path))

    def load_settings(self, root: etree._Element) -> Settings | None:
        container = root.find("settings")
        overrides: dict[str, str] = {}
        if container is not None:
            known = [spec.name for spec in settings_module.SPECS]
            for child in _elements(container):
                name = str(child.tag)
                if name in overrides:
                    continue  # reported as structure
                if name not in settings_module.SPECS_BY_NAME:
                    self.error(child, f"<{name}> is not a setting; "
                                      + _did_you_mean(name, known, "settings"))
                    continue
                value = child.text or ""
                try:
                    settings_module.resolve({name: value}, self.base_dir)
                except SettingError as error:
                    self.error(child, f"setting {error}")
                    continue
                overrides[name] = value
                ignored = settings_module.SPECS_BY_NAME[name].ignored
                if ignored:
                    self.warning(child, f"<{name}> is accepted for compatibility with the original File "
                                        f"Conveyor and ignored: {ignored}; remove it")
        try:
            return settings_module.resolve(overrides, self.base_dir)
        except SettingError as error:
            self.error(container, f"setting {error}")
            return None

    def warn_unused_servers(self, servers: Mapping[str, Server], rules: tuple[Rule, ...]) -> None:
        used = {destination.server for rule in rules for destination in rule.destinations}
        for server in servers.values():
            if server.name not in used:
                self.warning(server.line, f"server {server.name!r} is not used by any rule; add a "
                                          f"<destination server=\"{server.name}\"/> to a rule, or remove it")

    def load(self) -> Config | None:
        root = self.parse()
        if root is None:
            return None
        self.check_structure(root)
        if root.tag != "config":
            return None
        if not self.has_errors:
            # The walker above gives the precise messages; the schema is the authority and catches
            # whatever the walker might let through.
            self.problems.extend(schema_problems(root, self.path))
        sources, ignored = self.load_sources(root)
        servers = self.load_servers(root)
        rules = self.load_rules(root, sources, servers)
        self.warn_unused_servers(servers, rules)
        settings = self.load_settings(root)
        self.check_trees(root, sources, servers, rules, ignored, settings)
        if self.has_errors or settings is None:
            return None
        return Config(path=os.path.abspath(self.path), sources=types.MappingProxyType(sources),
                      servers=types.MappingProxyType(servers), rules=rules, ignored_dirs=ignored,
                      settings=settings, warnings=tuple(p for p in self.problems if p.severity == "warning"))


    # what the trees may hold (issue 7 items 4 and 17)

    def refuse(self, where: etree._Element | int | None, message: str) -> None:
        """What stops the daemon from watching the trees (it depends on the file system now): an
        error for `run`, `start` and `check-config`; a warning for the commands that must work
        anyway (`stop`, `status`, `verify`, `upgrade`)."""
        (self.error if self.for_daemon else self.warning)(where, message)

    def check_trees(self, root: etree._Element, sources: Mapping[str, Source], servers: Mapping[str, Server],
                    rules: tuple[Rule, ...], ignored: frozenset[str], settings: Settings | None) -> None:
        """Nothing the daemon writes may lie in a watched tree (it would sync its own output for
        ever: 3 files became 3,039 copies), trees may not nest, and system directories are
        watched only when the config says so."""
        elements = {_attr(e, "name"): e for e in root.iterfind("sources/source")}
        for source in sources.values():
            element = elements.get(source.name)
            if element is not None and source.scan_path:
                self._check_system_directories(element, source)
            for other in sources.values():
                placed = _placed_in(other.scan_path, source.scan_path) if other is not source else None
                if placed is None or placed == other.scan_path:
                    continue
                if not _is_ignored_below(other.scan_path, placed, ignored):
                    self.refuse(source.line, (
                        f"source {source.name!r}: scanPath {source.scan_path!r} lies inside the tree of source "
                        f"{other.name!r} ({other.scan_path!r}, line {other.line}), so its files would be watched "
                        f"and synced twice; write trees that do not overlap{_ignore_advice(other, placed)}"))
        for server in servers.values():
            if server.transporter != "symlink_or_copy" or not server.settings.get("location", "").strip():
                continue
            location = os.path.abspath(os.path.expanduser(server.settings["location"].strip()))
            line = _setting_element_line(root, server.name, "location") or server.line
            if self._refuse_in_trees(line, f"server {server.name!r}: <location> {location!r}", location, sources,
                                     ignored, "every file published there would be seen as a new file and "
                                              "published again, for ever; write a location outside it"):
                continue
            for rule in rules:
                for destination in rule.destinations:
                    if destination.server != server.name:
                        continue
                    target = os.path.join(location, destination.path) if destination.path else location
                    if destination.path and self._refuse_in_trees(destination.line, (
                            f"destination path {destination.path!r} on server {server.name!r} "
                            f"({target!r})"), target, sources, ignored, (
                            "every file published there would be seen as a new file and published again, "
                            "for ever; write a destination path that leads outside it")):
                        continue
                    self._warn_source_below(destination.line, rule, server.name, target, sources)
        if settings is None:
            return
        for name in ("WORKING_DIR", "PERSISTENT_DATA_DB", "SYNCED_FILES_DB", "FSMONITOR_DB", "PID_FILE", "LOG_FILE"):
            path = getattr(settings, name, "")
            if path:
                # A file is kept out of the tree by ignoring the directory that holds it.
                directory = path if name == "WORKING_DIR" else os.path.dirname(path)
                self._refuse_in_trees(_setting_line_in(root, name), f"{name} {path!r}", directory, sources, ignored, (
                    "the daemon would sync (and publish) its own state and work files, for ever; set "
                    f"<settings><{name}> to a path outside it, or move config.xml (relative paths and the "
                    "defaults are beside it)"))

    def _refuse_in_trees(self, line: int, what: str, path: str, sources: Mapping[str, Source],
                         ignored: frozenset[str], why: str) -> bool:
        """An error for each source whose tree holds `path` (unless ignored); True if any."""
        refused = False
        for source in sources.values():
            placed = _placed_in(source.scan_path, path)
            if placed is None or (placed != source.scan_path and _is_ignored_below(source.scan_path, placed, ignored)):
                continue
            refused = True
            self.refuse(line, f"{what} lies inside the watched tree of source {source.name!r} "
                             f"({source.scan_path!r}): {why}{_ignore_advice(source, placed)}")
        return refused

    def _warn_source_below(self, line: int, rule: Rule, server: str, target: str,
                           sources: Mapping[str, Source]) -> None:
        """A tree inside the directory a rule publishes into: a file whose path below its source
        starts with the way from `target` to that tree would be written into the tree."""
        source = sources.get(rule.source)
        for tree in sources.values():
            placed = _placed_in(target, tree.scan_path)
            if placed is None or source is None:
                continue
            way = os.path.relpath(placed, target)
            if way == ".":
                continue  # target == the tree: refused above as a location inside it
            self.warning(line, (
                f"rule {rule.label!r} publishes into {target!r} on server {server!r}, which holds the tree "
                f"of source {tree.name!r}: a file of source {source.name!r} below {way + '/'!r} would be "
                f"written into {tree.scan_path!r}, over a source file; write a destination path (or "
                "location) that does not hold a source tree"))

    def _check_system_directories(self, element: etree._Element, source: Source) -> None:
        allowed = _attr(element, "allowSystemDirectories")
        if allowed not in (None, "true", "false"):
            self.error(element, f"source {source.name!r}: allowSystemDirectories={allowed!r} is not valid; "
                                "write allowSystemDirectories=\"true\" or remove it")
            return
        found = system_directories_in(source.scan_path)
        if not found:
            return
        listing = ", ".join(found)
        if allowed == "true":
            self.warning(element, f"source {source.name!r}: scanPath {source.scan_path!r} holds system "
                                  f"directories ({listing}); watched because allowSystemDirectories=\"true\"")
            return
        self.refuse(element, (
            f"source {source.name!r}: scanPath {source.scan_path!r} holds system directories ({listing}): "
            "pseudo-files that never end, device nodes and kernel state, which cost a watch each and could "
            "publish secrets; write the directory to publish (for example scanPath=\"/var/www/site\"), or, "
            "if you really mean it, add allowSystemDirectories=\"true\" to this <source>"))


#: Paths that are system directories wherever the tree lies (a container may not list its mounts).
_SYSTEM_DIRECTORIES = ("/proc", "/sys", "/dev")
#: File system types that hold no files to publish (from /proc/self/mountinfo).
_PSEUDO_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "fusectl", "hugetlbfs", "mqueue", "binfmt_misc", "efivarfs",
    "selinuxfs", "autofs", "rpc_pipefs", "nsfs"})


def _pseudo_mounts() -> list[str]:
    """Mount points of pseudo file systems on this machine (empty where mountinfo cannot be read)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        if "-" not in fields[5:]:
            continue
        fstype = fields[fields.index("-", 5) + 1]
        if fstype in _PSEUDO_FILE_SYSTEMS:
            mounts.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))
    return mounts


def system_directories_in(scan_path: str) -> list[str]:
    """System directories (/proc, /sys, /dev, and pseudo file systems mounted anywhere) that
    `scan_path` is, holds, or lies in; resolved, so a symlink to / counts as /."""
    real = os.path.realpath(scan_path)
    candidates = set(_SYSTEM_DIRECTORIES) | set(_pseudo_mounts())
    return sorted(d for d in candidates if is_within(real, d) or is_within(d, real))


def _placed_in(tree: str, path: str) -> str | None:
    """`path` named below `tree` when it lies inside it (as written, or both resolved), else None."""
    for root, inner in ((tree, path), (os.path.realpath(tree), os.path.realpath(path))):
        if is_within(root, inner):
            return tree if inner == root else os.path.join(tree, os.path.relpath(inner, root))
    return None


def _is_ignored_below(tree: str, placed: str, ignored: frozenset[str]) -> bool:
    """Is the directory `placed` (inside `tree`) or one above it, below `tree`, in ignoredDirs?"""
    return in_ignored_dir(tree, os.path.join(placed, "x"), ignored)


def _ignore_advice(source: Source, placed: str) -> str:
    if placed == source.scan_path:
        return ""
    name = os.path.basename(placed)
    return (f", or add {name!r} to <sources ignoredDirs=\"...\"> so that source {source.name!r} does not "
            f"watch it (every directory named {name!r} is then ignored)")


def _setting_element_line(root: etree._Element, server: str, setting: str) -> int:
    for element in root.iterfind("servers/server"):
        if _attr(element, "name") == server:
            child = element.find(setting)
            return _line(child) if child is not None else _line(element)
    return 0


def _setting_line_in(root: etree._Element, name: str) -> int:
    element = root.find(f"settings/{name}")
    return _line(element) if element is not None else 1


def written_by_daemon(config: Config) -> tuple[str, ...]:
    """What the daemon itself writes (local destinations, WORKING_DIR, state files and their
    journals, PID file, log): the monitor is told never to report these
    (`get_monitor(excluded=...)`), in case check-config's refusal is bypassed (a tree re-pointed
    by a symlink while the daemon runs)."""
    s = config.settings
    paths = [s.WORKING_DIR, s.PID_FILE, s.LOG_FILE]
    for database in (s.PERSISTENT_DATA_DB, s.SYNCED_FILES_DB, s.FSMONITOR_DB):
        paths += [database] + [database + suffix for suffix in ("-wal", "-shm", "-journal")]
    if s.LOG_FILE:
        paths += [f"{s.LOG_FILE}.{n}" for n in range(1, 6)]
    for server in config.servers.values():
        location = server.settings.get("location", "").strip()
        if server.transporter == "symlink_or_copy" and location:
            paths.append(os.path.abspath(os.path.expanduser(location)))
    return tuple(p for p in dict.fromkeys(paths) if p)


def _conditions(element: etree._Element, allowed: tuple[str, ...], lines: dict[str, int],
                prefix: str) -> dict[str, object]:
    """The filter conditions among `element`'s children, as Filter takes them; the line of each
    goes into `lines` under `prefix + name` (and of the element itself under the bare prefix), the
    keys FilterError.condition uses. Unknown and repeated children are reported as structure."""
    conditions: dict[str, object] = {}
    if prefix:
        lines[prefix.rstrip("/")] = _line(element)
    for child in _elements(element):
        name = str(child.tag)
        if name not in allowed or name in conditions:
            continue
        lines[prefix + name] = _line(child)
        if name == "size":
            conditions[name] = {"conditionType": _attr(child, "conditionType") or "", "treshold": _text(child)}
        else:
            conditions[name] = _text(child)
    return conditions


def _setting_advice(problem: str, valid: frozenset[str]) -> str:
    """What to write, for a transporter's settings problem that does not say it already."""
    unknown = re.search(r"unknown setting <([^<>]+)>", problem)
    if unknown:
        suggestion = _suggest(unknown[1], sorted(valid))
        return f"; did you mean <{suggestion}>?" if suggestion else "; remove it"
    if "write" in problem.lower():
        return ""
    required = re.search(r"requires the setting <([^<>]+)>", problem)
    if required:
        return f"; write <{required[1]}>VALUE</{required[1]}> inside this <server>"
    return "; see docs/configuration.md for the settings of each transporter"


# --- schema -----------------------------------------------------------------------------------

_SCHEMA: etree.RelaxNG | None = None

#: libxml2's RelaxNG messages, rewritten into what to do. Order matters: first match wins.
_SCHEMA_MESSAGES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"Expecting element (\S+), got (\S+)"),
     lambda m: f"<{m[2]}> is not allowed here; write <{m[1]}> (see fileconveyor/config.sample.xml)"),
    (re.compile(r"Expecting an element (\S+), got nothing"),
     lambda m: f"<{m[1]}> is missing; write {_EXAMPLES.get(m[1], f'<{m[1]}>')}"),
    (re.compile(r"Element (\S+) has extra content: text"),
     lambda m: f"<{m[1]}> contains text, which is not allowed there; remove it"),
    (re.compile(r"Element (\S+) has extra content: (\S+)"),
     lambda m: f"<{m[1]}> contains <{m[2]}>, which is not allowed there; remove it or move it where "
               "config.sample.xml has it"),
    (re.compile(r"Expecting no namespace for element (\S+)"),
     lambda m: f"<{m[1]}> is in an XML namespace; remove the xmlns declaration (config.xml has none)"),
    (re.compile(r"Invalid attribute (\S+) for element (\S+)"),
     lambda m: f"<{m[2]}> has an unknown attribute {m[1]}; remove it (names are case-sensitive; see "
               "fileconveyor/config.sample.xml)"),
    (re.compile(r"Element (\S+) failed to validate attributes"),
     lambda m: f"<{m[1]}> has a missing, unknown or invalid attribute; write the attributes shown in "
               "fileconveyor/config.sample.xml"),
    (re.compile(r"Extra element (\S+) in interleave"),
     lambda m: f"<{m[1]}> is repeated or holds something not allowed; write it once, as in "
               "fileconveyor/config.sample.xml"),
)

_SCHEMA_NOISE = ("Invalid sequence in interleave", "failed to validate content", "Expecting an element , got")


def _schema() -> etree.RelaxNG:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = etree.RelaxNG(etree.parse(SCHEMA_PATH))
    return _SCHEMA


def schema_problems(root: etree._Element, path: str) -> list[ConfigProblem]:
    """Problems the RelaxNG schema finds in the parsed document, in plain English."""
    try:
        schema = _schema()
    except (OSError, etree.LxmlError) as error:
        return [ConfigProblem(path, 1, f"the schema {SCHEMA_PATH} could not be loaded ({error}); "
                                       "reinstall fileconveyor")]
    if schema.validate(root.getroottree()):
        return []
    entries = [entry for entry in schema.error_log]
    useful = [e for e in entries if not any(noise in e.message for noise in _SCHEMA_NOISE)] or entries
    problems: list[ConfigProblem] = []
    for entry in useful:
        message = (f"does not match the config.xml grammar ({entry.message}); write it as in "
                   "fileconveyor/config.sample.xml")
        for pattern, rewrite in _SCHEMA_MESSAGES:
            match = pattern.search(entry.message)
            if match:
                message = rewrite(match)
                break
        # libxml2 reports the innermost mistake first, then its consequences for the ancestors
        # (often on the same line): one message per line is the useful one.
        if not any(problem.line == (entry.line or 1) for problem in problems):
            problems.append(ConfigProblem(path, entry.line or 1, message))
    return problems


def _syntax_message(error: etree.XMLSyntaxError) -> str:
    text = str(error.msg or error).strip()
    text = re.sub(r", line \d+, column \d+$", "", text)
    if "encoding" in text.lower() or "utf-8" in text.lower():
        return (f"the file is not valid text in its encoding ({text}); save it as UTF-8, or declare "
                "its encoding in the first line: <?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>")
    if "Document is empty" in text or "Start tag expected" in text:
        return "the file holds no XML element; write a <config> document like fileconveyor/config.sample.xml"
    return (f"XML syntax error: {text}; write well-formed XML (every tag closed, attribute values "
            "quoted, & written as &amp;)")


# --- API --------------------------------------------------------------------------------------

def _run(path: str, for_daemon: bool = True) -> tuple[Config | None, list[ConfigProblem]]:
    loader = _Loader(path, for_daemon)
    try:
        config = loader.load()
    except Exception as error:  # last resort: no traceback may reach a user
        log.debug("checking %s failed unexpectedly", path, exc_info=True)
        loader.error(1, f"the config could not be checked ({type(error).__name__}: {error}); please "
                        "report this as a bug, with the config file")
        config = None
    return config, sorted(loader.problems, key=lambda problem: problem.line)


def check_config(path: str) -> list[ConfigProblem]:
    """Every problem (errors and warnings) in the config file at `path`; never raises for bad input.
    Also what start-up refuses on this machine although other commands accept it: a WORKING_DIR
    that another user can write in (fileconveyor.localfile)."""
    config, problems = _run(path)
    if config is not None:
        from fileconveyor.localfile import private_directory_problem

        unsafe = private_directory_problem(config.settings.WORKING_DIR)
        if unsafe:
            problems.append(ConfigProblem(path, _setting_line(path, "WORKING_DIR"), (
                f"WORKING_DIR {unsafe}: another user could read or replace files on their way to "
                "publication, so the daemon will not start; use a directory of its own (mode 0700), "
                "or remove <WORKING_DIR> to use the default beside the state databases")))
        from fileconveyor.httpd import endpoint_problem

        endpoint = endpoint_problem(config.settings)
        if endpoint:
            problems.append(ConfigProblem(path, _setting_line(path, "HTTP_ADDRESS"), endpoint))
    return problems


def _setting_line(path: str, name: str) -> int:
    """The line of `<settings><name>` in the config file (1 when it is not there)."""
    try:
        element = etree.parse(path).getroot().find(f"settings/{name}")
    except (OSError, etree.XMLSyntaxError):
        return 1
    return element.sourceline if element is not None and element.sourceline else 1


def load_config(path: str, for_daemon: bool = True) -> Config:
    """The validated Config; raises ConfigError listing every problem when there is any error.
    On success, `Config.warnings` holds the warnings. `for_daemon=False` (stop, status, verify,
    upgrade) makes what only stops the daemon from watching its trees (a scanPath that does not
    exist, a destination inside a tree, ...) a warning: those commands must work anyway."""
    config, problems = _run(path, for_daemon)
    if config is None:
        raise ConfigError(problems)
    return config
