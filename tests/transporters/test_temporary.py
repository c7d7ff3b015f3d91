"""The pieces every transporter shares for names: temporary names (cut by bytes), the durable
record of temporary names and its sweep (real files, real flock), and the one URL encoding."""
from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys

import pytest

from fileconveyor.transporters.base import (
    NAME_MAX,
    TEMP_MARKER,
    encode_url_path,
    is_temporary_name,
    join_url,
    shorten_utf8,
    temporary_name,
)
from fileconveyor.transporters.temporary import (
    PendingTemporaryNames,
    RenameIntoPlace,
    upload_via_temporary_name,
)

# -- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, limit, expected", [
    ("abc", 3, "abc"),
    ("abcd", 3, "abc"),
    ("\u00e9\u00e9", 3, "\u00e9"),          # 2 + 2 bytes: the second would be split
    ("\u4e2d\u4e2d", 5, "\u4e2d"),          # 3 + 3 bytes
    ("\U0001f600x", 3, ""),                 # a 4-byte character does not fit at all
    ("a\udcff\u00e9", 2, "a\udcff"),        # an undecodable byte (surrogateescape) counts as one
])
def test_shorten_utf8_cuts_by_bytes_at_character_boundaries(name: str, limit: int,
                                                            expected: str) -> None:
    assert shorten_utf8(name, limit) == expected


@pytest.mark.parametrize("name", ["a.txt", "\u00e9" * 127 + "a", "\u4e2d" * 85,
                                  "\U0001f600" * 63 + "abc"])
def test_temporary_name_fits_name_max_and_is_valid_utf8(name: str) -> None:
    temp = temporary_name("dir/sub/" + name)
    directory, base = temp.rsplit("/", 1)
    assert directory == "dir/sub"
    assert len(base.encode("utf-8")) <= NAME_MAX
    assert base.startswith(".") and TEMP_MARKER in base and is_temporary_name(temp)
    assert name.startswith(base[1:base.index(TEMP_MARKER)])
    assert temporary_name("d/" + name) != temporary_name("d/" + name)  # unique per attempt


def test_temporary_name_in_another_directory() -> None:
    assert temporary_name("a/b/c.css", "/www/.fileconveyor-tmp").startswith(
        "/www/.fileconveyor-tmp/.c.css" + TEMP_MARKER)


@pytest.mark.parametrize("path", ["a.txt", "dir/.a.txt", ".a.txt.fctmp-12345", ".a.fctmp-XYZXYZXYZXYZ",
                                  "../etc/passwd"])
def test_only_temporary_shapes_are_temporary(path: str) -> None:
    assert not is_temporary_name(path)


@pytest.mark.parametrize("path, encoded", [
    ("a b/c#d.css", "a%20b/c%23d.css"),
    ("it's;x.css", "it%27s%3Bx.css"),
    ("a+b=c&d,e:f@g!h$i(j)k*l.txt", "a%2Bb%3Dc%26d%2Ce%3Af%40g%21h%24i%28j%29k%2Al.txt"),
    ("100%?.txt", "100%25%3F.txt"),
    ("A-Z_a.z~0/9", "A-Z_a.z~0/9"),
    ("\u00e9/\u4e2d", "%C3%A9/%E4%B8%AD"),
    ("raw\udcff.txt", "raw%FF.txt"),       # a name that is not UTF-8, byte for byte
])
def test_one_url_encoding(path: str, encoded: str) -> None:
    assert encode_url_path(path) == encoded
    assert join_url("http://cdn.example.com/static", path) == \
        "http://cdn.example.com/static/" + encoded
    assert join_url("http://cdn.example.com/static/", "/" + path) == \
        "http://cdn.example.com/static/" + encoded


# -- the record of temporary names -------------------------------------------------------------------


@pytest.fixture
def pending(tmp_path: pathlib.Path) -> PendingTemporaryNames:
    return PendingTemporaryNames(str(tmp_path / "state"), "web/1 server")


def _destination(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "destination"
    root.mkdir(exist_ok=True)
    return root


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def test_record_is_private_and_per_server(pending: PendingTemporaryNames,
                                          tmp_path: pathlib.Path) -> None:
    temp = temporary_name(str(_destination(tmp_path) / "a.txt"))
    with pending.recorded(temp):
        assert pending.recorded_names() == [temp]
        markers = os.listdir(pending.directory)
        assert len(markers) == 1
        assert stat.S_IMODE(os.stat(pending.directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.join(pending.directory, markers[0])).st_mode) == 0o600
    assert os.path.basename(pending.directory) == "web%2F1%20server"
    other = PendingTemporaryNames(str(tmp_path / "state"), "other")
    assert other.recorded_names() == []


def test_sweep_never_removes_a_name_in_use(pending: PendingTemporaryNames,
                                           tmp_path: pathlib.Path) -> None:
    temp = temporary_name(str(_destination(tmp_path) / "a.txt"))
    sweeper = PendingTemporaryNames(str(tmp_path / "state"), "web/1 server")
    with pending.recorded(temp):
        pathlib.Path(temp).write_bytes(b"half")
        assert sweeper.sweep(_remove) == 0           # locked by the upload: left alone
        assert pathlib.Path(temp).exists()
    # The upload died without forgetting it (connection lost): the next sweep removes it.
    assert sweeper.sweep(_remove) == 1
    assert not pathlib.Path(temp).exists()
    assert pending.recorded_names() == []


def test_sweep_skips_names_locked_by_another_process(pending: PendingTemporaryNames,
                                                     tmp_path: pathlib.Path) -> None:
    """A second process on the same state directory (`verify`) must not sweep a running
    upload's temporary file; the lock of a killed process is gone with it."""
    temp = temporary_name(str(_destination(tmp_path) / "a.txt"))
    pathlib.Path(temp).write_bytes(b"half")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from fileconveyor.transporters.temporary import PendingTemporaryNames\n"
         "with PendingTemporaryNames(sys.argv[1], sys.argv[2]).recorded(sys.argv[3]):\n"
         "    print('held', flush=True)\n"
         "    sys.stdin.read()\n",
         str(tmp_path / "state"), "web/1 server", temp],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        cwd=str(pathlib.Path(__file__).resolve().parents[2]))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert pending.sweep(_remove) == 0
        assert pathlib.Path(temp).exists()
        holder.kill()
        holder.wait(30)
        assert pending.sweep(_remove) == 1
        assert not pathlib.Path(temp).exists()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)


def test_sweep_removes_nothing_that_is_not_a_temporary_name(pending: PendingTemporaryNames,
                                                           tmp_path: pathlib.Path) -> None:
    precious = _destination(tmp_path) / "index.html"
    precious.write_bytes(b"keep")
    with pending.recorded(str(precious)):
        pass
    os.makedirs(pending.directory, exist_ok=True)
    (pathlib.Path(pending.directory) / "damaged").write_bytes(b"{not json")
    removed: list[str] = []
    assert pending.sweep(removed.append) == 0
    assert removed == [] and precious.read_bytes() == b"keep"
    assert os.listdir(pending.directory) == []


def test_a_failed_removal_keeps_the_record_for_the_next_sweep(
        pending: PendingTemporaryNames, tmp_path: pathlib.Path) -> None:
    temp = temporary_name(str(_destination(tmp_path) / "a.txt"))
    with pending.recorded(temp):
        pass

    def connection_gone(path: str) -> None:
        raise ConnectionResetError("gone")

    assert pending.sweep(connection_gone) == 0
    assert pending.recorded_names() == [temp]


def test_upload_via_temporary_name_cleans_up_on_failure(pending: PendingTemporaryNames,
                                                        tmp_path: pathlib.Path) -> None:
    root = _destination(tmp_path)

    def store(temp: str) -> None:
        pathlib.Path(temp).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    failing = RenameIntoPlace(store=store, rename=os.replace, remove=_remove)
    with pytest.raises(OSError):
        upload_via_temporary_name(pending, str(root / "a.txt"), failing)
    assert os.listdir(root) == [] and pending.recorded_names() == []

    # When the connection is gone nothing can be removed now: the record stays for the sweep.
    lost = RenameIntoPlace(store=store, rename=os.replace, remove=_remove,
                           connection_lost=lambda error: True)
    with pytest.raises(OSError):
        upload_via_temporary_name(pending, str(root / "a.txt"), lost)
    assert len(os.listdir(root)) == 1 and len(pending.recorded_names()) == 1
    assert pending.sweep(_remove) == 1 and os.listdir(root) == []

    working = RenameIntoPlace(store=lambda temp: pathlib.Path(temp).write_bytes(b"ok"),
                              rename=os.replace, remove=_remove)
    upload_via_temporary_name(pending, str(root / "a.txt"), working)
    assert os.listdir(root) == ["a.txt"] and pending.recorded_names() == []
