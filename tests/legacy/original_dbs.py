"""Databases exactly as the original File Conveyor (Python 2) wrote them (original-spec 3.6, 5, 8).

Items are protocol-2 pickles, as `cPickle.dumps(item, HIGHEST_PROTOCOL)` produced them. Python 3's
pickle writes a `str` as BINUNICODE, exactly like Python 2 wrote `unicode`, so `pickle.dumps(...,
protocol=2)` is faithful for unicode paths. A Python 2 `str` (a byte string, in databases older than
the original's unicode fix) was written as SHORT_BINSTRING; Python 3 would pickle `bytes` through a
`_codecs.encode` global instead, so `original_pickle` emits those opcodes by hand.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import struct
from typing import Iterable, Sequence, Union

Path = Union[str, bytes]
Item = Union[tuple[Path, Union[int, float]], bytes]  # a (path, value) tuple, or a ready-made blob

DELETE_OLD_FILE = 0xFFFFFFFF


def _number(value: int | float) -> bytes:
    if isinstance(value, float):
        return pickle.BINFLOAT + struct.pack(">d", value)
    if 0 <= value < 256:
        return pickle.BININT1 + bytes([value])
    if -2**31 <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    encoded = pickle.encode_long(value)
    return pickle.LONG1 + bytes([len(encoded)]) + encoded


def original_pickle(item: tuple[Path, int | float]) -> bytes:
    """The blob Python 2's cPickle (protocol 2) wrote for a (path, number) tuple."""
    path, value = item
    if isinstance(path, str):
        return pickle.dumps((path, value), protocol=2)
    if len(path) < 256:
        text = pickle.SHORT_BINSTRING + bytes([len(path)]) + path
    else:
        text = pickle.BINSTRING + struct.pack("<i", len(path)) + path
    return pickle.PROTO + b"\x02" + text + _number(value) + pickle.TUPLE2 + pickle.STOP


class _Hostile:
    """Pickles as a call to os.system: what a tampered database could hold."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def hostile_pickle(marker: str) -> bytes:
    """A blob that, if unpickled by plain pickle.loads, runs `touch marker`."""
    return pickle.dumps(_Hostile(marker), protocol=2)


def _blob(item: Item) -> bytes:
    return item if isinstance(item, bytes) else original_pickle(item)


def _key(item: Item) -> str:
    """The original keyed discovered items by input_file (MD5 of its UTF-8 string)."""
    if isinstance(item, bytes):
        return hashlib.md5(item).hexdigest()
    path = item[0] if isinstance(item[0], bytes) else item[0].encode("utf-8")
    return hashlib.md5(path).hexdigest()


def create_persistent_data(path: str, queue: Sequence[Item] = (), *, keyed: bool = True,
                           pipeline_list: Sequence[Item] = (), failed: Sequence[Item] = (),
                           to_delete: Sequence[Item] = ()) -> None:
    """persistent_data.db with the four tables; `keyed=False` gives the pre-Aug-2011 queue.

    The keyed queue of the original could hold two rows for one path (recovery and retry keyed by
    the whole tuple): pass the same path twice with different events to get that."""
    conn = sqlite3.connect(path)
    if keyed:
        conn.execute("CREATE TABLE IF NOT EXISTS pipeline_queue(id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "item pickle, key CHAR(32))")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS unique_key ON pipeline_queue (key)")
        seen: set[str] = set()
        for item in queue:
            key = _key(item)
            if key in seen:  # a recovery/retry row: keyed by the tuple's str()
                key = hashlib.md5(repr(item).encode("utf-8")).hexdigest()
            seen.add(key)
            conn.execute("INSERT INTO pipeline_queue(item, key) VALUES (?, ?)", (_blob(item), key))
    else:
        conn.execute("CREATE TABLE IF NOT EXISTS pipeline_queue(id INTEGER PRIMARY KEY AUTOINCREMENT, "
                     "item pickle)")
        conn.executemany("INSERT INTO pipeline_queue(item) VALUES (?)", [(_blob(i),) for i in queue])
    for table, items in (("pipeline_list", pipeline_list), ("failed_files_list", failed),
                         ("files_to_delete_list", to_delete)):
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY AUTOINCREMENT, item pickle)")
        conn.executemany(f"INSERT INTO {table}(item) VALUES (?)", [(_blob(i),) for i in items])
    conn.commit()
    conn.close()


def create_synced_files(path: str, rows: Iterable[tuple[str, str, str, str]], *, unique_index: bool = True) -> None:
    """synced_files.db; `unique_index=False` gives a database from before June 2009 (duplicates allowed)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS synced_files(input_file text, transported_file_basename text, "
                 "url text, server text)")
    if unique_index:
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS file_unique_per_server ON synced_files (input_file, server)")
    conn.executemany("INSERT INTO synced_files VALUES (?, ?, ?, ?)", list(rows))
    conn.commit()
    conn.close()


def create_fsmonitor(path: str, rows: Iterable[tuple[str, str, int]]) -> None:
    """fsmonitor.db: (directory, entry name, integer st_mtime, or -1 for a directory)."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS pathscanner(path text, filename text, mtime integer)")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS file_unique_per_path ON pathscanner (path, filename)")
    conn.executemany("INSERT INTO pathscanner VALUES (?, ?, ?)", list(rows))
    conn.commit()
    conn.close()
