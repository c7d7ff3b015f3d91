"""`symlink_or_copy`: publish files into a local directory, typically a web server's document root.

An unprocessed source file (one below a source's scanPath) is published as an absolute symlink to
the source, so the web root costs no disk space; a processed file (from the working directory) is
copied. Both are atomic: the link or copy is made under a temporary name in the target directory,
then renamed over the final name, so a web server never serves a half-written file and an existing
file is replaced without a window in which it is missing (the original deleted, then saved).

The root cannot be escaped: remote paths are normalised, and the real path of the target directory
must stay below the real path of `location` (a symlinked directory inside the web root that points
elsewhere is refused rather than written through).
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from typing import Mapping

from fileconveyor.filter import is_within
from fileconveyor.transporters.base import (
    ConfigurationError,
    PermanentError,
    RetryableError,
    Transporter,
    TransporterContext,
    join_url,
    normalize_remote_path,
)

TRANSPORTER_CLASS = "SymlinkOrCopyTransporter"

#: errnos after which a retry cannot help.
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EROFS, errno.EISDIR,
                     errno.ENOTDIR, errno.EINVAL}


class SymlinkOrCopyTransporter(Transporter):
    name = "symlink_or_copy"
    valid_settings = frozenset({"location", "url", "symlinkWithin"})
    required_settings = frozenset({"location", "url"})

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        self.location = os.path.abspath(os.path.expanduser(self.settings["location"].strip()))
        self.base_url = self.settings["url"].strip()

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        location = (settings.get("location") or "").strip()
        if location and not os.path.isabs(os.path.expanduser(location)):
            problems.append(f"<location> must be an absolute directory path, not {location!r}")
        url = (settings.get("url") or "").strip()
        if url and "://" not in url:
            problems.append(f"<url> must be an absolute URL such as http://static.example.com/, not {url!r}")
        return problems

    # --- the contract ----------------------------------------------------------------------

    def upload(self, local_path: str, remote_path: str) -> str:
        relative = normalize_remote_path(remote_path)
        target = self._target(relative, create_parent=True)
        directory, basename = os.path.split(target)
        temporary = os.path.join(directory, f".{basename[:200]}.fctmp-{uuid.uuid4().hex[:12]}")
        try:
            if self._is_source_file(local_path):
                os.stat(local_path)  # a vanished source must not become a dangling link
                os.symlink(os.path.abspath(local_path), temporary)
            else:
                self._copy(local_path, temporary)
            os.replace(temporary, target)
        except OSError as error:
            self._remove_quietly(temporary)
            raise self._classify(error, f"cannot publish {local_path!r} as {target!r}") from None
        return self.url_for(relative)

    def delete(self, remote_path: str) -> None:
        relative = normalize_remote_path(remote_path)
        target = self._target(relative, create_parent=False)
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise self._classify(error, f"cannot delete {target!r}") from None
        self._remove_empty_parents(os.path.dirname(target))

    def exists(self, remote_path: str) -> bool:
        target = self._target(normalize_remote_path(remote_path), create_parent=False)
        return os.path.isfile(target)  # follows symlinks: a dangling link is a missing file

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

    # --- helpers ---------------------------------------------------------------------------

    def _is_source_file(self, local_path: str) -> bool:
        return any(is_within(root, local_path) for root in self.context.source_roots)

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

    @staticmethod
    def _copy(source: str, destination: str) -> None:
        with open(source, "rb") as reader, open(destination, "xb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)
            writer.flush()
            os.fsync(writer.fileno())
        os.chmod(destination, 0o644)

    def _remove_empty_parents(self, directory: str) -> None:
        root = os.path.abspath(self.location)
        while os.path.abspath(directory) != root and is_within(root, directory):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)

    @staticmethod
    def _remove_quietly(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def _classify(self, error: OSError, what: str) -> Exception:
        message = f"server {self.context.server_name!r}: {what}: {error.strerror or error}"
        if error.errno == errno.ENOENT:
            return RetryableError(message + " (the file vanished; a newer event will follow)")
        if error.errno in _PERMANENT_ERRNOS:
            return PermanentError(message)
        return RetryableError(message)
