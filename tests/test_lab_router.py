"""The lab router against real daemons: BIRD 2 in a router namespace, ExaBGP 5.0 in three node namespaces."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ober.errors import OberError
from ober.facts import find_program
from ober.lab.netns import (
    Lab,
    add_netns,
    add_veth,
    check_off_host,
    cleanup_stale,
    delete_netns,
    list_netns,
    run,
    spawn_in,
    stop_process,
)
from ober.lab.router import Router, parse_next_hops, parse_protocols, start_router
from tests.conftest import require

VIP = "198.51.100.10"
NODES = ("100.64.0.11", "100.64.0.12", "100.64.0.13")
DEADLINE = 15.0

# Routes the router's import filter must refuse: not a /32, and outside the VIP prefixes.
REFUSED = ("198.51.100.0/25", "100.65.0.10/32")

# The node's health process, reduced to its contract with ExaBGP: announce, then read the acks until EOF.
ANNOUNCE = f"""\
import sys
for route in ("{VIP}/32", *{REFUSED!r}):
    sys.stdout.write(f"announce route {{route}} next-hop self\\n")
sys.stdout.flush()
for _ in sys.stdin:
    pass
"""

EXABGP_CONF = """\
process announce {{
    run {python} {script};
    encoder text;
}}

neighbor 100.64.0.1 {{
    router-id {address};
    local-address {address};
    local-as 65001;
    peer-as 65000;
    hold-time 3;
    family {{
        ipv4 unicast;
    }}
    api {{
        processes [ announce ];
    }}
}}
"""

# ExaBGP as root would drop to nobody; several instances on one host would fight over one CLI pipe.
EXABGP_ENV = {"exabgp_daemon_user": "root", "exabgp_api_cli": "false", "exabgp_log_destination": "stdout"}


def wait_until(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> float:
    """Poll every 10 ms until ``check`` holds; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def start_node(lab: Lab, router: Router, index: int, address: str) -> subprocess.Popen[bytes]:
    """A node namespace on the router's link, running ExaBGP that announces the VIP."""
    ns = lab.netns(f"node{index}")
    router.connect(ns, address)
    home = lab.path(f"node{index}")
    script = home / "announce.py"
    script.write_text(ANNOUNCE)
    config = home / "exabgp.conf"
    config.write_text(EXABGP_CONF.format(python=sys.executable, script=script, address=address))
    exabgp = find_program("exabgp")
    assert exabgp is not None
    return lab.spawn(ns, [exabgp, "server", str(config)], log=home / "exabgp.log", env=EXABGP_ENV)


def bird_routes(router: Router) -> list[str]:
    """The destinations BIRD installed in the router's kernel table."""
    routes = json.loads(run(["ip", "-n", router.ns, "-j", "route", "show", "proto", "bird"]).stdout or "[]")
    return sorted(route["dst"] for route in routes)


def filtered(router: Router) -> list[str]:
    """The prefixes BIRD received but its import filter refused (a route's first line starts with its prefix)."""
    lines = router.birdc("show", "route", "filtered").splitlines()
    return sorted({line.split()[0] for line in lines if line[:1].isdigit()})


def established(router: Router) -> int:
    return sum(state == "Established" for state in router.bgp_sessions().values())


@pytest.mark.lab
def test_ecmp_follows_the_nodes_sessions() -> None:
    lab_prerequisites()
    require(find_program("bird") is not None and find_program("birdc") is not None, "bird2 is not installed")
    require(find_program("exabgp") is not None, "exabgp is not installed")

    with Lab() as lab:
        router = start_router(lab, NODES, ["198.51.100.0/24"])
        nodes = [start_node(lab, router, index, address) for index, address in enumerate(NODES, 1)]
        processes = [router.process, *nodes]

        wait_until(lambda: len(router.next_hops(VIP)) == 3, "3 next-hops for the VIP")
        assert sorted(router.next_hops(VIP)) == sorted(NODES)
        assert router.bgp_sessions() == dict.fromkeys(NODES, "Established")
        wait_until(lambda: filtered(router) == sorted(REFUSED), "the refused routes received and filtered")
        assert bird_routes(router) == [VIP]

        killed = time.monotonic()
        os.kill(nodes[0].pid, signal.SIGTERM)
        wait_until(lambda: len(router.next_hops(VIP)) == 2, "the killed node's next-hop removed")
        print(f"SIGTERM to next-hop removal: {time.monotonic() - killed:.3f}s")
        assert sorted(router.next_hops(VIP)) == sorted(NODES[1:])
        wait_until(lambda: established(router) == 2, "the killed node's session down")
        assert router.bgp_sessions()[NODES[0]] != "Established"

    assert all(process.poll() is not None for process in processes)
    assert not [name for name in list_netns() if name.startswith(lab.prefix)]
    assert not Path(lab.workdir).exists()


def test_parse_next_hops_single_and_multipath() -> None:
    single = '[{"dst":"198.51.100.10","gateway":"100.64.0.11","dev":"br0","protocol":"bird","metric":32,"flags":[]}]'
    multi = (
        '[{"dst":"198.51.100.10","protocol":"bird","metric":32,"flags":[],"nexthops":['
        '{"gateway":"100.64.0.12","dev":"br0","weight":1,"flags":[]},'
        '{"gateway":"100.64.0.11","dev":"br0","weight":1,"flags":[]}]}]'
    )
    assert parse_next_hops(single) == ["100.64.0.11"]
    assert parse_next_hops(multi) == ["100.64.0.12", "100.64.0.11"]
    assert parse_next_hops("") == []
    assert parse_next_hops("[]") == []


def test_parse_protocols() -> None:
    output = """\
BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     10:00:00.000
kernel1    Kernel     master4    up     10:00:00.000
node_100_64_0_11 BGP        ---        up     10:00:01.000  Established
node_100_64_0_12 BGP        ---        start  10:00:00.000  Active        Socket: Connection refused
node_100_64_0_13 BGP        ---        down   10:00:00.000
"""
    assert parse_protocols(output) == {
        "device1": "up",
        "kernel1": "up",
        "node_100_64_0_11": "Established",
        "node_100_64_0_12": "Active",
        "node_100_64_0_13": "down",
    }
    assert parse_protocols("") == {}


def lab_prerequisites() -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    require(find_program("ip") is not None, "iproute2 is not installed")


@pytest.mark.lab
def test_lab_teardown_after_a_partial_failure_is_complete_and_idempotent() -> None:
    lab_prerequisites()
    lab = Lab()
    ns = lab.netns("a")
    sleeper = lab.spawn(ns, ["sleep", "60"], log=lab.path("a") / "sleep.log")
    with pytest.raises(OberError, match="failed"):
        add_veth(ns, "v0", lab.prefix + "missing", "v1")
    with pytest.raises(OberError, match=r"File exists"):
        lab.netns("a")
    assert lab.namespaces == [ns]  # the name that was taken is not recorded, so close() cannot delete another's
    lab.close()
    lab.close()
    assert sleeper.poll() is not None
    assert not [name for name in list_netns() if name.startswith(lab.prefix)]


@pytest.mark.lab
def test_cleanup_stale_removes_dead_runs_only() -> None:
    lab_prerequisites()
    finished = subprocess.Popen(["true"])
    finished.wait(5)
    stale = f"ober-{finished.pid}-beef-node1"
    add_netns(stale)
    orphan = spawn_in(stale, ["sleep", "60"], log=Path(os.devnull))
    try:
        with Lab() as live:
            mine = live.netns("node1")
            assert cleanup_stale(f"ober-{finished.pid}-") == [stale]
            assert stale not in list_netns()
            assert mine not in cleanup_stale()  # its owner, this process, is alive
            assert mine in list_netns()
            orphan.wait(5)
    finally:
        stop_process(orphan)
        delete_netns(stale)


def test_lab_networks_must_not_overlap_the_hosts() -> None:
    require(find_program("ip") is not None, "iproute2 is not installed")
    with pytest.raises(OberError, match=r"overlaps 127\."):
        check_off_host([ipaddress.IPv4Network("127.1.0.0/16")])
    check_off_host([ipaddress.IPv4Network("198.51.100.0/24")])
