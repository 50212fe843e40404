"""``ober render``: a node's files from its ober.yaml, checked, written to a directory."""

from __future__ import annotations

from pathlib import Path

import click

from ober.build import build_node
from ober.cli.options import no_check_option, secrets_option
from ober.cli.output import Output, json_option
from ober.config import load_config
from ober.files import write_tree
from ober.secrets import load_secrets


@click.command()
@click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(path_type=Path), help="The node's ober.yaml."
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory to write the node's files into (as paths below /).",
)
@secrets_option
@no_check_option
@json_option
@click.pass_obj
def render(out: Output, config_path: Path, out_dir: Path, secrets_path: Path | None, no_check: bool) -> None:
    """Render a node's files and validate them with the real HAProxy and ExaBGP."""
    target = out_dir
    config = load_config(config_path)
    secrets = load_secrets(secrets_path, required=bool(config.secret_names()))
    built = build_node(config, secrets, check=not no_check)
    written = write_tree(target, [("", built.rendered)])
    for note in built.notes:
        out.warn(note)
    if built.placeholders and out.verbose:
        out.print(f"checked with placeholders for files not on this machine: {', '.join(built.placeholders)}")
    if out.as_json:
        out.json(
            {
                "node": config.name,
                "out": str(target.absolute()),
                "digest": built.rendered.digest,
                "checked": not no_check,
                "unchecked": built.unchecked,
                "notes": built.notes,
                "placeholders": built.placeholders,
                "files": [{"path": f.path, "mode": f"{f.mode:04o}", "sha256": f.sha256} for f in built.rendered.files],
            }
        )
        return
    checked = "checked by haproxy -c and exabgp validate" if not no_check else "not checked (--no-check)"
    if built.unchecked:
        checked += "; no ACME certificate to check yet"
    out.print(f"[green]✓[/] {config.name}: {len(written)} files written to {target} ({checked})")
