"""A third-party processor used by the end-to-end tests (loaded by dotted name, as users do).

`Copy` makes the pipeline copy files instead of symlinking them, so that comparisons of the
destination with the source read real copies."""
from __future__ import annotations

import os

from fileconveyor.processors.base import Processor, copy_to


class Copy(Processor):
    def run(self, input_file: str) -> str:
        return copy_to(self.context, input_file, os.path.basename(input_file))
