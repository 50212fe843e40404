"""Node checks for ``ober doctor`` and ``ober test``: each looks at one real thing and says how to fix what it finds.

A check never raises for a problem it found: it returns :class:`Check` results, so one report lists every problem
at once. What tests need to steer is passed in (the os-release text, the uid, the clock, the resolver, the BGP
port, ``ober status`` data, a CA file); everything else is real: sockets, HTTP(S), the ``openssl`` CLI,
``haproxy -c`` and ``exabgp validate``.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from ober.build import build_node
from ober.config import BackendGroup, NodeConfig, Server, load_config, stats_exposure
from ober.errors import OberError, SecretsError
from ober.hostlists import is_ipv4
from ober.resolve import Lookup, lookup_ipv4
from ober.s3probe import Credentials, Endpoint, sse_c_round_trip
from ober.secrets import load_secrets
from ober.status import UNITS, exabgp_root, node_status, unit_state

Status = Literal["ok", "warn", "fail", "skip"]

BGP_PORT = 179
PROBE_TIMEOUT = 3.0
OPENSSL_TIMEOUT = 15.0
EXPIRY_WARN_DAYS = 14
MAX_PARALLEL = 16
OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
# The oldest release of each distribution whose own packages carry HAProxy >= 2.6 and Python >= 3.11, what ober
# needs (Debian 11, Ubuntu 22.04 and RHEL 9 ship HAProxy 2.2/2.4 and Python 3.9/3.10).
SUPPORTED_OS = {"debian": (12,), "ubuntu": (24, 4), "rhel": (10,)}
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# Files HAProxy reads as companions of a certificate in a crt directory, not as certificates of their own.
_COMPANIONS = (".key", ".issuer", ".ocsp", ".sctl")
# Secret values for rendering when the real ones are not on this machine: the syntax check does not need them.
_STAND_IN_SECRET = "ober-stand-in"  # noqa: S105 - not a secret: stands in for one
_TCP_MD5SIG = 14  # linux/tcp.h; Python's socket module does not name it
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----")
_VERIFY_ERROR = re.compile(r"error (\d+) at (\d+) depth lookup: ?(.*)")

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it stands, one line of detail, and one line saying how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def __post_init__(self) -> None:
        # Tool output arrives with newlines; a report row is one line.
        object.__setattr__(self, "detail", " ".join(self.detail.split()))
        if self.fix is not None:
            object.__setattr__(self, "fix", " ".join(self.fix.split()) or None)

    def as_dict(self) -> dict[str, str | None]:
        """The ``--json`` form."""
        return asdict(self)


def _parallel(probe: Callable[[T], Check], items: Sequence[T]) -> list[Check]:
    """Run network probes side by side (each has its own timeout), results in the order of ``items``."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(probe, items))


# --- before bootstrap: the machine itself ---------------------------------------------------------------------


def check_python(version: Sequence[int] | None = None) -> Check:
    """Python is 3.11 or newer (``version`` defaults to the running one)."""
    version = tuple(sys.version_info[:3]) if version is None else version
    text = ".".join(str(part) for part in version)
    if tuple(version[:2]) >= (3, 11):
        return Check("python", "ok", f"Python {text}")
    return Check("python", "fail", f"Python {text} is too old: ober needs 3.11 or newer", "install Python 3.11+")


def check_root(euid: int) -> Check:
    """Running as root (ober writes /etc, /opt/ober and manages units)."""
    if euid == 0:
        return Check("root", "ok", "running as root")
    return Check("root", "fail", f"running as uid {euid}, not root", "run it as root, e.g. with sudo")


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` (``KEY=value`` lines, values optionally quoted) as a mapping."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            fields[key] = value.strip().strip("\"'")
    return fields


def _version(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text)[:2]
    return tuple(int(part) for part in parts) if parts else None


def check_os(os_release: str | None) -> Check:
    """The distribution is one ober supports: Debian 12+, Ubuntu 24.04+, RHEL 10+.

    A RHEL rebuild (``ID_LIKE`` naming rhel: Rocky, Alma, CentOS Stream) of major version 10 or newer is a
    warning, not a failure: it carries the same packages, but only RHEL itself is supported. Anything else fails.

    Args:
        os_release: the content of ``/etc/os-release``, or None when it could not be read.
    """
    supported = "use Debian 12+, Ubuntu 24.04+ or RHEL 10+"
    if os_release is None:
        return Check("os", "fail", "cannot read /etc/os-release: unknown distribution", supported)
    fields = parse_os_release(os_release)
    os_id = fields.get("ID", "").lower()
    like = fields.get("ID_LIKE", "").lower().split()
    version = _version(fields.get("VERSION_ID", ""))
    name = fields.get("PRETTY_NAME") or f"{fields.get('NAME', os_id or 'unknown')} {fields.get('VERSION_ID', '')}"
    name = name.strip()
    if os_id in SUPPORTED_OS:
        floor = SUPPORTED_OS[os_id]
        oldest = ".".join(f"{part:02d}" if i else str(part) for i, part in enumerate(floor))
        if version is None:
            return Check("os", "warn", f"{name}: no VERSION_ID (testing or unstable?), not a release", supported)
        if version >= floor:
            return Check("os", "ok", name)
        return Check("os", "fail", f"{name} is too old: ober needs {os_id} {oldest} or newer (HAProxy 2.6+)", supported)
    if "rhel" in like and version is not None and version >= SUPPORTED_OS["rhel"]:
        return Check("os", "warn", f"{name} is RHEL-compatible, but only RHEL itself is supported", supported)
    return Check("os", "fail", f"{name} is not supported", supported)


def read_os_release() -> str | None:
    """This machine's os-release text (``/etc/os-release``, else ``/usr/lib/os-release``), or None."""
    for path in OS_RELEASE:
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            continue
    return None


# --- configuration and rendered files -------------------------------------------------------------------------


SLOW_NAME_LOOKUP = 1.0
"""Seconds for this host's own name lookup beyond which doctor warns."""


def check_own_name(lookup: Callable[[], str] = socket.getfqdn, clock: Callable[[], float] = time.monotonic) -> Check:
    """This host's own name resolves quickly: ExaBGP looks it up (``socket.getfqdn``) each time it starts.

    That is every ExaBGP start, ``exabgp validate`` and ``exabgp cli`` (so every ``ober status``): with the name
    only in a DNS server the node cannot reach, each waits for the resolver's timeout (5 s).
    """
    started = clock()
    name = lookup()
    took = clock() - started
    if took <= SLOW_NAME_LOOKUP:
        return Check("own name", "ok", f"{name} resolves in {took * 1000:.0f} ms")
    host = socket.gethostname()
    return Check(
        "own name",
        "warn",
        f"looking up this host's own name took {took:.1f}s: ExaBGP does it at every start and ober status twice",
        f"add '127.0.1.1 {host}' to /etc/hosts (or 'myhostname' to the hosts line of /etc/nsswitch.conf)",
    )


def check_config(path: str | Path) -> tuple[Check, NodeConfig | None]:
    """Load and validate the node's ``ober.yaml``; the config comes back for the checks that need it."""
    try:
        config = load_config(path)
    except OberError as exc:
        return Check("config", "fail", exc.message, exc.fix), None
    return Check("config", "ok", f"{path} is valid (node {config.name})"), config


def check_rendered(config: NodeConfig, secrets: Mapping[str, str] | None = None) -> list[Check]:
    """Render the node's files and check them with ``haproxy -c`` and ``exabgp validate``.

    Secrets missing here are stood in for (the check is about syntax), and the detail says so; messages never
    hold a secret value.
    """
    known = dict(secrets or {})
    refs = config.secret_refs()
    standing_in = [field for field, name in refs.items() if name not in known]
    values = {**known, **{refs[field]: _STAND_IN_SECRET for field in standing_in}}
    try:
        built = build_node(config, values)
    except OberError as exc:
        return [Check("rendered files", "fail", _scrub(exc.message, known), _scrub(exc.fix, known))]
    # The field, not the name it gives: that may be a secret pasted in the wrong place.
    stand_ins = built.placeholders + [f"the secret of {field}" for field in standing_in]
    note = f" (stand-ins for what this machine lacks: {', '.join(stand_ins)})" if stand_ins else ""
    checks = [Check("rendered files", "ok", f"haproxy -c and exabgp validate accept them{note}")]
    if built.notes:
        more = f" (+{len(built.notes) - 1} more)" if len(built.notes) > 1 else ""
        checks.append(
            Check(
                "rendered files",
                "warn",
                _scrub(built.notes[0], known) + more,
                "see 'ober render -c CONFIG -o DIR' for every warning",
            )
        )
    return checks


# --- BGP ---------------------------------------------------------------------------------------------------------


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

    return checks + _parallel(probe, list(neighbors if neighbors is not None else bgp.neighbors))


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


def check_haproxy_state(status: Mapping[str, Any]) -> Check:
    """HAProxy answers on its runtime socket (from ``ober status`` data)."""
    haproxy = status.get("haproxy", {})
    if haproxy.get("running"):
        return Check("haproxy", "ok", f"answers on its runtime socket; {haproxy.get('sessions', 0)} client sessions")
    return Check(
        "haproxy",
        "fail",
        f"HAProxy does not answer: {haproxy.get('error', 'unknown')}",
        "systemctl status ober-http; journalctl -u ober-http -n 50",
    )


def check_units(state: Callable[[str], str] = unit_state) -> list[Check]:
    """``ober-http`` and ``ober-bgp`` are active; skipped where systemd is not running (a container, a chroot)."""
    checks: list[Check] = []
    for unit in UNITS:
        now = state(unit)
        if now == "unknown":
            checks.append(Check(f"unit {unit}", "skip", "systemd is not running here: state unknown"))
        elif now == "active":
            checks.append(Check(f"unit {unit}", "ok", "active"))
        else:
            checks.append(Check(f"unit {unit}", "fail", now, f"systemctl start {unit}; see journalctl -u {unit} -n 50"))
    return checks


# --- RGW backends ---------------------------------------------------------------------------------------------


def _tls_context(group: BackendGroup) -> ssl.SSLContext:
    """TLS as HAProxy does it for this group: TLS 1.2+, the chain verified against ca_file (or the system's)."""
    if group.tls.verify:
        context = ssl.create_default_context(cafile=group.tls.ca_file)
        # HAProxy's "verify required" without "verifyhost" checks the chain, not the name.
        context.check_hostname = False
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _http_status(
    address: str, server: Server, group: BackendGroup, context: ssl.SSLContext | None, host: str, timeout: float
) -> int:
    connection = (
        http.client.HTTPSConnection(address, server.port, timeout=timeout, context=context)
        if context is not None
        else http.client.HTTPConnection(address, server.port, timeout=timeout)
    )
    try:
        # The Host header HAProxy's check sends (the node's name), so the RGW sees the same request.
        connection.request(group.check.method, group.check.path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def _rgw_probe(config: NodeConfig, group: BackendGroup, server: Server, timeout: float, lookup: Lookup) -> Check:
    name = f"rgw {group.name} {server.host}:{server.port}"
    where = f"backends.{group.name}"
    addresses = [server.host] if is_ipv4(server.host) else lookup(server.host)
    if not addresses:
        return Check(
            name,
            "fail",
            f"{server.host} does not resolve to an IPv4 address",
            f"add it to DNS or /etc/hosts on this node, or give its address in {where}.servers",
        )
    try:
        context = _tls_context(group) if group.tls.enabled else None
    except (OSError, ssl.SSLError) as exc:
        return Check(name, "fail", f"CA file {group.tls.ca_file}: {exc.strerror or exc}", f"fix {where}.tls.ca_file")
    request = f"{group.check.method} {group.check.path}"
    try:
        code = _http_status(addresses[0], server, group, context, config.name, timeout)
    except ssl.SSLCertVerificationError as exc:
        return Check(
            name,
            "fail",
            f"TLS certificate not trusted: {exc.verify_message}",
            f"put the CA that signed it in {where}.tls.ca_file, or set {where}.tls.verify: false",
        )
    except ssl.SSLError as exc:
        return Check(
            name, "fail", f"TLS failed: {exc.reason or exc}", f"does the RGW speak TLS there? see {where}.tls.enabled"
        )
    except ConnectionRefusedError:
        return Check(
            name, "fail", "connection refused", f"start radosgw on {server.host}:{server.port}, or fix the port"
        )
    except TimeoutError:
        return Check(
            name, "fail", f"no answer in {timeout:g}s", "check routing and firewalls between this node and the RGW"
        )
    except (http.client.HTTPException, ConnectionResetError) as exc:
        # What a TLS server does to plain HTTP (and a plain one to a TLS handshake is an SSLError above).
        return Check(
            name,
            "fail",
            f"{request}: no HTTP answer ({exc.__class__.__name__})",
            f"is this the RGW's port, and does it speak TLS? see {where}.tls.enabled",
        )
    except OSError as exc:
        return Check(
            name, "fail", exc.strerror or str(exc), "check routing and firewalls between this node and the RGW"
        )
    if code != group.check.expect_status:
        return Check(
            name,
            "fail",
            f"{request} answered {code}, expected {group.check.expect_status}",
            f"HAProxy marks it down: see radosgw's log, or set {where}.check to what a healthy RGW answers",
        )
    return Check(name, "ok", f"{request} answered {code}{' over TLS' if context else ''}")


def check_rgw(config: NodeConfig, timeout: float = PROBE_TIMEOUT, *, lookup: Lookup = lookup_ipv4) -> list[Check]:
    """Each RGW server answers the group's health check (method, path, status; TLS as configured) like HAProxy's."""
    targets = [(group, server) for group in config.backends for server in group.servers]
    return _parallel(lambda target: _rgw_probe(config, target[0], target[1], timeout, lookup), targets)


# --- SSE-C: does RGW know a request reached ober over TLS? -------------------------------------------------------

S3_PROBE_SECRETS = ("s3_probe_access_key", "s3_probe_secret_key")
"""Secret names of the S3 user the SSE-C probe signs with (an RGW user's keys, in the secrets file)."""
TRUST_FORWARDED_FIX = (
    "set 'rgw trust forwarded https = true' in each radosgw's ceph.conf section (or: ceph config set client.rgw "
    "rgw_trust_forwarded_https true) and restart radosgw; safe behind ober, whose HAProxy replaces every "
    "X-Forwarded-Proto and Forwarded header a client sends"
)


@dataclass(frozen=True)
class _SseTarget:
    """One SSE-C probe: its check name, where it goes (or why it cannot), and whether RGW sees plain HTTP there."""

    name: str
    where: str
    endpoint: Endpoint | None
    problem: str = ""
    behind_proxy: bool = True


def check_sse_c(
    config: NodeConfig,
    secrets: Mapping[str, str],
    timeout: float = PROBE_TIMEOUT,
    *,
    through: Literal["vip", "rgw"],
    lookup: Lookup = lookup_ipv4,
) -> list[Check]:
    """An SSE-C round trip (upload and download with a customer key) that tells whether RGW trusts ober's TLS.

    radosgw refuses customer keys on a connection it does not believe is secure; behind HAProxy, which
    terminates TLS, it believes so only with ``rgw trust forwarded https``. The probe makes a throwaway bucket
    and deletes it again, signed with the ``s3_probe_*`` secrets; without them it is skipped.

    Args:
        config: the node's config.
        secrets: secret values by name.
        timeout: seconds for each request.
        through: ``vip``: through each VIP over TLS, as clients do (HAProxy must serve). ``rgw``: straight to one
            server of each backend group, with the headers HAProxy adds (nothing of ober needs to run).
        lookup: resolves RGW server names.
    """
    access, secret = (secrets.get(name) for name in S3_PROBE_SECRETS)
    if not access or not secret:
        return [
            Check(
                "sse-c",
                "skip",
                "no S3 user to probe SSE-C (customer-key encryption) through ober with",
                f"add {' and '.join(S3_PROBE_SECRETS)} (an RGW user's keys) to the secrets file",
            )
        ]
    credentials = Credentials(access, secret)
    if through == "vip":
        tls_groups = {group.name for group in config.backends if group.tls.enabled}
        targets = [
            # This node's own VIP: its certificate is checked elsewhere, here only RGW's answer matters.
            _SseTarget(
                f"sse-c vip {vip.name}",
                f"VIP {vip.address}",
                Endpoint(vip.address, 443, vip.address, tls=True),
                behind_proxy=vip.backend not in tls_groups,
            )
            for vip in config.vips
        ]
    else:
        targets = [_rgw_target(config, group, lookup) for group in config.backends]
    return _parallel(lambda target: _sse_c_probe(target, credentials, timeout), targets)


def _rgw_target(config: NodeConfig, group: BackendGroup, lookup: Lookup) -> _SseTarget:
    """The probe of one group's first server, made as HAProxy talks to it."""
    server = group.servers[0]
    name, where = f"sse-c rgw {group.name}", f"{server.host}:{server.port}"
    addresses = [server.host] if is_ipv4(server.host) else lookup(server.host)
    if not addresses:
        return _SseTarget(name, where, None, f"{server.host} does not resolve")
    if group.tls.enabled:
        return _SseTarget(
            name, where, Endpoint(addresses[0], server.port, where, True, _tls_context(group)), behind_proxy=False
        )
    # What HAProxy adds to a request that reached a VIP over TLS.
    forwarded = {"X-Forwarded-Proto": "https", "Forwarded": f"for={config.bgp.local_address};proto=https"}
    return _SseTarget(name, where, Endpoint(addresses[0], server.port, where, headers=forwarded))


def _sse_c_probe(target: _SseTarget, credentials: Credentials, timeout: float) -> Check:
    name, where = target.name, target.where
    if target.endpoint is None:
        return Check(name, "fail", f"{where}: {target.problem}", "see the rgw checks")
    done = sse_c_round_trip(target.endpoint, credentials, timeout)
    leftover = f"; could not delete {done.leftover}" if done.leftover else ""
    answer = done.answer
    if done.step is None:
        how = "with HAProxy's X-Forwarded-Proto" if target.behind_proxy else "over TLS"
        return Check(name, "warn" if leftover else "ok", f"SSE-C upload and download via {where} {how}{leftover}")
    if done.error is not None:
        return Check(name, "fail", f"{done.step} via {where}: {done.error}{leftover}", "see the haproxy and rgw checks")
    if answer is not None and answer.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return Check(
            name,
            "fail",
            f"{done.step} via {where}: RGW refused the probe's S3 keys ({answer})",
            f"put a valid RGW user's keys in {' and '.join(S3_PROBE_SECRETS)}",
        )
    refused = done.step == "upload" and answer is not None and (answer.status, answer.code) == (400, "InvalidRequest")
    if refused and target.behind_proxy:
        return Check(
            name,
            "fail",
            f"RGW refused an SSE-C upload via {where} ({answer}): it does not believe the client used TLS{leftover}",
            TRUST_FORWARDED_FIX,
        )
    if done.step == "compare":
        return Check(name, "fail", f"SSE-C download via {where} returned other bytes than uploaded{leftover}")
    return Check(
        name,
        "fail",
        f"{done.step} via {where}: {answer}{leftover}",
        "see radosgw's log; the probe's user must be allowed to create a bucket",
    )


# --- certificates -------------------------------------------------------------------------------------------------


def _openssl(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["openssl", *args], input=stdin, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise OberError("openssl is not installed here", "install openssl") from None
    except subprocess.TimeoutExpired:
        raise OberError(f"openssl {args[0]} did not finish in {OPENSSL_TIMEOUT:g}s") from None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def system_ca_bundle() -> str | None:
    """The distribution's CA bundle (Debian/Ubuntu, then RHEL), or None to use OpenSSL's default store."""
    return next((path for path in SYSTEM_CA_BUNDLES if Path(path).is_file()), None)


def _pem_files(pem: Path) -> list[Path]:
    """The PEM itself, or the certificates HAProxy loads from a crt directory."""
    if not pem.is_dir():
        return [pem]
    return sorted(
        path
        for path in pem.iterdir()
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(_COMPANIONS)
    )


def _expiry(label: str, leaf: str, now: datetime) -> Check:
    done = _openssl(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-startdate", "-enddate"], leaf)
    if done.returncode != 0:
        return Check(label, "fail", f"not a readable certificate: {_first_line(done.stderr)}", "replace the PEM")
    fields = dict(line.partition("=")[::2] for line in done.stdout.splitlines())
    try:
        start, end = (
            datetime.strptime(fields[key].strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
            for key in ("notBefore", "notAfter")
        )
    except (KeyError, ValueError):
        return Check(label, "fail", f"openssl's validity dates were not understood: {done.stdout!r}"[:200])
    subject = fields.get("subject", "").strip() or "no subject"
    renew = "renew the certificate, replace the PEM, then systemctl reload ober-http"
    if end <= now:
        return Check(label, "fail", f"{subject}: expired on {end:%Y-%m-%d}", renew)
    if start > now:
        return Check(label, "fail", f"{subject}: not valid before {start:%Y-%m-%d %H:%M} UTC", "check this clock")
    days = (end - now).days
    if days < EXPIRY_WARN_DAYS:
        return Check(label, "warn", f"{subject}: expires in {days} days ({end:%Y-%m-%d})", renew)
    return Check(label, "ok", f"{subject}: valid until {end:%Y-%m-%d} ({days} days)")


def _key_match(label: str, path: Path, leaf: str, keys: list[str]) -> Check:
    if not keys:
        # HAProxy reads the key from "<file>.key" when the PEM has none.
        companion = path.with_name(path.name + ".key")
        text = companion.read_text(encoding="utf-8", errors="replace") if companion.is_file() else ""
        keys = [m.group(0) for m in _PEM_BLOCK.finditer(text) if m.group(1).endswith("PRIVATE KEY")]
    if not keys:
        return Check(label, "fail", "no private key in it (nor in a .key beside it)", "append the key to the PEM")
    # -passin keeps openssl from prompting on an encrypted key (HAProxy could not read that one either).
    key_pub = _openssl(["pkey", "-pubout", "-passin", "pass:"], keys[0])
    if key_pub.returncode != 0:
        return Check(
            label, "fail", "the private key is unreadable (encrypted?)", "HAProxy needs it unencrypted: openssl pkey"
        )
    cert_pub = _openssl(["x509", "-noout", "-pubkey"], leaf)
    if cert_pub.returncode != 0 or cert_pub.stdout.strip() != key_pub.stdout.strip():
        return Check(
            label, "fail", "the private key does not match the certificate", "put the certificate's own key in the PEM"
        )
    return Check(label, "ok", "private key present and matching the certificate")


def _chain(label: str, leaf: str, extras: list[str], ca_file: str | None) -> Check:
    args = ["verify", "-no_check_time", "-purpose", "sslserver"]  # expiry is a check of its own
    trusted = ca_file or system_ca_bundle()
    if trusted:
        args += ["-CAfile", trusted]
    with tempfile.TemporaryDirectory(prefix="ober-chain-") as work:
        if extras:
            untrusted = Path(work, "untrusted.pem")
            untrusted.write_text("\n".join(extras) + "\n")
            args += ["-untrusted", str(untrusted)]
        done = _openssl(args, leaf)
    if done.returncode == 0:
        return Check(label, "ok", f"chain verifies ({len(extras)} more certificates in the PEM)")
    found = _VERIFY_ERROR.search(done.stdout + done.stderr)
    code, reason = (int(found.group(1)), found.group(3).strip()) if found else (-1, _first_line(done.stderr))
    if code == 18:  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        return Check(label, "warn", "self-signed: S3 clients trust it only if given it", "use a CA clients trust")
    if code == 19:  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: a private root, included in the PEM
        return Check(label, "warn", f"{reason}: a private CA", "clients must trust that root; or use a public CA")
    if code in (2, 20):  # the issuer is neither in the PEM nor trusted here
        return Check(
            label,
            "fail",
            f"chain incomplete: {reason}",
            "append the intermediate certificates to the PEM after the leaf",
        )
    return Check(label, "fail", f"chain does not verify: {reason}", "use a certificate valid for TLS servers")


def _check_pem(path: Path, now: datetime, ca_file: str | None) -> list[Check]:
    label = f"cert {path.name}"
    text = path.read_text(encoding="utf-8", errors="replace")
    blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]
    certs = [block for kind, block in blocks if kind == "CERTIFICATE"]
    keys = [block for kind, block in blocks if kind.endswith("PRIVATE KEY")]
    if not certs:
        return [Check(label, "fail", f"{path}: no certificate in it", "put the certificate, chain and key in it")]
    return [
        _expiry(f"{label} expiry", certs[0], now),
        _key_match(f"{label} key", path, certs[0], keys),
        _chain(f"{label} chain", certs[0], certs[1:], ca_file),
    ]


def check_certificates(config: NodeConfig, now: datetime | None = None, *, ca_file: str | None = None) -> list[Check]:
    """The TLS certificate(s) HAProxy serves: expiry, the key matching, the chain verifying.

    Args:
        config: the node's config (``certificates.pem``: a file, or a directory of them).
        now: the time to judge expiry against (default: now).
        ca_file: trusted CAs for the chain (default: the system's bundle).
    """
    certificates = config.certificates
    if certificates.acme is not None or certificates.pem is None:
        domains = ", ".join(certificates.acme.domains) if certificates.acme else ""
        return [Check("certificates", "skip", f"obtained by ACME ({domains}): not checked here")]
    pem = Path(certificates.pem)
    if not pem.exists():
        return [
            Check(
                "certificates",
                "fail",
                f"{pem}: no such file or directory",
                "install the PEM there (certificate, intermediates, private key; mode 600)",
            )
        ]
    unreadable = "run as root, or fix certificates.pem"
    try:
        files = _pem_files(pem)
    except OSError as exc:
        return [Check("certificates", "fail", f"{pem}: {exc.strerror}", unreadable)]
    if not files:
        return [Check("certificates", "fail", f"{pem}: no certificates in the directory", "put the PEMs there")]
    moment = now or datetime.now(UTC)
    checks: list[Check] = []
    for path in files:
        try:
            checks += _check_pem(path, moment, ca_file)
        except OSError as exc:
            checks.append(Check(f"cert {path.name}", "fail", f"{path}: {exc.strerror}", unreadable))
        except OberError as exc:  # openssl missing or hung: the same for every file
            return [*checks, Check("certificates", "fail", exc.message, exc.fix)]
    return checks


# --- exposure ---------------------------------------------------------------------------------------------------


def check_stats_exposure(config: NodeConfig) -> list[Check]:
    """Warn when the stats page is open to anyone (``stats.allow_open``) or its password crosses plain HTTP."""
    found = stats_exposure(config.stats, config.whitelists)
    if not found.open and not found.weak:
        guard = "a login" if config.stats.auth else "an allow-list"
        if ipaddress.IPv4Address(config.stats.bind).is_loopback:
            guard = "loopback only"
        return [Check("stats page", "ok", f"{config.stats.bind}:{config.stats.port}: {guard}")]
    checks = [
        Check(
            "stats page",
            "warn",
            f"open: {why} (stats.allow_open is set)",
            "list the monitoring hosts in whitelists.backend_http, or set stats.auth with stats.tls",
        )
        for why in found.open
    ]
    fix = "set stats.tls: true, or bind stats to 127.0.0.1"
    checks += [Check("stats page", "warn", why, fix) for why in found.weak]
    return checks


# --- composing them -------------------------------------------------------------------------------------------


def _scrub(text: str | None, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value masked (tools may quote a config line holding one)."""
    text = text or ""
    for value in secrets.values():
        if value:
            text = text.replace(value, "***")
    return text


def scrub(checks: list[Check], secrets: Mapping[str, str]) -> list[Check]:
    """The checks with every secret value masked, wherever it appears."""
    return [
        replace(
            check,
            name=_scrub(check.name, secrets),
            detail=_scrub(check.detail, secrets),
            fix=_scrub(check.fix, secrets) if check.fix else None,
        )
        for check in checks
    ]


def _secrets(path: Path | None) -> tuple[list[Check], dict[str, str]]:
    """The secrets file's values if there is one; an explicit but unusable file is a failed check."""
    try:
        return [], load_secrets(path, required=path is not None)
    except SecretsError as exc:
        return [Check("secrets", "fail", exc.message, exc.fix)], {}


def run_test(
    config_path: str | Path,
    *,
    secrets_path: Path | None = None,
    timeout: float = PROBE_TIMEOUT,
    now: datetime | None = None,
    bgp_port: int = BGP_PORT,
) -> list[Check]:
    """``ober test``: config validity, rendered files, BGP TCP, RGW and certificates; no service is started."""
    checks, secrets = _secrets(secrets_path)
    check, config = check_config(config_path)
    checks.append(check)
    if config is None:
        return scrub(checks, secrets)
    checks += check_rendered(config, secrets)
    checks += check_bgp_tcp(config, timeout, secrets=secrets, port=bgp_port)
    checks += check_rgw(config, timeout)
    checks += check_sse_c(config, secrets, timeout, through="rgw")
    checks += check_certificates(config, now)
    return scrub(checks, secrets)


def run_doctor(
    config_path: str | Path,
    *,
    secrets_path: Path | None = None,
    timeout: float = PROBE_TIMEOUT,
    now: datetime | None = None,
    euid: int | None = None,
    os_release: str | None = None,
    bgp_port: int = BGP_PORT,
) -> list[Check]:
    """``ober doctor``: the machine, then (once bootstrapped) units, config, BGP, RGW and certificates.

    Before bootstrap (no config file) it reports the machine's checks and a "not bootstrapped" warning.

    Args:
        config_path: the node's ``ober.yaml``.
        secrets_path: a secrets file (optional on a node; used for MD5 probes and real-value rendering).
        timeout: seconds for each network probe.
        now: the time to judge certificate expiry against.
        euid: the effective uid (default: this process's).
        os_release: os-release text (default: read from this machine).
        bgp_port: the BGP port.
    """
    checks = [
        check_python(),
        check_root(os.geteuid() if euid is None else euid),
        check_os(os_release if os_release is not None else read_os_release()),
        check_own_name(),
    ]
    if not Path(config_path).exists():
        checks.append(
            Check("bootstrap", "warn", f"not bootstrapped: {config_path} does not exist", "run ober bootstrap")
        )
        return checks
    found, secrets = _secrets(secrets_path)
    check, config = check_config(config_path)
    checks += [*found, check]
    if config is None:
        return scrub(checks, secrets)
    checks += check_units()
    checks += check_rendered(config, secrets)
    checks += check_stats_exposure(config)
    status = node_status(config, exabgp_root=exabgp_root(config))
    checks.append(check_haproxy_state(status))
    checks += check_bgp_state(config, status)
    # A session that is not up: probe TCP, to tell an unreachable router from one refusing the BGP session.
    sessions = status.get("bgp", {}).get("sessions", {})
    down = [neighbor for neighbor in config.bgp.neighbors if sessions.get(neighbor) != "established"]
    if down:
        checks += check_bgp_tcp(config, timeout, secrets=secrets, neighbors=down, port=bgp_port)
    checks += check_rgw(config, timeout)
    # Imported here: ober.keepalive_check builds on this module's Check.
    from ober.keepalive_check import check_keepalive

    checks += check_keepalive(config, timeout)
    checks += check_sse_c(config, secrets, timeout, through="vip")
    checks += check_certificates(config, now)
    return scrub(checks, secrets)
