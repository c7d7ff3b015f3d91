"""Rule filters: table-driven, pure (the only I/O is the size condition's stat on tmp files)."""
from __future__ import annotations

import os
import pathlib

import pytest

from fileconveyor.filter import Filter, FilterError, extension_of, in_ignored_dir, is_within

ROOT = "/srv/site"


@pytest.mark.parametrize("root, path, expected", [
    ("/srv/site", "/srv/site/a.css", True),
    ("/srv/site", "/srv/site/deep/er/a.css", True),
    ("/srv/site", "/srv/site", True),
    ("/srv/site/", "/srv/site/a.css", True),
    ("/srv/site", "/srv/site2/a.css", False),  # the original's string prefix said True
    ("/srv/site", "/srv/sit", False),
    ("/srv/site", "/srv", False),
    ("/srv/site", "/srv/site/../other/a.css", False),
    ("/", "/anything/at/all", True),
    ("/srv/site", "", False),
])
def test_is_within(root: str, path: str, expected: bool) -> None:
    assert is_within(root, path) is expected


@pytest.mark.parametrize("root, path, ignored, expected", [
    (ROOT, "/srv/site/CVS/a.txt", {"CVS"}, True),
    (ROOT, "/srv/site/a/b/.svn/c/d.txt", {".svn"}, True),
    (ROOT, "/srv/site/CVS.txt", {"CVS"}, False),  # the file's own name is not a directory
    (ROOT, "/srv/site/a/CVS", {"CVS"}, False),  # even a file called exactly CVS
    ("/home/CVS/site", "/home/CVS/site/a.txt", {"CVS"}, False),  # the root's components don't count
    ("/home/CVS/site", "/home/CVS/site/x/CVS/a.txt", {"CVS"}, True),
    (ROOT, "/srv/site/cvs/a.txt", {"CVS"}, False),  # names are case-sensitive
    (ROOT, "/elsewhere/CVS/a.txt", {"CVS"}, False),  # outside the root
    (ROOT, "/srv/site/CVS/a.txt", set(), False),
])
def test_in_ignored_dir(root: str, path: str, ignored: set[str], expected: bool) -> None:
    assert in_ignored_dir(root, path, frozenset(ignored)) is expected


@pytest.mark.parametrize("path, expected", [
    ("/a/b.css", "css"), ("/a/photo.JPG", "jpg"), ("/a/x.tar.gz", "gz"), ("/a/.htaccess", ""),
    ("/a/README", ""), ("/a.d/README", ""),
])
def test_extension_of(path: str, expected: str) -> None:
    assert extension_of(path) == expected


MATCH_CASES = [
    # (conditions, path, expected)
    ({"paths": "misc"}, "/srv/site/misc/a.js", True),
    ({"paths": "misc"}, "/srv/site/misc/deep/a.js", True),
    ({"paths": "misc"}, "/srv/site/misc.js", False),  # a file named like the directory
    ({"paths": "misc"}, "/srv/site/other/misc/a.js", False),  # relative to the scan path only
    ({"paths": "misc/"}, "/srv/site/misc/a.js", True),  # trailing slash: same directory
    ({"paths": "/misc"}, "/srv/site/misc/a.js", True),  # leading slash: relative to the scan path
    ({"paths": "/misc"}, "/srv/site/x/misc/a.js", False),
    ({"paths": "modules/system:misc"}, "/srv/site/modules/system/s.css", True),
    ({"paths": "modules/system:misc"}, "/srv/site/modules/user/u.css", False),
    ({"paths": "misc"}, "/srv/site2/misc/a.js", False),  # outside the source
    ({"extensions": "css:js"}, "/srv/site/a.css", True),
    ({"extensions": "css:js"}, "/srv/site/a.CSS", True),  # case-insensitive (deviation)
    ({"extensions": "JPG"}, "/srv/site/a.jpg", True),
    ({"extensions": "css:js"}, "/srv/site/a.png", False),
    ({"extensions": "gz"}, "/srv/site/a.tar.gz", True),
    ({"extensions": "htaccess"}, "/srv/site/.htaccess", False),
    ({"ignoredDirs": "CVS:.svn"}, "/srv/site/CVS/a.txt", False),
    ({"ignoredDirs": "CVS:.svn"}, "/srv/site/CVS.txt", True),  # the original excluded it
    ({"ignoredDirs": "CVS"}, "/srv/site/a/b/c.txt", True),
    ({"pattern": r".*\.css$"}, "/srv/site/a.css", True),
    ({"pattern": r".*\.css$"}, "/srv/site/a.css.bak", False),
    ({"pattern": r"\.css"}, "/srv/site/a.css", False),  # re.match: anchored at the start
    ({"pattern": r"/srv/site/img/"}, "/srv/site/img/a.png", True),
    ({"paths": "misc", "extensions": "js"}, "/srv/site/misc/a.js", True),
    ({"paths": "misc", "extensions": "js"}, "/srv/site/misc/a.css", False),
    ({"paths": "misc", "extensions": "js", "ignoredDirs": "old"}, "/srv/site/misc/old/a.js", False),
    ({"extensions": "js"}, "/srv/site", False),  # the root itself is no file of the source
]


@pytest.mark.parametrize("conditions, path, expected", MATCH_CASES)
def test_matches(conditions: dict[str, object], path: str, expected: bool) -> None:
    assert Filter(conditions, ROOT).matches(path) is expected
    assert Filter(conditions, ROOT + "/").matches(path) is expected


@pytest.mark.parametrize("condition_type, threshold_key, size, expected", [
    ("minimum", "treshold", 101, True),
    ("minimum", "treshold", 100, False),  # equal fails both, as in the original
    ("minimum", "threshold", 99, False),
    ("maximum", "treshold", 99, True),
    ("maximum", "threshold", 100, False),
    ("maximum", "treshold", 101, False),
])
def test_size(tmp_path: pathlib.Path, condition_type: str, threshold_key: str, size: int,
              expected: bool) -> None:
    file = tmp_path / "f.bin"
    file.write_bytes(b"x" * size)
    rule_filter = Filter({"size": {"conditionType": condition_type, threshold_key: "100"}}, str(tmp_path))
    assert rule_filter.matches(str(file)) is expected
    # Deleted files are not measured: the size condition holds.
    assert rule_filter.matches(str(file), is_deleted=True) is True


def test_size_of_vanished_file_does_not_match(tmp_path: pathlib.Path) -> None:
    rule_filter = Filter({"size": {"conditionType": "minimum", "treshold": "0"}}, str(tmp_path))
    file = tmp_path / "gone.txt"
    file.write_text("x")
    assert rule_filter.matches(str(file)) is True
    os.unlink(file)
    assert rule_filter.matches(str(file)) is False
    assert rule_filter.matches(str(file), is_deleted=True) is True


INVALID_CASES = [
    # (conditions, condition named in the error, words the message must contain)
    ({}, None, "<paths>"),
    ({"colour": "red"}, "colour", "write one of"),
    ({"paths": ""}, "paths", "<paths>misc:modules/system</paths>"),
    ({"paths": None}, "paths", "write for example"),
    ({"paths": "a::b"}, "paths", "write for example"),
    ({"paths": "a*b"}, "paths", "'*'"),
    ({"paths": "../up"}, "paths", "relative to the source's scanPath"),
    ({"extensions": ".css"}, "extensions", "without the dot"),
    ({"extensions": "c/ss"}, "extensions", "<extensions>css:js:png</extensions>"),
    ({"ignoredDirs": "a/b"}, "ignoredDirs", "<ignoredDirs>CVS:.svn:.git</ignoredDirs>"),
    ({"pattern": ""}, "pattern", "write a Python regular expression"),
    ({"pattern": "(unclosed"}, "pattern", "not a valid Python regular expression"),
    ({"size": "100"}, "size", '<size conditionType="minimum">1024</size>'),
    ({"size": {"conditionType": "min", "treshold": "1"}}, "size", 'conditionType="minimum"'),
    ({"size": {"conditionType": "minimum"}}, "size", "whole number of bytes"),
    ({"size": {"conditionType": "minimum", "treshold": "1k"}}, "size", "whole number of bytes"),
    ({"size": {"conditionType": "maximum", "treshold": "-5"}}, "size", "0 or more"),
    ({"size": {"conditionType": "maximum", "treshold": "5", "threshold": "6"}}, "size", "one number"),
]


@pytest.mark.parametrize("conditions, condition, words", INVALID_CASES)
def test_invalid_conditions(conditions: dict[str, object], condition: str | None, words: str) -> None:
    with pytest.raises(FilterError) as caught:
        Filter(conditions, ROOT)
    assert isinstance(caught.value, ValueError)
    assert caught.value.condition == condition
    assert words in str(caught.value)


def test_conditions_accept_lists_and_whitespace() -> None:
    rule_filter = Filter({"extensions": [" css ", "JS"], "paths": " misc : img "}, ROOT)
    assert rule_filter.extensions == frozenset({"css", "js"})
    assert rule_filter.paths == ("/srv/site/misc", "/srv/site/img")
    assert rule_filter.matches("/srv/site/img/a.js")


@pytest.mark.parametrize("a,b,overlap", [
    (None, {"extensions": "css"}, True),
    ({"extensions": "css:js"}, {"extensions": "png:JS"}, True),
    ({"extensions": "css"}, {"extensions": "png"}, False),
    ({"paths": "a"}, {"paths": "a/b"}, True),
    ({"paths": "a"}, {"paths": "b:c"}, False),
    ({"size": {"conditionType": "maximum", "threshold": "100"}},
     {"size": {"conditionType": "minimum", "threshold": "1000"}}, False),
    ({"size": {"conditionType": "minimum", "threshold": "100"}},
     {"size": {"conditionType": "maximum", "threshold": "1000"}}, True),
    ({"pattern": r".*\.css$"}, {"pattern": r".*\.png$"}, True),  # patterns are not compared: may overlap
])
def test_may_overlap_is_false_only_when_certain(a, b, overlap):
    """check-config warns about rules sending one file twice to a server only when their filters
    may both match a file (it warned about every pair, or only about equal paths)."""
    from fileconveyor.filter import Filter, may_overlap
    make = (lambda conditions: None if conditions is None else Filter(conditions, "/srv/site"))
    assert may_overlap(make(a), make(b)) is overlap
    assert may_overlap(make(b), make(a)) is overlap
