"""``ober fleet …``: the workstation side. Commands that need SSH live in ober.remote."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import click
from click.shell_completion import CompletionItem
from rich.progress import Progress
from rich.table import Table

from ober.build import Built, HaproxyCheck, build_node
from ober.cli.lazy import LazyGroup
from ober.cli.options import no_check_option, secrets_option
from ober.cli.output import Output, json_option
from ober.config import config_to_dict
from ober.errors import OberError
from ober.files import write_tree
from ober.inventory import Inventory, InventoryNode, load_inventory
from ober.secrets import load_secrets
from ober.starter import write_starter
from ober.validate import CheckResult, check_haproxy

inventory_option = click.option(
    "-i",
    "--inventory",
    "inventory_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Inventory file or directory [default: $OBER_INVENTORY or inventory/].",
)


def complete_targets(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shell completion of TARGETS: the inventory's node names (after a comma too: ``node01,no<TAB>``)."""
    try:
        inventory = load_inventory(ctx.params.get("inventory_path"))
    except OberError:
        return []  # no inventory here (yet): nothing to offer, and never an error while the user types
    head, comma, last = incomplete.rpartition(",")
    named = set(head.split(","))
    return [
        CompletionItem(f"{head}{comma}{node.name}")
        for node in inventory.nodes
        if node.name.startswith(last) and node.name not in named
    ]


targets_argument = click.argument("targets", required=False, default=None, shell_complete=complete_targets)
required_targets_argument = click.argument("targets", shell_complete=complete_targets)


FLEET_COMMANDS = {
    "backends": "ober.cli.fleet_backends:backends_cmd",
    "bootstrap": "ober.cli.fleet_bootstrap:bootstrap_cmd",
    "certs": "ober.cli.fleet_certs:certs_cmd",
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


@fleet.command("init")
@click.argument("directory", type=click.Path(path_type=Path), default="inventory", required=False)
@click.option("--example", is_flag=True, help="Write the 4-node example site instead of the starter.")
@json_option
@click.pass_obj
def init_cmd(out: Output, directory: Path, example: bool) -> None:
    """Write a commented starter inventory to DIRECTORY/site.yaml [default: inventory/, what -i reads]."""
    written = write_starter(directory, example=example)
    option = "" if directory == Path("inventory") else f" -i {directory}"
    steps = [
        f"edit {written}: every value marked CHANGE (nodes, addresses, routers, VIPs, RGW servers)",
        f"put the certificate with its key at {directory}/certs/s3.pem (files: copies it to every node, mode 600)",
        "put secrets (if the inventory names any, e.g. md5_secret: bgp_md5) in ~/.ober/login, mode 600: "
        "'bgp_md5: VALUE' lines",
        f"check: ober fleet inventory{option}; ober fleet render{option} -o out",
        f"routers: ober fleet router-config{option} --flavor frr|bird",
        f"then: ober fleet bootstrap{option} --accept-new-host-keys (records each node's SSH host key)",
    ]
    if out.as_json:
        out.json({"written": str(written), "next": steps})
        return
    out.print(f"[green]✓[/] wrote {written}")
    for number, step in enumerate(steps, 1):
        out.print(f"  {number}. {step}")


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
@click.option(
    "--check-on",
    "check_on",
    metavar="NODE",
    default=None,
    shell_complete=complete_targets,
    help="Run haproxy -c on NODE over SSH (the HAProxy the nodes run) instead of this workstation's HAProxy.",
)
@click.option(
    "--accept-new-host-keys",
    is_flag=True,
    help="With --check-on: trust and record NODE's host key if it is not in known_hosts yet.",
)
@json_option
@click.pass_obj
def render_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    out_dir: Path,
    secrets_path: Path | None,
    no_check: bool,
    check_on: str | None,
    accept_new_host_keys: bool,
) -> None:
    """Render every selected node's files, check them, and write them all (or nothing).

    The check runs haproxy -c with this workstation's HAProxy, which must be installed here and may be another
    version than the nodes' (haproxy.version): --check-on NODE checks with NODE's instead.
    """
    if check_on and no_check:
        raise click.UsageError("--check-on and --no-check contradict each other: choose one")
    inventory, nodes = _selected(inventory_path, targets)
    needs_secrets = any(n.config.secret_names() for n in nodes)
    secrets = load_secrets(secrets_path, required=needs_secrets)
    built: list[tuple[str, Built]] = []
    with contextlib.ExitStack() as stack:
        haproxy: HaproxyCheck = check_haproxy
        if check_on:
            haproxy = _check_on_node(stack, inventory, check_on, accept_new_host_keys)
        with Progress(console=out.errors, transient=True, disable=out.quiet or out.as_json) as progress:
            task = progress.add_task("rendering", total=len(nodes))
            for node in nodes:
                progress.update(task, description=f"rendering {node.name}")
                built.append((node.name, build_node(node.config, secrets, check=not no_check, haproxy=haproxy)))
                progress.advance(task)
    write_tree(out_dir, [(name, b.rendered) for name, b in built])
    for name, b in built:
        for note in b.notes:
            out.warn(f"{name}: {note}")
        if b.placeholders and out.verbose:
            out.print(f"{name}: checked with placeholders for {', '.join(b.placeholders)}")
    checker = _checker(built)
    if checker and checker.host is None:
        for note in version_notes(checker.version, [node.config.haproxy.version for node in nodes]):
            out.warn(note)
    if out.as_json:
        out.json(
            {
                "out": str(out_dir.absolute()),
                "checked": not no_check,
                "checked_by": {"host": checker.host or "here", "haproxy": checker.version} if checker else None,
                "nodes": [
                    {"name": name, "digest": b.rendered.digest, "files": len(b.rendered.files), "notes": b.notes}
                    for name, b in built
                ],
            }
        )
        return
    if no_check or checker is None:
        checked = "not checked (--no-check)"
    else:
        where = f"on {checker.host}" if checker.host else "here"
        checked = f"checked by haproxy -c {where} (HAProxy {checker.version or '?'}) and exabgp validate"
        if any(b.unchecked for _name, b in built):
            checked += "; no ACME certificate to check yet"
    out.print(f"[green]✓[/] {len(built)} nodes rendered to {out_dir} ({checked})")


def _check_on_node(
    stack: contextlib.ExitStack, inventory: Inventory, name: str, accept_new_host_keys: bool
) -> HaproxyCheck:
    """``haproxy -c`` on the inventory's node ``name``, over one SSH connection closed when ``stack`` ends."""
    from ober.remote.connection import connect, targets  # Fabric and paramiko: only when a node is asked
    from ober.remote.nodecheck import check_haproxy_on

    chosen = [node for node in inventory.nodes if node.name == name]
    if not chosen:
        raise OberError(f"--check-on {name}: no such node in {inventory.source}", "name one node of the inventory")
    conn = connect(targets(inventory, chosen, accept_new_host_keys=accept_new_host_keys)[0])
    stack.callback(conn.close)
    return functools.partial(check_haproxy_on, conn, chosen[0].name)


def _checker(built: list[tuple[str, Built]]) -> CheckResult | None:
    """The haproxy check's result of the first node (every node is checked by the same HAProxy)."""
    for _, b in built:
        for check in b.checks:
            if check.tool == "haproxy":
                return check
    return None


def version_notes(here: str | None, wanted: list[str]) -> list[str]:
    """Warnings when this workstation's HAProxy is another MAJOR.MINOR than the nodes' ``haproxy.version``."""
    if here is None:
        return []
    mine = ".".join(here.split(".")[:2])
    others = sorted({version for version in wanted if version != mine})
    if not others:
        return []
    return [
        f"checked with this workstation's HAProxy {mine}, but the nodes run {', '.join(others)} (haproxy.version): "
        "what only one of them accepts or refuses is not caught; check with a node's: --check-on NODE"
    ]
