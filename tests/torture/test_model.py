"""The torture suite's oracle, checked on its own (no daemon, no servers): if the model were wrong,
every round would either report defects that are not there or miss the ones that are."""
from __future__ import annotations

import hashlib
import os
import pathlib

from tests.torture.invariants import reconcile
from tests.torture.model import Node, SourceModel, expect, render_css, url_for

BASES = {"local": "http://local.test/", "sftp": "http://sftp.test/", "s3": "http://s3.test/bucket"}


def _model(root: str = "/w") -> SourceModel:
    return SourceModel({"alpha": f"{root}/alpha", "beta": f"{root}/beta"})


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_a_stylesheet_is_rewritten_to_the_recorded_url_and_named_after_the_rewritten_bytes() -> None:
    model = _model()
    model.put("/w/alpha/d/a.png", Node("file", b"png"))
    css = render_css(["a.png", "missing.png"], "v1")
    model.put("/w/alpha/d/s.css", Node("file", css))
    recorded = "http://s3.test/bucket/assets/d/a_x.png"
    result = expect(model, BASES, {("/w/alpha/d/a.png", "s3"): recorded})
    rewritten = css.replace(b'url("a.png")', f'url("{recorded}")'.encode())
    assert result.files["s3"][f"assets/d/s_{_md5(rewritten)}.css"] == rewritten
    assert result.files["s3"][f"assets/d/a_{_md5(b'png')}.png"] == b"png"
    # "plain" publishes the stylesheet untouched; "assets" sends it to local too (overlap).
    assert result.files["local"]["plain/d/s.css"] == css
    assert list(result.rows[("/w/alpha/d/s.css", "local")]) == [  # the first rule's URL first
        url_for(BASES["local"], "plain/d/s.css"),
        url_for(BASES["local"], f"cdn/d/s_{_md5(css)}.css")]
    assert result.problems == ["/w/alpha/d/s.css on local: refers to /w/alpha/d/a.png, which has no "
                               "synced_files row"]


def test_symlinks_are_published_only_inside_their_own_tree_and_fifos_never() -> None:
    model = _model()
    model.put("/w/alpha/pinned/t.txt", Node("file", b"t"))
    model.put("/w/beta/pinned/u.txt", Node("file", b"u"))
    model.put("/w/alpha/inside.txt", Node("link", target="/w/alpha/pinned/t.txt"))
    model.put("/w/alpha/other_tree.txt", Node("link", target="/w/beta/pinned/u.txt"))
    model.put("/w/alpha/outside.txt", Node("link", target="/etc/shadow"))
    model.put("/w/alpha/fifo.txt", Node("fifo"))
    published = expect(model, BASES, {}).files["sftp"]
    assert published == {"alpha/pinned/t.txt": b"t", "alpha/inside.txt": b"t", "beta/pinned/u.txt": b"u"}


def test_outbox_files_go_only_where_the_outbox_rule_sends_them() -> None:
    model = _model()
    model.put("/w/beta/outbox/x/o.txt", Node("file", b"o"))
    model.put("/w/beta/x/outbox/n.txt", Node("file", b"n"))  # "outbox" ignored at any depth by "rest"
    model.published["/w/beta/outbox/gone.txt"] = b"g"
    result = expect(model, BASES, {})
    assert result.files == {"local": {}, "sftp": {"out/outbox/x/o.txt": b"o", "out/outbox/gone.txt": b"g"},
                            "s3": {"out/outbox/x/o.txt": b"o", "out/outbox/gone.txt": b"g"}}
    assert model.deleted_after_sync("/w/beta/outbox/x/o.txt")
    assert not model.deleted_after_sync("/w/beta/x/outbox/n.txt")


def test_reconcile_accepts_a_deletion_after_sync_only_with_the_last_content_published(
        tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    model = _model(root)
    for directory in ("alpha", "beta/outbox"):
        os.makedirs(os.path.join(root, directory))
    model.dirs.add(f"{root}/beta/outbox")
    model.put(f"{root}/beta/outbox/synced.txt", Node("file", b"v2"))
    model.put(f"{root}/beta/outbox/lost.txt", Node("file", b"new"))
    model.put(f"{root}/alpha/kept.txt", Node("file", b"k"))
    pathlib.Path(root, "alpha", "stray.txt").write_bytes(b"?")
    held = {"local": {}, "s3": {"out/outbox/synced.txt": b"v2", "out/outbox/lost.txt": b"old"},
            "sftp": {"out/outbox/synced.txt": b"v2", "out/outbox/lost.txt": b"old"}}
    problems, view = reconcile(model, held)
    # The copies stay where they are (reported once as data loss, not again as "extra").
    assert view.published == {f"{root}/beta/outbox/synced.txt": b"v2", f"{root}/beta/outbox/lost.txt": b"old"}
    assert any(p.startswith(f"DATA LOSS: the daemon deleted source {root}/beta/outbox/lost.txt")
               for p in problems), problems
    assert any(f"source {root}/alpha/kept.txt (file) is gone" in p for p in problems), problems
    assert any(f"source {root}/alpha/stray.txt (file) exists" in p for p in problems), problems
    assert model.nodes.keys() >= {f"{root}/alpha/kept.txt"}, "reconcile must not change the model"
