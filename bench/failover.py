"""Failover benchmark: how long until the router's kernel route changes, polled every 10 ms.

``--nodes systemd`` (the default): the real units on the bootstrapped lab fleet ``make demo`` leaves up (``--dir``),
every accident of `ober.lab.failover` (HAProxy dead and not coming back, crashed, OOM-killed; a VIP's whole RGW
group dead; ``ober health`` killed; ExaBGP killed; the node frozen; the router restarted), each ``--trials`` times,
once with ``bgp.graceful_restart`` as the lab has it (120 s) and once with it off (pushed with ``ober fleet push``
and put back at the end). Prints median / max per figure for both, beside the targets.

``--nodes process``: the older 3-node site of process nodes (no systemd, no graceful restart).
Scenarios on it (BIRD, real RGW), each repeated ``--trials`` times:
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
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ober.errors import OberError
from ober.lab import failover
from ober.lab import fleet as lab_fleet
from ober.lab.faults import RouteLog
from ober.lab.fleet import LabFleet
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


# Where the issue set the bar (medians over trials, at default settings).
TARGETS = {
    ("haproxy-dead", "gone"): 1.0,
    ("haproxy-dead", "back after fix"): 5.0,
    ("rgw-group-dead", "withdrawn, median node"): 1.5,
    ("health-killed-drained", "withdrawn"): 2.0,
    ("rgw-group-dead", "back after restart"): 5.0,
}
GR_SETTINGS = {"on": None, "off": 0}
"""``on``: the lab's own setting; ``off``: graceful restart 0 pushed for the run."""


def set_graceful_restart(fleet: LabFleet, seconds: int | None) -> None:
    """Push the lab's inventory with ``bgp.graceful_restart`` = ``seconds`` (None: the inventory as it is)."""
    inventory = fleet.inventory_path
    if seconds is not None:
        data = yaml.safe_load(inventory.read_text())
        data["config"]["bgp"]["graceful_restart"] = seconds
        inventory = fleet.dir / "inventory-bench-failover.yaml"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = [sys.executable, "-m", "ober", "fleet", "push", "-i", str(inventory), "--secrets", str(fleet.secrets_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise OberError(f"ober fleet push (graceful_restart {seconds}) failed: {done.stderr.strip()[-500:]}")


def systemd_trials(directory: Path, trials: int, settings: list[str], names: list[str]) -> dict[str, Any]:
    """Every scenario ``trials`` times per graceful-restart setting; figures and facts by setting and scenario."""
    fleet = lab_fleet.load(directory)
    nodes = list(fleet.nodes)
    results: dict[str, Any] = {}
    try:
        for setting in settings:
            set_graceful_restart(fleet, GR_SETTINGS[setting])
            figures: dict[tuple[str, str], list[float | None]] = {}
            facts: dict[tuple[str, str], list[object]] = {}
            with RouteLog(fleet, list(fleet.vips.values())) as log:
                for trial in range(trials):
                    for name in names:
                        node = nodes[trial % len(nodes)]  # spread the accidents over the nodes
                        measured = failover.run(fleet, log, name, node)
                        print(
                            f"  gr {setting} trial {trial + 1} {name} on {node}: {measured.seconds} {measured.facts}",
                            file=sys.stderr,
                        )
                        for key, value in measured.seconds.items():
                            figures.setdefault((name, key), []).append(value)
                        for key, fact in measured.facts.items():
                            facts.setdefault((name, key), []).append(fact)
            results[setting] = {"figures": figures, "facts": facts}
    finally:
        set_graceful_restart(fleet, None)
    return results


def systemd_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: median / max / trials seen for each setting, and the target."""
    keys: list[tuple[str, str]] = []
    for data in results.values():
        keys += [key for key in data["figures"] if key not in keys]
    rows = []
    for key in keys:
        row: dict[str, Any] = {"scenario": key[0], "figure": key[1], "target_s": TARGETS.get(key)}
        for setting, data in results.items():
            values = data["figures"].get(key, [])
            seen = [v for v in values if v is not None]
            row[setting] = {
                "median_s": statistics.median(seen) if seen else None,
                "max_s": max(seen) if seen else None,
                "seen": len(seen),
                "trials": len(values),
            }
        rows.append(row)
    for setting, data in results.items():
        for key, facts in data["facts"].items():
            rows.append({"scenario": key[0], "figure": key[1], "setting": setting, "facts": [str(f) for f in facts]})
    return rows


def print_systemd(rows: list[dict[str, Any]], settings: list[str], trials: int) -> None:
    """The human table: a column pair per graceful-restart setting."""
    print(f"failover on the lab fleet (systemd nodes, BIRD), {trials} trials, route polled every 10 ms")
    head = f"{'scenario':<22} {'figure':<24}"
    for setting in settings:
        head += f" {'GR ' + setting + ' median':>14} {'max':>7}"
    print(head + f" {'target':>7}")
    for row in rows:
        if "facts" in row:
            continue
        line = f"{row['scenario']:<22} {row['figure']:<24}"
        for setting in settings:
            cell = row.get(setting, {})
            median, most = cell.get("median_s"), cell.get("max_s")
            never = cell.get("trials", 0) - cell.get("seen", 0)
            text = "never" if median is None else f"{median:.3f}" + (f" ({never} never)" if never else "")
            line += f" {text:>14} {(f'{most:.3f}' if most is not None else '-'):>7}"
        target = row["target_s"]
        print(line + f" {('≤ ' + format(target, 'g')) if target else '':>7}")
    for row in rows:
        if "facts" in row:
            print(f"{row['scenario']:<22} {row['figure']:<24} GR {row['setting']}: {', '.join(row['facts'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", choices=["systemd", "process"], default="systemd")
    parser.add_argument("--dir", type=Path, default=lab_fleet.DEFAULT_DIR, help="the lab (systemd nodes)")
    parser.add_argument("--graceful-restart", default="on,off", help="on, off or on,off (systemd nodes)")
    parser.add_argument(
        "--scenarios", default=",".join(failover.SCENARIOS), help="systemd nodes: which, comma-separated"
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--interval", default="1s", help="process nodes: ober health's check interval")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the failover benchmark needs root (network namespaces)")
    if args.trials < 1:
        sys.exit("error: --trials must be at least 1; fix: give --trials 5 (the default)")
    if args.nodes == "systemd":
        settings = [s.strip() for s in args.graceful_restart.split(",") if s.strip()]
        names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        wrong = [s for s in settings if s not in GR_SETTINGS] + [n for n in names if n not in failover.SCENARIOS]
        if wrong or not settings or not names:
            sys.exit(
                f"error: unknown {wrong[0] if wrong else 'empty list'}; fix: --graceful-restart on,off and "
                f"--scenarios from {','.join(failover.SCENARIOS)}"
            )
        try:
            measured = systemd_trials(args.dir, args.trials, settings, names)
        except (OberError, OSError) as exc:
            sys.exit(f"error: {exc}")
        rows = systemd_rows(measured)
        if args.json:
            print(json.dumps({"trials": args.trials, "rows": rows}, indent=2))
        else:
            print_systemd(rows, settings, args.trials)
        return
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
