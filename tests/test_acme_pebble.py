"""The ACME client against a real ACME server: Pebble on this machine's loopback, with its own DNS.

Pebble rejects a quarter of the nonces (the client must retry ``badNonce``), never reuses an authorization, and
really fetches each HTTP-01 token from the solver's little HTTP server (three times, as from several perspectives).
A wrong answer fails the order with Pebble's reason, and the tokens are withdrawn all the same; a server whose TLS
certificate is not trusted is refused with the fix (the CA bundle).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ober.acme import AcmeError, Client, new_key, urllib_transport
from ober.certs import cert_facts
from ober.lab.pebble import Pebble, free_port, missing, start_pebble
from tests.conftest import require

pytestmark = pytest.mark.lab


class Solver:
    """Serves tokens over HTTP on loopback, where Pebble's validation comes (``wrong``: a bad key authorization)."""

    def __init__(self, wrong: bool = False) -> None:
        self.tokens: dict[str, str] = {}
        self.fetched: list[str] = []
        self.cleaned: list[str] = []
        self.wrong = wrong
        solver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                token = self.path.rsplit("/", 1)[-1]
                solver.fetched.append(token)
                answer = solver.tokens.get(token)
                self.send_response(200 if answer else 404)
                self.end_headers()
                if answer:
                    self.wfile.write((answer + "x" if solver.wrong else answer).encode())

            def log_message(self, *_args: object) -> None:
                return None

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def present(self, challenges: Sequence[tuple[str, str]]) -> None:
        self.tokens.update(challenges)

    def cleanup(self, tokens: Sequence[str]) -> None:
        for token in tokens:
            self.tokens.pop(token, None)
            self.cleaned.append(token)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def solver() -> Iterator[Solver]:
    serving = Solver()
    yield serving
    serving.close()


@pytest.fixture
def pebble(solver: Solver, tmp_path: Path) -> Iterator[Pebble]:
    require(not missing(), "pebble is not installed (scripts/install-system-packages)")
    server = start_pebble(tmp_path / "pebble", http_port=solver.port, nonce_reject=25)
    yield server
    server.stop()


def test_issue_against_pebble_with_nonces_rejected(pebble: Pebble, solver: Solver) -> None:
    lines: list[str] = []
    client = Client(pebble.directory, new_key(), urllib_transport(str(pebble.ca_bundle)), log=lines.append)
    client.register("ops@example.test")
    domains = ["s3.example.test", "s3-b.example.test"]
    client._nonce = "a-nonce-pebble-never-gave"  # at least one badNonce, whatever Pebble's dice say
    issued = client.issue(domains, solver)
    facts = cert_facts(issued.chain)
    assert facts.names == tuple(domains) and facts.issuer.startswith("Pebble Intermediate CA")
    assert issued.chain.count("BEGIN CERTIFICATE") >= 2, "the leaf and its intermediate"
    assert sorted(set(solver.fetched)) == sorted(solver.cleaned), "Pebble fetched every token; each was removed"
    assert not solver.tokens
    assert any("badNonce" in line for line in lines), "rejected nonces were retried"
    # The same account key finds its account again.
    again = Client(pebble.directory, client.key, urllib_transport(str(pebble.ca_bundle)))
    assert again.register("ops@example.test") == client.kid


def test_a_wrong_answer_fails_with_pebbles_reason(pebble: Pebble, solver: Solver) -> None:
    solver.wrong = True
    client = Client(pebble.directory, new_key(), urllib_transport(str(pebble.ca_bundle)))
    client.register("ops@example.test")
    with pytest.raises(AcmeError, match="is invalid: unauthorized") as failed:
        client.issue(["s3.example.test"], solver)
    assert failed.value.problem == "unauthorized"
    assert solver.fetched and not solver.tokens and solver.cleaned


def test_an_untrusted_acme_server_names_the_fix(pebble: Pebble) -> None:
    client = Client(pebble.directory, new_key(), urllib_transport())  # the system's CAs: not Pebble's
    with pytest.raises(AcmeError, match="does not trust") as refused:
        client.directory()
    assert "ca_bundle" in (refused.value.fix or "")
