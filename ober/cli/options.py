"""Options shared by several commands."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ober.config import CONFIG_RELATIVE, DEFAULT_INSTALL_PATH

DEFAULT_CONFIG = f"{DEFAULT_INSTALL_PATH}/{CONFIG_RELATIVE}"

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("OBER_CONFIG", DEFAULT_CONFIG),
    show_default=DEFAULT_CONFIG,
    help="The node's ober.yaml [or $OBER_CONFIG].",
)

secrets_option = click.option(
    "--secrets",
    "secrets_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Secrets file [default: $OBER_SECRETS or ~/.ober/login].",
)

no_check_option = click.option("--no-check", is_flag=True, help="Skip haproxy -c and exabgp validate.")
