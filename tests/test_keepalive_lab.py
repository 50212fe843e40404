"""Kept-alive connections to a real radosgw, with and without beast's tcp_nodelay (``backends.<group>.reuse``).

One private namespace holds a real Ceph 16 RGW (one radosgw, plain HTTP) and HAProxy running the ``haproxy.cfg``
ober renders for a node with one VIP in front of it. A client sends sequential GETs on one kept-alive connection
and counts the answers that took 40 ms or more; HAProxy's own counters tell how many connections it opened to RGW.
With radosgw as Ceph ships it (no tcp_nodelay), ``reuse: always`` shows the stall a user would see (most answers
wait ~40 ms), and ``reuse: auto`` (the default) must stop it after a few; with tcp_nodelay, ``auto`` must keep its
connections to RGW alive. ``ober doctor``'s probe must say which RGW it has.

Needs root, iproute2, HAProxy and Debian 12's Ceph: skipped without them, failed with ``OBER_REQUIRE_LAB=1``.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ober.certs import write_pem
from ober.checks.base import Check
from ober.checks.keepalive import check_keepalive
from ober.config import NodeConfig
from ober.facts import find_program
from ober.keepalive import STALL_COUNT, STALL_MS
from ober.lab.netns import Lab, add_address, run, stop_process
from ober.lab.procnode import lab_config, write_install
from ober.lab.rgw import RgwCluster, in_netns, port_refuses, start_cluster
from ober.lab.site import node_data
from ober.render import paths
from tests.conftest import require
from tests.test_lab_rgw import lab_prerequisites
from tests.test_s3_parity_lab import _wait

pytestmark = pytest.mark.lab

MON, RGW = "100.64.1.10", "100.64.1.11"
VIP = "198.51.100.10"
REQUESTS = 40
NODELAY = " tcp_nodelay=1"


@dataclass
class Env:
    lab: Lab
    ns: str
    cluster: RgwCluster
    pem: Path

    def run(self, call: Callable[[], object], timeout: float = 120.0) -> object:
        return in_netns(self.ns, call, timeout=timeout)


def _set_nodelay(env: Env, on: bool) -> None:
    """Restart the radosgw with beast's tcp_nodelay on (as ober's README asks) or off (as Ceph ships it)."""
    conf = env.cluster.layout.conf
    text = conf.read_text()
    frontends = next(line for line in text.splitlines() if line.startswith("rgw frontends"))
    plain = frontends.replace(NODELAY, "")
    conf.write_text(text.replace(frontends, plain + NODELAY if on else plain))
    env.cluster.stop_rgw(0)
    env.cluster.start_rgw(0)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lab_prerequisites()
    require(find_program("haproxy") is not None, "haproxy is not installed")
    with Lab() as lab:
        ns = lab.netns("keepalive")
        for address in (MON, RGW, VIP):
            add_address(ns, "lo", f"{address}/32")
        pem = write_pem(lab.path("certs") / "s3.pem", "s3.lab.test", [f"IP:{VIP}"])
        cluster = start_cluster(ns, lab.path("ceph"), [RGW], MON)
        lab.cleanups.append(cluster.stop)
        yield Env(lab, ns, cluster, pem)


@pytest.fixture
def haproxy(env: Env) -> Iterator[Callable[[str], NodeConfig]]:
    """Start HAProxy from ober's render with ``backends.ceph.reuse`` set as asked (the one before it stopped first:
    both use the VIP); stopped by PID afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def stop() -> None:
        while started:
            process = started.pop()
            stop_process(process)
            env.lab.processes.remove(process)

    def start(reuse: str) -> NodeConfig:
        stop()
        data = node_data("n1", "100.64.0.11", env.pem, "1s")
        data["vips"] = [{"name": "s3", "address": VIP, "backend": "ceph"}]
        data["backends"] = {"ceph": {**data["backends"]["ceph-a"], "servers": [RGW], "reuse": reuse}}
        config = lab_config(data, env.lab.path(f"node-{reuse}", "opt", "ober"))
        cfg = write_install(config, {})["haproxy_cfg"]
        haproxy = find_program("haproxy") or "haproxy"
        run([haproxy, "-c", "-q", "-f", cfg])
        started.append(env.lab.spawn(env.ns, [haproxy, "-W", "-f", cfg], log=Path(cfg).with_suffix(".log")))
        _wait("HAProxy on the VIP", lambda: not port_refuses(env.ns, VIP, 80))
        _wait("RGW up in HAProxy", lambda: _server_stat(env, config, "status") == "UP")
        return config

    yield start
    stop()


def _server_stat(env: Env, config: NodeConfig, field: str) -> str:
    """One field of the RGW server's row in HAProxy's ``show stat`` (admin socket)."""

    def ask() -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(paths(config)["admin_socket"])
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "be_ceph" and row.get("svname", "").startswith("100_64_1_11"):
                return row[field]
        return ""

    return str(env.run(ask, timeout=10))


def _sequential_gets(env: Env, count: int = REQUESTS) -> list[float]:
    """``count`` anonymous GET / through the VIP, one after the other on one kept-alive connection; ms each."""

    def gets() -> list[float]:
        connection = http.client.HTTPConnection(VIP, 80, timeout=10)
        times = []
        try:
            for _ in range(count):
                start = time.monotonic()
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read()
                assert response.status == 200, (response.status, body[:200])
                assert not response.will_close, "HAProxy closed the client's connection"
                times.append((time.monotonic() - start) * 1000)
        finally:
            connection.close()
        return times

    result = env.run(gets)
    assert isinstance(result, list)
    return result


def _doctor(env: Env, config: NodeConfig) -> list[Check]:
    """``ober doctor``'s keep-alive checks, run from inside the namespace (where the RGW is)."""
    checks = env.run(lambda: check_keepalive(config, 5.0))
    assert isinstance(checks, list)
    return checks


def _slow(times: list[float]) -> int:
    return sum(elapsed >= STALL_MS for elapsed in times)


def test_stock_rgw_stalls_kept_alive_connections_and_auto_stops_it(
    env: Env, haproxy: Callable[[str], NodeConfig]
) -> None:
    _set_nodelay(env, on=False)
    always = haproxy("always")
    stalled = _sequential_gets(env)
    # What ober did before reuse: auto, and what a user saw: most answers wait for the delayed ACK.
    assert _slow(stalled) >= REQUESTS // 2, stalled
    auto = haproxy("auto")
    before = int(_server_stat(env, auto, "connect") or 0)
    times = _sequential_gets(env)
    # A few stalled answers teach HAProxy to use a new connection per request; after that none stalls.
    assert _slow(times) <= STALL_COUNT + 1, times
    assert int(_server_stat(env, auto, "connect")) - before >= REQUESTS - STALL_COUNT - 1
    # ober doctor says what it found and what HAProxy does about it.
    checks = _doctor(env, auto)
    assert [check.status for check in checks] == ["warn"], checks
    assert "stalled about 40 ms" in checks[0].detail
    assert "new connection per request" in checks[0].detail
    assert checks[0].fix is not None and "tcp_nodelay=1" in checks[0].fix
    [check] = _doctor(env, always)
    assert check.status == "fail" and check.fix is not None and "reuse: auto" in check.fix


def test_rgw_with_tcp_nodelay_keeps_connections_alive(env: Env, haproxy: Callable[[str], NodeConfig]) -> None:
    _set_nodelay(env, on=True)
    auto = haproxy("auto")
    before = int(_server_stat(env, auto, "connect") or 0)
    times = _sequential_gets(env)
    assert _slow(times) <= 2, times
    # One connection to RGW carried (nearly) every request.
    assert int(_server_stat(env, auto, "connect")) - before <= 3
    [check] = _doctor(env, auto)
    assert check.status == "ok" and "keeps connections alive" in check.detail, check
