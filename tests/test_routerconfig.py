"""``ober fleet router-config``: the upstream router's BGP configuration for an inventory.

Both flavours are proven for real, each in a router namespace peering (with MD5) with real ExaBGP nodes driven by
ober health. BIRD 2's output gets the node as the kernel's next-hop for the VIP, refuses a VIP of another node from
it, and keeps no more than the node's prefix limit of a flood. FRR's (zebra + bgpd, started with their own files,
never the system's FRR) gets both nodes as ECMP next-hops, refuses a prefix that is no VIP, a VIP the node does not
serve and a flood (keeping none of it), and keeps the other node when one withdraws. The text checks say which
statements each flavour must have.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.cli import main
from ober.config import config_to_dict
from ober.errors import ConfigError
from ober.facts import find_program
from ober.inventory import load_inventory, resolve_inventory
from ober.lab.netns import Lab, add_address, add_bridge, list_netns, run, set_sysctl, stop_process
from ober.lab.procnode import PIPENAME, ProcessNode, start_node
from ober.lab.router import BRIDGE, Router
from ober.lab.site import site_certificate
from ober.remote.routerconfig import PREFIX_HEADROOM, plan_routers, router_config
from ober.render import paths
from tests.conftest import DATA, REPO, SECRETS, require

EXAMPLE = REPO / "inventory" / "example.yaml"


@pytest.fixture
def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return copy.deepcopy(data)


def test_one_config_per_router_with_every_node_as_neighbor() -> None:
    plans = plan_routers(load_inventory(EXAMPLE))
    assert [p.address for p in plans] == ["198.51.100.1", "198.51.100.2"]
    assert [peer.address for peer in plans[0].peers] == [f"198.51.100.{i}" for i in range(11, 15)]
    assert plans[0].asn == 65000 and {peer.asn for peer in plans[0].peers} == {65001}
    assert plans[0].vips == ("100.64.100.10/32", "100.64.100.20/32")
    assert (plans[0].peers[0].hold_time, plans[0].peers[0].keepalive) == (3, 1)
    # Each node's own VIPs, and a limit with headroom over them.
    assert plans[0].peers[0].vips == ("100.64.100.10/32", "100.64.100.20/32")
    assert plans[0].peers[0].prefix_limit == 2 + PREFIX_HEADROOM


def test_frr_text_has_everything_the_router_needs() -> None:
    text = router_config(load_inventory(EXAMPLE), "frr", router="198.51.100.1")
    lines = [line.strip() for line in text.splitlines()]
    for expected in (
        "router bgp 65000",
        "bgp router-id 198.51.100.1",
        "bgp graceful-restart",
        "ip prefix-list OBER-node01 seq 5 permit 100.64.100.10/32",
        "ip prefix-list OBER-node01 seq 10 permit 100.64.100.20/32",
        "route-map OBER-node01-IN permit 10",
        "match ip address prefix-list OBER-node01",
        "route-map OBER-NODES-OUT deny 10",
        "address-family ipv4 unicast",
        "maximum-paths 4",
        "exit-address-family",
    ):
        assert expected in lines, expected
    for i in range(11, 15):
        node = f"198.51.100.{i}"
        for expected in (
            f"neighbor {node} remote-as 65001",
            f"neighbor {node} passive",
            f"neighbor {node} timers 1 3",
            f"neighbor {node} password SECRET-bgp_md5",
            f"neighbor {node} route-map OBER-node{i - 10:02d}-IN in",
            f"neighbor {node} route-map OBER-NODES-OUT out",
            f"neighbor {node} maximum-prefix {2 + PREFIX_HEADROOM} restart 5",
        ):
            assert expected in lines, expected
    assert "resilient" in text.lower()
    # The same nodes in one AS: no multipath-relax needed; eBGP: plain maximum-paths.
    assert "multipath-relax" not in text and "maximum-paths ibgp" not in text
    # FRR statements are lines of words; a stray template brace or an empty value would show here.
    assert "{" not in text and "None" not in text


def test_secrets_are_placeholders_unless_asked_for() -> None:
    inventory = load_inventory(EXAMPLE)
    for flavor in ("frr", "bird"):
        hidden = router_config(inventory, flavor)
        assert SECRETS["bgp_md5"] not in hidden
        assert "SECRET-bgp_md5" in hidden
        shown = router_config(inventory, flavor, secrets=SECRETS)
        assert SECRETS["bgp_md5"] in shown and "SECRET-bgp_md5" not in shown
    with pytest.raises(ConfigError) as missing:
        router_config(inventory, "bird", secrets={})
    assert "bgp.md5_secret" in missing.value.message and "--with-secrets" in (missing.value.fix or "")


def test_mixed_node_ases_and_ibgp(example: dict[str, Any]) -> None:
    example["groups"]["rack2"]["config"] = {"bgp": {"local_as": 65002}}
    text = router_config(resolve_inventory(example), "frr", router="198.51.100.1")
    assert "bgp bestpath as-path multipath-relax" in text
    assert "neighbor 198.51.100.13 remote-as 65002" in text
    example["groups"]["rack2"]["config"] = {}
    example["config"]["bgp"]["local_as"] = 65000
    ibgp = resolve_inventory(example)
    assert "maximum-paths ibgp 4" in router_config(ibgp, "frr", router="198.51.100.1")
    bird = router_config(ibgp, "bird", router="198.51.100.1")
    assert bird.count("direct;") == 4


def test_nodes_must_agree_on_a_routers_as(example: dict[str, Any]) -> None:
    example["hosts"]["node04"]["config"]["bgp"] = {"peer_as": 65100}
    with pytest.raises(ConfigError) as error:
        plan_routers(resolve_inventory(example))
    assert "router 198.51.100.1: the nodes name different peer_as" in error.value.message


def test_only_the_routers_own_nodes_and_vips(example: dict[str, Any]) -> None:
    # rack1 peers only with .1 and serves only VIP a; rack2 peers with both.
    example["groups"]["rack1"]["config"] = {
        "bgp": {"neighbors": "198.51.100.1"},
        "vips": [{"name": "s3-a", "address": "100.64.100.10", "backend": "ceph-a"}],
    }
    example["config"]["whitelists"].pop("routers")
    inventory = resolve_inventory(example)
    plans = {p.address: p for p in plan_routers(inventory)}
    assert [peer.node for peer in plans["198.51.100.2"].peers] == ["node03", "node04"]
    assert [peer.node for peer in plans["198.51.100.1"].peers] == ["node01", "node02", "node03", "node04"]
    assert plans["198.51.100.1"].vips == ("100.64.100.10/32", "100.64.100.20/32")
    # rack1's nodes may announce VIP a only: VIP b from them is refused by their own filter.
    assert [peer.vips for peer in plans["198.51.100.1"].peers] == [("100.64.100.10/32",)] * 2 + [
        ("100.64.100.10/32", "100.64.100.20/32")
    ] * 2
    assert [peer.prefix_limit for peer in plans["198.51.100.1"].peers] == [11, 11, 12, 12]
    bird = router_config(inventory, "bird", router="198.51.100.1")
    assert "filter ober_in_node01 {\n    if net ~ [ 100.64.100.10/32 ] then accept;\n    reject;\n}" in bird
    assert "filter ober_in_node03 {\n    if net ~ [ 100.64.100.10/32, 100.64.100.20/32 ] then accept;" in bird
    frr = router_config(inventory, "frr", router="198.51.100.1").splitlines()
    assert [line for line in frr if line.startswith("ip prefix-list OBER-node01 ")] == [
        "ip prefix-list OBER-node01 seq 5 permit 100.64.100.10/32"
    ]


def test_bird_parses_its_config() -> None:
    bird = find_program("bird")
    require(bird is not None, "bird2 is not installed")
    assert bird is not None
    text = router_config(load_inventory(EXAMPLE), "bird", router="198.51.100.1")
    for expected in ("merge paths on;", "error wait time 1, 5;", "graceful restart on;", "passive on;"):
        assert expected in text
    assert "if net ~ [ 100.64.100.10/32, 100.64.100.20/32 ] then accept;" in text
    assert text.count("receive limit 12 action block;") == 4 and "import filter ober_in_node04;" in text
    done = subprocess.run([bird, "-p", "-c", "/dev/stdin"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "router-config", "-i", str(EXAMPLE), "--flavor", "bird", "--router", "198.51.100.2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# BIRD 2 configuration for router 198.51.100.2")
    assert out.count("protocol bgp ober_node") == 4
    assert main(["fleet", "router-config", "-i", str(EXAMPLE), "--router", "198.51.100.9"]) == 1
    assert "no node of" in capsys.readouterr().err
    assert main(["fleet", "router-config", "-i", str(EXAMPLE), "--flavor", "junos"]) == 2


# --- for real: BIRD with this config, a real ExaBGP node -----------------------------------------------------------

VIP = "198.51.100.10"
VIP_B = "198.51.100.20"
"""node02's second VIP: node01 does not serve it, so the router must refuse it from node01."""
NODE = "100.64.0.11"
ROUTER = "100.64.0.1"
FLOOD = [f"100.65.1.{i}/32" for i in range(1, 31)]
"""More routes than any node's prefix limit (its VIPs + PREFIX_HEADROOM), none of them a VIP."""


def lab_inventory(cert: Path) -> dict[str, Any]:
    """Two nodes peering with the lab router with MD5: node01 serves VIP A only, node02 both VIPs (one group)."""
    fast = {"interval": "200ms", "rise": 1, "fall": 1}
    return {
        "site": "routerlab",
        "config": {
            "bgp": {"neighbors": ROUTER, "local_as": 65001, "peer_as": 65000, "md5_secret": "bgp_md5"},
            "vips": [
                {"name": "s3-a", "address": VIP, "backend": "ceph-a"},
                {"name": "s3-b", "address": VIP_B, "backend": "ceph-a"},
            ],
            "backends": {"ceph-a": {"servers": ["100.64.1.2"], "port": 7480, "check": fast}},
            "certificates": {"pem": str(cert), "http": "serve"},
            "health": {"interval": "200ms", "rise": 2, "fall": 2, "timeout": "1s"},
            "stats": {"bind": "127.0.0.1"},
            "network": {"manager": "networkd"},
            "kernel_profile": "none",
            "haproxy": {"maxconn": 5000},
        },
        "groups": {"lab": {"nodes": "node[01-02]", "address": "100.64.0.[11-12]"}},
        "hosts": {"node01": {"config": {"vips": [{"name": "s3-a", "address": VIP, "backend": "ceph-a"}]}}},
    }


@pytest.mark.lab
def test_bird_config_routes_the_vip_to_a_real_exabgp_node(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    bird = find_program("bird")
    require(bird is not None and find_program("birdc") is not None, "bird2 is not installed")
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    require(find_program("exabgp") is not None, "exabgp is not installed in this environment")
    assert bird is not None
    pem, _public = site_certificate(tmp_path / "certs")
    inventory = resolve_inventory(lab_inventory(pem))
    text = router_config(inventory, "bird", secrets=SECRETS)
    assert 'password "' + SECRETS["bgp_md5"] + '"' in text
    with Lab() as lab:
        ns = lab.netns("router")
        add_bridge(ns, BRIDGE)
        add_address(ns, BRIDGE, f"{ROUTER}/24")
        set_sysctl(ns, "net.ipv4.ip_forward", "1")
        rundir = lab.path("router")
        config = rundir / "bird.conf"
        config.write_text(text)
        process = lab.spawn(
            ns,
            [bird, "-f", "-c", str(config), "-s", str(rundir / "bird.ctl"), "-P", str(rundir / "bird.pid")],
            log=rundir / "bird.log",
        )
        router = Router(
            ns=ns,
            address=ipaddress.IPv4Interface(f"{ROUTER}/24"),
            rundir=rundir,
            peers={"ober_node01": NODE},
            process=process,
        )
        backend_ns = router.segment(lab, "rgwa", 1)
        lab.spawn(
            backend_ns,
            [sys.executable, str(DATA / "serving_backend.py"), "100.64.1.2", "7480"],
            log=lab.path("rgwa") / "backend.log",
        )
        # The node's config as the inventory resolves it (the lab puts its paths under the lab directory).
        node = start_node(lab, router, "node01", NODE, config_to_dict(inventory.nodes[0].config), SECRETS)
        deadline = time.monotonic() + 90
        while router.next_hops(VIP) != [NODE]:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no route for {VIP} via {NODE}: sessions {router.bgp_sessions()}; "
                    f"BIRD log {(rundir / 'bird.log').read_text()[-800:]}"
                )
            time.sleep(0.1)
        assert router.bgp_sessions() == {NODE: "Established"}
        # Only /32s of the VIPs are accepted: the route BIRD holds is exactly the VIP's.
        routes = router.birdc("show", "route", "protocol", "ober_node01")
        assert f"{VIP}/32" in routes

        def why() -> str:
            return f"\nBIRD log: {(rundir / 'bird.log').read_text()[-1500:]}"

        # node01 announces node02's VIP: received (kept as filtered), never routed to node01.
        exabgp_announce(node, f"{VIP_B}/32")
        wait_for(
            lambda: f"{VIP_B}/32" in router.birdc("show", "route", "filtered", "protocol", "ober_node01"),
            f"BIRD to receive and refuse {VIP_B} from node01",
            why=why,
        )
        assert router.next_hops(VIP_B) == [] and router.next_hops(VIP) == [NODE]

        # A flood past node01's limit (its 1 VIP + headroom): BIRD keeps no more than the limit and drops the rest,
        # while node01's session and its VIP stay.
        limit = next(peer for peer in plan_routers(inventory)[0].peers if peer.node == "node01").prefix_limit
        assert len(FLOOD) > limit
        exabgp_announce(node, f"attributes next-hop self nlri {' '.join(FLOOD)}")
        seen: list[str] = []

        def tripped() -> bool:
            seen.append(router.birdc("show", "protocols", "all", "ober_node01"))
            return f"Receive limit:  {limit} [HIT]" in seen[-1]

        wait_for(tripped, "BIRD to hit node01's receive limit", why=lambda: "\n" + seen[-1])
        kept = re.search(r"Routes:\s+(\d+) imported, (\d+) filtered", seen[-1])
        assert kept is not None and int(kept.group(1)) + int(kept.group(2)) <= limit, seen[-1]
        assert router.bgp_sessions() == {NODE: "Established"} and router.next_hops(VIP) == [NODE]
        assert not [prefix for prefix in FLOOD if kernel_routes(router, prefix)]


# --- for real: FRR with this config, two real ExaBGP nodes ---------------------------------------------------------

FRR_LIB = "/usr/lib/frr"
"""Where Debian installs FRR's daemons (not on PATH)."""
FRR_NODES = {"node01": "100.64.0.11", "node02": "100.64.0.12"}
OUTSIDE = "100.65.0.10/32"
"""A host route that is no VIP of the inventory: a node announcing it must not steer the router's traffic."""
FRR_DEADLINE = 30.0


@dataclass
class Frr:
    """zebra and bgpd in the router namespace, queried with vtysh on their private vty sockets."""

    rundir: Path
    zebra: subprocess.Popen[bytes]
    bgpd: subprocess.Popen[bytes]

    def vtysh(self, command: str) -> str:
        """One vtysh command on this router's daemons; its output, errors included (they explain a failure)."""
        done = subprocess.run(
            ["vtysh", "--vty_socket", str(self.rundir), "-c", command],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout + done.stderr

    def vtysh_json(self, command: str) -> dict[str, Any]:
        """A ``show … json`` command's answer; {} while bgpd does not answer yet."""
        try:
            data: dict[str, Any] = json.loads(self.vtysh(f"{command} json"))
        except ValueError:
            return {}
        return data

    def sessions(self) -> dict[str, str]:
        """Each neighbor's BGP state (``Established``, ``Active``…) from ``show bgp summary json``."""
        peers = self.vtysh_json("show bgp summary").get("ipv4Unicast", {}).get("peers", {})
        return {address: str(peer.get("state")) for address, peer in peers.items()}

    def log(self) -> str:
        """bgpd's output so far (its log goes to stdout)."""
        return (self.rundir.parent / "bgpd.log").read_text(errors="replace")

    def denied(self, neighbor: str, prefix: str) -> bool:
        """Whether bgpd logged refusing ``prefix`` from ``neighbor`` by route-map (needs debug bgp updates in).

        The line reads ``100.64.0.11(Unknown) rcvd UPDATE about 100.65.0.10/32 IPv4 unicast -- DENIED due to:
        route-map;`` (``Unknown``: the peer sent no hostname).
        """
        pattern = rf" {re.escape(neighbor)}\(\S*\) rcvd UPDATE about {re.escape(prefix)} .*DENIED due to: route-map"
        return re.search(pattern, self.log()) is not None

    def diagnosis(self) -> str:
        """What to read when an assertion fails: the sessions and bgpd's last log lines."""
        log = self.log().strip().splitlines()[-15:]
        summary = self.vtysh_json("show bgp summary") or self.vtysh("show bgp summary json")
        return f"\nshow bgp summary json: {json.dumps(summary)}\nbgpd log:\n" + "\n".join(log)


def start_frr(lab: Lab, config: str) -> tuple[Router, Frr]:
    """The router namespace, zebra and bgpd in it with ``config`` as bgpd's configuration.

    Each daemon gets its own config, pid file, zserv socket and vty socket directory under the lab, so the
    system's FRR (/etc/frr, /run/frr) is neither read nor touched. The daemons drop to user frr, who must reach
    and own that directory.
    """
    ns = lab.netns("router")
    add_bridge(ns, BRIDGE)
    add_address(ns, BRIDGE, f"{ROUTER}/24")
    set_sysctl(ns, "net.ipv4.ip_forward", "1")
    set_sysctl(ns, "net.ipv4.fib_multipath_hash_policy", "1")
    lab.workdir.chmod(0o711)
    logs = lab.path("router")
    rundir = lab.path("router", "frr")
    (rundir / "zebra.conf").write_text("! zebra needs nothing but the kernel; bgpd's config is the rendered one\n")
    (rundir / "bgpd.conf").write_text(config)
    for path in (rundir, rundir / "zebra.conf", rundir / "bgpd.conf"):
        shutil.chown(path, "frr", "frr")
    zserv = rundir / "zserv.api"
    common = ["--vty_socket", str(rundir), "-z", str(zserv), "-P", "0", "--log", "stdout", "--log-level", "debug"]
    zebra = lab.spawn(
        ns,
        [f"{FRR_LIB}/zebra", "-f", str(rundir / "zebra.conf"), "-i", str(rundir / "zebra.pid"), *common],
        log=logs / "zebra.log",
    )
    wait_for(lambda: zserv.exists() or zebra.poll() is not None, "zebra's zserv socket")
    assert zebra.poll() is None, (logs / "zebra.log").read_text()
    bgpd = lab.spawn(
        ns,
        [f"{FRR_LIB}/bgpd", "-f", str(rundir / "bgpd.conf"), "-i", str(rundir / "bgpd.pid"), *common],
        log=logs / "bgpd.log",
    )
    frr = Frr(rundir, zebra, bgpd)
    wait_for(lambda: "ipv4Unicast" in frr.vtysh_json("show bgp summary") or bgpd.poll() is not None, "bgpd's vty")
    assert bgpd.poll() is None, (logs / "bgpd.log").read_text()
    router = Router(ns=ns, address=ipaddress.IPv4Interface(f"{ROUTER}/24"), rundir=logs, peers={}, process=bgpd)
    return router, frr


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = FRR_DEADLINE, why: Callable[[], str] = lambda: ""
) -> None:
    """Poll every 20 ms until ``check`` holds; fail after ``timeout`` with ``why()`` appended."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {what}{why()}")
        time.sleep(0.02)


def kernel_routes(router: Router, prefix: str) -> list[dict[str, Any]]:
    """The router's kernel routes for exactly ``prefix`` (``ip -j route show exact``)."""
    done = run(["ip", "-n", router.ns, "-j", "route", "show", "exact", prefix])
    routes: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return routes


def exabgp_announce(node: ProcessNode, route: str) -> None:
    """Have the node's ExaBGP announce ``route`` itself, through its CLI pipe (ober health never would).

    ``route`` is a prefix, or ``attributes … nlri P1 P2 …`` for many at once.
    """
    exabgp = find_program("exabgp")
    assert exabgp is not None
    done = subprocess.run(
        [
            exabgp,
            "cli",
            "--pipename",
            PIPENAME,
            "announce",
            *(route.split() if route.startswith("attributes ") else ["route", route, "next-hop", "self"]),
        ],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "EXABGP_ROOT": node.env["EXABGP_ROOT"]},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.lab
def test_frr_config_routes_the_vip_to_real_exabgp_nodes_by_ecmp(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    require(os.access(f"{FRR_LIB}/bgpd", os.X_OK) and shutil.which("vtysh") is not None, "frr is not installed")
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    require(find_program("exabgp") is not None, "exabgp is not installed in this environment")
    pem, _public = site_certificate(tmp_path / "certs")
    inventory = resolve_inventory(lab_inventory(pem))
    text = router_config(inventory, "frr", secrets=SECRETS)
    # FRR's own parser, every daemon's commands: a line FRR does not know fails here, with its line number.
    checked = subprocess.run(
        ["vtysh", "-C", "-f", "/dev/stdin"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with Lab() as lab:
        router, frr = start_frr(lab, text)
        assert "debugging is on" in frr.vtysh("debug bgp updates in")
        # bgpd logs each line it refused while loading (vtysh -C cannot know what bgpd itself rejects).
        refused = [line for line in (router.rundir / "bgpd.log").read_text().splitlines() if " on config line " in line]
        assert refused == []
        backend_ns = router.segment(lab, "rgwa", 1)
        lab.spawn(
            backend_ns,
            [sys.executable, str(DATA / "serving_backend.py"), "100.64.1.2", "7480"],
            log=lab.path("rgwa") / "backend.log",
        )
        nodes = [
            start_node(lab, router, node.name, FRR_NODES[node.name], config_to_dict(node.config), SECRETS)
            for node in inventory.nodes
        ]
        both = sorted(FRR_NODES.values())
        wait_for(lambda: sorted(router.next_hops(VIP)) == both, f"{VIP} via both nodes", why=frr.diagnosis)
        assert [route["protocol"] for route in kernel_routes(router, f"{VIP}/32")] == ["bgp"]
        assert frr.sessions() == dict.fromkeys(both, "Established"), frr.diagnosis()

        # A node that announces a prefix outside the VIPs: bgpd receives it, and the import filter drops it. The
        # debug line (switched on at run time, the config is the rendered one) proves the route reached bgpd.
        node01, node02 = FRR_NODES["node01"], FRR_NODES["node02"]
        exabgp_announce(nodes[0], OUTSIDE)
        wait_for(
            lambda: frr.denied(node01, OUTSIDE) or kernel_routes(router, OUTSIDE) != [],
            f"bgpd to receive {OUTSIDE} from {node01}",
            why=frr.diagnosis,
        )
        assert kernel_routes(router, OUTSIDE) == [], (
            f"the router installed {OUTSIDE}: no import filter{frr.diagnosis()}"
        )
        assert OUTSIDE not in frr.vtysh_json("show bgp ipv4 unicast").get("routes", {}), frr.diagnosis()
        assert sorted(router.next_hops(VIP)) == both

        # node01 announces VIP B, which only node02 serves: its own filter refuses it, node02 keeps VIP B alone.
        wait_for(lambda: router.next_hops(VIP_B) == [node02], f"{VIP_B} via {node02}", why=frr.diagnosis)
        exabgp_announce(nodes[0], f"{VIP_B}/32")
        wait_for(lambda: frr.denied(node01, f"{VIP_B}/32"), f"bgpd to refuse {VIP_B} from {node01}", why=frr.diagnosis)
        assert router.next_hops(VIP_B) == [node02], frr.diagnosis()

        # node02 withdraws (ober drain's maintenance file): the VIP keeps node01 as its only next-hop, and the
        # session stays up; when the drain ends, node02 is back.
        nodes[1].maintenance(True)
        wait_for(lambda: router.next_hops(VIP) == [node01], f"{VIP} via {node01} only", why=frr.diagnosis)
        assert frr.sessions() == dict.fromkeys(both, "Established"), frr.diagnosis()
        nodes[1].maintenance(False)
        wait_for(lambda: sorted(router.next_hops(VIP)) == both, f"{VIP} via both nodes again", why=frr.diagnosis)

        # node02's ExaBGP restarts: the router takes its new session at once (BIRD needed an error wait time for
        # that), so the node is back in the ECMP set as soon as its health check rises.
        stop_process(nodes[1].exabgp)
        wait_for(lambda: router.next_hops(VIP) == [node01], f"{VIP} via {node01} only", why=frr.diagnosis)
        p = paths(nodes[1].config)
        started = time.monotonic()
        exabgp = lab.spawn(
            nodes[1].ns,
            [f"{p['venv']}/bin/exabgp", "server", p["exabgp_conf"]],
            log=nodes[1].logdir / "exabgp.log",
            env=nodes[1].env,
        )
        wait_for(lambda: sorted(router.next_hops(VIP)) == both, f"{node02} back", timeout=10, why=frr.diagnosis)
        print(f"{node02} back in the ECMP set {time.monotonic() - started:.2f}s after its ExaBGP restarted")

        # node01 floods more routes than its prefix limit: bgpd refuses every one and keeps none (its table holds
        # node01's one VIP), so the session and node01's VIP stay; nothing of the flood is routed.
        exabgp_announce(nodes[0], f"attributes next-hop self nlri {' '.join(FLOOD)}")
        wait_for(lambda: frr.denied(node01, FLOOD[-1]), f"bgpd to refuse the flood from {node01}", why=frr.diagnosis)
        peer = frr.vtysh_json("show bgp summary").get("ipv4Unicast", {}).get("peers", {}).get(node01, {})
        assert (peer.get("state"), peer.get("pfxRcd")) == ("Established", 1), frr.diagnosis()
        assert not [prefix for prefix in FLOOD if kernel_routes(router, prefix)]
        assert sorted(router.next_hops(VIP)) == both
        processes = [frr.zebra, frr.bgpd, exabgp, *(daemon for node in nodes for daemon in (node.haproxy, node.exabgp))]

    assert all(process.poll() is not None for process in processes)
    assert not [name for name in list_netns() if name.startswith(lab.prefix)]
