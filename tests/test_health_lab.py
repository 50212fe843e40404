"""``ober health`` on a real lab: 3 nodes (HAProxy + ExaBGP + ober health), a BIRD router doing ECMP, backends.

The router's kernel route for each VIP is the truth: its next-hops are the nodes that announce.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from ober.cli import main
from ober.errors import OberError
from ober.lab.netns import stop_process
from ober.lab.procnode import restart_node, stop_health
from ober.lab.rgw import in_netns
from ober.lab.site import VIP_A, VIP_B, Site, node_address
from ober.lifecycle import graceful_stop
from ober.render import paths
from tests.conftest import lab_site

pytestmark = pytest.mark.lab

NODES = {"n1": node_address(1), "n2": node_address(2), "n3": node_address(3)}
DEADLINE = 20.0


class HealthLab(Site):
    """The site, with assertions for tests and an S3 client."""

    def wait_hops(self, vip: str, expected: set[str], timeout: float = DEADLINE) -> float:
        try:
            return super().wait_hops(vip, expected, timeout)
        except OberError as exc:
            raise AssertionError(exc.message) from None

    def s3(self, vip: str, secret: str | None = None) -> Any:
        """A boto3 client in the client namespace, to the VIP over TLS (certificate verified)."""
        cluster = self.clusters["ceph-a" if vip == VIP_A else "ceph-b"]
        return boto3.client(
            "s3",
            endpoint_url=f"https://{vip}",
            aws_access_key_id=cluster.access_key,
            aws_secret_access_key=secret or cluster.secret_key,
            region_name="us-east-1",
            verify=str(self.cert),
            # RGW 16 (Pacific) does not take the aws-chunked trailing checksums new SDKs send by default over TLS.
            config=BotoConfig(
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
            ),
        )


@pytest.fixture(scope="module")
def health_lab() -> Iterator[HealthLab]:
    with lab_site(len(NODES)) as site:
        yield HealthLab(**{f.name: getattr(site, f.name) for f in dataclasses.fields(site)})


ALL = set(NODES.values())


def test_every_healthy_node_is_a_next_hop_for_every_vip(health_lab: HealthLab) -> None:
    took = health_lab.wait_hops(VIP_A, ALL)
    health_lab.wait_hops(VIP_B, ALL)
    assert health_lab.router.bgp_sessions() == dict.fromkeys(NODES.values(), "Established")
    print(f"all VIPs on 3 next-hops {took:.2f}s after the check started")


def test_s3_through_the_vip_over_tls_with_sigv4(health_lab: HealthLab) -> None:
    health_lab.wait_hops(VIP_A, ALL)
    body = os.urandom(3 * 1024 * 1024 + 17)

    def round_trip() -> bytes:
        s3 = health_lab.s3(VIP_A)
        s3.create_bucket(Bucket="health-lab")
        s3.put_object(Bucket="health-lab", Key="obj", Body=body)
        data: bytes = s3.get_object(Bucket="health-lab", Key="obj")["Body"].read()
        return data

    assert in_netns(health_lab.client_ns, round_trip) == body

    def wrong_secret() -> str:
        try:
            health_lab.s3(VIP_A, secret="not-the-secret").list_buckets()
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "accepted"

    # RGW checks the signature over the Host header the client used: it reached RGW unchanged.
    assert in_netns(health_lab.client_ns, wrong_secret) == "SignatureDoesNotMatch"


def test_group_down_withdraws_only_its_vip_then_rises_back(health_lab: HealthLab) -> None:
    health_lab.wait_hops(VIP_B, ALL)
    cluster = health_lab.clusters["ceph-b"]
    cluster.stop_rgw(0)
    cluster.stop_rgw(1)
    took = health_lab.wait_hops(VIP_B, set())
    assert health_lab.hops(VIP_A) == ALL  # the other VIP's group is fine: still announced everywhere
    states = {name: node.state()["vips"][VIP_B]["state"] for name, node in health_lab.nodes.items()}
    assert set(states.values()) == {"down"}
    cluster.start_rgw(0)
    cluster.start_rgw(1)
    back = health_lab.wait_hops(VIP_B, ALL)
    print(f"group down -> VIP withdrawn on all nodes: {took:.2f}s; backends back -> re-announced: {back:.2f}s")


def test_maintenance_withdraws_the_node_and_undrain_brings_it_back(health_lab: HealthLab) -> None:
    node = health_lab.nodes["n2"]
    health_lab.wait_hops(VIP_A, ALL)
    node.maintenance(True)
    took = health_lab.wait_hops(VIP_A, ALL - {node.address})
    health_lab.wait_hops(VIP_B, ALL - {node.address})
    assert node.state()["vips"][VIP_A] == {"name": "s3-a", "state": "disabled", "announced": None}
    assert node.haproxy.poll() is None  # withdrawn while HAProxy still runs: drain comes before stop
    node.maintenance(False)
    back = health_lab.wait_hops(VIP_A, ALL)
    print(f"maintenance -> withdrawn {took:.2f}s; undrain -> back {back:.2f}s")


def _ober(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    status = main(list(argv))
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip().startswith("{") else out


def test_status_reads_bgp_from_exabgp_and_drain_round_trip(
    health_lab: HealthLab, capsys: pytest.CaptureFixture[str]
) -> None:
    node = health_lab.nodes["n2"]
    config = paths(node.config)["config"]
    health_lab.wait_hops(VIP_A, ALL)
    health_lab.wait_hops(VIP_B, ALL)
    code, data = _ober(capsys, "status", "--json", "-c", config)
    assert code == 0
    assert data["bgp"]["sessions"] == {"100.64.0.1": "established"}
    assert data["bgp"]["announced"] == {"100.64.0.1": [f"{VIP_A}/32", f"{VIP_B}/32"]}
    assert data["drained"] is None and data["haproxy"]["running"] is True
    backend = data["haproxy"]["backends"]["be_ceph-a"]
    assert (backend["servers"], backend["up"]) == (2, 2) and backend["in_flight"] >= 0
    assert {v["state"] for v in data["health"]["vips"].values()} == {"up"} and data["health"]["stale"] is False

    code, _ = _ober(capsys, "drain", "--wait", "--timeout", "10", "--reason", "kernel update", "-c", config)
    assert code == 0
    health_lab.wait_hops(VIP_A, ALL - {node.address}, timeout=1.0)  # withdrawn by the time --wait returned
    code, data = _ober(capsys, "status", "--json", "-c", config)
    assert data["drained"]["reason"] == "kernel update"
    assert data["bgp"]["announced"] == {"100.64.0.1": []}
    code, data = _ober(capsys, "--json", "undrain", "-c", config)
    assert code == 0 and data == {"drained": False, "was_drained": True}
    health_lab.wait_hops(VIP_A, ALL)


def test_fast_flapping_never_hangs_exabgp(health_lab: HealthLab) -> None:
    node = health_lab.nodes["n1"]
    health_lab.wait_hops(VIP_A, ALL)
    for i in range(60):  # flip the maintenance switch every 50 ms for 3 s
        node.maintenance(i % 2 == 0)
        time.sleep(0.05)
    node.maintenance(False)
    assert node.exabgp.poll() is None
    health_lab.wait_hops(VIP_A, ALL)
    health_lab.wait_hops(VIP_B, ALL)
    updated = node.state()["updated"]
    assert isinstance(updated, float) and time.time() - updated < 2.0  # the health loop still turns


def test_sigterm_to_health_withdraws_before_it_exits(health_lab: HealthLab) -> None:
    node = health_lab.nodes["n3"]
    health_lab.wait_hops(VIP_A, ALL)
    pid = stop_health(node)
    assert pid is not None
    # The withdraw reaches the router; ExaBGP then respawns the helper, which announces again after `rise`.
    fewest = len(ALL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and fewest == len(ALL):
        fewest = min(fewest, len(health_lab.hops(VIP_A)))
        time.sleep(0.005)
    assert fewest == len(ALL) - 1
    health_lab.wait_hops(VIP_A, ALL)
    log = (node.logdir / "exabgp.log").read_text()
    assert "withdrawn on exit" in log


def test_graceful_stop_withdraws_before_the_services_stop(health_lab: HealthLab) -> None:
    node = health_lab.nodes["n3"]
    health_lab.wait_hops(VIP_A, ALL)
    seen_at_stop: list[set[str]] = []

    def systemctl(*args: str) -> None:
        # What systemd would do to the units; first record what the router sees at that moment.
        assert args == ("stop", "--no-block", "ober-bgp", "ober-http")
        seen_at_stop.append(health_lab.hops(VIP_A))
        stop_process(node.exabgp)
        stop_process(node.haproxy)

    report = graceful_stop(node.config, systemctl, timeout=5.0)
    assert seen_at_stop == [ALL - {node.address}]  # withdrawn while HAProxy still served
    assert report.withdrawn and report.sessions_left == 0
    assert not Path(node.config.health.maintenance_file).exists()  # our own drain is lifted for the next start
    # Bring the node back as `ober start` would: HAProxy, then ExaBGP (which respawns ober health).
    health_lab.nodes["n3"] = restart_node(health_lab.lab, node)
    health_lab.wait_hops(VIP_A, ALL)


def test_haproxy_killed_withdraws_the_node(health_lab: HealthLab) -> None:
    node = health_lab.nodes["n3"]
    health_lab.wait_hops(VIP_A, ALL)
    node.kill_haproxy()
    took = health_lab.wait_hops(VIP_A, ALL - {node.address})
    health_lab.wait_hops(VIP_B, ALL - {node.address})
    print(f"HAProxy killed -> next-hop gone: {took:.2f}s (health interval 0.2s, fall 2)")


def test_health_exits_when_exabgp_goes_away(health_lab: HealthLab) -> None:
    node = health_lab.nodes["n1"]
    pid = node.health_pid()
    assert pid is not None
    node.exabgp.kill()
    node.exabgp.wait(5)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), "ober health kept running after ExaBGP died"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status
