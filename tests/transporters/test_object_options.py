"""A destination's own ACL and headers (original issue #159: every S3 object was public-read), and
the Content-Type/Content-Encoding of pre-compressed copies (original issue #3), on real servers:
moto for S3, an all-in-one Swift for Cloud Files, a real daemon for the way from config.xml to
the object.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import urllib.request

import pytest

from fileconveyor.config import check_config, load_config
from fileconveyor.transporters.base import ObjectOptions, TransporterContext
from fileconveyor.transporters.cloudfiles import CloudFilesTransporter
from fileconveyor.transporters.s3 import S3Transporter
from tests.e2e.harness import Daemon, counts, query, wait_for, write_config
from tests.servers.moto import FAKE_KEY_ID, FAKE_SECRET, MotoServer
from tests.servers.swift import SwiftServer
from tests.test_config import MARK, SOURCES, doc, write

PRIVATE = ObjectOptions((("acl", "private"), ("cache_control", "private, no-store"), ("expires", "")))
FAR_FUTURE = datetime.datetime(2037, 1, 20, 3, 0, tzinfo=datetime.timezone.utc)


def _is_public(client: object, bucket: str, key: str) -> bool:
    grants = client.get_object_acl(Bucket=bucket, Key=key)["Grants"]  # type: ignore[attr-defined]
    return any(g["Grantee"].get("URI", "").endswith("AllUsers") and g["Permission"] == "READ" for g in grants)


def _s3(moto_server: MotoServer, bucket: str, tmp_path: pathlib.Path, **settings: str) -> S3Transporter:
    return S3Transporter({"bucket_name": bucket, "endpoint_url": moto_server.endpoint,
                          "access_key_id": FAKE_KEY_ID, "secret_access_key": FAKE_SECRET, **settings},
                         TransporterContext("s3", str(tmp_path / "state")))


def test_s3_destination_options_override_the_server_settings(moto_server: MotoServer, s3_bucket: str,
                                                             tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4 private")
    transporter = _s3(moto_server, s3_bucket, tmp_path, acl="public-read")
    transporter.upload_object(str(tmp_path / "a.pdf"), "docs/private.pdf", PRIVATE)
    transporter.upload_object(str(tmp_path / "a.pdf"), "docs/public.pdf", None)
    client = moto_server.client()
    private = client.head_object(Bucket=s3_bucket, Key="docs/private.pdf")
    public = client.head_object(Bucket=s3_bucket, Key="docs/public.pdf")
    assert not _is_public(client, s3_bucket, "docs/private.pdf")
    assert private["CacheControl"] == "private, no-store"
    assert "Expires" not in private  # set empty by the destination: none, not the server's
    assert _is_public(client, s3_bucket, "docs/public.pdf")  # the server-level default still works
    assert public["CacheControl"] == "max-age=315360000"
    assert public["Expires"] == FAR_FUTURE


def test_s3_multipart_upload_carries_the_options(moto_server: MotoServer, s3_bucket: str,
                                                 tmp_path: pathlib.Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    transporter = _s3(moto_server, s3_bucket, tmp_path, acl="public-read", multipart_threshold="5MiB",
                      multipart_chunksize="5MiB")
    transporter.upload_object(str(tmp_path / "big.bin"), "big.bin", PRIVATE)
    client = moto_server.client()
    assert client.head_object(Bucket=s3_bucket, Key="big.bin")["CacheControl"] == "private, no-store"
    assert not _is_public(client, s3_bucket, "big.bin")


def test_s3_precompressed_copy_keeps_the_type_of_what_it_compresses(moto_server: MotoServer, s3_bucket: str,
                                                                    tmp_path: pathlib.Path) -> None:
    (tmp_path / "app.css.gz").write_bytes(b"\x1f\x8b compressed")
    (tmp_path / "backup.tar.gz").write_bytes(b"\x1f\x8b archive")
    transporter = _s3(moto_server, s3_bucket, tmp_path)
    transporter.upload_object(str(tmp_path / "app.css.gz"), "app.css.gz",
                              ObjectOptions(typed_as="app.css", content_encoding="gzip"))
    transporter.upload_object(str(tmp_path / "backup.tar.gz"), "backup.tar.gz", None)
    client = moto_server.client()
    head = client.head_object(Bucket=s3_bucket, Key="app.css.gz")
    assert head["ContentType"] == "text/css; charset=utf-8"
    assert head["ContentEncoding"] == "gzip"
    archive = client.head_object(Bucket=s3_bucket, Key="backup.tar.gz")
    assert archive["ContentType"] == "application/gzip"  # a user's archive is never "decoded"
    assert "ContentEncoding" not in archive


def test_transporters_of_plain_files_drop_the_options(tmp_path: pathlib.Path) -> None:
    from fileconveyor.transporters.symlink_or_copy import SymlinkOrCopyTransporter

    (tmp_path / "a.txt").write_bytes(b"x")
    (tmp_path / "dest").mkdir()
    transporter = SymlinkOrCopyTransporter({"location": str(tmp_path / "dest"), "url": "http://x/"},
                                           TransporterContext("local", str(tmp_path / "state")))
    url = transporter.upload_object(str(tmp_path / "a.txt"), "a.txt", PRIVATE)
    assert url == "http://x/a.txt" and (tmp_path / "dest" / "a.txt").read_bytes() == b"x"


def test_swift_headers_per_destination_and_precompressed(swift: SwiftServer, tmp_path: pathlib.Path) -> None:
    container = swift.new_container()
    settings = {**swift.settings(container), "cache_control": "max-age=600", "public": "true"}
    transporter = CloudFilesTransporter(settings, TransporterContext("swift", str(tmp_path / "state")))
    (tmp_path / "a.css").write_bytes(b"a{}")
    (tmp_path / "a.css.gz").write_bytes(b"\x1f\x8b gz")
    default_url = transporter.upload_object(str(tmp_path / "a.css"), "a.css", None)
    own_url = transporter.upload_object(str(tmp_path / "a.css"), "own.css",
                                        ObjectOptions((("cache_control", "no-cache"),
                                                       ("expires", "Tue, 20 Jan 2037 03:00:00 GMT"))))
    gz_url = transporter.upload_object(str(tmp_path / "a.css.gz"), "a.css.gz",
                                       ObjectOptions(typed_as="a.css", content_encoding="gzip"))
    transporter.close()

    def headers(url: str) -> dict[str, str]:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as response:
            return {k.lower(): v for k, v in response.headers.items()}

    assert headers(default_url)["cache-control"] == "max-age=600"
    own = headers(own_url)
    assert own["cache-control"] == "no-cache" and own["expires"] == "Tue, 20 Jan 2037 03:00:00 GMT"
    gz = headers(gz_url)
    assert gz["content-type"].startswith("text/css") and gz["content-encoding"] == "gzip"


# --- config ---------------------------------------------------------------------------------------

S3_SERVERS = ('<servers>\n    <server name="s3" transporter="s3"><bucket_name>bucket</bucket_name></server>\n'
              '    <server name="swift" transporter="cloudfiles"><username>u</username><api_key>k</api_key>'
              '<container>c</container></server>\n'
              '    <server name="local" transporter="symlink_or_copy"><location>/tmp/x</location>'
              '<url>http://x/</url></server>\n  </servers>')


def _with_destination(destination: str) -> str:
    rules = ('<rules>\n    <rule for="site" label="r">\n      <destinations>\n        ' + destination
             + '\n      </destinations>\n    </rule>\n  </rules>')
    return doc(sources=SOURCES, servers=S3_SERVERS, rules=rules)


@pytest.mark.parametrize("destination, words", [
    ('<destination server="s3">\n          <acl>public</acl>' + MARK + '\n        </destination>',
     "is not a canned ACL"),
    ('<destination server="s3">\n          <expires>soon</expires>' + MARK + '\n        </destination>',
     "is not an HTTP date"),
    ('<destination server="s3">\n          <bucket_name>b</bucket_name>' + MARK + '\n        </destination>',
     "it is a setting of the whole <server>"),
    ('<destination server="s3">\n          <cache-control>x</cache-control>' + MARK + '\n        </destination>',
     "did you mean cache_control"),
    ('<destination server="swift">\n          <acl>private</acl>' + MARK + '\n        </destination>',
     "cannot be set per destination of server 'swift'"),
    ('<destination server="local">\n          <cache_control>x</cache_control>' + MARK + '\n        </destination>',
     "stores plain files"),
    ('<destination server="s3">\n          <acl>private</acl>\n          <acl>public-read</acl>' + MARK
     + '\n        </destination>', "keep one of them"),
])
def test_destination_option_mistakes_are_reported_on_their_line(tmp_path: pathlib.Path, destination: str,
                                                                words: str) -> None:
    path, line = write(tmp_path, _with_destination(destination))
    errors = [p for p in check_config(path) if p.severity == "error"]
    assert any(p.line == line and words in p.message for p in errors), \
        f"expected {words!r} on line {line}:\n" + "\n".join(map(str, errors))


def test_destination_options_load(tmp_path: pathlib.Path) -> None:
    path, _ = write(tmp_path, _with_destination(
        '<destination server="s3" path="p"><acl> private </acl><expires/></destination>'))
    destination = load_config(path).rules[0].destinations[0]
    assert destination.options == ObjectOptions((("acl", "private"), ("expires", "")))
    assert destination.options.setting("expires", "default") == ""
    assert destination.options.setting("cache_control", "default") == "default"


# --- the daemon -----------------------------------------------------------------------------------

def test_daemon_syncs_private_files_beside_public_ones(tmp_path: pathlib.Path, moto_server: MotoServer,
                                                       s3_bucket: str) -> None:
    setup = write_config(tmp_path)
    server = (f'<server name="s3" transporter="s3"><bucket_name>{s3_bucket}</bucket_name>'
              f'<endpoint_url>{moto_server.endpoint}</endpoint_url><access_key_id>{FAKE_KEY_ID}</access_key_id>'
              f'<secret_access_key>{FAKE_SECRET}</secret_access_key><acl>public-read</acl></server>')
    rules = ('<rules>'
             '<rule for="site" label="public"><filter><exclude><pattern>.*\\.pdf$</pattern></exclude></filter>'
             '<destinations><destination server="s3" path="files"/></destinations></rule>'
             '<rule for="site" label="private"><filter><extensions>pdf</extensions></filter>'
             '<destinations><destination server="s3" path="files"><acl>private</acl>'
             '<cache_control>private, max-age=0</cache_control></destination></destinations></rule>'
             '</rules>')
    xml = pathlib.Path(setup.config).read_text(encoding="utf-8")
    start, end = xml.index("<servers>"), xml.index("</rules>") + len("</rules>")
    xml = xml[:start] + "<servers>" + server + "</servers>" + rules + xml[end:]
    pathlib.Path(setup.config).write_text(xml, encoding="utf-8")
    assert not [p for p in check_config(setup.config) if p.severity == "error"]
    (pathlib.Path(setup.source) / "style.css").write_text("body{}")
    (pathlib.Path(setup.source) / "invoice.pdf").write_bytes(b"%PDF-1.4 secret")
    with Daemon(setup) as daemon:
        wait_for(lambda: len(query(setup.db("synced_files.db"), "SELECT 1 FROM synced_files")) == 2
                 and all(n == 0 for n in counts(setup).values()), 60, "both files synced")
        assert daemon.terminate() == 0
    client = moto_server.client()
    assert _is_public(client, s3_bucket, "files/style.css")
    assert client.head_object(Bucket=s3_bucket, Key="files/style.css")["CacheControl"] == "max-age=315360000"
    assert not _is_public(client, s3_bucket, "files/invoice.pdf")
    assert client.head_object(Bucket=s3_bucket, Key="files/invoice.pdf")["CacheControl"] == "private, max-age=0"
