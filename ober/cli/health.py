"""``ober health``: the process ExaBGP spawns to decide, per VIP, what is announced."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ober.config import CONFIG_RELATIVE, DEFAULT_INSTALL_PATH, load_config
from ober.healthd import run

DEFAULT_CONFIG = f"{DEFAULT_INSTALL_PATH}/{CONFIG_RELATIVE}"


@click.command()
@click.argument("vips", nargs=-1)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("OBER_CONFIG", DEFAULT_CONFIG),
    show_default=DEFAULT_CONFIG,
    help="The node's ober.yaml [or $OBER_CONFIG].",
)
def health(vips: tuple[str, ...], config_path: Path) -> None:
    """Announce each VIP (all, or those named) while HAProxy serves it; run by ExaBGP, speaks its text API."""
    config = load_config(config_path)
    known = {v.address for v in config.vips} | {v.name for v in config.vips}
    unknown = [vip for vip in vips if vip not in known]
    if unknown:
        raise click.BadParameter(f"{unknown[0]} is not a VIP of {config_path}", param_hint="VIPS")
    run(config, list(vips))
