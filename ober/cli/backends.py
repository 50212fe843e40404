"""``ober backends list|add|drain|remove``: this node's RGW servers, changed in the running HAProxy without a reload."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ober.backends import Outcome, Request, change, current_view, runtime
from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import load_config
from ober.discovery import FORMATS, discovered, reconcile
from ober.errors import OberError

wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="remove: how long to let the server's requests finish before it goes into maintenance (they are never cut).",
)
force_option = click.option(
    "--force", is_flag=True, help="Even if it is the group's last server taking requests (its VIPs are withdrawn)."
)
dry_run_option = click.option("--dry-run", is_flag=True, help="Show the commands and the diff; change nothing.")


@click.group("backends")
def backends() -> None:
    """This node's RGW servers: list them, add, drain or remove one through HAProxy's runtime API (no reload).

    Each change is also written to ober.yaml and haproxy.cfg, so a later reload keeps it.
    """


@backends.command("list")
@config_option
@json_option
@click.pass_obj
def list_cmd(out: Output, config_path: Path) -> None:
    """Every backend group's servers: where they run in HAProxy, their state, requests, free slots."""
    config = load_config(config_path)
    view = current_view(config, runtime(config)[1])
    if out.as_json:
        out.json({"node": config.name, "worker": view.worker, "groups": [g.to_dict() for g in view.groups]})
        return
    table = Table(title=f"node {config.name}: backend groups")
    for column in ("group", "server", "state", "HAProxy", "check", "requests", "where"):
        table.add_column(column)
    for group in view.groups:
        for member in group.members:
            running = member.running
            table.add_row(
                group.name,
                member.entry,
                _coloured(member.state),
                escape(running.status) if running else "-",
                escape(running.check_status.lstrip("* ")) if running else "-",
                str(running.sessions) if running else "-",
                member.where,
            )
    out.table(table)
    for group in view.groups:
        out.print(f"{group.name}: {group.live} serving, {len(group.free_slots)} of {group.slots} spare slots free")


def _coloured(state: str) -> str:
    colour = "green" if state == "serving" else "yellow" if state.startswith(("drained", "removed")) else "red"
    return f"[{colour}]{escape(state)}[/]"


def _report(out: Output, outcome: Outcome) -> None:
    if out.as_json:
        out.json(outcome.to_dict())
        return
    planned = outcome.plan
    if not planned.changes:
        out.print(f"nothing to do: {escape(planned.message)}")
        return
    if outcome.dry_run:
        out.plain(outcome.diff())
        for command in planned.commands():
            out.print(f"  {escape(command)}")
        out.print(f"would {escape(planned.message)} (dry run: nothing changed)")
        return
    files = ", ".join(Path(c.path).name for c in outcome.files) or "none"
    out.print(f"[green]✓[/] {escape(planned.message)}; no reload; files: {escape(files)}")
    if outcome.left:
        out.warn(f"{outcome.left} requests were still running on it: HAProxy lets them finish")


@backends.command("add")
@config_option
@click.argument("group")
@click.argument("server", metavar="HOST[:PORT]")
@dry_run_option
@json_option
@click.pass_obj
def add_cmd(out: Output, config_path: Path, group: str, server: str, dry_run: bool) -> None:
    """Add SERVER to GROUP in a free spare slot (or undrain it): checked, then it takes requests."""
    _report(out, change(config_path, Request("add", group, server, dry_run=dry_run)))


@backends.command("drain")
@config_option
@click.argument("group")
@click.argument("server", metavar="HOST[:PORT]")
@force_option
@dry_run_option
@json_option
@click.pass_obj
def drain_cmd(out: Output, config_path: Path, group: str, server: str, force: bool, dry_run: bool) -> None:
    """Drain SERVER of GROUP: no new requests (weight 0), what it serves finishes; 'add' undrains it."""
    _report(out, change(config_path, Request("drain", group, server, force=force, dry_run=dry_run)))


@backends.command("remove")
@config_option
@click.argument("group")
@click.argument("server", metavar="HOST[:PORT]")
@force_option
@wait_option
@dry_run_option
@json_option
@click.pass_obj
def remove_cmd(
    out: Output, config_path: Path, group: str, server: str, force: bool, wait: float, dry_run: bool
) -> None:
    """Remove SERVER from GROUP: drained, its requests finish, then maintenance; the next reload drops it."""
    _report(out, change(config_path, Request("remove", group, server, force=force, wait=wait, dry_run=dry_run)))


@backends.command("reconcile")
@config_option
@click.argument("group")
@click.option("--from", "source", required=True, type=click.Path(path_type=Path), help="The discovery output (a file).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="servers",
    show_default=True,
    help="servers: {GROUP: [host:port, ...]}; ceph-orch: 'ceph orch ps --daemon_type rgw --format json'.",
)
@click.option("--service", default=None, help="ceph-orch: only the daemons of this service (e.g. rgw.s3).")
@dry_run_option
@json_option
@click.pass_obj
def reconcile_cmd(
    out: Output, config_path: Path, group: str, source: Path, fmt: str, service: str | None, dry_run: bool
) -> None:
    """Make ONE change toward what discovery lists: add a new server, else drain one it lost; never remove.

    Run it from a timer: each run makes at most one change, and says what it left for the next runs or for you.
    """
    config = load_config(config_path)
    try:
        target = config.backend(group)
    except StopIteration:
        raise OberError(
            f"no backend group named {group!r} on this node",
            f"use one of: {', '.join(g.name for g in config.backends)}",
        ) from None
    decision = reconcile(target, discovered(source, target, fmt, service))
    outcome = None
    if decision.verb and decision.server:
        entry = f"{decision.server.host}:{decision.server.port}"
        outcome = change(config_path, Request(decision.verb, group, entry, dry_run=dry_run))
    if out.as_json:
        out.json({**decision.to_dict(), "outcome": outcome.to_dict() if outcome else None})
        return
    for note in decision.notes:
        out.warn(note)
    if outcome is None:
        out.print(f"{group}: in line with {source}")
    else:
        _report(out, outcome)
