"""``ober bootstrap`` and ``ober uninstall``: choose the install path, confirm, show progress.

The work is in :mod:`ober.bootstrap` (facts → plan → actions, with a ledger of every change).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from ober import bootstrap as core
from ober.cli.output import LiveProgress, Output, json_option
from ober.config import DEFAULT_INSTALL_PATH
from ober.errors import OberError
from ober.runner import LocalRunner, Runner
from ober.wheelpins import REQUIREMENTS

yes_option = click.option("-y", "--yes", is_flag=True, help="Ask nothing: for scripts and remote runs.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show the plan (every command); change nothing.")
path_argument = click.argument("path", required=False, type=click.Path(path_type=Path))
wheelhouse_option = click.option(
    "--wheelhouse",
    "--wheels",
    "wheelhouse",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Install ExaBGP and ober from this directory of wheels only (pip --no-index): nodes without internet.",
)


# Seams: how this machine's commands run and its facts are read (tests give fakes).
def make_runner() -> Runner:
    """The runner for this machine."""
    return LocalRunner()


def read_host_facts(runner: Runner) -> core.HostFacts:
    """This machine's facts."""
    return core.gather_host_facts(runner)


def read_install_facts(install_path: str) -> core.InstallFacts:
    """The install path's facts."""
    return core.gather_install_facts(install_path)


def read_uninstall_facts(install_path: str, runner: Runner) -> core.UninstallFacts:
    """What uninstall needs to know."""
    return core.gather_uninstall_facts(install_path, runner)


class Reporter(LiveProgress):
    """Prints each step's outcome as it ends; on a terminal, a spinner and a bar while steps run."""

    def __init__(self, out: Output, total: int) -> None:
        self.out = out
        self.results: list[core.StepResult] = []
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        if out.console.is_terminal and not (out.as_json or out.quiet):
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            self.progress = Progress(*columns, TimeElapsedColumn(), console=out.console, transient=True)
            self.task = self.progress.add_task("", total=total)

    def start(self, step: core.Step) -> None:
        """Show which step runs."""
        if self.progress and self.task is not None:
            self.progress.update(self.task, description=escape(step.title))

    def done(self, result: core.StepResult) -> None:
        """One line per step: done (✓), nothing to do (·) or failed (✗); then its warnings."""
        self.results.append(result)
        if self.progress and self.task is not None:
            self.progress.advance(self.task)
        title, detail = escape(result.step.title), escape(result.detail)
        if result.error:
            self.out.print(f"[bold red]✗[/] {title}: {escape(result.error)}", force=not self.out.as_json)
        elif result.changed:
            self.out.print(f"[green]✓[/] {title}: {detail} [dim]({result.seconds:.1f}s)[/]")
        elif result.step.name == "host":
            self.out.print(f"[green]✓[/] {title}: {detail}")
        else:
            self.out.print(f"[dim]·[/] {title}: nothing to do: {detail}")
        for warning in result.warnings:
            self.out.warn(warning)


def fail_with_steps(out: Output, doc: dict[str, Any], reporter: Reporter, error: OberError) -> None:
    """Raise ``error``; with --json first print the one document: the steps done so far, the error and its fix."""
    if not out.as_json:
        raise error
    steps = [step_doc(result.step, result) for result in reporter.results]
    changed = any(result.changed for result in reporter.results)
    out.json({**doc, "changed": changed, "steps": steps, "error": error.message, "fix": error.fix})
    click.get_current_context().exit(1)


def _interactive(out: Output) -> bool:
    return sys.stdin.isatty() and not out.as_json


def normalized(path: Path) -> str:
    """An absolute, normalized path (symlinks kept: they are the user's choice)."""
    return os.path.normpath(path.absolute())


def step_doc(step: core.Step, result: core.StepResult | None = None) -> dict[str, Any]:
    """A step (and how it went) for --json."""
    doc: dict[str, Any] = {"name": step.name, "title": step.title, "changes": step.changes, "why": step.why}
    doc["commands"] = step.commands
    doc["warnings"] = list(result.warnings if result else step.warnings)
    if result is not None:
        doc.update(changed=result.changed, detail=result.detail, seconds=round(result.seconds, 2), error=result.error)
    return doc


def show_plan(out: Output, steps: Sequence[core.Step], *, everything: bool) -> None:
    """Each step that changes something with its commands (``everything``: the others too, with their reason)."""
    for step in steps:
        if step.changes:
            out.print(f"[bold]•[/] {escape(step.title)}: {escape(step.why)}")
            for command in step.commands:
                out.print(f"    [dim]{escape(command)}[/]")
        elif everything:
            out.print(
                f"[dim]·[/] {escape(step.title)}: {'' if step.name == 'host' else 'nothing to do: '}{escape(step.why)}"
            )
        if everything:
            for warning in step.warnings:
                out.warn(warning)


def confirm(out: Output, steps: Sequence[core.Step], question: str, *, default: bool) -> None:
    """Show what will change and ask; no terminal to ask on is an error (use --yes)."""
    if not _interactive(out):
        raise OberError("this asks for a confirmation, and there is no terminal to ask on", "rerun with --yes")
    show_plan(out, steps, everything=False)
    if not click.confirm(question, default=default):
        raise click.Abort


def _choose_install_path(out: Output, host: core.HostFacts, path: Path | None, yes: bool) -> str:
    """PATH, else this venv's parent, else /opt/ober (asked for unless --yes)."""
    if path is not None:
        return normalized(path)
    in_venv = core.default_install_path(host)
    if in_venv is not None:
        out.print(f"installing into {in_venv}, where this ober's venv is")
        return in_venv
    if yes:
        return DEFAULT_INSTALL_PATH
    if not _interactive(out):
        raise OberError(
            "no install path given, and no terminal to ask on", f"give PATH, or --yes for {DEFAULT_INSTALL_PATH}"
        )
    return normalized(Path(click.prompt("Install ober into", default=DEFAULT_INSTALL_PATH)))


@click.command()
@path_argument
@yes_option
@wheelhouse_option
@dry_run_option
@json_option
@click.pass_obj
def bootstrap(out: Output, path: Path | None, yes: bool, wheelhouse: Path | None, dry_run: bool) -> None:
    """Make this machine an ober node: HAProxy, the venv with ExaBGP, directories; then run `ober config`.

    PATH is the install path (default: the parent of the venv ober runs in, else /opt/ober, asked for). Every
    change is recorded in PATH/etc/.bootstrap.json, which `ober uninstall` undoes; a second run changes nothing.
    """
    runner = make_runner()
    host = read_host_facts(runner)
    core.check_host(host)  # refuse before asking anything
    install = _choose_install_path(out, host, path, yes or dry_run)
    wheels = normalized(wheelhouse) if wheelhouse else None
    pinned = wheels is not None and Path(wheels, REQUIREMENTS).is_file()
    options = core.BootstrapOptions(install, wheels, pinned)
    steps = core.plan_bootstrap(core.Facts(host, read_install_facts(install)), options)
    hint = core.next_hint(install, host.network)
    changes = any(step.changes for step in steps)
    if dry_run:
        if out.as_json:
            out.json({"install_path": install, "dry_run": True, "steps": [step_doc(s) for s in steps], "next": hint})
            return
        show_plan(out, steps, everything=True)
        out.print("dry run: nothing changed" if changes else "nothing to do: this node is bootstrapped")
        return
    if changes and not yes:
        confirm(out, steps, f"Bootstrap ober into {install}?", default=True)
    ledger = core.Ledger.load(core.ledger_path(install))
    doc: dict[str, Any] = {"install_path": install, "dry_run": False}
    with Reporter(out, len(steps)) as reporter:
        try:
            core.run_steps(steps, runner, ledger, reporter=reporter)
        except KeyboardInterrupt:
            failure = OberError(
                "interrupted: bootstrap stopped midway (what it did is in its ledger)",
                "run ober bootstrap again to finish, or ober uninstall to undo it",
            )
            fail_with_steps(out, doc, reporter, failure)
        except OberError as exc:
            fail_with_steps(out, doc, reporter, exc)
    if out.as_json:
        steps_done = [step_doc(result.step, result) for result in reporter.results]
        out.json({**doc, "changed": changes, "steps": steps_done, "next": hint})
        return
    done = "bootstrapped" if changes else "nothing to do: already bootstrapped"
    out.print(f"[green]✓[/] {escape(install)}: {done}")
    out.print(escape(hint), force=True)


@click.command()
@path_argument
@yes_option
@click.option("--keep-config", is_flag=True, help="Keep ober.yaml and its backups (for a later bootstrap).")
@dry_run_option
@json_option
@click.pass_obj
def uninstall(out: Output, path: Path | None, yes: bool, keep_config: bool, dry_run: bool) -> None:
    """Undo bootstrap: stop ober's units, remove ober config's files, then exactly what bootstrap added.

    PATH is the install path (default: the parent of the venv ober runs in, else /opt/ober). Packages go only if
    bootstrap installed them; units it disabled are enabled again; files ober did not write are kept.
    """
    runner = make_runner()
    host = read_host_facts(runner)
    if host.euid != 0:
        raise OberError(f"ober uninstall must run as root (running as uid {host.euid})", "run it with sudo")
    install = normalized(path) if path else core.default_install_path(host) or DEFAULT_INSTALL_PATH
    steps = core.plan_uninstall(read_uninstall_facts(install, runner), keep_config=keep_config)
    if not core.uninstall_changes(steps):
        if out.as_json:
            out.json({"install_path": install, "dry_run": dry_run, "steps": [], "nothing": True})
            return
        out.print(f"nothing to uninstall at {escape(install)}: no bootstrap ledger and no files of ober config's")
        return
    if dry_run:
        if out.as_json:
            out.json({"install_path": install, "dry_run": True, "steps": [step_doc(step) for step in steps]})
            return
        show_plan(out, steps, everything=True)
        out.print("dry run: nothing changed")
        return
    if not yes:
        confirm(out, steps, f"Remove ober from {install}?", default=False)
    ledger = core.Ledger.load(core.ledger_path(install))
    with Reporter(out, len(steps)) as reporter:
        results = core.run_steps(steps, runner, ledger, reporter=reporter, keep_going=True)
    failed = [result for result in results if result.error]
    if out.as_json:
        doc: dict[str, Any] = {"install_path": install, "dry_run": False}
        doc["steps"] = [step_doc(result.step, result) for result in results]
        if failed:
            doc.update(error=f"{len(failed)} steps failed", fix="fix what failed and run ober uninstall again")
        out.json(doc)
        if failed:
            click.get_current_context().exit(1)
        return
    if failed:
        first = failed[0]
        raise OberError(
            f"uninstall did not finish: {len(failed)} steps failed (first: {first.step.title}: {first.error})",
            "fix that and run ober uninstall again: the ledger still lists what is left",
        )
    out.print(f"[green]✓[/] ober removed from {escape(install)}")
