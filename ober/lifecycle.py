"""Starting and stopping the node's services, the graceful way.

``stop`` never just kills a serving node: it withdraws first (through the health process) and lets the routers
converge; only then does HAProxy begin its soft stop (the unit's stop signal is SIGUSR1): its listeners close so new
connections are refused, idle keep-alive connections are closed (clients reconnect to another node) and requests
in flight finish. Whatever is still open at the drain timeout is cut, and the report says how many sessions that was.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from ober.config import NodeConfig
from ober.drain import clear_drain, read_drain, s3_sessions, set_drain
from ober.errors import OberError
from ober.haproxy_runtime import snapshot
from ober.healthd import state_file
from ober.render import paths, stop_timeout
from ober.status import unit_state

# After the withdraw leaves the node, routers need a moment to install the new ECMP set (measured ~10 ms here;
# real routers take longer): keep serving what still arrives meanwhile.
CONVERGE_SECONDS = 2.0
# How long a hard-stopped HAProxy may take to be gone before ober stop gives up waiting for it.
HARD_STOP_SECONDS = 10.0
# The unit states in which HAProxy still runs (a soft stop is "deactivating" until its last request ends).
RUNNING = ("active", "activating", "deactivating", "reloading")
POLL = 0.2


@dataclass(frozen=True)
class StopReport:
    """What a graceful stop did."""

    withdrawn: bool
    sessions_left: int
    """Client sessions still open at the drain timeout, cut by the hard stop (0: every request finished)."""
    waited: float
    in_flight: int = 0
    """Client sessions open when HAProxy began its soft stop."""


def withdrawn(config: NodeConfig) -> bool:
    """Whether the health process reports nothing announced (or is not running, so nothing can be)."""
    try:
        vips = json.loads(state_file(config).read_text())["vips"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return all(v.get("announced") is None for v in vips.values())


def client_connections(config: NodeConfig) -> int:
    """Established TCP connections to this node's VIPs, from the kernel.

    During a soft stop HAProxy's runtime socket is closed with its other listeners, but the connections it still
    serves are the kernel's established sockets on the VIP addresses (HAProxy's own connections to RGW leave from
    the node's address, so they are not counted). 0 when ``ss`` is missing.
    """
    ss = shutil.which("ss")
    if ss is None:
        return 0
    try:
        done = subprocess.run(
            [ss, "-Htn", "state", "established"], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return 0
    return count_vip_connections(done.stdout, [vip.address for vip in config.vips])


def count_vip_connections(ss_output: str, vips: list[str]) -> int:
    """The lines of ``ss -Htn state established`` whose local address is one of ``vips``."""
    wanted = {ipaddress.ip_address(vip) for vip in vips}
    count = 0
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[2].rpartition(":")[0].strip("[]")
        try:
            address = ipaddress.ip_address(local)
        except ValueError:
            continue
        # A socket bound on :: shows an IPv4 client as ::ffff:a.b.c.d.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if (mapped or address) in wanted:
            count += 1
    return count


def _haproxy_sessions(config: NodeConfig) -> int:
    """Client sessions HAProxy reports on the S3 frontends; 0 when it does not answer."""
    try:
        return s3_sessions(config, snapshot(paths(config)["admin_socket"], config.health.timeout))
    except OberError:
        return 0


def graceful_stop(
    config: NodeConfig,
    systemctl: Callable[..., None],
    *,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda _: None,
    state: Callable[[str], str] = unit_state,
    sessions: Callable[[], int] | None = None,
) -> StopReport:
    """Withdraw, converge, soft-stop HAProxy so requests in flight finish; cut what is left at the timeout.

    A drain the operator set before stays set; one made here is cleared after the units stop, so the next start
    announces again.

    Args:
        config: the node's configuration.
        systemctl: runs ``systemctl ARGS`` (raises OberError on failure).
        timeout: seconds from the start for requests to finish [health.drain_timeout]; at most the unit's stop
            timeout (drain timeout plus a margin), after which systemd kills HAProxy itself.
        sleep: waits (injected by tests).
        clock: monotonic seconds (injected by tests).
        log: one line per step, for the operator.
        state: ``systemctl is-active`` of a unit.
        sessions: open client connections while HAProxy soft-stops [established TCP connections on the VIPs].
    """
    started = clock()
    limit = min(config.health.drain_timeout if timeout is None else timeout, stop_timeout(config))
    count = sessions or (lambda: client_connections(config))
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
    in_flight = _haproxy_sessions(config)
    log(f"soft stop: new connections refused, {in_flight} client sessions may finish (up to {limit:g}s)")
    # --no-block: the stop job runs while we watch; ExaBGP stops first (ober-bgp is ordered after ober-http).
    systemctl("stop", "--no-block", "ober-bgp", "ober-http")
    stop_deadline = started + limit
    while state("ober-http") in RUNNING and clock() < stop_deadline:
        sleep(min(POLL, max(0.0, stop_deadline - clock())))
    cut = 0
    if state("ober-http") in RUNNING:
        cut = count()
        log(f"drain timeout ({limit:g}s) reached: hard stop cuts {cut} client sessions")
        # SIGTERM to the master is HAProxy's hard stop; the stop job already running keeps systemd from restarting.
        systemctl("kill", "--kill-whom=main", "--signal=SIGTERM", "ober-http")
        hard_deadline = clock() + HARD_STOP_SECONDS
        while state("ober-http") in RUNNING and clock() < hard_deadline:
            sleep(POLL)
        if state("ober-http") == "failed":
            # The hard stop was ours: a master ended by SIGTERM mid soft stop may exit with a status systemd calls a
            # failure. Left "failed", the unit would look broken to the operator and to `ober status`.
            systemctl("reset-failed", "ober-http")
    else:
        log("every client session finished")
    if ours:
        clear_drain(config)
    return StopReport(is_withdrawn, cut, clock() - started, in_flight)
