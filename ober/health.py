"""The health state machine behind ``ober health``: pure, so every transition can be tested.

Per VIP, :func:`step` takes the current state and one observation (is the VIP servable, is the node in
maintenance) and returns the next state and at most one action for ExaBGP. The loop that owns the I/O is in
:mod:`ober.healthd`. Hysteresis: ``rise`` good checks in a row to announce, ``fall`` bad ones to withdraw.
Maintenance withdraws at once, or, with a drain policy, first re-announces less preferred (graceful-shutdown
community / higher MED) and withdraws ``delay`` seconds later, so routers move traffic before the route goes.
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
    """A VIP's state, its run of checks toward rise/fall, what is announced, and when the state began."""

    state: State = State.INIT
    count: int = 0
    announced: Action | None = None
    since: float = 0.0


@dataclass(frozen=True)
class Observation:
    """One check: can this node serve the VIP, and is it in maintenance."""

    healthy: bool
    maintenance: bool
    now: float


def _go(current: VipState, state: State, now: float, action: Action | None = None, count: int = 0) -> VipState:
    announced = current.announced
    if action is not None:
        announced = None if action is Action.WITHDRAW else action
    since = current.since if state is current.state else now
    return VipState(state=state, count=count, announced=announced, since=since)


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
    return _unhealthy(current, seen.now, rules)


def _maintenance(current: VipState, seen: Observation, rules: Rules) -> tuple[VipState, Action | None]:
    if current.state is State.DISABLED:
        return current, None
    if current.state is State.DRAINING:
        if rules.drain_delay is not None and seen.now - current.since < rules.drain_delay:
            return current, None
        return _go(current, State.DISABLED, seen.now, Action.WITHDRAW), Action.WITHDRAW
    if current.announced is Action.ANNOUNCE and rules.drain_delay is not None:
        return _go(current, State.DRAINING, seen.now, Action.ANNOUNCE_DRAIN), Action.ANNOUNCE_DRAIN
    if current.announced is not None:
        return _go(current, State.DISABLED, seen.now, Action.WITHDRAW), Action.WITHDRAW
    return _go(current, State.DISABLED, seen.now), None


def _healthy(current: VipState, now: float, rules: Rules) -> tuple[VipState, Action | None]:
    if current.state in (State.UP, State.FALLING):
        return _go(current, State.UP, now), None
    count = current.count + 1 if current.state is State.RISING else 1
    if count >= rules.rise:
        return _go(current, State.UP, now, Action.ANNOUNCE), Action.ANNOUNCE
    return _go(current, State.RISING, now, count=count), None


def _unhealthy(current: VipState, now: float, rules: Rules) -> tuple[VipState, Action | None]:
    if current.state in (State.UP, State.FALLING):
        count = current.count + 1 if current.state is State.FALLING else 1
        if count >= rules.fall:
            return _go(current, State.DOWN, now, Action.WITHDRAW), Action.WITHDRAW
        return _go(current, State.FALLING, now, count=count), None
    # INIT, RISING, DOWN, DISABLED: nothing announced that needs withdrawing (DISABLED withdrew on entry).
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
