"""Safe access to local files that other users can change: source files and private directories.

Why this module exists: a source tree is often writable by others (a web application's upload
directory), so anything at a source path may be swapped between the moment the monitor reported
it and the moment File Conveyor reads it.

* `open_regular` never blocks and never reads anything but a regular file. A plain `open()` of a
  FIFO blocks until a writer appears (for ever: a processor or transporter thread hung, and with
  it `stop`); opening a device can block or have side effects. So the path is stat()ed first (no
  open of a non-file at all), then opened with O_NONBLOCK and checked again with fstat() on the
  descriptor (the check that counts: the path may have been swapped in between), and only then is
  O_NONBLOCK cleared for ordinary reads.
* `unsafe_link_reason` / `is_safe_link` implement rsync's "safe links": a source path is synced
  only if it resolves inside its own source tree, so a symlink to `/etc/shadow` dropped into an
  upload directory publishes nothing. `open_regular(root=...)` repeats the check on the opened
  descriptor (the inode opened must be the one the resolved path names, inside the tree), so a
  link swapped in after planning is refused too.
* `private_directory_problem` / `ensure_private_directory`: the processors' working directory
  holds copies of files on their way to publication; a directory another user can write (the old
  default, `/tmp/fileconveyor`) lets that user read or replace them.

Errors are OSError subclasses, so code that already handles OSError keeps working, but they carry
no errno: callers that classify errors test for these classes first.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
from typing import BinaryIO

from fileconveyor.filter import is_within


class NotRegularFileError(OSError):
    """The path is not a regular file (a FIFO, socket, device or directory): it is not synced."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path} is {kind}, not a regular file; File Conveyor syncs regular files only")
        self.path = path
        self.kind = kind


class UnsafeLinkError(OSError):
    """The path resolves outside its source tree (and such links are not allowed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceReplacedError(FileNotFoundError):
    """The file opened is no longer the one at its path (replaced meanwhile, by an editor's atomic
    save for example): as far as this read goes it is gone, and the new file has its own event."""


class UnsafeDirectoryError(OSError):
    """A directory that must be private is not (owner, mode or type)."""


def kind_of(mode: int) -> str:
    """`mode`'s file type in words, for messages."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "a special file"


# --- safe links -------------------------------------------------------------------------------

def link_escape_reason(path: str, real_path: str, root: str, real_root: str) -> str | None:
    """Pure decision of the safe-links rule: `path` (below `root`) resolves to `real_path`, and
    `root` to `real_root`. None when the path stays inside its tree, else why not."""
    if is_within(real_root, real_path):
        return None
    return (f"{path} resolves to {real_path}, outside its source tree {root} (a symlink out of "
            "the tree); such links are not synced unless the setting SYNC_UNSAFE_SYMLINKS is true")


def unsafe_link_reason(path: str, root: str) -> str | None:
    """Why `path` must not be synced from the source tree `root` because a symlink (the file
    itself or a directory on the way) leads out of the tree; None when it is safe. A path that
    is no symlink and crosses none is always safe. Resolving is I/O, so a swap right after is
    possible: `open_regular(root=...)` checks the opened file again."""
    return link_escape_reason(path, os.path.realpath(path), root, os.path.realpath(root))


def is_safe_link(path: str, root: str) -> bool:
    """rsync's "safe links": does `path` resolve to somewhere inside `root`?"""
    return unsafe_link_reason(path, root) is None


# --- opening ----------------------------------------------------------------------------------

def open_regular(path: str, root: str | None = None, follow_symlinks: bool = True) -> BinaryIO:
    """Open `path` for reading in binary mode, without ever blocking on it; refuse anything but a
    regular file (NotRegularFileError). With `root`, also refuse a file that does not resolve
    inside `root` (UnsafeLinkError). With `follow_symlinks=False`, a symlink is refused (ELOOP).
    Other failures are the OSError of open() itself (ENOENT: the file is gone)."""
    return os.fdopen(open_regular_fd(path, root, follow_symlinks), "rb")


def open_regular_fd(path: str, root: str | None = None, follow_symlinks: bool = True) -> int:
    """`open_regular`, returning a file descriptor (blocking mode, close-on-exec) to close."""
    info = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError(path, kind_of(info.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped between the stat and the open
            raise NotRegularFileError(path, kind_of(opened.st_mode))
        if root is not None:
            _check_opened_inside(path, opened, root)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_opened_inside(path: str, opened: os.stat_result, root: str) -> None:
    real_path = os.path.realpath(path)
    reason = link_escape_reason(path, real_path, root, os.path.realpath(root))
    if reason is not None:
        raise UnsafeLinkError(reason)
    try:
        named = os.stat(real_path)
    except OSError:
        named = None
    if named is None or (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
        # The path changed between open() and realpath(): what was opened cannot be placed.
        raise SourceReplacedError(errno.ENOENT, "replaced while it was being opened; its new version "
                                  "has its own event", path)


def copy_regular(source: str, destination: str, root: str | None = None) -> os.stat_result:
    """Copy the regular file `source` to a new file `destination` (mode 0600, must not exist),
    keeping its modification time; returns the source's fstat. Refuses what `open_regular`
    refuses; never leaves a partial `destination` behind."""
    with open_regular(source, root=root) as reader:
        info = os.fstat(reader.fileno())
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb", closefd=False) as writer:
                shutil.copyfileobj(reader, writer, 1024 * 1024)
            os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        except BaseException:
            os.close(fd)
            try:
                os.unlink(destination)
            except OSError:
                pass
            raise
        os.close(fd)
    return info


# --- private directories ----------------------------------------------------------------------

def private_directory_problem(path: str) -> str | None:
    """Why `path` cannot be used as a private directory (None: it can, or it does not exist yet
    and will be created 0700). Refused: not a directory (a symlink included: it could be pointed
    elsewhere), not owned by this user, writable by group or others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{path} cannot be examined: {error.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is {kind_of(info.st_mode)}, not a directory"
    if info.st_uid != os.geteuid():
        return (f"{path} belongs to user id {info.st_uid}, not to the user File Conveyor runs as "
                f"({os.geteuid()})")
    if info.st_mode & 0o022:
        return f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def ensure_private_directory(path: str, what: str = "WORKING_DIR") -> None:
    """Create `path` (mode 0700, parents as needed) or check the existing one; raises
    UnsafeDirectoryError with what to do when another user could write in it."""
    problem = private_directory_problem(path)
    if problem is None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        problem = private_directory_problem(path)
    if problem is not None:
        raise UnsafeDirectoryError(
            f"{what} {problem}: files on their way to publication could be read or replaced by "
            f"another user. Use a directory of its own (mode 0700, owned by this user), or remove "
            f"the {what} setting to use the default beside the state databases")
