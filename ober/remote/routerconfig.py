"""The upstream router's side of BGP for an inventory: FRR or BIRD 2 configuration, printed for the admin.

Every neighbor address the nodes name is a router; each gets its own configuration: one BGP neighbor per node that
peers with it (the node's BGP local address, AS, hold time, MD5 password), multipath across them (ECMP), an import
filter per node accepting exactly that node's VIPs as /32 host routes (a node cannot take over a VIP it does not
serve), a prefix limit per node (a node that floods routes loses its session instead of filling the router's
memory), nothing exported back to the nodes, a short error wait so a restarted node rejoins the ECMP set at once,
and graceful restart (helper side) so a node that restarts ExaBGP with graceful restart keeps its route meanwhile.
Passwords are placeholders unless the caller passes the secrets.

The decisions are made here; the layout lives in ``templates/router/``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ober.errors import ConfigError
from ober.inventory import Inventory, InventoryNode
from ober.render import render_template
from ober.secrets import missing_secret

FLAVORS = ("frr", "bird")
FRR_MAX_PATHS = 64
"""Debian's FRR is built with 64 ECMP paths at most (MULTIPATH_NUM)."""
PREFIX_HEADROOM = 10
"""Routes a node may send beyond its own VIPs before the router drops its session (the prefix limit).

The extra ones are refused by the node's filter anyway; the headroom keeps a VIP added on the nodes before the
routers' config from tearing down every session, while a flood (thousands) trips the limit at once."""


@dataclass(frozen=True)
class Peer:
    """One node as the router's BGP neighbor."""

    node: str
    protocol: str
    """A BIRD protocol name for it (letters, digits, ``_``)."""
    address: str
    asn: int
    hold_time: int
    keepalive: int
    password: str | None
    """The MD5 password, or a placeholder naming the secret; None without MD5."""
    secret: str | None
    """The secret's name (what the placeholder stands for)."""
    vips: tuple[str, ...]
    """This node's VIPs as host prefixes (``a.b.c.d/32``): all the router accepts from it."""
    tag: str
    """A name for its filter and prefix list (letters, digits, ``_``)."""

    @property
    def prefix_limit(self) -> int:
        """Routes received from this node (its filter's refusals included) before the router drops the session."""
        return len(self.vips) + PREFIX_HEADROOM


@dataclass(frozen=True)
class RouterPlan:
    """Everything one router's configuration says."""

    site: str
    address: str
    asn: int
    peers: tuple[Peer, ...]
    vips: tuple[str, ...]
    """Host prefixes (``a.b.c.d/32``) of every VIP its nodes serve (each node's filter has only its own)."""
    with_secrets: bool

    @property
    def ibgp(self) -> bool:
        """The nodes are in the router's own AS (then FRR needs ``maximum-paths ibgp``, BIRD ``direct``)."""
        return all(peer.asn == self.asn for peer in self.peers)

    @property
    def mixed_as(self) -> bool:
        """Nodes in several ASes: FRR only spreads over them with ``as-path multipath-relax``."""
        return len({peer.asn for peer in self.peers}) > 1

    @property
    def paths(self) -> int:
        """How many next-hops the VIP route may have: one per node."""
        return min(len(self.peers), FRR_MAX_PATHS)


def placeholder(secret: str) -> str:
    """What stands in for a password when secrets are not to be printed."""
    return f"SECRET-{secret}"


def _protocol_names(nodes: Sequence[InventoryNode]) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in nodes:
        base = "ober_" + re.sub(r"[^A-Za-z0-9]", "_", node.name)
        name, count = base, 2
        while name in names.values():
            name, count = f"{base}_{count}", count + 1
        names[node.name] = name
    return names


def plan_routers(
    inventory: Inventory,
    *,
    router: str | None = None,
    secrets: Mapping[str, str] | None = None,
) -> list[RouterPlan]:
    """One plan per router the inventory's nodes peer with (or only ``router``).

    Args:
        inventory: the resolved inventory.
        router: one router address to print for; default every router.
        secrets: MD5 passwords by secret name, to print them (``--with-secrets``); None prints placeholders.

    Raises:
        ConfigError: ``router`` is no node's neighbor, the nodes disagree on a router's AS, or a secret is missing.
    """
    routers: dict[str, list[InventoryNode]] = {}
    for node in inventory.nodes:
        for neighbor in node.config.bgp.neighbors:
            routers.setdefault(neighbor, []).append(node)
    if router is not None:
        if router not in routers:
            raise ConfigError(
                f"--router {router}: no node of {inventory.source} peers with it",
                f"choose one of {', '.join(sorted(routers, key=ipaddress.IPv4Address))}",
            )
        routers = {router: routers[router]}
    plans: list[RouterPlan] = []
    for address in sorted(routers, key=ipaddress.IPv4Address):
        nodes = routers[address]
        asns = {node.config.bgp.peer_as for node in nodes}
        if len(asns) > 1:
            raise ConfigError(
                f"router {address}: the nodes name different peer_as for it ({', '.join(map(str, sorted(asns)))})",
                "give every node that peers with this router the same bgp.peer_as",
            )
        names = _protocol_names(nodes)
        peers = tuple(_peer(node, names[node.name], secrets) for node in nodes)
        vips = sorted({vip.address for node in nodes for vip in node.config.vips}, key=ipaddress.IPv4Address)
        plans.append(
            RouterPlan(
                site=inventory.site,
                address=address,
                asn=asns.pop(),
                peers=peers,
                vips=tuple(f"{vip}/32" for vip in vips),
                with_secrets=secrets is not None,
            )
        )
    return plans


def _peer(node: InventoryNode, protocol: str, secrets: Mapping[str, str] | None) -> Peer:
    bgp = node.config.bgp
    password = None
    if bgp.md5_secret:
        if secrets is None:
            password = placeholder(bgp.md5_secret)
        elif bgp.md5_secret in secrets:
            password = secrets[bgp.md5_secret]
        else:
            missing = missing_secret("bgp.md5_secret", secrets)
            raise ConfigError(f"node {node.name}: {missing.message}", f"{missing.fix}; or leave out --with-secrets")
    vips = sorted({vip.address for vip in node.config.vips}, key=ipaddress.IPv4Address)
    return Peer(
        node=node.name,
        protocol=protocol,
        vips=tuple(f"{vip}/32" for vip in vips),
        tag=protocol.removeprefix("ober_"),
        address=bgp.local_address,
        asn=bgp.local_as,
        hold_time=bgp.hold_time,
        # The usual third of the hold time; ExaBGP sends its own keepalives at that rate too.
        keepalive=max(1, bgp.hold_time // 3),
        password=password,
        secret=bgp.md5_secret,
    )


def render_router(plan: RouterPlan, flavor: str) -> str:
    """One router's configuration text in ``flavor`` (``frr`` or ``bird``)."""
    if flavor not in FLAVORS:
        raise ConfigError(f"--flavor {flavor!r}: not supported", f"choose one of {', '.join(FLAVORS)}")
    secrets = sorted({peer.secret for peer in plan.peers if peer.secret})
    return render_template(f"router/{flavor}.conf.j2", {"r": plan, "secrets": secrets})


def router_config(
    inventory: Inventory,
    flavor: str,
    *,
    router: str | None = None,
    secrets: Mapping[str, str] | None = None,
) -> str:
    """The configuration of every router (or one), in ``flavor``, one after the other."""
    return "\n".join(render_router(plan, flavor) for plan in plan_routers(inventory, router=router, secrets=secrets))
