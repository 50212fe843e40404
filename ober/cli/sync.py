"""``ober sync``: who may talk to this node (routers, S3 clients, monitoring), applied without dropping connections."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ober.cli.config import dry_run_option, report, root_option
from ober.cli.options import config_option, secrets_option
from ober.cli.output import Output, json_option
from ober.configure import configure, current_data
from ober.errors import OberError

LISTS = {
    "routers": "BGP routers (also may read /health)",
    "frontend_http": "S3 clients allowed on the VIPs (empty: anyone)",
    "backend_http": "monitoring hosts allowed on the stats port (empty: anyone)",
}


def _ask(current: dict[str, Any]) -> dict[str, str]:
    if not sys.stdin.isatty():
        raise OberError(
            "no whitelist given and no terminal to ask on", "give --routers, --frontend-http and/or --backend-http"
        )
    import inquirer  # slow to import; only the interactive path needs it

    questions = [
        inquirer.Text(key, message=f"{label}", default=" ".join(current.get(key) or [])) for key, label in LISTS.items()
    ]
    answers = inquirer.prompt(questions)
    if answers is None:
        raise OberError("cancelled")
    return {key: str(value) for key, value in answers.items()}


@click.command()
@config_option
@click.option("--routers", default=None, metavar="HOSTLIST", help="BGP routers, e.g. 198.51.100.[1-2].")
@click.option("--frontend-http", default=None, metavar="HOSTLIST", help="S3 clients: hosts, IPs or networks.")
@click.option("--backend-http", default=None, metavar="HOSTLIST", help="Monitoring hosts for the stats port.")
@dry_run_option
@root_option
@secrets_option
@json_option
@click.pass_obj
def sync(
    out: Output,
    config_path: Path,
    routers: str | None,
    frontend_http: str | None,
    backend_http: str | None,
    dry_run: bool,
    root: Path,
    secrets_path: Path | None,
) -> None:
    """Set the whitelists from Slurm hostlists or IPs; names are resolved now; HAProxy reloads without drops."""
    data = current_data(config_path, root)
    if not data:
        raise OberError(f"{config_path}: no configuration yet", "run ober config first")
    given = {"routers": routers, "frontend_http": frontend_http, "backend_http": backend_http}
    chosen = {k: v for k, v in given.items() if v is not None} or _ask(data.get("whitelists") or {})
    whitelists = dict(data.get("whitelists") or {})
    for key, text in chosen.items():
        # Kept as typed (hostlists, names, networks): validated with the config, names resolved at each render.
        whitelists[key] = text
    data["whitelists"] = whitelists
    report(out, configure(data, root=root, secrets_path=secrets_path, dry_run=dry_run))
