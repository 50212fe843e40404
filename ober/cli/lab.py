"""``ober lab up|down|status``: a local simulated fleet (nspawn nodes, a BIRD router, real Ceph RGW). Needs root."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ober.cli.output import Output, json_option
from ober.lab import fleet as lab_fleet

dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, readable=False),
    default=lab_fleet.DEFAULT_DIR,
    show_default=True,
    help="The lab's directory: its state, inventory, ssh_config, logs.",
)


@click.group()
def lab() -> None:
    """A local simulated fleet to try ober on: nodes, an ECMP router, real Ceph RGW. Needs root."""


@lab.command("up")
@click.argument("nodes", type=click.IntRange(1, lab_fleet.MAX_NODES), required=False)
@dir_option
@json_option
@click.pass_obj
def up_cmd(out: Output, nodes: int | None, directory: Path) -> None:
    """Start a lab of NODES nodes (default 4), not bootstrapped; write its inventory and ssh_config."""
    started = time.monotonic()
    with _spinner(out, "starting the lab") as update:

        def progress(text: str) -> None:
            out.errors.print(f"[dim]{time.monotonic() - started:5.1f}s[/] {text}")
            update(text)

        fleet = lab_fleet.up(nodes, directory, progress=None if out.quiet or out.as_json else progress)
    if out.as_json:
        out.json(_summary(fleet))
        return
    if fleet.already_up:
        out.print(f"a lab of {_nodes(len(fleet.nodes))} is already up in {fleet.dir}: nothing started")
    else:
        out.print(
            f"[green]✓[/] lab of {_nodes(len(fleet.nodes))} up in {time.monotonic() - started:.0f}s ({fleet.dir})"
        )
    out.print(f"  nodes: {', '.join(f'{name} {node.address}' for name, node in fleet.nodes.items())}")
    out.print(f"  VIPs: {', '.join(f'{vip} → {group}' for group, vip in fleet.vips.items())}")
    out.print(f"  try:  ssh -F {fleet.ssh_config} {next(iter(fleet.nodes))} systemctl is-system-running")
    out.print(f"        ober fleet inventory -i {fleet.inventory_path}")
    out.print(f"  secrets file (--secrets): {fleet.secrets_path}; S3 clients trust {fleet.ca_pem}")
    out.print(f"  stop: ober lab down --dir {fleet.dir}")


@lab.command("down")
@dir_option
@json_option
@click.pass_obj
def down_cmd(out: Output, directory: Path) -> None:
    """Stop everything the lab started (by PID), unmount, delete its namespaces and files."""
    started = time.monotonic()
    with _spinner(out, "stopping the lab") as update:
        removed = lab_fleet.down(directory, progress=update)
    if out.as_json:
        out.json({"dir": str(directory.absolute()), "removed": removed})
    elif removed:
        out.print(f"[green]✓[/] lab in {directory} stopped and removed ({time.monotonic() - started:.1f}s)")
    else:
        out.print(f"no lab in {directory}: nothing to do")


@lab.command("status")
@dir_option
@json_option
@click.pass_obj
def status_cmd(out: Output, directory: Path) -> None:
    """Show the lab: nodes (booted? sshd?), router sessions and next-hops per VIP, RGW groups. Exit 1 if not all up."""
    report = lab_fleet.status(directory)
    if out.as_json:
        out.json(report)
    else:
        _show(out, report)
    if not report["healthy"]:
        raise click.exceptions.Exit(1)


@contextlib.contextmanager
def _spinner(out: Output, text: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr showing the current step (none with -q or --json); yields its update function."""
    if out.quiet or out.as_json:
        yield lambda _text: None
        return
    with out.errors.status(text, spinner="dots") as status:
        yield status.update


def _summary(fleet: lab_fleet.LabFleet) -> dict[str, Any]:
    return {
        "dir": str(fleet.dir),
        "already_up": fleet.already_up,
        "nodes": {name: node.address for name, node in fleet.nodes.items()},
        "vips": fleet.vips,
        "inventory": str(fleet.inventory_path),
        "secrets": str(fleet.secrets_path),
        "ssh_config": str(fleet.ssh_config),
        "ca_pem": str(fleet.ca_pem),
        "client_ns": fleet.client_ns,
    }


def _nodes(count: int) -> str:
    return f"{count} node{'s' if count != 1 else ''}"


def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def _show(out: Output, report: dict[str, Any]) -> None:
    state = "" if report["complete"] else " [red](half made: ober lab down)[/]"
    out.print(f"[bold]lab[/] {report['dir']}{state}")
    router = report["router"]
    nodes = Table(title="nodes")
    for column in ("node", "address", "running", "sshd", "systemd", "BGP"):
        nodes.add_column(column)
    for node in report["nodes"]:
        session = router["sessions"].get(node["address"], "-")
        nodes.add_row(
            node["name"], node["address"], _mark(node["running"]), _mark(node["sshd"]), node["system"] or "-", session
        )
    out.table(nodes)
    out.print(f"router: BIRD {'running' if router['bird'] else '[red]not running[/]'}")
    for vip, hops in router["next_hops"].items():
        out.print(f"  {vip}: {len(hops)} next-hops {', '.join(hops) or '(not announced)'}")
    groups = Table(title="RGW backend groups")
    for column in ("group", "VIP", "daemons up", "endpoints answering"):
        groups.add_column(column)
    for group, backend in report["backends"].items():
        daemons, endpoints = backend["daemons"], backend["endpoints"]
        groups.add_row(
            group,
            backend["vip"],
            f"{sum(daemons.values())}/{len(daemons)}",
            f"{sum(endpoints.values())}/{len(endpoints)}",
        )
    out.table(groups)
    inotify = report["inotify"]
    if inotify["used"] >= 0.9 * inotify["limit"]:
        out.warn(
            f"{inotify['used']} of {inotify['limit']} inotify instances in use on this machine: "
            "systemd inside the nodes may fail to start units (fs.inotify.max_user_instances)"
        )
