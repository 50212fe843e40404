"""Inventories: a site's nodes as Slurm hostlists, resolved into one validated :class:`NodeConfig` per node.

``inventory/<site>.yaml`` (or a directory of YAML files read as one) holds cluster-wide ``config``, ``groups`` of
nodes with per-group values, and optional per-node ``hosts`` overrides. Hostlists of the same length zip
together: ``nodes: node[01-04]`` with ``address: 198.51.100.[11-14]`` gives each node its own address. Values merge
cluster → group → host (mappings merge key by key, anything else is replaced), and each node's result is read by
the same parser as a node's own ``ober.yaml``.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ober.backend_changes import Delta, apply_changes, changes_path, parse_changes
from ober.config import NodeConfig, parse_node_config, read_yaml
from ober.errors import ConfigError
from ober.hostlists import collect, expand
from ober.render import paths, planned_paths
from ober.schema import Fields, type_name

DEFAULT_INVENTORY = "inventory"
_ZIPPED = ("address", "router_id", "local_address")
_NODE_PATH = re.compile(r"^/(?:[A-Za-z0-9._+-]+/)*[A-Za-z0-9._+-]+\Z")


@dataclass(frozen=True)
class SshSettings:
    """How the fleet controller reaches nodes."""

    user: str | None
    port: int | None
    config: str | None
    known_hosts: str
    connect_timeout: float
    command_timeout: float
    parallel: int


@dataclass(frozen=True)
class FleetSettings:
    """Availability rules for rolling operations."""

    min_available: int
    max_unavailable: int


@dataclass(frozen=True)
class FileSpec:
    """A file on the workstation that ``ober fleet bootstrap`` copies to every node (the inventory's ``files:``).

    For what a node's config refers to but no inventory value holds: a certificate PEM, a CA bundle.
    """

    source: Path
    """The local file (a relative path in the inventory is relative to the inventory)."""
    dest: str
    """The absolute path on the node."""
    mode: int
    """The node file's permission bits (default 0600: PEMs hold private keys)."""


@dataclass(frozen=True)
class InventoryNode:
    """One node: its name, its group, how to reach it, and its resolved config."""

    name: str
    group: str
    address: str
    config: NodeConfig


@dataclass(frozen=True)
class Inventory:
    """A resolved inventory."""

    site: str
    source: str
    ssh: SshSettings
    fleet: FleetSettings
    nodes: tuple[InventoryNode, ...]
    files: tuple[FileSpec, ...] = ()

    def names(self) -> list[str]:
        """All node names, in inventory order."""
        return [node.name for node in self.nodes]

    def select(self, targets: str | None) -> list[InventoryNode]:
        """The nodes named by a hostlist (all when ``targets`` is empty); unknown names are an error."""
        if not targets:
            return list(self.nodes)
        wanted = expand(targets, "TARGETS")
        known = {node.name: node for node in self.nodes}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ConfigError(
                f"TARGETS: {collect(unknown)} not in inventory {self.source}",
                f"choose from {collect(self.names())}",
            )
        return [known[name] for name in wanted]


def merge(base: Any, override: Any) -> Any:
    """Deep-merge ``override`` onto ``base``: mappings merge key by key; lists and scalars replace."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _read_source(path: Path) -> tuple[dict[str, Any], str]:
    """The inventory's raw data; a directory's YAML files are combined (a key set twice is an error)."""
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise ConfigError(f"{path}: no .yaml files in the inventory directory", "add one, e.g. site.yaml")
        data: dict[str, Any] = {}
        for file in files:
            part = _mapping(read_yaml(file), str(file))
            for key, value in part.items():
                if key in ("groups", "hosts") and isinstance(value, Mapping):
                    section = data.setdefault(key, {})
                    for name in value:
                        if name in section:
                            raise ConfigError(f"{file}: {key}.{name} is also defined in another file", "keep one")
                    section.update(value)
                elif key in data:
                    raise ConfigError(f"{file}: '{key}' is also set in another file of {path}", "set it in one file")
                else:
                    data[key] = value
        return data, str(path)
    return _mapping(read_yaml(path), str(path)), str(path)


def _mapping(data: object, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type_name(data)}")
    return dict(data)


def inventory_path(path: str | Path | None = None) -> Path:
    """The inventory: ``path``, else ``$OBER_INVENTORY``, else ``inventory/``."""
    return Path(path or os.environ.get("OBER_INVENTORY") or DEFAULT_INVENTORY)


def load_inventory(path: str | Path | None = None, *, backends: Mapping[str, Delta] | None = None) -> Inventory:
    """Load and resolve an inventory; every node's config is fully validated.

    ``backends``, when given, stands in for the inventory's runtime backend changes (to try a change first).

    Raises:
        ConfigError: naming the file, the node and the exact field.
    """
    source = inventory_path(path)
    if not source.exists():
        raise ConfigError(
            f"{source}: no such inventory", "pass -i FILE, set $OBER_INVENTORY, or write one: ober fleet init"
        )
    data, where = _read_source(source)
    changes = changes_path(source)
    if source.is_file() and changes.is_file():
        # The runtime backend changes of a one-file inventory live next to it (a directory reads them anyway).
        extra = _mapping(read_yaml(changes), str(changes))
        if set(extra) - {"backends"} or "backends" in data:
            raise ConfigError(
                f"{changes}: only 'backends:' may be set there, and not also in {source}", "keep it in one file"
            )
        data = {**data, **extra}
    if backends is not None:
        data = {**data, "backends": {group: delta.to_dict() for group, delta in backends.items()}}
    return resolve_inventory(data, where)


def resolve_inventory(data: object, where: str = "inventory") -> Inventory:
    """Resolve inventory data (as read from YAML) into an :class:`Inventory`."""
    try:
        top = Fields(data)
        site = top.name("site")
        ssh = _ssh(top.section("ssh"))
        fleet = _fleet(top.section("fleet"))
        cluster = top.raw("config", {})
        Fields(cluster, "config")  # a mapping, or a clear error
        changes = parse_changes(top.raw("backends", {}))
        nodes = _nodes(top, cluster, changes)
        files = _files(top, where)
        top.done()
        _refuse_file_dests(files, nodes)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.fix) from None
    if not nodes:
        raise ConfigError(f"{where}: no nodes", "add a group: groups: {rack1: {nodes: node[01-04], address: ...}}")
    _refuse_clashes(nodes, where)
    if fleet.min_available > len(nodes):
        raise ConfigError(
            f"{where}: fleet.min_available is {fleet.min_available} but there are only {len(nodes)} nodes",
            "lower fleet.min_available",
        )
    return Inventory(site=site, source=where, ssh=ssh, fleet=fleet, nodes=tuple(nodes), files=files)


def _refuse_clashes(nodes: list[InventoryNode], where: str) -> None:
    """Refuse what only shows across nodes: two nodes with one address or router id, a node on another's VIP.

    Each node's config is valid alone; two nodes with the same BGP address or router id still render, and the
    routers would then take one for the other (a router id clash even tears down the other's session).
    """
    owners: dict[tuple[str, str], str] = {}
    for node in nodes:
        bgp = node.config.bgp
        # In this order: a node given another's address also derives its router id from it; name the cause.
        mine = [("address", node.address), ("router_id", bgp.router_id), ("BGP local_address", bgp.local_address)]
        for key in mine:
            other = owners.setdefault(key, node.name)
            if other != node.name:
                raise ConfigError(
                    f"{where}: node {node.name} has the same {key[0]} as node {other} ({key[1]})",
                    "give every node its own address and router id (groups zip them: address: 198.51.100.[11-14])",
                )
    vips: dict[str, str] = {}
    for node in nodes:
        for vip in node.config.vips:
            vips.setdefault(vip.address, node.name)
    for node in nodes:
        bgp = node.config.bgp
        for what, address in (("address", node.address), ("BGP local_address", bgp.local_address)):
            if address in vips:
                raise ConfigError(
                    f"{where}: node {node.name}'s {what} {address} is a VIP of node {vips[address]}",
                    "a VIP must be no node's own address",
                )


def _ssh(fields: Fields) -> SshSettings:
    user = fields.string("user", "") or None
    port = fields.integer("port", 0, low=0, high=65535) or None
    settings = SshSettings(
        user=user,
        port=port,
        config=fields.string("config", "") or None,
        known_hosts=fields.string("known_hosts", "~/.ssh/known_hosts"),
        connect_timeout=fields.duration("connect_timeout", 10.0, low=1.0, high=300.0),
        command_timeout=fields.duration("command_timeout", 600.0, low=1.0, high=86400.0),
        parallel=fields.integer("parallel", 10, low=1, high=256),
    )
    fields.done()
    return settings


def _fleet(fields: Fields) -> FleetSettings:
    settings = FleetSettings(
        min_available=fields.integer("min_available", 1, low=1, high=4096),
        max_unavailable=fields.integer("max_unavailable", 1, low=1, high=4096),
    )
    fields.done()
    return settings


def _files(top: Fields, where: str) -> tuple[FileSpec, ...]:
    """``files: [{source: certs/s3.pem, dest: /opt/ober/etc/certs/s3.pem, mode: 0600}]``, checked.

    Only the shape is checked here (``ober fleet inventory`` works without the files); the fleet command that
    copies them refuses a missing source before it touches any node.
    """
    located = Path(where)
    base = located if located.is_dir() else located.parent
    specs: list[FileSpec] = []
    for entry in top.sections("files", []):
        source = Path(entry.string("source")).expanduser()
        dest = entry.string("dest", pattern=_NODE_PATH, hint="an absolute file path, e.g. /opt/ober/etc/certs/s3.pem")
        if posixpath.normpath(dest) != dest:
            raise ConfigError(f"{entry.at('dest')}: {dest!r} has '.' or '..' in it", "write the path without them")
        raw_mode = entry.raw("mode", 0o600)
        mode = int(raw_mode, 8) if isinstance(raw_mode, str) and re.fullmatch(r"0?[0-7]{3}", raw_mode) else raw_mode
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ConfigError(f"{entry.at('mode')}: {raw_mode!r} is not a file mode", "write it as '0600' or '0644'")
        if mode & 0o022:
            # Anyone who may write a certificate, key or CA bundle HAProxy trusts may impersonate the service.
            raise ConfigError(
                f"{entry.at('mode')}: {mode:04o} lets other users write the file", "write it as '0600' or '0644'"
            )
        entry.done()
        if any(spec.dest == dest for spec in specs):
            raise ConfigError(f"{entry.at('dest')}: {dest} is listed twice", "list each node path once")
        specs.append(FileSpec(source if source.is_absolute() else base / source, dest, mode))
    return tuple(specs)


# Where `files:` may put a file besides what a node's config names: ober's own etc (certificates) and the system's
# certificate directories. Anything else (/etc/sudoers, a unit, ober's venv) is not what `files:` is for.
FILE_DIRS = ("/etc/ssl/", "/etc/pki/", "/usr/local/share/ca-certificates/")


def _refuse_file_dests(files: tuple[FileSpec, ...], nodes: list[InventoryNode]) -> None:
    """Refuse a ``files:`` destination outside the certificate places, or one ober writes itself."""
    allowed_dirs = set(FILE_DIRS)
    named: set[str] = set()
    owned: set[str] = set()
    for node in nodes:
        config = node.config
        p = paths(config)
        allowed_dirs.add(f"{p['etc']}/")
        if config.certificates.pem:
            named.add(config.certificates.pem)
            allowed_dirs.add(config.certificates.pem.rstrip("/") + "/")  # a directory of PEMs (SNI)
        named.update(group.tls.ca_file for group in config.backends if group.tls.ca_file)
        owned.update([*planned_paths(config), p["config"], p["venv"], p["run_dir"], p["whitelist_dir"]])
        owned.update([p["login"], p["ledger"]])
        owned.add(config.health.maintenance_file)
    for index, spec in enumerate(files):
        where = f"files[{index}].dest"
        if spec.dest in owned or any(spec.dest.startswith(path + "/") for path in owned):
            raise ConfigError(f"{where}: ober writes {spec.dest} itself", "change it through the inventory's config")
        if spec.dest not in named and not any(spec.dest.startswith(d) for d in sorted(allowed_dirs)):
            raise ConfigError(
                f"{where}: {spec.dest} is not a place for certificates",
                f"use a path the config names (certificates.pem, a backend's tls.ca_file) or one under "
                f"{', '.join(sorted(allowed_dirs))}",
            )


def _zip(group: Fields, key: str, count: int) -> list[str] | None:
    """A per-node hostlist value of a group, one entry per node, or None when absent."""
    if not group.has(key):
        group.raw(key, None)
        return None
    values = group.hosts(key)
    if len(values) != count:
        raise ConfigError(
            f"{group.at(key)}: {len(values)} entries for {count} nodes",
            "give one value per node, in the same order as 'nodes'",
        )
    return values


def _nodes(top: Fields, cluster: Mapping[str, Any], changes: Mapping[str, Delta]) -> list[InventoryNode]:
    hosts = dict(top.named_sections("hosts", hostnames=True))
    resolved: list[InventoryNode] = []
    seen: dict[str, str] = {}
    for group_name, group in top.named_sections("groups"):
        names = group.hosts("nodes")
        zipped = {key: _zip(group, key, len(names)) for key in _ZIPPED}
        group_config = group.raw("config", {})
        Fields(group_config, group.at("config"))
        group.done()
        for index, name in enumerate(names):
            if name in seen:
                raise ConfigError(f"{group.at('nodes')}: node {name} is also in group {seen[name]}", "list it once")
            seen[name] = group_name
            host = hosts.get(name)
            values = {key: (column[index] if column else None) for key, column in zipped.items()}
            host_config: Any = {}
            if host is not None:
                for key in _ZIPPED:
                    if host.has(key):
                        values[key] = host.hosts(key)[0]
                    else:
                        host.raw(key, None)
                host_config = host.raw("config", {})
                host.done()
            address = values["address"] or name
            router_id = values["router_id"] or values["address"]
            local_address = values["local_address"] or router_id
            identity: dict[str, Any] = {"name": name, "bgp": {}}
            if router_id:
                identity["bgp"]["router_id"] = router_id
            if local_address:
                identity["bgp"]["local_address"] = local_address
            # Zipped per-node values beat cluster and group config; explicit per-host config beats everything.
            data = merge(merge(merge(cluster, group_config), identity), host_config)
            where = f"node {name} (group {group_name})"
            config = parse_node_config(data, where)
            if changes:
                config = parse_node_config(apply_changes(data, config, changes), f"{where} with backends changes")
            resolved.append(InventoryNode(name=name, group=group_name, address=address, config=config))
    unused = sorted(set(hosts) - set(seen))
    if unused:
        raise ConfigError(f"hosts.{unused[0]}: not a node of any group", "add it to a group's 'nodes' or remove it")
    return resolved
