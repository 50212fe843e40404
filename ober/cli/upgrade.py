"""``ober upgrade``: show installed and available HAProxy, ExaBGP and ober; upgrade after asking.

The work is in :mod:`ober.upgrade` (facts → plan) and :func:`ober.bootstrap.run_steps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ober import bootstrap as core
from ober import upgrade as upgrade_core
from ober.cli.bootstrap import (
    Reporter,
    confirm,
    dry_run_option,
    fail_with_steps,
    make_runner,
    normalized,
    path_argument,
    read_host_facts,
    show_plan,
    step_doc,
    wheelhouse_option,
    yes_option,
)
from ober.cli.output import Output, json_option
from ober.config import DEFAULT_INSTALL_PATH
from ober.errors import OberError
from ober.runner import Runner


def read_upgrade_facts(
    install_path: str, runner: Runner, manager: str, wheelhouse: Path | None
) -> upgrade_core.UpgradeFacts:
    """What upgrade needs to know (a seam for tests)."""
    return upgrade_core.gather_upgrade_facts(install_path, runner, manager=manager, wheelhouse=wheelhouse)


def _versions_table(out: Output, facts: upgrade_core.UpgradeFacts) -> None:
    table = Table("component", "installed", "available", "from")
    rows = (("HAProxy", facts.haproxy), ("ExaBGP", facts.exabgp), ("ober", facts.ober))
    for name, versions in rows:
        table.add_row(name, versions.installed or "-", versions.available or "unknown", versions.source)
    if not out.quiet:
        out.table(table)


@click.command()
@path_argument
@wheelhouse_option
@yes_option
@dry_run_option
@json_option
@click.pass_obj
def upgrade(out: Output, path: Path | None, wheelhouse: Path | None, yes: bool, dry_run: bool) -> None:
    """Upgrade HAProxy (then a hitless reload), and ober with its ExaBGP (then ober-bgp restarts).

    PATH is the install path (default: the parent of the venv ober runs in, else /opt/ober). With --wheelhouse,
    ober comes from that directory of wheels only (offline); otherwise from the package index.
    """
    runner = make_runner()
    host = read_host_facts(runner)
    if host.euid != 0 and not dry_run:
        raise OberError(f"ober upgrade must run as root (running as uid {host.euid})", "run it with sudo")
    if host.package_manager is None:
        raise OberError("neither apt-get nor dnf is installed here", "use Debian 12+, Ubuntu 24.04+ or RHEL 10+")
    install = normalized(path) if path else core.default_install_path(host) or DEFAULT_INSTALL_PATH
    wheels = Path(normalized(wheelhouse)) if wheelhouse else None
    facts = read_upgrade_facts(install, runner, host.package_manager, wheels)
    steps = upgrade_core.plan_upgrade(facts)
    changes = any(step.changes for step in steps)
    versions = {"haproxy": facts.haproxy, "exabgp": facts.exabgp, "ober": facts.ober}
    doc: dict[str, Any] = {
        "install_path": install,
        "dry_run": dry_run,
        "versions": {name: value.as_dict() for name, value in versions.items()},
    }
    if not out.as_json:
        _versions_table(out, facts)
    if dry_run or not changes:
        if out.as_json:
            out.json({**doc, "changed": False, "steps": [step_doc(step) for step in steps]})
            return
        show_plan(out, steps, everything=True)
        out.print("dry run: nothing changed" if dry_run and changes else "nothing to do: everything is up to date")
        return
    if not yes:
        confirm(out, steps, f"Upgrade {install}?", default=True)
    ledger = core.Ledger.load(core.ledger_path(install))
    with Reporter(out, len(steps)) as reporter:
        try:
            core.run_steps(steps, runner, ledger, reporter=reporter)
        except OberError as exc:
            fail_with_steps(out, doc, reporter, OberError(exc.message, "fix that and run ober upgrade again"))
    if out.as_json:
        out.json({**doc, "changed": True, "steps": [step_doc(result.step, result) for result in reporter.results]})
        return
    out.print(f"[green]✓[/] {escape(install)}: upgraded; check it with: ober status")
