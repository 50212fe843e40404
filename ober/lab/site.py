"""A whole lab site of process nodes, for tests and benchmarks.

A BIRD router doing ECMP, N nodes (HAProxy + ExaBGP + ober health), two real Ceph RGW clusters (each on its own
segment, one per VIP) and a client segment.

Used by the lab tests and the failover benchmark; everything lives in the given :class:`Lab` and goes with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ober.certs import self_signed_pem
from ober.errors import OberError
from ober.lab.netns import Lab, add_address
from ober.lab.procnode import ProcessNode, start_node
from ober.lab.rgw import RgwCluster, start_cluster
from ober.lab.router import Router, start_router

VIP_A, VIP_B = "198.51.100.10", "198.51.100.20"
VIPS = {"ceph-a": VIP_A, "ceph-b": VIP_B}
SEGMENTS = {"ceph-a": 1, "ceph-b": 2}
RGWS = {group: (f"100.64.{n}.11", f"100.64.{n}.12") for group, n in SEGMENTS.items()}
CLIENT_SEGMENT = 10


def node_address(index: int) -> str:
    """The link address of node ``index`` (1-based)."""
    return f"100.64.0.{10 + index}"


def node_data(name: str, address: str, cert: Path, interval: str = "200ms") -> dict[str, Any]:
    """The ober.yaml of a lab node: both VIPs, both RGW groups, fast checks."""
    check = {"interval": interval, "rise": 1, "fall": 1}
    return {
        "name": name,
        "bgp": {"router_id": address, "neighbors": "100.64.0.1", "hold_time": 3},
        "vips": [{"name": f"s3-{group[-1]}", "address": vip, "backend": group} for group, vip in VIPS.items()],
        "backends": {group: {"servers": list(addrs), "port": 7480, "check": check} for group, addrs in RGWS.items()},
        "certificates": {"pem": str(cert), "http": "serve"},
        "health": {"interval": interval, "rise": 2, "fall": 2, "timeout": "1s"},
        "stats": {"bind": "127.0.0.1"},
        "network": {"manager": "networkd"},
        "kernel_profile": "none",
        # This sandbox caps file descriptors at 20000; HAProxy wants 2 per connection.
        "haproxy": {"maxconn": 5000},
    }


@dataclass
class Site:
    """A running lab site."""

    lab: Lab
    router: Router
    nodes: dict[str, ProcessNode]
    clusters: dict[str, RgwCluster]
    client_ns: str
    cert: Path
    """The certificate without its key: what clients trust."""

    @property
    def addresses(self) -> set[str]:
        """Every node's link address."""
        return {node.address for node in self.nodes.values()}

    def hops(self, vip: str) -> set[str]:
        """The router's next-hops for ``vip`` now."""
        return set(self.router.next_hops(vip))

    def wait_hops(self, vip: str, expected: set[str], timeout: float = 20.0) -> float:
        """Poll the router's route every 10 ms until its next-hops are ``expected``; returns the time it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.hops(vip) == expected:
                return time.monotonic() - started
            time.sleep(0.01)
        raise OberError(
            f"{vip}: next-hops {sorted(self.hops(vip))}, expected {sorted(expected)}; "
            f"sessions {self.router.bgp_sessions()}"
        )

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait until every node announces both VIPs.

        On a busy machine ExaBGP's reconnect backoff (1, 2, 3, … up to 60 s after a failed attempt) can delay a
        node's first session, hence the generous bound.
        """
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if all(self.hops(vip) == self.addresses for vip in VIPS.values()):
                return time.monotonic() - started
            time.sleep(0.1)
        logs = {name: (node.logdir / "exabgp.log").read_text()[-1500:] for name, node in self.nodes.items()}
        raise OberError(
            f"lab not ready: sessions {self.router.bgp_sessions()}, {VIP_A} via {sorted(self.hops(VIP_A))}, "
            f"health {[n.state().get('vips') for n in self.nodes.values()]}, ExaBGP logs {logs}"
        )


def site_certificate(directory: Path, days: int = 2) -> tuple[Path, Path]:
    """The site's TLS certificate for both VIPs: (certificate + key, what HAProxy serves; the certificate alone).

    The second is what S3 clients trust. Both are written into ``directory`` (the first mode 600).
    """
    certificate, key = self_signed_pem("s3.lab.test", [f"IP:{VIP_A}", f"IP:{VIP_B}", "DNS:s3.lab.test"], days)
    directory.mkdir(parents=True, exist_ok=True)
    pem, public = directory / "s3.pem", directory / "ca.pem"
    pem.touch(mode=0o600)
    pem.write_text(certificate + key)
    public.write_text(certificate)
    return pem, public


def start_backends(lab: Lab, router: Router) -> dict[str, RgwCluster]:
    """One real RGW cluster per VIP's backend group, each on its own segment behind ``router``.

    Each cluster's stop is registered with ``lab``; its namespace is ``<lab prefix><group>``.
    """
    clusters: dict[str, RgwCluster] = {}
    for group, segment in SEGMENTS.items():
        ns = router.segment(lab, group, segment)
        for address in (*RGWS[group], f"100.64.{segment}.10"):
            add_address(ns, "lo", f"{address}/32")
        clusters[group] = start_cluster(ns, lab.path(group), list(RGWS[group]), f"100.64.{segment}.10")
        lab.cleanups.append(clusters[group].stop)
    return clusters


def start_site(lab: Lab, nodes: int = 3, *, interval: str = "200ms") -> Site:
    """Bring a site up in ``lab`` and wait until every node announces."""
    addresses = {f"n{i}": node_address(i) for i in range(1, nodes + 1)}
    router = start_router(lab, list(addresses.values()), ["198.51.100.0/24"])
    pem, public = site_certificate(lab.path("certs"))
    clusters = start_backends(lab, router)
    client_ns = router.segment(lab, "client", CLIENT_SEGMENT)
    site = Site(lab, router, {}, clusters, client_ns, public)
    for name, address in addresses.items():
        site.nodes[name] = start_node(lab, router, name, address, node_data(name, address, pem, interval), {})
    site.wait_ready()
    return site
