"""Rescan speed of the path index: first scan and rescan of an unchanged tree, beside `find`.

    python3 bench/bench_rescan.py [--files 100000] [--per-dir 100] [--dir /tmp/somewhere]

Prints figures; asserts nothing (benchmarks are figures, not pass/fail timings).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fileconveyor.fsmonitor.pathscanner import PathScanner, UndecodableNames, scan_tree  # noqa: E402


def build(root: str, files: int, per_dir: int) -> None:
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir // 100}", f"d{i // per_dir}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.txt"), "w") as f:
            f.write("x")


def timed_scan(scanner: PathScanner, root: str) -> tuple[float, int]:
    started = time.perf_counter()
    events = 0
    ops = []
    for chunk_events, chunk_ops in scan_tree(root, scanner.known_below(root), frozenset(), UndecodableNames()):
        events += len(chunk_events)
        ops.extend(chunk_ops)
        if len(ops) >= 5000:  # what the monitor does: one transaction per delivered batch
            scanner.apply(ops)
            ops = []
    scanner.apply(ops)
    return time.perf_counter() - started, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fc-bench-", dir=args.dir)
    try:
        root = os.path.join(base, "tree")
        started = time.perf_counter()
        build(root, args.files, args.per_dir)
        print(f"created {args.files} files in {time.perf_counter() - started:.2f} s under {root}")
        started = time.perf_counter()
        found = subprocess.run(["find", root, "-type", "f"], capture_output=True, check=True).stdout.count(b"\n")
        print(f"find -type f: {found} files in {time.perf_counter() - started:.2f} s")
        scanner = PathScanner(os.path.join(base, "fsmonitor.db"))
        first, events = timed_scan(scanner, root)
        print(f"first scan (empty index): {events} CREATED in {first:.2f} s ({events / first:,.0f} files/s)")
        again, events = timed_scan(scanner, root)
        print(f"rescan of the unchanged tree: {events} events in {again:.2f} s ({args.files / again:,.0f} files/s)")
        scanner.close()
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
