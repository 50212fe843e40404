"""`ober status` reports graceful restart as the router negotiated it, read from a real ExaBGP against real BIRD.

The node's own ``bgp.graceful_restart`` says what the node advertises; the roll may keep a restarting node in the
ECMP set only when the router advertised it too (issue 9 item 7). BIRD 2 runs in a router namespace with
``graceful restart on`` or ``off``; ExaBGP 5.0 runs in a node namespace with its CLI pipes under a private root,
and :func:`ober.exabgp_cli.bgp_facts` asks it through ``exabgp cli`` exactly as ``ober status`` does.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from ober.errors import OberError
from ober.exabgp_cli import PIPENAME, BgpFacts, bgp_facts
from ober.facts import find_program
from ober.lab.netns import Lab, stop_process
from ober.lab.router import start_router
from tests.conftest import require

pytestmark = pytest.mark.lab

VIP, NODE, ROUTER = "198.51.100.10", "100.64.0.11", "100.64.0.1"
NODE_AS, ROUTER_AS = 65001, 65000
DEADLINE = 60.0


def start_exabgp(lab: Lab, ns: str, root: Path, graceful_restart: int) -> subprocess.Popen[bytes]:
    """ExaBGP announcing the VIP, advertising graceful restart when ``graceful_restart`` > 0, its CLI under root."""
    root.mkdir(parents=True)
    pipes = root / "run" / "exabgp"
    pipes.mkdir(parents=True)
    for end in ("in", "out"):
        os.mkfifo(pipes / f"{PIPENAME}.{end}", 0o600)
    announce = root / "announce.sh"
    # Keeps its stdout open while ExaBGP runs: a helper that hangs up is respawned until ExaBGP gives up.
    announce.write_text(f"#!/bin/sh\necho 'announce route {VIP}/32 next-hop self'\nwhile read -r _; do :; done\n")
    announce.chmod(0o755)
    capability = f"graceful-restart {graceful_restart};" if graceful_restart else ""
    config = root / "exabgp.conf"
    config.write_text(
        f"process announce {{ run {announce}; encoder text; }}\n"
        f"neighbor {ROUTER} {{ router-id {NODE}; local-address {NODE}; local-as {NODE_AS}; peer-as {ROUTER_AS}; "
        f"hold-time 3; capability {{ {capability} }} family {{ ipv4 unicast; }} api {{ processes [ announce ]; }} }}\n"
    )
    env = {
        "EXABGP_ROOT": str(root),
        "exabgp_daemon_user": "root",
        "exabgp_daemon_daemonize": "false",
        "exabgp_api_cli": "true",
        "exabgp_api_pipename": PIPENAME,
        "exabgp_log_destination": "stdout",
    }
    exabgp = find_program("exabgp")
    assert exabgp is not None
    return lab.spawn(ns, [exabgp, "server", str(config)], log=root / "exabgp.log", env=env)


def established(root: Path) -> BgpFacts:
    """What ExaBGP reports once its session with the router is established (fails after DEADLINE)."""
    deadline = time.monotonic() + DEADLINE
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            facts = bgp_facts(str(root))
        except OberError as exc:
            last = exc.message  # the CLI pipes answer a moment after ExaBGP starts
        else:
            if facts.sessions.get(ROUTER) == "established":
                return facts
            last = str(facts.sessions)
        time.sleep(0.2)
    log = (root / "exabgp.log").read_text(errors="replace")[-2000:]
    pytest.fail(f"no established session within {DEADLINE:g}s ({last})\n{log}")


def prerequisites() -> None:
    require(os.geteuid() == 0, "network namespaces need root")
    require(find_program("bird") is not None and find_program("birdc") is not None, "bird2 is not installed")
    require(find_program("exabgp") is not None, "exabgp is not installed")


def test_graceful_restart_is_negotiated_only_when_router_and_node_both_advertise_it() -> None:
    prerequisites()
    seen: dict[tuple[bool, int], bool | None] = {}
    for router_gr in (True, False):
        with Lab() as lab:
            router = start_router(
                lab, [NODE], ["198.51.100.0/24"], asn=ROUTER_AS, peer_as=NODE_AS, graceful_restart=router_gr
            )
            ns = lab.netns("node")
            router.connect(ns, NODE)
            for node_gr in (120, 0) if router_gr else (120,):
                root = lab.path(f"gr{node_gr}") / "root"
                exabgp = start_exabgp(lab, ns, root, node_gr)
                seen[(router_gr, node_gr)] = established(root).graceful_restart.get(ROUTER)
                stop_process(exabgp)
    assert seen == {(True, 120): True, (True, 0): False, (False, 120): False}
