"""Helpers shared by the processor tests (issue 4): contexts, a real synced_files table, hostile names."""
from __future__ import annotations

import os
import sqlite3
import threading
from typing import Callable

from fileconveyor.processors.base import ProcessorContext

#: A file name that breaks anything that builds a command line or a shell string from it.
HOSTILE_STEM = "-$(touch PWNED); x 'q\" \n\u00e9\u6f22"

#: The original's table, as the Drupal module queries it.
SYNCED_FILES_DDL = ("CREATE TABLE synced_files(input_file text, transported_file_basename text, "
                    "url text, server text)")


def make_context(original_file: str, working_dir: str, server: str | None = None,
                 document_root: str | None = None, base_path: str | None = None,
                 synced_url: Callable[[str], str | None] | None = None) -> ProcessorContext:
    os.makedirs(working_dir, exist_ok=True)
    kwargs = {} if synced_url is None else {"synced_url": synced_url}
    return ProcessorContext(original_file=original_file, document_root=document_root,
                            base_path=base_path, server=server, working_dir=working_dir, **kwargs)


class SyncedFiles:
    """A real synced_files.db with the original schema; `url_for(server)` is a context's synced_url."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        with sqlite3.connect(path) as db:
            db.execute(SYNCED_FILES_DDL)

    def add(self, input_file: str, url: str, server: str) -> None:
        with self._lock, sqlite3.connect(self.path) as db:
            db.execute("DELETE FROM synced_files WHERE input_file=? AND server=?", (input_file, server))
            db.execute("INSERT INTO synced_files VALUES (?, ?, ?, ?)",
                       (input_file, url.rsplit("/", 1)[-1], url, server))

    def url_for(self, server: str) -> Callable[[str], str | None]:
        def synced_url(input_file: str) -> str | None:
            with self._lock, sqlite3.connect(self.path) as db:
                row = db.execute("SELECT url FROM synced_files WHERE input_file=? AND server=?",
                                 (input_file, server)).fetchone()
            return row[0] if row else None
        return synced_url
