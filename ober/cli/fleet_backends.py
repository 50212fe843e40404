"""``ober fleet backends list|add|drain|remove``: an RGW server changed on every node without a reload (ober.remote)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ober.cli.fleet import inventory_option
from ober.cli.fleet_ops import _load, _progress, _report_steps, _session
from ober.cli.options import ssh_options
from ober.cli.output import Output, json_option
from ober.remote import backends as fleet_backends


@click.group("backends")
def backends_cmd() -> None:
    """RGW servers on every node: list, add, drain or remove one, node by node, without a reload.

    The inventory follows: each change is recorded in its runtime backends file (backends.yaml in an inventory
    directory, NAME.backends.yaml next to an inventory file), so 'fleet diff' shows no drift and 'fleet push'
    keeps it.
    """


@backends_cmd.command("list")
@inventory_option
@click.argument("targets", required=False, default=None)
@ssh_options
@json_option
@click.pass_obj
def list_cmd(
    out: Output, inventory_path: Path | None, targets: str | None, accept_new_host_keys: bool, parallel: int | None
) -> None:
    """Every node's backend groups: each server's state in its HAProxy, requests, free spare slots."""
    inventory, nodes = _load(inventory_path, targets)
    rows = fleet_backends.list_all(inventory, nodes, parallel=parallel, accept_new_host_keys=accept_new_host_keys)
    failed = [row.node for row in rows if row.error]
    if out.as_json:
        out.json({"ok": not failed, "nodes": [{"node": r.node, "groups": r.groups, "error": r.error} for r in rows]})
    else:
        table = Table(title=f"site {inventory.site}: backends")
        for column in ("node", "group", "server", "state", "requests", "where"):
            table.add_column(column)
        for row in rows:
            if row.error:
                table.add_row(row.node, "-", "-", f"[red]{escape(row.error)}[/]", "-", "-")
            for group in row.groups:
                for server in group.get("servers") or []:
                    table.add_row(
                        row.node,
                        escape(str(group.get("group"))),
                        escape(str(server.get("server"))),
                        escape(str(server.get("state"))),
                        escape(str(server.get("sessions"))),
                        escape(str(server.get("where"))),
                    )
        out.table(table)
    if failed:
        click.get_current_context().exit(1)


def _command(verb: str, summary: str) -> click.Command:
    @click.command(verb, help=summary)
    @inventory_option
    @click.argument("group")
    @click.argument("server", metavar="HOST[:PORT]")
    @click.argument("targets", required=False, default=None)
    @click.option(
        "--wait",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        metavar="SECONDS",
        help="remove: per node, how long to let the server's requests finish before maintenance.",
    )
    @ssh_options
    @json_option
    @click.pass_obj
    def command(
        out: Output,
        inventory_path: Path | None,
        group: str,
        server: str,
        targets: str | None,
        wait: float,
        accept_new_host_keys: bool,
        parallel: int | None,
    ) -> None:
        inventory, nodes = _load(inventory_path, targets)
        planned = fleet_backends.prepare(inventory_path, nodes, verb, group, server)
        with _session(out, inventory, f"backends {verb}", accept_new_host_keys, parallel) as session:
            results = fleet_backends.run(session, planned, wait=wait, progress=_progress(out))
        if not out.as_json and any(r.ok for r in results):
            out.print(f"inventory: recorded in {planned.path}")
        _report_steps(out, f"backends {verb}", results, None, session.lock)

    return command


backends_cmd.add_command(
    _command("add", "Add SERVER to GROUP on each node (TARGETS, default all), one at a time, in a spare slot.")
)
backends_cmd.add_command(_command("drain", "Drain SERVER of GROUP on each node: no new requests, nothing cut."))
backends_cmd.add_command(
    _command("remove", "Remove SERVER from GROUP on each node: drained, its requests finish, then maintenance.")
)
