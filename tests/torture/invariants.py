"""The invariants checked after every round, once the daemon is quiet.

1. The sources hold exactly what the model says, except files removed by the daemon after sync,
   and each of those was removed only after its last content reached every destination.
2. Every destination holds exactly the model's files, names and bytes: nothing missing, nothing
   extra (no temporary names, no superseded unique-named copies, no dangling links).
3. synced_files has exactly one row per (published file, server), its URL is the one the first
   matching rule (in config order) gives it on that server (README, "Behaviour" 10), and that URL
   serves the bytes of that rule's copy.
4. Every rewritten stylesheet refers to the URLs synced_files records now (part of 2: the model
   computes each stylesheet's expected bytes from the rows).
5. The queues are empty (waiting, in flight, failed, scheduled deletions), `status --json` agrees
   and shows no paused server, the daemon is alive and did not restart itself, and
   `fileconveyor verify` exits 0.

`evaluate` never changes the model: it returns the reconciled view (vanished files proven synced
become `published`), which the runner adopts after the final check of a round.
"""
from __future__ import annotations

import os
import stat
import time

from tests.e2e.remote_trees import compare
from tests.torture.model import Node, SourceModel, expect
from tests.torture.world import World

SHOW = 8
#: Seconds the same differences may persist with every queue empty and no server paused before a
#: round gives up waiting (well above RETRY_MAX_INTERVAL, the monitor's latency and the 5 s within
#: which issue 7 item 10 wants transfers to resume after an outage).
STABLE = 10.0


def scan_sources(model: SourceModel) -> tuple[dict[str, Node], set[str]]:
    """What the source trees hold on disk, in the model's terms (never opening a FIFO)."""
    nodes: dict[str, Node] = {}
    dirs: set[str] = set()
    for root in model.roots.values():
        for directory, subdirs, files in os.walk(root):
            for name in subdirs:
                path = os.path.join(directory, name)
                if os.path.islink(path):
                    nodes[path] = Node("link", target=os.readlink(path))
                else:
                    dirs.add(path)
            for name in files:
                path = os.path.join(directory, name)
                try:
                    mode = os.lstat(path).st_mode
                    if stat.S_ISLNK(mode):
                        nodes[path] = Node("link", target=os.readlink(path))
                    elif stat.S_ISFIFO(mode):
                        nodes[path] = Node("fifo")
                    else:
                        with open(path, "rb") as handle:
                            nodes[path] = Node("file", handle.read())
                except FileNotFoundError:
                    continue  # removed by the daemon while we looked: seen as missing next time
    return nodes, dirs


def _short(data: bytes | None) -> str:
    if data is None:
        return "nothing"
    return f"{len(data)} bytes {data[:24]!r}{'...' if len(data) > 24 else ''}"


def reconcile(model: SourceModel, held: dict[str, dict[str, bytes]]) -> tuple[list[str], SourceModel]:
    """Compare the sources with the model; a reconciled copy of the model and the violations."""
    problems: list[str] = []
    view = SourceModel(model.roots)
    view.nodes, view.dirs = dict(model.nodes), set(model.dirs)
    view.published, view.vanished = dict(model.published), {}
    disk, disk_dirs = scan_sources(model)
    vanished = dict(model.vanished)
    for path in sorted(set(model.nodes) - set(disk)):
        content = model.published_content(path)
        if model.deleted_after_sync(path):
            vanished[path] = {content} if content is not None else set()
        else:
            problems.append(f"source {path} ({model.nodes[path].kind}) is gone, but the test did not "
                            "remove it and no rule deletes it")
        del view.nodes[path]
    for path, contents in sorted(vanished.items()):
        copies: dict[str, bytes | None] = {}
        for rule in model.matching_rules(path):
            for destination in rule.destinations:
                remote = "/".join(p for p in (destination.path, os.path.dirname(model.relative(path)),
                                               os.path.basename(path)) if p)
                copies[f"{destination.server}:{remote}"] = held[destination.server].get(remote)
        wrong = {where: data for where, data in copies.items() if data not in contents}
        held_text = ", ".join(f"{w} has {_short(d)}" for w, d in sorted(wrong.items()))
        if not contents:
            problems.append(f"the daemon deleted source {path} after \"sync\", but it must never be "
                            f"published (nor deleted): {held_text}")
        elif wrong or not copies:
            expected = " or ".join(_short(c) for c in contents)
            problems.append(f"DATA LOSS: the daemon deleted source {path} after sync, but its last "
                            f"content ({expected}) is not what the destinations hold: {held_text}")
        synced = {d for d in copies.values() if d is not None}
        if len(synced) == 1:
            view.published[path] = synced.pop()
    for path in sorted(set(disk) - set(model.nodes)):
        problems.append(f"source {path} ({disk[path].kind}) exists, but the test never made it")
    for path in sorted(set(disk) & set(model.nodes)):
        if disk[path] != model.nodes[path]:
            problems.append(f"source {path} changed behind the test's back: {disk[path].kind} "
                            f"{_short(disk[path].content)} instead of {_short(model.nodes[path].content)}")
    if disk_dirs != model.dirs:
        problems.append(f"source directories differ: missing {sorted(model.dirs - disk_dirs)[:SHOW]}, "
                        f"unexpected {sorted(disk_dirs - model.dirs)[:SHOW]}")
    return problems, view


def compare_state(world: World, model: SourceModel) -> tuple[list[str], SourceModel]:
    """Invariants 1 to 4 and the queue counts: cheap enough to poll."""
    held, problems = world.destinations()
    counts = world.counts()
    if any(counts.values()):
        problems.append(f"queues not empty: {counts}; failed: {world.failed()}")
    reconciled, view = reconcile(model, held)
    problems += reconciled
    rows = world.rows()
    row_urls = {(r[0], r[1]): r[2] for r in rows}
    expectation = expect(view, world.url_bases, row_urls)
    problems += expectation.problems
    for server, files in expectation.files.items():
        actual = held[server]
        problems += compare(server, files, actual)
        differ = sorted(p for p in set(files) & set(actual) if files[p] != actual[p])
        for path in differ[:SHOW]:
            problems.append(f"{server}: {path} holds {_short(actual[path])}, expected {_short(files[path])}")
    keys = [(r[0], r[1]) for r in rows]
    if len(keys) != len(set(keys)):
        problems.append("synced_files has two rows for one (file, server)")
    missing_rows = sorted(set(expectation.rows) - set(keys))
    extra_rows = sorted(set(keys) - set(expectation.rows))
    if missing_rows:
        problems.append(f"synced_files: {len(missing_rows)} rows missing: {missing_rows[:SHOW]}")
    if extra_rows:
        problems.append(f"synced_files: {len(extra_rows)} rows for files that must not be published "
                        f"there: {extra_rows[:SHOW]}")
    bad_urls = 0
    for input_file, server, url, _basename in sorted(rows):
        candidates = expectation.rows.get((input_file, server))
        if candidates is None:
            continue
        first = next(iter(candidates))
        if url != first:
            # README "Behaviour" 10: every rule's copy is kept, the recorded URL is the first rule's.
            bad_urls += 1
            if bad_urls <= SHOW:
                problems.append(f"synced_files: {input_file} on {server} has URL {url}, expected the first "
                                f"rule's {first}" + (f" (of {sorted(candidates)})" if len(candidates) > 1 else ""))
            continue
        served = world.fetch(url, held["s3"])
        if served != candidates[url]:
            bad_urls += 1
            if bad_urls <= SHOW:
                problems.append(f"{url} ({input_file} on {server}) serves {_short(served)}, expected "
                                f"{_short(candidates[url])}")
    return problems, view


def settle(world: World, model: SourceModel, timeout: float) -> tuple[list[str], SourceModel, float]:
    """Wait (bounded) until the state matches the model; (remaining problems, view, seconds)."""
    started = time.monotonic()
    deadline = started + timeout
    delay = 0.2
    same_since, last = started, None
    while True:
        counts = world.counts()
        # Failed entries may stay (a permanent failure is retried only every RETRY_MAX_INTERVAL):
        # compare as soon as nothing is waiting or in flight, and let STABLE decide.
        if not any(v for k, v in counts.items() if k != "failed_files_list") \
                or time.monotonic() >= deadline:
            problems, view = compare_state(world, model)
            now = time.monotonic()
            if problems != last or world.paused_servers():
                same_since, last = now, problems
            # Queues empty and the same differences for STABLE seconds: nothing is left to change them.
            if not problems or now >= deadline or now - same_since >= STABLE:
                return problems, view, now - started
        # The polling interval of a bounded wait on the daemon's databases and destinations.
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def final_checks(world: World, restarts_before: int) -> list[str]:
    """Invariant 5 beyond the counts: the daemon's own view (status, verify), its liveness."""
    problems: list[str] = []
    if not world.daemon_alive():
        problems.append("the daemon is not running")
    restarts = world.self_restarts() - restarts_before
    if restarts:
        problems.append(f"the daemon crashed and restarted itself {restarts} time(s) (see its log)")
    try:
        status = world.status()
    except Exception as error:  # noqa: BLE001 - any failure of the command is the finding
        return problems + [f"status --json failed: {error}"]
    if not status.get("running"):
        problems.append("status says the daemon is not running")
    for key in ("waiting", "in_flight", "failed", "to_delete"):
        if status.get(key):
            problems.append(f"status: {key} = {status.get(key)} (expected 0)")
    for server, state in sorted(status.get("runtime", {}).get("servers", {}).items()):
        if state.get("paused"):
            problems.append(f"status: server {server} is still paused: {state['paused']}")
    verify = world.command("verify")
    if verify.returncode != 0:
        problems.append(f"verify exited {verify.returncode}: {(verify.stdout + verify.stderr)[-1500:]}")
    return problems
