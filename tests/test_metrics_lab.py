"""ober's metrics on a real lab, scraped as Prometheus would: through each node's HAProxy stats listener.

Two process nodes (HAProxy, ExaBGP, ``ober health`` from ober's rendered config), a BIRD router doing ECMP, two real
Ceph RGW groups (ober.lab.site). The router's kernel route is the truth the metrics must follow: a VIP whose RGW
group dies leaves the route and its metrics say withdrawn, why, and count the failover, within a check or two of
the route; a drained node says who drained it and why.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from ober.cli import main
from ober.errors import OberError
from ober.facts import haproxy_version
from ober.haproxy_runtime import query
from ober.lab.procnode import ProcessNode
from ober.lab.rgw import in_netns
from ober.lab.site import VIP_A, VIP_B, Site, node_address
from ober.metrics import parse_exposition
from ober.render import paths
from tests.conftest import lab_site

pytestmark = pytest.mark.lab

NODES = {"n1": node_address(1), "n2": node_address(2)}
ALL = set(NODES.values())
PEER = "100.64.0.1"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` whose labels include ``labels``."""
    found = [v for have, v in samples.get(metric, []) if labels.items() <= have.items()]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples in {samples.get(metric)}"
    return found[0]


def scrape_text(node: ProcessNode) -> str:
    """GET /ober/metrics on the node's stats listener, from inside its namespace (as a monitoring host would)."""
    url = f"http://{node.config.stats.bind}:{node.config.stats.port}/ober/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text: str = reply.read().decode()
            return text

    return in_netns(node.ns, get)


def scrape(node: ProcessNode) -> Samples:
    return parse_exposition(scrape_text(node))


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with lab_site(len(NODES)) as started:
        try:
            started.wait_ready()
        except OberError as exc:
            pytest.fail(exc.message)
        yield started


def test_a_scrape_shows_sessions_vips_versions_and_the_config_in_effect(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    services = set()
    for name, node in site.nodes.items():
        samples = scrape(node)
        assert value(samples, "ober_bgp_session_up", neighbor=PEER) == 1, name
        assert value(samples, "ober_bgp_session_state", neighbor=PEER, state="established") == 1
        assert value(samples, "ober_bgp_session_uptime_seconds", neighbor=PEER) >= 0
        assert value(samples, "ober_exabgp_up") == 1
        for vip in (VIP_A, VIP_B):
            assert value(samples, "ober_vip_announced", vip=vip) == 1, f"{name} {vip}"
            assert value(samples, "ober_vip_reason", vip=vip, reason="healthy") == 1
            assert value(samples, "ober_vip_live_servers", vip=vip) == 2
        running = haproxy_version()
        assert running is not None
        info = samples["ober_info"][0][0]
        assert info["node"] == name and info["exabgp_version"] == "5.0.15"
        assert info["haproxy_version"].startswith(running), info
        state = node.state()
        config = samples["ober_config_info"][0][0]
        assert config["digest"] == state["config"], "the digest of the ober.yaml ober health runs"
        services.add(config["service"])
        assert value(samples, "ober_drained") == 0
        assert value(samples, "ober_health_checks_total") > 0
        assert value(samples, "ober_health_haproxy_up") == 1
        # The metrics backend (a server without checks) never makes a node look degraded to a push or a roll.
        capsys.readouterr()
        assert main(["--json", "status", "-c", paths(node.config)["config"]]) == 0
        assert json.loads(capsys.readouterr().out)["degraded"] == []
    assert len(services) == 1, "both nodes serve the same: no drift"


def test_the_metrics_follow_a_vip_failover_as_the_routers_route_does(site: Site) -> None:
    """VIP B's RGW group dies: the router drops VIP B from every node; a scraper polling n1 every 100 ms sees the
    VIP withdrawn, why, and one more failover counted, within a second of the route; then all of it back."""
    n1 = site.nodes["n1"]
    before = {name: scrape(node) for name, node in site.nodes.items()}
    seen: list[tuple[float, float]] = []  # (when, n1's ober_vip_announced for VIP B)
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append((time.monotonic(), value(scrape_here(n1), "ober_vip_announced", vip=VIP_B)))
            time.sleep(0.1)

    scraper = threading.Thread(target=lambda: in_netns(n1.ns, poll, timeout=120), daemon=True)
    scraper.start()
    cluster = site.clusters["ceph-b"]
    try:
        time.sleep(0.5)
        cluster.stop_rgw(0)
        cluster.stop_rgw(1)
        site.wait_hops(VIP_B, set())
        route_gone = time.monotonic()
        assert site.hops(VIP_A) == ALL, "the other VIP keeps every node"
        time.sleep(1.0)
        for name, node in site.nodes.items():
            samples = scrape(node)
            assert value(samples, "ober_vip_announced", vip=VIP_B) == 0, name
            assert value(samples, "ober_vip_state", vip=VIP_B, state="down") == 1
            assert value(samples, "ober_vip_reason", vip=VIP_B, reason="no_live_server") == 1
            assert value(samples, "ober_vip_live_servers", vip=VIP_B) == 0
            withdrawn = value(before[name], "ober_vip_updates_total", vip=VIP_B, action="withdraw")
            assert value(samples, "ober_vip_updates_total", vip=VIP_B, action="withdraw") == withdrawn + 1
            downs = value(before[name], "ober_vip_transitions_total", vip=VIP_B, to="down")
            assert value(samples, "ober_vip_transitions_total", vip=VIP_B, to="down") == downs + 1
            assert value(samples, "ober_vip_announced", vip=VIP_A) == 1
            assert value(samples, "ober_vip_updates_total", vip=VIP_A, action="withdraw") == value(
                before[name], "ober_vip_updates_total", vip=VIP_A, action="withdraw"
            ), "VIP A was never withdrawn"
    finally:
        cluster.start_rgw(0)
        cluster.start_rgw(1)
    site.wait_hops(VIP_B, ALL, timeout=60)
    route_back = time.monotonic()
    time.sleep(1.0)
    stop.set()
    scraper.join(10)
    flipped = next(at for at, announced in seen if announced == 0)
    back = next(at for at, announced in seen if announced == 1 and at > flipped)
    print(
        f"n1's metric said withdrawn {flipped - route_gone:+.2f}s from the route's change, announced again "
        f"{back - route_back:+.2f}s from it ({len(seen)} scrapes)"
    )
    # The helper withdraws and publishes in the same round: the metric and the route move together (the route is
    # polled every 10 ms, the metric every ~100 ms, and the route waits for BGP to carry the update).
    assert abs(flipped - route_gone) < 1.0
    assert abs(back - route_back) < 1.0
    for name, node in site.nodes.items():
        samples = scrape(node)
        assert value(samples, "ober_vip_announced", vip=VIP_B) == 1, name
        assert value(samples, "ober_vip_reason", vip=VIP_B, reason="healthy") == 1
        announced = value(before[name], "ober_vip_updates_total", vip=VIP_B, action="announce")
        assert value(samples, "ober_vip_updates_total", vip=VIP_B, action="announce") == announced + 1


def scrape_here(node: ProcessNode) -> Samples:
    """Scrape from the calling thread, which must already be in the node's namespace."""
    url = f"http://{node.config.stats.bind}:{node.config.stats.port}/ober/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return parse_exposition(reply.read().decode())


def test_a_drained_node_says_who_and_why_and_the_other_node_is_untouched(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    n1, n2 = site.nodes["n1"], site.nodes["n2"]
    config = paths(n2.config)["config"]
    assert main(["drain", "--reason", "disk swap, ticket 42", "-c", config]) == 0
    try:
        site.wait_hops(VIP_A, {n1.address})
        drained = scrape(n2)
        assert value(drained, "ober_drained") == 1
        (labels, _), *_ = drained["ober_drain_info"]
        assert labels["reason"] == "disk swap, ticket 42" and "@" in labels["drained_by"]
        since = value(drained, "ober_drained_since_timestamp_seconds")
        assert time.time() - 60 < since <= time.time()
        for vip in (VIP_A, VIP_B):
            assert value(drained, "ober_vip_announced", vip=vip) == 0
            assert value(drained, "ober_vip_reason", vip=vip, reason="maintenance") == 1
        other = scrape(n1)
        assert value(other, "ober_drained") == 0 and "ober_drain_info" not in other
        assert value(other, "ober_vip_announced", vip=VIP_A) == 1
    finally:
        assert main(["undrain", "-c", config]) == 0
        capsys.readouterr()
    site.wait_hops(VIP_A, ALL)
    assert value(scrape(n2), "ober_drained") == 0


def test_without_ober_health_haproxy_answers_503(site: Site) -> None:
    """The endpoint exists only while ober health runs; HAProxy says so instead of hanging.

    ober health's socket is abstract (no file to move away) and ExaBGP restarts a stopped ober health at once, so
    HAProxy is told its ober health server is gone (maintenance), as it finds when nothing listens on the name.
    test_haproxy_serving checks the 503 with nothing listening at all.
    """
    node = site.nodes["n2"]
    admin = paths(node.config)["admin_socket"]
    query(admin, "disable server ober_metrics/health", 5.0)
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            scrape_text(node)
        assert failed.value.code == 503
    finally:
        query(admin, "enable server ober_metrics/health", 5.0)
    assert value(scrape(node), "ober_exabgp_up") == 1
