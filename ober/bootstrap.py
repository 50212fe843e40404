"""``ober bootstrap`` and ``ober uninstall``: make a machine an ober node, and undo exactly that.

Facts → plan → actions, like pyinfra's operations:

- *facts* (:class:`HostFacts`, :class:`InstallFacts`, :class:`UninstallFacts`) are read from the machine: a few
  files, and small commands run through a :class:`Runner` whose output small parsers read;
- *plans* (:func:`plan_bootstrap`, :func:`plan_uninstall`, both pure) compare the facts with what is wanted and
  return :class:`Step` s, each holding the actions that close the difference, or none and the reason why nothing
  needs doing;
- :func:`run_steps` carries the actions out and keeps the *ledger*, ``<install>/etc/.bootstrap.json``
  (:class:`Ledger`): every change bootstrap makes (packages it installed that were not installed before,
  directories it created, services it disabled or enabled, the SELinux boolean it set, the venv it made), so
  uninstall undoes exactly those and nothing else, also after a run that failed midway.

The ledger is written (atomically) *before* each change whose undo is harmless when the change never happened
(removing a directory that is not there, re-enabling a unit that is still enabled), and right *after* a package
install, whose new packages are known only then. An interrupted run therefore never leaves a change unrecorded,
except in the moment between creating the install directory and its ``etc`` (where the ledger lives).

Kernel tuning, the units, HAProxy's and ExaBGP's configs and the VIP interface's file are *not* written here: they
are rendered from the node's ``ober.yaml`` by ``ober config`` (:mod:`ober.configure`), which owns them and lists
them in its manifest, and whose ``kernel_profile`` decides the tuning. Writing a sysctl file here too would give
that file two owners and a content bootstrap cannot know (the node's name and profile are in ``ober.yaml``); and
nothing that needs the tuning (HAProxy binding the VIPs) runs before ``ober config`` has written it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Protocol

from ober import __version__
from ober.apply import manifest_path
from ober.checks import check_os, check_python, parse_os_release, read_os_release
from ober.config import CONFIG_RELATIVE, NodeConfig, load_config
from ober.errors import OberError
from ober.facts import parse_haproxy_version
from ober.lifecycle import graceful_stop
from ober.runner import Result, Runner
from ober.services import NETWORK_APPLY, NETWORK_DIRS

EXABGP_VERSION = "5.0.15"
"""ExaBGP's release ober runs (5.0 keeps the text API; 6 defaults to JSON, see LAB-NOTES.md)."""
LEDGER_RELATIVE = "etc/.bootstrap.json"
HAPROXY = "/usr/sbin/haproxy"
"""The binary ober-http runs (``ExecStart`` in its unit), so the one whose presence counts."""
FACT_TIMEOUT = 20.0
COMMAND_TIMEOUT = 120.0
PACKAGE_TIMEOUT = 900.0
PIP_TIMEOUT = 900.0
MAX_INSTALL_PATH = 64  # ober.config's limit: HAProxy's socket path under it must stay short
UNITS = ("ober-http", "ober-bgp")
DISTRO_HAPROXY_UNIT = "haproxy.service"
NETWORKD_UNIT = "systemd-networkd.service"
SELINUX_BOOLEAN = "haproxy_connect_any"
# Where an AWS-LC HAProxy package repository would be configured (relative to the root).
REPO_GLOBS = (
    "etc/apt/sources.list",
    "etc/apt/sources.list.d/*.list",
    "etc/apt/sources.list.d/*.sources",
    "etc/yum.repos.d/*.repo",
)
_PROGRAM_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
_NONINTERACTIVE = (("DEBIAN_FRONTEND", "noninteractive"),)
_ACTIVE = ("active", "activating", "reloading")
_AWS_LC = re.compile(r"aws-?lc", re.IGNORECASE)


# --- the ledger ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One change bootstrap made, with what uninstall needs to undo it.

    ``kind`` is one of: ``directory`` (created), ``mode`` (a directory's mode changed; ``was`` the old one, octal),
    ``packages`` (``names`` installed by ``target``, apt or dnf), ``venv`` (created), ``pip`` (``names`` installed
    into the existing venv ``target``), ``service-disabled`` / ``service-enabled`` (unit ``target``;
    ``enabled``/``active``: its state before), ``selinux-boolean`` (``target`` set; ``was`` on/off before).
    """

    kind: str
    target: str
    names: tuple[str, ...] = ()
    was: str = ""
    enabled: bool = False
    active: bool = False

    def as_dict(self) -> dict[str, object]:
        """The JSON form: only the fields that say something."""
        data: dict[str, object] = {"kind": self.kind, "target": self.target}
        for name, value in (("names", list(self.names)), ("was", self.was)):
            if value:
                data[name] = value
        if self.kind.startswith("service-"):
            data.update(enabled=self.enabled, active=self.active)
        return data

    @classmethod
    def from_dict(cls, data: object) -> Entry:
        """Read an entry back; anything malformed is a ValueError."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("kind"), str)
            or not isinstance(data.get("target"), str)
        ):
            raise ValueError(f"not a ledger entry: {data!r}")
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown fields {sorted(set(data) - known)}")
        names = data.get("names", [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("names must be a list of strings")
        return cls(
            kind=data["kind"],
            target=data["target"],
            names=tuple(names),
            was=str(data.get("was", "")),
            enabled=bool(data.get("enabled", False)),
            active=bool(data.get("active", False)),
        )


@dataclass
class Ledger:
    """The record of bootstrap's changes at ``path``, rewritten atomically on every change.

    Until the directory holding it exists (bootstrap's first step creates it), entries are kept in memory and
    written with the next change.
    """

    path: Path
    entries: list[Entry] = field(default_factory=list)
    removed: bool = False

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger at ``path`` (empty when there is none).

        Raises:
            OberError: the file is there but unreadable or not a ledger.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("entries"), list):
                raise ValueError("not an ober bootstrap ledger (format 1)")
            return cls(path, [Entry.from_dict(item) for item in data["entries"]])
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise OberError(
                f"cannot read bootstrap's ledger {path}: {exc}", "restore it from a backup, or remove it by hand"
            ) from None

    def add(self, entry: Entry) -> None:
        """Record a change (once: a rerun that repeats a change does not repeat its entry)."""
        if entry not in self.entries:
            self.entries.append(entry)
            self.save()

    def drop(self, entry: Entry) -> None:
        """Forget a change that was undone."""
        if entry in self.entries:
            self.entries.remove(entry)
            self.save()

    def remove(self) -> None:
        """Delete the file (uninstall, just before removing the directory that holds it)."""
        self.path.unlink(missing_ok=True)
        self.removed = True

    def save(self) -> None:
        """Write the ledger atomically: a temporary file beside it, flushed, renamed over it."""
        if self.removed or not self.path.parent.is_dir():
            return
        text = json.dumps({"format": 1, "entries": [entry.as_dict() for entry in self.entries]}, indent=1) + "\n"
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)  # noqa: PTH101 - mkstemp makes it 600; the ledger holds nothing secret
            Path(temp).replace(self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def ledger_path(install_path: str) -> Path:
    """Where bootstrap's ledger lives for an install path."""
    return Path(install_path) / LEDGER_RELATIVE


# --- facts --------------------------------------------------------------------------------------------------------


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
    tree = Path(__file__).resolve().parent.parent
    return str(tree) if (tree / "pyproject.toml").is_file() and (tree / "ober").is_dir() else None


def _program(root: Path, name: str) -> str | None:
    for directory in _PROGRAM_DIRS:
        candidate = root / directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return f"/{directory}/{name}"
    return None


def _unit(runner: Runner, unit: str) -> UnitState:
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
    SELinux (``getenforce``, ``getsebool haproxy_connect_any``); the distribution's ``haproxy.service``.
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
    unknown = UnitState("unknown", "unknown")
    network = "networkd"
    if _program(root, "netplan"):
        network = "netplan"
    elif systemd and _unit(runner, "NetworkManager.service").is_active:
        network = "networkmanager"
    selinux = boolean = None
    if _program(root, "getenforce"):
        selinux = runner.run(["getenforce"], FACT_TIMEOUT).stdout.strip().lower() or None
        if _program(root, "getsebool"):
            boolean = parse_getsebool(runner.run(["getsebool", SELINUX_BOOLEAN], FACT_TIMEOUT).stdout)
    in_venv = sys.prefix != sys.base_prefix
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
        haproxy_unit=_unit(runner, DISTRO_HAPROXY_UNIT) if systemd else unknown,
        python=tuple(sys.version_info[:3]),
        python_executable=sys.executable,
        venv=sys.prefix if in_venv else None,
        ensurepip=importlib.util.find_spec("ensurepip") is not None,
        network=network,
        networkd=_unit(runner, NETWORKD_UNIT) if systemd else unknown,
        selinux=selinux,
        selinux_boolean=boolean,
        ober_version=__version__,
        ober_source=ober_source(),
    )


def wanted_dirs(install_path: str) -> dict[str, int]:
    """The directories a node needs under the install path, parents first, with their modes."""
    return {
        install_path: 0o755,
        f"{install_path}/etc": 0o755,
        # Private keys live here (certificates.pem, SNI directories, ACME).
        f"{install_path}/etc/certs": 0o700,
        f"{install_path}/run": 0o755,
    }


def gather_install_facts(install_path: str, root: Path = Path("/")) -> InstallFacts:
    """The install path's directories (and its parents) that exist, with their modes; the venv's contents."""
    dirs: dict[str, int] = {}
    for path in [*reversed(PurePosixPath(install_path).parents), *wanted_dirs(install_path)]:
        on_disk = root / str(path).lstrip("/")
        if on_disk.is_dir():
            dirs[str(path)] = on_disk.stat().st_mode & 0o7777
    venv = root / install_path.lstrip("/") / "venv"
    return InstallFacts(install_path, dirs, (venv / "bin/python").exists(), venv_packages(venv))


# --- plans --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One command.

    ``record`` is written to the ledger before the command runs; ``forget`` is dropped from it once the command
    succeeded. A command with ``may_fail`` only warns when it fails.
    """

    argv: tuple[str, ...]
    timeout: float = COMMAND_TIMEOUT
    env: tuple[tuple[str, str], ...] = ()
    record: Entry | None = None
    forget: Entry | None = None
    may_fail: bool = False

    def describe(self) -> str:
        """The command as a shell line."""
        return " ".join([*(f"{key}={value}" for key, value in self.env), shlex.join(self.argv)])


@dataclass(frozen=True)
class InstallPackages:
    """Install packages, recording in the ledger exactly those that were not installed before (dependencies too)."""

    manager: str
    names: tuple[str, ...]
    aws_lc_repo: str | None = None

    def argv(self) -> list[str]:
        """The install command."""
        if self.manager == "apt":
            # Never stop at a conffile question: keep what is there (none of it is ober's).
            confold = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
            return ["apt-get", "install", "-y", "-q", *confold, *self.names]
        return ["dnf", "install", "-y", "-q", *self.names]

    def describe(self) -> str:
        """The command, and what is recorded."""
        env = "DEBIAN_FRONTEND=noninteractive " if self.manager == "apt" else ""
        return f"{env}{shlex.join(self.argv())}  (the packages it adds go into the ledger)"


@dataclass(frozen=True)
class StopUnits:
    """Stop ober's units; gracefully (withdraw, converge, drain) when the node's config can be read."""

    config: NodeConfig | None

    def describe(self) -> str:
        """What stopping does."""
        return "ober stop (withdraw, wait for the routers and clients)" if self.config else "systemctl stop ober-*"


@dataclass(frozen=True)
class RemoveLedger:
    """Delete the ledger right before the directory holding it is removed, if all it still lists is ``going``.

    When an earlier step failed, its change is still listed: the ledger, and so its directory, stay.
    """

    going: tuple[Entry, ...]

    def describe(self) -> str:
        """What it does."""
        return "remove the ledger (once it lists nothing else)"


Action = Run | InstallPackages | StopUnits | RemoveLedger


@dataclass(frozen=True)
class Step:
    """One thing to bring in line: the actions that do it, or none and ``why`` nothing needs doing.

    ``why`` says what the actions do or why there are none; ``warnings`` are shown either way; ``forget`` are
    ledger entries dropped once every action succeeded (uninstall).
    """

    name: str
    title: str
    why: str
    actions: tuple[Action, ...] = ()
    warnings: tuple[str, ...] = ()
    forget: tuple[Entry, ...] = ()

    @property
    def changes(self) -> bool:
        """Whether running it changes the machine."""
        return bool(self.actions)

    @property
    def commands(self) -> list[str]:
        """Each action as a line (for --dry-run)."""
        return [action.describe() for action in self.actions]


@dataclass(frozen=True)
class BootstrapOptions:
    """What the user chose: the install path and, for nodes without internet, a directory of wheels."""

    install_path: str
    wheels: str | None = None


def check_host(host: HostFacts) -> list[str]:
    """Refuse a machine bootstrap cannot make a node; return the warnings for one it can.

    Raises:
        OberError: not root, an unsupported OS, Python older than 3.11, no systemd, neither apt nor dnf.
    """
    if host.euid != 0:
        raise OberError(
            f"ober bootstrap must run as root (running as uid {host.euid}): it installs packages and writes /etc",
            "run it as root, e.g. sudo ober bootstrap",
        )
    found = check_os(host.os_release)
    if found.status == "fail":
        raise OberError(f"unsupported OS: {found.detail}", found.fix)
    python = check_python(host.python)
    if python.status == "fail":
        raise OberError(python.detail, python.fix)
    if not host.systemd:
        raise OberError(
            "systemd is not running here (no /run/systemd/system): ober's services are systemd units",
            "run bootstrap on the node itself, booted with systemd",
        )
    if host.package_manager is None:
        raise OberError("neither apt-get nor dnf is installed here", "use Debian 12+, Ubuntu 24.04+ or RHEL 10+")
    return [found.detail] if found.status == "warn" else []


def default_install_path(host: HostFacts) -> str | None:
    """Inside a venv named ``venv``, its parent (the venv is then the node's); else None: ask, or /opt/ober.

    Only a venv called ``venv`` qualifies: the units run ``<install>/venv/bin/exabgp`` and ``ober``.
    """
    if host.venv is not None and PurePosixPath(host.venv).name == "venv":
        return str(PurePosixPath(host.venv).parent)
    return None


def check_install_path(path: str) -> None:
    """An install path must be absolute, normalized, not ``/`` and at most 64 characters.

    Raises:
        OberError: it is not.
    """
    pure = PurePosixPath(path)
    if not pure.is_absolute() or str(pure) != path or ".." in pure.parts or path == "/":
        raise OberError(f"install path {path!r} must be an absolute, normalized directory", "e.g. /opt/ober")
    if len(path) > MAX_INSTALL_PATH or any(char.isspace() for char in path):
        raise OberError(
            f"install path {path!r} is longer than {MAX_INSTALL_PATH} characters or holds spaces",
            "choose a short path such as /opt/ober",
        )


def plan_bootstrap(facts: Facts, options: BootstrapOptions) -> list[Step]:
    """The steps that make this machine an ober node at ``options.install_path``; pure.

    Raises:
        OberError: the machine or the install path is refused (:func:`check_host`, :func:`check_install_path`).
    """
    host, install = facts.host, facts.install
    warnings = check_host(host)
    check_install_path(options.install_path)
    python = ".".join(str(part) for part in host.python)
    summary = f"{host.os_name}, root, Python {python}, {host.package_manager}, systemd"
    steps = [Step("host", "Check the machine", summary, warnings=tuple(warnings))]
    steps.append(_plan_dirs(install, options.install_path))
    need_venv = not install.venv_python
    steps.append(_plan_packages(host, need_venv))
    steps.append(_plan_distro_unit(host))
    steps.append(_plan_venv(host, install, options))
    steps.append(_plan_network(host))
    if host.selinux is not None:
        steps.append(_plan_selinux(host))
    return steps


def _plan_dirs(install: InstallFacts, path: str) -> Step:
    actions: list[Action] = []
    wanted = {str(parent): 0o755 for parent in reversed(PurePosixPath(path).parents)} | wanted_dirs(path)
    for directory, mode in wanted.items():
        have = install.dirs.get(directory)
        if have is None:
            entry = Entry("directory", directory)
            actions.append(Run(("mkdir", "-m", f"{mode:o}", directory), record=entry))
        elif directory == f"{path}/etc/certs" and have & 0o077:
            entry = Entry("mode", directory, was=f"{have:o}")
            actions.append(Run(("chmod", f"{mode:o}", directory), record=entry))
    if not actions:
        return Step("dirs", "Create ober's directories", f"{path}, etc, etc/certs (700) and run exist")
    made = ", ".join(a.argv[-1] for a in actions if isinstance(a, Run))
    return Step("dirs", "Create ober's directories", f"create or fix {made}", tuple(actions))


def _plan_packages(host: HostFacts, need_venv: bool) -> Step:
    names = ["haproxy"] if host.haproxy_version is None else []
    if need_venv and not host.ensurepip and host.package_manager == "apt":
        names.append("python3-venv")  # Debian and Ubuntu package ensurepip, which venv needs, separately
    title = f"Install {' and '.join(names)}" if names else "Install HAProxy"
    warnings: list[str] = []
    if host.haproxy_version is not None:
        kind = "an AWS-LC build" if host.haproxy_aws_lc else "not an AWS-LC build"
        why = f"HAProxy {host.haproxy_version} is installed ({host.haproxy_ssl or 'SSL library unknown'}; {kind})"
        if host.aws_lc_repo and not host.haproxy_aws_lc:
            warnings.append(
                f"{host.aws_lc_repo} configures an AWS-LC HAProxy repository, but the installed HAProxy "
                f"{host.haproxy_version} is not built with AWS-LC: upgrade it from that repository"
            )
    elif host.aws_lc_repo:
        why = f"haproxy from the AWS-LC repository configured in {host.aws_lc_repo}"
    else:
        candidate = f" {host.haproxy_candidate}" if host.haproxy_candidate else ""
        why = f"the distribution's haproxy{candidate}"
        warnings.append(
            "no AWS-LC HAProxy repository is configured (an apt source or dnf .repo file naming haproxy and "
            f"aws-lc): installing the distribution's haproxy{candidate}, built with OpenSSL"
        )
    if not names:
        return Step("packages", title, why, warnings=tuple(warnings))
    if "python3-venv" in names:
        why += "; python3-venv, whose ensurepip the venv needs"
    actions: list[Action] = []
    if host.package_manager == "apt":
        # Fresh images often have no package lists; a failed refresh still leaves the old ones to install from.
        actions.append(Run(("apt-get", "update", "-q"), 600.0, _NONINTERACTIVE, may_fail=True))
    actions.append(InstallPackages(host.package_manager or "apt", tuple(names), host.aws_lc_repo))
    return Step("packages", title, f"install {', '.join(names)}: {why}", tuple(actions), tuple(warnings))


def _plan_distro_unit(host: HostFacts) -> Step:
    title = f"Disable the distribution's {DISTRO_HAPROXY_UNIT}"
    unit = host.haproxy_unit
    installing = host.haproxy_version is None
    if not installing and not unit.is_enabled and not unit.is_active:
        return Step("haproxy.service", title, f"{DISTRO_HAPROXY_UNIT} is {unit.describe()}")
    # A unit the package install is about to bring was neither enabled nor running before: nothing to restore.
    entry = Entry("service-disabled", DISTRO_HAPROXY_UNIT, enabled=unit.is_enabled, active=unit.is_active)
    why = "ober runs HAProxy as ober-http; the distribution's unit would run a second one at boot"
    # A package from another repository may bring no such unit: then there is nothing to disable.
    disable = Run(("systemctl", "disable", "--now", DISTRO_HAPROXY_UNIT), record=entry, may_fail=installing)
    return Step("haproxy.service", title, why, (disable,))


def _plan_venv(host: HostFacts, install: InstallFacts, options: BootstrapOptions) -> Step:
    venv = f"{options.install_path}/venv"
    title = f"Create the venv with ExaBGP {EXABGP_VERSION}"
    have = install.venv_packages
    wanted = {"exabgp": EXABGP_VERSION, "ober": host.ober_version}
    if install.venv_python and all(have.get(name) == version for name, version in wanted.items()):
        where = "this ober runs inside it" if host.venv == venv else "it is there"
        return Step("venv", title, f"{venv} has ExaBGP {EXABGP_VERSION} and ober {host.ober_version} ({where})")
    actions: list[Action] = []
    record = None
    if not install.venv_python:
        actions.append(Run((host.python_executable, "-m", "venv", venv), record=Entry("venv", venv)))
    else:
        missing = tuple(name for name in wanted if name not in have)
        record = Entry("pip", venv, names=missing) if missing else None
    source: list[str] = []
    if options.wheels:
        ober, origin = f"ober=={host.ober_version}", f"from {options.wheels} only (--no-index)"
        source = ["--no-index", "--find-links", options.wheels]
    elif host.ober_source:
        ober, origin = host.ober_source, f"ober from its source tree {host.ober_source}, ExaBGP from the index"
    else:
        ober, origin = f"ober=={host.ober_version}", "from the package index"
    pip = (f"{venv}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *source)
    env = (("PIP_NO_INPUT", "1"),)
    actions.append(Run((*pip, f"exabgp=={EXABGP_VERSION}", ober), PIP_TIMEOUT, env, record=record))
    verb = "create" if not install.venv_python else "update"
    return Step(
        "venv", title, f"{verb} {venv}: ExaBGP {EXABGP_VERSION} and ober {host.ober_version} {origin}", tuple(actions)
    )


def _plan_network(host: HostFacts) -> Step:
    title = "Prepare the VIP interface's network manager"
    if host.network != "networkd":
        return Step("network", title, f"{host.network} manages the network here (network.manager: {host.network})")
    unit = host.networkd
    if unit.is_enabled and unit.is_active:
        return Step("network", title, "systemd-networkd is enabled and running (network.manager: networkd)")
    entry = Entry("service-enabled", NETWORKD_UNIT, enabled=unit.is_enabled, active=unit.is_active)
    why = f"systemd-networkd is {unit.describe()}: enable it to carry the VIPs (network.manager: networkd)"
    return Step("network", title, why, (Run(("systemctl", "enable", "--now", NETWORKD_UNIT), record=entry),))


def _plan_selinux(host: HostFacts) -> Step:
    title = f"SELinux: allow HAProxy's ports ({SELINUX_BOOLEAN})"
    if host.selinux != "enforcing":
        return Step("selinux", title, f"SELinux is {host.selinux}: it does not confine HAProxy")
    if host.selinux_boolean:
        return Step("selinux", title, f"{SELINUX_BOOLEAN} is on")
    entry = Entry("selinux-boolean", SELINUX_BOOLEAN, was="off")
    # HAProxy binds 8404 (stats, metrics) and connects to RGW on 7480: ports its policy does not allow by default.
    why = "SELinux is enforcing: let HAProxy bind 8404 and connect to RGW (7480)"
    return Step("selinux", title, why, (Run(("setsebool", "-P", SELINUX_BOOLEAN, "1"), 600.0, record=entry),))


# --- running a plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """How a step went."""

    step: Step
    changed: bool
    detail: str
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None


class Reporter(Protocol):
    """Told when each step starts and ends (the CLI's progress display)."""

    def start(self, step: Step) -> None:
        """A step begins."""

    def done(self, result: StepResult) -> None:
        """A step ended."""


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


def _execute(action: Action, runner: Runner, ledger: Ledger, systemctl: Callable[..., None]) -> tuple[str, list[str]]:
    """Carry out one action; returns a note for the step's detail and warnings."""
    if isinstance(action, Run):
        if action.record is not None:
            ledger.add(action.record)
        done = runner.run(action.argv, action.timeout, dict(action.env) or None)
        if not done.ok:
            if action.may_fail:
                return "", [f"{shlex.join(action.argv)} failed ({done.last_line()}); going on"]
            raise OberError(f"{shlex.join(action.argv)}: {done.last_line()}")
        if action.forget is not None:
            ledger.drop(action.forget)
        return "", []
    if isinstance(action, InstallPackages):
        return _install(action, runner, ledger)
    if isinstance(action, StopUnits):
        if action.config is None:
            systemctl("stop", *UNITS)
        else:
            graceful_stop(action.config, systemctl)
        return "", []
    left = [entry for entry in ledger.entries if entry not in action.going]
    if left:
        raise OberError(
            f"kept {ledger.path}: it still lists {len(left)} changes not undone ({left[0].kind} {left[0].target})",
            "fix what failed above and run ober uninstall again",
        )
    ledger.remove()
    return "", []


def _install(action: InstallPackages, runner: Runner, ledger: Ledger) -> tuple[str, list[str]]:
    before = installed_packages(runner, action.manager)
    env = dict(_NONINTERACTIVE) if action.manager == "apt" else None
    done = runner.run(action.argv(), PACKAGE_TIMEOUT, env)
    # Recorded even when the install failed: whatever it managed to add is bootstrap's to remove.
    added = tuple(sorted(installed_packages(runner, action.manager) - before))
    if added:
        ledger.add(Entry("packages", action.manager, added))
    if not done.ok:
        raise OberError(f"{shlex.join(action.argv())}: {done.last_line()}", "check the package repositories")
    note = f"installed {len(added)} packages ({', '.join(added)})" if added else "nothing new installed"
    warnings: list[str] = []
    if "haproxy" in action.names:
        output = runner.run([HAPROXY, "-vv"], FACT_TIMEOUT).stdout
        ssl, aws_lc = parse_haproxy_ssl(output)
        note = f"HAProxy {parse_haproxy_version(output) or '?'} ({ssl or 'SSL library unknown'}); {note}"
        if action.aws_lc_repo and not aws_lc:
            warnings.append(
                f"the installed HAProxy is not an AWS-LC build although {action.aws_lc_repo} configures one: "
                "is that repository reachable? (apt-cache policy haproxy / dnf info haproxy)"
            )
    return note, warnings


def run_steps(
    steps: Sequence[Step],
    runner: Runner,
    ledger: Ledger,
    *,
    reporter: Reporter | None = None,
    keep_going: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[StepResult]:
    """Run each step's actions in order, keeping the ledger; steps without actions report why.

    Args:
        steps: from :func:`plan_bootstrap` or :func:`plan_uninstall`.
        runner: runs the commands.
        ledger: bootstrap's ledger (written as changes happen).
        reporter: told about each step as it starts and ends.
        keep_going: after a failed step, go on with the next (uninstall removes what it can); the failures are
            in the results.
        clock: for the step durations.

    Raises:
        OberError: a step failed (without ``keep_going``); what was done so far is in the ledger.
    """

    def systemctl(*args: str) -> None:
        done = runner.run(["systemctl", *args], COMMAND_TIMEOUT)
        if not done.ok:
            raise OberError(f"systemctl {' '.join(args)}: {done.last_line()}")

    results: list[StepResult] = []
    for step in steps:
        if reporter:
            reporter.start(step)
        started = clock()
        notes: list[str] = []
        warnings = list(step.warnings)
        try:
            for action in step.actions:
                note, more = _execute(action, runner, ledger, systemctl)
                notes += [note] if note else []
                warnings += more
            for entry in step.forget:
                ledger.drop(entry)
        except OberError as exc:
            result = StepResult(step, True, step.why, tuple(warnings), clock() - started, exc.message)
            results.append(result)
            if reporter:
                reporter.done(result)
            if keep_going:
                continue
            raise OberError(
                f"{step.title}: {exc.message}",
                exc.fix or "fix that and run ober bootstrap again, or undo what it did with ober uninstall",
            ) from None
        detail = "; ".join([step.why, *notes]) if step.actions else step.why
        result = StepResult(step, step.changes, detail, tuple(warnings), clock() - started)
        results.append(result)
        if reporter:
            reporter.done(result)
    return results


def next_hint(install_path: str, network: str) -> str:
    """What to run after bootstrap: ``ober config`` writes the rest."""
    ober = f"{install_path}/venv/bin/ober"
    config = "" if install_path == "/opt/ober" else f" -c {install_path}/{CONFIG_RELATIVE}"
    extra = "" if install_path == "/opt/ober" else f", install_path: {install_path}"
    return (
        f"next: {ober} config{config} --from node.yaml (with network.manager: {network}{extra}); it renders the "
        f"units, kernel tuning, HAProxy's and ExaBGP's configs and the VIP interface; then: {ober} start"
    )


# --- uninstall ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UninstallFacts:
    """What uninstall looks at: the ledger, ober config's manifest, what exists, the units."""

    install_path: str
    ledger: tuple[Entry, ...]
    manifest: tuple[str, ...]
    existing: frozenset[str]
    """Which of the manifest's files and ober's own state paths exist."""
    children: Mapping[str, frozenset[str]]
    """For each directory the ledger lists: the full paths of what is in it now."""
    units: Mapping[str, UnitState]
    installed: frozenset[str] = frozenset()
    """Which of the ledger's packages are still installed."""
    config: NodeConfig | None = None
    systemd: bool = True


def _state_paths(install_path: str) -> dict[str, str]:
    return {
        "manifest": manifest_path(install_path),
        "maintenance": f"{install_path}/etc/maintenance",
        "backup": f"{install_path}/backup",
        "config": f"{install_path}/{CONFIG_RELATIVE}",
    }


def gather_uninstall_facts(install_path: str, runner: Runner, root: Path = Path("/")) -> UninstallFacts:
    """Read the ledger, ober config's manifest and the units' states (nothing is changed).

    Raises:
        OberError: the ledger is corrupt.
    """

    def on(path: str) -> Path:
        return root / path.lstrip("/")

    ledger = Ledger.load(on(str(ledger_path(install_path)))).entries
    try:
        manifest = tuple(str(item) for item in json.loads(on(manifest_path(install_path)).read_text()))
    except (OSError, ValueError, TypeError):
        manifest = ()
    candidates = [*manifest, *_state_paths(install_path).values()]
    existing = frozenset(path for path in candidates if on(path).exists() or on(path).is_symlink())
    children = {
        entry.target: frozenset(f"{entry.target}/{child.name}" for child in on(entry.target).iterdir())
        for entry in ledger
        if entry.kind == "directory" and on(entry.target).is_dir()
    }
    systemd = (root / "run/systemd/system").is_dir()
    units = {unit: _unit(runner, unit) for unit in UNITS} if systemd else {}
    installed: set[str] = set()
    for entry in ledger:
        if entry.kind == "packages":
            installed |= set(entry.names) & installed_packages(runner, entry.target)
    config = None
    if on(_state_paths(install_path)["config"]).is_file():
        try:
            config = load_config(on(_state_paths(install_path)["config"]))
        except OberError:
            config = None  # a broken config still lets uninstall stop the units, just not gracefully
    return UninstallFacts(
        install_path, tuple(ledger), manifest, existing, children, units, frozenset(installed), config, systemd
    )


def plan_uninstall(facts: UninstallFacts, *, keep_config: bool = False) -> list[Step]:
    """The steps that undo bootstrap (its ledger, newest change first) and remove ``ober config``'s files; pure.

    Files and directories ober did not write are kept, and so is every directory holding one: the steps say
    which. ``keep_config`` keeps ``ober.yaml`` and its backups too.
    """
    install = facts.install_path
    state = _state_paths(install)
    steps: list[Step] = []

    active = [unit for unit, s in facts.units.items() if s.is_active]
    enabled = [unit for unit, s in facts.units.items() if s.is_enabled]
    stop: list[Action] = [StopUnits(facts.config)] if active else []
    if enabled:
        stop.append(Run(("systemctl", "disable", *enabled)))
    why = f"stop {', '.join(active) or 'nothing'}, disable {', '.join(enabled) or 'nothing'}"
    steps.append(
        Step("units", "Stop and disable ober's units", why if stop else "ober's units are not running", tuple(stop))
    )

    keep = {state["config"]} if keep_config else set()
    files = [path for path in (*facts.manifest, state["manifest"], state["maintenance"]) if path in facts.existing]
    files = sorted(set(files) - keep)
    removed = set(files)
    actions: list[Action] = [Run(("rm", "-f", *files))] if files else []
    if state["backup"] in facts.existing and not keep_config:
        actions.append(Run(("rm", "-rf", state["backup"])))
        removed.add(state["backup"])
    if facts.systemd and any(path.startswith("/etc/systemd/system/") for path in files):
        actions.append(Run(("systemctl", "daemon-reload")))
    for manager, directory in NETWORK_DIRS.items():
        if facts.systemd and any(path.startswith(directory) for path in files):
            # The VIP interface's file is gone; its manager may not run any more, which is fine.
            actions.append(Run(tuple(NETWORK_APPLY[manager].split()), may_fail=True))
    sysctl = " (kernel settings stay in effect until reboot)" if "/etc/sysctl.d/90-ober.conf" in removed else ""
    why = f"remove {len(files)} files ober config wrote{sysctl}" + (
        ", its backups" if state["backup"] in removed else ""
    )
    steps.append(
        Step(
            "files", "Remove ober config's files", why if actions else "no files of ober config's here", tuple(actions)
        )
    )

    venv_entries = [e for e in facts.ledger if e.kind == "venv"]
    for entry in reversed(facts.ledger):
        if entry.kind in ("directory", "mode", "venv"):
            continue
        steps.append(_undo(entry, facts, venv_removed=bool(venv_entries)))
    steps.append(_plan_remove_dirs(facts, removed, venv_entries))
    return steps


def _undo(entry: Entry, facts: UninstallFacts, *, venv_removed: bool) -> Step:
    """The step undoing one ledger entry (other than directories and the venv)."""
    unit = entry.target
    if entry.kind == "packages":
        names = tuple(name for name in entry.names if name in facts.installed)
        title = f"Remove the packages bootstrap installed ({entry.target})"
        if not names:
            return Step("packages", title, "none of them is installed any more", forget=(entry,))
        # dpkg/rpm remove exactly these, and refuse when another package still needs one: nothing else goes.
        argv = ("dpkg", "--purge", *names) if entry.target == "apt" else ("rpm", "-e", *names)
        env = _NONINTERACTIVE if entry.target == "apt" else ()
        return Step("packages", title, f"remove {', '.join(names)}", (Run(argv, PACKAGE_TIMEOUT, env, forget=entry),))
    if entry.kind == "pip":
        title = f"Remove {', '.join(entry.names)} from {entry.target}"
        if venv_removed or not entry.names:
            return Step("pip", title, "the venv goes as a whole", forget=(entry,))
        argv = (f"{entry.target}/bin/python", "-m", "pip", "uninstall", "-y", "-q", *entry.names)
        return Step("pip", title, "installed there by bootstrap", (Run(argv, PIP_TIMEOUT, forget=entry),))
    if entry.kind == "selinux-boolean":
        value = "1" if entry.was == "on" else "0"
        title = f"Restore SELinux {entry.target}"
        return Step(
            "selinux", title, f"back to {entry.was}", (Run(("setsebool", "-P", unit, value), 600.0, forget=entry),)
        )
    if entry.kind in ("service-disabled", "service-enabled"):
        back_on = entry.kind == "service-disabled"
        title = f"{'Re-enable' if back_on else 'Disable'} {unit} as it was before bootstrap"
        commands: list[tuple[str, ...]] = []
        if back_on:
            commands += [("systemctl", "enable", unit)] if entry.enabled else []
            commands += [("systemctl", "start", unit)] if entry.active else []
        else:
            commands += [("systemctl", "disable", unit)] if not entry.enabled else []
            commands += [("systemctl", "stop", unit)] if not entry.active else []
        before = f"{'enabled' if entry.enabled else 'disabled'} and {'active' if entry.active else 'inactive'}"
        if not commands or not facts.systemd:
            return Step("service", title, f"it was {before} before bootstrap: nothing to restore", forget=(entry,))
        actions = tuple(Run(argv) for argv in commands)
        return Step("service", title, f"it was {before} before bootstrap", actions, forget=(entry,))
    return Step("unknown", f"Unknown ledger entry {entry.kind}", "left in the ledger: remove it by hand")


def _plan_remove_dirs(facts: UninstallFacts, removed: set[str], venv_entries: list[Entry]) -> Step:
    """Remove the venv and the directories bootstrap created that hold nothing else; say what is kept and why."""
    install = facts.install_path
    ledger_file = str(ledger_path(install))
    actions: list[Action] = []
    forget: list[Entry] = []
    kept: list[str] = []
    for entry in venv_entries:
        actions.append(Run(("rm", "-rf", entry.target), forget=entry))
        removed.add(entry.target)
    dirs = sorted((e for e in facts.ledger if e.kind == "directory"), key=lambda e: e.target.count("/"), reverse=True)
    going = [e for e in facts.ledger if e.kind in ("directory", "mode")]
    for entry in dirs:
        path = entry.target
        if path not in facts.children:
            forget.append(entry)  # gone already: only its ledger entry is left
        elif path == f"{install}/run":
            # Runtime state only (sockets, pid and health files), remade by the units.
            actions.append(Run(("rm", "-rf", path), forget=entry))
            removed.add(path)
        elif others := sorted(facts.children[path] - removed - {ledger_file}):
            kept.append(f"{path} (holds {', '.join(PurePosixPath(other).name for other in others)})")
            going.remove(entry)
        else:
            if str(PurePosixPath(ledger_file).parent) == path:
                actions.append(RemoveLedger(tuple(going)))
            actions.append(Run(("rmdir", path), forget=entry))
            removed.add(path)
    for entry in (e for e in facts.ledger if e.kind == "mode"):
        if entry.target in removed or entry.target not in facts.children:
            forget.append(entry)
        else:
            actions.append(Run(("chmod", entry.was, entry.target), forget=entry))
    gone = [a.argv[-1] for a in actions if isinstance(a, Run) and a.argv[0] in ("rm", "rmdir")]
    why = f"remove {', '.join(gone)}" if gone else "no directories of bootstrap's to remove"
    if kept:
        why += f"; kept, holding files ober did not write: {'; '.join(kept)}"
    return Step("dirs", "Remove the venv and bootstrap's directories", why, tuple(actions), forget=tuple(forget))


def uninstall_changes(steps: Sequence[Step]) -> bool:
    """Whether an uninstall plan has anything to do (machine changes, or ledger entries to drop)."""
    return any(step.actions or step.forget for step in steps)
