"""The fleet operations behind ``ober fleet status|drain|undrain|diff|push|sync``, over SSH.

Reading (status, diff) is one parallel sweep. Changing is one node at a time and stops at the first failure, so a
mistake reaches one node, not the fleet, and holds the fleet lock (`Session`), as rolls do: two operators cannot
together take the fleet below ``min_available``. Draining asks the availability guard first, for the whole set and
again right before each node's withdraw (the fleet may have changed meanwhile), and refuses rather than forces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from ober.config import stats_exposure
from ober.errors import OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote.connection import Connection, targets
from ober.remote.facts import ask_all, on_nodes, open_connections, sweep
from ober.remote.guard import Decision, decide, enforce
from ober.remote.lock import STATE_DIR, FleetLock, Holder
from ober.remote.nodeclient import NodeClient, NodeView, NotReady, config_file, ober_program, unreachable
from ober.remote.push import (
    APPLY_TIMEOUT,
    Drift,
    PushResult,
    Uploader,
    config_outcome,
    node_diff,
    node_drift,
    push_node,
    refuse_degraded,
)
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


def warnings(node: InventoryNode) -> list[str]:
    """What the inventory makes weak on this node, whatever its state: an open stats page, a password in clear."""
    found = stats_exposure(node.config.stats, node.config.whitelists)
    return [f"stats page open: {why} (stats.allow_open)" for why in found.open] + [
        f"stats page: {why}" for why in found.weak
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


class Remote(Uploader, Protocol):
    """An open connection to a node as a changing command needs it (``Connection`` is one)."""

    def close(self) -> None:
        """Close the connection."""
        ...


Opener = Callable[[], tuple[Mapping[str, Remote], Mapping[str, str]]]
"""Opens connections to every node of the inventory: the open ones by name, and why the others failed."""


class Session:
    """A changing fleet command's connections to every node of the inventory, with the fleet lock held on them.

    A context manager: it connects to every node at once (the guard counts the whole fleet and the lock is held on
    all of it), takes the lock, and at the end releases the lock however the block ends and closes everything;
    then ``lock.state()`` / ``lock.note()`` say whether the lock is released everywhere.
    """

    def __init__(
        self,
        inventory: Inventory,
        operation: str,
        *,
        accept_new_host_keys: bool = False,
        parallel: int | None = None,
        progress: Progress = _quiet,
        locked: bool = True,
        opener: Opener | None = None,
        state_dir: str = STATE_DIR,
    ) -> None:
        self.inventory = inventory
        self.locked = locked
        self.progress = progress
        self.opener: Opener = opener or (
            lambda: open_connections(inventory, accept_new_host_keys=accept_new_host_keys, parallel=parallel)
        )
        self.connections: dict[str, Remote] = {}
        self.failed: dict[str, str] = {}
        self.lock = FleetLock({}, Holder.me(operation), state_dir, log=progress)

    def __enter__(self) -> Session:
        opened, failed = self.opener()
        self.connections, self.failed = dict(opened), dict(failed)
        for name, why in self.failed.items():
            self.progress(f"{name}: {why}")
        self.lock.runners = dict(self.connections)
        if self.locked:
            try:
                self.lock.acquire()
            except BaseException:
                self._close()
                raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            self.lock.release()
        finally:
            self._close()

    def _close(self) -> None:
        for conn in self.connections.values():
            with contextlib.suppress(Exception):  # closing goes on for the others, whatever one raised
                conn.close()

    def remote(self, node: InventoryNode) -> Remote:
        """The node's connection.

        Raises:
            OberError: it could not be opened (the message says why).
        """
        conn = self.connections.get(node.name)
        if conn is None:
            why = self.failed.get(node.name, f"{node.name}: not connected")
            raise OberError(why, "fix SSH to it (ober fleet status), then run the command again")
        return conn

    def guard(self, candidates: Sequence[str], max_unavailable: int) -> Decision:
        """The guard on every node's state as of now, after checking the lock is still ours.

        Raises:
            OberError: the lock was taken from this command (nothing more may change).
        """
        self.lock.ensure()
        views = ask_all(self.inventory, self.connections)
        return decide(views, candidates, self.inventory.fleet.min_available, max_unavailable)


class Drain:
    """Draining nodes one at a time behind the availability guard, asked afresh right before each withdraw."""

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

    def check(self) -> Decision:
        """Ask every node of the inventory now (no lock: this changes nothing) and decide on all the targets."""
        views = sweep(self.inventory, parallel=self.parallel, accept_new_host_keys=self.accept)
        return decide(views, [n.name for n in self.nodes], self.inventory.fleet.min_available, self.max_unavailable)

    def run(self, session: Session) -> list[Step]:
        """Guard the whole set, then drain each node right after a fresh guard check; stop at the first failure.

        Raises:
            GuardRefused: the whole set would break the availability rules; nothing was changed.
        """
        self.decision = enforce(session.guard([n.name for n in self.nodes], self.max_unavailable))
        self.progress(self.decision.message)
        steps: list[Step] = []
        for node in self.nodes:
            # Immediately before each withdraw: nodes may have failed, or been drained by someone without the
            # lock (an older ober, a node's own `ober drain`), since the last check.
            try:
                decision = session.guard([node.name], self.max_unavailable)
            except OberError as exc:
                steps.append(Step(node.name, False, exc.message, 0.0, exc.fix))
                break
            if not decision.allowed:
                steps.append(Step(node.name, False, decision.message, 0.0, decision.fix))
                break
            self.progress(f"{node.name}: draining (withdraw, then wait for its connections)")
            step = self._drain(session, node)
            steps.append(step)
            self.progress(f"{node.name}: {step.detail}")
            if not step.ok:
                break
        return steps

    def _drain(self, session: Session, node: InventoryNode) -> Step:
        started = time.monotonic()
        wait = node.config.health.drain_timeout if self.timeout is None else self.timeout
        try:
            client = NodeClient(session.remote(node), node)
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
    session: Session,
    nodes: Sequence[InventoryNode],
    *,
    wait: float = 60.0,
    progress: Progress = _quiet,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Step]:
    """Put nodes back one at a time, each live again (announcing) before the next; stop at the first failure."""
    steps: list[Step] = []
    for node in nodes:
        started = time.monotonic()
        progress(f"{node.name}: undraining")
        try:
            step = _undrain(NodeClient(session.remote(node), node, sleep=sleep), wait, started)
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
    session: Session,
    nodes: Sequence[InventoryNode],
    work: Callable[[Remote, InventoryNode], PushResult],
    *,
    doing: str,
    dry_run: bool = False,
    progress: Progress = _quiet,
) -> list[PushResult]:
    """Run ``work`` on each node in turn over its connection; stop at the first failure (the rest untouched)."""
    results: list[PushResult] = []
    for node in nodes:
        progress(f"{node.name}: {doing}")
        started = time.monotonic()
        try:
            result = work(session.remote(node), node)
        except OberError as exc:
            result = PushResult(node.name, False, dry_run, error=exc.message, fix=exc.fix)
        results.append(dataclasses.replace(result, seconds=time.monotonic() - started))
        if not result.ok:
            break
    return results


def push(
    session: Session,
    nodes: Sequence[InventoryNode],
    secrets: Mapping[str, str],
    *,
    dry_run: bool = False,
    progress: Progress = _quiet,
    allow_degraded: bool = False,
) -> list[PushResult]:
    """Push node by node; stop at the first failure, a node left degraded too (the nodes after it are untouched)."""
    return one_at_a_time(
        session,
        nodes,
        lambda conn, node: push_node(conn, node, secrets, dry_run, allow_degraded=allow_degraded),
        doing="checking" if dry_run else "pushing",
        dry_run=dry_run,
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
    session: Session,
    nodes: Sequence[InventoryNode],
    overrides: Mapping[str, str],
    *,
    progress: Progress = _quiet,
    allow_degraded: bool = False,
) -> list[PushResult]:
    """``ober sync`` on each node in turn (names resolved on the node, now); stop at the first failure."""

    def work(conn: Remote, node: InventoryNode) -> PushResult:
        argv = [ober_program(node), "sync", "--config", config_file(node), "--json"]
        argv += ["--secrets", node_secrets_file(node), *whitelist_args(node, overrides)]
        return refuse_degraded(config_outcome(node, conn.run(argv, timeout=APPLY_TIMEOUT)), allow_degraded)

    return one_at_a_time(session, nodes, work, doing="syncing whitelists", progress=progress)
