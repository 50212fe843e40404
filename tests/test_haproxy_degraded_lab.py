"""A real HAProxy running ober's rendered config that serves less than it says, and `ober status` saying so.

Issue 9 item 5: a backend server whose name does not resolve is put in maintenance by HAProxy (``init-addr
last,libc,none``) and the node served with 1 of 2 RGWs without a word; a ``maxconn`` needing more file descriptors
than HAProxy may open passes ``haproxy -c`` but makes the reload fail, the old worker serving on. Here HAProxy runs
in a private namespace (tests/test_haproxy_serving.py's), with the node's files rendered into a temporary install
path; a server under ``.invalid`` never resolves. Needs root, ``ip``, ``haproxy`` and ``prlimit``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ober.certs import self_signed_pem
from ober.config import NodeConfig, parse_node_config
from ober.errors import OberError
from ober.haproxy_state import after_reload, worker_pid
from ober.lab.procnode import write_install
from ober.render import paths
from tests.conftest import require
from tests.test_haproxy_serving import (
    BACKEND_SCRIPT,
    HOST,
    INSTALL_PATH,
    RGW_A,
    RGW_B,
    RGW_PORT,
    VIP_A,
    VIP_B,
    Namespace,
    base_config,
    stop_process,
)

pytestmark = pytest.mark.lab

UNRESOLVABLE = "rgw-a2.invalid"
# HAProxy wants about 2 descriptors per connection: 5000 fit under this limit, 100000 do not.
FD_LIMIT = 16384
DEADLINE = 15.0


@dataclass
class Node:
    """HAProxy (under a file descriptor limit) and stand-in RGWs in a namespace, from ober's rendered files."""

    ns: Namespace
    config: NodeConfig
    haproxy: subprocess.Popen[bytes]
    backends: dict[str, subprocess.Popen[bytes]]
    log: Path
    raw: dict[str, Any]
    """The config as data, to change."""

    @property
    def socket(self) -> str:
        return paths(self.config)["admin_socket"]

    def status(self) -> dict[str, Any]:
        """``ober status --json`` as a user runs it (here on the host: the runtime socket is a file)."""
        argv = [sys.executable, "-m", "ober", "status", "--json", "--config", paths(self.config)["config"]]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def rewrite(self, changes: dict[str, Any]) -> NodeConfig:
        """Render the node again with ``changes`` to its config (as ``ober config`` would write it)."""
        data = {**self.raw, **changes}
        config = parse_node_config(data)
        write(config)
        return config


def write(config: NodeConfig) -> None:
    write_install(config, {})


def wait(what: str, probe: Any, node: Node) -> None:
    deadline = time.monotonic() + DEADLINE
    while not probe():
        if node.haproxy.poll() is not None:
            pytest.fail(f"HAProxy exited while waiting for {what}: {node.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE:g}s: {what}\n{node.log.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A work directory with a short path: the install path holds HAProxy's socket (ober allows 64 characters)."""
    path = Path(tempfile.mkdtemp(prefix="ober-dg-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def node(short_tmp: Path) -> Iterator[Node]:
    require(os.geteuid() == 0, "network namespaces need root")
    for tool in ("ip", "haproxy", "prlimit"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    tmp_path = short_tmp
    install = tmp_path / "opt" / "ober"
    assert INSTALL_PATH.match(str(install))
    pem = install / "etc" / "certs" / "s3.pem"
    raw = base_config(str(install), str(pem))
    raw["backends"]["ceph-a"]["servers"] = [f"{RGW_A}:{RGW_PORT}", f"{UNRESOLVABLE}:{RGW_PORT}"]
    config = parse_node_config(raw)
    write(config)
    certificate, key = self_signed_pem(HOST, [f"DNS:{HOST}"])
    pem.parent.mkdir(parents=True, exist_ok=True)
    pem.write_text(certificate + key)
    pem.chmod(0o600)
    Path(paths(config)["run_dir"]).mkdir(parents=True, exist_ok=True)
    # No ExaBGP here: its CLI pipes would be looked for under the install path, found missing, at once.
    (install / "run" / "exabgp").mkdir(parents=True)
    ns = Namespace()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for address in (VIP_A, VIP_B, RGW_A, RGW_B):
            ns.add_address(address)
        backends = {}
        for host in (RGW_A, RGW_B):
            backends[host] = ns.start([sys.executable, str(BACKEND_SCRIPT), host, str(RGW_PORT)], tmp_path / host)
            processes.append(backends[host])
        log = tmp_path / "haproxy.log"
        # prlimit execs HAProxy under the limit: the PID is HAProxy's master, and only it gets the lower limit.
        argv = ["prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", "haproxy", "-W", "-f", paths(config)["haproxy_cfg"]]
        haproxy = ns.start(argv, log)
        processes.append(haproxy)
        started = Node(ns, config, haproxy, backends, log, raw)
        wait("HAProxy's runtime socket", lambda: worker_pid(started.socket, 1.0) is not None, started)
        yield started
    finally:
        for process in processes:
            stop_process(process)
        ns.delete()


def test_status_reports_the_server_haproxy_left_out_and_a_server_gone_down(node: Node) -> None:
    # The stand-in RGWs answer, so only the unresolvable name is a problem (and the rendered config has no other
    # warning: anything else HAProxy printed at start would be listed too).
    wait("first checks", lambda: all("INI" not in line for line in node.status()["degraded"]), node)
    status = node.status()
    assert status["degraded"] == [
        f"backend ceph-a server rgw-a2_invalid-{RGW_PORT}: {UNRESOLVABLE} does not resolve; "
        "HAProxy keeps it in maintenance and serves without it"
    ]
    assert status["haproxy"]["backends"]["be_ceph-a"]["up"] == 1

    stop_process(node.backends.pop(RGW_B))
    wait("ceph-b's server seen down", lambda: len(node.status()["degraded"]) == 2, node)
    assert node.status()["degraded"][1].startswith(
        f"backend ceph-b server {RGW_B.replace('.', '_')}-{RGW_PORT} is down (L4"
    )


def test_a_reload_haproxy_cannot_honour_is_a_failure_and_the_old_worker_keeps_serving(node: Node) -> None:
    before = worker_pid(node.socket, 1.0)
    too_big = node.rewrite({"haproxy": {"maxconn": 100000}})
    os.kill(node.haproxy.pid, signal.SIGUSR2)  # what `systemctl reload ober-http` does after its `haproxy -c`
    with pytest.raises(OberError, match="HAProxy did not load the new configuration, its previous one still serves"):
        after_reload(too_big, before, timeout=3.0, journal=lambda _since: [])
    assert worker_pid(node.socket, 1.0) == before
    assert "Cannot raise FD limit" in node.log.read_text()

    fits = node.rewrite({"haproxy": {"maxconn": 4000}})
    os.kill(node.haproxy.pid, signal.SIGUSR2)
    problems = after_reload(fits, before, timeout=DEADLINE)
    assert worker_pid(node.socket, 1.0) != before
    assert [line.split(":")[0] for line in problems] == [f"backend ceph-a server rgw-a2_invalid-{RGW_PORT}"]
