"""The shared end-to-end fixture: a 4-node lab fleet bootstrapped from nothing by the real ``ober fleet bootstrap``.

``ober lab up`` (`ober.lab.fleet.up`) starts 4 systemd-nspawn nodes with sshd, a BIRD router doing ECMP and two
real Ceph RGW groups; then ``ober --json fleet bootstrap`` runs as a user runs it (its own process, the lab's
inventory, secrets and ssh_config; the wheelhouse built once here so that a second run finds the same build) while
a thread polls the router's kernel route, so tests can see how the next-hops grew.

Use it from any test module::

    from tests.fleet_lab import FleetLab, fleet_lab_fixture  # noqa: F401  (registers the fixture ``fleet_lab``)

    def test_something(fleet_lab: FleetLab) -> None: ...

Every module that imports the fixture shares ONE lab: the fixture is session-scoped and reference-counted, so the
lab comes up once and goes down when the last module's session teardown runs. A test that drains, stops or breaks
a node must put it back in service before it returns (`FleetLab.wait_in_service` checks).

While developing, ``OBER_FLEET_LAB=DIR`` keeps the lab between runs: it is brought up in DIR if it is not up there
yet (else reused), bootstrapped (a no-op the second time) and left running; ``ober lab down --dir DIR`` ends it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ober.errors import OberError
from ober.lab import fleet as lab_fleet
from ober.lab.fleet import LabFleet
from ober.remote.wheelhouse import build_wheelhouse
from tests.conftest import require
from tests.test_lab_fleet import lab_prerequisites

NODES = 4
BOOTSTRAP_TIMEOUT = 1800.0
"""A first bootstrap installs a venv on every node (in parallel) and activates them one by one; generous, because
this 2-core machine is shared with other labs."""
IN_SERVICE_TIMEOUT = 120.0
HOP_POLL = 0.2


@dataclass
class Run:
    """One ``ober --json fleet bootstrap`` run."""

    code: int
    report: dict[str, Any]
    stderr: str
    seconds: float
    hops: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    """VIP → (seconds since the start, next-hop count) at each change of the count during the run."""

    def node(self, name: str) -> dict[str, Any]:
        """One node's part of the report."""
        found: list[dict[str, Any]] = [n for n in self.report.get("nodes", []) if n["name"] == name]
        assert found, f"{name} is not in the report: {json.dumps(self.report)[:2000]}"
        return found[0]


class FleetLab:
    """The bootstrapped lab fleet, with what tests need to drive and check it."""

    def __init__(self, fleet: LabFleet, wheelhouse: Path) -> None:
        self.fleet = fleet
        self.wheelhouse = wheelhouse
        self.first: Run | None = None
        """The bootstrap that brought the fleet up."""

    @property
    def addresses(self) -> dict[str, str]:
        """Node name → address."""
        return {name: node.address for name, node in self.fleet.nodes.items()}

    @property
    def vips(self) -> dict[str, str]:
        """Backend group → VIP."""
        return self.fleet.vips

    def hops(self, vip: str) -> list[str]:
        """The router's next-hops for ``vip`` (its kernel route)."""
        return sorted(self.fleet.router.next_hops(vip))

    def wait_hops(self, vip: str, expected: set[str], timeout: float = IN_SERVICE_TIMEOUT) -> float:
        """Wait (bounded) until the router's next-hops for ``vip`` are ``expected``; seconds it took."""
        started = time.monotonic()
        while True:
            seen = set(self.hops(vip))
            if seen == expected:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{vip}: next-hops {sorted(seen)}, expected {sorted(expected)}\n{self.diagnose()}")
            time.sleep(HOP_POLL)

    def wait_in_service(self, timeout: float = IN_SERVICE_TIMEOUT) -> None:
        """Every node is a next-hop of every VIP (what a test must leave behind)."""
        for vip in self.vips.values():
            self.wait_hops(vip, set(self.addresses.values()), timeout)

    def restore(self) -> None:
        """Put every node back in service after a test that may have stopped halfway (a failed assertion).

        Through the node's init (nsenter), not SSH: the test may have cut SSH. Without this, one failed roll test
        leaves a node drained, a roll record or a lock behind, and every later test fails for that reason instead
        of its own.
        """
        script = (
            "systemctl start ssh.service; rm -rf /var/lib/ober/fleet/roll.json /var/lib/ober/fleet/lock; "
            "/opt/ober/venv/bin/ober undrain >/dev/null 2>&1; "
            # A soft stop left waiting for dead flows would hold the start for the unit's whole stop timeout.
            'if [ "$(systemctl is-active ober-http)" = deactivating ]; then systemctl kill -s KILL ober-http; fi; '
            "systemctl start --no-block ober-http.service ober-bgp.service"
        )
        for name in self.fleet.nodes:
            init = self.init_pid(name)
            if init is None:
                continue  # not running: wait_in_service says so
            subprocess.run(
                ["nsenter", "-t", str(init), "-a", "sh", "-c", script], capture_output=True, timeout=120, check=False
            )
        self.wait_in_service()

    def init_pid(self, name: str, timeout: float = IN_SERVICE_TIMEOUT) -> int | None:
        """The node's init now (another PID after each reboot), waiting (bounded) while it is between two boots."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.fleet.init_pid(name)
            except OberError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(HOP_POLL)

    def ober(self, *args: str, timeout: float = BOOTSTRAP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """The real CLI in its own process, as a user runs it."""
        return subprocess.run(
            [sys.executable, "-m", "ober", *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def bootstrap(
        self, *args: str, inventory: Path | None = None, watch: bool = False, timeout: float = BOOTSTRAP_TIMEOUT
    ) -> Run:
        """``ober --json fleet bootstrap -i INVENTORY --secrets LOGIN --wheelhouse W ARGS``.

        With ``watch``, the router's next-hop count for every VIP is recorded while it runs (`Run.hops`).
        """
        inventory = inventory or self.fleet.inventory_path
        argv = ["--json", "fleet", "bootstrap", "-i", str(inventory), "--secrets", str(self.fleet.secrets_path)]
        argv += ["--wheelhouse", str(self.wheelhouse), *args]
        watcher = _HopWatcher(self) if watch else None
        started = time.monotonic()
        try:
            done = self.ober(*argv, timeout=timeout)
        finally:
            hops = watcher.stop() if watcher else {}
        try:
            report = json.loads(done.stdout)
        except ValueError:
            message = f"no JSON from ober fleet bootstrap (exit {done.returncode}): {done.stderr[-2000:]}"
            raise AssertionError(message) from None
        return Run(done.returncode, report, done.stderr, time.monotonic() - started, hops)

    def run_on(self, node: str, command: str, *, check: bool = True) -> str:
        """A shell command on a node as root (plain OpenSSH, host key verified); its stdout."""
        return self.fleet.run_on(node, command, check=check).stdout

    def diagnose(self) -> str:
        """What to look at when the fleet is not where a test expects: the router's view and each node's units."""
        lines: list[str] = []
        try:
            lines.append(f"router BGP: {self.fleet.router.bgp_sessions()}")
        except OberError as exc:
            lines.append(f"router: {exc.message}")
        for name in self.fleet.nodes:
            try:
                journal = self.run_on(name, "journalctl -u ober-http -u ober-bgp -n 15 --no-pager", check=False)
                lines.append(f"--- {name}\n{journal.strip()}")
            except OberError as exc:
                lines.append(f"--- {name}: {exc.message}")
        return "\n".join(lines)


class _HopWatcher:
    """Polls the router's route for every VIP in a thread, recording each change of the next-hop count."""

    def __init__(self, lab: FleetLab) -> None:
        self.lab = lab
        self.started = time.monotonic()
        self.seen: dict[str, list[tuple[float, int]]] = {vip: [] for vip in lab.vips.values()}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.done.is_set():
            for vip, changes in self.seen.items():
                try:
                    count = len(self.lab.hops(vip))
                except OberError:
                    continue
                if not changes or changes[-1][1] != count:
                    changes.append((round(time.monotonic() - self.started, 2), count))
            self.done.wait(HOP_POLL)

    def stop(self) -> dict[str, list[tuple[float, int]]]:
        self.done.set()
        self.thread.join(10)
        return self.seen


class _Shared:
    """The one lab of the session, brought up by the first user and taken down after the last one."""

    lock = threading.Lock()
    users = 0
    lab: FleetLab | None = None
    directory: Path | None = None
    error: str | None = None


def _bring_up() -> FleetLab:
    lab_prerequisites()
    try:
        wheelhouse = build_wheelhouse("3.13")
    except OberError as exc:
        require(False, f"cannot build the wheelhouse: {exc}")
        raise
    kept = os.environ.get("OBER_FLEET_LAB")
    if kept:
        directory = Path(kept).absolute()
    else:
        # Under /var/tmp: overlayfs refuses paths with ',' or ':', which pytest's tmp_path may hold.
        directory = Path(tempfile.mkdtemp(prefix="ober-fleet-lab-", dir="/var/tmp"))
        _Shared.directory = directory  # ours to take down at the end
    started = time.monotonic()
    fleet = lab_fleet.up(NODES, directory)
    print(f"fleet lab: {NODES} nodes up in {time.monotonic() - started:.1f}s ({directory})")
    lab = FleetLab(fleet, wheelhouse)
    run = lab.bootstrap(watch=True)
    lab.first = run
    print(f"fleet lab: ober fleet bootstrap took {run.seconds:.1f}s (exit {run.code}); next-hops: {run.hops}")
    for node in run.report.get("nodes", []):
        steps = ", ".join(f"{step['step']} {step['seconds']:.0f}s" for step in node["steps"])
        print(f"fleet lab: {node['name']} {node['status']}: {steps}")
    if run.code != 0:
        failed = [f"{n['name']} at {n['failed_step']}: {n['error']}" for n in run.report.get("nodes", []) if n["error"]]
        raise AssertionError(f"ober fleet bootstrap failed: {failed or run.report}\n{lab.diagnose()}")
    return lab


@pytest.fixture(scope="session", name="fleet_lab")
def fleet_lab_fixture() -> Iterator[FleetLab]:
    """A 4-node lab fleet bootstrapped by ``ober fleet bootstrap``, shared by every module that uses it."""
    with _Shared.lock:
        _Shared.users += 1
        if _Shared.lab is None and _Shared.error is None:
            try:
                _Shared.lab = _bring_up()
            except AssertionError as exc:
                _Shared.error = str(exc)
            except OberError as exc:
                _Shared.error = f"the lab fleet did not come up: {exc}"
            except BaseException:  # a skip (prerequisites), Ctrl-C: this user never got the lab
                _Shared.users -= 1
                raise
    try:
        if _Shared.lab is None:
            pytest.fail(_Shared.error or "the lab fleet did not come up")
        yield _Shared.lab
    finally:
        with _Shared.lock:
            _Shared.users -= 1
            if _Shared.users == 0 and _Shared.directory is not None:
                lab_fleet.down(_Shared.directory)
                shutil.rmtree(_Shared.directory, ignore_errors=True)
                _Shared.lab = _Shared.directory = None
