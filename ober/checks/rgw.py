"""RGW backends: each server answers HAProxy's health check; an SSE-C round trip shows RGW trusts ober's TLS."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ober.checks.base import PROBE_TIMEOUT, Check, parallel
from ober.config import BackendGroup, NodeConfig, Server
from ober.hostlists import is_ipv4
from ober.resolve import Lookup, lookup_ipv4
from ober.s3probe import Credentials, Endpoint, sse_c_round_trip


def tls_context(group: BackendGroup) -> ssl.SSLContext:
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
        context = tls_context(group) if group.tls.enabled else None
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
    return parallel(lambda target: _rgw_probe(config, target[0], target[1], timeout, lookup), targets)


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
    return parallel(lambda target: _sse_c_probe(target, credentials, timeout), targets)


def _rgw_target(config: NodeConfig, group: BackendGroup, lookup: Lookup) -> _SseTarget:
    """The probe of one group's first server, made as HAProxy talks to it."""
    server = group.servers[0]
    name, where = f"sse-c rgw {group.name}", f"{server.host}:{server.port}"
    addresses = [server.host] if is_ipv4(server.host) else lookup(server.host)
    if not addresses:
        return _SseTarget(name, where, None, f"{server.host} does not resolve")
    if group.tls.enabled:
        return _SseTarget(
            name, where, Endpoint(addresses[0], server.port, where, True, tls_context(group)), behind_proxy=False
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
