"""Lossless image optimisation: `image_optimizer.Max`, `.KeepMetadata`, `.KeepFilename`,
`.KeepMetadataAndFilename` (and `.Base`, which behaves like `Max`, as in the original).

Why it is shaped this way:

* **Strictly lossless.** Every step only re-encodes: JPEG entropy coding (the DCT coefficients are
  copied, never decoded to pixels), PNG deflate/filters/colour type (oxipng reduces only when exact),
  GIF frames through `gifsicle -O2` (no `--lossy`), single-frame GIF -> PNG through Pillow with the
  decoded pixels compared before the PNG is kept.
* **Format from content.** The first bytes decide (JPEG `FF D8 FF`, PNG signature, `GIF87a`/`GIF89a`);
  the extension only decides whether the processor is asked at all. The original trusted ImageMagick's
  `identify` and passed unquoted file names through a shell.
* **Never larger, never fatal for bad images.** When the result is not smaller, the input passes
  through. A corrupt, truncated or unsupported file passes through unchanged with one WARNING: a bad
  image must not keep a file in the retry loop forever (it would fail the same way every time).
* **Metadata.** Max variants strip EXIF, XMP, comments (JPEG) and textual/time chunks (PNG); Keep
  variants keep them. What changes how an image *renders* is kept in every variant: the ICC profile
  (dropping it makes wide-gamut or calibrated photos render with wrong colours), the PNG colour chunks
  (gAMA, cHRM, sRGB, iCCP, cICP, mDCv, cLLi, sBIT: oxipng's own "safe" mode drops gAMA and cHRM, which
  browsers honour, so we name the kept chunks explicitly), pHYs (pixel density), the APNG animation
  chunks, and the JPEG EXIF orientation (browsers rotate by it: the Max variants write back a minimal
  EXIF block holding only the orientation when it is not 1).
* **GIL.** The JPEG step (mozjpeg-lossless-optimization, cffi) releases the GIL, so it runs in the
  calling worker thread. pyoxipng holds the GIL for the whole optimisation (measured: a Python thread
  made ~4 % of its normal progress while a 2000x2000 PNG was optimised), which would stall every other
  thread of the daemon (transfers, the monitor), so PNG work runs in persistent worker processes
  (`python -c`, a pipe protocol; not multiprocessing, whose spawn/forkserver re-import the main
  module and whose fork is unsafe in a threaded daemon). gifsicle and jpegtran are subprocesses.
* **JPEG progressive from 10 KiB.** mozjpeg always writes an optimised progressive scan script,
  which beats jpegtran's progressive output from about 10 KiB up but loses to an optimised baseline
  on tiny files (40x40 gradient: baseline 357 bytes, mozjpeg 398). So files of 10 KiB and more go
  through mozjpeg alone; smaller ones also through `jpegtran -optimize` (baseline) when Debian's
  libjpeg-turbo-progs is installed, and the smaller result wins. Without the mozjpeg package,
  jpegtran does everything, `-progressive` from 10 KiB, as in the original.
"""
from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
from typing import ClassVar

from fileconveyor.processors.base import (Processor, ProcessorError, ProcessorUnavailable,
                                          run_tool)

log = logging.getLogger(__name__)

#: The original's threshold for progressive JPEGs (Yahoo's measurements): used with jpegtran.
PROGRESSIVE_FROM_BYTES = 10 * 1024
#: PNG chunks kept in every variant because they change how (or whether, for APNG) the image renders.
PNG_RENDERING_CHUNKS: tuple[bytes, ...] = (
    b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"cICP", b"mDCv", b"cLLi", b"sBIT", b"pHYs",
    b"acTL", b"fcTL", b"fdAT")
#: oxipng's row filters to try (its level-2 preset otherwise: NoOp, Sub, Entropy, Bigrams). One
#: trial per filter and the final deflate are nearly all of the PNG time. Measured (CPU, output
#: bytes) against the preset: the benchmark's PNGs -13 %, +0.08 %; a second generated set -21 %,
#: +0.05 %; palette PNGs -22 %, -0.3 %; GIFs converted to PNG -25 %, equal; 250 real PNGs
#: (icons, documentation images) -6 %, +0.02 %. Dropping Bigrams instead cost +0.55 % on the real
#: PNGs; NoOp alone (PNG's advice for palette images) +8 % on dithered palettes. Names, for the
#: worker's source.
PNG_FILTERS: tuple[str, ...] = ("NoOp", "Sub", "Bigrams")
#: Seconds one external tool or one PNG optimisation may take.
TOOL_TIMEOUT = 300.0

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGICS = (b"GIF87a", b"GIF89a")


class _Unusable(Exception):
    """The file is not an image we can optimise losslessly; it passes through unchanged."""


def sniff_format(head: bytes) -> str | None:
    """'jpeg', 'png', 'gif' or None, from the first bytes of a file."""
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head[:6] in GIF_MAGICS:
        return "gif"
    return None


# --- JPEG ----------------------------------------------------------------------------------------

def _jpeg_is_complete(data: bytes) -> bool:
    """Does the JPEG have its segments, a scan and an end-of-image marker after it?

    libjpeg (and so mozjpeg) only *warns* about a truncated file and pads the missing data, which
    would turn a damaged file into a different, complete one. Entropy-coded data stuffs 0xFF as
    FF 00 and restart markers are FF D0-D7, so FF D9 after the first scan can only be the EOI."""
    pos = 2
    size = len(data)
    for _ in range(10_000):  # bounded: far more segments than any real JPEG has before its scan
        if pos + 4 > size or data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if length < 2:
            return False
        if marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos + 2 + length) != -1
        pos += 2 + length
    return False


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG (1 when absent or unreadable); reads only the headers."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 -- any unreadable EXIF means "no orientation"
        return 1


def _orientation_app1(orientation: int) -> bytes:
    """A minimal EXIF APP1 segment holding only the orientation tag (big-endian TIFF, one IFD)."""
    tiff = (b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _insert_after_app0(jpeg: bytes, segment: bytes) -> bytes:
    """Insert `segment` after SOI and a JFIF APP0, where an EXIF APP1 belongs."""
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":
        pos += 2 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:pos] + segment + jpeg[pos:]


def _mozjpeg_available() -> bool:
    try:
        import mozjpeg_lossless_optimization  # noqa: F401
    except ImportError:
        return False
    return True


# --- PNG (in worker processes: pyoxipng holds the GIL) ----------------------------------------------

#: The worker's whole program. It needs only oxipng, so it runs with `-c` and never imports the
#: daemon (multiprocessing's spawn/forkserver would re-import the main module, which a script that
#: embeds File Conveyor may not allow). Protocol over its pipes, one request at a time:
#: request = keep-all flag (1 byte) + length (8 bytes) + PNG; reply = status (1 byte: 0 ok,
#: 1 unreadable PNG, 2 other error) + length (8 bytes) + PNG or message. EOF on stdin ends it.
_PNG_WORKER_SOURCE = r"""
import signal, struct, sys, traceback
signal.signal(signal.SIGINT, signal.SIG_IGN)
import oxipng
KEEP = [%(keep)r]
FILTERS = [getattr(oxipng.RowFilter, name) for name in %(filters)r]
inp, out = sys.stdin.buffer, sys.stdout.buffer
def read(n):
    data = inp.read(n)
    if len(data) != n:
        raise SystemExit(0)
    return data
while True:
    flag = read(1)
    data = read(struct.unpack(">Q", read(8))[0])
    try:
        strip = oxipng.StripChunks.none() if flag == b"\x01" else oxipng.StripChunks.keep(KEEP)
        status, reply = 0, bytes(oxipng.optimize_from_memory(data, strip=strip, filter=FILTERS))
    except oxipng.PngError as error:
        status, reply = 1, str(error).encode("utf-8", "replace")
    except Exception:
        status, reply = 2, traceback.format_exc().encode("utf-8", "replace")
    out.write(bytes([status]) + struct.pack(">Q", len(reply)) + reply)
    out.flush()
""".replace("[%(keep)r]", repr(list(PNG_RENDERING_CHUNKS))).replace("%(filters)r", repr(PNG_FILTERS))


class _PNGWorker:
    """One persistent `python -c` process running oxipng; used by one thread at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _PNG_WORKER_SOURCE], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)

    def optimize(self, data: bytes, keep_all_chunks: bool) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        # The watchdog kills a worker stuck past the timeout; the read below then sees EOF.
        watchdog = threading.Timer(TOOL_TIMEOUT, self.process.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            self.process.stdin.write((b"\x01" if keep_all_chunks else b"\x00")
                                     + struct.pack(">Q", len(data)) + data)
            self.process.stdin.flush()
            header = self.process.stdout.read(9)
            if len(header) != 9:
                raise BrokenPipeError
            reply = self.process.stdout.read(struct.unpack(">Q", header[1:])[0])
        except (BrokenPipeError, OSError, struct.error):
            self.close()
            raise ProcessorError("the PNG optimisation worker process died or timed out "
                                 f"(limit {TOOL_TIMEOUT:.0f} s); will retry") from None
        finally:
            watchdog.cancel()
        if header[0] == 1:
            raise _Unusable(f"unreadable PNG ({reply.decode('utf-8', 'replace')})")
        if header[0] != 0:
            raise ProcessorError("PNG optimisation failed: " + reply.decode("utf-8", "replace")[-500:])
        return reply

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


_workers_lock = threading.Lock()
_idle_workers: list[_PNGWorker] = []


def _optimize_png(data: bytes, keep_all_chunks: bool) -> bytes:
    """oxipng on `data` in an idle worker process (a new one when none is idle).

    Concurrency is bounded by the caller (the daemon's processor pool): at most one worker per
    thread that processes images; idle workers are kept for the next file."""
    with _workers_lock:
        worker = _idle_workers.pop() if _idle_workers else None
    if worker is None or not worker.alive:
        if worker is not None:
            worker.close()
        worker = _PNGWorker()
    try:
        return worker.optimize(data, keep_all_chunks)
    finally:
        if worker.alive:  # a worker that died or timed out has closed itself
            with _workers_lock:
                _idle_workers.append(worker)


def shutdown_workers() -> None:
    """Stop the idle PNG worker processes (the daemon may call this on shutdown; tests do)."""
    with _workers_lock:
        workers = _idle_workers[:]
        _idle_workers.clear()
    for worker in workers:
        worker.close()


atexit.register(shutdown_workers)


def _same_pixels(a: bytes, b: bytes) -> bool:
    """Do two encoded single-frame images decode to the same RGBA pixels?"""
    from PIL import Image
    with Image.open(io.BytesIO(a)) as first, Image.open(io.BytesIO(b)) as second:
        return (first.size == second.size
                and first.convert("RGBA").tobytes() == second.convert("RGBA").tobytes())


# --- the processors ------------------------------------------------------------------------------

class Base(Processor):
    """Like `Max`: strip metadata (not what changes rendering), single-frame GIF -> PNG."""

    valid_extensions = (".gif", ".png", ".jpg", ".jpeg")
    #: Keep EXIF, XMP, comments and PNG text chunks?
    keep_metadata: ClassVar[bool] = False
    #: Keep the file name (so no GIF -> PNG conversion)?
    keep_filename: ClassVar[bool] = False

    @classmethod
    def shutdown(cls) -> None:
        shutdown_workers()

    @classmethod
    def check_available(cls) -> None:
        missing = []
        for module, package in (("PIL", "Pillow"), ("oxipng", "pyoxipng")):
            try:
                __import__(module)
            except ImportError:
                missing.append(package)
        if not _mozjpeg_available() and shutil.which("jpegtran") is None:
            missing.append("mozjpeg-lossless-optimization")
        if missing:
            raise ProcessorUnavailable(
                f"{cls.__module__}.{cls.__name__} needs {', '.join(missing)}: "
                f"pip install {' '.join(missing)} (or pip install 'fileconveyor[images]'); "
                "for JPEG, Debian's libjpeg-turbo-progs (jpegtran) also works")

    def run(self, input_file: str) -> str:
        with open(input_file, "rb") as handle:
            data = handle.read()
        kind = sniff_format(data[:16])
        basename = os.path.basename(input_file)
        result: bytes | None
        try:
            if kind == "jpeg":
                result, out_name = self._jpeg(input_file, data), basename
            elif kind == "png":
                result, out_name = _optimize_png(data, self.keep_metadata), basename
            elif kind == "gif":
                result, out_name = self._gif(input_file, data, basename)
            else:
                raise _Unusable("not a JPEG, PNG or GIF file")
        except _Unusable as reason:
            log.warning("%s: left unchanged: %s", self.context.original_file, reason)
            return input_file
        if result is None or len(result) >= len(data):
            log.debug("%s: no smaller lossless encoding found", self.context.original_file)
            return input_file
        output = self.context.output_path(out_name)
        with open(output, "wb") as handle:
            handle.write(result)
        log.debug("%s: %d -> %d bytes", self.context.original_file, len(data), len(result))
        return output

    def _jpeg(self, input_file: str, data: bytes) -> bytes:
        if not _jpeg_is_complete(data):
            raise _Unusable("truncated or damaged JPEG")
        candidates = []
        if _mozjpeg_available():
            import mozjpeg_lossless_optimization as mozjpeg
            copy = mozjpeg.COPY_MARKERS.ALL if self.keep_metadata else mozjpeg.COPY_MARKERS.ICC
            try:
                candidates.append(mozjpeg.optimize(data, copy))
            except ValueError as error:
                raise _Unusable(f"unreadable JPEG ({error})") from None
        # Below 10 KiB an optimised baseline is usually smaller than a progressive file.
        if not candidates or (len(data) < PROGRESSIVE_FROM_BYTES and shutil.which("jpegtran")):
            candidates.append(self._jpegtran(input_file, data))
        result = min(candidates, key=len)
        if not self.keep_metadata:
            orientation = _exif_orientation(data)
            if orientation != 1 and 1 <= orientation <= 8:
                result = _insert_after_app0(result, _orientation_app1(orientation))
        return result

    def _jpegtran(self, input_file: str, data: bytes) -> bytes:
        tmp = self.context.output_path(".jpegtran-" + str(threading.get_ident()))
        argv = ["jpegtran", "-copy", "all" if self.keep_metadata else "icc", "-optimize", "-strict"]
        if len(data) >= PROGRESSIVE_FROM_BYTES:
            argv.append("-progressive")
        try:
            run_tool(argv + ["-outfile", tmp, os.path.abspath(input_file)], timeout=TOOL_TIMEOUT)
        except ProcessorError as error:
            if "not installed" in str(error):
                raise
            raise _Unusable(f"jpegtran could not read it ({error})") from None
        try:
            with open(tmp, "rb") as handle:
                return handle.read()
        finally:
            os.unlink(tmp)

    def _gif(self, input_file: str, data: bytes, basename: str) -> tuple[bytes | None, str]:
        from PIL import Image
        try:
            with Image.open(io.BytesIO(data)) as image:
                frames = getattr(image, "n_frames", 1)
                comment = image.info.get("comment")
                if frames == 1 and not self.keep_filename:
                    image.load()
                    png = self._gif_frame_to_png(image, comment)
                else:
                    png = None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise _Unusable(f"unreadable GIF ({error})") from None
        if png is not None:
            png = _optimize_png(png, self.keep_metadata)
            if len(png) < len(data) and _same_pixels(data, png):
                return png, os.path.splitext(basename)[0] + ".png"
        return self._gifsicle(input_file), basename

    def _gif_frame_to_png(self, image: "object", comment: bytes | None) -> bytes:
        from PIL import PngImagePlugin
        info = None
        if self.keep_metadata and comment:
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", comment.decode("latin-1"))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", pnginfo=info)  # type: ignore[attr-defined]
        return buffer.getvalue()

    def _gifsicle(self, input_file: str) -> bytes | None:
        """gifsicle -O2 (lossless) when installed; None (unchanged) otherwise.

        Max variants drop comments and frame names; application extensions (XMP, a rare ICC
        profile, but also the loop count's neighbours) stay, as gifsicle can only drop all of them."""
        if shutil.which("gifsicle") is None:
            log.debug("gifsicle is not installed: %s passes unchanged", self.context.original_file)
            return None
        tmp = self.context.output_path(".gifsicle-" + str(threading.get_ident()))
        argv = ["gifsicle", "-O2", "--no-warnings"]
        if not self.keep_metadata:
            argv += ["--no-comments", "--no-names"]
        try:
            run_tool(argv + [os.path.abspath(input_file), "-o", tmp], timeout=TOOL_TIMEOUT)
            with open(tmp, "rb") as handle:
                return handle.read()
        except ProcessorError as error:
            raise _Unusable(f"gifsicle could not read it ({error})") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class Max(Base):
    """Strip metadata (keep ICC, orientation, colour chunks); single-frame GIF -> PNG."""


class KeepMetadata(Base):
    """Keep EXIF, XMP, comments, PNG text; single-frame GIF -> PNG."""

    keep_metadata = True


class KeepFilename(Base):
    """Strip metadata like Max; never rename (GIFs stay GIFs, optimised by gifsicle)."""

    keep_filename = True


class KeepMetadataAndFilename(Base):
    """Keep metadata and the file name."""

    keep_metadata = True
    keep_filename = True
