"""A node's part of ACME against the real HAProxy (ober's rendered config, in a private namespace).

HTTP-01 tokens are answered on port 80 of every VIP from HAProxy's runtime map (added and removed through the admin
socket: the worker never changes, so no reload), before the redirect to https, to clients outside the allow-list
too (the ACME server's validators are anywhere) while those get nothing else; RGW never sees the path. The first
certificate is the placeholder; ``ober certs install`` swaps an issued one in while a held keep-alive connection
goes on, and refuses one that does not fit (the served certificate stays).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.test_haproxy_serving as serving
from ober.acme import new_key, thumbprint
from ober.certs import cert_facts, self_signed_pem
from ober.render import paths
from tests.test_cert_reload import HeldClient, pem_pair, worker_pid
from tests.test_cert_reload import labs as labs
from tests.test_haproxy_serving import CLIENT, HOST, OUTSIDER, RGW_A, VIP_A, VIP_B, Lab, Labs

pytestmark = pytest.mark.lab

TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
ACME = {"pem": None, "acme": {"email": "ops@example.test", "domains": [HOST]}, "http": "redirect"}


@pytest.fixture
def acme_lab(labs: Labs) -> Iterator[Lab]:
    """A node with ACME and the serving tests' allow-list (CLIENT in it, OUTSIDER not)."""
    yield labs.start(certificates=ACME)


@pytest.fixture
def open_acme_lab(labs: Labs) -> Iterator[Lab]:
    """A node with ACME and no allow-list: it can make a TLS handshake with its own VIPs."""
    yield labs.start(certificates=ACME, whitelists={"frontend_http": []})


def ober(lab: Lab, *args: str) -> tuple[int, dict[str, Any]]:
    """``ober --json ARGS -c CONFIG`` inside the lab's namespace (it reaches the VIPs there), as a node runs it."""
    assert lab.config is not None
    argv = [sys.executable, "-m", "ober", "--json", *args, "--config", paths(lab.config)["config"]]
    done = lab.ns.run(*argv, timeout=60)
    try:
        return done.returncode, dict(json.loads(done.stdout))
    except ValueError:
        raise AssertionError(f"no JSON from {args}: {done.stdout} {done.stderr}") from None


def served_serial(lab: Lab, vip: str = VIP_A) -> str:
    done = lab.s_client(vip=vip)
    return cert_facts(done.stdout).serial


def challenge_url(token: str = TOKEN) -> str:
    return f"http://{HOST}/.well-known/acme-challenge/{token}"


def test_tokens_at_runtime_on_every_vip_before_the_redirect(acme_lab: Lab) -> None:
    lab = acme_lab
    pid = worker_pid(lab)
    key_authz = f"{TOKEN}.{thumbprint(new_key())}"
    assert lab.curl(challenge_url()).status == 404, "nothing before the token is added"
    code, answer = ober(lab, "certs", "challenge", "add", TOKEN, key_authz)
    assert code == 0 and answer == {"token": TOKEN, "added": True}, answer
    for vip in (VIP_A, VIP_B):
        for source in (CLIENT, OUTSIDER):
            reply = lab.curl(challenge_url(), vip=vip, source=source)
            assert reply.status == 200 and reply.text == key_authz, (vip, source, str(reply))
    assert lab.curl(challenge_url("x" * 43)).status == 404, "another token: not found, not redirected"
    assert lab.curl(f"http://{HOST}/bucket/key").status == 301, "everything else on port 80 still redirects"
    assert lab.curl(f"http://{HOST}/bucket/key", source=OUTSIDER).status == 403, "an outsider gets the token only"
    assert lab.curl(f"https://{HOST}/x", source=OUTSIDER).returncode in serving.REFUSED, "and no TLS at all"
    assert not lab.requests_for(RGW_A, f"/.well-known/acme-challenge/{TOKEN}"), "RGW never sees a challenge"
    code, listed = ober(lab, "certs", "challenge", "list")
    assert code == 0 and listed == {"tokens": [TOKEN]}
    code, removed = ober(lab, "certs", "challenge", "remove", TOKEN)
    assert code == 0 and removed == {"removed": [TOKEN]}
    assert lab.curl(challenge_url()).status == 404
    assert worker_pid(lab) == pid, "no reload: the same worker served it all"
    code, refused = ober(lab, "certs", "challenge", "add", "bad token", key_authz)
    assert code != 0 and "not an ACME token" in refused["error"] and refused["fix"]
    # The allow-list also drops the node's own handshake with its VIPs: HAProxy's runtime API has the last word.
    certificate, key = pem_pair(HOST)
    issued = lab.work / "issued.pem"
    issued.write_text(certificate + key)
    code, answer = ober(lab, "certs", "install", "--from", str(issued))
    assert code == 0 and answer["action"] == "installed" and set(answer["unchecked"]) == {VIP_A, VIP_B}, answer
    assert served_serial(lab) == cert_facts(certificate).serial


def test_install_swaps_the_placeholder_hitlessly_and_refuses_what_does_not_fit(
    open_acme_lab: Lab, tmp_path: Path
) -> None:
    lab = open_acme_lab
    assert lab.config is not None
    target = Path(paths(lab.config)["acme_pem"])
    placeholder = cert_facts(target.read_text())
    assert placeholder.placeholder and served_serial(lab) == placeholder.serial
    code, shown = ober(lab, "certs", "show")
    assert code == 0 and shown["certificates"][0]["placeholder"] is True
    pid = worker_pid(lab)
    client = HeldClient(lab)

    certificate, key = pem_pair(HOST)
    issued = tmp_path / "issued.pem"
    issued.write_text(certificate + key)
    issued.chmod(0o600)
    code, answer = ober(lab, "certs", "install", "--from", str(issued))
    new = cert_facts(certificate).serial
    assert code == 0 and answer["action"] == "installed", answer
    assert answer["served"] == {VIP_A: new, VIP_B: new} and answer["certificate"]["serial"] == new
    assert "PRIVATE" not in json.dumps(answer)
    assert served_serial(lab, VIP_A) == served_serial(lab, VIP_B) == new
    assert target.stat().st_mode & 0o777 == 0o600 and target.read_text() == certificate + key
    code, again = ober(lab, "certs", "install", "--from", str(issued))
    assert code == 0 and again["action"] == "unchanged"

    # What does not fit is refused and the installed certificate keeps serving.
    other_crt, other_key = self_signed_pem("other.test", ["DNS:other.test"])
    wrong_name = tmp_path / "wrong-name.pem"
    wrong_name.write_text(other_crt + other_key)
    _, foreign_key = pem_pair(HOST)
    mismatched = tmp_path / "mismatched.pem"
    mismatched.write_text(certificate + foreign_key)
    for path, reason in ((wrong_name, "does not name"), (mismatched, "does not match")):
        code, refused = ober(lab, "certs", "install", "--from", str(path))
        assert code != 0 and reason in refused["error"] and "PRIVATE" not in refused["error"], refused
        assert served_serial(lab) == new and target.read_text() == certificate + key

    seen = client.finish()
    assert not seen["failed"] and seen["same_socket"] and seen["ok"] > 0, seen
    assert worker_pid(lab) == pid, "no reload"
