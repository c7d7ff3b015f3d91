"""link_updater.CSSURLUpdater against a real synced_files table (the original's schema): every url()
form, @import, image-set, query strings and fragments kept, data:/absolute/protocol-relative left
alone, comments and strings untouched, every other byte identical; waiting and dependencies."""
from __future__ import annotations

import logging
import os

import pytest

from fileconveyor.processors.base import WaitForFiles
from fileconveyor.processors.link_updater import CSSURLUpdater, find_urls
from tests.processors._support import HOSTILE_STEM, SyncedFiles, make_context

CDN = "https://cdn.example.test/static"


@pytest.fixture
def site(tmp_path):
    """documentRoot tmp/htdocs, basePath /drupal/ (existing on disk), a theme with images and fonts."""
    root = tmp_path / "htdocs"
    theme = root / "drupal" / "themes" / "t"
    for sub in ("css", "img", "fonts"):
        (theme / sub).mkdir(parents=True)
    for name in ("img/a.png", "img/b c.png", "img/q'uote.png", "img/par(en).png", "img/i1.png",
                 "img/i2.png", "fonts/f.eot", "fonts/f.woff", "css/imported.css", "css/other.css",
                 "img/\u00e9t\u00e9.png", "img/root.png"):
        (theme / name).write_bytes(b"x")
    db = SyncedFiles(str(tmp_path / "synced_files.db"))
    return root, theme, db


def sync_all(theme, db, server="cdn", version="1"):
    for path in sorted(p for p in theme.rglob("*") if p.is_file() and p.suffix != ".css" or
                       p.name in ("imported.css", "other.css")):
        relative = path.relative_to(theme).as_posix()
        stem, ext = os.path.splitext(relative)
        db.add(str(path), f"{CDN}/{stem.replace(' ', '%20')}_{version}{ext}", server)


CSS = r"""@charset "utf-8";
@import "imported.css";
@import url('other.css') screen;
/* url(../img/a.png) stays in a comment; so does @import "nope.css"; */
.a { background: url(../img/a.png) no-repeat; }
.b { background: URL( "../img/b c.png" ); }
.c { background: url('../img/q\'uote.png?v=2#frag'); }
.d { background: url(../img/par\(en\).png); }
.e { background: url(data:image/png;base64,iVBORw0KGgo=); }
.f { background: url(http://example.com/x.png), url(//cdn.other/y.png), url(HTTPS://e.com/z.png); }
.g { content: "url(../img/a.png)"; }
.h { background: -webkit-image-set("../img/i1.png" 1x, '../img/i2.png' 2x); }
@font-face { src: url(../fonts/f.eot?#iefix) format("embedded-opentype"), url("../fonts/f.woff") format("woff"); }
.i { background: url(../img/missing.png); }
.j { background: url(/drupal/themes/t/img/root.png); }
.k { background: url(../img/%C3%A9t%C3%A9.png); }
.l { filter: url(#svgfilter); }
.m { background:url(  ../img/a.png  ) }
"""

EXPECTED = r"""@charset "utf-8";
@import "https://cdn.example.test/static/css/imported_1.css";
@import url('https://cdn.example.test/static/css/other_1.css') screen;
/* url(../img/a.png) stays in a comment; so does @import "nope.css"; */
.a { background: url(https://cdn.example.test/static/img/a_1.png) no-repeat; }
.b { background: URL( "https://cdn.example.test/static/img/b%20c_1.png" ); }
.c { background: url('https://cdn.example.test/static/img/q\'uote_1.png?v=2#frag'); }
.d { background: url(https://cdn.example.test/static/img/par\(en\)_1.png); }
.e { background: url(data:image/png;base64,iVBORw0KGgo=); }
.f { background: url(http://example.com/x.png), url(//cdn.other/y.png), url(HTTPS://e.com/z.png); }
.g { content: "url(../img/a.png)"; }
.h { background: -webkit-image-set("https://cdn.example.test/static/img/i1_1.png" 1x, 'https://cdn.example.test/static/img/i2_1.png' 2x); }
@font-face { src: url(https://cdn.example.test/static/fonts/f_1.eot?#iefix) format("embedded-opentype"), url("https://cdn.example.test/static/fonts/f_1.woff") format("woff"); }
.i { background: url(../img/missing.png); }
.j { background: url(https://cdn.example.test/static/img/root_1.png); }
.k { background: url(https://cdn.example.test/static/img/été_1.png); }
.l { filter: url(#svgfilter); }
.m { background:url(  https://cdn.example.test/static/img/a_1.png  ) }
"""


def write_css(theme, text: str | bytes, name: str = "style.css") -> str:
    path = theme / "css" / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def run(css: str, db, tmp_path, server="cdn", document_root=None, base_path=None, work="work"):
    context = make_context(css, str(tmp_path / work), server=server, document_root=document_root,
                           base_path=base_path, synced_url=db.url_for(server))
    return context, CSSURLUpdater(context).run(css)


def test_contract():
    assert CSSURLUpdater.different_per_server
    assert CSSURLUpdater.valid_extensions == (".css",)
    assert CSSURLUpdater.would_process("/x/A.CSS") and not CSSURLUpdater.would_process("/x/css")


def test_every_url_form(site, tmp_path):
    root, theme, db = site
    sync_all(theme, db)
    css = write_css(theme, CSS)
    context, output = run(css, db, tmp_path, document_root=str(root), base_path="/drupal/")
    assert output != css and os.path.basename(output) == "style.css"
    assert open(output, encoding="utf-8").read() == EXPECTED
    assert open(css, encoding="utf-8").read() == CSS, "the source must not change"
    img = theme / "img"
    assert context.dependencies == {str(p) for p in (
        img / "a.png", img / "b c.png", img / "q'uote.png", img / "par(en).png", img / "i1.png",
        img / "i2.png", img / "root.png", img / "missing.png", img / "\u00e9t\u00e9.png", theme / "fonts" / "f.eot",
        theme / "fonts" / "f.woff", theme / "css" / "imported.css", theme / "css" / "other.css")}


def test_per_server_urls(site, tmp_path):
    root, theme, db = site
    sync_all(theme, db, server="cdn")
    a = theme / "img" / "a.png"
    db.add(str(a), "http://other.example.test/a-other.png", "other")
    css = write_css(theme, ".a{background:url(../img/a.png)}")
    _, out_cdn = run(css, db, tmp_path, server="cdn", work="w1")
    _, out_other = run(css, db, tmp_path, server="other", work="w2")
    assert open(out_cdn).read() == f".a{{background:url({CDN}/img/a_1.png)}}"
    assert open(out_other).read() == ".a{background:url(http://other.example.test/a-other.png)}"


def test_waits_for_unsynced_files(site, tmp_path):
    root, theme, db = site
    css = write_css(theme, CSS)
    with pytest.raises(WaitForFiles) as raised:
        run(css, db, tmp_path, document_root=str(root), base_path="/drupal/")
    assert str(theme / "img" / "a.png") in raised.value.paths
    assert str(theme / "img" / "missing.png") not in raised.value.paths
    sync_all(theme, db)
    db_a = theme / "img" / "a.png"
    with pytest.raises(WaitForFiles) as raised:  # synced to another server only: still waiting
        run(write_css(theme, ".a{background:url(../img/a.png)}", "one.css"), db, tmp_path,
            server="elsewhere", work="w3")
    assert raised.value.paths == (str(db_a),)


def test_new_url_after_resync(site, tmp_path):
    """A referenced file synced again under a new name: the next run writes the new URL."""
    root, theme, db = site
    sync_all(theme, db, version="1")
    css = write_css(theme, ".a{background:url(../img/a.png)}")
    context, first = run(css, db, tmp_path, work="w1")
    assert str(theme / "img" / "a.png") in context.dependencies
    sync_all(theme, db, version="2")
    _, second = run(css, db, tmp_path, work="w2")
    assert "a_1.png" in open(first).read() and "a_2.png" in open(second).read()


def test_root_relative_without_document_root(site, tmp_path, caplog):
    root, theme, db = site
    sync_all(theme, db)
    css = write_css(theme, ".j{background:url(/drupal/themes/t/img/root.png)} .a{background:url(../img/a.png)}")
    with caplog.at_level(logging.DEBUG, logger="fileconveyor"):
        _, output = run(css, db, tmp_path)
    assert open(output).read() == (".j{background:url(/drupal/themes/t/img/root.png)} "
                                   f".a{{background:url({CDN}/img/a_1.png)}}")


def test_logical_base_path(tmp_path):
    """basePath /site/ does not exist below documentRoot: the site is served from a URL prefix."""
    root = tmp_path / "docroot"
    (root / "img").mkdir(parents=True)
    (root / "css").mkdir()
    (root / "img" / "logo.png").write_bytes(b"x")
    db = SyncedFiles(str(tmp_path / "s.db"))
    db.add(str(root / "img" / "logo.png"), "http://cdn.test/logo.png", "cdn")
    css = write_css(root, "a{b:url(/site/img/logo.png)} c{d:url(/img/logo.png)}")
    _, output = run(css, db, tmp_path, document_root=str(root), base_path="/site/")
    assert open(output).read() == "a{b:url(http://cdn.test/logo.png)} c{d:url(http://cdn.test/logo.png)}"


def test_nothing_to_do_returns_input(site, tmp_path):
    root, theme, db = site
    css = write_css(theme, "a{color:red} b{background:url(data:x) url(http://e/x.png)} c{d:url(../img/nope.png)}")
    context, output = run(css, db, tmp_path)
    assert output == css
    assert context.dependencies == {str(theme / "img" / "nope.png")}, "queued again if it appears"


def test_other_encoding_is_byte_identical(site, tmp_path):
    root, theme, db = site
    sync_all(theme, db)
    raw = ('@charset "iso-8859-1";\n/* caf\u00e9 */ a{content:"\u00e9";background:url(../img/a.png)}\n'
           ).encode("latin-1") + b"/* invalid utf-8: \xff\xfe */\n"
    css = write_css(theme, raw)
    _, output = run(css, db, tmp_path)
    assert open(output, "rb").read() == raw.replace(b"../img/a.png", f"{CDN}/img/a_1.png".encode())


def test_bad_urls_and_odd_syntax_left_alone(site, tmp_path):
    root, theme, db = site
    sync_all(theme, db)
    text = ('a{b:url(../img/a "png)} c{d:myurl(../img/a.png)} e{f:url()} g{h:url("../img/a.png" x)}\n'
            'i{j:"unterminated\n} k{l:url(../img/a.png)}')
    css = write_css(theme, text)
    _, output = run(css, db, tmp_path)
    assert open(output).read() == text.replace("l:url(../img/a.png)", f"l:url({CDN}/img/a_1.png)")


def test_find_urls_is_linear_on_large_input():
    text = ".a{background:url(x.png)} /* c */ .b{content:'s'}\n" * 20000
    assert len(find_urls(text)) == 20000


def test_hostile_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    theme = tmp_path / "t"
    theme.mkdir()
    image = theme / (HOSTILE_STEM + ".png")
    image.write_bytes(b"x")
    db = SyncedFiles(str(tmp_path / "s.db"))
    db.add(str(image), "http://cdn.test/h%20x.png", "cdn")
    escaped = HOSTILE_STEM.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\a ")
    css = theme / (HOSTILE_STEM + ".css")
    css.write_text(f"a{{b:url('{escaped}.png')}}", encoding="utf-8")
    _, output = run(str(css), db, tmp_path)
    assert os.path.basename(output) == css.name
    assert open(output, encoding="utf-8").read() == "a{b:url('http://cdn.test/h%20x.png')}"
    assert not (tmp_path / "PWNED").exists()
