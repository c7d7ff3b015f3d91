"""config.xml: every broken config gives an error on the right line that says what to write; valid
configs load into the typed objects the rest of the daemon uses.

Broken configs are small documents written to tmp_path. The line a problem must be reported on is
marked in each document by the comment `<!--HERE-->` at the end of that line.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from lxml import etree

from fileconveyor import config as config_module
from fileconveyor.config import ConfigError, ConfigProblem, check_config, load_config

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / "fileconveyor" / "config.sample.xml"
MARK = "<!--HERE-->"

SOURCES = '<sources>\n    <source name="site" scanPath="{scan}"/>\n  </sources>'
SERVERS = ('<servers>\n    <server name="cdn" transporter="tests.configs.plugins">\n'
           '      <location>/tmp/cdn</location>\n      <url>http://cdn.example.com/</url>\n'
           '    </server>\n  </servers>')
RULES = ('<rules>\n    <rule for="site" label="all">\n'
         '      <destinations><destination server="cdn"/></destinations>\n    </rule>\n  </rules>')


def doc(sources: str = SOURCES, servers: str = SERVERS, rules: str = RULES, extra: str = "") -> str:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<config>\n  {sources}\n  {servers}\n  {rules}\n'
            f'  {extra}\n</config>\n')


def rule(body: str, attributes: str = 'for="site" label="r"') -> str:
    return f'<rules>\n    <rule {attributes}>\n      {body}\n    </rule>\n  </rules>'


DEST = '<destinations><destination server="cdn"/></destinations>'


def with_filter(condition: str) -> str:
    """A config whose one rule has a filter with `condition`, on the marked line."""
    return doc(rules=rule('<filter>\n        ' + condition + MARK + '\n      </filter>\n      ' + DEST))


def with_processor(processor: str) -> str:
    """A config whose one rule has a processor chain with `processor`, on the marked line."""
    return doc(rules=rule('<processorChain>\n        ' + processor + MARK + '\n      </processorChain>\n      '
                          + DEST))


def write(tmp_path: pathlib.Path, text: str | bytes, name: str = "config.xml") -> tuple[str, int]:
    """Write the config (with {scan} pointing at an existing directory); return path and marked line."""
    scan = tmp_path / "site"
    scan.mkdir(exist_ok=True)
    if isinstance(text, str):
        text = text.replace("{scan}", str(scan))
        data = text.encode("utf-8")
    else:
        data = text.replace(b"{scan}", str(scan).encode())
    marked = [n for n, line in enumerate(data.split(b"\n"), start=1) if MARK.encode() in line]
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), (marked[0] if marked else 1)


# (id, document, words that the message on the marked line must contain, structural?)
# "structural" cases break the grammar itself; the RelaxNG schema must reject them too.
BROKEN: list[tuple[str, str | bytes, str, bool]] = [
    ("xml-syntax", doc(rules='<rules>\n    <rule for="site">\n  </rules>' + MARK), "well-formed XML", False),
    ("empty-file", "", "write a <config>", False),
    ("latin-1", '<?xml version="1.0" encoding="UTF-8"?>\n<config>\n  <sources>\n'
                '    <source name="caf\xe9" scanPath="/x"/>' .encode("latin-1") + MARK.encode()
                + b"\n  </sources>\n</config>\n", "save it as UTF-8", False),
    ("wrong-root", '<?xml version="1.0"?>\n<konfig>' + MARK + '</konfig>\n', "write <config>", True),
    ("namespaced-root", '<?xml version="1.0"?>\n<config xmlns="urn:x">' + MARK + '</config>\n',
     "remove the xmlns namespace declaration", True),
    ("entity-not-resolved", '<?xml version="1.0"?>\n<!DOCTYPE config [<!ENTITY x SYSTEM "/etc/passwd">]>\n'
     '<config>' + MARK + '&x;</config>\n', "needs a <sources> element", True),
    ("transporter-module-without-class", doc(servers='<servers>\n    <server name="cdn" transporter="os.path">'
                                             + MARK + '</server>\n  </servers>'),
     "write one of symlink_or_copy", False),
    ("processor-class-missing", with_processor('<processor name="tests.configs.plugins.Nope"/>'),
     "write module.Class", False),
    ("missing-rules", '<?xml version="1.0"?>\n<config>' + MARK + '\n  ' + SOURCES + '\n  ' + SERVERS
     + '\n</config>\n', "<rules><rule", True),
    ("misspelt-rules", doc(rules='<Rules>' + MARK + '</Rules>'), "did you mean rules", True),
    ("two-sources-elements", doc(extra='<sources>' + MARK + '<source name="b" scanPath="/"/></sources>'),
     "merge them", True),
    ("source-without-scanPath", doc(sources='<sources>\n    <source name="site"/>' + MARK + '\n  </sources>'),
     '<source scanPath="/absolute/directory"', True),
    ("scanpath-case", doc(sources='<sources>\n    <source name="site" scanpath="{scan}"/>' + MARK
                          + '\n  </sources>'), "did you mean scanPath", True),
    ("basepath-case", doc(sources='<sources>\n    <source name="site" scanPath="{scan}" basepath="/x/"/>'
                          + MARK + '\n  </sources>'), "did you mean basePath", True),
    ("text-in-source", doc(sources='<sources>\n    <source name="site" scanPath="{scan}">oops</source>'
                           + MARK + '\n  </sources>'), "remove it", True),
    ("scanPath-missing-dir", doc(sources='<sources>\n    <source name="site" scanPath="/no/such/dir"/>'
                                 + MARK + '\n  </sources>'), "write the path of an existing directory",
     False),
    ("source-name-invalid", doc(sources='<sources>\n    <source name="my site" scanPath="{scan}"/>' + MARK
                                + '\n  </sources>'), "write a name made of letters", False),
    ("source-name-twice", doc(sources='<sources>\n    <source name="site" scanPath="{scan}"/>\n'
                              '    <source name="site" scanPath="{scan}"/>' + MARK + '\n  </sources>'),
     "give each <source> its own name", False),
    ("basePath-slashes", doc(sources='<sources>\n    <source name="site" scanPath="{scan}" basePath="drupal"/>'
                             + MARK + '\n  </sources>'), 'write basePath="/drupal/"', False),
    ("documentRoot-missing", doc(sources='<sources>\n    <source name="site" scanPath="{scan}" '
                                 'documentRoot="/no/such/root"/>' + MARK + '\n  </sources>'),
     "write the web server's document root", False),
    ("global-ignoredDirs", doc(sources='<sources ignoredDirs="CVS:a/b">' + MARK
                               + '\n    <source name="site" scanPath="{scan}"/>\n  </sources>'),
     "<ignoredDirs>CVS:.svn:.git</ignoredDirs>", False),
    ("unknown-transporter", doc(servers='<servers>\n    <server name="cdn" transporter="nosuch_transporter">'
                                + MARK + '</server>\n  </servers>'), "write one of", False),
    ("server-without-transporter", doc(servers='<servers>\n    <server name="cdn">' + MARK
                                       + '</server>\n  </servers>'), '<server transporter="symlink_or_copy"',
     True),
    ("missing-required-setting", doc(servers='<servers>\n    <server name="cdn" transporter='
                                     '"tests.configs.plugins">' + MARK + '\n      <location>/tmp/c</location>'
                                     '\n    </server>\n  </servers>'), "write <url>VALUE</url>", False),
    ("unknown-setting", doc(servers='<servers>\n    <server name="cdn" transporter="tests.configs.plugins">'
                            '\n      <location>/tmp/c</location><url>http://x/</url>\n      <URL>x</URL>'
                            + MARK + '\n    </server>\n  </servers>'), "did you mean <url>", False),
    ("bad-setting-value", doc(servers='<servers>\n    <server name="cdn" transporter="tests.configs.plugins">'
                              '\n      <location>/tmp/c</location><url>http://x/</url>\n      <port>ftp</port>'
                              + MARK + '\n    </server>\n  </servers>'), "write a number such as 21", False),
    ("setting-twice", doc(servers='<servers>\n    <server name="cdn" transporter="tests.configs.plugins">'
                          '\n      <location>/tmp/c</location><url>http://x/</url>\n      <url>http://y/</url>'
                          + MARK + '\n    </server>\n  </servers>'), "keep one of them", False),
    ("maxConnections", doc(servers='<servers>\n    <server name="cdn" transporter="tests.configs.plugins" '
                           'maxConnections="-1">' + MARK + '<location>/c</location><url>http://x/</url>'
                           '</server>\n  </servers>'), "0 or more", False),
    ("server-name-twice", doc(servers='<servers>\n    <server name="cdn" transporter="tests.configs.plugins">'
                              '<location>/c</location><url>http://x/</url></server>\n    <server name="cdn" '
                              'transporter="tests.configs.plugins">' + MARK + '<location>/c</location>'
                              '<url>http://x/</url></server>\n  </servers>'), "give each <server> its own name",
     False),
    ("rule-without-for", doc(rules=rule(DEST, 'label="r"') .replace('<rule label="r">',
                                                                     '<rule label="r">' + MARK)),
     '<rule for="SOURCE_NAME"', True),
    ("rule-for-unknown-source", doc(rules=rule(DEST, 'for="sit"').replace('<rule for="sit">',
                                                                           '<rule for="sit">' + MARK)),
     "did you mean site", False),
    ("rule-without-destinations", doc(rules='<rules>\n    <rule for="site">' + MARK + '\n    </rule>\n  </rules>'),
     '<destinations><destination server="SERVER_NAME"/></destinations>', True),
    ("empty-destinations", doc(rules=rule('<destinations>' + MARK + '\n      </destinations>')),
     'write <destination server="SERVER_NAME" path="static"/>', True),
    ("destination-unknown-server", doc(rules=rule('<destinations>\n        <destination server="cnd"/>' + MARK
                                                  + '\n      </destinations>')), "did you mean cdn", False),
    ("destination-path-escapes", doc(rules=rule('<destinations>\n        <destination server="cdn" '
                                                'path="static/../../etc"/>' + MARK + '\n      </destinations>')),
     'path="static"', False),
    ("destination-twice", doc(rules=rule('<destinations>\n        <destination server="cdn" path="a"/>\n'
                                         '        <destination server="cdn" path="b"/>' + MARK
                                         + '\n      </destinations>')), "keep one", False),
    ("deletion-delay", doc(rules=rule(DEST, 'for="site" fileDeletionDelayAfterSync="soon"').replace(
        'soon">', 'soon">' + MARK)), "write a number of seconds", False),
    ("labels-twice", doc(rules='<rules>\n    <rule for="site" label="x">' + DEST + '</rule>\n'
                         '    <rule for="site" label="x">' + MARK + DEST + '</rule>\n  </rules>'),
     'give each rule its own label="..."', False),
    ("empty-filter", doc(rules=rule('<filter/>' + MARK + '\n      ' + DEST)), "write one of <paths>", False),
    ("unknown-condition", with_filter('<extension>css</extension>'), "did you mean extensions",
     True),
    ("extension-with-dot", with_filter('<extensions>.css:js</extensions>'), "write 'css', without the dot",
     False),
    ("bad-pattern", with_filter('<pattern>(unclosed</pattern>'), r"<pattern>.*/images/.*\.png$</pattern>",
     False),
    ("size-type", with_filter('<size conditionType="min">3</size>'), 'conditionType="minimum"', True),
    ("size-threshold", with_filter('<size conditionType="maximum">10k</size>'), '<size conditionType="minimum">1024',
     False),
    ("paths-escape", with_filter('<paths>../elsewhere</paths>'), "<paths>misc:modules/system</paths>",
     False),
    ("unknown-processor", with_processor('<processor name="nosuch.Thing"/>'),
     "built-in modules: filename", False),
    ("processor-not-dotted", with_processor('<processor name="MD5"/>'),
     "for example filename.SpacesToUnderscores", False),
    ("processor-unavailable", with_processor('<processor name="tests.configs.plugins.NeedsMissingTool"/>'),
     "install it with", False),
    ("processor-without-name", with_processor('<processor nam="x.Y"/>'),
     "did you mean name", True),
    ("processor-unknown-setting", with_processor('<processor name="precompress.Gzip"><levle>5</levle></processor>'),
     "precompress.Gzip has no setting <levle> (it takes: <level>)", False),
    ("processor-bad-setting", with_processor('<processor name="precompress.Gzip"><level>12</level></processor>'),
     "<level> of precompress.Gzip: must be a whole number from 1 to 9", False),
    ("processor-missing-jar", with_processor('<processor name="yui_compressor.YUICompressor">'
                                             '<jar>/nonexistent/yui.jar</jar></processor>'),
     "/nonexistent/yui.jar does not exist", False),
    ("processor-relative-jar", with_processor('<processor name="google_closure_compiler.GoogleClosureCompiler">'
                                              '<jar>compiler.jar</jar></processor>'),
     "must be an absolute path", False),
    ("processor-setting-with-children", with_processor('<processor name="precompress.Gzip"><level><x/></level>'
                                                       '</processor>'), "write <level>VALUE</level>", True),
    ("unknown-setting-name", doc(extra='<settings>\n    <PID_FIL>/run/fc.pid</PID_FIL>' + MARK
                                 + '\n  </settings>'), "did you mean PID_FILE", False),
    ("bad-setting", doc(extra='<settings>\n    <MAX_FILES_IN_PIPELINE>lots</MAX_FILES_IN_PIPELINE>' + MARK
                        + '\n  </settings>'), "write a whole number", False),
    ("setting-with-children", doc(extra='<settings>\n    <PID_FILE><x/></PID_FILE>' + MARK
                                  + '\n  </settings>'), "write <PID_FILE>VALUE</PID_FILE>", True),
]


def _problems_on(problems: list[ConfigProblem], line: int) -> list[ConfigProblem]:
    return [p for p in problems if p.line == line and p.severity == "error"]


@pytest.mark.parametrize("text, words", [(c[1], c[2]) for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config_is_reported_on_its_line(tmp_path: pathlib.Path, text: str | bytes, words: str) -> None:
    path, line = write(tmp_path, text)
    problems = check_config(path)
    assert any(p.severity == "error" for p in problems), problems
    assert all(p.file == path for p in problems)
    on_line = _problems_on(problems, line)
    assert on_line, f"no error on line {line}: {[str(p) for p in problems]}"
    assert any(words in p.message for p in on_line), [p.message for p in on_line]
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == problems


def test_broken_config_table_is_large_and_distinct() -> None:
    assert len(BROKEN) >= 25
    assert len({c[0] for c in BROKEN}) == len(BROKEN)
    assert len({c[1] for c in BROKEN}) == len(BROKEN)


@pytest.mark.parametrize("text", [c[1] for c in BROKEN if c[3]], ids=[c[0] for c in BROKEN if c[3]])
def test_schema_rejects_structural_mistakes(tmp_path: pathlib.Path, text: str) -> None:
    """The Python walker gives the precise messages; the shipped schema must agree with it."""
    path, _ = write(tmp_path, text)
    root = etree.parse(path, etree.XMLParser(resolve_entities=False)).getroot()
    problems = config_module.schema_problems(root, path)
    assert problems
    assert all(p.line >= 1 and ("write" in p.message or "remove" in p.message) for p in problems), problems


def test_schema_messages_are_rewritten(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(rules='<rules>\n    <rule for="site">\n    </rule>\n  </rules>'))
    problems = config_module.schema_problems(etree.parse(path).getroot(), path)
    assert [(p.line, p.message) for p in problems] == [
        (13, '<destinations> is missing; write <destinations><destination server="SERVER_NAME"/>'
            '</destinations>')]


def test_every_problem_is_reported_not_just_the_first(tmp_path: pathlib.Path) -> None:
    text = doc(
        sources='<sources>\n    <source name="site" scanPath="{scan}" basePath="x"/>\n  </sources>',
        rules=rule('<filter><extensions>.css</extensions></filter>\n      <destinations>'
                   '<destination server="nope"/></destinations>', 'for="site" fileDeletionDelayAfterSync="-1"'),
        extra='<settings>\n    <MAX_FILES_IN_PIPELINE>0</MAX_FILES_IN_PIPELINE>\n'
              '    <RESTART_INTERVAL>never</RESTART_INTERVAL>\n    <NOT_A_SETTING>1</NOT_A_SETTING>\n'
              '  </settings>')
    path, _ = write(tmp_path, text)
    errors = [p for p in check_config(path) if p.severity == "error"]
    lines = sorted(p.line for p in errors)
    assert len(errors) == 7, [str(p) for p in errors]
    # basePath (4), the rule (13), its filter and destination (14, 15), three settings (19-21)
    assert lines == [4, 13, 14, 15, 19, 20, 21], [str(p) for p in errors]


@pytest.mark.parametrize("problem", ["missing", "directory"])
def test_unreadable_files_are_problems(tmp_path: pathlib.Path, problem: str) -> None:
    path = tmp_path / "config.xml"
    if problem == "directory":
        path.mkdir()
    problems = check_config(str(path))
    assert len(problems) == 1 and problems[0].line == 0 and "write the path" in problems[0].message
    with pytest.raises(ConfigError):
        load_config(str(path))


# --- valid configs -------------------------------------------------------------------------------

def _sample_in(tmp_path: pathlib.Path) -> str:
    """The shipped sample, with its demo directory moved into tmp_path."""
    demo = tmp_path / "demo"
    (demo / "site").mkdir(parents=True)
    path = tmp_path / "config.xml"
    path.write_text(SAMPLE.read_text(encoding="utf-8").replace("/tmp/fileconveyor-demo", str(demo)),
                    encoding="utf-8")
    return str(path)


def test_sample_config_loads(tmp_path: pathlib.Path) -> None:
    config = load_config(_sample_in(tmp_path))
    demo = str(tmp_path / "demo")
    assert config.warnings == ()
    assert list(config.sources) == ["site"]
    source = config.sources["site"]
    assert (source.scan_path, source.document_root, source.base_path) == (demo + "/site", demo, "/site/")
    assert config.ignored_dirs == frozenset({"CVS", ".svn", ".git"})
    server = config.servers["local web root"]
    assert (server.transporter, server.max_connections) == ("symlink_or_copy", 2)
    assert dict(server.settings) == {"location": demo + "/webroot", "url": "http://localhost:8080/static/"}
    first, videos = config.rules
    assert first.key == "site:CSS, JS, images and Flash"
    assert first.processors == ("filename.SpacesToDashes", "unique_filename.Mtime")
    assert first.destinations[0].path == "static" and first.deletion_delay is None
    assert first.filter is not None and first.filter.matches(demo + "/site/misc/a.css", is_deleted=True)
    assert not first.filter.matches(demo + "/site/misc/tmp/a.css", is_deleted=True)
    assert videos.deletion_delay == 3600.0
    assert config.settings.PID_FILE == demo + "/fileconveyor.pid"


def test_sample_config_matches_the_schema() -> None:
    root = etree.parse(str(SAMPLE)).getroot()
    assert config_module.schema_problems(root, str(SAMPLE)) == []


def test_settings_override_and_resolve_relative_to_the_config(tmp_path: pathlib.Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = write(tmp_path, doc(extra='<settings>\n    <PID_FILE> run/fc.pid </PID_FILE>\n'
                                  '    <MAX_FILES_IN_PIPELINE>200</MAX_FILES_IN_PIPELINE>\n'
                                  '    <WORKING_DIR>/var/tmp/fc</WORKING_DIR>\n  </settings>'))
    monkeypatch.chdir("/")  # the current directory must not matter
    settings = load_config(path).settings
    assert settings.PID_FILE == str(tmp_path / "run" / "fc.pid")
    assert settings.MAX_FILES_IN_PIPELINE == 200
    assert settings.WORKING_DIR == "/var/tmp/fc"
    assert settings.SYNCED_FILES_DB == str(tmp_path / "synced_files.db")


def test_settings_defaults(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc())
    settings = load_config(path).settings
    # Beside the state databases, whoever runs the command (#26, #152), and never in /tmp.
    assert settings.PID_FILE == str(tmp_path / "fileconveyor.pid")
    assert settings.WORKING_DIR == str(tmp_path / "processor_work")
    assert settings.SYNC_UNSAFE_SYMLINKS is False
    assert settings.MAX_FILES_IN_PIPELINE == 50
    assert settings.explicit == frozenset()


def test_pid_file_and_working_dir_follow_the_state_databases(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(extra='<settings>\n    <PERSISTENT_DATA_DB>state/p.db</PERSISTENT_DATA_DB>\n'
                                  '  </settings>'))
    settings = load_config(path).settings
    assert settings.PID_FILE == str(tmp_path / "state" / "fileconveyor.pid")
    assert settings.WORKING_DIR == str(tmp_path / "state" / "processor_work")
    assert settings.explicit == frozenset({"PERSISTENT_DATA_DB"})


def test_names_and_values_are_trimmed_and_paths_normalised(tmp_path: pathlib.Path) -> None:
    (tmp_path / "rel").mkdir()
    text = doc(
        sources='<sources ignoredDirs=" CVS : .git ">\n    <source name=" site " scanPath=" {scan}/./ "/>\n'
                '    <source name="rel" scanPath="rel/"/>\n  </sources>',
        rules='<rules>\n    <rule for=" site ">\n      <destinations><destination server=" cdn " '
              'path="/static//css/"/></destinations>\n    </rule>\n    <rule for="rel">' + DEST
              + '</rule>\n  </rules>')
    path, _ = write(tmp_path, text)
    config = load_config(path)
    assert config.sources["site"].scan_path == str(tmp_path / "site")
    assert config.sources["rel"].scan_path == str(tmp_path / "rel")  # relative to the config file
    assert config.ignored_dirs == frozenset({"CVS", ".git"})
    site_rule, rel_rule = config.rules
    assert (site_rule.source, site_rule.label) == ("site", "rule 1")  # default label
    assert rel_rule.label == "rule 2"
    assert site_rule.destinations[0].server == "cdn"
    assert site_rule.destinations[0].path == "static/css"
    assert config.servers["cdn"].settings["url"] == "http://cdn.example.com/"


def test_overlapping_rules_are_a_warning_not_an_error(tmp_path: pathlib.Path) -> None:
    text = doc(rules='<rules>\n    <rule for="site" label="css"><filter><extensions>css</extensions></filter>\n'
                     '      <destinations><destination server="cdn" path="s"/></destinations></rule>\n'
                     '    <rule for="site" label="all">\n'
                     '      <destinations><destination server="cdn" path="/s/"/></destinations></rule>\n'
                     '  </rules>')
    path, _ = write(tmp_path, text)
    config = load_config(path)
    assert [(w.line, w.severity) for w in config.warnings] == [(16, "warning")]
    assert "'css'" in config.warnings[0].message and "'all'" in config.warnings[0].message


def test_overlap_warning_tells_what_happens_at_different_paths(tmp_path: pathlib.Path) -> None:
    """Two rules sending one file to one server at two paths keep both copies; the warning says so
    and names the rule whose URL synced_files.db records (it used to say "synced once", which was
    false, and only looked at equal paths)."""
    text = doc(rules='<rules>\n    <rule for="site" label="first"><destinations><destination server="cdn" path="a"/>'
                     '</destinations></rule>\n    <rule for="site" label="second">\n'
                     '      <destinations><destination server="cdn" path="b"/></destinations></rule>\n'
                     '  </rules>')
    path, _ = write(tmp_path, text)
    [warning] = load_config(path).warnings
    assert "'a' and 'b'" in warning.message and "every copy is kept" in warning.message
    assert "records the copy of 'first'" in warning.message


def test_unused_server_and_logical_base_path_are_warnings(tmp_path: pathlib.Path) -> None:
    text = doc(sources='<sources>\n    <source name="site" scanPath="{scan}" documentRoot="{scan}" '
                       'basePath="/sub/"/>\n  </sources>',
               servers=SERVERS.replace('</servers>', '  <server name="spare" transporter="tests.configs.plugins">'
                                       '<location>/s</location><url>http://s/</url></server>\n  </servers>'))
    path, _ = write(tmp_path, text)
    warnings = load_config(path).warnings
    assert [w.line for w in warnings] == [4, 11]
    assert "symlink" in warnings[0].message and "'spare' is not used" in warnings[1].message


@pytest.mark.parametrize("name, canonical", [
    ("filename.SpacesToDashes", "filename.SpacesToDashes"),
    ("processors.filename.SpacesToDashes", "filename.SpacesToDashes"),
    ("fileconveyor.processors.unique_filename.MD5", "unique_filename.MD5"),
    ("processors.unique_filename.Mtime", "unique_filename.Mtime"),
    ("tests.configs.plugins.Upper", "tests.configs.plugins.Upper"),
])
def test_processor_names(tmp_path: pathlib.Path, name: str, canonical: str) -> None:
    path, _ = write(tmp_path, doc(rules=rule(f'<processorChain><processor name="{name}"/></processorChain>'
                                             + DEST)))
    assert load_config(path).rules[0].processors == (canonical,)


@pytest.mark.parametrize("name", ["symlink_or_copy", "transporters.transporter_symlink_or_copy",
                                  "fileconveyor.transporters.symlink_or_copy", "none"])
def test_transporter_names(tmp_path: pathlib.Path, name: str) -> None:
    servers = (f'<servers>\n    <server name="cdn" transporter="{name}">\n      <location>/tmp/cdn</location>\n'
               '      <url>http://cdn.example.com/</url>\n    </server>\n  </servers>')
    path, _ = write(tmp_path, doc(servers=servers))
    assert load_config(path).servers["cdn"].transporter == "symlink_or_copy"


@pytest.mark.parametrize("alias", ["mosso", "cumulus", "cloudfiles"])
def test_cloudfiles_aliases(tmp_path: pathlib.Path, alias: str) -> None:
    """mosso and cumulus are the old names of cloudfiles: whatever cloudfiles says, they say too."""
    def problems_for(name: str) -> list[str]:
        servers = (f'<servers>\n    <server name="cdn" transporter="{name}">\n      <username>u</username>\n'
                   '      <api_key>k</api_key>\n      <container>c</container>\n    </server>\n  </servers>')
        path, _ = write(tmp_path, doc(servers=servers))
        return [p.message.replace(repr(name), "NAME") for p in check_config(path) if p.severity == "error"]

    assert problems_for(alias) == problems_for("cloudfiles")
    assert not any("unknown transporter" in message for message in problems_for(alias))


def test_third_party_transporter_forms(tmp_path: pathlib.Path) -> None:
    for name in ("tests.configs.plugins", "tests.configs.plugins.DemoTransporter"):
        servers = SERVERS.replace('"tests.configs.plugins"', f'"{name}"')
        path, _ = write(tmp_path, doc(servers=servers))
        assert load_config(path).servers["cdn"].transporter == name


# --- the command line ----------------------------------------------------------------------------

CLI_CASES = [c for c in BROKEN if c[0] in (
    "xml-syntax", "latin-1", "wrong-root", "scanpath-case", "unknown-transporter", "rule-for-unknown-source",
    "empty-filter", "bad-setting")]


@pytest.mark.parametrize("text", [c[1] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_check_config_lists_problems_and_exits_2(tmp_path: pathlib.Path, text: str | bytes) -> None:
    path, line = write(tmp_path, text)
    result = subprocess.run([sys.executable, "-m", "fileconveyor", "check-config", path],
                            capture_output=True, text=True, timeout=60, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"{path}:{line}:" in result.stderr, output
    assert "Traceback" not in output


def test_cli_check_config_accepts_a_good_config(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc())
    result = subprocess.run([sys.executable, "-m", "fileconveyor", "check-config", path],
                            capture_output=True, text=True, timeout=60, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_processor_settings_are_loaded(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, doc(rules=rule(
        '<processorChain>\n        <processor name="filename.SpacesToDashes"/>\n'
        '        <processor name="precompress.Gzip">\n          <level> 4 </level>\n'
        '        </processor>\n      </processorChain>\n      ' + DEST)))
    loaded = load_config(path).rules[0]
    assert loaded.processors == ("filename.SpacesToDashes", "precompress.Gzip")
    assert loaded.processor_settings == ({}, {"level": 4})
