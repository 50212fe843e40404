"""The unplanned path on the bootstrapped lab fleet: accidents, with the router's kernel route as the truth.

The lab fleet runs with ``bgp.graceful_restart`` 120 and a BIRD router with graceful restart on: the configuration
in which a HAProxy that died once kept its node in the router's ECMP set for 121 s. Every accident here happens to
a node by itself (`ober.lab.faults`); the scenario (`ober.lab.failover`) watches the route every 10 ms and puts
the fleet back whole. Timing figures are printed and gathered by ``bench/failover.py``; the assertions are what a
user sees: which node is in the route, whether the client kept working, whether the node came back by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ober.lab import failover, faults
from ober.lab.demo import load_client
from ober.lab.faults import RouteLog, with_, without
from ober.lab.labstate import Proc
from ober.lab.s3load import LoadResult, S3Load
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the fixture fleet_lab)

pytestmark = pytest.mark.lab

HOLD_TIME = 3.0
"""The lab's BGP hold time: a node that simply vanished leaves the router within it; anything a node says itself
(a withdraw) must come well before."""
WORKERS = 4
"""The load client's threads: at most this many requests are in flight when a node breaks."""


@pytest.fixture
def log(fleet_lab: FleetLab) -> Iterator[RouteLog]:
    """The router's route for both VIPs, every 10 ms; the fleet whole before and after the test."""
    with RouteLog(fleet_lab.fleet, list(fleet_lab.vips.values())) as route:
        try:
            failover.wait_whole(fleet_lab.fleet, route)
            yield route
        finally:
            try:
                failover.wait_whole(fleet_lab.fleet, route, timeout=30.0)
            except Exception:
                fleet_lab.restore()


@pytest.fixture
def load(fleet_lab: FleetLab, tmp_path: Path) -> Iterator[S3Load]:
    """A boto3 client on VIP A over TLS (4 workers, uploads and downloads) for the whole test."""
    client = load_client(fleet_lab.fleet, tmp_path / "load").start()
    try:
        time.sleep(1)  # requests in flight on every node before the accident
        yield client
    finally:
        if client.process is not None:
            client.stop()


def _finished(client: S3Load) -> LoadResult:
    time.sleep(1)
    seen = client.stop()
    assert seen.sent > 0, "the S3 client made no request"
    return seen


def _established(fleet_lab: FleetLab, node: str) -> bool:
    return fleet_lab.fleet.router.bgp_sessions()[fleet_lab.addresses[node]] == "Established"


def test_a_dead_haproxy_leaves_the_router_at_once_under_graceful_restart_and_comes_back_after_the_start_limit(
    fleet_lab: FleetLab, log: RouteLog, tmp_path: Path
) -> None:
    """Items 1 and 2: HAProxy killed and unable to start for 12 s (past systemd's default start limit)."""
    node = "node01"
    with load_client(fleet_lab.fleet, tmp_path / "load") as load:
        time.sleep(2)
        measured = failover.haproxy_dead(fleet_lab.fleet, log, node)
        time.sleep(2)
        seen = load.stop()
    print(f"HAProxy dead: {measured.seconds}, {measured.facts}; client: {seen.line()}")
    gone, back = measured.seconds["gone"], measured.seconds["back after fix"]
    # Withdrawn by ober health over the live session: long before the hold time, and the session never dropped
    # (a dropped session is what graceful restart holds for 120 s).
    assert gone is not None and gone < HOLD_TIME, measured
    assert _established(fleet_lab, node)
    # systemd never gave up on HAProxy ("activating": restarting), ExaBGP stayed up to say "withdraw".
    assert measured.facts["units while broken"] == ["activating", "active"], measured.facts
    # Back by itself once the cause is gone, without anyone running `ober start`.
    assert back is not None, f"never re-announced after the fix\n{fleet_lab.diagnose()}"
    # The requests in flight on the dying node at most; every later one found a live node.
    assert seen.failed <= WORKERS, seen.errors


def test_an_oom_killed_haproxy_worker_is_withdrawn_and_comes_back(
    fleet_lab: FleetLab, log: RouteLog, load: S3Load
) -> None:
    measured = failover.haproxy_oom(fleet_lab.fleet, log, "node02")
    seen = _finished(load)
    print(f"HAProxy worker killed: {measured.seconds}; client: {seen.line()}")
    assert seen.failed <= WORKERS, seen.errors
    assert measured.seconds["gone"] is not None and measured.seconds["gone"] < HOLD_TIME
    assert measured.seconds["back"] is not None
    assert _established(fleet_lab, "node02")


def test_a_dead_rgw_group_withdraws_only_its_vip_on_every_node(
    fleet_lab: FleetLab, log: RouteLog, tmp_path: Path
) -> None:
    with load_client(fleet_lab.fleet, tmp_path / "load", group="ceph-a") as load:
        measured = failover.rgw_group_dead(fleet_lab.fleet, log, "node01")
        seen = load.stop()
    print(f"RGW group ceph-b dead: {measured.seconds}, {measured.facts}; client on VIP A: {seen.line()}")
    assert measured.seconds["withdrawn, last node"] is not None, "some node kept announcing a VIP it cannot serve"
    assert measured.facts["other VIP kept"] is True
    assert seen.failed == 0, seen.errors  # VIP A's clients never noticed
    assert measured.seconds["back after restart"] is not None


def test_a_killed_health_helper_keeps_a_serving_node_and_withdraws_a_drained_one(
    fleet_lab: FleetLab, log: RouteLog, load: S3Load
) -> None:
    """Item 4: ExaBGP keeps the routes of a helper that died and starts a new one, which knows nothing of them."""
    kept = failover.health_killed(fleet_lab.fleet, log, "node03")
    assert kept.facts["route kept"] is True
    assert _finished(load).failed == 0  # a helper's death alone costs the client nothing
    drained = failover.health_killed_drained(fleet_lab.fleet, log, "node03")
    print(f"health killed: healthy node {kept.facts}; drained behind its back: {drained.seconds}")
    assert drained.seconds["withdrawn"] is not None, "a drained node kept its route after its helper was killed"
    assert drained.seconds["back after undrain"] is not None


def test_a_killed_exabgp_under_graceful_restart_keeps_a_serving_node(
    fleet_lab: FleetLab, log: RouteLog, load: S3Load
) -> None:
    """What graceful restart is for: ExaBGP dies, HAProxy serves; the router keeps the route and the new ExaBGP
    takes it over (End-of-RIB once ober health decided)."""
    node = "node04"
    before = fleet_lab.run_on(node, "systemctl show -p MainPID --value ober-bgp").strip()
    measured = failover.exabgp_killed(fleet_lab.fleet, log, node)
    after = fleet_lab.run_on(node, "systemctl show -p MainPID --value ober-bgp").strip()
    assert measured.facts["route kept"] is True, measured.seconds
    assert after != before and _established(fleet_lab, node)
    assert _finished(load).failed == 0  # the ECMP set never changed


def test_a_frozen_node_leaves_within_the_hold_time_and_returns_when_thawed(
    fleet_lab: FleetLab, log: RouteLog, load: S3Load
) -> None:
    measured = failover.node_frozen(fleet_lab.fleet, log, "node02")
    seen = _finished(load)
    print(f"node frozen: {measured.seconds}; client: {seen.line()}")
    assert seen.failed <= WORKERS, seen.errors
    gone = measured.seconds["gone"]
    assert gone is not None and gone <= HOLD_TIME + 0.5  # the router's hold timer, not graceful restart's 120 s
    assert measured.seconds["back after thaw"] is not None


def test_a_restarted_router_gets_every_node_back_by_itself(fleet_lab: FleetLab, log: RouteLog, load: S3Load) -> None:
    measured = failover.router_restart(fleet_lab.fleet, log, "node01")
    seen = _finished(load)
    print(f"router restarted: {measured.seconds}; client: {seen.line()}")
    assert measured.seconds["route gone"] is not None  # BIRD really went away with its routes
    assert measured.seconds["every next-hop back"] is not None


def _config(fleet_lab: FleetLab, node: str) -> dict[str, object]:
    loaded = yaml.safe_load(fleet_lab.run_on(node, "cat /opt/ober/etc/ober.yaml"))
    assert isinstance(loaded, dict)
    return loaded


def _apply(fleet_lab: FleetLab, node: str, data: dict[str, object]) -> dict[str, list[str]]:
    text = yaml.safe_dump(data, sort_keys=False).replace("'", "'\\''")
    out = fleet_lab.run_on(
        node,
        f"printf '%s' '{text}' > /root/new.yaml && "
        "/opt/ober/venv/bin/ober --json config --secrets /opt/ober/etc/login --replace --from /root/new.yaml",
    )
    done = json.loads(out)
    assert isinstance(done, dict) and isinstance(done.get("actions"), list), done
    return done


def test_a_config_change_is_in_effect_in_the_running_health_without_touching_other_vips(
    fleet_lab: FleetLab, log: RouteLog, load: S3Load
) -> None:
    """Item 3: rise and a new VIP reach the running ``ober health``; the VIPs that did not change stay announced."""
    node = "node02"
    address = fleet_lab.addresses[node]
    new_vip = "198.51.100.30"
    original = _config(fleet_lab, node)
    changed = json.loads(json.dumps(original))
    changed["health"] = {**changed.get("health", {}), "rise": 3}
    changed["vips"] = [*changed["vips"], {"name": "s3-c", "address": new_vip, "backend": "ceph-a"}]
    pid_before = fleet_lab.run_on(node, "systemctl show -p MainPID --value ober-bgp").strip()
    started = time.time()
    with RouteLog(fleet_lab.fleet, [new_vip]) as new_route:
        try:
            done = _apply(fleet_lab, node, changed)
            # `ober config` returned only once the running helper had the new file.
            assert "reread ober-health" in done["actions"], done
            state = json.loads(fleet_lab.run_on(node, "cat /opt/ober/run/health/health.json"))
            assert state["rules"]["rise"] == 3 and new_vip in state["vips"], state
            announced = new_route.wait(started, new_vip, with_(address), 30.0)
            assert announced is not None, f"the new VIP never reached the router\n{fleet_lab.diagnose()}"
            # No restart of ExaBGP, and the other VIPs never left the route.
            assert fleet_lab.run_on(node, "systemctl show -p MainPID --value ober-bgp").strip() == pid_before
            for vip in fleet_lab.vips.values():
                assert log.held(vip, started, time.time(), with_(address)), f"{vip} lost {node} during the change"
            removed_at = time.time()
            _apply(fleet_lab, node, original)
            assert new_route.wait(removed_at, new_vip, without(address), 30.0) is not None
            print(f"new VIP announced {announced:.2f}s after ober config began; withdrawn when removed")
        finally:
            if _config(fleet_lab, node) != original:
                _apply(fleet_lab, node, original)
    for vip in fleet_lab.vips.values():
        assert log.held(vip, started, time.time(), with_(address)), f"{vip} lost {node} during the changes"
    seen = _finished(load)
    assert seen.failed == 0, seen.errors  # hitless: HAProxy reloaded, the announcements of VIP A and B untouched


def test_faults_keep_the_lab_records_true(fleet_lab: FleetLab, log: RouteLog) -> None:
    """The radosgw and BIRD a scenario started again are in the lab's state, so `ober lab down` stops them."""
    state = fleet_lab.fleet.state.data
    daemons = state["clusters"]["ceph-b"]["daemons"] + [state["router"]["bird"]]
    assert all(Proc.load(record).alive() for record in daemons), daemons
    assert faults.on_node(fleet_lab.fleet, "node01", "systemctl is-active ober-http").strip() == "active"
