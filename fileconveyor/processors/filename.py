"""`filename.*`: file name rewrites. They keep an earlier processor's rename (the original always
started again from the source's name, so GIF -> PNG followed by a rename produced `x.gif` holding
PNG data)."""
from __future__ import annotations

import os

from fileconveyor.processors.base import Processor, copy_to


class Base(Processor):
    """Replaces each string of `search` by the matching one of `replace` in the basename."""

    search: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()

    def run(self, input_file: str) -> str:
        basename = os.path.basename(input_file)
        new = basename
        for old, replacement in zip(self.search, self.replace):
            new = new.replace(old, replacement)
        if new == basename:
            return input_file
        return copy_to(self.context, input_file, new)


class SpacesToUnderscores(Base):
    search = (" ",)
    replace = ("_",)


class SpacesToDashes(Base):
    search = (" ",)
    replace = ("-",)
