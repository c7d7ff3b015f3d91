"""SFTP transporter (paramiko): one SSH connection per instance, files renamed into place.

Protocol quirks this module is shaped by:

* **Atomic replace.** SFTPv3's RENAME (the only one in the protocol OpenSSH speaks) must fail when
  the target exists, so a plain rename cannot replace a file. OpenSSH's `posix-rename@openssh.com`
  extension is rename(2) on the server: it replaces atomically. paramiko does not expose the
  extensions the server announced, so the first upload tries it and, if the server answers
  "operation unsupported", this connection falls back to remove + rename (a reader may then find
  no file for an instant, never a partial one).
* **Temporary names.** Uploads go to `.<name>.fctmp-<random>` in the target's directory (same file
  system, so the rename is atomic) and are renamed over the final name (`temporary.py`, shared with
  FTP and symlink_or_copy). A temporary file left by a transfer that died with the connection, or
  with the daemon, is recorded on local disk and removed after the next (re)connect.
* **Host keys.** Checked against known_hosts (paramiko reads OpenSSH's format, hashed names
  included). An unknown host is refused with the command that trusts it, unless the settings say
  `accept_new_host_key`; a key that *differs* from the recorded one is always refused. paramiko's
  AutoAddPolicy (which accepts anything, silently) is never used.
* **Errors.** paramiko reports SFTP status codes as IOError: ENOENT and EACCES carry an errno,
  everything else ("Failure": disk full, not a directory, ...) only a message. Socket errors,
  EOFError and SSHException mean the connection is gone: it is dropped and rebuilt on the next call.
* **~/.ssh/config.** HostName, Port, User and IdentityFile apply as they would for `ssh`, below the
  explicit settings; the agent (SSH_AUTH_SOCK) is offered as `ssh` would.
"""
from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import logging
import os
import posixpath
import socket
import stat
import threading
import urllib.parse
from typing import Callable, ClassVar, Iterator, Mapping, TypeVar

import paramiko

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

TRANSPORTER_CLASS = "SFTPTransporter"

T = TypeVar("T")

#: Seconds between SSH keepalive messages: keeps NAT/firewall state alive and notices a dead peer.
KEEPALIVE_INTERVAL = 30
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_known_hosts_lock = threading.Lock()

#: Errors that mean the SSH connection itself is gone (the SFTP session cannot go on). Any other
#: OSError is an SFTP status reply, unless the transport died meanwhile (checked as well).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, ConnectionError, TimeoutError, paramiko.SSHException, paramiko.SFTPError)


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint as OpenSSH prints it (SHA256:base64, no padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _is_true(value: str) -> bool:
    return value.strip().lower() in _TRUE


class _RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, saying how to trust it."""

    def __init__(self, known_hosts: str, host: str, port: int) -> None:
        self.known_hosts, self.host, self.port = known_hosts, host, port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        raise ConfigurationError(
            f"the SSH host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in "
            f"{self.known_hosts}; if this is the right server (compare the fingerprint), trust it "
            f"with: ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}  -- or set "
            "<accept_new_host_key>true</accept_new_host_key> to record it on first connection")


class _RecordNewHostKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use, explicitly configured: append the key to known_hosts and log it.

    Appends one line instead of paramiko's save_host_keys(), which rewrites the whole file and
    drops what paramiko does not parse (@cert-authority lines, comments)."""

    def __init__(self, known_hosts: str) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        directory = os.path.dirname(self.known_hosts)
        try:
            with _known_hosts_lock:
                if directory:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                with os.fdopen(fd, "a", encoding="ascii") as out:
                    out.write(line)
        except OSError as error:
            raise ConfigurationError(
                f"cannot record the new host key of {hostname} in {self.known_hosts}: {error}; "
                "make the file writable or add the key yourself with ssh-keyscan") from None
        client.get_host_keys().add(hostname, key.get_name(), key)
        logger.warning("accepted new SSH host key of %s (%s %s) and recorded it in %s",
                       hostname, key.get_name(), fingerprint(key), self.known_hosts)


class SFTPTransporter(Transporter):
    """Upload over SFTP to `path` on `host`; URLs are `url` + the path below `path`."""

    name = "sftp"
    valid_settings = frozenset({
        "host", "username", "password", "key", "key_passphrase", "port", "path", "url",
        "known_hosts", "accept_new_host_key", "ssh_config",
    })
    required_settings = frozenset({"host", "url"})
    default_settings: ClassVar[Mapping[str, str]] = {
        "port": "22", "path": "", "known_hosts": "~/.ssh/known_hosts",
        "accept_new_host_key": "false", "ssh_config": "~/.ssh/config",
    }
    can_move = True
    can_list = True
    can_read_back = True

    def __init__(self, settings: Mapping[str, str], context: TransporterContext) -> None:
        super().__init__(settings, context)
        self._explicit = frozenset(settings)
        root = self.settings.get("path", "").strip()
        self._root = posixpath.normpath(root) if root else ""
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._known_dirs: set[str] = set()
        #: Temporary files of transfers that died with their connection, removed on reconnect.
        self._pending = PendingTemporaryNames(context.state_dir, context.server_name)
        self._posix_rename = True

    # -- settings ----------------------------------------------------------------------------------

    @classmethod
    def check_settings(cls, settings: Mapping[str, str]) -> list[str]:
        problems = super().check_settings(settings)
        port = settings.get("port", "22").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"<port> must be a TCP port number (1-65535), not {port!r}")
        url = settings.get("url", "")
        if url and not urllib.parse.urlsplit(url).scheme:
            problems.append(f"<url> must be absolute with a scheme, e.g. https://cdn.example.com/"
                            f"static, not {url!r}")
        key = settings.get("key", "").strip()
        if key and not os.access(os.path.expanduser(key), os.R_OK):
            problems.append(f"<key> {key!r} is not a readable private key file")
        flag = settings.get("accept_new_host_key", "false").strip().lower()
        if flag not in _TRUE | _FALSE:
            problems.append(f"<accept_new_host_key> must be true or false, not {flag!r}")
        return problems

    def url_for(self, remote_path: str) -> str:
        return join_url(self.settings["url"], normalize_remote_path(remote_path))

    def _full(self, relative: str) -> str:
        return posixpath.join(self._root, relative) if self._root else relative

    # -- connection --------------------------------------------------------------------------------

    def _target(self) -> tuple[str, int, str, list[str]]:
        """(hostname, port, username, identity files) after applying ~/.ssh/config."""
        host = self.settings["host"].strip()
        config: dict[str, object] = {}
        config_path = self.settings.get("ssh_config", "").strip()
        if config_path and config_path.lower() != "none":
            config_path = os.path.expanduser(config_path)
            if os.path.isfile(config_path):
                try:
                    config = dict(paramiko.SSHConfig.from_path(config_path).lookup(host))
                except (OSError, paramiko.SSHException) as error:
                    raise ConfigurationError(
                        f"cannot read the SSH config {config_path}: {error}") from None
        hostname = str(config.get("hostname", host))
        port_text = self.settings["port"] if "port" in self._explicit else config.get("port", 22)
        username = (self.settings.get("username", "").strip() or str(config.get("user", ""))
                    or getpass.getuser())
        key = self.settings.get("key", "").strip()
        configured = config.get("identityfile") or []
        identities = [key] if key else [str(p) for p in configured]  # type: ignore[attr-defined]
        return hostname, int(str(port_text)), username, [os.path.expanduser(p) for p in identities]

    def _load_key(self, path: str, explicit: bool) -> paramiko.PKey | None:
        passphrase = self.settings.get("key_passphrase") or ""
        try:
            # Positional and as bytes: the keyword was renamed in paramiko 5, and cryptography
            # (which does the decrypting) wants bytes.
            return paramiko.PKey.from_path(path, passphrase.encode("utf-8") or None)
        # cryptography raises TypeError for an encrypted OpenSSH-format key without a passphrase.
        except (paramiko.PasswordRequiredException, TypeError):
            problem = "is encrypted; set <key_passphrase> (or load it into ssh-agent)"
        except (OSError, paramiko.SSHException, ValueError) as error:
            problem = f"cannot be used ({error or type(error).__name__}); check the file and " \
                      "<key_passphrase>"
        if explicit:
            raise ConfigurationError(f"the SSH private key {path} {problem}")
        logger.warning("skipping IdentityFile %s from the SSH config: it %s", path, problem)
        return None

    def _connect(self) -> paramiko.SFTPClient:
        hostname, port, username, identities = self._target()
        explicit_key = bool(self.settings.get("key", "").strip())
        pkey = None
        for path in identities:
            if os.path.exists(path) or explicit_key:
                pkey = self._load_key(path, explicit_key)
                if pkey is not None:
                    break
        known_hosts = os.path.expanduser(self.settings["known_hosts"].strip())
        client = paramiko.SSHClient()
        try:
            if os.path.isfile(known_hosts):
                client.load_host_keys(known_hosts)
            if _is_true(self.settings["accept_new_host_key"]):
                client.set_missing_host_key_policy(_RecordNewHostKey(known_hosts))
            else:
                client.set_missing_host_key_policy(
                    _RefuseUnknownHostKey(known_hosts, hostname, port))
            timeout = self.context.timeout
            password = self.settings.get("password") or None
            client.connect(
                hostname, port=port, username=username, password=password, pkey=pkey,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                channel_timeout=timeout, allow_agent=True,
                look_for_keys=pkey is None and password is None)
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(KEEPALIVE_INTERVAL)
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(timeout)  # type: ignore[union-attr]
        except BaseException as error:
            client.close()
            raise self._connect_error(error, hostname, port, username) from None
        logger.debug("connected to sftp://%s@%s:%d", username, hostname, port)
        self._client, self._sftp = client, sftp
        self._known_dirs.clear()
        self._posix_rename = True
        self._pending.sweep(lambda path: _remove(sftp, path))
        return sftp

    def _connect_error(self, error: BaseException, hostname: str, port: int,
                       username: str) -> BaseException:
        where = f"{hostname}:{port}"
        if isinstance(error, TransporterError) or not isinstance(error, Exception):
            return error
        if isinstance(error, paramiko.BadHostKeyException):
            return ConfigurationError(
                f"the SSH host key of {where} ({fingerprint(error.key)}) does not match the one "
                f"recorded in {self.settings['known_hosts']} ({fingerprint(error.expected_key)}): "
                "either the server was reinstalled or someone is intercepting the connection. "
                f"If the change is expected, remove the old key with: ssh-keygen -R "
                f"'[{hostname}]:{port}' -f {self.settings['known_hosts']}, then trust the new one")
        if isinstance(error, paramiko.AuthenticationException):
            return ConfigurationError(
                f"SSH login as {username!r} on {where} failed ({error}); check <username>, "
                "<key>/<key_passphrase> or <password>, and the server's authorized_keys")
        if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
            return ServerUnavailableError(f"cannot connect to SFTP server {where}: {error}")
        if isinstance(error, socket.gaierror):
            return ServerUnavailableError(
                f"cannot resolve SFTP host {hostname!r} ({error}); check <host>")
        if isinstance(error, (ConnectionRefusedError, socket.timeout)) or (
                isinstance(error, OSError) and error.errno in (
                    errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)):
            return ServerUnavailableError(f"cannot connect to SFTP server {where}: {error}")
        if isinstance(error, IOError) and error.errno in (errno.EACCES, errno.EPERM):
            return ConfigurationError(f"the SFTP subsystem on {where} refused {username!r}: {error}")
        return RetryableError(f"SSH connection to {where} failed: {error or type(error).__name__}")

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return transport is not None and transport.is_active()

    def _session(self) -> tuple[paramiko.SFTPClient, bool]:
        """The live SFTP session and whether it was just opened."""
        if self._sftp is not None and self._alive():
            return self._sftp, False
        self.close()
        return self._connect(), True

    def _run(self, action: str, operation: Callable[[paramiko.SFTPClient], T]) -> T:
        """Run `operation` on a live session, classifying errors.

        Every operation here is idempotent (a temp upload + rename can be repeated), so when a
        session that was reused from an earlier call turns out to be dead, the operation is tried
        once more on a fresh connection: a server restart costs one reconnect, not one failure."""
        for attempt in (1, 2):
            sftp, fresh = self._session()
            try:
                return operation(sftp)
            except TransporterError:
                raise
            except Exception as error:
                if isinstance(error, OSError) and not isinstance(error, _CONNECTION_ERRORS) \
                        and self._alive():
                    raise self._status_error(action, error) from None
                self.close()
                if fresh or attempt == 2:
                    raise RetryableError(
                        f"SFTP connection lost during {action}: "
                        f"{error or type(error).__name__}") from None
                logger.debug("reused SFTP session was dead during %s (%s); reconnecting",
                             action, error)
        raise AssertionError("unreachable")

    def _status_error(self, action: str, error: OSError) -> TransporterError:
        if error.errno in (errno.EACCES, errno.EPERM):
            return PermanentError(f"SFTP server denied {action}: {error}")
        if error.errno == errno.ENOENT:
            return RetryableError(f"SFTP {action}: no such file or directory ({error})")
        return RetryableError(f"SFTP {action} failed: {error}")

    def close(self) -> None:
        sftp, client = self._sftp, self._client
        self._sftp = self._client = None
        for closable in (sftp, client):
            if closable is not None:
                try:
                    closable.close()
                except Exception:  # closing a dead connection: nothing left to save
                    logger.debug("error while closing an SFTP connection", exc_info=True)

    def remove_leftovers(self) -> None:
        self._run("removal of temporary files", lambda sftp: None)  # a fresh connection sweeps

    # -- operations --------------------------------------------------------------------------------

    def _ensure_dir(self, sftp: paramiko.SFTPClient, directory: str) -> None:
        """Create `directory` and its missing parents (cached per connection)."""
        if not directory or directory in self._known_dirs:
            return
        missing: list[str] = []
        current = directory
        while current and current not in ("/", ".") and current not in self._known_dirs:
            try:
                mode = sftp.stat(current).st_mode or 0
            except IOError as error:
                if error.errno != errno.ENOENT:
                    raise
                missing.append(current)
                current = posixpath.dirname(current)
                continue
            if not stat.S_ISDIR(mode):
                raise PermanentError(f"SFTP: {current} exists and is not a directory")
            break
        for path in reversed(missing):
            try:
                sftp.mkdir(path)
            except IOError:
                # Another worker may have created it meanwhile; only a non-directory is an error.
                if not stat.S_ISDIR(sftp.stat(path).st_mode or 0):
                    raise
        current = directory
        while current and current not in self._known_dirs and current not in ("/", "."):
            self._known_dirs.add(current)
            current = posixpath.dirname(current)

    def _rename_into_place(self, sftp: paramiko.SFTPClient, temp: str, target: str) -> None:
        if self._posix_rename:
            try:
                sftp.posix_rename(temp, target)
                return
            except IOError as error:
                if "unsupported" not in str(error).lower():
                    raise
                logger.info("SFTP server lacks posix-rename@openssh.com; replacing files with "
                            "remove + rename on this connection")
                self._posix_rename = False
        try:
            sftp.rename(temp, target)
        except IOError as error:
            if isinstance(error, _CONNECTION_ERRORS):
                raise
            _remove(sftp, target)
            sftp.rename(temp, target)

    def upload(self, local_path: str, remote_path: str) -> str:
        relative = normalize_remote_path(remote_path)
        refuse_long_names(relative)
        target = self._full(relative)
        local = open_local_file(local_path, self.source_root_for(local_path))

        def put(sftp: paramiko.SFTPClient) -> None:
            self._ensure_dir(sftp, posixpath.dirname(target))

            def store(temp: str) -> None:
                local.seek(0)
                sftp.putfo(local, temp, file_size=os.fstat(local.fileno()).st_size, confirm=True)

            protocol = RenameIntoPlace(
                store=store,
                rename=lambda temp, final: self._rename_into_place(sftp, temp, final),
                remove=lambda path: _remove(sftp, path),
                connection_lost=lambda error: (isinstance(error, _CONNECTION_ERRORS)
                                               or not self._alive()),
                is_directory=lambda path: _is_directory(sftp, path),
                remove_directory=sftp.rmdir)
            try:
                upload_via_temporary_name(self._pending, target, protocol)
            except IOError as error:
                if isinstance(error, _CONNECTION_ERRORS) or error.errno != errno.ENOENT:
                    raise
                # The deletion of a directory's last file (on another connection) removed the
                # emptied directory that this connection had cached as existing: once more.
                self._known_dirs.clear()
                self._ensure_dir(sftp, posixpath.dirname(target))
                upload_via_temporary_name(self._pending, target, protocol)

        with local:
            self._run(f"upload of {relative}", put)
        logger.debug("uploaded %s to sftp %s", local_path, target)
        return self.url_for(relative)

    def delete(self, remote_path: str) -> None:
        relative = normalize_remote_path(remote_path)

        def remove(sftp: paramiko.SFTPClient) -> None:
            _remove(sftp, self._full(relative))
            # Emptied directories go too (as in a local destination), never the root: a file
            # that later replaces a directory must find no empty directory in its place.
            for parent in remote_parents(relative):
                try:
                    sftp.rmdir(self._full(parent))
                except IOError:
                    break  # not empty (or gone, or denied): its parents are not empty either
                self._known_dirs.discard(self._full(parent))

        self._run(f"delete of {relative}", remove)

    def exists(self, remote_path: str) -> bool:
        relative = normalize_remote_path(remote_path)

        def check(sftp: paramiko.SFTPClient) -> bool:
            try:
                return not stat.S_ISDIR(sftp.stat(self._full(relative)).st_mode or 0)
            except IOError as error:
                if error.errno == errno.ENOENT:
                    return False
                raise

        return self._run(f"stat of {relative}", check)

    def list_files(self, prefix: str = "") -> Iterator[RemoteEntry]:
        """A walk with READDIR (attributes come with the names: one round trip per directory
        and page of names). A symlink is stat()ed for what it points at."""
        return walk_sorted(self._read_directory, listing_prefix(prefix))

    def read_back_md5(self, remote_path: str) -> str | None:
        relative = normalize_remote_path(remote_path)

        def read(sftp: paramiko.SFTPClient) -> str | None:
            digest = hashlib.md5(usedforsecurity=False)
            try:
                with sftp.open(self._full(relative), "rb") as remote:
                    remote.prefetch()
                    for block in iter(lambda: remote.read(1024 * 1024), b""):
                        digest.update(block)
            except IOError as error:
                if isinstance(error, _CONNECTION_ERRORS) or error.errno != errno.ENOENT:
                    raise
                return None
            return digest.hexdigest()

        return self._run(f"read-back of {relative}", read)

    def _read_directory(self, relative: str) -> list[DirectoryEntry] | None:
        full = self._full(relative) if relative else (self._root or ".")

        def read(sftp: paramiko.SFTPClient) -> list[DirectoryEntry] | None:
            self.listing_requests += 1
            try:
                attributes = sftp.listdir_attr(full)
            except IOError as error:
                if isinstance(error, _CONNECTION_ERRORS):
                    raise
                if error.errno == errno.ENOENT or not _is_directory(sftp, full):
                    return None  # no such directory (or a file): nothing below it
                raise
            found: list[DirectoryEntry] = []
            for item in attributes:
                name = item.filename
                mode = item.st_mode or 0
                if stat.S_ISLNK(mode):
                    try:
                        item = sftp.stat(posixpath.join(full, name))
                    except IOError as error:
                        if error.errno == errno.ENOENT:
                            continue  # dangling
                        raise
                    mode = item.st_mode or 0
                    if stat.S_ISDIR(mode):
                        continue  # not entered: it could lead out of the root
                if stat.S_ISDIR(mode):
                    found.append((name, None))
                elif stat.S_ISREG(mode):
                    path = f"{relative}/{name}" if relative else name
                    found.append((name, RemoteEntry(
                        path, item.st_size or 0, mtime=item.st_mtime,
                        temporary=is_temporary_name(name))))
            return found

        return self._run(f"listing of {relative or 'the root'}", read)

    def move(self, old_remote_path: str, new_remote_path: str) -> str:
        old, new = normalize_remote_path(old_remote_path), normalize_remote_path(new_remote_path)

        def rename(sftp: paramiko.SFTPClient) -> None:
            self._ensure_dir(sftp, posixpath.dirname(self._full(new)))
            self._rename_into_place(sftp, self._full(old), self._full(new))

        self._run(f"move of {old} to {new}", rename)
        return self.url_for(new)

    def probe(self) -> None:
        def look(sftp: paramiko.SFTPClient) -> None:
            try:
                sftp.stat(self._root or ".")
            except IOError as error:
                if error.errno != errno.ENOENT:  # a missing root is created on first upload
                    raise

        self._run("probe", look)


def _is_directory(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        return stat.S_ISDIR(sftp.lstat(path).st_mode or 0)
    except IOError as error:
        if error.errno == errno.ENOENT:
            return False
        raise


def _remove(sftp: paramiko.SFTPClient, path: str) -> None:
    """Remove the file `path`; one that is already gone is not an error, and neither is a name
    that is now a directory (a directory replaced the file: the file is gone; SFTP says only
    "Failure" when asked to remove a directory)."""
    try:
        sftp.remove(path)
    except IOError as error:
        if error.errno == errno.ENOENT:
            return
        try:
            if stat.S_ISDIR(sftp.lstat(path).st_mode or 0):
                return
        except IOError as missing:
            if missing.errno == errno.ENOENT:
                return
        raise
