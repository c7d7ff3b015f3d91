"""A third-party transporter for the crash-and-restart test: while the file named by the setting
`crash_marker` exists, building a connection raises, which escapes a worker thread's loop (a real
unexpected exception, not a classified transfer error)."""
from __future__ import annotations

import os

from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter

TRANSPORTER_CLASS = "CrashyTransporter"


class CrashyTransporter(SymlinkOrCopyTransporter):
    name = "tests.e2e.crashy"
    valid_settings = SymlinkOrCopyTransporter.valid_settings | {"crash_marker"}

    def __init__(self, settings, context):
        super().__init__(settings, context)
        if os.path.exists(self.settings.get("crash_marker", "")):
            raise RuntimeError("injected crash: the crash marker exists")
