"""Third-party processors for tests/e2e/test_original_issues.py (loaded by dotted name, as users do).

`WriteThenFail` leaves a partial output in the run's working directory and then fails, as a tool
that dies half-way does, for files named `*.bad`: what the original left in /tmp (its issue #30).
"""
from __future__ import annotations

import os

from fileconveyor.processors.base import Processor, ProcessorError


class WriteThenFail(Processor):
    valid_extensions = (".bad",)

    def run(self, input_file: str) -> str:
        with open(self.context.output_path(os.path.basename(input_file) + ".partial"), "wb") as partial:
            partial.write(b"half of it")
        raise ProcessorError(f"{os.path.basename(input_file)}: the tool died half-way (a test processor)")
