"""``ober lab up|down|status``: a persistent lab fleet that outlives the command that started it.

The lab tests run the real CLI in a subprocess (so the lab must survive its exit), reach the nodes with plain
OpenSSH through the written ssh_config, and check that ``down`` leaves no namespace, process or mount behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.errors import OberError
from ober.facts import find_program
from ober.lab import fleet as lab_fleet
from ober.lab import labstate
from ober.lab.image import DEFAULT_IMAGE
from ober.lab.labstate import Proc
from ober.lab.netns import Lab, list_netns, run
from ober.lab.nspawn import boot_node
from ober.lab.rgw import missing_programs
from ober.lab.router import RouterView, start_router
from tests.conftest import require

RELAY = Path(lab_fleet.__file__).with_name("relay.py")
UP_TIMEOUT = 240


def ober(*args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """The real CLI in its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "ober", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def lab_prerequisites() -> None:
    require(os.geteuid() == 0, "the lab fleet needs root")
    require(shutil.which("systemd-nspawn") is not None, "systemd-nspawn is not installed (systemd-container)")
    require(shutil.which("ssh") is not None, "no OpenSSH client")
    require(find_program("bird") is not None, "bird2 is not installed")
    require(not missing_programs(), f"Ceph is not installed: {missing_programs()}")
    require((DEFAULT_IMAGE / ".ober-image").exists(), "no node image (ober.lab.image.ensure_image)")


def state_of(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "state.json").read_text())
    return data


def recorded_procs(data: dict[str, Any]) -> list[Proc]:
    """Every process the state lists (a node's supervisor; its nspawn and init change at each reboot)."""
    records = [data["router"].get("bird")]
    records += [n["supervisor"] for n in data["nodes"]]
    records += [d for cluster in data["clusters"].values() for d in cluster["daemons"]]
    return [Proc.load(record) for record in records if record]


def nspawn_processes(directory: Path) -> list[str]:
    """systemd-nspawn processes (and their supervisors) running a root below ``directory``, from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(word.endswith("systemd-nspawn") for word in words) and any(str(directory) in w for w in words):
            found.append(f"{cmdline.parent.name}: {' '.join(words)[:200]}")
    return found


def mounted_under(directory: Path) -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if str(directory) in line]


def assert_all_gone(directory: Path, data: dict[str, Any]) -> None:
    """Nothing the lab made is left: its namespaces, processes, mounts and directory."""
    assert [name for name in list_netns() if name.startswith(data["prefix"])] == []
    assert [p for p in recorded_procs(data) if p.alive()] == []
    assert nspawn_processes(directory) == []
    assert mounted_under(directory) == []
    assert not directory.exists()


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """A new lab directory (short: Ceph's admin socket paths are limited); torn down whatever the test did."""
    directory = Path(tempfile.mkdtemp(prefix="ober-lab-test-")) / "lab"
    yield directory
    if (directory / "state.json").exists():
        lab_fleet.down(directory)
    shutil.rmtree(directory.parent, ignore_errors=True)


@pytest.mark.lab
def test_up_outlives_the_command_ssh_status_inventory_then_down_removes_everything(lab_dir: Path) -> None:
    lab_prerequisites()
    started = time.monotonic()
    done = ober("lab", "up", "2", "--dir", str(lab_dir))
    print(f"ober lab up 2: {time.monotonic() - started:.1f}s")
    assert done.returncode == 0, done.stderr
    assert "lab of 2 nodes up" in done.stdout
    data = state_of(lab_dir)
    assert data["complete"] and [n["name"] for n in data["nodes"]] == ["node01", "node02"]
    assert all(p.alive() for p in recorded_procs(data))  # the up command has exited; its lab runs on

    # Plain OpenSSH with the written config reaches each node through the relay, its host key verified.
    # By name and by address (the fleet tools look a node up by its inventory address).
    for node in ("node01", "node02", "100.64.0.11"):
        ssh = subprocess.run(
            ["ssh", "-F", str(lab_dir / "ssh_config"), node, "hostname"], capture_output=True, text=True, timeout=30
        )
        assert (ssh.returncode, ssh.stdout.strip()) == (0, "node01" if node == "100.64.0.11" else node), ssh.stderr
    # Another node's keys pinned for node01: refused, not learned.
    swapped = lab_dir / "known_hosts.swapped"
    lines = (lab_dir / "known_hosts").read_text().splitlines()
    swapped.write_text("".join(f"node01,100.64.0.11 {line.split(' ', 1)[1]}\n" for line in lines if "node02" in line))
    config = (lab_dir / "ssh_config").read_text().replace(str(lab_dir / "known_hosts"), str(swapped))
    (lab_dir / "ssh_config.swapped").write_text(config)
    argv = ["ssh", "-F", str(lab_dir / "ssh_config.swapped"), "node01", "true"]
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr

    fleet = lab_fleet.load(lab_dir)
    # The node reaches the RGW segments through the router, and nothing beyond the lab: the router has no way out.
    rgw = fleet.run_on("node01", "curl -s -o /dev/null -w '%{http_code}' http://100.64.1.11:7480/").stdout
    assert rgw == "200"
    assert run(["ip", "-n", fleet.router.ns, "route", "show", "default"]).stdout.strip() == ""
    outside = fleet.run_on("node01", "curl -sS -m 3 http://203.0.113.1/ http://192.0.2.1/", check=False)
    assert outside.returncode != 0

    shown = ober("--json", "lab", "status", "--dir", str(lab_dir), timeout=60)
    assert shown.returncode == 0, shown.stdout
    report = json.loads(shown.stdout)
    assert report["healthy"]
    assert [(n["name"], n["running"], n["sshd"], n["system"]) for n in report["nodes"]] == [
        ("node01", True, True, "running"),
        ("node02", True, True, "running"),
    ]
    # Not bootstrapped yet: BIRD waits for the nodes, and no VIP is routed.
    assert report["router"]["sessions"] == {"100.64.0.11": "Passive", "100.64.0.12": "Passive"}
    assert report["router"]["next_hops"] == {"198.51.100.10": [], "198.51.100.20": []}
    assert {group: all(b["endpoints"].values()) for group, b in report["backends"].items()} == {
        "ceph-a": True,
        "ceph-b": True,
    }

    listed = ober("--json", "fleet", "inventory", "-i", str(fleet.inventory_path), timeout=60)
    assert listed.returncode == 0, listed.stdout
    inventory = json.loads(listed.stdout)
    assert [(n["name"], n["address"]) for n in inventory["nodes"]] == [
        ("node01", "100.64.0.11"),
        ("node02", "100.64.0.12"),
    ]
    first = inventory["nodes"][0]["config"]
    assert first["bgp"]["neighbors"] == ["100.64.0.1"]
    assert (first["bgp"]["local_as"], first["bgp"]["peer_as"]) == (lab_fleet.NODE_AS, lab_fleet.ROUTER_AS)
    assert {vip["backend"]: vip["address"] for vip in first["vips"]} == fleet.vips and len(fleet.vips) == 2
    raw = yaml.safe_load(fleet.inventory_path.read_text())
    assert raw["ssh"] == {"user": "root", "config": str(fleet.ssh_config), "known_hosts": str(fleet.known_hosts)}
    assert (fleet.secrets_path.stat().st_mode & 0o777) == 0o600
    assert set(yaml.safe_load(fleet.secrets_path.read_text())) == {"stats_password"}
    assert "BEGIN CERTIFICATE" in fleet.ca_pem.read_text() and "PRIVATE KEY" not in fleet.ca_pem.read_text()

    again = ober("lab", "up", "--dir", str(lab_dir))
    assert again.returncode == 0 and "already up" in again.stdout
    other = ober("lab", "up", "3", "--dir", str(lab_dir))
    assert other.returncode == 1 and "already up" in other.stderr and "Traceback" not in other.stderr

    stopped = ober("lab", "down", "--dir", str(lab_dir), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(lab_dir, data)
    idle = ober("lab", "down", "--dir", str(lab_dir))
    assert (idle.returncode, idle.stdout.strip()) == (0, f"no lab in {lab_dir}: nothing to do")


PROBE = "ober-reboot-probe.service"
REBOOT_TIMEOUT = 120.0


def pid1_started(fleet: lab_fleet.LabFleet, node: str) -> str:
    """When the node's PID 1 started (``/proc/1/stat`` field 22): new after a reboot (nspawn shares the host's
    boot_id, so that one does not change)."""
    return fleet.run_on(node, "cut -d' ' -f22 /proc/1/stat").stdout.strip()


@pytest.mark.lab
def test_a_node_rebooted_from_inside_comes_back_and_down_still_removes_everything(lab_dir: Path) -> None:
    lab_prerequisites()
    done = ober("lab", "up", "1", "--dir", str(lab_dir))
    assert done.returncode == 0, done.stderr
    data = state_of(lab_dir)
    fleet = lab_fleet.load(lab_dir)
    # A unit enabled on the node (in its own overlay, as ober's units are after bootstrap) starts again at boot.
    unit = "[Unit]\\nDescription=probe\\n[Service]\\nType=oneshot\\nRemainAfterExit=yes\\nExecStart=/bin/true\\n"
    unit += "[Install]\\nWantedBy=multi-user.target\\n"
    fleet.run_on("node01", f"printf '{unit}' > /etc/systemd/system/{PROBE} && systemctl enable --now {PROBE}")
    before, init_before = pid1_started(fleet, "node01"), fleet.init_pid("node01")
    supervisor = Proc.load(data["nodes"][0]["supervisor"])

    # The SSH session may end with the node's sshd before the command does: its status says nothing.
    fleet.run_on("node01", "systemctl reboot", check=False)
    started = time.monotonic()
    while True:
        with contextlib.suppress(OberError):
            seen = fleet.run_on("node01", "cut -d' ' -f22 /proc/1/stat", timeout=10, check=False)
            if seen.returncode == 0 and seen.stdout.strip() != before:
                break
        assert time.monotonic() - started < REBOOT_TIMEOUT, "node01 did not answer SSH again after its reboot"
        time.sleep(0.2)
    back = time.monotonic() - started
    state = fleet.run_on("node01", "systemctl is-system-running --wait", check=False).stdout.strip()
    booted = time.monotonic() - started
    print(f"node01 rebooted: SSH with a new PID 1 after {back:.1f}s, systemd {state} after {booted:.1f}s")

    assert state == "running"
    assert fleet.run_on("node01", f"systemctl is-active ssh {PROBE}").stdout.split() == ["active", "active"]
    assert supervisor.alive()  # the same supervisor started nspawn again
    assert "exited 133 (reboot): starting it again" in (lab_dir / "node01" / "console.log").read_text()
    # nsenter users get the init of now, not the one recorded before the reboot.
    init = fleet.init_pid("node01")
    assert init != init_before and not Path(f"/proc/{init_before}").exists()
    inside = subprocess.run(
        ["nsenter", "-t", str(init), "-a", "sh", "-c", "hostname; cut -d' ' -f22 /proc/1/stat"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert inside.stdout.split() == ["node01", pid1_started(fleet, "node01")]
    shown = json.loads(ober("--json", "lab", "status", "--dir", str(lab_dir), timeout=60).stdout)
    assert shown["healthy"] and [(n["running"], n["sshd"], n["system"]) for n in shown["nodes"]] == [
        (True, True, "running")
    ]
    again = ober("lab", "up", "--dir", str(lab_dir))
    assert again.returncode == 0 and "already up" in again.stdout

    stopped = ober("lab", "down", "--dir", str(lab_dir), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(lab_dir, data)


@pytest.mark.lab
def test_down_cleans_up_after_an_up_that_was_killed_midway(lab_dir: Path) -> None:
    lab_prerequisites()
    up = subprocess.Popen(
        [sys.executable, "-m", "ober", "-q", "lab", "up", "1", "--dir", str(lab_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        # Killed while the RGW clusters start: the router runs, some namespaces and daemons exist.
        while not (lab_dir / "state.json").exists() or not state_of(lab_dir)["router"]:
            assert up.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        up.send_signal(signal.SIGKILL)
        up.wait()
    time.sleep(1)  # let the cluster bring-up get further, orphaned
    data = state_of(lab_dir)
    assert not data["complete"]
    assert any(name.startswith(data["prefix"]) for name in list_netns())

    refused = ober("lab", "up", "1", "--dir", str(lab_dir))
    assert refused.returncode == 1 and "half-made lab" in refused.stderr
    status = ober("lab", "status", "--dir", str(lab_dir), timeout=60)
    assert status.returncode == 1 and "half made" in status.stdout

    stopped = ober("lab", "down", "--dir", str(lab_dir), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert_all_gone(lab_dir, data)


@pytest.mark.lab
def test_up_failing_midway_tears_down_what_it_started(lab_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab_prerequisites()
    booted: list[str] = []
    real_boot = boot_node

    def boot_then_fail(*args: Any, **kwargs: Any) -> Any:
        # The second node fails to boot, after the router, both RGW groups and the first node are up.
        if booted:
            raise OberError("node02: sshd did not answer (injected)")
        booted.append(args[2])
        return real_boot(*args, **kwargs)

    monkeypatch.setattr(lab_fleet, "boot_node", boot_then_fail)
    said: list[str] = []
    seen: list[dict[str, Any]] = []

    def progress(text: str) -> None:
        said.append(text)
        if text.startswith("booting"):
            seen.append(state_of(lab_dir))

    with pytest.raises(OberError, match="injected"):
        lab_fleet.up(2, lab_dir, progress=progress)
    assert booted == ["node01"]
    assert said[-1] == "bring-up failed: tearing down what was started"
    data = seen[-1]  # the state as node02's boot began: node01, the router and both RGW groups running
    assert [n["name"] for n in data["nodes"]] == ["node01"] and len(data["clusters"]) == 2
    assert_all_gone(lab_dir, data)


@pytest.mark.lab
def test_non_root_gets_a_clear_error() -> None:
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root and setpriv to become nobody")
    for args in (["lab", "up", "1"], ["lab", "status"], ["lab", "down"]):
        done = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m", "ober", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert done.returncode == 1, done.stderr
        expected = "error: ober lab needs root (network namespaces, mounts, containers) (fix: run it with sudo)"
        assert done.stderr.strip() == expected


@pytest.mark.lab
def test_a_directory_the_lab_cannot_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    lab_prerequisites()
    before = list_netns()
    for bad, why in ((tmp_path / "a,b", "overlayfs"), (tmp_path / ("x" * 80), "too long")):
        done = ober("lab", "up", "1", "--dir", str(bad))
        assert done.returncode == 1 and why in done.stderr and "Traceback" not in done.stderr
        assert not bad.exists()
    assert [name for name in list_netns() if name not in before and name.startswith("ober-lab-")] == []


# --- no root needed ---------------------------------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP server on loopback that answers ``got N bytes`` once its client has finished sending."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
            connection.sendall(f"got {len(received)} bytes: {received[:5].decode()}".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()
    server.close()
    thread.join(5)


def test_relay_copies_both_ways_and_keeps_the_half_close(echo_server: tuple[str, int]) -> None:
    host, port = echo_server
    payload = b"hello" + os.urandom(300_000)
    done = subprocess.run(
        [sys.executable, "-I", str(RELAY), host, str(port)], input=payload, capture_output=True, timeout=20
    )
    assert (done.returncode, done.stdout) == (0, f"got {len(payload)} bytes: hello".encode())


def test_relay_reports_a_refused_connection_in_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-I", str(RELAY), "127.0.0.1", str(port)], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1  # one line, which ssh shows
    assert f"127.0.0.1:{port}" in done.stderr and "Connection refused" in done.stderr
    usage = subprocess.run([sys.executable, "-I", str(RELAY), "x"], capture_output=True, text=True, timeout=20)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def test_a_reused_pid_is_not_ours() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        ours = Proc.of(sleeper.pid, "sleep")
        assert ours.alive() and ours.parent() == os.getpid()
        impostor = Proc(sleeper.pid, ours.start + 1, "sleep")  # same PID, another start time: another process
        assert not impostor.alive()
        impostor.signal(signal.SIGKILL)
        assert sleeper.poll() is None
        assert labstate.stop_all([ours], timeout=5) == []
        assert sleeper.wait(5) == -signal.SIGTERM
        assert not ours.alive()  # also once reaped
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not Proc.load(None).alive()


def test_state_file_is_private_and_a_foreign_one_is_refused(tmp_path: Path) -> None:
    state = labstate.State(tmp_path, {"version": 1, "prefix": "ober-lab-0000-"})
    state.save()
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600
    read = labstate.read(tmp_path)
    assert read is not None and read.data == state.data
    assert labstate.read(tmp_path / "none") is None
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(OberError, match="not a lab state file"):
        labstate.read(tmp_path)
    (tmp_path / "state.json").write_text('{"version": 7}')
    with pytest.raises(OberError, match="not a lab state file of this ober"):
        labstate.read(tmp_path)


def test_lab_dir_lock_refuses_a_second_command(tmp_path: Path) -> None:
    with labstate.locked(tmp_path), pytest.raises(OberError, match="another ober lab command"):  # noqa: SIM117
        with labstate.locked(tmp_path):
            pass


# --- the lab router's graceful restart (issue 4 item 7) ---------------------------------------------------------

GR_VIP, GR_NODE = "198.51.100.10", "100.64.0.11"


def exabgp_config(directory: Path, graceful_restart: int) -> Path:
    """A node's ExaBGP announcing the VIP, with or without the graceful-restart capability."""
    announce = directory / "announce.sh"
    # Reads what ExaBGP sends and keeps its stdout open: `exec cat >/dev/null` closed it, ExaBGP took the hang-up
    # for a dead helper and respawned it until "Too many death" stopped the daemon (when it saw the hang-up alone).
    announce.write_text(f"#!/bin/sh\necho 'announce route {GR_VIP}/32 next-hop self'\nwhile read -r _; do :; done\n")
    announce.chmod(0o755)
    capability = f"graceful-restart {graceful_restart};" if graceful_restart else ""
    config = directory / "exabgp.conf"
    config.write_text(
        f"process announce {{ run {announce}; encoder text; }}\n"
        f"neighbor 100.64.0.1 {{ router-id {GR_NODE}; local-address {GR_NODE}; local-as {lab_fleet.NODE_AS}; "
        f"peer-as {lab_fleet.ROUTER_AS}; hold-time 3; capability {{ {capability} }} family {{ ipv4 unicast; }} "
        "api { processes [ announce ]; } }\n"
    )
    return config


@pytest.mark.lab
def test_lab_router_holds_the_route_of_a_node_restarting_exabgp_with_graceful_restart() -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    require(find_program("bird") is not None and find_program("exabgp") is not None, "bird2 or exabgp missing")
    env = {"exabgp_daemon_user": "root", "exabgp_api_cli": "false", "exabgp_log_destination": "stdout"}
    with Lab() as lab:
        router = start_router(
            lab, [GR_NODE], [lab_fleet.VIP_PREFIX], asn=lab_fleet.ROUTER_AS, peer_as=lab_fleet.NODE_AS
        )
        ns = lab.netns("node")
        router.connect(ns, GR_NODE)
        for restart_time, held in ((30, True), (0, False)):
            config = exabgp_config(lab.path(f"gr{restart_time}"), restart_time)
            log = lab.path(f"gr{restart_time}") / "exabgp.log"
            exabgp = lab.spawn(ns, [find_program("exabgp") or "exabgp", str(config)], log=log, env=env)
            assert poll_until(lambda: router.next_hops(GR_VIP) == [GR_NODE], 60), log.read_text()[-2000:]
            exabgp.kill()  # the process dies at once: its TCP session closes, as in a crash or a hard restart
            exabgp.wait()
            kept = poll_until(lambda: router.next_hops(GR_VIP) == [], 5) is None
            assert kept == held, f"restart time {restart_time}: route kept {kept}"
            if held:
                # The restarted ExaBGP takes its session back; the route never left the kernel meanwhile.
                again = lab.spawn(ns, [find_program("exabgp") or "exabgp", str(config)], log=log, env=env)
                watched = poll_until(lambda: router.bgp_sessions()[GR_NODE] == "Established", 60, hops=router)
                assert watched is not None and router.next_hops(GR_VIP) == [GR_NODE]
                print(f"graceful restart: session back after {watched:.1f}s, route held throughout")
                again.kill()
                again.wait()
                assert poll_until(lambda: router.next_hops(GR_VIP) == [], 45) is not None  # restart time over


def poll_until(condition: Callable[[], bool], timeout: float, *, hops: RouterView | None = None) -> float | None:
    """Seconds until ``condition`` held (polled every 50 ms), or None; with ``hops``, the VIP must stay routed."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if hops is not None:
            assert hops.next_hops(GR_VIP) == [GR_NODE], "the route left the kernel during the restart"
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def test_inotify_instances_counts_the_machines_open_instances() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(0)
    assert fd >= 0
    try:
        used, limit = labstate.inotify_instances()
        assert limit == int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
        assert used >= 1  # at least ours
    finally:
        os.close(fd)
