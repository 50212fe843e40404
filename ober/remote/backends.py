"""``ober fleet backends list|add|drain|remove``: an RGW server changed on every node, one node at a time.

Each node makes the change itself (``ober backends …``: HAProxy's runtime API, no reload, refused rather than
leaving a group without a server taking requests), so no node leaves the ECMP set; each is asked before and after,
and one that stopped announcing stops the command there. The inventory follows: the change is recorded in its
runtime backends file (:mod:`ober.backend_changes`), so ``fleet diff`` shows no drift and ``fleet push`` keeps it.
Before any node is touched, the inventory with the change is resolved in full: a change it would refuse (the last
server of a group, a bad name) changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ober.backend_changes import Delta, changes_path, parse_changes, write_changes
from ober.config import read_yaml
from ober.errors import ConfigError, OberError
from ober.inventory import Inventory, InventoryNode, inventory_path, load_inventory
from ober.remote.connection import Connection
from ober.remote.connection import targets as ssh_targets
from ober.remote.facts import on_nodes
from ober.remote.fleetops import Session, Step
from ober.remote.nodeclient import NodeClient

Progress = Callable[[str], None]
VERBS = ("add", "drain", "remove")


@dataclass(frozen=True)
class Listing:
    """One node's backend groups (or why they could not be read)."""

    node: str
    groups: list[dict[str, Any]]
    error: str | None = None


def list_all(
    inventory: Inventory, nodes: Sequence[InventoryNode], *, parallel: int | None, accept_new_host_keys: bool
) -> list[Listing]:
    """Every node's ``ober backends list``, in one parallel sweep."""

    def work(conn: Connection, node: InventoryNode) -> list[dict[str, Any]]:
        return NodeClient(conn, node).backends_list()

    reach = ssh_targets(inventory, list(nodes), accept_new_host_keys=accept_new_host_keys)
    outcomes = on_nodes(nodes, reach, work, parallel=parallel or inventory.ssh.parallel)
    return [
        Listing(node.name, outcome.value or [], None if outcome.ok else (outcome.error or "failed"))
        for node, outcome in zip(nodes, outcomes, strict=True)
    ]


def _recorded(source: Path) -> dict[str, Delta]:
    path = changes_path(source)
    if not path.is_file():
        return {}
    data = read_yaml(path)
    return parse_changes(data.get("backends") if isinstance(data, dict) else data, f"{path}: backends")


@dataclass(frozen=True)
class Planned:
    """A fleet change: the nodes it goes to (those with the group) and the inventory's record after it."""

    verb: str
    group: str
    server: str
    nodes: list[InventoryNode]
    changes: dict[str, Delta]
    path: Path


def prepare(
    inventory_source: Path | None, nodes: Sequence[InventoryNode], verb: str, group: str, server: str
) -> Planned:
    """Check the change against the whole inventory (resolved with it) and pick the nodes having the group.

    Raises:
        ConfigError: the inventory would not resolve with it (named node and field), or no node has the group.
    """
    if verb not in VERBS:
        raise ConfigError(f"unknown backends action {verb!r}", f"use one of: {', '.join(VERBS)}")
    source = inventory_path(inventory_source)
    changes = _recorded(source)
    changes.setdefault(group, Delta()).record(verb, server.strip())
    # Resolve the inventory as it will be: every node's config must still be valid with the change.
    load_inventory(source, backends=changes)
    chosen = [node for node in nodes if any(g.name == group for g in node.config.backends)]
    if not chosen:
        raise ConfigError(f"no selected node has a backend group named {group!r}", "check the group's name")
    return Planned(verb, group, server.strip(), chosen, changes, changes_path(source))


def run(session: Session, planned: Planned, *, wait: float, progress: Progress) -> list[Step]:
    """The change on each node in turn; stop at the first failure.

    The inventory's record is written once one node has it; a re-run goes on where this one stopped (nodes done
    say there is nothing to do).
    """
    results: list[Step] = []
    recorded = False
    for node in planned.nodes:
        progress(f"{node.name}: backends {planned.verb} {planned.group} {planned.server}")
        started = time.monotonic()
        client = NodeClient(session.remote(node), node)
        try:
            session.lock.ensure()
            before = client.status()
            answer = client.backends(planned.verb, planned.group, planned.server, wait=wait)
            after = client.status()
        except OberError as exc:
            results.append(Step(node.name, False, exc.message, time.monotonic() - started, exc.fix))
            break
        if not recorded:
            write_changes(planned.path, planned.changes)
            recorded = True
        if before.live and not after.live:
            why = "; ".join(after.not_live())
            results.append(
                Step(
                    node.name,
                    False,
                    f"{answer.message}, but the node no longer announces: {why}",
                    time.monotonic() - started,
                    f"see: ober fleet status {node.name}; ober backends list on it",
                )
            )
            break
        facts: dict[str, Any] = {"action": answer.action}
        if answer.requests_left:
            facts["requests_left"] = answer.requests_left
        detail = answer.message if answer.action != "none" else f"nothing to do: {answer.message}"
        results.append(Step(node.name, True, detail, time.monotonic() - started, facts=facts))
    return results
