"""``ober fleet bootstrap`` end to end: 4 lab nodes from nothing, over SSH, to S3 through the VIP over TLS.

The lab (tests/fleet_lab.py) is 4 systemd-nspawn nodes with no route to the internet, a BIRD router doing ECMP
and two real Ceph RGW groups; the router's kernel route is the truth about what the nodes announce.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from ober.lab.labfiles import STATS_SECRET
from ober.lab.rgw import in_netns
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (the shared fixture fleet_lab)

pytestmark = pytest.mark.lab

MIB = 2**20


def s3_client(lab: FleetLab, group: str, secret: str | None = None) -> Any:
    """boto3 to a VIP over TLS, the site certificate verified (RGW 16 needs checksums only when required)."""
    access, right = lab.fleet.s3_credentials(group)
    return boto3.client(
        "s3",
        endpoint_url=f"https://{lab.vips[group]}",
        aws_access_key_id=access,
        aws_secret_access_key=secret or right,
        region_name="us-east-1",
        verify=str(lab.fleet.ca_pem),
        config=BotoConfig(
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
        ),
    )


def test_first_bootstrap_brought_every_node_into_service_one_at_a_time(fleet_lab: FleetLab) -> None:
    run = fleet_lab.first
    assert run is not None and run.code == 0
    assert run.report["ok"] and run.report["changed"] and not run.report["dry_run"]
    for name in fleet_lab.addresses:
        node = run.node(name)
        assert node["status"] == "changed", node
        steps = {step["step"]: step["status"] for step in node["steps"]}
        assert steps == {
            "preflight": "ok",
            "wheelhouse": "changed",
            "install": "changed",
            "files": "changed",
            "config": "changed",
            "activate": "changed",
        }, node
        assert node["preflight"]["facts"]["python"] == "3.13" and node["preflight"]["facts"]["machine"] == "x86_64"
    # Serial activation, seen from the router: each VIP's next-hops grew one node at a time, never two at once.
    for vip, changes in run.hops.items():
        counts = [count for _, count in changes]
        assert counts == list(range(counts[0], len(fleet_lab.addresses) + 1)), f"{vip}: {changes}"
        assert counts[0] == 0, f"{vip} was announced before bootstrap: {changes}"
    print(f"first bootstrap of 4 nodes: {run.seconds:.1f}s; next-hop count over time: {run.hops}")


def test_router_has_every_node_as_next_hop_for_every_vip(fleet_lab: FleetLab) -> None:
    everyone = set(fleet_lab.addresses.values())
    for vip in fleet_lab.vips.values():
        fleet_lab.wait_hops(vip, everyone)
    assert set(fleet_lab.fleet.router.bgp_sessions().values()) == {"Established"}


def test_nodes_got_their_files_with_the_right_modes_and_no_internet(fleet_lab: FleetLab) -> None:
    node = next(iter(fleet_lab.addresses))
    modes = fleet_lab.run_on(node, "stat -c '%a %n' /opt/ober/etc/login /opt/ober/etc/certs/s3.pem")
    assert modes.split() == ["600", "/opt/ober/etc/login", "600", "/opt/ober/etc/certs/s3.pem"]
    assert fleet_lab.run_on(node, "cat /opt/ober/etc/certs/s3.pem") == fleet_lab.fleet.pem.read_text()
    # The throwaway venv that ran the first `ober bootstrap` is gone; the node's own venv runs the units.
    assert fleet_lab.run_on(node, "test -e /opt/ober/.fleet-venv && echo left || echo gone").strip() == "gone"
    assert fleet_lab.run_on(node, "systemctl is-enabled ober-http ober-bgp").split() == ["enabled", "enabled"]


def test_s3_through_the_vip_over_tls_against_real_rgw(fleet_lab: FleetLab) -> None:
    fleet_lab.wait_in_service()
    group = "ceph-a"
    small = os.urandom(1 * MIB + 7)
    big = os.urandom(64 * MIB)

    def round_trips() -> tuple[bytes, str, str, str]:
        s3 = s3_client(fleet_lab, group)
        s3.create_bucket(Bucket="fleet-bootstrap")
        s3.put_object(Bucket="fleet-bootstrap", Key="small", Body=small)
        got: bytes = s3.get_object(Bucket="fleet-bootstrap", Key="small")["Body"].read()
        parts = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
        s3.upload_fileobj(io.BytesIO(big), "fleet-bootstrap", "big", Config=parts)
        etag = s3.head_object(Bucket="fleet-bootstrap", Key="big")["ETag"]
        sink = io.BytesIO()
        s3.download_fileobj("fleet-bootstrap", "big", sink)
        return got, etag, hashlib.sha256(sink.getvalue()).hexdigest(), hashlib.sha256(big).hexdigest()

    got, etag, downloaded, uploaded = in_netns(fleet_lab.fleet.client_ns, round_trips, timeout=300)
    assert got == small
    assert etag.strip('"').endswith("-8")  # RGW assembled it from 8 parts: a real multipart upload
    assert downloaded == uploaded

    def signed_with(secret: str | None) -> str:
        try:
            s3_client(fleet_lab, group, secret).list_buckets()
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "accepted"

    # RGW checks SigV4 over the Host header the client signed: it reached RGW unchanged through HAProxy.
    assert in_netns(fleet_lab.fleet.client_ns, lambda: signed_with("not-the-secret")) == "SignatureDoesNotMatch"
    assert in_netns(fleet_lab.fleet.client_ns, lambda: signed_with(None)) == "accepted"


def test_the_stats_page_wants_a_login_over_tls_on_the_nodes_address_never_on_a_vip(fleet_lab: FleetLab) -> None:
    fleet_lab.wait_in_service()
    address = next(iter(fleet_lab.addresses.values()))
    password = yaml.safe_load(fleet_lab.fleet.secrets_path.read_text())[STATS_SECRET]
    vip = fleet_lab.vips["ceph-a"]

    def fetch(url: str, login: str | None = None) -> str:
        # The site certificate, its chain verified; it names the service, not the node's address.
        context = ssl.create_default_context(cafile=str(fleet_lab.fleet.ca_pem))
        context.check_hostname = False
        request = urllib.request.Request(url)  # noqa: S310 - http(s) URLs built here
        if login is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as answer:  # noqa: S310 - our URLs
                return f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return type(reason).__name__

    def from_client() -> dict[str, str]:
        return {
            "no login": fetch(f"https://{address}:8404/stats"),
            "wrong login": fetch(f"https://{address}:8404/stats", "admin:wrong"),
            "login": fetch(f"https://{address}:8404/stats", f"admin:{password}"),
            "metrics": fetch(f"https://{address}:8404/metrics", f"admin:{password}"),
            "plain http": fetch(f"http://{address}:8404/stats", f"admin:{password}"),
            "on a VIP": fetch(f"https://{vip}:8404/stats", f"admin:{password}"),
        }

    seen = in_netns(fleet_lab.fleet.client_ns, from_client, timeout=60)
    assert seen["no login"] == seen["wrong login"] == "HTTP 401", seen
    assert seen["login"] == seen["metrics"] == "HTTP 200", seen
    # Plain HTTP never gets an answer (the password would cross in clear), and nothing listens on the VIPs.
    assert not seen["plain http"].startswith("HTTP 2"), seen
    assert seen["on a VIP"] in ("ConnectionRefusedError", "TimeoutError", "timeout"), seen


def invocations(lab: FleetLab, node: str) -> str:
    """The units' invocation IDs: a restart of either changes them."""
    return lab.run_on(node, "systemctl show -p InvocationID --value ober-http ober-bgp")


def test_a_second_bootstrap_changes_nothing_and_says_so(fleet_lab: FleetLab) -> None:
    fleet_lab.wait_in_service()
    before = {name: invocations(fleet_lab, name) for name in fleet_lab.addresses}
    run = fleet_lab.bootstrap(watch=True)
    assert run.code == 0, run.report
    assert run.report["ok"] and not run.report["changed"], run.report
    for name in fleet_lab.addresses:
        node = run.node(name)
        assert node["status"] == "unchanged", node
        assert {step["status"] for step in node["steps"]} == {"ok"}, node
    # Nothing was restarted, and the router never lost a next-hop while it ran.
    assert {name: invocations(fleet_lab, name) for name in fleet_lab.addresses} == before
    assert all([count for _, count in changes] == [4] for changes in run.hops.values()), run.hops
    # The same, as a person reads it.
    argv = ["-i", str(fleet_lab.fleet.inventory_path), "--secrets", str(fleet_lab.fleet.secrets_path)]
    text = fleet_lab.ober("fleet", "bootstrap", *argv, "--wheelhouse", str(fleet_lab.wheelhouse), "node01")
    assert text.returncode == 0, text.stderr
    assert "nothing changed: 1 nodes already bootstrapped and in service" in text.stdout
    print(f"second bootstrap (nothing to do): {run.seconds:.1f}s")


def lab_copy(lab: FleetLab, directory: Path, *, extra_node: bool = False) -> Path:
    """The lab's inventory (and known_hosts) copied, so a test can spoil them without touching the shared lab."""
    data: dict[str, Any] = yaml.safe_load(lab.fleet.inventory_path.read_text())
    known = directory / "known_hosts"
    known.write_text(lab.fleet.known_hosts.read_text())
    data["ssh"]["known_hosts"] = str(known)
    data["ssh"]["connect_timeout"] = "5s"
    if extra_node:
        # A node that is not there: the lab's ssh_config reaches it the same way, through the router.
        ssh_config = directory / "ssh_config"
        text = lab.fleet.ssh_config.read_text()
        block = text[text.index("Host node01") :].split("\n\n")[0]
        phantom = block.replace("node01", "node09").replace("100.64.0.11", "100.64.0.99")
        ssh_config.write_text(f"{text}\n{phantom}\n")
        data["ssh"]["config"] = str(ssh_config)
        data["groups"]["gone"] = {"nodes": "node09", "address": "100.64.0.99"}
    inventory = directory / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    return inventory


def test_a_node_whose_host_key_changed_is_refused(fleet_lab: FleetLab, tmp_path: Path) -> None:
    inventory = lab_copy(fleet_lab, tmp_path)
    known = tmp_path / "known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = " ".join((tmp_path / "impostor.pub").read_text().split()[:2])
    # node04 "was reinstalled": every key recorded for it is now another machine's.
    lines = known.read_text().splitlines()
    lines = [f"{line.split()[0]} {impostor}" if line.startswith("node04,") else line for line in lines]
    known.write_text("\n".join(lines) + "\n")
    spoiled = known.read_text()
    run = fleet_lab.bootstrap("node[03-04]", inventory=inventory)
    assert run.code == 1
    refused = run.node("node04")
    assert refused["failed_step"] == "preflight" and "HOST KEY CHANGED" in refused["error"], refused
    assert "ssh-keygen -R" in refused["fix"]
    assert run.node("node03")["status"] == "unchanged"
    assert known.read_text() == spoiled  # refused, never "fixed" by learning the new key


def test_an_unreachable_node_fails_preflight_and_json_still_reports_the_others(
    fleet_lab: FleetLab, tmp_path: Path
) -> None:
    inventory = lab_copy(fleet_lab, tmp_path, extra_node=True)
    run = fleet_lab.bootstrap("node01,node09", inventory=inventory)
    assert run.code == 1
    gone = run.node("node09")
    assert gone["failed_step"] == "preflight", gone
    assert "node09" in gone["error"] and gone["fix"], gone
    assert [step["step"] for step in gone["steps"]] == ["preflight"]  # nothing else was tried on it
    assert run.node("node01")["status"] == "unchanged"
    assert run.report["resume"].startswith("node09 failed at preflight")
    print(f"unreachable node: {gone['error']} ({run.seconds:.1f}s)")


def test_dry_run_on_a_bootstrapped_node_plans_nothing(fleet_lab: FleetLab) -> None:
    before = invocations(fleet_lab, "node02")
    run = fleet_lab.bootstrap("--dry-run", "node02")
    assert run.code == 0 and run.report["dry_run"], run.report
    node = run.node("node02")
    assert node["status"] == "unchanged" and {step["status"] for step in node["steps"]} == {"ok"}, node
    assert invocations(fleet_lab, "node02") == before


def test_activation_stops_at_the_first_node_not_verified_and_a_rerun_resumes(
    fleet_lab: FleetLab, tmp_path: Path
) -> None:
    inventory = lab_copy(fleet_lab, tmp_path)
    data: dict[str, Any] = yaml.safe_load(inventory.read_text())
    # node03 gets a second BGP neighbor that never answers: its config is valid, its verification cannot pass.
    router = data["config"]["bgp"]["neighbors"]
    data["hosts"] = {"node03": {"config": {"bgp": {"neighbors": [router, "100.64.0.250"]}}}}
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        run = fleet_lab.bootstrap("--activate-timeout", "15", "node[03-04]", inventory=inventory)
        assert run.code == 1
        stuck = run.node("node03")
        assert stuck["failed_step"] == "activate" and "100.64.0.250" in stuck["error"], stuck
        assert "journalctl" in stuck["fix"]
        waiting = run.node("node04")
        assert waiting["steps"][-1] == {
            "step": "activate",
            "status": "skipped",
            "detail": "not started: node03 failed to activate",
            "seconds": 0.0,
        }
        assert run.report["resume"].startswith("node03 failed at activate: look at the node")
        assert "rerun `ober fleet bootstrap node[03-04]`" in run.report["resume"]
    finally:
        # The rerun with the real inventory puts node03's config back and finds it verified again.
        again = fleet_lab.bootstrap("node[03-04]")
    assert again.code == 0, again.report
    assert again.node("node03")["status"] == "changed" and again.node("node04")["status"] == "unchanged"
    fleet_lab.wait_in_service()


def test_a_sudo_login_works_and_one_without_passwordless_sudo_is_refused(fleet_lab: FleetLab, tmp_path: Path) -> None:
    inventory = lab_copy(fleet_lab, tmp_path)
    data: dict[str, Any] = yaml.safe_load(inventory.read_text())
    setup = (
        "set -e; for u in deploy nosudo; do id $u >/dev/null 2>&1 || useradd -m -s /bin/sh $u; "
        "install -d -m 700 -o $u -g $u /home/$u/.ssh; "
        "install -m 600 -o $u -g $u /root/.ssh/authorized_keys /home/$u/.ssh/authorized_keys; done; "
        "echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy; chmod 440 /etc/sudoers.d/deploy"
    )
    fleet_lab.run_on("node02", setup)
    try:
        data["ssh"]["user"] = "deploy"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        run = fleet_lab.bootstrap("node02", inventory=inventory)
        assert run.code == 0, run.report
        node = run.node("node02")
        assert node["status"] == "unchanged", node
        checks = {check["name"]: check["detail"] for check in node["preflight"]["checks"]}
        assert checks["root"] == "deploy has passwordless sudo"

        data["ssh"]["user"] = "nosudo"
        inventory.write_text(yaml.safe_dump(data, sort_keys=False))
        run = fleet_lab.bootstrap("node02", inventory=inventory)
        assert run.code == 1
        refused = run.node("node02")
        assert refused["failed_step"] == "preflight", refused
        assert "nosudo cannot run commands as root without a password" in refused["error"], refused
        assert "NOPASSWD" in refused["fix"]
    finally:
        fleet_lab.run_on("node02", "rm -f /etc/sudoers.d/deploy; userdel -r deploy; userdel -r nosudo", check=False)
