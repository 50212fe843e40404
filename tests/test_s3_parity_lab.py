"""S3 through ober's VIP behaves exactly like S3 straight to RGW over TLS (issue 13).

One private namespace holds a real Ceph 16 RGW (one radosgw, configured as ober's README tells operators: ``rgw
trust forwarded https``, beast ``tcp_nodelay``; plus its own TLS endpoint on 7443 and ``rgw dns name`` for
virtual-hosted buckets) and HAProxy running the ``haproxy.cfg`` ober renders for a node with one VIP in front of
it (port 443, and port 80 served too). boto3 and raw sockets run in a thread inside the namespace. The S3 name
``s3.example.test`` (and ``BUCKET.s3.example.test``) leads to the VIP on ports 443/80 and to the radosgw on
7443/7480: the test process's own name lookup is patched for that name only, so that both sides see the same
Host header, certificate and URLs, and nothing on the host changes.

Every operation runs against both sides, each in its own bucket, and what a client can observe (statuses, S3
error codes, bodies, ranges, keys) must be the same; each also states what it must have done, so that two equal
failures do not pass.

Needs root, iproute2, HAProxy and Debian 12's Ceph: skipped without them, failed with ``OBER_REQUIRE_LAB=1``.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ober.certs import self_signed_pem
from ober.checks.rgw import TRUST_FORWARDED_FIX, check_sse_c
from ober.config import NodeConfig
from ober.facts import find_program
from ober.lab.netns import Lab, add_address, run
from ober.lab.procnode import lab_config, write_install
from ober.lab.rgw import RGW_PORT, RGW_TLS_PORT, RgwCluster, in_netns, port_refuses, start_cluster
from ober.lab.site import node_data
from ober.s3probe import Credentials, s3_error, sign_v4, sse_c_headers
from tests.conftest import require
from tests.test_lab_rgw import lab_prerequisites

pytestmark = pytest.mark.lab

HOST = "s3.example.test"
MON, RGW, VIP = "100.64.1.10", "100.64.1.11", "198.51.100.10"
BODY = bytes(range(256)) * 40  # 10 KiB with a recognisable pattern, for ranges
PART = 5 * 1024 * 1024  # S3's smallest part but the last
READY_TIMEOUT = 30.0
TRUST_LINE = "rgw trust forwarded https = true"
# Which address answers HOST on which port: the VIP for clients of ober, the radosgw itself for the direct side.
PORTS = {443: VIP, 80: VIP, RGW_TLS_PORT: RGW, RGW_PORT: RGW}
ENDPOINTS = {
    "direct": f"https://{HOST}:{RGW_TLS_PORT}",
    "vip": f"https://{HOST}",
    "direct-plain": f"http://{HOST}:{RGW_PORT}",
    "vip-plain": f"http://{HOST}",
}


# --- the lab ------------------------------------------------------------------------------------------------------


def _lab_getaddrinfo(real: Callable[..., Any]) -> Callable[..., Any]:
    """``socket.getaddrinfo`` that resolves HOST and its subdomains to the lab's address for the port asked."""

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and (name == HOST or name.endswith(f".{HOST}")):
            host = PORTS[int(port)]
        return real(host, port, *args, **kwargs)

    return lookup


@dataclass
class Env:
    """The running lab: RGW, HAProxy, and how to reach them."""

    ns: str
    cluster: RgwCluster
    config: NodeConfig
    ca: Path

    def run(self, call: Callable[[], Any], timeout: float = 180.0) -> Any:
        """``call()`` inside the namespace."""
        return in_netns(self.ns, call, timeout=timeout)

    def s3(self, side: str, *, style: str = "path", secret: str | None = None) -> Any:
        """A boto3 client for one side (``direct``, ``vip``, ``direct-plain``, ``vip-plain``)."""
        return boto3.client(
            "s3",
            endpoint_url=ENDPOINTS[side],
            aws_access_key_id=self.cluster.access_key,
            aws_secret_access_key=secret or self.cluster.secret_key,
            region_name="us-east-1",
            verify=str(self.ca),
            # RGW 16 refuses the aws-chunked trailing checksums recent SDKs send by default.
            config=Config(
                s3={"addressing_style": style},
                signature_version="s3v4",
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=30,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def _wait(what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {READY_TIMEOUT:g}s")
        time.sleep(0.1)


def _start_haproxy(lab: Lab, ns: str, pem: Path) -> NodeConfig:
    """Render a node with one VIP in front of the radosgw (plain HTTP served too) and run its HAProxy."""
    # A node name that is not the S3 name: with 'rgw dns name' set, radosgw takes any other Host name for a bucket,
    # so a health check that sent one would see 404 and mark the server down (the check sends no Host).
    data = node_data("n1", "100.64.0.11", pem)
    data["vips"] = [{"name": "s3", "address": VIP, "backend": "ceph"}]
    data["backends"] = {"ceph": {**data["backends"]["ceph-a"], "servers": [RGW]}}
    config = lab_config(data, lab.path("node", "opt", "ober"))
    cfg = write_install(config, {})["haproxy_cfg"]
    haproxy = find_program("haproxy") or "haproxy"
    run([haproxy, "-c", "-q", "-f", cfg])
    lab.spawn(ns, [haproxy, "-W", "-f", cfg], log=lab.path("node") / "haproxy.log")
    return config


def _answers(env: Env, side: str) -> bool:
    def get() -> bool:
        try:
            return requests.get(f"{ENDPOINTS[side]}/", verify=str(env.ca), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    return bool(env.run(get, timeout=10))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lab_prerequisites()
    require(find_program("haproxy") is not None, "haproxy is not installed")
    with Lab() as lab, pytest.MonkeyPatch.context() as patch:
        ns = lab.netns("s3")
        for address in (MON, RGW, VIP):
            add_address(ns, "lo", f"{address}/32")
        certificate, key = self_signed_pem(HOST, [f"DNS:{HOST}", f"DNS:*.{HOST}"])
        certs = lab.path("certs")
        pem, ca = certs / "s3.pem", certs / "ca.pem"
        pem.touch(mode=0o600)
        pem.write_text(certificate + key)
        ca.write_text(certificate)
        cluster = start_cluster(ns, lab.path("ceph"), [RGW], MON, tls_pem=pem, dns_name=HOST)
        lab.cleanups.append(cluster.stop)
        config = _start_haproxy(lab, ns, pem)
        patch.setattr(socket, "getaddrinfo", _lab_getaddrinfo(socket.getaddrinfo))
        environment = Env(ns, cluster, config, ca)
        _wait("RGW through the VIP", lambda: _answers(environment, "vip"))
        yield environment


# --- observing outcomes -------------------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def s3_code(body: bytes) -> str:
    """The Code of an S3 error document ("" when the body is not one)."""
    return s3_error(body)[0]


def outcome(call: Callable[[], Any], *fields: str) -> tuple[Any, ...]:
    """What a client sees of a boto3 call: its HTTP status and the chosen response fields, or status and code."""
    try:
        response = call()
    except ClientError as exc:
        meta = exc.response
        return ("error", meta["ResponseMetadata"]["HTTPStatusCode"], meta["Error"]["Code"])
    except BotoCoreError as exc:  # no HTTP answer at all
        return ("failed", type(exc).__name__)
    values = []
    for field in fields:
        value = response.get(field)
        values.append(sha(value.read()) if hasattr(value, "read") else value)
    return ("ok", response["ResponseMetadata"]["HTTPStatusCode"], *values)


def sse_c(key: bytes, prefix: str = "SSECustomer") -> dict[str, Any]:
    """boto3's SSE-C parameters (``CopySourceSSECustomer`` for a copy's source)."""
    return {f"{prefix}Algorithm": "AES256", f"{prefix}Key": key}


@dataclass
class Side:
    """One side of the comparison, as an operation sees it."""

    env: Env
    name: str
    bucket: str

    def s3(self, style: str = "path") -> Any:
        return self.env.s3(self.name, style=style)

    def http(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """A plain HTTP request (presigned URLs, POST forms), trusting the lab's certificate."""
        # Per request: requests prefers $REQUESTS_CA_BUNDLE to a session's own verify.
        return requests.request(method, url, verify=str(self.env.ca), timeout=30, **kwargs)


# --- the operations -----------------------------------------------------------------------------------------------
# Each returns what a client observes; EXPECT says what it must have done on both sides.


OTHER_ETAG = '"00000000000000000000000000000000"'


def op_presigned(side: Side) -> dict[str, Any]:
    s3, http = side.s3(), side.http
    s3.put_object(Bucket=side.bucket, Key="presigned", Body=BODY)
    get = s3.generate_presigned_url("get_object", Params={"Bucket": side.bucket, "Key": "presigned"}, ExpiresIn=300)
    put = s3.generate_presigned_url("put_object", Params={"Bucket": side.bucket, "Key": "pre-put"}, ExpiresIn=300)
    got = http("GET", get)
    tampered = http("GET", get[:-1] + ("0" if get[-1] != "0" else "1"))  # the signature comes last
    put_answer = http("PUT", put, data=BODY[:100])
    written = s3.get_object(Bucket=side.bucket, Key="pre-put")["Body"].read()
    return {
        "get": (got.status_code, sha(got.content)),
        "tampered": (tampered.status_code, s3_code(tampered.content)),
        "put": put_answer.status_code,
        "written": sha(written),
    }


def op_post_policy(side: Side) -> dict[str, Any]:
    s3, http = side.s3(), side.http
    conditions: list[Any] = [["starts-with", "$key", "post/"], ["content-length-range", 1, 1024]]
    form = s3.generate_presigned_post(side.bucket, "post/small", Conditions=conditions, ExpiresIn=300)
    small = http("POST", form["url"], data=form["fields"], files={"file": ("small", b"s" * 100)})
    big = http("POST", form["url"], data=form["fields"], files={"file": ("big", b"b" * 2048)})
    outside = s3.generate_presigned_post(side.bucket, "elsewhere", Conditions=conditions[1:], ExpiresIn=300)
    outside["fields"]["key"] = "post/other"  # not what the policy signed
    forged = http("POST", outside["url"], data=outside["fields"], files={"file": ("x", b"x")})
    return {
        "small": small.status_code,
        "big": (big.status_code, s3_code(big.content)),
        "forged": (forged.status_code, s3_code(forged.content)),
        "stored": outcome(lambda: s3.head_object(Bucket=side.bucket, Key="post/small"), "ContentLength"),
    }


def op_range(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    s3.put_object(Bucket=side.bucket, Key="range", Body=BODY)

    def get(spec: str) -> tuple[Any, ...]:
        return outcome(lambda: s3.get_object(Bucket=side.bucket, Key="range", Range=spec), "ContentRange", "Body")

    return {spec: get(spec) for spec in ("bytes=10-19", "bytes=-5", "bytes=10000-", "bytes=20000-30000")}


def op_conditional(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    etag = s3.put_object(Bucket=side.bucket, Key="cond", Body=BODY)["ETag"]
    found: dict[str, Any] = {}
    for name, condition in [
        ("if-match", {"IfMatch": etag}),
        ("if-match other", {"IfMatch": OTHER_ETAG}),
        ("if-none-match", {"IfNoneMatch": etag}),
        ("if-none-match other", {"IfNoneMatch": OTHER_ETAG}),
    ]:
        found[f"get {name}"] = outcome(partial(s3.get_object, Bucket=side.bucket, Key="cond", **condition), "Body")
        found[f"head {name}"] = outcome(partial(s3.head_object, Bucket=side.bucket, Key="cond", **condition))
    return found


def op_copy(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    etag = s3.put_object(Bucket=side.bucket, Key="copy-src", Body=BODY, Metadata={"colour": "red"})["ETag"]
    source = {"Bucket": side.bucket, "Key": "copy-src"}
    return {
        "copy": outcome(lambda: s3.copy_object(Bucket=side.bucket, Key="copy-a", CopySource=source)),
        "read": outcome(lambda: s3.get_object(Bucket=side.bucket, Key="copy-a"), "Body", "Metadata"),
        "replace": outcome(
            lambda: s3.copy_object(
                Bucket=side.bucket, Key="copy-b", CopySource=source, Metadata={"c": "blue"}, MetadataDirective="REPLACE"
            )
        ),
        "replaced": outcome(lambda: s3.head_object(Bucket=side.bucket, Key="copy-b"), "Metadata"),
        "if-match": outcome(
            lambda: s3.copy_object(Bucket=side.bucket, Key="copy-c", CopySource=source, CopySourceIfMatch=etag)
        ),
        "if-match other": outcome(
            lambda: s3.copy_object(Bucket=side.bucket, Key="copy-d", CopySource=source, CopySourceIfMatch=OTHER_ETAG)
        ),
    }


def op_multipart(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    part = BODY * (PART // len(BODY))
    found: dict[str, Any] = {}
    aborted = s3.create_multipart_upload(Bucket=side.bucket, Key="mp-aborted")["UploadId"]
    found["part"] = outcome(
        lambda: s3.upload_part(Bucket=side.bucket, Key="mp-aborted", UploadId=aborted, PartNumber=1, Body=part)
    )
    found["abort"] = outcome(lambda: s3.abort_multipart_upload(Bucket=side.bucket, Key="mp-aborted", UploadId=aborted))
    found["after abort"] = outcome(lambda: s3.list_parts(Bucket=side.bucket, Key="mp-aborted", UploadId=aborted))
    found["object"] = outcome(lambda: s3.head_object(Bucket=side.bucket, Key="mp-aborted"))
    upload = s3.create_multipart_upload(Bucket=side.bucket, Key="mp")["UploadId"]
    parts = []
    for number, body in ((1, part), (2, BODY)):
        etag = s3.upload_part(Bucket=side.bucket, Key="mp", UploadId=upload, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    found["complete"] = outcome(
        lambda: s3.complete_multipart_upload(
            Bucket=side.bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts}
        ),
        "ETag",
    )
    found["read"] = outcome(lambda: s3.get_object(Bucket=side.bucket, Key="mp"), "ContentLength", "Body")
    found["expected"] = sha(part + BODY)
    return found


def _raw_put(side: Side, key: str, body: bytes, *, secret: str | None = None) -> tuple[int | None, int]:
    """A signed PUT with ``Expect: 100-continue`` over a raw TLS socket: (the interim status, the final status).

    The body is sent only after a 100 Continue, as a client that waits for it does.
    """
    port = RGW_TLS_PORT if side.name == "direct" else 443
    host = HOST if port == 443 else f"{HOST}:{port}"
    path = f"/{side.bucket}/{key}"
    now = datetime.now(UTC)
    payload = hashlib.sha256(body).hexdigest()
    headers = {"Host": host, "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"), "x-amz-content-sha256": payload}
    keys = Credentials(side.env.cluster.access_key, secret or side.env.cluster.secret_key)
    headers["Authorization"] = sign_v4("PUT", path, headers, payload, keys, now)
    headers.update({"Content-Length": str(len(body)), "Expect": "100-continue"})
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    context = ssl.create_default_context(cafile=str(side.env.ca))
    with (
        socket.create_connection((PORTS[port], port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        tls.sendall(head.encode())
        first = _status(tls)
        if first != 100:
            return None, first
        tls.sendall(body)
        return first, _status(tls)


def _status(sock: ssl.SSLSocket) -> int:
    """Read one response head; its status (the body of a final answer is left unread)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            raise AssertionError(f"connection closed after {data!r}")
        data += piece
    return int(data.split(b" ", 2)[1])


def op_expect_100_continue(side: Side) -> dict[str, Any]:
    body = BODY * 25
    return {
        "signed": _raw_put(side, "continue", body),
        "stored": outcome(lambda: side.s3().get_object(Bucket=side.bucket, Key="continue"), "Body"),
        "expected": sha(body),
        "bad signature": _raw_put(side, "continue-bad", body, secret="not-the-secret"),
    }


# Metadata values up to 12 KB: S3 itself caps a PUT's headers at 8 KB. Beyond about 15 KB of headers HAProxy (its
# 16 KB buffer) answers 400 where radosgw still accepts up to about 16 KB, then refuses too.
LARGE_HEADERS = (1024, 4096, 8000, 12000)


def op_large_headers(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    found: dict[str, Any] = {}
    for size in LARGE_HEADERS:
        key = f"meta-{size}"
        put = partial(s3.put_object, Bucket=side.bucket, Key=key, Body=b"m", Metadata={"a": "v" * size})
        found[f"{size} put"] = outcome(put)
        head = outcome(partial(s3.head_object, Bucket=side.bucket, Key=key), "Metadata")
        found[f"{size} head"] = (*head[:2], len(head[2]["a"])) if head[0] == "ok" else head
    return found


NAMES = (
    "with space",
    "ünïcødé/ключ/名前",
    "per%cent",
    "per%25cent-encoded",
    "plus+sign",
    "question?mark",
    "hash#tag",
    "semi;colon&amp=eq",
    "tilde~and'quote",
    "trailing-space ",
)


def op_names(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    found: dict[str, Any] = {}
    for number, name in enumerate(NAMES):
        key = f"names/{name}"
        found[name] = (
            outcome(partial(s3.put_object, Bucket=side.bucket, Key=key, Body=BODY[:number])),
            outcome(partial(s3.get_object, Bucket=side.bucket, Key=key), "Body"),
        )
    listed = s3.list_objects_v2(Bucket=side.bucket, Prefix="names/")
    found["listed"] = sorted(item["Key"] for item in listed.get("Contents", []))
    return found


def op_virtual_host(side: Side) -> dict[str, Any]:
    s3 = side.s3("virtual")
    return {
        "put": outcome(lambda: s3.put_object(Bucket=side.bucket, Key="vhost/one", Body=BODY)),
        "get": outcome(lambda: s3.get_object(Bucket=side.bucket, Key="vhost/one"), "Body"),
        "list": sorted(item["Key"] for item in s3.list_objects_v2(Bucket=side.bucket, Prefix="vhost/")["Contents"]),
        "missing": outcome(lambda: s3.get_object(Bucket=side.bucket, Key="vhost/none")),
    }


KEY = bytes(range(32))  # the customer key: the same on both sides, so ETags and answers can match


def op_sse_c_object(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    bucket = side.bucket
    return {
        "put": outcome(
            lambda: s3.put_object(Bucket=bucket, Key="ssec", Body=BODY, **sse_c(KEY)), "SSECustomerAlgorithm"
        ),
        "get": outcome(lambda: s3.get_object(Bucket=bucket, Key="ssec", **sse_c(KEY)), "Body"),
        "head": outcome(lambda: s3.head_object(Bucket=bucket, Key="ssec", **sse_c(KEY)), "ContentLength"),
        "range": outcome(lambda: s3.get_object(Bucket=bucket, Key="ssec", Range="bytes=0-9", **sse_c(KEY)), "Body"),
        "get without key": outcome(lambda: s3.get_object(Bucket=bucket, Key="ssec")),
        "get wrong key": outcome(lambda: s3.get_object(Bucket=bucket, Key="ssec", **sse_c(bytes(32)))),
        "expected": sha(BODY),
    }


def op_sse_c_multipart(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    bucket, part = side.bucket, bytes(PART)
    found: dict[str, Any] = {}
    created = s3.create_multipart_upload(Bucket=bucket, Key="ssec-mp", **sse_c(KEY))
    found["create"] = (created["ResponseMetadata"]["HTTPStatusCode"], created.get("SSECustomerAlgorithm"))
    upload, parts = created["UploadId"], []
    for number, body in ((1, part), (2, BODY)):
        answer = s3.upload_part(
            Bucket=bucket, Key="ssec-mp", UploadId=upload, PartNumber=number, Body=body, **sse_c(KEY)
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    found["complete"] = outcome(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="ssec-mp", UploadId=upload, MultipartUpload={"Parts": parts}
        )
    )
    found["read"] = outcome(lambda: s3.get_object(Bucket=bucket, Key="ssec-mp", **sse_c(KEY)), "Body")
    found["expected"] = sha(part + BODY)
    aborted = s3.create_multipart_upload(Bucket=bucket, Key="ssec-mp-aborted", **sse_c(KEY))["UploadId"]
    found["abort"] = outcome(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="ssec-mp-aborted", UploadId=aborted))
    return found


def op_sse_c_post(side: Side) -> dict[str, Any]:
    s3, http = side.s3(), side.http
    fields = sse_c_headers(KEY)  # the same names serve as a POST form's fields
    conditions = [{name: value} for name, value in fields.items()]
    form = s3.generate_presigned_post(side.bucket, "ssec-post", Fields=fields, Conditions=conditions, ExpiresIn=300)
    posted = http("POST", form["url"], data=form["fields"], files={"file": ("f", BODY)})
    return {
        "post": (posted.status_code, s3_code(posted.content)),
        "read": outcome(lambda: s3.get_object(Bucket=side.bucket, Key="ssec-post", **sse_c(KEY)), "Body"),
        "expected": sha(BODY),
    }


def op_sse_c_copy(side: Side) -> dict[str, Any]:
    s3 = side.s3()
    bucket, other = side.bucket, bytes(range(32, 64))
    s3.put_object(Bucket=bucket, Key="ssec-src", Body=BODY, **sse_c(KEY))
    s3.put_object(Bucket=bucket, Key="plain-src", Body=BODY)
    encrypted, plain = {"Bucket": bucket, "Key": "ssec-src"}, {"Bucket": bucket, "Key": "plain-src"}
    source_key = sse_c(KEY, "CopySourceSSECustomer")
    return {
        "plain to sse-c": outcome(lambda: s3.copy_object(Bucket=bucket, Key="c1", CopySource=plain, **sse_c(other))),
        "read": outcome(lambda: s3.get_object(Bucket=bucket, Key="c1", **sse_c(other)), "Body"),
        "sse-c to sse-c": outcome(
            lambda: s3.copy_object(Bucket=bucket, Key="c2", CopySource=encrypted, **source_key, **sse_c(other))
        ),
        "sse-c to plain": outcome(lambda: s3.copy_object(Bucket=bucket, Key="c3", CopySource=encrypted, **source_key)),
        "without source key": outcome(lambda: s3.copy_object(Bucket=bucket, Key="c4", CopySource=encrypted)),
        "expected": sha(BODY),
    }


OK = ("ok", 200)
OPS: dict[str, tuple[Callable[[Side], dict[str, Any]], Callable[[dict[str, Any]], bool]]] = {
    "presigned GET/PUT": (
        op_presigned,
        lambda r: r["get"][0] == 200 and r["tampered"] == (403, "SignatureDoesNotMatch") and r["put"] == 200,
    ),
    "POST object policy": (op_post_policy, lambda r: r["small"] == 204 and r["stored"] == ("ok", 200, 100)),
    "Range": (op_range, lambda r: r["bytes=10-19"][:3] == ("ok", 206, "bytes 10-19/10240")),
    "If-Match/If-None-Match": (
        op_conditional,
        lambda r: (
            r["get if-match"][:2] == OK and r["get if-match other"][1] == 412 and r["head if-none-match"][1] == 304
        ),
    ),
    # RGW 16 reads x-amz-copy-if-match, not S3's x-amz-copy-source-if-match: both sides copy regardless.
    "copy": (op_copy, lambda r: r["copy"] == OK and r["replaced"] == (*OK, {"c": "blue"})),
    "multipart with abort": (
        op_multipart,
        # RGW 16 answers NoSuchKey, not S3's NoSuchUpload, for the parts of an aborted upload.
        lambda r: r["after abort"][:2] == ("error", 404) and r["read"][3] == r["expected"],
    ),
    "100-continue": (op_expect_100_continue, lambda r: r["signed"] == (100, 200) and r["stored"][2] == r["expected"]),
    "large headers": (op_large_headers, lambda r: r["4096 put"] == OK),
    "unicode, spaces, % in names": (op_names, lambda r: len(r["listed"]) == len(NAMES)),
    "virtual-hosted style": (op_virtual_host, lambda r: r["put"] == OK and r["list"] == ["vhost/one"]),
    "SSE-C PUT/GET/HEAD": (
        op_sse_c_object,
        lambda r: r["put"] == (*OK, "AES256") and r["get"][2] == r["expected"] and r["head"] == (*OK, len(BODY)),
    ),
    "SSE-C multipart": (
        op_sse_c_multipart,
        lambda r: r["create"] == (200, "AES256") and r["read"][2] == r["expected"],
    ),
    "SSE-C POST object": (op_sse_c_post, lambda r: r["post"][0] == 204 and r["read"][2] == r["expected"]),
    # RGW 16 answers 501 NotImplemented to a copy whose source is SSE-C encrypted: the same on both sides.
    "SSE-C copy": (
        op_sse_c_copy,
        lambda r: r["plain to sse-c"] == OK and r["read"][2] == r["expected"],
    ),
}


@pytest.fixture(scope="module")
def buckets(env: Env) -> dict[str, str]:
    """One bucket per side."""
    names = {"direct": "parity-direct", "vip": "parity-vip"}
    for side, bucket in names.items():
        env.run(partial(env.s3(side).create_bucket, Bucket=bucket))
    return names


# --- tests --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", list(OPS))
def test_an_operation_through_the_vip_matches_direct_rgw_tls(env: Env, buckets: dict[str, str], operation: str) -> None:
    run_op, done = OPS[operation]
    direct = env.run(lambda: run_op(Side(env, "direct", buckets["direct"])))
    through = env.run(lambda: run_op(Side(env, "vip", buckets["vip"])))
    assert done(direct), f"straight to RGW over TLS, {operation} did not do what it should: {direct}"
    assert through == direct, f"{operation}: through the VIP {through}, straight to RGW over TLS {direct}"


FORGED = (
    {"X-Forwarded-Proto": "https"},
    {"Forwarded": "for=100.64.66.66;proto=https"},
    {"X_Forwarded_Proto": "https"},
    {"x-forwarded-proto": "https", "forwarded": "proto=https"},
)


def _sse_c_put(env: Env, side: str, bucket: str, headers: dict[str, str]) -> tuple[Any, ...]:
    """An SSE-C PutObject from ``side`` with ``headers`` added after signing (as a forger would)."""

    def put() -> tuple[Any, ...]:
        s3 = env.s3(side)

        def forge(request: Any, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        s3.meta.events.register("before-send.s3.PutObject", forge)
        return outcome(lambda: s3.put_object(Bucket=bucket, Key="forged", Body=b"secret", **sse_c(KEY)))

    return tuple(env.run(put))


def test_forged_forwarding_headers_on_port_80_do_not_make_rgw_take_sse_c_keys(
    env: Env, buckets: dict[str, str]
) -> None:
    bucket = buckets["vip"]
    refused = ("error", 400, "InvalidRequest")
    assert _sse_c_put(env, "vip-plain", bucket, {}) == refused
    for headers in FORGED:
        # The control: these headers, reaching RGW, would make it take the key sent in the clear...
        assert _sse_c_put(env, "direct-plain", bucket, headers) == ("ok", 200), headers
        # ...but through ober's port 80 RGW never sees them.
        assert _sse_c_put(env, "vip-plain", bucket, headers) == refused, headers
    assert _sse_c_put(env, "vip", bucket, FORGED[0]) == ("ok", 200)


def _set_trust(env: Env, trusted: bool) -> None:
    """Rewrite radosgw's 'rgw trust forwarded https' and restart it; wait until the VIP serves again."""
    conf = env.cluster.layout.conf
    text = conf.read_text()
    wanted = TRUST_LINE if trusted else TRUST_LINE.replace("true", "false")
    current = TRUST_LINE.replace("true", "false") if trusted else TRUST_LINE
    if current in text:
        conf.write_text(text.replace(current, wanted))
        env.cluster.stop_rgw(0)
        env.cluster.start_rgw(0)
        _wait("radosgw's TLS port", lambda: not port_refuses(env.ns, RGW, RGW_TLS_PORT))
    _wait("RGW through the VIP", lambda: _answers(env, "vip"))


def test_doctor_and_test_probes_pass_and_name_the_setting_rgw_lacks(env: Env, buckets: dict[str, str]) -> None:
    secrets = {"s3_probe_access_key": env.cluster.access_key, "s3_probe_secret_key": env.cluster.secret_key}

    def probe() -> list[tuple[str, str, str, str | None]]:
        checks = [*check_sse_c(env.config, secrets, 10.0, through="vip")]
        checks += check_sse_c(env.config, secrets, 10.0, through="rgw")
        return [(check.name, check.status, check.detail, check.fix) for check in checks]

    good = env.run(probe)
    assert [(name, status) for name, status, _, _ in good] == [("sse-c vip s3", "ok"), ("sse-c rgw ceph", "ok")], good
    try:
        _set_trust(env, False)
        # What the issue saw: every SSE-C upload through ober refused...
        assert _sse_c_put(env, "vip", buckets["vip"], {}) == ("error", 400, "InvalidRequest")
        # ...while straight to RGW's own TLS it passes.
        assert _sse_c_put(env, "direct", buckets["direct"], {}) == ("ok", 200)
        bad = env.run(probe)
    finally:
        _set_trust(env, True)
    assert [(name, status) for name, status, _, _ in bad] == [("sse-c vip s3", "fail"), ("sse-c rgw ceph", "fail")]
    for _, _, detail, fix in bad:
        assert "InvalidRequest" in detail and "does not believe the client used TLS" in detail, detail
        assert fix == TRUST_FORWARDED_FIX
        assert "rgw trust forwarded https = true" in fix
    # The probe cleans up after itself: no bucket of its own is left.
    listed = env.run(lambda: env.s3("direct").list_buckets()["Buckets"])
    assert sorted(bucket["Name"] for bucket in listed) == sorted(buckets.values())
