"""A small signed S3 client for ``ober test``/``ober doctor``: AWS Signature V4 over ``http.client``, nothing more.

ober's own dependencies hold no S3 SDK, and a probe needs only a handful of requests: create a throwaway bucket,
upload and download one object with a customer key (SSE-C), delete both. `sse_c_round_trip` does exactly that
and says which step failed and how; it never raises for what the server answered.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import secrets
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

REGION = "us-east-1"
SERVICE = "s3"
ALGORITHM = "AWS4-HMAC-SHA256"
PROBE_BODY_BYTES = 64
# A bucket name S3 accepts (lowercase, digits, '-', 3-63 characters) that says who made it.
BUCKET_PREFIX = "ober-probe-"
PROBE_KEY = "sse-c-probe"


@dataclass(frozen=True)
class Credentials:
    """An S3 user's access key and secret key."""

    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Endpoint:
    """Where to send S3 requests and how.

    Attributes:
        address: the IPv4 address to connect to.
        port: the TCP port.
        host: the ``Host`` header (what SigV4 signs); path-style requests need no more than an address.
        tls: whether to speak TLS; ``context`` then says how (default: no verification).
        context: the TLS context.
        headers: extra headers sent with every request, unsigned (e.g. the ``X-Forwarded-Proto`` a proxy adds).
    """

    address: str
    port: int
    host: str
    tls: bool = False
    context: ssl.SSLContext | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Answer:
    """What S3 answered: the status, the S3 error code and message (empty on success) and the body."""

    status: int
    code: str = ""
    message: str = ""
    body: bytes = b""

    def __str__(self) -> str:
        what = f"{self.status} {self.code}".strip()
        return f"{what}: {self.message}" if self.message else what


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign_v4(
    method: str,
    path: str,
    headers: Mapping[str, str],
    payload_sha256: str,
    credentials: Credentials,
    now: datetime,
    *,
    query: Mapping[str, str] | None = None,
    region: str = REGION,
) -> str:
    """The ``Authorization`` header of an S3 request signed with AWS Signature Version 4.

    Args:
        method: the HTTP method.
        path: the request path, not yet URI-encoded (S3 encodes each character once, keeping ``/``).
        headers: every header to sign, ``host`` and ``x-amz-date`` among them (names in any case).
        payload_sha256: the hex SHA-256 of the body, as sent in ``x-amz-content-sha256``.
        credentials: the keys to sign with.
        now: the request time, the same as in ``x-amz-date``.
        query: query parameters, not yet encoded.
        region: the region of the credential scope.
    """
    canonical_query = "&".join(
        f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}" for name, value in sorted((query or {}).items())
    )
    named = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed = ";".join(sorted(named))
    canonical_headers = "".join(f"{name}:{named[name]}\n" for name in sorted(named))
    request = "\n".join([method, quote(path, safe="/-_.~"), canonical_query, canonical_headers, signed, payload_sha256])
    day = now.strftime("%Y%m%d")
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, now.strftime("%Y%m%dT%H%M%SZ"), scope, hashlib.sha256(request.encode()).hexdigest()]
    )
    key = _hmac(f"AWS4{credentials.secret_key}".encode(), day)
    for part in (region, SERVICE, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"


def s3_error(body: bytes) -> tuple[str, str]:
    """The ``Code`` and ``Message`` of an S3 error document ("" where there is none)."""
    try:
        root = ET.fromstring(body)  # noqa: S314 - a small reply from the RGW we asked, not a file from anywhere
    except ET.ParseError:
        return "", ""
    return (root.findtext("Code") or "").strip(), (root.findtext("Message") or "").strip()


def request(
    endpoint: Endpoint,
    credentials: Credentials,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    timeout: float,
) -> Answer:
    """One signed S3 request.

    Raises:
        OSError: the connection failed (refused, reset, timed out, TLS).
        http.client.HTTPException: the answer was not HTTP.
    """
    now = datetime.now(UTC)
    payload = hashlib.sha256(body).hexdigest()
    signed = {
        **(headers or {}),
        "Host": endpoint.host,
        "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"),
        "x-amz-content-sha256": payload,
    }
    sent = {**signed, "Authorization": sign_v4(method, path, signed, payload, credentials, now)}
    sent.update(endpoint.headers or {})
    if endpoint.tls:
        context = endpoint.context or _unverified()
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            endpoint.address, endpoint.port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(endpoint.address, endpoint.port, timeout=timeout)
    try:
        connection.request(method, quote(path, safe="/-_.~"), body=body or None, headers=sent)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    code, message = s3_error(data) if response.status >= 300 else ("", "")
    return Answer(response.status, code, message, data)


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def sse_c_headers(key: bytes) -> dict[str, str]:
    """The three headers that give S3 a customer key (SSE-C) for an upload or a download."""
    return {
        "x-amz-server-side-encryption-customer-algorithm": "AES256",
        "x-amz-server-side-encryption-customer-key": base64.b64encode(key).decode(),
        "x-amz-server-side-encryption-customer-key-MD5": base64.b64encode(hashlib.md5(key).digest()).decode(),  # noqa: S324 - S3 asks for MD5
    }


@dataclass(frozen=True)
class RoundTrip:
    """How an SSE-C round trip went.

    Attributes:
        step: the step that failed (``create bucket``, ``upload``, ``download``, ``compare``), or None when all
            passed.
        answer: what S3 answered at that step (None for ``compare`` or a connection failure).
        error: the connection error, if that is what failed.
        leftover: a bucket or object the clean-up could not delete (its path), else None.
    """

    step: str | None
    answer: Answer | None = None
    error: str | None = None
    leftover: str | None = None


def sse_c_round_trip(endpoint: Endpoint, credentials: Credentials, timeout: float) -> RoundTrip:
    """Create a throwaway bucket, upload an object with a random customer key, download it with the key, compare.

    The object and the bucket are deleted afterwards whatever happened; what could not be is in ``leftover``.
    """
    bucket = f"/{BUCKET_PREFIX}{secrets.token_hex(8)}"
    obj = f"{bucket}/{PROBE_KEY}"
    key = os.urandom(32)
    data = os.urandom(PROBE_BODY_BYTES)
    made: list[str] = []
    outcome: RoundTrip
    try:
        outcome = _steps(endpoint, credentials, timeout, bucket, obj, key, data, made)
    except (OSError, http.client.HTTPException) as exc:
        return RoundTrip(_current(made), error=_reason(exc), leftover=_clean(endpoint, credentials, timeout, made))
    return RoundTrip(outcome.step, outcome.answer, outcome.error, _clean(endpoint, credentials, timeout, made))


def _current(made: list[str]) -> str:
    return ("create bucket", "upload", "download")[min(len(made), 2)]


def _steps(
    endpoint: Endpoint,
    credentials: Credentials,
    timeout: float,
    bucket: str,
    obj: str,
    key: bytes,
    data: bytes,
    made: list[str],
) -> RoundTrip:
    answer = request(endpoint, credentials, "PUT", bucket, timeout=timeout)
    if answer.status != 200:
        return RoundTrip("create bucket", answer)
    made.append(bucket)
    answer = request(endpoint, credentials, "PUT", obj, body=data, headers=sse_c_headers(key), timeout=timeout)
    if answer.status != 200:
        return RoundTrip("upload", answer)
    made.append(obj)
    answer = request(endpoint, credentials, "GET", obj, headers=sse_c_headers(key), timeout=timeout)
    if answer.status != 200:
        return RoundTrip("download", answer)
    if answer.body != data:
        return RoundTrip("compare", answer)
    return RoundTrip(None)


def _clean(endpoint: Endpoint, credentials: Credentials, timeout: float, made: list[str]) -> str | None:
    """Delete what the probe made (newest first); the first path that could not be deleted, or None."""
    for path in reversed(made):
        try:
            answer = request(endpoint, credentials, "DELETE", path, timeout=timeout)
        except (OSError, http.client.HTTPException):
            return path
        if answer.status not in (200, 204, 404):
            return path
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return exc.strerror or exc.__class__.__name__
    return f"no HTTP answer ({exc.__class__.__name__})"
