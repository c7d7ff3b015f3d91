"""Time and peak memory of `fileconveyor reconcile` on a large destination (issue 9 item 2).

    python3 bench/bench_reconcile.py [--files 100000] [--target local|moto|both] [--per-dir 100]

Builds a source tree of N small files, a destination that holds all of them (local: hard links in
a directory; moto: objects PUT by 16 threads into a bucket of a moto server on loopback), and a
synced_files.db that records every copy with its size and MD5: the steady state, where reconcile
must read all three streams to the end and find nothing to do. Then runs
`fileconveyor reconcile --dry-run --json` in a child process and reports its wall time, CPU time
and peak RSS (VmHWM of the child, read by itself at exit), and the counts it found. On the
local destination a second run adds 100 files nobody recorded and deletes 100 recorded ones, as a
check that the figures are those of real work.

Prints figures; asserts nothing (benchmarks are figures, not pass/fail timings).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pathlib
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_source(root: pathlib.Path, files: int, per_dir: int) -> list[str]:
    names = []
    for i in range(files):
        name = f"d{i // per_dir // 100:03}/d{i // per_dir:05}/f{i:07}.txt"
        path = root / name
        if i % per_dir == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content {i}")
        names.append(name)
    return names


def record(db: pathlib.Path, source: pathlib.Path, names: list[str], server: str, url: str) -> None:
    from fileconveyor.pipeline.synced_files import SyncedFiles

    SyncedFiles(str(db)).close()  # the schema, as the daemon makes it
    conn = sqlite3.connect(db)
    with conn:
        rows = []
        for i, name in enumerate(names):
            content = f"content {i}".encode()
            rows.append((str(source / name), server, name, url + name, len(content),
                         hashlib.md5(content).hexdigest()))
        conn.executemany("INSERT INTO synced_files VALUES (?, ?, ?, ?)",
                         [(r[0], os.path.basename(r[2]), r[3], r[1]) for r in rows])
        conn.executemany("INSERT INTO synced_copies(input_file, server, remote_path, url, size, md5) "
                         "VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.close()


def write_config(state: pathlib.Path, source: pathlib.Path, server_xml: str) -> pathlib.Path:
    config = state / "config.xml"
    config.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<config>
  <settings><PID_FILE>fc.pid</PID_FILE><LOG_FILE>fc.log</LOG_FILE>
    <PERSISTENT_DATA_DB>persistent_data.db</PERSISTENT_DATA_DB><SYNCED_FILES_DB>synced_files.db</SYNCED_FILES_DB>
    <FSMONITOR_DB>fsmonitor.db</FSMONITOR_DB><WORKING_DIR>{escape(str(state / 'work'))}</WORKING_DIR></settings>
  <sources><source name="site" scanPath="{escape(str(source))}" /></sources>
  <servers>{server_xml}</servers>
  <rules><rule for="site" label="all"><destinations><destination server="dest" /></destinations></rule></rules>
</config>
""")
    return config


#: The command in the child, which reports its own peak RSS (VmHWM: exec starts a new address
#: space, while ru_maxrss would carry this spawning process's high-water mark).
_CHILD = """
import sys
from fileconveyor import cli
code = cli.main(sys.argv[1:])
status = open("/proc/self/status").read()
print("VmHWM_kB", status.split("VmHWM:")[1].split()[0], file=sys.stderr)
sys.exit(code)
"""


def run_reconcile(config: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _CHILD, "reconcile", "--config", str(config),
                             "--dry-run", "--json"], capture_output=True, text=True, env=env, timeout=7200)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.stdout.strip().startswith("{"):
        found = json.loads(result.stdout)["servers"][0]
    else:
        found = {"error": result.stderr[-500:]}
    peak = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("VmHWM_kB")]
    return {"wall_s": round(wall, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "peak_rss_mb": round(int(peak[0]) / 1024, 1) if peak else None, "listed": found.get("listed"),
            "counts": found.get("counts"), "problems": found.get("problems", found.get("error"))}


def bench_local(work: pathlib.Path, source: pathlib.Path, names: list[str]) -> None:
    dest = work / "dest-local"
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source / name, target)
    state = work / "state-local"
    state.mkdir()
    record(state / "synced_files.db", source, names, "dest", "http://cdn.example.test/")
    config = write_config(state, source, f'<server name="dest" transporter="symlink_or_copy">'
                          f'<location>{escape(str(dest))}</location><url>http://cdn.example.test/</url></server>')
    print("local, steady state:", json.dumps(run_reconcile(config)))
    step = max(1, len(names) // 100)
    for name in names[::step]:
        (dest / name).unlink()
    for i in range(0, len(names), step):
        (dest / f"extra/x{i}.txt").parent.mkdir(exist_ok=True)
        (dest / f"extra/x{i}.txt").write_text("x")
    print("local, 100 missing + 100 unknown:", json.dumps(run_reconcile(config)))
    shutil.rmtree(dest)


def bench_moto(work: pathlib.Path, source: pathlib.Path, names: list[str]) -> None:
    from tests.servers.moto import FAKE_KEY_ID, FAKE_SECRET, MotoServer

    (work / "moto").mkdir()
    server = MotoServer(work / "moto")
    server.start()
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        started = time.monotonic()

        def put(index: int) -> None:
            client.put_object(Bucket="bench", Key=names[index], Body=f"content {index}".encode())

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(len(names))))
        print(f"moto: {len(names)} objects PUT in {time.monotonic() - started:.0f} s")
        state = work / "state-moto"
        state.mkdir()
        record(state / "synced_files.db", source, names, "dest", f"{server.endpoint}/bench/")
        config = write_config(state, source, f'<server name="dest" transporter="s3">'
                              f'<endpoint_url>{server.endpoint}</endpoint_url><bucket_name>bench</bucket_name>'
                              f'<access_key_id>{FAKE_KEY_ID}</access_key_id>'
                              f'<secret_access_key>{FAKE_SECRET}</secret_access_key></server>')
        print("moto, steady state:", json.dumps(run_reconcile(config)))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=100)
    parser.add_argument("--target", choices=("local", "moto", "both"), default="both")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    work = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="fc-bench-reconcile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = work / "source"
        started = time.monotonic()
        names = build_source(source, args.files, args.per_dir)
        print(f"source: {len(names)} files in {time.monotonic() - started:.0f} s")
        if args.target in ("local", "both"):
            bench_local(work, source, names)
        if args.target in ("moto", "both"):
            bench_moto(work, source, names)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
