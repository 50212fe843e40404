"""``ober fleet bootstrap [TARGETS]``: make inventory nodes ober nodes over SSH (the core is ober.remote.bootstrap)."""

from __future__ import annotations

import threading
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ober.cli.fleet import inventory_option, targets_argument
from ober.cli.options import secrets_option, ssh_options
from ober.cli.output import LiveProgress, Output, json_option
from ober.inventory import InventoryNode, load_inventory
from ober.remote.bootstrap import ACTIVATE_TIMEOUT, STEPS, FleetReport, Options, Remote, StepResult, bootstrap_fleet
from ober.remote.connection import connect
from ober.remote.connection import targets as ssh_targets
from ober.secrets import load_secrets

MARKS = {"changed": "[green]✓[/]", "ok": "[dim]·[/]", "planned": "[cyan]→[/]", "failed": "[red]✗[/]", "skipped": "-"}
COLOURS = {"changed": "green", "unchanged": "dim", "planned": "cyan", "failed": "red"}


class NodeProgress(LiveProgress):
    """One spinner line per node showing its current step (on a terminal), and one line per finished step."""

    def __init__(self, out: Output, names: list[str]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        if out.console.is_terminal and not (out.as_json or out.quiet):
            columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
            self.progress = Progress(*columns, console=out.errors, transient=True)
            self.tasks = {name: self.progress.add_task(f"{name}: waiting") for name in names}

    def start(self, node: str, step: str) -> None:
        """Show the step a node is in."""
        with self.lock:
            if self.progress and node in self.tasks:
                self.progress.update(self.tasks[node], description=f"{escape(node)}: {step}")

    def done(self, node: str, result: StepResult) -> None:
        """Print a finished step (quietly when nothing changed: -v shows those too)."""
        if self.out.as_json or self.out.quiet:
            return
        if result.status == "ok" and not self.out.verbose and result.step != "activate":
            return
        line = f"{MARKS.get(result.status, '?')} {escape(node)} {result.step}: {escape(result.detail)}"
        if result.seconds >= 1:
            line += f" [dim]({result.seconds:.1f}s)[/]"
        with self.lock:
            (self.progress.console if self.progress else self.out.errors).print(line)


def summary_table(report: FleetReport) -> Table:
    """One row per node: its outcome and each step's mark."""
    title = "ober fleet bootstrap" + (" --dry-run (nothing changed)" if report.dry_run else "")
    table = Table(title=title)
    table.add_column("node")
    table.add_column("result")
    for step in STEPS:
        table.add_column(step, justify="center")
    table.add_column("detail")
    for node in report.nodes:
        marks = {step.step: MARKS.get(step.status, "?") for step in node.steps}
        failed = node.failed
        detail = f"{failed.step}: {failed.detail}" if failed else ""
        colour = COLOURS.get(node.status, "")
        row = [node.name, f"[{colour}]{node.status}[/]", *(marks.get(step, "") for step in STEPS), escape(detail)]
        table.add_row(*row)
    return table


@click.command("bootstrap")
@inventory_option
@targets_argument
@secrets_option
@click.option("--dry-run", is_flag=True, help="Preflight the nodes and show what each step would do; change nothing.")
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="A prepared wheelhouse for every node [default: built here for each node's Python and architecture].",
)
@click.option(
    "--activate-timeout",
    type=click.FloatRange(1, 3600),
    default=ACTIVATE_TIMEOUT,
    show_default=True,
    help="Seconds a started node has to be verified (BGP established, VIPs announced, HAProxy up).",
)
@ssh_options
@json_option
@click.pass_obj
def bootstrap_cmd(
    out: Output,
    inventory_path: Path | None,
    targets: str | None,
    secrets_path: Path | None,
    dry_run: bool,
    wheelhouse: Path | None,
    activate_timeout: float,
    accept_new_host_keys: bool,
    parallel: int | None,
) -> None:
    """Install ober on nodes over SSH (no internet needed there), push their config, then activate them one by one."""
    inventory = load_inventory(inventory_path)
    nodes = inventory.select(targets)
    secrets = load_secrets(secrets_path, required=any(node.config.secret_names() for node in nodes))
    by_name = {
        target.name: target for target in ssh_targets(inventory, nodes, accept_new_host_keys=accept_new_host_keys)
    }

    def open_node(node: InventoryNode) -> Remote:
        return connect(by_name[node.name])

    options = Options(
        dry_run=dry_run,
        parallel=parallel or inventory.ssh.parallel,
        wheelhouse=wheelhouse,
        activate_timeout=activate_timeout,
    )
    with NodeProgress(out, [node.name for node in nodes]) as progress:
        report = bootstrap_fleet(inventory, nodes, secrets, open_node, options, progress, targets=targets)
    if out.as_json:
        out.json(report.as_dict())
    else:
        out.table(summary_table(report))
        hint = report.resume_hint()
        if hint:
            out.errors.print(f"[bold red]failed:[/] {escape(hint)}")
        elif dry_run:
            out.print("dry run: nothing was changed")
        elif report.changed:
            out.print(f"[green]✓[/] {len(nodes)} nodes bootstrapped and in service")
        else:
            out.print(f"nothing changed: {len(nodes)} nodes already bootstrapped and in service")
    if not report.ok:
        click.get_current_context().exit(1)
