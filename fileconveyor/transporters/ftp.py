"""FTP and explicit FTPS transporter (ftplib): one control connection per instance.

Protocol quirks this module is shaped by:

* **Replies, not exceptions, classify errors.** ftplib raises `error_temp` for 4xx and
  `error_perm` for 5xx replies. 4xx replies are transient by definition (421 service closing, 425
  cannot open data connection, 426 transfer aborted, 450/451/452 busy, local error, no space):
  retryable. 530 is bad credentials (configuration); 550/553 and friends are refusals for this
  file (permanent). A closed control connection shows up as EOFError or a socket error.
* **Atomic replace.** STOR to `.<name>.fctmp-<random>` in the target directory, check the size
  with SIZE where the server has it, then RNFR/RNTO over the final name. POSIX servers replace on
  rename; a server that refuses to overwrite gets DELE of the old file and RNTO again (a reader
  may then find no file for an instant, never a partial one). Temporary names are recorded on
  local disk first and swept after every (re)connect (`temporary.py`, shared with SFTP).
* **Paths.** Every command uses an absolute path (the login directory, from PWD, is prepended to a
  relative `path`), so no CWD state can leak between operations. Names cannot contain CR or LF
  (a command is one line); such names are refused as permanent errors.
* **Directories.** MKD one level at a time; "550 exists" is told apart from "550 denied" by a
  CWD into it. Created directories are cached per connection.
* **Passive mode** by default (the data connection goes to the address of the control
  connection, never the one the server names in its PASV reply: NAT-safe). `tls` means explicit
  FTPS (AUTH TLS) with PROT P, so the data channel is encrypted too; the data channel reuses the
  control channel's TLS session, which vsftpd and others require (`require_ssl_reuse`).
"""
from __future__ import annotations

import datetime
import errno
import ftplib
import hashlib
import logging
import os
import posixpath
import socket
import ssl
import urllib.parse
from typing import Any, Callable, ClassVar, Iterator, Mapping, TypeVar

from fileconveyor.transporters.base import (
    ConfigurationError,
    DirectoryEntry,
    PermanentError,
    RemoteEntry,
    RetryableError,
    ServerUnavailableError,
    Transporter,
    TransporterContext,
    TransporterError,
    is_temporary_name,
    join_url,
    listing_prefix,
    normalize_remote_path,
    refuse_long_names,
    open_local_file,
    remote_parents,
    walk_sorted,
)
from fileconveyor.transporters.temporary import (
    PendingTemporaryNames,
    RenameIntoPlace,
    upload_via_temporary_name,
)

logger = logging.getLogger(__name__)

TRANSPORTER_CLASS = "FTPTransporter"

T = TypeVar("T")

BLOCK_SIZE = 256 * 1024
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
#: Errors after which the control connection cannot be trusted any more.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, OSError, ftplib.error_reply, ftplib.error_proto)


def _code(error: BaseException) -> str:
    return str(error)[:3]


class _ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session."""

    def ntransfercmd(self, cmd: str, rest: Any = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]
            session = getattr(self.sock, "session", None)
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


class FTPTransporter(Transporter):
    """Upload over FTP (or explicit FTPS) below `path`; URLs are `url` + the path below it."""

    name = "ftp"
    valid_settings = frozenset({
        "host", "username", "password", "url", "port", "path", "passive", "tls", "tls_verify",
        "ca_file",
    })
    required_settings = frozenset({"host", "username", "password", "url"})
    default_settings: ClassVar[Mapping[str, str]] = {
        "port": "21", "path": "", "passive": "true", "tls": "false", "tls_verify": "true",
        "ca_file": "",
    }
    can_list = True
    can_read_back = True

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        self._ftp: ftplib.FTP | None = None
        self._root = ""
        self._features: set[str] = set()
        self._known_dirs: set[str] = set()
        self._pending = PendingTemporaryNames(context.state_dir, context.server_name)

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        port = settings.get("port", "21").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"<port> must be a TCP port number (1-65535), not {port!r}")
        url = settings.get("url", "")
        if url and not urllib.parse.urlsplit(url).scheme:
            problems.append(f"<url> must be absolute with a scheme, e.g. https://cdn.example.com/"
                            f"static, not {url!r}")
        for flag in ("passive", "tls", "tls_verify"):
            value = settings.get(flag, "true").strip().lower()
            if value not in _TRUE | _FALSE:
                problems.append(f"<{flag}> must be true or false, not {value!r}")
        ca_file = settings.get("ca_file", "").strip()
        if ca_file and not os.access(os.path.expanduser(ca_file), os.R_OK):
            problems.append(f"<ca_file> {ca_file!r} is not a readable file of CA certificates")
        return problems

    def _flag(self, name: str) -> bool:
        return self.settings.get(name, "").strip().lower() in _TRUE

    def url_for(self, remote_path: str) -> str:
        return join_url(self.settings["url"], normalize_remote_path(remote_path))

    def _full(self, relative: str) -> str:
        return posixpath.join(self._root, relative)

    # -- connection --------------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        ca_file = os.path.expanduser(self.settings.get("ca_file", "").strip()) or None
        context = ssl.create_default_context(cafile=ca_file)
        if not self._flag("tls_verify"):
            logger.warning("FTPS certificate of %s is NOT verified (tls_verify is false)",
                           self.settings["host"])
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> ftplib.FTP:
        host, port = self.settings["host"].strip(), int(self.settings["port"])
        timeout = self.context.timeout
        where = f"{host}:{port}"
        ftp: ftplib.FTP
        if self._flag("tls"):
            ftp = _ReusingFTP_TLS(context=self._tls_context(), timeout=timeout,
                                  encoding="utf-8")
        else:
            ftp = ftplib.FTP(timeout=timeout, encoding="utf-8")
        try:
            try:
                ftp.connect(host, port, timeout=timeout)
            except (ConnectionRefusedError, socket.timeout, socket.gaierror) as error:
                raise ServerUnavailableError(
                    f"cannot connect to FTP server {where}: {error}") from None
            except OSError as error:
                if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                    raise ServerUnavailableError(
                        f"cannot connect to FTP server {where}: {error}") from None
                raise
            if isinstance(ftp, ftplib.FTP_TLS):
                try:
                    ftp.auth()
                except ftplib.error_perm as error:
                    raise ConfigurationError(
                        f"FTP server {where} does not offer explicit TLS (AUTH TLS: {error}); "
                        "set <tls>false</tls> or use a server with FTPS") from None
            try:
                ftp.login(self.settings["username"], self.settings["password"])
            except ftplib.error_perm as error:
                hint = ("; it may require TLS: set <tls>true</tls>"
                        if "TLS" in str(error) or "SSL" in str(error) else "")
                raise ConfigurationError(
                    f"FTP login as {self.settings['username']!r} on {where} was refused "
                    f"({error}); check <username> and <password>{hint}") from None
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()
            ftp.set_pasv(self._flag("passive"))
            ftp.voidcmd("TYPE I")
            self._features = self._read_features(ftp)
            root = self.settings.get("path", "").strip()
            if not root.startswith("/"):
                root = posixpath.join(ftp.pwd(), root)
            self._root = posixpath.normpath(root)
        except TransporterError:
            ftp.close()
            raise
        except ssl.SSLCertVerificationError as error:
            ftp.close()
            raise ConfigurationError(
                f"the TLS certificate of FTP server {where} cannot be verified ({error}); set "
                "<ca_file> to the CA that signed it, or <tls_verify>false</tls_verify> "
                "(insecure)") from None
        except Exception as error:
            ftp.close()
            raise self._error(f"connection to {where}", error) from None
        logger.debug("connected to ftp://%s@%s (root %s)", self.settings["username"], where,
                     self._root)
        self._ftp = ftp
        self._known_dirs.clear()
        self._pending.sweep(lambda path: self._remove(ftp, path))
        return ftp

    @staticmethod
    def _read_features(ftp: ftplib.FTP) -> set[str]:
        try:
            reply = ftp.sendcmd("FEAT")
        except ftplib.error_perm:
            return set()
        return {line.strip().split(" ")[0].upper() for line in reply.splitlines()[1:-1]
                if line.startswith(" ")}

    def _error(self, action: str, error: BaseException) -> TransporterError:
        """Classify an ftplib/socket error raised during `action`."""
        if isinstance(error, TransporterError):
            return error
        if isinstance(error, ftplib.error_temp):
            return RetryableError(f"FTP {action}: server busy or transient failure ({error})")
        if isinstance(error, ftplib.error_perm):
            if _code(error) in ("530", "532"):
                return ConfigurationError(
                    f"FTP {action}: not logged in ({error}); check <username>/<password>")
            return PermanentError(f"FTP {action} refused by the server: {error}")
        if isinstance(error, ssl.SSLCertVerificationError):
            return ConfigurationError(f"FTP {action}: TLS certificate not trusted ({error}); "
                                      "set <ca_file>")
        if isinstance(error, ValueError):  # ftplib refuses CR/LF in a command
            return PermanentError(f"FTP {action}: the name cannot be sent over FTP ({error})")
        return RetryableError(f"FTP {action} failed: {error or type(error).__name__}")

    def _session(self) -> tuple[ftplib.FTP, bool]:
        if self._ftp is not None:
            return self._ftp, False
        return self._connect(), True

    def _run(self, action: str, operation: Callable[[ftplib.FTP], T]) -> T:
        """Run `operation`, classifying errors; a reused control connection that turns out to be
        dead (the server restarted, or timed out an idle session) is replaced once, since every
        operation here is idempotent."""
        for attempt in (1, 2):
            ftp, fresh = self._session()
            try:
                return operation(ftp)
            except TransporterError:
                raise
            except Exception as error:
                # 421: the server closes the session; 530 after login: the session was logged
                # out (an idle timeout, a restart). A fresh login decides whether it is ours.
                dead = isinstance(error, _CONNECTION_ERRORS) or (
                    isinstance(error, (ftplib.error_temp, ftplib.error_perm))
                    and _code(error) in ("421", "530"))
                if not dead:
                    raise self._error(action, error) from None
                self.close()
                if fresh or attempt == 2:
                    if isinstance(error, ftplib.error_perm) and _code(error) == "530":
                        raise PermanentError(
                            f"FTP {action}: refused with 530 right after a successful login, so "
                            f"this request is refused to this user: {error}") from None
                    raise self._error(action, error) from None
                logger.debug("reused FTP connection was dead during %s (%s); reconnecting",
                             action, error)
        raise AssertionError("unreachable")

    def close(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            try:
                ftp.quit()
            except Exception:  # a dead connection cannot say goodbye
                pass
            ftp.close()

    def remove_leftovers(self) -> None:
        self._run("removal of temporary files", lambda ftp: None)  # a fresh connection sweeps

    # -- operations --------------------------------------------------------------------------------

    def _ensure_dir(self, ftp: ftplib.FTP, directory: str) -> None:
        if directory in self._known_dirs:
            return
        parts = [p for p in directory.split("/") if p]
        current = ""
        for part in parts:
            current += "/" + part
            if current in self._known_dirs:
                continue
            try:
                ftp.voidcmd("MKD " + current)
            except ftplib.error_perm as error:
                try:
                    ftp.voidcmd("CWD " + current)   # it exists as a directory: fine
                except ftplib.error_perm:
                    raise PermanentError(
                        f"FTP: cannot create directory {current} ({error})") from None
            self._known_dirs.add(current)

    def _size(self, ftp: ftplib.FTP, path: str) -> int | None:
        """Size of the file at `path`, or None if there is none (550)."""
        try:
            return ftp.size(path)
        except ftplib.error_perm as error:
            if _code(error) == "550":
                return None
            raise

    def _is_file(self, ftp: ftplib.FTP, path: str) -> bool:
        if "MLST" in self._features:
            try:
                reply = ftp.sendcmd("MLST " + path)
            except ftplib.error_perm as error:
                if _code(error) == "550":
                    return False
                raise
            # 250-Listing path / " type=file;size=3;... /path" / 250 End
            facts = reply.splitlines()[1].strip().split(" ", 1)[0].lower() if \
                len(reply.splitlines()) > 1 else ""
            return "type=file;" in facts + ";"
        return self._size(ftp, path) is not None

    @staticmethod
    def _is_directory(ftp: ftplib.FTP, path: str) -> bool:
        """Is `path` a directory? (CWD into it: every server has CWD; paths are absolute, so the
        working directory it leaves behind matters to no other command.)"""
        try:
            ftp.voidcmd("CWD " + path)
        except ftplib.error_perm:
            return False
        return True

    def _rename_into_place(self, ftp: ftplib.FTP, temp: str, target: str) -> None:
        try:
            ftp.rename(temp, target)
        except ftplib.error_perm:
            if not self._is_file(ftp, target):
                raise
            # This server will not rename over an existing file.
            ftp.delete(target)
            ftp.rename(temp, target)

    def upload(self, local_path: str, remote_path: str) -> str:
        relative = normalize_remote_path(remote_path)
        refuse_long_names(relative)
        local = open_local_file(local_path, self.source_root_for(local_path))

        def put(ftp: ftplib.FTP) -> None:
            target = self._full(relative)
            self._ensure_dir(ftp, posixpath.dirname(target))

            def store(temp: str) -> None:
                size = os.fstat(local.fileno()).st_size
                local.seek(0)
                ftp.storbinary("STOR " + temp, local, blocksize=BLOCK_SIZE)
                if "SIZE" in self._features:
                    stored = self._size(ftp, temp)
                    if stored != size:
                        raise RetryableError(
                            f"FTP upload of {relative}: the server stored {stored} of {size} "
                            "bytes")

            protocol = RenameIntoPlace(
                store=store,
                rename=lambda temp, final: self._rename_into_place(ftp, temp, final),
                remove=lambda path: self._remove(ftp, path),
                connection_lost=lambda error: isinstance(error, _CONNECTION_ERRORS),
                is_directory=lambda path: self._is_directory(ftp, path),
                remove_directory=lambda path: ftp.voidcmd("RMD " + path))
            parent = posixpath.dirname(target)
            try:
                upload_via_temporary_name(self._pending, target, protocol)
            except ftplib.error_perm:
                if self._is_directory(ftp, parent):
                    raise
                # The deletion of a directory's last file (on another connection) removed the
                # emptied directory that this connection had cached as existing: once more.
                self._known_dirs.clear()
                self._ensure_dir(ftp, parent)
                upload_via_temporary_name(self._pending, target, protocol)

        with local:
            self._run(f"upload of {relative}", put)
        logger.debug("uploaded %s to ftp %s", local_path, relative)
        return self.url_for(relative)

    def delete(self, remote_path: str) -> None:
        relative = normalize_remote_path(remote_path)

        def remove(ftp: ftplib.FTP) -> None:
            self._remove(ftp, self._full(relative))
            # Emptied directories go too (as in a local destination), never the root: a file
            # that later replaces a directory must find no empty directory in its place.
            for parent in remote_parents(relative):
                try:
                    ftp.voidcmd("RMD " + self._full(parent))
                except ftplib.all_errors:
                    break  # not empty (or gone, or denied): its parents are not empty either
                self._known_dirs.discard(self._full(parent))

        self._run(f"delete of {relative}", remove)

    def _remove(self, ftp: ftplib.FTP, path: str) -> None:
        """DELE `path`; one that is already gone is not an error."""
        try:
            ftp.delete(path)
        except ftplib.error_perm as error:
            # 550 means "no such file" as well as "denied": only the first is fine.
            if _code(error) != "550" or self._is_file(ftp, path):
                raise

    def exists(self, remote_path: str) -> bool:
        relative = normalize_remote_path(remote_path)
        return self._run(f"exists check of {relative}",
                         lambda ftp: self._is_file(ftp, self._full(relative)))

    def list_files(self, prefix: str = "") -> Iterator[RemoteEntry]:
        """A walk with MLSD (RFC 3659: machine-readable type, size and UTC time), one data
        connection per directory; with LIST (the `ls -l` format nearly every server prints) on
        servers without MLST. LIST gives no usable time and may hide dot files (temporary
        names) on some servers."""
        return walk_sorted(self._read_directory, listing_prefix(prefix))

    def read_back_md5(self, remote_path: str) -> str | None:
        relative = normalize_remote_path(remote_path)

        def read(ftp: ftplib.FTP) -> str | None:
            full = self._full(relative)
            if not self._is_file(ftp, full):
                return None
            digest = hashlib.md5(usedforsecurity=False)
            ftp.retrbinary("RETR " + full, digest.update, blocksize=BLOCK_SIZE)
            return digest.hexdigest()

        return self._run(f"read-back of {relative}", read)

    def _read_directory(self, relative: str) -> list[DirectoryEntry] | None:
        def read(ftp: ftplib.FTP) -> list[DirectoryEntry] | None:
            full = self._full(relative)
            self.listing_requests += 1
            try:
                if "MLST" in self._features:
                    found = [entry for name, facts in ftp.mlsd(full)
                             if (entry := _mlsd_entry(relative, name, facts)) is not None]
                else:
                    lines: list[str] = []
                    ftp.retrlines("LIST " + full, lines.append)
                    found = [entry for line in lines
                             if (entry := _list_entry(relative, line)) is not None]
            except ftplib.error_perm as error:
                if not self._is_directory(ftp, full):  # 550 or 501, depending on the server
                    return None  # no such directory (or a file): nothing below it
                raise
            return found

        return self._run(f"listing of {relative or 'the root'}", read)

    def probe(self) -> None:
        self._run("probe", lambda ftp: ftp.voidcmd("NOOP"))


def _mlsd_entry(relative: str, name: str, facts: Mapping[str, str]) -> DirectoryEntry | None:
    kind = facts.get("type", "").lower()
    if kind == "dir":
        return name, None
    if kind != "file" or "/" in name:
        return None  # cdir, pdir, links the server reports as such
    modify = facts.get("modify", "")
    mtime = None
    if len(modify) >= 14 and modify[:14].isdigit():
        moment = datetime.datetime.strptime(modify[:14], "%Y%m%d%H%M%S")
        fraction = float("0" + modify[14:]) if modify[14:15] == "." else 0.0
        mtime = moment.replace(tzinfo=datetime.timezone.utc).timestamp() + fraction
    size = facts.get("size", "")
    return name, RemoteEntry(f"{relative}/{name}" if relative else name,
                             int(size) if size.isdigit() else 0, mtime=mtime,
                             temporary=is_temporary_name(name))


def _list_entry(relative: str, line: str) -> DirectoryEntry | None:
    """One line of `LIST` in the Unix `ls -l` format: `-rw-r--r-- 1 owner group SIZE Mon DD
    HH:MM name` (the name may contain spaces; a link ends in ` -> target`)."""
    fields = line.split(None, 8)
    if len(fields) < 9 or not fields[4].isdigit():
        return None
    name = fields[8]
    if name in (".", ".."):
        return None
    if line.startswith("d"):
        return name, None
    if line.startswith("l"):
        name = name.split(" -> ", 1)[0]
    elif not line.startswith("-"):
        return None
    return name, RemoteEntry(f"{relative}/{name}" if relative else name, int(fields[4]),
                             temporary=is_temporary_name(name))
