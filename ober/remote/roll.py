"""The rolling executor: carries out a :mod:`ober.remote.rolling` plan on the nodes, one node at a time, over SSH.

Each node gets the least disruptive class of step (see ``rolling``): a ``reload`` or ``restart`` node never
leaves the ECMP set; a ``full`` or ``reboot`` node is guarded, withdrawn, acted on (restarted, or rebooted and
waited for: `ober.remote.reboot`), verified and put back before the next.
The roll stops at the first failure and leaves that node withdrawn (when the guard allows), the rest untouched.
Each node remembers the roll (``/var/lib/ober/fleet/roll.json``: its id, the operation, done or not), so running
the same command again resumes: nodes done are skipped and left in service. Once the roll is over the record is
kept as ``last-roll.json`` (``ober health``'s metrics show it). The whole roll holds the fleet lock.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ober.errors import OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote.facts import ask_all
from ober.remote.guard import decide
from ober.remote.lock import STATE_DIR, FleetLock, Holder
from ober.remote.nodeclient import NodeClient, NodeView, NotReady
from ober.remote.probe import probe_vips
from ober.remote.reboot import REBOOT_TIMEOUT, boot_identity, request_reboot, wait_back
from ober.remote.rolling import (
    ROLL_REASON,
    NodeFacts,
    NodeResult,
    Plan,
    Request,
    Step,
    StepClass,
    plan,
)
from ober.runner import Result, Runner

COMMAND_TIMEOUT = 120.0
VERIFY_TIMEOUT = 90.0
DRAIN_TIMEOUT = 30.0
QUIESCE = 10.0
RESTART_CUT = 5.0
"""Seconds a withdrawn node's restart lets connections left after the drain finish before cutting them."""
DEGRADED_GRACE = 10.0
"""Seconds a verified node may serve degraded (a server still coming up) before its step fails for it."""

_WRITE_RECORD = """set -u
mkdir -p "$1" && printf '%s\\n' "$2" > "$1/roll.tmp" && mv "$1/roll.tmp" "$1/roll.json"
"""
_READ_RECORD = """[ -f "$1/roll.json" ] || exit 0
cat "$1/roll.json"
"""
# Kept as the last roll (ober health's metrics show it); only roll.json is read to resume.
_CLEAR_RECORD = '[ ! -f "$1/roll.json" ] || mv -f "$1/roll.json" "$1/last-roll.json"'


@dataclass(frozen=True)
class Options:
    """How the roll runs (timeouts and pauses, in seconds)."""

    settle: float = 2.0
    """After a node is back, before the next: routers converge, clients reconnect."""
    drain_timeout: float = DRAIN_TIMEOUT
    """A withdrawn node's open connections may take this long to end; after it the roll goes on anyway."""
    verify_timeout: float = VERIFY_TIMEOUT
    command_timeout: float = COMMAND_TIMEOUT
    quiesce: float = QUIESCE
    """Before a withdraw, wait up to this long for a moment with no request in flight on the node."""
    probe: bool = True
    """Verify also makes a request through each of the node's VIPs, on the node (`ober.remote.probe`)."""
    reboot_timeout: float = REBOOT_TIMEOUT
    """A rebooted node must answer SSH from its new boot within this long, or the roll stops there."""
    state_dir: str = STATE_DIR
    dry_run: bool = False
    allow_degraded: bool = False
    """A node whose HAProxy serves degraded after its step (``ober status``'s ``degraded``) does not stop the roll."""


@dataclass
class RollReport:
    """What a roll did."""

    plan: Plan
    results: list[NodeResult] = field(default_factory=list)
    roll_id: str = ""
    seconds: float = 0.0
    lock: dict[str, object] = field(default_factory=dict)
    """Where the fleet lock stands at the end (``FleetLock.state``)."""
    lock_note: str = ""
    """The same in words: released, or still held where and how to free it."""

    @property
    def waits(self) -> float:
        """The part of the roll spent waiting on things it cannot hurry."""
        return sum(r.waits for r in self.results)


class StepFailed(OberError):
    """One node's step failed; the roll stops."""


def _sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "ober-roll", *args]


class NodeOps:
    """The commands the roll runs on one node, each with a timeout; failures raise :class:`StepFailed`."""

    def __init__(self, node: InventoryNode, conn: Runner, options: Options) -> None:
        self.node = node
        self.conn = conn
        self.options = options
        self.client = NodeClient(conn, node)
        self.ober = self.client.program
        self.config = self.client.config
        self.in_flight_at_withdraw: int | None = None
        """Requests in flight when the quiesced drain withdrew the node (None: no quiesce ran)."""

    def run(self, argv: Sequence[str], what: str, timeout: float | None = None) -> Result:
        """Run ``argv``; a non-zero exit is a StepFailed naming ``what`` and the command's last line."""
        result = self.conn.run(argv, timeout or self.options.command_timeout)
        if not result.ok:
            detail = result.last_line()
            if argv[0] == "systemctl" and "journalctl" in detail:
                # systemctl only points at the journal: quote the unit's own last words instead.
                detail = self._journal(argv[-1]) or detail
            raise StepFailed(f"{what}: {detail}", f"see: ober fleet status {self.node.name}")
        return result

    def _journal(self, unit: str) -> str:
        found = self.conn.run(["journalctl", "-u", unit, "-n", "30", "-o", "cat", "--no-pager"], 30.0)
        lines = [line.strip() for line in found.stdout.splitlines() if line.strip()]
        # HAProxy's own complaint first (its config check prints [ALERT] lines), then any error, then the last line.
        wanted = [line for line in lines if "ALERT" in line] or [line for line in lines if "rror" in line] or lines
        return wanted[-1][:300] if wanted else ""

    def view(self) -> NodeView:
        """The node's status now."""
        return self.client.status()

    def drain(self, reason: str, *, quiesce: bool = False) -> None:
        """Withdraw and wait (bounded) until the node's connections end; a timeout still counts as withdrawn.

        With ``quiesce``, the node withdraws at a moment with no request in flight (``ober drain --quiesce``).
        """
        answer = self.client.drain(
            reason, wait=self.options.drain_timeout, quiesce=self.options.quiesce if quiesce else 0.0
        )
        if answer.in_flight_at_withdraw is not None:
            self.in_flight_at_withdraw = answer.in_flight_at_withdraw

    def undrain(self) -> None:
        """Back in service (the health process announces after ``rise`` good checks)."""
        self.client.undrain()

    def reload_http(self) -> None:
        """Hitless HAProxy reload: the unit validates the config first; the master re-executes the binary.

        Through ``ober reload``, not ``systemctl reload``: a reload HAProxy could not load (a ``maxconn`` beyond the
        file-descriptor limit passes ``haproxy -c``) leaves the old worker serving and systemd content; ober reload
        waits for the new worker and fails the step otherwise.
        """
        self.run([self.ober, "reload", "--config", self.config], "reload ober-http")

    def restart_bgp(self) -> None:
        """Restart ExaBGP and ober health without a NOTIFICATION, so the router's graceful restart holds the route.

        SIGKILL closes the TCP session without a BGP NOTIFICATION (a NOTIFICATION makes the router flush the routes
        even under graceful restart); the router keeps the node's routes as stale until the new ExaBGP is back.
        """
        self.run(["systemctl", "kill", "--signal=SIGKILL", "ober-bgp"], "kill ober-bgp")
        self.run(["systemctl", "restart", "ober-bgp"], "restart ober-bgp")

    def restart_all(self) -> None:
        """Restart both units (the node is withdrawn and drained as far as the drain timeout allowed).

        Through ``ober restart --timeout``, not ``systemctl restart``: what is still open on a withdrawn node after
        the drain is idle keep-alives or flows the router already sends elsewhere (a response's unacknowledged
        tail retransmitted to nobody), and HAProxy's soft stop would wait for them up to the unit's stop timeout.
        """
        argv = [self.ober, "restart", "--config", self.config, "--timeout", f"{RESTART_CUT:g}"]
        self.run(argv, "restart ober-http ober-bgp", self.options.command_timeout + RESTART_CUT)

    def reboot(self) -> float:
        """Reboot the node and wait (bounded) until it answers SSH from a new boot; the seconds that took."""
        try:
            before = boot_identity(self.conn)
            request_reboot(self.conn)
            return wait_back(self.conn, before, self.options.reboot_timeout)
        except OberError as exc:
            raise StepFailed(f"reboot: {exc.message}", exc.fix or f"see: ober fleet status {self.node.name}") from None

    def verify(self, *, announced: bool) -> NodeView:
        """Wait until the node is healthy and answers through its VIPs; when ``announced``, also live.

        Healthy: units active, BGP established, HAProxy answering, health publishing, and (not drained) every VIP
        announced. Raises StepFailed with what is still wrong at the deadline.
        """
        degraded_since: float | None = None

        def wrong(view: NodeView) -> list[str]:
            nonlocal degraded_since
            found = view.problems()
            if not found and self.options.probe:
                found = probe_vips(self.conn, self.node.config)
            if not found and view.degraded and not self.options.allow_degraded:
                # It serves, with less than its config says: give a server coming up a moment, not the whole
                # verify timeout (a name that does not resolve never will).
                now = self.client.clock()
                degraded_since = now if degraded_since is None else degraded_since
                if now - degraded_since >= DEGRADED_GRACE:
                    raise StepFailed(
                        f"verify: HAProxy serves degraded: {'; '.join(view.degraded)}",
                        "fix it (ober fleet status), or pass --allow-degraded to roll on anyway",
                    )
                found = [f"degraded: {line}" for line in view.degraded]
            return found

        try:
            if announced:
                return self.client.wait_until_live(self.options.verify_timeout, also=wrong)
            return self.client.wait_until(wrong, self.options.verify_timeout, "healthy")
        except NotReady as exc:
            raise StepFailed(f"verify: {'; '.join(exc.problems)}", f"see: ober fleet status {self.node.name}") from None

    def record(self, roll_id: str, operation: str, done: bool) -> None:
        """Remember on the node that this roll reached it (and whether it finished it)."""
        data = json.dumps({"id": roll_id, "operation": operation, "done": done, "at": time.time()})
        self.run(_sh(_WRITE_RECORD, self.options.state_dir, data), "write the roll record")


def read_record(conn: Runner, state_dir: str, timeout: float = 30.0) -> dict[str, object] | None:
    """The node's roll record, or None (also when unreadable: then nothing is resumed on it)."""
    result = conn.run(_sh(_READ_RECORD, state_dir), timeout)
    if not result.ok or not result.stdout.strip():
        return None
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def resumable(records: Mapping[str, dict[str, object] | None], kind: str) -> str | None:
    """The id of an unfinished roll of the same kind (``Request.kind``) found on the targets, if any.

    Only the same kind: a ``restart --reload`` after a failed ``restart --full`` is a new roll, not a resumed one.
    """
    same = [r for r in records.values() if r and r.get("operation") == kind]
    unfinished = {str(r.get("id")) for r in same if not r.get("done")}
    ids = [str(r.get("id")) for r in same if str(r.get("id")) in unfinished]
    return max(set(ids), key=ids.count) if ids else None


def facts_for(node: InventoryNode, view: NodeView, record: dict[str, object] | None, roll_id: str | None) -> NodeFacts:
    """What the planner needs to know of a node."""
    drained = view.drained
    return NodeFacts(
        name=node.name,
        reachable=view.reachable and view.error is None,
        live=view.live,
        drained=drained is not None,
        drained_by_roll=drained is not None and drained.reason.startswith(ROLL_REASON),
        graceful_restart=node.config.bgp.graceful_restart,
        negotiated=_negotiated(view),
        versions=view.versions,
        done=bool(record and roll_id and record.get("id") == roll_id and record.get("done")),
    )


def _negotiated(view: NodeView) -> dict[str, bool | None] | None:
    """Graceful restart per *established* session (what the routers agreed to); None when the node did not say."""
    if view.graceful_restart is None:
        return None
    return {peer: view.graceful_restart.get(peer) for peer, state in view.bgp.items() if state == "established"}


class Roll:
    """One rolling operation over ``targets`` of ``inventory``, through open connections (``runners``)."""

    def __init__(
        self,
        inventory: Inventory,
        targets: Sequence[InventoryNode],
        runners: Mapping[str, Runner],
        request: Request,
        *,
        options: Options | None = None,
        log: Callable[[str], None] = lambda _: None,
        command: str = "ober fleet restart",
        install: Callable[[NodeOps, Step], None] | None = None,
    ) -> None:
        self.inventory = inventory
        self.targets = list(targets)
        self.runners = dict(runners)
        self.request = request
        self.options = options or Options()
        self.log = log
        self.command = command
        self.install = install
        """Upgrade: installs a step's ``changes`` on its node (before the reload/restart that activates them)."""
        holder = Holder.me(request.operation.value)
        self.lock = FleetLock(self.runners, holder, self.options.state_dir, log=log)
        """Taken by :meth:`run`; renewed while the roll runs."""

    def views(self) -> list[NodeView]:
        """Every node of the inventory, asked now, in parallel (one that has no connection is unknown)."""
        return ask_all(self.inventory, self.runners)

    def prepare(self) -> tuple[Plan, dict[str, NodeView]]:
        """Read the fleet and plan (no change anywhere)."""
        missing = [node.name for node in self.targets if node.name not in self.runners]
        if missing:
            raise OberError(f"cannot reach {', '.join(missing)}", "fix SSH to them (ober fleet status), then re-run")
        views = {view.name: view for view in self.views()}
        bad = [name for name in (n.name for n in self.targets) if views[name].error and views[name].reachable]
        down = [name for name in (n.name for n in self.targets) if not views[name].reachable]
        if down:
            raise OberError(f"cannot reach {', '.join(down)}", "fix SSH to them (ober fleet status), then re-run")
        records = {n.name: read_record(self.runners[n.name], self.options.state_dir) for n in self.targets}
        roll_id = resumable(records, self.request.kind)
        facts = [facts_for(n, views[n.name], records[n.name], roll_id) for n in self.targets]
        for name in bad:
            self.log(f"{name}: {views[name].error} (rolled first: it is out of service)")
        return plan(self.request, facts, resumed=roll_id), views

    def run(self) -> RollReport:
        """Lock the fleet, plan, and roll node by node; the lock is released however it ends.

        The report (or the error raised) says whether the lock was released everywhere, and how to free it if not.
        """
        started = time.monotonic()
        self.lock.acquire()
        try:
            the_plan, _ = self.prepare()
            report = RollReport(the_plan, roll_id=the_plan.resumed or uuid.uuid4().hex[:12])
            if not self.options.dry_run:
                if the_plan.resumed:
                    self.log(f"resuming roll {the_plan.resumed}")
                self._roll(report)
        except OberError as exc:
            self.lock.release()
            # The error is all the operator sees of this roll: it says where the lock stands too.
            exc.message = f"{exc.message} ({self.lock.note()})"
            raise
        except BaseException:
            self.lock.release()
            raise
        self.lock.release()
        report.lock = self.lock.state()
        report.lock_note = self.lock.note()
        report.seconds = time.monotonic() - started
        return report

    def _roll(self, report: RollReport) -> None:
        by_name = {node.name: node for node in self.targets}
        operation = self.request.kind
        for step in report.plan.acting():
            NodeOps(by_name[step.node], self.runners[step.node], self.options).record(report.roll_id, operation, False)
        failed = False
        for step in report.plan.steps:
            if failed:
                report.results.append(NodeResult(step.node, step.klass, "not reached"))
                continue
            ops = NodeOps(by_name[step.node], self.runners[step.node], self.options)
            result = self._step(ops, step, report.roll_id)
            report.results.append(result)
            failed = result.status == "failed"
        if not failed:
            for node in self.targets:
                # A record left behind (node unreachable now) says done: the next roll does not resume from it.
                with contextlib.suppress(OberError):
                    self.runners[node.name].run(_sh(_CLEAR_RECORD, self.options.state_dir), 30.0)

    def _step(self, ops: NodeOps, step: Step, roll_id: str) -> NodeResult:
        started = time.monotonic()
        waits = [0.0]

        def waited(call: Callable[[], object]) -> None:
            began = time.monotonic()
            call()
            waits[0] += time.monotonic() - began

        self.log(f"{step.node}: {step.klass.value} ({step.reason})")
        withdrawn = False
        try:
            if step.klass is StepClass.SKIP:
                self._keep_in_service(ops, waited)
                return NodeResult(step.node, step.klass, "skipped", step.reason, time.monotonic() - started)
            before = ops.view()
            ours = before.drained is None or before.drained.reason.startswith(ROLL_REASON)
            if step.klass.withdraws and before.drained is None:
                self._guard(step.node)
                # Withdrawn from here on, even if the drain's answer is lost: its first act is the maintenance file.
                withdrawn = True
                waited(lambda: ops.drain(f"{ROLL_REASON} {self.request.operation.value} {roll_id}", quiesce=True))
                if ops.in_flight_at_withdraw is not None:
                    self.log(f"{step.node}: withdrawn with {ops.in_flight_at_withdraw} requests in flight")
            elif before.drained is not None:
                withdrawn = True
            self._act(ops, step)
            if step.klass is StepClass.FULL:
                waited(lambda: ops.restart_all())
            elif step.klass is StepClass.REBOOT:
                waited(lambda: self.log(f"{step.node}: back from its reboot after {ops.reboot():.1f}s"))
            elif step.klass is StepClass.RESTART:
                waited(lambda: ops.reload_http())
                waited(lambda: ops.restart_bgp())
            else:
                waited(lambda: ops.reload_http())
            waited(lambda: ops.verify(announced=not withdrawn))
            if withdrawn and ours:
                ops.undrain()
                withdrawn = False
                waited(lambda: ops.verify(announced=True))
            waited(lambda: time.sleep(self.options.settle))
            ops.record(roll_id, self.request.kind, True)
        except OberError as exc:
            left = self._withdraw_failed(ops, step, withdrawn, roll_id)
            detail = exc.message
            self.log(f"{step.node}: failed: {detail}")
            return NodeResult(step.node, step.klass, "failed", detail, time.monotonic() - started, waits[0], left)
        took = time.monotonic() - started
        self.log(f"{step.node}: done in {took:.1f}s")
        return NodeResult(
            step.node, step.klass, "done", step.reason, took, waits[0], in_flight_at_withdraw=ops.in_flight_at_withdraw
        )

    def _act(self, ops: NodeOps, step: Step) -> None:
        """Install what an upgrade changes (nothing for a restart)."""
        for component, (have, want) in step.changes.items():
            self.log(f"{step.node}: {component} {have or '?'} → {want}")
        if step.changes and self.install is not None:
            self.install(ops, step)

    def _keep_in_service(self, ops: NodeOps, waited: Callable[[Callable[[], object]], None]) -> None:
        """A skipped node left drained by an earlier roll goes back in service (never left out because skipped)."""
        seen = ops.view()
        if seen.drained is not None and seen.drained.reason.startswith(ROLL_REASON):
            ops.undrain()
            waited(lambda: ops.verify(announced=True))

    def _guard(self, name: str) -> None:
        """Refuse to withdraw ``name`` if too few nodes would stay live (every node asked now) or the lock is lost."""
        self.lock.ensure()
        decision = decide(
            self.views(), [name], self.inventory.fleet.min_available, self.inventory.fleet.max_unavailable
        )
        if not decision.allowed:
            raise StepFailed(decision.message, decision.fix)

    def _withdraw_failed(self, ops: NodeOps, step: Step, withdrawn: bool, roll_id: str) -> bool:
        """Leave a failed node out of the ECMP set when the guard allows; returns whether it is withdrawn."""
        if withdrawn:
            return True
        try:
            self._guard(step.node)
            ops.drain(f"{ROLL_REASON} {self.request.operation.value} {roll_id} failed")
        except OberError as exc:
            self.log(f"{step.node}: not withdrawn after the failure: {exc.message}")
            return False
        return True
