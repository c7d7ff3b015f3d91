"""`symlink_or_copy`: publish files into a local directory, typically a web server's document root.

An unprocessed source file (one below a source's scanPath) is published as an absolute symlink to
the source, so the web root costs no disk space; a processed file (from the working directory) is
copied. Both are atomic: the link or copy is made under a temporary name, then renamed over the
final name, so a web server never serves a half-written file and an existing file is replaced
without a window in which it is missing (the original deleted, then saved).

Temporary names live in `<location>/.fileconveyor-tmp/`, a directory of mode 0700 owned by the
daemon's user: a web server running as another user cannot read or list anything in it, and one
that refuses dot files (a common rule) does not even try. Only where a target directory lies on
another file system (a mount inside the web root, where a rename cannot cross) is the temporary
name in the target's own directory (`.<name>.fctmp-<random>`, a copy 0600 until complete). Every
temporary name is recorded in the state directory first and swept at start-up (`temporary.py`),
so a `kill -9` in the middle of a copy leaves nothing behind for long.

`symlinkWithin` (the original injected it, always with every scan path) keeps its meaning and may
now be set: colon-separated directories; only source files below one of them are symlinked, the
others copied; empty: copy everything (a web root that must not depend on the source tree, or a
web server that does not follow symlinks). Absent: every scan path.

The root cannot be escaped: remote paths are normalised, and the real path of the target directory
must stay below the real path of `location` (a symlinked directory inside the web root that points
elsewhere is refused rather than written through).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from typing import BinaryIO, Iterator, Mapping

from fileconveyor.filter import is_within
from fileconveyor.localfile import open_regular
from fileconveyor.transporters.base import (
    ConfigurationError,
    DirectoryEntry,
    PermanentError,
    RemoteEntry,
    RetryableError,
    ServerUnavailableError,
    Transporter,
    TransporterContext,
    TransporterError,
    is_temporary_name,
    join_url,
    listing_prefix,
    normalize_remote_path,
    refuse_long_names,
    open_local_file,
    walk_sorted,
)
from fileconveyor.transporters.temporary import (
    PendingTemporaryNames,
    RenameIntoPlace,
    upload_via_temporary_name,
)

TRANSPORTER_CLASS = "SymlinkOrCopyTransporter"

#: The private directory below `location` where temporary names are made.
TEMP_DIRECTORY = ".fileconveyor-tmp"
#: errnos after which a retry cannot help.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR,
                     errno.EINVAL, errno.EROFS}


class SymlinkOrCopyTransporter(Transporter):
    name = "symlink_or_copy"
    valid_settings = frozenset({"location", "url", "symlinkWithin"})
    required_settings = frozenset({"location", "url"})
    can_list = True
    can_read_back = True

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        self.location = os.path.abspath(os.path.expanduser(self.settings["location"].strip()))
        self.base_url = self.settings["url"].strip()
        within = self.settings.get("symlinkWithin")
        #: Directories whose source files are symlinked (None: every source tree).
        self.symlink_within: tuple[str, ...] | None = None if within is None else _directories(within)
        self._pending = PendingTemporaryNames(context.state_dir, context.server_name)
        self._swept = False

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        location = (settings.get("location") or "").strip()
        if location and not os.path.isabs(os.path.expanduser(location)):
            problems.append(f"<location> must be an absolute directory path, not {location!r}")
        for directory in (settings.get("symlinkWithin") or "").split(":"):
            if directory.strip() and not os.path.isabs(os.path.expanduser(directory.strip())):
                problems.append(f"<symlinkWithin> holds {directory.strip()!r}; write absolute directories "
                                "separated by ':', or leave it empty to copy every file")
        url = (settings.get("url") or "").strip()
        if url and "://" not in url:
            problems.append(f"<url> must be an absolute URL such as http://static.example.com/, not {url!r}")
        return problems

    # --- the contract ----------------------------------------------------------------------

    def upload(self, local_path: str, remote_path: str) -> str:
        relative = normalize_remote_path(remote_path)
        refuse_long_names(relative)
        target = self._target(relative, create_parent=True)
        if not self._swept:
            self.remove_leftovers()
        source: BinaryIO | None = None
        if self._is_source_file(local_path):
            # A vanished source must not become a dangling link, nor a FIFO (a web server would
            # hang on it) or a link out of the tree a published link.
            open_local_file(local_path, self.source_root_for(local_path)).close()
        else:
            source = open_local_file(local_path, self.source_root_for(local_path))

        def store(temporary: str) -> None:
            if source is None:
                os.symlink(os.path.abspath(local_path), temporary)
            else:
                self._copy(source, temporary)

        try:
            upload_via_temporary_name(
                self._pending, target,
                RenameIntoPlace(store=store, rename=os.replace, remove=_remove_missing_ok,
                                is_directory=_is_real_directory, remove_directory=os.rmdir),
                directory=self._temporary_directory_for(os.path.dirname(target)))
        except OSError as error:
            raise self._classify(error, f"cannot publish {local_path!r} as {target!r}") from None
        finally:
            if source is not None:
                source.close()
        return self.url_for(relative)

    def delete(self, remote_path: str) -> None:
        relative = normalize_remote_path(remote_path)
        if self._replaced_by_another_kind(relative):
            return
        target = self._target(relative, create_parent=False)
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._classify(error, f"cannot delete {target!r}") from None
        self._remove_empty_parents(os.path.dirname(target))

    def _replaced_by_another_kind(self, relative: str) -> bool:
        """Is the file at `relative` certainly gone because its name, or a directory on the way,
        is now something else? A directory on the way replaced by a file (or a link to one) means
        nothing below it is ours; the name itself now a directory means a directory replaced the
        file. Deleting is then done, not an error (it was refused as "outside of the location")."""
        current = self.location
        parts = relative.split("/")
        for part in parts[:-1]:
            current = os.path.join(current, part)
            try:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    return True
            except FileNotFoundError:
                return True
        try:
            return stat.S_ISDIR(os.lstat(os.path.join(current, parts[-1])).st_mode)
        except FileNotFoundError:
            return True

    def exists(self, remote_path: str) -> bool:
        target = self._target(normalize_remote_path(remote_path), create_parent=False)
        return os.path.isfile(target)  # follows symlinks: a dangling link is a missing file

    def list_files(self, prefix: str = "") -> Iterator[RemoteEntry]:
        """scandir, one directory at a time. Published symlinks are followed for the size and
        mtime of what they serve; a dangling one is not listed (a web server serves nothing
        there); symlinked directories are not entered (they could lead out of the root). The
        private temporary directory is not listed: nothing in it is published, and what an
        interrupted upload left there is swept by the transporter itself."""
        start = listing_prefix(prefix)
        if start:
            if not os.path.isdir(os.path.join(self.location, start)):
                return iter(())  # missing, or a file: nothing below it
            self._target(start + "/x", create_parent=False)  # refuses a way out of the root
        return walk_sorted(self._read_directory, start)

    def read_back_md5(self, remote_path: str) -> str | None:
        target = self._target(normalize_remote_path(remote_path), create_parent=False)
        try:
            with open_regular(target) as published:  # through a published link, never a FIFO
                digest = hashlib.md5(usedforsecurity=False)
                for block in iter(lambda: published.read(1024 * 1024), b""):
                    digest.update(block)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._classify(error, f"cannot read {target!r} back") from None
        return digest.hexdigest()

    def _read_directory(self, relative: str) -> list[DirectoryEntry] | None:
        directory = os.path.join(self.location, relative)
        self.listing_requests += 1
        found: list[DirectoryEntry] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    path = f"{relative}/{entry.name}" if relative else entry.name
                    if path == TEMP_DIRECTORY:
                        continue  # private, never published (and unreadable to other users)
                    if entry.is_dir(follow_symlinks=False):
                        found.append((entry.name, None))
                        continue
                    try:
                        info = entry.stat()  # follows a published link to what it serves
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        found.append((entry.name, RemoteEntry(
                            path, info.st_size, mtime=info.st_mtime,
                            temporary=is_temporary_name(entry.name))))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise self._classify(error, f"cannot list {directory!r}") from None
        return found

    def url_for(self, remote_path: str) -> str:
        return join_url(self.base_url, normalize_remote_path(remote_path))

    def probe(self) -> None:
        if not os.path.isdir(self.location):
            try:
                os.makedirs(self.location, exist_ok=True)
            except OSError as error:
                raise ConfigurationError(
                    f"server {self.context.server_name!r}: location {self.location!r} does not exist "
                    f"and cannot be created ({error.strerror}); create it or fix <location>") from None
        if not os.access(self.location, os.W_OK | os.X_OK):
            raise ConfigurationError(
                f"server {self.context.server_name!r}: location {self.location!r} is not writable; "
                "fix its permissions or <location>")
        self._private_temporary_directory()

    def remove_leftovers(self) -> None:
        self._swept = True
        self._pending.sweep(_remove_missing_ok, accept=self._is_own_temporary)

    # --- helpers ---------------------------------------------------------------------------

    def _is_source_file(self, local_path: str) -> bool:
        """Is `local_path` a source file to publish as a symlink? Not a processed copy (it goes
        when its run ends), and only below `symlinkWithin` when that is set."""
        if not any(is_within(root, local_path) for root in self.context.source_roots):
            return False
        return self.symlink_within is None or any(is_within(d, local_path) for d in self.symlink_within)

    def _target(self, relative: str, create_parent: bool) -> str:
        target = os.path.join(self.location, relative)
        parent = os.path.dirname(target)
        if create_parent:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as error:
                raise self._classify(error, f"cannot create directory {parent!r}") from None
        real_root = os.path.realpath(self.location)
        real_parent = os.path.realpath(parent)
        if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
            raise PermanentError(
                f"{relative!r} would be written to {real_parent!r}, outside of {real_root!r} "
                "(a symlinked directory in the destination?); refusing it")
        return target

    def _private_temporary_directory(self) -> tuple[int, str]:
        """(st_dev, path) of `<location>/.fileconveyor-tmp`, made 0700 if missing. Anything else
        at that name (a symlink, another user's directory, one others may enter) is refused: a
        copy written through it could be read or replaced before it is published.

        Checked again on every call (one lstat, plus a mkdir when it is missing): the location
        may be replaced while the daemon runs (deleted and re-created, a deployment swapping the
        web root), and a directory that was checked once and cached made every upload fail with
        ENOENT once it was gone, retried for ever. (Not cached by inode either: a freed inode
        number is reused at once, even by a symlink someone put in its place.)"""
        path = os.path.join(self.location, TEMP_DIRECTORY)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o700)
                info = os.lstat(path)
            except OSError as error:
                raise self._classify(error, f"cannot create {path!r}") from None
        except OSError as error:
            raise self._classify(error, f"cannot examine {path!r}") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
                or info.st_mode & 0o077:
            raise ConfigurationError(
                f"server {self.context.server_name!r}: {path!r} must be a directory of this user "
                "with mode 0700 (File Conveyor makes its temporary files there); remove it, or "
                "fix its owner and mode")
        return info.st_dev, path

    def _temporary_directory_for(self, parent: str) -> str | None:
        """The private temporary directory if a rename from it to `parent` stays on one file
        system; None (the target's own directory) if `parent` is on another."""
        device, path = self._private_temporary_directory()
        return path if os.stat(parent).st_dev == device else None

    def _is_own_temporary(self, path: str) -> bool:
        return is_temporary_name(path) and is_within(self.location, path)

    @staticmethod
    def _copy(reader: BinaryIO, destination: str) -> None:
        # 0600 until complete, for the temporary names outside the private directory.
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)
            writer.flush()
            os.fsync(writer.fileno())
            os.fchmod(writer.fileno(), 0o644)

    def _remove_empty_parents(self, directory: str) -> None:
        root = os.path.abspath(self.location)
        while os.path.abspath(directory) != root and is_within(root, directory):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    def _classify(self, error: OSError, what: str) -> TransporterError:
        message = f"server {self.context.server_name!r}: {what}: {error.strerror or error}"
        if error.errno == errno.ENOENT:
            # The local file is open or was just checked: it is the destination that changed
            # (a directory removed by a concurrent delete of its last file).
            return RetryableError(message + " (the destination changed meanwhile)")
        if error.errno == errno.EROFS and not os.access(self.location, os.W_OK):
            # The whole destination is unusable until it is remounted: pause and probe. (A
            # read-only file system mounted below a writable location refuses only its paths.)
            return ServerUnavailableError(message + "; remount it read-write")
        if error.errno in _PERMANENT_ERRNOS:
            return PermanentError(message)
        return RetryableError(message)


def _is_real_directory(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _directories(value: str) -> tuple[str, ...]:
    """`symlinkWithin`'s colon-separated directories, normalised (`~` expanded)."""
    return tuple(os.path.normpath(os.path.expanduser(part.strip())) for part in value.split(":") if part.strip())


def _remove_missing_ok(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
