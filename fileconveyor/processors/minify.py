"""`minify.CSS` and `minify.JS`: in-process CSS and JavaScript minification (new in this version).

Why rcssmin and rjsmin: both are maintained, have C accelerators (pure-Python fallbacks), work on
bytes (so a file's encoding never matters and non-ASCII text passes through unchanged), and need no
Java. They only remove whitespace and comments (no renaming), so they are safe on any valid input;
YUI Compressor or the Closure Compiler shrink JavaScript further, at the cost of a JVM start per file
(see docs/processors.md for measured ratios and speeds). Alternatives looked at: csscompressor
(a pure-Python YUI port, much slower), jsmin (pure Python, slower, unmaintained); minifiers with
renaming (terser, esbuild) are not Python packages.

`/*! ... */` comments are kept: by convention they carry licences that must stay with the code.
The output is never larger than the input (else the input passes through)."""
from __future__ import annotations

import abc
import logging
import os
from typing import Callable, ClassVar

from fileconveyor.processors.base import Processor, ProcessorUnavailable

log = logging.getLogger(__name__)


class _Minifier(Processor):
    #: The importable module that does the work, and the pip package that provides it.
    module_name: ClassVar[str] = ""
    package: ClassVar[str] = ""

    @classmethod
    def check_available(cls) -> None:
        try:
            __import__(cls.module_name)
        except ImportError:
            raise ProcessorUnavailable(
                f"{cls.__module__}.{cls.__name__} needs the {cls.package} package: pip install "
                f"{cls.package} (or pip install 'fileconveyor[minify]')") from None

    @abc.abstractmethod
    def _minify(self) -> Callable[[bytes], bytes]:
        """The function that minifies bytes."""

    def run(self, input_file: str) -> str:
        with open(input_file, "rb") as handle:
            data = handle.read()
        result = self._minify()(data)
        if len(result) >= len(data):
            return input_file
        output = self.context.output_path(os.path.basename(input_file))
        with open(output, "wb") as handle:
            handle.write(result)
        log.debug("%s: minified %d -> %d bytes", self.context.original_file, len(data), len(result))
        return output


class CSS(_Minifier):
    """Minify CSS with rcssmin."""

    valid_extensions = (".css",)
    module_name = "rcssmin"
    package = "rcssmin"

    def _minify(self) -> Callable[[bytes], bytes]:
        import rcssmin
        return lambda data: rcssmin.cssmin(data, keep_bang_comments=True)


class JS(_Minifier):
    """Minify JavaScript with rjsmin."""

    valid_extensions = (".js",)
    module_name = "rjsmin"
    package = "rjsmin"

    def _minify(self) -> Callable[[bytes], bytes]:
        import rjsmin
        return lambda data: rjsmin.jsmin(data, keep_bang_comments=True)
