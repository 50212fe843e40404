"""Bootstrap's plan: compare the machine's facts with what a node needs; pure (no I/O).

Kernel tuning, the units, HAProxy's and ExaBGP's configs and the VIP interface's file are *not* planned here: they
are rendered from the node's ``ober.yaml`` by ``ober config`` (:mod:`ober.configure`), which owns them and lists
them in its manifest, and whose ``kernel_profile`` decides the tuning. Writing a sysctl file here too would give
that file two owners and a content bootstrap cannot know (the node's name and profile are in ``ober.yaml``); and
nothing that needs the tuning (HAProxy binding the VIPs) runs before ``ober config`` has written it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ober.bootstrap.facts import (
    DISTRO_HAPROXY_UNIT,
    JOURNALD_DROP_INS,
    NETWORKD_UNIT,
    NETWORKD_WAIT_ONLINE,
    PATH_LINK,
    SELINUX_BOOLEAN,
    Facts,
    HostFacts,
    InstallFacts,
    wanted_dirs,
)
from ober.bootstrap.ledger import Entry
from ober.bootstrap.steps import NONINTERACTIVE, PIP_TIMEOUT, Action, InstallPackages, Run, Step
from ober.checks.host import check_os, check_python
from ober.config import DEFAULT_INSTALL_PATH
from ober.errors import OberError
from ober.render import NODE_USERS, install_paths
from ober.wheelpins import pinned_install

EXABGP_VERSION = "5.0.15"
"""ExaBGP's release ober runs (5.0 keeps the text API; 6, unreleased, defaults to a JSON-only API)."""
MAX_INSTALL_PATH = 64  # ober.config's limit: HAProxy's socket path under it must stay short


@dataclass(frozen=True)
class BootstrapOptions:
    """What the user chose: the install path and, for nodes without internet, a directory of wheels."""

    install_path: str
    wheels: str | None = None
    pinned: bool = False
    """The wheels directory pins every wheel by hash (``requirements.txt``): install exactly those, checked."""


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
    steps.append(plan_users(host.users, host.groups))
    need_venv = not install.venv_python
    steps.append(_plan_packages(host, need_venv))
    steps.append(_plan_distro_unit(host))
    steps.append(_plan_venv(host, install, options))
    steps.append(_plan_path(install, options.install_path))
    steps.append(_plan_network(host))
    if host.selinux is not None:
        steps.append(_plan_selinux(host))
    return steps


def _plan_dirs(install: InstallFacts, path: str) -> Step:
    actions: list[Action] = []
    wanted = {str(parent): 0o755 for parent in reversed(PurePosixPath(path).parents)} | wanted_dirs(path)
    wanted = {directory: mode for directory, mode in wanted.items() if directory != "/"}
    for directory, mode in wanted.items():
        have = install.dirs.get(directory)
        if have is None:
            entry = Entry("directory", directory)
            actions.append(Run(("mkdir", "-m", f"{mode:o}", directory), record=entry))
        elif directory == install_paths(path)["certs_dir"] and have & 0o077:
            entry = Entry("mode", directory, was=f"{have:o}")
            actions.append(Run(("chmod", f"{mode:o}", directory), record=entry))
    if not actions:
        why = f"{path}, etc, etc/certs (700), etc/whitelist, run and {JOURNALD_DROP_INS} exist"
        return Step("dirs", "Create ober's directories", why)
    made = ", ".join(a.argv[-1] for a in actions if isinstance(a, Run))
    return Step("dirs", "Create ober's directories", f"create or fix {made}", tuple(actions))


# Who each user is for (useradd's comment in /etc/passwd: no colon, it separates the fields).
USER_ROLES = {
    NODE_USERS.haproxy_user: "ober HAProxy workers",
    NODE_USERS.bgp_user: "ober ExaBGP and ober health",
}


def plan_users(users: frozenset[str], groups: frozenset[str]) -> Step:
    """Create the system users (each with its own group) the node's daemons run as; pure.

    Recorded before each command runs; uninstall removes only those still there.
    """
    title = "Create the users ober's daemons run as"
    actions: list[Action] = []
    for user, group in (
        (NODE_USERS.haproxy_user, NODE_USERS.haproxy_group),
        (NODE_USERS.bgp_user, NODE_USERS.bgp_group),
    ):
        if group not in groups:
            actions.append(Run(("groupadd", "--system", group), record=Entry("group", group)))
        if user not in users:
            useradd = (
                "useradd", "--system", "--gid", group, "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", "--comment", USER_ROLES[user], user,
            )  # fmt: skip
            actions.append(Run(useradd, record=Entry("user", user)))
    if not actions:
        return Step("users", title, f"{' and '.join(NODE_USERS.users)} exist")
    made = ", ".join(f"{a.record.kind} {a.record.target}" for a in actions if isinstance(a, Run) and a.record)
    why = (
        f"create {made}: HAProxy's workers (facing the internet) and ExaBGP run as these, not as root; "
        "no login, no home"
    )
    return Step("users", title, why, tuple(actions))


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
        actions.append(Run(("apt-get", "update", "-q"), 600.0, NONINTERACTIVE, may_fail=True))
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
    venv = install_paths(options.install_path)["venv"]
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
    pins: list[str] = [f"exabgp=={EXABGP_VERSION}"]
    if options.wheels and options.pinned:
        # Every wheel at its pinned version and hash (pip refuses any other); ober and ExaBGP among them.
        ober, origin = "", f"from {options.wheels} only, each wheel checked against its pinned hash"
        source, pins = pinned_install(options.wheels), []
    elif options.wheels:
        ober, origin = f"ober=={host.ober_version}", f"from {options.wheels} only (--no-index)"
        source = ["--no-index", "--find-links", options.wheels]
    elif host.ober_source:
        ober, origin = host.ober_source, f"ober from its source tree {host.ober_source}, ExaBGP from the index"
    else:
        ober, origin = f"ober=={host.ober_version}", "from the package index"
    pip = (f"{venv}/bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *source)
    env = (("PIP_NO_INPUT", "1"),)
    actions.append(Run((*pip, *pins, *([ober] if ober else [])), PIP_TIMEOUT, env, record=record))
    verb = "create" if not install.venv_python else "update"
    return Step(
        "venv", title, f"{verb} {venv}: ExaBGP {EXABGP_VERSION} and ober {host.ober_version} {origin}", tuple(actions)
    )


def _plan_path(install: InstallFacts, path: str) -> Step:
    title = "Put ober on PATH"
    program = install_paths(path)["ober"]
    if install.path_link == program:
        return Step("path", title, f"{PATH_LINK} links to {program}")
    if install.path_link is not None or install.path_taken:
        what = f"a link to {install.path_link}" if install.path_link else "a file ober did not write"
        warning = f"{PATH_LINK} is {what}: left alone, so 'ober' may not be this node's; run {program}"
        return Step("path", title, f"{PATH_LINK} is {what}", warnings=(warning,))
    if not install.path_dir:
        directory = PurePosixPath(PATH_LINK).parent
        return Step("path", title, f"{directory} does not exist", warnings=(f"no {directory}: run {program}",))
    # Recorded first: removing a link that was never made is harmless (uninstall checks where it points).
    link = Run(("ln", "-s", program, PATH_LINK), record=Entry("symlink", PATH_LINK, names=(program,)))
    return Step("path", title, f"link {PATH_LINK} to {program}", (link,))


def _plan_network(host: HostFacts) -> Step:
    title = "Prepare the VIP interface's network manager"
    if host.network != "networkd":
        return Step("network", title, f"{host.network} manages the network here (network.manager: {host.network})")
    unit = host.networkd
    if unit.is_enabled and unit.is_active:
        return Step("network", title, "systemd-networkd is enabled and running (network.manager: networkd)")
    entry = Entry("service-enabled", NETWORKD_UNIT, enabled=unit.is_enabled, active=unit.is_active)
    why = f"systemd-networkd is {unit.describe()}: enable it to carry the VIPs (network.manager: networkd)"
    # Enabling networkd also enables its wait-online service (Also=), which waits for links networkd manages to come
    # online. Here it manages only the VIPs' interface (it was off: something else runs the uplink), so it would
    # hold network-online.target, and ober-http after it, for its whole 2-minute timeout at every boot. Uninstall's
    # disable of networkd disables it again either way.
    return Step(
        "network",
        title,
        why,
        (
            Run(("systemctl", "enable", "--now", NETWORKD_UNIT), record=entry),
            Run(("systemctl", "disable", NETWORKD_WAIT_ONLINE), may_fail=True),
        ),
    )


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


def next_hint(install_path: str, network: str) -> str:
    """What to run after bootstrap: ``ober config`` writes the rest."""
    layout = install_paths(install_path)
    ober = layout["ober"]
    config = "" if install_path == DEFAULT_INSTALL_PATH else f" -c {layout['config']}"
    extra = "" if install_path == DEFAULT_INSTALL_PATH else f", install_path: {install_path}"
    return (
        f"next: {ober} config{config} --from node.yaml (with network.manager: {network}{extra}); it renders the "
        f"units, kernel tuning, HAProxy's and ExaBGP's configs and the VIP interface; then: {ober} start"
    )
