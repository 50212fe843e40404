"""Rendering: a node config (plus the secrets it references) in, the node's files out.

Pure and deterministic: no I/O besides reading templates, the same input gives byte-identical output, so a content
hash tells whether a node has drifted. Templates hold layout; the decisions (which files, which paths, which
directives for which HAProxy version) are made here and handed to the templates as plain values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from ober.config import CONFIG_RELATIVE, SLOT_PREFIX, NodeConfig, Whitelists, dump_config
from ober.errors import RenderError
from ober.hostlists import is_ipv4
from ober.keepalive import template_values
from ober.secrets import pick

TEMPLATES_HINT = "reinstall ober: its templates are missing"


def templates_dir() -> Path:
    """Where the templates are: inside the installed package, or the source tree's ``templates/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RenderError("ober's templates directory is missing", TEMPLATES_HINT)


@cache
def _environment() -> jinja2.Environment:
    # Config files, not HTML: values are validated before they get here, and escaping would corrupt them.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # noqa: S701
    )


@dataclass(frozen=True)
class RenderedFile:
    """One file for a node: where it goes, what it holds, and its mode (0600 for anything with a secret)."""

    path: str
    content: str
    mode: int

    @property
    def sha256(self) -> str:
        """The content hash."""
        return hashlib.sha256(self.content.encode()).hexdigest()


@dataclass(frozen=True)
class Rendered:
    """All files of one node, sorted by path."""

    node: str
    files: tuple[RenderedFile, ...]

    def file(self, path: str) -> RenderedFile:
        """The file at ``path`` (an absolute path on the node)."""
        for item in self.files:
            if item.path == path:
                return item
        raise KeyError(path)

    @property
    def digest(self) -> str:
        """One hash over every file's path, mode and content: equal digests mean nothing to push."""
        total = hashlib.sha256()
        for item in self.files:
            total.update(f"{item.path}\0{item.mode:o}\0{item.sha256}\n".encode())
        return total.hexdigest()


def seconds(value: float) -> str:
    """A duration as HAProxy and systemd read it: ``5s`` when whole, else milliseconds."""
    millis = round(value * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


# systemd kills HAProxy only this long after the drain timeout: `ober stop` hard-stops it at the drain timeout
# itself (and says how many sessions it cut), so systemd's SIGKILL is the last resort for a plain `systemctl stop`.
STOP_MARGIN = 30.0


def stop_timeout(config: NodeConfig) -> float:
    """Seconds systemd lets HAProxy's soft stop run before it kills what is left (the unit's TimeoutStopSec)."""
    return config.health.drain_timeout + STOP_MARGIN


EPHEMERAL = (1024, 65535)
"""The source port range the kernel profile sets (net.ipv4.ip_local_port_range)."""


def listening_ports(config: NodeConfig, within: tuple[int, int] = (1, 65535)) -> list[int]:
    """The TCP ports HAProxy listens on (S3 on the VIPs, the stats page), those ``within`` the range, sorted."""
    ports = {443, config.stats.port} | ({80} if config.certificates.http != "off" else set())
    return sorted(port for port in ports if within[0] <= port <= within[1])


ACME_PEM_NAME = "ober-acme.pem"
"""The ACME certificate's file in the node's ACME directory: always this name, so a renewal replaces the certificate
HAProxy loaded first (its default for clients without SNI) instead of adding a second one."""

FLEET_STATE_DIR = "/var/lib/ober/fleet"
"""The fleet controller's state on a node: its lock, the roll records (``roll.json`` until a roll finished with the
whole fleet, ``last-roll.json`` after; ``ober health``'s metrics show them), uploads."""


@dataclass(frozen=True)
class RunAs:
    """The unprivileged users and groups the node's daemons run as (made by ``ober bootstrap``).

    HAProxy's workers (the processes facing the internet) run as ``haproxy``; ExaBGP and ``ober health`` as ``bgp``,
    whose group may read HAProxy's state through the read-only health socket and nothing else of HAProxy's.
    """

    haproxy_user: str = "ober-haproxy"
    haproxy_group: str = "ober-haproxy"
    bgp_user: str = "ober-bgp"
    bgp_group: str = "ober-bgp"

    @property
    def users(self) -> tuple[str, ...]:
        """The user names, each with a group of the same name on a node."""
        return (self.haproxy_user, self.bgp_user)


NODE_USERS = RunAs()


# What systemd's ProtectHome= hides and PrivateTmp= replaces with an empty directory.
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")  # noqa: S108 - names of directories, not files made there


@dataclass(frozen=True)
class Sandbox:
    """How much of the file system the units may hide: never a directory the node's own files are in.

    ``protect_home`` is systemd's ProtectHome= value: ``yes`` (hidden), ``read-only`` (a certificate or CA file is
    there) or ``no`` (the install path itself is, and ``ober health`` writes under it).
    """

    protect_home: str
    private_tmp: bool


def _under(path: str, dirs: tuple[str, ...]) -> bool:
    return any(path == top or path.startswith(top + "/") for top in dirs)


def sandbox(config: NodeConfig) -> Sandbox:
    """The sandbox the node's paths allow (an install path or certificate under /home or /tmp is unusual, not wrong)."""
    read = [
        config.certificates.crt_path(config.install_path),
        config.health.maintenance_file,
        *(group.tls.ca_file for group in config.backends if group.tls.ca_file),
        *(g.discovery.path for g in config.backends if g.discovery and g.discovery.path),
    ]
    if _under(config.install_path, HOME_DIRS):
        home = "no"
    elif any(_under(path, HOME_DIRS) for path in read):
        home = "read-only"
    else:
        home = "yes"
    return Sandbox(home, not any(_under(path, TMP_DIRS) for path in [config.install_path, *read]))


def install_paths(install_path: str, root: str = "") -> dict[str, str]:
    """The node paths that follow from the install path alone: what bootstrap and uninstall know before a config.

    Prefixed with ``root`` (set when validating in a scratch tree). :func:`paths` adds what the config decides.
    """
    etc = f"{install_path}/etc"
    run = f"{install_path}/run"
    venv = f"{install_path}/venv"
    base = {
        "install_path": install_path,
        "etc": etc,
        "config": f"{install_path}/{CONFIG_RELATIVE}",
        "haproxy_cfg": f"{etc}/haproxy.cfg",
        "exabgp_conf": f"{etc}/exabgp.conf",
        "secrets_env": f"{etc}/secrets.env",
        "whitelist_dir": f"{etc}/whitelist",
        # Private keys live here (certificates.pem, SNI directories, ACME): the directory is 700.
        "certs_dir": f"{etc}/certs",
        # The fleet's secrets for this node (mode 600).
        "login": f"{etc}/login",
        # The files ober config wrote (the next apply removes those no longer rendered).
        "manifest": f"{etc}/.ober-manifest.json",
        # What bootstrap changed, so uninstall can undo it.
        "ledger": f"{etc}/.bootstrap.json",
        "maintenance_file": f"{etc}/maintenance",
        "backup": f"{install_path}/backup",
        # ACME: the one certificate file in the crt directory (a placeholder until the fleet's first renew), and the
        # HTTP-01 tokens HAProxy answers, empty on disk: the fleet adds tokens at runtime (see ober.acme_node).
        "acme_pem": f"{etc}/certs/acme/{ACME_PEM_NAME}",
        "acme_map": f"{etc}/acme-challenges.map",
        "run_dir": run,
        "admin_socket": f"{run}/haproxy.sock",
        # Read-only (`show stat`), for `ober health`, which runs as the BGP user: see RunAs.
        "health_socket": f"{run}/health.sock",
        "pid_file": f"{run}/haproxy.pid",
        # HAProxy's workers are chrooted here: an empty directory they cannot write.
        "chroot": f"{run}/empty",
        # `ober health` writes its state file here, the only place under the install path it may write.
        "health_dir": f"{run}/health",
        "health_state": f"{run}/health/health.json",
        # ExaBGP's CLI pipes, where a node keeps them under the install path (lab nodes) rather than /run/exabgp.
        "exabgp_run": f"{run}/exabgp",
        "venv": venv,
        # The wheels the fleet ships for bootstrap and upgrade (the node needs no package index).
        "wheelhouse": f"{install_path}/wheelhouse",
        "python": f"{venv}/bin/python",
        "ober": f"{venv}/bin/ober",
    }
    return {key: root + value for key, value in base.items()}


def paths(config: NodeConfig, root: str = "") -> dict[str, str]:
    """Every node path ober writes or reads, prefixed with ``root`` (set when validating in a scratch tree)."""
    return {
        **install_paths(config.install_path, root),
        "crt": root + config.certificates.crt_path(config.install_path),
        "maintenance_file": root + config.health.maintenance_file,
        # A name, not a path (never under ``root``): see metrics_socket_name.
        "metrics_socket": metrics_socket_name(config),
    }


def metrics_socket_name(config: NodeConfig) -> str:
    """The abstract Unix socket ``ober health`` serves its metrics on; HAProxy passes /ober/metrics to ``abns@`` it.

    Abstract, not a file: HAProxy's workers run as the HAProxy user in an empty chroot, where no file of ``ober
    health`` (the BGP user) is in sight nor open to them, and an abstract name has neither a path nor a mode. So any
    local process on the node can read the metrics there (the same facts ``ober status`` shows); from outside the node
    they are reached only through the stats frontend and its rules. Abstract names belong to a network namespace
    (each lab node has its own); the install path's digest keeps two installs in one namespace apart.
    """
    digest = hashlib.sha256(config.install_path.encode()).hexdigest()[:16]
    return f"ober-metrics-{digest}"


UNIT_DIR = "/etc/systemd/system"
DISCOVERY_UNITS = ("ober-discovery.timer", "ober-discovery.service")


def discovery_groups(config: NodeConfig) -> list[str]:
    """The backend groups whose servers are discovered (and reconciled by ``ober-discovery.timer``)."""
    return [group.name for group in config.backends if group.discovery is not None]


def discovery_interval(config: NodeConfig) -> float:
    """How often the discovery timer runs: the smallest interval of the groups (each runs on its own interval)."""
    return min((g.discovery.interval for g in config.backends if g.discovery), default=0.0)


def _whitelist(entries: tuple[str, ...], field: str) -> list[str]:
    for entry in entries:
        if "/" not in entry and not is_ipv4(entry):
            raise RenderError(
                f"whitelists.{field}: {entry!r} is a name, not an address",
                "resolve names first (ober render and ober sync do; from Python use ober.resolve_whitelists)",
            )
    return list(entries)


def _context(
    config: NodeConfig, secrets: Mapping[str, str], root: str, lists: Whitelists, run_as: RunAs
) -> dict[str, Any]:
    version = config.haproxy.version_tuple
    whitelists = {
        "routers": _whitelist(lists.routers, "routers"),
        "frontend_http": _whitelist(lists.frontend_http, "frontend_http"),
        "backend_http": _whitelist(lists.backend_http, "backend_http"),
    }
    p = paths(config, root)
    tls_ca = {
        group.name: (root + group.tls.ca_file) if group.tls.ca_file else "/etc/ssl/certs/ca-certificates.crt"
        for group in config.backends
    }
    return {
        "c": config,
        "p": p,
        "secrets": secrets,
        "whitelists": whitelists,
        "whitelist_file": {name: f"{p['whitelist_dir']}/{name.replace('_', '-')}.lst" for name in whitelists},
        "tls_ca": tls_ca,
        "seconds": seconds,
        "stop_timeout": seconds(stop_timeout(config)),
        # HAProxy 2.8 added ssl-default-bind-curves; older versions take the OpenSSL default groups.
        "haproxy_has_curves": version >= (2, 8),
        "groups_in_use": sorted({vip.backend for vip in config.vips}),
        "slot_prefix": SLOT_PREFIX,
        "ephemeral": EPHEMERAL,
        "reserved_ports": listening_ports(config, EPHEMERAL),
        "run_as": run_as,
        "sandbox": sandbox(config),
        "discovery_groups": discovery_groups(config),
        "discovery_interval": seconds(discovery_interval(config)),
        "stall": template_values(),
    }


def _plan(config: NodeConfig, p: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """Which template goes where, with which mode: ``template#variant`` renders one template several ways."""
    iface = config.network.interface
    plan = [
        ("haproxy/haproxy.cfg.j2", p["haproxy_cfg"], 0o644),
        # The MD5 password, when set, is in the ExaBGP config: keep it private.
        ("exabgp/exabgp.conf.j2", p["exabgp_conf"], 0o600),
        ("secrets.env.j2", p["secrets_env"], 0o600),
        ("systemd/ober-http.service.j2", "/etc/systemd/system/ober-http.service", 0o644),
        ("systemd/ober-bgp.service.j2", "/etc/systemd/system/ober-bgp.service", 0o644),
        # A changed certificate goes into the running HAProxy without a reload (see ober.certswap).
        ("systemd/ober-certs.path.j2", "/etc/systemd/system/ober-certs.path", 0o644),
        ("systemd/ober-certs.service.j2", "/etc/systemd/system/ober-certs.service", 0o644),
        ("sysctl.conf.j2", "/etc/sysctl.d/90-ober.conf", 0o644),
        *(
            # Backend groups with discovery are reconciled by a timer (see ober.discovery_run).
            [(f"systemd/{unit}.j2", f"{UNIT_DIR}/{unit}", 0o644) for unit in DISCOVERY_UNITS]
            if discovery_groups(config)
            else []
        ),
        ("journald.conf.j2", "/etc/systemd/journald.conf.d/90-ober.conf", 0o644),
    ]
    if config.certificates.acme is not None:
        plan.append(("acme-challenges.map.j2", p["acme_map"], 0o644))
    for name in ("routers", "frontend-http", "backend-http"):
        plan.append((f"whitelist.lst.j2#{name.replace('-', '_')}", f"{p['whitelist_dir']}/{name}.lst", 0o644))
    if config.network.manager == "netplan":
        plan.append(("network/netplan.yaml.j2", f"/etc/netplan/60-{iface}.yaml", 0o600))
    elif config.network.manager == "networkd":
        if iface != "lo":  # lo exists already; a dummy interface has to be created
            plan.append(("network/networkd.netdev.j2", f"/etc/systemd/network/60-{iface}.netdev", 0o644))
        plan.append(("network/networkd.network.j2", f"/etc/systemd/network/60-{iface}.network", 0o644))
    else:
        plan.append(
            (
                "network/networkmanager.nmconnection.j2",
                f"/etc/NetworkManager/system-connections/{iface}.nmconnection",
                0o600,
            )
        )
    return plan


def planned_paths(config: NodeConfig) -> list[str]:
    """The node paths :func:`render_node` writes besides ``ober.yaml``."""
    return [path for _template, path, _mode in _plan(config, paths(config))]


def render_node(
    config: NodeConfig,
    secrets: Mapping[str, str] | None = None,
    *,
    root: str = "",
    resolved: Whitelists | None = None,
    run_as: RunAs = NODE_USERS,
) -> Rendered:
    """Render every file of one node.

    Args:
        config: the validated node config.
        secrets: secret values by name; only those the config references are used (and they must be there).
        root: a prefix for every path *inside* the files, for validating a copy in a scratch directory. The
            files' own ``path`` stay the real node paths.
        resolved: the whitelists with names resolved to addresses (see :mod:`ober.resolve`); ``ober.yaml`` keeps
            the names, so they are resolved again next time.
        run_as: the users the daemons run as; other names only where the node's users do not exist (checking the
            files on a workstation, a lab without systemd).

    Returns:
        The node's files, sorted by path; ``ober.yaml`` itself included.

    Raises:
        RenderError: a whitelist still holds unresolved names, or a template failed.
        SecretsError: a referenced secret is missing.
    """
    used = pick(secrets or {}, config.secret_refs())
    context = _context(config, used, root, resolved or config.whitelists, run_as)
    files = [RenderedFile(paths(config)["config"], dump_config(config), 0o644)]
    for template, path, mode in _plan(config, paths(config)):
        name, _, variant = template.partition("#")
        files.append(RenderedFile(path, _render(name, {**context, "variant": variant}), mode))
    return Rendered(node=config.name, files=tuple(sorted(files, key=lambda item: item.path)))


def render_template(name: str, context: Mapping[str, Any]) -> str:
    """Render one template from ``templates/`` with ober's settings (strict, no escaping)."""
    return _render(name, context)


def _render(name: str, context: Mapping[str, Any]) -> str:
    try:
        return _environment().get_template(name).render(context)
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f"{name}:{line}" if line else name
        raise RenderError(f"template {where}: {exc.message or exc}", TEMPLATES_HINT) from None
