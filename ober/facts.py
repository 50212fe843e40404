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


def exabgp_version() -> str | None:
    """The ExaBGP version installed with ober, or None."""
    try:
        return metadata.version("exabgp")
    except metadata.PackageNotFoundError:
        return None
