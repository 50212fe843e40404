"""BGP: a TCP (MD5-signed) probe of each neighbor's port 179, the sessions ExaBGP has, and each VIP's announcement."""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from ober.checks.base import PROBE_TIMEOUT, Check, Status, parallel
from ober.config import NodeConfig
from ober.status import exabgp_root, node_status

BGP_PORT = 179
_TCP_MD5SIG = 14  # linux/tcp.h; Python's socket module does not name it


def tcp_md5sig(peer: str, key: str) -> bytes:
    """Linux's ``struct tcp_md5sig`` for ``peer``: sockaddr_storage (128), flags, prefix len, key len, ifindex, key."""
    address = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + socket.inet_aton(peer)
    secret = key.encode()
    return address.ljust(128, b"\0") + struct.pack("=BBHi", 0, 0, len(secret), 0) + secret.ljust(80, b"\0")


def is_local_address(address: str) -> bool:
    """Whether this host can send from ``address`` (it can bind it; with ``ip_nonlocal_bind`` set, always)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def _probe_tcp(address: str, port: int, source: str | None, key: str | None, timeout: float) -> tuple[str, str]:
    """Connect to ``address:port`` and close at once: ("ok" | "refused" | "timeout" | "error", what happened)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if key is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_MD5SIG, tcp_md5sig(address, key))
            except OSError as exc:
                return "error", f"this kernel cannot sign TCP with MD5: {exc.strerror}"
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.connect((address, port))
        except ConnectionRefusedError:
            return "refused", "connection refused"
        except TimeoutError:
            return "timeout", f"no answer in {timeout:g}s"
        except OSError as exc:
            return "error", exc.strerror or exc.__class__.__name__
    return "ok", "accepts TCP"


def check_bgp_tcp(
    config: NodeConfig,
    timeout: float = PROBE_TIMEOUT,
    *,
    secrets: Mapping[str, str] | None = None,
    neighbors: Sequence[str] | None = None,
    port: int = BGP_PORT,
) -> list[Check]:
    """A TCP connection to each BGP neighbor's port 179, from ``bgp.local_address`` as ExaBGP would.

    With ``bgp.md5_secret`` set the probe signs its segments with TCP MD5, as the router will expect: a router
    with MD5 configured silently drops anything unsigned. Without the secret here, an unanswered probe is only a
    warning. Nothing is sent but the handshake: the connection is closed at once.

    Args:
        config: the node's config.
        timeout: seconds for each connection.
        secrets: secret values by name (only the MD5 secret is used, never shown).
        neighbors: probe only these (default: every neighbor).
        port: the BGP port (tests use an unprivileged one).
    """
    bgp = config.bgp
    source: str | None = bgp.local_address
    checks: list[Check] = []
    if not is_local_address(bgp.local_address):
        source = None
        checks.append(
            Check(
                "bgp local address",
                "fail",
                f"{bgp.local_address} is not an address of this host; probing from any address",
                "put bgp.local_address on this node's uplink interface, or correct it in ober.yaml",
            )
        )
    md5_name = bgp.md5_secret
    key = (secrets or {}).get(md5_name) if md5_name else None
    signed = " with TCP MD5" if key else ""
    where = f"from {source}" if source else "from this host"
    same_md5 = " with the same MD5" if md5_name else ""
    router_fix = (
        f"on the router: a BGP neighbor {bgp.local_address} (AS {bgp.local_as}){same_md5}, and its ACL/whitelist"
        f" and any firewall between must allow TCP {port} from {bgp.local_address}"
    )

    def probe(neighbor: str) -> Check:
        outcome, text = _probe_tcp(neighbor, port, source, key, timeout)
        name = f"bgp tcp {neighbor}"
        if outcome == "ok":
            return Check(name, "ok", f"{neighbor}:{port} {text} {where}{signed}")
        if outcome == "timeout" and md5_name and key is None:
            return Check(
                name,
                "warn",
                f"{neighbor}:{port}: {text}; probed without MD5 (secret {md5_name!r} is not on this machine), "
                "which a router expecting MD5 ignores",
                f"pass --secrets FILE holding {md5_name!r} to probe with MD5",
            )
        return Check(name, "fail", f"{neighbor}:{port} {where}{signed}: {text}", router_fix)

    return checks + parallel(probe, list(neighbors if neighbors is not None else bgp.neighbors))


def check_bgp_state(config: NodeConfig, status: Mapping[str, Any] | None = None) -> list[Check]:
    """From what ExaBGP says (``ober status`` data): each neighbor's session is established, each VIP announced.

    Args:
        config: the node's config.
        status: :func:`ober.status.node_status` data; read from the running node when None.
    """
    status = status if status is not None else node_status(config, exabgp_root=exabgp_root(config))
    bgp = status.get("bgp", {})
    if bgp.get("error"):
        return [
            Check(
                "bgp sessions",
                "fail",
                f"ExaBGP does not answer: {bgp['error']}",
                "systemctl status ober-bgp; journalctl -u ober-bgp -n 50",
            )
        ]
    sessions: Mapping[str, str] = bgp.get("sessions", {})
    checks: list[Check] = []
    for neighbor in config.bgp.neighbors:
        state = sessions.get(neighbor)
        name = f"bgp session {neighbor}"
        if state == "established":
            checks.append(Check(name, "ok", "established"))
        elif state is None:
            checks.append(
                Check(
                    name,
                    "fail",
                    "ExaBGP has no such neighbor",
                    "systemctl restart ober-bgp (its config is older; a reload leaves a new neighbor without routes)",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"session {state}, not established",
                    f"on the router: neighbor {config.bgp.local_address} remote-as {config.bgp.local_as}, its own AS "
                    f"{config.bgp.peer_as}, the same MD5; 'ober test' probes TCP {BGP_PORT}",
                )
            )
    checks.extend(_vip_checks(config, status, sessions))
    return checks


def _vip_checks(config: NodeConfig, status: Mapping[str, Any], sessions: Mapping[str, str]) -> list[Check]:
    announced: Mapping[str, list[str]] = status.get("bgp", {}).get("announced", {})
    live = [peer for peer, state in sessions.items() if state == "established"]
    health = status.get("health")
    drained = status.get("drained")
    checks: list[Check] = []
    for vip in config.vips:
        name = f"vip {vip.name} {vip.address}"
        to = [peer for peer in live if f"{vip.address}/32" in announced.get(peer, [])]
        if to:
            part: Status = "warn" if len(to) < len(live) else "ok"
            checks.append(Check(name, part, f"announced to {len(to)} of {len(live)} established neighbors"))
        elif not live:
            checks.append(Check(name, "fail", "not announced: no BGP session is established", "see the bgp checks"))
        elif drained:
            checks.append(
                Check(name, "warn", f"withdrawn: node drained by {drained.get('by')}", "ober undrain, when done")
            )
        elif not health or health.get("stale"):
            checks.append(
                Check(
                    name,
                    "fail",
                    "not announced: ober health is not publishing its state",
                    "ExaBGP runs ober health: journalctl -u ober-bgp -n 50",
                )
            )
        else:
            state = health.get("vips", {}).get(vip.address, {}).get("state", "unknown")
            checks.append(
                Check(
                    name,
                    "fail",
                    f"not announced (health: {state})",
                    f"backend group {vip.backend} needs an RGW server HAProxy sees up: see the rgw checks",
                )
            )
    return checks
