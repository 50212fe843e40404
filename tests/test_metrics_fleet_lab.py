"""ober's metrics on the bootstrapped lab fleet: real systemd units, the stats login, a fleet drain and a roll.

The shared lab (tests/fleet_lab.py): four systemd-nspawn nodes bootstrapped by ``ober fleet bootstrap``, a BIRD
router doing ECMP with graceful restart, two real Ceph RGW groups. Each node is scraped as the demo does it (and a
monitoring host would): ``/ober/metrics`` on its HAProxy stats listener, with the stats login from the inventory.
Every test leaves every node in service.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ober.cli import main
from ober.inventory import load_inventory
from ober.lab import faults
from ober.lab.demo import metrics_lines, node_metrics
from ober.lab.fleet import LabFleet
from ober.metrics import parse_exposition
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the shared fixture fleet_lab)

pytestmark = pytest.mark.lab

Samples = dict[str, list[tuple[dict[str, str], float]]]


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` whose labels include ``labels``."""
    found = [v for have, v in samples.get(metric, []) if labels.items() <= have.items()]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples in {samples.get(metric)}"
    return found[0]


@pytest.fixture(scope="module")
def fleet(fleet_lab: FleetLab) -> Iterator[LabFleet]:
    fleet_lab.wait_in_service()
    yield fleet_lab.fleet
    fleet_lab.wait_in_service()


def scrape(fleet: LabFleet, node: str) -> Samples:
    return parse_exposition(node_metrics(fleet, node))


def test_every_node_serves_its_metrics_behind_the_stats_login(fleet: LabFleet, fleet_lab: FleetLab) -> None:
    services = set()
    for name in fleet.nodes:
        samples = scrape(fleet, name)
        (peer,) = (labels["neighbor"] for labels, _ in samples["ober_bgp_session_up"])
        assert value(samples, "ober_bgp_session_up", neighbor=peer) == 1, name
        assert value(samples, "ober_bgp_graceful_restart", neighbor=peer) == 1, "negotiated with BIRD"
        for vip in fleet.vips.values():
            assert value(samples, "ober_vip_announced", vip=vip) == 1, f"{name} {vip}"
        assert value(samples, "ober_info", node=name) == 1
        services.add(samples["ober_config_info"][0][0]["service"])
    assert len(services) == 1, "every node serves the inventory's configuration"
    # The stats frontend's login guards ober's metrics as it guards HAProxy's.
    # Where the listener really is: the node's own address, over TLS once a login guards it.
    stats = next(n.config.stats for n in load_inventory(fleet.inventory_path).nodes if n.name == "node01")
    url = f"{'https' if stats.tls else 'http'}://{stats.bind}:{stats.port}"
    for path in ("/ober/metrics", "/metrics"):
        code = fleet_lab.run_on("node01", f"curl -sk -o /dev/null -w '%{{http_code}}' {url}{path}")
        assert code == "401", path
    assert any(line.startswith("ober_vip_announced{") for line in metrics_lines(node_metrics(fleet, "node01")))


def test_a_fleet_drain_and_a_roll_show_on_the_nodes_endpoints(
    fleet: LabFleet, fleet_lab: FleetLab, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = str(fleet.inventory_path)
    address = fleet.nodes["node03"].address
    try:
        assert main(["fleet", "drain", "-i", inventory, "node03", "--reason", "metrics lab"]) == 0
        for vip in fleet.vips.values():
            fleet_lab.wait_hops(vip, set(fleet_lab.addresses.values()) - {address})
        drained = scrape(fleet, "node03")
        assert value(drained, "ober_drained") == 1
        (labels, _), *_ = drained["ober_drain_info"]
        assert labels["reason"] == "metrics lab"
        for vip in fleet.vips.values():
            assert value(drained, "ober_vip_announced", vip=vip) == 0
            assert value(drained, "ober_vip_reason", vip=vip, reason="maintenance") == 1
        assert value(scrape(fleet, "node02"), "ober_drained") == 0
    finally:
        assert main(["fleet", "undrain", "-i", inventory, "node03"]) == 0
        capsys.readouterr()
    fleet_lab.wait_in_service()

    started = time.time()
    assert main(["fleet", "restart", "-i", inventory, "node01", "--reload", "--settle", "1"]) == 0
    capsys.readouterr()
    rolled = scrape(fleet, "node01")
    (labels, _), *_ = rolled["ober_fleet_roll_info"]
    assert labels["operation"] == "restart --reload" and labels["done"] == "true", labels
    assert value(rolled, "ober_fleet_roll_timestamp_seconds") >= started
    fleet_lab.wait_in_service()


def test_a_dead_rgw_group_shows_on_every_node_as_the_router_drops_its_vip(fleet: LabFleet, fleet_lab: FleetLab) -> None:
    """Every radosgw of VIP B's group killed: the router drops VIP B from every node, and every node's endpoint
    says withdrawn, no live server, one more failover; VIP A untouched; all of it back once the RGWs are."""
    vip_a, vip_b = fleet.vips["ceph-a"], fleet.vips["ceph-b"]
    before = {name: scrape(fleet, name) for name in fleet.nodes}
    stopped = faults.kill_rgw_group(fleet, "ceph-b")
    try:
        fleet_lab.wait_hops(vip_b, set())
        for name in fleet.nodes:
            samples = scrape(fleet, name)
            assert value(samples, "ober_vip_announced", vip=vip_b) == 0, name
            assert value(samples, "ober_vip_reason", vip=vip_b, reason="no_live_server") == 1, name
            assert value(samples, "ober_vip_live_servers", vip=vip_b) == 0
            withdrawn = value(before[name], "ober_vip_updates_total", vip=vip_b, action="withdraw")
            assert value(samples, "ober_vip_updates_total", vip=vip_b, action="withdraw") == withdrawn + 1
            assert value(samples, "ober_vip_announced", vip=vip_a) == 1
        assert set(fleet_lab.hops(vip_a)) == set(fleet_lab.addresses.values())
    finally:
        faults.restart_rgw_group(stopped)
    fleet_lab.wait_in_service()
    for name in fleet.nodes:
        assert value(scrape(fleet, name), "ober_vip_reason", vip=vip_b, reason="healthy") == 1, name
