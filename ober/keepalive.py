"""Kept-alive connections to RGW, and the 40 ms stall that can spoil them (``backends.<group>.reuse``).

radosgw's beast frontend as Ceph ships it (no ``tcp_nodelay=1`` in ``rgw frontends``) writes an answer's headers
and its body separately with Nagle's algorithm on, so the body waits until the headers are acknowledged. On a
kept-alive connection Linux on the proxy's side delays that ACK (it hopes to send it with its next request) until
its delayed-ACK timer fires, 40 ms at the least: every small answer on a reused connection to such an RGW takes
40 ms more. A new connection is acknowledged at once (Linux starts connections in quick-ACK mode), which is why
cephadm's ingress (a new connection per request) served 3 times as many small GETs as ober there, and ober
(kept-alive connections) 1.4 times as many as cephadm where RGW has ``tcp_nodelay=1`` (``bench/dataplane.py``). No
HAProxy option changes when the proxy's kernel acknowledges, hence:

- ``reuse: auto`` (the default): HAProxy keeps connections alive and times each answer from its headers to the
  first byte of its body. Answers that waited `STALL_MS` or more are counted per group (a one-entry stick table,
  a rate over `STALL_WINDOW` seconds); while `STALL_COUNT` or more were counted, requests go to RGW with
  ``Connection: close``, so each gets a new connection (the client's own connection stays alive). Nothing stalls
  then, so the count runs down and within twice the window keep-alive is tried again: an RGW without
  ``tcp_nodelay`` costs a few stalled answers a minute, one with it none. A loaded RGW whose bodies come late for
  other reasons may be switched to new connections for a while, which is only what cephadm does all the time.
- ``reuse: always``: kept-alive connections, nothing timed (for RGWs known to have ``tcp_nodelay=1``).
- ``reuse: never``: a new connection per request (``option http-server-close``, as cephadm).

``ober doctor`` measures it itself (:mod:`ober.checks.keepalive`): a few GETs on one kept-alive connection to each RGW.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass

STALL_MS = 35
"""An answer whose body comes this long after its headers stalled: Linux's delayed-ACK timer is 40 ms at least."""
STALL_WINDOW = 30
"""Seconds over which HAProxy counts a group's stalled answers."""
STALL_COUNT = 4
"""Stalled answers in the window from which HAProxy opens a new connection per request (fewer: the odd late body)."""
PROBE_REQUESTS = 8
"""GETs ``ober doctor`` sends on one connection to each RGW (the first, on a new connection, never stalls)."""
TCP_NODELAY_FIX = "add tcp_nodelay=1 to radosgw's 'rgw frontends = beast ...' line and restart radosgw"


@dataclass(frozen=True)
class Stalls:
    """What a probe of one RGW found: answers on a reused connection, and how many of them stalled."""

    reused: int
    stalled: int
    slowest_ms: float

    @property
    def stalls(self) -> bool:
        """Most answers on the reused connection stalled (one may, for other reasons)."""
        return self.reused > 0 and self.stalled * 2 > self.reused


def template_values() -> dict[str, int]:
    """What haproxy.cfg.j2 needs for ``reuse: auto``."""
    return {"stall_ms": STALL_MS, "window": STALL_WINDOW, "count": STALL_COUNT}


def measure_stalls(
    connection: http.client.HTTPConnection, path: str, host: str, *, requests: int = PROBE_REQUESTS
) -> Stalls:
    """GET ``path`` ``requests`` times on ``connection``, one after the other; time the answers after the first.

    Stops early when the server closes the connection (then nothing is reused and nothing can stall).
    """
    times: list[float] = []
    for number in range(requests):
        start = time.monotonic()
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        if number:
            times.append((time.monotonic() - start) * 1000)
        if response.will_close:
            break
    return Stalls(len(times), sum(elapsed >= STALL_MS for elapsed in times), max(times, default=0.0))
