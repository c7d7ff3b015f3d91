"""Text renderings of a status report (`fileconveyor status`, `status --watch`).

Kept apart from cli.py so that the terminal view and the status page (fileconveyor/httpd.py) show
the same facts from the same report (`cli.status_report`), and so the formatting is a pure
function of (report, now) that tests can check without a terminal.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, TextIO

#: `status` prints the sync progress line once this many files wait or are in flight.
LARGE_BACKLOG = 100
#: Bounds of `status --watch --interval`: faster is a busy loop on the databases, slower is no view.
WATCH_INTERVAL_MIN = 0.5
WATCH_INTERVAL_MAX = 60.0


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def size(count: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while count >= 1024 and index < len(units) - 1:
        count /= 1024
        index += 1
    return f"{count:.1f} {units[index]}" if index else f"{count:.0f} B"


def progress_line(progress: dict[str, Any]) -> str:
    """`1200 of 5000 files done since start (24.0 %, 3.1 MiB), 3800 to go, 85.2 files/s, ETA 45 s`."""
    total = progress.get("total") or 0
    done = progress.get("completed") or 0
    backlog = progress.get("backlog") or 0
    percent = 100.0 * done / total if total else 100.0
    rate = progress.get("rate")
    rate_text = "rate: measuring" if rate is None else f"{rate:.1f} files/s"
    blocked = progress.get("blocked") or 0
    eta = ("done" if not backlog else f"ETA unknown: {blocked} wait for a paused server" if blocked
           else f"ETA {duration(progress.get('eta'))}")
    return (f"{done} of {total} files done since start ({percent:.1f} %, {size(progress.get('bytes') or 0)}), "
            f"{backlog} to go, {rate_text}, {eta}")


def latency_line(progress: dict[str, Any]) -> str | None:
    median = progress.get("latency_median")
    if median is None:
        return None
    return f"latency change -> destination (recent files): median {duration(median)}, max {duration(progress.get('latency_max'))}"


def server_line(name: str, state: dict[str, Any], synced: int | None, now: float) -> str:
    if state.get("paused"):
        since = state.get("paused_since")
        what = f"PAUSED for {duration(now - since) if since else 'a while'}: {state['paused']}"
    else:
        what = "active"
    line = (f"{name}: {what}; {state.get('busy', 0) + state.get('queued', 0)} in flight, "
            f"{state.get('files_waiting', 0)} waiting, {'unknown' if synced is None else synced} synced")
    for upload in state.get("large_uploads", []):
        line += f"\n    {large_upload_line(upload, now)}"
    return line


def large_upload_line(upload: dict[str, Any], now: float) -> str:
    """`uploading css/big.iso: 120.0 MiB of 300.0 MiB (40 %) in 45 s`."""
    sent, total = upload.get("sent"), upload["size"]
    done = (f"{size(sent)} of {size(total)} ({100 * sent / total:.0f} %)" if sent is not None
            else f"{size(total)}, progress unknown")
    return f"uploading {upload['remote']}: {done} in {duration(now - upload['started'])}"


def watch_frame(report: dict[str, Any], now: float, width: int = 100) -> list[str]:
    """The compact live view: one screen, the same facts as the status page."""
    runtime = report.get("runtime") or {}
    state = (f"running (PID {report['pid']})" if report.get("running")
             else "state unknown" if report.get("running") is None else "NOT RUNNING")
    lines = [f"File Conveyor {state} - {time.strftime('%H:%M:%S', time.localtime(now))}"]
    progress = runtime.get("progress")
    if progress:
        lines.append("  " + progress_line(progress))
        latency = latency_line(progress)
        if latency:
            lines.append("  " + latency)
    lines.append(f"  waiting {report.get('waiting')}, in flight {report.get('in_flight')}, "
                 f"failed {report.get('failed')}")
    servers = runtime.get("servers", {})
    for name in sorted(set(report.get("synced", {})) | set(servers)):
        lines.extend("  " + line for line in
                     server_line(name, servers.get(name, {}), report.get("synced", {}).get(name), now).split("\n"))
    failed = report.get("failed_files", [])
    if failed:
        lines.append("  recent failures:")
        for item in failed[:5]:
            lines.append(f"    {item['file']} ({item['kind']}, {item['attempts']} attempt(s), next try in "
                         f"{duration(item['next_try'] - now)}): {item['reason']}")
    for problem in report.get("problems", []):
        lines.append(f"  PROBLEM: {problem}")
    return [line if len(line) <= width else line[:width - 3] + "..." for line in lines]


def watch(report: Callable[[], dict[str, Any]], interval: float, count: int | None = None,
          out: TextIO = sys.stdout) -> int:
    """Redraw until Ctrl-C (or `count` frames). On a terminal the screen is redrawn in place;
    otherwise (a pipe, a log) successive frames are printed, separated by a blank line."""
    interval = min(max(interval, WATCH_INTERVAL_MIN), WATCH_INTERVAL_MAX)
    is_tty = out.isatty()
    frames = 0
    try:
        while count is None or frames < count:
            width = shutil.get_terminal_size((100, 24)).columns if is_tty else 1000
            lines = watch_frame(report(), time.time(), width)
            if is_tty:
                out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            else:
                out.write(("\n" if frames else "") + "\n".join(lines) + "\n")
            out.flush()
            frames += 1
            if count is None or frames < count:
                time.sleep(interval)  # the refresh period of a view, not a wait for a condition
    except KeyboardInterrupt:
        if is_tty:
            out.write("\n")
    return 0

