"""The machine itself: Python, root, the distribution, its own name's lookup; then ober's units and HAProxy."""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ober.checks.base import Check
from ober.status import UNITS, unit_state

OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
# The oldest release of each distribution whose own packages carry HAProxy >= 2.6 and Python >= 3.11, what ober
# needs (Debian 11, Ubuntu 22.04 and RHEL 9 ship HAProxy 2.2/2.4 and Python 3.9/3.10).
SUPPORTED_OS = {"debian": (12,), "ubuntu": (24, 4), "rhel": (10,)}


# --- before bootstrap: the machine itself ---------------------------------------------------------------------


def check_python(version: Sequence[int] | None = None) -> Check:
    """Python is 3.11 or newer (``version`` defaults to the running one)."""
    version = tuple(sys.version_info[:3]) if version is None else version
    text = ".".join(str(part) for part in version)
    if tuple(version[:2]) >= (3, 11):
        return Check("python", "ok", f"Python {text}")
    return Check("python", "fail", f"Python {text} is too old: ober needs 3.11 or newer", "install Python 3.11+")


def check_root(euid: int) -> Check:
    """Running as root (ober writes /etc, /opt/ober and manages units)."""
    if euid == 0:
        return Check("root", "ok", "running as root")
    return Check("root", "fail", f"running as uid {euid}, not root", "run it as root, e.g. with sudo")


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` (``KEY=value`` lines, values optionally quoted) as a mapping."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            fields[key] = value.strip().strip("\"'")
    return fields


def _version(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text)[:2]
    return tuple(int(part) for part in parts) if parts else None


def check_os(os_release: str | None) -> Check:
    """The distribution is one ober supports: Debian 12+, Ubuntu 24.04+, RHEL 10+.

    A RHEL rebuild (``ID_LIKE`` naming rhel: Rocky, Alma, CentOS Stream) of major version 10 or newer is a
    warning, not a failure: it carries the same packages, but only RHEL itself is supported. Anything else fails.

    Args:
        os_release: the content of ``/etc/os-release``, or None when it could not be read.
    """
    supported = "use Debian 12+, Ubuntu 24.04+ or RHEL 10+"
    if os_release is None:
        return Check("os", "fail", "cannot read /etc/os-release: unknown distribution", supported)
    fields = parse_os_release(os_release)
    os_id = fields.get("ID", "").lower()
    like = fields.get("ID_LIKE", "").lower().split()
    version = _version(fields.get("VERSION_ID", ""))
    name = fields.get("PRETTY_NAME") or f"{fields.get('NAME', os_id or 'unknown')} {fields.get('VERSION_ID', '')}"
    name = name.strip()
    if os_id in SUPPORTED_OS:
        floor = SUPPORTED_OS[os_id]
        oldest = ".".join(f"{part:02d}" if i else str(part) for i, part in enumerate(floor))
        if version is None:
            return Check("os", "warn", f"{name}: no VERSION_ID (testing or unstable?), not a release", supported)
        if version >= floor:
            return Check("os", "ok", name)
        return Check("os", "fail", f"{name} is too old: ober needs {os_id} {oldest} or newer (HAProxy 2.6+)", supported)
    if "rhel" in like and version is not None and version >= SUPPORTED_OS["rhel"]:
        return Check("os", "warn", f"{name} is RHEL-compatible, but only RHEL itself is supported", supported)
    return Check("os", "fail", f"{name} is not supported", supported)


def read_os_release() -> str | None:
    """This machine's os-release text (``/etc/os-release``, else ``/usr/lib/os-release``), or None."""
    for path in OS_RELEASE:
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            continue
    return None


SLOW_NAME_LOOKUP = 1.0
"""Seconds for this host's own name lookup beyond which doctor warns."""


def check_own_name(lookup: Callable[[], str] = socket.getfqdn, clock: Callable[[], float] = time.monotonic) -> Check:
    """This host's own name resolves quickly: ExaBGP looks it up (``socket.getfqdn``) each time it starts.

    That is every ExaBGP start, ``exabgp validate`` and ``exabgp cli`` (so every ``ober status``): with the name
    only in a DNS server the node cannot reach, each waits for the resolver's timeout (5 s).
    """
    started = clock()
    name = lookup()
    took = clock() - started
    if took <= SLOW_NAME_LOOKUP:
        return Check("own name", "ok", f"{name} resolves in {took * 1000:.0f} ms")
    host = socket.gethostname()
    return Check(
        "own name",
        "warn",
        f"looking up this host's own name took {took:.1f}s: ExaBGP does it at every start and ober status twice",
        f"add '127.0.1.1 {host}' to /etc/hosts (or 'myhostname' to the hosts line of /etc/nsswitch.conf)",
    )


def check_haproxy_state(status: Mapping[str, Any]) -> Check:
    """HAProxy answers on its runtime socket (from ``ober status`` data)."""
    haproxy = status.get("haproxy", {})
    if haproxy.get("running"):
        return Check("haproxy", "ok", f"answers on its runtime socket; {haproxy.get('sessions', 0)} client sessions")
    return Check(
        "haproxy",
        "fail",
        f"HAProxy does not answer: {haproxy.get('error', 'unknown')}",
        "systemctl status ober-http; journalctl -u ober-http -n 50",
    )


def check_units(state: Callable[[str], str] = unit_state) -> list[Check]:
    """``ober-http`` and ``ober-bgp`` are active; skipped where systemd is not running (a container, a chroot)."""
    checks: list[Check] = []
    for unit in UNITS:
        now = state(unit)
        if now == "unknown":
            checks.append(Check(f"unit {unit}", "skip", "systemd is not running here: state unknown"))
        elif now == "active":
            checks.append(Check(f"unit {unit}", "ok", "active"))
        else:
            checks.append(Check(f"unit {unit}", "fail", now, f"systemctl start {unit}; see journalctl -u {unit} -n 50"))
    return checks
