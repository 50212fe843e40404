"""Preflight: can this machine become an ober node? Read over SSH in one command, judged by small pure parsers.

One shell script (``sh -c``, POSIX only) prints a section per fact: ``/etc/os-release``, the login's uid, whether
passwordless sudo works, what ``python3`` reports about itself (version, machine, glibc, the free space on the
install path's filesystem, venv support), the clock's synchronisation (``timedatectl``, else ``chronyc``) and the
ober already installed there. :func:`parse_probe` turns its output into :class:`NodeFacts`; :func:`evaluate`
turns those into :class:`ober.checks.base.Check` findings, the same ones ``ober doctor`` prints on a node (the OS and
Python rules are ``ober.checks.host``'s). Nothing here changes the node.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ober.checks.base import Check
from ober.checks.host import check_os, check_python, parse_os_release
from ober.remote.wheelhouse import ARCHITECTURES
from ober.render import install_paths
from ober.runner import Runner

PROBE_TIMEOUT = 30.0
# The venv (ExaBGP, ober and their dependencies, ~60 MiB), the wheelhouse (~20 MiB) and room for a second venv
# during an upgrade, with a margin: below this an install would fail half-way.
MIN_FREE_BYTES = 512 * 2**20
SECTION = "### ober-preflight "

# Run by the node's python3 with the install path as argument; only the standard library, any Python 3.
_PYTHON_PROBE = """\
import importlib.util, json, os, platform, sys
path = sys.argv[1]
while not os.path.isdir(path):
    path = os.path.dirname(path) or "/"
disk = os.statvfs(path)
print(json.dumps({
    "version": list(sys.version_info[:3]),
    "machine": platform.machine(),
    "libc": list(platform.libc_ver()),
    "free": disk.f_bavail * disk.f_frsize,
    "path": path,
    "venv": importlib.util.find_spec("venv") is not None and importlib.util.find_spec("ensurepip") is not None,
}))
"""

# $1: the install path, $2: the Python probe, $3: ober in the install path's venv. Every command that could wait
# on something (sudo, D-Bus, chronyd) has its own short timeout, so one slow fact cannot eat the whole probe's.
_SCRIPT = f"""\
s='{SECTION}'
echo "${{s}}os"; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
echo "${{s}}uid"; id -u
echo "${{s}}user"; id -un
echo "${{s}}sudo"
if [ "$(id -u)" = 0 ]; then echo root
elif command -v sudo >/dev/null 2>&1 && timeout 10 sudo -n true >/dev/null 2>&1; then echo yes
else echo no; fi
echo "${{s}}python"
if command -v python3 >/dev/null 2>&1; then python3 -c "$2" "$1" 2>&1 | tail -n 1; else echo missing; fi
echo "${{s}}timedatectl"; timeout 5 timedatectl show -p NTPSynchronized --value 2>/dev/null
echo "${{s}}chrony"; timeout 5 chronyc -n tracking 2>/dev/null | sed -n 's/^Leap status *: *//p'
echo "${{s}}ober"; timeout 20 "$3" --version 2>/dev/null
exit 0
"""


def probe_argv(install_path: str) -> list[str]:
    """The command that prints every preflight fact of a node (see :func:`parse_probe`)."""
    return ["sh", "-c", _SCRIPT, "ober-preflight", install_path, _PYTHON_PROBE, install_paths(install_path)["ober"]]


@dataclass(frozen=True)
class NodeFacts:
    """What preflight learned about a node. None means the fact could not be read."""

    os_release: str | None = None
    uid: int | None = None
    user: str = ""
    sudo: str = "no"
    """``root`` (logged in as root), ``yes`` (passwordless sudo) or ``no``."""
    python: tuple[int, ...] | None = None
    python_error: str | None = None
    """What ``python3`` said when it failed (``missing`` when there is none)."""
    machine: str = ""
    libc: tuple[str, str] = ("", "")
    free_bytes: int | None = None
    free_path: str = ""
    venv: bool = False
    time_synced: bool | None = None
    ober_version: str | None = None
    """``ober --version``'s first word pair (``ober 0.1.0``) when ober is installed at the install path."""

    @property
    def os_name(self) -> str:
        """The distribution's pretty name, or ``unknown``."""
        fields = parse_os_release(self.os_release or "")
        return fields.get("PRETTY_NAME") or fields.get("ID") or "unknown"

    @property
    def python_version(self) -> str | None:
        """``3.MINOR`` of the node's python3, the wheelhouse's target."""
        return f"{self.python[0]}.{self.python[1]}" if self.python and len(self.python) >= 2 else None

    @property
    def glibc(self) -> tuple[int, int] | None:
        """The node's glibc version, the newest manylinux tag its wheels may carry; None for another libc."""
        name, version = self.libc
        match = re.match(r"(\d+)\.(\d+)", version)
        return (int(match.group(1)), int(match.group(2))) if name == "glibc" and match else None

    def platform_key(self) -> tuple[str, str, tuple[int, int]] | None:
        """(Python, machine, glibc): nodes with the same key share one wheelhouse; None when one is unknown."""
        python, glibc = self.python_version, self.glibc
        return (python, self.machine, glibc) if python and glibc and self.machine else None

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form (the os-release text reduced to its name)."""
        return {
            "os": self.os_name,
            "user": self.user,
            "uid": self.uid,
            "sudo": self.sudo,
            "python": self.python_version,
            "machine": self.machine,
            "glibc": ".".join(map(str, self.glibc)) if self.glibc else None,
            "free_bytes": self.free_bytes,
            "time_synced": self.time_synced,
            "ober": self.ober_version,
        }


def split_sections(text: str) -> dict[str, str]:
    """The probe's output as section name → its text (lines joined, stripped)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(SECTION):
            current = sections.setdefault(line[len(SECTION) :].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


def parse_time_sync(timedatectl: str, chrony: str) -> bool | None:
    """Whether the clock is synchronised: timedatectl's NTPSynchronized, else chrony's leap status; None: unknown."""
    answer = timedatectl.strip().lower()
    if answer in ("yes", "no"):
        return answer == "yes"
    leap = chrony.strip().lower()
    if leap:
        return leap == "normal"
    return None


def parse_probe(text: str) -> NodeFacts:
    """Read :func:`probe_argv`'s output; a section that is missing or garbled leaves its fact unknown."""
    sections = split_sections(text)
    uid_text = sections.get("uid", "")
    python: tuple[int, ...] | None = None
    python_error: str | None = None
    data: dict[str, Any] = {}
    raw = sections.get("python", "")
    try:
        loaded = json.loads(raw)
        data = loaded if isinstance(loaded, dict) else {}
    except ValueError:
        python_error = raw or "no output"
    if data:
        version = data.get("version")
        if isinstance(version, list) and all(isinstance(part, int) for part in version):
            python = tuple(version)
    libc = data.get("libc")
    free = data.get("free")
    ober = sections.get("ober", "").split(",")[0].strip()
    return NodeFacts(
        os_release=sections.get("os") or None,
        uid=int(uid_text) if uid_text.isdigit() else None,
        user=sections.get("user", ""),
        sudo=sections.get("sudo", "no") or "no",
        python=python,
        python_error=python_error,
        machine=str(data.get("machine", "")),
        libc=(str(libc[0]), str(libc[1])) if isinstance(libc, list) and len(libc) == 2 else ("", ""),
        free_bytes=free if isinstance(free, int) else None,
        free_path=str(data.get("path", "")),
        venv=bool(data.get("venv", False)),
        time_synced=parse_time_sync(sections.get("timedatectl", ""), sections.get("chrony", "")),
        ober_version=ober if ober.startswith("ober ") else None,
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def evaluate(facts: NodeFacts, install_path: str, login: str | None = None) -> list[Check]:
    """Judge a node's facts: OS, Python, architecture and libc, root or sudo, free disk, clock.

    ``fail`` stops the node's bootstrap; ``warn`` (a clock not known to be synchronised, a RHEL rebuild) does not.

    Args:
        facts: what the probe read.
        install_path: the node's install path, for messages.
        login: the SSH login when the transport runs every command through ``sudo -n`` (it is not root): the
            probe then runs as root, and reaching it proves passwordless sudo.
    """
    checks = [check_os(facts.os_release)]
    if facts.python is None:
        missing = facts.python_error in (None, "missing")
        detail = "python3 is not installed" if missing else f"python3 failed: {facts.python_error}"
        checks.append(Check("python", "fail", detail, "install Python 3.11+ (the distribution's python3)"))
    else:
        checks.append(check_python(facts.python))
        if not facts.venv and facts.ober_version is None:
            checks.append(
                Check(
                    "venv",
                    "fail",
                    "python3 cannot create venvs (no venv/ensurepip module)",
                    "install python3-venv (apt) or python3 (dnf) on the node",
                )
            )
    if facts.python is not None:
        if facts.machine not in ARCHITECTURES:
            checks.append(
                Check("arch", "fail", f"{facts.machine or 'unknown'} is not supported", " or ".join(ARCHITECTURES))
            )
        elif facts.glibc is None:
            libc = " ".join(facts.libc).strip() or "an unknown libc"
            checks.append(
                Check("arch", "fail", f"{facts.machine} with {libc}: wheels need glibc", "use a glibc distro")
            )
        else:
            glibc = ".".join(map(str, facts.glibc))
            checks.append(Check("arch", "ok", f"{facts.machine}, glibc {glibc}"))
    if facts.sudo == "root" and login not in (None, "root"):
        checks.append(Check("root", "ok", f"{login} has passwordless sudo"))
    elif facts.sudo == "root":
        checks.append(Check("root", "ok", "logged in as root"))
    elif facts.sudo == "yes":
        checks.append(Check("root", "ok", f"{facts.user or 'the login'} has passwordless sudo"))
    else:
        who = facts.user or (f"uid {facts.uid}" if facts.uid is not None else "the login")
        checks.append(
            Check(
                "root",
                "fail",
                f"{who} is not root and sudo asks for a password (or is missing)",
                "log in as root (inventory ssh.user) or allow this user passwordless sudo",
            )
        )
    if facts.free_bytes is None:
        checks.append(Check("disk", "warn", f"free space under {install_path} unknown (no python3 answer)"))
    elif facts.free_bytes < MIN_FREE_BYTES:
        checks.append(
            Check(
                "disk",
                "fail",
                f"{_mib(facts.free_bytes)} free on {facts.free_path} ({install_path}), {_mib(MIN_FREE_BYTES)} needed",
                f"free space on {facts.free_path} or choose another install_path",
            )
        )
    else:
        checks.append(Check("disk", "ok", f"{_mib(facts.free_bytes)} free on {facts.free_path}"))
    if facts.time_synced is True:
        checks.append(Check("time", "ok", "clock synchronised"))
    elif facts.time_synced is False:
        checks.append(
            Check("time", "warn", "clock not synchronised (NTP)", "enable NTP: timedatectl set-ntp true, or chrony")
        )
    else:
        checks.append(Check("time", "warn", "clock synchronisation unknown (no timedatectl or chronyc answer)"))
    return checks


@dataclass(frozen=True)
class Preflight:
    """A node's preflight: its facts and the findings."""

    facts: NodeFacts
    checks: list[Check]

    @property
    def ok(self) -> bool:
        """Nothing failed (warnings allowed)."""
        return not any(check.status == "fail" for check in self.checks)

    def failures(self) -> list[Check]:
        """The failed checks."""
        return [check for check in self.checks if check.status == "fail"]

    def warnings(self) -> list[Check]:
        """The warnings."""
        return [check for check in self.checks if check.status == "warn"]

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"ok": self.ok, "facts": self.facts.as_dict(), "checks": [check.as_dict() for check in self.checks]}


def preflight(
    runner: Runner, install_path: str, *, login: str | None = None, timeout: float = PROBE_TIMEOUT
) -> Preflight:
    """Probe one node through ``runner`` (an SSH connection) and judge it; a probe that fails is one failed check.

    Args:
        runner: runs the probe on the node.
        install_path: where ober is (to be) installed there.
        login: the SSH login when the runner wraps commands in ``sudo -n`` (see :func:`evaluate`).
        timeout: seconds for the whole probe.
    """
    done = runner.run(probe_argv(install_path), timeout)
    if not done.ok or SECTION not in done.stdout:
        failed = Check("probe", "fail", f"the preflight probe failed: {done.last_line()}", "check SSH to the node")
        return Preflight(NodeFacts(), [failed])
    facts = parse_probe(done.stdout)
    return Preflight(facts, evaluate(facts, install_path, login))
