"""``ober doctor``: do a group's RGWs stall answers on kept-alive connections, and what HAProxy does about it.

See :mod:`ober.keepalive` for the stall and for ``backends.<group>.reuse``.
"""

from __future__ import annotations

import http.client
import ssl

from ober.checks.base import Check, parallel
from ober.checks.rgw import tls_context
from ober.config import BackendGroup, NodeConfig, Server
from ober.hostlists import is_ipv4
from ober.keepalive import TCP_NODELAY_FIX, Stalls, measure_stalls
from ober.resolve import Lookup, lookup_ipv4


def _probe(config: NodeConfig, group: BackendGroup, server: Server, timeout: float, lookup: Lookup) -> Check:
    name = f"rgw {group.name} {server.host}:{server.port} keep-alive"
    addresses = [server.host] if is_ipv4(server.host) else lookup(server.host)
    if not addresses:
        return Check(name, "skip", f"{server.host} does not resolve (see the rgw check)")
    try:
        context = tls_context(group) if group.tls.enabled else None
        connection = (
            http.client.HTTPSConnection(addresses[0], server.port, timeout=timeout, context=context)
            if context is not None
            else http.client.HTTPConnection(addresses[0], server.port, timeout=timeout)
        )
        try:
            found = measure_stalls(connection, group.check.path, config.name)
        finally:
            connection.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return Check(name, "skip", f"not measured: {exc.__class__.__name__} (see the rgw check)")
    return verdict(name, group, found)


def verdict(name: str, group: BackendGroup, found: Stalls) -> Check:
    """What a probe's finding means for this group's ``reuse`` mode, and what to do about it."""
    setting = f"backends.{group.name}.reuse"
    if found.reused == 0:
        return Check(name, "ok", "radosgw closes every connection after one answer: nothing to keep alive")
    measured = f"{found.stalled} of {found.reused} answers on a kept-alive connection"
    if not found.stalls:
        detail = f"{measured} stalled (slowest {found.slowest_ms:.0f} ms): keep-alive pays"
        if group.reuse == "never":
            return Check(name, "ok", f"{detail}; {setting} is never, so HAProxy opens a new connection per request")
        return Check(name, "ok", f"{detail}; HAProxy keeps connections alive ({setting}: {group.reuse})")
    stalled = f"{measured} stalled about 40 ms (radosgw without tcp_nodelay: Nagle against delayed ACKs)"
    if group.reuse == "always":
        return Check(
            name,
            "fail",
            f"{stalled}; {setting} is always, so every small answer through HAProxy waits as long",
            f"set {setting}: auto (or never), or {TCP_NODELAY_FIX}",
        )
    doing = "opens a new connection per request" if group.reuse == "never" else "uses a new connection per request"
    return Check(
        name,
        "warn",
        f"{stalled}; HAProxy {doing} ({setting}: {group.reuse}), as fast as cephadm's ingress, not faster",
        f"for kept-alive connections (more small GETs/s), {TCP_NODELAY_FIX}",
    )


def check_keepalive(config: NodeConfig, timeout: float, *, lookup: Lookup = lookup_ipv4) -> list[Check]:
    """Each RGW: do answers stall on a kept-alive connection, and what HAProxy does about it (``reuse``)."""
    targets = [(group, server) for group in config.backends for server in group.servers]
    return parallel(lambda target: _probe(config, target[0], target[1], timeout, lookup), targets)
