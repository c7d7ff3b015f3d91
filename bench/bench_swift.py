"""Cloud Files / Swift initial-sync benchmark: File Conveyor's CloudFilesTransporter beside rclone's
swift backend, in one run, against one real all-in-one Swift on loopback (the test suite's, from
tests/servers/swift.py). The original's issues #17, #63 (15 files a minute) and #89 (the
bandwidth taken per small file) are what it answers. Figures are printed, never asserted.

Two data sets: many small files (4 KiB) and a few large ones (20 MiB). Each tool gets a fresh
container and the same number of parallel transfers (--workers: our side runs one transporter
per thread, as the daemon's per-server pool does; rclone gets --transfers). CPU is the process's
own (ours) or its children's (rclone) user+system time. After each upload the container is
listed, so a tool that "finishes" without storing everything shows it.

Install the tools first: bash bench/install_swift_bench.sh (Swift's servers come from
scripts/deps/33-swift.sh).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import swiftclient.client  # noqa: E402

from fileconveyor.transporters.base import TransporterContext  # noqa: E402
from fileconveyor.transporters.cloudfiles import CloudFilesTransporter  # noqa: E402
from tests.servers.swift import SwiftServer, swift_unavailable_reason  # noqa: E402

MiB = 1024 * 1024


def make_files(root: pathlib.Path, count: int, size: int) -> list[pathlib.Path]:
    root.mkdir(parents=True)
    files = []
    for i in range(count):
        path = root / f"d{i // 500:03}" / f"f{i:05}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(size))
        files.append(path)
    return files


def cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def stored(server: SwiftServer, container: str) -> tuple[int, int]:
    """(objects, bytes) in `container`, from one listing."""
    conn = swiftclient.client.Connection(authurl=server.auth_url, user=server.user, key=server.key,
                                         auth_version="1", retries=0)
    try:
        headers, _objects = conn.get_container(container, limit=1)
        return int(headers.get("x-container-object-count", 0)), int(headers.get("x-container-bytes-used", 0))
    finally:
        conn.close()


def run_ours(server: SwiftServer, container: str, root: pathlib.Path, files: list[pathlib.Path],
             workers: int, state: pathlib.Path) -> tuple[float, float]:
    local = threading.local()
    transporters: list[CloudFilesTransporter] = []
    lock = threading.Lock()

    def upload(path: pathlib.Path) -> None:
        transporter = getattr(local, "transporter", None)
        if transporter is None:
            transporter = CloudFilesTransporter(server.settings(container),
                                                TransporterContext("bench", str(state)))
            local.transporter = transporter
            with lock:
                transporters.append(transporter)
        transporter.upload(str(path), path.relative_to(root).as_posix())

    cpu_before, started = cpu(resource.RUSAGE_SELF), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in concurrent.futures.as_completed([pool.submit(upload, f) for f in files]):
            future.result()
    elapsed, used = time.perf_counter() - started, cpu(resource.RUSAGE_SELF) - cpu_before
    for transporter in transporters:
        transporter.close()
    return elapsed, used


def run_rclone(server: SwiftServer, container: str, root: pathlib.Path, workers: int) -> tuple[float, float]:
    env = {**os.environ, "RCLONE_CONFIG_BENCH_TYPE": "swift", "RCLONE_CONFIG_BENCH_USER": server.user,
           "RCLONE_CONFIG_BENCH_KEY": server.key, "RCLONE_CONFIG_BENCH_AUTH": server.auth_url,
           "RCLONE_CONFIG_BENCH_AUTH_VERSION": "1"}
    argv = ["rclone", "copy", str(root), f"bench:{container}", "--transfers", str(workers),
            "--checkers", str(workers), "--config", "/dev/null"]
    cpu_before, started = cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started, cpu(resource.RUSAGE_CHILDREN) - cpu_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000, help="number of 4 KiB files")
    parser.add_argument("--large", type=int, default=10, help="number of 20 MiB files")
    parser.add_argument("--workers", type=int, default=8, help="parallel transfers for each tool")
    parser.add_argument("--dir", help="work directory (default: a new temporary one)")
    args = parser.parse_args()
    reason = swift_unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if shutil.which("rclone") is None:
        print("cannot run: rclone is not installed (bash bench/install_swift_bench.sh)", file=sys.stderr)
        return 2
    base = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="bench-swift-"))
    server = SwiftServer(base / "swift")
    server.start()
    try:
        sets = {"small": make_files(base / "small", args.small, 4096),
                "large": make_files(base / "large", args.large, 20 * MiB)}
        rclone_version = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.split("\n")[0]
        print(f"Swift all-in-one on loopback; {args.workers} parallel transfers each; {rclone_version}")
        print(f"{'data set':8} {'tool':12} {'files':>6} {'MB':>8} {'seconds':>8} {'files/s':>8} {'MB/s':>7} "
              f"{'CPU s':>6} {'stored':>7}")
        for name, files in sets.items():
            total = sum(f.stat().st_size for f in files) / 1e6
            for tool in ("fileconveyor", "rclone"):
                container = f"bench-{tool}-{uuid.uuid4().hex[:8]}"
                if tool == "fileconveyor":
                    elapsed, used = run_ours(server, container, base / name, files, args.workers,
                                             base / "state")
                else:
                    elapsed, used = run_rclone(server, container, base / name, args.workers)
                objects, _bytes = stored(server, container)
                print(f"{name:8} {tool:12} {len(files):>6} {total:>8.1f} {elapsed:>8.2f} "
                      f"{len(files) / elapsed:>8.0f} {total / elapsed:>7.1f} {used:>6.2f} {objects:>7}")
    finally:
        server.stop()
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
