"""``ober status``: sessions, announced routes, health, drain, HAProxy, units, versions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ober.cli.backends import show_discovery
from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import NodeConfig, load_config
from ober.status import announced_vips, exabgp_root, node_status


@click.command()
@config_option
@json_option
@click.pass_obj
def status(out: Output, config_path: Path) -> None:
    """Show what this node really does: BGP sessions and routes (from ExaBGP), health, drain, HAProxy."""
    config = load_config(config_path)
    data = node_status(config, exabgp_root=exabgp_root(config))
    if out.as_json:
        out.json(data)
        return
    _show(out, data, config)


def _show(out: Output, data: dict[str, Any], config: NodeConfig) -> None:
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in data["versions"].items())
    out.print(f"[bold]{data['node']}[/]  {versions}")
    out.print("units: " + ", ".join(f"{unit} {state}" for unit, state in data["units"].items()))
    drained = data["drained"]
    if drained:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(drained["since"]))
        out.print(f"[yellow]drained[/] by {drained['by']} since {since} {drained['reason']}".rstrip())
    else:
        out.print("in service (not drained)")
    bgp = data["bgp"]
    table = Table(title="BGP (from ExaBGP)")
    for column in ("neighbor", "state", "graceful restart", "announced"):
        table.add_column(column)
    graceful = bgp.get("graceful_restart", {})
    for peer, state in bgp["sessions"].items():
        table.add_row(peer, state, _negotiated(graceful.get(peer)), ", ".join(bgp["announced"].get(peer, [])) or "-")
    if bgp.get("error"):
        out.print(f"BGP: [red]{bgp['error']}[/]")
    else:
        out.table(table)
    out.print(f"announced VIPs: {', '.join(announced_vips(data)) or 'none'}")
    health = data["health"]
    if health:
        stale = " [red](stale: ober health is not running)[/]" if health["stale"] else ""
        vips = ", ".join(f"{vip} {v['state']}" for vip, v in health["vips"].items())
        out.print(f"health: {vips}{stale}")
    else:
        out.print("health: [red]no state published[/] (is ober health running under ExaBGP?)")
    haproxy = data["haproxy"]
    if not haproxy["running"]:
        out.print(f"HAProxy: [red]{haproxy['error']}[/]")
        return
    for problem in data.get("degraded", []):
        out.warn(f"degraded: {problem}")
    out.print(f"HAProxy: {haproxy['sessions']} client sessions")
    servers = Table(title="backends")
    for column in ("backend", "servers up", "requests in flight"):
        servers.add_column(column)
    for name, state in haproxy["backends"].items():
        servers.add_row(name, f"{state['up']}/{state['servers']}", str(state.get("in_flight", "-")))
    out.table(servers)
    show_discovery(out, config, time.time())


def _negotiated(value: bool | None) -> str:
    """Graceful restart as negotiated with the router (both sides advertised it), for the BGP table."""
    if value is None:
        return "-"
    return "negotiated" if value else "[yellow]not negotiated[/]"
