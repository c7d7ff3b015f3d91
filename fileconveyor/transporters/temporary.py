"""Uploads under a temporary name, renamed into place, whose leftovers survive no crash.

SFTP, FTP and symlink_or_copy write a file under a temporary name (`base.temporary_name`) and
rename it over the final name, so no reader ever sees a partial file at the final name. What is
left when the upload dies half-way (the connection drops, the daemon is killed with SIGKILL) is a
temporary file on the destination. An in-memory list of them is lost with the transporter (the
pool replaces a transporter after a failure) or the process; so every temporary name is recorded
on local disk *before* it is created on the destination, and the record is removed only once the
name is gone (renamed into place, or removed after a failure). Whatever is still recorded when a
transporter (re)connects is removed from the destination: the sweep.

The record is one small marker file per temporary name, in `<state_dir>/temporary-names/<server>/`
(directory 0700, files 0600). Why not one journal file or a database table: a marker is written
and removed without rewriting anything else, a torn record cannot hide the others, and the upload
that owns a marker holds an `flock` on it for as long as the name may still be in use. The sweep
skips markers it cannot lock, so it never removes a temporary file that another worker, or another
process on the same state directory (`fileconveyor verify`), is still writing; the kernel drops
the lock of a killed process, so its markers become sweepable at once.

Markers are written without fsync: they survive the death of the process (`kill -9`), the case
that matters; after a power failure of this machine the last seconds of markers may be lost (as
SQLite's WAL with synchronous=NORMAL may lose its last transactions). The sweep only ever removes
names of the temporary-name shape (`.<name>.fctmp-<12 hex digits>`), so a damaged or stale marker
cannot make it remove anything else.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import secrets
import time
import urllib.parse
from typing import Callable, Iterator

from fileconveyor.transporters.base import RetryableError, is_temporary_name, temporary_name

logger = logging.getLogger(__name__)

#: Upper bound on markers one sweep looks at (far above the number of connections of a server).
MAX_SWEEP = 100_000
#: Seconds after which an unlocked `.partial-` marker is taken for one whose writer died. A younger
#: one may be a writer's between its open() and its flock(): removing it made that upload fail
#: with ENOENT (seen in bursts, where a new worker's first sweep meets another worker's upload).
PARTIAL_MARKER_AGE = 60.0


class PendingTemporaryNames:
    """The durable record of one server's temporary names (see the module docstring)."""

    def __init__(self, state_dir: str, server_name: str) -> None:
        self.directory = os.path.join(state_dir, "temporary-names",
                                      urllib.parse.quote(server_name, safe="") or "%00")

    def _ensure_directory(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def recorded(self, temp: str) -> Iterator[Callable[[], None]]:
        """Record `temp` for the duration of the block, which may create it on the destination.

        Yields `forget`: call it once `temp` no longer exists on the destination (renamed into
        place or removed). Leaving the block without calling it keeps the marker, unlocked, for
        the next sweep."""
        self._ensure_directory()
        token = secrets.token_hex(8)
        # Written under a name the sweep ignores, locked, then renamed (the lock stays with the
        # inode): a sweeper never sees a marker that is empty or not yet locked.
        partial = os.path.join(self.directory, f".partial-{token}")
        final = os.path.join(self.directory, token)
        fd = os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        forgotten = False

        def forget() -> None:
            nonlocal forgotten
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final)
            forgotten = True

        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps({"path": temp}).encode("ascii"))
            os.rename(partial, final)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        try:
            yield forget
        finally:
            os.close(fd)  # releases the lock; an unforgotten marker is now sweepable
            if not forgotten:
                logger.debug("temporary name %s stays recorded for the next sweep", temp)

    def sweep(self, remove: Callable[[str], None],
              accept: Callable[[str], bool] = is_temporary_name) -> int:
        """Remove every recorded temporary name no upload is using; returns how many were removed.

        `remove(path)` deletes one name on the destination (a missing one is not an error). A
        failure stops the sweep, logged, and leaves the remaining markers for the next one: the
        connection is most likely gone. The sweep itself never raises."""
        try:
            names = sorted(os.listdir(self.directory))[:MAX_SWEEP]
        except FileNotFoundError:
            return 0
        except OSError as error:
            logger.warning("cannot read the record of temporary names in %s: %s", self.directory,
                           error)
            return 0
        removed = 0
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # removed by another sweep meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an upload in progress owns it
                if name.startswith(".partial-"):
                    if time.time() - os.fstat(fd).st_mtime >= PARTIAL_MARKER_AGE:
                        os.unlink(path)  # died before its temporary name was created
                    continue
                temp = _read_marker(fd)
                if temp is None or not accept(temp):
                    logger.warning("ignoring a damaged or foreign record of a temporary name: %s",
                                   path)
                    os.unlink(path)
                    continue
                try:
                    remove(temp)
                except Exception as error:  # noqa: BLE001 - best effort; retried next sweep
                    logger.warning("cannot remove the temporary file %s left by an interrupted "
                                   "upload (%s); will try again after the next reconnect", temp,
                                   error)
                    return removed
                os.unlink(path)
                removed += 1
                logger.info("removed the temporary file %s left by an interrupted upload", temp)
            except OSError as error:
                if error.errno != errno.ENOENT:
                    logger.warning("cannot update the record of temporary names in %s: %s",
                                   self.directory, error)
            finally:
                os.close(fd)
        return removed

    def recorded_names(self) -> list[str]:
        """Every recorded temporary name, in use or not (for `status` and tests)."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(self.directory))[:MAX_SWEEP]:
                if name.startswith(".partial-"):
                    continue
                try:
                    fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    temp = _read_marker(fd)
                finally:
                    os.close(fd)
                if temp is not None:
                    found.append(temp)
        return found


def _read_marker(fd: int) -> str | None:
    try:
        data = json.loads(os.read(fd, 64 * 1024).decode("ascii"))
    except (OSError, ValueError):
        return None
    path = data.get("path") if isinstance(data, dict) else None
    return path if isinstance(path, str) else None


@dataclasses.dataclass(frozen=True)
class RenameIntoPlace:
    """What one protocol provides for `upload_via_temporary_name`."""

    #: Write the local file's content to this (temporary) path on the destination.
    store: Callable[[str], None]
    #: Put `temp` in place of `target`, replacing it (atomically where the protocol can).
    rename: Callable[[str, str], None]
    #: Remove a path on the destination; a missing one is not an error.
    remove: Callable[[str], None]
    #: Is the connection gone after this error (so nothing more can be done on it now)?
    connection_lost: Callable[[BaseException], bool] = lambda error: False
    #: Is there a directory at this path? (None: the destination has no directories.)
    is_directory: Callable[[str], bool] | None = None
    #: Remove the directory at this path if it is empty; raise if it is not (or cannot go).
    remove_directory: Callable[[str], None] | None = None


def upload_via_temporary_name(pending: PendingTemporaryNames, target: str,
                              protocol: RenameIntoPlace, directory: str | None = None) -> None:
    """Store under a recorded temporary name (in `directory`, default the target's), rename it
    over `target`. After a failure the temporary name is removed at once, or, when the connection
    is gone, by the sweep after the reconnect; the error is re-raised for the caller to classify.
    """
    temp = temporary_name(target, directory)
    with pending.recorded(temp) as forget:
        try:
            protocol.store(temp)
            try:
                protocol.rename(temp, target)
            except Exception as error:
                if protocol.connection_lost(error) or not _clear_empty_directory(protocol, target):
                    raise
                protocol.rename(temp, target)
        except BaseException as error:
            if not protocol.connection_lost(error):
                try:
                    protocol.remove(temp)
                except Exception:  # noqa: BLE001 - the original error matters; the sweep retries
                    logger.debug("could not remove %s after a failed upload", temp, exc_info=True)
                else:
                    forget()
            raise
        forget()


def _clear_empty_directory(protocol: RenameIntoPlace, target: str) -> bool:
    """After a failed rename onto `target`: True if an empty directory was in the way and is gone
    (try the rename again), False if no directory is there (the rename failed for another reason).

    A file that replaces a directory in the source may arrive before the deletions of the files
    below the directory are done: they are other paths' trips, running at the same time (the
    torture suite's F15). So a directory that is not empty is a RetryableError: the file is
    retried with backoff, and goes through once they are deleted; if the directory holds files no
    rule manages (someone else's), the reason says what to do and `status` shows it."""
    if protocol.is_directory is None or protocol.remove_directory is None \
            or not protocol.is_directory(target):
        return False
    try:
        protocol.remove_directory(target)
    except Exception as error:  # noqa: BLE001 - decided by looking again, below
        if protocol.is_directory(target):
            raise RetryableError(
                f"cannot put a file at {target}: a directory that is not empty is in its place "
                f"on the destination ({error or type(error).__name__}); retried while the files "
                "below it are being deleted; if they are not File Conveyor's, remove that directory "
                "on the server (or rename the file)") from None
    logger.info("removed the empty directory %s that was in the place of an uploaded file",
                target)
    return True
