"""``ober fleet restart|upgrade`` on the shared 4-node lab under continuous S3 load (real RGW, TLS, BIRD ECMP).

What a user would notice is measured where they would notice it: the S3 client counts requests that failed after
botocore's default retries (and the retries), the router's kernel route is polled every 50 ms for the fewest
next-hops. The CLI runs in its own process, as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ober.lab.demo import load_client
from ober.lab.s3load import HopWatch, LoadResult
from tests.conftest import require
from tests.debs import newer_haproxy_deb
from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the fixture fleet_lab)

pytestmark = pytest.mark.lab

ROLL_TIMEOUT = 1500.0
# Short pauses keep the test quick; the roll still waits for every verify.
FAST = ("--settle", "1", "--drain-timeout", "10")


class Rolled:
    """One roll under load: the CLI's JSON report, what the client saw, what the router had."""

    def __init__(self, code: int, report: dict[str, Any], stderr: str, load: LoadResult, watch: HopWatch) -> None:
        self.code = code
        self.report = report
        self.stderr = stderr
        self.load = load
        self.watch = watch

    def results(self) -> dict[str, str]:
        return {r["node"]: r["status"] for r in self.report.get("results", [])}

    def why(self) -> str:
        """What the roll said of its nodes, and its stderr: the message when a roll exits non-zero."""
        said = [f"{r['node']} {r['status']}: {r.get('detail', '')}" for r in self.report.get("results", [])]
        return "; ".join(said) + " | " + self.stderr[-2000:]

    def show(self, what: str) -> str:
        line = (
            f"{what}: exit {self.code}, {self.report.get('seconds')}s (waits {self.report.get('waits')}s); "
            f"client: {self.load.line()}; fewest next-hops {self.watch.fewest}"
        )
        print(line)
        return line


def _ober(*args: str, timeout: float = ROLL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ober", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"no JSON (exit {done.returncode}): {done.stdout[-1000:]} {done.stderr[-2000:]}") from None
    return data


@pytest.fixture(scope="module")
def lab(fleet_lab: FleetLab) -> Iterator[FleetLab]:
    fleet_lab.wait_in_service()
    yield fleet_lab
    fleet_lab.wait_in_service()


@pytest.fixture(autouse=True)
def _restored(fleet_lab: FleetLab) -> Iterator[None]:
    """After each test (one that failed halfway too), the next one starts from a fleet in service."""
    yield
    fleet_lab.restore()


def roll(lab: FleetLab, workdir: Path, *args: str) -> Rolled:
    """``ober --json fleet ARGS -i INVENTORY`` while the S3 load runs and the router is watched."""
    inventory = str(lab.fleet.inventory_path)
    with (
        load_client(lab.fleet, workdir) as load,
        HopWatch(lab.fleet.router.next_hops, list(lab.vips.values())) as watch,
    ):
        time.sleep(2)  # the load is established on every node before the roll starts
        done = _ober("--json", "fleet", *args, "-i", inventory, *FAST)
        time.sleep(2)
        seen = load.stop()
    return Rolled(done.returncode, _json(done), done.stderr, seen, watch)


def test_dry_run_shows_each_nodes_class_and_changes_nothing(lab: FleetLab) -> None:
    inventory = str(lab.fleet.inventory_path)
    plan = _json(_ober("--json", "fleet", "restart", "-i", inventory, "--dry-run"))
    classes = {s["node"]: s["class"] for s in plan["steps"]}
    assert set(classes) == set(lab.addresses)
    assert set(classes.values()) <= {"restart", "full"}
    full = _json(_ober("--json", "fleet", "restart", "-i", inventory, "--dry-run", "--full"))
    assert {s["class"] for s in full["steps"]} == {"full"} and all(s["withdraws"] for s in full["steps"])
    reload = _json(_ober("--json", "fleet", "restart", "-i", inventory, "--dry-run", "--reload"))
    assert {s["class"] for s in reload["steps"]} == {"reload"}
    # Nothing was locked or recorded.
    assert "not locked" in _ober("fleet", "lock", "-i", inventory).stdout


def test_rolling_restart_under_load_loses_no_request_and_keeps_three_next_hops(lab: FleetLab, tmp_path: Path) -> None:
    rolled = roll(lab, tmp_path, "restart")
    line = rolled.show("rolling restart")
    assert rolled.code == 0, rolled.why()
    assert set(rolled.results().values()) == {"done"}, line
    assert rolled.load.failed == 0, (line, rolled.load.errors)
    assert rolled.load.sent > 100 and rolled.load.multipart_uploads > 0, line
    assert rolled.watch.lowest() >= 3, (line, rolled.watch.changes)
    if {s["class"] for s in rolled.report["steps"]} == {"restart"}:
        # Graceful restart held every route: the ECMP set never changed.
        assert rolled.watch.lowest() == 4, (line, rolled.watch.changes)
    lab.wait_in_service()


def test_hitless_reload_leaves_the_ecmp_set_unchanged(lab: FleetLab, tmp_path: Path) -> None:
    # The HAProxy "upgrade" here is a reload: nodes have no package mirror, and a reload is exactly how a new
    # HAProxy binary is taken into service (the master re-executes it) without leaving the ECMP set.
    rolled = roll(lab, tmp_path, "restart", "--reload")
    line = rolled.show("rolling reload")
    assert rolled.code == 0, rolled.why()
    assert rolled.load.failed == 0, (line, rolled.load.errors)
    assert rolled.watch.fewest == dict.fromkeys(lab.vips.values(), 4), (line, rolled.watch.changes)
    assert len(rolled.watch.changes) == len(lab.vips), rolled.watch.changes  # only the first sighting


def test_rolling_upgrade_under_load(lab: FleetLab, tmp_path: Path) -> None:
    rolled = roll(lab, tmp_path, "upgrade", "--yes", "--reinstall")
    line = rolled.show("rolling upgrade (reinstall of ober and ExaBGP)")
    assert rolled.code == 0, rolled.why()
    changes = {s["node"]: s["changes"] for s in rolled.report["steps"]}
    assert all("ober" in c and "exabgp" in c for c in changes.values()), changes
    assert rolled.load.failed == 0, (line, rolled.load.errors)
    assert rolled.watch.lowest() >= 3, (line, rolled.watch.changes)
    lab.wait_in_service()


def test_an_haproxy_package_upgrade_is_a_hitless_reload_that_keeps_every_next_hop(
    lab: FleetLab, tmp_path: Path
) -> None:
    # A new HAProxy package shipped from the workstation (the nodes have no mirror), installed from the file, then
    # taken into service by a reload: the master re-executes the new binary and the node never leaves ECMP.
    names = sorted(lab.addresses)
    deb, version = newer_haproxy_deb(tmp_path / "work", tmp_path, f"+ober{int(time.time())}")
    masters = {n: lab.run_on(n, "systemctl show -p MainPID --value ober-http").strip() for n in names}
    rolled = roll(lab, tmp_path, "upgrade", "--yes", "--haproxy-package", str(deb))
    line = rolled.show("rolling HAProxy package upgrade")
    assert rolled.code == 0, rolled.why()
    steps = {s["node"]: s for s in rolled.report["steps"]}
    assert {s["class"] for s in steps.values()} == {"reload"}, steps
    assert all("haproxy_package" in s["changes"] for s in steps.values()), steps
    assert rolled.load.failed == 0, (line, rolled.load.errors)
    assert rolled.watch.fewest == dict.fromkeys(lab.vips.values(), 4), (line, rolled.watch.changes)
    for name in names:
        assert lab.run_on(name, "dpkg-query -W -f '${Version}' haproxy") == version
        master = lab.run_on(name, "systemctl show -p MainPID --value ober-http").strip()
        assert master == masters[name]  # the same master: reloaded, not restarted
        # ...running the new file (dpkg replaced the old one: a master that did not re-execute shows it deleted).
        assert "(deleted)" not in lab.run_on(name, f"readlink /proc/{master}/exe")
    # Run again: every node already has that package, nothing to do.
    again = _json(
        _ober(
            "--json",
            "fleet",
            "upgrade",
            "--yes",
            "--haproxy-package",
            str(deb),
            "-i",
            str(lab.fleet.inventory_path),
            *FAST,
        )
    )
    assert {s["class"] for s in again["steps"]} == {"skip"}, again["steps"]


def test_full_roll_withdraws_one_node_at_a_time(lab: FleetLab, tmp_path: Path) -> None:
    rolled = roll(lab, tmp_path, "restart", "--full")
    line = rolled.show("rolling restart --full")
    assert rolled.code == 0, rolled.why()
    assert rolled.watch.lowest() == 3, (line, rolled.watch.changes)  # each node really left, one at a time
    print(f"--full: failed after retries {rolled.load.failed} (a withdraw re-hashes other nodes' flows)")
    lab.wait_in_service()


def test_reboot_roll_takes_the_node_out_reboots_it_and_brings_it_back_serving(lab: FleetLab, tmp_path: Path) -> None:
    victim = sorted(lab.addresses)[-1]
    record = next(n for n in lab.fleet.state.data["nodes"] if n["name"] == victim)
    # A node of a lab made before supervisors would not come back from its reboot (nspawn exits 133 for good).
    require("supervisor" in record, "this lab predates nodes surviving a reboot: ober lab down, then up")
    started = lab.run_on(victim, "cut -d' ' -f22 /proc/1/stat").strip()  # PID 1's start: new at each boot
    init = lab.fleet.init_pid(victim)
    rolled = roll(lab, tmp_path, "restart", victim, "--reboot")
    line = rolled.show(f"rolling restart --reboot {victim}")
    assert rolled.code == 0, rolled.why()
    assert rolled.results() == {victim: "done"}
    assert [s["class"] for s in rolled.report["steps"]] == ["reboot"]
    assert rolled.watch.lowest() == 3, (line, rolled.watch.changes)  # it really left, the three others served
    assert lab.run_on(victim, "cut -d' ' -f22 /proc/1/stat").strip() != started  # it really rebooted
    assert lab.fleet.init_pid(victim) != init
    # Its units came back by themselves at boot: no ordering cycle for systemd to break by dropping one.
    assert lab.run_on(victim, "systemctl is-active ober-http ober-bgp").split() == ["active", "active"]
    assert "ordering cycle" not in lab.run_on(victim, "systemd-analyze verify default.target 2>&1", check=False)
    print(f"--reboot: failed after retries {rolled.load.failed} (a withdraw re-hashes other nodes' flows)")
    lab.wait_in_service()


def test_a_node_failing_verify_stops_the_roll_withdrawn_and_a_rerun_resumes(lab: FleetLab, tmp_path: Path) -> None:
    inventory = str(lab.fleet.inventory_path)
    names = sorted(lab.addresses)
    bad = names[1]
    cfg = "/opt/ober/etc/haproxy.cfg"
    lab.run_on(bad, f"cp {cfg} /root/haproxy.cfg.good && echo 'this-is-not-haproxy' >> {cfg}")
    try:
        # --reload: the quickest class, and the one whose verify the broken config fails (the reload is refused).
        done = _ober("--json", "fleet", "restart", "--reload", "-i", inventory, *FAST)
        report = _json(done)
        assert done.returncode == 1
        results = {r["node"]: r for r in report["results"]}
        assert results[names[0]]["status"] == "done"
        assert results[bad]["status"] == "failed" and results[bad]["left_withdrawn"]
        assert {results[n]["status"] for n in names[2:]} == {"not reached"}
        assert "run `ober fleet restart --reload` again" in report["summary"]
        assert "left withdrawn" in report["summary"]
        # A failed roll says where its lock stands: released here (every node still answered SSH).
        assert "(the fleet lock is released)" in report["summary"] and report["lock"]["released"], report
        others = {lab.addresses[n] for n in names if n != bad}
        for vip in lab.vips.values():
            lab.wait_hops(vip, others, timeout=30)
    finally:
        lab.run_on(bad, f"cp /root/haproxy.cfg.good {cfg}")
    again = _json(_ober("--json", "fleet", "restart", "--reload", "-i", inventory, *FAST))
    assert again["resumes"], again
    statuses = {r["node"]: r["status"] for r in again["results"]}
    assert statuses[names[0]] == "skipped" and statuses[bad] == "done", statuses
    assert [r["node"] for r in again["results"]][1] == bad  # the withdrawn node goes first
    lab.wait_in_service()


def test_ssh_lost_mid_roll_stops_it_with_that_node_withdrawn_and_a_rerun_finishes(
    lab: FleetLab, tmp_path: Path
) -> None:
    inventory = str(lab.fleet.inventory_path)
    names = sorted(lab.addresses)
    victim = names[1]
    nsenter = ["nsenter", "-t", str(lab.fleet.init_pid(victim)), "-a"]
    # Two targets keep it short: the first is rolled, the second loses SSH while it is withdrawn.
    targets = f"{names[0]},{victim}"
    argv = [sys.executable, "-m", "ober", "--json", "fleet", "restart", targets, "--full", "-i", inventory, *FAST]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # When the victim leaves the router's ECMP set, the roll is working on it: cut its SSH there.
        vip = next(iter(lab.vips.values()))
        deadline = time.monotonic() + 600
        while lab.addresses[victim] in lab.hops(vip) or names[0] not in _done_marker(lab, names[0]):
            assert time.monotonic() < deadline and process.poll() is None, "the roll never reached the victim"
            time.sleep(0.1)
        subprocess.run([*nsenter, "systemctl", "stop", "ssh.socket", "ssh.service"], check=False, timeout=30)
        subprocess.run([*nsenter, "systemctl", "kill", "--signal=SIGKILL", "ssh.service"], check=False, timeout=30)
        out, err = process.communicate(timeout=ROLL_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        subprocess.run([*nsenter, "systemctl", "start", "ssh.service"], check=False, timeout=30)
    report = json.loads(out)
    statuses = {r["node"]: r["status"] for r in report["results"]}
    assert process.returncode == 1 and statuses[victim] == "failed", (statuses, err[-2000:])
    assert statuses[names[0]] == "done"
    others = {lab.addresses[n] for n in names if n != victim}
    assert set(lab.hops(vip)) == others  # the victim stays withdrawn, the other three serve
    # The roll could not release its lock on the victim, and says so with how to free it. The lease still
    # runs (nothing proves the holder dead from elsewhere), so the operator breaks it.
    assert report["lock"] == {
        "released": False,
        "held_on": [victim],
        "how_to_release": "it expires 15m after its last renewal, or remove it now with: ober fleet lock --break",
    }, report
    assert f"the fleet lock is still held on {victim}" in report["summary"]
    refused = _ober("fleet", "restart", targets, "--full", "-i", inventory, *FAST)
    assert refused.returncode == 1 and f"(on {victim})" in refused.stderr and "lease renewed" in refused.stderr
    assert _ober("fleet", "lock", "--break", "-i", inventory).returncode == 0
    again = _json(_ober("--json", "fleet", "restart", targets, "--full", "-i", inventory, *FAST))
    assert {r["node"]: r["status"] for r in again["results"]} == {names[0]: "skipped", victim: "done"}, again
    lab.wait_in_service()


def _done_marker(lab: FleetLab, node: str) -> str:
    """The first node's roll record (done once the roll moved past it)."""
    return node if '"done": true' in lab.run_on(node, "cat /var/lib/ober/fleet/roll.json", check=False) else ""


def test_a_second_concurrent_roll_is_refused_by_the_lock(lab: FleetLab) -> None:
    inventory = str(lab.fleet.inventory_path)
    argv = [sys.executable, "-m", "ober", "fleet", "restart", "--reload", "-i", inventory, "--settle", "5"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while lab.run_on(sorted(lab.addresses)[-1], "test -d /var/lib/ober/fleet/lock && echo held", check=False) != (
            "held\n"
        ):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
        second = _ober("fleet", "restart", "-i", inventory)
        assert second.returncode == 1
        assert "the fleet is locked by" in second.stderr and "since" in second.stderr, second.stderr
        shown = _ober("fleet", "lock", "-i", inventory)
        assert "locked by" in shown.stdout and "restart" in shown.stdout
        first.communicate(timeout=ROLL_TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0
    assert "not locked" in _ober("fleet", "lock", "-i", inventory).stdout
