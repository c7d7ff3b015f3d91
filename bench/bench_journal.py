"""What the rollback journal of persistent_data.db costs against WAL, in pipeline operations per second.

    python3 bench/bench_journal.py [--events 5000] [--batch 20] [--claim 50] [--dir DIR] [--rounds 3]

persistent_data.db must be readable by a user with read permission only (the Drupal module as the
web server user): WAL needs every reader to write the -shm file, so the file uses a rollback
journal with synchronous=FULL (fileconveyor.pipeline.db). This measures what that costs, through
`PersistentPipeline` as the daemon uses it, on a real file in DIR (default: a temporary directory;
point it at the file system that will hold the state, since the cost is fsyncs):

* events are queued in batches of `--batch` (QUEUE_PROCESS_BATCH_SIZE, 20 by default), one
  transaction per batch, as the monitor's delivery thread does;
* paths are claimed `--claim` at a time (MAX_FILES_IN_PIPELINE), one transaction per claim;
* each claimed path is completed in its own transaction (`complete()`), from one thread or from
  `--threads` threads at once (as transporter threads finish files: the gate's group commit lets
  them share commits), or all of a claim in one transaction (`batched`).

The figure is events/s: (queued + claimed + completed) events / wall time, i.e. an event counts
three times, once per step. Each variant gets a fresh file; variants alternate for `--rounds`
rounds and the best round is printed (other work on the machine only slows a round down).
Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fileconveyor.fsmonitor.base import Event  # noqa: E402
from fileconveyor.pipeline import queue  # noqa: E402
from fileconveyor.pipeline.db import Database, Journal  # noqa: E402

#: (label, journal of the gate, journal_mode override, synchronous override)
VARIANTS = (
    ("WAL, synchronous=NORMAL", Journal.WAL, None, None),
    ("rollback journal (delete), synchronous=FULL", Journal.ROLLBACK, None, None),
    ("rollback journal (delete), synchronous=NORMAL", Journal.ROLLBACK, None, "NORMAL"),
    ("rollback journal (truncate), synchronous=FULL", Journal.ROLLBACK, "TRUNCATE", None),
    ("rollback journal (persist), synchronous=FULL", Journal.ROLLBACK, "PERSIST", None),
)


def pipeline_with(path: str, journal: Journal, mode: str | None, synchronous: str | None) -> queue.PersistentPipeline:
    pipeline = queue.PersistentPipeline(path)
    pipeline.db.close()
    pipeline.db = Database(path, queue.SCHEMA, queue.SCHEMA_VERSION, journal=journal)
    if mode:
        pipeline.db.query(f"PRAGMA journal_mode = {mode}")
    if synchronous:
        pipeline.db.query(f"PRAGMA synchronous = {synchronous}")
    return pipeline


def run_once(directory: str, journal: Journal, mode: str | None, synchronous: str | None, events: int, batch: int,
             claim: int, batched_complete: bool, threads: int = 1) -> float:
    path = os.path.join(directory, f"bench-{time.monotonic_ns()}.db")
    pipeline = pipeline_with(path, journal, mode, synchronous)
    paths = [f"/srv/www/site/files/dir{i // 100:04d}/image-{i:07d}.jpg" for i in range(events)]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
    started = time.perf_counter()
    for start in range(0, events, batch):
        pipeline.put_many((p, Event.CREATED) for p in paths[start:start + batch])
    done = 0
    while done < events:
        items = pipeline.claim(claim)
        if batched_complete:
            names = [(i.input_file,) for i in items]
            pipeline.db.write(lambda conn: conn.executemany("DELETE FROM pipeline_list WHERE input_file = ?", names))
        elif threads > 1:  # as transporter threads finish files: the gate's group commit shares fsyncs
            list(pool.map(lambda item: pipeline.complete(item.input_file), items))
        else:
            for item in items:
                pipeline.complete(item.input_file)
        done += len(items)
    elapsed = time.perf_counter() - started
    pool.shutdown()
    pipeline.close()
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return 3 * events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=20, help="events per queueing transaction")
    parser.add_argument("--claim", type=int, default=50, help="paths per claim")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="threads calling complete() at once")
    parser.add_argument("--dir", default=None, help="where the database files go (default: a temporary directory)")
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="bench-journal-")
    try:
        best: dict[tuple[str, str], float] = {}
        ways = (("per file", False, 1), (f"per file, {args.threads} threads", False, args.threads), ("batched", True, 1))
        for _ in range(args.rounds):
            for name, journal, mode, synchronous in VARIANTS:
                for way, batched, threads in ways:
                    rate = run_once(directory, journal, mode, synchronous, args.events, args.batch, args.claim,
                                    batched, threads)
                    best[(name, way)] = max(best.get((name, way), 0.0), rate)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{args.events} events, queued {args.batch} per transaction, claimed {args.claim} at a time; "
              f"best of {args.rounds}; dir {directory}; load average {load:.2f}")
        print(f"{'journal':50}" + "".join(f" {way:>28}" for way, _, _ in ways))
        for name, *_ in VARIANTS:
            print(f"{name:50}" + "".join(f" {best[(name, way)]:>23,.0f} ev/s" for way, _, _ in ways))
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
