"""``ober certs reload``: swap changed certificate files into the running HAProxy (no reload, no dropped connection).

``ober-certs.service`` runs it when ``ober-certs.path`` sees the PEM change; each line it prints reaches the journal.
"""

from __future__ import annotations

from pathlib import Path

import click

from ober.certswap import swap_settled
from ober.cli.options import config_option
from ober.cli.output import Output, json_option
from ober.config import load_config
from ober.errors import OberError


@click.group("certs")
def certs() -> None:
    """TLS certificates of the VIPs."""


@certs.command("reload")
@config_option
@json_option
@click.pass_obj
def certs_reload(out: Output, config_path: Path) -> None:
    """Hand changed PEM files to the running HAProxy; an invalid one is refused and the old one keeps serving."""
    config = load_config(config_path)
    outcomes = swap_settled(config)
    refused = [outcome for outcome in outcomes if outcome.action == "refused"]
    summary = f"{len(refused)} of {len(outcomes)} certificate files refused; HAProxy keeps serving the previous ones"
    if out.as_json:
        doc: dict[str, object] = {"certificates": [outcome.as_dict() for outcome in outcomes]}
        if refused:
            doc.update(error=summary, fix="fix the PEM ('ober test' shows why) and write it again")
        out.json(doc)
        if refused:
            click.get_current_context().exit(1)
        return
    for outcome in outcomes:
        # Plain lines with the [ober] prefix: this runs under systemd and its output is the journal entry.
        line = f"[ober] certificate {outcome.path}: {outcome.action}: {outcome.detail}"
        if outcome.action == "refused":
            click.echo(line, err=True)  # as it is: the journal shows stderr lines at the same level
        else:
            out.plain(line)
    if not outcomes:
        out.plain(f"[ober] no certificate files at {config.certificates.crt_path(config.install_path)}")
    if refused:
        raise OberError(summary, "fix the PEM ('ober test' shows why) and write it again")
