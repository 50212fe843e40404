"""The fleet's one client for a node's own ``ober … --json`` commands: status, drain, undrain, waiting until live.

Every fleet command (status, drain, undrain, push, the rolls, bootstrap) talks to a node's ober through
:class:`NodeClient`, over any :class:`ober.runner.Runner` (an SSH ``Connection``, or a fake in tests). So there is
one parser per command, one timeout per command, and ONE definition of *live*, which the availability guard counts:

    live: the node answered, announces at least one VIP to an established BGP neighbor, and is not drained.

A node that did not answer (no SSH, or its ``ober status`` failed) is neither live nor not live: it is *unknown*.
Whether it still announces is known only to the routers, which the fleet controller does not ask; the guard counts
an unknown node as out of service (the safe side) and says so.

The view also carries what the node says of how it serves: ``degraded`` (its HAProxy serves less than its config:
fleet status shows it, a roll's verify fails on it unless allowed) and per neighbor whether graceful restart was
negotiated (the roll planner's restart class); being degraded does not make a node not live.

A node's answer is untrusted input: anything malformed becomes a one-line error for that node, never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ober.errors import OberError
from ober.inventory import InventoryNode
from ober.render import paths
from ober.runner import Result, Runner
from ober.status import announced_vips

STATUS_TIMEOUT = 60.0
"""Seconds ``ober status`` may take on a node (it asks HAProxy and ExaBGP, each with its own short timeout)."""
UNDRAIN_TIMEOUT = 60.0
"""``ober undrain`` only removes a file and wakes ``ober health``."""
DRAIN_MARGIN = 60.0
"""Seconds an ``ober drain --wait`` may run past its own wait (and quiesce) before the fleet calls it hung."""
POLL = 0.5
"""Seconds between two status reads while waiting for a node."""

ACTIVE_UNIT_STATES = ("active", "unknown")
"""Unit states that are not a problem ("unknown": the node runs without systemd, e.g. a process lab node)."""


@dataclass(frozen=True)
class NodeCert:
    """One certificate file on a node, as its ``ober status``/``ober certs show`` told (bounded, untrusted)."""

    path: str
    serial: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    days_left: float | None = None
    names: tuple[str, ...] = ()
    placeholder: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "path": self.path,
            "serial": self.serial,
            "issuer": self.issuer,
            "not_after": self.not_after,
            "days_left": self.days_left,
            "names": list(self.names),
            "placeholder": self.placeholder,
            "error": self.error,
        }


class Liveness(StrEnum):
    """Whether a node serves, as far as the fleet controller can know."""

    LIVE = "live"
    NOT_LIVE = "not live"
    UNKNOWN = "unknown"
    """The node did not tell (no SSH answer, or its ober status failed): only the routers know."""


@dataclass(frozen=True)
class Drained:
    """Who took the node out, when and why (the node's own maintenance record)."""

    by: str
    since: float
    reason: str


@dataclass(frozen=True)
class NodeView:
    """What one node reported (or why it could not)."""

    name: str
    address: str
    reachable: bool
    error: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    bgp: dict[str, str] = field(default_factory=dict)
    """Neighbor address → session state (``established``, ``connect``…)."""
    announced: tuple[str, ...] = ()
    """VIPs announced to at least one established neighbor."""
    expected: tuple[str, ...] = ()
    """VIPs the node's inventory config says it serves."""
    drained: Drained | None = None
    sessions: int | None = None
    """Current S3 client sessions (None when HAProxy did not answer)."""
    haproxy_running: bool = False
    health: dict[str, str] = field(default_factory=dict)
    """VIP → ``ober health`` state (``up``, ``down``, ``disabled``…)."""
    health_stale: bool | None = None
    """True when ``ober health`` stopped publishing; None when it never did."""
    degraded: tuple[str, ...] = ()
    """How the node's HAProxy serves less than its config (servers left out or down, startup alerts)."""
    graceful_restart: dict[str, bool | None] | None = None
    """Neighbor → graceful restart negotiated with it (None inside: no OPEN yet); None: the node did not say."""
    certificates: tuple[NodeCert, ...] = ()
    """The certificate files the VIPs serve from (empty from an older ober, which does not say)."""

    @property
    def known(self) -> bool:
        """The node told its state (it answered over SSH and its ``ober status`` worked)."""
        return self.reachable and self.error is None

    @property
    def live(self) -> bool:
        """THE definition of live: known to announce at least one VIP to an established neighbor, not drained.

        False for an unknown node too (the guard's safe side); see :attr:`liveness` for the three states.
        """
        return self.known and bool(self.announced) and self.drained is None

    @property
    def liveness(self) -> Liveness:
        """Live, not live, or unknown (the node did not tell)."""
        if not self.known:
            return Liveness.UNKNOWN
        return Liveness.LIVE if self.live else Liveness.NOT_LIVE

    def not_live(self) -> list[str]:
        """Why the node is not live, one phrase each (empty: it is live)."""
        if self.live:
            return []
        if not self.known:
            return self.problems()
        if self.drained is not None:
            return [f"drained by {self.drained.by}" + (f" ({self.drained.reason})" if self.drained.reason else "")]
        return self.problems() or ["announcing no VIP to an established neighbor"]

    def problems(self) -> list[str]:
        """What is wrong with the node, one short phrase each (empty: healthy). Being drained is not a problem."""
        if not self.reachable:
            return [f"unreachable: {self.error}"]
        if self.error:
            return [self.error]
        found = [f"{unit} {state}" for unit, state in self.units.items() if state not in ACTIVE_UNIT_STATES]
        found += [f"BGP {peer} {state}" for peer, state in self.bgp.items() if state != "established"]
        if not self.bgp:
            found.append("no BGP session")
        if not self.haproxy_running:
            found.append("HAProxy not answering")
        if self.health_stale is None:
            found.append("ober health published no state")
        elif self.health_stale:
            found.append("ober health stale")
        if self.drained is None:
            missing = [vip for vip in self.expected if vip not in self.announced]
            if missing:
                found.append(f"not announcing {', '.join(missing)}")
        return found

    @property
    def healthy(self) -> bool:
        """Reachable and without problems."""
        return not self.problems()

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form; ``live`` is null when unknown (``liveness`` says it in words)."""
        return {
            "name": self.name,
            "address": self.address,
            "reachable": self.reachable,
            "error": self.error,
            "live": None if self.liveness is Liveness.UNKNOWN else self.live,
            "liveness": self.liveness.value,
            "healthy": self.healthy,
            "problems": self.problems(),
            "versions": self.versions,
            "units": self.units,
            "bgp": self.bgp,
            "announced": list(self.announced) if self.known else None,
            "drained": None if self.drained is None else vars(self.drained),
            "sessions": self.sessions,
            "haproxy_running": self.haproxy_running,
            "health": self.health,
            "health_stale": self.health_stale,
            "degraded": list(self.degraded),
            "graceful_restart": self.graceful_restart,
            "certificates": [cert.to_dict() for cert in self.certificates],
        }


class BadStatus(OberError):
    """A node's ``ober status --json`` was not what ober writes."""


class NodeCommandFailed(OberError):
    """A node's ``ober`` command failed (the message names the node and says why, the fix is the node's own)."""


class NotReady(OberError):
    """A wait for a node ended at its deadline (or the node stopped answering); ``view`` is the last seen."""

    def __init__(self, message: str, fix: str | None, view: NodeView, problems: list[str]) -> None:
        super().__init__(message, fix)
        self.view = view
        self.problems = problems


@dataclass(frozen=True)
class DrainAnswer:
    """What ``ober drain --wait --json`` said: the node is withdrawn (a failed drain raises instead)."""

    by: str
    since: float
    sessions_left: int | None
    """Client connections still open when the wait ended (None: not counted)."""
    in_flight_at_withdraw: int | None = None
    """With a quiesce: requests in flight at the moment of the withdraw."""
    problem: str | None = None
    """Withdrawn, but not idle in time (``N connections still open after T s``)."""


@dataclass(frozen=True)
class UndrainAnswer:
    """What ``ober undrain --json`` said."""

    was_drained: bool


BACKENDS_TIMEOUT = 60.0
"""Seconds an ``ober backends`` change may take on a node beyond its own wait (haproxy -c, the runtime API)."""
BACKENDS_ACTIONS = ("add", "undrain", "drain", "remove", "none")


@dataclass(frozen=True)
class BackendsAnswer:
    """What ``ober backends add|drain|remove --json`` said a node did."""

    action: str
    """``add``, ``undrain``, ``drain``, ``remove``, or ``none`` (it was so already)."""
    message: str
    requests_left: int | None = None


@dataclass(frozen=True)
class InstallAnswer:
    """What ``ober certs install --json`` said: what it did, the certificate's serial, and what each VIP serves."""

    action: str
    serial: str
    served: dict[str, str]
    """VIP → the serial a new TLS handshake with it on the node got (or ``error: …``)."""
    detail: str


def ober_program(node: InventoryNode) -> str:
    """The ``ober`` inside the node's venv."""
    return paths(node.config)["ober"]


def config_file(node: InventoryNode) -> str:
    """The node's own ``ober.yaml``."""
    return paths(node.config)["config"]


def unreachable(node: InventoryNode, why: str) -> NodeView:
    """The view of a node that could not be asked."""
    return NodeView(node.name, node.address, reachable=False, error=why, expected=_expected(node))


def _expected(node: InventoryNode) -> tuple[str, ...]:
    return tuple(vip.address for vip in node.config.vips)


class NodeClient:
    """One node's ``ober`` commands over ``conn``, each with a timeout, answers parsed into dataclasses.

    ``sleep`` and ``clock`` are the waits' (fakes in tests make them instant).
    """

    def __init__(
        self,
        conn: Runner,
        node: InventoryNode,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.node = node
        self.sleep = sleep
        self.clock = clock
        self.program = ober_program(node)
        self.config = config_file(node)

    def status(self, timeout: float = STATUS_TIMEOUT) -> NodeView:
        """``ober status --json`` parsed; never raises: a failure is a view with ``error`` set (unknown)."""
        argv = [self.program, "status", "--json", "--config", self.config]
        try:
            result = self.conn.run(argv, timeout=timeout)
        except OberError as exc:
            return unreachable(self.node, exc.message)
        if result.returncode == 124:
            return self._failed(f"ober status did not answer in {timeout:g}s")
        if result.returncode == 127:
            return self._failed(f"{argv[0]} not found (is ober installed there?)")
        try:
            data = json.loads(result.stdout)
        except ValueError:
            return self._failed(f"ober status failed: {result.last_line()[:200]}")
        if isinstance(data, dict) and "error" in data and "node" not in data:
            return self._failed(f"ober status: {str(data.get('error'))[:200]}")
        try:
            return parse_status(self.node, data)
        except BadStatus as exc:
            return self._failed(exc.message)

    def _failed(self, why: str) -> NodeView:
        return NodeView(self.node.name, self.node.address, reachable=True, error=why, expected=_expected(self.node))

    def drain(self, reason: str, *, wait: float, quiesce: float = 0.0) -> DrainAnswer:
        """``ober drain --wait``: withdraw, then wait up to ``wait`` s for the node's connections to end.

        With ``quiesce`` > 0 the node withdraws at a moment with no request in flight (an older ober without
        ``--quiesce``, one an upgrade is about to replace, drains without it).

        Raises:
            NodeCommandFailed: the node did not withdraw (or its answer was lost); OberError: the SSH connection.
        """
        argv = [self.program, "--json", "drain", "--config", self.config, "--reason", reason, "--wait"]
        argv += ["--timeout", f"{wait:g}"]
        if quiesce > 0:
            result = self.conn.run([*argv, "--quiesce", f"{quiesce:g}"], timeout=wait + quiesce + DRAIN_MARGIN)
            # A usage error goes to stdout as JSON under --json, to stderr without it: look in both.
            if "No such option: --quiesce" not in result.stdout + result.stderr:
                return self._drained(result)
        return self._drained(self.conn.run(argv, timeout=wait + DRAIN_MARGIN))

    def _drained(self, result: Result) -> DrainAnswer:
        data = _document(result)
        # Exit 1 with sessions_left: withdrawn, some connections still open (clients keep idle keep-alives open).
        if data is None or data.get("drained") is not True:
            raise self._command_failed("drain", result, data)
        left = data.get("sessions_left")
        quiet = data.get("quiesce")
        in_flight = quiet.get("in_flight") if isinstance(quiet, dict) else None
        since = data.get("since")
        return DrainAnswer(
            by=str(data.get("by", ""))[:128],
            since=float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else 0.0,
            sessions_left=left if _count(left) else None,
            in_flight_at_withdraw=in_flight if _count(in_flight) else None,
            problem=str(data["error"])[:300] if data.get("error") else None,
        )

    def undrain(self, timeout: float = UNDRAIN_TIMEOUT) -> UndrainAnswer:
        """``ober undrain``: back in service (``ober health`` announces after ``rise`` good checks).

        Raises:
            NodeCommandFailed: the node said no, or answered something else; OberError: the SSH connection.
        """
        argv = [self.program, "--json", "undrain", "--config", self.config]
        result = self.conn.run(argv, timeout=timeout)
        data = _document(result)
        if not result.ok or data is None or "error" in data or not isinstance(data.get("was_drained"), bool):
            raise self._command_failed("undrain", result, data)
        return UndrainAnswer(was_drained=bool(data["was_drained"]))

    def backends(self, verb: str, group: str, server: str, *, wait: float = 30.0) -> BackendsAnswer:
        """``ober backends VERB GROUP SERVER``: one runtime change of an RGW server on the node (never forced).

        Raises:
            NodeCommandFailed: the node refused or failed (its own one-line reason); OberError: the SSH connection.
        """
        argv = [self.program, "--json", "backends", verb, "--config", self.config, group, server]
        if verb == "remove":
            argv += ["--wait", f"{wait:g}"]
        result = self.conn.run(argv, timeout=wait + BACKENDS_TIMEOUT)
        data = _document(result)
        if not result.ok or data is None or "error" in data or data.get("action") not in BACKENDS_ACTIONS:
            raise self._command_failed(f"backends {verb}", result, data)
        left = data.get("requests_left")
        return BackendsAnswer(
            action=str(data["action"]),
            message=str(data.get("message", ""))[:300],
            requests_left=left if _count(left) else None,
        )

    def backends_list(self, timeout: float = STATUS_TIMEOUT) -> list[dict[str, Any]]:
        """``ober backends list --json``: the node's groups (each a mapping, as the node wrote it, bounded).

        Raises:
            NodeCommandFailed: the node could not list them; OberError: the SSH connection.
        """
        argv = [self.program, "--json", "backends", "list", "--config", self.config]
        result = self.conn.run(argv, timeout=timeout)
        data = _document(result)
        groups = data.get("groups") if data else None
        if not result.ok or not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise self._command_failed("backends list", result, data)
        return groups[:MAX_PROBLEMS]

    def certificates(self, timeout: float = STATUS_TIMEOUT) -> tuple[NodeCert, ...]:
        """``ober certs show --json``: the certificate files the node's VIPs serve from.

        Raises:
            NodeCommandFailed: the node could not tell; OberError: the SSH connection.
        """
        argv = [self.program, "--json", "certs", "show", "--config", self.config]
        result = self.conn.run(argv, timeout=timeout)
        data = _document(result)
        if not result.ok or data is None or "error" in data:
            raise self._command_failed("certs show", result, data)
        try:
            return parse_certificates(data.get("certificates"))
        except BadStatus as exc:
            raise self._command_failed("certs show", result, {"error": exc.message}) from None

    def acme_challenge(self, verb: str, *args: str, timeout: float = STATUS_TIMEOUT) -> dict[str, Any]:
        """``ober certs challenge add TOKEN KEYAUTH`` or ``remove TOKEN…``: HTTP-01 tokens in the running HAProxy.

        Raises:
            NodeCommandFailed: the node refused; OberError: the SSH connection.
        """
        argv = [self.program, "--json", "certs", "challenge", verb, "--config", self.config, *args]
        result = self.conn.run(argv, timeout=timeout)
        data = _document(result)
        if not result.ok or data is None or "error" in data:
            raise self._command_failed(f"certs challenge {verb}", result, data)
        return data

    def certs_install(self, staged: str, timeout: float = BACKENDS_TIMEOUT) -> InstallAnswer:
        """``ober certs install --from STAGED``: the node checks the PEM, swaps it in hitlessly and says what it serves.

        Raises:
            NodeCommandFailed: refused, or HAProxy did not take it (the node serves its old certificate); OberError:
                the SSH connection.
        """
        argv = [self.program, "--json", "certs", "install", "--config", self.config, "--from", staged]
        result = self.conn.run(argv, timeout=timeout)
        data = _document(result)
        certificate = data.get("certificate") if data else None
        served = data.get("served") if data else None
        if (
            not result.ok
            or data is None
            or "error" in data
            or not isinstance(certificate, dict)
            or not isinstance(served, dict)
        ):
            raise self._command_failed("certs install", result, data)
        return InstallAnswer(
            action=str(data.get("action", ""))[:32],
            serial=_short(certificate.get("serial")) or "",
            served={str(vip)[:64]: str(serial)[:MAX_PROBLEM] for vip, serial in list(served.items())[:MAX_PROBLEMS]},
            detail=str(data.get("detail", ""))[:MAX_PROBLEM],
        )

    def _command_failed(self, what: str, result: Result, data: dict[str, Any] | None) -> NodeCommandFailed:
        why = str((data or {}).get("error") or result.last_line())[:300]
        fix = str(data["fix"])[:200] if data and data.get("fix") else f"see: ober fleet status {self.node.name}"
        return NodeCommandFailed(f"{self.node.name}: ober {what} failed: {why}", fix)

    def wait_until(self, problems: Callable[[NodeView], list[str]], timeout: float, what: str) -> NodeView:
        """Read the status until ``problems(view)`` is empty; the last view.

        Raises:
            NotReady: still not at the deadline (or the node stopped answering), with what is wrong then.
        """
        deadline = self.clock() + timeout
        while True:
            view = self.status()
            found = problems(view)
            if not found:
                return view
            if self.clock() >= deadline or not view.reachable:
                raise NotReady(
                    f"{self.node.name}: not {what} after {timeout:g}s: {'; '.join(found)}",
                    f"see: ober fleet status {self.node.name}; its health checks may be failing",
                    view,
                    found,
                )
            self.sleep(POLL)

    def wait_until_live(self, timeout: float, also: Callable[[NodeView], list[str]] | None = None) -> NodeView:
        """Wait (bounded) until the node is live, and ``also`` finds nothing wrong; the live view.

        Raises:
            NotReady: not live at the deadline, saying why.
        """

        def wrong(view: NodeView) -> list[str]:
            found = view.not_live()
            return found or (also(view) if also else [])

        return self.wait_until(wrong, timeout, "live")


def _document(result: Result) -> dict[str, Any] | None:
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mapping(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise BadStatus(f"malformed ober status: {what} is not a mapping")
    return value


def _strings(value: object, what: str) -> dict[str, str]:
    data = _mapping(value, what)
    if not all(isinstance(item, str) for item in data.values()):
        raise BadStatus(f"malformed ober status: {what} holds something that is not text")
    return data


def parse_status(node: InventoryNode, data: object) -> NodeView:
    """A NodeView from a node's ``ober status --json`` document.

    Raises:
        BadStatus: the document is not what ``ober status`` writes (the message names the part).
    """
    top = _mapping(data, "the document")
    if top.get("node") != node.config.name:
        raise BadStatus(f"ober status speaks for node {str(top.get('node'))[:64]!r}, not {node.config.name}")
    versions = _mapping(top.get("versions"), "versions")
    if not all(v is None or isinstance(v, str) for v in versions.values()):
        raise BadStatus("malformed ober status: a version is not text")
    units = _strings(top.get("units"), "units")
    bgp = _mapping(top.get("bgp"), "bgp")
    sessions = _strings(bgp.get("sessions", {}), "bgp.sessions")
    announced_by_peer = _mapping(bgp.get("announced", {}), "bgp.announced")
    for prefixes in announced_by_peer.values():
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise BadStatus("malformed ober status: bgp.announced is not lists of prefixes")
    haproxy = _mapping(top.get("haproxy"), "haproxy")
    running = haproxy.get("running") is True
    count = haproxy.get("sessions")
    if running and not _count(count):
        raise BadStatus("malformed ober status: haproxy.sessions is not a count")
    return NodeView(
        name=node.name,
        address=node.address,
        reachable=True,
        versions=dict(versions),
        units=units,
        bgp=sessions,
        announced=tuple(announced_vips({"bgp": {"sessions": sessions, "announced": announced_by_peer}})),
        expected=_expected(node),
        drained=_drained(top.get("drained")),
        sessions=count if running and isinstance(count, int) else None,
        haproxy_running=running,
        health=_health(top.get("health")),
        health_stale=_stale(top.get("health")),
        degraded=_degraded(top.get("degraded", [])),
        graceful_restart=_graceful(bgp.get("graceful_restart")),
        certificates=parse_certificates(top.get("certificates", [])),
    )


def parse_certificates(value: object) -> tuple[NodeCert, ...]:
    """A node's list of certificate documents (``ober status``, ``ober certs show``) → NodeCerts.

    Raises:
        BadStatus: not a list of mappings with the fields ober writes.
    """
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BadStatus("malformed ober status: certificates is not a list of mappings")
    found: list[NodeCert] = []
    for item in value[:MAX_PROBLEMS]:
        days = item.get("days_left")
        names = item.get("names", [])
        if not isinstance(names, list):
            raise BadStatus("malformed ober status: a certificate's names are not a list")
        found.append(
            NodeCert(
                path=str(item.get("path", "?"))[:MAX_PROBLEM],
                serial=_short(item.get("serial")),
                issuer=_short(item.get("issuer")),
                not_after=_short(item.get("not_after")),
                days_left=float(days) if isinstance(days, (int, float)) and not isinstance(days, bool) else None,
                names=tuple(str(name)[:253] for name in names[:MAX_PROBLEMS]),
                placeholder=item.get("placeholder") is True,
                error=_short(item.get("error")),
            )
        )
    return tuple(found)


def _short(value: object) -> str | None:
    return None if value is None else str(value)[:MAX_PROBLEM]


MAX_PROBLEMS, MAX_PROBLEM = 50, 300
"""A node's ``degraded`` list is its own words: bounded, as any answer from a node."""


def _degraded(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise BadStatus("malformed ober status: degraded is not a list of lines")
    return tuple(line[:MAX_PROBLEM] for line in value[:MAX_PROBLEMS])


def _graceful(value: object) -> dict[str, bool | None] | None:
    if value is None:
        return None  # an ober on the node that does not report it
    data = _mapping(value, "bgp.graceful_restart")
    if not all(item is None or isinstance(item, bool) for item in data.values()):
        raise BadStatus("malformed ober status: bgp.graceful_restart holds something that is not true/false/null")
    return dict(data)


def _drained(value: object) -> Drained | None:
    if value is None:
        return None
    data = _mapping(value, "drained")
    since = data.get("since")
    if not isinstance(since, (int, float)) or isinstance(since, bool):
        raise BadStatus("malformed ober status: drained.since is not a time")
    return Drained(str(data.get("by", "unknown"))[:128], float(since), str(data.get("reason", ""))[:256])


def _health(value: object) -> dict[str, str]:
    if value is None:
        return {}
    vips = _mapping(_mapping(value, "health").get("vips", {}), "health.vips")
    return {vip: str(_mapping(state, f"health.vips.{vip}").get("state", "unknown"))[:32] for vip, state in vips.items()}


def _stale(value: object) -> bool | None:
    if value is None:
        return None
    return bool(_mapping(value, "health").get("stale", True))
