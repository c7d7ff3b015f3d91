"""File system monitors: OS notification backends and the polling fallback (see base.py).

`get_monitor()` is the one place that picks a backend. Backend modules are imported lazily, so
importing this package never imports pyinotify on macOS nor macfsevents on Linux.
"""
from __future__ import annotations

import importlib
import logging
import sys
from typing import Iterable

from fileconveyor.fsmonitor.base import CrashCallback, Event, EventBatchCallback, FSEvent, Monitor, MonitorError

__all__ = ["Event", "FSEvent", "Monitor", "MonitorError", "get_monitor", "BACKENDS"]

log = logging.getLogger(__name__)

#: backend name -> (module, class, the Python package it needs, the platform it runs on)
BACKENDS = {
    "inotify": ("fileconveyor.fsmonitor.inotify", "InotifyMonitor", "pyinotify", "linux"),
    "fsevents": ("fileconveyor.fsmonitor.fsevents", "FSEventsMonitor", "macfsevents", "darwin"),
    "polling": ("fileconveyor.fsmonitor.polling", "PollingMonitor", None, None),
}


def _load(backend: str) -> type[Monitor]:
    module, cls, _, _ = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def _native_for_platform() -> tuple[str | None, str]:
    """(backend to try, or None) and why."""
    for backend, (_, _, package, platform) in BACKENDS.items():
        if platform is not None and sys.platform.startswith(platform):
            return backend, f"{backend} is the native monitor on {sys.platform}"
    return None, f"no native monitor is supported on {sys.platform}"


def get_monitor(
    backend: str,
    callback: EventBatchCallback,
    index_path: str,
    ignored_dirs: Iterable[str] = (),
    on_crash: CrashCallback | None = None,
    poll_interval: float = 10.0,
    excluded: Iterable[str] = (),
) -> Monitor:
    """Create the monitor named by FSMONITOR_BACKEND: "auto", "inotify", "fsevents" or "polling".

    "auto" takes the platform's native backend and falls back to polling (with a WARNING saying
    why) when it is unsupported or its package cannot be imported. An explicit native backend that
    cannot be loaded is a MonitorError: the user asked for it, silently polling would hide that.
    `excluded`: paths the daemon writes itself (local destinations, WORKING_DIR, its state files;
    `fileconveyor.config.written_by_daemon`), never reported nor descended.
    """
    if backend not in ("auto", *BACKENDS):
        raise MonitorError(f"Unknown monitor backend {backend!r}: write auto, inotify, fsevents or polling")
    chosen = backend
    if backend == "auto":
        native, why = _native_for_platform()
        chosen = native or "polling"
        if native is None:
            log.warning("Using the polling monitor (every %.1f s): %s", poll_interval, why)
    cls: type[Monitor]
    if chosen == "polling":
        cls = _load("polling")
    else:
        package, platform = BACKENDS[chosen][2], BACKENDS[chosen][3]
        try:
            if platform is not None and not sys.platform.startswith(platform):
                raise ImportError(f"{chosen} only works on {platform}, this is {sys.platform}")
            cls = _load(chosen)
        except ImportError as error:
            if backend != "auto":
                raise MonitorError(
                    f"The {chosen} monitor cannot be used: {error} (install {package}, or set "
                    "FSMONITOR_BACKEND to polling)"
                ) from error
            log.warning(
                "Falling back to the polling monitor (every %.1f s): the %s monitor cannot be "
                "loaded (%s; install %s)", poll_interval, chosen, error, package,
            )
            chosen, cls = "polling", _load("polling")
    log.info("File system monitor: %s", chosen)
    if chosen == "polling":
        return cls(callback, index_path, ignored_dirs, on_crash, interval=poll_interval,  # type: ignore[call-arg]
                   excluded=excluded)
    return cls(callback, index_path, ignored_dirs, on_crash, poll_interval=poll_interval,  # type: ignore[call-arg]
               excluded=excluded)
