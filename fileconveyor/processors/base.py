"""The processor contract and the chain that runs processors in order.

A processor turns one file into another: minified, optimised, renamed. It works on a private working
copy, never on the source: every chain run gets its own directory below WORKING_DIR (the original
shared one directory tree between runs, so per-server runs overwrote each other's output), which the
arbitrator removes afterwards. A processor may change the basename of the file (GIF -> PNG, unique
names) but never its directory: where a file lands on a server is decided by the source's relative
path, and the transported basename is recorded in `synced_files.db`.

The source itself is read once, by the chain: it is copied into the run's directory through
`fileconveyor.localfile` (never blocking on a FIFO swapped in for the file, never following a symlink
out of the source tree), and every processor works on that snapshot. So a processor or an external
tool can never hang on a special file or read a file the tree's owner could not publish.

Processors never run a shell and never build a command line from a string: subprocesses are
started with an argument list (see `run_tool`). A tool that is missing is reported once at start-up
by `check_available`, with how to install it, instead of failing every file forever.

Outcomes a processor can signal:
* return a path: the output (may be the input unchanged, when there is nothing to do);
* raise `WaitForFiles`: this file depends on others that are not synced yet (CSS -> images); the
  arbitrator parks it and queues it again as soon as they are synced (bounded: it also retries
  with backoff, and the wait is visible in `status`);
* raise `ProcessorError`: this file cannot be processed; retried with backoff, and logged.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import os
import subprocess
from typing import Callable, ClassVar, Mapping, Sequence

from fileconveyor.localfile import copy_regular, open_regular

log = logging.getLogger(__name__)


class ProcessorError(Exception):
    """Processing this file failed; the message says what and why."""


class ProcessorUnavailable(Exception):
    """A processor cannot run on this machine (missing tool); the message says how to install it."""


class ProcessorNotFound(Exception):
    """A `<processor name="...">` that does not resolve; the message has the fix."""


class WaitForFiles(Exception):
    """The file references files that are not synced to this server yet; try again once they are."""

    def __init__(self, paths: Sequence[str], reason: str = "") -> None:
        self.paths = tuple(paths)
        super().__init__(reason or f"waiting for {len(self.paths)} referenced file(s) to be synced")


def integer_between(low: int, high: int) -> Callable[[str], int]:
    """A setting validator: a whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ValueError(f"must be a whole number from {low} to {high}, not {text!r}")
        return value
    return parse


def existing_file(text: str) -> str:
    """A setting validator: the absolute path (`~` expanded) of a regular file that exists."""
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute path, not {text!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist or is not a file")
    return os.path.normpath(path)


@dataclasses.dataclass(frozen=True)
class ExtraOutput:
    """A file that a processor made beside the chain's output, to be uploaded next to it under its
    own basename (a pre-compressed `app.css.gz` beside `app.css`: original issue #3).

    The arbitrator uploads it to every destination of the run, in the output's remote directory,
    records it as a copy of the source file (so it is verified, and deleted with the file or when a
    later version no longer makes it), and sends `content_encoding` with the output's Content-Type
    where the transporter keeps HTTP metadata (S3, Cloud Files)."""

    #: In the run's working directory; its basename is the output's basename plus a suffix.
    path: str
    #: The file it was made from: the chain's output at that point. A later processor that
    #: changes the output makes it stale, which the chain refuses.
    made_from: str
    #: What the bytes are to an HTTP client: `gzip`, `br`; None for a file of its own type.
    content_encoding: str | None = None


@dataclasses.dataclass
class ProcessorContext:
    """What one chain run knows. One context per (file, server-or-None) run."""

    #: The source file as reported by the monitor (absolute, not resolved).
    original_file: str
    #: The source's documentRoot and basePath from config.xml (may be None).
    document_root: str | None
    base_path: str | None
    #: The server this run is for, when a processor in the chain depends on the server; else None.
    server: str | None
    #: A private, empty directory for this run's outputs; removed by the arbitrator afterwards.
    working_dir: str
    #: URL of a source file on `server` (or any server when `server` is None), from synced_files.db.
    synced_url: Callable[[str], "str | None"] = lambda input_file: None
    #: Will this source file be synced to `server` at all (some rule matches it and sends it
    #: there)? A file that never will is not worth waiting for.
    will_be_synced: Callable[[str], bool] = lambda input_file: True
    #: The scan path of the source the file belongs to: the file must resolve inside it (rsync's
    #: "safe links") unless `allow_unsafe_links`. None: no such check (tools and tests).
    source_root: str | None = None
    #: The setting SYNC_UNSAFE_SYMLINKS.
    allow_unsafe_links: bool = False
    #: Absolute paths of files whose URLs the output embeds (filled by processors such as the CSS
    #: URL updater); when one of them is synced again under a new URL, this file is queued again.
    dependencies: set[str] = dataclasses.field(default_factory=set)
    #: Files made beside the output (see ExtraOutput), in the order they were made; checked by
    #: ProcessorChain.run, uploaded by the arbitrator.
    extra_outputs: list[ExtraOutput] = dataclasses.field(default_factory=list)

    def output_path(self, basename: str) -> str:
        """A path in this run's working directory for an output called `basename`."""
        if not basename or "/" in basename or basename in (".", ".."):
            raise ProcessorError(f"invalid output file name {basename!r}")
        return os.path.join(self.working_dir, basename)


class Processor(abc.ABC):
    """Base of every processor. Subclasses set the class attributes and implement `run`."""

    #: Lower-case extensions with a dot that this processor handles; empty means every file.
    valid_extensions: ClassVar[tuple[str, ...]] = ()
    #: True when the output depends on the destination server (the chain then runs once per server).
    different_per_server: ClassVar[bool] = False
    #: True for a processor that makes files beside the output (ExtraOutput) and leaves the output
    #: as it is: it must come after every processor that changes the file (config.py checks).
    adds_siblings: ClassVar[bool] = False
    #: Settings the processor takes as child elements of its `<processor>` in config.xml
    #: (`<processor name="yui_compressor.YUICompressor"><jar>/opt/yui.jar</jar></processor>`):
    #: name -> validator, which turns the text into the value or raises ValueError saying what
    #: to write. config.py reports an unknown name or a bad value with its line.
    accepted_settings: ClassVar[Mapping[str, Callable[[str], object]]] = {}

    def __init__(self, context: ProcessorContext, settings: Mapping[str, object] | None = None) -> None:
        self.context = context
        #: Validated values of this processor's settings in this rule; absent: not set.
        self.settings: Mapping[str, object] = settings or {}

    @classmethod
    def parse_settings(cls, raw: Mapping[str, str]) -> dict[str, object]:
        """Validated values of `raw` (text from config.xml); ValueError names the bad setting."""
        values: dict[str, object] = {}
        processor = canonical_processor_name(f"{cls.__module__}.{cls.__name__}")
        for name, text in raw.items():
            validator = cls.accepted_settings.get(name)
            if validator is None:
                accepted = ", ".join(f"<{n}>" for n in sorted(cls.accepted_settings)) or "none"
                raise ValueError(f"{processor} has no setting <{name}> (it takes: {accepted}); "
                                 "remove it or fix its name")
            try:
                values[name] = validator(text.strip())
            except ValueError as error:
                raise ValueError(f"<{name}> of {processor}: {error}") from None
        return values

    @classmethod
    def check_available_with(cls, settings: Mapping[str, object]) -> None:
        """`check_available` for a chain that gives these settings (a setting may name the
        tool, as `<jar>` does); processors without such a setting need not override it."""
        cls.check_available()

    @classmethod
    def would_process(cls, path: str) -> bool:
        """Does this processor handle `path` (by its extension, case-insensitively)?"""
        if not cls.valid_extensions:
            return True
        return os.path.splitext(path)[1].lower() in cls.valid_extensions

    @classmethod
    def check_available(cls) -> None:
        """Raise ProcessorUnavailable (with an install hint) if this processor cannot run here.
        Called once at start-up and by `check-config`."""

    @classmethod
    def shutdown(cls) -> None:
        """Release process-wide resources the processor keeps between files; the daemon calls it
        when it stops. Most processors keep none."""

    @abc.abstractmethod
    def run(self, input_file: str) -> str:
        """Process `input_file` (the previous processor's output, or the source) and return the
        output path: `input_file` itself when unchanged, else a file made with
        `self.context.output_path(basename)`."""


def run_tool(argv: Sequence[str], timeout: float = 300.0, stdin_path: str | None = None,
             stdout_path: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run an external tool without a shell; raise ProcessorError on a non-zero exit or a timeout.

    `argv` is a list: file names are single arguments and are never interpreted. File names that
    start with `-` must be passed as absolute paths by the caller (working files always are)."""
    stdin = open_regular(stdin_path) if stdin_path else subprocess.DEVNULL
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    try:
        result = subprocess.run(list(argv), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ProcessorError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise ProcessorError(f"{argv[0]} is not installed") from None
    finally:
        if stdin_path:
            stdin.close()  # type: ignore[union-attr]
        if stdout_path:
            stdout.close()  # type: ignore[union-attr]
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise ProcessorError(f"{argv[0]} exited with status {result.returncode}: {message}")
    if result.stderr:
        log.debug("%s wrote on stderr: %s", argv[0], result.stderr.decode("utf-8", "replace")[-500:])
    return result


def copy_to(context: ProcessorContext, input_file: str, basename: str) -> str:
    """Copy `input_file` to `basename` in the run's working dir and return the new path."""
    output = context.output_path(basename)
    if os.path.abspath(output) != os.path.abspath(input_file):
        if os.path.lexists(output):
            os.unlink(output)
        copy_regular(input_file, output)
    return output


# --- resolving names from config.xml ---------------------------------------------------------

BUILTIN_MODULES = ("filename", "unique_filename", "image_optimizer", "yui_compressor",
                   "google_closure_compiler", "link_updater", "minify", "precompress")


def canonical_processor_name(name: str) -> str:
    """`processors.x.Y` and `fileconveyor.processors.x.Y` become `x.Y` for built-in modules."""
    name = name.strip()
    for prefix in ("fileconveyor.processors.", "processors."):
        if name.startswith(prefix) and name[len(prefix):].split(".")[0] in BUILTIN_MODULES:
            return name[len(prefix):]
    return name


def resolve_processor(name: str) -> type[Processor]:
    """The class for a `<processor name="...">`; raises ProcessorNotFound with what to write."""
    canonical = canonical_processor_name(name)
    module_name, _, class_name = canonical.rpartition(".")
    if not module_name:
        raise ProcessorNotFound(
            f"processor {name!r} is not of the form module.Class; for example "
            "filename.SpacesToUnderscores or unique_filename.MD5")
    candidates = [module_name]
    if module_name.split(".")[0] in BUILTIN_MODULES:
        candidates.insert(0, "fileconveyor.processors." + module_name)
    last_error: Exception | None = None
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
        except ModuleNotFoundError as error:
            # A missing optional dependency inside a built-in module is worth reporting as such.
            if error.name and not candidate.startswith(error.name):
                raise ProcessorNotFound(
                    f"processor {name!r} needs the package {error.name!r}, which is not installed; "
                    "pip install 'fileconveyor[all]' installs every optional dependency") from None
            last_error = error
            continue
        except ImportError as error:
            last_error = error
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and issubclass(cls, Processor) and not getattr(cls, "__abstractmethods__", None):
            return cls
        raise ProcessorNotFound(
            f"processor {name!r}: module {candidate!r} has no processor class {class_name!r}"
            + _known_classes(module))
    raise ProcessorNotFound(
        f"processor {name!r} could not be imported ({last_error}); built-in modules: "
        + ", ".join(BUILTIN_MODULES))


def _known_classes(module: object) -> str:
    names = sorted(n for n, v in vars(module).items()
                   if isinstance(v, type) and issubclass(v, Processor) and v is not Processor
                   and not getattr(v, "__abstractmethods__", None))
    return f"; it has: {', '.join(names)}" if names else ""


class ProcessorChain:
    """Runs processor classes in order on one file; returns the final output path.

    Processors that do not handle the file's current extension are skipped (a rename by an earlier
    processor, GIF -> PNG, changes which later processors apply). Intermediate outputs are left in
    the run's private working dir, which the arbitrator removes as a whole."""

    def __init__(self, processor_classes: Sequence[type[Processor]],
                 settings: Sequence[Mapping[str, object]] = ()) -> None:
        self.processor_classes = tuple(processor_classes)
        #: Each processor's validated settings, in chain order (missing: none).
        self.settings = tuple(settings) + ({},) * (len(self.processor_classes) - len(settings))

    def shutdown(self) -> None:
        """Release what the chain's processors keep between files (worker processes), at stop."""
        for cls in dict.fromkeys(self.processor_classes):
            cls.shutdown()

    @property
    def is_different_per_server(self) -> bool:
        return any(cls.different_per_server for cls in self.processor_classes)

    def depends_on_server(self, path: str) -> bool:
        """Must this file be processed once per server?"""
        return any(cls.different_per_server and cls.would_process(path) for cls in self.processor_classes)

    def run(self, context: ProcessorContext) -> str:
        """The output file: in the working dir, or `context.original_file` itself when no
        processor changed it (a transporter may then link to the source instead of copying).
        Raises what `snapshot_source` raises for a source that cannot be read safely."""
        current = context.original_file
        snapshot: str | None = None
        for cls, settings in zip(self.processor_classes, self.settings):
            if not cls.would_process(current):
                continue
            if snapshot is None:
                current = snapshot = snapshot_source(context)
            output = cls(context, settings).run(current)
            if not os.path.isfile(output):
                raise ProcessorError(f"{cls.__module__}.{cls.__name__} produced no output file")
            if os.path.dirname(os.path.abspath(output)) not in (
                    os.path.abspath(context.working_dir), os.path.dirname(os.path.abspath(current))):
                raise ProcessorError(f"{cls.__module__}.{cls.__name__} wrote outside its working dir")
            current = output
        for extra in context.extra_outputs:
            if extra.made_from != current:
                raise ProcessorError(
                    f"{os.path.basename(extra.path)} was made from an earlier stage of the file, which a later "
                    "processor changed; put the precompress processors last in the chain")
            if os.path.dirname(os.path.abspath(extra.path)) != os.path.abspath(context.working_dir):
                raise ProcessorError(f"{extra.path} was written outside the run's working dir")
        return context.original_file if current == snapshot else current


#: The subdirectory of a run's working dir that holds the snapshot of the source.
SNAPSHOT_DIR = ".source"


def snapshot_source(context: ProcessorContext) -> str:
    """Copy the source file into `<working dir>/.source/` and return the copy's path (same
    basename and mtime). Raises localfile.NotRegularFileError for a FIFO or device swapped in for
    the file, localfile.UnsafeLinkError for a link out of the source tree (unless allowed), and
    FileNotFoundError for a file that is gone."""
    directory = os.path.join(context.working_dir, SNAPSHOT_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, os.path.basename(context.original_file))
    root = None if context.allow_unsafe_links else context.source_root
    copy_regular(context.original_file, path, root=root)
    return path
