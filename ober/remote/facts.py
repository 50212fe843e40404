"""The fleet's state in one parallel sweep: every node's ``ober status`` (read by `ober.remote.nodeclient`).

An unreachable node is a NodeView that says so (unknown), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from ober.inventory import Inventory, InventoryNode
from ober.remote.connection import Connection, SshTarget, connect
from ober.remote.connection import targets as ssh_targets
from ober.remote.nodeclient import NodeClient, NodeView, unreachable
from ober.remote.pool import Outcome, for_each
from ober.runner import Runner

T = TypeVar("T")


def on_nodes(
    nodes: Sequence[InventoryNode],
    targets: Sequence[SshTarget],
    work: Callable[[Connection, InventoryNode], T],
    *,
    parallel: int,
    on_done: Callable[[Outcome[T]], None] | None = None,
) -> list[Outcome[T]]:
    """Connect to each node (``targets`` by node name) and run ``work`` on it, at most ``parallel`` at once.

    A node that cannot be reached, or whose work raised, is an outcome with ``error`` set, never an exception.
    """
    by_name = {target.name: target for target in targets}

    def one(node: InventoryNode) -> T:
        with connect(by_name[node.name]) as conn:
            return work(conn, node)

    return for_each(nodes, one, parallel=parallel, name=lambda node: node.name, on_done=on_done)


def sweep(
    inventory: Inventory,
    nodes: Sequence[InventoryNode] | None = None,
    targets: Sequence[SshTarget] | None = None,
    parallel: int | None = None,
    *,
    accept_new_host_keys: bool = False,
) -> list[NodeView]:
    """Ask every node (default: the whole inventory) in one parallel sweep; one NodeView each, in order.

    An unreachable node is a NodeView saying so (``reachable`` false, ``error`` why).
    """
    chosen = list(inventory.nodes if nodes is None else nodes)
    reach = (
        targets if targets is not None else ssh_targets(inventory, chosen, accept_new_host_keys=accept_new_host_keys)
    )
    outcomes = on_nodes(chosen, reach, _status, parallel=parallel or inventory.ssh.parallel)
    return [
        outcome.value if outcome.value is not None else unreachable(node, outcome.error or "failed")
        for node, outcome in zip(chosen, outcomes, strict=True)
    ]


def _status(conn: Runner, node: InventoryNode) -> NodeView:
    return NodeClient(conn, node).status()


def ask_all(inventory: Inventory, runners: Mapping[str, Runner]) -> list[NodeView]:
    """Every node of the inventory asked now, in parallel, over open connections; one without one is unknown."""

    def ask(node: InventoryNode) -> NodeView:
        conn = runners.get(node.name)
        return NodeClient(conn, node).status() if conn else unreachable(node, "no SSH connection")

    nodes = list(inventory.nodes)
    outcomes = for_each(nodes, ask, parallel=inventory.ssh.parallel, name=lambda node: node.name)
    return [
        o.value if o.value is not None else unreachable(node, o.error or "failed")
        for node, o in zip(nodes, outcomes, strict=True)
    ]


def views_by_name(views: Sequence[NodeView]) -> Mapping[str, NodeView]:
    """The views keyed by node name."""
    return {view.name: view for view in views}


def open_connections(
    inventory: Inventory, *, accept_new_host_keys: bool = False, parallel: int | None = None
) -> tuple[dict[str, Connection], dict[str, str]]:
    """Connect to every node of the inventory at once (bounded); returns the connections and why others failed.

    A changing operation needs every node, not only its targets: the guard counts the whole fleet and the lock is
    held on it.
    """
    nodes = list(inventory.nodes)
    outcomes = for_each(
        ssh_targets(inventory, nodes, accept_new_host_keys=accept_new_host_keys),
        connect,
        parallel=parallel or inventory.ssh.parallel,
        name=lambda target: target.name,
    )
    opened = {o.name: o.value for o in outcomes if o.ok and o.value is not None}
    failed = {o.name: o.error or "failed" for o in outcomes if not o.ok}
    return opened, failed


def close_all(connections: Mapping[str, Connection]) -> None:
    """Close every connection."""
    for conn in connections.values():
        conn.close()
