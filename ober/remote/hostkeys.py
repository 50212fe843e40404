"""Host key verification for the fleet controller: known_hosts is the truth, new keys only by explicit opt-in.

Fabric installs paramiko's ``AutoAddPolicy`` and loads no known_hosts, so on its own it trusts any key. Here the
inventory's known_hosts file is loaded into every client, an unknown host is refused (`RefuseUnknown`) unless the
operator asked to trust new hosts (`TrustNew`, which records the key), and a host whose key differs from the one on
file is always refused: paramiko raises ``BadHostKeyException`` for that before any policy is asked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey
from paramiko.ssh_exception import SSHException

from ober.atomic import write_atomic
from ober.errors import OberError

# One writer at a time inside this process; `fcntl.flock` on the directory covers other processes.
_WRITE_LOCK = threading.Lock()


class UnknownHostKey(SSHException):  # type: ignore[misc]  # paramiko is untyped
    """The host is not in known_hosts and new keys are not trusted."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"unknown host key for {hostname}")
        self.hostname = hostname
        self.key = key


def key_name(host: str, port: int) -> str:
    """The name a host's key is filed under in known_hosts (OpenSSH's form: ``[host]:port`` unless port 22)."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """A key as ``ssh-ed25519 SHA256:…``, the form ssh and ssh-keygen print."""
    return f"{key.get_name()} {key.fingerprint}"


def load(path: Path, keys: HostKeys | None = None) -> HostKeys:
    """Read a known_hosts file (into ``keys``, or a new set); a missing file is empty (every host is unknown).

    Raises:
        OberError: the file cannot be read or holds a malformed key, naming the file.
    """
    keys = HostKeys() if keys is None else keys
    if not path.exists():
        return keys
    try:
        keys.load(str(path))
    except (OSError, SSHException, ValueError, InvalidHostKey) as exc:
        raise OberError(f"{path}: cannot read known_hosts: {exc}", f"fix or remove the bad line in {path}") from None
    return keys


def lines_for(path: Path, name: str) -> list[int]:
    """The line numbers in ``path`` holding a key for ``name`` (hashed entries included), for error messages."""
    matcher = HostKeys()
    found = []
    with contextlib.suppress(OSError):
        for number, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entry = HostKeyEntry.from_line(line, number)
            except (SSHException, ValueError, InvalidHostKey):
                continue
            if entry is not None and matcher._hostname_matches(name, entry):
                found.append(number)
    return found


@dataclass(frozen=True)
class KnownHosts:
    """The known_hosts file of one target, and whether new hosts may be added to it."""

    path: Path
    accept_new: bool

    def policy(self) -> paramiko.MissingHostKeyPolicy:
        """What to do with a host that has no key on file."""
        return TrustNew(self.path) if self.accept_new else RefuseUnknown()

    def install(self, client: paramiko.SSHClient) -> None:
        """Make ``client`` verify against this file (replacing Fabric's AutoAddPolicy)."""
        client.set_missing_host_key_policy(self.policy())
        load(self.path, client.get_host_keys())


class RefuseUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    """Refuse any host whose key is not on file."""

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        """Refuse; the caller turns this into a message with the fix."""
        raise UnknownHostKey(hostname, key)


class TrustNew(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]  # paramiko is untyped
    """Trust a host seen for the first time and record its key (ssh's ``StrictHostKeyChecking=accept-new``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        """Record the key in known_hosts, then accept it."""
        append(self.path, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


def append(path: Path, hostname: str, key: paramiko.PKey) -> None:
    """Add one host key line to known_hosts atomically (temp file + rename), keeping the file's mode.

    Parallel connections may learn keys at the same time: writers are serialised (a thread lock, and ``flock`` on
    the directory for other processes) and each re-reads the file, so no line is lost.

    Raises:
        OberError: the file cannot be written.
    """
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _WRITE_LOCK, _dir_lock(directory):
            old = path.read_text() if path.exists() else ""
            if line in old.splitlines(keepends=True):
                return
            mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
            text = old + ("\n" if old and not old.endswith("\n") else "") + line
            write_atomic(path, text, mode)
    except OSError as exc:
        raise OberError(f"cannot record {hostname}'s host key in {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Any:
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
