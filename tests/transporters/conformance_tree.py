"""Conformance tests of a destination as a tree: directories in the way, and listings.

Part of the one conformance suite (`TransporterConformance` inherits `TreeConformance`), kept in
a module of its own because it grew with issue 9 (know what is on the remote):

* a file that replaces a directory must be accepted once the files below the directory are
  deleted (SFTP and FTP kept the emptied directory, so the final rename failed for ever with a
  "Failure" classified as retryable); a directory that still holds files is retryable (the
  deletions below it are other trips, maybe still running);
* `list_files` (where `can_list`): globally sorted paths (by UTF-8 bytes, even across nested
  directories: `a-b` < `a/x` < `a0`), right sizes, MD5s where claimed, prefixes, pages,
  temporary names flagged.

Tests that need to look at or make directories without the transporter use the harness's `root`
(destinations whose root is a directory here: SFTP, FTP, symlink_or_copy); on object stores
there are no directories and those tests are skipped.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import time
from typing import Any

import pytest

from fileconveyor.transporters.base import (
    RetryableError,
    RemoteEntry,
    Transporter,
    listing_key,
)

#: Names whose order in a listing is tricky: a directory `a` sorts as `a/`, between `a.txt`
#: (0x2E) and `a0.txt` (0x30), and after `a-b.txt` (0x2D); upper case before lower case; multibyte
#: names by their bytes.
TREE: dict[str, bytes] = {
    "a-b.txt": b"1",
    "a.txt": b"22",
    "a/x.txt": b"333",
    "a/b/c.txt": b"4444",
    "a/b/d e.txt": b"",
    "a0.txt": b"55555",
    "B.txt": b"666666",
    "dir with space/\u00e9t\u00e9.txt": b"7777777",
    "\u4e2d\u6587/\u6587.txt": b"88888888",
    "emoji-\U0001f600.txt": b"999999999",
    "z/zz/zzz/deep.txt": b"deep",
}


def _root(harness: Any) -> pathlib.Path:
    """The destination's root on this machine, or skip: an object store has no directories."""
    root = getattr(harness, "root", None)
    if not isinstance(root, pathlib.Path):
        pytest.skip("the destination has no directories (an object store)")
    return root


def _listing(transporter: Transporter, prefix: str = "") -> list[RemoteEntry]:
    if not transporter.can_list:
        pytest.skip("this transporter cannot list (can_list is false)")
    return list(transporter.list_files(prefix))


def _upload_tree(transporter: Transporter, tmp_path: pathlib.Path,
                 tree: dict[str, bytes] = TREE) -> None:
    for index, (name, content) in enumerate(tree.items()):
        local = tmp_path / f"tree-{index}"
        local.write_bytes(content)
        transporter.upload(str(local), name)


class TreeConformance:
    """Mixed into TransporterConformance: uses its `harness` and `transporter` fixtures."""

    # -- directories in the way (issue 9, found by the torture suite) ---------------------------------

    def test_a_file_replaces_an_emptied_directory(self, harness: Any, transporter: Transporter,
                                                  tmp_path: pathlib.Path) -> None:
        (tmp_path / "below").write_bytes(b"below the directory")
        (tmp_path / "file").write_bytes(b"the file in its place")
        transporter.upload(str(tmp_path / "below"), "d/sub/f.txt")
        transporter.delete("d/sub/f.txt")
        transporter.upload(str(tmp_path / "file"), "d")
        assert harness.read("d") == b"the file in its place"
        assert harness.list() == ["d"]
        # And back: a directory where the file was.
        transporter.delete("d")
        transporter.upload(str(tmp_path / "below"), "d/sub/f.txt")
        assert harness.list() == ["d/sub/f.txt"]

    def test_delete_removes_emptied_directories_but_never_the_root(
            self, harness: Any, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        root = _root(harness)
        (tmp_path / "f").write_bytes(b"f")
        transporter.upload(str(tmp_path / "f"), "a/b/c.txt")
        transporter.upload(str(tmp_path / "f"), "a/keep.txt")
        transporter.delete("a/b/c.txt")
        assert not (root / "a" / "b").exists()
        assert (root / "a" / "keep.txt").is_file()
        transporter.delete("a/keep.txt")
        assert not (root / "a").exists()
        assert root.is_dir()
        transporter.upload(str(tmp_path / "f"), "top.txt")
        transporter.delete("top.txt")
        assert root.is_dir()

    def test_a_file_replaces_an_empty_directory_someone_made(
            self, harness: Any, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        root = _root(harness)
        (root / "e" / "empty").mkdir(parents=True)
        (tmp_path / "file").write_bytes(b"file")
        transporter.upload(str(tmp_path / "file"), "e/empty")
        assert harness.read("e/empty") == b"file"

    def test_a_directory_with_files_in_the_way_is_a_retryable_error(
            self, harness: Any, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        _root(harness)
        (tmp_path / "below").write_bytes(b"still published")
        (tmp_path / "file").write_bytes(b"cannot go there")
        transporter.upload(str(tmp_path / "below"), "n/f.txt")
        # Retryable: the deletions of the files below are other paths' trips, maybe still running.
        with pytest.raises(RetryableError, match="not empty"):
            transporter.upload(str(tmp_path / "file"), "n")
        assert harness.read("n/f.txt") == b"still published"
        assert harness.list() == ["n/f.txt"]

    # -- listing --------------------------------------------------------------------------------------

    def test_list_files_is_sorted_with_sizes_and_hashes(
            self, harness: Any, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        if not transporter.can_list:
            pytest.skip("this transporter cannot list (can_list is false)")
        started = time.time()
        _upload_tree(transporter, tmp_path)
        entries = _listing(transporter)
        paths = [entry.path for entry in entries]
        assert paths == sorted(TREE, key=listing_key)
        assert sorted(paths) == harness.list()  # what the server holds, seen without the transporter
        for entry in entries:
            content = TREE[entry.path]
            assert entry.size == len(content), entry
            assert not entry.temporary, entry
            if entry.md5 is not None:
                assert entry.md5 == hashlib.md5(content).hexdigest(), entry
            if entry.mtime is not None:
                assert started - 600 < entry.mtime < time.time() + 600, entry

    def test_list_files_below_a_prefix(self, harness: Any, transporter: Transporter,
                                       tmp_path: pathlib.Path) -> None:
        if not transporter.can_list:
            pytest.skip("this transporter cannot list (can_list is false)")
        _upload_tree(transporter, tmp_path)
        below_a = sorted((name for name in TREE if name.startswith("a/")), key=listing_key)
        for prefix in ("a", "a/", "/a/"):
            assert [e.path for e in _listing(transporter, prefix)] == below_a, prefix
        assert [e.path for e in _listing(transporter, "a/b")] == ["a/b/c.txt", "a/b/d e.txt"]
        assert [e.path for e in _listing(transporter, "\u4e2d\u6587")] == ["\u4e2d\u6587/\u6587.txt"]
        assert [e.path for e in _listing(transporter, "z/zz")] == ["z/zz/zzz/deep.txt"]
        assert _listing(transporter, "does-not-exist") == []
        assert _listing(transporter, "a.txt") == []  # a file, not a directory
        assert _listing(transporter, "a/x") == []  # a string prefix of a/x.txt, not a directory
        assert [e.path for e in _listing(transporter, "/")] == sorted(TREE, key=listing_key)

    def test_list_files_of_an_empty_destination(self, transporter: Transporter) -> None:
        assert _listing(transporter) == []

    def test_list_files_in_small_pages(self, transporter: Transporter,
                                       tmp_path: pathlib.Path) -> None:
        if not transporter.can_list:
            pytest.skip("this transporter cannot list (can_list is false)")
        _upload_tree(transporter, tmp_path)
        transporter.list_page_size = 2
        transporter.listing_requests = 0
        assert [e.path for e in _listing(transporter)] == sorted(TREE, key=listing_key)
        # Pages of 2 (object stores) or one request per directory (trees): several either way.
        assert transporter.listing_requests >= len(TREE) // 2, transporter.listing_requests

    def test_list_files_flags_temporary_names(self, harness: Any, transporter: Transporter,
                                              tmp_path: pathlib.Path) -> None:
        if not harness.temporary_names:
            pytest.skip("this transporter writes no temporary names")
        root = _root(harness)
        (tmp_path / "f").write_bytes(b"published")
        transporter.upload(str(tmp_path / "f"), "t/f.txt")
        leftover = root / "t" / ".f.txt.fctmp-0123456789ab"
        leftover.write_bytes(b"half")
        entries = _listing(transporter)
        assert [(e.path, e.temporary) for e in entries] == [
            ("t/.f.txt.fctmp-0123456789ab", True), ("t/f.txt", False)]

    def test_list_files_gives_no_md5_for_a_multipart_object(
            self, harness: Any, tmp_path: pathlib.Path) -> None:
        if harness.multipart_settings is None:
            pytest.skip("this transporter has no multipart upload")
        transporter = harness.make(**harness.multipart_settings)
        data = os.urandom(11 * 1024 * 1024 + 7)
        (tmp_path / "mp").write_bytes(data)
        (tmp_path / "single").write_bytes(b"single part")
        transporter.upload(str(tmp_path / "mp"), "mp.bin")
        transporter.upload(str(tmp_path / "single"), "single.txt")
        entries = {e.path: e for e in _listing(transporter)}
        assert entries["mp.bin"].size == len(data)
        assert entries["mp.bin"].md5 is None and entries["mp.bin"].etag
        assert entries["single.txt"].md5 == hashlib.md5(b"single part").hexdigest()

    # -- read-back (verify --deep) --------------------------------------------------------------------

    def test_read_back_md5(self, transporter: Transporter, tmp_path: pathlib.Path) -> None:
        if not transporter.can_read_back:
            pytest.skip("this transporter cannot read copies back (can_read_back is false)")
        data = os.urandom(3 * 1024 * 1024 + 5)
        (tmp_path / "r").write_bytes(data)
        transporter.upload(str(tmp_path / "r"), "r/back.bin")
        assert transporter.read_back_md5("r/back.bin") == hashlib.md5(data).hexdigest()
        assert transporter.read_back_md5("r/missing.bin") is None
