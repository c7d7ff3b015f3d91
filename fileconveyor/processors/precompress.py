"""`precompress.Gzip` and `precompress.Brotli`: pre-compressed copies of text assets, uploaded
beside them (original issue #3: `file.css` -> `file.css.gz` for CloudFront).

Why siblings instead of compressing the file itself: a web server or CDN can then give each client
what it asks for. nginx's `gzip_static` (and `brotli_static`) serves `app.css.gz` (or `.br`) for a
request of `app.css` with `Accept-Encoding: gzip` (or `br`), and `app.css` to every other client;
an object store serves `app.css.gz` with the Content-Type of `app.css` and
`Content-Encoding: gzip` (the transporters send both, from ExtraOutput.content_encoding) to pages
that link it directly. The file itself passes through unchanged.

Copies are made for every handled file, however little they save: a copy that is sometimes left
out would leave the previous version's copy on the server, served in place of the new file.
Both compressors are deterministic (gzip without a name or time stamp), so the same content always
gives the same bytes and a re-upload changes nothing. Both stream: a large file is never held in
memory. Put these processors last in the chain (after minification, URL rewriting and unique
names): they compress the file as it is at that point, and check-config says so otherwise.
"""
from __future__ import annotations

import abc
import gzip
import os
import shutil
from typing import BinaryIO, Callable, ClassVar, Mapping, cast

from fileconveyor.processors.base import ExtraOutput, Processor, ProcessorUnavailable, integer_between

#: Text formats, and binary ones that are not compressed already (fonts other than WOFF).
TEXT_EXTENSIONS: tuple[str, ...] = (
    ".css", ".js", ".mjs", ".json", ".map", ".html", ".htm", ".xhtml", ".svg", ".xml", ".txt",
    ".csv", ".webmanifest", ".ico", ".ttf", ".otf", ".eot", ".wasm",
)
#: Bytes read per step while compressing.
CHUNK = 1024 * 1024


class _Precompressor(Processor):
    valid_extensions = TEXT_EXTENSIONS
    adds_siblings = True
    #: Appended to the file's name, and what the copy's bytes are to an HTTP client.
    suffix: ClassVar[str] = ""
    encoding: ClassVar[str] = ""

    def run(self, input_file: str) -> str:
        output = self.context.output_path(os.path.basename(input_file) + self.suffix)
        with open(input_file, "rb") as source, open(output, "xb") as target:
            self._compress(source, target)
        self.context.extra_outputs.append(ExtraOutput(output, input_file, self.encoding))
        return input_file

    @abc.abstractmethod
    def _compress(self, source: BinaryIO, target: BinaryIO) -> None:
        """Write the compressed form of `source` to `target`."""


class Gzip(_Precompressor):
    """`name.ext.gz` beside `name.ext` (level 9, or the `<level>` setting, 1-9; no name or time
    stamp in the header)."""

    suffix = ".gz"
    encoding = "gzip"
    accepted_settings: ClassVar[Mapping[str, Callable[[str], object]]] = {
        "level": integer_between(1, 9)}

    def _compress(self, source: BinaryIO, target: BinaryIO) -> None:
        level = cast(int, self.settings.get("level", 9))
        with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=target,
                           mtime=0) as compressed:
            shutil.copyfileobj(source, compressed, CHUNK)


class Brotli(_Precompressor):
    """`name.ext.br` beside `name.ext` (quality 11, the densest: made once, served many times;
    the `<quality>` setting, 0-11, trades density for speed)."""

    suffix = ".br"
    encoding = "br"
    accepted_settings: ClassVar[Mapping[str, Callable[[str], object]]] = {
        "quality": integer_between(0, 11)}

    @classmethod
    def check_available(cls) -> None:
        try:
            import brotli  # noqa: F401
        except ImportError:
            raise ProcessorUnavailable(
                "precompress.Brotli needs the brotli package: pip install brotli (or pip install "
                "'fileconveyor[precompress]')") from None

    def _compress(self, source: BinaryIO, target: BinaryIO) -> None:
        import brotli

        compressor = brotli.Compressor(quality=cast(int, self.settings.get("quality", 11)))
        for chunk in iter(lambda: source.read(CHUNK), b""):
            target.write(compressor.process(chunk))
        target.write(compressor.finish())
