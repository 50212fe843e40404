"""The inventory's record of RGW servers changed at runtime (``ober fleet backends``), so it follows the nodes.

``ober fleet backends add|drain|remove`` changes the nodes without a reload; for ``fleet diff`` to show no drift
and ``fleet push`` not to undo it, the inventory must say the same. Rewriting the operator's YAML would lose its
comments and layout, so the changes go to a file of their own next to it, which the inventory reads with the rest:
``backends.yaml`` in an inventory directory, ``<name>.backends.yaml`` next to an inventory file::

    backends:
      ceph-a:
        added: [rgw3:7480]      # appended to the group's servers on every node that has the group
        removed: [rgw1:7480]    # taken out of them
        drained: [rgw2:7480]    # drained
        undrained: []           # no longer drained (where config.backends says drained)

These are changes *to* each node's resolved servers, not a new list, so servers that differ per group or host stay
as they are. Fold them into ``config.backends`` whenever convenient, then delete the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ober.atomic import write_atomic
from ober.config import NodeConfig, Server, parse_server, server_order
from ober.errors import ConfigError
from ober.schema import Fields, type_name

FILE = "backends.yaml"
KINDS = ("added", "removed", "drained", "undrained")
HEADER = (
    "# Written by 'ober fleet backends': RGW servers changed at runtime, applied over config.backends of every node.\n"
    "# Fold them into config.backends when convenient, then delete this file.\n"
)


def changes_path(source: Path) -> Path:
    """Where an inventory (file or directory) keeps its runtime backend changes."""
    return source / FILE if source.is_dir() else source.with_name(f"{source.stem}.{FILE}")


@dataclass
class Delta:
    """One group's changes: ``host[:port]`` entries (the group's port where none is given)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    undrained: list[str] = field(default_factory=list)

    def record(self, verb: str, entry: str) -> None:
        """Note one change (``add`` undrains too), so that it holds whatever came before."""
        lists = {"add": ("added", "undrained"), "drain": ("drained",), "remove": ("removed",)}
        clears = {
            "add": ("removed", "drained"),
            "drain": ("undrained",),
            "remove": ("added", "drained", "undrained"),
        }
        for kind in clears[verb]:
            setattr(self, kind, [e for e in getattr(self, kind) if e != entry])
        for kind in lists[verb]:
            if entry not in getattr(self, kind):
                getattr(self, kind).append(entry)

    def to_dict(self) -> dict[str, list[str]]:
        """The YAML form (empty lists left out)."""
        return {kind: list(getattr(self, kind)) for kind in KINDS if getattr(self, kind)}


def parse_changes(raw: object, where: str = "backends") -> dict[str, Delta]:
    """The ``backends:`` section of an inventory.

    Raises:
        ConfigError: naming the field.
    """
    changes: dict[str, Delta] = {}
    for group, fields in Fields({"backends": raw or {}}).named_sections("backends"):
        delta = Delta()
        for kind in KINDS:
            value = fields.raw(kind, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(
                    f"{where}.{group}.{kind}: expected a list of host:port, got {type_name(value)}",
                    f"write e.g. {kind}: [rgw3:7480]",
                )
            setattr(delta, kind, list(value))
        fields.done()
        changes[group] = delta
    return changes


def apply_changes(data: Mapping[str, Any], config: NodeConfig, changes: Mapping[str, Delta]) -> dict[str, Any]:
    """A node's config mapping with the changes applied to the groups it has (its resolved ``config``).

    Raises:
        ConfigError: an entry is not ``host[:port]``.
    """
    edited = dict(data)
    backends = dict(edited.get("backends") or {})
    for group in config.backends:
        delta = changes.get(group.name)
        if delta is None:
            continue
        listed = {kind: _servers(delta, kind, group.port, f"backends.{group.name}") for kind in KINDS}
        removed, undrained = set(listed["removed"]), set(listed["undrained"])
        kept = [s for s in group.servers if s not in removed]
        kept += [s for s in listed["added"] if s not in kept and s not in removed]
        drained = (set(group.drained) | set(listed["drained"])) - undrained
        section = dict(backends.get(group.name) or {})
        kept.sort(key=server_order)  # as the node orders them (ober.backends)
        section["servers"] = [f"{s.host}:{s.port}" for s in kept]
        section["drained"] = [f"{s.host}:{s.port}" for s in kept if s in drained]
        backends[group.name] = section
    edited["backends"] = backends
    return edited


def _servers(delta: Delta, kind: str, port: int, where: str) -> list[Server]:
    return [parse_server(entry, port, f"{where}.{kind}") for entry in getattr(delta, kind)]


def write_changes(path: Path, changes: Mapping[str, Delta]) -> None:
    """Write the changes file atomically (temp file, then rename)."""
    body = {"backends": {group: delta.to_dict() for group, delta in changes.items() if delta.to_dict()}}
    text = HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    write_atomic(path, text, 0o644)
