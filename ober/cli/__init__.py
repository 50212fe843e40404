"""The ``ober`` command line: parse, call the core, map errors to exit codes. No decisions live here.

:func:`main` takes ``argv`` and returns the exit status, so tests run the CLI in-process.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from enum import IntEnum

import click

from ober.cli.lazy import LazyGroup
from ober.cli.output import Output
from ober.cli.version import version_info
from ober.errors import OberError


class ExitStatus(IntEnum):
    """What ``ober`` exits with."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130


COMMANDS = {
    "backends": "ober.cli.backends:backends",
    "bootstrap": "ober.cli.bootstrap:bootstrap",
    "certs": "ober.cli.certs:certs",
    "config": "ober.cli.config:config_cmd",
    "doctor": "ober.cli.doctor:doctor",
    "drain": "ober.cli.drain:drain",
    "fleet": "ober.cli.fleet:fleet",
    "health": "ober.cli.health:health",
    "lab": "ober.cli.lab:lab",
    "logs": "ober.cli.service:logs",
    "reload": "ober.cli.service:reload",
    "render": "ober.cli.render:render",
    "restart": "ober.cli.service:restart",
    "start": "ober.cli.service:start",
    "status": "ober.cli.status:status",
    "stop": "ober.cli.service:stop",
    "sync": "ober.cli.sync:sync",
    "test": "ober.cli.doctor:node_test",
    "undrain": "ober.cli.drain:undrain",
    "uninstall": "ober.cli.bootstrap:uninstall",
    "upgrade": "ober.cli.upgrade:upgrade",
}
"""Every ``ober`` command, imported only when used (see :mod:`ober.cli.lazy`)."""


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--version", "show_version", is_flag=True, help="Show ober's, HAProxy's and ExaBGP's versions.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option("-v", "--verbose", count=True, help="More detail; tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, show_version: bool, as_json: bool, quiet: bool, verbose: int) -> None:
    """ober: S3 ingress for Ceph RGW (HAProxy + ExaBGP on each node, ECMP across nodes)."""
    out = Output.create(as_json=as_json, quiet=quiet, verbose=verbose)
    ctx.obj = out
    if show_version:
        info = version_info()
        if as_json:
            out.json(info)
        else:
            out.print(", ".join(f"{name} {value or 'not installed'}" for name, value in info.items()), force=True)
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ober`` with ``argv`` (default: the process arguments) and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(arg in ("-v", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"}) for arg in args)
    as_json = "--json" in args
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of raising.
        returned = cli.main(args=args, prog_name="ober", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "ober"
        return _fail(f"{exc.format_message()}", f"see '{command} --help'", as_json, ExitStatus.USAGE)
    except click.Abort:
        return _fail("aborted", None, as_json, ExitStatus.INTERRUPTED)
    except OberError as exc:
        if verbose:
            traceback.print_exc()
        return _fail(exc.message, exc.fix, as_json, ExitStatus.ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", None, as_json, ExitStatus.INTERRUPTED)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        return _fail(
            f"internal error: {exc.__class__.__name__}: {exc}",
            "rerun with -v for a traceback, and report it",
            as_json,
            ExitStatus.ERROR,
        )
    return returned if isinstance(returned, int) else ExitStatus.OK


def _fail(message: str, fix: str | None, as_json: bool, status: ExitStatus) -> int:
    Output.create().error(message, fix, as_json=as_json)
    return status


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
