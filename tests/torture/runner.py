"""Rounds of random operations and faults against a real daemon, each followed by the invariants.

Run a soak from the command line (what scripts/torture.sh does):

    python -m tests.torture.runner --rounds 200 --seed 12345

Every round draws from `random.Random(f"{seed}:{round}")`, so `--seed S` replays the same
operations and faults for each round (the daemon's timing, and therefore which files the daemon
has already deleted after sync, still varies). A violation is printed with the seed, the round,
the round's operations and what differed; after it the run goes on in a fresh world (new trees,
state and destinations), so each defect is reported where it happened and not again in every
later round.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Callable, TextIO

from tests.e2e.harness import REPO
from tests.torture.invariants import final_checks, settle
from tests.torture.ops import Operations
from tests.torture.world import LOW_INOTIFY_QUEUE, Servers, World

FAULTS = ("kill9", "sftp_outage", "s3_outage", "disk_full", "inotify_overflow")
#: Files created while the daemon is stopped: well over LOW_INOTIFY_QUEUE events (2-3 per file).
OVERFLOW_FILES = LOW_INOTIFY_QUEUE // 2 + 10
INITIAL_OPERATIONS = 20


@dataclasses.dataclass
class Violation:
    seed: int
    round: int
    world: int
    fault: str | None
    operations: list[str]
    problems: list[str]
    state_dir: str
    replay: str

    def report(self) -> str:
        lines = [f"VIOLATION seed={self.seed} round={self.round} world={self.world} "
                 f"fault={self.fault or 'none'}", "  operations of the round:"]
        lines += [f"    {i + 1:3}. {op}" for i, op in enumerate(self.operations)]
        lines.append("  problems:")
        lines += [f"    - {p}" for p in self.problems]
        lines.append(f"  daemon state and log: {self.state_dir}")
        lines.append(f"  replay: scripts/torture.sh {self.replay}")
        return "\n".join(lines)


@dataclasses.dataclass
class Summary:
    seed: int
    rounds: int = 0
    violations: list[Violation] = dataclasses.field(default_factory=list)
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"torture: seed {self.seed}, {self.rounds} rounds in {self.seconds:.0f} s, "
                 f"faults {dict(sorted(self.faults.items()))}, {len(self.violations)} violation(s)"]
        lines += [f"  round {v.round} (fault {v.fault or 'none'}): {v.problems[0]}"
                  + (f" (+{len(v.problems) - 1} more)" if len(v.problems) > 1 else "")
                  for v in self.violations]
        return "\n".join(lines)


class Runner:
    def __init__(self, servers: Servers, seed: int, faults: tuple[str, ...] = FAULTS,
                 operations: tuple[int, int] = (10, 40), settle_timeout: float = 60.0,
                 out: TextIO = sys.stdout, on_violation: Callable[[Violation], None] | None = None,
                 without: tuple[str, ...] = (), fault_plan: tuple[str | None, ...] | None = None,
                 world_rounds: int = 25) -> None:
        self.servers = servers
        self.seed = seed
        self.faults = tuple(f for f in faults if self._fault_possible(f, out))
        self.operations = operations
        #: Faults by round, cycled (a bounded run covers every kind); None: drawn at random.
        self.fault_plan = tuple(f for f in fault_plan if f is None or f in self.faults) if fault_plan else None
        #: Operation kinds to leave out (to look past a known defect); the invariants stay whole.
        self.kinds = tuple(k for k in Operations.WEIGHTS if k not in without)
        self.settle_timeout = settle_timeout
        self.out = out
        self.on_violation = on_violation
        self.world_index = 0
        self.world: World | None = None
        self.ops: Operations | None = None
        #: A fresh world after this many rounds: bounds the checks' cost (published outbox files
        #: accumulate) and repeats the initial sync under churn.
        self.world_rounds = world_rounds
        self.rounds_in_world = 0
        #: Set when nothing more can be learnt (a fresh daemon does not even start).
        self.cannot_go_on = False

    def _fault_possible(self, fault: str, out: TextIO) -> bool:
        reason = {"disk_full": self.servers.tmpfs_problem,
                  "inotify_overflow": self.servers.inotify_problem}.get(fault)
        if reason:
            print(f"torture: fault {fault} left out: {reason}", file=out)
        return reason is None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- worlds ----------------------------------------------------------------------------------

    def _new_world(self, round_: int) -> list[str]:
        """A fresh world: initial trees, then the daemon's first start (the initial sync)."""
        if self.world is not None:
            self.world.close()
        self.world_index += 1
        self.world = World(self.servers, self.world_index)
        rng = random.Random(f"{self.seed}:{round_}:world")
        self.ops = Operations(self.world.model, self.world.staging, self.world.outside_file, rng)
        kinds = tuple(k for k in ("create", "mkdir_p", "symlink_inside", "hardlink") if k in self.kinds)
        done = [self.ops.step(kinds or ("create",)) for _ in range(INITIAL_OPERATIONS)]
        self.world.start_daemon()
        return ["(new world, before the daemon's first start)"] + done

    # --- faults -----------------------------------------------------------------------------------

    def _inject(self, fault: str, rng: random.Random, log: list[str]) -> Callable[[], None]:
        """Start `fault` now; returns what ends it."""
        world, servers = self.world, self.servers
        assert world is not None and self.ops is not None
        hold = rng.uniform(0.2, 2.0)

        def after_hold(action: Callable[[], None]) -> Callable[[], None]:
            def end() -> None:
                time.sleep(hold)  # the fault's duration, not a wait for a condition
                action()
            return end

        if fault == "kill9":
            world.kill_daemon()
            log.append("FAULT kill -9 the daemon")
            return world.start_daemon
        if fault == "sftp_outage":
            servers.stop_sftp()
            log.append(f"FAULT sshd and all its sessions killed (back {hold:.1f} s after the round)")
            return after_hold(servers.start_sftp)
        if fault == "s3_outage":
            servers.stop_s3()
            log.append(f"FAULT S3 endpoint down, all connections cut (back {hold:.1f} s after the round)")
            return after_hold(servers.start_s3)
        if fault == "disk_full":
            written = servers.fill_disk()
            log.append(f"FAULT destination file system full ({written} bytes of filler; freed "
                       f"{hold:.1f} s after the round)")
            return after_hold(servers.free_disk)
        if fault == "inotify_overflow":
            assert world.daemon is not None
            os.kill(world.daemon.pid, signal.SIGSTOP)
            try:
                for _ in range(OVERFLOW_FILES):
                    self.ops.op_create()
            finally:
                os.kill(world.daemon.pid, signal.SIGCONT)
            log.append(f"FAULT SIGSTOP, {OVERFLOW_FILES} files created, SIGCONT "
                       f"(inotify queue limit {LOW_INOTIFY_QUEUE})")
            return lambda: None
        raise ValueError(f"unknown fault {fault!r}")

    # --- rounds -----------------------------------------------------------------------------------

    def round(self, index: int, summary: Summary) -> Violation | None:
        rng = random.Random(f"{self.seed}:{index}")
        log: list[str] = []
        if self.world is not None and self.rounds_in_world >= self.world_rounds:
            self.world.close()
            self.world = None
        if self.world is None:
            self.rounds_in_world = 0
            try:
                log += self._new_world(index)
            except AssertionError as error:  # harness.Daemon.start: the daemon did not start
                self.cannot_go_on = True
                state = self.world.state if self.world is not None else ""
                violation = Violation(self.seed, index, self.world_index, None, log,
                                      [f"a new world's daemon did not start: {error}"], state, "")
                self.say(violation.report())
                return violation
        world, ops = self.world, self.ops
        assert world is not None and ops is not None
        self.rounds_in_world += 1
        ops.rng = rng
        count = rng.randint(*self.operations)
        fault = rng.choice(self.faults + (None,)) if self.faults else None
        if self.fault_plan:
            fault = self.fault_plan[(index - 1) % len(self.fault_plan)]
        fault_at = rng.randrange(count)
        restarts_before = world.self_restarts()
        end_fault: Callable[[], None] | None = None
        fault_problems: list[str] = []
        try:
            for step in range(count):
                if fault is not None and step == fault_at:
                    summary.faults[fault] = summary.faults.get(fault, 0) + 1
                    end_fault = self._inject(fault, rng, log)
                log.append(ops.step(self.kinds))
                if rng.random() < 0.3:
                    time.sleep(rng.uniform(0, 0.05))  # pacing: some changes apart, most in bursts
        finally:
            if end_fault is not None:
                try:
                    end_fault()
                except Exception as error:  # noqa: BLE001 - e.g. the daemon does not start again
                    fault_problems.append(f"ending the fault {fault} failed: {error}")
        problems, view, seconds = settle(world, world.model, self.settle_timeout)
        problems = fault_problems + problems + ops.anomalies
        ops.anomalies.clear()
        problems += final_checks(world, restarts_before)
        world.model.nodes, world.model.dirs = view.nodes, view.dirs
        world.model.published, world.model.vanished = view.published, view.vanished
        seen = ""
        if fault == "inotify_overflow":
            overflows = world.status().get("runtime", {}).get("overflows")
            seen = f", overflows reported by status: {overflows}"
        self.say(f"round {index}: world {world.index}, {count} operations, fault {fault or 'none'}: "
                 f"{'VIOLATION' if problems else 'ok'} (settled in {seconds:.1f} s{seen})")
        if not problems:
            return None
        plan = ([f"--fault-plan {','.join(f or 'none' for f in self.fault_plan)}"] if self.fault_plan else [])
        replay = " ".join([f"--seed {self.seed} --rounds {index}", f"--faults {','.join(self.faults)}"] + plan
                          + ([f"--without {','.join(k for k in Operations.WEIGHTS if k not in self.kinds)}"]
                             if len(self.kinds) < len(Operations.WEIGHTS) else []))
        violation = Violation(self.seed, index, world.index, fault, log, problems, world.state, replay)
        self.say(violation.report())
        warnings = [line for line in world.log_tail(100_000).splitlines()
                    if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))]
        self.say("  last warnings and errors of the daemon:\n"
                 + "\n".join("    " + line for line in warnings[-15:]))
        # Start over in a fresh world: the damage would otherwise be reported again every round.
        world.close()
        self.world = None
        return violation

    def run(self, rounds: int, budget: float | None = None, stop_on_violation: bool = False) -> Summary:
        summary = Summary(self.seed)
        started = time.monotonic()
        self.say(f"torture: seed {self.seed} (replay: scripts/torture.sh --seed {self.seed} "
                 f"--rounds {rounds}), faults {', '.join(self.faults) or 'none'}")
        try:
            for index in range(1, rounds + 1):
                if budget is not None and time.monotonic() - started > budget:
                    self.say(f"torture: time budget of {budget:.0f} s used up after {summary.rounds} rounds")
                    break
                violation = self.round(index, summary)
                summary.rounds += 1
                if violation is not None:
                    summary.violations.append(violation)
                    if self.on_violation is not None:
                        self.on_violation(violation)
                    if stop_on_violation or self.cannot_go_on:
                        break
        finally:
            if self.world is not None:
                self.world.close()
                self.world = None
            summary.seconds = time.monotonic() - started
        self.say(summary.report())
        return summary


def snapshot(revision: str, target: pathlib.Path) -> str:
    """Extract `revision`'s fileconveyor package into `target` (git archive, no shell)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", "--format=tar", revision, "fileconveyor"],
                             capture_output=True, timeout=120)
    if archive.returncode != 0:
        raise SystemExit(f"torture: git archive {revision} failed: {archive.stderr.decode(errors='replace')}")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return str(target)


def main(argv: list[str] | None = None) -> int:
    from tests.servers.moto import MotoServer
    from tests.servers.sshd import SSHServer, sshd_unavailable_reason

    parser = argparse.ArgumentParser(prog="scripts/torture.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed, printed")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated subset of {','.join(FAULTS)} ('' for none)")
    parser.add_argument("--operations", default="10-40", help="operations per round, MIN-MAX")
    parser.add_argument("--fault-plan", default=None, metavar="LIST",
                        help="faults by round, cycled (e.g. none,kill9,disk_full); default: drawn at random")
    parser.add_argument("--settle-timeout", type=float, default=60.0,
                        help="seconds a round may take to become consistent")
    parser.add_argument("--without", default="", metavar="OPS",
                        help="comma-separated operation kinds to leave out, to look past a known "
                        f"defect (kinds: {','.join(Operations.WEIGHTS)})")
    parser.add_argument("--world-rounds", type=int, default=25,
                        help="start a fresh world (trees, state, destinations) after this many rounds")
    parser.add_argument("--stop-on-violation", action="store_true")
    parser.add_argument("--workdir", default=None, help="default: a new directory in $TMPDIR, kept "
                        "when a violation is found")
    parser.add_argument("--findings", default=None, help="append each violation's report to this file")
    code = parser.add_mutually_exclusive_group()
    code.add_argument("--code", default=None, metavar="DIR",
                      help="run the daemon from this directory's fileconveyor package instead of "
                      "this checkout")
    code.add_argument("--commit", default=None, metavar="REV",
                      help="run the daemon from a snapshot of this commit's fileconveyor package "
                      "(git archive), e.g. HEAD while the working tree is being edited")
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s) {sorted(unknown)}; choose from {','.join(FAULTS)}")
    plan: tuple[str | None, ...] | None = None
    if args.fault_plan:
        plan = tuple(None if f == "none" else f for f in args.fault_plan.split(","))
        if set(plan) - set(FAULTS) - {None}:
            parser.error(f"--fault-plan: unknown fault(s) {sorted(set(plan) - set(FAULTS) - {None})}")
    without = tuple(k for k in args.without.split(",") if k)
    if set(without) - set(Operations.WEIGHTS):
        parser.error(f"unknown operation kind(s) {sorted(set(without) - set(Operations.WEIGHTS))}")
    try:
        low, high = (int(x) for x in args.operations.split("-"))
    except ValueError:
        parser.error("--operations must be MIN-MAX, for example 10-40")
    reason = sshd_unavailable_reason()
    if reason:
        print(f"torture: cannot run: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    base = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="fc-torture-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    print(f"torture: working directory {base}", flush=True)
    sshd = SSHServer(base / "sshd")
    moto = MotoServer(base)
    servers: Servers | None = None
    summary: Summary | None = None
    try:
        sshd.start()
        moto.start()
        code_dir = os.path.abspath(args.code) if args.code else REPO
        if args.commit:
            code_dir = snapshot(args.commit, base / "code")
            print(f"torture: daemon code from commit {args.commit} in {code_dir}", flush=True)
        servers = Servers(base, sshd, moto, code_dir)

        def record(violation: Violation) -> None:
            if args.findings:
                with open(args.findings, "a", encoding="utf-8") as handle:
                    handle.write(violation.report() + "\n\n")

        summary = Runner(servers, seed, faults, (low, high), args.settle_timeout,
                         on_violation=record, without=without, fault_plan=plan, world_rounds=args.world_rounds).run(args.rounds, stop_on_violation=args.stop_on_violation)
    except KeyboardInterrupt:
        print("torture: interrupted", file=sys.stderr)
        return 130
    finally:
        if servers is not None:
            servers.close()
        sshd.stop()
        moto.stop()
        if summary is not None and not summary.violations and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if summary is None or summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
