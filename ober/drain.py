"""Node-local drain: the maintenance file makes ``ober health`` withdraw; then wait for connections to end.

The file records who drained the node, when and why, so ``ober status`` (and the fleet controller) can show it.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ober.atomic import write_atomic
from ober.config import NodeConfig
from ober.errors import OberError
from ober.haproxy_runtime import Snapshot, snapshot
from ober.healthd import state_file
from ober.render import paths


@dataclass(frozen=True)
class DrainInfo:
    """What the maintenance file says."""

    by: str
    since: float
    reason: str


def drain_file(config: NodeConfig) -> Path:
    """The maintenance file ``ober health`` watches."""
    return Path(config.health.maintenance_file)


def read_drain(config: NodeConfig) -> DrainInfo | None:
    """The node's drain record, or None when it is in service. An unreadable file still counts as drained."""
    path = drain_file(config)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return DrainInfo(by=str(data["by"]), since=float(data["since"]), reason=str(data.get("reason", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return DrainInfo(by="unknown", since=path.stat().st_mtime, reason="maintenance file present")


def set_drain(config: NodeConfig, reason: str = "", by: str | None = None) -> DrainInfo:
    """Create the maintenance file (atomically); keeps an existing record."""
    current = read_drain(config)
    if current is not None:
        return current
    info = DrainInfo(by=by or f"{getpass.getuser()}@{socket.gethostname()}", since=time.time(), reason=reason)
    path = drain_file(config)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readable by ober health, which runs as the BGP user.
        write_atomic(path, json.dumps({"by": info.by, "since": info.since, "reason": info.reason}) + "\n", 0o644)
    except OSError as exc:
        raise OberError(f"cannot write {path}: {exc.strerror}", "run as root") from None
    return info


def clear_drain(config: NodeConfig) -> bool:
    """Remove the maintenance file; True when it was there."""
    try:
        drain_file(config).unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise OberError(f"cannot remove {drain_file(config)}: {exc.strerror}", "run as root") from None
    return True


def s3_sessions(config: NodeConfig, seen: Snapshot) -> int:
    """Current client sessions on the S3 frontends (not the stats listener)."""
    return sum(seen.sessions.get(f"fe_{vip.name}", 0) for vip in config.vips)


def in_flight(config: NodeConfig, seen: Snapshot) -> int:
    """Requests being served now by this node's S3 backends (idle keep-alive connections do not count)."""
    groups = {vip.backend for vip in config.vips}
    return sum(state.in_flight for name, state in seen.backends.items() if name.removeprefix("be_") in groups)


PROC_NET_TCP = Path("/proc/net/tcp")
_LISTEN = "0A"


def busy_client_sockets(proc_net_tcp: str, vips: list[str]) -> int:
    """Client connections on ``vips`` with bytes still queued either way (``/proc/net/tcp``'s tx/rx queues).

    HAProxy is done with a response once the kernel has it: the last megabytes of a large GET may still sit in the
    socket's send queue, unacknowledged, after HAProxy's stream (and so the backend count) has ended.
    """
    wanted = set()
    for vip in vips:
        packed = bytes(int(part) for part in vip.split("."))
        wanted.add(packed[::-1].hex().upper())  # the kernel prints the address as a little-endian word
    busy = 0
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5 or fields[3] == _LISTEN:
            continue
        address = fields[1].partition(":")[0]
        tx, _, rx = fields[4].partition(":")
        try:
            queued = int(tx, 16) + int(rx, 16)
        except ValueError:
            continue
        if address in wanted and queued:
            busy += 1
    return busy


def _busy_sockets(config: NodeConfig) -> int:
    try:
        text = PROC_NET_TCP.read_text()
    except OSError:
        return 0
    return busy_client_sockets(text, [vip.address for vip in config.vips])


@dataclass(frozen=True)
class Quiet:
    """How the quiesce went: requests in flight at the moment it ended, and how long it waited."""

    in_flight: int
    waited: float


QUIESCE_POLL = 0.005
"""Seconds between looks at HAProxy: a gap between two requests on a busy node lasts milliseconds."""


def quiesce(
    config: NodeConfig,
    timeout: float,
    *,
    read: Callable[[], Snapshot] | None = None,
    sockets: Callable[[], int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Quiet:
    """Wait (at most ``timeout``) for a moment with no request in flight on this node; return at once then.

    A withdraw moves this node's open client connections to other nodes (the router re-hashes them): a request in
    flight on one of them is cut, an idle one is only reconnected. Withdrawing at a quiet moment cuts nothing.
    In flight: a stream on an S3 backend, or bytes still queued on a client connection (`busy_client_sockets`).
    Past ``timeout`` it returns with the requests in flight at the last look.
    """
    reader = read or (lambda: snapshot(paths(config)["admin_socket"], config.health.timeout))
    queued = sockets or (lambda: _busy_sockets(config))
    started = clock()
    while True:
        try:
            busy = in_flight(config, reader())
        except OberError:
            busy = 0  # HAProxy not answering serves nothing
        busy = busy or queued()
        if busy == 0 or clock() - started >= timeout:
            return Quiet(busy, clock() - started)
        sleep(QUIESCE_POLL)


def wake_health(config: NodeConfig) -> bool:
    """Ask the running ``ober health`` to look now (SIGUSR1) instead of at its next interval; True if it was asked.

    The pid comes from the health state file; it is only signalled if that process is still ``ober health`` and
    runs as the user who wrote the file (ExaBGP's): whoever can write that file can have only their own process
    signalled, however root runs this.
    """
    target = state_file(config)
    try:
        pid = int(json.loads(target.read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        same_user = Path(f"/proc/{pid}").stat().st_uid == target.stat().st_uid
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if b"health" not in cmdline or not same_user:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


def wait_idle(
    config: NodeConfig,
    timeout: float,
    *,
    read: Callable[[], Snapshot] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Wait until the S3 frontends have no sessions, or ``timeout`` passes; returns the sessions left.

    HAProxy not answering counts as idle: nothing is being served.
    """
    reader = read or (lambda: snapshot(paths(config)["admin_socket"], config.health.timeout))
    deadline = clock() + timeout
    while True:
        try:
            left = s3_sessions(config, reader())
        except OberError:
            return 0
        if progress:
            progress(left)
        if left == 0 or clock() >= deadline:
            return left
        sleep(min(1.0, max(0.0, deadline - clock())))
