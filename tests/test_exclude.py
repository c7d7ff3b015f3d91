"""`<exclude>` in a rule's filter (original issues #52 and #154: exclude paths and patterns).

Pure decisions are tested on tables; the config tests check the schema, the file:line of every
mistake, and that a real daemon leaves excluded files alone while it syncs the rest.
"""
from __future__ import annotations

import os
import pathlib

import pytest
from lxml import etree

from fileconveyor import config as config_module
from fileconveyor.config import check_config, load_config
from fileconveyor.filter import Filter, FilterError
from tests.e2e.harness import Daemon, counts, query, wait_for, write_config
from tests.test_config import DEST, MARK, doc, rule, write

ROOT = "/srv/site"

EXCLUDE_CASES = [
    # (conditions, path, expected)
    ({"exclude": [{"paths": "tmp"}]}, "/srv/site/tmp/a.css", False),
    ({"exclude": [{"paths": "tmp"}]}, "/srv/site/tmp/deep/a.css", False),
    ({"exclude": [{"paths": "tmp"}]}, "/srv/site/tmpfile.css", True),  # by components, not by prefix
    ({"exclude": [{"paths": "tmp"}]}, "/srv/site/a/tmp/x.css", True),  # relative to the scan path only
    ({"exclude": [{"paths": "robots.txt"}]}, "/srv/site/robots.txt", False),  # an exclusion may name a file
    ({"exclude": [{"paths": "tmp:cache/private"}]}, "/srv/site/cache/private/k", False),
    ({"exclude": [{"paths": "tmp:cache/private"}]}, "/srv/site/cache/public/k", True),
    ({"exclude": [{"pattern": r".*\.min\.js$"}]}, "/srv/site/js/app.min.js", False),
    ({"exclude": [{"pattern": r".*\.min\.js$"}]}, "/srv/site/js/app.js", True),
    ({"exclude": [{"extensions": "map:LOG"}]}, "/srv/site/app.js.map", False),
    ({"exclude": [{"extensions": "map:LOG"}]}, "/srv/site/debug.log", False),  # any case
    # The conditions of one <exclude> must all hold (as in <filter>): only JS below vendor/.
    ({"exclude": [{"paths": "vendor", "extensions": "js"}]}, "/srv/site/vendor/x.js", False),
    ({"exclude": [{"paths": "vendor", "extensions": "js"}]}, "/srv/site/vendor/x.css", True),
    ({"exclude": [{"paths": "vendor", "extensions": "js"}]}, "/srv/site/x.js", True),
    # Any <exclude> takes a file out.
    ({"exclude": [{"paths": "tmp"}, {"pattern": ".*~$"}]}, "/srv/site/a.css~", False),
    ({"exclude": [{"paths": "tmp"}, {"pattern": ".*~$"}]}, "/srv/site/tmp/a.css", False),
    ({"exclude": [{"paths": "tmp"}, {"pattern": ".*~$"}]}, "/srv/site/a.css", True),
    # Exclusions narrow what the selecting conditions chose; they never add to it.
    ({"extensions": "css", "exclude": [{"paths": "tmp"}]}, "/srv/site/a.css", True),
    ({"extensions": "css", "exclude": [{"paths": "tmp"}]}, "/srv/site/a.js", False),
    ({"extensions": "css", "exclude": [{"paths": "tmp"}]}, "/srv/site/tmp/a.css", False),
    ({"paths": "static", "exclude": [{"paths": "static/private"}]}, "/srv/site/static/a.png", True),
    ({"paths": "static", "exclude": [{"paths": "static/private"}]}, "/srv/site/static/private/a.png", False),
    # Outside the source nothing matches, excluded or not.
    ({"exclude": [{"paths": "tmp"}]}, "/srv/other/a.css", False),
]


@pytest.mark.parametrize("conditions, path, expected", EXCLUDE_CASES)
def test_exclusions(conditions: dict, path: str, expected: bool) -> None:
    assert Filter(conditions, ROOT).matches(path) is expected


def test_size_exclusion_never_holds_back_a_deletion(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 100)
    rule_filter = Filter({"exclude": [{"size": {"conditionType": "minimum", "treshold": "10"}}]}, root)
    assert not rule_filter.matches(str(big))
    assert rule_filter.matches(str(tmp_path / "small.bin"), is_deleted=True)
    assert rule_filter.matches(str(big), is_deleted=True)  # it may have been small when it was synced


@pytest.mark.parametrize("conditions, condition, words", [
    ({"exclude": [{}]}, "exclude/0", "<exclude> is empty"),
    ({"exclude": [{"paths": "ok"}, {"paths": "../up"}]}, "exclude/1/paths", "in <exclude>: <paths> entry"),
    ({"exclude": [{"pattern": "(unclosed"}]}, "exclude/0/pattern", "not a valid Python regular expression"),
    ({"exclude": [{"ignoredDirs": "CVS"}]}, "exclude/0/ignoredDirs", "move it into <filter>"),
    ({"exclude": [{"exclude": []}]}, "exclude/0/exclude", "not allowed in <exclude>"),
    ({"exclude": "tmp"}, "exclude", "must hold conditions"),
])
def test_bad_exclusions_are_refused(conditions: dict, condition: str, words: str) -> None:
    with pytest.raises(FilterError) as raised:
        Filter(conditions, ROOT)
    assert raised.value.condition == condition
    assert words in str(raised.value)


def _with_filter(body: str) -> str:
    return doc(rules=rule("<filter>\n        " + body + "\n      </filter>\n      " + DEST))


@pytest.mark.parametrize("body, words", [
    ('<exclude/>' + MARK, "<exclude> is empty"),
    ('<exclude><paths>tmp</paths></exclude>\n        <exclude>\n          <paths>../x</paths>' + MARK
     + '\n        </exclude>', "leaves the scan path"),
    ('<exclude>\n          <pattern>[</pattern>' + MARK + '\n        </exclude>', "in <exclude>: <pattern>"),
    ('<exclude>\n          <ignoredDirs>CVS</ignoredDirs>' + MARK + '\n        </exclude>',
     "<ignoredDirs> is not allowed in <exclude>"),
    ('<exclude>\n          <pats>tmp</pats>' + MARK + '\n        </exclude>', "did you mean paths"),
    ('<exclude>\n          <paths>a</paths>\n          <paths>b</paths>' + MARK + '\n        </exclude>',
     "merge them"),
    ('<exclude>\n          <size conditionType="big">3</size>' + MARK + '\n        </exclude>',
     'conditionType="minimum"'),
])
def test_exclude_mistakes_are_reported_on_their_line(tmp_path: pathlib.Path, body: str, words: str) -> None:
    path, line = write(tmp_path, _with_filter(body))
    problems = [p for p in check_config(path) if p.severity == "error"]
    assert any(p.line == line and words in p.message for p in problems), \
        f"expected {words!r} on line {line}; got:\n" + "\n".join(map(str, problems))
    assert all(p.file == path for p in problems)


def test_schema_accepts_exclusions_and_refuses_them_elsewhere(tmp_path: pathlib.Path) -> None:
    schema = etree.RelaxNG(etree.parse(config_module.SCHEMA_PATH))
    good = _with_filter('<extensions>css</extensions>\n        <exclude><paths>tmp</paths>'
                        '<pattern>.*~$</pattern></exclude>\n        <exclude><size conditionType="minimum">9'
                        '</size></exclude>')
    path, _ = write(tmp_path, good)
    assert schema.validate(etree.parse(path)), schema.error_log
    for bad in (_with_filter('<exclude><ignoredDirs>CVS</ignoredDirs></exclude>'),
                _with_filter('<exclude><exclude><paths>a</paths></exclude></exclude>'),
                doc(rules=rule('<exclude><paths>a</paths></exclude>\n      ' + DEST))):
        path, _ = write(tmp_path, bad)
        assert not schema.validate(etree.parse(path))


def test_config_loads_exclusions_relative_to_the_scan_path(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, _with_filter('<exclude><paths>/tmp/</paths></exclude>'))
    config = load_config(path)
    rule_filter = config.rules[0].filter
    assert rule_filter is not None
    scan = str(tmp_path / "site")
    assert not rule_filter.matches(os.path.join(scan, "tmp", "a.css"))
    assert rule_filter.matches(os.path.join(scan, "a.css"))


def test_daemon_syncs_everything_but_the_excluded(tmp_path: pathlib.Path) -> None:
    setup = write_config(tmp_path, filter_xml=(
        "<filter><exclude><paths>private</paths></exclude>"
        r"<exclude><pattern>.*\.bak$</pattern></exclude></filter>"))
    files = {"index.css": b"body{}", "private/secret.txt": b"s3cr3t", "private/deep/key.pem": b"k",
             "notes.bak": b"old", "js/app.js": b"1", "privately.txt": b"not private"}
    for relative, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(setup.source, relative)), exist_ok=True)
        with open(os.path.join(setup.source, relative), "wb") as handle:
            handle.write(data)
    wanted = {"index.css", "js/app.js", "privately.txt"}
    with Daemon(setup) as daemon:
        def done() -> bool:
            rows = {r[0] for r in query(setup.db("synced_files.db"), "SELECT input_file FROM synced_files")}
            return rows == {os.path.join(setup.source, name) for name in wanted}
        wait_for(done, 60, "the files not excluded to be synced")
        with open(os.path.join(setup.source, "private", "later.txt"), "wb") as handle:  # a live event
            handle.write(b"x")
        with open(os.path.join(setup.source, "late.css"), "wb") as handle:
            handle.write(b"a{}")
        wanted.add("late.css")
        wait_for(done, 60, "a live event to be synced")
        # The event of private/later.txt was queued before that of late.css: once the queues are
        # empty, it has been decided on.
        wait_for(lambda: all(n == 0 for n in counts(setup).values()), 60, "empty queues")
        assert daemon.process is not None and daemon.process.poll() is None
    present = {os.path.relpath(os.path.join(d, f), setup.dest)
               for d, _, names in os.walk(setup.dest) for f in names}
    assert present == wanted
