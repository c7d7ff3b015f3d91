"""systemd integration without a dependency: `sd_notify` and "am I running under systemd?".

A `Type=notify` service tells systemd when it is really up (READY=1), what it is doing (STATUS=),
that it is reloading (RELOADING=1) or stopping (STOPPING=1), and that it is alive (WATCHDOG=1, when
the unit sets WatchdogSec=). The protocol is one datagram per message on the AF_UNIX socket named
by $NOTIFY_SOCKET ("@" starts a name in the abstract namespace), documented in sd_notify(3). It is
a dozen lines: a library (python-systemd, sdnotify) would be a C build or an unmaintained package
for that.

Every call is best effort: a notification that cannot be sent is logged once and never stops the
daemon (systemd may be restarting; a unit without Type=notify has no socket at all).
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)


def under_systemd(environ: Mapping[str, str] = os.environ) -> bool:
    """Was this process started by systemd as a service? Its stdout/stderr then go to the journal
    (JOURNAL_STREAM) and every service has an INVOCATION_ID."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; does nothing when it is not set."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address if address.startswith(("/", "\0")) else ""
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_interval = self._watchdog_interval(environ)

    @staticmethod
    def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec, as sd_watchdog_enabled(3)
        advises), or None when no watchdog is set for this process."""
        try:
            usec = int(environ.get("WATCHDOG_USEC", "0"))
            pid = int(environ.get("WATCHDOG_PID", "0") or "0")
        except ValueError:
            return None
        if usec <= 0 or (pid and pid != os.getpid()):
            return None
        return usec / 2_000_000

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines (keyword names are the upper-case variable names); True when sent."""
        if not self.address:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError as error:
            if not self._failed:
                log.warning("Cannot notify systemd through %s: %s", self.address.replace("\0", "@"), error)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload units (systemd >= 253) match the reload.
        return self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                         status="reloading the config")

    def stopping(self) -> bool:
        return self.send(stopping=1, status="stopping")

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def watchdog(self) -> bool:
        return self.watchdog_interval is not None and self.send(watchdog=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
