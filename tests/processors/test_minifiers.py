"""minify.CSS/JS (rcssmin, rjsmin), yui_compressor.YUICompressor, google_closure_compiler: smaller
output that still behaves the same (JavaScript run under node before and after), licence comments
kept, non-ASCII text intact, hostile names, and the missing-tool path."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from fileconveyor.processors import google_closure_compiler, minify, yui_compressor
from fileconveyor.processors.base import ProcessorChain, ProcessorError, ProcessorUnavailable
from tests.processors._support import HOSTILE_STEM, make_context

JS = """/*! keep me: licence */
// A sample with closures, regexes, strings that look like comments, and non-ASCII text.
function makeCounter(start) {
    var count = start;   // the running total
    return function (step) {
        count = count + step;
        return count;
    };
}
var counter = makeCounter(10);
var results = [];
for (var i = 0; i < 5; i++) {
    results.push(counter(i));
}
var pattern = /a\\/b+c/g;
var text = "not a /* comment */ and not // one either";
var unicode = "caf\u00e9 \u6f22\u5b57";
console.log(JSON.stringify({results: results, matches: "a/bbc a/bc".match(pattern), text: text,
                            unicode: unicode, ratio: 1 / 3}));
"""

CSS = """/*! licence: keep */
/* an ordinary comment */
body {
    margin : 0 ;
    font-family : "Helvetica Neue", sans-serif;
}

.caf\u00e9 > a:hover ,  .x::after {
    content : "\u00e9  /* not a comment */";
    background : url( "img/a.png" ) no-repeat ;
}
@media (max-width : 600px) {
    .x { display : none ; }
}
"""

JS_PROCESSORS = [minify.JS, yui_compressor.YUICompressor, google_closure_compiler.GoogleClosureCompiler]
CSS_PROCESSORS = [minify.CSS, yui_compressor.YUICompressor]


def _available(cls) -> bool:
    try:
        cls.check_available()
    except ProcessorUnavailable:
        return False
    return True


def _run(cls, source: str, tmp_path, work: str = "work") -> str:
    return cls(make_context(source, str(tmp_path / work))).run(source)


def _node(path: str) -> str:
    return subprocess.run(["node", path], capture_output=True, check=True, timeout=60).stdout.decode()


@pytest.mark.parametrize("cls", JS_PROCESSORS, ids=lambda c: c.__name__)
def test_js_smaller_and_same_behaviour(cls, tmp_path):
    if not _available(cls):
        pytest.skip(f"{cls.__name__} is not installed (scripts/deps/40-processors.sh installs it)")
    source = tmp_path / "app.js"
    source.write_text(JS, encoding="utf-8")
    output = _run(cls, str(source), tmp_path)
    assert os.path.basename(output) == "app.js" and output != str(source)
    assert os.path.getsize(output) < os.path.getsize(source)
    minified = open(output, encoding="utf-8").read()
    assert "caf\u00e9 \u6f22\u5b57" in minified
    if cls is not google_closure_compiler.GoogleClosureCompiler:  # Closure keeps @license/@preserve only
        assert "keep me: licence" in minified
    if shutil.which("node"):
        assert _node(output) == _node(str(source))


@pytest.mark.parametrize("cls", CSS_PROCESSORS, ids=lambda c: c.__name__)
def test_css_smaller(cls, tmp_path):
    if not _available(cls):
        pytest.skip(f"{cls.__name__} is not installed")
    source = tmp_path / "style.css"
    source.write_text(CSS, encoding="utf-8")
    output = _run(cls, str(source), tmp_path)
    minified = open(output, encoding="utf-8").read()
    assert os.path.getsize(output) < os.path.getsize(source)
    assert "licence: keep" in minified and "ordinary comment" not in minified
    assert '"\u00e9  /* not a comment */"' in minified
    assert ".caf\u00e9>a:hover" in minified.replace(" ", "") and "max-width" in minified


def test_already_minified_passes_through(tmp_path):
    source = tmp_path / "min.js"
    source.write_text("var a=1;", encoding="utf-8")
    assert _run(minify.JS, str(source), tmp_path) == str(source)


@pytest.mark.parametrize("cls,ext", [(minify.JS, ".js"), (minify.CSS, ".css"),
                                     (yui_compressor.YUICompressor, ".js"),
                                     (yui_compressor.YUICompressor, ".css"),
                                     (google_closure_compiler.GoogleClosureCompiler, ".js")],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_hostile_names(cls, ext, tmp_path, monkeypatch):
    if not _available(cls):
        pytest.skip(f"{cls.__name__} is not installed")
    monkeypatch.chdir(tmp_path)
    source = tmp_path / (HOSTILE_STEM + ext)
    source.write_text(JS if ext == ".js" else CSS, encoding="utf-8")
    output = _run(cls, str(source), tmp_path)
    assert os.path.basename(output) == source.name and os.path.getsize(output) < os.path.getsize(source)
    assert not (tmp_path / "PWNED").exists()


def test_syntax_error_is_a_processor_error(tmp_path):
    cls = google_closure_compiler.GoogleClosureCompiler
    if not _available(cls):
        pytest.skip("closure-compiler is not installed")
    source = tmp_path / "broken.js"
    source.write_text("function ( { return", encoding="utf-8")
    with pytest.raises(ProcessorError):
        _run(cls, str(source), tmp_path)


@pytest.mark.parametrize("cls,variable", [(yui_compressor.YUICompressor, "FILECONVEYOR_YUI_JAR"),
                                          (google_closure_compiler.GoogleClosureCompiler,
                                           "FILECONVEYOR_CLOSURE_JAR")], ids=["yui", "closure"])
def test_missing_jar_is_reported_at_start_up(cls, variable, tmp_path, monkeypatch):
    monkeypatch.setenv(variable, str(tmp_path / "nowhere.jar"))
    with pytest.raises(ProcessorUnavailable, match=variable):
        cls.check_available()


@pytest.mark.parametrize("cls", [yui_compressor.YUICompressor, google_closure_compiler.GoogleClosureCompiler],
                         ids=["yui", "closure"])
def test_not_installed_says_how_to_install(cls, monkeypatch):
    monkeypatch.delenv(cls.env_var, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(yui_compressor, "PROCESSORS_DIR", "/nonexistent")
    with pytest.raises(ProcessorUnavailable, match=f"apt-get install {cls.debian_package}"):
        cls.check_available()


def test_jar_from_environment(tmp_path, monkeypatch):
    """A jar named by the variable is run with java -jar (Debian's jar stands in for a download)."""
    jar = "/usr/share/yui-compressor/yui-compressor.jar"
    if not (os.path.isfile(jar) and shutil.which("java")):
        pytest.skip("Debian's yui-compressor jar is not installed")
    monkeypatch.setenv("FILECONVEYOR_YUI_JAR", jar)
    assert yui_compressor.YUICompressor.tool()[1:] == ["-jar", jar]
    source = tmp_path / "s.css"
    source.write_text(CSS, encoding="utf-8")
    assert os.path.getsize(_run(yui_compressor.YUICompressor, str(source), tmp_path)) < len(CSS)


def test_closure_extensions_are_a_tuple():
    cls = google_closure_compiler.GoogleClosureCompiler
    assert cls.valid_extensions == (".js",)
    assert cls.would_process("/a/B.JS") and not cls.would_process("/a/js") and not cls.would_process("/a/x.json")


@pytest.mark.parametrize("cls", [yui_compressor.YUICompressor, google_closure_compiler.GoogleClosureCompiler],
                         ids=["yui", "closure"])
def test_jar_setting_wins_over_the_environment(cls, tmp_path, monkeypatch):
    """<jar> in config.xml is used (the variable, here pointing nowhere, is only the fallback)."""
    jar = ("/usr/share/java/yuicompressor.jar" if cls is yui_compressor.YUICompressor
           else "/usr/share/java/closure-compiler.jar")
    if not (os.path.isfile(jar) and shutil.which("java")):
        pytest.skip(f"{jar} (Debian's package) is not installed")
    monkeypatch.setenv(cls.env_var, str(tmp_path / "nowhere.jar"))
    settings = cls.parse_settings({"jar": jar})
    cls.check_available_with(settings)
    assert cls.tool(settings)[1:] == ["-jar", jar]
    source = tmp_path / "s.js"
    source.write_text("function add(first, second) {\n    return first + second;\n}\n", encoding="utf-8")
    output = ProcessorChain([cls], [settings]).run(make_context(str(source), str(tmp_path / "work")))
    assert os.path.getsize(output) < os.path.getsize(source)
