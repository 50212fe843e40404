"""``ober fleet restart|upgrade|lock``: rolling operations over SSH (the core is ober.remote.roll)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ober.cli.fleet import inventory_option, targets_argument
from ober.cli.options import ssh_options
from ober.cli.output import Output, json_option
from ober.errors import OberError
from ober.inventory import load_inventory
from ober.remote.facts import close_all, open_connections
from ober.remote.lock import break_lock, holders
from ober.remote.reboot import REBOOT_TIMEOUT
from ober.remote.roll import QUIESCE, Options, Roll, RollReport
from ober.remote.rolling import Operation, Plan, Request, summary
from ober.remote.upgrade import Installer, PackageFile

roll_options = [
    click.option("--dry-run", is_flag=True, help="Print the plan (each node's class of step) and change nothing."),
    click.option("--full", is_flag=True, help="Withdraw each node while it restarts (the most disruptive class)."),
    click.option("--settle", type=float, default=2.0, show_default=True, help="Seconds between nodes."),
    click.option(
        "--drain-timeout", type=float, default=30.0, show_default=True, help="Wait for a withdrawn node's connections."
    ),
    click.option(
        "--quiesce",
        type=click.FloatRange(min=0),
        default=QUIESCE,
        show_default=True,
        metavar="SECONDS",
        help="Before withdrawing a node, wait up to SECONDS for a moment with no request in flight on it (0: no).",
    ),
    click.option(
        "--allow-degraded",
        is_flag=True,
        help="A node whose HAProxy serves less than its config after its step (a server left out or down) does not "
        "stop the roll.",
    ),
    click.option(
        "--probe/--no-probe",
        default=True,
        show_default=True,
        help="Verify each node also with a request through each of its VIPs, made on the node.",
    ),
]


def _roll_options(function: Any) -> Any:
    for option in reversed(roll_options):
        function = option(function)
    return function


@click.command("restart")
@inventory_option
@targets_argument
@_roll_options
@click.option("--reload", "reload_only", is_flag=True, help="Only reload HAProxy hitlessly (nodes stay in ECMP).")
@click.option("--reboot", is_flag=True, help="Reboot each node, withdrawn until it is back and verified.")
@click.option(
    "--reboot-timeout",
    type=click.FloatRange(min=1),
    default=REBOOT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="With --reboot: a node not answering SSH from its new boot within SECONDS stops the roll.",
)
@ssh_options
@json_option
@click.pass_obj
def restart_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    dry_run: bool,
    full: bool,
    settle: float,
    drain_timeout: float,
    quiesce: float,
    allow_degraded: bool,
    probe: bool,
    reload_only: bool,
    reboot: bool,
    reboot_timeout: float,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Restart ober's services node by node, each in the least disruptive way it allows (see --dry-run)."""
    request = Request(Operation.RESTART, full=full, reload_only=reload_only, reboot=reboot)
    if len(request.modes) > 1:
        raise click.UsageError(f"{request.modes[0]} and {request.modes[1]} contradict each other: choose one")
    options = Options(
        settle=settle,
        drain_timeout=drain_timeout,
        quiesce=quiesce,
        probe=probe,
        reboot_timeout=reboot_timeout,
        dry_run=dry_run,
        allow_degraded=allow_degraded,
    )
    _roll(out, inventory_path, targets, request, options, accept_new_host_keys, parallel, yes=True)


@click.command("upgrade")
@inventory_option
@targets_argument
@_roll_options
@click.option("--reinstall", is_flag=True, help="Reinstall ober and ExaBGP even where the versions already match.")
@click.option(
    "--haproxy-package",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Also install this haproxy .deb/.rpm on each node whose package differs (a hitless reload).",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask before starting.")
@ssh_options
@json_option
@click.pass_obj
def upgrade_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    dry_run: bool,
    full: bool,
    settle: float,
    drain_timeout: float,
    quiesce: float,
    allow_degraded: bool,
    probe: bool,
    reinstall: bool,
    haproxy_package: Path | None,
    yes: bool,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Install this workstation's ober (and its ExaBGP) on the nodes, one node at a time, then restart them."""
    package = PackageFile.read(haproxy_package) if haproxy_package else None
    installer = Installer.build(progress=None if out.as_json or out.quiet else out.print, package=package)
    request = Request(Operation.UPGRADE, full=full, wanted=installer.wanted, reinstall=reinstall)
    options = Options(
        settle=settle,
        drain_timeout=drain_timeout,
        quiesce=quiesce,
        probe=probe,
        dry_run=dry_run,
        allow_degraded=allow_degraded,
    )
    _roll(out, inventory_path, targets, request, options, accept_new_host_keys, parallel, yes=yes, installer=installer)


def _roll(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    request: Request,
    options: Options,
    accept_new_host_keys: bool,
    parallel: int | None,
    *,
    yes: bool,
    installer: Installer | None = None,
) -> None:
    inventory = load_inventory(inventory_path)
    nodes = inventory.select(targets)
    command = " ".join(["ober fleet", request.kind, *([targets] if targets else [])])
    connections, failed = open_connections(inventory, accept_new_host_keys=accept_new_host_keys, parallel=parallel)
    try:
        for name, why in failed.items():
            out.warn(f"{name}: {why}")
        log = (lambda _: None) if out.as_json or out.quiet else (lambda line: out.errors.print(line, markup=False))
        roll = Roll(
            inventory,
            nodes,
            connections,
            request,
            options=options,
            log=log,
            command=command,
            install=installer.install if installer else None,
        )
        if request.operation is Operation.UPGRADE and not options.dry_run and not yes:
            preview = Roll(inventory, nodes, connections, request, options=Options(dry_run=True)).run()
            _show_plan(out, preview.plan)
            if not preview.plan.acting():
                out.print("nothing to upgrade")
                return
            if not sys.stdin.isatty():
                raise OberError("upgrade needs a confirmation", "pass --yes to run it without asking")
            click.confirm("upgrade these nodes?", abort=True)
        report = roll.run()
    finally:
        close_all(connections)
    if options.dry_run:
        if out.as_json:
            out.json(_plan_json(report.plan))
        else:
            _show_plan(out, report.plan)
        return
    ok, text = summary(report.results, command)
    if not ok or report.lock.get("held_on"):
        # A failed roll is where an operator wonders whether the fleet is still locked: say it either way.
        text = f"{text} ({report.lock_note})"
    if out.as_json:
        out.json({**_report_json(report), "ok": ok, "summary": text, "lock": report.lock})
    else:
        _show_results(out, report)
        out.print(("[green]✓[/] " if ok else "[red]✗[/] ") + escape(text), force=not ok)
    if not ok:
        click.get_current_context().exit(1)


def _plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "operation": plan.request.operation.value,
        "resumes": plan.resumed,
        "steps": [
            {
                "node": s.node,
                "class": s.klass.value,
                "withdraws": s.klass.withdraws,
                "reason": s.reason,
                "changes": {k: list(v) for k, v in s.changes.items()},
                "out_of_service": s.out_of_service,
            }
            for s in plan.steps
        ],
    }


def _report_json(report: RollReport) -> dict[str, Any]:
    return {
        **_plan_json(report.plan),
        "roll": report.roll_id,
        "seconds": round(report.seconds, 2),
        "waits": round(report.waits, 2),
        "results": [{**asdict(r), "klass": r.klass.value} for r in report.results],
    }


def _show_plan(out: Output, plan: Plan) -> None:
    title = f"{plan.request.operation.value} plan" + (f" (resumes roll {plan.resumed})" if plan.resumed else "")
    table = Table(title=title)
    for column in ("#", "node", "class", "leaves ECMP", "why", "changes"):
        table.add_column(column)
    for index, step in enumerate(plan.steps, 1):
        changes = ", ".join(f"{k} {a or '?'} → {b}" for k, (a, b) in step.changes.items())
        table.add_row(
            str(index), step.node, step.klass.value, "yes" if step.klass.withdraws else "no", step.reason, changes
        )
    out.table(table)


def _show_results(out: Output, report: RollReport) -> None:
    table = Table(title=f"roll {report.roll_id}: {report.seconds:.1f}s, of which {report.waits:.1f}s waiting")
    for column in ("node", "class", "result", "seconds", "detail"):
        table.add_column(column)
    for r in report.results:
        table.add_row(r.node, r.klass.value, r.status, f"{r.seconds:.1f}", r.detail)
    out.table(table)


@click.command("lock")
@inventory_option
@click.option("--break", "break_it", is_flag=True, help="Remove the lock wherever it is held (a roll that died).")
@ssh_options
@json_option
@click.pass_obj
def lock_cmd(
    out: Output, inventory_path: Path | None, break_it: bool, accept_new_host_keys: bool, parallel: int | None
) -> None:
    """Show who holds the fleet lock (held on the nodes during a roll), or break a stale one."""
    inventory = load_inventory(inventory_path)
    connections, failed = open_connections(inventory, accept_new_host_keys=accept_new_host_keys, parallel=parallel)
    try:
        for name, why in failed.items():
            out.warn(f"{name}: {why}")
        found = holders(connections)
        broken = break_lock(connections) if break_it else []
    finally:
        close_all(connections)
    if out.as_json:
        out.json({"held": {n: asdict(h) | {"token": None} for n, h in found.items()}, "broken": broken})
        return
    if not found:
        out.print("the fleet is not locked")
        return
    for name, holder in found.items():
        out.print(f"{name}: locked by {holder.describe()}")
    if break_it:
        out.print(f"[green]✓[/] lock broken on {len(broken)} nodes")
