"""Starting and stopping the node's services, the graceful way.

``stop`` never just kills a serving node: it withdraws first (through the health process), lets the routers
converge, waits for HAProxy's client sessions to end (or the drain timeout), and only then stops the units.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from ober.config import NodeConfig
from ober.drain import clear_drain, read_drain, set_drain, wait_idle
from ober.healthd import state_file

# After the withdraw leaves the node, routers need a moment to install the new ECMP set (measured ~10 ms here;
# real routers take longer): keep serving what still arrives meanwhile.
CONVERGE_SECONDS = 2.0


@dataclass(frozen=True)
class StopReport:
    """What a graceful stop did."""

    withdrawn: bool
    sessions_left: int
    waited: float


def withdrawn(config: NodeConfig) -> bool:
    """Whether the health process reports nothing announced (or is not running, so nothing can be)."""
    try:
        vips = json.loads(state_file(config).read_text())["vips"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return all(v.get("announced") is None for v in vips.values())


def graceful_stop(
    config: NodeConfig,
    systemctl: Callable[..., None],
    *,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda _: None,
) -> StopReport:
    """Withdraw, converge, drain connections, then stop ober-bgp and ober-http.

    A drain the operator set before stays set; one made here is cleared after the units stop, so the next start
    announces again.
    """
    started = clock()
    limit = config.health.drain_timeout if timeout is None else timeout
    ours = read_drain(config) is None
    set_drain(config, "ober stop")
    deadline = (
        started
        + config.health.interval * (config.health.fall + 2)
        + (config.bgp.drain.delay if config.bgp.drain else 0.0)
    )
    while not withdrawn(config) and clock() < deadline:
        sleep(0.1)
    is_withdrawn = withdrawn(config)
    log("withdrawn" if is_withdrawn else "the health process did not confirm the withdraw; stopping anyway")
    sleep(CONVERGE_SECONDS)
    left = wait_idle(config, max(0.0, limit - (clock() - started)), sleep=sleep, clock=clock)
    log(f"{left} client sessions left" if left else "no client sessions left")
    systemctl("stop", "ober-bgp", "ober-http")
    if ours:
        clear_drain(config)
    return StopReport(is_withdrawn, left, clock() - started)
