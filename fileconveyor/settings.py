"""Defaults for every tunable, under the original File Conveyor's names.

The original asked users to edit `settings.py`. Here the file only holds defaults; a `<settings>`
element in config.xml overrides any of them, one child element per name:

    <settings><PID_FILE>/run/fileconveyor.pid</PID_FILE></settings>

Every setting has a type so that a value written in XML is parsed and checked once, with a message
that names the setting and the allowed values. Relative paths resolve against the directory of the
config file (the original resolved them against the current directory, so the PID file and the
databases moved with whoever started the daemon: original issues #26 and #152).

The PID file and the processors' working directory default to the directory of the state
databases (that of PERSISTENT_DATA_DB), not to a user's home or to /tmp: every user who runs
`status` or `stop` with the same config finds the same PID file (the original's
`~/.fileconveyor.pid` was a different file for root's init script and for the web server user), and
files on their way to publication never sit in a world-writable directory.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping

from fileconveyor.notify import EVENTS, parse_webhook_events, parse_webhook_url


class SettingError(ValueError):
    """A `<settings>` value that cannot be used; `name` is the setting."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("write true or false")


def _positive_int(text: str) -> int:
    value = int(text.strip())
    if value < 1:
        raise ValueError("write a whole number of at least 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text.strip())
    if value < 0:
        raise ValueError("write a number of seconds, 0 or more")
    return value


def _level(text: str) -> int:
    name = text.strip().upper()
    if name.startswith("LOGGING."):
        name = name[len("logging."):]
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        raise ValueError("write one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _backend(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "inotify", "fsevents", "polling"):
        raise ValueError("write one of auto, inotify, fsevents, polling")
    return value


def _text(text: str) -> str:
    return text.strip()


def _address(text: str) -> str:
    """host:port ([v6]:port); empty: no HTTP endpoint."""
    value = text.strip()
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise ValueError("write host:port, e.g. 127.0.0.1:9380 or [::1]:9380 (empty: no endpoint)")
    return value


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    name: str
    default: Any
    parse: Callable[[str], Any]
    is_path: bool = False
    doc: str = ""
    #: For a path default: the path setting whose directory the default is relative to (instead of
    #: the config file's directory). An explicit value is still relative to the config file.
    beside: str | None = None
    #: For a setting of the original that means nothing here: why, and what to use instead.
    #: `check-config` warns on the line that sets it (issue 11: accepted, but doing nothing).
    ignored: str = ""


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("RESTART_AFTER_UNHANDLED_EXCEPTION", True, _bool,
                doc="restart the daemon after an unexpected exception in any thread"),
    SettingSpec("RESTART_INTERVAL", 10.0, _non_negative_float,
                doc="seconds to wait before such a restart"),
    SettingSpec("LOG_FILE", "fileconveyor.log", _text, is_path=True,
                doc="log file, rotated externally (logrotate: contrib/fileconveyor.logrotate); empty for none; "
                    "under systemd, unset means the journal"),
    SettingSpec("PERSISTENT_DATA_DB", "persistent_data.db", _text, is_path=True),
    SettingSpec("PID_FILE", "fileconveyor.pid", _text, is_path=True, beside="PERSISTENT_DATA_DB",
                doc="default: beside the state databases (the original used ~/.fileconveyor.pid)"),
    SettingSpec("PERSISTENT_DATA_WAL", False, _bool,
                doc="WAL journal for persistent_data.db: several times faster commits, but a user who "
                    "may only read it (the web server) can no longer read it (docs/state.md)"),
    SettingSpec("SYNCED_FILES_DB", "synced_files.db", _text, is_path=True),
    SettingSpec("SYNCED_FILES_WAL", False, _bool,
                doc="WAL journal for synced_files.db: faster commits, but readers must be able to "
                    "write beside it (docs/state.md)"),
    SettingSpec("FSMONITOR_DB", "fsmonitor.db", _text, is_path=True,
                doc="the path index (hard-coded in the original)"),
    SettingSpec("WORKING_DIR", "processor_work", _text, is_path=True, beside="PERSISTENT_DATA_DB",
                doc="processor working copies, one private directory per chain run; must be owned by "
                    "the daemon's user and writable by no one else (default: beside the state "
                    "databases; the original used /tmp/fileconveyor)"),
    SettingSpec("SYNC_UNSAFE_SYMLINKS", False, _bool,
                doc="also sync symlinks that resolve outside their source tree (rsync's "
                    "--copy-unsafe-links); by default only links inside the tree are synced"),
    SettingSpec("MAX_FILES_IN_PIPELINE", 50, _positive_int,
                doc="paths in flight at once"),
    SettingSpec("MAX_SIMULTANEOUS_PROCESSORCHAINS", 1, _positive_int),
    SettingSpec("MAX_SIMULTANEOUS_TRANSPORTERS", 10, _positive_int,
                doc="transporter threads across all servers"),
    # The original's per-transporter queues and polled stages are gone: these three are accepted so
    # that old settings still load, and check-config says that they do nothing.
    SettingSpec("MAX_TRANSPORTER_QUEUE_SIZE", 1, _positive_int,
                ignored="each server's pool hands a file to whichever of its connections is idle, so "
                        "there is no per-transporter queue to bound; maxConnections and "
                        "MAX_SIMULTANEOUS_TRANSPORTERS bound the transfers"),
    SettingSpec("QUEUE_PROCESS_BATCH_SIZE", 20, _positive_int,
                ignored="no stage is polled in batches any more: events are committed as the monitor "
                        "delivers them and finished uploads as they complete (docs/architecture.md); "
                        "MAX_FILES_IN_PIPELINE bounds the work in flight"),
    SettingSpec("CALLBACKS_CONSOLE_OUTPUT", False, _bool,
                ignored="set CONSOLE_LOGGER_LEVEL to INFO to see every synced and deleted file on the "
                        "console"),
    SettingSpec("CONSOLE_LOGGER_LEVEL", logging.WARNING, _level),
    SettingSpec("FILE_LOGGER_LEVEL", logging.INFO, _level),
    SettingSpec("RETRY_INTERVAL", 30.0, _non_negative_float,
                doc="first retry delay of a failed file; doubles per attempt, with jitter"),
    SettingSpec("RETRY_MAX_INTERVAL", 3600.0, _non_negative_float,
                doc="cap on the retry delay"),
    SettingSpec("FSMONITOR_BACKEND", "auto", _backend,
                doc="auto, inotify, fsevents or polling"),
    SettingSpec("POLL_INTERVAL", 10.0, _non_negative_float,
                doc="seconds between scans of the polling monitor"),
    SettingSpec("SHUTDOWN_TIMEOUT", 30.0, _non_negative_float,
                doc="seconds that in-flight work may take to finish on SIGTERM"),
    SettingSpec("VERIFY_TIMEOUT", 30.0, _non_negative_float,
                doc="seconds per check in `fileconveyor verify`"),
    SettingSpec("HTTP_ADDRESS", "", _address,
                doc="host:port of the HTTP endpoint (/metrics, /status, /healthz and a status page; "
                    "docs/operations.md); empty: none. A non-loopback address needs HTTP_TOKEN or "
                    "HTTP_TOKEN_FILE"),
    SettingSpec("HTTP_TOKEN", "", _text,
                doc="bearer token the endpoint requires on every request (Authorization: Bearer ...)"),
    SettingSpec("HTTP_TOKEN_FILE", "", _text, is_path=True,
                doc="file holding that token (first line), kept out of config.xml"),
    SettingSpec("HTTP_HEALTH_PAUSED_MAX", 300.0, _non_negative_float,
                doc="/healthz answers 503 once a server has been paused this many seconds"),
    SettingSpec("WEBHOOK_URL", "", parse_webhook_url,
                doc="http(s) URL that receives a JSON POST per event (contrib/README.md); empty: none"),
    SettingSpec("WEBHOOK_EVENTS", frozenset(EVENTS), parse_webhook_events,
                doc="all, or some of: " + ", ".join(EVENTS)),
    SettingSpec("WEBHOOK_SECRET", "", _text,
                doc="key of the X-FileConveyor-Signature header (sha256=HMAC-SHA256 of the body); never logged"),
    SettingSpec("WEBHOOK_BACKLOG_THRESHOLD", 10000, _positive_int,
                doc="backlog_high is sent when more files than this wait or are in flight"),
    SettingSpec("WEBHOOK_TIMEOUT", 10.0, _non_negative_float,
                doc="seconds per webhook request; failed requests are retried with backoff"),
)

SPECS_BY_NAME: dict[str, SettingSpec] = {spec.name: spec for spec in SPECS}


class Settings:
    """Resolved settings: attribute access by the original names, immutable after creation."""

    def __init__(self, values: Mapping[str, Any], explicit: frozenset[str] = frozenset()) -> None:
        object.__setattr__(self, "_values", dict(values))
        #: The names config.xml set (the others are defaults).
        object.__setattr__(self, "explicit", frozenset(explicit))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]  # type: ignore[attr-defined]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are immutable")

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)  # type: ignore[attr-defined]


def resolve_path(value: str, base_dir: str) -> str:
    """`~` expanded, then relative to `base_dir` (the config file's directory)."""
    if not value:
        return value
    value = os.path.expanduser(value)
    return os.path.normpath(os.path.join(base_dir, value))


def resolve(overrides: Mapping[str, str], base_dir: str) -> Settings:
    """Defaults with `overrides` (raw XML texts) applied; raises SettingError for the first bad one."""
    values: dict[str, Any] = {}
    for spec in SPECS:
        if spec.name in overrides:
            try:
                value = spec.parse(overrides[spec.name])
            except ValueError as error:
                detail = str(error) if "write" in str(error) else _hint(spec)
                raise SettingError(spec.name, f"{overrides[spec.name]!r} is not valid: {detail}") from None
        else:
            value = spec.default
        if spec.is_path:
            beside = values.get(spec.beside or "") if spec.name not in overrides else None
            value = resolve_path(value, os.path.dirname(beside) if beside else base_dir)
        values[spec.name] = value
    unknown = sorted(set(overrides) - set(SPECS_BY_NAME))
    if unknown:
        raise SettingError(unknown[0], "is not a setting; known settings: " + ", ".join(SPECS_BY_NAME))
    return Settings(values, frozenset(overrides))


def _hint(spec: SettingSpec) -> str:
    if isinstance(spec.default, bool):
        return "write true or false"
    if isinstance(spec.default, int):
        return "write a whole number"
    if isinstance(spec.default, float):
        return "write a number of seconds"
    return "see the README for allowed values"


def defaults(base_dir: str = ".") -> Settings:
    return resolve({}, os.path.abspath(base_dir))
