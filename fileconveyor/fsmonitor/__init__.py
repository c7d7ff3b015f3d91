"""File system monitors: OS notification backends and the polling fallback (see base.py)."""
from fileconveyor.fsmonitor.base import Event, FSEvent, Monitor, MonitorError

__all__ = ["Event", "FSEvent", "Monitor", "MonitorError"]
