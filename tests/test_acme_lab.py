"""ACME on the lab fleet against a real ACME server: Pebble, validating HTTP-01 through the router's ECMP.

The shared lab (tests/fleet_lab.py): four systemd-nspawn nodes, a BIRD router doing ECMP, real Ceph RGW. Pebble runs
in the lab's client namespace with its own DNS answering every name with VIP A, so each of its validation requests
(three per challenge) crosses the router and lands on whichever node ECMP picks: only a token on EVERY node passes.
The workstation's ``ober fleet certs renew`` runs there too (it must reach Pebble's API and the nodes' SSH).

The fleet is switched to ACME by ``ober fleet push`` (the nodes start on the placeholder), the first certificate is
issued and pushed, a second renew orders nothing (not due), and a forced renew replaces it while long-held TLS
connections through the VIP go on working; the router's ECMP set never loses a node. The lab's PEM inventory is
pushed back at the end.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.certs import cert_facts
from ober.lab import pebble as pebble_lab
from ober.lab.fleet import LabFleet
from ober.lab.netns import spawn_in, stop_process
from ober.lab.rgw import in_netns
from ober.lab.site import VIP_A
from tests.conftest import require
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the shared fixture fleet_lab)
from tests.test_fleet_ops_lab import HopWatch

pytestmark = pytest.mark.lab

DOMAIN = "s3.lab.test"
STATS_PORT = 8404
HELD = 8

# Long-held TLS connections through the VIP: each opened once (never reopened), a GET on each every 0.3 s until the
# stop file; the serial each got at its handshake and every failure are reported.
HELD_SCRIPT = r"""
import http.client, json, os, ssl, sys, time
from cryptography import x509
vip, host, count, ready, stop, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:7]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conns, serials, ports = [], [], []
for _ in range(count):
    conn = http.client.HTTPSConnection(vip, 443, context=context, timeout=30)
    conn.connect()
    conn.auto_open = 0
    conns.append(conn)
    serials.append(f"{x509.load_der_x509_certificate(conn.sock.getpeercert(True)).serial_number:X}")
    ports.append(conn.sock.getsockname()[1])
ok, failed, rounds = 0, [], 0
while True:
    for conn in conns:
        try:
            conn.request("GET", "/", headers={"Host": host})
            reply = conn.getresponse()
            reply.read()
            if reply.status >= 500 or reply.will_close:
                failed.append(f"HTTP {reply.status} will_close={reply.will_close}")
            else:
                ok += 1
        except Exception as exc:
            failed.append(repr(exc))
    rounds += 1
    if rounds == 1:
        open(ready, "w").close()
    if os.path.exists(stop) or len(failed) > 20:
        break
    time.sleep(0.3)
same = all(c.sock is not None and c.sock.getsockname()[1] == p for c, p in zip(conns, ports))
json.dump({"serials": serials, "ok": ok, "failed": failed, "rounds": rounds, "same_sockets": same}, open(out, "w"))
"""


@pytest.fixture(scope="module")
def fleet(fleet_lab: FleetLab) -> Iterator[LabFleet]:
    """The shared lab fleet, every node in service before and after."""
    require(not pebble_lab.missing(), "pebble is not installed (scripts/install-system-packages)")
    fleet_lab.wait_in_service()
    yield fleet_lab.fleet
    fleet_lab.wait_in_service()


@pytest.fixture(scope="module")
def pebble(fleet: LabFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[pebble_lab.Pebble]:
    """Pebble in the client namespace; every name resolves to VIP A; 10 % of nonces rejected."""
    client_address = "100.64.10.2"  # the client segment's namespace (ober.lab.router.Router.segment)
    server = pebble_lab.start_pebble(
        tmp_path_factory.mktemp("pebble"), ns=fleet.client_ns, address=client_address, resolve_to=VIP_A
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def acme_inventory(
    fleet: LabFleet, pebble: pebble_lab.Pebble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The lab's inventory with ACME from Pebble; the lab's own (PEM) is pushed back afterwards."""
    data: dict[str, Any] = yaml.safe_load(fleet.inventory_path.read_text())
    data["config"]["certificates"] = {
        "acme": {
            "email": "ops@lab.test",
            "domains": [DOMAIN],
            "directory": pebble.directory,
            "ca_bundle": str(pebble.ca_bundle),
        },
        "http": "redirect",
    }
    path = tmp_path_factory.mktemp("acme-inventory") / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        yield path
    finally:
        back = cli(fleet, "fleet", "push", "-i", str(fleet.inventory_path), "--secrets", str(fleet.secrets_path))
        assert back.returncode == 0, back.stdout + back.stderr
        for name in fleet.nodes:  # not the lab's any more: the next run starts on a placeholder again
            fleet.run_on(name, "rm -rf /opt/ober/etc/certs/acme")


def cli(fleet: LabFleet, *args: str, ns: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process (``--json``), in namespace ``ns`` when given."""
    argv = [sys.executable, "-m", "ober", "--json", *args]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def serial_at(fleet: LabFleet, address: str, port: int) -> tuple[str, str]:
    """(serial, issuer) of the certificate a new handshake with ``address:port`` gets, from the client namespace."""

    def handshake() -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        import socket

        with (
            socket.create_connection((address, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
        ):
            der = tls.getpeercert(True)
            assert der
            return der

    facts = cert_facts(in_netns(fleet.client_ns, handshake))
    return facts.serial, facts.issuer


def everywhere(fleet: LabFleet) -> dict[str, tuple[str, str]]:
    """What each node serves through its own address (its stats listener has the VIPs' certificate), and VIP A."""
    seen = {name: serial_at(fleet, node.address, STATS_PORT) for name, node in fleet.nodes.items()}
    for attempt in range(6):  # several new connections: the router spreads them over the nodes
        seen[f"vip-{attempt}"] = serial_at(fleet, VIP_A, 443)
    return seen


def renew(fleet: LabFleet, inventory: Path, state: Path, *args: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    done = cli(
        fleet,
        "fleet",
        "certs",
        "renew",
        "-i",
        str(inventory),
        "--state-dir",
        str(state),
        *args,
        ns=fleet.client_ns,
    )
    took = time.monotonic() - started
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from renew (exit {done.returncode}): {done.stderr[-2000:]}") from None
    assert done.returncode == 0, (report, done.stderr[-2000:])
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    return report, took


def test_issue_renew_and_serve_on_every_node(
    fleet: LabFleet, pebble: pebble_lab.Pebble, acme_inventory: Path, tmp_path: Path
) -> None:
    inventory, secrets = str(acme_inventory), str(fleet.secrets_path)
    pushed = cli(fleet, "fleet", "push", "-i", inventory, "--secrets", secrets)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    # Every node starts on its own placeholder.
    before = everywhere(fleet)
    assert all(issuer == DOMAIN for _serial, issuer in before.values()), before
    status = cli(fleet, "fleet", "certs", "status", "-i", inventory, "--state-dir", str(tmp_path / "state"))
    assert status.returncode == 1 and all(
        n["certificates"][0]["placeholder"] for n in json.loads(status.stdout)["nodes"]
    )

    # The first certificate: tokens on every node, Pebble validates through the router, pushed node by node.
    state = tmp_path / "state"
    with HopWatch(fleet, VIP_A) as watch:
        first, took_first = renew(fleet, acme_inventory, state)
    assert first["ok"] and first["reason"] == "no certificate yet" and first["issued"], first
    serial, issuer = first["issued"]["serial"], first["issued"]["issuer"]
    assert issuer.startswith("Pebble Intermediate CA")
    assert [(n["node"], n["ok"], n["action"]) for n in first["nodes"]] == [
        (name, True, "installed") for name in fleet.nodes
    ]
    assert not first["challenge_leftovers"]
    seen = everywhere(fleet)
    assert set(seen.values()) == {(serial, issuer)}, seen
    assert watch.fewest == len(fleet.nodes), f"the ECMP set lost {watch.missing}"
    for name in fleet.nodes:  # no token left behind
        listed = json.loads(fleet.run_on(name, "/opt/ober/venv/bin/ober --json certs challenge list").stdout)
        assert listed == {"tokens": []}, (name, listed)
    # The chain the nodes serve verifies up to Pebble's root.
    roots = tmp_path / "pebble-roots.pem"
    roots.write_text(pebble.roots())
    s_client = ["openssl", "s_client", "-connect", f"{VIP_A}:443", "-servername", DOMAIN, "-CAfile", str(roots)]
    verify = subprocess.run(
        ["ip", "netns", "exec", fleet.client_ns, *s_client, "-verify_return_error"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Verify return code: 0 (ok)" in verify.stdout, verify.stdout[-1500:]

    # Not due: nothing ordered, nothing changed.
    again, _ = renew(fleet, acme_inventory, state)
    assert again["reason"] is None and again["issued"] is None
    assert all("already" in n["detail"] for n in again["nodes"])

    # fleet status shows days to expiry per node.
    fleet_status = cli(fleet, "fleet", "status", "-i", inventory, "--secrets", secrets)
    nodes = json.loads(fleet_status.stdout)["nodes"]
    assert {n["certificates"][0]["serial"] for n in nodes} == {serial}
    assert all(n["certificates"][0]["days_left"] > 300 for n in nodes)

    # A forced renewal while long-held connections through the VIP keep working.
    work = tmp_path / "held"
    work.mkdir()
    ready, stop, out = work / "ready", work / "stop", work / "out.json"
    argv = [sys.executable, "-c", HELD_SCRIPT, VIP_A, DOMAIN, str(HELD), str(ready), str(stop), str(out)]
    held = spawn_in(fleet.client_ns, argv, log=work / "held.log", env=dict(os.environ))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert held.poll() is None, (work / "held.log").read_text()
            assert time.monotonic() < deadline, "the held connections did not open"
            time.sleep(0.1)
        with HopWatch(fleet, VIP_A) as watch:
            forced, took_forced = renew(fleet, acme_inventory, state, "--force")
        time.sleep(1.0)  # a few more rounds on the held connections after the last node swapped
        stop.touch()
        held.wait(60)
    finally:
        stop_process(held)
    assert forced["ok"] and forced["reason"] == "forced (--force)", forced
    new = forced["issued"]["serial"]
    assert new != serial and all(n["action"] == "installed" for n in forced["nodes"])
    assert set(everywhere(fleet).values()) == {(new, forced["issued"]["issuer"])}
    assert watch.fewest == len(fleet.nodes), f"the ECMP set lost {watch.missing}"
    result = json.loads(out.read_text())
    assert result["serials"] == [serial] * HELD, "opened before the renewal"
    assert not result["failed"] and result["same_sockets"] and result["ok"] >= HELD * 3, result
    print(
        f"acme lab: first issue + push to {len(fleet.nodes)} nodes {took_first:.1f}s, forced renewal "
        f"{took_forced:.1f}s; {HELD} held connections made {result['ok']} requests, {len(result['failed'])} failed"
    )
