"""``ober backends list|add|drain|remove``: this node's RGW servers, changed in the running HAProxy without a reload."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ober.backends import Outcome, Request, change, current_view, runtime
from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import BackendGroup, NodeConfig, load_config
from ober.discovery import FORMATS, discovered, from_config, reconcile
from ober.discovery_run import (
    Make,
    Report,
    discovery_status,
    read_runs,
    recorded,
    run_all,
    run_group,
    status_lines,
    write_runs,
)
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
    now = time.time()
    if out.as_json:
        found = discovery_status(config, now)
        groups = [{**g.to_dict(), "discovery": found.get(g.name)} for g in view.groups]
        out.json({"node": config.name, "worker": view.worker, "groups": groups})
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
    show_discovery(out, config, now)


def show_discovery(out: Output, config: NodeConfig, now: float) -> None:
    """The discovery lines: each group's last run, and the drained servers discovery lost (as warnings)."""
    for ok, line in status_lines(config, now):
        if ok:
            out.print(escape(line))
        else:
            out.warn(line)


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
@click.argument("group", required=False)
@click.option("--all", "every", is_flag=True, help="Every group with discovery in ober.yaml whose interval has passed.")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path),
    default=None,
    help="A discovery file to use instead of the group's discovery in ober.yaml.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="servers",
    show_default=True,
    help="--from: servers is {GROUP: [host:port, ...]}; ceph-orch is 'ceph orch ps --daemon_type rgw --format json'.",
)
@click.option("--service", default=None, help="--from with ceph-orch: only the daemons of this service (e.g. rgw.s3).")
@dry_run_option
@json_option
@click.pass_obj
def reconcile_cmd(
    out: Output,
    config_path: Path,
    group: str | None,
    every: bool,
    source: Path | None,
    fmt: str,
    service: str | None,
    dry_run: bool,
) -> None:
    """Make ONE change toward what discovery lists: add a new server, else drain one it lost; never remove.

    GROUP uses its discovery in ober.yaml (or --from FILE); --all runs every group with discovery that is due, as
    ober-discovery.timer does. Each run makes at most one change per group and says what it left for the next runs
    or for you (drained servers discovery lost: remove them with 'ober backends remove' once sure).
    """
    if every == (group is not None):
        raise click.UsageError("give a GROUP or --all (not both)")
    if source is not None and every:
        raise click.UsageError("--from goes with one GROUP, not --all")
    config = load_config(config_path)
    if source is not None and group is not None:
        _reconcile_from(out, config_path, config, group, source, fmt, service, dry_run)
        return
    last = read_runs(config)
    make = _maker(config_path, dry_run)
    if group is not None:
        target = _group(config, group)
        if target.discovery is None:
            from_config(target)  # says how to give it one
        run = run_group(target, discover=from_config, make=make, now=time.time())
        if not dry_run:
            write_runs(config, recorded(config, last, [run]))
        if run.error is not None and run.found is None:
            raise OberError(run.error, run.fix)
        _show_runs(out, Report([run], []))
        if not run.ok:
            raise click.exceptions.Exit(1)
        return
    report = run_all(config, discover=from_config, make=make, now=time.time(), last=last)
    if not dry_run:
        write_runs(config, recorded(config, last, report.runs))
    _show_runs(out, report)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _group(config: NodeConfig, name: str) -> BackendGroup:
    try:
        return config.backend(name)
    except StopIteration:
        raise OberError(
            f"no backend group named {name!r} on this node",
            f"use one of: {', '.join(g.name for g in config.backends)}",
        ) from None


def _maker(config_path: Path, dry_run: bool) -> Make:
    def make(verb: str, group: str, entry: str) -> Outcome:
        return change(config_path, Request(verb, group, entry, dry_run=dry_run))

    return make


def _show_runs(out: Output, report: Report) -> None:
    if out.as_json:
        out.json(report.to_dict())
        return
    # One line per group, each whole: under the timer, every line is a journal entry of its own.
    for run in report.runs:
        if run.ok:
            out.print(escape(run.summary()), force=True)
        else:
            fix = f" (fix: {run.fix})" if run.fix else ""
            out.errors.print(f"[bold red]error:[/] {escape(run.summary() + fix)}")
        for note in run.notes:
            out.warn(f"{run.group}: {note}")
    for name, left in report.waiting:
        out.print(f"{name}: not due yet (next run in {left:.0f}s)")


def _reconcile_from(
    out: Output,
    config_path: Path,
    config: NodeConfig,
    group: str,
    source: Path,
    fmt: str,
    service: str | None,
    dry_run: bool,
) -> None:
    target = _group(config, group)
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
