"""TransporterPool on a real local directory: pausing, probing, and errors that only look like the
server's (issue "Where the parts meet", defects 5, 6 and 10).

The transporter is the real symlink_or_copy one, subclassed to refuse ONE remote name with a
ConfigurationError, the way S3 refuses an ACL or a storage class for one key while the endpoint
itself answers. No real server here refuses a single name that way on demand, so this one
behaviour is simulated; everything else (files, threads, the probe) is real.
"""
from __future__ import annotations

import os
import threading
import time

from fileconveyor.pipeline.workers import ServerPausedError, TransportTask, TransporterPool
from fileconveyor.transporters.base import ConfigurationError, TransporterContext
from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter


class RefusesOneName(SymlinkOrCopyTransporter):
    refused = "refused.txt"

    def upload(self, local_path: str, remote_path: str) -> str:
        if remote_path == self.refused:
            raise ConfigurationError("the endpoint does not support this ACL")
        return super().upload(local_path, remote_path)


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: dict[str, tuple[str | None, object]] = {}
        self.event = threading.Event()

    def callback(self, name: str):
        def on_done(url, error) -> None:
            with self.lock:
                self.done[name] = (url, error)
            self.event.set()
        return on_done

    def wait_for(self, names: set[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not names <= set(self.done):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"tasks never ended: {sorted(names - set(self.done))}"
            self.event.wait(min(remaining, 0.2))
            self.event.clear()


def make_pool(tmp_path, transporter_class=RefusesOneName) -> tuple[TransporterPool, str]:
    location = tmp_path / "dest"
    location.mkdir()
    settings = {"location": str(location), "url": "http://cdn.example.test/"}
    context = TransporterContext(server_name="local", state_dir=str(tmp_path / "state"))
    pool = TransporterPool("local", lambda: transporter_class(settings, context), 2,
                           threading.BoundedSemaphore(4), on_crash=lambda error: None)
    return pool, str(location)


def source_file(tmp_path, name: str) -> str:
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(name)
    return str(path)


def test_an_error_repeated_right_after_a_good_probe_fails_the_file_not_the_server(tmp_path):
    """The refused name paused the pool, the probe succeeded, the same task failed again: a
    pause/resume loop every second for ever, the file never failed. Now the second failure is the
    file's error, and the pool stays up for the others."""
    pool, location = make_pool(tmp_path)
    results = Results()
    try:
        pool.submit(TransportTask("upload", "refused.txt", source_file(tmp_path, "refused.txt"),
                                  results.callback("first")))
        results.wait_for({"first"})
        assert isinstance(results.done["first"][1], ServerPausedError)
        assert pool.paused_reason is not None
        deadline = time.monotonic() + 10
        while pool.paused_reason is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.paused_reason is None, "the probe succeeds: the pool resumes"
        # The pipeline queues the file again once the server is back: the same task.
        pool.submit(TransportTask("upload", "refused.txt", source_file(tmp_path, "refused.txt"),
                                  results.callback("again")))
        pool.submit(TransportTask("upload", "fine.txt", source_file(tmp_path, "fine.txt"), results.callback("fine")))
        results.wait_for({"again", "fine"})
        url, error = results.done["again"]
        assert isinstance(error, ConfigurationError) and "ACL" in str(error), error
        assert results.done["fine"][1] is None and os.path.exists(os.path.join(location, "fine.txt"))
        assert pool.paused_reason is None, "the server is not paused again for one file's error"
    finally:
        pool.stop(5)


def test_tasks_for_a_paused_server_end_at_once(tmp_path):
    """While a server is paused its tasks must not sit in memory holding pipeline slots: they end
    with ServerPausedError at once (the probe interval is checked end to end in test_seams)."""

    class Down(SymlinkOrCopyTransporter):
        def upload(self, local_path: str, remote_path: str) -> str:
            raise ConfigurationError("credentials rejected")

        def probe(self) -> None:
            raise ConfigurationError("credentials rejected")

    pool, _location = make_pool(tmp_path, Down)
    results = Results()
    try:
        pool.submit(TransportTask("upload", "a.txt", source_file(tmp_path, "a.txt"), results.callback("a")))
        results.wait_for({"a"})
        # The server never comes back in this test: the task must end without it.
        pool.submit(TransportTask("upload", "b.txt", source_file(tmp_path, "b.txt"), results.callback("b")))
        results.wait_for({"b"}, timeout=10.0)
        assert isinstance(results.done["b"][1], ServerPausedError), results.done["b"]
        assert "credentials rejected" in str(results.done["b"][1])
    finally:
        pool.stop(5)
