"""The node configuration model: everything one node needs, typed, validated once at load.

A node's ``ober.yaml`` and an inventory's resolved node are read by the same :func:`parse_node_config`, so the
fleet side and the node side share one schema. Secrets are only *referenced* here by name; their values live
in the secrets file (see :mod:`ober.secrets`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ober.errors import ConfigError
from ober.hostlists import check_host, expand, is_ipv4, split_words
from ober.schema import NAME, NAME_HINT, Fields, load_yaml, refuse_special, type_name

DEFAULT_INSTALL_PATH = "/opt/ober"
CONFIG_RELATIVE = "etc/ober.yaml"

# Absolute paths with no spaces, quotes, '..' or anything a template or shell would read as syntax.
_PATH = re.compile(r"^/(?:[A-Za-z0-9._+-]+/?)*\Z")
_PATH_HINT = "an absolute path of letters, digits and . _ + - only, e.g. /opt/ober/etc/certs/s3.pem"
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~/?=&%:+-]*\Z")
_COMMUNITY = re.compile(r"^\d{1,5}:\d{1,5}\Z")
_VERSION = re.compile(r"^(\d+)\.(\d+)\Z")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\Z")
_URL = re.compile(r"^https://[A-Za-z0-9.-]+(?::\d+)?(?:/[A-Za-z0-9._~/%+-]*)?\Z")
_USER = re.compile(r"^[A-Za-z0-9._-]{1,32}\Z")

NETWORK_MANAGERS = ("netplan", "networkd", "networkmanager")
KERNEL_PROFILES = ("default", "throughput", "none")
HTTP_MODES = ("redirect", "serve", "off")
CHECK_METHODS = ("GET", "HEAD", "OPTIONS")
REUSE_MODES = ("auto", "always", "never")
"""How HAProxy treats its connections to a group's RGWs (see :mod:`ober.keepalive`): ``auto`` keeps them alive
unless answers stall on them, ``always`` keeps them alive, ``never`` opens a new one per request."""
OLDEST_HAPROXY = (2, 6)
DEFAULT_SLOTS = 4
"""Spare server slots per backend group for servers added at runtime (free again at the next reload)."""
MAX_SLOTS = 256
SLOT_PREFIX = "_slot"
"""HAProxy's name of a spare slot is this and its number; '_' cannot start a hostname, so no server's name."""


def is_slot(name: str) -> bool:
    """Whether an HAProxy server name is one of ober's spare slots."""
    return name.startswith(SLOT_PREFIX) and name[len(SLOT_PREFIX) :].isdigit()


MAX_GRACEFUL_RESTART = 600
"""Seconds a router may hold a restarting node's routes (bgp.graceful_restart) at most."""
PER_SOURCE_CONNECTIONS = 1000


@dataclass(frozen=True)
class DrainPolicy:
    """Make-before-break drain: re-announce less preferred for ``delay`` seconds, then withdraw."""

    community: str | None
    med: int | None
    delay: float


@dataclass(frozen=True)
class Bgp:
    """The BGP session(s) from this node to its upstream routers."""

    local_as: int
    peer_as: int
    router_id: str
    local_address: str
    neighbors: tuple[str, ...]
    hold_time: int
    md5_secret: str | None
    graceful_restart: int
    drain: DrainPolicy | None


@dataclass(frozen=True)
class Vip:
    """A service address announced by BGP, served by one backend group."""

    name: str
    address: str
    backend: str


@dataclass(frozen=True)
class Server:
    """One RGW server of a backend group."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class HealthCheck:
    """How HAProxy checks each RGW server."""

    method: str
    path: str
    expect_status: int
    interval: float
    rise: int
    fall: int

    @property
    def fastinter(self) -> float:
        """Seconds between checks once a server is in transition (a check failed, or live traffic saw an error).

        A fifth of ``interval``: a dead RGW is marked down ``fall`` quick checks after the first failure, not
        ``fall`` whole intervals (with the defaults about 1 s instead of 2-3 s).
        """
        return max(0.1, round(self.interval / 5, 3))


@dataclass(frozen=True)
class BackendTls:
    """TLS from HAProxy to the RGW servers."""

    enabled: bool
    verify: bool
    ca_file: str | None


DISCOVERY_SOURCES = ("file", "ceph-orch", "dns-srv")
"""Where ``backends.<group>.discovery`` reads the group's servers (see :mod:`ober.discovery`)."""
DISCOVERY_INTERVAL = 60.0
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
# An SRV name has '_' labels (_rgw._tcp.example.org), which a hostname may not.
_SRV_NAME = re.compile(rf"^(?=.{{1,253}}\.?\Z){_LABEL}(?:\.{_LABEL})+\.?\Z")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


@dataclass(frozen=True)
class Discovery:
    """Where a backend group's RGW servers are discovered, and how often (a timer runs ``ober backends reconcile``).

    ``file``: a YAML or JSON file ``{GROUP: [host:port, ...]}``; ``ceph-orch``: a file holding ``ceph orch ps
    --daemon_type rgw --format json`` (of the daemons of ``service`` only, when set); ``dns-srv``: the SRV records of
    ``name``, asked of ``resolver`` (``address[:port]``; default: /etc/resolv.conf's first nameserver).
    """

    source: str
    path: str | None = None
    service: str | None = None
    name: str | None = None
    resolver: str | None = None
    interval: float = DISCOVERY_INTERVAL


@dataclass(frozen=True)
class BackendGroup:
    """A set of RGW servers of one Ceph cluster.

    ``slots`` spare servers wait disabled in HAProxy for servers added at runtime (``ober backends add``);
    ``drained`` servers take no new requests (weight 0) but are still checked and finish what they serve.
    """

    name: str
    servers: tuple[Server, ...]
    check: HealthCheck
    tls: BackendTls
    port: int = 7480
    """The port of a server given without one."""
    slots: int = 4
    drained: tuple[Server, ...] = ()
    discovery: Discovery | None = None
    """Where the servers are discovered (None: they change only by hand, ``ober backends``)."""
    reuse: str = "auto"
    """Connection reuse toward the servers: one of REUSE_MODES."""

    def server(self, host: str, port: int) -> Server | None:
        """The server at ``host:port``, if the group has it."""
        return next((s for s in self.servers if s.host == host and s.port == port), None)

    def is_drained(self, server: Server) -> bool:
        """Whether ``server`` is drained."""
        return server in self.drained


@dataclass(frozen=True)
class Acme:
    """Certificates obtained by ACME instead of a PEM given by the admin."""

    email: str
    directory: str
    domains: tuple[str, ...]
    ca_bundle: str | None = None
    """CAs the workstation trusts for the ACME server's own TLS (a private ACME server); default: the system's."""


@dataclass(frozen=True)
class Certificates:
    """TLS on the VIPs: a PEM file, a directory of PEMs (SNI), or ACME; and what plain HTTP does."""

    pem: str | None
    acme: Acme | None
    http: str

    def crt_path(self, install_path: str) -> str:
        """The file or directory HAProxy's ``crt`` reads."""
        return self.pem if self.pem else f"{install_path}/etc/certs/acme"


@dataclass(frozen=True)
class Health:
    """The health state machine's timing, and the maintenance switch."""

    interval: float
    rise: int
    fall: int
    timeout: float
    drain_timeout: float
    maintenance_file: str


@dataclass(frozen=True)
class StatsAuth:
    """Basic auth on the stats page; the password is a secret referenced by name."""

    user: str
    password_secret: str


@dataclass(frozen=True)
class Stats:
    """The stats/metrics listener (``/stats``, ``/metrics``, ``/health``)."""

    bind: str
    port: int
    auth: StatsAuth | None
    tls: bool
    """Serve it over TLS with the VIPs' certificate (a login's password then never crosses plain HTTP)."""
    allow_open: bool
    """Accept a page anyone may read (no allow-list, no login, not on loopback): refused unless set."""


@dataclass(frozen=True)
class StatsExposure:
    """How the stats page can be reached by more than the admin meant, as :func:`stats_exposure` finds it."""

    open: list[str]
    """Why anyone who reaches the node may read it (refused unless ``stats.allow_open``)."""
    weak: list[str]
    """What is not open but weaker than it should be (a password over plain HTTP)."""


@dataclass(frozen=True)
class Whitelists:
    """Who may talk to this node; empty means anyone. Entries are IPv4 addresses, networks or hostnames."""

    routers: tuple[str, ...]
    frontend_http: tuple[str, ...]
    backend_http: tuple[str, ...]


@dataclass(frozen=True)
class Logs:
    """journald retention for ober's units."""

    retention: float
    max_use_mb: int


@dataclass(frozen=True)
class Network:
    """How the VIPs are put on the node: a dummy interface managed by the node's network stack."""

    interface: str
    manager: str


@dataclass(frozen=True)
class Timeouts:
    """HAProxy timeouts in seconds; client and server are inactivity timeouts, long for slow uploads."""

    connect: float
    client: float
    server: float
    http_request: float
    http_keep_alive: float
    queue: float


@dataclass(frozen=True)
class PerSource:
    """Limits per client address on each node, so one client cannot take all of ``maxconn``; 0 turns a limit off.

    A slowloris client holds connections open with a trickle of bytes, each within every inactivity timeout.
    ``connections``: connections one address may hold open at once; ``rate``: new connections it may open within
    ``period`` seconds. Connections over a limit are refused at once (clients retry, or see a connection error);
    the connections already open, however long their transfers, are never cut.
    """

    connections: int
    rate: int
    period: float

    @property
    def enabled(self) -> bool:
        """Whether any limit is on."""
        return bool(self.connections or self.rate)


@dataclass(frozen=True)
class HAProxy:
    """HAProxy process settings, and the version the config targets (newer directives only when supported)."""

    version: str
    maxconn: int
    hard_stop_after: float
    timeouts: Timeouts
    per_source: PerSource

    @property
    def version_tuple(self) -> tuple[int, int]:
        """The target version as ``(major, minor)``."""
        major, minor = self.version.split(".")
        return int(major), int(minor)


@dataclass(frozen=True)
class NodeConfig:
    """Everything one ober node needs. Build it with :func:`parse_node_config` or :func:`load_config`."""

    name: str
    install_path: str
    bgp: Bgp
    vips: tuple[Vip, ...]
    backends: tuple[BackendGroup, ...]
    certificates: Certificates
    health: Health
    stats: Stats
    whitelists: Whitelists
    logs: Logs
    kernel_profile: str
    network: Network
    haproxy: HAProxy

    def backend(self, name: str) -> BackendGroup:
        """The backend group called ``name``."""
        return next(group for group in self.backends if group.name == name)

    def secret_refs(self) -> dict[str, str]:
        """The secrets this config refers to: the referring field (``bgp.md5_secret``) → the secret's name."""
        refs = {"bgp.md5_secret": self.bgp.md5_secret} if self.bgp.md5_secret else {}
        if self.stats.auth:
            refs["stats.auth.password_secret"] = self.stats.auth.password_secret
        return refs

    def secret_names(self) -> list[str]:
        """The names of the secrets this config refers to."""
        return list(self.secret_refs().values())


def _path(fields: Fields, key: str, default: str | None = None) -> str | None:
    if default is None and not fields.has(key):
        fields.raw(key, None)
        return None
    value = fields.string(key, default if default is not None else "", pattern=_PATH, hint=_PATH_HINT)
    if any(part in (".", "..") for part in value.split("/")):
        raise ConfigError(f"{fields.at(key)}: {value!r} has '.' or '..' in it", "write the path without them")
    return value


def _secret_ref(fields: Fields, key: str) -> str | None:
    if not fields.has(key):
        fields.raw(key, None)
        return None
    return fields.string(key, pattern=NAME, hint=f"name a key of the secrets file; {NAME_HINT}", secret=True)


def _parse_drain(fields: Fields) -> DrainPolicy | None:
    if not fields.has("drain"):
        fields.raw("drain", None)
        return None
    drain = fields.section("drain")
    community = drain.string("community", "") or None
    if community is not None and (
        not _COMMUNITY.match(community) or any(int(part) > 65535 for part in community.split(":"))
    ):
        raise ConfigError(
            f"{drain.at('community')}: {community!r} is not a BGP community",
            "write ASN:VALUE, e.g. 65535:0 (GRACEFUL_SHUTDOWN, RFC 8326)",
        )
    med = drain.integer("med", -1, low=-1, high=4294967295)
    policy = DrainPolicy(
        community=community,
        med=None if med < 0 else med,
        delay=drain.duration("delay", 5.0, low=0.0, high=600.0),
    )
    drain.done()
    if policy.community is None and policy.med is None:
        raise ConfigError(
            f"{fields.at('drain')}: give a community, a med, or both",
            "or remove 'drain:' to withdraw at once",
        )
    return policy


def _parse_bgp(fields: Fields) -> Bgp:
    neighbors = tuple(fields.hosts("neighbors", ipv4_only=True))
    if not neighbors:
        raise ConfigError(f"{fields.at('neighbors')}: at least one neighbor is needed", "list the routers' addresses")
    router_id = fields.ipv4("router_id", unicast=True, local_ok=True)
    bgp = Bgp(
        local_as=fields.integer("local_as", 65001, low=1, high=4294967295),
        peer_as=fields.integer("peer_as", 65000, low=1, high=4294967295),
        router_id=router_id,
        local_address=fields.ipv4("local_address", router_id, unicast=True, local_ok=True),
        neighbors=neighbors,
        hold_time=fields.integer("hold_time", 3, low=3, high=65535),
        md5_secret=_secret_ref(fields, "md5_secret"),
        # RFC 4724 allows 4095 s, but the routers keep a restarting node's routes that long: a node that died
        # mid-restart would black-hole its share of the clients for over an hour. A roll's restart takes seconds.
        graceful_restart=fields.integer("graceful_restart", 0, low=0, high=MAX_GRACEFUL_RESTART),
        drain=_parse_drain(fields),
    )
    fields.done()
    if bgp.local_address in neighbors:
        raise ConfigError(
            f"{fields.at('local_address')}: {bgp.local_address} is also a neighbor",
            "use this node's own address",
        )
    return bgp


def server_order(server: Server) -> tuple[Any, ...]:
    """A sort key: addresses numerically, then names naturally (rgw2 before rgw10), then the port.

    A backend group changed at runtime keeps its servers in this order on the node and in the inventory alike, so
    both render the same file whatever order the changes came in.
    """
    if is_ipv4(server.host):
        return (0, tuple(int(part) for part in server.host.split(".")), server.port)
    parts = re.split(r"(\d+)", server.host)
    return (1, tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts), server.port)


def parse_server(entry: str, port: int, where: str) -> Server:
    """``host`` or ``host:port`` (``port`` when none is given) as a :class:`Server`; ``where`` names it in errors."""
    host, colon, port_text = entry.partition(":")
    check_host(host, where)
    if colon:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{where}: bad port in {entry!r}", "write host:port with a port from 1 to 65535")
        port = int(port_text)
    return Server(name=f"{host}-{port}".replace(".", "_"), host=host, port=port)


def _parse_backend(name: str, fields: Fields, health: Health) -> BackendGroup:
    port = fields.integer("port", 7480, low=1, high=65535)
    raw = fields.raw("servers")
    if not isinstance(raw, (str, list)):
        raise ConfigError(f"{fields.at('servers')}: expected a hostlist or a list, got {type_name(raw)}")
    # Expand with the ports still attached (rgw[1-2]:7480), then split host from port and check each.
    entries = expand(raw, fields.at("servers"), check=False)
    servers = tuple(parse_server(entry, port, fields.at("servers")) for entry in entries)
    if not servers:
        raise ConfigError(f"{fields.at('servers')}: no servers", "list the RGW servers, e.g. rgw[1-2]:7480")
    check_fields = fields.section("check")
    check = HealthCheck(
        method=check_fields.choice("method", CHECK_METHODS, "GET"),
        path=check_fields.string("path", "/", pattern=_URL_PATH, hint="a URL path like / or /swift/healthcheck"),
        expect_status=check_fields.integer("expect_status", 200, low=100, high=599),
        # Not faster than once a second by default, whatever ober health's own interval: every node checks every RGW.
        interval=check_fields.duration("interval", max(health.interval, 1.0), low=0.1, high=3600.0),
        rise=check_fields.integer("rise", health.rise, low=1, high=100),
        fall=check_fields.integer("fall", health.fall, low=1, high=100),
    )
    check_fields.done()
    tls_fields = fields.section("tls")
    tls = BackendTls(
        enabled=tls_fields.boolean("enabled", False),
        verify=tls_fields.boolean("verify", True),
        ca_file=_path(tls_fields, "ca_file"),
    )
    tls_fields.done()
    slots = fields.integer("slots", DEFAULT_SLOTS, low=0, high=MAX_SLOTS)
    drained = _parse_drained(fields, port, servers)
    discovery = _parse_discovery(fields)
    reuse = fields.choice("reuse", REUSE_MODES, "auto")
    fields.done()
    if discovery is not None and slots == 0:
        raise ConfigError(
            f"{fields.at('slots')}: 0, but discovery adds servers into spare slots",
            f"set backends.{name}.slots (e.g. {DEFAULT_SLOTS}), or remove 'discovery:'",
        )
    return BackendGroup(
        name=name,
        servers=servers,
        check=check,
        tls=tls,
        port=port,
        slots=slots,
        drained=drained,
        discovery=discovery,
        reuse=reuse,
    )


def _parse_discovery(fields: Fields) -> Discovery | None:
    """``discovery: {source: file|ceph-orch|dns-srv, path|name: ..., service, resolver, interval}``, or None."""
    if not fields.has("discovery"):
        fields.raw("discovery", None)
        return None
    section = fields.section("discovery")
    source = section.choice("source", DISCOVERY_SOURCES)
    # Only the keys the source reads: a 'name' next to 'source: file' is a mistake to point out, not to ignore.
    wanted = {"file": ("path",), "ceph-orch": ("path", "service"), "dns-srv": ("name", "resolver")}[source]
    for key in ("path", "service", "name", "resolver"):
        if key not in wanted and section.has(key):
            raise ConfigError(
                f"{section.at(key)}: not used by source {source}",
                f"remove it; source {source} reads: {', '.join(wanted)}",
            )

    def optional(key: str, pattern: re.Pattern[str], hint: str) -> str | None:
        if key not in wanted or not section.has(key):
            section.raw(key, None)
            return None
        return section.string(key, pattern=pattern, hint=hint)

    name = optional("name", _SRV_NAME, "an SRV name like _rgw._tcp.example.org")
    discovery = Discovery(
        source=source,
        path=_path(section, "path") if "path" in wanted else None,
        service=optional("service", _SERVICE, "a ceph orch service name, e.g. rgw.s3"),
        name=name.rstrip(".").lower() if name else None,
        resolver=_resolver(section) if "resolver" in wanted else None,
        interval=section.duration("interval", DISCOVERY_INTERVAL, low=1.0, high=86400.0),
    )
    section.done()
    if "path" in wanted and not discovery.path:
        raise ConfigError(f"{section.at('path')}: required for source {source}", "give the discovery file's path")
    if "name" in wanted and not discovery.name:
        raise ConfigError(
            f"{section.at('name')}: required for source {source}", "give the SRV name, e.g. _rgw._tcp.example.org"
        )
    return discovery


def _resolver(fields: Fields) -> str | None:
    if not fields.has("resolver"):
        fields.raw("resolver", None)
        return None
    text = fields.string("resolver")
    host, colon, port = text.partition(":")
    good_port = not colon or (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535)
    if not is_ipv4(host) or not good_port:
        raise ConfigError(
            f"{fields.at('resolver')}: {text!r} is not a DNS server's address",
            "write an IPv4 address, with a port if not 53, e.g. 127.0.0.1:8600",
        )
    return text


def _parse_drained(fields: Fields, port: int, servers: tuple[Server, ...]) -> tuple[Server, ...]:
    raw = fields.raw("drained", [])
    if not isinstance(raw, (str, list)):
        raise ConfigError(f"{fields.at('drained')}: expected a hostlist or a list, got {type_name(raw)}")
    drained = tuple(
        parse_server(entry, port, fields.at("drained")) for entry in expand(raw, fields.at("drained"), check=False)
    )
    for server in drained:
        if server not in servers:
            raise ConfigError(
                f"{fields.at('drained')}: {server.host}:{server.port} is not one of the group's servers",
                "drain only listed servers (or remove it from 'drained')",
            )
    # In the servers' order: the same set gives the same ober.yaml, however it was reached (fleet or node).
    return tuple(server for server in servers if server in drained)


def _parse_vips(fields: Fields, groups: tuple[BackendGroup, ...]) -> tuple[Vip, ...]:
    vips: list[Vip] = []
    known = [group.name for group in groups]
    for item in fields.sections("vips"):
        address = item.ipv4("address", unicast=True)
        default_name = "vip-" + address.replace(".", "-")
        vip = Vip(name=item.name("name", default_name), address=address, backend=item.name("backend"))
        item.done()
        if vip.backend not in known:
            raise ConfigError(
                f"{item.at('backend')}: no backend group named {vip.backend!r}",
                f"use one of: {', '.join(known)}" if known else "define it under 'backends:'",
            )
        for other in vips:
            if other.address == vip.address:
                raise ConfigError(f"{item.at('address')}: VIP {vip.address} is listed twice", "list each VIP once")
            if other.name == vip.name:
                raise ConfigError(
                    f"{item.at('name')}: VIP name {vip.name!r} is used twice", "give each VIP its own name"
                )
        vips.append(vip)
    if not vips:
        raise ConfigError("vips: at least one VIP is needed", "add '- {address: 198.51.100.100, backend: NAME}'")
    return tuple(vips)


def _parse_whitelist(fields: Fields, key: str) -> tuple[str, ...]:
    raw = fields.raw(key, [])
    if not isinstance(raw, (str, list)):
        raise ConfigError(f"{fields.at(key)}: expected a hostlist or a list, got {type_name(raw)}")
    entries: list[str] = []
    for item in [raw] if isinstance(raw, str) else raw:
        if not isinstance(item, str):
            raise ConfigError(f"{fields.at(key)}: expected hostlists, addresses or networks, got {type_name(item)}")
        # Networks (198.18.0.0/15) may stand between hostlist words; python-hostlist would not take them.
        for word in split_words(item, fields.at(key)):
            if "/" in word:
                entries.append(_network(word, fields.at(key)))
            else:
                entries.extend(expand(word, fields.at(key)))
    return tuple(entries)


def _network(text: str, where: str) -> str:
    try:
        return str(ipaddress.IPv4Network(text, strict=False))
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IPv4 network", "write it like 198.51.100.0/24") from None


def whitelist_covers(entries: tuple[str, ...], address: str) -> bool:
    """Tell whether an address is in a whitelist (names count as covering nothing until resolved)."""
    ip = ipaddress.IPv4Address(address)
    for entry in entries:
        if "/" in entry and ip in ipaddress.IPv4Network(entry):
            return True
        if is_ipv4(entry) and ipaddress.IPv4Address(entry) == ip:
            return True
    return False


def parse_node_config(data: object, where: str = "") -> NodeConfig:
    """Validate a node configuration mapping (as read from ``ober.yaml``) into a :class:`NodeConfig`.

    Args:
        data: the parsed YAML.
        where: a prefix for error messages (a file name, or an inventory node).

    Raises:
        ConfigError: naming the exact field and the fix.
    """
    try:
        return _parse(Fields(data))
    except ConfigError as exc:
        if where:
            raise ConfigError(f"{where}: {exc.message}", exc.fix) from None
        raise


def _parse(top: Fields) -> NodeConfig:
    name = check_host(top.string("name"), "name")
    install_path = _path(top, "install_path", DEFAULT_INSTALL_PATH) or DEFAULT_INSTALL_PATH
    if len(install_path) > 64:
        # HAProxy's admin socket lives under it, and Unix socket paths are limited to 107 bytes.
        raise ConfigError(f"install_path: {install_path!r} is longer than 64 characters", "choose a shorter path")

    health_fields = top.section("health")
    health = Health(
        interval=health_fields.duration("interval", 0.5, low=0.1, high=3600.0),
        rise=health_fields.integer("rise", 2, low=1, high=100),
        fall=health_fields.integer("fall", 3, low=1, high=100),
        timeout=health_fields.duration("timeout", 2.0, low=0.1, high=60.0),
        drain_timeout=health_fields.duration("drain_timeout", 300.0, low=0.0, high=86400.0),
        maintenance_file=_path(health_fields, "maintenance_file", f"{install_path}/etc/maintenance") or "",
    )
    health_fields.done()

    bgp = _parse_bgp(top.section("bgp"))
    groups = tuple(_parse_backend(group_name, fields, health) for group_name, fields in top.named_sections("backends"))
    if not groups:
        raise ConfigError(
            "backends: at least one backend group is needed",
            "add 'backends: {ceph-a: {servers: rgw[1-2]:7480}}'",
        )
    vips = _parse_vips(top, groups)

    cert_fields = top.section("certificates")
    acme: Acme | None = None
    if cert_fields.has("acme"):
        acme_fields = cert_fields.section("acme")
        acme = Acme(
            email=acme_fields.string("email", pattern=_EMAIL, hint="an e-mail address"),
            directory=acme_fields.string(
                "directory",
                "https://acme-v02.api.letsencrypt.org/directory",
                pattern=_URL,
                hint="an https:// URL",
            ),
            domains=tuple(acme_fields.hosts("domains")),
            ca_bundle=_path(acme_fields, "ca_bundle"),
        )
        acme_fields.done()
    else:
        cert_fields.raw("acme", None)
    certificates = Certificates(
        pem=_path(cert_fields, "pem"), acme=acme, http=cert_fields.choice("http", HTTP_MODES, "redirect")
    )
    cert_fields.done()
    if (certificates.pem is None) == (certificates.acme is None):
        raise ConfigError(
            "certificates: give exactly one of 'pem' (a file or directory of PEMs) or 'acme'",
            "e.g. certificates: {pem: /opt/ober/etc/certs/s3.pem}",
        )
    if certificates.acme is not None and certificates.http == "off":
        # HTTP-01: the ACME server fetches the token from port 80 of the VIP, on whichever node ECMP picks.
        raise ConfigError(
            "certificates.http: 'off' leaves no port 80 for ACME's HTTP-01 challenges",
            "set certificates.http to 'redirect' (the challenge path is answered before the redirect) or 'serve'",
        )

    stats_fields = top.section("stats")
    auth: StatsAuth | None = None
    if stats_fields.has("auth"):
        auth_fields = stats_fields.section("auth")
        auth = StatsAuth(
            user=auth_fields.string("user", "admin", pattern=_USER, hint="letters, digits, '.', '_' or '-'"),
            password_secret=_secret_ref(auth_fields, "password_secret") or "",
        )
        if not auth.password_secret:
            raise ConfigError(
                f"{auth_fields.at('password_secret')}: required",
                "name the secret that holds the stats password",
            )
        auth_fields.done()
    else:
        stats_fields.raw("auth", None)
    wl_fields = top.section("whitelists")
    whitelists = Whitelists(
        routers=_parse_whitelist(wl_fields, "routers"),
        frontend_http=_parse_whitelist(wl_fields, "frontend_http"),
        backend_http=_parse_whitelist(wl_fields, "backend_http"),
    )
    wl_fields.done()
    if whitelists.routers and all("/" in e or is_ipv4(e) for e in whitelists.routers):
        for neighbor in bgp.neighbors:
            if not whitelist_covers(whitelists.routers, neighbor):
                raise ConfigError(
                    f"whitelists.routers: BGP neighbor {neighbor} is not in it",
                    "add the neighbor to whitelists.routers, or empty the list",
                )

    stats = _parse_stats(stats_fields, auth, bgp, whitelists)
    if any(vip.address == stats.bind for vip in vips):
        raise ConfigError(
            f"stats.bind: {stats.bind} is a VIP: the stats page would face the clients",
            "bind it to this node's own (management) address, or leave stats.bind out",
        )

    log_fields = top.section("logs")
    logs = Logs(
        retention=log_fields.duration("retention", 14 * 86400.0, low=3600.0, high=3650 * 86400.0),
        max_use_mb=log_fields.integer("max_use_mb", 1024, low=16, high=1048576),
    )
    log_fields.done()

    net_fields = top.section("network")
    network = Network(
        interface=net_fields.string(
            "interface",
            "ober0",
            pattern=re.compile(r"^[a-z][a-z0-9_-]{0,14}\Z"),
            hint="a Linux interface name of at most 15 characters",
        ),
        manager=net_fields.choice("manager", NETWORK_MANAGERS, "networkd"),
    )
    net_fields.done()
    if network.interface == "lo" and network.manager != "networkd":
        raise ConfigError(
            "network.interface: VIPs on lo are supported with network.manager networkd only",
            "use a dummy interface (the default ober0), or networkd",
        )

    haproxy = _parse_haproxy(top.section("haproxy"))
    config = NodeConfig(
        name=name,
        install_path=install_path,
        bgp=bgp,
        vips=vips,
        backends=groups,
        certificates=certificates,
        health=health,
        stats=stats,
        whitelists=whitelists,
        logs=logs,
        kernel_profile=top.choice("kernel_profile", KERNEL_PROFILES, "default"),
        network=network,
        haproxy=haproxy,
    )
    top.done()
    for index, vip in enumerate(vips):
        if vip.address == bgp.local_address or vip.address in bgp.neighbors:
            raise ConfigError(
                f"vips[{index}].address: {vip.address} is also a BGP address of this node or a neighbor",
                "give the VIP its own address",
            )
    return config


def _parse_stats(fields: Fields, auth: StatsAuth | None, bgp: Bgp, whitelists: Whitelists) -> Stats:
    """The stats listener: on this node's own address when it has a login or an allow-list, else on loopback."""
    guarded = auth is not None or bool(whitelists.backend_http or whitelists.routers)
    # Never 0.0.0.0 by default (that is the VIPs too): the node's BGP address (where its routers and monitoring
    # reach it) once something guards the page, loopback until then (scrape through SSH, or configure a guard).
    default = bgp.local_address if guarded else "127.0.0.1"
    bind = fields.ipv4("bind", default)
    if bind != "0.0.0.0":  # noqa: S104 - every address, judged below like any other
        refuse_special(bind, fields.at("bind"), local_ok=True)
    stats = Stats(
        bind=bind,
        port=fields.integer("port", 8404, low=1, high=65535),
        auth=auth,
        tls=fields.boolean("tls", False),
        allow_open=fields.boolean("allow_open", False),
    )
    fields.done()
    if stats.port in (80, 443):
        raise ConfigError(f"stats.port: {stats.port} is used by the S3 frontends", "use another port, e.g. 8404")
    found = stats_exposure(stats, whitelists)
    if found.open and not stats.allow_open:
        raise ConfigError(
            f"stats: {found.open[0]}",
            "list your monitoring hosts in whitelists.backend_http, or set stats.auth (with stats.tls), or bind "
            "stats to 127.0.0.1; stats.allow_open: true accepts an open page",
        )
    return stats


def stats_exposure(stats: Stats, whitelists: Whitelists) -> StatsExposure:
    """Who may read the stats page besides the admin, and what is weak about it (both empty: nothing)."""
    where = f"{stats.bind}:{stats.port}"
    allow_list = bool(whitelists.backend_http or whitelists.routers)
    loopback = ipaddress.IPv4Address(stats.bind).is_loopback
    found = StatsExposure(open=[], weak=[])
    if stats.bind == "0.0.0.0" and not allow_list:  # noqa: S104
        found.open.append(
            "stats.bind 0.0.0.0 listens on the public VIPs too, with no allow-list (whitelists.backend_http)"
        )
    elif not loopback and not allow_list and stats.auth is None:
        found.open.append(f"anyone who reaches {where} reads /stats and /metrics: no allow-list and no login")
    if stats.auth is not None and not stats.tls and not loopback:
        found.weak.append(f"the stats login's password crosses plain HTTP on {where} (set stats.tls: true)")
    return found


def _parse_haproxy(fields: Fields) -> HAProxy:
    version = fields.string("version", "2.6", pattern=_VERSION, hint="MAJOR.MINOR, e.g. 2.6 or 3.0")
    major, minor = (int(part) for part in version.split("."))
    if (major, minor) < OLDEST_HAPROXY:
        raise ConfigError(f"haproxy.version: {version} is too old", "ober needs HAProxy 2.6 or newer")
    t = fields.section("timeouts")
    timeouts = Timeouts(
        connect=t.duration("connect", 5.0, low=0.1, high=600.0),
        client=t.duration("client", 900.0, low=1.0, high=86400.0),
        server=t.duration("server", 900.0, low=1.0, high=86400.0),
        http_request=t.duration("http_request", 30.0, low=1.0, high=3600.0),
        http_keep_alive=t.duration("http_keep_alive", 60.0, low=1.0, high=3600.0),
        queue=t.duration("queue", 60.0, low=1.0, high=3600.0),
    )
    t.done()
    maxconn = fields.integer("maxconn", 100000, low=100, high=10000000)
    limits = fields.section("per_source")
    per_source = PerSource(
        # Far above what a legitimate client opens to one node (s5cmd's 256 workers, a NAT gateway's users), far
        # below what one client would need to exhaust maxconn.
        connections=limits.integer("connections", min(PER_SOURCE_CONNECTIONS, maxconn), low=0, high=maxconn),
        rate=limits.integer("rate", 0, low=0, high=10000000),
        period=limits.duration("period", 10.0, low=1.0, high=3600.0),
    )
    limits.done()
    haproxy = HAProxy(
        version=f"{major}.{minor}",
        maxconn=maxconn,
        hard_stop_after=fields.duration("hard_stop_after", 3600.0, low=1.0, high=7 * 86400.0),
        timeouts=timeouts,
        per_source=per_source,
    )
    fields.done()
    return haproxy


def read_yaml(path: Path) -> Any:
    """Read a YAML file safely; syntax errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "check the path, or create it with 'ober config'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        return load_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}", exc.fix) from None
    except ValueError:
        # PyYAML turns a number of thousands of digits into an int, which Python refuses.
        raise ConfigError(f"{path}: a number in the file is far too large", "use realistic values") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        place = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{place}: YAML syntax error: {problem}", "fix the YAML at that line") from None


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's ``ober.yaml``."""
    path = Path(path)
    return parse_node_config(read_yaml(path), str(path))


def config_to_dict(config: NodeConfig) -> dict[str, Any]:
    """The YAML form of a config; :func:`parse_node_config` reads it back to an equal config."""
    data: dict[str, Any] = _plain(dataclasses.asdict(config))
    data["backends"] = {
        group.pop("name"): {
            **group,
            "servers": [f"{s['host']}:{s['port']}" for s in group["servers"]],
            "drained": [f"{s['host']}:{s['port']}" for s in group["drained"]],
        }
        for group in data["backends"]
    }
    return data


def _plain(value: Any) -> Any:
    """Tuples to lists and None-valued keys dropped, recursively, so the YAML stays short."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def dump_config(config: NodeConfig) -> str:
    """Render a config as ``ober.yaml`` text (no secrets: they are only referenced by name)."""
    header = "# ober node configuration. Secrets are referenced by name and live in the secrets file.\n"
    return header + yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
