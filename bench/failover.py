"""Failover benchmark: how long until the router's kernel route changes, polled every 10 ms (issue 5, item 1).

Scenarios on a 3-node lab site (process nodes, BIRD, real RGW), each repeated ``--trials`` times:
HAProxy killed (SIGKILL) → its next-hop gone; ExaBGP killed → gone; every RGW of one VIP's group down → that VIP
withdrawn; ExaBGP frozen (SIGSTOP, a hung node) → gone after the hold time; the node's link cut (the router's port
to it set down: no session is closed, so bounded by the hold time too) → gone, and the link restored →
re-announced; and recovery (HAProxy and ExaBGP started again) → re-announced.
Prints median / max per scenario, and the ratio of each median to the health interval. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from ober.errors import OberError
from ober.lab.netns import Lab, run
from ober.lab.procnode import restart_node
from ober.lab.site import VIP_A, VIP_B, Site, start_site


def timed(site: Site, vip: str, expected: set[str], act: Callable[[], object], timeout: float = 30.0) -> float:
    """Seconds from ``act`` until the router's next-hops for ``vip`` are ``expected`` (polled every 10 ms)."""
    started = time.monotonic()
    act()
    site.wait_hops(vip, expected, timeout)
    return time.monotonic() - started


def router_port(site: Site, name: str) -> str:
    """The router's bridge port to node ``name``: the router made one per node, in the site's node order."""
    return site.router.ports[list(site.nodes).index(name)]


def one_trial(site: Site, lab: Lab, results: dict[str, list[float]]) -> None:
    """Every scenario once, on node n3 and VIP B's RGW group; the site is whole again at the end."""
    everyone = site.addresses
    node = site.nodes["n3"]
    site.wait_hops(VIP_A, everyone)
    results.setdefault("HAProxy killed -> next-hop gone", []).append(
        timed(site, VIP_A, everyone - {node.address}, node.kill_haproxy)
    )
    node.exabgp.terminate()
    node.exabgp.wait(10)
    node = site.nodes["n3"] = restart_node(lab, node)
    results.setdefault("recovery -> re-announced", []).append(timed(site, VIP_A, everyone, lambda: None))

    exabgp_pid = node.exabgp.pid
    results.setdefault("ExaBGP killed -> next-hop gone", []).append(
        timed(site, VIP_A, everyone - {node.address}, lambda: os.kill(exabgp_pid, signal.SIGKILL))
    )
    node.exabgp.wait(10)
    node.haproxy.terminate()
    node.haproxy.wait(10)
    node = site.nodes["n3"] = restart_node(lab, node)
    site.wait_hops(VIP_A, everyone)

    cluster = site.clusters["ceph-b"]

    def group_down() -> None:
        cluster.stop_rgw(0)
        cluster.stop_rgw(1)

    def group_up() -> None:
        cluster.start_rgw(0)
        cluster.start_rgw(1)

    results.setdefault("all RGW of a VIP down -> VIP withdrawn", []).append(timed(site, VIP_B, set(), group_down))
    results.setdefault("RGW back -> VIP re-announced", []).append(timed(site, VIP_B, everyone, group_up))

    frozen = node.exabgp.pid
    results.setdefault("ExaBGP frozen -> next-hop gone (hold time 3s)", []).append(
        timed(site, VIP_A, everyone - {node.address}, lambda: os.kill(frozen, signal.SIGSTOP))
    )
    os.kill(frozen, signal.SIGCONT)
    site.wait_hops(VIP_A, everyone, 90.0)

    # The cable pulled at the switch: the router's port to the node goes down, so the node's side loses its
    # carrier too, but nobody closes the BGP session; the router notices only when the hold time runs out.
    port = router_port(site, "n3")
    results.setdefault("link cut -> next-hop gone (hold time 3s)", []).append(
        timed(
            site,
            VIP_A,
            everyone - {node.address},
            lambda: run(["ip", "-n", site.router.ns, "link", "set", port, "down"]),
        )
    )
    # Back: ExaBGP's session timed out meanwhile and it reconnects with its back-off, BIRD takes it again.
    results.setdefault("link restored -> re-announced", []).append(
        timed(site, VIP_A, everyone, lambda: run(["ip", "-n", site.router.ns, "link", "set", port, "up"]), 90.0)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval", default="1s", help="ober health's check interval (default: the product's 1s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the failover benchmark needs root (network namespaces)")
    if args.trials < 1:
        sys.exit("error: --trials must be at least 1; fix: give --trials 5 (the default)")
    results: dict[str, list[float]] = {}
    try:
        with Lab() as lab:
            site = start_site(lab, 3, interval=args.interval)
            interval = site.nodes["n1"].config.health.interval
            for _ in range(args.trials):
                one_trial(site, lab, results)
    except (OberError, OSError) as exc:
        sys.exit(f"error: {exc}")
    rows = [
        {
            "scenario": name,
            "median_s": statistics.median(values),
            "max_s": max(values),
            "median_over_interval": statistics.median(values) / interval,
            "trials": len(values),
            "values_s": values,
        }
        for name, values in results.items()
    ]
    if args.json:
        print(json.dumps({"interval": args.interval, "trials": args.trials, "rows": rows}, indent=2))
    else:
        print_table(rows, args.interval, args.trials)


def print_table(rows: list[dict[str, Any]], interval: str, trials: int) -> None:
    """The human table."""
    print(f"failover on a 3-node lab, ober health interval {interval}, {trials} trials, route polled 10 ms")
    print(f"{'scenario':<48} {'median s':>9} {'max s':>7} {'median/interval':>16}")
    for row in rows:
        print(
            f"{row['scenario']:<48} {row['median_s']:>9.3f} {row['max_s']:>7.3f} {row['median_over_interval']:>16.2f}"
        )


if __name__ == "__main__":
    main()
