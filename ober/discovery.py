"""Which RGW servers a backend group should have, from a discovery source; one change per run, nothing deleted.

Sources (read from a file, which a timer or cron job refreshes, e.g. ``ceph orch ps --daemon_type rgw --format json
> /opt/ober/run/rgw.json``):

- ``servers``: YAML or JSON, ``{GROUP: [host:port, …]}``;
- ``ceph-orch``: the JSON of ``ceph orch ps --daemon_type rgw --format json`` (cephadm's daemons, with their host
  and port); only running daemons count, of the service named by ``--service`` (all rgw daemons without it).

:func:`reconcile` decides ONE change: a discovered server the group lacks is added; else a server the source no
longer lists is drained, and reported. A server is never removed automatically (an RGW briefly missing from the
orchestrator's view must not be deleted): the report says which drained servers discovery has lost, for an
operator to ``ober backends remove``. A source that lists no server for the group is refused, not obeyed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ober.config import BackendGroup, Server, parse_server
from ober.errors import ConfigError

FORMATS = ("servers", "ceph-orch")


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
    if not servers:
        raise ConfigError(
            f"{where} lists no server for group {group.name}: refusing to drain every server it has",
            "check the discovery source",
        )
    return list(dict.fromkeys(servers))


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

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "group": self.group,
            "action": self.verb or "none",
            "server": f"{self.server.host}:{self.server.port}" if self.server else None,
            "notes": self.notes,
        }


def reconcile(group: BackendGroup, found: list[Server]) -> Decision:
    """The one change that brings ``group`` closer to ``found``: add a new server first, else drain a lost one."""
    notes: list[str] = []
    for server in group.drained:
        entry = f"{server.host}:{server.port}"
        if server in found:
            notes.append(f"{entry} is listed again but drained: 'ober backends add {group.name} {entry}' returns it")
        else:
            notes.append(
                f"{entry} is drained and no longer listed: 'ober backends remove {group.name} {entry}' when sure"
            )
    new = [s for s in found if s not in group.servers]
    lost = [s for s in group.servers if s not in found and s not in group.drained]
    if new:
        if len(new) > 1:
            notes.append(f"{len(new) - 1} more new servers wait for the next runs (one change per run)")
        return Decision(group.name, "add", new[0], notes)
    if lost:
        entry = f"{lost[0].host}:{lost[0].port}"
        notes.append(f"{entry} is no longer listed: drained (never removed automatically)")
        return Decision(group.name, "drain", lost[0], notes)
    return Decision(group.name, None, None, notes)
