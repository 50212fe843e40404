"""``ober fleet status|drain|undrain|diff|push|sync|router-config``: the fleet over SSH (core: ober.remote)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ober.cli.fleet import inventory_option, required_targets_argument, targets_argument
from ober.cli.options import secrets_option, ssh_options
from ober.cli.output import Output, json_option
from ober.errors import OberError
from ober.hostlists import collect
from ober.inventory import Inventory, InventoryNode, load_inventory
from ober.remote import fleetops
from ober.remote.guard import Decision
from ober.remote.lock import FleetLock
from ober.remote.nodeclient import Liveness, NodeCert, NodeView
from ober.remote.push import Drift, PushResult
from ober.remote.routerconfig import FLAVORS, router_config
from ober.secrets import load_secrets


def _load(inventory_path: Path | None, targets: str | None) -> tuple[Inventory, list[InventoryNode]]:
    inventory = load_inventory(inventory_path)
    return inventory, inventory.select(targets)


def _fail_if(out: Output, failed: bool) -> None:
    if failed:
        click.get_current_context().exit(1)


def _progress(out: Output) -> Callable[[str], None]:
    if out.as_json or out.quiet:
        return lambda _line: None
    return lambda line: out.errors.print(escape(line))


@click.command("status")
@inventory_option
@targets_argument
@secrets_option
@ssh_options
@json_option
@click.pass_obj
def status_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    secrets_path: Path | None,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Every node's state in one parallel sweep: versions, units, BGP, VIPs, drain, sessions, config drift.

    Exits 1 when a node is unreachable or unhealthy (a drained node is neither).
    """
    inventory, nodes = _load(inventory_path, targets)
    secrets = load_secrets(secrets_path, required=False)
    rows = fleetops.status(inventory, nodes, secrets, parallel=parallel, accept_new_host_keys=accept_new_host_keys)
    bad = [view.name for view, _drift, _why in rows if not view.healthy]
    live = [view.name for view, _drift, _why in rows if view.liveness is Liveness.LIVE]
    unknown = [view.name for view, _drift, _why in rows if view.liveness is Liveness.UNKNOWN]
    warned = {node.name: fleetops.warnings(node) for node in nodes}
    if out.as_json:
        out.json(
            {
                "site": inventory.site,
                "ok": not bad,
                "live": live,
                "unknown": unknown,
                "nodes": [
                    {
                        **view.to_dict(),
                        "drift": drift.to_dict() if drift else None,
                        "drift_error": why,
                        "warnings": warned.get(view.name, []),
                    }
                    for view, drift, why in rows
                ],
            }
        )
        _fail_if(out, bool(bad))
        return
    table = Table(title=f"site {inventory.site}: {len(rows)} nodes")
    columns = ("node", "ober", "HAProxy", "ExaBGP", "units", "BGP", "announced", "drained", "sessions", "cert", "drift")
    for column in columns:
        table.add_column(column)
    table.add_column("problems", overflow="fold")
    for view, drift, why in rows:
        table.add_row(*_status_row(view, drift, why))
    out.table(table)
    # Not a failure (the exit status stays): what the inventory allowed but should not have to.
    for name, found in warned.items():
        for line in found:
            out.print(f"[yellow]![/] {escape(name)}: {escape(line)}", force=True)
    summary = f"{len(live)} of {len(rows)} nodes live (announcing, not drained)"
    if unknown:
        # The controller sees the nodes, not the routers: a node that does not answer may still be announcing.
        summary += (
            f"; {collect(unknown)} unknown: no answer, so whether it still announces only the routers know "
            f"(check SSH to it, or the routers' BGP sessions)"
        )
    if bad:
        out.print(f"[red]✗[/] {escape(summary)}; unreachable or unhealthy: {', '.join(bad)}", force=True)
    else:
        out.print(f"[green]✓[/] {escape(summary)}")
    _fail_if(out, bool(bad))


def _status_row(view: NodeView, drift: Drift | None, why: str | None) -> list[str]:
    if not view.reachable:
        return [
            view.name,
            "-",
            "-",
            "-",
            "-",
            "-",
            "[yellow]unknown[/]",
            "-",
            "-",
            "-",
            "-",
            f"[red]unreachable[/]: {escape(view.error or '')}",
        ]
    versions = [view.versions.get(name) or "-" for name in ("ober", "haproxy", "exabgp")]
    units = " ".join(f"{unit.removeprefix('ober-')}:{state}" for unit, state in view.units.items()) or "-"
    bgp = " ".join(f"{peer}:{state[:5]}" for peer, state in view.bgp.items()) or "-"
    drained = "-"
    if view.drained:
        since = time.strftime("%m-%d %H:%M", time.localtime(view.drained.since))
        drained = f"[yellow]{escape(view.drained.by)} {since}[/] {escape(view.drained.reason)}".rstrip()
    if drift is None:
        drift_text = f"? ({escape(why or 'not read')})"
    elif drift.drifted:
        files = [Path(path).name for path in [*drift.changed, *drift.removed]]
        drift_text = f"[yellow]{len(files)} files[/]: {', '.join(files[:3])}{' …' if len(files) > 3 else ''}"
    else:
        drift_text = "in sync" + (" (secrets not compared)" if drift.unknown else "")
    problems = ", ".join(view.problems())
    return [
        view.name,
        *versions,
        units,
        bgp,
        "[yellow]unknown[/]" if not view.known else ", ".join(view.announced) or "none",
        drained,
        "-" if view.sessions is None else str(view.sessions),
        _cert_cell(view),
        drift_text,
        _problems_cell(problems, view.degraded),
    ]


def _cert_cell(view: NodeView) -> str:
    """The VIPs' certificate that expires first: days left (a placeholder says so)."""
    dated = [cert for cert in view.certificates if cert.days_left is not None]
    if not dated:
        return "-"
    first = min(dated, key=lambda cert: cert.days_left or 0.0)
    text = days_cell(first) + "d"
    return f"{text} [yellow]placeholder[/]" if any(cert.placeholder for cert in view.certificates) else text


def days_cell(cert: NodeCert) -> str:
    """Days to expiry, coloured: red within 7 days (or gone), yellow within 30 or for a placeholder."""
    if cert.days_left is None:
        return "-"
    colour = "red" if cert.days_left < 7 else "yellow" if cert.days_left < 30 or cert.placeholder else "green"
    return f"[{colour}]{cert.days_left:.0f}[/]"


def _problems_cell(problems: str, degraded: Sequence[str]) -> str:
    """Problems in red; a node serving degraded in yellow (it serves, with less than its config says)."""
    parts = [f"[red]{escape(problems)}[/]"] if problems else []
    parts += [f"[yellow]degraded: {escape(line)}[/]" for line in degraded]
    return "; ".join(parts) or "[green]ok[/]"


drain_options = [
    click.option(
        "--max-unavailable",
        type=click.IntRange(1, 4096),
        default=None,
        help="Nodes that may be out of service at once, already-out ones included [default: fleet.max_unavailable].",
    ),
    click.option("--dry-run", is_flag=True, help="Ask the nodes and show what the guard decides; change nothing."),
]


def _with(options: Sequence[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def apply(function: Any) -> Any:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


@click.command("drain")
@inventory_option
@required_targets_argument
@click.option("--reason", default="", help="Why, shown by status.")
@click.option("--timeout", type=float, default=None, help="Per node: seconds to wait for its connections to end.")
@_with(drain_options)
@ssh_options
@json_option
@click.pass_obj
def drain_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str,
    reason: str,
    timeout: float | None,
    max_unavailable: int | None,
    dry_run: bool,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Take TARGETS out of the ECMP set one at a time, never leaving fewer live nodes than the guard allows."""
    inventory, nodes = _load(inventory_path, targets)
    run = fleetops.Drain(
        inventory,
        nodes,
        reason=reason,
        timeout=timeout,
        max_unavailable=max_unavailable,
        parallel=parallel,
        accept_new_host_keys=accept_new_host_keys,
        progress=_progress(out),
    )
    if dry_run:
        decision = run.check()
        _report_guard(out, decision, dry_run=True)
        _fail_if(out, not decision.allowed)
        return
    with _session(out, inventory, "drain", accept_new_host_keys, parallel) as session:
        results = run.run(session)
    _report_steps(out, "drain", results, run.decision, session.lock)


@click.command("undrain")
@inventory_option
@required_targets_argument
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Per node: seconds to wait until live.")
@click.option("--no-wait", is_flag=True, help="Do not wait for each node to announce again.")
@ssh_options
@json_option
@click.pass_obj
def undrain_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str,
    timeout: float,
    no_wait: bool,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Put TARGETS back in service one at a time, each announcing again before the next."""
    inventory, nodes = _load(inventory_path, targets)
    with _session(out, inventory, "undrain", accept_new_host_keys, parallel) as session:
        results = fleetops.undrain(session, nodes, wait=0.0 if no_wait else timeout, progress=_progress(out))
    _report_steps(out, "undrain", results, None, session.lock)


def _report_guard(out: Output, decision: Decision, *, dry_run: bool) -> None:
    if out.as_json:
        out.json({"dry_run": dry_run, "guard": decision.to_dict(), "message": decision.message})
        return
    colour = "green" if decision.allowed else "red"
    out.print(
        f"[{colour}]{escape(decision.message)}[/]" + (" (dry run: nothing changed)" if dry_run else ""), force=True
    )


def _session(
    out: Output, inventory: Inventory, operation: str, accept: bool, parallel: int | None, *, locked: bool = True
) -> fleetops.Session:
    """Connections to the whole fleet holding the fleet lock (``locked``), as every changing command needs."""
    return fleetops.Session(
        inventory,
        operation,
        accept_new_host_keys=accept,
        parallel=parallel,
        progress=_progress(out),
        locked=locked,
    )


def _lock_left(out: Output, lock: FleetLock, failed: bool) -> str:
    """Where the lock stands, said on stderr when it is still held somewhere; the phrase for a failure."""
    if lock.kept and not failed:
        out.warn(lock.note())
    return f" ({lock.note()})" if lock.kept else ""


def _report_steps(
    out: Output, verb: str, results: list[fleetops.Step], decision: Decision | None, lock: FleetLock
) -> None:
    failed = [r for r in results if not r.ok]
    if out.as_json:
        out.json(
            {
                "ok": not failed,
                "guard": decision.to_dict() if decision else None,
                "nodes": [r.to_dict() for r in results],
                "lock": lock.state(),
            }
        )
        _fail_if(out, bool(failed))
        return
    for r in results:
        mark = "[green]✓[/]" if r.ok else "[red]✗[/]"
        out.print(f"{mark} {r.node}: {escape(r.detail)} ({r.seconds:.1f}s)", force=not r.ok)
    left = _lock_left(out, lock, bool(failed))
    if failed:
        raise OberError(f"{verb} stopped at {failed[0].node}: {failed[0].detail}{left}", failed[0].fix)


@click.command("diff")
@inventory_option
@targets_argument
@secrets_option
@ssh_options
@json_option
@click.pass_obj
def diff_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    secrets_path: Path | None,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """What `ober fleet push` would change on each node, as a unified diff per file (secret files never shown)."""
    inventory, nodes = _load(inventory_path, targets)
    secrets = load_secrets(secrets_path, required=False)
    rows = fleetops.diff(inventory, nodes, secrets, parallel=parallel, accept_new_host_keys=accept_new_host_keys)
    failed = [name for name, _drift, _text, why in rows if why]
    if out.as_json:
        out.json(
            {
                "ok": not failed,
                "nodes": [
                    {"name": name, "drift": drift.to_dict() if drift else None, "diff": text, "error": why}
                    for name, drift, text, why in rows
                ],
            }
        )
        _fail_if(out, bool(failed))
        return
    for name, drift, text, why in rows:
        if why or drift is None:
            out.print(f"[red]✗ {name}: {escape(why or 'failed')}[/]", force=True)
        elif not drift.drifted:
            unknown = f" (not compared: {', '.join(drift.unknown)})" if drift.unknown else ""
            out.print(f"[green]=[/] {name}: nothing to push{escape(unknown)}")
        else:
            out.print(f"[bold]# {name}[/]: {len(drift.changed) + len(drift.removed)} files would change")
            out.plain(text)
    _fail_if(out, bool(failed))


allow_degraded_option = click.option(
    "--allow-degraded",
    is_flag=True,
    help="A node whose HAProxy serves less than its config (a server left out or down, a startup alert) is a "
    "warning, not a failure that stops here.",
)


@click.command("push")
@inventory_option
@targets_argument
@secrets_option
@click.option("--dry-run", is_flag=True, help="Let each node check the new config and list its changes; apply nothing.")
@allow_degraded_option
@ssh_options
@json_option
@click.pass_obj
def push_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    secrets_path: Path | None,
    dry_run: bool,
    allow_degraded: bool,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Apply the rendered config node by node (validated, reloaded hitlessly, verified, rolled back on failure).

    Stops at the first node that fails, or whose HAProxy then serves degraded (unless --allow-degraded); the nodes
    after it are untouched. Nodes stay in the ECMP set.
    """
    inventory, nodes = _load(inventory_path, targets)
    secrets = load_secrets(secrets_path, required=any(n.config.secret_names() for n in nodes))
    # A dry run changes nothing, so it neither needs the lock nor waits for one.
    with _session(out, inventory, "push", accept_new_host_keys, parallel, locked=not dry_run) as session:
        results = fleetops.push(
            session, nodes, secrets, dry_run=dry_run, progress=_progress(out), allow_degraded=allow_degraded
        )
    _report_pushes(out, results, len(nodes), session.lock)


def _report_pushes(out: Output, results: list[PushResult], total: int, lock: FleetLock) -> None:
    failed = [r for r in results if not r.ok]
    if out.as_json:
        out.json(
            {
                "ok": not failed,
                "nodes": [r.to_dict() for r in results],
                "untouched": total - len(results),
                "lock": lock.state(),
            }
        )
        _fail_if(out, bool(failed))
        return
    for r in results:
        if not r.ok:
            continue
        what = _changes(r.changes)
        done = "would change" if r.dry_run else "changed"
        actions = f"; {', '.join(r.actions)}" if r.actions else ""
        mark = "[yellow]![/]" if r.degraded else "[green]✓[/]"
        out.print(f"{mark} {r.node}: {done}: {escape(what)}{escape(actions)} ({r.seconds:.1f}s)")
        for problem in r.degraded:  # allowed (--allow-degraded), still said
            out.warn(f"{r.node}: degraded: {problem}")
    held = _lock_left(out, lock, bool(failed))
    if failed:
        left = total - len(results)
        raise OberError(
            f"push stopped at {failed[0].error}" + (f" ({left} nodes after it untouched)" if left else "") + held,
            failed[0].fix or "fix it and push again: nodes already done are skipped as unchanged",
        )


def _changes(changes: list[dict[str, str]]) -> str:
    """The changed files, named when few, counted by kind when many."""
    if not changes:
        return "nothing to change"
    if len(changes) <= 4:
        return ", ".join(f"{c['change']} {c['path']}" for c in changes)
    kinds: dict[str, int] = {}
    for change in changes:
        kinds[change["change"]] = kinds.get(change["change"], 0) + 1
    return f"{len(changes)} files ({', '.join(f'{count} {kind}' for kind, count in kinds.items())})"


@click.command("sync")
@inventory_option
@targets_argument
@click.option("--routers", default=None, metavar="HOSTLIST", help="BGP routers [default: the inventory's].")
@click.option("--frontend-http", default=None, metavar="HOSTLIST", help="S3 clients [default: the inventory's].")
@click.option("--backend-http", default=None, metavar="HOSTLIST", help="Monitoring hosts [default: the inventory's].")
@allow_degraded_option
@ssh_options
@json_option
@click.pass_obj
def sync_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    routers: str | None,
    frontend_http: str | None,
    backend_http: str | None,
    allow_degraded: bool,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Apply the whitelists on every node, names resolved there and now; HAProxy reloads without dropping clients.

    Without options each node gets its inventory whitelists again (a DNS change is picked up). Options override
    them on the nodes; put the same values in the inventory, or the next push sets them back.
    """
    inventory, nodes = _load(inventory_path, targets)
    given = {"routers": routers, "frontend_http": frontend_http, "backend_http": backend_http}
    overrides = {key: value for key, value in given.items() if value is not None}
    if overrides:
        out.warn(
            "whitelists given on the command line: put them in the inventory too, or 'ober fleet push' reverts them"
        )
    with _session(out, inventory, "sync", accept_new_host_keys, parallel) as session:
        results = fleetops.sync(session, nodes, overrides, progress=_progress(out), allow_degraded=allow_degraded)
    _report_pushes(out, results, len(nodes), session.lock)


@click.command("router-config")
@inventory_option
@click.option("--flavor", type=click.Choice(FLAVORS), default="frr", show_default=True, help="Router software.")
@click.option("--router", default=None, metavar="ADDRESS", help="Only this router [default: every neighbor].")
@click.option("--with-secrets", is_flag=True, help="Print the MD5 passwords instead of placeholders.")
@secrets_option
@click.pass_obj
def router_config_cmd(
    out: Output,
    inventory_path: Path | None,
    flavor: str,
    router: str | None,
    with_secrets: bool,
    secrets_path: Path | None,
) -> None:
    """Print the upstream routers' BGP configuration for this inventory (FRR or BIRD 2)."""
    inventory = load_inventory(inventory_path)
    secrets: Mapping[str, str] | None = load_secrets(secrets_path) if with_secrets else None
    text = router_config(inventory, flavor, router=router, secrets=secrets)
    if out.as_json:
        out.json({"flavor": flavor, "config": text})
        return
    click.echo(text, nl=False)
