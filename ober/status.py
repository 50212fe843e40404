"""``ober status``: what this node is really doing, each fact read from its source, never assumed."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ober import __version__
from ober.certs import certificate_documents, installed
from ober.config import NodeConfig
from ober.discovery_run import discovery_status
from ober.drain import read_drain, s3_sessions
from ober.errors import OberError
from ober.exabgp_cli import bgp_facts
from ober.facts import exabgp_version, haproxy_package_version, haproxy_version
from ober.haproxy_runtime import snapshot
from ober.haproxy_state import read_state
from ober.healthd import state_file
from ober.render import paths

UNITS = ("ober-http", "ober-bgp")


def unit_state(unit: str) -> str:
    """``systemctl is-active`` for a unit; "unknown" where systemd is not running."""
    if shutil.which("systemctl") is None:
        return "unknown"
    try:
        done = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return "unknown"
    state = done.stdout.strip()
    return state if state and "offline" not in done.stderr else "unknown"


def health_state(config: NodeConfig) -> dict[str, Any] | None:
    """``ober health``'s published state, marked stale when it stopped updating."""
    try:
        data: dict[str, Any] = json.loads(state_file(config).read_text())
    except (OSError, ValueError):
        return None
    age = time.time() - float(data.get("updated", 0))
    data["stale"] = age > max(5.0, 3 * config.health.interval)
    return data


def node_status(config: NodeConfig, *, exabgp_root: str | None = None) -> dict[str, Any]:
    """Everything ``ober status`` shows, as plain data (the ``--json`` form)."""
    status: dict[str, Any] = {
        "node": config.name,
        "versions": {
            "ober": __version__,
            "haproxy": haproxy_version(),
            "haproxy_package": haproxy_package_version(),
            "exabgp": exabgp_version(),
        },
        "units": {unit: unit_state(unit) for unit in UNITS},
    }
    # What the VIPs' certificate files hold (days to expiry, ACME placeholder): fleet status shows it per node.
    status["certificates"] = certificate_documents(installed(config))
    drain = read_drain(config)
    status["drained"] = asdict(drain) if drain else None
    status["discovery"] = discovery_status(config, time.time())
    status["health"] = health_state(config)
    try:
        seen = snapshot(paths(config)["admin_socket"], config.health.timeout)
        status["haproxy"] = {
            "running": True,
            "sessions": s3_sessions(config, seen),
            "frontends": seen.sessions,
            "backends": {name: asdict(state) for name, state in seen.backends.items()},
        }
    except OberError as exc:
        status["haproxy"] = {"running": False, "error": exc.message}
    status["degraded"] = _degraded(config) if status["haproxy"]["running"] else []
    try:
        facts = bgp_facts(exabgp_root)
        status["bgp"] = {
            "sessions": facts.sessions,
            "announced": facts.announced,
            "graceful_restart": facts.graceful_restart,
        }
    except OberError as exc:
        status["bgp"] = {"sessions": {}, "announced": {}, "graceful_restart": {}, "error": exc.message}
    return status


def _degraded(config: NodeConfig) -> list[str]:
    """How the running HAProxy serves less than its config says (:mod:`ober.haproxy_state`), one line each."""
    try:
        return read_state(paths(config)["admin_socket"], config.health.timeout).degraded(config)
    except OberError as exc:
        # It answered `show stat` a moment ago: say that this part could not be read rather than "all well".
        return [f"HAProxy's state could not be read: {exc.message}"]


def announced_vips(status: dict[str, Any]) -> list[str]:
    """The VIPs announced to at least one established neighbor (what the fleet counts as live)."""
    bgp = status.get("bgp", {})
    live = [peer for peer, state in bgp.get("sessions", {}).items() if state == "established"]
    prefixes = {p for peer in live for p in bgp.get("announced", {}).get(peer, [])}
    return sorted(p.removesuffix("/32") for p in prefixes)


def exabgp_root(config: NodeConfig) -> str | None:
    """Where this node's ExaBGP keeps its CLI pipes, when not in /run/exabgp (lab nodes)."""
    own = Path(paths(config)["exabgp_run"])
    return config.install_path if own.exists() else None
