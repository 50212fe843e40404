"""The fleet operations behind ``ober fleet status|drain|undrain|diff|push|sync``, over SSH.

Reading (status, diff) is one parallel sweep. Changing is one node at a time and stops at the first failure, so a
mistake reaches one node, not the fleet. Draining asks the availability guard first, for the whole set and again
before each node (the fleet may have changed meanwhile), and refuses rather than forces.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ober.errors import OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote.connection import Connection, connect, targets
from ober.remote.facts import on_nodes, sweep
from ober.remote.guard import Decision, decide, enforce
from ober.remote.nodeclient import NodeClient, NodeView, NotReady, config_file, ober_program, unreachable
from ober.remote.push import APPLY_TIMEOUT, Drift, PushResult, config_outcome, node_diff, node_drift, push_node
from ober.remote.push import secrets_file as node_secrets_file

Progress = Callable[[str], None]


def _quiet(_line: str) -> None:
    return None


@dataclass(frozen=True)
class Step:
    """What a drain or undrain did on one node."""

    node: str
    ok: bool
    detail: str
    seconds: float
    fix: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "node": self.node,
            "ok": self.ok,
            "detail": self.detail,
            "seconds": round(self.seconds, 2),
            "fix": self.fix,
            **self.facts,
        }


def status(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    secrets: Mapping[str, str],
    *,
    parallel: int | None = None,
    accept_new_host_keys: bool = False,
) -> list[tuple[NodeView, Drift | None, str | None]]:
    """Each node's view and its config drift (None, with why, when it could not be read)."""

    def work(conn: Connection, node: InventoryNode) -> tuple[NodeView, Drift | None, str | None]:
        view = NodeClient(conn, node).status()
        if not view.reachable:
            return view, None, "unreachable"
        if view.error:
            return view, None, "not compared: the node's status failed"
        try:
            return view, node_drift(conn, node, secrets), None
        except OberError as exc:
            return view, None, exc.message

    reach = targets(inventory, nodes, accept_new_host_keys=accept_new_host_keys)
    outcomes = on_nodes(nodes, reach, work, parallel=parallel or inventory.ssh.parallel)
    return [
        outcome.value
        if outcome.value is not None
        else (unreachable(node, outcome.error or "failed"), None, "unreachable")
        for node, outcome in zip(nodes, outcomes, strict=True)
    ]


def diff(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    secrets: Mapping[str, str],
    *,
    parallel: int | None = None,
    accept_new_host_keys: bool = False,
) -> list[tuple[str, Drift | None, str, str | None]]:
    """Per node: its drift, the unified diff a push would make, and an error (None when it was read)."""
    reach = targets(inventory, nodes, accept_new_host_keys=accept_new_host_keys)
    outcomes = on_nodes(nodes, reach, node_diff_of(secrets), parallel=parallel or inventory.ssh.parallel)
    return [
        (node.name, outcome.value[0], outcome.value[1], None)
        if outcome.value is not None
        else (node.name, None, "", outcome.error or "failed")
        for node, outcome in zip(nodes, outcomes, strict=True)
    ]


def node_diff_of(secrets: Mapping[str, str]) -> Callable[[Connection, InventoryNode], tuple[Drift, str]]:
    """``node_diff`` with the secrets bound, as work for :func:`on_nodes`."""
    return lambda conn, node: node_diff(conn, node, secrets)


def _connected(inventory: Inventory, node: InventoryNode, accept_new_host_keys: bool) -> Connection:
    return connect(targets(inventory, [node], accept_new_host_keys=accept_new_host_keys)[0])


class Drain:
    """Draining nodes one at a time behind the availability guard."""

    def __init__(
        self,
        inventory: Inventory,
        nodes: Sequence[InventoryNode],
        *,
        reason: str = "",
        timeout: float | None = None,
        max_unavailable: int | None = None,
        parallel: int | None = None,
        accept_new_host_keys: bool = False,
        progress: Progress = _quiet,
    ) -> None:
        self.inventory = inventory
        self.nodes = list(nodes)
        self.reason = reason
        self.timeout = timeout
        self.max_unavailable = max_unavailable or inventory.fleet.max_unavailable
        self.parallel = parallel
        self.accept = accept_new_host_keys
        self.progress = progress
        self.decision: Decision | None = None

    def check(self, candidates: Sequence[InventoryNode] | None = None) -> Decision:
        """Ask every node of the inventory now and decide on ``candidates`` (default: all targets)."""
        views = sweep(self.inventory, parallel=self.parallel, accept_new_host_keys=self.accept)
        chosen = self.nodes if candidates is None else candidates
        return decide(views, [n.name for n in chosen], self.inventory.fleet.min_available, self.max_unavailable)

    def run(self) -> list[Step]:
        """Guard the whole set, then drain each node after a fresh guard check; stop at the first failure.

        Raises:
            GuardRefused: the whole set would break the availability rules; nothing was changed.
        """
        self.decision = enforce(self.check())
        self.progress(self.decision.message)
        steps: list[Step] = []
        for index, node in enumerate(self.nodes):
            if index:
                # Nodes may have failed or been drained by someone else since the first check.
                decision = self.check([node])
                if not decision.allowed:
                    steps.append(Step(node.name, False, decision.message, 0.0, "nothing more was drained"))
                    break
            self.progress(f"{node.name}: draining (withdraw, then wait for its connections)")
            step = self._drain(node)
            steps.append(step)
            self.progress(f"{node.name}: {step.detail}")
            if not step.ok:
                break
        return steps

    def _drain(self, node: InventoryNode) -> Step:
        started = time.monotonic()
        wait = node.config.health.drain_timeout if self.timeout is None else self.timeout
        try:
            with _connected(self.inventory, node, self.accept) as conn:
                client = NodeClient(conn, node)
                answer = client.drain(self.reason, wait=wait)
                view = client.status()
        except OberError as exc:
            return Step(node.name, False, exc.message, time.monotonic() - started, exc.fix)
        facts = {"sessions_left": answer.sessions_left, "announced": list(view.announced)}
        if answer.problem:
            return Step(node.name, False, f"withdrawn, but {answer.problem}", time.monotonic() - started, None, facts)
        detail = "withdrawn and idle" if not view.announced else f"still announcing {', '.join(view.announced)}"
        return Step(node.name, not view.announced, detail, time.monotonic() - started, None, facts)


def undrain(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    *,
    wait: float = 60.0,
    accept_new_host_keys: bool = False,
    progress: Progress = _quiet,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Step]:
    """Put nodes back one at a time, each live again (announcing) before the next; stop at the first failure."""
    steps: list[Step] = []
    for node in nodes:
        started = time.monotonic()
        progress(f"{node.name}: undraining")
        try:
            with _connected(inventory, node, accept_new_host_keys) as conn:
                step = _undrain(NodeClient(conn, node, sleep=sleep), wait, started)
        except OberError as exc:
            step = Step(node.name, False, exc.message, time.monotonic() - started, exc.fix)
        steps.append(step)
        progress(f"{node.name}: {step.detail}")
        if not step.ok:
            break
    return steps


def _undrain(client: NodeClient, wait: float, started: float) -> Step:
    """Undrain one node and (unless ``wait`` is 0) wait until it is live; raises OberError when undrain failed."""
    name = client.node.name
    was = client.undrain().was_drained
    detail = "back in service" if was else "was not drained"
    if wait <= 0:
        view = client.status()
    else:
        try:
            view = client.wait_until_live(wait)
        except NotReady as exc:
            return Step(
                name,
                False,
                f"undrained, but not live after {wait:g}s: {', '.join(exc.problems)}",
                time.monotonic() - started,
                exc.fix,
                {"announced": list(exc.view.announced), "live": False},
            )
    facts = {"announced": list(view.announced), "live": view.live}
    announcing = ", ".join(view.announced) or "nothing yet"
    return Step(name, True, f"{detail}; announcing {announcing}", time.monotonic() - started, None, facts)


def one_at_a_time(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    work: Callable[[Connection, InventoryNode], PushResult],
    *,
    doing: str,
    dry_run: bool = False,
    accept_new_host_keys: bool = False,
    progress: Progress = _quiet,
) -> list[PushResult]:
    """Run ``work`` on each node in turn over its own connection; stop at the first failure (the rest untouched)."""
    results: list[PushResult] = []
    for node in nodes:
        progress(f"{node.name}: {doing}")
        started = time.monotonic()
        try:
            with _connected(inventory, node, accept_new_host_keys) as conn:
                result = work(conn, node)
        except OberError as exc:
            result = PushResult(node.name, False, dry_run, error=exc.message, fix=exc.fix)
        results.append(dataclasses.replace(result, seconds=time.monotonic() - started))
        if not result.ok:
            break
    return results


def push(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    secrets: Mapping[str, str],
    *,
    dry_run: bool = False,
    accept_new_host_keys: bool = False,
    progress: Progress = _quiet,
) -> list[PushResult]:
    """Push node by node; stop at the first failure (the nodes after it are untouched)."""
    return one_at_a_time(
        inventory,
        nodes,
        lambda conn, node: push_node(conn, node, secrets, dry_run),
        doing="checking" if dry_run else "pushing",
        dry_run=dry_run,
        accept_new_host_keys=accept_new_host_keys,
        progress=progress,
    )


def whitelist_args(node: InventoryNode, overrides: Mapping[str, str]) -> list[str]:
    """``ober sync`` options for a node: the overrides, else the node's inventory whitelists (possibly empty)."""
    lists = node.config.whitelists
    values = {
        "routers": " ".join(lists.routers),
        "frontend_http": " ".join(lists.frontend_http),
        "backend_http": " ".join(lists.backend_http),
        **overrides,
    }
    args: list[str] = []
    for key, value in values.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


def sync(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    overrides: Mapping[str, str],
    *,
    accept_new_host_keys: bool = False,
    progress: Progress = _quiet,
) -> list[PushResult]:
    """``ober sync`` on each node in turn (names resolved on the node, now); stop at the first failure."""

    def work(conn: Connection, node: InventoryNode) -> PushResult:
        argv = [ober_program(node), "sync", "--config", config_file(node), "--json"]
        argv += ["--secrets", node_secrets_file(node), *whitelist_args(node, overrides)]
        return config_outcome(node, conn.run(argv, timeout=APPLY_TIMEOUT))

    return one_at_a_time(
        inventory, nodes, work, doing="syncing whitelists", accept_new_host_keys=accept_new_host_keys, progress=progress
    )
