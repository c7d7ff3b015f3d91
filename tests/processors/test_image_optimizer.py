"""image_optimizer: lossless (decoded pixels compared), metadata per variant, never larger, names,
bad files passed through with one warning. All images are made here with Pillow."""
from __future__ import annotations

import io
import logging
import os
import shutil
import struct

import pytest

PIL = pytest.importorskip("PIL")
pytest.importorskip("oxipng")
from PIL import Image, ImageCms, ImageDraw, ImageSequence, PngImagePlugin  # noqa: E402

from fileconveyor.processors import image_optimizer  # noqa: E402
from tests.processors._support import HOSTILE_STEM, make_context  # noqa: E402

ALL_VARIANTS = [image_optimizer.Base, image_optimizer.Max, image_optimizer.KeepMetadata,
                image_optimizer.KeepFilename, image_optimizer.KeepMetadataAndFilename]
RENAMING = {image_optimizer.Base, image_optimizer.Max, image_optimizer.KeepMetadata}
KEEPING = {image_optimizer.KeepMetadata, image_optimizer.KeepMetadataAndFilename}
ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


@pytest.fixture(scope="module", autouse=True)
def _stop_png_workers():
    yield
    image_optimizer.shutdown_workers()


def _picture(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Varied content: gradients, shapes and noise, so that encoders have something to do."""
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert(mode)
    draw = ImageDraw.Draw(image)
    for i in range(12):
        colour = (i * 20 % 256, 255 - i * 17 % 256, i * 41 % 256) + ((200,) if mode == "RGBA" else ())
        draw.ellipse((i * width // 14, i * height // 20, i * width // 14 + width // 5,
                      i * height // 20 + height // 4), fill=colour)
    noise = Image.effect_noise((width // 3, height // 3), 40).convert(mode)
    image.paste(noise, (width // 3, height // 3))
    return image


def _exif(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCamera"  # Make
    exif[0x0131] = "fileconveyor-test"  # Software
    return exif.tobytes()


def make_jpeg(path: str, size: tuple[int, int] = (480, 360), orientation: int = 6) -> None:
    _picture(size).save(path, "JPEG", quality=88, exif=_exif(orientation), icc_profile=ICC,
                        comment=b"a JPEG comment", xmp=XMP)


def make_png(path: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "a PNG comment")
    info.add_text("Author", "someone")
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"tIME", struct.pack(">HBBBBB", 2020, 1, 2, 3, 4, 5))
    _picture((320, 240), "RGBA").save(path, "PNG", pnginfo=info, icc_profile=ICC, compress_level=1)


def make_gif(path: str) -> None:
    image = _picture((200, 150)).quantize(64)
    image.save(path, "GIF", transparency=0, comment=b"a GIF comment")


def make_animated_gif(path: str) -> None:
    frames = [_picture((160, 120)).rotate(angle).quantize(32) for angle in (0, 90, 180, 270)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=[100, 200, 100, 300],
                   loop=0, optimize=False, comment=b"anim")


def make_apng(path: str) -> None:
    frames = [_picture((120, 90), "RGBA").rotate(angle) for angle in (0, 180)]
    frames[0].save(path, "PNG", save_all=True, append_images=frames[1:], duration=150, loop=0,
                   compress_level=1)


def frames_rgba(path: str) -> list[tuple[bytes, object]]:
    with Image.open(path) as image:
        return [(frame.convert("RGBA").tobytes(), frame.info.get("duration"))
                for frame in ImageSequence.Iterator(image)]


def run(cls, source: str, tmp_path, name: str = "work") -> str:
    context = make_context(source, str(tmp_path / name))
    return cls(context).run(source)


def chunk_types(path: str) -> list[bytes]:
    data = open(path, "rb").read()
    pos, types = 8, []
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("images")
    paths = {name: str(root / name) for name in (
        "photo.jpg", "small.jpg", "upright.jpg", "logo.png", "icon.gif", "anim.gif", "anim.png")}
    make_jpeg(paths["photo.jpg"])
    make_jpeg(paths["small.jpg"], size=(48, 40))
    make_jpeg(paths["upright.jpg"], orientation=1)
    make_png(paths["logo.png"])
    make_gif(paths["icon.gif"])
    make_animated_gif(paths["anim.gif"])
    make_apng(paths["anim.png"])
    data = open(paths["photo.jpg"], "rb").read()
    paths["truncated.jpg"] = str(root / "truncated.jpg")
    open(paths["truncated.jpg"], "wb").write(data[:len(data) * 2 // 3])
    paths["notanimage.png"] = str(root / "notanimage.png")
    open(paths["notanimage.png"], "w").write("<html>this is not a PNG</html>\n")
    paths["gif-named.jpg"] = str(root / "gif-named.jpg")
    shutil.copyfile(paths["icon.gif"], paths["gif-named.jpg"])
    return paths


@pytest.mark.parametrize("cls", ALL_VARIANTS, ids=lambda c: c.__name__)
def test_jpeg_lossless_and_metadata(cls, images, tmp_path):
    source = images["photo.jpg"]
    output = run(cls, source, tmp_path)
    assert os.path.basename(output) == "photo.jpg"
    assert output != source and os.path.getsize(output) < os.path.getsize(source)
    with Image.open(source) as before, Image.open(output) as after:
        assert before.tobytes() == after.tobytes(), "decoded pixels differ"
        assert after.info.get("icc_profile") == ICC, "the ICC profile must be kept in every variant"
        assert after.info.get("progressive") or after.info.get("progression")
        exif = after.getexif()
        assert exif.get(0x0112) == 6, "the orientation must be kept: browsers rotate by it"
        if cls in KEEPING:
            assert exif.get(0x010F) == "TestCamera"
            assert after.info.get("comment") == b"a JPEG comment"
            assert XMP in open(output, "rb").read()
        else:
            assert dict(exif) == {0x0112: 6}
            assert "comment" not in after.info
            assert XMP not in open(output, "rb").read()


def test_jpeg_upright_max_has_no_exif(images, tmp_path):
    output = run(image_optimizer.Max, images["upright.jpg"], tmp_path)
    with Image.open(output) as after:
        assert not after.getexif() and b"Exif\x00\x00" not in open(output, "rb").read()


@pytest.mark.parametrize("cls", [image_optimizer.Max, image_optimizer.KeepMetadata], ids=lambda c: c.__name__)
def test_small_jpeg(cls, images, tmp_path):
    source = images["small.jpg"]
    assert os.path.getsize(source) < image_optimizer.PROGRESSIVE_FROM_BYTES
    output = run(cls, source, tmp_path)
    assert os.path.getsize(output) <= os.path.getsize(source)
    with Image.open(source) as before, Image.open(output) as after:
        assert before.tobytes() == after.tobytes()
        assert after.info.get("icc_profile") == ICC


@pytest.mark.parametrize("cls", ALL_VARIANTS, ids=lambda c: c.__name__)
def test_png_lossless_and_chunks(cls, images, tmp_path):
    source = images["logo.png"]
    output = run(cls, source, tmp_path)
    assert os.path.basename(output) == "logo.png"
    assert os.path.getsize(output) < os.path.getsize(source)
    with Image.open(source) as before, Image.open(output) as after:
        assert before.convert("RGBA").tobytes() == after.convert("RGBA").tobytes()
        assert after.info.get("icc_profile") == ICC
    chunks = chunk_types(output)
    assert b"gAMA" in chunks or b"iCCP" in chunks  # oxipng may drop gAMA only when iCCP overrides it
    assert b"iCCP" in chunks
    if cls in KEEPING:
        assert b"tEXt" in chunks or b"zTXt" in chunks or b"iTXt" in chunks
        assert b"tIME" in chunks
    else:
        assert not {b"tEXt", b"zTXt", b"iTXt", b"tIME"} & set(chunks)


@pytest.mark.parametrize("cls", ALL_VARIANTS, ids=lambda c: c.__name__)
def test_apng_keeps_its_frames(cls, images, tmp_path):
    source = images["anim.png"]
    output = run(cls, source, tmp_path)
    assert os.path.getsize(output) <= os.path.getsize(source)
    assert frames_rgba(output) == frames_rgba(source)


@pytest.mark.parametrize("cls", ALL_VARIANTS, ids=lambda c: c.__name__)
def test_single_frame_gif(cls, images, tmp_path):
    source = images["icon.gif"]
    output = run(cls, source, tmp_path)
    assert os.path.getsize(output) <= os.path.getsize(source)
    with Image.open(source) as before, Image.open(output) as after:
        assert before.convert("RGBA").tobytes() == after.convert("RGBA").tobytes()
        if cls in RENAMING:
            assert os.path.basename(output) == "icon.png" and after.format == "PNG"
            if cls in KEEPING:
                assert after.info.get("Comment") == "a GIF comment"
            else:
                assert "Comment" not in after.info
        else:
            assert os.path.basename(output) == "icon.gif" and after.format == "GIF"


@pytest.mark.parametrize("cls", ALL_VARIANTS, ids=lambda c: c.__name__)
def test_animated_gif(cls, images, tmp_path):
    source = images["anim.gif"]
    output = run(cls, source, tmp_path)
    assert os.path.basename(output) == "anim.gif"
    assert os.path.getsize(output) <= os.path.getsize(source)
    assert frames_rgba(output) == frames_rgba(source)
    with Image.open(output) as after:
        assert after.format == "GIF" and after.n_frames == 4 and after.info.get("loop") == 0
        if shutil.which("gifsicle"):
            assert output != source
            assert (after.info.get("comment") == b"anim") == (cls in KEEPING)


def test_format_from_content_not_extension(images, tmp_path):
    """A GIF named .jpg is a GIF: converted to PNG (name from the file's stem)."""
    output = run(image_optimizer.Max, images["gif-named.jpg"], tmp_path)
    assert os.path.basename(output) == "gif-named.png"
    with Image.open(images["gif-named.jpg"]) as before, Image.open(output) as after:
        assert before.convert("RGBA").tobytes() == after.convert("RGBA").tobytes()


@pytest.mark.parametrize("name", ["truncated.jpg", "notanimage.png"])
@pytest.mark.parametrize("cls", ALL_VARIANTS, ids=lambda c: c.__name__)
def test_bad_files_pass_through_with_one_warning(cls, name, images, tmp_path, caplog):
    source = images[name]
    with caplog.at_level(logging.DEBUG, logger="fileconveyor"):
        output = run(cls, source, tmp_path)
    assert output == source
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and source in warnings[0].getMessage()


def test_truncated_png_and_gif(images, tmp_path, caplog):
    for name in ("logo.png", "anim.gif"):
        data = open(images[name], "rb").read()
        source = str(tmp_path / ("cut-" + name))
        open(source, "wb").write(data[:len(data) // 2])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fileconveyor"):
            assert run(image_optimizer.Max, source, tmp_path, "w-" + name) == source
        assert len(caplog.records) == 1


def test_never_larger(tmp_path):
    """An already optimal file passes through as it is."""
    source = str(tmp_path / "tiny.png")
    Image.new("L", (1, 1)).save(source)
    first = run(image_optimizer.Max, source, tmp_path, "w1")
    again = run(image_optimizer.Max, first, tmp_path, "w2")
    assert again == first


@pytest.mark.parametrize("cls", [image_optimizer.Max, image_optimizer.KeepFilename], ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", ["photo.jpg", "small.jpg", "logo.png", "icon.gif", "anim.gif"])
def test_hostile_names(cls, kind, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stem, ext = os.path.splitext(kind)
    source = str(tmp_path / (HOSTILE_STEM + ext))
    shutil.copyfile(images[kind], source)
    output = run(cls, source, tmp_path)
    assert os.path.basename(output).startswith(HOSTILE_STEM)
    assert os.path.dirname(output) == str(tmp_path / "work")
    assert not os.path.exists(tmp_path / "PWNED")
    assert [pixels for pixels, _ in frames_rgba(output)] == [pixels for pixels, _ in frames_rgba(source)]


def test_jpegtran_fallback(images, tmp_path, monkeypatch):
    """Without the mozjpeg package, jpegtran (Debian's libjpeg-turbo-progs) does the work."""
    if not shutil.which("jpegtran"):
        pytest.skip("jpegtran is not installed (scripts/deps/40-processors.sh installs it)")
    monkeypatch.setattr(image_optimizer, "_mozjpeg_available", lambda: False)
    for cls in (image_optimizer.Max, image_optimizer.KeepMetadata):
        output = run(cls, images["photo.jpg"], tmp_path, cls.__name__)
        with Image.open(images["photo.jpg"]) as before, Image.open(output) as after:
            assert before.tobytes() == after.tobytes()
            assert after.info.get("icc_profile") == ICC and after.getexif().get(0x0112) == 6
            assert (after.getexif().get(0x010F) == "TestCamera") == (cls in KEEPING)
    truncated = run(image_optimizer.Max, images["truncated.jpg"], tmp_path, "trunc")
    assert truncated == images["truncated.jpg"]


def test_png_work_does_not_hold_the_gil(tmp_path):
    """While a large PNG is optimised, another Python thread keeps running (oxipng runs in a worker
    process; in-process pyoxipng holds the GIL for the whole optimisation). Measured as the longest
    gap between two iterations of a ticking thread, against the optimisation's duration."""
    import threading
    import time
    source = str(tmp_path / "big.png")
    Image.effect_noise((1400, 1400), 50).convert("RGB").save(source, compress_level=0)
    run(image_optimizer.Max, _tiny_png(tmp_path), tmp_path, "warm")  # start a worker first
    stop = threading.Event()
    longest = [0.0]

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last)
            last = now
    thread = threading.Thread(target=tick)
    thread.start()
    started = time.perf_counter()
    try:
        run(image_optimizer.Max, source, tmp_path, "gil")
    finally:
        busy = time.perf_counter() - started
        stop.set()
        thread.join()
    assert busy > 0.2, "the image is too small to tell"
    assert longest[0] < busy / 2, (longest[0], busy)


def _tiny_png(tmp_path) -> str:
    path = str(tmp_path / "warm.png")
    Image.new("RGB", (8, 8), "red").save(path, compress_level=0)
    return path


def test_check_available():
    for cls in ALL_VARIANTS:
        cls.check_available()
