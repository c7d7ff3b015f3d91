"""Rescan speed and memory of the path index: first scan and rescan of an unchanged tree, beside `find`.

    python3 bench/bench_rescan.py [--files 100000] [--per-dir 100] [--dir /tmp/somewhere]

Each phase runs in a fresh Python subprocess, through the monitor as the daemon runs it (a
`PollingMonitor` whose first pass is the start-up scan; the callback only counts events), so its
peak RSS (`ru_maxrss`) is the scan's own and not left over from building the tree or from an
earlier phase. "base" is the subprocess's RSS once the monitor is created, before the scan: the
difference is what the scan itself held. The tree is listed once by `find` before the first phase
(warm dentry cache for every contender).

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
sys.path.insert(0, REPO)


def build(root: str, files: int, per_dir: int) -> None:
    for i in range(files):
        d = os.path.join(root, f"d{i // per_dir // 100}", f"d{i // per_dir}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.txt"), "w") as f:
            f.write("x")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def phase(root: str, index: str) -> dict[str, float]:
    """One monitor pass over `root` with index `index`, in this (fresh) process."""
    from fileconveyor.fsmonitor.polling import PollingMonitor

    counted = [0]

    def callback(batch: list) -> None:  # type: ignore[type-arg]
        counted[0] += len(batch)

    monitor = PollingMonitor(callback, index, (), interval=3600.0)
    base = _rss_mib()
    monitor.add_tree(root)
    started = time.perf_counter()
    monitor.start()
    while not monitor.is_idle:  # a benchmark may poll: nothing here is a test's wait
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    monitor.stop()
    return {"seconds": elapsed, "events": counted[0], "base_mib": base, "peak_mib": _rss_mib()}


def run_phase(root: str, index: str) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]); "
        "import bench_rescan; print(json.dumps(bench_rescan.phase(sys.argv[3], sys.argv[4])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), REPO, root, index],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--rescans", type=int, default=3, help="rescan repetitions (the best is printed too)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fc-bench-", dir=args.dir)
    try:
        root = os.path.join(base, "tree")
        index = os.path.join(base, "fsmonitor.db")
        started = time.perf_counter()
        build(root, args.files, args.per_dir)
        print(f"created {args.files} files in {time.perf_counter() - started:.2f} s under {root}")
        started = time.perf_counter()
        found = subprocess.run(["find", root, "-type", "f"], capture_output=True, check=True).stdout.count(b"\n")
        print(f"find -type f: {found} files in {time.perf_counter() - started:.2f} s")

        def show(label: str, r: dict[str, float]) -> None:
            print(f"{label}: {r['events']:.0f} events in {r['seconds']:.2f} s "
                  f"({args.files / r['seconds']:,.0f} files/s); peak RSS {r['peak_mib']:.1f} MiB "
                  f"(base {r['base_mib']:.1f}, scan +{r['peak_mib'] - r['base_mib']:.1f})")

        show("first scan (empty index)", run_phase(root, index))
        results = [run_phase(root, index) for _ in range(args.rescans)]
        for r in results:
            show("rescan of the unchanged tree", r)
        if len(results) > 1:
            print(f"rescan best {min(r['seconds'] for r in results):.2f} s, "
                  f"median {sorted(r['seconds'] for r in results)[len(results) // 2]:.2f} s")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
