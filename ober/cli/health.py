"""``ober health``: the process ExaBGP spawns to decide, per VIP, what is announced."""

from __future__ import annotations

from pathlib import Path

import click

from ober.cli.options import config_option
from ober.config import load_config
from ober.healthd import run


@click.command()
@click.argument("vips", nargs=-1)
@config_option
def health(vips: tuple[str, ...], config_path: Path) -> None:
    """Announce each VIP (all, or those named) while HAProxy serves it; run by ExaBGP, speaks its text API."""
    config = load_config(config_path)
    known = {v.address for v in config.vips} | {v.name for v in config.vips}
    unknown = [vip for vip in vips if vip not in known]
    if unknown:
        raise click.BadParameter(f"{unknown[0]} is not a VIP of {config_path}", param_hint="VIPS")
    run(config, list(vips), source=config_path)
