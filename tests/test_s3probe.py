"""The SSE-C probe of ``ober test``/``ober doctor``: its SigV4 signatures, and what it concludes from RGW's answers.

The signer is checked against AWS's published example and against botocore. The conclusions are checked against a
small S3 stand-in on 127.0.0.1 that behaves as radosgw does for this probe (a real radosgw is in
tests/test_s3_parity_lab.py): it takes a customer key only over a connection it believes secure.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import xml.sax.saxutils
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from ober.checks.rgw import S3_PROBE_SECRETS, TRUST_FORWARDED_FIX, check_sse_c
from ober.config import NodeConfig
from ober.s3probe import BUCKET_PREFIX, Credentials, sign_v4

KEYS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SECRETS = dict(zip(S3_PROBE_SECRETS, ("probe-access", "probe-Secret/Key+1"), strict=True))


def test_signature_matches_aws_published_example() -> None:
    # AWS's "Example: GET Object" of Signature Version 4 for S3 (examplebucket, 24 May 2013).
    now = datetime(2013, 5, 24, tzinfo=UTC)
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    authorization = sign_v4("GET", "/test.txt", headers, EMPTY_SHA256, KEYS, now)
    assert authorization == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


@pytest.mark.parametrize(
    ("path", "query"),
    [("/bucket/plain", {}), ("/bucket/ünï cødé/%+;~", {}), ("/bucket", {"uploads": "", "prefix": "a b/ü"})],
)
def test_signature_matches_botocore(path: str, query: dict[str, str]) -> None:
    now = datetime(2026, 11, 27, 12, 30, 1, tzinfo=UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "Host": "198.51.100.10:8443",
        "x-amz-date": stamp,
        "x-amz-content-sha256": EMPTY_SHA256,
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
    }
    mine = sign_v4("PUT", path, headers, EMPTY_SHA256, KEYS, now, query=query)

    # The path as botocore's serializer encodes an S3 key (every byte but unreserved ones and '/').
    url = f"https://198.51.100.10:8443{quote(path, safe='/~')}"
    request = AWSRequest("PUT", url, params=query, headers=dict(headers))
    request.context["timestamp"] = stamp
    auth = S3SigV4Auth(BotoCredentials(KEYS.access_key, KEYS.secret_key), "s3", "us-east-1")
    prepared = request.prepare()
    request.url = prepared.url  # botocore signs the URL with its query string
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    assert mine.endswith(f"Signature={signature}"), canonical


# --- the probe against a stand-in ---------------------------------------------------------------------------------


class S3StandIn(ThreadingHTTPServer):
    """Just enough S3 for the probe: buckets and objects in memory, SSE-C only when it trusts the transport.

    Args:
        trust_forwarded: take ``X-Forwarded-Proto: https`` as proof of TLS, as radosgw does with 'rgw trust
            forwarded https' (this server itself only speaks plain HTTP).
        access_key: the only access key it knows.
    """

    daemon_threads = True

    def __init__(self, *, trust_forwarded: bool, access_key: str) -> None:
        super().__init__(("127.0.0.1", 0), _S3Handler)
        self.trust_forwarded = trust_forwarded
        self.access_key = access_key
        self.objects: dict[str, bytes] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class _S3Handler(BaseHTTPRequestHandler):
    server: S3StandIn
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, body: bytes = b"", code: str = "") -> None:
        if code:
            body = f"<Error><Code>{xml.sax.saxutils.escape(code)}</Code><Message></Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, dict(self.headers.items())))
        if f"Credential={self.server.access_key}/" not in self.headers.get("Authorization", ""):
            return self._reply(403, code="InvalidAccessKeyId")
        customer_key = "x-amz-server-side-encryption-customer-key" in self.headers
        secure = self.server.trust_forwarded and self.headers.get("X-Forwarded-Proto") == "https"
        if customer_key and not secure:
            return self._reply(400, code="InvalidRequest")
        if self.command == "PUT":
            self.server.objects[self.path] = body
            return self._reply(200)
        if self.command == "GET":
            return self._reply(200, self.server.objects[self.path])
        self.server.objects.pop(self.path, None)
        return self._reply(204)

    do_PUT = do_GET = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``seen``."""


@contextmanager
def s3_stand_in(
    *, trust_forwarded: bool = True, access_key: str = SECRETS["s3_probe_access_key"]
) -> Iterator[S3StandIn]:
    server = S3StandIn(trust_forwarded=trust_forwarded, access_key=access_key)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def node(make_config: Callable[..., NodeConfig]) -> Callable[[int], NodeConfig]:
    def make(port: int) -> NodeConfig:
        return make_config(
            vips=[{"name": "s3-a", "address": "198.51.100.10", "backend": "ceph-a"}],
            backends={"ceph-a": {"servers": f"127.0.0.1:{port}"}},
        )

    return make


def test_without_probe_keys_it_is_skipped_and_says_how_to_enable_it(node: Callable[[int], NodeConfig]) -> None:
    [check] = check_sse_c(node(9), {}, 0.5, through="rgw")
    assert (check.name, check.status) == ("sse-c", "skip")
    assert check.fix and "s3_probe_access_key and s3_probe_secret_key" in check.fix


def test_rgw_that_trusts_haproxys_header_passes_and_nothing_is_left(node: Callable[[int], NodeConfig]) -> None:
    with s3_stand_in() as s3:
        [check] = check_sse_c(node(s3.port), SECRETS, 2.0, through="rgw")
    assert (check.name, check.status) == ("sse-c rgw ceph-a", "ok"), check
    steps = [(method, path.count("/")) for method, path, _ in s3.seen]
    assert steps == [("PUT", 1), ("PUT", 2), ("GET", 2), ("DELETE", 2), ("DELETE", 1)]
    assert s3.seen[0][1].startswith(f"/{BUCKET_PREFIX}")
    upload = s3.seen[1][2]
    # What ober's HAProxy adds to a request that came over TLS, and a customer key with its MD5.
    assert upload["X-Forwarded-Proto"] == "https" and upload["Forwarded"].endswith(";proto=https")
    assert upload["x-amz-server-side-encryption-customer-algorithm"] == "AES256"
    assert s3.objects == {}


def test_rgw_without_the_setting_is_named_and_the_probe_cleans_up(node: Callable[[int], NodeConfig]) -> None:
    with s3_stand_in(trust_forwarded=False) as s3:
        [check] = check_sse_c(node(s3.port), SECRETS, 2.0, through="rgw")
    assert check.status == "fail"
    assert "refused an SSE-C upload" in check.detail and "400 InvalidRequest" in check.detail
    assert check.fix == TRUST_FORWARDED_FIX and "rgw trust forwarded https = true" in check.fix
    assert [method for method, _, _ in s3.seen] == ["PUT", "PUT", "DELETE"]  # the bucket it made is gone
    assert s3.objects == {}


def test_wrong_probe_keys_are_named_never_shown(node: Callable[[int], NodeConfig]) -> None:
    with s3_stand_in(access_key="someone-else") as s3:
        [check] = check_sse_c(node(s3.port), SECRETS, 2.0, through="rgw")
    assert check.status == "fail" and "refused the probe's S3 keys (403 InvalidAccessKeyId)" in check.detail
    assert check.fix and "s3_probe_access_key" in check.fix
    assert SECRETS["s3_probe_secret_key"] not in f"{check.detail} {check.fix}"


def test_an_unreachable_vip_is_a_failure_naming_the_step(node: Callable[[int], NodeConfig]) -> None:
    # The VIP probe goes to port 443 of each VIP; 127.0.0.1 stands in for a VIP nothing serves.
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 443)) == 0:
            pytest.skip("something serves 127.0.0.1:443 on this machine")
    config = node(9)
    config = dataclasses.replace(config, vips=(dataclasses.replace(config.vips[0], address="127.0.0.1"),))
    [check] = check_sse_c(config, SECRETS, 0.5, through="vip")
    assert (check.name, check.status) == ("sse-c vip s3-a", "fail")
    assert check.detail == "create bucket via VIP 127.0.0.1: connection refused"
