"""The ACME client, the renewal policy, the workstation's state and the fleet's renew, without a real server.

The end-to-end tests against Pebble are in test_acme_pebble.py (a real ACME server) and test_acme_lab.py (the lab
fleet); here a small fake ACME server (RFC 8555's happy path plus the failures under test) and fake nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ober.acme import (
    AcmeError,
    Client,
    Reply,
    b64url,
    b64url_decode,
    jwk,
    jws,
    key_authorization,
    load_key,
    new_key,
    retry_after,
    sign_es256,
    thumbprint,
    urllib_transport,
    verify_es256,
)
from ober.acme_node import add_challenge, check_token, remove_challenges
from ober.certs import CertFacts, cert_facts, placeholder_pem
from ober.config import parse_node_config
from ober.errors import ConfigError, OberError
from ober.inventory import load_inventory
from ober.lab.pebble import free_port
from ober.remote import acmefleet
from ober.remote.acmefleet import State, renewal_due, why_issue
from ober.remote.nodeclient import BadStatus, parse_certificates
from ober.render import paths, render_node
from ober.runner import Result
from tests.conftest import REPO, SECRETS

# RFC 7515 appendix A.3: an ES256 JWS with its key, header, payload and signature.
RFC_X = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
RFC_Y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
RFC_D = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
RFC_HEADER = "eyJhbGciOiJFUzI1NiJ9"
RFC_PAYLOAD = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
RFC_SIGNATURE = "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"


def rfc_key() -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(b64url_decode(RFC_D), "big"), ec.SECP256R1())


def test_es256_against_rfc7515_a3() -> None:
    key = rfc_key()
    # The key's public JWK is the RFC's.
    assert jwk(key) == {"crv": "P-256", "kty": "EC", "x": RFC_X, "y": RFC_Y}
    signing_input = f"{RFC_HEADER}.{RFC_PAYLOAD}".encode()
    # The RFC's signature verifies with our R||S decoding; a flipped bit does not.
    signature = b64url_decode(RFC_SIGNATURE)
    assert verify_es256(key.public_key(), signing_input, signature)
    assert not verify_es256(key.public_key(), signing_input, bytes([signature[0] ^ 1]) + signature[1:])
    # ECDSA is randomised, so ours differs, but it is 64 bytes of R||S and verifies the same way.
    ours = sign_es256(key, signing_input)
    assert len(ours) == 64 and ours != signature and verify_es256(key.public_key(), signing_input, ours)


def test_jws_and_thumbprint() -> None:
    key = rfc_key()
    signed = jws(key, {"nonce": "n1", "url": "https://acme.test/new-order"}, {"a": 1})
    header = json.loads(b64url_decode(signed["protected"]))
    assert header == {"alg": "ES256", "nonce": "n1", "url": "https://acme.test/new-order"}
    assert json.loads(b64url_decode(signed["payload"])) == {"a": 1}
    assert verify_es256(
        key.public_key(), f"{signed['protected']}.{signed['payload']}".encode(), b64url_decode(signed["signature"])
    )
    assert jws(key, {"url": "u"}, None)["payload"] == "", "POST-as-GET has an empty payload"
    # RFC 7638: SHA-256 over the required members in lexical order, no whitespace.
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{RFC_X}","y":"{RFC_Y}"}}'.encode()
    assert thumbprint(key) == b64url(hashlib.sha256(canonical).digest())
    assert key_authorization("tok-en_1234567890ab", key) == f"tok-en_1234567890ab.{thumbprint(key)}"


def test_retry_after() -> None:
    def reply(value: str | None) -> Reply:
        return Reply(200, {"Retry-After": value} if value is not None else {}, b"")

    assert retry_after(reply(None), 1.0) == 1.0
    assert retry_after(reply("3"), 1.0) == 3.0
    assert retry_after(reply("3600"), 1.0) == 30.0, "bounded"
    assert retry_after(reply("soon"), 1.5) == 1.5
    assert retry_after(reply("Wed, 21 Oct 2015 07:28:05 GMT"), 1.0, now=lambda: 1445412480.0) == 5.0


# --- when to renew ------------------------------------------------------------------------------------------------

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def facts(
    lifetime_days: float, left_days: float, *, placeholder: bool = False, names: tuple[str, ...] = ()
) -> CertFacts:
    end = NOW + timedelta(days=left_days)
    return CertFacts(
        "s3", "CA", "01", end - timedelta(days=lifetime_days), end, names or ("s3.example.com",), placeholder
    )


@pytest.mark.parametrize(
    ("lifetime", "left", "due"),
    [
        (90, 31, False),  # Let's Encrypt: renewed from 30 days
        (90, 29.9, True),
        (6, 2.1, False),  # short-lived: a third of 6 days
        (6, 1.9, True),
        (1826, 31, False),  # Pebble's 5 years: 30 days, not a third
        (1826, 29, True),
        (90, -1, True),
    ],
)
def test_renewal_due(lifetime: float, left: float, due: bool) -> None:
    reason = renewal_due(facts(lifetime, left), NOW)
    assert (reason is not None) == due, reason
    if left < 0:
        assert reason is not None and "expired" in reason


def test_why_issue() -> None:
    acme = parse_node_config(_node_data()).certificates.acme
    assert acme is not None
    fresh = ("pem", facts(90, 60, names=("s3.example.com", "s3-b.example.com")))
    assert why_issue(acme, fresh, False, NOW) is None
    assert why_issue(acme, fresh, True, NOW) == "forced (--force)"
    assert why_issue(acme, None, False, NOW) == "no certificate yet"
    assert "s3-b.example.com" in (why_issue(acme, ("pem", facts(90, 60, names=("s3.example.com",))), False, NOW) or "")
    assert renewal_due(facts(90, 60, placeholder=True), NOW) == "a placeholder, not an ACME certificate"


def _node_data(**certificates: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(__import__("yaml").safe_load((REPO / "tests" / "data" / "node.yaml").read_text())))
    data["certificates"] = {
        "acme": {"email": "ops@example.com", "domains": ["s3.example.com", "s3-b.example.com"]},
        "http": "redirect",
        **certificates,
    }
    return dict(data)


def test_acme_config() -> None:
    config = parse_node_config(
        _node_data(acme={"email": "o@example.com", "domains": "s3.x", "ca_bundle": "/etc/ca.pem"})
    )
    assert config.certificates.acme is not None and config.certificates.acme.ca_bundle == "/etc/ca.pem"
    with pytest.raises(ConfigError, match=r"certificates\.http: 'off'") as refused:
        parse_node_config(_node_data(http="off"))
    assert "redirect" in (refused.value.fix or "")


# --- the workstation's state ------------------------------------------------------------------------------------


def test_state_is_private_and_kept(tmp_path: Path) -> None:
    state = State(tmp_path / "acme" / "lab")
    key = state.account_key()
    assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state.dir / "account.key").stat().st_mode) == 0o600
    assert thumbprint(State(state.dir).account_key()) == thumbprint(key), "the same account next time"
    state.save_account_url("https://acme.test/dir", "https://acme.test/acct/1")
    assert State(state.dir).account_url("https://acme.test/dir") == "https://acme.test/acct/1"
    assert state.account_url("https://other.test/dir") is None
    (state.dir / "account.key").chmod(0o644)
    with pytest.raises(OberError, match="readable by others") as exposed:
        State(state.dir).account_key()
    assert "PRIVATE" not in str(exposed.value)


def test_state_dir_defaults(tmp_path: Path) -> None:
    assert acmefleet.default_state_dir("lab", {"OBER_ACME_STATE": "/x/y"}) == Path("/x/y")
    assert acmefleet.default_state_dir("lab", {"XDG_STATE_HOME": "/s"}) == Path("/s/ober/acme/lab")
    assert acmefleet.default_state_dir("lab", {}) == Path.home() / ".local/state/ober/acme/lab"


# --- a fake ACME server -----------------------------------------------------------------------------------------


class FakeAcme:
    """RFC 8555's flow in memory; ``reject_nonces`` first nonces are refused (badNonce), ``invalid`` fails HTTP-01.

    ``validate(token) -> the key authorization served`` is asked when a challenge is answered, like a real VA.
    """

    BASE = "https://acme.test"

    def __init__(self, *, reject_nonces: int = 0, invalid: bool = False) -> None:
        self.reject_nonces = reject_nonces
        self.invalid = invalid
        self.nonce = 0
        self.seen: list[str] = []
        self.authz: dict[str, dict[str, Any]] = {}
        self.order: dict[str, Any] = {}
        self.account_jwk: dict[str, str] | None = None
        self.served: Mapping[str, str] = {}
        self.ca_key = ec.generate_private_key(ec.SECP256R1())

    def _next_nonce(self) -> str:
        self.nonce += 1
        return f"nonce-{self.nonce}"

    def _reply(self, status: int, body: Any, **headers: str) -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Reply(status, {"Replay-Nonce": self._next_nonce(), **headers}, data)

    def __call__(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Reply:
        path = url.removeprefix(self.BASE)
        self.seen.append(f"{method} {path}")
        if method == "GET":  # the directory, at whatever URL the client was given
            return Reply(
                200, {}, json.dumps({k: f"{self.BASE}/{k}" for k in ("newNonce", "newAccount", "newOrder")}).encode()
            )
        if method == "HEAD":
            return self._reply(200, b"")
        assert body is not None and headers["Content-Type"] == "application/jose+json"
        signed = json.loads(body)
        protected = json.loads(b64url_decode(signed["protected"]))
        assert protected["url"] == url and protected["alg"] == "ES256"
        if self.reject_nonces:
            self.reject_nonces -= 1
            return self._reply(400, {"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale"})
        key = protected.get("jwk") or self.account_jwk
        assert key is not None
        public = ec.EllipticCurvePublicNumbers(
            int.from_bytes(b64url_decode(key["x"]), "big"),
            int.from_bytes(b64url_decode(key["y"]), "big"),
            ec.SECP256R1(),
        ).public_key()
        assert verify_es256(
            public, f"{signed['protected']}.{signed['payload']}".encode(), b64url_decode(signed["signature"])
        ), "every request is signed by the account key"
        payload = json.loads(b64url_decode(signed["payload"])) if signed["payload"] else None
        return self._route(path, payload, protected)

    def _route(self, path: str, payload: Any, protected: dict[str, Any]) -> Reply:
        if path == "/newAccount":
            self.account_jwk = protected["jwk"]
            return self._reply(201, {"status": "valid"}, Location=f"{self.BASE}/acct/1")
        assert protected.get("kid") == f"{self.BASE}/acct/1", "kid once the account exists"
        if path == "/newOrder":
            names = [identifier["value"] for identifier in payload["identifiers"]]
            for number, name in enumerate(names):
                token = f"token{number}-abcdefghijklmnopqrstuvwxyz"
                self.authz[f"/authz/{number}"] = {
                    "status": "pending",
                    "identifier": {"type": "dns", "value": name},
                    "challenges": [
                        {"type": "dns-01", "url": f"{self.BASE}/chall/dns{number}", "token": "x"},
                        {"type": "http-01", "url": f"{self.BASE}/chall/{number}", "token": token},
                    ],
                }
            self.order = {
                "status": "pending",
                "names": names,
                "authorizations": [f"{self.BASE}{p}" for p in self.authz],
                "finalize": f"{self.BASE}/finalize",
            }
            return self._reply(201, self.order, Location=f"{self.BASE}/order/1")
        if path.startswith("/authz/"):
            return self._reply(200, self.authz[path])
        if path.startswith("/chall/"):
            authz = self.authz[f"/authz/{path.rsplit('/', 1)[1]}"]
            challenge = authz["challenges"][1]
            served = self.served.get(challenge["token"])
            good = not self.invalid and served == key_authorization(challenge["token"], KEY_OF[0])
            authz["status"] = "valid" if good else "invalid"
            if not good:
                challenge["error"] = {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "wrong answer"}
            return self._reply(200, challenge)
        if path == "/order/1":
            if self.order["status"] == "pending" and all(a["status"] == "valid" for a in self.authz.values()):
                self.order["status"] = "ready"
            return self._reply(200, self.order, **{"Retry-After": "0"})
        if path == "/finalize":
            assert self.order["status"] == "ready"
            csr = x509.load_der_x509_csr(b64url_decode(payload["csr"]))
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.DNSName) == self.order["names"]
            self.issued = self._certificate(csr)
            self.order.update(status="valid", certificate=f"{self.BASE}/cert/1")
            return self._reply(200, self.order)
        if path == "/cert/1":
            return self._reply(200, self.issued.encode(), **{"Content-Type": "application/pem-certificate-chain"})
        return self._reply(404, {"type": "urn:ietf:params:acme:error:malformed", "detail": path})

    def _certificate(self, csr: x509.CertificateSigningRequest) -> str:
        now = datetime.now(UTC)
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake ACME CA")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(issuer)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=90))
            .add_extension(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode()


KEY_OF: list[ec.EllipticCurvePrivateKey] = []


class DictSolver:
    def __init__(self) -> None:
        self.served: dict[str, str] = {}
        self.presented: list[str] = []
        self.cleaned: list[str] = []

    def present(self, challenges: Sequence[tuple[str, str]]) -> None:
        for token, key_authz in challenges:
            self.served[token] = key_authz
            self.presented.append(token)

    def cleanup(self, tokens: Sequence[str]) -> None:
        for token in tokens:
            self.served.pop(token, None)
            self.cleaned.append(token)


def client_for(server: FakeAcme) -> Client:
    key = new_key()
    KEY_OF[:] = [key]
    return Client(f"{FakeAcme.BASE}/dir", key, server, sleep=lambda _s: None)


def test_issue_with_nonces_rejected() -> None:
    server = FakeAcme(reject_nonces=2)
    solver = DictSolver()
    server.served = solver.served
    client = client_for(server)
    assert client.register("ops@example.com") == f"{FakeAcme.BASE}/acct/1"
    issued = client.issue(["s3.example.com", "s3-b.example.com"], solver)
    assert cert_facts(issued.chain).names == ("s3.example.com", "s3-b.example.com")
    assert solver.presented == solver.cleaned and len(solver.presented) == 2 and not solver.served
    # The key is new, matches the certificate, and is not the account's.
    cert_key = load_key(issued.key)
    assert cert_key.public_key() == x509.load_pem_x509_certificate(issued.chain.encode()).public_key()
    assert thumbprint(cert_key) != thumbprint(KEY_OF[0])
    assert server.seen.count("POST /newAccount") == 3, "two badNonce answers, each retried"


def test_invalid_challenge_cleans_up_and_says_why() -> None:
    server = FakeAcme(invalid=True)
    solver = DictSolver()
    server.served = solver.served
    client = client_for(server)
    client.register("ops@example.com")
    with pytest.raises(AcmeError, match="invalid: unauthorized: wrong answer") as failed:
        client.issue(["s3.example.com"], solver)
    assert failed.value.problem == "unauthorized"
    assert solver.cleaned == solver.presented and not solver.served, "tokens gone however it ended"
    assert "POST /finalize" not in server.seen


def test_unreachable_and_untrusted_servers() -> None:
    port = free_port()  # nothing listens there
    client = Client(f"https://127.0.0.1:{port}/dir", new_key(), urllib_transport())
    with pytest.raises(AcmeError, match=f"127.0.0.1:{port} cannot be reached") as unreachable:
        client.directory()
    assert "certificates.acme.directory" in (unreachable.value.fix or "")
    with pytest.raises(OberError, match="cannot read the ACME CA bundle"):
        urllib_transport("/nonexistent/ca.pem")
    with pytest.raises(AcmeError, match="not https"):
        urllib_transport()("GET", "http://acme.test/dir", None, {})


# --- the node's challenges (runtime API faked: the real HAProxy is in test_acme_pebble.py) --------------------------


class FakeRuntime:
    def __init__(self, config: Any) -> None:
        self.name = paths(config)["acme_map"]
        self.entries: dict[str, str] = {}
        self.commands: list[str] = []

    def __call__(self, command: str) -> str:
        self.commands.append(command)
        words = command.split()
        if command == "show map":
            return f"# id (file) description\n1 ({self.name}) pattern loaded from file '{self.name}'\n"
        if words[:2] == ["show", "map"]:
            return "".join(f"0x55d0 {token} {value}\n" for token, value in self.entries.items())
        if words[:2] in (["add", "map"], ["set", "map"]):
            self.entries[words[3]] = words[4]
            return ""
        if words[:2] == ["del", "map"]:
            return "" if self.entries.pop(words[3], None) else "Key not found.\n"
        raise AssertionError(command)


def test_challenges_through_the_runtime_api() -> None:
    config = parse_node_config(_node_data())
    runtime = FakeRuntime(config)
    token = "tok_abcdefghijklmnopqrstuv"
    key_authz = f"{token}.{thumbprint(new_key())}"
    assert add_challenge(config, token, key_authz, runtime)
    assert not add_challenge(config, token, key_authz, runtime), "already there: nothing sent"
    assert runtime.entries == {token: key_authz}
    assert remove_challenges(config, [token], runtime) == [token] and not runtime.entries
    assert remove_challenges(config, [token], runtime) == []
    with pytest.raises(ConfigError, match="not an ACME token"):
        check_token("a b; show ssl cert")
    with pytest.raises(ConfigError, match=r"TOKEN\.THUMBPRINT"):
        add_challenge(config, token, f"other_abcdefghijklmnop.{thumbprint(new_key())}", runtime)
    plain = parse_node_config({**_node_data(), "certificates": {"pem": "/opt/ober/etc/certs/s3.pem"}})
    with pytest.raises(ConfigError, match="not from ACME"):
        add_challenge(plain, token, key_authz, runtime)


def test_rendered_map_is_empty_and_rules_precede_the_redirect() -> None:
    rendered = render_node(parse_node_config(_node_data()), SECRETS)
    config = rendered.file("/opt/ober/etc/haproxy.cfg").content
    map_file = rendered.file("/opt/ober/etc/acme-challenges.map")
    assert all(line.startswith("#") for line in map_file.content.splitlines()), "no token on disk"
    frontend = config.split("frontend fe_s3-a", 1)[1].split("\nfrontend ", 1)[0]
    answer = frontend.index("acme-challenges.map")
    assert answer < frontend.index("redirect scheme https"), "the challenge is answered, not redirected"
    assert answer < frontend.index("default_backend"), "never passed to RGW"


# --- the node's certificate facts through status --------------------------------------------------------------


def test_certificate_documents_are_parsed_bounded() -> None:
    text = placeholder_pem(["s3.example.com"])
    doc = {"path": "/opt/ober/etc/certs/acme/ober-acme.pem", **cert_facts(text).as_dict()}
    [cert] = parse_certificates([doc])
    assert cert.placeholder and cert.names == ("s3.example.com",) and cert.days_left and cert.days_left > 80
    with pytest.raises(BadStatus):
        parse_certificates({"path": "x"})
    assert "PRIVATE" not in json.dumps(doc)


# --- the fleet's renew, with fake nodes ---------------------------------------------------------------------------


class FakeNode:
    """Answers ``ober certs show|challenge|install`` like a node; records what it was sent."""

    def __init__(self, name: str, served: str | None = None, refuse_install: bool = False) -> None:
        self.name = name
        self.serial = served
        self.tokens: dict[str, str] = {}
        self.ran: list[list[str]] = []
        self.uploads: dict[str, bytes] = {}
        self.refuse_install = refuse_install

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        argv = list(argv)
        self.ran.append(argv)
        if argv[0] == "rm":
            self.uploads.pop(argv[-1], None)
            return Result(0)
        verb = argv[2:5]
        if verb[:2] == ["certs", "show"]:
            cert = {"path": "/opt/ober/etc/certs/acme/ober-acme.pem", "serial": self.serial, "days_left": 10.0}
            return Result(0, json.dumps({"certificates": [cert]}))
        if verb == ["certs", "challenge", "add"]:
            self.tokens[argv[-2]] = argv[-1]
            return Result(0, json.dumps({"token": argv[-2], "added": True}))
        if verb == ["certs", "challenge", "remove"]:
            gone = [token for token in argv[7:] if self.tokens.pop(token, None)]
            return Result(0, json.dumps({"removed": gone}))
        if verb[:2] == ["certs", "install"]:
            if self.refuse_install:
                return Result(1, json.dumps({"error": "certificate refused: expired", "fix": "x"}))
            facts_ = cert_facts(self.uploads[argv[-1]].decode())
            self.serial = facts_.serial
            served = {"100.64.100.10": facts_.serial, "100.64.100.20": facts_.serial}
            return Result(0, json.dumps({"action": "installed", "certificate": facts_.as_dict(), "served": served}))
        raise AssertionError(argv)

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        assert mode == 0o600, "the certificate's key is a secret"
        self.uploads[remote] = data

    def close(self) -> None:
        return None


class FakeSession:
    def __init__(self, nodes: dict[str, FakeNode], unreachable: Sequence[str] = ()) -> None:
        self.connections = {name: node for name, node in nodes.items() if name not in unreachable}
        self.lock = type("Lock", (), {"ensure": lambda self: None})()

    def remote(self, node: Any) -> FakeNode:
        if node.name not in self.connections:
            raise OberError(f"{node.name}: unreachable")
        return self.connections[node.name]


def fake_session(nodes: dict[str, FakeNode], unreachable: Sequence[str] = ()) -> Any:
    """A FakeSession where renew wants a Session."""
    return FakeSession(nodes, unreachable)


@pytest.fixture
def acme_inventory(tmp_path: Path) -> Path:
    target = tmp_path / "site.yaml"
    text = (REPO / "inventory" / "example.yaml").read_text()
    text = text.replace(
        "    pem: /opt/ober/etc/certs/s3.pem\n", "    acme: {email: ops@example.com, domains: s3.example.com}\n"
    )
    target.write_text(text)
    return target


def fleet(acme_inventory: Path, **special: FakeNode) -> tuple[Any, dict[str, FakeNode]]:
    inventory = load_inventory(acme_inventory)
    nodes = {node.name: special.get(node.name, FakeNode(node.name)) for node in inventory.nodes}
    return inventory, nodes


class FakeServerSolving(FakeAcme):
    """A fake ACME server whose validator reads the tokens from ONE node: the one ECMP sends it to."""

    def __init__(self, nodes: dict[str, FakeNode], lands_on: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nodes, self.lands_on = nodes, lands_on

    @property
    def served(self) -> Mapping[str, str]:
        return self.nodes[self.lands_on].tokens

    @served.setter
    def served(self, _value: Mapping[str, str]) -> None:
        return None


def test_renew_solves_on_every_node_and_pushes_one_at_a_time(acme_inventory: Path, tmp_path: Path) -> None:
    inventory, nodes = fleet(acme_inventory)
    state = State(tmp_path / "state")
    server = FakeServerSolving(nodes, lands_on="node03")  # any node may get it: the last but one here
    KEY_OF[:] = [state.account_key()]
    session = fake_session(nodes)
    lines: list[str] = []
    result = acmefleet.renew(
        session,
        inventory,
        inventory.nodes,
        state,
        transport=server,
        progress=lines.append,
    )
    assert result.ok and result.reason == "no certificate yet" and result.issued is not None
    assert [step.node for step in result.steps] == ["node01", "node02", "node03", "node04"]
    assert all(node.serial == result.issued.serial for node in nodes.values())
    assert all(not node.tokens and not node.uploads for node in nodes.values()), "tokens and staged files gone"
    for node in nodes.values():
        verbs = [" ".join(argv[2:5] if argv[3] == "challenge" else argv[2:4]) for argv in node.ran if argv[0] != "rm"]
        assert verbs.index("certs challenge add") < verbs.index("certs challenge remove") < verbs.index("certs install")
    saved = state.certificate()
    assert saved is not None and saved[1].serial == result.issued.serial
    assert stat.S_IMODE(state.certificate_path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in json.dumps(result.to_dict()) + "".join(lines)
    # Run again: not due, nothing ordered, every node already serves it.
    again = acmefleet.renew(session, inventory, inventory.nodes, state, transport=server)
    assert again.reason is None and again.issued is None and all("already" in s.detail for s in again.steps)


def test_renew_invalid_challenge_removes_tokens_everywhere_and_pushes_nothing(
    acme_inventory: Path, tmp_path: Path
) -> None:
    inventory, nodes = fleet(acme_inventory)
    state = State(tmp_path / "state")
    server = FakeServerSolving(nodes, lands_on="node02", invalid=True)
    KEY_OF[:] = [state.account_key()]
    with pytest.raises(AcmeError, match="invalid"):
        acmefleet.renew(fake_session(nodes), inventory, inventory.nodes, state, transport=server)
    for node in nodes.values():
        assert any(argv[2:5] == ["certs", "challenge", "add"] for argv in node.ran)
        assert not node.tokens, f"{node.name} still answers a token"
        assert not node.uploads and not any(argv[2:4] == ["certs", "install"] for argv in node.ran)
    assert state.certificate() is None


def test_renew_refuses_to_order_with_a_node_unreachable(acme_inventory: Path, tmp_path: Path) -> None:
    inventory, nodes = fleet(acme_inventory)
    server = FakeAcme()
    with pytest.raises(OberError, match="node04 unreachable: the ACME server's validation may land on it"):
        acmefleet.renew(
            fake_session(nodes, unreachable=["node04"]),
            inventory,
            inventory.nodes,
            State(tmp_path / "s"),
            transport=server,
        )
    assert server.seen == [], "no order"


def test_a_node_refusing_the_certificate_stops_the_push(acme_inventory: Path, tmp_path: Path) -> None:
    inventory, nodes = fleet(acme_inventory, node02=FakeNode("node02", refuse_install=True))
    state = State(tmp_path / "state")
    server = FakeServerSolving(nodes, lands_on="node01")
    KEY_OF[:] = [state.account_key()]
    result = acmefleet.renew(fake_session(nodes), inventory, inventory.nodes, state, transport=server)
    assert [(s.node, s.ok) for s in result.steps] == [("node01", True), ("node02", False)]
    assert "expired" in result.steps[1].detail and "keeps its certificate" in result.steps[1].detail
    assert nodes["node03"].serial is None and not any("install" in argv for argv in nodes["node03"].ran)


def test_unreachable_acme_server(acme_inventory: Path, tmp_path: Path) -> None:
    inventory, nodes = fleet(acme_inventory)
    config = inventory.nodes[0].config.certificates.acme
    assert config is not None
    port = free_port()
    text = acme_inventory.read_text().replace(
        "acme: {email: ops@example.com,", f"acme: {{directory: 'https://127.0.0.1:{port}/dir', email: ops@example.com,"
    )
    acme_inventory.write_text(text)
    inventory = load_inventory(acme_inventory)
    with pytest.raises(AcmeError, match="cannot be reached"):
        acmefleet.renew(fake_session(nodes), inventory, inventory.nodes, State(tmp_path / "s"))
    assert all(not node.ran for node in nodes.values()), "nothing reached a node"


def test_acme_of_refuses_mixed_fleets(acme_inventory: Path) -> None:
    inventory = load_inventory(REPO / "inventory" / "example.yaml")
    with pytest.raises(ConfigError, match="not from ACME"):
        acmefleet.acme_of(inventory, inventory.nodes)
    text = acme_inventory.read_text().replace(
        "      network: {manager: netplan}",
        "      network: {manager: netplan}\n"
        "      certificates: {acme: {email: other@example.com, domains: s3.example.com}}",
    )
    acme_inventory.write_text(text)
    mixed = load_inventory(acme_inventory)
    with pytest.raises(ConfigError, match=r"different certificates\.acme"):
        acmefleet.acme_of(mixed, mixed.nodes)


# --- the timer --------------------------------------------------------------------------------------------------


def test_timer_units_pass_systemd_analyze(tmp_path: Path) -> None:
    from ober.cli.fleet_certs import timer_units

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = timer_units(REPO / "inventory" / "example.yaml", tmp_path / "state", "daily")
    assert "fleet certs renew -i " in units["ober-fleet-certs.service"]
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    import subprocess

    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / name) for name in units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
