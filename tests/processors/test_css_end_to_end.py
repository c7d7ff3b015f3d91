"""The CSS URL updater through the real daemon (issue 4): a stylesheet synced with unique file names
refers to its images' synced URLs; when an image changes (new MD5 name), the stylesheet at the
destination is rewritten with the new URL without being touched; a stylesheet that arrives before
its image gets the image's URL once the image is synced."""
from __future__ import annotations

import os
import re

from tests.e2e.harness import Daemon, query, wait_for, write_config

CHAIN = ("unique_filename.MD5", "link_updater.CSSURLUpdater")
CSS = ('/* theme */\n.logo { background: url("../img/logo.png?v=1") no-repeat; }\n'
       ".icon { background: url(../img/icon.png); }\n.late { background: url(../img/late.png); }\n")


def write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


def synced_url(setup, path: str) -> str | None:
    rows = query(setup.db("synced_files.db"),
                 f"SELECT url FROM synced_files WHERE input_file = '{path}'")  # test paths have no quotes
    return rows[0][0] if rows else None


def destination_css(setup) -> str:
    directory = os.path.join(setup.dest, "css")
    names = [n for n in os.listdir(directory) if n.endswith(".css")] if os.path.isdir(directory) else []
    if len(names) != 1:
        return ""
    with open(os.path.join(directory, names[0]), encoding="utf-8") as handle:
        return handle.read()


def test_css_refers_to_synced_urls_and_follows_new_names(tmp_path):
    setup = write_config(tmp_path, processors=CHAIN)
    logo = os.path.join(setup.source, "img", "logo.png")
    icon = os.path.join(setup.source, "img", "icon.png")
    late = os.path.join(setup.source, "img", "late.png")
    write(logo, b"logo version 1")
    write(icon, b"icon")
    write(os.path.join(setup.source, "css", "site.css"), CSS)

    def css_has_urls_of(*paths: str) -> bool:
        urls = [synced_url(setup, p) for p in paths]
        return all(urls) and all(u in destination_css(setup) for u in urls)  # type: ignore[operator]

    with Daemon(setup) as daemon:
        wait_for(lambda: css_has_urls_of(logo, icon), timeout=60,
                 what="the CSS at the destination with its images' URLs")
        text = destination_css(setup)
        old_logo = synced_url(setup, logo)
        assert re.search(r"/img/logo_[0-9a-f]{32}\.png$", old_logo or "")
        assert f'url("{old_logo}?v=1")' in text, "quotes and query string kept"
        assert "url(../img/late.png)" in text and text.startswith("/* theme */\n")

        write(logo, b"logo version 2")
        wait_for(lambda: synced_url(setup, logo) not in (None, old_logo), timeout=60,
                 what="the changed image synced under a new name")
        wait_for(lambda: css_has_urls_of(logo, icon) and old_logo not in destination_css(setup),
                 timeout=60, what="the CSS rewritten with the image's new URL")

        write(late, b"arrives after the CSS")
        wait_for(lambda: css_has_urls_of(logo, icon, late), timeout=60,
                 what="the CSS rewritten once the late image is synced")
        assert daemon.terminate() == 0
