"""``ober fleet status|drain|undrain|diff|push|sync`` against a real lab fleet over real SSH.

The shared lab (tests/fleet_lab.py): four systemd-nspawn nodes bootstrapped by ``ober fleet bootstrap``, a BIRD
router doing ECMP, two real Ceph RGW groups. The router's kernel route is the truth about who is in service; every
test leaves every node in service.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.cli import main
from ober.lab.demo import load_client
from ober.lab.fleet import LabFleet
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the shared fixture fleet_lab)

pytestmark = pytest.mark.lab

CONFIG_FILES = {"/opt/ober/etc/haproxy.cfg", "/opt/ober/etc/ober.yaml"}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    """Poll (bounded) until ``check`` holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def fleet(fleet_lab: FleetLab) -> Iterator[LabFleet]:
    """The shared lab fleet (bootstrapped by `ober fleet bootstrap`), every node in service before and after."""
    fleet_lab.wait_in_service()
    yield fleet_lab.fleet
    fleet_lab.wait_in_service()


def ober(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """The CLI in-process; stdout parsed as JSON when it is JSON."""
    status = main(list(args))
    captured = capsys.readouterr()
    try:
        out: Any = json.loads(captured.out)
    except ValueError:
        out = captured.out
    return status, out, captured.err


def inventory_copy(fleet: LabFleet, directory: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """The lab's inventory with ``change`` applied, written next to the test's files."""
    data: dict[str, Any] = yaml.safe_load(fleet.inventory_path.read_text())
    change(data)
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class HopWatch:
    """Polls the router's next-hops for a VIP every 20 ms in a thread; remembers the fewest and who went missing."""

    def __init__(self, fleet: LabFleet, vip: str) -> None:
        self.fleet, self.vip = fleet, vip
        self.fewest = len(fleet.nodes)
        self.missing: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        everyone = {node.address for node in self.fleet.nodes.values()}
        while not self._stop.is_set():
            hops = set(self.fleet.router.next_hops(self.vip))
            self.fewest = min(self.fewest, len(hops))
            self.missing |= everyone - hops
            time.sleep(0.02)

    def __enter__(self) -> HopWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_status_of_a_healthy_fleet(fleet: LabFleet, capsys: pytest.CaptureFixture[str]) -> None:
    inventory, secrets = str(fleet.inventory_path), str(fleet.secrets_path)
    started = time.monotonic()
    status, out, err = ober(capsys, "fleet", "status", "-i", inventory, "--secrets", secrets, "--json")
    took = time.monotonic() - started
    assert status == 0, (out, err)
    assert out["ok"] and [n["name"] for n in out["nodes"]] == list(fleet.nodes)
    vips = sorted(fleet.vips.values())
    for node in out["nodes"]:
        assert node["reachable"] and node["live"] and node["healthy"], node
        assert node["announced"] == vips
        assert node["bgp"] == {"100.64.0.1": "established"}
        assert node["units"] == {"ober-http": "active", "ober-bgp": "active"}
        assert node["versions"]["haproxy"] and node["versions"]["exabgp"]
        # What bootstrap deployed is what the inventory renders, secret files included. (Only ober's own files:
        # a unit template changed in the tree while the lab runs is real drift too, but not this test's point.)
        drift = node["drift"]
        assert drift["unknown"] == [] and drift["removed"] == []
        assert [path for path in drift["changed"] if path.startswith("/opt/ober/etc/")] == [], drift
    with capsys.disabled():
        print(f"\nfleet status of 4 nodes over SSH: {took:.2f}s")
    status, text, _ = ober(capsys, "fleet", "status", "-i", inventory, "--secrets", secrets)
    assert status == 0 and "4 of 4 nodes live" in text and "in sync" in text


def test_an_unreachable_node_is_reported_not_a_crash(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def add_ghost(data: dict[str, Any]) -> None:
        # A node the lab never started: its address answers nobody.
        data["groups"]["ghost"] = {"nodes": "node09", "address": "100.64.0.99"}
        data["ssh"]["connect_timeout"] = "3s"

    inventory = inventory_copy(fleet, tmp_path, add_ghost)
    status, out, _ = ober(capsys, "fleet", "status", "-i", str(inventory), "--json")
    assert status == 1
    ghost = out["nodes"][-1]
    # No SSH answer: whether it still announces is unknown (only the routers know), not "not live".
    assert ghost["name"] == "node09" and not ghost["reachable"] and ghost["live"] is None
    assert ghost["liveness"] == "unknown" and out["unknown"] == ["node09"]
    assert "node09" in ghost["error"] and "Traceback" not in json.dumps(out)
    assert [n["reachable"] for n in out["nodes"][:4]] == [True] * 4
    status, text, err = ober(capsys, "fleet", "status", "-i", str(inventory))
    assert status == 1 and "unreachable" in text and "node09" in text and "Traceback" not in err
    assert "node09 unknown: no answer" in " ".join(text.split())
    # The guard counts it as not live, says so, and does not tell the operator to undrain it.
    status, out, err = ober(capsys, "fleet", "drain", "-i", str(inventory), "node01", "--dry-run", "--json")
    assert out["guard"]["unknown"] == ["node09"] and "node09 unknown (no answer), counted as not live" in out["message"]


def test_drain_then_undrain_moves_the_routers_next_hops(fleet: LabFleet, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = str(fleet.inventory_path)
    node = fleet.nodes["node04"]
    vip = fleet.vips["ceph-a"]
    status, out, err = ober(capsys, "fleet", "drain", "-i", inventory, "node04", "--reason", "kernel update", "--json")
    assert status == 0, (out, err)
    assert out["guard"]["allowed"] and out["nodes"][0]["ok"]
    # `ober drain --wait` returned after the withdraw: the router has already dropped the node.
    assert node.address not in fleet.router.next_hops(vip)
    status, out, _ = ober(capsys, "fleet", "status", "-i", inventory, "node04", "--json")
    drained = out["nodes"][0]["drained"]
    assert status == 0 and drained["reason"] == "kernel update" and out["nodes"][0]["live"] is False
    status, out, err = ober(capsys, "fleet", "undrain", "-i", inventory, "node04", "--json")
    assert status == 0, (out, err)
    assert out["nodes"][0]["live"]
    took = wait_until(lambda: node.address in fleet.router.next_hops(vip), "node04 back", 30)
    with capsys.disabled():
        print(f"\nundrain: node04 back in the router's ECMP set {took:.2f}s after ober fleet undrain returned")


def test_guard_refuses_a_third_drain_and_changes_nothing(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def strict(data: dict[str, Any]) -> None:
        data["fleet"] = {"min_available": 2, "max_unavailable": 3}

    inventory = str(inventory_copy(fleet, tmp_path, strict))
    vip = fleet.vips["ceph-b"]
    addresses = {name: node.address for name, node in fleet.nodes.items()}
    try:
        status, out, err = ober(capsys, "fleet", "drain", "-i", inventory, "node[01-02]", "--json")
        assert status == 0, (out, err)
        assert set(fleet.router.next_hops(vip)) == {addresses["node03"], addresses["node04"]}
        status, out, err = ober(capsys, "fleet", "drain", "-i", inventory, "node03", "--dry-run", "--json")
        assert status == 1 and not out["guard"]["allowed"]
        status, out, err = ober(capsys, "fleet", "drain", "-i", inventory, "node03")
        assert status == 1
        assert "guard refused" in err and "fewer than min_available 2" in err and "nothing was changed" in err
        # Nothing changed: node03 still announces and is not drained.
        assert set(fleet.router.next_hops(vip)) == {addresses["node03"], addresses["node04"]}
        status, out, _ = ober(capsys, "fleet", "status", "-i", inventory, "node03", "--json")
        assert out["nodes"][0]["drained"] is None and out["nodes"][0]["live"]
    finally:
        status, out, err = ober(capsys, "fleet", "undrain", "-i", inventory, "node[01-02]", "--json")
    assert status == 0, (out, err)
    wait_until(lambda: set(fleet.router.next_hops(vip)) == set(addresses.values()), "all 4 back", 30)


def test_diff_and_push_change_a_node_without_leaving_ecmp(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def slower_checks(data: dict[str, Any]) -> None:
        data["config"]["health"] = {"rise": 3}
        data["config"]["haproxy"]["timeouts"] = {"client": "7m"}

    changed = str(inventory_copy(fleet, tmp_path, slower_checks))
    original, secrets = str(fleet.inventory_path), str(fleet.secrets_path)
    status, out, _ = ober(capsys, "fleet", "diff", "-i", changed, "node01", "--secrets", secrets)
    assert status == 0
    assert "+++ /opt/ober/etc/haproxy.cfg" in out and "+    timeout client 420s" in out
    assert "+++ /opt/ober/etc/ober.yaml" in out
    stats_password = yaml.safe_load(fleet.secrets_path.read_text())["stats_password"]
    assert stats_password not in out  # secrets.env changes nowhere here, and would never be shown
    vip = fleet.vips["ceph-a"]
    try:
        with HopWatch(fleet, vip) as watch:
            status, out, err = ober(capsys, "fleet", "push", "-i", changed, "node01", "--secrets", secrets, "--json")
            assert status == 0, (out, err)
        result = out["nodes"][0]
        assert {c["path"] for c in result["changes"]} >= {"/opt/ober/etc/haproxy.cfg", "/opt/ober/etc/ober.yaml"}
        assert "reload ober-http" in result["actions"]
        # In effect in the running ober health, not only in the file (it used to read its config only at start).
        assert "reread ober-health" in result["actions"]
        health = json.loads(fleet.run_on("node01", "cat /opt/ober/run/health/health.json").stdout)
        assert health["rules"]["rise"] == 3, health
        # A config change is a hitless reload: node01 never left the router's ECMP set.
        assert watch.missing == set() and watch.fewest == 4
        status, out, _ = ober(capsys, "fleet", "status", "-i", changed, "--secrets", secrets, "--json")
        assert all(n["drift"] for n in out["nodes"]), json.dumps(out["nodes"], indent=1)[:3000]
        config_drift = {n["name"]: CONFIG_FILES & set(n["drift"]["changed"]) for n in out["nodes"]}
        assert config_drift == {"node01": set(), **{name: CONFIG_FILES for name in ("node02", "node03", "node04")}}
        assert fleet.run_on("node01", "grep -c 'timeout client 420s' /opt/ober/etc/haproxy.cfg").stdout.strip() == "1"
    finally:
        status, out, err = ober(capsys, "fleet", "push", "-i", original, "node01", "--secrets", secrets, "--json")
    assert status == 0, (out, err)
    status, out, _ = ober(capsys, "fleet", "diff", "-i", original, "--secrets", secrets, "--json")
    assert status == 0 and all(not CONFIG_FILES & set(n["drift"]["changed"]) for n in out["nodes"])


def test_a_push_the_node_rejects_stops_the_roll(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def unreadable_certificate(data: dict[str, Any]) -> None:
        # Valid for the model, refused by the node's haproxy -c: the certificate file does not exist there.
        data["config"]["certificates"]["pem"] = "/opt/ober/etc/certs/missing.pem"

    broken = str(inventory_copy(fleet, tmp_path, unreadable_certificate))
    secrets = str(fleet.secrets_path)
    before = fleet.run_on("node01", "sha256sum /opt/ober/etc/haproxy.cfg").stdout
    status, out, _ = ober(capsys, "fleet", "push", "-i", broken, "node[01-02]", "--secrets", secrets, "--json")
    assert status == 1
    assert [n["node"] for n in out["nodes"]] == ["node01"] and out["untouched"] == 1
    assert not out["nodes"][0]["ok"] and out["nodes"][0]["error"]
    assert fleet.run_on("node01", "sha256sum /opt/ober/etc/haproxy.cfg").stdout == before
    assert fleet.run_on("node01", "ls -a /opt/ober/etc/").stdout.count("-push-") == 0  # staged files removed
    addresses = {node.address for node in fleet.nodes.values()}
    assert set(fleet.router.next_hops(fleet.vips["ceph-a"])) == addresses


def test_sync_reapplies_whitelists_without_dropping_the_node(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = str(fleet.inventory_path)
    with HopWatch(fleet, fleet.vips["ceph-b"]) as watch:
        status, out, err = ober(capsys, "fleet", "sync", "-i", inventory, "node02", "--backend-http", "100.64.0.0/24")
        assert status == 0, (out, err)
    assert "100.64.0.0/24" in fleet.run_on("node02", "cat /opt/ober/etc/whitelist/backend-http.lst").stdout
    assert watch.missing == set()
    # Without options the node gets the inventory's whitelists back.
    status, out, err = ober(capsys, "fleet", "sync", "-i", inventory, "node02", "--json")
    assert status == 0, (out, err)
    assert "100.64.0.0/24" not in fleet.run_on("node02", "cat /opt/ober/etc/whitelist/backend-http.lst").stdout


def test_a_push_that_leaves_a_node_degraded_stops_and_says_why(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Issue 9, item 5: an RGW name that does not resolve is accepted by `haproxy -c` and left in maintenance by
    HAProxy; the push must not say ✓ for that node, and must not go on to the next one."""

    def unresolvable_rgw(data: dict[str, Any]) -> None:
        data["config"]["backends"]["ceph-a"]["servers"] = [
            *data["config"]["backends"]["ceph-a"]["servers"],
            "rgw9.invalid",
        ]

    changed = str(inventory_copy(fleet, tmp_path, unresolvable_rgw))
    original, secrets = str(fleet.inventory_path), str(fleet.secrets_path)
    vip = fleet.vips["ceph-a"]
    try:
        with load_client(fleet, tmp_path / "load") as load, HopWatch(fleet, vip) as watch:
            time.sleep(1)
            status, out, err = ober(
                capsys, "fleet", "push", "-i", changed, "node[01-02]", "--secrets", secrets, "--json"
            )
            seen = load.stop()
        assert status == 1, (out, err)
        assert [n["node"] for n in out["nodes"]] == ["node01"] and out["untouched"] == 1, out
        assert "rgw9.invalid" in json.dumps(out) and "resolve" in json.dumps(out), out
        # Degraded, not down: node01 kept serving with the RGWs it has, and the client never noticed.
        assert watch.missing == set() and seen.failed == 0, (watch.missing, seen.errors)
    finally:
        status, out, err = ober(capsys, "fleet", "push", "-i", original, "node01", "--secrets", secrets, "--json")
    assert status == 0, (out, err)


OPERATOR_A = """
import sys, time
from ober.inventory import load_inventory
from ober.remote.fleetops import Session
with Session(load_inventory(sys.argv[1]), "drain (operator A)"):
    print("held", flush=True)
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        pass
"""


def test_a_second_operator_is_refused_while_the_first_holds_the_fleet_lock(
    fleet: LabFleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9, item 6: drains by two operators at once could together go below min_available; now the second one
    is refused while the first one's command runs, and nothing changes."""
    inventory = str(fleet.inventory_path)
    vip = fleet.vips["ceph-a"]
    first = subprocess.Popen(
        [sys.executable, "-c", OPERATOR_A, inventory], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held", first.stderr
        status, out, err = ober(capsys, "fleet", "drain", "-i", inventory, "node02", "--reason", "b", "--json")
        assert status != 0, out
        assert "lock" in json.dumps(out) + err and "operator A" in json.dumps(out) + err, (out, err)
        assert set(fleet.router.next_hops(vip)) == {n.address for n in fleet.nodes.values()}
    finally:
        first.send_signal(signal.SIGINT)  # operator A's command ends: its lock is released on the way out
        first.wait(60)
    status, out, err = ober(capsys, "fleet", "lock", "-i", inventory, "--json")
    assert status == 0 and "operator A" not in json.dumps(out), out
