"""What a copy holds: the size and MD5 of a file, and their comparison with a listed object.

Recorded with every copy (`synced_copies.size`, `.md5`) when it is uploaded, so that `verify` and
`reconcile` can tell from a destination's listing alone whether the copy is still what File
Conveyor put there: sizes always; MD5s where the listing gives one (S3 single-part objects, Swift),
or by reading the copy back (`verify --deep`, where the transporter `can_read_back`). MD5 because
that is what S3 and Swift give for free, not for security: it detects changes, not attacks.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

from fileconveyor import localfile
from fileconveyor.transporters.base import RemoteEntry

BLOCK = 1024 * 1024


class Fingerprint(NamedTuple):
    size: int
    md5: str


def of_file(path: str) -> Fingerprint | None:
    """Size and MD5 of the regular file at `path`, None if it is gone or cannot be read (its
    upload meets the same problem and reports it). Never blocks on a FIFO swapped in."""
    try:
        with localfile.open_regular(path) as handle:
            digest = hashlib.md5(usedforsecurity=False)
            size = 0
            for block in iter(lambda: handle.read(BLOCK), b""):
                digest.update(block)
                size += len(block)
    except OSError:
        return None
    return Fingerprint(size, digest.hexdigest())


def difference(expected_size: int | None, expected_md5: str | None, entry: RemoteEntry,
               read_back_md5: str | None = None) -> str | None:
    """Why the listed `entry` is not the expected content, or None when nothing says so (what
    is unknown on either side is not compared)."""
    if expected_size is not None and entry.size != expected_size:
        return f"size {entry.size}, expected {expected_size}"
    remote_md5 = entry.md5 or read_back_md5
    if expected_md5 is not None and remote_md5 is not None and remote_md5 != expected_md5:
        return f"content differs (MD5 {remote_md5}, expected {expected_md5})"
    return None
