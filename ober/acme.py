"""An ACME (RFC 8555) client for the workstation: account, order, HTTP-01 through a solver, finalize, download.

Only the standard library's urllib and ``cryptography`` (ober already needs it): no new dependency. The account key
is EC P-256 and every request is a JWS signed with ES256 (RFC 7515/7518), ``kid`` once the account exists.

Who answers the challenges is not this module's business: a :class:`Solver` is told each HTTP-01 token and its key
authorization before the server is asked to validate, and told to forget them afterwards, whatever happened
(``ober.remote.acmefleet`` puts them on every node of an ECMP fleet). Servers misbehave in known ways, handled here:
``badNonce`` is retried with the fresh nonce the error carries (servers reject nonces at random, RFC 8555 6.5),
``Retry-After`` is honoured while polling, and every wait is bounded. A problem document from the server becomes
one line naming the ACME error type and its detail; key material never appears in an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

from ober import __version__
from ober.errors import OberError

HTTP_TIMEOUT = 30.0
"""Seconds one HTTP request to the ACME server may take."""
POLL_TIMEOUT = 120.0
"""Seconds an authorization or an order may take to become valid."""
POLL_INTERVAL = 1.0
MAX_RETRY_AFTER = 30.0
"""A server's Retry-After is honoured up to this many seconds per wait (the whole wait stays bounded)."""
NONCE_RETRIES = 10
"""badNonce answers retried per request (a server may reject any nonce, RFC 8555 6.5; Pebble rejects a share)."""
MAX_BODY = 1 << 20
JOSE = "application/jose+json"
PEM_CHAIN = "application/pem-certificate-chain"


class AcmeError(OberError):
    """The ACME server refused or failed, or could not be reached (``problem``: the ACME error type, if any)."""

    def __init__(self, message: str, fix: str | None = None, problem: str | None = None) -> None:
        super().__init__(message, fix)
        self.problem = problem


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url`."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


# --- keys and JWS -----------------------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key (account or certificate)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """``key`` as unencrypted PKCS#8 PEM (written only to files of mode 600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_key(pem: str | bytes) -> ec.EllipticCurvePrivateKey:
    """An EC P-256 private key from PEM.

    Raises:
        OberError: not one.
    """
    try:
        key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    except (ValueError, TypeError):
        raise OberError("not a readable private key", "remove the file: a new account key is made") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise OberError("the account key is not EC P-256", "remove the file: a new account key is made")
    return key


def jwk(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 key (RFC 7518 6.2), members in thumbprint order."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    numbers = public.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def thumbprint(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    """The JWK thumbprint (RFC 7638): SHA-256 of the required members, sorted, without whitespace."""
    return b64url(hashlib.sha256(_json_bytes(jwk(key))).digest())


def key_authorization(token: str, key: ec.EllipticCurvePrivateKey) -> str:
    """What the HTTP-01 resource must hold (RFC 8555 8.1): the token, a dot, the account key's thumbprint."""
    return f"{token}.{thumbprint(key)}"


def sign_es256(key: ec.EllipticCurvePrivateKey, signing_input: bytes) -> bytes:
    """An ES256 signature: R and S as 32 big-endian bytes each (RFC 7518 3.4), not DER."""
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify_es256(public: ec.EllipticCurvePublicKey, signing_input: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (R || S) is ``public``'s ES256 signature of ``signing_input``."""
    from cryptography.exceptions import InvalidSignature

    if len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def jws(key: ec.EllipticCurvePrivateKey, protected: Mapping[str, Any], payload: Any | None) -> dict[str, str]:
    """A flattened JWS (RFC 7515 7.2.2); ``payload`` None is the empty payload of a POST-as-GET (RFC 8555 6.3)."""
    header = b64url(_json_bytes({"alg": "ES256", **protected}))
    body = "" if payload is None else b64url(_json_bytes(payload))
    signature = sign_es256(key, f"{header}.{body}".encode())
    return {"protected": header, "payload": body, "signature": b64url(signature)}


def csr_der(key: ec.EllipticCurvePrivateKey, domains: Sequence[str]) -> bytes:
    """A CSR for ``domains`` (the first also the subject's CN), signed by ``key``, DER."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# --- transport --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One HTTP answer of the ACME server."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object.

        Raises:
            AcmeError: it is not one.
        """
        try:
            data = json.loads(self.body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise AcmeError(f"the ACME server answered HTTP {self.status} with something that is not JSON")
        return data

    def header(self, name: str) -> str | None:
        """A header, by name in any case."""
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)


Transport = Callable[[str, str, bytes | None, Mapping[str, str]], Reply]
"""(method, url, body, headers) → reply; raises AcmeError when the server cannot be reached."""


def urllib_transport(ca_bundle: str | None = None, timeout: float = HTTP_TIMEOUT) -> Transport:
    """HTTPS with the standard library, trusting ``ca_bundle`` (a private ACME server's CA) or the system's CAs."""
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise OberError(
            f"cannot read the ACME CA bundle {ca_bundle}: {getattr(exc, 'strerror', None) or exc}",
            "give a PEM file of CA certificates (certificates.acme.ca_bundle or --ca-bundle)",
        ) from None

    def send(method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Reply:
        if not url.startswith("https://"):
            raise AcmeError(f"the ACME server sent a URL that is not https: {url[:200]}")
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:  # noqa: S310
                return Reply(answer.status, dict(answer.headers.items()), answer.read(MAX_BODY))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, dict(exc.headers.items()), exc.read(MAX_BODY))
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise AcmeError(
                    f"the ACME server {_host(url)} has a TLS certificate this machine does not trust: "
                    f"{reason.verify_message}",
                    "for a private ACME server give its CA: certificates.acme.ca_bundle or --ca-bundle",
                ) from None
            raise AcmeError(
                f"the ACME server {_host(url)} cannot be reached: {reason}",
                "check certificates.acme.directory and this machine's network",
            ) from None
        except (TimeoutError, OSError) as exc:
            raise AcmeError(
                f"the ACME server {_host(url)} cannot be reached: {exc}",
                "check certificates.acme.directory and this machine's network",
            ) from None

    return send


def _host(url: str) -> str:
    return url.split("/")[2] if url.count("/") >= 2 else url


def retry_after(reply: Reply, default: float, now: Callable[[], float] = time.time) -> float:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), bounded; ``default`` without."""
    value = (reply.header("Retry-After") or "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now()
        except (TypeError, ValueError):
            return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --- the client -------------------------------------------------------------------------------------------------


class Solver(Protocol):
    """Who answers HTTP-01 challenges: told each token before validation, and to forget them afterwards."""

    def present(self, challenges: Sequence[tuple[str, str]]) -> None:
        """Serve each (token, key authorization); raise OberError if any cannot be served everywhere needed."""
        ...

    def cleanup(self, tokens: Sequence[str]) -> None:
        """Stop serving ``tokens`` (called however the validation ended); must not raise."""
        ...


@dataclass
class Issued:
    """A certificate the ACME server issued: the chain (leaf first) and its new private key, as PEM."""

    chain: str
    key: str
    domains: tuple[str, ...]

    @property
    def pem(self) -> str:
        """Certificate, chain, then key: what HAProxy's ``crt`` reads (never log or print it)."""
        return self.chain.rstrip("\n") + "\n" + self.key


@dataclass
class Client:
    """One ACME account at one directory URL.

    ``transport``, ``sleep`` and ``clock`` are replaceable (tests); ``kid`` is the account URL once known.
    """

    directory_url: str
    key: ec.EllipticCurvePrivateKey
    transport: Transport
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    poll_timeout: float = POLL_TIMEOUT
    kid: str | None = None
    log: Callable[[str], None] = lambda _line: None
    _directory: dict[str, Any] = field(default_factory=dict)
    _nonce: str | None = None

    def directory(self) -> dict[str, Any]:
        """The server's directory (fetched once).

        Raises:
            AcmeError: unreachable, or not an ACME directory.
        """
        if not self._directory:
            reply = self.transport("GET", self.directory_url, None, {"User-Agent": _agent()})
            if reply.status != 200:
                raise AcmeError(
                    f"{self.directory_url} answered HTTP {reply.status}, not an ACME directory",
                    "check certificates.acme.directory",
                )
            data = reply.json()
            if not all(isinstance(data.get(name), str) for name in ("newNonce", "newAccount", "newOrder")):
                raise AcmeError(f"{self.directory_url} is not an ACME directory", "check certificates.acme.directory")
            self._directory = data
        return self._directory

    def _fresh_nonce(self) -> str:
        if self._nonce:
            kept, self._nonce = self._nonce, None
            return kept
        reply = self.transport("HEAD", self.directory()["newNonce"], None, {"User-Agent": _agent()})
        fresh = reply.header("Replay-Nonce")
        if not fresh:
            raise AcmeError(f"the ACME server gave no nonce (HTTP {reply.status})")
        return fresh

    def post(
        self, url: str, payload: Any | None, *, accept: str = "application/json", jwk_header: bool = False
    ) -> Reply:
        """A signed POST (``payload`` None: POST-as-GET); ``badNonce`` retried with the nonce the error brings.

        Raises:
            AcmeError: the server answered with a problem (other than badNonce), or could not be reached.
        """
        for _attempt in range(NONCE_RETRIES):
            protected: dict[str, Any] = {"nonce": self._fresh_nonce(), "url": url}
            if jwk_header or self.kid is None:
                protected["jwk"] = jwk(self.key)
            else:
                protected["kid"] = self.kid
            body = json.dumps(jws(self.key, protected, payload)).encode()
            headers = {"Content-Type": JOSE, "Accept": accept, "User-Agent": _agent()}
            reply = self.transport("POST", url, body, headers)
            self._nonce = reply.header("Replay-Nonce") or None
            if reply.status < 400:
                return reply
            problem = _problem(reply)
            if problem.get("type") == "urn:ietf:params:acme:error:badNonce":
                self.log("the ACME server rejected a nonce (badNonce): retrying with a fresh one")
                continue
            raise _problem_error(reply, problem, url)
        raise AcmeError(f"the ACME server rejected {NONCE_RETRIES} nonces in a row", "try again later")

    def register(self, email: str) -> str:
        """Find or create the account of this key (terms of service agreed); its URL.

        Raises:
            AcmeError: the server refused.
        """
        payload = {"termsOfServiceAgreed": True, "contact": [f"mailto:{email}"]}
        reply = self.post(self.directory()["newAccount"], payload, jwk_header=True)
        location = reply.header("Location")
        if not location:
            raise AcmeError("the ACME server created an account but gave no account URL")
        self.kid = location
        return location

    def _poll(self, url: str, done: Sequence[str], what: str) -> dict[str, Any]:
        """POST-as-GET ``url`` until its status is in ``done`` or ``invalid``; the last object.

        Raises:
            AcmeError: ``invalid``, or not done within ``poll_timeout``.
        """
        deadline = self.clock() + self.poll_timeout
        while True:
            reply = self.post(url, None)
            data = reply.json()
            status = data.get("status")
            if status in done:
                return data
            if status == "invalid":
                raise AcmeError(f"{what} is invalid: {_why_invalid(data)}", problem=_first_problem_type(data))
            if self.clock() >= deadline:
                raise AcmeError(f"{what} still {status} after {self.poll_timeout:g}s", "try again later")
            self.sleep(retry_after(reply, POLL_INTERVAL))

    def issue(self, domains: Sequence[str], solver: Solver) -> Issued:
        """Order a certificate for ``domains``, prove control by HTTP-01 through ``solver``, finalize, download.

        Every token given to ``solver.present`` is passed to ``solver.cleanup`` before this returns or raises.

        Raises:
            AcmeError: the server refused, a challenge failed (its error quoted), or a wait ran out.
            OberError: the solver could not serve a token.
        """
        if self.kid is None:
            raise AcmeError("no ACME account yet", "register first")
        identifiers = [{"type": "dns", "value": domain} for domain in domains]
        reply = self.post(self.directory()["newOrder"], {"identifiers": identifiers})
        order_url = reply.header("Location")
        order = reply.json()
        if not order_url or not isinstance(order.get("authorizations"), list) or not order.get("finalize"):
            raise AcmeError("the ACME server's new order has no URL, authorizations or finalize URL")
        pending: list[tuple[str, str, str]] = []  # (authorization URL, challenge URL, token)
        for authz_url in order["authorizations"]:
            authz = self.post(str(authz_url), None).json()
            if authz.get("status") == "valid":
                continue  # the server remembers this domain for this account (authorization reuse)
            http01 = [c for c in authz.get("challenges", []) if isinstance(c, dict) and c.get("type") == "http-01"]
            name = (authz.get("identifier") or {}).get("value", "?")
            if not http01 or not isinstance(http01[0].get("token"), str) or not http01[0].get("url"):
                raise AcmeError(f"the ACME server offers no HTTP-01 challenge for {name}")
            pending.append((str(authz_url), str(http01[0]["url"]), str(http01[0]["token"])))
        tokens = [token for _authz, _url, token in pending]
        try:
            if pending:
                solver.present([(token, key_authorization(token, self.key)) for token in tokens])
                for _authz, challenge_url, _token in pending:
                    self.post(challenge_url, {})  # "ready": validate now
                for authz_url, _challenge, _token in pending:
                    self._poll(authz_url, ("valid",), f"the authorization {authz_url}")
        finally:
            if pending:
                solver.cleanup(tokens)
        order = self._poll(order_url, ("ready", "valid"), "the order")
        certificate_key = new_key()
        if order.get("status") == "ready":
            self.post(str(order["finalize"]), {"csr": b64url(csr_der(certificate_key, domains))})
            order = self._poll(order_url, ("valid",), "the order")
        certificate_url = order.get("certificate")
        if not isinstance(certificate_url, str):
            raise AcmeError("the ACME server's valid order has no certificate URL")
        chain = self.post(certificate_url, None, accept=PEM_CHAIN).body.decode(errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in chain:
            raise AcmeError("the ACME server's certificate download holds no certificate")
        return Issued(chain=chain, key=key_pem(certificate_key), domains=tuple(domains))


def _agent() -> str:
    return f"ober/{__version__} (+acme)"


def _problem(reply: Reply) -> dict[str, Any]:
    try:
        data = json.loads(reply.body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _problem_error(reply: Reply, problem: Mapping[str, Any], url: str) -> AcmeError:
    kind = str(problem.get("type", "")).removeprefix("urn:ietf:params:acme:error:")
    detail = str(problem.get("detail", ""))[:300] or reply.body.decode(errors="replace")[:200]
    fix = None
    if kind == "rateLimited":
        wait = reply.header("Retry-After")
        fix = f"wait{' ' + wait + ' s' if wait else ''} and try again (the ACME server's rate limit)"
    elif kind in ("accountDoesNotExist", "unauthorized"):
        fix = "check the ACME account (the state directory's account key)"
    return AcmeError(
        f"the ACME server refused ({kind or f'HTTP {reply.status}'}) at {_host(url)}: {detail}",
        fix,
        problem=kind or None,
    )


def _why_invalid(data: Mapping[str, Any]) -> str:
    for challenge in data.get("challenges", []) or []:
        if isinstance(challenge, dict) and isinstance(challenge.get("error"), dict):
            error = challenge["error"]
            return f"{error.get('type', '').removeprefix('urn:ietf:params:acme:error:')}: {error.get('detail', '')}"[
                :400
            ]
    if isinstance(data.get("error"), dict):
        return str(data["error"].get("detail", "no detail"))[:400]
    return "no detail given"


def _first_problem_type(data: Mapping[str, Any]) -> str | None:
    for challenge in data.get("challenges", []) or []:
        if isinstance(challenge, dict) and isinstance(challenge.get("error"), dict):
            return str(challenge["error"].get("type", "")).removeprefix("urn:ietf:params:acme:error:") or None
    return None
