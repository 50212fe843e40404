"""The health state machine behind ``ober health``: pure, so every transition can be tested.

Per VIP, :func:`step` takes the current state and one observation (is the VIP servable, is the node in
maintenance) and returns the next state and at most one action for ExaBGP. The loop that owns the I/O is in
:mod:`ober.healthd`. Hysteresis: ``rise`` good checks in a row to announce, ``fall`` bad ones to withdraw.
Maintenance withdraws at once, or, with a drain policy, first re-announces less preferred (graceful-shutdown
community / higher MED) and withdraws ``delay`` seconds later, so routers move traffic before the route goes.

A *definite* failure skips ``fall``: HAProxy not running at all, or HAProxy reporting no live server in the VIP's
group (its own checks already applied their ``fall``; counting again here only delayed the withdraw by seconds).
Only a HAProxy that does not answer in time is a doubtful check that counts toward ``fall``.

A helper restarted under a running ExaBGP (killed, OOM) does not know what ExaBGP still announces for it: its VIPs
start *unknown*, and a first decision not to announce is sent as a withdraw even if nothing was announced.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ober.config import DrainPolicy


class State(enum.Enum):
    """Where a VIP stands."""

    INIT = "init"
    RISING = "rising"
    UP = "up"
    FALLING = "falling"
    DOWN = "down"
    DRAINING = "draining"
    DISABLED = "disabled"


class Action(enum.Enum):
    """What to tell ExaBGP."""

    ANNOUNCE = "announce"
    ANNOUNCE_DRAIN = "announce-drain"
    WITHDRAW = "withdraw"


@dataclass(frozen=True)
class Rules:
    """The thresholds: ``rise``/``fall`` checks, and the make-before-break delay (None: withdraw at once)."""

    rise: int
    fall: int
    drain_delay: float | None = None


@dataclass(frozen=True)
class VipState:
    """A VIP's state, its run of checks toward rise/fall, what is announced, and when the state began.

    ``known`` is False for a VIP this process has not sent a command for yet (see :data:`UNKNOWN`): ExaBGP may still
    hold an announcement a previous helper made, so ``announced`` is only a guess until then.
    """

    state: State = State.INIT
    count: int = 0
    announced: Action | None = None
    since: float = 0.0
    known: bool = True


UNKNOWN = VipState(known=False)
"""Where each VIP starts in a new helper: nothing decided, and ExaBGP's announcement not known."""


@dataclass(frozen=True)
class Observation:
    """One check: can this node serve the VIP, is it in maintenance, and is an unhealthy verdict definite."""

    healthy: bool
    maintenance: bool
    now: float
    definite: bool = False
    """Unhealthy beyond doubt (HAProxy gone, or no live server per HAProxy's own checks): withdraw without ``fall``."""


def _go(current: VipState, state: State, now: float, action: Action | None = None, count: int = 0) -> VipState:
    announced = current.announced
    if action is not None:
        announced = None if action is Action.WITHDRAW else action
    since = current.since if state is current.state else now
    known = current.known or action is not None
    return VipState(state=state, count=count, announced=announced, since=since, known=known)


def step(current: VipState, seen: Observation, rules: Rules) -> tuple[VipState, Action | None]:
    """One transition. Returns the new state and the action to send, if any."""
    if seen.maintenance:
        return _maintenance(current, seen, rules)
    if current.state is State.DRAINING:
        # Maintenance ended during the drain: restore the normal announcement if still servable.
        if seen.healthy:
            return _go(current, State.UP, seen.now, Action.ANNOUNCE), Action.ANNOUNCE
        return _go(current, State.DOWN, seen.now, Action.WITHDRAW), Action.WITHDRAW
    if seen.healthy:
        return _healthy(current, seen.now, rules)
    return _unhealthy(current, seen, rules)


def _maintenance(current: VipState, seen: Observation, rules: Rules) -> tuple[VipState, Action | None]:
    if current.state is State.DISABLED:
        return current, None
    if current.state is State.DRAINING:
        if rules.drain_delay is not None and seen.now - current.since < rules.drain_delay:
            return current, None
        return _go(current, State.DISABLED, seen.now, Action.WITHDRAW), Action.WITHDRAW
    if current.announced is Action.ANNOUNCE and rules.drain_delay is not None:
        return _go(current, State.DRAINING, seen.now, Action.ANNOUNCE_DRAIN), Action.ANNOUNCE_DRAIN
    if current.announced is not None or not current.known:
        return _go(current, State.DISABLED, seen.now, Action.WITHDRAW), Action.WITHDRAW
    return _go(current, State.DISABLED, seen.now), None


def _healthy(current: VipState, now: float, rules: Rules) -> tuple[VipState, Action | None]:
    if current.state in (State.UP, State.FALLING):
        return _go(current, State.UP, now), None
    count = current.count + 1 if current.state is State.RISING else 1
    if count >= rules.rise:
        return _go(current, State.UP, now, Action.ANNOUNCE), Action.ANNOUNCE
    return _go(current, State.RISING, now, count=count), None


def _unhealthy(current: VipState, seen: Observation, rules: Rules) -> tuple[VipState, Action | None]:
    now = seen.now
    if current.state in (State.UP, State.FALLING):
        count = current.count + 1 if current.state is State.FALLING else 1
        if count >= rules.fall or seen.definite:
            return _go(current, State.DOWN, now, Action.WITHDRAW), Action.WITHDRAW
        return _go(current, State.FALLING, now, count=count), None
    if not current.known:
        # A restarted helper: ExaBGP may still announce what the previous one did; make sure it does not.
        return _go(current, State.DOWN, now, Action.WITHDRAW), Action.WITHDRAW
    # RISING, DOWN, DISABLED: nothing announced that needs withdrawing (DISABLED withdrew on entry).
    return replace(_go(current, State.DOWN, now), announced=None), None


def command(action: Action, address: str, drain: DrainPolicy | None) -> str:
    """The ExaBGP text-API line for an action on one VIP."""
    route = f"route {address}/32 next-hop self"
    if action is Action.WITHDRAW:
        return f"withdraw {route}"
    if action is Action.ANNOUNCE_DRAIN and drain is not None:
        extra = f" med {drain.med}" if drain.med is not None else ""
        extra += f" community [{drain.community}]" if drain.community else ""
        return f"announce {route}{extra}"
    return f"announce {route}"
