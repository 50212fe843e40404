"""``ober --version``: ober's version plus the HAProxy and ExaBGP this machine has."""

from __future__ import annotations

from ober import __version__
from ober.facts import exabgp_version, haproxy_version


def version_info() -> dict[str, str | None]:
    """Versions by program; None means not installed."""
    return {"ober": __version__, "HAProxy": haproxy_version(), "ExaBGP": exabgp_version()}
