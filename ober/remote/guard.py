"""The availability guard: never take nodes out of service if too few would stay live.

Before a node is withdrawn the fleet asks *every* node of the inventory (not only the targets) what it announces
right now; a node that does not answer counts as not live. The decision itself is a pure function of those views,
so every rule is table-tested without a fleet.

Rules, for the nodes an operation takes out (``candidates``):

- at least ``min_available`` nodes must stay live (announcing a VIP to an established neighbor, not drained);
- at most ``max_unavailable`` nodes of the inventory may be out of service at once, counting those already out
  (drained, down, unreachable) — like a Kubernetes disruption budget, so an unexpected outage elsewhere stops a
  planned one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ober.errors import OberError
from ober.hostlists import collect
from ober.remote.nodeclient import NodeView


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

    @property
    def message(self) -> str:
        """One line: the verdict and the numbers behind it."""
        counts = f"{len(self.live)} live now, {self.left} after; {len(self.unavailable)} out of service after"
        if self.allowed:
            return f"guard: ok ({counts})"
        return f"guard refused: {'; '.join(self.reasons)} ({counts})"

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
    reasons: list[str] = []
    unknown = sorted(wanted - names)
    if unknown:
        reasons.append(f"{collect(unknown)} not asked (not in the sweep)")
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
    )


def enforce(decision: Decision) -> Decision:
    """Return an allowed decision; raise :class:`GuardRefused` (nothing changed) otherwise."""
    if decision.allowed:
        return decision
    raise GuardRefused(
        f"{decision.message}; nothing was changed",
        "bring nodes back first (ober fleet undrain, ober fleet status shows which are out), "
        "or lower fleet.min_available / raise --max-unavailable if that is really safe",
    )
