"""`unique_filename.*`: content- or time-stamped names, so a CDN can cache files forever.

Both keep an earlier processor's rename, and `MD5` hashes the content that will actually be
transported (the original hashed the source, so an optimised image got the source's hash). `Mtime`
uses the source's modification time, as before, in whole seconds so that names stay the same as the
original's for unchanged files.
"""
from __future__ import annotations

import hashlib
import os

from fileconveyor.processors.base import Processor, copy_to


def _split(basename: str) -> tuple[str, str]:
    """Split at the last dot like the original (`a.tar.gz` -> `a.tar`, `.gz`); dot-files have no
    extension (`.htaccess` -> `.htaccess`, '')."""
    name, extension = os.path.splitext(basename)
    return name, extension


class Mtime(Processor):
    def run(self, input_file: str) -> str:
        name, extension = _split(os.path.basename(input_file))
        mtime = int(os.stat(self.context.original_file).st_mtime)
        return copy_to(self.context, input_file, f"{name}_{mtime}{extension}")


class MD5(Processor):
    def run(self, input_file: str) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        with open(input_file, "rb") as reader:
            for block in iter(lambda: reader.read(1024 * 1024), b""):
                digest.update(block)
        name, extension = _split(os.path.basename(input_file))
        return copy_to(self.context, input_file, f"{name}_{digest.hexdigest()}{extension}")
