"""ober's own metrics: what a scrape shows as the loop decides, ExaBGP's sessions, drain, roll, config; the server.

The loop runs against a fake HAProxy (as in tests/test_health.py) and a fake ExaBGP on real pipes that answers
``show neighbor json`` as ExaBGP 5.0.15 does (the recorded answers in tests/data). The server is the real one on a
Unix socket; the last test runs the real ``ober health`` process. Through HAProxy and on a real lab:
tests/test_haproxy_serving.py and tests/test_metrics_lab.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from ober import metrics_server
from ober.config import NodeConfig, parse_node_config
from ober.discovery_run import GroupRun, write_runs
from ober.drain import set_drain
from ober.healthd import ConfigSource, HealthLoop, Pipe
from ober.metrics import (
    BY_NAME,
    CONTENT_TYPE,
    FAMILIES,
    ConfigFacts,
    DiscoveryFacts,
    Drain,
    HealthFacts,
    Histogram,
    Neighbor,
    NodeMetrics,
    Process,
    Roll,
    VipFacts,
    parse_exposition,
    render,
    service_digest,
)
from ober.metrics_server import EXABGP_TIMEOUT, Gatherer, MetricsServer, abstract_address, read_roll, serve
from ober.render import paths
from tests.conftest import DATA, REPO, require
from tests.test_health import FakeHAProxy

Samples = dict[str, list[tuple[dict[str, str], float]]]


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The one sample of ``metric`` whose labels include ``labels``."""
    found = [v for have, v in samples.get(metric, []) if labels.items() <= have.items()]
    assert len(found) == 1, f"{metric}{labels}: {len(found)} samples in {samples.get(metric)}"
    return found[0]


def neighbor_json(name: str, duration: int) -> str:
    """A recorded ``show neighbor json`` answer, with the session established ``duration`` seconds ago."""
    data = json.loads((DATA / name).read_text())
    for item in data:
        item["duration"] = duration
    return json.dumps(data)


class FakeExaBGP:
    """ExaBGP's end of a helper's pipes: acknowledges every command, answers ``show neighbor json`` (unless mute)."""

    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.commands: list[str] = []
        to_exabgp_r, to_exabgp_w = os.pipe()
        to_helper_r, to_helper_w = os.pipe()
        self.pipe = Pipe(os.fdopen(to_exabgp_w, "w"), os.fdopen(to_helper_r, "r"))
        self._in: IO[str] = os.fdopen(to_exabgp_r, "r")
        self._out: IO[str] = os.fdopen(to_helper_w, "w")
        self._server = threading.Thread(target=self._serve, daemon=True)
        self._server.start()
        self.pipe.start()

    def _serve(self) -> None:
        for line in self._in:
            command = line.strip()
            self.commands.append(command)
            if command == "show neighbor json":
                answer = self.answer
                if answer is None:
                    continue  # a stuck ExaBGP
                self._out.write(answer + "\n")
            self._out.write("done\n")
            self._out.flush()

    def close(self) -> None:
        """Both ends of both pipes, each after the thread reading it has seen its end."""
        self.pipe.out.close()
        self._server.join(5)
        self._in.close()
        self._out.close()
        self.pipe.gone.wait(5)
        self.pipe.inp.close()


class Node:
    """A health loop with its fake HAProxy and ExaBGP, and a way to scrape it as the server would."""

    def __init__(self, config: NodeConfig, exabgp: FakeExaBGP, roll_dir: Path) -> None:
        self.haproxy = FakeHAProxy()
        self.haproxy.up = {"be_ceph-a": 2, "be_ceph-b": 2}  # every server of both groups up
        self.exabgp = exabgp
        self.loop = HealthLoop(config, list(config.vips), exabgp.pipe, self.haproxy)
        self.loop.config_digest = "0123456789abcdef"
        self.gatherer = Gatherer(self.loop, exabgp.pipe, roll_dir=roll_dir)

    def scrape(self) -> Samples:
        return parse_exposition(self.gatherer.text())


@pytest.fixture
def node(make_config: Callable[..., NodeConfig], tmp_path: Path, short: Path) -> Iterator[Node]:
    config = make_config(
        install_path=str(short),
        health={"rise": 2, "fall": 2, "maintenance_file": str(tmp_path / "maint")},
        bgp={"router_id": "100.64.0.11", "neighbors": "100.64.0.1"},
    )
    exabgp = FakeExaBGP(neighbor_json("exabgp-show-neighbor-json-router-gr-on.json", 42))
    yield Node(config, exabgp, tmp_path / "fleet")
    exabgp.close()


A, B = "198.51.100.10", "198.51.100.20"


def test_a_scrape_follows_each_vip_through_a_failover_and_says_why(node: Node) -> None:
    node.loop.publish(haproxy_up=False)
    before = node.scrape()
    assert value(before, "ober_vip_announced", vip=A) == 0
    assert value(before, "ober_vip_state", vip=A, state="init") == 1
    assert sum(v for labels, v in before["ober_vip_reason"] if labels["vip"] == A) == 0, "no check, no reason yet"
    node.loop.tick()
    first = node.scrape()
    assert value(first, "ober_vip_announced", vip=A) == 0  # rise is 2
    assert value(first, "ober_vip_state", vip=A, state="rising") == 1
    node.loop.tick()
    up = node.scrape()
    for vip, name in ((A, "s3-a"), (B, "s3-b")):
        assert value(up, "ober_vip_announced", vip=vip, name=name, backend=f"ceph-{name[-1]}") == 1
        assert value(up, "ober_vip_reason", vip=vip, reason="healthy") == 1
        assert value(up, "ober_vip_updates_total", vip=vip, action="announce") == 1
        assert value(up, "ober_vip_live_servers", vip=vip) == 2
    # One state per VIP is 1, every other state's series is there with 0 (so alerts can compare).
    assert sorted(v for labels, v in up["ober_vip_state"] if labels["vip"] == A) == [0] * 6 + [1]

    node.haproxy.up = {"be_ceph-a": 2, "be_ceph-b": 0}  # VIP B's RGW group died
    node.loop.tick()
    failed = node.scrape()
    assert value(failed, "ober_vip_announced", vip=B) == 0
    assert value(failed, "ober_vip_state", vip=B, state="down") == 1
    assert value(failed, "ober_vip_reason", vip=B, reason="no_live_server") == 1
    assert value(failed, "ober_vip_updates_total", vip=B, action="withdraw") == 1
    assert value(failed, "ober_vip_transitions_total", vip=B, to="down") == 1
    assert value(failed, "ober_vip_live_servers", vip=B) == 0
    assert value(failed, "ober_vip_announced", vip=A) == 1, "the other VIP is untouched"
    assert value(failed, "ober_vip_updates_total", vip=A, action="withdraw") == 0
    assert value(failed, "ober_vip_state_since_timestamp_seconds", vip=B) >= value(
        up, "ober_vip_state_since_timestamp_seconds", vip=B
    )

    node.haproxy.gone = True
    node.loop.tick()
    gone = node.scrape()
    assert value(gone, "ober_health_haproxy_up") == 0
    assert value(gone, "ober_vip_reason", vip=A, reason="haproxy_not_running") == 1
    assert value(gone, "ober_vip_updates_total", vip=A, action="withdraw") == 1
    assert "ober_vip_live_servers" not in gone  # nothing to count without HAProxy

    node.haproxy.gone = False
    node.haproxy.up = None  # running, but not answering in time
    node.loop.tick()
    assert value(node.scrape(), "ober_vip_reason", vip=A, reason="haproxy_not_answering") == 1

    checks = node.scrape()
    assert value(checks, "ober_health_checks_total") == 5
    assert value(checks, "ober_health_check_duration_seconds_count") == 5
    assert value(checks, "ober_health_check_duration_seconds_bucket", le="+Inf") == 5
    assert value(checks, "ober_health_last_check_timestamp_seconds") == pytest.approx(time.time(), abs=5)


def test_drain_shows_who_why_and_since_and_the_vips_say_maintenance(node: Node) -> None:
    node.loop.tick()
    node.loop.tick()
    assert value(node.scrape(), "ober_drained") == 0
    assert "ober_drain_info" not in node.scrape()
    reason = 'disk "swap"\\ in rack 3\nticket 42'  # quotes, a backslash, a newline: escaped, read back whole
    info = set_drain(node.loop.config, reason, by="alice@ws1")
    node.loop.tick()
    drained = node.scrape()
    assert value(drained, "ober_drained") == 1
    assert value(drained, "ober_drain_info", drained_by="alice@ws1", reason=reason) == 1
    assert value(drained, "ober_drained_since_timestamp_seconds") == pytest.approx(info.since)
    for vip in (A, B):
        assert value(drained, "ober_vip_announced", vip=vip) == 0
        assert value(drained, "ober_vip_state", vip=vip, state="disabled") == 1
        assert value(drained, "ober_vip_reason", vip=vip, reason="maintenance") == 1


def test_sessions_come_from_exabgp_through_the_helpers_own_pipe(node: Node) -> None:
    samples = node.scrape()
    peer = "100.64.0.1"
    assert value(samples, "ober_exabgp_up") == 1
    assert value(samples, "ober_bgp_session_up", neighbor=peer) == 1
    assert value(samples, "ober_bgp_session_state", neighbor=peer, state="established") == 1
    assert value(samples, "ober_bgp_session_state", neighbor=peer, state="idle") == 0
    assert value(samples, "ober_bgp_session_uptime_seconds", neighbor=peer) == 42
    assert value(samples, "ober_bgp_graceful_restart", neighbor=peer) == 1
    node.exabgp.answer = neighbor_json("exabgp-show-neighbor-json-router-gr-off.json", 7)
    time.sleep(1.1)  # past the reuse window for ExaBGP's answer
    assert value(node.scrape(), "ober_bgp_graceful_restart", neighbor=peer) == 0
    assert node.exabgp.commands.count("show neighbor json") == 2
    node.scrape()
    assert node.exabgp.commands.count("show neighbor json") == 2, "an answer under a second old is reused"


def test_a_session_not_established_reads_as_down_with_no_uptime() -> None:
    data = json.loads(neighbor_json("exabgp-show-neighbor-json-router-gr-off.json", 300))
    data[0]["fsm"] = "ACTIVE"
    exabgp = FakeExaBGP(json.dumps(data))
    try:
        samples = parse_exposition(render(_facts(exabgp)))
    finally:
        exabgp.close()
    assert value(samples, "ober_bgp_session_up", neighbor="100.64.0.1") == 0
    assert value(samples, "ober_bgp_session_state", neighbor="100.64.0.1", state="active") == 1
    assert value(samples, "ober_bgp_session_uptime_seconds", neighbor="100.64.0.1") == 0


def _facts(exabgp: FakeExaBGP) -> NodeMetrics:
    from ober.metrics_server import neighbors

    answer = exabgp.pipe.ask_neighbors(5.0)
    assert answer is not None
    return NodeMetrics(
        "n1",
        {},
        HealthFacts(0, Histogram(), None, 1.0, True, ()),
        ConfigFacts("d", "s", 0.0, False),
        neighbors(answer),
        None,
        None,
        None,
    )


def test_an_exabgp_that_does_not_answer_costs_a_scrape_one_second_and_shows(
    make_config: Callable[..., NodeConfig], tmp_path: Path, short: Path
) -> None:
    exabgp = FakeExaBGP(None)
    try:
        config = make_config(install_path=str(short), health={"maintenance_file": str(tmp_path / "maint")})
        mute = Node(config, exabgp, tmp_path)
        started = time.monotonic()
        samples = mute.scrape()
        took = time.monotonic() - started
    finally:
        exabgp.close()
    assert value(samples, "ober_exabgp_up") == 0
    assert "ober_bgp_session_up" not in samples
    assert EXABGP_TIMEOUT <= took < EXABGP_TIMEOUT + 1.0


def test_the_last_roll_is_the_unfinished_one_else_the_last_finished(node: Node, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    assert read_roll(fleet) is None
    assert "ober_fleet_roll_info" not in node.scrape()
    fleet.mkdir()
    record = {"id": "abc123", "operation": "restart --full", "done": True, "at": 1700000000.5}
    (fleet / "last-roll.json").write_text(json.dumps(record))
    samples = node.scrape()
    assert value(samples, "ober_fleet_roll_info", id="abc123", operation="restart --full", done="true") == 1
    assert value(samples, "ober_fleet_roll_timestamp_seconds") == 1700000000.5
    (fleet / "roll.json").write_text(json.dumps({**record, "id": "def456", "done": False}))
    assert read_roll(fleet) == Roll("def456", "restart --full", False, 1700000000.5)
    (fleet / "roll.json").write_text("{not json")
    assert read_roll(fleet) is None


def test_discovery_shows_each_groups_last_run_and_what_waits_for_an_operator(
    node_data: dict[str, Any], tmp_path: Path, short: Path
) -> None:
    node_data.update(install_path=str(short), bgp={**node_data["bgp"], "router_id": "100.64.0.11"})
    node_data["health"]["maintenance_file"] = str(tmp_path / "maint")
    node_data["backends"]["ceph-a"]["discovery"] = {"source": "dns-srv", "name": "_rgw._tcp.example.org"}
    config = parse_node_config(node_data)
    exabgp = FakeExaBGP(None)
    try:
        scraped = Node(config, exabgp, tmp_path / "fleet")
        assert "ober_discovery_ok" not in scraped.scrape(), "no series before discovery ran"
        lost = GroupRun("ceph-a", "dns-srv _rgw._tcp.example.org", 1.7e9, "none", found=3, lost=["rgw1:7480"])
        # ceph-b has no discovery (any more): its record is not shown.
        stale = GroupRun("ceph-b", "file /x", 1.6e9, "error", error="gone")
        write_runs(config, {"ceph-a": lost, "ceph-b": stale})
        samples = scraped.scrape()
        assert samples["ober_discovery_ok"] == [({"backend": "ceph-a"}, 1)]
        assert value(samples, "ober_discovery_last_run_timestamp_seconds", backend="ceph-a") == 1.7e9
        assert value(samples, "ober_discovery_listed_servers", backend="ceph-a") == 3
        assert value(samples, "ober_discovery_lost_servers", backend="ceph-a") == 1
        assert value(samples, "ober_discovery_pending_changes", backend="ceph-a") == 0
        failed = GroupRun("ceph-a", "dns-srv _rgw._tcp.example.org", 1.8e9, "error", error="SERVFAIL")
        write_runs(config, {"ceph-a": failed})
        samples = scraped.scrape()
        assert value(samples, "ober_discovery_ok", backend="ceph-a") == 0
        assert "ober_discovery_listed_servers" not in samples, "nothing listed when the source failed"
    finally:
        exabgp.close()


def test_the_service_digest_is_equal_across_nodes_and_changes_with_what_they_serve(
    make_config: Callable[..., NodeConfig],
) -> None:
    node01 = make_config()
    node02 = make_config(
        name="node02",
        bgp={"router_id": "100.64.0.12", "neighbors": "100.64.0.[3-4]"},
        health={"rise": 5},
        network={"manager": "networkd"},
        whitelists={"routers": "100.64.0.[3-4]", "backend_http": "100.64.9.0/24"},
        haproxy={"version": "3.0", "maxconn": 20000},
    )
    assert service_digest(node01) == service_digest(node02)
    moved = make_config(vips=[{"name": "s3-a", "address": "198.51.100.11", "backend": "ceph-a"}])
    assert service_digest(moved) != service_digest(node01)
    other_rgw = make_config(backends={"ceph-a": {"servers": "100.64.1.13:7480"}, "ceph-b": {"servers": "rgw-b1"}})
    assert service_digest(other_rgw) != service_digest(node01)
    slower = make_config(haproxy={"version": "2.6", "timeouts": {"server": "10m"}})
    assert service_digest(slower) != service_digest(node01)


def test_config_generation_and_a_rejected_edit(node: Node, tmp_path: Path, node_data: dict[str, Any]) -> None:
    source = tmp_path / "ober.yaml"
    source.write_text(yaml.safe_dump(node_data))
    watched = ConfigSource(source)
    node.gatherer.source = watched
    node.loop.config_digest = watched.digest
    samples = node.scrape()
    assert value(samples, "ober_config_info", digest=str(watched.digest), service=node.loop.service) == 1
    assert value(samples, "ober_config_rejected") == 0
    time.sleep(0.01)
    source.write_text("health:\n  rise: many\n")  # a hand edit ober health cannot take
    assert watched.changed() is None
    assert value(node.scrape(), "ober_config_rejected") == 1
    source.write_text(yaml.safe_dump(node_data))  # put back
    assert watched.changed() is None
    assert value(node.scrape(), "ober_config_rejected") == 0


def full_facts() -> NodeMetrics:
    """Facts with every family present (for the catalog and format checks)."""
    durations = Histogram()
    for took in (0.0012, 0.0015, 0.004, 3.0):
        durations.observe(took)
    vip = VipFacts(A, "s3-a", "ceph-a", "up", "healthy", True, 1.7e9, 2, {"rising": 1, "up": 1}, {"announce": 1})
    return NodeMetrics(
        node="node01",
        versions={"ober": "0.1.0", "haproxy": "2.6.12-1+deb12u4", "exabgp": "5.0.15"},
        health=HealthFacts(4, durations, 1.7e9, 0.5, True, (vip,)),
        config=ConfigFacts("0123456789abcdef", "fedcba9876543210", 1.7e9, False),
        neighbors=(Neighbor("100.64.0.1", "established", 12.0, True),),
        drain=Drain("alice@ws1", 1.7e9, "disk swap"),
        roll=Roll("abc", "restart", True, 1.7e9),
        process=Process(1.25, 30_000_000, 1.7e9),
        discovery=(DiscoveryFacts("ceph-a", 1.7e9, True, 3, 1, 0),),
    )


def test_every_family_of_the_catalog_is_written_with_help_and_type_and_nothing_else() -> None:
    text = render(full_facts())
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    typed = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")}
    assert helped == set(BY_NAME) == set(typed)
    assert typed == {family.name: family.type for family in FAMILIES}
    buckets = parse_exposition(text)["ober_health_check_duration_seconds_bucket"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 4, "buckets are cumulative, +Inf holds every check"
    assert value(parse_exposition(text), "ober_health_check_duration_seconds_bucket", le="0.0025") == 2


def test_the_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool") or shutil.which("promtool", path=str(REPO / ".venv" / "bin"))
    require(promtool is not None, "promtool is not installed (make setup fetches it)")
    assert promtool is not None
    done = subprocess.run(
        [promtool, "check", "metrics"], input=render(full_facts()), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the server -------------------------------------------------------------------------------------------------


def get(name: str, url: str = "/ober/metrics") -> tuple[int, dict[str, str], str]:
    """One HTTP/1.0 GET over the abstract Unix socket ``name``, as HAProxy (``abns@name``) makes it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(abstract_address(name))
        conn.sendall(f"GET {url} HTTP/1.0\r\nHost: node\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).decode().partition("\r\n\r\n")
    status, *fields = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
    return int(status.split()[1]), headers, body


def listening(name: str) -> bool:
    """Whether something listens on the abstract socket ``name``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(abstract_address(name))
        except OSError:
            return False
    return True


@pytest.fixture
def name(tmp_path: Path) -> str:
    """An abstract socket name of this test's own (tests may run side by side in one network namespace)."""
    return f"ober-test-{os.getpid()}-{tmp_path.name}"


def test_the_server_answers_on_an_abstract_socket_and_survives_a_failing_scrape(name: str) -> None:
    path = name
    bodies: list[Callable[[], str]] = [lambda: "ober_drained 0\n"]

    def body() -> str:
        return bodies[0]()

    server = MetricsServer(path, body)
    server.start()
    try:
        status, headers, text = get(path)
        assert (status, headers["content-type"], text) == (200, CONTENT_TYPE, "ober_drained 0\n")
        assert get(path, "/stats")[0] == 404

        def broken() -> str:
            raise RuntimeError("boom")

        bodies[0] = broken
        assert get(path)[0] == 500
        bodies[0] = lambda: "ober_drained 1\n"
        assert get(path)[2] == "ober_drained 1\n", "still serving after a failed scrape"
    finally:
        server.stop()
    assert not listening(path), "the name is free once the server stopped"


def test_a_new_helper_waits_for_the_name_while_the_old_one_still_holds_it(name: str) -> None:
    old = MetricsServer(name, lambda: "old\n")
    old.start()
    new = MetricsServer(name, lambda: "new\n")
    # The old helper exits shortly after ExaBGP started the new one.
    threading.Timer(0.3, old.stop).start()
    new.start()
    try:
        assert get(name)[2] == "new\n"
    finally:
        new.stop()
    assert not listening(name)


def test_serve_logs_and_goes_on_when_the_socket_cannot_be_made(
    name: str, node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_server, "BIND_WAIT", 0.2)
    holder = MetricsServer(name, lambda: "someone else\n")
    holder.start()
    try:
        assert serve(node.gatherer, name) is None
        assert "metrics: cannot serve on @" in capsys.readouterr().err
        assert serve(node.gatherer, "x" * 200) is None
        assert "too long" in capsys.readouterr().err
    finally:
        holder.stop()


def test_the_metrics_socket_name_is_the_install_paths_and_fits_haproxy(node_data: dict[str, Any]) -> None:
    from ober.config import parse_node_config

    one = paths(parse_node_config({**node_data, "install_path": "/opt/ober"}))["metrics_socket"]
    other = paths(parse_node_config({**node_data, "install_path": "/srv/ober"}))["metrics_socket"]
    assert one.startswith("ober-metrics-") and one != other
    assert paths(parse_node_config({**node_data, "install_path": "/opt/ober"}), "/scratch")["metrics_socket"] == one
    assert len(abstract_address(one)) == 108


# --- the real process -------------------------------------------------------------------------------------------


def test_ober_health_serves_its_metrics_until_it_stops(node_data: dict[str, Any], tmp_path: Path, short: Path) -> None:
    """The real ``ober health`` (no HAProxy here: its VIPs are down for that reason), driven as ExaBGP drives it."""
    data = {
        **node_data,
        "install_path": str(short),
        "health": {"interval": "100ms", "maintenance_file": str(tmp_path / "maint")},
    }
    source = tmp_path / "ober.yaml"
    source.write_text(yaml.safe_dump(data))
    answer = neighbor_json("exabgp-show-neighbor-json-router-gr-on.json", 5)
    helper = subprocess.Popen(
        [sys.executable, "-m", "ober", "health", "--config", str(source)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert helper.stdin is not None and helper.stdout is not None
    stdin, stdout = helper.stdin, helper.stdout

    def exabgp() -> None:
        for line in stdout:
            if line.strip() == "show neighbor json":
                stdin.write(answer + "\n")
            stdin.write("done\n")
            stdin.flush()

    feeder = threading.Thread(target=exabgp, daemon=True)
    feeder.start()
    sock = paths_of(source)["metrics_socket"]
    try:
        deadline = time.monotonic() + 20
        while not listening(sock):
            assert helper.poll() is None and time.monotonic() < deadline, "ober health did not open its socket"
            time.sleep(0.05)
        status, _, text = get(sock)
        assert status == 200
        samples = parse_exposition(text)
        # Served from the start: every VIP is there, before its first check too.
        assert {labels["vip"] for labels, _ in samples["ober_vip_announced"]} == {A, B}
        while value(samples, "ober_health_checks_total") == 0:
            assert time.monotonic() < deadline, "ober health made no check"
            time.sleep(0.05)
            samples = parse_exposition(get(sock)[2])
        assert value(samples, "ober_info", node="node01", ober_version="0.1.0") == 1
        assert value(samples, "ober_vip_reason", vip=A, reason="haproxy_not_running") == 1
        assert value(samples, "ober_bgp_session_uptime_seconds", neighbor="100.64.0.1") == 5
        assert value(samples, "process_resident_memory_bytes") > 1_000_000
        helper.send_signal(signal.SIGTERM)
        assert helper.wait(10) == 0
        assert not listening(sock), "the socket is gone when ober health stops"
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        feeder.join(5)  # it reads the helper's stdout until the end
        for stream in (stdin, stdout, helper.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # stdin: ExaBGP's side may be gone already
                    stream.close()


def paths_of(source: Path) -> dict[str, str]:
    from ober.config import load_config

    return paths(load_config(source))


def test_pipe_ask_is_safe_alongside_the_loops_commands() -> None:
    """A scrape asks while the loop sends announcements: every command arrives whole, and the answer is found."""
    exabgp = FakeExaBGP(neighbor_json("exabgp-show-neighbor-json-router-gr-on.json", 1))
    try:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                exabgp.pipe.send("announce route 198.51.100.10/32 next-hop self")

        sender = threading.Thread(target=loop, daemon=True)
        sender.start()
        answers = [exabgp.pipe.ask_neighbors(5.0) for _ in range(20)]
        stop.set()
        sender.join()
    finally:
        exabgp.close()
    assert all(a is not None and a.startswith("[") for a in answers)
    assert set(exabgp.commands) == {"announce route 198.51.100.10/32 next-hop self", "show neighbor json"}


def test_parse_exposition_refuses_what_is_not_a_sample() -> None:
    with pytest.raises(ValueError, match="not a sample"):
        parse_exposition('ober_info{node="x" 1\n')
    assert parse_exposition(io.StringIO("# only a comment\n").getvalue()) == {}


def test_the_example_sites_nodes_agree_on_the_service_though_their_configs_differ() -> None:
    """Per-group and per-host overrides (rack2's rise, node04's netplan) are not drift; the service digest agrees."""
    from ober.config import dump_config
    from ober.inventory import load_inventory

    nodes = load_inventory(REPO / "inventory" / "example.yaml").nodes
    assert len({service_digest(node.config) for node in nodes}) == 1
    assert len({dump_config(node.config) for node in nodes}) == len(nodes)


def test_the_demos_scrape_sends_the_stats_login_from_secrets_env(
    make_config: Callable[..., NodeConfig], short: Path
) -> None:
    """What `make demo` runs on a node: the login read from secrets.env, given to curl on stdin, never in argv."""
    import base64
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from ober.lab.demo import metrics_lines, scrape_script

    require(shutil.which("curl") is not None, "curl is not installed")
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = render(full_facts()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    password = "a|b&c(d)<e>*{f}[g]~x"  # allowed in a secret (ober.secrets), and each means something to a shell
    (short / "etc").mkdir()
    (short / "etc" / "secrets.env").write_text(f"# Rendered by ober\nOBER_STATS_PASSWORD={password}\n")
    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        config = make_config(
            install_path=str(short),
            stats={"bind": "127.0.0.1", "port": server.server_port, "auth": {"user": "admin", "password_secret": "s"}},
        )
        script = scrape_script(config)
        assert password not in script
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False)
    finally:
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert seen == ["Basic " + base64.b64encode(f"admin:{password}".encode()).decode()]
    lines = metrics_lines(done.stdout)
    assert 'ober_vip_announced{vip="198.51.100.10",name="s3-a",backend="ceph-a"} 1' in lines
    assert 'ober_vip_reason{vip="198.51.100.10",name="s3-a",reason="healthy"} 1' in lines
    assert not any('reason="maintenance"' in line for line in lines), "state sets show only what is 1"
