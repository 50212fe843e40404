"""Where the CLI writes: rich on a terminal (colour only there), plain text otherwise, JSON with ``--json``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table


@dataclass
class Output:
    """The CLI's output settings and consoles."""

    as_json: bool
    quiet: bool
    verbose: int
    console: Console
    errors: Console

    @classmethod
    def create(cls, *, as_json: bool = False, quiet: bool = False, verbose: int = 0) -> Output:
        """Consoles on the current stdout/stderr; colour only when they are terminals and NO_COLOR is unset."""
        no_color = bool(os.environ.get("NO_COLOR"))
        # Off a terminal rich would wrap tables at 80 columns; pipes and logs want whole lines.
        width = None if sys.stdout.isatty() else 200
        return cls(
            as_json=as_json,
            quiet=quiet,
            verbose=verbose,
            console=Console(file=sys.stdout, no_color=no_color, highlight=False, soft_wrap=True, width=width),
            errors=Console(file=sys.stderr, no_color=no_color, highlight=False, soft_wrap=True),
        )

    def print(self, text: str, *, force: bool = False) -> None:
        """A line of human output (markup allowed); silent with -q or --json unless ``force``."""
        if force or not (self.quiet or self.as_json):
            self.console.print(text)

    def plain(self, text: str) -> None:
        """Text printed as it is, no markup (diffs, file contents)."""
        if not self.as_json:
            self.console.print(escape(text), markup=True)

    def table(self, table: Table) -> None:
        """A rich table (human output only; silent with -q, like every other line that is not an error)."""
        if not (self.as_json or self.quiet):
            self.console.print(table)

    def json(self, data: Any) -> None:
        """One JSON document on stdout."""
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")

    def warn(self, text: str) -> None:
        """A warning on stderr (kept with -q: it may matter)."""
        self.errors.print(f"[yellow]warning:[/] {escape(text)}")

    def error(self, message: str, fix: str | None, *, as_json: bool) -> None:
        """The one error line (stderr), or a JSON error document (stdout)."""
        if as_json:
            self.json({"error": message, "fix": fix})
            return
        line = f"[bold red]error:[/] {escape(message)}"
        if fix:
            line += f" [dim](fix: {escape(fix)})[/]"
        self.errors.print(line)


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, Output):
        ctx.obj.as_json = True


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and isinstance(ctx.obj, Output):
        ctx.obj.quiet = True


def _add_verbose(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value and isinstance(ctx.obj, Output):
        ctx.obj.verbose += value


json_option = click.option(
    "--json", "as_json", is_flag=True, expose_value=False, callback=_set_json, help="Machine-readable output on stdout."
)


def global_options() -> list[click.Option]:
    """``--json``, ``-q`` and ``-v`` as options of a subcommand, so they work after it as well as before it."""
    return [
        click.Option(["--json"], is_flag=True, expose_value=False, callback=_set_json, help="Machine-readable output."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_set_quiet, help="Only errors."),
        click.Option(
            ["-v", "--verbose"], count=True, expose_value=False, callback=_add_verbose, help="More detail; tracebacks."
        ),
    ]


def add_global_options(command: click.Command) -> None:
    """Give ``command`` (and, for a plain group, its subcommands) the global options it does not have yet."""
    taken = {name for param in command.params for name in getattr(param, "opts", [])}
    command.params.extend(option for option in global_options() if not taken & set(option.opts))
    if isinstance(command, click.Group) and not hasattr(command, "lazy"):
        for sub in command.commands.values():
            add_global_options(sub)


class LiveProgress:
    """A context that shows ``self.progress`` (when a subclass made one: terminals only) while it is open."""

    progress: Progress | None = None

    def __enter__(self) -> Self:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.progress:
            self.progress.stop()
