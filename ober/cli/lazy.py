"""Subcommands imported only when they run.

``ober health`` is the process ExaBGP spawns and restarts: importing every command (the fleet side pulls in Fabric,
paramiko and cryptography) cost it ~2.5 s and ~57 MiB on a busy node (bench/footprint.py). A command named here is
imported when it is invoked, or when ``--help`` lists it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

from ober.cli.output import add_global_options


class LazyGroup(click.Group):
    """A click group whose subcommands are given as ``name → "module:attribute"``."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})
        self._with_globals: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand name, loaded or not."""
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The subcommand, imported on first use, with the global options (``--json``, ``-q``, ``-v``)."""
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        found = super().get_command(ctx, cmd_name)
        if found is not None and cmd_name not in self._with_globals:
            # Users put them after the command too (`ober fleet inventory -v`); click knows only its own options.
            add_global_options(found)
            self._with_globals.add(cmd_name)
        return found
