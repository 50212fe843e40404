"""Turning names in whitelists into addresses, at run time (HAProxy's ``src -f`` files take addresses only)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable

from ober.config import NodeConfig
from ober.errors import ConfigError
from ober.hostlists import is_ipv4

Lookup = Callable[[str], list[str]]


def lookup_ipv4(name: str) -> list[str]:
    """The IPv4 addresses of ``name``, sorted (so rendering stays deterministic)."""
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def resolve_entries(entries: tuple[str, ...], field: str, lookup: Lookup = lookup_ipv4) -> tuple[str, ...]:
    """Replace each name by its addresses; a name that does not resolve is an error naming it."""
    resolved: list[str] = []
    for entry in entries:
        if "/" in entry or is_ipv4(entry):
            addresses = [entry]
        else:
            addresses = lookup(entry)
            if not addresses:
                raise ConfigError(
                    f"{field}: {entry!r} does not resolve to an IPv4 address",
                    "check the name (DNS or /etc/hosts), or give its address",
                )
        resolved.extend(address for address in addresses if address not in resolved)
    return tuple(resolved)


def resolve_whitelists(config: NodeConfig, lookup: Lookup = lookup_ipv4) -> NodeConfig:
    """The same config with every whitelist name replaced by its addresses."""
    lists = config.whitelists
    return dataclasses.replace(
        config,
        whitelists=dataclasses.replace(
            lists,
            routers=resolve_entries(lists.routers, "whitelists.routers", lookup),
            frontend_http=resolve_entries(lists.frontend_http, "whitelists.frontend_http", lookup),
            backend_http=resolve_entries(lists.backend_http, "whitelists.backend_http", lookup),
        ),
    )
