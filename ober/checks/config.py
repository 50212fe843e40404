"""The node's ``ober.yaml`` and what it renders (``haproxy -c``, ``exabgp validate``), and the stats page's exposure."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from ober.build import build_node
from ober.checks.base import Check, scrub_text
from ober.config import NodeConfig, load_config, stats_exposure
from ober.errors import OberError

# Secret values for rendering when the real ones are not on this machine: the syntax check does not need them.
_STAND_IN_SECRET = "ober-stand-in"  # noqa: S105 - not a secret: stands in for one


def check_config(path: str | Path) -> tuple[Check, NodeConfig | None]:
    """Load and validate the node's ``ober.yaml``; the config comes back for the checks that need it."""
    try:
        config = load_config(path)
    except OberError as exc:
        return Check("config", "fail", exc.message, exc.fix), None
    return Check("config", "ok", f"{path} is valid (node {config.name})"), config


def check_rendered(config: NodeConfig, secrets: Mapping[str, str] | None = None) -> list[Check]:
    """Render the node's files and check them with ``haproxy -c`` and ``exabgp validate``.

    Secrets missing here are stood in for (the check is about syntax), and the detail says so; messages never
    hold a secret value.
    """
    known = dict(secrets or {})
    refs = config.secret_refs()
    standing_in = [field for field, name in refs.items() if name not in known]
    values = {**known, **{refs[field]: _STAND_IN_SECRET for field in standing_in}}
    try:
        built = build_node(config, values)
    except OberError as exc:
        return [Check("rendered files", "fail", scrub_text(exc.message, known), scrub_text(exc.fix, known))]
    # The field, not the name it gives: that may be a secret pasted in the wrong place.
    stand_ins = built.placeholders + [f"the secret of {field}" for field in standing_in]
    note = f" (stand-ins for what this machine lacks: {', '.join(stand_ins)})" if stand_ins else ""
    checks = [Check("rendered files", "ok", f"haproxy -c and exabgp validate accept them{note}")]
    if built.notes:
        more = f" (+{len(built.notes) - 1} more)" if len(built.notes) > 1 else ""
        checks.append(
            Check(
                "rendered files",
                "warn",
                scrub_text(built.notes[0], known) + more,
                "see 'ober render -c CONFIG -o DIR' for every warning",
            )
        )
    return checks


def check_stats_exposure(config: NodeConfig) -> list[Check]:
    """Warn when the stats page is open to anyone (``stats.allow_open``) or its password crosses plain HTTP."""
    found = stats_exposure(config.stats, config.whitelists)
    if not found.open and not found.weak:
        guard = "a login" if config.stats.auth else "an allow-list"
        if ipaddress.IPv4Address(config.stats.bind).is_loopback:
            guard = "loopback only"
        return [Check("stats page", "ok", f"{config.stats.bind}:{config.stats.port}: {guard}")]
    checks = [
        Check(
            "stats page",
            "warn",
            f"open: {why} (stats.allow_open is set)",
            "list the monitoring hosts in whitelists.backend_http, or set stats.auth with stats.tls",
        )
        for why in found.open
    ]
    fix = "set stats.tls: true, or bind stats to 127.0.0.1"
    checks += [Check("stats page", "warn", why, fix) for why in found.weak]
    return checks
