"""The unplanned path, scenario by scenario, on a bootstrapped lab fleet: what the router does when a node breaks.

Each scenario inflicts one accident (`ober.lab.faults`) on one node, watches the router's kernel route
(`faults.RouteLog`), undoes the accident and waits until the fleet is whole again, whatever happened. It returns
what it measured, in seconds from the accident (None: never seen within the scenario's bound). The failure-path
lab tests assert on these figures' presence and on the route; ``bench/failover.py`` runs them many times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ober.errors import OberError
from ober.lab import faults
from ober.lab.faults import RouteLog, with_, without
from ober.lab.fleet import LabFleet

GONE_WITHIN = 10.0
"""How long a scenario waits for a next-hop to leave (the graceful-restart bug held it 121 s)."""
BACK_WITHIN = 90.0
"""How long a scenario waits for the fleet to be whole again (a radosgw takes seconds to start)."""
CRASH_LOOP = 12.0
"""How long a HAProxy that cannot start stays broken: past systemd's default start limit (5 starts in 10 s)."""


@dataclass
class Measured:
    """One scenario's figures (seconds from the accident or from its cure) and facts."""

    name: str
    seconds: dict[str, float | None] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)


Scenario = Callable[[LabFleet, RouteLog, str], Measured]


def _whole(fleet: LabFleet) -> Callable[[tuple[str, ...]], bool]:
    everyone = {node.address for node in fleet.nodes.values()}
    return lambda hops: set(hops) == everyone


def _vip(fleet: LabFleet, group: str = "ceph-a") -> str:
    return fleet.vips[group]


def wait_whole(fleet: LabFleet, log: RouteLog, timeout: float = BACK_WITHIN) -> None:
    """Wait until every node is a next-hop of every VIP.

    Raises:
        OberError: not within ``timeout``.
    """
    at = time.time()
    for vip in fleet.vips.values():
        if log.wait(at, vip, _whole(fleet), timeout) is None:
            raise OberError(f"{vip}: the fleet is not whole again after {timeout:g}s: next-hops {log.now(vip)}")


def _gone_then_back(
    fleet: LabFleet, log: RouteLog, node: str, at: float, vip: str, cure: Callable[[], float] | None = None
) -> tuple[float | None, float | None]:
    """Seconds from ``at`` until ``node`` left ``vip``'s route, then from the cure (or its leaving) until back."""
    address = fleet.nodes[node].address
    gone = log.wait(at, vip, without(address), GONE_WITHIN)
    start = cure() if cure is not None else (at + gone if gone is not None else time.time())
    back = log.wait(start, vip, with_(address), BACK_WITHIN) if gone is not None or cure is not None else None
    return gone, back


def haproxy_dead(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """HAProxy killed and unable to start again for longer than systemd's start limit; then its cause fixed."""
    result = Measured("haproxy-dead")
    vip = _vip(fleet)
    try:
        at = faults.kill_haproxy(fleet, node, come_back=False)
        gone = log.wait(at, vip, without(fleet.nodes[node].address), GONE_WITHIN)
        time.sleep(max(0.0, at + CRASH_LOOP - time.time()))
        state = faults.on_node(fleet, node, "systemctl is-active ober-http ober-bgp; true").split()
        result.facts["units while broken"] = state
    finally:
        fixed = faults.fix_haproxy(fleet, node)
    result.seconds["gone"] = gone
    result.seconds["back after fix"] = log.wait(fixed, vip, with_(fleet.nodes[node].address), BACK_WITHIN)
    return result


def haproxy_crash(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """HAProxy's master killed; systemd starts it again at once."""
    result = Measured("haproxy-crash")
    at = faults.kill_haproxy(fleet, node)
    result.seconds["gone"], result.seconds["back"] = _gone_then_back(fleet, log, node, at, _vip(fleet))
    return result


def haproxy_oom(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """HAProxy's worker killed, as the OOM killer does (the master then exits: systemd starts both again)."""
    result = Measured("haproxy-oom")
    at = faults.kill_haproxy_worker(fleet, node)
    result.seconds["gone"], result.seconds["back"] = _gone_then_back(fleet, log, node, at, _vip(fleet))
    return result


def rgw_group_dead(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """Every radosgw of VIP B's group killed: every node withdraws VIP B and keeps VIP A; then they start again."""
    result = Measured("rgw-group-dead")
    vip, other = _vip(fleet, "ceph-b"), _vip(fleet, "ceph-a")
    stopped = faults.kill_rgw_group(fleet, "ceph-b")
    try:
        per_node = [log.wait(stopped.at, vip, without(n.address), GONE_WITHIN) for n in fleet.nodes.values()]
    finally:
        started = faults.restart_rgw_group(stopped)
    known = sorted(s for s in per_node if s is not None)
    result.seconds["withdrawn, median node"] = known[len(known) // 2] if len(known) == len(per_node) else None
    result.seconds["withdrawn, last node"] = known[-1] if len(known) == len(per_node) else None
    result.facts["other VIP kept"] = log.held(other, stopped.at, time.time(), _whole(fleet))
    result.seconds["back after restart"] = log.wait(started, vip, _whole(fleet), BACK_WITHIN)
    return result


def health_killed(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """``ober health`` killed on a healthy node: the route must stay (ExaBGP keeps it, a new helper confirms it)."""
    result = Measured("health-killed")
    vip = _vip(fleet)
    at = faults.kill_health(fleet, node)
    time.sleep(3.0)
    result.facts["route kept"] = log.held(vip, at, time.time(), with_(fleet.nodes[node].address))
    return result


def health_killed_drained(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """The node drained while its ``ober health`` was frozen, then the helper killed: the new one withdraws."""
    result = Measured("health-killed-drained")
    vip = _vip(fleet)
    try:
        at = faults.kill_health(fleet, node, drain_first=True)
        result.seconds["withdrawn"] = log.wait(at, vip, without(fleet.nodes[node].address), GONE_WITHIN)
    finally:
        undrained = time.time()
        faults.on_node(fleet, node, f"rm -f {faults.NODE['maintenance_file']}")
    result.seconds["back after undrain"] = log.wait(undrained, vip, with_(fleet.nodes[node].address), BACK_WITHIN)
    return result


def exabgp_killed(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """ExaBGP killed on a healthy node.

    With graceful restart the router keeps the route (right: HAProxy serves); without, the route goes with the
    session and comes back with ExaBGP.
    """
    result = Measured("exabgp-killed")
    vip = _vip(fleet)
    address = fleet.nodes[node].address
    at = faults.kill_exabgp(fleet, node)
    gone = log.wait(at, vip, without(address), 3.0)
    result.seconds["gone"] = gone
    result.seconds["back"] = log.wait(at + gone, vip, with_(address), BACK_WITHIN) if gone is not None else None
    time.sleep(max(0.0, at + 6.0 - time.time()))  # the new ExaBGP took over (and sent End-of-RIB)
    result.facts["route kept"] = gone is None
    return result


def node_frozen(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """The whole node frozen (a hung machine: nothing closes its session); thawed once the router dropped it."""
    result = Measured("node-frozen")
    vip = _vip(fleet)
    address = fleet.nodes[node].address
    at = faults.freeze(fleet, node)
    try:
        result.seconds["gone"] = log.wait(at, vip, without(address), GONE_WITHIN)
    finally:
        thawed = faults.thaw(fleet, node)
    result.seconds["back after thaw"] = log.wait(thawed, vip, with_(address), BACK_WITHIN)
    return result


def router_restart(fleet: LabFleet, log: RouteLog, node: str) -> Measured:
    """The router's BIRD restarted: every session ends; every node must be a next-hop again by itself."""
    result = Measured("router-restart")
    at = faults.restart_router(fleet)
    vip = _vip(fleet)
    gone = log.wait(at, vip, lambda hops: not hops, GONE_WITHIN)
    result.seconds["route gone"] = gone
    back = log.wait(at + gone, vip, _whole(fleet), BACK_WITHIN) if gone is not None else None
    result.seconds["every next-hop back"] = None if back is None or gone is None else gone + back
    return result


SCENARIOS: dict[str, Scenario] = {
    "haproxy-dead": haproxy_dead,
    "haproxy-crash": haproxy_crash,
    "haproxy-oom": haproxy_oom,
    "rgw-group-dead": rgw_group_dead,
    "health-killed": health_killed,
    "health-killed-drained": health_killed_drained,
    "exabgp-killed": exabgp_killed,
    "node-frozen": node_frozen,
    "router-restart": router_restart,
}


def run(fleet: LabFleet, log: RouteLog, name: str, node: str) -> Measured:
    """One scenario; afterwards the fleet is whole again (or OberError says it is not)."""
    wait_whole(fleet, log)
    try:
        return SCENARIOS[name](fleet, log, node)
    finally:
        wait_whole(fleet, log)
