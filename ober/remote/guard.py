"""The availability guard: never take nodes out of service if too few would stay live.

Before a node is withdrawn the fleet asks *every* node of the inventory (not only the targets) what it announces
right now. A node that does not answer is *unknown* (only the routers know whether it still announces, and the fleet
controller does not ask them): the guard counts it as not live, the safe side, and says so. The decision itself is
a pure function of those views, so every rule is table-tested without a fleet.

Rules, for the nodes an operation takes out (``candidates``):

- at least ``min_available`` nodes must stay live (announcing a VIP to an established neighbor, not drained);
- a node that did not answer cannot be taken out (nor is anything known about what that would change);
- at most ``max_unavailable`` nodes of the inventory may be out of service at once, counting those already out
  (drained, down, unreachable) — like a Kubernetes disruption budget, so an unexpected outage elsewhere stops a
  planned one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ober.errors import OberError
from ober.hostlists import collect
from ober.remote.nodeclient import Liveness, NodeView


class GuardRefused(OberError):
    """The availability guard said no; nothing was changed."""


@dataclass(frozen=True)
class Decision:
    """What the guard found and decided."""

    allowed: bool
    live: tuple[str, ...]
    """Nodes live now."""
    taken_out: tuple[str, ...]
    """Candidates that are live now (the ones the operation really takes out of the ECMP set)."""
    left: int
    """Live nodes after the operation."""
    unavailable: tuple[str, ...]
    """Nodes out of service after the operation (already out, plus the candidates)."""
    min_available: int
    max_unavailable: int
    reasons: tuple[str, ...]
    """Why it was refused (empty when allowed)."""
    unknown: tuple[str, ...] = ()
    """Nodes that did not tell their state (counted as not live: the safe side)."""
    drained: tuple[str, ...] = ()
    """Nodes other than the candidates that are drained now."""
    down: tuple[str, ...] = ()
    """Nodes other than the candidates that answered, are not drained, and announce nothing."""

    @property
    def message(self) -> str:
        """One line: the verdict and the numbers behind it."""
        counts = f"{len(self.live)} live now, {self.left} after; {len(self.unavailable)} out of service after"
        if self.unknown:
            counts += f"; {collect(self.unknown)} unknown (no answer), counted as not live"
        if self.allowed and self.unknown:
            # Not "ok": it passes only because nodes nobody could ask are counted as out of service.
            return f"guard: allowed only by counting {collect(self.unknown)} as out of service ({counts})"
        if self.allowed:
            return f"guard: ok ({counts})"
        return f"guard refused: {'; '.join(self.reasons)} ({counts})"

    @property
    def fix(self) -> str:
        """What would let it through, for the nodes that are out: each kind of out gets its own remedy."""
        fixes: list[str] = []
        if self.drained:
            fixes.append(f"put drained nodes back if they are ready: ober fleet undrain {collect(self.drained)}")
        if self.unknown:
            fixes.append(
                f"{collect(self.unknown)} did not answer over SSH (or its ober status failed), so whether it still "
                "announces is known only to the routers: check SSH to it and 'ober fleet status "
                f"{collect(self.unknown)}', or the routers' BGP sessions"
            )
        if self.down:
            fixes.append(
                f"{collect(self.down)} answers but announces nothing: see 'ober fleet status {collect(self.down)}'"
            )
        fixes.append("or lower fleet.min_available / raise --max-unavailable if that is really safe")
        return "; ".join(fixes)

    def to_dict(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {
            "allowed": self.allowed,
            "live": list(self.live),
            "taken_out": list(self.taken_out),
            "left": self.left,
            "unavailable": list(self.unavailable),
            "min_available": self.min_available,
            "max_unavailable": self.max_unavailable,
            "reasons": list(self.reasons),
            "unknown": list(self.unknown),
        }


def decide(views: Sequence[NodeView], candidates: Iterable[str], min_available: int, max_unavailable: int) -> Decision:
    """Whether taking ``candidates`` out of service keeps the fleet available.

    Args:
        views: every node of the inventory, as just asked (unreachable ones included).
        candidates: names of the nodes the operation takes out.
        min_available: live nodes that must remain.
        max_unavailable: nodes that may be out of service at once, in the whole inventory.
    """
    names = {view.name for view in views}
    wanted = set(candidates)
    live = [view.name for view in views if view.live]
    taken_out = [name for name in live if name in wanted]
    left = len(live) - len(taken_out)
    unavailable = [view.name for view in views if not view.live or view.name in wanted]
    others = [view for view in views if view.name not in wanted]
    unknown = [view.name for view in views if view.liveness is Liveness.UNKNOWN]
    reasons: list[str] = []
    not_asked = sorted(wanted - names)
    if not_asked:
        reasons.append(f"{collect(not_asked)} not asked (not in the sweep)")
    silent = [name for name in unknown if name in wanted]
    if silent:
        reasons.append(f"{collect(silent)} did not answer, so ober can neither tell what it announces nor take it out")
    if taken_out and left < min_available:
        reasons.append(
            f"taking out {collect(taken_out)} would leave {left} live node{'s' if left != 1 else ''}, "
            f"fewer than min_available {min_available}"
        )
    if taken_out and len(unavailable) > max_unavailable:
        already = [name for name in unavailable if name not in wanted]
        detail = f" ({collect(already)} already out)" if already else ""
        reasons.append(
            f"{len(unavailable)} nodes would be out of service{detail}, more than max_unavailable {max_unavailable}"
        )
    return Decision(
        allowed=not reasons,
        live=tuple(live),
        taken_out=tuple(taken_out),
        left=left,
        unavailable=tuple(unavailable),
        min_available=min_available,
        max_unavailable=max_unavailable,
        reasons=tuple(reasons),
        unknown=tuple(unknown),
        drained=tuple(view.name for view in others if view.known and view.drained is not None),
        down=tuple(view.name for view in others if view.liveness is Liveness.NOT_LIVE and view.drained is None),
    )


def enforce(decision: Decision) -> Decision:
    """Return an allowed decision; raise :class:`GuardRefused` (nothing changed) otherwise."""
    if decision.allowed:
        return decision
    raise GuardRefused(f"{decision.message}; nothing was changed", decision.fix)
