"""Processor benchmark (issue 4): prints figures, passes or fails nothing.

One run on a corpus it generates (images of varied content and sizes, large CSS and JS files):
* image optimisation: images/s and bytes saved, image_optimizer.Max beside the original's tools on
  the same files (jpegtran -copy none -optimize [-progressive], pngcrush -rem alla -reduce, and
  gifsicle -O2; single-frame GIFs: Pillow -> PNG + pngcrush, as the original's convert + pngcrush),
  both with one worker thread per core, per format and then all files, with CPU seconds (wall
  clock varies a lot on a shared machine);
* CSS URL rewriting: files/s and MB/s of link_updater.CSSURLUpdater beside a cssutils parse with
  validation on (what the original did before rewriting);
* minification: ratio and MB/s of minify.CSS/JS beside YUI Compressor (one JVM per file, as the
  processor runs it).

Install what it needs with bench/install_processors_bench.sh. Usage:
    python3 bench/bench_processors.py [--images 300] [--keep DIR] [--repeat 3] [--images-only]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from processors_corpus import make_css, make_images, make_js  # noqa: E402

from fileconveyor.processors import image_optimizer, link_updater, minify, yui_compressor  # noqa: E402
from fileconveyor.processors.base import ProcessorContext, ProcessorUnavailable  # noqa: E402

THREADS = os.cpu_count() or 1


def context(original: str, work: str, **extra) -> ProcessorContext:
    os.makedirs(work, exist_ok=True)
    return ProcessorContext(original_file=original, document_root=None, base_path=None, server="cdn",
                            working_dir=work, **extra)


def ours(path: str, work: str) -> int:
    return os.path.getsize(image_optimizer.Max(context(path, work)).run(path))


def original_tools(path: str, work: str) -> int:
    """What the original ran for this file (its table in original-spec 6.5), without a shell."""
    os.makedirs(work, exist_ok=True)
    out = os.path.join(work, "out")
    head = open(path, "rb").read(16)
    kind = image_optimizer.sniff_format(head)
    if kind == "jpeg":
        argv = ["jpegtran", "-copy", "none", "-optimize"]
        if os.path.getsize(path) >= 10240:
            argv.append("-progressive")
        subprocess.run(argv + ["-outfile", out, path], check=True, capture_output=True)
    elif kind == "png":
        subprocess.run(["pngcrush", "-q", "-rem", "alla", "-reduce", path, out], check=True, capture_output=True)
    else:
        from PIL import Image
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames == 1:
                tmp = os.path.join(work, "tmp.png")
                image.save(tmp)
        if frames == 1:
            subprocess.run(["pngcrush", "-q", "-rem", "alla", "-reduce", tmp, out], check=True, capture_output=True)
        else:
            with open(out, "wb") as handle:
                subprocess.run(["gifsicle", "-O2", path], check=True, stdout=handle)
    return os.path.getsize(out)


def _format_of(path: str) -> str:
    """'jpeg', 'png', 'gif' (one frame: ours converts it to PNG) or 'gif-anim'."""
    kind = image_optimizer.sniff_format(open(path, "rb").read(16)) or "?"
    if kind == "gif":
        from PIL import Image
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                return "gif-anim"
    return kind


def _cpu_seconds() -> float:
    """CPU of this process and of its reaped children (tools, and the PNG workers once stopped)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _timed_pass(function, paths: list[str], scratch: str) -> tuple[float, float, list[int]]:
    """(wall s, CPU s, output sizes) of one pass over `paths` with THREADS worker threads."""
    shutil.rmtree(scratch, ignore_errors=True)
    cpu, started = _cpu_seconds(), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        sizes = list(pool.map(lambda ip: function(ip[1], os.path.join(scratch, str(ip[0]))),
                              enumerate(paths)))
    image_optimizer.shutdown_workers()  # inside the pass: worker start-up and CPU are counted
    return time.perf_counter() - started, _cpu_seconds() - cpu, sizes


def bench_images(paths: list[str], scratch: str, repeat: int) -> None:
    """Per format, then all: images/s (wall, best of `repeat`), CPU seconds and bytes saved.

    Other work on a shared machine makes wall-clock figures vary by 2x from run to run: compare
    the CPU seconds (this process, the tools it ran and the PNG worker processes) first."""
    total = sum(os.path.getsize(p) for p in paths)
    by_format: dict[str, list[str]] = {}
    for p in paths:
        by_format.setdefault(_format_of(p), []).append(p)
    print(f"\n== Images: {len(paths)} files "
          f"({', '.join(f'{len(v)} {k}' for k, v in sorted(by_format.items()))}), "
          f"{total / 1e6:.1f} MB, {THREADS} threads, best of {repeat}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for name, function in (("image_optimizer.Max", ours), ("original's tools", original_tools)):
        print(f"  {name}")
        sums = [0.0, 0.0, 0, 0, 0]  # wall, cpu, in, out, larger
        for kind, group in sorted(by_format.items()) + [("all", paths)]:
            runs = [_timed_pass(function, group, os.path.join(scratch, name[:5]))
                    for _ in range(repeat)]
            wall = min(r[0] for r in runs)
            cpu = min(r[1] for r in runs)
            sizes = runs[0][2]
            before = sum(os.path.getsize(p) for p in group)
            after = sum(sizes)
            larger = sum(1 for p, s in zip(group, sizes) if s > os.path.getsize(p))
            print(f"    {kind:9s} {len(group):4d} files {len(group) / wall:7.1f} images/s "
                  f"{wall:6.2f} s  CPU {cpu:6.2f} s  saved {before - after:9d} B "
                  f"({100 * (before - after) / before:4.1f} %)  larger than input: {larger}"
                  f"  [load {os.getloadavg()[0]:.1f}]")


def bench_css(css_files: list[str], scratch: str) -> None:
    size = sum(os.path.getsize(p) for p in css_files)
    urls: dict[str, str] = {}

    def synced(path: str) -> str | None:
        return urls.setdefault(path, "https://cdn.example.test/" + os.path.basename(path))

    print(f"\n== CSS URL rewriting: {len(css_files)} files, {size / 1e6:.1f} MB")
    rounds = 3
    started = time.perf_counter()
    for r in range(rounds):
        for i, path in enumerate(css_files):
            link_updater.CSSURLUpdater(context(path, os.path.join(scratch, f"css{r}-{i}"),
                                               synced_url=synced)).run(path)
    elapsed = (time.perf_counter() - started) / rounds
    print(f"  CSSURLUpdater          {len(css_files) / elapsed:7.2f} files/s  {size / 1e6 / elapsed:7.2f} MB/s")
    try:
        import cssutils
    except ImportError:
        print("  cssutils               not installed (bench/install_processors_bench.sh)")
        return
    import logging
    cssutils.log.setLevel(logging.CRITICAL)
    parser = cssutils.CSSParser(validate=True, raiseExceptions=False)
    # cssutils is ~200x slower: the smallest file only, or this would take minutes.
    path = css_files[0]
    started = time.perf_counter()
    sheet = parser.parseFile(path)
    list(cssutils.getUrls(sheet))
    sheet.cssText  # noqa: B018 -- the original serialised the sheet back
    elapsed = time.perf_counter() - started
    print(f"  cssutils (validate on) {1 / elapsed:7.2f} files/s  {os.path.getsize(path) / 1e6 / elapsed:7.2f} MB/s"
          f"  (parse + getUrls + cssText, {os.path.basename(path)} only)")


def bench_minify(files: list[str], scratch: str) -> None:
    print(f"\n== Minification")
    yui_ok = True
    try:
        yui_compressor.YUICompressor.check_available()
    except ProcessorUnavailable:
        yui_ok = False
    for path in files:
        size = os.path.getsize(path)
        ext = os.path.splitext(path)[1]
        candidates = [("minify." + ext[1:].upper(), minify.CSS if ext == ".css" else minify.JS)]
        if yui_ok:
            candidates.append(("YUICompressor", yui_compressor.YUICompressor))
        for name, cls in candidates:
            started = time.perf_counter()
            out = cls(context(path, os.path.join(scratch, "min-" + name + os.path.basename(path)))).run(path)
            elapsed = time.perf_counter() - started
            print(f"  {os.path.basename(path):10s} {size / 1e6:5.2f} MB  {name:14s} "
                  f"ratio {os.path.getsize(out) / size:5.3f}  {size / 1e6 / elapsed:8.2f} MB/s  ({elapsed * 1000:7.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--keep", help="generate the corpus here and keep it; an image corpus already "
                        "there is reused (Pillow's noise is not seeded, so a new one differs a little)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="image passes per format; the best wall and CPU figures are printed")
    parser.add_argument("--images-only", action="store_true", help="skip the CSS and JS parts")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="fc-bench-processors-")
    try:
        started = time.perf_counter()
        image_dir = os.path.join(root, "img")
        if args.keep and os.path.isdir(image_dir) and len(os.listdir(image_dir)) == args.images:
            images = sorted(os.path.join(image_dir, name) for name in os.listdir(image_dir))
        else:
            images = make_images(image_dir, args.images)
        os.makedirs(os.path.join(root, "css"), exist_ok=True)
        os.makedirs(os.path.join(root, "js"), exist_ok=True)
        css = [os.path.join(root, "css", f"site{i}.css") for i in range(3)]
        for i, path in enumerate(css):
            make_css(path, 2000 * (i + 1), args.images)
        js = [os.path.join(root, "js", f"app{i}.js") for i in range(2)]
        for i, path in enumerate(js):
            make_js(path, 1500 * (i + 1))
        print(f"corpus ready in {time.perf_counter() - started:.1f} s at {root}")
        scratch = os.path.join(root, "scratch")
        bench_images(images, scratch, args.repeat)
        if not args.images_only:
            bench_css(css, scratch)
            bench_minify(css[:2] + js, scratch)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
