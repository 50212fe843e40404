"""`ober bootstrap`, `ober upgrade` and `ober uninstall` for real, inside a systemd-nspawn node with no internet.

The node boots from the Debian 13 image behind the lab's BIRD router. Before the tests, it is made a machine that
has never seen ober: HAProxy is purged (with the libraries only it needed), and its apt source is a local mirror
holding the image's own .deb files (a node without internet installs from its site's mirror), so bootstrap's
``apt-get install haproxy`` is real and its packages can be compared before and after. ober and ExaBGP come from
a wheelhouse pushed over SSH, like the fleet controller does; the ober that *runs* bootstrap lives in a throwaway
venv under /var/tmp, outside what the tests compare.

The tests run in order on one node: refusals and a dry run change nothing; a bootstrap that fails midway is
undone exactly by uninstall; a full bootstrap, then a second run that changes nothing; `ober config --from` and
start (the router's kernel route is the truth); `ober upgrade` to a newer ober from a wheelhouse; finally
uninstall, which stops the units gracefully and leaves the node as it was.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.certs import write_pem
from ober.lab.image import DEFAULT_IMAGE
from ober.lab.netns import Lab, run_in
from ober.lab.nspawn import NspawnNode, boot_node
from ober.lab.router import Router, start_router
from ober.remote.ownwheel import SOURCES
from tests.conftest import REPO, require
from tests.debs import newer_haproxy_deb
from tests.test_lab_nspawn import nspawn_prerequisites, wheelhouse_for_nodes

pytestmark = pytest.mark.lab

NODE = "100.64.0.11"
VIP = "198.51.100.10"
BOOT = "/var/tmp/ober-boot"  # the throwaway ober that runs bootstrap (the fleet controller does the same)
BOOT_OBER = f"{BOOT}/bin/ober"
WHEELS = "/root/wheelhouse"
OBER = "/opt/ober/venv/bin/ober"
MIRROR = "/srv/mirror"
# What "the node as before" means: ober's and systemd's directories, the installed packages, ober's users.
SNAPSHOT = (
    "find /opt /etc/systemd /etc/sysctl.d /etc/netplan /etc/NetworkManager -printf '%p %m %u %l\\n' 2>/dev/null"
    " | sort; dpkg-query -W -f='${Package} ${Version} ${Status}\\n' | sort; systemctl is-enabled haproxy;"
    " getent passwd ober-haproxy ober-bgp; getent group ober-haproxy ober-bgp; true"
)


@dataclass
class NodeLab:
    lab: Lab
    router: Router
    node: NspawnNode
    wheelhouse: Path
    before: str

    def ober(self, args: str, *, timeout: float = 600, ober: str = BOOT_OBER) -> subprocess.CompletedProcess[str]:
        return self.node.run(f"{ober} {args}", timeout=timeout, check=False)

    def bootstrap_json(self, args: str = "") -> tuple[int, dict[str, Any]]:
        done = self.ober(f"bootstrap /opt/ober --yes --json --wheelhouse {WHEELS} {args}")
        return done.returncode, json.loads(done.stdout)

    def snapshot(self) -> str:
        return self.node.run(SNAPSHOT, timeout=60).stdout

    def wait_hops(self, expected: list[str], timeout: float = 60.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.router.next_hops(VIP) == expected:
                return time.monotonic() - started
            time.sleep(0.05)
        journal = self.node.run("journalctl -u ober-http -u ober-bgp -n 40 --no-pager", check=False).stdout
        raise AssertionError(f"next-hops {self.router.next_hops(VIP)}, expected {expected}\n{journal}")


def local_mirror(lab: Lab) -> Path:
    """An apt repository of the image's cached .deb files (what debootstrap downloaded), indexed on the host."""
    require(shutil.which("dpkg-scanpackages") is not None, "dpkg-scanpackages is not installed (dpkg-dev)")
    mirror = lab.path("mirror")
    for deb in (DEFAULT_IMAGE / "var/cache/apt/archives").glob("*.deb"):
        shutil.copy2(deb, mirror / deb.name)
    index = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=mirror, capture_output=True, text=True, check=True, timeout=120
    )
    (mirror / "Packages").write_text(index.stdout)
    return mirror


@pytest.fixture(scope="module")
def node_lab() -> Iterator[NodeLab]:
    image = nspawn_prerequisites()
    wheelhouse = wheelhouse_for_nodes()
    with Lab() as lab:
        router = start_router(lab, [NODE], ["198.51.100.0/24"])
        node = boot_node(lab, router, "n1", NODE, image=image)
        node.put_tree(local_mirror(lab), MIRROR, timeout=300)
        node.put_tree(wheelhouse, WHEELS, timeout=300)
        # The site's mirror replaces the internet; then the node forgets HAProxy ever was installed.
        node.run(
            f"echo 'deb [trusted=yes] file:{MIRROR} ./' > /etc/apt/sources.list && apt-get update -q"
            " && DEBIAN_FRONTEND=noninteractive apt-get purge -y -q --autoremove haproxy",
            timeout=300,
        )
        node.run(
            f"python3 -m venv {BOOT} && {BOOT}/bin/pip install -q --disable-pip-version-check --no-index "
            f"--find-links {WHEELS} ober && chmod -R a+rX {BOOT}",
            timeout=300,
        )
        before = node.run(SNAPSHOT, timeout=60).stdout
        assert "haproxy " not in before and "/opt/ober" not in before
        yield NodeLab(lab, router, node, wheelhouse, before)


def test_non_root_is_refused_and_changes_nothing(node_lab: NodeLab) -> None:
    done = node_lab.node.run(f"runuser -u nobody -- {BOOT_OBER} --json bootstrap /opt/ober --yes", check=False)
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert "must run as root" in error["error"] and "sudo" in error["fix"]
    text = node_lab.node.run(f"runuser -u nobody -- {BOOT_OBER} bootstrap /opt/ober --yes", check=False)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert text.stderr.count("\n") == 1 and "must run as root" in text.stderr
    for command in ("uninstall /opt/ober --yes", "upgrade /opt/ober --yes"):
        refused = node_lab.node.run(f"runuser -u nobody -- {BOOT_OBER} {command}", check=False)
        assert refused.returncode == 1 and "must run as root" in refused.stderr, refused.stderr
    assert node_lab.snapshot() == node_lab.before


def test_dry_run_shows_every_command_and_changes_nothing(node_lab: NodeLab) -> None:
    code, doc = node_lab.bootstrap_json("--dry-run")
    assert code == 0 and doc["dry_run"] is True
    steps = {step["name"]: step for step in doc["steps"]}
    assert any("apt-get install" in command and "haproxy" in command for command in steps["packages"]["commands"])
    assert any("--no-index" in command and WHEELS in command for command in steps["venv"]["commands"])
    assert steps["haproxy.service"]["commands"] == ["systemctl disable --now haproxy.service"]
    assert "ober config" in doc["next"]
    assert node_lab.snapshot() == node_lab.before


def test_a_bootstrap_failing_midway_is_undone_exactly_by_uninstall(node_lab: NodeLab) -> None:
    node = node_lab.node
    node.run(f"rm -rf /root/broken && cp -a {WHEELS} /root/broken && rm /root/broken/exabgp-*.whl")
    done = node_lab.ober("bootstrap /opt/ober --yes --json --wheelhouse /root/broken")
    assert done.returncode == 1
    doc = json.loads(done.stdout)  # one document, though a step failed
    assert "exabgp" in doc["error"].lower() and doc["changed"] is True
    failed = [step for step in doc["steps"] if step["error"]]
    assert [step["name"] for step in failed] == ["venv"]
    ledger = json.loads(node.run("cat /opt/ober/etc/.bootstrap.json").stdout)
    kinds = {entry["kind"] for entry in ledger["entries"]}
    assert {"directory", "packages", "service-disabled", "venv"} <= kinds
    assert "haproxy" in next(e for e in ledger["entries"] if e["kind"] == "packages")["names"]

    undone = node_lab.ober("uninstall /opt/ober --yes", timeout=300)
    assert undone.returncode == 0, undone.stderr
    assert node_lab.snapshot() == node_lab.before
    node.run("rm -rf /root/broken")


def test_bootstrap_makes_a_node_and_a_second_run_changes_nothing(node_lab: NodeLab) -> None:
    node = node_lab.node
    started = time.monotonic()
    done = node_lab.ober(f"bootstrap /opt/ober --yes --wheelhouse {WHEELS}")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout.strip().splitlines()[-1].startswith(f"next: {OBER} config")
    versions = node.run(f"{OBER} --version").stdout
    assert "ExaBGP 5.0.15" in versions and versions.startswith("ober 0.1.0, HAProxy 3.0.")
    modes = node.run("stat -c '%n %a %U' /opt/ober /opt/ober/etc /opt/ober/etc/certs /opt/ober/run").stdout
    assert modes.split("\n")[:4] == [
        "/opt/ober 755 root",
        "/opt/ober/etc 755 root",
        "/opt/ober/etc/certs 700 root",
        "/opt/ober/run 755 root",
    ]
    assert node.run("systemctl is-enabled haproxy", check=False).stdout.strip() == "disabled"
    assert node.run("systemctl is-active haproxy", check=False).stdout.strip() == "inactive"
    ledger = json.loads(node.run("cat /opt/ober/etc/.bootstrap.json").stdout)
    assert {"kind": "venv", "target": "/opt/ober/venv"} in ledger["entries"]
    # The daemons' users: system users without a login or a home, each with its group; in the ledger.
    for user in ("ober-haproxy", "ober-bgp"):
        entry = node.run(f"getent passwd {user}").stdout.strip().split(":")
        assert entry[5:] == ["/nonexistent", "/usr/sbin/nologin"] and int(entry[2]) < 1000, entry
        assert node.run(f"id -gn {user}").stdout.strip() == user
        assert {"kind": "user", "target": user} in ledger["entries"]
        assert {"kind": "group", "target": user} in ledger["entries"]
    print(f"bootstrap from nothing (offline, haproxy from the mirror): {took:.1f}s")

    started = time.monotonic()
    code, doc = node_lab.bootstrap_json()
    assert code == 0 and doc["changed"] is False
    assert all(step["commands"] == [] and not step["changed"] for step in doc["steps"])
    assert all(step["why"] for step in doc["steps"])
    text = node_lab.ober(f"bootstrap /opt/ober --yes --wheelhouse {WHEELS}")
    assert "nothing to do: already bootstrapped" in text.stdout
    assert text.stdout.count("nothing to do:") >= len(doc["steps"])  # every step but the check says why
    print(f"second run: {time.monotonic() - started:.1f}s, nothing changed")


def node_config() -> dict[str, Any]:
    return {
        "name": "n1",
        "bgp": {"router_id": NODE, "neighbors": "100.64.0.1"},
        "vips": [{"name": "s3-a", "address": VIP, "backend": "local"}],
        # A stand-in RGW on the node itself (what matters here is that HAProxy sees a live server).
        "backends": {"local": {"servers": ["127.0.0.1:7480"], "check": {"interval": "500ms", "rise": 1, "fall": 2}}},
        "certificates": {"pem": "/opt/ober/etc/certs/s3.pem", "http": "redirect"},
        "health": {"interval": "500ms", "rise": 2, "fall": 2},
        "network": {"manager": "networkd", "interface": "lo"},
        "haproxy": {"maxconn": 5000},
    }


def test_config_and_start_announce_the_vip(node_lab: NodeLab) -> None:
    node, lab = node_lab.node, node_lab.lab
    node.run(
        "systemd-run --unit=stand-in-rgw --property=WorkingDirectory=/srv python3 -m http.server -b 127.0.0.1 7480"
    )
    certs = lab.path("certs")
    write_pem(certs / "s3.pem", "s3.lab.test", [f"IP:{VIP}"])
    node.put(certs / "s3.pem", "/opt/ober/etc/certs/s3.pem", 0o600)
    wanted = lab.path("cfg") / "node.yaml"
    wanted.write_text(yaml.safe_dump(node_config()))
    node.put(wanted, "/root/node.yaml")
    configured = node.run(f"{OBER} config --from /root/node.yaml", timeout=180, check=False)
    assert configured.returncode == 0, configured.stderr
    started = node.run(f"{OBER} start", timeout=120, check=False)
    assert started.returncode == 0, started.stderr
    node_lab.wait_hops([NODE])
    # Who runs what: HAProxy's master root, its workers and ExaBGP (with ober health) as bootstrap's users.
    ps = node.run("ps -e -o user:32=,ppid=,pid=,args=").stdout.splitlines()
    master = node.run("systemctl show -p MainPID --value ober-http").stdout.strip()
    rows = [line.split(None, 3) for line in ps]
    assert any(pid == master and user == "root" for user, _, pid, _ in rows)
    workers = [user for user, ppid, _, args in rows if ppid == master and "haproxy" in args]
    assert workers and set(workers) == {"ober-haproxy"}, ps
    bgp = {user for user, _, _, args in rows if "bin/exabgp" in args or "bin/ober health" in args}
    assert bgp == {"ober-bgp"}, ps


def bumped_wheel(lab: Lab, version: str) -> Path:
    """ober's wheel built from a copy of this source tree whose version says ``version``."""
    tree = lab.path("newer")
    for name in SOURCES:  # what goes into ober's wheel
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, tree / name)
    for name in ("pyproject.toml", "ober/__init__.py"):
        path = tree / name
        text = path.read_text()
        assert text.count('version = "0.1.0"') + text.count('__version__ = "0.1.0"') == 1
        path.write_text(text.replace('"0.1.0"', f'"{version}"', 1))
    out = lab.path("newer-wheel")
    # Like the wheelhouse: the hatchling already here when there is one, else pip fetches it (the host has PyPI).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(tree)],
        check=True,
        timeout=300,
    )
    return next(out.glob(f"ober-{version}-*.whl"))


def test_upgrade_ober_from_a_wheelhouse_restarts_bgp_and_announces_again(node_lab: NodeLab) -> None:
    node = node_lab.node
    node_lab.wait_hops([NODE])
    wheel = bumped_wheel(node_lab.lab, "0.1.1")
    # A newer wheelhouse as one is built: the new ober in place of the old, pinned by its hash in requirements.txt
    # (ober upgrade installs exactly the pinned wheels of a wheelhouse that has one).
    pin = f"ober==0.1.1 --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}"
    node.run(
        f"rm -rf /root/newer && cp -a {WHEELS} /root/newer && rm /root/newer/ober-0.1.0-*.whl"
        f" && sed -i 's/^ober==.*/{pin}/' /root/newer/requirements.txt"
    )
    node.put(wheel, f"/root/newer/{wheel.name}")
    http_pid = node.run("systemctl show -p MainPID --value ober-http").stdout.strip()
    bgp_pid = node.run("systemctl show -p MainPID --value ober-bgp").stdout.strip()

    dry = node_lab.ober("--json upgrade --dry-run --wheelhouse /root/newer", ober=OBER)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["versions"]["ober"] == {"installed": "0.1.0", "available": "0.1.1", "source": "/root/newer"}
    assert plan["versions"]["exabgp"]["installed"] == "5.0.15"
    haproxy = plan["versions"]["haproxy"]
    assert haproxy["installed"] == haproxy["available"] and haproxy["installed"].startswith("3.0.")
    steps = {step["name"]: step for step in plan["steps"]}
    assert steps["haproxy"]["commands"] == []
    assert steps["ober"]["commands"][-1] == "systemctl restart ober-bgp"
    assert "0.1.0" in node.run(f"{OBER} --version").stdout  # the dry run changed nothing

    started = time.monotonic()
    done = node_lab.ober("--json upgrade --yes --wheelhouse /root/newer", ober=OBER)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["changed"] is True
    assert node.run(f"{OBER} --version").stdout.startswith("ober 0.1.1, HAProxy 3.0.")
    assert node.run("systemctl show -p MainPID --value ober-http").stdout.strip() == http_pid  # HAProxy untouched
    assert node.run("systemctl show -p MainPID --value ober-bgp").stdout.strip() != bgp_pid
    back = node_lab.wait_hops([NODE])
    print(f"ober 0.1.0 -> 0.1.1 offline in {time.monotonic() - started - back:.1f}s; announced again {back:.1f}s later")

    again = node_lab.ober("--json upgrade --yes --wheelhouse /root/newer", ober=OBER)
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False
    node.run("rm -rf /root/newer")


def newer_haproxy(lab: Lab, mirror: Path) -> str:
    """A newer HAProxy package (`tests.debs.newer_haproxy_deb`) added to the mirror; returns its version."""
    _, version = newer_haproxy_deb(lab.path("haproxy-deb"), mirror)
    index = subprocess.run(
        ["dpkg-scanpackages", "-m", "."], cwd=mirror, capture_output=True, text=True, check=True, timeout=120
    )
    (mirror / "Packages").write_text(index.stdout)
    return version


def test_upgrade_haproxy_is_a_hitless_reload(node_lab: NodeLab) -> None:
    node = node_lab.node
    node_lab.wait_hops([NODE])
    version = newer_haproxy(node_lab.lab, node_lab.lab.path("mirror"))
    node.put(node_lab.lab.path("mirror") / f"haproxy_{version}_amd64.deb", f"{MIRROR}/haproxy_{version}_amd64.deb")
    node.put(node_lab.lab.path("mirror") / "Packages", f"{MIRROR}/Packages")
    master = node.run("systemctl show -p MainPID --value ober-http").stdout.strip()
    workers = node.run(f"pgrep -P {master}", check=False).stdout.split()
    bgp = node.run("systemctl show -p MainPID --value ober-bgp").stdout.strip()

    # While it upgrades: the router's route, and HTTPS requests through the VIP, one after another.
    stop = threading.Event()
    fewest: list[int] = []
    codes: list[str] = []

    def watch() -> None:
        while not stop.is_set():
            fewest.append(len(node_lab.router.next_hops(VIP)))
            done = run_in(
                node_lab.router.ns,
                ["curl", "-sk", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", f"https://{VIP}/"],
                check=False,
            )
            codes.append(done.stdout or f"exit {done.returncode}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        done = node_lab.ober(f"--json upgrade --yes --wheelhouse {WHEELS}", ober=OBER)
        time.sleep(1)  # a few more requests after the reload
    finally:
        stop.set()
        watcher.join(30)
    assert done.returncode == 0, done.stderr + done.stdout
    doc = json.loads(done.stdout)
    steps = {step["name"]: step for step in doc["steps"]}
    assert steps["haproxy"]["commands"][-1] == "systemctl reload ober-http" and steps["haproxy"]["changed"]
    assert not steps["ober"]["changed"]
    assert node.run("dpkg-query -W -f='${Version}' haproxy").stdout == version
    assert node.run("systemctl show -p MainPID --value ober-http").stdout.strip() == master  # reloaded, not restarted
    assert node.run("systemctl show -p MainPID --value ober-bgp").stdout.strip() == bgp  # BGP untouched
    assert node.run(f"readlink /proc/{master}/exe").stdout.strip() == "/usr/sbin/haproxy"  # re-executed: not deleted
    assert not set(node.run(f"pgrep -P {master}", check=False).stdout.split()) & set(workers)  # new workers
    assert node.run("systemctl is-active haproxy", check=False).stdout.strip() == "inactive"  # postinst left it off
    assert fewest and min(fewest) == 1, fewest  # never withdrawn
    assert codes and set(codes) == {"200"}, codes
    print(f"HAProxy upgraded to {version} with a reload: {len(codes)} requests during it, all 200; route kept")


def test_uninstall_stops_gracefully_and_leaves_the_node_as_before(node_lab: NodeLab) -> None:
    node = node_lab.node
    node_lab.wait_hops([NODE])
    done = node_lab.ober("uninstall /opt/ober --yes", timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert node_lab.router.next_hops(VIP) == []
    journal = node.run("journalctl -o short-unix --no-pager -u ober-bgp -u ober-http -n 300", check=False).stdout
    withdrawn = [line for line in journal.splitlines() if "withdraw" in line]
    assert withdrawn, journal  # ober stop's way: the health process withdrew before the units stopped
    # The certificate is the user's file: uninstall keeps it, and the directories holding it, and says so.
    assert "kept" in done.stdout and "s3.pem" in done.stdout
    node.run("rm /opt/ober/etc/certs/s3.pem && systemctl stop stand-in-rgw")
    again = node_lab.ober("uninstall /opt/ober --yes", timeout=300)
    assert again.returncode == 0, again.stderr
    assert node_lab.snapshot() == node_lab.before
    nothing = node_lab.ober("uninstall /opt/ober --yes")
    assert nothing.returncode == 0 and "nothing to uninstall" in nothing.stdout
