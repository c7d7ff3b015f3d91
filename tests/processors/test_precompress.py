"""precompress.Gzip / precompress.Brotli (original issue #3): pre-compressed siblings of text
assets, checked end to end with a real nginx (`gzip_static`, Debian's `brotli_static` module)
serving them to a client that sends Accept-Encoding.
"""
from __future__ import annotations

import gzip
import os
import pathlib

import pytest

from fileconveyor.config import check_config
from fileconveyor.processors.base import ProcessorChain, ProcessorError, ProcessorUnavailable, resolve_processor
from fileconveyor.processors.precompress import Brotli, Gzip
from fileconveyor.transporters.base import ObjectOptions, TransporterContext
from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter
from tests.e2e.harness import Daemon, counts, wait_for, write_config
from tests.processors._support import make_context
from tests.servers.nginx import NginxServer
from tests.test_config import MARK, with_processor, write

brotli = pytest.importorskip("brotli")

CSS = b"/* site */\n" + b"".join(b".rule-%d { color: #%06x; margin: 0 auto; }\n" % (n, n * 2731) for n in range(400))


def _run(tmp_path: pathlib.Path, name: str, data: bytes, *processors: str) -> tuple[str, object]:
    source = tmp_path / "src" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    context = make_context(str(source), str(tmp_path / f"work-{len(list(tmp_path.iterdir()))}"))
    output = ProcessorChain([resolve_processor(p) for p in processors]).run(context)
    return output, context


def test_siblings_of_a_text_asset(tmp_path: pathlib.Path) -> None:
    output, context = _run(tmp_path, "app.css", CSS, "precompress.Gzip", "precompress.Brotli")
    assert output == str(tmp_path / "src" / "app.css")  # the file itself passes through
    extras = context.extra_outputs  # type: ignore[attr-defined]
    assert [os.path.basename(e.path) for e in extras] == ["app.css.gz", "app.css.br"]
    assert [e.content_encoding for e in extras] == ["gzip", "br"]
    gz, br = (pathlib.Path(e.path).read_bytes() for e in extras)
    assert gzip.decompress(gz) == CSS and brotli.decompress(br) == CSS
    assert len(br) < len(gz) < len(CSS)
    again, context2 = _run(tmp_path, "app.css", CSS, "precompress.Gzip", "precompress.Brotli")
    assert [pathlib.Path(e.path).read_bytes() for e in context2.extra_outputs] == [gz, br]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["photo.png", "archive.zip", "font.woff2", "README"])
def test_no_siblings_of_what_is_compressed_already_or_unknown(tmp_path: pathlib.Path, name: str) -> None:
    _output, context = _run(tmp_path, name, b"x" * 1000, "precompress.Gzip", "precompress.Brotli")
    assert context.extra_outputs == []  # type: ignore[attr-defined]


def test_siblings_follow_the_processed_output(tmp_path: pathlib.Path) -> None:
    output, context = _run(tmp_path, "my style.css", CSS, "filename.SpacesToDashes", "precompress.Gzip")
    assert os.path.basename(output) == "my-style.css"
    assert [os.path.basename(e.path) for e in context.extra_outputs] == ["my-style.css.gz"]  # type: ignore[attr-defined]


def test_a_sibling_made_stale_by_a_later_processor_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ProcessorError, match="put the precompress processors last"):
        _run(tmp_path, "my style.css", CSS, "precompress.Gzip", "filename.SpacesToDashes")


def test_check_config_wants_precompress_last(tmp_path: pathlib.Path) -> None:
    text = with_processor('<processor name="precompress.Gzip"/>\n        '
                          '<processor name="unique_filename.MD5"/>')
    text = text.replace(MARK, "").replace('<processor name="unique_filename.MD5"/>',
                                          '<processor name="unique_filename.MD5"/>' + MARK)
    path, line = write(tmp_path, text)
    errors = [p for p in check_config(path) if p.severity == "error"]
    assert any(p.line == line and "put precompress.Gzip last in the chain" in p.message for p in errors), errors
    ok, _ = write(tmp_path, with_processor('<processor name="unique_filename.MD5"/>\n        '
                                           '<processor name="precompress.Gzip"/>\n        '
                                           '<processor name="precompress.Brotli"/>'), "ok.xml")
    assert not [p for p in check_config(ok) if p.severity == "error"]


def test_brotli_is_reported_missing_with_how_to_install(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "brotli", None)  # what an absent package looks like to import
    with pytest.raises(ProcessorUnavailable, match="pip install brotli"):
        Brotli.check_available()
    Gzip.check_available()


def _publish(tmp_path: pathlib.Path, web_root: pathlib.Path, names: dict[str, bytes]) -> None:
    """What the arbitrator does with a chain's output and its siblings, for a local web root:
    upload each next to the output, with the sibling's options."""
    transporter = SymlinkOrCopyTransporter({"location": str(web_root), "url": "http://x/"},
                                           TransporterContext("web", str(tmp_path / "state"),
                                                              source_roots=(str(tmp_path / "src"),)))
    for name, data in names.items():
        output, context = _run(tmp_path, name, data, "precompress.Gzip", "precompress.Brotli")
        remote = "static/" + os.path.basename(output)
        transporter.upload_object(output, remote, None)
        for extra in context.extra_outputs:  # type: ignore[attr-defined]
            transporter.upload_object(extra.path, "static/" + os.path.basename(extra.path),
                                      ObjectOptions(typed_as=remote, content_encoding=extra.content_encoding))


def _check_negotiation(server: NginxServer, path: str, original: bytes) -> None:
    plain = server.get(path)
    assert plain.body == original and "content-encoding" not in plain.headers
    zipped = server.get(path, "gzip, deflate")
    assert zipped.headers.get("content-encoding") == "gzip"
    assert zipped.headers["content-type"].startswith(plain.headers["content-type"].split(";")[0])
    assert gzip.decompress(zipped.body) == original
    if server.has_brotli:
        squeezed = server.get(path, "br, gzip")
        assert squeezed.headers.get("content-encoding") == "br"
        assert brotli.decompress(squeezed.body) == original


def test_nginx_serves_the_siblings_to_clients_that_ask(tmp_path: pathlib.Path, nginx_static) -> None:  # type: ignore[no-untyped-def]
    web_root = tmp_path / "www"
    js = b"function f(a){return a*2}\n" * 300
    _publish(tmp_path, web_root, {"app.css": CSS, "app.js": js})
    assert sorted(os.listdir(web_root / "static")) == ["app.css", "app.css.br", "app.css.gz", "app.js",
                                                       "app.js.br", "app.js.gz"]
    server = nginx_static(web_root)
    assert server.has_brotli, "Debian's libnginx-mod-http-brotli-static is missing (41-precompress.sh)"
    _check_negotiation(server, "static/app.css", CSS)
    _check_negotiation(server, "static/app.js", js)
    assert server.get("static/app.css").headers["content-type"].startswith("text/css")


def test_daemon_publishes_siblings_that_nginx_serves(tmp_path: pathlib.Path, nginx_static) -> None:  # type: ignore[no-untyped-def]
    setup = write_config(tmp_path, processors=("precompress.Gzip", "precompress.Brotli"))
    (pathlib.Path(setup.source) / "css").mkdir()
    (pathlib.Path(setup.source) / "css" / "app.css").write_bytes(CSS)
    server = nginx_static(pathlib.Path(setup.dest))
    with Daemon(setup) as daemon:
        wait_for(lambda: os.path.exists(os.path.join(setup.dest, "css", "app.css.br"))
                 and all(n == 0 for n in counts(setup).values()), 20, "the siblings to be published")
        _check_negotiation(server, "css/app.css", CSS)
        os.unlink(os.path.join(setup.source, "css", "app.css"))
        wait_for(lambda: not os.path.exists(os.path.join(setup.dest, "css")), 20,
                 "the file and its siblings to be deleted")
        assert daemon.terminate() == 0


def test_level_setting_reaches_gzip(tmp_path: pathlib.Path) -> None:
    """<processor name="precompress.Gzip"><level>1</level></processor>: the fastest level, which
    the gzip header records (XFL byte 4; level 9 writes 2)."""
    source = tmp_path / "app.css"
    source.write_bytes(CSS)
    made = []
    for level in (1, 9):
        context = make_context(str(source), str(tmp_path / f"work-{level}"))
        ProcessorChain([Gzip], [Gzip.parse_settings({"level": str(level)})]).run(context)
        made.append(pathlib.Path(context.extra_outputs[0].path).read_bytes())
    assert [data[8] for data in made] == [4, 2]
    assert gzip.decompress(made[0]) == CSS and len(made[0]) > len(made[1])


def test_daemon_passes_the_level_from_config_xml(tmp_path: pathlib.Path) -> None:
    """config.xml -> Rule.processor_settings -> the arbitrator's chain -> Gzip, in a real daemon."""
    setup = write_config(tmp_path, rule_extra='<processorChain><processor name="precompress.Gzip">'
                                              '<level>1</level></processor></processorChain>')
    (pathlib.Path(setup.source) / "app.css").write_bytes(CSS)
    copy = os.path.join(setup.dest, "app.css.gz")
    with Daemon(setup) as daemon:
        wait_for(lambda: os.path.exists(copy) and all(n == 0 for n in counts(setup).values()), 20,
                 "the .gz copy to be published")
        assert daemon.terminate() == 0
    data = pathlib.Path(copy).read_bytes()
    assert data[8] == 4 and gzip.decompress(data) == CSS  # XFL 4: level 1 (the default 9 writes 2)
