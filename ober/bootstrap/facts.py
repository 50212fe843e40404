"""What bootstrap and uninstall read from the machine.

A few files, and small commands run through a Runner whose output small parsers read. Nothing here changes the
machine.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ober import __version__
from ober.checks.host import parse_os_release, read_os_release
from ober.errors import OberError
from ober.facts import account_names, parse_haproxy_version
from ober.render import install_paths
from ober.runner import Result, Runner

HAPROXY = "/usr/sbin/haproxy"
"""The binary ober-http runs (``ExecStart`` in its unit), so the one whose presence counts."""
FACT_TIMEOUT = 20.0
UNITS = ("ober-http", "ober-bgp")
DISTRO_HAPROXY_UNIT = "haproxy.service"
NETWORKD_UNIT = "systemd-networkd.service"
NETWORKD_WAIT_ONLINE = "systemd-networkd-wait-online.service"
SELINUX_BOOLEAN = "haproxy_connect_any"
JOURNALD_DROP_INS = "/etc/systemd/journald.conf.d"
PATH_LINK = "/usr/local/bin/ober"
"""The link that puts the node's ober on PATH (``ober status`` rather than ``/opt/ober/venv/bin/ober status``)."""
# Where an AWS-LC HAProxy package repository would be configured (relative to the root).
REPO_GLOBS = (
    "etc/apt/sources.list",
    "etc/apt/sources.list.d/*.list",
    "etc/apt/sources.list.d/*.sources",
    "etc/yum.repos.d/*.repo",
)
_PROGRAM_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
_ACTIVE = ("active", "activating", "reloading")
_AWS_LC = re.compile(r"aws-?lc", re.IGNORECASE)
_DNF_HAPROXY = re.compile(r"^haproxy\.\S+\s+(\S+)\s", re.MULTILINE)


@dataclass(frozen=True)
class UnitState:
    """A systemd unit as ``systemctl is-enabled`` / ``is-active`` report it."""

    enabled: str = "not-found"
    active: str = "inactive"

    @property
    def is_enabled(self) -> bool:
        """Started at boot."""
        return self.enabled == "enabled"

    @property
    def is_active(self) -> bool:
        """Running (or on its way)."""
        return self.active in _ACTIVE

    def describe(self) -> str:
        """``enabled and active``, ``not installed``."""
        return "not installed" if self.enabled == "not-found" else f"{self.enabled} and {self.active}"


@dataclass(frozen=True)
class HostFacts:
    """What bootstrap needs to know about the machine (see :func:`gather_host_facts` for where each comes from)."""

    os_release: str | None
    euid: int
    systemd: bool
    package_manager: str | None
    haproxy_version: str | None = None
    haproxy_ssl: str | None = None
    haproxy_aws_lc: bool = False
    haproxy_candidate: str | None = None
    aws_lc_repo: str | None = None
    haproxy_unit: UnitState = field(default_factory=UnitState)
    python: tuple[int, ...] = (3, 11, 0)
    python_executable: str = "/usr/bin/python3"
    venv: str | None = None
    ensurepip: bool = True
    network: str = "networkd"
    networkd: UnitState = field(default_factory=UnitState)
    selinux: str | None = None
    selinux_boolean: bool | None = None
    ober_version: str = __version__
    ober_source: str | None = None
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @property
    def os_name(self) -> str:
        """PRETTY_NAME from os-release."""
        release = parse_os_release(self.os_release or "")
        return release.get("PRETTY_NAME") or release.get("NAME") or "unknown OS"


@dataclass(frozen=True)
class InstallFacts:
    """The install path's state: which of its directories (and their parents) exist with which mode, the venv."""

    path: str
    dirs: Mapping[str, int]
    venv_python: bool = False
    venv_packages: Mapping[str, str] = field(default_factory=dict)
    path_link: str | None = None
    """Where `PATH_LINK` points, when it is a symbolic link."""
    path_taken: bool = False
    """`PATH_LINK` is something other than a symbolic link (another ober, say)."""
    path_dir: bool = True
    """The directory of `PATH_LINK` exists."""


@dataclass(frozen=True)
class Facts:
    """Everything :func:`plan_bootstrap` looks at."""

    host: HostFacts
    install: InstallFacts


def parse_unit_state(enabled: Result, active: Result) -> UnitState:
    """``systemctl is-enabled`` / ``is-active`` output: the first word; no word means the unit is not there."""
    word = (enabled.stdout.split() or ["not-found"])[0]
    return UnitState(word, (active.stdout.split() or ["unknown"])[0])


def parse_apt_candidate(output: str) -> str | None:
    """The ``Candidate:`` version in ``apt-cache policy PACKAGE`` output (None for none)."""
    match = re.search(r"^\s*Candidate:\s*(\S+)", output, re.MULTILINE)
    return match.group(1) if match and match.group(1) != "(none)" else None


def parse_dnf_list(output: str) -> str | None:
    """The haproxy version in ``dnf list --available haproxy`` (or ``--upgrades``) output; None when there is none.

    dnf prints ``haproxy.x86_64  3.0.5-2.el10  rhel-10-appstream``.
    """
    match = _DNF_HAPROXY.search(output)
    return match.group(1) if match else None


def parse_haproxy_ssl(output: str) -> tuple[str | None, bool]:
    """The SSL library HAProxy runs on (``haproxy -vv``), and whether it is built with AWS-LC."""
    match = re.search(r"^Running on (?:\S+ )?(?:SSL library|OpenSSL) version : (.+)$", output, re.MULTILINE)
    if match is None:
        match = re.search(r"^Built with (?:\S+ )?(?:SSL library|OpenSSL) version : (.+)$", output, re.MULTILINE)
    library = match.group(1).strip() if match else None
    return library, "+OPENSSL_AWSLC" in output or bool(_AWS_LC.search(library or ""))


def parse_getsebool(output: str) -> bool | None:
    """``getsebool NAME`` → ``NAME --> on``."""
    match = re.search(r"-->\s*(on|off)\b", output)
    return None if match is None else match.group(1) == "on"


def find_aws_lc_repo(root: Path = Path("/")) -> str | None:
    """The first package repository file that configures an AWS-LC build of HAProxy, or None.

    Looked at: ``/etc/apt/sources.list``, ``/etc/apt/sources.list.d/*.list`` and ``*.sources`` (apt), and
    ``/etc/yum.repos.d/*.repo`` (dnf). A file counts when its uncommented lines name both ``haproxy`` and
    ``aws-lc`` (or ``awslc``), in any case: such repositories carry HAProxy linked against AWS-LC, whose TLS
    handshakes cost far less CPU than with OpenSSL 3. Whether it is reachable shows when the package installs.
    """
    for pattern in REPO_GLOBS:
        for path in sorted(root.glob(pattern)):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).lower()
            if "haproxy" in live and _AWS_LC.search(live):
                return "/" + str(path.relative_to(root))
    return None


def venv_packages(venv: Path) -> dict[str, str]:
    """Distributions installed in a venv (name → version), read from its ``*.dist-info`` directories."""
    found: dict[str, str] = {}
    for info in venv.glob("lib/python3*/site-packages/*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        found[name.lower().replace("_", "-")] = version
    return found


def ober_source() -> str | None:
    """The source tree the running ober comes from (an editable or in-tree run), for installing it as it is."""
    tree = Path(__file__).resolve().parents[2]
    return str(tree) if (tree / "pyproject.toml").is_file() and (tree / "ober").is_dir() else None


def _program(root: Path, name: str) -> str | None:
    for directory in _PROGRAM_DIRS:
        candidate = root / directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return f"/{directory}/{name}"
    return None


def read_unit(runner: Runner, unit: str) -> UnitState:
    """A unit's state from ``systemctl is-enabled`` and ``is-active``."""
    return parse_unit_state(
        runner.run(["systemctl", "is-enabled", unit], FACT_TIMEOUT),
        runner.run(["systemctl", "is-active", unit], FACT_TIMEOUT),
    )


def gather_host_facts(runner: Runner, root: Path = Path("/")) -> HostFacts:
    """Read the machine's facts: files under ``root``, commands through ``runner``; nothing is changed.

    os-release; the effective uid; systemd as PID 1 (``/run/systemd/system``); ``apt-get`` or ``dnf``;
    ``/usr/sbin/haproxy -vv`` (version, SSL library); apt's candidate haproxy; an AWS-LC repository
    (:func:`find_aws_lc_repo`); this Python, whether it runs in a venv and has ``ensurepip``; the network stack
    (``netplan`` present → netplan, NetworkManager active → networkmanager, else networkd, and networkd's unit);
    SELinux (``getenforce``, ``getsebool haproxy_connect_any``); the distribution's ``haproxy.service``; the users
    and groups in ``/etc/passwd`` and ``/etc/group``.
    """
    os_release = (root / "etc/os-release").read_text() if (root / "etc/os-release").is_file() else None
    if os_release is None and root == Path("/"):
        os_release = read_os_release()
    systemd = (root / "run/systemd/system").is_dir()
    manager = "apt" if _program(root, "apt-get") else "dnf" if _program(root, "dnf") else None
    version = ssl = candidate = None
    aws_lc = False
    if (root / HAPROXY.lstrip("/")).is_file():
        output = runner.run([HAPROXY, "-vv"], FACT_TIMEOUT).stdout
        version = parse_haproxy_version(output)
        ssl, aws_lc = parse_haproxy_ssl(output)
    elif manager == "apt":
        candidate = parse_apt_candidate(runner.run(["apt-cache", "policy", "haproxy"], FACT_TIMEOUT).stdout)
    elif manager == "dnf":
        candidate = parse_dnf_list(runner.run(["dnf", "list", "--available", "haproxy"], FACT_TIMEOUT * 3).stdout)
    unknown = UnitState("unknown", "unknown")
    network = "networkd"
    if _program(root, "netplan"):
        network = "netplan"
    elif systemd and read_unit(runner, "NetworkManager.service").is_active:
        network = "networkmanager"
    selinux = boolean = None
    if _program(root, "getenforce"):
        selinux = runner.run(["getenforce"], FACT_TIMEOUT).stdout.strip().lower() or None
        if _program(root, "getsebool"):
            boolean = parse_getsebool(runner.run(["getsebool", SELINUX_BOOLEAN], FACT_TIMEOUT).stdout)
    in_venv = sys.prefix != sys.base_prefix
    accounts = account_names(root)
    return HostFacts(
        os_release=os_release,
        euid=os.geteuid(),
        systemd=systemd,
        package_manager=manager,
        haproxy_version=version,
        haproxy_ssl=ssl,
        haproxy_aws_lc=aws_lc,
        haproxy_candidate=candidate,
        aws_lc_repo=find_aws_lc_repo(root),
        haproxy_unit=read_unit(runner, DISTRO_HAPROXY_UNIT) if systemd else unknown,
        python=tuple(sys.version_info[:3]),
        # The venv must not hang off a throwaway venv bootstrap may run from: the base interpreter makes it.
        python_executable=str(getattr(sys, "_base_executable", sys.executable)),
        venv=sys.prefix if in_venv else None,
        ensurepip=importlib.util.find_spec("ensurepip") is not None,
        network=network,
        networkd=read_unit(runner, NETWORKD_UNIT) if systemd else unknown,
        selinux=selinux,
        selinux_boolean=boolean,
        ober_version=__version__,
        ober_source=ober_source(),
        users=accounts[0],
        groups=accounts[1],
    )


def wanted_dirs(install_path: str) -> dict[str, int]:
    """The directories a node needs, parents first, with their modes.

    Besides the install path's own, the directories ``ober config`` writes into that a stock system may lack: made
    here, they are in the ledger, so uninstall removes them again once ober's files in them are gone (``ober
    config`` would create them too, but nothing would remember that they were not there before).
    """
    layout = install_paths(install_path)
    return {
        install_path: 0o755,
        layout["etc"]: 0o755,
        # Private keys live here (certificates.pem, SNI directories, ACME).
        layout["certs_dir"]: 0o700,
        layout["whitelist_dir"]: 0o755,
        layout["run_dir"]: 0o755,
        JOURNALD_DROP_INS: 0o755,
    }


def gather_install_facts(install_path: str, root: Path = Path("/")) -> InstallFacts:
    """The install path's directories (and its parents) that exist, with their modes; the venv's contents."""
    dirs: dict[str, int] = {}
    for path in [*reversed(PurePosixPath(install_path).parents), *wanted_dirs(install_path)]:
        on_disk = root / str(path).lstrip("/")
        if on_disk.is_dir():
            dirs[str(path)] = on_disk.stat().st_mode & 0o7777
    venv = root / install_path.lstrip("/") / "venv"
    link = root / PATH_LINK.lstrip("/")
    return InstallFacts(
        install_path,
        dirs,
        (venv / "bin/python").exists(),
        venv_packages(venv),
        path_link=read_link(link),
        path_taken=link.exists() and not link.is_symlink(),
        path_dir=link.parent.is_dir(),
    )


def read_link(path: Path) -> str | None:
    """Where the symbolic link ``path`` points (None when it is not one)."""
    try:
        return str(path.readlink())
    except OSError:
        return None


def installed_packages(runner: Runner, manager: str) -> set[str]:
    """The names of the installed packages (dpkg or rpm).

    Raises:
        OberError: the package database could not be read.
    """
    # Both expand the "\\n" escape themselves.
    argv = ["dpkg-query", "-W", "-f=${Package}\\n"] if manager == "apt" else ["rpm", "-qa", "--qf", "%{NAME}\\n"]
    done = runner.run(argv, FACT_TIMEOUT * 3)
    if not done.ok:
        raise OberError(f"{shlex.join(argv)}: {done.last_line()}")
    return set(done.stdout.split())
