"""S3 initial-sync benchmark: File Conveyor's S3Transporter beside aws s3 sync, s5cmd and rclone.

One run, one local S3 server (s3rver; moto is the bottleneck for small objects at 150-300 PUTs/s),
two data sets (5,000 files of 4 KiB; 20 files of 20 MiB), two networks (loopback; loopback through
a delaying TCP proxy that adds a 20 ms round trip, since this kernel has no netem). Every tool
gets a fresh bucket and its default settings except where noted in the output. Figures are
printed, never asserted.

Our side drives S3Transporter directly from a thread pool of --workers threads, one transporter
per thread, as the daemon's per-server pool will (that pool is being built in the arbitrator;
this measures the transporter, not the queue/monitor around it).

Install the tools first: bash bench/install_s3_bench.sh
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import botocore.config  # noqa: E402

from fileconveyor.transporters.base import TransporterContext  # noqa: E402
from fileconveyor.transporters.s3 import S3Transporter  # noqa: E402

KEY = SECRET = "S3RVER"
S3RVER = os.environ.get("S3RVER", "/tmp/fileconveyor-bench-node/node_modules/.bin/s3rver")
TOOL_TIMEOUT = 900


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # poll interval of a bounded wait
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def make_data(root: pathlib.Path) -> dict[str, pathlib.Path]:
    sets = {"5000 x 4 KiB": (root / "small", 5000, 4096),
            "20 x 20 MiB": (root / "large", 20, 20 * 1024 * 1024)}
    for directory, count, size in sets.values():
        if directory.exists() and len(list(directory.rglob("*"))) >= count:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = directory / f"d{i % 50:02d}" / f"file-{i:05d}.bin"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(size))
    return {name: spec[0] for name, spec in sets.items()}


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                        config=botocore.config.Config(s3={"addressing_style": "path"}))


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 refuses it
    env.update({"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"})
    return env


def run_tool(argv: list[str]) -> float:
    """Run a CLI; return its CPU seconds (user + system of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=tool_env(), capture_output=True, timeout=TOOL_TIMEOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ours(source: pathlib.Path, endpoint: str, bucket: str, workers: int,
         settings: dict[str, str] | None = None) -> float:
    files = sorted(p for p in source.rglob("*") if p.is_file())
    local = threading.local()
    made: list[S3Transporter] = []
    lock = threading.Lock()
    state = tempfile.mkdtemp(prefix="fc-bench-state-")

    def upload(path: pathlib.Path) -> None:
        transporter = getattr(local, "transporter", None)
        if transporter is None:
            transporter = S3Transporter(
                {"bucket_name": bucket, "endpoint_url": endpoint, "access_key_id": KEY,
                 "secret_access_key": SECRET, **(settings or {})},
                TransporterContext("bench", state))
            local.transporter = transporter
            with lock:
                made.append(transporter)
        transporter.upload(str(path), str(path.relative_to(source)))

    cpu = time.process_time()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(upload, path) for path in files]:
            future.result()
    cpu = time.process_time() - cpu
    for transporter in made:
        transporter.close()
    shutil.rmtree(state, ignore_errors=True)
    return cpu


def tools(workers: int, settings: dict[str, str]
          ) -> dict[str, Callable[[pathlib.Path, str, str], float]]:
    shown = "".join(f" {k}={v}" for k, v in settings.items())
    return {
        f"fileconveyor S3Transporter ({workers} threads{shown})":
            lambda src, ep, b: ours(src, ep, b, workers, settings),
        "aws s3 sync (defaults: 10 requests)": lambda src, ep, b: run_tool(
            ["aws", "s3", "sync", str(src), f"s3://{b}", "--endpoint-url", ep,
             "--only-show-errors"]),
        "s5cmd sync (defaults: 256 workers)": lambda src, ep, b: run_tool(
            ["s5cmd", "--endpoint-url", ep, "sync", f"{src}/", f"s3://{b}/"]),
        "rclone sync (defaults: 4 transfers)": lambda src, ep, b: run_tool(
            ["rclone", "sync", str(src), f":s3:{b}", "--s3-provider", "Other",
             "--s3-endpoint", ep, "--s3-access-key-id", KEY, "--s3-secret-access-key", SECRET,
             "--s3-force-path-style", "--s3-no-check-bucket"]),
        f"rclone sync (--transfers {workers} --checkers {workers})": lambda src, ep, b: run_tool(
            ["rclone", "sync", str(src), f":s3:{b}", "--s3-provider", "Other",
             "--s3-endpoint", ep, "--s3-access-key-id", KEY, "--s3-secret-access-key", SECRET,
             "--s3-force-path-style", "--s3-no-check-bucket", "--transfers", str(workers),
             "--checkers", str(workers)]),
    }


def verify(client, bucket: str, source: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    expected = {str(p.relative_to(source)): p.stat().st_size
                for p in source.rglob("*") if p.is_file()}
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    if found != expected:
        raise RuntimeError(f"{bucket}: {len(found)} objects, expected {len(expected)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/fileconveyor-bench-data")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--only", default="", help="run only tools whose name contains this")
    parser.add_argument("--data-set", default="", help="run only data sets whose name contains "
                        "this (e.g. MiB)")
    parser.add_argument("--network", default="", help="run only networks whose name contains "
                        "this (loopback, RTT)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an S3Transporter setting for our side (repeatable), e.g. "
                        "multipart_concurrency=2")
    args = parser.parse_args()

    settings = dict(item.split("=", 1) for item in args.setting)
    data = make_data(pathlib.Path(args.data))
    store = tempfile.mkdtemp(prefix="fc-bench-s3rver-")
    port = free_port()
    env = {**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"}
    server = subprocess.Popen([S3RVER, "-d", store, "-p", str(port), "-a", "127.0.0.1",
                               "--silent"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    proxy: subprocess.Popen[bytes] | None = None
    try:
        wait_for_port(port)
        proxy_port = free_port()
        # The proxy runs in its own process so its CPU is not charged to any tool.
        proxy = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "s3_delay_proxy.py"), str(proxy_port),
             str(port), str(args.rtt_ms / 2000)])
        wait_for_port(proxy_port)
        networks = {"loopback": f"http://127.0.0.1:{port}",
                    f"+{args.rtt_ms:g} ms RTT (proxy)": f"http://127.0.0.1:{proxy_port}"}
        admin = s3_client(networks["loopback"])
        print(f"server: s3rver on 127.0.0.1:{port}; data in {args.data}; "
              f"CPU = user+sys of the client only (server and proxy excluded)")
        print(f"{'network':<22} {'data':<14} {'tool':<44} {'s':>8} {'files/s':>9} "
              f"{'MB/s':>8} {'CPU s':>7}")
        for network, endpoint in networks.items():
            if args.network not in network:
                continue
            for name, source in data.items():
                if args.data_set not in name:
                    continue
                total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
                count = sum(1 for p in source.rglob("*") if p.is_file())
                for tool, run in tools(args.workers, settings).items():
                    if args.only and args.only not in tool:
                        continue
                    bucket = f"bench-{uuid.uuid4().hex[:12]}"
                    admin.create_bucket(Bucket=bucket)
                    started = time.monotonic()
                    try:
                        cpu = run(source, endpoint, bucket)
                        wall = time.monotonic() - started
                        verify(admin, bucket, source)
                    except Exception as error:  # report and go on with the next tool
                        print(f"{network:<22} {name:<14} {tool:<44} failed: {error}")
                        continue
                    print(f"{network:<22} {name:<14} {tool:<44} {wall:8.2f} "
                          f"{count / wall:9.1f} {total / wall / 1e6:8.1f} {cpu:7.2f}",
                          flush=True)
    finally:
        for process in (proxy, server):
            if process is not None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
