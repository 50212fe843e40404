"""``ober fleet backends`` on the lab fleet under S3 load: a third RGW added to a group, one removed.

The shared lab (tests/fleet_lab.py): four systemd-nspawn nodes (HAProxy 3.0), a BIRD router doing ECMP, real Ceph
RGW. A third radosgw joins ceph-a's cluster (as cephadm places one), ``ober fleet backends add`` puts it in every
node's HAProxy and ``remove`` takes an old one out, while a boto3 client works on the VIP: no request fails, no
node leaves the router's ECMP set, HAProxy is neither reloaded nor restarted on any node, every node's new RGW
gets requests, and ``fleet diff`` finds the inventory and the nodes alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ober.backend_changes import changes_path
from ober.lab import faults
from ober.lab.demo import load_client
from ober.lab.fleet import LabFleet
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the shared fixture fleet_lab)
from tests.test_fleet_ops_lab import HopWatch, ober

pytestmark = pytest.mark.lab

GROUP = "ceph-a"
THIRD = "100.64.1.13"
PORT = 7480


@pytest.fixture(scope="module")
def fleet(fleet_lab: FleetLab) -> Iterator[LabFleet]:
    """The shared lab fleet, every node in service before and after."""
    fleet_lab.wait_in_service()
    yield fleet_lab.fleet
    fleet_lab.wait_in_service()


def haproxy_pids(fleet: LabFleet) -> dict[str, tuple[str, Any]]:
    """Each node's HAProxy master PID (systemd's MainPID) and the worker answering its admin socket."""
    pids: dict[str, tuple[str, Any]] = {}
    for name in fleet.nodes:
        master = fleet.run_on(name, "systemctl show -p MainPID --value ober-http").stdout.strip()
        listed = json.loads(fleet.run_on(name, "/opt/ober/venv/bin/ober --json backends list").stdout)
        pids[name] = (master, listed["worker"])
    return pids


def group_on(fleet: LabFleet, node: str) -> dict[str, dict[str, Any]]:
    """``ober backends list`` on a node: the group's servers by ``host:port``."""
    listed = json.loads(fleet.run_on(node, "/opt/ober/venv/bin/ober --json backends list").stdout)
    [group] = [g for g in listed["groups"] if g["group"] == GROUP]
    return {server["server"]: server for server in group["servers"]}


def no_drift(capsys: pytest.CaptureFixture[str], fleet: LabFleet) -> None:
    status, out, err = ober(
        capsys, "fleet", "diff", "-i", str(fleet.inventory_path), "--secrets", str(fleet.secrets_path), "--json"
    )
    assert status == 0, (out, err)
    drifted = {n["name"]: n["drift"] for n in out["nodes"] if n["drift"]["changed"] or n["drift"]["removed"]}
    assert drifted == {}, drifted


def test_an_rgw_added_and_one_removed_under_load_without_a_reload(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    inventory = str(fleet.inventory_path)
    [first, _second] = [e.removeprefix("http://") for e in fleet.rgw_endpoints(GROUP)[:2]]
    third = f"{THIRD}:{PORT}"
    endpoint = f"http://{third}"
    if endpoint not in fleet.rgw_endpoints(GROUP):
        faults.start_rgw(fleet, GROUP, THIRD)
    before = haproxy_pids(fleet)
    vip = fleet.vips[GROUP]
    try:
        with load_client(fleet, tmp_path / "load") as load, HopWatch(fleet, vip) as watch:
            time.sleep(2)
            status, added, err = ober(capsys, "fleet", "backends", "add", GROUP, third, "-i", inventory, "--json")
            assert status == 0, (added, err)
            time.sleep(3)
            status, removed, err = ober(capsys, "fleet", "backends", "remove", GROUP, first, "-i", inventory, "--json")
            assert status == 0, (removed, err)
            time.sleep(3)
            seen = load.stop()
        with capsys.disabled():
            print(f"\nfleet backends add + remove under load: {seen.line()}; fewest next-hops {watch.fewest}")
        assert [(n["node"], n["action"]) for n in added["nodes"]] == [(name, "add") for name in fleet.nodes]
        assert [(n["node"], n["action"]) for n in removed["nodes"]] == [(name, "remove") for name in fleet.nodes]
        assert seen.sent > 50 and seen.failed == 0, seen.errors
        assert watch.missing == set(), f"nodes left the ECMP set of {vip}: {watch.missing}"
        assert haproxy_pids(fleet) == before, "HAProxy was reloaded or restarted on a node"
        # The router spread the client's few connections over some nodes only: the new RGW served on those.
        assert sum(group_on(fleet, name)[third]["served"] for name in fleet.nodes) > 0
        for name in fleet.nodes:
            # Each node's own requests through its VIP (leastconn over the two RGWs left) reach the new one too.
            fleet.run_on(name, f"for i in $(seq 8); do curl -sk -o /dev/null https://{vip}/; done")
            servers = group_on(fleet, name)
            assert servers[third]["state"] == "serving" and servers[third]["where"].startswith("slot "), servers
            assert servers[third]["served"] > 0, f"{name}: the added RGW got no request"
            assert servers[first]["state"] == "removed (gone at the next reload)", servers
        # The inventory follows: nothing to push.
        no_drift(capsys, fleet)
    finally:
        # Back as it was, the same way (no reload): the first RGW back, the third out, the record gone.
        for verb, server in (("add", first), ("remove", third)):
            status, out, err = ober(capsys, "fleet", "backends", verb, GROUP, server, "-i", inventory, "--json")
            assert status == 0, (out, err)
        changes_path(fleet.inventory_path).unlink(missing_ok=True)
        faults.stop_rgw(fleet, GROUP, endpoint)
    no_drift(capsys, fleet)
