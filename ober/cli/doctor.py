"""``ober doctor`` and ``ober test``: run the node checks, show each finding with its fix, exit 1 on a failure."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from ober.checks.base import PROBE_TIMEOUT, Check
from ober.checks.doctor import run_doctor, run_test
from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.errors import OberError

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}

secrets_option = click.option(
    "--secrets",
    "secrets_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Secrets file, for MD5 on the BGP probe, rendering with real values and the SSE-C probe's S3 keys "
    "(s3_probe_access_key, s3_probe_secret_key) [default: $OBER_SECRETS or ~/.ober/login, if present].",
)
timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60.0),
    default=PROBE_TIMEOUT,
    show_default=True,
    help="Seconds for each network probe.",
)


def report(out: Output, checks: list[Check]) -> None:
    """Show the checks (a table, or the JSON list), and fail with a one-line summary when any check failed.

    Raises:
        OberError: some check failed (human output). With ``--json`` stdout holds one document, with ``error``
            and ``fix`` when something failed, and the exit status is 1.
    """
    failed = [check for check in checks if check.status == "fail"]
    summary = f"{len(failed)} of {len(checks)} checks failed"
    if out.as_json:
        doc: dict[str, object] = {"checks": [check.as_dict() for check in checks]}
        if failed:
            doc.update(error=summary, fix="see each failed check's fix")
        out.json(doc)
        if failed:
            click.get_current_context().exit(1)
        return
    else:
        # -q keeps only what needs doing.
        rows = failed if out.quiet else checks
        if rows:
            table = Table()
            for column in ("status", "check", "detail", "fix"):
                table.add_column(column)
            for check in rows:
                # Text cells: tool output may hold brackets that rich would read as markup.
                status = Text(check.status, style=STYLES[check.status])
                table.add_row(status, Text(check.name), Text(check.detail), Text(check.fix or ""))
            out.table(table)
    if failed:
        raise OberError(summary, "see each failed check's fix")
    warnings = sum(check.status == "warn" for check in checks)
    note = f", {warnings} warnings" if warnings else ""
    out.print(f"[green]✓[/] {len(checks)} checks, none failed{note}")


@click.command()
@config_option
@secrets_option
@timeout_option
@json_option
@click.pass_obj
def doctor(out: Output, config_path: Path, secrets_path: Path | None, timeout: float) -> None:
    """Diagnose this node: Python, root and OS (even before bootstrap); then units, config, BGP, RGW, certificates.

    With S3 probe keys in the secrets file, an SSE-C upload and download through each VIP over TLS shows whether
    RGW believes requests reached ober over TLS.
    """
    report(out, run_doctor(config_path, secrets_path=secrets_path, timeout=timeout))


@click.command("test")
@config_option
@secrets_option
@timeout_option
@json_option
@click.pass_obj
def node_test(out: Output, config_path: Path, secrets_path: Path | None, timeout: float) -> None:
    """Test this node's config without starting anything: validity, BGP TCP to the routers, RGW, certificates.

    With S3 probe keys in the secrets file, an SSE-C upload and download straight to each backend group, with the
    headers HAProxy adds, shows whether RGW trusts them ('rgw trust forwarded https').
    """
    report(out, run_test(config_path, secrets_path=secrets_path, timeout=timeout))
