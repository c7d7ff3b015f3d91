"""filename.* and unique_filename.* on real files, chained the way config.xml chains them."""
from __future__ import annotations

import hashlib
import os

import pytest

from fileconveyor.processors.base import ProcessorChain, ProcessorContext, resolve_processor


def run_chain(tmp_path, source, names):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    context = ProcessorContext(original_file=str(source), document_root=None, base_path=None,
                               server=None, working_dir=str(work))
    return ProcessorChain([resolve_processor(n) for n in names]).run(context)


@pytest.mark.parametrize("name,expected", [
    ("filename.SpacesToUnderscores", "a_b_c.txt"),
    ("processors.filename.SpacesToDashes", "a-b-c.txt"),
    ("fileconveyor.processors.filename.SpacesToDashes", "a-b-c.txt"),
])
def test_space_replacement(tmp_path, name, expected):
    source = tmp_path / "a b c.txt"
    source.write_bytes(b"x")
    output = run_chain(tmp_path, source, [name])
    assert os.path.basename(output) == expected
    assert open(output, "rb").read() == b"x"
    assert source.exists(), "the source is never touched"


def test_unchanged_name_passes_the_source_through(tmp_path):
    source = tmp_path / "plain.txt"
    source.write_bytes(b"x")
    assert run_chain(tmp_path, source, ["filename.SpacesToUnderscores"]) == str(source)


def test_md5_hashes_the_content_actually_transported_and_keeps_earlier_renames(tmp_path):
    source = tmp_path / "my logo.tar.gz"
    source.write_bytes(b"content")
    output = run_chain(tmp_path, source, ["filename.SpacesToDashes", "unique_filename.MD5"])
    digest = hashlib.md5(b"content").hexdigest()
    assert os.path.basename(output) == f"my-logo.tar_{digest}.gz"


def test_mtime_uses_the_source_mtime_in_seconds(tmp_path):
    source = tmp_path / ".htaccess"
    source.write_bytes(b"x")
    os.utime(source, (1240668971.5, 1240668971.5))
    output = run_chain(tmp_path, source, ["unique_filename.Mtime"])
    assert os.path.basename(output) == ".htaccess_1240668971"


@pytest.mark.parametrize("hostile", ["$(touch pwned)", "a;b", "-rf", "quote'\"", "new\nline", "e\u0301t\u00e9 %23?.css"])
def test_hostile_names_pass_through(tmp_path, hostile):
    source = tmp_path / hostile
    source.write_bytes(b"x y")
    output = run_chain(tmp_path, source, ["filename.SpacesToUnderscores", "unique_filename.MD5"])
    assert os.path.dirname(output) == str(tmp_path / "work")
    assert open(output, "rb").read() == b"x y"
    assert not (tmp_path / "pwned").exists()
