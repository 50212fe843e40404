"""Which RGW servers a backend group should have, from a discovery source; one change per run, nothing deleted.

Sources (``backends.<group>.discovery.source`` in ober.yaml; ``--format`` of ``ober backends reconcile --from``):

- ``file`` (``servers``): YAML or JSON, ``{GROUP: [host:port, …]}``, which something else keeps up to date;
- ``ceph-orch``: a file holding the JSON of ``ceph orch ps --daemon_type rgw --format json`` (cephadm's daemons,
  with their host and port), refreshed by a cron job where the ceph CLI runs; only running daemons count, of the
  service named by ``service`` (all rgw daemons without it);
- ``dns-srv``: the SRV records of a name such as ``_rgw._tcp.example.org`` (Consul, CoreDNS, a zone): each
  record's target and port is a server, whatever its priority (HAProxy balances them all; ober has no backup
  servers). Targets must resolve on the node as they do for HAProxy.

:func:`reconcile` decides ONE change: a discovered server the group lacks is added; else a server the source no
longer lists is drained, and reported. A server is never removed automatically (an RGW briefly missing from the
orchestrator's view must not be deleted): the report says which drained servers discovery has lost, for an
operator to ``ober backends remove``. A source that lists no server for the group is refused, not obeyed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ober.config import BackendGroup, Discovery, Server, parse_server
from ober.dns_srv import SrvRecord, lookup_srv
from ober.errors import ConfigError

FORMATS = ("servers", "ceph-orch")
"""The file formats of ``ober backends reconcile --from``; ``servers`` is source ``file`` in ober.yaml."""
Lookup = Callable[[str, "str | None"], list[SrvRecord]]
"""An SRV lookup: (name, resolver) → records."""


def _load(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}", "check the discovery file's path") from None
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError:
        raise ConfigError(f"{path}: neither YAML nor JSON", "point --from at the discovery output") from None


def discovered(path: Path, group: BackendGroup, fmt: str, service: str | None = None) -> list[Server]:
    """The servers the source lists for ``group``.

    Raises:
        ConfigError: the file is unreadable or not the format said, or it lists no server for the group.
    """
    data = _load(path)
    where = f"{path}"
    if fmt == "servers":
        if not isinstance(data, dict) or group.name not in data:
            raise ConfigError(f"{where}: no list for group {group.name}", f"write {group.name}: [host:port, ...]")
        entries = data[group.name]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError(f"{where}: {group.name} is not a list of host:port", "write e.g. [rgw1:7480]")
        servers = [parse_server(entry, group.port, f"{where}: {group.name}") for entry in entries]
    elif fmt == "ceph-orch":
        servers = _orch(data, group, where, service)
    else:
        raise ConfigError(f"unknown discovery format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    return _some(servers, where, group)


def _some(servers: list[Server], where: str, group: BackendGroup) -> list[Server]:
    if not servers:
        raise ConfigError(
            f"{where} lists no server for group {group.name}: refusing to drain every server it has",
            "check the discovery source",
        )
    return list(dict.fromkeys(servers))


def describe(discovery: Discovery) -> str:
    """The source in a few words: ``dns-srv _rgw._tcp.example.org``, ``file /opt/ober/run/rgw.yaml``."""
    what = discovery.name if discovery.source == "dns-srv" else discovery.path
    service = f" (service {discovery.service})" if discovery.service else ""
    return f"{discovery.source} {what}{service}"


def _lookup(name: str, resolver: str | None) -> list[SrvRecord]:
    return lookup_srv(name, resolver)


def from_config(group: BackendGroup, lookup: Lookup = _lookup) -> list[Server]:
    """The servers ``group``'s own discovery source lists now.

    Raises:
        ConfigError: the group has no discovery; the source's file is unreadable or lists no server.
        DnsError: the SRV lookup failed, or found no record.
    """
    discovery = group.discovery
    if discovery is None:
        raise ConfigError(
            f"backend group {group.name} has no discovery",
            f"set backends.{group.name}.discovery in ober.yaml, or give --from FILE",
        )
    if discovery.source == "dns-srv":
        name = discovery.name or ""  # the config requires it for dns-srv
        where = f"SRV {name}"
        records = lookup(name, discovery.resolver)
        servers = [
            parse_server(f"{record.target}:{record.port}", group.port, f"{where}: target {record.target!r}")
            for record in records
        ]
        return _some(servers, where, group)
    fmt = "servers" if discovery.source == "file" else "ceph-orch"
    return discovered(Path(discovery.path or ""), group, fmt, discovery.service)


def _orch(data: object, group: BackendGroup, where: str, service: str | None) -> list[Server]:
    if not isinstance(data, list):
        raise ConfigError(f"{where}: not 'ceph orch ps --format json' output (a list)", "check the source")
    servers: list[Server] = []
    for daemon in data:
        if not isinstance(daemon, dict) or daemon.get("daemon_type") != "rgw":
            continue
        if service and daemon.get("service_name") != service:
            continue
        running = daemon.get("status_desc") == "running" or daemon.get("status") == 1
        host = daemon.get("hostname")
        ports = daemon.get("ports") or [group.port]
        if not running or not isinstance(host, str) or not isinstance(ports, list):
            continue
        port = ports[0] if isinstance(ports[0], int) else group.port
        servers.append(parse_server(f"{host}:{port}", group.port, f"{where}: daemon {daemon.get('daemon_id')}"))
    return servers


@dataclass(frozen=True)
class Decision:
    """The one change a reconcile run makes (``verb`` None: none), and what an operator should know."""

    group: str
    verb: str | None = None
    server: Server | None = None
    notes: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    """Drained servers the source no longer lists: an operator's to remove (``ober backends remove``)."""
    pending: int = 0
    """Changes left for the next runs (after this one)."""

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "group": self.group,
            "action": self.verb or "none",
            "server": f"{self.server.host}:{self.server.port}" if self.server else None,
            "notes": self.notes,
            "lost": self.lost,
            "pending": self.pending,
        }


def reconcile(group: BackendGroup, found: list[Server]) -> Decision:
    """The one change that brings ``group`` closer to ``found``: add a new server first, else drain a lost one."""
    notes: list[str] = []
    gone: list[str] = []
    for server in group.drained:
        entry = f"{server.host}:{server.port}"
        if server in found:
            notes.append(f"{entry} is listed again but drained: 'ober backends add {group.name} {entry}' returns it")
        else:
            gone.append(entry)
            notes.append(
                f"{entry} is drained and no longer listed: 'ober backends remove {group.name} {entry}' when sure"
            )
    new = [s for s in found if s not in group.servers]
    lost = [s for s in group.servers if s not in found and s not in group.drained]
    left = len(new) + len(lost) - 1
    if new:
        if len(new) > 1:
            notes.append(f"{len(new) - 1} more new servers wait for the next runs (one change per run)")
        return Decision(group.name, "add", new[0], notes, gone, left)
    if lost:
        entry = f"{lost[0].host}:{lost[0].port}"
        notes.append(f"{entry} is no longer listed: drained (never removed automatically)")
        return Decision(group.name, "drain", lost[0], notes, gone, left)
    return Decision(group.name, None, None, notes, gone, 0)
