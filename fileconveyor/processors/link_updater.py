"""`link_updater.CSSURLUpdater`: rewrites the URLs in a stylesheet to the URLs its files got on a server.

Per destination server (`different_per_server`), every relative and root-relative `url(...)`,
`@import "..."` and `image-set("...")` string becomes the URL that the referenced file got on that
server (`context.synced_url`, backed by the daemon's own synced_files.db). Everything else in the
file stays byte for byte as it was.

Why a small scanner of our own and not a CSS library: the original re-serialised the sheet with
cssutils (validation on), which reformatted it, altered hacks and pegged a CPU on large files.
tinycss2 tokenises correctly but does not serialise tokens back to their source bytes (strings come
back with double quotes, escapes normalised), and it reports only where a token starts. What we need
is narrower: find the URL tokens, skipping comments and strings, exactly as CSS Syntax Level 3
tokenises them, and splice new text into those spans only. The scanner below does that in one
linear pass (no backtracking), over the text decoded with the sheet's own encoding and
`surrogateescape`, so the bytes we do not touch are written back unchanged.

Paths (original-spec 6.7, with its bugs fixed):
* absolute (`http:`, `https:`, any scheme such as `data:`), protocol-relative (`//cdn/...`) and
  fragment-only (`#filter`) URLs are left alone;
* the query string and fragment (`font.eot?#iefix`, `img.png?v=2`) are split off for the lookup and
  kept on the rewritten URL; the path is percent-decoded to a file name;
* relative URLs resolve against the CSS file's ORIGINAL location (`context.original_file`), not its
  working copy;
* root-relative URLs (`/...`) need the source's documentRoot and basePath: when the URL starts with
  basePath and `documentRoot + basePath` is not a directory (the "logical base path": the site is
  served from a URL prefix that does not exist on disk), the prefix is replaced by documentRoot; else
  the URL is appended to documentRoot. Without documentRoot/basePath they are left unchanged (logged
  once); relative ones still work.
* Paths are `normpath`ed, never `realpath`ed (the original resolved symlinks for root-relative ones):
  synced_files.db keys are the paths the monitor reports, below the source's scan path, unresolved;
  resolving a symlink would produce a key that was never stored.

Outcome: a referenced file that exists but is not synced to this server yet -> `WaitForFiles` (the
arbitrator parks the CSS and re-queues it when they are synced). Every referenced local file is
added to `context.dependencies`, so the CSS is queued again when one of them gets a new URL (a new
unique file name). A referenced file that does not exist is left as it is (DEBUG) but is a
dependency too: when it appears and is synced, the CSS is queued again and gets its URL.
"""
from __future__ import annotations

import codecs
import logging
import os
import posixpath
import re
import threading
import urllib.parse
from dataclasses import dataclass

from fileconveyor.processors.base import Processor, WaitForFiles

log = logging.getLogger(__name__)

_warned_lock = threading.Lock()
_warned_no_document_root = False

_CHARSET = re.compile(rb'^@charset "([^"]{1,40})";')
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
#: A run of name code points (escapes included), and a run of code points that start nothing we track.
_NAME = re.compile(r"(?:[\w\-\u0080-\U0010ffff]|\\(?:.|\n)?)+")
_BORING = re.compile(r"[^/\"'\\@()A-Za-z_\-\u0080-\U0010ffff]+")
_HEX = frozenset("0123456789abcdefABCDEF")
_WHITESPACE = " \t\n\r\f"
#: Code points that end an unquoted url( ) or make it a bad-url token (CSS Syntax 3, 4.3.6).
_BAD_IN_UNQUOTED = frozenset("\"'(") | frozenset(chr(c) for c in (*range(0, 9), 11, *range(14, 32), 127))


@dataclass(frozen=True)
class URLSpan:
    """One URL in the sheet: `text[start:end]` is its raw source (without quotes); `value` is the URL
    with CSS escapes decoded; `quote` is the quote character, or "" for an unquoted url( )."""

    start: int
    end: int
    value: str
    quote: str


def _is_name_char(char: str) -> bool:
    return char.isalnum() or char in "-_\\" or ord(char) >= 0x80


def _consume_escape(text: str, pos: int) -> tuple[str, int]:
    """Decode the escape whose backslash is at `pos - 1`; return (code point, position after)."""
    if pos >= len(text):
        return "\ufffd", pos
    if text[pos] in _HEX:
        end = pos
        while end < len(text) and end - pos < 6 and text[end] in _HEX:
            end += 1
        code = int(text[pos:end], 16)
        if end < len(text) and text[end] in _WHITESPACE:
            end += 2 if text[end:end + 2] == "\r\n" else 1
        if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
            return "\ufffd", end
        return chr(code), end
    return text[pos], pos + 1


def _scan_string(text: str, pos: int) -> tuple[str, int, bool]:
    """The string whose opening quote is at `pos`: (decoded value, position after it, well-formed)."""
    quote = text[pos]
    pos += 1
    value: list[str] = []
    size = len(text)
    while pos < size:
        char = text[pos]
        if char == quote:
            return "".join(value), pos + 1, True
        if char in "\n\r\f":  # bad-string: ends at the newline, which is not part of it
            return "".join(value), pos, False
        if char == "\\":
            if pos + 1 < size and text[pos + 1] in "\n\r\f":  # escaped newline: continuation
                pos += 3 if text[pos + 1:pos + 3] == "\r\n" else 2
                continue
            decoded, pos = _consume_escape(text, pos + 1)
            value.append(decoded)
            continue
        value.append(char)
        pos += 1
    return "".join(value), pos, True  # EOF closes a string


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _skip_whitespace_and_comments(text: str, pos: int) -> int:
    while True:
        pos = _skip_whitespace(text, pos)
        if text.startswith("/*", pos):
            end = text.find("*/", pos + 2)
            pos = len(text) if end == -1 else end + 2
        else:
            return pos


def find_urls(text: str) -> list[URLSpan]:
    """Every URL in a stylesheet: url( ) (quoted or not), @import strings, image-set( ) strings.

    Comments and other strings are skipped, so `/* url(x.png) */` and `content: "url(x)"` are not
    URLs. One pass; every step moves `pos` forward."""
    spans: list[URLSpan] = []
    size = len(text)
    pos = 0
    image_set_depth = 0  # > 0 inside image-set( ): its plain strings are URLs too
    paren_depth = 0
    image_set_at: list[int] = []
    while pos < size:
        char = text[pos]
        if char == "/" and text.startswith("/*", pos):
            end = text.find("*/", pos + 2)
            pos = size if end == -1 else end + 2
        elif char in "\"'":
            value, end, closed = _scan_string(text, pos)
            if image_set_depth and closed and end - pos >= 2 and text[end - 1] == char:
                spans.append(URLSpan(pos + 1, end - 1, value, char))
            pos = end
        elif char == "\\":
            pos += 2
        elif char == "@" and text[pos + 1:pos + 7].lower() == "import" and not (
                pos + 7 < size and _is_name_char(text[pos + 7])):
            after = _skip_whitespace_and_comments(text, pos + 7)
            if after < size and text[after] in "\"'":
                value, end, closed = _scan_string(text, after)
                if closed and text[end - 1:end] == text[after]:
                    spans.append(URLSpan(after + 1, end - 1, value, text[after]))
                pos = end
            else:
                pos = after
        elif char == "(":
            paren_depth += 1
            pos += 1
        elif char == ")":
            if image_set_at and image_set_at[-1] == paren_depth:
                image_set_at.pop()
                image_set_depth -= 1
            paren_depth = max(0, paren_depth - 1)
            pos += 1
        elif _is_name_char(char) and not char.isdigit():
            end = _NAME.match(text, pos).end()  # type: ignore[union-attr]  # char is a name char
            name = text[pos:end].lower()
            if end < size and text[end] == "(":
                if name == "url":
                    span, pos = _scan_url_function(text, end + 1)
                    if span is not None:
                        spans.append(span)
                    continue
                if name in ("image-set", "-webkit-image-set"):
                    paren_depth += 1
                    image_set_depth += 1
                    image_set_at.append(paren_depth)
                    pos = end + 1
                    continue
            pos = end
        else:
            boring = _BORING.match(text, pos)  # runs of digits, punctuation, whitespace
            pos = boring.end() if boring else pos + 1
    return spans


def _scan_url_function(text: str, pos: int) -> tuple[URLSpan | None, int]:
    """After `url(`: the URL span (None for an empty or bad url) and the position after `)`."""
    size = len(text)
    start = _skip_whitespace(text, pos)
    if start < size and text[start] in "\"'":
        value, end, closed = _scan_string(text, start)
        close = _skip_whitespace(text, end)
        if closed and text[end - 1:end] == text[start] and close < size and text[close] == ")":
            return URLSpan(start + 1, end - 1, value, text[start]), close + 1
        return None, end  # not a plain url("..."): leave it to the main loop
    chars: list[str] = []
    cur = start
    while cur < size:
        char = text[cur]
        if char == ")":
            if not chars:
                return None, cur + 1
            return URLSpan(start, cur, "".join(chars), ""), cur + 1
        if char in _WHITESPACE:
            end = cur
            cur = _skip_whitespace(text, cur)
            if cur < size and text[cur] == ")":
                return URLSpan(start, end, "".join(chars), ""), cur + 1
            break
        if char in _BAD_IN_UNQUOTED:
            break
        if char == "\\":
            if cur + 1 < size and text[cur + 1] in "\n\r\f":
                break
            decoded, cur = _consume_escape(text, cur + 1)
            chars.append(decoded)
            continue
        chars.append(char)
        cur += 1
    # A bad url: skip to the closing parenthesis (or EOF), honouring escapes, as CSS does.
    while cur < size and text[cur] != ")":
        cur += 2 if text[cur] == "\\" else 1
    return None, min(cur + 1, size)


def _escape_for(url: str, quote: str) -> str:
    """`url` written so that it reads back as itself inside the given quoting."""
    out = []
    for char in url:
        if char == "\\" or char == quote or (not quote and char in "\"'()"):
            out.append("\\" + char)
        elif char in _WHITESPACE or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):x} ")
        else:
            out.append(char)
    return "".join(out)


def _sheet_encoding(data: bytes) -> str:
    """The encoding to decode and re-encode the sheet with (BOM, then @charset, then UTF-8)."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8"
    match = _CHARSET.match(data)
    if match:
        name = match.group(1).decode("ascii", "replace")
        try:
            codec = codecs.lookup(name)
        except LookupError:
            return "utf-8"
        # Only ASCII-compatible codecs: @charset itself was read as ASCII.
        if "a".encode(codec.name) == b"a":
            return codec.name
    return "utf-8"


class CSSURLUpdater(Processor):
    """Rewrite url()/@import URLs in CSS to the URLs the referenced files got on this server."""

    valid_extensions = (".css",)
    different_per_server = True

    def run(self, input_file: str) -> str:
        with open(input_file, "rb") as handle:
            data = handle.read()
        encoding = _sheet_encoding(data)
        text = data.decode(encoding, "surrogateescape")
        spans = find_urls(text)
        if not spans:
            return input_file
        pieces: list[str] = []
        waiting: set[str] = set()
        last = 0
        changed = False
        for span in spans:
            new_url = self._new_url(span.value, waiting)
            if new_url is None:
                continue
            pieces.append(text[last:span.start])
            pieces.append(_escape_for(new_url, span.quote))
            last = span.end
            changed = True
        if waiting:
            raise WaitForFiles(sorted(waiting), f"{len(waiting)} file(s) referenced by "
                               f"{self.context.original_file} not synced to {self.context.server} yet")
        if not changed:
            return input_file
        pieces.append(text[last:])
        output = self.context.output_path(os.path.basename(input_file))
        with open(output, "wb") as handle:
            handle.write("".join(pieces).encode(encoding, "surrogateescape"))
        return output

    def _new_url(self, url: str, waiting: set[str]) -> str | None:
        """The URL to write instead of `url`, or None to leave it as it is."""
        url = url.strip(_WHITESPACE)
        if not url or url.startswith(("#", "//")) or _SCHEME.match(url):
            return None
        cut = min((i for i in (url.find("?"), url.find("#")) if i != -1), default=len(url))
        path, suffix = url[:cut], url[cut:]
        if not path:
            return None
        file_path = self._resolve(urllib.parse.unquote(path))
        if file_path is None:
            return None
        # Recorded even when the file does not exist yet: when it appears and is synced, the
        # arbitrator queues this stylesheet again (a CSS file that arrives before its images).
        self.context.dependencies.add(file_path)
        if not os.path.isfile(file_path):
            log.debug("%s: %r refers to %s, which does not exist; left unchanged",
                      self.context.original_file, url, file_path)
            return None
        synced = self.context.synced_url(file_path)
        if synced is None:
            if not self.context.will_be_synced(file_path):
                log.debug("%s: %r refers to %s, which no rule syncs to %s; left unchanged",
                          self.context.original_file, url, file_path, self.context.server)
                return None
            waiting.add(file_path)
            return None
        return synced + suffix

    def _resolve(self, path: str) -> str | None:
        """The file a URL path refers to, or None when it cannot be known (root-relative URL
        without documentRoot/basePath)."""
        if not path.startswith("/"):
            base = posixpath.dirname(self.context.original_file)
            return posixpath.normpath(posixpath.join(base, path))
        document_root, base_path = self.context.document_root, self.context.base_path
        if not document_root or not base_path:
            global _warned_no_document_root
            with _warned_lock:
                first, _warned_no_document_root = not _warned_no_document_root, True
            (log.warning if first else log.debug)(
                "%s: root-relative URLs such as %r are left unchanged: the source has no "
                "documentRoot and basePath in config.xml (logged once)", self.context.original_file, path)
            return None
        prefix = "/" + base_path.strip("/") + "/" if base_path.strip("/") else "/"
        if (prefix != "/" and path.startswith(prefix)
                and not os.path.isdir(posixpath.join(document_root, prefix.lstrip("/")))):
            return posixpath.normpath(posixpath.join(document_root, path[len(prefix):]))
        return posixpath.normpath(posixpath.join(document_root, path.lstrip("/")))
