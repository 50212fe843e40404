"""Whether HAProxy really serves what its config asks for: servers left out, alerts of its last (re)load.

HAProxy accepts a config and still serves less than it says: a server whose name does not resolve at start is put
in maintenance (``init-addr …,none``: the node serves with the other servers, silently), a server that fails its
checks is down. And a reload can fail after ``haproxy -c`` passed: a ``maxconn`` needing more file descriptors than
the unit allows makes the re-executed master give up ("[ALERT] Cannot raise FD limit", "Loading failure!") while
the previous worker goes on serving the *old* config. Neither is visible in ``haproxy -c`` or in the runtime
socket answering. This module reads HAProxy's own state through its runtime socket, and decides (a pure function,
:func:`degraded`) what a user must be told, one line per problem.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ober.config import NodeConfig
from ober.errors import OberError
from ober.haproxy_runtime import query, server_up
from ober.render import paths
from ober.slots import SlotRecord, backend_name, is_slot, read_record

SRV_ADMF_RMAINT = 0x20
"""``srv_admin_state`` bit of ``show servers state``: in maintenance because its address did not resolve."""

# A startup message: "[WARNING]  (1234) : text". NOTICEs (version, "Loading success") are not problems.
_MESSAGE = re.compile(r"^\[(ALERT|WARNING)\]\s+\(\d+\)\s*:\s*(.*)$")
_SERVER_IN_MESSAGE = re.compile(r"'server ([^/']+)/([^']+)'")
MAX_LINE = 300


@dataclass(frozen=True)
class Server:
    """One server as HAProxy sees it (``show stat``, with the name it resolves from ``show servers state``)."""

    backend: str
    name: str
    status: str
    """``UP``, ``UP 1/3``, ``DOWN``, ``MAINT``, ``MAINT (resolution)``, ``DRAIN``, ``no check``…"""
    check_status: str = ""
    """The last check's code (``L4CON``, ``L7STS``…); empty before the first check or without checks."""
    check_detail: str = ""
    """The last check's words (``Connection refused``)."""
    fqdn: str | None = None
    """The name HAProxy resolves for it, when it was given one."""
    unresolved: bool = False
    """In maintenance because its address did not resolve (``srv_admin_state`` bit 0x20)."""
    weight: int | None = None
    """Its weight now (0: drained by ``ober backends drain``); None when ``show stat`` did not say."""
    sessions: int = 0
    """Its current sessions (``scur``): requests it serves now."""
    served: int = 0
    """Sessions it has had (``stot``) since HAProxy's worker started."""
    address: str | None = None
    """The address HAProxy connects to (``show servers state``)."""
    port: int | None = None

    @property
    def up(self) -> bool:
        """It takes new requests (up and not of weight 0)."""
        return server_up(self.status, "" if self.weight is None else str(self.weight))

    @property
    def pending(self) -> bool:
        """Checked, but no check has finished yet (HAProxy starts such a server as up)."""
        return self.status.startswith("UP") and self.check_status.lstrip("* ") in ("", "INI")


def parse_servers(show_stat: str, servers_state: str = "") -> list[Server]:
    """The servers of every backend, from ``show stat`` (and ``show servers state`` for names and flags).

    Raises:
        OberError: ``show_stat`` is not ``show stat`` CSV.
    """
    if not show_stat.startswith("# "):
        raise OberError("HAProxy's runtime API did not answer 'show stat' with CSV")
    extra = _servers_state(servers_state)
    servers: list[Server] = []
    for row in csv.DictReader(io.StringIO(show_stat[2:])):
        backend, name = row.get("pxname") or "", row.get("svname") or ""
        if not backend or name in ("FRONTEND", "BACKEND", ""):
            continue
        state = extra.get((backend, name), _StateRow())
        status = row.get("status") or ""
        servers.append(
            Server(
                backend=backend,
                name=name,
                status=status,
                check_status=row.get("check_status") or "",
                check_detail=row.get("last_chk") or "",
                fqdn=state.fqdn,
                unresolved=bool(state.admin & SRV_ADMF_RMAINT) or status == "MAINT (resolution)",
                weight=_number(row.get("weight")),
                sessions=_number(row.get("scur")) or 0,
                served=_number(row.get("stot")) or 0,
                address=state.address,
                port=state.port,
            )
        )
    return servers


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


@dataclass(frozen=True)
class _StateRow:
    fqdn: str | None = None
    admin: int = 0
    address: str | None = None
    port: int | None = None


def _servers_state(text: str) -> dict[tuple[str, str], _StateRow]:
    """``show servers state``: (backend, server) → its name, admin state and address; {} for anything unexpected."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line[2:].split() for line in lines if line.startswith("# ")), None)
    if not header or not {"be_name", "srv_name", "srv_admin_state"} <= set(header):
        return {}
    found: dict[tuple[str, str], _StateRow] = {}
    for line in lines:
        fields = line.split()
        if line.startswith("#") or len(fields) != len(header):
            continue  # the format version line, the header, or a row of another shape
        row = dict(zip(header, fields, strict=True))
        fqdn = row.get("srv_fqdn")
        address = row.get("srv_addr")
        found[(row["be_name"], row["srv_name"])] = _StateRow(
            fqdn=fqdn if fqdn and fqdn != "-" else None,
            admin=_number(row["srv_admin_state"]) or 0,
            address=address if address and address != "-" else None,
            port=_number(row.get("srv_port")),
        )
    return found


def startup_messages(text: str) -> list[str]:
    """The ALERT and WARNING lines of HAProxy's startup messages (``show startup-logs``, a journal), prefixes cut.

    Each is returned as ``ALERT: …`` or ``WARNING: …``.
    """
    found: list[str] = []
    for line in text.splitlines():
        match = _MESSAGE.match(line.strip())
        if match:
            found.append(f"{match.group(1)}: {match.group(2).strip()}"[:MAX_LINE])
    return found


def _group(backend: str) -> str:
    # ober names HAProxy's backend for group ceph-a "be_ceph-a"; users know the group.
    return backend.removeprefix("be_")


def server_problem(server: Server) -> str | None:
    """What is wrong with one server, in words (None: it serves, or is still being checked for the first time)."""
    where = f"backend {_group(server.backend)} server {server.name}"
    if server.unresolved:
        name = f"{server.fqdn} " if server.fqdn else "its address "
        return f"{where}: {name}does not resolve; HAProxy keeps it in maintenance and serves without it"
    status = server.status
    if status.startswith("UP") or status == "no check":
        return None  # "UP 1/3": up, a check failed but not yet `fall` of them
    if status.startswith(("DOWN", "NOLB")):
        why = " ".join(part for part in (server.check_status.lstrip("* "), server.check_detail) if part)
        return f"{where} is down" + (f" ({why})" if why else "")
    if status.startswith(("MAINT", "DRAIN")):
        return f"{where} is in {status.split()[0].lower()} ({status}), set through the runtime API"
    return f"{where} is {status or 'in an unknown state'}"


def degraded(servers: Sequence[Server], startup: Sequence[str] = ()) -> list[str]:
    """Every way HAProxy serves less than its config asks for, one line each (empty: it serves all of it).

    Args:
        servers: from :func:`parse_servers`.
        startup: :func:`startup_messages` of the running HAProxy's (re)load. A warning about a server already
            reported from its state (its unresolved name) is not repeated.
    """
    problems: list[str] = []
    reported: set[tuple[str, str]] = set()
    for server in servers:
        problem = server_problem(server)
        if problem:
            problems.append(problem)
            reported.add((server.backend, server.name))
    for message in startup:
        named = _SERVER_IN_MESSAGE.search(message)
        if named and (named.group(1), named.group(2)) in reported:
            continue
        problems.append(f"HAProxy {message}")
    return problems


@dataclass(frozen=True)
class State:
    """What the running HAProxy worker reports about itself."""

    pid: int | None
    servers: list[Server]
    startup: list[str]

    @property
    def pending(self) -> list[Server]:
        """Servers still waiting for their first check."""
        return [server for server in self.servers if server.pending]

    def degraded(self, config: NodeConfig | None = None) -> list[str]:
        """:func:`degraded` of this state; with ``config``, servers out of service on purpose are not problems.

        On purpose: a free spare slot, a drained server, a removed one (in maintenance until the next reload).
        A slot holding a server added at runtime is named after that server.
        """
        servers = self.servers if config is None else intended(config, self.servers, read_record(config, self.pid))
        return degraded(servers, self.startup)


def intended(config: NodeConfig, servers: Sequence[Server], record: SlotRecord) -> list[Server]:
    """``servers`` without those ober keeps out of service on purpose, slots named after the server they hold."""
    kept: list[Server] = []
    groups = {backend_name(group.name): group for group in config.backends}
    for server in servers:
        group = groups.get(server.backend)
        if group is None:
            kept.append(server)
            continue
        name = server.name
        if is_slot(name):
            holder = record.holder(server.backend, name)
            if holder is None and server.status.startswith("MAINT"):
                continue  # a free slot
            name = holder or name
        listed = {s.name: s for s in group.servers}
        if name not in listed and not is_slot(name) and server.status.startswith("MAINT"):
            continue  # removed by ober backends remove: gone at the next reload
        if name in listed and group.is_drained(listed[name]):
            continue
        kept.append(dataclasses.replace(server, name=name))
    return kept


def worker_pid(socket_path: str, timeout: float) -> int | None:
    """The PID of the worker answering on the runtime socket (``show info``); None when none answers."""
    try:
        info = query(socket_path, "show info", timeout)
    except OberError:
        return None
    return parse_pid(info)


def parse_pid(info: str) -> int | None:
    """``Pid:`` of ``show info`` output."""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Pid" and value.strip().isdigit():
            return int(value.strip())
    return None


def read_state(socket_path: str, timeout: float) -> State:
    """The running worker's PID, servers and startup messages.

    Raises:
        OberError: HAProxy does not answer.
    """
    pid = parse_pid(query(socket_path, "show info", timeout))
    show_stat = query(socket_path, "show stat", timeout)
    servers_state = query(socket_path, "show servers state", timeout)
    startup = startup_messages(query(socket_path, "show startup-logs", timeout))
    return State(pid, parse_servers(show_stat, servers_state), startup)


def node_degraded(config: NodeConfig) -> list[str] | None:
    """``degraded`` for this node's running HAProxy now; None when HAProxy does not answer."""
    try:
        return read_state(paths(config)["admin_socket"], config.health.timeout).degraded(config)
    except OberError:
        return None


def first_checks_within(config: NodeConfig) -> float:
    """How long the first health check of every server may take after a (re)load (bounded: 15 s)."""
    longest = max((group.check.interval for group in config.backends), default=0.0)
    # HAProxy spreads the first checks over one interval; each may take up to the check timeout.
    return min(longest + config.health.timeout + 0.5, 15.0)


def after_reload(
    config: NodeConfig,
    before: int | None,
    *,
    timeout: float = 10.0,
    journal: Callable[[float], list[str]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """After ``systemctl reload ober-http``: wait for the new worker and its first checks; what it serves less.

    Args:
        config: the node's (new) config.
        before: the worker's PID before the reload (None: none answered, so any answering worker is new).
        timeout: for the new worker to answer.
        journal: the unit's ALERT lines since a wall-clock time (default: :func:`journal_alerts`).
        clock: monotonic seconds (tests pass a fake).
        sleep: waits between polls (tests pass a fake).

    Raises:
        OberError: no new worker within ``timeout``: the reload failed and the previous config still serves
            (the message quotes HAProxy's alerts when the journal has them).
    """
    socket_path = paths(config)["admin_socket"]
    # The re-executed master prints its alerts just after the reload was asked for, a moment before this runs.
    since = time.time() - 2.0
    deadline = clock() + timeout
    while True:
        try:
            state = read_state(socket_path, config.health.timeout)
        except OberError:
            state = None
        if state is not None and state.pid is not None and state.pid != before:
            break
        if clock() >= deadline:
            alerts = (journal or journal_alerts)(since)
            why = f": {'; '.join(alerts[-3:])}" if alerts else ""
            if state is None:
                raise OberError(f"HAProxy does not answer after the reload{why}", "see: journalctl -u ober-http -n 50")
            raise OberError(
                f"HAProxy did not load the new configuration, its previous one still serves{why}",
                "see: journalctl -u ober-http -n 50 (HAProxy's [ALERT] lines say why)",
            )
        sleep(0.2)
    checks_until = clock() + first_checks_within(config)
    while state.pending and clock() < checks_until:
        sleep(0.2)
        try:
            state = read_state(socket_path, config.health.timeout)
        except OberError:
            break  # answered a moment ago; what was read then is what can be told
    return state.degraded(config)


def journal_alerts(since: float, unit: str = "ober-http") -> list[str]:
    """HAProxy's ALERT lines in ``unit``'s journal since ``since`` (a wall-clock time); [] without journald."""
    if shutil.which("journalctl") is None:
        return []
    argv = ["journalctl", "-u", unit, f"--since=@{int(since)}", "-o", "cat", "--no-pager", "-q"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10.0, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in startup_messages(done.stdout) if line.startswith("ALERT")]
