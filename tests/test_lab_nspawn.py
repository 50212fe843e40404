"""Full systemd nodes: the Debian 13 image booted by systemd-nspawn behind the lab router, ober installed offline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ober.errors import OberError
from ober.facts import find_program
from ober.lab.image import DEFAULT_IMAGE, ensure_image
from ober.lab.netns import Lab, list_netns, run, run_in
from ober.lab.nspawn import (
    SUPERVISOR,
    LabKey,
    NspawnNode,
    boot_node,
    descendants,
    install_ober,
    prepare_root,
    sshd_answers,
)
from ober.lab.router import start_router
from ober.remote.wheelhouse import build_wheelhouse, platforms, source_digest
from tests.conftest import require

NODES = {"node1": "100.64.0.11", "node2": "100.64.0.12"}
# Where the package registries live on these machines, when this host cannot resolve pypi.org itself.
REGISTRY_FALLBACK = "203.0.113.1"


def nspawn_prerequisites() -> Path:
    """Skip (fail under OBER_REQUIRE_LAB=1) without what the nodes need; return the image, built if need be."""
    require(os.geteuid() == 0, "nspawn nodes need root")
    require(shutil.which("systemd-nspawn") is not None, "systemd-nspawn is not installed (systemd-container)")
    require(shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None, "no OpenSSH client")
    require(find_program("bird") is not None and find_program("birdc") is not None, "bird2 is not installed")
    require(shutil.which("debootstrap") is not None or (DEFAULT_IMAGE / ".ober-image").exists(), "no debootstrap")
    try:
        return ensure_image()
    except OberError as exc:
        require(False, f"cannot build the Debian 13 image: {exc}")
        raise


def wheelhouse_for_nodes() -> Path:
    """ober and its dependencies for the nodes' Python 3.13 (cached; the first build needs PyPI)."""
    started = time.monotonic()
    try:
        wheelhouse = build_wheelhouse("3.13")
    except OberError as exc:
        require(False, f"cannot build the wheelhouse: {exc}")
        raise
    size = sum(path.stat().st_size for path in wheelhouse.iterdir())
    count = len(list(wheelhouse.glob("*.whl")))
    print(f"wheelhouse: {count} wheels, {size / 2**20:.1f} MiB, ready in {time.monotonic() - started:.2f}s")
    return wheelhouse


def registry_address() -> str:
    """pypi.org's IPv4 address as this host resolves it (read only), else an address of the registries' range."""
    try:
        return str(socket.getaddrinfo("pypi.org", 443, socket.AF_INET)[0][4][0])
    except OSError:
        return REGISTRY_FALLBACK


def host_key_fingerprint(node: NspawnNode) -> str:
    return node.run(["ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[1]


def disk_bytes(directory: Path) -> int:
    """The space the files under ``directory`` take (allocated blocks, like ``du``)."""
    return sum(path.lstat().st_blocks * 512 for path in directory.rglob("*"))


def overlay_mounts_under(directory: Path) -> list[str]:
    targets = run(["findmnt", "-rn", "-t", "overlay", "-o", "TARGET"], check=False).stdout.split()
    return [target for target in targets if target.startswith(str(directory))]


@pytest.mark.lab
def test_nspawn_nodes_boot_install_offline_and_crash() -> None:
    image = nspawn_prerequisites()
    wheelhouse = wheelhouse_for_nodes()

    with Lab() as lab:
        router = start_router(lab, list(NODES.values()), ["198.51.100.0/24"])
        started = time.monotonic()
        nodes = [boot_node(lab, router, name, address, image=image) for name, address in NODES.items()]
        print(f"{len(nodes)} nodes booted in {time.monotonic() - started:.2f}s")
        for node in nodes:
            print(
                f"{node.name}: boot {node.boot_seconds:.2f}s, systemd {node.system_state}, "
                f"memory (PSS) {node.memory_bytes() / 2**20:.1f} MiB, overlay {disk_bytes(node.upper) / 2**20:.1f} MiB"
            )

        for node in nodes:
            failed = node.run(["systemctl", "--failed", "--no-legend", "--plain"]).stdout
            assert node.system_state == "running", f"{node.name} is {node.system_state}: {failed}"
            assert node.run(["systemctl", "is-active", "ssh"]).stdout.strip() == "active"
            assert node.run(["hostname"]).stdout.strip() == node.name
            # Resolved locally (the lab has no DNS): ExaBGP looks the name up at every start.
            assert node.run(["getent", "hosts", node.name]).stdout.split()[0] == "127.0.1.1"
            assert node.sshd_answers()
            assert node.init_pid is not None
        # Each node has its own host keys, none of them the image's; StrictHostKeyChecking has verified them.
        image_key = run(["ssh-keygen", "-lf", str(image / "etc/ssh/ssh_host_ed25519_key.pub")]).stdout.split()[1]
        fingerprints = {host_key_fingerprint(node) for node in nodes}
        assert len(fingerprints) == len(nodes)
        assert image_key not in fingerprints
        machine_ids = {node.run(["cat", "/etc/machine-id"]).stdout for node in nodes}
        assert len(machine_ids) == len(nodes)

        # No way out of the lab: the router has no route beyond its link, and the registry is unreachable.
        assert run_in(router.ns, ["ip", "route", "get", "1.1.1.1"], check=False).returncode != 0
        registry = registry_address()
        assert run_in(router.ns, ["ip", "route", "get", registry], check=False).returncode != 0
        probe = ["curl", "-sS", "-m", "3", "--resolve", f"pypi.org:443:{registry}", "https://pypi.org/simple/"]
        # 7: could not connect (the router answers "network unreachable"), 28: timed out; not a missing curl (127).
        assert nodes[0].run(probe, check=False, timeout=15).returncode in (7, 28)

        for node in nodes:
            started = time.monotonic()
            version = install_ober(node, wheelhouse)
            print(f"{node.name}: ober installed offline in {time.monotonic() - started:.2f}s: {version}")
            assert version.startswith("ober 0.1.0, HAProxy 3.0."), version
            assert version.endswith("ExaBGP 5.0.15")

        # Looked up now: once a node is stopped it has no init.
        inits = [node.init_pid for node in nodes if node.init_pid is not None]
        assert len(inits) == len(nodes)
        crashed, survivor = nodes
        started = time.monotonic()
        crashed.crash()
        print(f"{crashed.name}: crashed in {time.monotonic() - started:.3f}s")
        assert crashed.process.poll() is not None
        assert not crashed.sshd_answers()
        assert not sshd_answers(router.ns, crashed.address)
        assert survivor.sshd_answers()
        assert survivor.run(["systemctl", "is-system-running"]).stdout.strip() == "running"

        started = time.monotonic()
        survivor.stop()
        print(f"{survivor.name}: powered off in {time.monotonic() - started:.2f}s")
        assert survivor.process.returncode == 0  # a clean poweroff, not a killed init
        assert not survivor.root.is_mount()

    assert all(node.process.poll() is not None for node in nodes)
    assert not [pid for pid in inits if Path(f"/proc/{pid}").exists()]
    assert not overlay_mounts_under(lab.workdir)
    assert not [name for name in list_netns() if name.startswith(lab.prefix)]
    assert not lab.workdir.exists()


@pytest.mark.lab
def test_nspawn_stop_kills_the_init_of_a_node_that_does_not_power_off_in_time() -> None:
    image = nspawn_prerequisites()
    with Lab() as lab:
        router = start_router(lab, ["100.64.0.11"], ["198.51.100.0/24"])
        node = boot_node(lab, router, "node1", "100.64.0.11", image=image)
        init = node.init_pid
        assert init is not None
        node.stop(timeout=0)  # no time for the poweroff it asks for: its init is killed
        assert node.process.returncode != 0
        assert not Path(f"/proc/{init}").exists()
        assert not node.root.is_mount()
        node.stop()  # idempotent: Lab.close calls it again
    assert not overlay_mounts_under(lab.workdir)
    assert not [name for name in list_netns() if name.startswith(lab.prefix)]


def test_prepare_root_gives_each_node_its_own_pinned_host_keys(tmp_path: Path) -> None:
    require(shutil.which("ssh-keygen") is not None, "no OpenSSH client")
    private = tmp_path / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)])
    key = LabKey(private, tmp_path / "known_hosts")
    key.known_hosts.write_text("100.64.0.11 ssh-ed25519 AAAAold\n100.64.0.99 ssh-ed25519 AAAAother\n")
    roots = []
    for index, address in enumerate(("100.64.0.11", "100.64.0.12"), 1):
        root = tmp_path / f"root{index}"
        (root / "etc" / "ssh").mkdir(parents=True)
        (root / "root").mkdir()
        (root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAimage image\n")
        prepare_root(root, f"node{index}", key, address)
        roots.append(root)

    keys = [(root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1] for root in roots]
    assert len(set(keys)) == 2
    assert "AAAAimage" not in keys
    pinned = key.known_hosts.read_text().splitlines()
    assert "100.64.0.11 ssh-ed25519 AAAAold" not in pinned  # a node booted again replaces its address's keys
    assert "100.64.0.99 ssh-ed25519 AAAAother" in pinned
    assert f"100.64.0.11 ssh-ed25519 {keys[0]}" in pinned
    assert f"100.64.0.12 ssh-ed25519 {keys[1]}" in pinned
    for index, root in enumerate(roots, 1):
        authorized = root / "root" / ".ssh" / "authorized_keys"
        assert authorized.read_text() == key.public.read_text()
        assert authorized.stat().st_mode & 0o777 == 0o600
        assert (root / "etc" / "hostname").read_text() == f"node{index}\n"
        assert f"127.0.1.1\tnode{index}" in (root / "etc" / "hosts").read_text().splitlines()
    assert (roots[0] / "etc/machine-id").read_text() != (roots[1] / "etc/machine-id").read_text()


def test_descendants_lists_a_process_tree() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in descendants(os.getpid())
    finally:
        child.kill()
        child.wait(5)


def supervise(tmp_path: Path, script: str) -> subprocess.Popen[str]:
    """The lab's nspawn supervisor running ``sh -c script`` in ``tmp_path``, its output to ``out``."""
    argv = [sys.executable, "-I", str(SUPERVISOR), "--", "sh", "-c", script]
    with (tmp_path / "out").open("w") as out:
        return subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, text=True)


def test_supervisor_starts_the_command_again_after_each_reboot_exit_and_ends_with_another(tmp_path: Path) -> None:
    # Two "reboots" (exit 133), then an exit that is not one.
    script = "n=$(($(cat runs 2>/dev/null || echo 0) + 1)); echo $n > runs; [ $n -lt 3 ] && exit 133; exit 7"
    assert supervise(tmp_path, script).wait(30) == 7
    assert (tmp_path / "runs").read_text() == "3\n"
    assert (tmp_path / "out").read_text().count("exited 133 (reboot): starting it again") == 2


def test_supervisor_passes_sigterm_on_and_starts_nothing_after(tmp_path: Path) -> None:
    # The command exits 133 on SIGTERM, as if it rebooted: a stop is still a stop.
    script = 'trap "echo stopping; exit 133" TERM; touch ready; while :; do sleep 0.05; done'
    supervisor = supervise(tmp_path, script)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert supervisor.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(30) == 133
    assert (tmp_path / "out").read_text().splitlines() == ["stopping"]
    usage = subprocess.run([sys.executable, "-I", str(SUPERVISOR), "sh"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def test_wheelhouse_platforms_cover_older_manylinux_tags() -> None:
    tags = platforms((2, 41))
    assert tags[0] == "manylinux_2_41_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux_2_5_x86_64", "manylinux2014_x86_64", "any"} <= set(tags)
    assert "manylinux_2_42_x86_64" not in tags


def test_wheelhouse_key_follows_the_sources(tmp_path: Path) -> None:
    (tmp_path / "ober").mkdir()
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    module = tmp_path / "ober" / "a.py"
    module.write_text("A = 1\n")
    before = source_digest(tmp_path)
    (tmp_path / "ober" / "__pycache__").mkdir()
    (tmp_path / "ober" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(tmp_path) == before  # bytecode is not a source
    module.write_text("A = 2\n")
    assert source_digest(tmp_path) != before


def test_wheelhouse_refuses_a_bad_target_python(tmp_path: Path) -> None:
    with pytest.raises(OberError, match="unsupported target Python"):
        build_wheelhouse("2.7", tmp_path)
