"""Options shared by several commands."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def ssh_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--accept-new-host-keys`` and ``--parallel N`` for commands that reach nodes over SSH.

    ``parallel`` is None when not given: the command then uses the inventory's ``ssh.parallel`` (default 10).
    """
    function = click.option(
        "--parallel",
        type=click.IntRange(1, 256),
        default=None,
        metavar="N",
        help="Nodes worked on at once [default: the inventory's ssh.parallel, 10].",
    )(function)
    return click.option(
        "--accept-new-host-keys",
        is_flag=True,
        help="Trust and record the host key of a node not yet in known_hosts (a changed key is always refused).",
    )(function)
