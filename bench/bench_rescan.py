"""Rescan speed and memory of the path index: first scan and rescan of an unchanged tree, beside `find`.

    python3 bench/bench_rescan.py [--files 100000] [--per-dir 100] [--dir /tmp/somewhere]

Each phase runs in a fresh Python subprocess, through the monitor as the daemon runs it (a
`PollingMonitor` whose first pass is the start-up scan; the callback only counts events), so its
peak RSS (`ru_maxrss`) is not left over from an earlier phase. Linux carries the spawning
process's high-water mark across exec into `ru_maxrss`, so this script keeps its own RSS small (it
streams `find`'s output), and the scan's own peak is measured too: the high-water mark is reset (`/proc/self/clear_refs`, Linux) once the monitor is created, "base" is
the RSS then, and "scan +" is VmHWM at the end minus base (without /proc: ru_maxrss minus base).
"cpu" is the process's user+system time over the scan (steadier than wall time on a busy
machine). The tree is listed once by `find` before the first phase (warm dentry cache for all).

`--against DIR` compares with another version of the code (e.g. `git archive HEAD~3 fileconveyor
| tar -x -C DIR`): each phase runs for both, alternately, on the same tree, each with its own index.

Prints figures; asserts nothing (benchmarks are figures, not pass/fail timings).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(root: str, files: int, per_dir: int) -> None:
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir // 100}", f"d{i // per_dir}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.txt"), "w") as f:
            f.write("x")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> float:
    """Reset the RSS high-water mark (VmHWM) where Linux allows it; the RSS now."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mib("VmRSS") or _rss_mib()


def phase(root: str, index: str) -> dict[str, float]:
    """One monitor pass over `root` with index `index`, in this (fresh) process."""
    from fileconveyor.fsmonitor.polling import PollingMonitor

    counted = [0]

    def callback(batch: list) -> None:  # type: ignore[type-arg]
        counted[0] += len(batch)

    monitor = PollingMonitor(callback, index, (), interval=3600.0)
    base = _reset_peak()
    monitor.add_tree(root)
    cpu = _cpu()
    started = time.perf_counter()
    monitor.start()
    while not monitor.is_idle:  # a benchmark may poll: nothing here is a test's wait
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    cpu = _cpu() - cpu
    scan_peak = _status_mib("VmHWM") or _rss_mib()
    monitor.stop()
    return {"seconds": elapsed, "cpu": cpu, "events": counted[0], "base_mib": base,
            "scan_peak_mib": scan_peak, "peak_mib": _rss_mib()}


def run_phase(code_dir: str, root: str, index: str) -> dict[str, float]:
    """`phase` in a fresh interpreter that imports fileconveyor from `code_dir`."""
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[2], sys.argv[1]]; "
        "import bench_rescan; print(json.dumps(bench_rescan.phase(sys.argv[3], sys.argv[4])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), code_dir, root, index],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--rescans", type=int, default=3, help="rescan repetitions (the best is printed too)")
    parser.add_argument("--against", metavar="DIR", help="also run each phase with the fileconveyor package in DIR")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fc-bench-", dir=args.dir)
    try:
        root = os.path.join(base, "tree")
        index = os.path.join(base, "fsmonitor.db")
        started = time.perf_counter()
        build(root, args.files, args.per_dir)
        print(f"created {args.files} files in {time.perf_counter() - started:.2f} s under {root}")
        started = time.perf_counter()
        with subprocess.Popen(["find", root, "-type", "f"], stdout=subprocess.PIPE) as find:
            listing = find.stdout
            assert listing is not None
            found = sum(chunk.count(b"\n") for chunk in iter(lambda: listing.read(1 << 16), b""))
        print(f"find -type f: {found} files in {time.perf_counter() - started:.2f} s")

        versions = {"this": REPO, **({"against": os.path.abspath(args.against)} if args.against else {})}
        width = max(map(len, versions)) if args.against else 0

        def show(label: str, version: str, r: dict[str, float]) -> None:
            tag = f"[{version:{width}}] " if args.against else ""
            print(f"{tag}{label}: {r['events']:.0f} events in {r['seconds']:.2f} s, cpu {r['cpu']:.2f} s "
                  f"({args.files / r['seconds']:,.0f} files/s); peak RSS {r['peak_mib']:.1f} MiB "
                  f"(base {r['base_mib']:.1f}, scan +{r['scan_peak_mib'] - r['base_mib']:.1f})")

        results: dict[str, list[dict[str, float]]] = {v: [] for v in versions}
        for version, code_dir in versions.items():
            show("first scan (empty index)", version, run_phase(code_dir, root, os.path.join(base, f"{version}.db")))
        for _ in range(args.rescans):
            for version, code_dir in versions.items():
                r = run_phase(code_dir, root, os.path.join(base, f"{version}.db"))
                results[version].append(r)
                show("rescan of the unchanged tree", version, r)
        for version, runs in results.items():
            if len(runs) > 1:
                wall = sorted(r["seconds"] for r in runs)
                cpu = sorted(r["cpu"] for r in runs)
                print(f"{version}: rescan wall best {wall[0]:.2f} s, median {wall[len(wall) // 2]:.2f} s; "
                      f"cpu best {cpu[0]:.2f} s, median {cpu[len(cpu) // 2]:.2f} s; "
                      f"peak RSS {max(r['peak_mib'] for r in runs):.1f} MiB "
                      f"(scan +{max(r['scan_peak_mib'] - r['base_mib'] for r in runs):.1f})")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
