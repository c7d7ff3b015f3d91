"""Benchmark: File Conveyor's SFTPTransporter against `rclone sync` over SFTP, same sshd.

Initial sync of 5,000 files of 4 KiB and of 20 files of 20 MiB to a fresh directory, by
  * a thread pool of N workers, each with its own SFTPTransporter (the daemon's model: one
    connection per worker), and
  * `rclone sync` with --transfers N and --sftp-disable-hashcheck (otherwise rclone runs md5sum
    over SSH for every file, which is not what we compare),
on loopback directly and again through a TCP proxy that delays every chunk by half the round trip
in each direction (emulated 20 ms RTT: the kernel here has no netem). Prints files/s, MB/s and CPU
seconds (this process for ours, the rclone child for rclone; sshd's CPU is not counted for either).
Figures, never assertions. Install: bench/install_sftp_bench.sh.

    python -m bench.bench_sftp [--workers 8] [--small 5000] [--big 20] [--rtt-ms 20]
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fileconveyor.transporters.base import TransporterContext  # noqa: E402
from fileconveyor.transporters.sftp import SFTPTransporter  # noqa: E402
from tests.servers._loopback import (  # noqa: E402
    LOOPBACK,
    free_port,
    port_accepts,
    require_loopback,
    wait_until,
)
from tests.servers.sshd import SSHServer, sshd_unavailable_reason  # noqa: E402

MiB = 1024 * 1024


def _serve_delayed(listen_port: int, target_port: int, one_way: float) -> None:
    """The proxy process: pumps both directions, each chunk released `one_way` s after arrival."""
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                # The emulated one-way latency itself (not a wait for a condition).
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                chunk = await reader.read(256 * 1024)
                await queue.put((loop.time() + one_way, chunk))
                if not chunk:
                    break
        except ConnectionError:
            await queue.put((0.0, b""))
        await sender

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(handle, LOOPBACK, listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class DelayProxy:
    """TCP proxy on loopback adding `one_way` seconds to every chunk in each direction, in a
    process of its own so that its CPU time is not counted as ours."""

    def __init__(self, target_port: int, one_way: float) -> None:
        self.port = free_port()
        self.process = multiprocessing.Process(
            target=_serve_delayed, args=(self.port, target_port, one_way), daemon=True)
        self.process.start()
        wait_until(lambda: port_accepts(LOOPBACK, self.port), 10, "the delay proxy")

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)


def make_tree(root: pathlib.Path, count: int, size: int) -> None:
    root.mkdir(parents=True)
    block = os.urandom(size)
    for index in range(count):
        # 100 files per directory, as a web root would have.
        path = root / f"d{index // 100:03d}" / f"f{index:05d}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(block[index % 251:] + block[:index % 251])


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def known_hosts_for(server: SSHServer, port: int, state: pathlib.Path) -> pathlib.Path:
    """known_hosts naming the port actually connected to (the delay proxy's, when used)."""
    path = state / "known_hosts"
    path.write_text(f"[{server.host}]:{port} " + server.host_key_line.split(" ", 1)[1] + "\n")
    return path


def run_ours(server: SSHServer, port: int, source: pathlib.Path, dest: pathlib.Path,
             workers: int, state: pathlib.Path) -> tuple[float, float]:
    files = sorted(p for p in source.rglob("*") if p.is_file())
    settings = {**server.settings(dest), "port": str(port),
                "known_hosts": str(known_hosts_for(server, port, state))}
    context = TransporterContext(server_name="bench", state_dir=str(state), timeout=60.0)
    local = threading.local()
    made: list[SFTPTransporter] = []
    lock = threading.Lock()

    def upload(path: pathlib.Path) -> None:
        transporter = getattr(local, "transporter", None)
        if transporter is None:
            transporter = local.transporter = SFTPTransporter(settings, context)
            with lock:
                made.append(transporter)
        transporter.upload(str(path), path.relative_to(source).as_posix())

    cpu, start = cpu_self(), time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(upload, path) for path in files]:
            future.result()
    elapsed, used = time.monotonic() - start, cpu_self() - cpu
    for transporter in made:
        transporter.close()
    return elapsed, used


def run_rclone(server: SSHServer, port: int, source: pathlib.Path, dest: pathlib.Path,
               workers: int, state: pathlib.Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({
        "RCLONE_CONFIG_BENCH_TYPE": "sftp", "RCLONE_CONFIG_BENCH_HOST": server.host,
        "RCLONE_CONFIG_BENCH_PORT": str(port), "RCLONE_CONFIG_BENCH_USER": server.user,
        "RCLONE_CONFIG_BENCH_KEY_FILE": str(server.client_key),
        "RCLONE_CONFIG_BENCH_KNOWN_HOSTS_FILE": str(known_hosts_for(server, port, state)),
    })
    argv = ["rclone", "--config", str(state / "rclone.conf"), "sync", str(source),
            f"bench:{dest}", "--transfers", str(workers), "--checkers", str(workers),
            "--sftp-disable-hashcheck", "--sftp-concurrency", "64", "-q"]
    cpu, start = cpu_children(), time.monotonic()
    subprocess.run(argv, env=env, check=True, timeout=3600)
    return time.monotonic() - start, cpu_children() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="0 skips the delayed runs")
    args = parser.parse_args()
    reason = sshd_unavailable_reason()
    if reason or not shutil.which("rclone"):
        sys.exit(f"cannot run: {reason or 'rclone not installed'} (bench/install_sftp_bench.sh)")
    work = pathlib.Path(tempfile.mkdtemp(prefix="fc-bench-sftp-"))
    server = SSHServer(work / "sshd")
    server.start()
    proxy = DelayProxy(server.port, args.rtt_ms / 2000) if args.rtt_ms else None
    try:
        sets = [("5000 x 4 KiB" if args.small == 5000 else f"{args.small} x 4 KiB",
                 work / "small", args.small, 4096),
                (f"{args.big} x 20 MiB", work / "big", args.big, 20 * MiB)]
        for _label, path, count, size in sets:
            make_tree(path, count, size)
        links = [("loopback", server.port)]
        if proxy:
            links.append((f"{args.rtt_ms:g} ms RTT", proxy.port))
        print(f"SFTP initial sync, {args.workers} workers/transfers, sshd on loopback")
        print(f"{'data':16} {'link':12} {'tool':22} {'s':>8} {'files/s':>9} {'MB/s':>8} "
              f"{'CPU s':>7}")
        for label, path, count, size in sets:
            for link, port in links:
                require_loopback(server.host)
                for tool, runner in (("fileconveyor sftp", run_ours), ("rclone sync", run_rclone)):
                    dest = server.new_root()
                    state = work / f"state-{dest.name}"
                    state.mkdir()
                    elapsed, cpu = runner(server, port, path, dest, args.workers, state)
                    print(f"{label:16} {link:12} {tool:22} {elapsed:8.2f} "
                          f"{count / elapsed:9.1f} {count * size / elapsed / 1e6:8.1f} "
                          f"{cpu:7.2f}", flush=True)
                    shutil.rmtree(dest, ignore_errors=True)
    finally:
        if proxy:
            proxy.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
