"""What each kind of destination holds, read around the daemon (never through a transporter), and
a config writer for a daemon with several real servers.

Each reader returns {relative path: content}, the same shape as `tests.e2e.harness.tree`, so a
destination is compared with the source by one dictionary comparison:

* S3/CloudFront (moto): `list_objects_v2` pages and a GET per key, through a boto3 client of the
  test's own;
* SFTP/FTP: the server's root is a directory on this machine, read directly; the transporters'
  temporary names (`.fctmp-`) are left out, as a reader of the final names would never see them;
* Swift: python-swiftclient's `get_container` (all pages) and `get_object`, with its own token;
* symlink_or_copy: the harness's `tree` (follows the symlinks).
"""
from __future__ import annotations

import os
import pathlib
import unicodedata
from typing import Any, Mapping
from xml.sax.saxutils import escape, quoteattr

from tests.e2e.harness import Setup, query

TEMP_MARKER = ".fctmp-"
#: Bounds on listing loops: far above what a test writes, low enough to stop a runaway pager.
MAX_PAGES = 1000


def s3_objects(client: Any, bucket: str) -> dict[str, bytes]:
    """Every object in `bucket` with its content."""
    keys: list[str] = []
    token: str | None = None
    for _page in range(MAX_PAGES):
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if token:
            kwargs["ContinuationToken"] = token
        listed = client.list_objects_v2(**kwargs)
        keys.extend(item["Key"] for item in listed.get("Contents", []))
        if not listed.get("IsTruncated"):
            break
        token = listed["NextContinuationToken"]
    else:
        raise AssertionError(f"bucket {bucket} lists more than {MAX_PAGES} pages")
    return {key: bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in keys}


def directory_files(root: pathlib.Path | str) -> dict[str, bytes]:
    """Every regular file below `root` (not following symlinks), temporary names excluded."""
    found: dict[str, bytes] = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if TEMP_MARKER in name:
                continue
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def temp_leftovers(root: pathlib.Path | str) -> list[str]:
    """Temporary upload names still below `root` (an upload that never finished or cleaned up)."""
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, _dirs, files in os.walk(root) for n in files if TEMP_MARKER in n)


def swift_objects(auth_url: str, user: str, key: str, container: str) -> dict[str, bytes]:
    """Every object in a Swift `container` with its content ({} if the container is missing)."""
    import swiftclient

    connection = swiftclient.Connection(authurl=auth_url, user=user, key=key, auth_version="1",
                                        timeout=30, retries=0)
    try:
        try:
            _headers, listing = connection.get_container(container, full_listing=True)
        except swiftclient.ClientException as error:
            if error.http_status == 404:
                return {}
            raise
        return {item["name"]: bytes(connection.get_object(container, item["name"])[1])
                for item in listing}
    finally:
        connection.close()


def compare(name: str, source: Mapping[str, bytes], remote: Mapping[str, bytes]) -> list[str]:
    """Human-readable differences between the source tree and one destination ([] if equal)."""
    problems: list[str] = []
    missing = sorted(set(source) - set(remote))
    extra = sorted(set(remote) - set(source))
    differ = sorted(p for p in set(source) & set(remote) if source[p] != remote[p])
    if missing:
        problems.append(f"{name}: {len(missing)} missing, e.g. {missing[:5]}")
    if extra:
        nfc = {unicodedata.normalize("NFC", p) for p in source}
        hint = [p for p in extra if unicodedata.normalize("NFC", p) in nfc]
        problems.append(f"{name}: {len(extra)} extra, e.g. {extra[:5]}"
                        + (f" (same as a source name after NFC: {hint[:3]})" if hint else ""))
    if differ:
        problems.append(f"{name}: {len(differ)} with different content, e.g. {differ[:5]}")
    return problems


def synced_rows(setup: Setup) -> list[tuple[str, str, str]]:
    """(input_file, server, url) of every row of synced_files.db."""
    return [tuple(r) for r in query(setup.db("synced_files.db"),  # type: ignore[misc]
                                    "SELECT input_file, server, url FROM synced_files")]


def add_servers(setup: Setup, servers: Mapping[str, tuple[str, Mapping[str, str], int]],
                keep_local: bool = True) -> None:
    """Rewrite the harness's config so the rule sends to `servers` (name -> (transporter,
    settings, maxConnections)), plus the harness's symlink_or_copy server "local" if
    `keep_local`."""
    xml = pathlib.Path(setup.config).read_text(encoding="utf-8")
    blocks = []
    for name, (transporter, settings, connections) in servers.items():
        body = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in settings.items())
        blocks.append(f"<server name={quoteattr(name)} transporter={quoteattr(transporter)} "
                      f'maxConnections="{connections}">{body}</server>')
    destinations = "".join(f"<destination server={quoteattr(n)} />" for n in servers)
    local_destination = '<destination server="local" />'
    assert local_destination in xml and "</servers>" in xml, "harness config changed shape"
    xml = xml.replace("</servers>", "".join(blocks) + "</servers>")
    xml = xml.replace(local_destination,
                      (local_destination if keep_local else "") + destinations)
    if not keep_local:
        start = xml.index('<server name="local"')
        xml = xml[:start] + xml[xml.index("</server>", start) + len("</server>"):]
    pathlib.Path(setup.config).write_text(xml, encoding="utf-8")

