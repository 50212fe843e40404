"""Facts about this machine, each read from a real command's output by a small parser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_HAPROXY_VERSION = re.compile(r"HA-?Proxy version (\d+\.\d+(?:\.\d+)?)")


def parse_haproxy_version(output: str) -> str | None:
    """The version in ``haproxy -v`` output (``2.6.12``), or None."""
    match = _HAPROXY_VERSION.search(output)
    return match.group(1) if match else None


def account_names(root: Path = Path("/")) -> tuple[frozenset[str], frozenset[str]]:
    """The user and group names in ``root``'s /etc/passwd and /etc/group.

    The files, not NSS: ober's users are local system users, and a directory service must not stand in for them.
    """

    def names(table: str) -> frozenset[str]:
        try:
            text = (root / "etc" / table).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return frozenset()
        return frozenset(line.split(":", 1)[0] for line in text.splitlines() if ":" in line)

    return names("passwd"), names("group")


def find_program(name: str) -> str | None:
    """A program next to this Python first (our venv), else on PATH, else in the sbin directories."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def haproxy_version() -> str | None:
    """The installed HAProxy's version, or None when it is not installed."""
    program = find_program("haproxy")
    if program is None:
        return None
    try:
        done = subprocess.run([program, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_haproxy_version(done.stdout)


def haproxy_package_version() -> str | None:
    """The installed ``haproxy`` package's full version (``3.0.11-1``, ``3.0.5-1.el10``), or None.

    Not ``haproxy -v``: a distribution's point release may rebuild the same upstream version, and only the
    package version tells an upgrade from a no-op.
    """
    queries = (
        ["dpkg-query", "-W", "-f", "${Status}|${Version}", "haproxy"],
        ["rpm", "-q", "--qf", "install ok installed|%{VERSION}-%{RELEASE}", "haproxy"],
    )
    for argv in queries:
        if shutil.which(argv[0]) is None:
            continue
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return parse_package_query(done.stdout) if done.returncode == 0 else None
    return None


def parse_package_query(output: str) -> str | None:
    """The version in ``STATUS|VERSION`` when the package is installed (dpkg keeps removed packages' records)."""
    status, _, version = output.strip().partition("|")
    return version if status == "install ok installed" and version and " " not in version else None


def exabgp_version() -> str | None:
    """The ExaBGP version installed with ober, or None."""
    try:
        return metadata.version("exabgp")
    except metadata.PackageNotFoundError:
        return None
