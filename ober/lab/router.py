"""The lab's upstream router: a namespace running BIRD 2 that peers with every node and installs VIPs by ECMP.

The router holds the node link, a bridge at 100.64.0.1/24 by default; each node gets a veth port on it. BIRD runs
with its own config, control socket and pid file under the lab's work directory, never the system's
``/etc/bird`` or ``/run/bird``. The facts tests need (which next-hops the kernel has for a VIP, which BGP sessions
are up) are read from real command output by the small parsers below.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ober.errors import OberError
from ober.facts import find_program
from ober.lab.netns import (
    Lab,
    add_address,
    add_bridge,
    add_route,
    add_veth,
    attach,
    check_off_host,
    link_up,
    run,
    set_sysctl,
    stop_process,
)
from ober.render import render_template

BRIDGE = "br0"
START_TIMEOUT = 10.0
QUERY_TIMEOUT = 5.0


@dataclass
class RouterView:
    """What can be asked of a running lab router, by its namespace and BIRD's control socket.

    A `Router` is one; a persistent lab (`ober.lab.fleet`) rebuilds one from its state file in a later process,
    where BIRD is no child of ours.
    """

    ns: str
    address: ipaddress.IPv4Interface
    rundir: Path
    peers: dict[str, str]
    """BIRD protocol name → the node address it peers with."""

    @property
    def socket(self) -> Path:
        """BIRD's private control socket."""
        return self.rundir / "bird.ctl"

    def birdc(self, *command: str) -> str:
        """Run a ``birdc`` command on this router's socket and return its output."""
        return run([_program("birdc"), "-s", str(self.socket), *command], timeout=QUERY_TIMEOUT).stdout

    def next_hops(self, vip: str) -> list[str]:
        """The gateways of the router's kernel route for ``vip``/32, in the kernel's order; [] without a route."""
        host = ipaddress.IPv4Address(vip)
        done = run(["ip", "-n", self.ns, "-j", "route", "show", "exact", f"{host}/32"], timeout=QUERY_TIMEOUT)
        return parse_next_hops(done.stdout)

    def bgp_sessions(self) -> dict[str, str]:
        """Each peer's BGP state as BIRD shows it (``Established``, ``Passive``, ``Active``…), by node address."""
        protocols = parse_protocols(self.birdc("show", "protocols"))
        return {peer: protocols.get(name, "missing") for name, peer in self.peers.items()}


@dataclass
class Router(RouterView):
    """A running lab router. Build it with `start_router`."""

    process: subprocess.Popen[bytes]
    """BIRD, by its PID."""
    ports: list[str] = field(default_factory=list)

    def connect(self, node_ns: str, address: str, ifname: str = "eth0") -> None:
        """Give a node namespace a port on the router's bridge: ``ifname`` at ``address``, default route via us.

        Args:
            node_ns: the node's namespace.
            address: the node's address on the link (``100.64.0.11``), in the router's subnet.
            ifname: the interface's name inside the node.
        """
        node = ipaddress.IPv4Interface(f"{address}/{self.address.network.prefixlen}")
        if node.network != self.address.network:
            raise OberError(f"{address} is not on the router's link {self.address.network}")
        port = f"port{len(self.ports)}"
        add_veth(self.ns, port, node_ns, ifname)
        self.ports.append(port)
        attach(self.ns, port, BRIDGE)
        add_address(node_ns, ifname, str(node))
        add_route(node_ns, "default", str(self.address.ip))

    def segment(self, lab: Lab, short: str, number: int) -> str:
        """A new namespace on its own /24 (100.64.NUMBER.0) behind the router: router .1, the namespace .2.

        Backends and clients live on such segments, so their traffic crosses the router like in a real site.
        """
        ns = lab.netns(short)
        add_veth(self.ns, short, ns, "eth0")
        add_address(self.ns, short, f"100.64.{number}.1/24")
        link_up(self.ns, short)
        link_up(ns, "eth0")
        add_address(ns, "eth0", f"100.64.{number}.2/24")
        add_route(ns, "default", f"100.64.{number}.1")
        return ns

    def stop(self) -> None:
        """Stop BIRD (by its PID). The namespace stays until the lab closes."""
        stop_process(self.process)


def parse_next_hops(output: str) -> list[str]:
    """The gateways in ``ip -j route show`` output: one ``gateway``, or a multipath route's ``nexthops``."""
    hops: list[str] = []
    for route in json.loads(output or "[]"):
        if "nexthops" in route:
            hops.extend(hop["gateway"] for hop in route["nexthops"] if "gateway" in hop)
        elif "gateway" in route:
            hops.append(route["gateway"])
    return hops


def parse_protocols(output: str) -> dict[str, str]:
    """Each protocol's state in ``birdc show protocols`` output.

    That is the first word of the Info column (``Established``, ``Active``), or the State column (``down``) when
    Info is empty.
    """
    states: dict[str, str] = {}
    lines = output.splitlines()
    header = next((i for i, line in enumerate(lines) if line.split()[:2] == ["Name", "Proto"]), None)
    if header is None:
        return states
    for line in lines[header + 1 :]:
        fields = line.split(None, 5)
        if len(fields) < 5:
            continue
        states[fields[0]] = fields[5].split()[0] if len(fields) == 6 and fields[5].strip() else fields[3]
    return states


def protocol_name(peer: str) -> str:
    """BIRD's protocol name for a peer: ``node_100_64_0_11`` (names allow letters, digits and ``_``)."""
    return "node_" + peer.replace(".", "_")


def start_router(
    lab: Lab,
    peers: Sequence[str],
    vip_prefixes: Sequence[str],
    *,
    name: str = "router",
    address: str = "100.64.0.1/24",
    asn: int = 65000,
    peer_as: int = 65001,
    hold_time: int = 3,
    graceful_restart: bool = True,
) -> Router:
    """Create the router namespace and start BIRD in it, ready to accept the nodes' sessions.

    Args:
        lab: the lab that owns the namespace, the process and the files.
        peers: the node addresses that may peer with the router.
        vip_prefixes: the prefixes whose /32 routes the router accepts (``198.51.100.0/24``).
        name: the namespace's short name (the lab prefixes it).
        address: the router's address on the node link, with its prefix length.
        asn: the router's AS.
        peer_as: the nodes' AS (the same for every node, so BIRD can compare their MEDs).
        hold_time: the BGP hold time in seconds (3 is BIRD's minimum, and detects a hung node in 3 s).
        graceful_restart: whether BIRD advertises graceful restart (off: a router that does not support it).

    Raises:
        OberError: a bad address, BIRD missing, its config refused, or BIRD not answering in time.
    """
    link = ipaddress.IPv4Interface(address)
    nodes = [str(ipaddress.IPv4Address(peer)) for peer in peers]
    prefixes = [ipaddress.IPv4Network(prefix) for prefix in vip_prefixes]
    check_off_host([link.network, *prefixes])
    ns = lab.netns(name)
    add_bridge(ns, BRIDGE)
    add_address(ns, BRIDGE, str(link))
    set_sysctl(ns, "net.ipv4.ip_forward", "1")
    # Hash on ports too (L4), so flows from one client spread over all the nodes.
    set_sysctl(ns, "net.ipv4.fib_multipath_hash_policy", "1")
    rundir = lab.path(name)
    config = rundir / "bird.conf"
    config.write_text(
        render_template(
            "lab/bird.conf.j2",
            dict(
                name=name,
                router_id=link.ip,
                address=link.ip,
                asn=asn,
                peer_as=peer_as,
                hold_time=hold_time,
                graceful_restart=graceful_restart,
                vip_prefixes=[str(prefix) for prefix in prefixes],
                peers={protocol_name(node): node for node in nodes},
            ),
        )
    )
    bird = _program("bird")
    run([bird, "-p", "-c", str(config)])  # a config error is reported here, with BIRD's own line number
    socket = rundir / "bird.ctl"
    argv = [bird, "-f", "-c", str(config), "-s", str(socket), "-P", str(rundir / "bird.pid")]
    process = lab.spawn(ns, argv, log=rundir / "bird.log")
    router = Router(ns, link, rundir, {protocol_name(node): node for node in nodes}, process)
    _wait_ready(router, rundir / "bird.log")
    return router


def _wait_ready(router: Router, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if router.process.poll() is not None:
            last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise OberError(f"BIRD exited at start (status {router.process.returncode}): {last}", f"see {log}")
        if router.socket.exists():
            try:
                router.birdc("show", "status")
                return
            except OberError:
                pass  # the socket exists a moment before BIRD answers on it
        time.sleep(0.05)
    raise OberError(f"BIRD did not answer on {router.socket} within {START_TIMEOUT:g}s", f"see {log}")


def _program(name: str) -> str:
    program = find_program(name)
    if program is None:
        raise OberError(f"{name} is not installed", "apt-get install bird2")
    return program
