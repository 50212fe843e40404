"""SSH connections to fleet nodes: Fabric for ssh_config and auth, verified host keys, a timeout on everything.

A :class:`Connection` satisfies :class:`ober.runner.Runner`, so node facts and plans run over SSH exactly as they
run locally. What Fabric alone does not give, and this module adds:

- host keys are checked against the inventory's known_hosts (see `ober.remote.hostkeys`), on every hop;
- every command has a deadline: it runs under the node's ``timeout`` (so a timed-out command is really killed
  there, exit 124), and the client gives up a few seconds later; a node that stops answering keep-alives mid-command
  is reported lost instead of hanging for the command's whole timeout;
- a non-root login runs everything through ``sudo -n``;
- `Connection.put` is atomic (temp file in the same directory, checksum, chmod, rename) and never lets a secret be
  readable by others, even for a moment.

Every failure is an :class:`OberError` naming the node, with a fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import secrets
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import fabric
import paramiko
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    ProxyCommandFailure,
    SSHException,
)

from ober.errors import OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote import hostkeys
from ober.runner import Result

# The node's `timeout` sends SIGTERM at the deadline and SIGKILL this much later.
KILL_AFTER = 2.0
# The client waits this long past the remote deadline (and the SIGKILL) before it calls the connection lost.
CLIENT_GRACE = 3.0
# Keep-alive probes: one after this much silence (capped by the target's connect timeout), lost after COUNT unanswered.
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT = 3
POLL = 0.05
CHUNK = 65536
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUIET = logging.getLogger("paramiko")
# paramiko waits for the banner, the authentication and a new channel separately: each gets the connect timeout.
_TIMEOUTS = ("banner_timeout", "auth_timeout", "channel_timeout")


@dataclass(frozen=True)
class SshTarget:
    """How to reach one node. Build them from an inventory with `targets`."""

    name: str
    """Inventory node name, used in every message."""
    host: str
    """Address to connect to (the inventory address); an ssh_config ``HostName`` for it overrides."""
    user: str | None
    """Login user; None: ssh_config's ``User``, else the local user."""
    port: int | None
    """None: ssh_config's ``Port``, else 22."""
    ssh_config: str | None
    """ssh_config file; None: ``~/.ssh/config`` if it exists."""
    known_hosts: str
    """known_hosts file (``~`` expanded)."""
    connect_timeout: float
    command_timeout: float
    accept_new_host_keys: bool = False


def targets(
    inventory: Inventory, nodes: Sequence[InventoryNode], *, accept_new_host_keys: bool = False
) -> list[SshTarget]:
    """One target per node, from the inventory's ``ssh`` settings.

    Relative ``ssh.config`` and ``ssh.known_hosts`` paths are relative to the inventory (its directory, or the
    directory holding the inventory file), so an inventory and its ssh files move together.
    """
    source = Path(inventory.source)
    base = source if source.is_dir() else source.parent
    ssh = inventory.ssh

    def located(path: str) -> str:
        expanded = Path(path).expanduser()
        return str(expanded if expanded.is_absolute() else base / expanded)

    return [
        SshTarget(
            name=node.name,
            host=node.address,
            user=ssh.user,
            port=ssh.port,
            ssh_config=located(ssh.config) if ssh.config else None,
            known_hosts=located(ssh.known_hosts),
            connect_timeout=ssh.connect_timeout,
            command_timeout=ssh.command_timeout,
            accept_new_host_keys=accept_new_host_keys,
        )
        for node in nodes
    ]


def connect(target: SshTarget) -> Connection:
    """Open a verified SSH connection to ``target``.

    Raises:
        OberError: unreachable, refused or timed out; authentication failed; unknown or changed host key; a bad
            ssh_config. One line naming the node, with a fix.
    """
    known = hostkeys.KnownHosts(Path(target.known_hosts).expanduser(), target.accept_new_host_keys)
    config = _ssh_config(target)
    lookup = config.lookup(target.host)
    connect_kwargs: dict[str, Any] = dict.fromkeys(_TIMEOUTS, target.connect_timeout)
    if lookup.get("identitiesonly", "no").lower() == "yes":
        # Only the configured IdentityFile, as ssh does; trying every key can exhaust the server's MaxAuthTries.
        connect_kwargs.update(allow_agent=False, look_for_keys=False)
    conn = _Fabric(
        target.host,
        user=target.user,
        port=target.port,
        # lazy: no ~/.fabric.yaml or /etc/fabric.yaml; what ober does depends on the inventory and ssh_config only.
        config=fabric.Config(ssh_config=config, lazy=True),
        connect_timeout=target.connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    chain = _chain(conn)
    for hop in chain:
        known.install(hop.client)
        hop.connect_timeout = target.connect_timeout
        if hop is not conn:
            hop.connect_kwargs.update({key: connect_kwargs[key] for key in _TIMEOUTS})
    # paramiko logs a traceback for every failed handshake, which Python prints when nothing handles its logs;
    # the failure is reported once, as an OberError (a handler configured on the root logger still sees them).
    if not _QUIET.handlers:
        _QUIET.addHandler(logging.NullHandler())
    try:
        conn.open()
    except BaseException as exc:
        # The transport thread's own error says more than what the caller's thread saw ("No existing session").
        transport = conn.client.get_transport()
        cause = transport.get_exception() if transport is not None else None
        proxy = _proxy_death(transport)
        for hop in chain:
            _close(hop)
        if proxy is not None and isinstance(exc, Exception):
            where = f"{target.name}: {conn.user}@{conn.host}:{int(conn.port)}"
            raise OberError(f"{where}: the ssh_config ProxyCommand {proxy}", "run the ProxyCommand by hand") from None
        if isinstance(exc, Exception):
            raise _connect_error(target, chain, known, cause or exc) from None
        raise
    transport = conn.client.get_transport()
    # Keep NAT and firewall state alive on idle connections; liveness itself is probed in `Connection._wait`.
    transport.set_keepalive(int(_keepalive_interval(target)))
    return Connection(target, conn, chain)


class Connection:
    """An open SSH connection to one node; a :class:`ober.runner.Runner`. Use `connect` to make one."""

    def __init__(self, target: SshTarget, conn: Any, chain: Sequence[Any]) -> None:
        self.target = target
        self.user: str = str(conn.user)
        """The login user ssh_config and the target resolved to."""
        self.sudo = self.user != "root"
        """Commands run through ``sudo -n`` (the login is not root)."""
        self._conn = conn
        self._chain = list(chain)
        self._probe_lock = threading.Lock()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and every jump host under it (idempotent)."""
        for hop in self._chain:
            _close(hop)

    def reconnect(self) -> None:
        """Close this connection and open it again: same target, same host-key checks, same object.

        A connection never reopens by itself: once its transport has died (the node rebooted, its sshd restarted)
        every command fails with "the connection is closed". After a reconnect this object runs commands again, so
        whoever holds it (a roll, the fleet lock) keeps working.

        Raises:
            OberError: as `connect` (the node does not answer yet, …); the connection then stays closed.
        """
        self.close()
        fresh = connect(self.target)
        self._conn, self._chain = fresh._conn, fresh._chain

    def run(
        self,
        argv: Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        *,
        stdin: bytes | None = None,
    ) -> Result:
        """Run ``argv`` on the node (as root: via ``sudo -n`` for another login) and capture its output.

        Args:
            argv: the program and its arguments, quoted for the remote shell (never a shell line).
            timeout: seconds before the command is killed on the node; default: the target's command timeout.
            env: extra environment variables for the command.
            stdin: bytes fed to the command (default: none, it reads end-of-file).

        Returns:
            The result; exit 124 if the command did not finish in time, 127 if the program is missing.

        Raises:
            OberError: the connection was lost or the node did not answer; sudo needs a password.
        """
        out, err, code = self._exec(argv, timeout, env, stdin)
        return Result(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        """Write ``data`` to the file ``remote`` atomically, with ``mode``.

        The bytes go to a temp file in the same directory created unreadable to others (umask 077), are checked
        against their SHA-256 (an upload cut short is never moved into place), get their mode, then are renamed
        over ``remote``: readers see the old file or the new one, never part of it.

        Raises:
            OberError: the file could not be written (message names the node and the path).
        """
        if not posixpath.isabs(remote) or remote.endswith("/"):
            raise OberError(f"{self.target.name}: cannot upload to {remote!r}", "give an absolute file path")
        directory, base = posixpath.split(remote)
        temp = posixpath.join(directory, f".{base}.ober-{secrets.token_hex(4)}")
        script = (
            # A killed upload (timeout, lost connection) removes its temp file too.
            'umask 077; trap \'rm -f -- "$1"\' EXIT; trap "exit 1" HUP INT TERM; cat > "$1" || exit 1; '
            'sum=$(sha256sum < "$1") || exit 1; '
            'if [ "${sum%% *}" != "$3" ]; then echo "upload to $2 arrived incomplete" >&2; exit 1; fi; '
            'chmod "$4" "$1" && mv -f -- "$1" "$2"'
        )
        digest = hashlib.sha256(data).hexdigest()
        argv = ["sh", "-c", script, "ober-put", temp, remote, digest, f"{mode & 0o7777:o}"]
        out, err, code = self._exec(argv, timeout, None, data, f"writing {remote}")
        if code == 124:
            raise OberError(
                f"{self.target.name}: cannot write {remote}: the upload did not finish in time (left unchanged)",
                "give it a longer timeout, or check the link to the node",
            )
        if code != 0:
            detail = Result(code, out.decode(errors="replace"), err.decode(errors="replace")).last_line()
            raise OberError(f"{self.target.name}: cannot write {remote}: {detail}")

    def get(self, remote: str, *, timeout: float | None = None) -> bytes:
        """Read the file ``remote`` (as root).

        Raises:
            OberError: the file cannot be read (missing, a directory, …), naming the node and the path.
        """
        out, err, code = self._exec(["cat", "--", remote], timeout, None, None, f"reading {remote}")
        if code != 0:
            detail = Result(code, "", err.decode(errors="replace")).last_line()
            raise OberError(f"{self.target.name}: cannot read {remote}: {detail}")
        return out

    def _line(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None) -> str:
        if not argv:
            raise OberError(f"{self.target.name}: empty command")
        words = ["sudo", "-n", "--"] if self.sudo else []
        # The node's own `timeout` kills the command at the deadline (closing the channel would leave it running).
        words += ["timeout", "-k", f"{KILL_AFTER:g}", f"{timeout:g}"]
        if env:
            bad = [name for name in env if not _ENV_NAME.match(name)]
            if bad:
                raise OberError(f"{self.target.name}: invalid environment variable name {bad[0]!r}")
            words += ["env", *(f"{name}={value}" for name, value in env.items())]
        return shlex.join([*words, *argv])

    def _exec(
        self,
        argv: Sequence[str],
        timeout: float | None,
        env: Mapping[str, str] | None,
        stdin: bytes | None,
        doing: str | None = None,
    ) -> tuple[bytes, bytes, int]:
        limit = self.target.command_timeout if timeout is None else timeout
        if limit <= 0:
            # `timeout 0` on the node would mean no timeout at all.
            raise OberError(f"{self.target.name}: command timeout must be positive, got {limit:g}")
        line = self._line(argv, limit, env)
        shown = doing or f"running {shlex.join(argv)}"
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise self._lost(shown, "the connection is closed")
        started = time.monotonic()
        try:
            channel = transport.open_session(timeout=self.target.connect_timeout)
        except (SSHException, OSError, EOFError) as exc:
            raise self._lost(shown, str(exc) or type(exc).__name__) from None
        interval = _keepalive_interval(self.target)
        watch = _Watch(transport, self._probe_lock, interval, started + limit + KILL_AFTER + CLIENT_GRACE)
        # paramiko waits for the answer to the exec request without a timeout: a node frozen at that moment would
        # hang it, so the connection is closed (and the wait ends) if no answer comes in time.
        watchdog = threading.Timer(interval * (KEEPALIVE_COUNT + 1), transport.close)
        watchdog.daemon = True
        try:
            watchdog.start()
            try:
                channel.exec_command(line)
            finally:
                watchdog.cancel()
            channel.settimeout(POLL)
            if stdin:
                self._send(channel, stdin, watch, shown)
            channel.shutdown_write()
            out, err, code = self._wait(channel, watch, shown)
        except (SSHException, OSError, EOFError) as exc:
            raise self._lost(shown, str(exc) or type(exc).__name__) from None
        finally:
            channel.close()
        elapsed = time.monotonic() - started
        if code in (124, 137) and elapsed >= limit:
            err += f"{shlex.join(argv)} did not finish in {limit:g}s\n".encode()
            code = 124
        if self.sudo and code == 1 and err.startswith(b"sudo: ") and b"password" in err:
            raise OberError(
                f"{self.target.name}: {self.user} cannot run commands as root without a password (sudo -n)",
                f"allow it: '{self.user} ALL=(ALL) NOPASSWD: ALL' in /etc/sudoers.d/, or log in as root",
            )
        return out, err, code

    def _send(self, channel: Any, data: bytes, watch: _Watch, shown: str) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = channel.send(view[:CHUNK])
            except TimeoutError:
                sent = None
            if sent == 0:
                raise EOFError("the command closed its input")
            if sent:
                view = view[sent:]
                watch.heard()
            lost = watch.check()
            if lost:
                raise self._lost(shown, lost)

    def _wait(self, channel: Any, watch: _Watch, shown: str) -> tuple[bytes, bytes, int]:
        out, err = bytearray(), bytearray()
        eof = False
        while True:
            got = False
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(CHUNK)
                got = True
            if not eof:
                try:
                    data = channel.recv(CHUNK)
                except TimeoutError:
                    data = None
                if data:
                    out += data
                    got = True
                elif data == b"":
                    eof = True
            if eof and channel.exit_status_ready():
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(CHUNK)
                status = channel.recv_exit_status()
                return bytes(out), bytes(err), 255 if status < 0 else status
            if got:
                watch.heard()
            lost = watch.check()
            if lost:
                raise self._lost(shown, lost)
            if eof:
                time.sleep(POLL)

    def _lost(self, shown: str, why: str) -> OberError:
        return OberError(
            f"{self.target.name}: lost the SSH connection to {self.target.host} while {shown}: {why}",
            "check that the node is up and reachable, then run the command again",
        )


class _Watch:
    """Tells a node that is quiet from one that is gone, while a command runs.

    Silence is normal for a long command. After ``interval`` of it a keep-alive probe goes out (OpenSSH answers
    any global request that wants a reply); a node that answers none for ``KEEPALIVE_COUNT`` intervals is lost,
    like ssh's ServerAliveInterval/ServerAliveCountMax. Past ``deadline`` (the command's timeout plus the node's
    SIGKILL and some grace) the node's own ``timeout`` has failed to end it, so it is lost too.
    """

    def __init__(self, transport: Any, lock: threading.Lock, interval: float, deadline: float) -> None:
        self._transport = transport
        self._lock = lock
        self._interval = interval
        self._deadline = deadline
        self._last = time.monotonic()
        self._probe: _Probe | None = None

    def heard(self) -> None:
        """The node sent something: it is alive."""
        self._last, self._probe = time.monotonic(), None

    def check(self) -> str | None:
        """Why the node counts as lost, or None while it does not."""
        now = time.monotonic()
        if not self._transport.is_active():
            return "the connection closed"
        if now > self._deadline:
            return "it did not end when its timeout killed it"
        if now - self._last > self._interval:
            if self._probe is None:
                self._probe = _Probe(self._transport, self._lock)
            elif self._probe.answered:
                self.heard()
            elif now - self._probe.sent > self._interval * KEEPALIVE_COUNT:
                self._transport.close()
                return f"no answer to keep-alives for {self._interval * KEEPALIVE_COUNT:g}s"
        return None


class _Probe:
    """One keep-alive request (OpenSSH answers any global request with want-reply), watched from a thread."""

    def __init__(self, transport: Any, lock: threading.Lock) -> None:
        self.sent = time.monotonic()
        self.answered = False
        self._transport = transport
        self._lock = lock
        threading.Thread(target=self._ask, daemon=True).start()

    def _ask(self) -> None:
        # paramiko tracks one global request at a time per transport; the lock keeps probes from overlapping.
        # The thread ends when the reply arrives or the transport closes (a lost node's is closed by `_wait`).
        with self._lock:
            try:
                self._transport.global_request("keepalive@openssh.com", wait=True)
            except (SSHException, OSError, EOFError):
                return
            self.answered = self._transport.is_active()


class _Fabric(fabric.Connection):  # type: ignore[misc]  # fabric is untyped
    """Fabric's Connection, with a bounded wait for the jump host's tunnel (Fabric waits up to an hour)."""

    def open_gateway(self) -> Any:
        if isinstance(self.gateway, fabric.Connection):
            self.gateway.open()
            return self.gateway.transport.open_channel(
                kind="direct-tcpip",
                dest_addr=(self.host, int(self.port)),
                src_addr=("", 0),
                timeout=self.connect_timeout,
            )
        proxy = super().open_gateway()
        if isinstance(proxy, paramiko.ProxyCommand):
            proxy.__class__ = _ProxyCommand
        return proxy


class _ProxyCommand(paramiko.ProxyCommand):  # type: ignore[misc]  # paramiko is untyped
    """paramiko's ProxyCommand, whose close() does not raise when the command has already ended and been reaped.

    paramiko's transport thread calls close() as it ends; a relay that exited first made that thread print a
    ``ProcessLookupError`` traceback on the user's terminal, once per node.
    """

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            super().close()


def _close(hop: Any) -> None:
    transport = hop.client.get_transport()
    # paramiko's ProxyCommand.close() raises when its process has already been reaped (see `_proxy_death`).
    with contextlib.suppress(OSError, SSHException, EOFError):
        hop.client.close()
    proxy = getattr(transport, "sock", None)
    if isinstance(proxy, paramiko.ProxyCommand):
        # paramiko signals the command but never reaps it nor closes its pipes; its reader thread goes first.
        with contextlib.suppress(RuntimeError):
            transport.join(2.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(1.0)
        if transport.is_alive():
            return
        for pipe in (proxy.process.stdin, proxy.process.stdout, proxy.process.stderr):
            if pipe is not None:
                pipe.close()


def _chain(conn: Any) -> list[Any]:
    """The connection and its ProxyJump hops, outermost first."""
    chain = [conn]
    while isinstance(chain[-1].gateway, fabric.Connection):
        chain.append(chain[-1].gateway)
    return chain


def _keepalive_interval(target: SshTarget) -> float:
    return max(1.0, min(KEEPALIVE_INTERVAL, target.connect_timeout))


def _proxy_death(transport: Any) -> str | None:
    """How the connection's ProxyCommand ended, if it died (its own error says why: a missing namespace, …)."""
    proxy = getattr(transport, "sock", None)
    if not isinstance(proxy, paramiko.ProxyCommand):
        return None
    try:
        # Its output ended the handshake; its exit status may lag a moment behind.
        status = proxy.process.wait(0.2)
    except subprocess.TimeoutExpired:
        return None
    if status < 0:
        # Killed by a signal: paramiko's own cleanup (SIGTERM) after a timeout, not the command failing.
        return None
    said = b""
    if proxy.process.stderr is not None:
        # It has exited; a grandchild could still hold the pipe open, so never block on it.
        os.set_blocking(proxy.process.stderr.fileno(), False)
        with contextlib.suppress(OSError, TypeError):
            said = proxy.process.stderr.read() or b""
    lines = said.decode(errors="replace").strip().splitlines()
    return f"exited with status {status}" + (f": {lines[-1].strip()}" if lines else "")


def _ssh_config(target: SshTarget) -> paramiko.SSHConfig:
    if target.ssh_config is None:
        default = Path("~/.ssh/config").expanduser()
        path = default if default.is_file() else None
    else:
        path = Path(target.ssh_config).expanduser()
        if not path.is_file():
            raise OberError(f"{target.name}: ssh config {path} does not exist", "fix ssh.config in the inventory")
    if path is None:
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except (OSError, ValueError, SSHException) as exc:
        raise OberError(f"{path}: cannot read ssh config: {exc}", "fix the file (see man ssh_config)") from None


def _connect_error(target: SshTarget, chain: Sequence[Any], known: hostkeys.KnownHosts, exc: Exception) -> OberError:
    """One line for a failed connect, naming the node (and the jump host, when it was one), with a fix."""
    conn = chain[0]
    port = int(conn.port)
    where = f"{target.name}: {conn.user}@{conn.host}:{port}"
    keys = known.path
    if isinstance(exc, (BadHostKeyException, hostkeys.UnknownHostKey)):
        # The key may be a jump host's: name the hop whose key it is.
        hops = [(str(hop.host), int(hop.port)) for hop in chain]
        named = [(h, p) for h, p in hops if exc.hostname in (h, hostkeys.key_name(h, p))]
        host, hop_port = named[0] if named else hops[0]
        name = hostkeys.key_name(host, hop_port)
        role = "" if (host, hop_port) == hops[0] else " (its ProxyJump host)"
        if isinstance(exc, BadHostKeyException):
            lines = hostkeys.lines_for(keys, name)
            at = f"{keys} line {', '.join(map(str, lines))}" if lines else str(keys)
            return OberError(
                f"{target.name}: HOST KEY CHANGED for {name}{role}: it sent {hostkeys.fingerprint(exc.key)}, "
                f"{at} has {hostkeys.fingerprint(exc.expected_key)}; refusing to connect (possible man-in-the-middle)",
                f"if the node was really reinstalled, verify its new key, then: ssh-keygen -R '{name}' -f {keys}",
            )
        scan = f"ssh-keyscan -p {hop_port} {host}" if hop_port != 22 else f"ssh-keyscan {host}"
        return OberError(
            f"{target.name}: unknown host key for {name}{role} ({hostkeys.fingerprint(exc.key)}), not in {keys}",
            f"verify it, then rerun with --accept-new-host-keys, or add it: {scan} >> {keys}",
        )
    if isinstance(exc, SSHException) and "No authentication methods" in str(exc):
        return OberError(
            f"{where}: no SSH key to log in with (no IdentityFile found, no key in an ssh-agent)",
            "set IdentityFile in the ssh config, or load a key into ssh-agent (ssh-add)",
        )
    if isinstance(exc, AuthenticationException):
        return OberError(
            f"{where}: SSH authentication failed ({exc})",
            "check User and IdentityFile in the ssh config, or load the key into ssh-agent (ssh-add)",
        )
    if isinstance(exc, NoValidConnectionsError):
        errors = list(exc.errors.values())
        exc = errors[0] if errors else exc
    if isinstance(exc, ConnectionRefusedError):
        return OberError(f"{where}: connection refused", "is sshd running and listening on that port?")
    # paramiko's handshake wait ends silently at the timeout, and the next step fails with "No existing session".
    said = str(exc)
    if isinstance(exc, TimeoutError) or any(w in said for w in ("timed out", "banner", "No existing session")):
        return OberError(
            f"{where}: no SSH answer within {target.connect_timeout:g}s",
            "check that the node is up and the address and port are right (firewall?)",
        )
    if isinstance(exc, ProxyCommandFailure):
        return OberError(f"{where}: the ssh_config ProxyCommand failed: {exc}", "run the ProxyCommand by hand")
    if isinstance(exc, socket.gaierror):
        return OberError(f"{where}: cannot resolve {conn.host}: {exc.strerror}", "check the address or HostName")
    if isinstance(exc, OSError):
        return OberError(f"{where}: unreachable: {exc.strerror or exc}", "check the address and the route to it")
    if isinstance(exc, (SSHException, EOFError)):
        return OberError(f"{where}: SSH failed: {exc or type(exc).__name__}", "check sshd on the node")
    return OberError(f"{where}: cannot connect: {type(exc).__name__}: {exc}")
