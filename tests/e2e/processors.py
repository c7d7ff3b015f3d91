"""A third-party processor used by the end-to-end tests (loaded by dotted name, as users do).

`Copy` makes the pipeline copy files instead of symlinking them, so that comparisons of the
destination with the source read real copies. `Gate` and `StuckInOpen` keep a file in flight or
a thread stuck, for the tests of special files and of `stop`."""
from __future__ import annotations

import os
import time

from fileconveyor.processors.base import Processor, copy_to


class Copy(Processor):
    def run(self, input_file: str) -> str:
        return copy_to(self.context, input_file, os.path.basename(input_file))


def _test_root(context_file: str) -> str:
    """The test's tmp_path: the parent of the source tree (files sit at the top of the tree)."""
    return os.path.dirname(os.path.dirname(context_file))


class Gate(Processor):
    """Holds `*.held` files until a file `open-gate` exists in the test's directory, so that a
    processor thread stays busy while the test changes the tree. It writes `entered-<name>` there
    when it starts waiting; it waits at most GATE_TIMEOUT seconds."""

    valid_extensions = (".held",)
    GATE_TIMEOUT = 60.0

    def run(self, input_file: str) -> str:
        name = os.path.basename(self.context.original_file)
        root = _test_root(self.context.original_file)
        open(os.path.join(root, f"entered-{name}"), "w").close()
        deadline = time.monotonic() + self.GATE_TIMEOUT
        while not os.path.exists(os.path.join(root, "open-gate")) and time.monotonic() < deadline:
            time.sleep(0.02)
        return input_file


class StuckInOpen(Processor):
    """A processor stuck in a system call that no stop request interrupts (as a tool or a
    careless third-party processor can be): for `*.stuck` files it opens the FIFO `stuck.fifo` in
    the test's directory with a plain open(), which blocks until a writer comes. It writes
    `stuck-entered` there first."""

    valid_extensions = (".stuck",)

    def run(self, input_file: str) -> str:
        root = _test_root(self.context.original_file)
        open(os.path.join(root, "stuck-entered"), "w").close()
        with open(os.path.join(root, "stuck.fifo"), "rb") as fifo:
            fifo.read()
        return input_file
