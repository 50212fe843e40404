"""``ober upgrade``: the installed and available HAProxy, ExaBGP and ober, and the steps that upgrade them.

Facts → plan → :func:`ober.bootstrap.run_steps`, like bootstrap:

- HAProxy comes from the package manager: apt's ``Installed``/``Candidate`` (``apt-cache policy haproxy``), or
  dnf's available upgrade (``dnf list --upgrades haproxy``). It is upgraded in place, then ``ober-http`` is
  *reloaded*, not restarted: HAProxy's master (master-worker mode) re-executes the new binary and hands its
  listeners to the new workers, so no connection is refused (and the reload validates the config with the new
  binary first; a refusal leaves the old one serving).
- ober's users (see :func:`ober.bootstrap.plan.plan_users`) are created when a node bootstrapped before them lacks
  them, recorded in bootstrap's ledger like everything bootstrap made.
- ober comes from a wheelhouse directory (offline, ``pip --no-index``) or the package index; ExaBGP is pinned by
  ober (``exabgp==5.0.15``), so it changes with ober and is shown, not chosen. After either changed,
  ``ober-bgp`` is restarted (ExaBGP runs ``ober health``; both are Python loaded at start).

Packages an upgrade pulls in for the first time go into bootstrap's ledger, so uninstall still removes exactly
what ober added.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ober.bootstrap.facts import (
    FACT_TIMEOUT,
    UnitState,
    parse_apt_candidate,
    parse_dnf_list,
    read_unit,
    venv_packages,
)
from ober.bootstrap.plan import plan_users
from ober.bootstrap.steps import NONINTERACTIVE, PIP_TIMEOUT, Action, InstallPackages, Run, Step
from ober.errors import OberError
from ober.facts import account_names
from ober.render import install_paths
from ober.runner import Runner
from ober.wheelpins import REQUIREMENTS, pinned_install

INDEX_TIMEOUT = 60.0
REFRESH_TIMEOUT = 600.0
_WHEEL = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.+\.whl$")
_APT_INSTALLED = re.compile(r"^\s*Installed:\s*(\S+)", re.MULTILINE)
_PIP_INDEX = re.compile(r"^\S+ \(([^)]+)\)", re.MULTILINE)


@dataclass(frozen=True)
class Versions:
    """One component: what is installed and what could be (None: unknown or none)."""

    installed: str | None
    available: str | None
    source: str = ""

    @property
    def newer(self) -> bool:
        """An available version that differs from the installed one (apt's candidate; a newer wheel)."""
        return self.available is not None and self.installed is not None and self.available != self.installed

    def as_dict(self) -> dict[str, str | None]:
        """The JSON form."""
        return {"installed": self.installed, "available": self.available, "source": self.source}


@dataclass(frozen=True)
class UpgradeFacts:
    """What ``ober upgrade`` looks at."""

    install_path: str
    manager: str
    haproxy: Versions
    ober: Versions
    exabgp: Versions
    units: dict[str, UnitState] = field(default_factory=dict)
    wheelhouse: str | None = None
    pinned: bool = False
    """The wheelhouse pins every wheel by hash (``requirements.txt``): install exactly those, checked."""
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Order PEP 440-ish versions well enough for releases: ``0.10.0`` after ``0.9.1``, numbers before words."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.+-]", version))


def wheel_versions(wheelhouse: Path) -> dict[str, str]:
    """The newest version of each distribution in a directory of wheels (name normalized: ``python-hostlist``)."""
    newest: dict[str, str] = {}
    for wheel in wheelhouse.glob("*.whl"):
        match = _WHEEL.match(wheel.name)
        if match is None:
            continue
        name = match["name"].lower().replace("_", "-")
        if name not in newest or version_key(match["version"]) > version_key(newest[name]):
            newest[name] = match["version"]
    return newest


def parse_apt_installed(output: str) -> str | None:
    """The ``Installed:`` version in ``apt-cache policy`` output (None when not installed)."""
    match = _APT_INSTALLED.search(output)
    return match.group(1) if match and match.group(1) != "(none)" else None


def parse_pip_index(output: str) -> str | None:
    """The newest version ``pip index versions NAME`` reports (``ober (0.2.0)``)."""
    match = _PIP_INDEX.search(output)
    return match.group(1) if match else None


def _haproxy_versions(runner: Runner, manager: str, refresh: bool) -> Versions:
    if manager == "apt":
        if refresh:
            # apt-cache knows only the lists it last fetched; a failed refresh (no mirror reachable) keeps those.
            runner.run(["apt-get", "update", "-q"], REFRESH_TIMEOUT, dict(NONINTERACTIVE))
        policy = runner.run(["apt-cache", "policy", "haproxy"], FACT_TIMEOUT).stdout
        return Versions(parse_apt_installed(policy), parse_apt_candidate(policy), "apt")
    query = runner.run(["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", "haproxy"], FACT_TIMEOUT)
    installed = query.stdout.strip() if query.ok else None
    upgrade = parse_dnf_list(runner.run(["dnf", "list", "--upgrades", "haproxy"], FACT_TIMEOUT * 3).stdout)
    return Versions(installed, upgrade or installed, "dnf")


def gather_upgrade_facts(
    install_path: str,
    runner: Runner,
    *,
    manager: str,
    wheelhouse: Path | None = None,
    refresh: bool = True,
    root: Path = Path("/"),
) -> UpgradeFacts:
    """Read the installed versions and the available ones; nothing is changed but apt's package lists (``refresh``).

    Raises:
        OberError: there is no ober venv at the install path (bootstrap first).
    """
    layout = install_paths(install_path)
    venv = root / layout["venv"].lstrip("/")
    if not (root / layout["python"].lstrip("/")).exists():
        raise OberError(f"no ober venv at {layout['venv']}", f"bootstrap first: ober bootstrap {install_path}")
    have = venv_packages(venv)
    if wheelhouse is not None:
        offered = wheel_versions(wheelhouse)
        source = str(wheelhouse)
        ober, exabgp = offered.get("ober"), offered.get("exabgp")
    else:
        source = "the package index"
        python = layout["python"]
        ober = exabgp = None
        for name in ("ober", "exabgp"):
            done = runner.run([python, "-m", "pip", "index", "versions", name, "-q"], INDEX_TIMEOUT)
            found = parse_pip_index(done.stdout) if done.ok else None
            ober, exabgp = (found, exabgp) if name == "ober" else (ober, found)
    systemd = (root / "run/systemd/system").is_dir()
    users, groups = account_names(root)
    return UpgradeFacts(
        install_path,
        manager,
        _haproxy_versions(runner, manager, refresh),
        Versions(have.get("ober"), ober, source),
        Versions(have.get("exabgp"), exabgp, source),
        {unit: read_unit(runner, unit) for unit in ("ober-http", "ober-bgp")} if systemd else {},
        str(wheelhouse) if wheelhouse else None,
        wheelhouse is not None and (wheelhouse / REQUIREMENTS).is_file(),
        users,
        groups,
    )


def plan_upgrade(facts: UpgradeFacts) -> list[Step]:
    """The steps that upgrade what is newer, each followed by the least disruptive restart it needs; pure."""
    http = facts.units.get("ober-http", UnitState())
    bgp = facts.units.get("ober-bgp", UnitState())
    steps: list[Step] = []

    title = "Upgrade HAProxy"
    haproxy = facts.haproxy
    if haproxy.installed is None:
        steps.append(Step("haproxy", title, "HAProxy is not installed from a package: bootstrap installs it"))
    elif not haproxy.newer:
        steps.append(Step("haproxy", title, f"HAProxy {haproxy.installed} is the newest {haproxy.source} offers"))
    else:
        actions: list[Action] = [InstallPackages(facts.manager, ("haproxy",), upgrade=True)]
        why = f"{haproxy.installed} → {haproxy.available}"
        if http.is_active:
            # Master-worker: a reload re-executes the new binary and keeps the listeners (hitless).
            actions.append(Run(("systemctl", "reload", "ober-http")))
            why += "; then reload ober-http (the master re-executes the new binary, no connection dropped)"
        steps.append(Step("haproxy", title, why, tuple(actions)))

    title = "Upgrade ober (and the ExaBGP it pins)"
    ober = facts.ober
    if ober.available is None:
        where = facts.wheelhouse or "the package index"
        steps.append(Step("ober", title, f"no ober in {where}: ober {ober.installed} stays"))
    elif ober.installed is not None and version_key(ober.available) <= version_key(ober.installed):
        steps.append(Step("ober", title, f"ober {ober.installed} is the newest in {ober.source}"))
    else:
        venv = install_paths(facts.install_path)["venv"]
        source: tuple[str, ...] = ("--no-index", "--find-links", facts.wheelhouse) if facts.wheelhouse else ()
        wanted: tuple[str, ...] = (f"ober=={ober.available}",)
        if facts.wheelhouse and facts.pinned:
            # Every wheel at its pinned version and hash (the wheelhouse's newest ober is among them).
            source, wanted = tuple(pinned_install(facts.wheelhouse)), ()
        pip = (f"{venv}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *source)
        actions = [Run((*pip, "--upgrade", *wanted), PIP_TIMEOUT, (("PIP_NO_INPUT", "1"),))]
        why = f"ober {ober.installed} → {ober.available} from {ober.source}"
        if bgp.is_active:
            # ExaBGP and `ober health` are Python loaded at start: only a restart runs the new code.
            actions.append(Run(("systemctl", "restart", "ober-bgp")))
            why += "; then restart ober-bgp (ExaBGP and ober health load the new code)"
        steps.append(Step("ober", title, why, tuple(actions)))
    users = plan_users(facts.users, facts.groups)
    if users.changes:
        # A node bootstrapped by an ober from before its daemons ran unprivileged: the next `ober config` renders
        # units that run as these users, and refuses while they are missing.
        steps.append(users)
    return steps
