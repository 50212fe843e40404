"""``ober fleet …``: the workstation side. Commands that need SSH live in ober.remote."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import Progress
from rich.table import Table

from ober.build import Built, build_node
from ober.cli.lazy import LazyGroup
from ober.cli.options import no_check_option, secrets_option
from ober.cli.output import Output, json_option
from ober.config import config_to_dict
from ober.files import write_tree
from ober.inventory import Inventory, InventoryNode, load_inventory
from ober.secrets import load_secrets

inventory_option = click.option(
    "-i",
    "--inventory",
    "inventory_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Inventory file or directory [default: $OBER_INVENTORY or inventory/].",
)
targets_argument = click.argument("targets", required=False, default=None)


FLEET_COMMANDS = {
    "backends": "ober.cli.fleet_backends:backends_cmd",
    "bootstrap": "ober.cli.fleet_bootstrap:bootstrap_cmd",
    "diff": "ober.cli.fleet_ops:diff_cmd",
    "drain": "ober.cli.fleet_ops:drain_cmd",
    "lock": "ober.cli.fleet_roll:lock_cmd",
    "push": "ober.cli.fleet_ops:push_cmd",
    "restart": "ober.cli.fleet_roll:restart_cmd",
    "router-config": "ober.cli.fleet_ops:router_config_cmd",
    "status": "ober.cli.fleet_ops:status_cmd",
    "sync": "ober.cli.fleet_ops:sync_cmd",
    "undrain": "ober.cli.fleet_ops:undrain_cmd",
    "upgrade": "ober.cli.fleet_roll:upgrade_cmd",
}


@click.group(cls=LazyGroup, lazy=FLEET_COMMANDS)
def fleet() -> None:
    """Manage many nodes from this workstation over SSH: inventory, bootstrap, status, drain, rolling changes."""


def _selected(inventory_path: Path | None, targets: str | None) -> tuple[Inventory, list[InventoryNode]]:
    inventory = load_inventory(inventory_path)
    return inventory, inventory.select(targets)


@fleet.command("inventory")
@inventory_option
@targets_argument
@json_option
@click.pass_obj
def inventory_cmd(out: Output, inventory_path: Path | None, targets: str | None) -> None:
    """Show the expanded nodes (TARGETS: a hostlist, default all) and their resolved values."""
    inventory, nodes = _selected(inventory_path, targets)
    if out.as_json:
        out.json(
            {
                "site": inventory.site,
                "source": inventory.source,
                "fleet": {
                    "min_available": inventory.fleet.min_available,
                    "max_unavailable": inventory.fleet.max_unavailable,
                },
                "nodes": [
                    {"name": n.name, "group": n.group, "address": n.address, "config": config_to_dict(n.config)}
                    for n in nodes
                ],
            }
        )
        return
    table = Table(title=f"site {inventory.site} ({inventory.source}): {len(nodes)} nodes")
    for column in ("node", "group", "address", "router-id", "neighbors", "VIPs"):
        table.add_column(column)
    for n in nodes:
        bgp = n.config.bgp
        vips = ", ".join(f"{v.address}→{v.backend}" for v in n.config.vips)
        table.add_row(n.name, n.group, n.address, bgp.router_id, ", ".join(bgp.neighbors), vips)
    out.table(table)


@fleet.command("render")
@inventory_option
@targets_argument
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory to write one tree per node into (OUT/NODE/…).",
)
@secrets_option
@no_check_option
@json_option
@click.pass_obj
def render_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    out_dir: Path,
    secrets_path: Path | None,
    no_check: bool,
) -> None:
    """Render every selected node's files, check them, and write them all (or nothing)."""
    _, nodes = _selected(inventory_path, targets)
    needs_secrets = any(n.config.secret_names() for n in nodes)
    secrets = load_secrets(secrets_path, required=needs_secrets)
    built: list[tuple[str, Built]] = []
    with Progress(console=out.errors, transient=True, disable=out.quiet or out.as_json) as progress:
        task = progress.add_task("rendering", total=len(nodes))
        for node in nodes:
            progress.update(task, description=f"rendering {node.name}")
            built.append((node.name, build_node(node.config, secrets, check=not no_check)))
            progress.advance(task)
    write_tree(out_dir, [(name, b.rendered) for name, b in built])
    for name, b in built:
        for note in b.notes:
            out.warn(f"{name}: {note}")
        if b.placeholders and out.verbose:
            out.print(f"{name}: checked with placeholders for {', '.join(b.placeholders)}")
    if out.as_json:
        out.json(
            {
                "out": str(out_dir.absolute()),
                "checked": not no_check,
                "nodes": [
                    {"name": name, "digest": b.rendered.digest, "files": len(b.rendered.files), "notes": b.notes}
                    for name, b in built
                ],
            }
        )
        return
    checked = "checked by haproxy -c and exabgp validate" if not no_check else "not checked (--no-check)"
    out.print(f"[green]✓[/] {len(built)} nodes rendered to {out_dir} ({checked})")
