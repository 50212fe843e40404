"""A node's state as the fleet sees it: ``ober status --json`` run on the node over SSH, parsed into a NodeView.

A node's answer is untrusted input: anything malformed becomes a one-line error for that node (``NodeView.error``),
never a traceback, and an unreachable node is a NodeView that says so. ``live`` is what the availability guard
counts: the node announces at least one VIP to an established neighbor and is not drained.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ober.errors import OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote.connection import Connection, SshTarget, connect
from ober.remote.connection import targets as ssh_targets
from ober.remote.pool import Outcome, for_each
from ober.runner import Runner
from ober.status import announced_vips

T = TypeVar("T")

STATUS_TIMEOUT = 60.0
"""Seconds ``ober status`` may take on a node (it asks HAProxy and ExaBGP, each with its own short timeout)."""

ACTIVE_UNIT_STATES = ("active", "unknown")
"""Unit states that are not a problem ("unknown": the node runs without systemd, e.g. a process lab node)."""


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

    @property
    def live(self) -> bool:
        """Serving: announcing at least one VIP to an established neighbor, and not drained."""
        return self.reachable and self.error is None and bool(self.announced) and self.drained is None

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
        """The ``--json`` form."""
        return {
            "name": self.name,
            "address": self.address,
            "reachable": self.reachable,
            "error": self.error,
            "live": self.live,
            "healthy": self.healthy,
            "problems": self.problems(),
            "versions": self.versions,
            "units": self.units,
            "bgp": self.bgp,
            "announced": list(self.announced),
            "drained": None if self.drained is None else vars(self.drained),
            "sessions": self.sessions,
            "haproxy_running": self.haproxy_running,
            "health": self.health,
            "health_stale": self.health_stale,
            "degraded": list(self.degraded),
            "graceful_restart": self.graceful_restart,
        }


class BadStatus(OberError):
    """A node's ``ober status --json`` was not what ober writes."""


def ober_program(node: InventoryNode) -> str:
    """The ``ober`` inside the node's venv."""
    return f"{node.config.install_path}/venv/bin/ober"


def config_file(node: InventoryNode) -> str:
    """The node's own ``ober.yaml``."""
    return f"{node.config.install_path}/etc/ober.yaml"


def unreachable(node: InventoryNode, why: str) -> NodeView:
    """The view of a node that could not be asked."""
    return NodeView(node.name, node.address, reachable=False, error=why, expected=_expected(node))


def _expected(node: InventoryNode) -> tuple[str, ...]:
    return tuple(vip.address for vip in node.config.vips)


def node_view(conn: Runner, node: InventoryNode, timeout: float = STATUS_TIMEOUT) -> NodeView:
    """Run ``ober status --json`` on the node and parse it; a failure is a NodeView with ``error`` set."""
    argv = [ober_program(node), "status", "--json", "--config", config_file(node)]
    try:
        result = conn.run(argv, timeout=timeout)
    except OberError as exc:
        return unreachable(node, exc.message)
    if result.returncode == 124:
        return _failed(node, f"ober status did not answer in {timeout:g}s")
    if result.returncode == 127:
        return _failed(node, f"{argv[0]} not found (is ober installed there?)")
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return _failed(node, f"ober status failed: {result.last_line()[:200]}")
    if isinstance(data, dict) and "error" in data and "node" not in data:
        return _failed(node, f"ober status: {str(data.get('error'))[:200]}")
    try:
        return parse_status(node, data)
    except BadStatus as exc:
        return _failed(node, exc.message)


def _failed(node: InventoryNode, why: str) -> NodeView:
    return NodeView(node.name, node.address, reachable=True, error=why, expected=_expected(node))


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
    if running and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
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
    )


MAX_PROBLEMS, MAX_PROBLEM = 50, 300


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


def on_nodes(
    nodes: Sequence[InventoryNode],
    targets: Sequence[SshTarget],
    work: Callable[[Connection, InventoryNode], T],
    *,
    parallel: int,
    on_done: Callable[[Outcome[T]], None] | None = None,
) -> list[Outcome[T]]:
    """Connect to each node (``targets`` by node name) and run ``work`` on it, at most ``parallel`` at once.

    A node that cannot be reached, or whose work raised, is an outcome with ``error`` set, never an exception.
    """
    by_name = {target.name: target for target in targets}

    def one(node: InventoryNode) -> T:
        with connect(by_name[node.name]) as conn:
            return work(conn, node)

    return for_each(nodes, one, parallel=parallel, name=lambda node: node.name, on_done=on_done)


def sweep(
    inventory: Inventory,
    nodes: Sequence[InventoryNode] | None = None,
    targets: Sequence[SshTarget] | None = None,
    parallel: int | None = None,
    *,
    accept_new_host_keys: bool = False,
) -> list[NodeView]:
    """Ask every node (default: the whole inventory) in one parallel sweep; one NodeView each, in order.

    An unreachable node is a NodeView saying so (``reachable`` false, ``error`` why).
    """
    chosen = list(inventory.nodes if nodes is None else nodes)
    reach = (
        targets if targets is not None else ssh_targets(inventory, chosen, accept_new_host_keys=accept_new_host_keys)
    )
    outcomes = on_nodes(chosen, reach, node_view, parallel=parallel or inventory.ssh.parallel)
    return [
        outcome.value if outcome.value is not None else unreachable(node, outcome.error or "failed")
        for node, outcome in zip(chosen, outcomes, strict=True)
    ]


def views_by_name(views: Sequence[NodeView]) -> Mapping[str, NodeView]:
    """The views keyed by node name."""
    return {view.name: view for view in views}
