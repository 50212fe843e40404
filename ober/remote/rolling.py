"""The rolling plan: what each node needs, in which class of step, in which order. Pure: facts in, a plan out.

Every change of a router's ECMP set re-hashes flows that live on the *other* nodes, and a GET cut mid-body is not
retried by S3 clients (measured on the 4-node lab: a withdraw-first roll broke 1-3 requests, a hitless reload on
each node broke none). So each node gets the least disruptive class of step that does what it needs:

- ``reload``: a config change or an HAProxy package upgrade. HAProxy's master re-executes the (new) binary and
  hands the listeners over; the node stays in the ECMP set.
- ``restart``: ExaBGP and ``ober health`` restart under BGP graceful restart: the session drops without a
  NOTIFICATION, the router holds the node's routes as stale until it is back. Only when the node's
  ``bgp.graceful_restart`` is set *and* every established session negotiated it (the router advertised it too, as
  ``ober status`` reads from ExaBGP): otherwise the route would vanish anyway, so such a node is rolled ``full``.
- ``full``: whatever stops the node serving (``--full``, no graceful restart): guard → withdraw at a quiet moment
  → wait until idle → act → verify → re-announce → settle. Out for as short a time as possible.
- ``reboot`` (``--reboot``): like ``full``, but the act is rebooting the whole node and waiting until it answers
  from a new boot. The maintenance file survives the reboot, so the node comes back withdrawn and is verified
  before it is re-announced.
- ``skip``: nothing to do (already done by the roll being resumed, or already up to date). A skipped node is
  left *in service*: if an earlier roll left it drained, it is put back.

Nodes already out of service go first (rolling them costs no capacity), then the others in inventory order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

# The drain reason the fleet writes: a node drained with it is the roll's to put back; one drained by an operator
# for another reason stays drained.
ROLL_REASON = "ober fleet"


class StepClass(StrEnum):
    """How disruptive a node's step is, from least to most."""

    SKIP = "skip"
    RELOAD = "reload"
    RESTART = "restart"
    FULL = "full"
    REBOOT = "reboot"

    @property
    def withdraws(self) -> bool:
        """Whether the node leaves the ECMP set for this step: only what truly stops it serving."""
        return self in (StepClass.FULL, StepClass.REBOOT)


class Operation(StrEnum):
    """What the operator asked for."""

    RESTART = "restart"
    UPGRADE = "upgrade"


@dataclass(frozen=True)
class NodeFacts:
    """What the planner knows of one node, read from the node itself.

    Attributes:
        name: the node's inventory name.
        reachable: whether ``ober status`` answered over SSH.
        live: announcing at least one VIP to an established neighbor right now.
        drained: the maintenance file is there.
        drained_by_roll: it was drained by an ``ober fleet`` roll (so a roll may put it back).
        graceful_restart: the node's ``bgp.graceful_restart`` seconds (0: off).
        negotiated: established neighbor → graceful restart negotiated with it (both OPENs advertised it); None:
            the node did not say (an older ober).
        versions: installed versions (``ober``, ``haproxy``, ``exabgp``), None where unknown.
        done: the roll being resumed already finished this node.
    """

    name: str
    reachable: bool = True
    live: bool = True
    drained: bool = False
    drained_by_roll: bool = False
    graceful_restart: int = 0
    negotiated: Mapping[str, bool | None] | None = None
    versions: Mapping[str, str | None] = field(default_factory=dict)
    done: bool = False

    @property
    def in_service(self) -> bool:
        """Serving and announcing: taking it out costs capacity."""
        return self.reachable and self.live and not self.drained


@dataclass(frozen=True)
class Request:
    """What the operator asked for, as plain data.

    Attributes:
        operation: restart or upgrade.
        full: withdraw every node first (``--full``), whatever it needs.
        reload_only: restart: only reload HAProxy hitlessly (``--reload``).
        reboot: restart: reboot every node, withdrawn meanwhile (``--reboot``).
        wanted: upgrade: the versions to end with, per component (``ober``, ``exabgp``, ``haproxy``).
        reinstall: upgrade: reinstall even components already at the wanted version.
    """

    operation: Operation
    full: bool = False
    reload_only: bool = False
    reboot: bool = False
    wanted: Mapping[str, str | None] = field(default_factory=dict)
    reinstall: bool = False

    @property
    def modes(self) -> list[str]:
        """The mode flags asked for (``--full``, ``--reload``, ``--reboot``): at most one makes sense."""
        modes = (("--full", self.full), ("--reload", self.reload_only), ("--reboot", self.reboot))
        return [flag for flag, on in modes if on]

    @property
    def kind(self) -> str:
        """The operation with its mode flags (``restart --full``): only a roll of the same kind is resumed."""
        return " ".join([self.operation.value, *self.modes])


@dataclass(frozen=True)
class Step:
    """One node's step.

    Attributes:
        node: the node's name.
        klass: the class of step (see the module docstring).
        reason: why this class, in words for the plan table.
        changes: upgrade: component → (installed, wanted) for what will be installed.
        out_of_service: the node was out of service before the roll (so it goes first).
    """

    node: str
    klass: StepClass
    reason: str
    changes: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)
    out_of_service: bool = False


@dataclass(frozen=True)
class Plan:
    """The ordered steps of a roll."""

    request: Request
    steps: tuple[Step, ...]
    resumed: str | None = None
    """The id of the roll this one resumes, if any."""

    def acting(self) -> list[Step]:
        """The steps that do something (not skipped)."""
        return [step for step in self.steps if step.klass is not StepClass.SKIP]


# Components whose new code only runs after ExaBGP / ober health restart; any other (HAProxy, its package) only
# needs a reload.
RESTART_COMPONENTS = ("ober", "exabgp")


def changes_for(request: Request, node: NodeFacts) -> dict[str, tuple[str | None, str | None]]:
    """Upgrade: the components whose installed version differs from the wanted one (all of them with reinstall)."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for component, wanted in request.wanted.items():
        have = node.versions.get(component)
        if wanted is None:
            continue
        if request.reinstall or have != wanted:
            found[component] = (have, wanted)
    return found


def classify(request: Request, node: NodeFacts) -> Step:
    """The least disruptive step that does what ``node`` needs (before ordering and resuming)."""
    out = not node.in_service
    if node.done:
        return Step(node.name, StepClass.SKIP, "done by the roll being resumed", out_of_service=out)
    changes: dict[str, tuple[str | None, str | None]] = {}
    if request.operation is Operation.UPGRADE:
        changes = changes_for(request, node)
        if not changes:
            return Step(node.name, StepClass.SKIP, "already up to date", out_of_service=out)
    operator_drained = node.drained and not node.drained_by_roll
    if request.reboot:
        if operator_drained:
            return Step(node.name, StepClass.REBOOT, "drained by an operator: rebooted, left drained", changes, out)
        return Step(node.name, StepClass.REBOOT, "--reboot: withdrawn while the node reboots", changes, out)
    if request.full:
        return Step(node.name, StepClass.FULL, "--full: withdrawn while it restarts", changes, out)
    if operator_drained:
        # An operator took it out for their own reasons: roll it (it serves nobody) and leave it drained.
        return Step(node.name, StepClass.FULL, "drained by an operator: restarted, left drained", changes, out)
    needs_restart = (request.operation is Operation.RESTART and not request.reload_only) or any(
        component in changes for component in RESTART_COMPONENTS
    )
    if not needs_restart:
        what = ", ".join(changes) if changes else "HAProxy"
        return Step(node.name, StepClass.RELOAD, f"hitless reload ({what}); stays in the ECMP set", changes, out)
    held = graceful_restart_holds(node)
    if held is None:
        return Step(
            node.name,
            StepClass.RESTART,
            f"ExaBGP restart under graceful restart ({node.graceful_restart}s, negotiated): route held",
            changes,
            out,
        )
    return Step(
        node.name, StepClass.FULL, f"{held}: restarting ExaBGP would drop the route, so withdraw first", changes, out
    )


def graceful_restart_holds(node: NodeFacts) -> str | None:
    """None when the routers will hold the node's routes while ExaBGP restarts; else why not, in words.

    The node's own setting is not enough: a router that did not advertise graceful restart in its OPEN flushes the
    routes the moment the session closes, whatever the node advertised.
    """
    if node.graceful_restart <= 0:
        return "bgp.graceful_restart is off"
    if node.negotiated is None:
        return "the node's ober does not report whether graceful restart was negotiated"
    if not node.negotiated:
        return "no established BGP session negotiated graceful restart"
    refused = sorted(peer for peer, agreed in node.negotiated.items() if not agreed)
    if refused:
        return f"graceful restart not negotiated with {', '.join(refused)} (the router did not advertise it)"
    return None


def plan(request: Request, nodes: Sequence[NodeFacts], *, resumed: str | None = None) -> Plan:
    """Classify every node and order the steps: skipped ones, then nodes out of service, then the rest.

    The order inside each group is the inventory order, so a plan is deterministic.
    """
    steps = [classify(request, node) for node in nodes]
    order = {StepClass.SKIP: 0}

    def rank(item: tuple[int, Step]) -> tuple[int, int]:
        index, step = item
        if step.klass in order:
            return (0, index)
        return (1 if step.out_of_service else 2, index)

    ordered = tuple(step for _, step in sorted(enumerate(steps), key=rank))
    return Plan(request, ordered, resumed)


def unreachable(nodes: Sequence[NodeFacts]) -> list[str]:
    """Nodes that did not answer: a roll cannot start while a target cannot be reached."""
    return [node.name for node in nodes if not node.reachable]


@dataclass
class NodeResult:
    """What happened to one node."""

    node: str
    klass: StepClass
    status: str
    """``done``, ``skipped``, ``failed`` or ``not reached`` (after an earlier failure)."""
    detail: str = ""
    seconds: float = 0.0
    waits: float = 0.0
    """Of ``seconds``, the time spent waiting for things the roll cannot hurry (drain, restart, verify, settle)."""
    left_withdrawn: bool = False
    in_flight_at_withdraw: int | None = None
    """A step that withdrew after quiescing: requests in flight on the node at that moment."""


def summary(results: Sequence[NodeResult], command: str) -> tuple[bool, str]:
    """Whether the roll succeeded, and one paragraph saying what happened and how to resume."""
    failed = [r for r in results if r.status == "failed"]
    done = [r.node for r in results if r.status == "done"]
    skipped = [r.node for r in results if r.status == "skipped"]
    if not failed:
        parts = [f"{len(done)} rolled"]
        if skipped:
            parts.append(f"{len(skipped)} skipped ({', '.join(skipped)})")
        return True, "roll finished: " + ", ".join(parts)
    bad = failed[0]
    untouched = [r.node for r in results if r.status == "not reached"]
    state = "left withdrawn" if bad.left_withdrawn else "still in the ECMP set"
    text = (
        f"roll stopped at {bad.node} ({bad.klass.value}): {bad.detail}; {bad.node} is {state}; "
        f"{len(done)} done before it, {len(untouched)} not touched ({', '.join(untouched) or 'none'}). "
        f"Fix {bad.node}, then run `{command}` again: it resumes, skipping the nodes already done."
    )
    return False, text
