"""Certificate pickup under real systemd: ``ober-certs.path`` sees the PEM change, ``ober-certs.service`` swaps it in.

One systemd-nspawn node behind the lab's BIRD router, configured with ``ober config --from`` on the node itself.
No RGW is needed: HAProxy terminates TLS whether or not its backends are up. A client in the node's network
namespace holds one keep-alive TLS connection to the VIP and sends a request every 20 ms throughout (HAProxy answers
503 while the group is down, which is still an answer on the same connection); the PEM is replaced the way
renewal tools do it (a temporary file renamed over it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.certs import self_signed_pem
from ober.certswap import fingerprint
from ober.lab.netns import Lab, run_in, spawn_in, stop_process
from ober.lab.nspawn import NspawnNode, boot_node, install_ober
from ober.lab.router import start_router
from tests.conftest import require
from tests.test_lab_nspawn import nspawn_prerequisites, wheelhouse_for_nodes

pytestmark = pytest.mark.lab

VIP = "198.51.100.10"
NODE = "100.64.0.21"
HOST = "s3.lab.test"
PEM = "/opt/ober/etc/certs/s3.pem"
OBER = "/opt/ober/venv/bin/ober"

# One keep-alive connection, never reopened: a request every 20 ms until the stop file; any answer counts, a
# dropped connection or an exception does not.
CLIENT = r"""
import http.client, json, os, ssl, sys, time
vip, ready, stop, out = sys.argv[1:5]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection(vip, 443, context=context, timeout=10)
conn.connect()
conn.auto_open = 0
port = conn.sock.getsockname()[1]
ok, failed, times = 0, [], []
while not os.path.exists(stop):
    try:
        conn.request("GET", "/held", headers={"Host": "s3.lab.test"})
        reply = conn.getresponse()
        reply.read()
        if reply.will_close:
            failed.append(f"HTTP {reply.status} with Connection: close")
        ok += 1
        times.append(time.time())
    except Exception as exc:
        failed.append(repr(exc))
        break
    if ok == 1:
        open(ready, "w").close()
    time.sleep(0.02)
same = conn.sock is not None and conn.sock.getsockname()[1] == port
json.dump({"ok": ok, "failed": failed, "same_socket": same, "times": times}, open(out, "w"))
"""


@dataclass
class CertLab:
    lab: Lab
    node: NspawnNode
    work: Path

    def served(self) -> str | None:
        """The fingerprint a new handshake on the VIP gets."""
        argv = ["openssl", "s_client", "-connect", f"{VIP}:443", "-servername", HOST]
        return fingerprint(run_in(self.node.ns, argv, timeout=10, check=False).stdout)

    def wait_served(self, wanted: str | None, timeout: float = 30.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.served() == wanted:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"the VIP does not serve {wanted} after {timeout:g}s\n{self.journal()}")

    def put_pem(self, text: str) -> None:
        """Replace the PEM on the node: a temporary file beside it, renamed over it."""
        local = self.work / "next.pem"
        local.write_text(text)
        self.node.put(local, PEM, 0o600)

    def journal(self) -> str:
        units = "-u ober-certs.path -u ober-certs.service -u ober-http"
        return self.node.run(f"journalctl {units} -n 40 --no-pager", check=False).stdout

    def active(self, unit: str) -> str:
        return self.node.run(["systemctl", "is-active", unit], check=False).stdout.strip()


def watching(cert_lab: CertLab, timeout: float = 180.0) -> None:
    """Wait for ober-certs.path to watch; retried while the host has no inotify instance to give it.

    All containers here share the host's root user, whose inotify instances (fs.inotify.max_user_instances,
    often 128) other labs' systemd instances may have used up: then systemd says "Too many open files".
    """
    deadline = time.monotonic() + timeout
    while cert_lab.active("ober-certs.path") != "active":
        journal = cert_lab.node.run("journalctl -u ober-certs.path -n 5 --no-pager", check=False).stdout
        if "Too many open files" not in journal:
            raise AssertionError(f"ober-certs.path is not watching\n{cert_lab.journal()}")
        if time.monotonic() > deadline:
            require(False, "the host's inotify instances are used up by other containers (max_user_instances)")
        time.sleep(5)
        cert_lab.node.run("systemctl reset-failed ober-certs.path; systemctl start ober-certs.path", check=False)


def pem(common_name: str) -> tuple[str, str]:
    return self_signed_pem(common_name, [f"DNS:{HOST}", f"IP:{VIP}"])


@pytest.fixture(scope="module")
def cert_lab() -> Iterator[CertLab]:
    image = nspawn_prerequisites()
    wheelhouse = wheelhouse_for_nodes()
    with Lab() as lab:
        router = start_router(lab, [NODE], ["198.51.100.0/24"])
        node = boot_node(lab, router, "c1", NODE, image=image)
        install_ober(node, wheelhouse)
        # ober's users and directories, the VIP interface's manager (the venv is there: nothing to install).
        node.run(f"{OBER} bootstrap /opt/ober --yes", timeout=300)
        work = lab.path("certs")
        work.mkdir(parents=True, exist_ok=True)
        certificate, key = pem("cert-a")
        (work / "a.pem").write_text(certificate + key)
        node.put(work / "a.pem", PEM, 0o600)
        config = {
            "name": "c1",
            "bgp": {"router_id": NODE, "neighbors": "100.64.0.1"},
            "vips": [{"name": "s3-a", "address": VIP, "backend": "ceph-a"}],
            # Nothing answers there: HAProxy still terminates TLS (and answers 503).
            "backends": {"ceph-a": {"servers": ["100.64.1.11"]}},
            "certificates": {"pem": PEM, "http": "redirect"},
            "network": {"manager": "networkd", "interface": "lo"},
            "haproxy": {"maxconn": 5000},
        }
        (work / "ober.yaml").write_text(yaml.safe_dump(config))
        node.put(work / "ober.yaml", "/root/ober-new.yaml")
        node.run(f"{OBER} config --from /root/ober-new.yaml", timeout=120)
        node.run("systemctl enable --now ober-http", timeout=60)
        cert_lab = CertLab(lab, node, work)
        watching(cert_lab)
        deadline = time.monotonic() + 30
        while cert_lab.served() is None:
            assert time.monotonic() < deadline, f"HAProxy does not serve TLS on the VIP\n{cert_lab.journal()}"
            time.sleep(0.2)
        yield cert_lab


def test_path_unit_watches_while_haproxy_runs(cert_lab: CertLab) -> None:
    assert cert_lab.active("ober-http") == "active"
    assert cert_lab.active("ober-certs.path") == "active", cert_lab.journal()  # ober-http wants it
    unit = cert_lab.node.run("systemctl cat ober-certs.path").stdout
    assert f"PathChanged={PEM}" in unit


def test_renewed_certificate_served_without_reload_and_held_connection_kept(cert_lab: CertLab) -> None:
    node = cert_lab.node
    before = fingerprint((cert_lab.work / "a.pem").read_text())
    cert_lab.wait_served(before)
    main_pid = node.run("systemctl show -p MainPID --value ober-http").stdout.strip()
    since = str(int(node.run("date +%s").stdout.strip()) - 1)
    work = cert_lab.work
    ready, stop, out = work / "client.ready", work / "client.stop", work / "client.json"
    client = spawn_in(
        node.ns, [sys.executable, "-c", CLIENT, VIP, str(ready), str(stop), str(out)], log=work / "client.log"
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert client.poll() is None, (work / "client.log").read_text()
            assert time.monotonic() < deadline, "the held connection's first request did not come back"
            time.sleep(0.05)

        # A broken file first: refused, logged, the served certificate stays.
        b_crt, b_key = pem("cert-b")
        a_key = (work / "a.pem").read_text().split("-----END CERTIFICATE-----\n", 1)[1]
        cert_lab.put_pem(b_crt + a_key)  # B's certificate with A's key
        refused = wait_journal(cert_lab, since, "refused")
        assert "does not match the certificate" in refused and "keeps serving" in refused
        assert cert_lab.served() == before
        assert cert_lab.active("ober-certs.path") == "active"  # a refused file does not stop the watching

        # The renewed certificate: picked up by the path unit, new handshakes get it.
        changed_at = time.time()
        cert_lab.put_pem(b_crt + b_key)
        took = cert_lab.wait_served(fingerprint(b_crt))
        swapped = wait_journal(cert_lab, since, "swapped")
        assert "open connections untouched" in swapped
        time.sleep(1.0)  # the held connection keeps going after the swap
    finally:
        stop.touch()
        try:
            client.wait(15)
        finally:
            stop_process(client)
    seen: dict[str, Any] = json.loads(out.read_text())
    assert seen["failed"] == [] and seen["same_socket"], seen
    assert sum(t > changed_at + took for t in seen["times"]) >= 10, seen
    assert node.run("systemctl show -p MainPID --value ober-http").stdout.strip() == main_pid
    reloads = node.run(f"journalctl -u ober-http --since @{since} --no-pager -g Reload", check=False).stdout
    assert "Reloaded" not in reloads and "Reloading" not in reloads  # the runtime API, not a reload
    print(f"renewed PEM served {took:.2f}s after it was written; held connection: {seen['ok']} requests, none failed")


def wait_journal(cert_lab: CertLab, since: str, word: str, timeout: float = 30.0) -> str:
    """The newest ``ober certs reload`` journal line holding ``word`` (written since ``since``)."""
    deadline = time.monotonic() + timeout
    command = f"journalctl -u ober-certs --since @{since} --no-pager -o cat"
    while time.monotonic() < deadline:
        journal = cert_lab.node.run(command, check=False).stdout.splitlines()
        lines = [line for line in journal if line.startswith("[ober] certificate") and word in line]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {word!r} line in the journal of ober-certs\n{cert_lab.journal()}")
