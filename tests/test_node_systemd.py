"""The node's units under real systemd, in a systemd-nspawn node behind the lab's BIRD router, with real RGW.

ober is installed offline from the wheelhouse, configured with ``ober config --from`` on the node itself, and
the router's kernel route is the truth about what the node announces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from ober.certs import write_pem
from ober.lab.netns import Lab, add_address, run_in
from ober.lab.nspawn import NspawnNode, boot_node, install_ober
from ober.lab.rgw import RgwCluster, missing_programs, start_cluster
from ober.lab.router import Router, start_router
from tests.test_lab_nspawn import nspawn_prerequisites, wheelhouse_for_nodes

pytestmark = pytest.mark.lab

VIP = "198.51.100.10"
NODE = "100.64.0.11"
RGW = ("100.64.1.11", "100.64.1.12")
OBER = "/opt/ober/venv/bin/ober"


@dataclass
class SystemdLab:
    lab: Lab
    router: Router
    node: NspawnNode
    rgw: RgwCluster

    def hops(self) -> list[str]:
        return self.router.next_hops(VIP)

    def wait_hops(self, expected: list[str], timeout: float = 30.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.hops() == expected:
                return time.monotonic() - started
            time.sleep(0.01)
        raise AssertionError(f"next-hops {self.hops()}, expected {expected}\n{self.journal()}")

    def journal(self, lines: int = 40) -> str:
        return self.node.run(f"journalctl -u ober-http -u ober-bgp -n {lines} --no-pager", check=False).stdout

    def active(self, unit: str) -> str:
        return self.node.run(["systemctl", "is-active", unit], check=False).stdout.strip()


def config_data() -> dict[str, Any]:
    return {
        "name": "n1",
        "bgp": {"router_id": NODE, "neighbors": "100.64.0.1"},
        "vips": [{"name": "s3-a", "address": VIP, "backend": "ceph-a"}],
        "backends": {"ceph-a": {"servers": list(RGW), "check": {"interval": "500ms", "rise": 1, "fall": 2}}},
        "certificates": {"pem": "/opt/ober/etc/certs/s3.pem", "http": "redirect"},
        "health": {"interval": "500ms", "rise": 2, "fall": 2},
        # This machine's kernel has no dummy interfaces (no modules): the VIP goes on lo, managed by networkd.
        "network": {"manager": "networkd", "interface": "lo"},
        # This sandbox caps file descriptors at 20000; HAProxy wants 2 per connection.
        "haproxy": {"maxconn": 5000},
    }


@pytest.fixture(scope="module")
def systemd_lab() -> Iterator[SystemdLab]:
    image = nspawn_prerequisites()
    wheelhouse = wheelhouse_for_nodes()
    if missing_programs():
        pytest.skip(f"Ceph is not installed: {missing_programs()}")
    with Lab() as lab:
        router = start_router(lab, [NODE], ["198.51.100.0/24"])
        rgw_ns = router.segment(lab, "rgw", 1)
        for address in (*RGW, "100.64.1.10"):
            add_address(rgw_ns, "lo", f"{address}/32")
        rgw = start_cluster(rgw_ns, lab.path("ceph"), list(RGW), "100.64.1.10")
        lab.cleanups.append(rgw.stop)
        node = boot_node(lab, router, "n1", NODE, image=image)
        install_ober(node, wheelhouse)
        # What `ober bootstrap` will do: the VIP interface's manager, a certificate.
        node.run("systemctl enable --now systemd-networkd && install -d -m 700 /opt/ober/etc/certs")
        certs = lab.path("certs")
        write_pem(certs / "s3.pem", "s3.lab.test", [f"IP:{VIP}"])
        node.put(certs / "s3.pem", "/opt/ober/etc/certs/s3.pem", 0o600)
        wanted = lab.path("cfg") / "ober.yaml"
        wanted.write_text(yaml.safe_dump(config_data()))
        node.put(wanted, "/root/ober-new.yaml")
        node.run(f"{OBER} config --from /root/ober-new.yaml", timeout=120)
        systemd_lab = SystemdLab(lab, router, node, rgw)
        started = node.run("systemctl enable --now ober-http ober-bgp", timeout=60, check=False)
        if started.returncode != 0:
            pytest.fail(f"the units did not start: {started.stderr.strip()}\n{systemd_lab.journal()}")
        yield systemd_lab


def test_units_start_and_the_node_announces(systemd_lab: SystemdLab) -> None:
    took = systemd_lab.wait_hops([NODE])
    assert systemd_lab.active("ober-http") == "active" and systemd_lab.active("ober-bgp") == "active"
    status = yaml.safe_load(systemd_lab.node.run(f"{OBER} status --json").stdout)
    assert status["bgp"]["sessions"] == {"100.64.0.1": "established"}
    assert status["bgp"]["announced"] == {"100.64.0.1": [f"{VIP}/32"]}
    assert status["units"] == {"ober-http": "active", "ober-bgp": "active"}
    print(f"announced {took:.2f}s after the units started")


def test_vip_is_on_the_node_and_serves_s3(systemd_lab: SystemdLab) -> None:
    systemd_lab.wait_hops([NODE])
    addresses = systemd_lab.node.run("ip -4 -o addr show dev lo").stdout
    assert f"{VIP}/32" in addresses and "127.0.0.1/8" in addresses  # networkd applied `ober config`'s file
    # From the router: through the ECMP route, TLS on the VIP, answered by RGW behind HAProxy.
    done = run_in(systemd_lab.router.ns, ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"https://{VIP}/"])
    assert done.stdout == "200"


def test_reload_with_a_broken_config_keeps_the_running_haproxy(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    systemd_lab.wait_hops([NODE])
    node.run("cp -a /opt/ober/etc/haproxy.cfg /root/haproxy.cfg.good")
    node.run("echo '    no-such-keyword 1' >> /opt/ober/etc/haproxy.cfg")
    failed = node.run("systemctl reload ober-http", check=False)
    node.run("cp -a /root/haproxy.cfg.good /opt/ober/etc/haproxy.cfg")
    assert failed.returncode != 0  # the ExecReload check refused it before signalling HAProxy
    assert systemd_lab.active("ober-http") == "active"
    assert systemd_lab.hops() == [NODE]


def test_config_set_invalid_leaves_the_node_untouched(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    before = node.run("sha256sum /opt/ober/etc/*.cfg /opt/ober/etc/*.conf /opt/ober/etc/ober.yaml").stdout
    bad = node.run(f"{OBER} config --set bgp.hold_time=1", check=False)
    assert bad.returncode == 1 and "bgp.hold_time: 1 is out of range" in bad.stderr
    assert node.run("sha256sum /opt/ober/etc/*.cfg /opt/ober/etc/*.conf /opt/ober/etc/ober.yaml").stdout == before


def test_config_change_is_a_hitless_reload(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    systemd_lab.wait_hops([NODE])
    main_pid = node.run("systemctl show -p MainPID --value ober-http").stdout.strip()
    done = node.run(f"{OBER} --json config --set haproxy.timeouts.client=20m", timeout=120)
    assert "reload ober-http" in yaml.safe_load(done.stdout)["actions"]
    assert node.run("systemctl show -p MainPID --value ober-http").stdout.strip() == main_pid  # reloaded, not restarted
    assert "timeout client 1200s" in node.run("cat /opt/ober/etc/haproxy.cfg").stdout
    assert systemd_lab.hops() == [NODE]


def test_ober_reload_is_hitless_and_logs_show_the_services(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    systemd_lab.wait_hops([NODE])
    main_pid = node.run("systemctl show -p MainPID --value ober-http").stdout.strip()
    node.run(f"{OBER} reload", timeout=60)
    assert node.run("systemctl show -p MainPID --value ober-http").stdout.strip() == main_pid
    assert systemd_lab.hops() == [NODE]
    logs = node.run(f"{OBER} logs -n 50 --service bgp").stdout
    assert "[ober]" in logs  # ober health's lines reach the journal through ExaBGP


def test_haproxy_crash_stops_bgp_at_once_and_both_come_back(systemd_lab: SystemdLab) -> None:
    systemd_lab.wait_hops([NODE])
    systemd_lab.node.run("systemctl kill -s KILL ober-http")
    gone = systemd_lab.wait_hops([])  # BindsTo: ExaBGP stops with HAProxy, its session closes, the route goes
    back = systemd_lab.wait_hops([NODE])  # Restart=always brings HAProxy back, Upholds brings ExaBGP back
    assert systemd_lab.active("ober-bgp") == "active"
    print(f"HAProxy killed -> route gone in {gone:.2f}s; both back and announcing {back:.2f}s later")


def test_ober_stop_withdraws_before_the_units_stop(systemd_lab: SystemdLab) -> None:
    node = systemd_lab.node
    systemd_lab.wait_hops([NODE])
    done = node.run(f"{OBER} --json stop --timeout 5", timeout=60)
    assert yaml.safe_load(done.stdout)["withdrawn"] is True
    assert systemd_lab.hops() == []
    assert systemd_lab.active("ober-http") == "inactive" and systemd_lab.active("ober-bgp") == "inactive"
    journal = node.run("journalctl -o short-unix --no-pager -u ober-bgp -u ober-http -n 200").stdout
    withdrawn = [line for line in journal.splitlines() if "-> disabled (maintenance), withdraw" in line]
    stopping = [line for line in journal.splitlines() if "Stopping ober-http" in line or "Stopping ober" in line]
    assert withdrawn and stopping
    assert float(withdrawn[-1].split()[0]) < float(stopping[-1].split()[0])
    node.run(f"{OBER} start", timeout=60)
    systemd_lab.wait_hops([NODE])
