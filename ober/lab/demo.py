"""``make demo``: a lab fleet, bootstrapped over SSH, rolled while an S3 client keeps working through the VIP.

Steps, each the real CLI as a user runs it: ``ober lab up`` (4 systemd-nspawn nodes, a BIRD ECMP router, two real
Ceph RGW groups), ``ober fleet bootstrap`` on every node, ``ober fleet status``, then ``ober fleet restart`` while
the S3 load client (boto3 over TLS through the VIP) uploads and downloads; at the end, what the client saw and the
fewest next-hops the router had during the roll, and ober's own metrics on one node (``GET /ober/metrics`` on its
stats listener, what Prometheus scrapes). Last, a third radosgw joins ceph-a and ``ober fleet backends add`` puts it
in every node's HAProxy without a reload. The lab stays up for you to try more.

:func:`roll_under_load` is shared with ``bench/rolling.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ober.config import NodeConfig
from ober.errors import OberError
from ober.inventory import load_inventory
from ober.lab import faults
from ober.lab import fleet as lab_fleet
from ober.lab.fleet import LabFleet
from ober.lab.s3load import HopWatch, LoadConfig, LoadResult, S3Load
from ober.metrics import parse_exposition
from ober.render import paths

ROLL_TIMEOUT = 3600.0
WARMUP = 3.0


@dataclass
class RollUnderLoad:
    """One roll with the client and the router watched."""

    code: int
    report: dict[str, Any]
    stderr: str
    load: LoadResult
    fewest: dict[str, int]
    changes: list[tuple[float, str, tuple[str, ...]]]


def ober(*args: str, timeout: float = ROLL_TIMEOUT, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """The real ``ober`` CLI in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "ober", *args], capture_output=capture, text=True, timeout=timeout, check=False
    )


def load_client(fleet: LabFleet, workdir: Path, group: str = "ceph-a") -> S3Load:
    """The S3 load client against ``group``'s VIP, in the lab's client namespace."""
    access, secret = fleet.s3_credentials(group)
    config = LoadConfig(
        endpoint=f"https://{fleet.vips[group]}", ca=str(fleet.ca_pem), access_key=access, secret_key=secret
    )
    return S3Load(fleet.client_ns, config, workdir)


def roll_under_load(fleet: LabFleet, workdir: Path, *args: str, group: str = "ceph-a") -> RollUnderLoad:
    """``ober --json fleet ARGS -i INVENTORY`` while the load runs (on ``group``'s VIP) and the router is polled."""
    with (
        load_client(fleet, workdir, group) as load,
        HopWatch(fleet.router.next_hops, list(fleet.vips.values())) as watch,
    ):
        time.sleep(WARMUP)
        done = ober("--json", "fleet", *args, "-i", str(fleet.inventory_path))
        time.sleep(WARMUP)
        seen = load.stop()
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        report = {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return RollUnderLoad(done.returncode, report, done.stderr, seen, dict(watch.fewest), list(watch.changes))


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _show(args: Sequence[str]) -> None:
    print("$ ober " + " ".join(args), flush=True)
    done = ober(*args, capture=False)
    if done.returncode != 0:
        raise OberError(f"ober {' '.join(args)} failed (exit {done.returncode})", "see its output above")


# On the node: the stats login read from secrets.env (parsed, not sourced: a secret may hold | & < > ( ) *, which a
# shell would act on) and handed to curl on stdin, never on a command line; then the scrape.
_SCRAPE = """set -eu
pw=$(sed -n 's/^OBER_STATS_PASSWORD=//p' {secrets})
printf 'user = "%s:%s"\\n' {user} "$pw" | curl -sS --fail -k -K - {url}
"""
_SCRAPE_OPEN = "curl -sS --fail -k {url}"

SHOWN = (
    "ober_info",
    "ober_bgp_session_up",
    "ober_bgp_session_uptime_seconds",
    "ober_bgp_graceful_restart",
    "ober_vip_announced",
    "ober_vip_reason",
    "ober_vip_updates_total",
    "ober_drained",
    "ober_config_info",
    "ober_fleet_roll_info",
    "ober_health_checks_total",
)
"""The families the demo prints (with state sets and per-action counters, only the series that are not 0)."""


def scrape_script(config: NodeConfig) -> str:
    """The shell script that scrapes ``/ober/metrics`` on the node itself, with the stats login when there is one.

    At the listener's own address and scheme (it is on the node's address, over TLS with a login; not on 127.0.0.1).
    ``-k``: the certificate names the S3 service, not the node's address, and the request never leaves the node.
    """
    scheme = "https" if config.stats.tls else "http"
    url = f"{scheme}://{config.stats.bind}:{config.stats.port}/ober/metrics"
    if config.stats.auth is None:
        return _SCRAPE_OPEN.format(url=url)
    return _SCRAPE.format(secrets=paths(config)["secrets_env"], user=config.stats.auth.user, url=url)


def node_metrics(fleet: LabFleet, node: str) -> str:
    """A node's ``/ober/metrics`` as a monitoring host gets it: through HAProxy's stats listener, with its login."""
    config = next(n.config for n in load_inventory(fleet.inventory_path).nodes if n.name == node)
    return fleet.run_on(node, scrape_script(config)).stdout


def metrics_lines(text: str) -> list[str]:
    """The demo's selection of an exposition, one sample a line."""
    samples = parse_exposition(text)
    lines = []
    for name in SHOWN:
        for labels, value in samples.get(name, []):
            if value == 0 and name in ("ober_vip_reason", "ober_vip_updates_total"):
                continue
            shown = ",".join(f'{key}="{text}"' for key, text in labels.items())
            lines.append(f"{name}{{{shown}}} {value:g}" if shown else f"{name} {value:g}")
    return lines


DEMO_RGW = "100.64.1.13"


def _backend_change(fleet: LabFleet) -> None:
    """A third radosgw joins ceph-a (as cephadm places one); every node's HAProxy gets it, no reload."""
    inventory = ["-i", str(fleet.inventory_path)]
    _step(f"a third radosgw in ceph-a ({DEMO_RGW}), then ober fleet backends add: no reload, node by node")
    if f"http://{DEMO_RGW}:7480" not in fleet.rgw_endpoints("ceph-a"):
        faults.start_rgw(fleet, "ceph-a", DEMO_RGW)
    _show(["fleet", "backends", "add", "ceph-a", f"{DEMO_RGW}:7480", *inventory])
    _show(["fleet", "backends", "list", "node01", *inventory])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ober.lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=lab_fleet.DEFAULT_DIR, help="the lab's directory")
    parser.add_argument("--nodes", type=int, default=lab_fleet.DEFAULT_NODES)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("error: the demo needs root (network namespaces, systemd-nspawn) (fix: sudo make demo)", file=sys.stderr)
        return 1
    try:
        _step(f"ober lab up {args.nodes}")
        _show(["lab", "up", str(args.nodes), "--dir", str(args.dir)])
        fleet = lab_fleet.load(args.dir)
        inventory = ["-i", str(fleet.inventory_path)]
        _step("ober fleet bootstrap (install in parallel, bring into service one at a time)")
        _show(["fleet", "bootstrap", *inventory, "--secrets", str(fleet.secrets_path)])
        _step("ober fleet status")
        _show(["fleet", "status", *inventory])
        _step("ober fleet restart --dry-run (each node's class of step)")
        _show(["fleet", "restart", *inventory, "--dry-run"])
        _step("ober fleet restart, while an S3 client works through the VIP")
        rolled = roll_under_load(fleet, args.dir / "demo", "restart")
    except OberError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    results = rolled.report.get("results", [])
    for r in results:
        print(f"  {r['node']}: {r['klass']} {r['status']} in {r['seconds']:.1f}s {r['detail']}")
    print(f"  roll: {rolled.report.get('summary') or rolled.report.get('error')}")
    print(f"  S3 client: {rolled.load.line()}")
    for error in rolled.load.errors[:5]:
        print(f"    {error}")
    hops = ", ".join(f"{vip}: {count}" for vip, count in rolled.fewest.items())
    print(f"  fewest router next-hops during the roll: {hops} (of {len(fleet.nodes)})")
    first = sorted(fleet.nodes)[0]
    _step(f"ober's own metrics on {first}: GET /ober/metrics on its stats listener (what Prometheus scrapes)")
    try:
        for line in metrics_lines(node_metrics(fleet, first)):
            print(f"  {line}")
    except (OberError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("  (all of it: monitoring/ has Prometheus alert rules and a Grafana dashboard for these)")
    try:
        _backend_change(fleet)
    except OberError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nThe lab stays up: try `ober fleet status -i {fleet.inventory_path}`")
    print(f"Stop it with: ober lab down --dir {args.dir}")
    return rolled.code


if __name__ == "__main__":
    sys.exit(main())
