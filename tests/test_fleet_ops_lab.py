"""``ober fleet status|drain|undrain|diff|push|sync`` against a real lab fleet over real SSH.

Four systemd-nspawn nodes (`ober lab up`), a BIRD router doing ECMP, two real Ceph RGW groups. ober is installed
on each node offline from the wheelhouse (what `ober fleet bootstrap` will do), then configured with the fleet's
own ``ober fleet push`` and its units started. The router's kernel route is the truth about who is in service.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.cli import main
from ober.errors import OberError
from ober.inventory import load_inventory
from ober.lab import fleet as lab_fleet
from ober.lab.fleet import NODE_PEM, LabFleet
from ober.remote.connection import connect, targets
from ober.remote.pool import for_each
from tests.test_lab_fleet import lab_prerequisites
from tests.test_lab_nspawn import wheelhouse_for_nodes

pytestmark = pytest.mark.lab

WHEELS = "/var/tmp/ober-wheels"
VENV = "/opt/ober/venv"
READY_TIMEOUT = 180.0
CONFIG_FILES = {"/opt/ober/etc/haproxy.cfg", "/opt/ober/etc/ober.yaml"}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    """Poll (bounded) until ``check`` holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)
    return time.monotonic() - started


def reachable_by_address(fleet: LabFleet) -> None:
    """Make the lab's ssh_config match each node by its address too (what the fleet connects to).

    Until `ober lab up` writes ``Host NAME ADDRESS`` itself (see /work/shared/team/NOTE-for-lab-and-ssh.txt);
    a no-op once it does.
    """
    text = fleet.ssh_config.read_text()
    for name, node in fleet.nodes.items():
        text = text.replace(f"Host {name}\n", f"Host {name} {node.address}\n")
    fleet.ssh_config.write_text(text)


def install(fleet: LabFleet) -> None:
    """Put ober on every node offline, as bootstrap would: the wheelhouse over SSH, a venv, the certificate."""
    wheelhouse = wheelhouse_for_nodes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(wheelhouse, arcname=".")
    archive = buffer.getvalue()
    pem = fleet.pem.read_bytes()
    inventory = load_inventory(fleet.inventory_path)

    def one(target: Any) -> None:
        with connect(target) as conn:
            steps: list[tuple[list[str], bytes | None]] = [
                (["mkdir", "-p", WHEELS], None),
                (["tar", "-x", "-C", WHEELS], archive),
                (["python3", "-m", "venv", VENV], None),
                ([f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", WHEELS, "ober"], None),
                (["systemctl", "enable", "--now", "systemd-networkd"], None),
                (["install", "-d", "-m", "700", "/opt/ober/etc/certs"], None),
            ]
            for argv, stdin in steps:
                done = conn.run(argv, timeout=600, stdin=stdin)
                if not done.ok:
                    raise OberError(f"{target.name}: {' '.join(argv[:3])}: {done.last_line()}")
            conn.put(pem, NODE_PEM, 0o600)

    outcomes = for_each(targets(inventory, inventory.nodes), one, parallel=4, name=lambda t: t.name)
    failed = [o.error for o in outcomes if not o.ok]
    assert not failed, failed


def start_units(fleet: LabFleet) -> None:
    for name in fleet.nodes:
        fleet.run_on(name, "systemctl enable --now ober-http ober-bgp", timeout=120)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFleet]:
    """A 4-node lab, ober installed, configured by `ober fleet push`, every node announcing both VIPs."""
    lab_prerequisites()
    reuse = os.environ.get("OBER_TEST_FLEET_DIR")  # a lab already prepared by this fixture, for quick reruns
    directory = Path(reuse) if reuse else tmp_path_factory.mktemp("fleetops") / "lab"
    lab = lab_fleet.load(directory) if reuse else lab_fleet.up(4, directory)
    try:
        if not reuse:
            reachable_by_address(lab)
            install(lab)
            assert main(["fleet", "push", "-i", str(lab.inventory_path), "--secrets", str(lab.secrets_path)]) == 0
            start_units(lab)
        addresses = {node.address for node in lab.nodes.values()}
        for vip in lab.vips.values():
            wait_until(partial(all_hops, lab, vip, addresses), f"{vip} via 4 nodes", READY_TIMEOUT)
        yield lab
    finally:
        if not reuse:
            lab_fleet.down(directory)


def all_hops(lab: LabFleet, vip: str, addresses: set[str]) -> bool:
    return set(lab.router.next_hops(vip)) == addresses


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
        # What fleet push deployed is what the inventory renders, secret files included.
        assert node["drift"] == {"drifted": False, "changed": [], "removed": [], "unknown": []}
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
    assert ghost["name"] == "node09" and not ghost["reachable"] and not ghost["live"]
    assert "node09" in ghost["error"] and "Traceback" not in json.dumps(out)
    assert [n["reachable"] for n in out["nodes"][:4]] == [True] * 4
    status, text, err = ober(capsys, "fleet", "status", "-i", str(inventory))
    assert status == 1 and "unreachable" in text and "node09" in text and "Traceback" not in err


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
