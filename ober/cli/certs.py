"""``ober certs``: the VIPs' certificates on this node.

``reload`` swaps changed certificate files into the running HAProxy (no reload, no dropped connection);
``ober-certs.service`` runs it when ``ober-certs.path`` sees the PEM change, and each line it prints reaches the
journal. ``show``, ``install`` and ``challenge`` are the node's part of ACME (:mod:`ober.acme_node`), which the
fleet's ``ober fleet certs renew`` drives over SSH.
"""

from __future__ import annotations

from pathlib import Path

import click

from ober.acme_node import add_challenge, challenges, install, remove_challenges
from ober.certs import certificate_documents, installed
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


@certs.command("show")
@config_option
@json_option
@click.pass_obj
def certs_show(out: Output, config_path: Path) -> None:
    """The certificate(s) HAProxy's crt reads: issuer, serial, expiry, names; an ACME placeholder says so."""
    config = load_config(config_path)
    found = installed(config)
    if out.as_json:
        out.json({"node": config.name, "certificates": certificate_documents(found)})
        return
    for path, facts, problem in found:
        if facts is None:
            out.print(f"[red]✗[/] {path}: {problem}")
            continue
        what = "[yellow]placeholder[/] (until ober fleet certs renew)" if facts.placeholder else f"by {facts.issuer}"
        out.print(
            f"{path}: {facts.subject} {what}, serial {facts.serial}, expires {facts.not_after:%Y-%m-%d} "
            f"({facts.days_left():.0f} days), names {', '.join(facts.names) or '-'}"
        )


@certs.command("install")
@config_option
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The PEM to install: certificate, chain, private key.",
)
@json_option
@click.pass_obj
def certs_install(out: Output, config_path: Path, source: Path) -> None:
    """Install an ACME certificate (what ober fleet certs renew sends): checked, swapped in without a reload.

    Refused when expired, its key does not match or it does not name every certificates.acme.domains; if HAProxy
    does not take it, the previous certificate is put back and keeps serving.
    """
    config = load_config(config_path)
    done = install(config, source)
    if out.as_json:
        out.json(done.as_dict())
        return
    out.print(f"[green]✓[/] {done.action}: serial {done.facts.serial} from {done.facts.issuer}: {done.detail}")


@certs.group("challenge")
def challenge() -> None:
    """ACME HTTP-01 tokens HAProxy answers on port 80 (set at runtime by ober fleet certs renew; no reload)."""


@challenge.command("add")
@config_option
@click.argument("token")
@click.argument("key_authorization")
@json_option
@click.pass_obj
def challenge_add(out: Output, config_path: Path, token: str, key_authorization: str) -> None:
    """Answer GET /.well-known/acme-challenge/TOKEN with KEY_AUTHORIZATION."""
    config = load_config(config_path)
    added = add_challenge(config, token, key_authorization)
    if out.as_json:
        out.json({"token": token, "added": added})
        return
    out.print(f"[green]✓[/] ACME token {token}: {'answered from now on' if added else 'already answered'}")


@challenge.command("remove")
@config_option
@click.argument("tokens", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every token HAProxy answers.")
@json_option
@click.pass_obj
def challenge_remove(out: Output, config_path: Path, tokens: tuple[str, ...], everything: bool) -> None:
    """Stop answering TOKENS (or --all)."""
    if bool(tokens) == everything:
        raise click.UsageError("name the TOKENS to remove, or --all (not both)")
    config = load_config(config_path)
    gone = remove_challenges(config, list(tokens))
    if out.as_json:
        out.json({"removed": gone})
        return
    out.print(f"[green]✓[/] removed {len(gone)} ACME token(s)")


@challenge.command("list")
@config_option
@json_option
@click.pass_obj
def challenge_list(out: Output, config_path: Path) -> None:
    """The tokens HAProxy answers now."""
    config = load_config(config_path)
    found = challenges(config)
    if out.as_json:
        out.json({"tokens": sorted(found)})
        return
    for token in sorted(found):
        out.plain(token)
