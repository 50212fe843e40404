"""``ober fleet router-config``: the upstream router's BGP configuration for an inventory.

BIRD's output is proven for real: loaded into a real BIRD 2 in a namespace, peering (with MD5) with a real ExaBGP
node driven by ober health, and the kernel route for the VIP gets the node as next-hop. FRR is not installed on
this machine, so FRR's output is checked as text (every statement the router needs, in FRR's syntax).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.cli import main
from ober.config import config_to_dict
from ober.errors import ConfigError
from ober.facts import find_program
from ober.inventory import load_inventory, resolve_inventory
from ober.lab.netns import Lab, add_address, add_bridge, set_sysctl
from ober.lab.procnode import start_node
from ober.lab.router import BRIDGE, Router
from ober.lab.site import site_certificate
from ober.remote.routerconfig import plan_routers, router_config
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


def test_frr_text_has_everything_the_router_needs() -> None:
    text = router_config(load_inventory(EXAMPLE), "frr", router="198.51.100.1")
    lines = [line.strip() for line in text.splitlines()]
    for expected in (
        "router bgp 65000",
        "bgp router-id 198.51.100.1",
        "bgp graceful-restart",
        "ip prefix-list OBER-VIPS seq 5 permit 100.64.100.10/32",
        "ip prefix-list OBER-VIPS seq 10 permit 100.64.100.20/32",
        "route-map OBER-VIPS-IN permit 10",
        "match ip address prefix-list OBER-VIPS",
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
            f"neighbor {node} route-map OBER-VIPS-IN in",
            f"neighbor {node} route-map OBER-NODES-OUT out",
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
    assert "bgp_md5" in missing.value.message and "--with-secrets" in (missing.value.fix or "")


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
    plans = {p.address: p for p in plan_routers(resolve_inventory(example))}
    assert [peer.node for peer in plans["198.51.100.2"].peers] == ["node03", "node04"]
    assert [peer.node for peer in plans["198.51.100.1"].peers] == ["node01", "node02", "node03", "node04"]
    assert plans["198.51.100.1"].vips == ("100.64.100.10/32", "100.64.100.20/32")


def test_bird_parses_its_config() -> None:
    bird = find_program("bird")
    require(bird is not None, "bird2 is not installed")
    assert bird is not None
    text = router_config(load_inventory(EXAMPLE), "bird", router="198.51.100.1")
    for expected in ("merge paths on;", "error wait time 1, 5;", "graceful restart on;", "passive on;"):
        assert expected in text
    assert "define OBER_VIPS = [ 100.64.100.10/32, 100.64.100.20/32 ];" in text
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
NODE = "100.64.0.11"
ROUTER = "100.64.0.1"


def lab_inventory(cert: Path) -> dict[str, Any]:
    """One node peering with the lab router with MD5, one VIP on one backend group."""
    fast = {"interval": "200ms", "rise": 1, "fall": 1}
    return {
        "site": "routerlab",
        "config": {
            "bgp": {"neighbors": ROUTER, "local_as": 65001, "peer_as": 65000, "md5_secret": "bgp_md5"},
            "vips": [{"name": "s3-a", "address": VIP, "backend": "ceph-a"}],
            "backends": {"ceph-a": {"servers": ["100.64.1.2"], "port": 7480, "check": fast}},
            "certificates": {"pem": str(cert), "http": "serve"},
            "health": {"interval": "200ms", "rise": 2, "fall": 2, "timeout": "1s"},
            "stats": {"bind": "127.0.0.1"},
            "network": {"manager": "networkd"},
            "kernel_profile": "none",
            "haproxy": {"maxconn": 5000},
        },
        "groups": {"lab": {"nodes": "node01", "address": NODE}},
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
        start_node(lab, router, "node01", NODE, config_to_dict(inventory.nodes[0].config), SECRETS)
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
