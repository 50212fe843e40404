"""``ober fleet certs renew|status|timer``: one ACME certificate for the ECMP fleet (core: ober.remote.acmefleet)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ober.atomic import write_atomic
from ober.cli.fleet import inventory_option, targets_argument
from ober.cli.fleet_ops import _fail_if, _load, _lock_left, _progress, _session, days_cell
from ober.cli.options import ssh_options
from ober.cli.output import Output, json_option
from ober.errors import OberError
from ober.inventory import InventoryNode, inventory_path
from ober.remote import acmefleet
from ober.remote.connection import Connection
from ober.remote.connection import targets as ssh_targets
from ober.remote.facts import on_nodes
from ober.remote.nodeclient import NodeCert, NodeClient
from ober.render import render_template

state_option = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=f"The ACME account and certificate (secrets) [default: ${acmefleet.STATE_ENV} or "
    "~/.local/state/ober/acme/SITE].",
)


@click.group("certs")
def certs_cmd() -> None:
    """ACME certificates for the fleet: one order solved on every node, pushed node by node without a reload."""


@certs_cmd.command("renew")
@inventory_option
@targets_argument
@click.option("--force", is_flag=True, help="Order a new certificate even when the current one is not due.")
@click.option("--dry-run", is_flag=True, help="Say whether a certificate would be ordered and which nodes get it.")
@click.option(
    "--ca-bundle",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="CAs to trust for the ACME server's TLS (a private ACME server) [default: certificates.acme.ca_bundle, "
    "else the system's].",
)
@state_option
@ssh_options
@json_option
@click.pass_obj
def renew_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    force: bool,
    dry_run: bool,
    ca_bundle: Path | None,
    state_dir: Path | None,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Renew the ACME certificate when due (fewer than 30 days or a third of its life left) and push it.

    Each HTTP-01 token goes on every node of the inventory first (the ACME server's request may reach any node of
    the ECMP set) and is removed from all of them afterwards. The certificate then goes to TARGETS (default all)
    one node at a time, swapped in without a reload and checked by serial through each VIP; a node that fails keeps
    its old certificate and the command stops there. A node that missed an earlier push gets the current
    certificate without a new order.
    """
    inventory, nodes = _load(inventory_path, targets)
    acme = acmefleet.acme_of(inventory, nodes)
    state = acmefleet.State(state_dir or acmefleet.default_state_dir(inventory.site))
    with _session(out, inventory, "certs renew", accept_new_host_keys, parallel, locked=not dry_run) as session:
        result = acmefleet.renew(
            session,
            inventory,
            nodes,
            state,
            force=force,
            dry_run=dry_run,
            ca_bundle=str(ca_bundle.absolute()) if ca_bundle else None,
            progress=_progress(out),
        )
    if out.as_json:
        out.json({**result.to_dict(), "domains": list(acme.domains), "lock": session.lock.state()})
        _fail_if(out, not result.ok)
        return
    if dry_run:
        verdict = f"would order a new certificate: {result.reason}" if result.reason else "not due: no order"
        out.print(f"{escape(verdict)} (dry run: nothing changed)")
    elif result.issued:
        issued = result.issued
        out.print(
            f"[green]✓[/] issued serial {issued.serial} by {escape(issued.issuer)} for "
            f"{escape(', '.join(issued.names))}, until {issued.not_after:%Y-%m-%d} ({escape(result.reason or '')})"
        )
    elif result.current:
        out.print(f"not due ({result.current.days_left():.0f} days left): no new certificate ordered")
    for name, why in result.leftovers.items():
        out.warn(f"{name}: an ACME token may be left in HAProxy ({why}); its next reload forgets it")
    for step in result.steps:
        mark = "[green]✓[/]" if step.ok else "[red]✗[/]"
        out.print(f"{mark} {step.node}: {escape(step.detail)} ({step.seconds:.1f}s)", force=not step.ok)
    failed = [step for step in result.steps if not step.ok]
    left = _lock_left(out, session.lock, bool(failed))
    if failed:
        untouched = len(nodes) - len(result.steps)
        rest = f" ({untouched} nodes after it untouched)" if untouched else ""
        raise OberError(
            f"certs renew stopped at {failed[0].node}: {failed[0].detail}{rest}{left}",
            failed[0].fix or "fix it and run again: nodes that serve the certificate already are skipped",
        )


@certs_cmd.command("status")
@inventory_option
@targets_argument
@state_option
@ssh_options
@json_option
@click.pass_obj
def status_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    state_dir: Path | None,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Each node's certificate (serial, issuer, days to expiry, placeholder) and the workstation's, whether due.

    Exits 1 when a node cannot tell, serves a placeholder, or serves another certificate than the workstation's.
    """
    inventory, nodes = _load(inventory_path, targets)
    state = acmefleet.State(state_dir or acmefleet.default_state_dir(inventory.site))
    held = state.certificate() if any(node.config.certificates.acme for node in nodes) else None
    current = held[1] if held else None

    def work(conn: Connection, node: InventoryNode) -> tuple[NodeCert, ...]:
        return NodeClient(conn, node).certificates()

    reach = ssh_targets(inventory, nodes, accept_new_host_keys=accept_new_host_keys)
    outcomes = on_nodes(nodes, reach, work, parallel=parallel or inventory.ssh.parallel)
    rows: list[tuple[str, tuple[NodeCert, ...], str | None]] = [
        (node.name, outcome.value or (), None if outcome.ok else (outcome.error or "failed"))
        for node, outcome in zip(nodes, outcomes, strict=True)
    ]
    bad = [
        name
        for name, certs, error in rows
        if error
        or any(cert.placeholder or cert.error for cert in certs)
        or (current is not None and [cert.serial for cert in certs] != [current.serial])
    ]
    due = acmefleet.renewal_due(current) if current else None
    if out.as_json:
        out.json(
            {
                "ok": not bad,
                "workstation": {
                    "state_dir": str(state.dir),
                    "certificate": current.as_dict() if current else None,
                    "due": due,
                },
                "nodes": [
                    {"node": name, "certificates": [c.to_dict() for c in certs], "error": error}
                    for name, certs, error in rows
                ],
            }
        )
        _fail_if(out, bool(bad))
        return
    table = Table(title=f"site {inventory.site}: certificates")
    for column in ("node", "file", "serial", "issuer", "expires", "days left"):
        table.add_column(column)
    for name, certs, error in rows:
        if error:
            table.add_row(name, f"[red]{escape(error)}[/]", "-", "-", "-", "-")
        for cert in certs:
            table.add_row(
                name,
                escape(Path(cert.path).name),
                escape(cert.serial or "-"),
                "[yellow]placeholder[/]" if cert.placeholder else escape(cert.issuer or cert.error or "-"),
                escape((cert.not_after or "-")[:10]),
                days_cell(cert),
            )
    out.table(table)
    if current:
        when = f"due: {due}" if due else "not due"
        out.print(
            f"workstation ({escape(str(state.dir))}): serial {current.serial}, until {current.not_after:%Y-%m-%d} "
            f"({current.days_left():.0f} days; {escape(when)})"
        )
    elif any(node.config.certificates.acme for node in nodes):
        out.print(f"workstation ({escape(str(state.dir))}): no ACME certificate yet: ober fleet certs renew")
    if bad:
        raise OberError(
            f"{', '.join(bad)}: not serving the fleet's current certificate (or could not tell)",
            "ober fleet certs renew (pushes it; orders one when due)",
        )


@certs_cmd.command("timer")
@inventory_option
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option(
    "--write",
    "write_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write the units into this directory (e.g. ~/.config/systemd/user) instead of printing them.",
)
@click.option("--on-calendar", default="daily", show_default=True, help="systemd OnCalendar= of the timer.")
@json_option
@click.pass_obj
def timer_cmd(
    out: Output, inventory_path: Path | None, state_dir: Path | None, write_dir: Path | None, on_calendar: str
) -> None:
    """A systemd user timer that runs 'ober fleet certs renew' for this inventory (daily by default).

    Renewal runs on this workstation (it holds the ACME account and reaches the nodes over SSH), so the timer is a
    user unit here, not on the nodes. Then: systemctl --user daemon-reload; systemctl --user enable --now
    ober-fleet-certs.timer (and loginctl enable-linger USER, so it runs while you are logged out).
    """
    if "\n" in on_calendar or not on_calendar.strip():
        raise click.UsageError("--on-calendar: one systemd calendar expression, e.g. daily or 'Mon *-*-* 04:00'")
    source = inventory_path_of(inventory_path)
    units = timer_units(source, state_dir, on_calendar)
    if write_dir is None:
        if out.as_json:
            out.json({"units": units})
            return
        for name, text in units.items():
            out.plain(f"# {name}\n{text}")
        return
    write_dir.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        write_atomic(write_dir / name, text, 0o644)
    if out.as_json:
        out.json({"written": [str(write_dir / name) for name in units]})
        return
    out.print(f"[green]✓[/] wrote {', '.join(units)} to {write_dir}")
    out.print("  then: systemctl --user daemon-reload && systemctl --user enable --now ober-fleet-certs.timer")


def inventory_path_of(given: Path | None) -> Path:
    """The inventory's absolute path, checked (the timer must find it from any working directory)."""
    from ober.inventory import load_inventory

    load_inventory(given)  # refuse a broken inventory now, not at 3 a.m.
    return inventory_path(given).absolute()


def timer_units(inventory: Path, state_dir: Path | None, on_calendar: str) -> dict[str, str]:
    """The service and timer unit texts for ``ober fleet certs renew -i INVENTORY``."""
    program = shutil.which("ober") or ""
    argv = [program] if program else [sys.executable, "-m", "ober"]
    argv = [str(Path(argv[0]).absolute()), *argv[1:], "fleet", "certs", "renew", "-i", str(inventory)]
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir.absolute())]
    context = {"exec_start": " ".join(shlex.quote(part) for part in argv), "on_calendar": on_calendar.strip()}
    return {
        "ober-fleet-certs.service": render_template("systemd/ober-fleet-certs.service.j2", context),
        "ober-fleet-certs.timer": render_template("systemd/ober-fleet-certs.timer.j2", context),
    }
