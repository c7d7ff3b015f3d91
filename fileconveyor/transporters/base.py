"""The transporter contract: one connection to one server, used by one worker thread at a time.

Shape (after rclone's `fs` interface): three required operations, `upload`, `delete` and `exists`;
optional abilities are declared as class-level capability flags and never probed by catching
errors. Errors are classified where they are raised, because only the transporter knows whether a
failure is worth retrying:

* `RetryableError`: timeouts, connection resets, 5xx, throttling. The pipeline retries with backoff.
  `ServerUnavailableError` (a subclass) means the whole server is unreachable: the pool pauses and
  probes the server instead of failing every queued file.
* `PermanentError`: the server refused this file for good (denied, no such bucket, name too long).
  The file goes to the failed list with the reason; it is retried only at the retry cap.
* `ConfigurationError`: the settings are wrong (bad credentials, unknown host key). Nothing will work
  until the user fixes the config; the pool pauses and the message says what to change.
* `SourceVanishedError`: the local file was gone before or while it was sent. Not the server's
  problem and not a failure: the DELETED event for the path follows, so nothing is recorded.

Only an error that says the server *as a whole* is unusable (connection refused, bad credentials
at login or probe, a missing bucket/container/root) may be a ServerUnavailableError or a
ConfigurationError: those pause every file of the server. A refusal of one request (a denied key or
path, an ACL or storage class the endpoint does not take for this object) is the file's error,
PermanentError or RetryableError, even when a setting is its cause: the message names the setting.

A transporter is constructed without I/O (so `check-config` can build one); it connects lazily on
first use and reconnects after a failure. Every network call has a timeout. Remote paths given to
`upload`/`delete`/`exists` are relative to the server's configured root and pass through
`normalize_remote_path`, which refuses any path that would escape that root.
"""
from __future__ import annotations

import abc
import dataclasses
import email.utils
import errno
import importlib
import mimetypes
import posixpath
import re
import secrets
import types
import urllib.parse
from collections.abc import Iterator
from typing import BinaryIO, Callable, ClassVar, Mapping

from fileconveyor import localfile
from fileconveyor.filter import is_within


class TransporterError(Exception):
    """Base of every classified transporter error; the message says what failed and what to do."""

    kind: ClassVar[str] = "retryable"


class RetryableError(TransporterError):
    kind = "retryable"


class ServerUnavailableError(RetryableError):
    """The server cannot be reached at all; its pool pauses and probes it with backoff."""


class PermanentError(TransporterError):
    kind = "permanent"


class ConfigurationError(TransporterError):
    kind = "configuration"


class SourceVanishedError(TransporterError):
    """The local file to upload no longer exists (deleted or renamed away before or during the
    upload). Every transporter raises this, and only this, for a missing local file: the
    pipeline treats the upload as done with nothing to record, as the DELETED event follows."""

    kind = "vanished"

    def __init__(self, message: str, local_path: str = "") -> None:
        super().__init__(message)
        self.local_path = local_path


class TransporterNotFound(Exception):
    """A `transporter` name in config.xml that does not resolve; the message has the fix."""


@dataclasses.dataclass(frozen=True)
class TransporterContext:
    """What a transporter may know about the daemon around it."""

    server_name: str
    #: Directory for the transporter's own durable state (e.g. multipart upload checkpoints).
    state_dir: str
    #: Every source's scan path: symlink_or_copy links (rather than copies) files below these,
    #: and a file below one of them must resolve inside it (rsync's "safe links").
    source_roots: tuple[str, ...] = ()
    #: The setting SYNC_UNSAFE_SYMLINKS: send source files that resolve outside their tree too.
    allow_unsafe_links: bool = False
    #: Seconds for any single network operation.
    timeout: float = 60.0


@dataclasses.dataclass(frozen=True)
class ObjectOptions:
    """What one uploaded object carries beyond its bytes, where it differs from the server's
    settings: from its destination (`<destination server="s3"><acl>private</acl></destination>`,
    original issue #159) and from the processor that made the file (the Content-Type and
    Content-Encoding of a pre-compressed copy, original issue #3).

    Only transporters that store HTTP metadata with an object apply them (`object_settings` names
    the settings a destination may override); to one that stores plain files (SFTP, FTP, a local
    web root) they mean nothing, as the web server in front decides the headers, so they are
    dropped there (`Transporter.upload_object`)."""

    #: (setting name, value) pairs that override the server's settings of the same name for this
    #: object (`acl`, `cache_control`, ...); an empty value means "none" (no ACL, no such header).
    settings: tuple[tuple[str, str], ...] = ()
    #: A file name whose Content-Type the object gets instead of its own name's (a pre-compressed
    #: `app.css.gz` is typed as `app.css`); each transporter guesses types in its own way.
    typed_as: str | None = None
    #: The Content-Encoding to send (`gzip`, `br`): the bytes are the encoded form of a file of
    #: `content_type`.
    content_encoding: str | None = None

    def __bool__(self) -> bool:
        return bool(self.settings or self.typed_as or self.content_encoding)

    def setting(self, name: str, default: str | None) -> str | None:
        """The destination's value of setting `name`, stripped ("" when it is set empty: no such
        header), or `default` when the destination does not set it."""
        for key, value in self.settings:
            if key == name:
                return value.strip()
        return default

    def merged(self, other: "ObjectOptions | None") -> "ObjectOptions":
        """These options, with `other`'s where it sets any."""
        if not other:
            return self
        settings = dict(self.settings)
        settings.update(other.settings)
        return ObjectOptions(tuple(sorted(settings.items())), other.typed_as or self.typed_as,
                             other.content_encoding or self.content_encoding)


def content_type_for(name: str) -> str:
    """Content-Type from the file name, with a charset for text-like types.

    The one guess of every transporter that sends a Content-Type. A compressed name (`app.css.gz`)
    gets the compression's type, not the inner one: a Content-Encoding is never guessed from a
    name (a `.tar.gz` download must stay compressed), and gzip bytes served as text/css without
    one break pages. A pre-compressed copy made by a processor says what it is in ObjectOptions."""
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding:
        return {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                "xz": "application/x-xz", "br": "application/x-brotli",
                "compress": "application/x-compress"}.get(encoding, "application/octet-stream")
    if not guessed:
        return "application/octet-stream"
    if (guessed.startswith("text/") or guessed.endswith(("+xml", "+json"))
            or guessed in ("application/javascript", "application/x-javascript",
                           "application/json", "application/xml", "image/svg+xml",
                           "application/ecmascript", "application/manifest+json")):
        return f"{guessed}; charset=utf-8"
    return guessed


def http_date_problems(settings: Mapping[str, str], name: str) -> list[str]:
    """The problem with setting `name` if it is neither empty nor an HTTP date (for `check_settings`)."""
    value = (settings.get(name) or "").strip()
    if value:
        try:
            email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return [f"<{name}> {value!r} is not an HTTP date such as 'Tue, 20 Jan 2037 03:00:00 GMT' "
                    "(or leave it empty)"]
    return []


def normalize_remote_path(remote_path: str) -> str:
    """`remote_path` as a clean relative POSIX path; raises PermanentError if it leaves the root.

    `a//b/./c` becomes `a/b/c`; a leading `/` is dropped (paths are always relative to the server's
    root); `..` is allowed only while it stays inside (`a/../b` is `b`, `../b` is refused). NUL bytes
    and empty results are refused.
    """
    if "\x00" in remote_path:
        raise PermanentError(f"remote path {remote_path!r} contains a NUL byte")
    parts: list[str] = []
    # A backslash is an ordinary character in POSIX names (and S3 keys), never a separator.
    for part in remote_path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PermanentError(
                    f"remote path {remote_path!r} escapes the destination root; refusing it")
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        raise PermanentError(f"remote path {remote_path!r} names no file")
    return "/".join(parts)


def encode_url_path(path: str) -> str:
    """`path` percent-encoded for a URL: every byte of its UTF-8 form is encoded except RFC 3986's
    unreserved characters (`A-Z a-z 0-9 - . _ ~`) and `/`.

    The one encoding of every transporter. Stricter than a URL needs: `;` starts path parameters
    for many servers, `'` ends a CSS `url('...')` or an HTML attribute, `+` is a space to S3,
    `#`, `?`, `%` and spaces break any URL. A name that is not valid UTF-8 (decoded with
    surrogateescape, as Python does for such file names) is encoded byte for byte."""
    return urllib.parse.quote(path.encode("utf-8", "surrogateescape"), safe="/")


def join_url(base_url: str, remote_path: str) -> str:
    """`base_url` + `encode_url_path(remote_path)`, with exactly one `/` between them.

    Unlike `urljoin`, the last segment of a base without a trailing slash is kept (the original
    silently dropped it). The base is used as configured (it is the user's, already a URL)."""
    return base_url.rstrip("/") + "/" + encode_url_path(remote_path).lstrip("/")


#: Longest file name (one path component) in bytes on the file systems of POSIX servers.
NAME_MAX = 255
#: In every temporary name, so that readers of a destination (and tests) can recognise one.
TEMP_MARKER = ".fctmp-"
#: `.<name>.fctmp-<12 hex digits>`: how a temporary name ends; the sweep removes nothing else.
TEMP_NAME_PATTERN = re.compile(r"\..*" + re.escape(TEMP_MARKER) + r"[0-9a-f]{12}", re.DOTALL)


def refuse_long_names(remote_path: str) -> None:
    """PermanentError if a component of `remote_path` is longer than NAME_MAX bytes of UTF-8.

    For destinations that are POSIX file systems (SFTP, FTP, local): their servers often report
    ENAMETOOLONG as a generic failure that looks transient, so it would be retried for ever."""
    for part in remote_path.split("/"):
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise PermanentError(
                f"the name {part[:40]!r}... is {size} bytes long; file systems take at most "
                f"{NAME_MAX} bytes per name: shorten it (or rename it with a processor)")


def shorten_utf8(name: str, max_bytes: int) -> str:
    """`name` cut to at most `max_bytes` bytes of UTF-8, never in the middle of a character (a
    valid UTF-8 name stays valid; an undecodable byte kept by surrogateescape counts as one)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= max_bytes:
        return name
    end = max(max_bytes, 0)
    # A UTF-8 continuation byte (10xxxxxx) at the cut means a character would be split.
    while end > 0 and raw[end] & 0xC0 == 0x80:
        end -= 1
    return raw[:end].decode("utf-8", "surrogateescape")


def temporary_name(target: str, directory: str | None = None) -> str:
    """`<directory>/.<name>.fctmp-<random>` for an upload to `target` (POSIX path), by default in
    the target's own directory (same file system, so the rename into place is atomic).

    Hidden (a leading dot: web servers commonly refuse to serve dot files), unique per attempt,
    and within NAME_MAX bytes however long the name is: the name part is cut by bytes, so a
    255-byte name of multibyte characters can still be uploaded."""
    parent, name = posixpath.split(target)
    suffix = TEMP_MARKER + secrets.token_hex(6)
    short = shorten_utf8(name, NAME_MAX - 1 - len(suffix))
    return posixpath.join(parent if directory is None else directory, f".{short}{suffix}")


def is_temporary_name(path: str) -> bool:
    """Does the last component of `path` have the shape `temporary_name` gives?"""
    return TEMP_NAME_PATTERN.fullmatch(posixpath.basename(path)) is not None


@dataclasses.dataclass(frozen=True)
class RemoteEntry:
    """One file of a destination, as its listing (`Transporter.list_files`) reports it."""

    #: Relative to the server's root, `/`-separated, as stored (not normalised: an object another
    #: tool wrote as `a//b` is listed as such).
    path: str
    size: int
    #: Hex MD5 of the content where the listing gives it for free and it is one: an S3 ETag of
    #: a single-part object, a Swift object's ETag. None where unknown (multipart, FTP, SFTP).
    md5: str | None = None
    #: The server's opaque version tag as listed (S3/Swift ETag without quotes), or None.
    etag: str | None = None
    #: Modification time (seconds since the epoch), where the listing gives it.
    mtime: float | None = None
    #: A temporary name of an upload (`is_temporary_name`, or in a local destination's private
    #: temporary directory): an upload in progress, or a leftover of one that died.
    temporary: bool = False


def listing_key(path: str) -> bytes:
    """The order of every listing: the bytes of the UTF-8 path (S3's and Swift's order; code
    point order for valid UTF-8, and a total order for names kept with surrogateescape)."""
    return path.encode("utf-8", "surrogateescape")


def directory_walk_key(name: str, is_directory: bool) -> bytes:
    """Sort key of one entry of a directory for a walk that yields globally sorted paths: a
    directory sorts as `name/`, where all paths below it sort (`a-b` < `a/x` < `a0`)."""
    return listing_key(name + "/" if is_directory else name)


def listing_prefix(prefix: str) -> str:
    """`prefix` of `list_files` normalised: '' (everything) or a relative directory path."""
    stripped = prefix.strip("/")
    return normalize_remote_path(stripped) if stripped else ""


#: One entry of a directory read by a walk: (name, the file's entry, or None for a directory).
DirectoryEntry = tuple[str, RemoteEntry | None]


def walk_sorted(read_directory: Callable[[str], "list[DirectoryEntry] | None"],
                start: str) -> Iterator[RemoteEntry]:
    """The files below `start` (a relative directory, '' for the root), depth first, in
    `listing_key` order of their paths, for destinations that are directory trees (SFTP, FTP,
    local). `read_directory(relative)` lists one directory (None if it does not exist); its
    entries' paths are already relative to the root.

    Memory holds the directories on the way down, one sorted list of names each; an explicit
    stack, so a tree 1,000 levels deep needs no recursion."""
    top = read_directory(start)
    if top is None:
        return
    stack: list[tuple[str, Iterator[DirectoryEntry]]] = [(start, _sorted_entries(top))]
    while stack:
        directory, entries = stack[-1]
        for name, entry in entries:
            if entry is not None:
                yield entry
                continue
            below = posixpath.join(directory, name) if directory else name
            children = read_directory(below)
            if children:
                stack.append((below, _sorted_entries(children)))
                break
        else:
            stack.pop()


def _sorted_entries(entries: "list[DirectoryEntry]") -> Iterator[DirectoryEntry]:
    entries.sort(key=lambda item: directory_walk_key(item[0], item[1] is None))
    return iter(entries)


def open_local_file(local_path: str, source_root: str | None = None) -> BinaryIO:
    """Open the file to upload for reading, with the one classification of every transporter:
    a file that is gone is SourceVanishedError, one that can never be read (denied, a directory)
    is PermanentError, anything else (I/O error, too many open files) is RetryableError.

    Never blocks and never reads a FIFO or device swapped in for the file, and with
    `source_root` (`Transporter.source_root_for`) never a file that resolves outside that tree:
    see fileconveyor.localfile."""
    try:
        return localfile.open_regular(local_path, root=source_root)
    except OSError as error:
        raise local_file_error(local_path, error) from None


def local_file_error(local_path: str, error: OSError) -> TransporterError:
    """The classified error for an OSError while opening, statting or reading `local_path`."""
    if isinstance(error, localfile.NotRegularFileError):
        # Replaced by a FIFO, socket or device: the file we were to send is gone as such.
        return SourceVanishedError(f"{error}; not sent", local_path)
    if isinstance(error, localfile.UnsafeLinkError):
        return PermanentError(f"refusing to send {local_path}: {error}")
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return SourceVanishedError(
            f"the local file {local_path} is gone ({error.strerror}); its deletion follows",
            local_path)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP,
                       errno.ENAMETOOLONG):
        return PermanentError(f"cannot read the local file {local_path}: {error.strerror}; "
                              "check its permissions")
    return RetryableError(f"cannot read the local file {local_path}: {error}")


class Transporter(abc.ABC):
    """One connection to one server. Not thread-safe: the pool gives each worker its own."""

    #: The name users write in `<server transporter="...">`.
    name: ClassVar[str] = ""
    #: Every setting (child element of `<server>`) this transporter accepts.
    valid_settings: ClassVar[frozenset[str]] = frozenset()
    #: Settings that must be present.
    required_settings: ClassVar[frozenset[str]] = frozenset()
    #: Defaults for optional settings (as text, like values from config.xml).
    default_settings: ClassVar[Mapping[str, str]] = {}

    #: Settings that a `<destination>` may set for its own objects, overriding the server's (an
    #: ACL, Cache-Control): see ObjectOptions. Empty: this transporter stores plain files.
    object_settings: ClassVar[frozenset[str]] = frozenset()
    #: Does `upload` take ObjectOptions as its third argument (objects carry HTTP metadata:
    #: Content-Type, Content-Encoding, ...)?
    keeps_object_metadata: ClassVar[bool] = False

    # Capability flags (rclone's fs.Features): the pipeline only calls what is declared.
    can_move: ClassVar[bool] = False
    can_resume_multipart: ClassVar[bool] = False
    can_list: ClassVar[bool] = False
    can_invalidate: ClassVar[bool] = False

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        self.settings: dict[str, str] = {**self.default_settings, **settings}
        self.context = context

    def source_root_for(self, local_path: str) -> str | None:
        """The source tree that `local_path` must resolve inside (pass it to `open_local_file`),
        or None: not a source file (a processed copy), or unsafe links are allowed."""
        if self.context.allow_unsafe_links:
            return None
        roots = [root for root in self.context.source_roots if is_within(root, local_path)]
        return min(roots, key=len) if roots else None

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        """Problems with `settings`, each a sentence that says what to write instead.

        The base checks names; subclasses extend it with value checks (port numbers, URLs, ...).
        It does no I/O: `check-config` calls it."""
        problems = []
        for key in sorted(set(settings) - cls.valid_settings):
            problems.append(
                f"unknown setting <{key}> for transporter {cls.name!r}; "
                f"valid settings: {', '.join(sorted(cls.valid_settings))}")
        for key in sorted(cls.required_settings - set(settings)):
            problems.append(f"transporter {cls.name!r} requires the setting <{key}>")
        for key in sorted(cls.required_settings & set(settings)):
            if not (settings[key] or "").strip():
                problems.append(f"the setting <{key}> of transporter {cls.name!r} is empty")
        return problems

    @abc.abstractmethod
    def upload(self, local_path: str, remote_path: str) -> str:
        """Put the file at `local_path` at `remote_path` (atomically where the protocol allows) and
        return its permanent, absolute, unsigned URL."""

    def upload_object(self, local_path: str, remote_path: str, options: ObjectOptions | None) -> str:
        """`upload`, with the object's own options (the pipeline calls this). A transporter that
        keeps HTTP metadata takes them as `upload(local_path, remote_path, options)`; to one
        that stores plain files they mean nothing and are dropped."""
        if not options or not self.keeps_object_metadata:
            return self.upload(local_path, remote_path)
        upload_with_options: Callable[[str, str, ObjectOptions], str] = self.upload  # type: ignore[assignment]
        return upload_with_options(local_path, remote_path, options)

    @abc.abstractmethod
    def delete(self, remote_path: str) -> None:
        """Remove `remote_path`; a file that is already gone is not an error."""

    @abc.abstractmethod
    def exists(self, remote_path: str) -> bool:
        """Is `remote_path` at the destination? (`verify` asks this.)"""

    @abc.abstractmethod
    def url_for(self, remote_path: str) -> str:
        """The URL `upload` returns for `remote_path`, computed without I/O."""

    def move(self, old_remote_path: str, new_remote_path: str) -> str:
        """Rename on the server; only called when `can_move`."""
        raise NotImplementedError

    def invalidate(self, remote_paths: list[str]) -> None:
        """Purge CDN caches for these paths; only called when `can_invalidate`."""
        raise NotImplementedError

    #: Entries per listing request where the server pages (S3 MaxKeys, Swift limit); None: the
    #: server's default. Small values make tests see several pages.
    list_page_size: int | None = None
    #: Listing requests this instance sent (pages, directories): what tests and benchmarks count.
    listing_requests: int = 0

    def list_files(self, prefix: str = "") -> Iterator[RemoteEntry]:
        """Every file below the directory `prefix` ('' for the whole destination), in the order
        of `listing_key` of the path (so that callers merge-join sorted streams), temporary
        names flagged. Only called when `can_list`.

        A stream: memory stays bounded by one page of the server's listing (S3, Swift) or by one
        directory (SFTP, FTP, local), never by the number of files. A prefix that does not exist
        yields nothing. Errors are classified as for every other operation."""
        raise NotImplementedError

    #: Can `read_back_md5` read a copy back (`verify --deep`)? Where listings give no hash.
    can_read_back: ClassVar[bool] = False

    def read_back_md5(self, remote_path: str) -> str | None:
        """Hex MD5 of the content at `remote_path`, read back from the server; None if there is
        no file there. Only called when `can_read_back`."""
        raise NotImplementedError

    def probe(self) -> None:
        """Cheap check that the server is reachable and the settings work; raises a classified
        error. The pool calls it while a paused server is being watched."""

    def remove_leftovers(self) -> None:
        """Remove what interrupted uploads left on the server (temporary names, unfinished
        multipart uploads), as recorded in the state directory. Each transporter also does this
        by itself whenever it (re)connects; the daemon may call it once per server at start-up so
        that leftovers go without waiting for the next upload. Raises a classified error if the
        server cannot be reached (then the next connection cleans up)."""

    def close(self) -> None:
        """Drop the connection (idempotent)."""


BUILTIN_TRANSPORTERS: dict[str, str] = {
    "symlink_or_copy": "fileconveyor.transporters.symlink_or_copy",
    "s3": "fileconveyor.transporters.s3",
    "cf": "fileconveyor.transporters.cf",
    "sftp": "fileconveyor.transporters.sftp",
    "ftp": "fileconveyor.transporters.ftp",
    "cloudfiles": "fileconveyor.transporters.cloudfiles",
}

#: Historical names that old configs still use.
ALIASES: dict[str, str] = {"mosso": "cloudfiles", "cumulus": "cloudfiles", "none": "symlink_or_copy"}

INSTALL_HINTS: dict[str, str] = {
    "s3": "pip install 'fileconveyor[s3]'  (boto3)",
    "cf": "pip install 'fileconveyor[s3]'  (boto3)",
    "sftp": "pip install 'fileconveyor[sftp]'  (paramiko)",
    "cloudfiles": "pip install 'fileconveyor[cloudfiles]'  (python-swiftclient)",
}


def canonical_transporter_name(name: str) -> str:
    """The built-in name for any historical spelling, else `name` unchanged (a third-party module)."""
    name = name.strip()
    for prefix in ("fileconveyor.transporters.transporter_", "transporters.transporter_",
                   "fileconveyor.transporters.", "transporters.", "transporter_"):
        if name.startswith(prefix) and name[len(prefix):] in {**BUILTIN_TRANSPORTERS, **ALIASES}:
            name = name[len(prefix):]
            break
    return ALIASES.get(name, name)


def resolve_transporter(name: str) -> type[Transporter]:
    """The class for a `transporter="..."` value; raises TransporterNotFound with what to do.

    Accepts the built-in names, their historical module forms and aliases, a third-party module
    defining `TRANSPORTER_CLASS` (the original's convention), or a dotted `package.module.Class`."""
    canonical = canonical_transporter_name(name)
    if canonical in BUILTIN_TRANSPORTERS:
        module_name = BUILTIN_TRANSPORTERS[canonical]
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            hint = INSTALL_HINTS.get(canonical, "reinstall fileconveyor")
            raise TransporterNotFound(
                f"transporter {name!r} needs a package that is not installed ({error}); "
                f"install it with: {hint}") from None
        return _class_from_module(module, name)
    third_party: types.ModuleType | None
    try:
        third_party = importlib.import_module(canonical)
    except ImportError:
        third_party = None
    if third_party is not None:
        return _class_from_module(third_party, name)
    module_name, _, class_name = canonical.rpartition(".")
    if module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise TransporterNotFound(
                f"transporter {name!r} could not be imported ({error}); write one of "
                f"{', '.join(sorted(BUILTIN_TRANSPORTERS))}, or the dotted name of an importable "
                "module that defines TRANSPORTER_CLASS") from None
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, Transporter):
            return cls
    raise TransporterNotFound(
        f"unknown transporter {name!r}; write one of {', '.join(sorted(BUILTIN_TRANSPORTERS))} "
        "(or mosso/cumulus for cloudfiles), or the dotted name of an importable module that "
        "defines TRANSPORTER_CLASS")


def _class_from_module(module: object, name: str) -> type[Transporter]:
    """The class a transporter module names in TRANSPORTER_CLASS; the error names the module, its
    file and what is wrong (the original said "Transporter class could not be found": issue #162)."""
    class_name = getattr(module, "TRANSPORTER_CLASS", None)
    cls = getattr(module, class_name, None) if isinstance(class_name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, Transporter)):
        module_name = getattr(module, "__name__", name)
        where = f" ({module.__file__})" if isinstance(getattr(module, "__file__", None), str) else ""  # type: ignore[attr-defined]
        if class_name is None:
            problem = "defines no TRANSPORTER_CLASS"
        elif cls is None:
            problem = f"has TRANSPORTER_CLASS = {class_name!r}, but no such class"
        else:
            problem = f"has TRANSPORTER_CLASS = {class_name!r}, which is not a subclass of Transporter"
        raise TransporterNotFound(
            f"module {module_name!r}{where} for transporter {name!r} {problem}; add "
            "TRANSPORTER_CLASS = \"MyTransporter\" to it, naming a subclass of "
            "fileconveyor.transporters.base.Transporter, or give the dotted name package.module.Class")
    return cls


def remote_parent(remote_path: str) -> str:
    """Directory part of a normalised remote path ('' for a file at the root)."""
    return posixpath.dirname(remote_path)


def remote_parents(remote_path: str) -> list[str]:
    """The directories above a normalised remote path, deepest first, the root excluded:
    `a/b/c.txt` -> `['a/b', 'a']`."""
    parents = []
    parent = posixpath.dirname(remote_path)
    while parent:
        parents.append(parent)
        parent = posixpath.dirname(parent)
    return parents
