"""ober's own state as Prometheus metrics: the catalog, the facts they are made of, and the text exposition.

Pure: :func:`render` turns a :class:`NodeMetrics` (gathered by :mod:`ober.metrics_server` inside ``ober health``)
into Prometheus' text format 0.0.4. :data:`FAMILIES` is the one list of what ober exports (name, type, labels,
help): the exposition writes nothing else, and the shipped alert rules and dashboard are checked against it.

Series that alerts rely on are always present (a VIP's ``ober_vip_announced`` is 0 or 1, never missing) so that
``== 0`` works; enumerations are state sets (one 0/1 series per possible value), never a changing label.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from ober.config import NodeConfig

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    """One metric family: what Prometheus is told about it, and the labels its series carry."""

    name: str
    type: str
    help: str
    labels: tuple[str, ...] = ()


VIP = ("vip", "name")

FAMILIES: tuple[Family, ...] = (
    Family(
        "ober_info",
        "gauge",
        "Versions on this node (always 1).",
        ("node", "ober_version", "haproxy_version", "exabgp_version"),
    ),
    Family("ober_health_checks_total", "counter", "Check rounds ober health has made since it started."),
    Family(
        "ober_health_check_duration_seconds",
        "histogram",
        "Time one check round took (HAProxy's answer mostly).",
        ("le",),
    ),
    Family("ober_health_last_check_timestamp_seconds", "gauge", "When the last check round ended (Unix time)."),
    Family("ober_health_interval_seconds", "gauge", "The configured check interval (health.interval)."),
    Family("ober_health_haproxy_up", "gauge", "1 when HAProxy answered the last check, 0 when it did not or is gone."),
    Family(
        "ober_vip_announced",
        "gauge",
        "1 while ober health has the VIP announced to ExaBGP (also less preferred "
        "during a drain), 0 while it is withdrawn.",
        (*VIP, "backend"),
    ),
    Family(
        "ober_vip_state",
        "gauge",
        "The VIP's health state (one series per state, 1 for the current one).",
        (*VIP, "state"),
    ),
    Family(
        "ober_vip_reason",
        "gauge",
        "Why: what the last check found for the VIP (one series per reason).",
        (*VIP, "reason"),
    ),
    Family(
        "ober_vip_state_since_timestamp_seconds", "gauge", "When the VIP entered its current state (Unix time).", VIP
    ),
    Family("ober_vip_transitions_total", "counter", "State changes of the VIP, by the state entered.", (*VIP, "to")),
    Family(
        "ober_vip_updates_total",
        "counter",
        "Route updates sent to ExaBGP for the VIP, by action (withdraw: failovers away from this node).",
        (*VIP, "action"),
    ),
    Family(
        "ober_vip_live_servers",
        "gauge",
        "RGW servers HAProxy saw up in the VIP's backend group at the last check.",
        (*VIP, "backend"),
    ),
    Family("ober_exabgp_up", "gauge", "1 when ExaBGP answered ober health's last question about its sessions."),
    Family("ober_bgp_session_up", "gauge", "1 while the BGP session to the neighbor is established.", ("neighbor",)),
    Family(
        "ober_bgp_session_state", "gauge", "The BGP session's FSM state (one series per state).", ("neighbor", "state")
    ),
    Family(
        "ober_bgp_session_uptime_seconds",
        "gauge",
        "Seconds since the session was established (0 when not).",
        ("neighbor",),
    ),
    Family(
        "ober_bgp_graceful_restart",
        "gauge",
        "1 when graceful restart was negotiated with the neighbor, 0 when not (absent before the router's OPEN).",
        ("neighbor",),
    ),
    Family("ober_drained", "gauge", "1 while the node is drained (ober drain: the maintenance file exists)."),
    Family(
        "ober_drained_since_timestamp_seconds", "gauge", "When the node was drained (Unix time; only while drained)."
    ),
    Family("ober_drain_info", "gauge", "Who drained the node and why (only while drained).", ("drained_by", "reason")),
    Family(
        "ober_config_info",
        "gauge",
        "The ober.yaml in effect: digest of the file, and service: digest of what "
        "every node serving the same VIPs must agree on (VIPs, backends, certificates, HAProxy).",
        ("digest", "service"),
    ),
    Family("ober_config_loaded_timestamp_seconds", "gauge", "When ober health took the configuration in effect."),
    Family(
        "ober_config_rejected",
        "gauge",
        "1 when ober.yaml on disk changed but is not valid: the previous configuration is still in effect.",
    ),
    Family(
        "ober_fleet_roll_info",
        "gauge",
        "The last fleet roll (restart, upgrade) that reached this node.",
        ("id", "operation", "done"),
    ),
    Family("ober_fleet_roll_timestamp_seconds", "gauge", "When the last fleet roll last wrote its record here."),
    Family(
        "ober_discovery_last_run_timestamp_seconds",
        "gauge",
        "When discovery last ran for the backend group (Unix time; ober-discovery.timer).",
        ("backend",),
    ),
    Family(
        "ober_discovery_ok",
        "gauge",
        "1 when the group's last discovery run read its source and made its change; 0 when the source failed or "
        "the change was refused (nothing changed: see the ober-discovery journal).",
        ("backend",),
    ),
    Family(
        "ober_discovery_listed_servers",
        "gauge",
        "RGW servers the group's discovery source listed at its last run (absent when it could not be read).",
        ("backend",),
    ),
    Family(
        "ober_discovery_lost_servers",
        "gauge",
        "Drained servers of the group discovery no longer lists: never removed automatically, an operator's to "
        "remove (ober backends remove).",
        ("backend",),
    ),
    Family(
        "ober_discovery_pending_changes",
        "gauge",
        "Changes discovery still has to make to the group (one per run).",
        ("backend",),
    ),
    Family("process_cpu_seconds_total", "counter", "CPU time of ober health (user and system)."),
    Family("process_resident_memory_bytes", "gauge", "Resident memory of ober health."),
    Family("process_start_time_seconds", "gauge", "When ober health started (Unix time)."),
)

BY_NAME = {family.name: family for family in FAMILIES}

VIP_STATES = ("init", "rising", "up", "falling", "down", "draining", "disabled")
REASONS = ("healthy", "no_live_server", "haproxy_not_running", "haproxy_not_answering", "maintenance")
ACTIONS = ("announce", "announce-drain", "withdraw")
BGP_STATES = ("idle", "active", "connect", "opensent", "openconfirm", "established")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds: a check round takes ~1.5 ms when HAProxy answers; up to health.timeout when it does not."""


@dataclass
class Histogram:
    """A cumulative histogram over :data:`DURATION_BUCKETS` (counts per bucket, not yet cumulated)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        index = next((i for i, bound in enumerate(DURATION_BUCKETS) if value <= bound), len(DURATION_BUCKETS))
        self.counts[index] += 1
        self.total += value

    def copy(self) -> Histogram:
        """An independent copy (what a scrape reads while the loop goes on counting)."""
        return Histogram(list(self.counts), self.total)


@dataclass(frozen=True)
class VipFacts:
    """One VIP as ``ober health`` sees it."""

    address: str
    name: str
    backend: str
    state: str
    reason: str
    announced: bool
    since: float
    live_servers: int | None
    transitions: Mapping[str, int]
    updates: Mapping[str, int]


@dataclass(frozen=True)
class HealthFacts:
    """The loop's own figures."""

    checks: int
    durations: Histogram
    last_check: float | None
    interval: float
    haproxy_up: bool
    vips: tuple[VipFacts, ...]


@dataclass(frozen=True)
class Neighbor:
    """One BGP session, from ExaBGP."""

    address: str
    state: str
    uptime: float
    graceful_restart: bool | None


@dataclass(frozen=True)
class ConfigFacts:
    """The configuration in effect."""

    digest: str
    service: str
    loaded: float
    rejected: bool


@dataclass(frozen=True)
class Drain:
    """The drain record."""

    by: str
    since: float
    reason: str


@dataclass(frozen=True)
class Roll:
    """The node's record of the last fleet roll."""

    id: str
    operation: str
    done: bool
    at: float


@dataclass(frozen=True)
class DiscoveryFacts:
    """A backend group's last discovery run."""

    backend: str
    at: float
    ok: bool
    listed: int | None
    lost: int
    pending: int


@dataclass(frozen=True)
class Process:
    """ober health's own footprint."""

    cpu_seconds: float
    rss_bytes: int
    start_time: float


@dataclass(frozen=True)
class NodeMetrics:
    """Everything one scrape shows."""

    node: str
    versions: Mapping[str, str | None]
    health: HealthFacts
    config: ConfigFacts
    neighbors: tuple[Neighbor, ...] | None
    """None when ExaBGP did not answer (then ``ober_exabgp_up`` is 0 and no session series are written)."""
    drain: Drain | None
    roll: Roll | None
    process: Process | None
    discovery: tuple[DiscoveryFacts, ...] = ()


def service_digest(config: NodeConfig) -> str:
    """A digest of what clients of the VIPs see, which every node serving them must agree on.

    In: the VIPs, each backend group's RGW servers, its check request (method, path, expected status) and TLS, the
    certificates and plain-HTTP mode, HAProxy's timeouts. Out: what differs between nodes by design, per group or
    per host: name, BGP, check timing (it follows ``health`` unless set), health, HAProxy's target version and
    maxconn, network, kernel profile, stats, whitelists.
    """
    shared = {
        "vips": [asdict(vip) for vip in config.vips],
        "backends": [
            {
                "name": group.name,
                "servers": [asdict(server) for server in group.servers],
                "check": [group.check.method, group.check.path, group.check.expect_status],
                "tls": asdict(group.tls),
            }
            for group in config.backends
        ],
        "certificates": asdict(config.certificates),
        "timeouts": asdict(config.haproxy.timeouts),
    }
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


class Exposition:
    """Text format 0.0.4, family by family: ``# HELP`` and ``# TYPE`` once, then the family's samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._open: str | None = None
        self._written: set[str] = set()

    def add(self, metric: str, value: float, /, **labels: str) -> None:
        """One sample of ``metric`` (a histogram's ``_bucket``/``_sum``/``_count`` belong to its family)."""
        family = BY_NAME.get(metric) or BY_NAME[metric.rpartition("_")[0]]
        if family.name != self._open:
            if family.name in self._written:
                raise ValueError(f"{family.name}: samples of a family must be written together")
            self._written.add(family.name)
            self._open = family.name
            self.lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
            self.lines.append(f"# TYPE {family.name} {family.type}")
        unknown = set(labels) - set(family.labels)
        if unknown:
            raise ValueError(f"{metric}: label {sorted(unknown)[0]} is not in the catalog")
        text = ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items())
        self.lines.append(f"{metric}{{{text}}} {_number(value)}" if text else f"{metric} {_number(value)}")

    def text(self) -> str:
        """The whole exposition."""
        return "\n".join(self.lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def _stateset(out: Exposition, metric: str, values: Iterable[str], current: str, key: str, /, **labels: str) -> None:
    for value in values:
        out.add(metric, value == current, **labels, **{key: value})


def render(facts: NodeMetrics) -> str:
    """The text exposition of one scrape."""
    out = Exposition()
    v = facts.versions
    out.add(
        "ober_info",
        1,
        node=facts.node,
        ober_version=v.get("ober") or "",
        haproxy_version=v.get("haproxy") or "",
        exabgp_version=v.get("exabgp") or "",
    )
    _health(out, facts.health)
    _bgp(out, facts.neighbors)
    _drain(out, facts.drain)
    config = facts.config
    out.add("ober_config_info", 1, digest=config.digest, service=config.service)
    out.add("ober_config_loaded_timestamp_seconds", config.loaded)
    out.add("ober_config_rejected", config.rejected)
    if facts.roll is not None:
        roll = facts.roll
        out.add("ober_fleet_roll_info", 1, id=roll.id, operation=roll.operation, done=str(roll.done).lower())
        out.add("ober_fleet_roll_timestamp_seconds", roll.at)
    _discovery(out, facts.discovery)
    if facts.process is not None:
        out.add("process_cpu_seconds_total", facts.process.cpu_seconds)
        out.add("process_resident_memory_bytes", facts.process.rss_bytes)
        out.add("process_start_time_seconds", facts.process.start_time)
    return out.text()


def _health(out: Exposition, health: HealthFacts) -> None:
    out.add("ober_health_checks_total", health.checks)
    name = "ober_health_check_duration_seconds"
    running = 0
    for bound, count in zip((*DURATION_BUCKETS, math.inf), health.durations.counts, strict=True):
        running += count
        out.add(f"{name}_bucket", running, le="+Inf" if math.isinf(bound) else _number(bound))
    out.add(f"{name}_sum", health.durations.total)
    out.add(f"{name}_count", running)
    if health.last_check is not None:
        out.add("ober_health_last_check_timestamp_seconds", health.last_check)
    out.add("ober_health_interval_seconds", health.interval)
    out.add("ober_health_haproxy_up", health.haproxy_up)
    vips = health.vips
    for vip in vips:
        out.add("ober_vip_announced", vip.announced, vip=vip.address, name=vip.name, backend=vip.backend)
    for vip in vips:
        _stateset(out, "ober_vip_state", VIP_STATES, vip.state, "state", vip=vip.address, name=vip.name)
    for vip in vips:
        _stateset(out, "ober_vip_reason", REASONS, vip.reason, "reason", vip=vip.address, name=vip.name)
    for vip in vips:
        out.add("ober_vip_state_since_timestamp_seconds", vip.since, vip=vip.address, name=vip.name)
    for vip in vips:
        for state in VIP_STATES:
            out.add(
                "ober_vip_transitions_total", vip.transitions.get(state, 0), vip=vip.address, name=vip.name, to=state
            )
    for vip in vips:
        for action in ACTIONS:
            out.add("ober_vip_updates_total", vip.updates.get(action, 0), vip=vip.address, name=vip.name, action=action)
    for vip in vips:
        if vip.live_servers is not None:
            out.add("ober_vip_live_servers", vip.live_servers, vip=vip.address, name=vip.name, backend=vip.backend)


def _bgp(out: Exposition, neighbors: tuple[Neighbor, ...] | None) -> None:
    out.add("ober_exabgp_up", neighbors is not None)
    if not neighbors:
        return
    for peer in neighbors:
        out.add("ober_bgp_session_up", peer.state == "established", neighbor=peer.address)
    for peer in neighbors:
        _stateset(out, "ober_bgp_session_state", BGP_STATES, peer.state, "state", neighbor=peer.address)
    for peer in neighbors:
        out.add(
            "ober_bgp_session_uptime_seconds", peer.uptime if peer.state == "established" else 0, neighbor=peer.address
        )
    for peer in neighbors:
        if peer.graceful_restart is not None:
            out.add("ober_bgp_graceful_restart", peer.graceful_restart, neighbor=peer.address)


def _discovery(out: Exposition, groups: tuple[DiscoveryFacts, ...]) -> None:
    for group in groups:
        out.add("ober_discovery_last_run_timestamp_seconds", group.at, backend=group.backend)
    for group in groups:
        out.add("ober_discovery_ok", group.ok, backend=group.backend)
    for group in groups:
        if group.listed is not None:
            out.add("ober_discovery_listed_servers", group.listed, backend=group.backend)
    for group in groups:
        out.add("ober_discovery_lost_servers", group.lost, backend=group.backend)
    for group in groups:
        out.add("ober_discovery_pending_changes", group.pending, backend=group.backend)


def _drain(out: Exposition, drain: Drain | None) -> None:
    out.add("ober_drained", drain is not None)
    if drain is not None:
        out.add("ober_drained_since_timestamp_seconds", drain.since)
        out.add("ober_drain_info", 1, drained_by=drain.by, reason=drain.reason)


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Read a text exposition back: sample name → [(labels, value)]. For tests, the lab and the demo.

    Raises:
        ValueError: a line is not a sample of the text format.
    """
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            name, labels, rest = _split_sample(line)
            samples.setdefault(name, []).append((labels, float(rest)))
        except (IndexError, ValueError):
            raise ValueError(f"not a sample of the text format: {line!r}") from None
    return samples


def _split_sample(line: str) -> tuple[str, dict[str, str], str]:
    if "{" not in line.split(" ", 1)[0]:
        name, _, rest = line.partition(" ")
        return name, {}, rest.strip()
    name, _, body = line.partition("{")
    labels: dict[str, str] = {}
    i = 0
    while body[i] != "}":
        key, _, _ = body[i:].partition("=")
        i += len(key) + 2  # past `="`
        value: list[str] = []
        while body[i] != '"':
            if body[i] == "\\":
                i += 1
                value.append({"n": "\n"}.get(body[i], body[i]))
            else:
                value.append(body[i])
            i += 1
        labels[key.strip(",")] = "".join(value)
        i += 1
        if body[i] == ",":
            i += 1
    return name, labels, body[i + 1 :].strip()
