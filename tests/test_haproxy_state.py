"""What "degraded" means, decided from HAProxy's own answers (captured from HAProxy 2.6.12, tests/data/haproxy-2.6).

The capture: backend be_ceph-a with rgw1 up (L7OK), rgw2 refusing connections, rgw3 named ``rgw3.invalid``
(``init-addr last,libc,none`` as ober renders it); and the journal of a reload whose maxconn needed more file
descriptors than the process may open. Also graceful restart as ExaBGP 5.0.15 reported it against BIRD 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ober import haproxy_state
from ober.config import NodeConfig
from ober.errors import OberError
from ober.exabgp_cli import parse_graceful_restart
from ober.haproxy_state import (
    Server,
    State,
    after_reload,
    degraded,
    parse_pid,
    parse_servers,
    startup_messages,
)

DATA = Path(__file__).parent / "data"
CAPTURE = DATA / "haproxy-2.6"


def captured() -> list[Server]:
    return parse_servers((CAPTURE / "show-stat.csv").read_text(), (CAPTURE / "show-servers-state.txt").read_text())


def test_servers_are_read_with_their_state_check_and_resolved_name() -> None:
    servers = {server.name: server for server in captured()}
    assert sorted(servers) == ["rgw1", "rgw2", "rgw3"]  # FRONTEND and BACKEND rows are not servers
    assert (servers["rgw1"].status, servers["rgw1"].check_status) == ("UP", "L7OK")
    assert (servers["rgw2"].status, servers["rgw2"].check_detail) == ("DOWN", "Connection refused")
    assert servers["rgw3"].unresolved and servers["rgw3"].fqdn == "rgw3.invalid"
    assert not servers["rgw1"].unresolved and servers["rgw1"].fqdn is None


def test_degraded_names_each_server_left_out_and_why_once() -> None:
    startup = startup_messages((CAPTURE / "show-startup-logs.txt").read_text())
    assert startup == [
        "WARNING: config : [/tmp/hx/c.cfg:19] : 'server be_ceph-a/rgw3' : could not resolve address "
        "'rgw3.invalid', disabling server."
    ]
    assert degraded(captured(), startup) == [
        "backend ceph-a server rgw2 is down (L4CON Connection refused)",
        "backend ceph-a server rgw3: rgw3.invalid does not resolve; HAProxy keeps it in maintenance and serves "
        "without it",
    ]


def test_an_unresolved_server_is_found_from_show_stat_alone() -> None:
    servers = parse_servers((CAPTURE / "show-stat.csv").read_text())
    assert [s.name for s in servers if s.unresolved] == ["rgw3"]
    assert "rgw3: its address does not resolve" in degraded(servers)[1]


def test_serving_servers_and_first_checks_not_done_are_not_problems() -> None:
    servers = [
        Server("be_ceph-a", "up", "UP", "L7OK"),
        Server("be_ceph-a", "failing-once", "UP 1/2", "L4TOUT"),
        Server("be_ceph-a", "unchecked", "no check"),
        Server("be_ceph-a", "new", "UP", "INI"),
        Server("be_ceph-a", "checking", "UP", "* INI"),
    ]
    assert degraded(servers) == []
    assert [s.name for s in State(1, servers, []).pending] == ["new", "checking"]


def test_maintenance_and_drain_set_at_runtime_are_reported() -> None:
    servers = [Server("be_ceph-b", "a", "MAINT"), Server("be_ceph-b", "b", "DRAIN")]
    assert degraded(servers) == [
        "backend ceph-b server a is in maint (MAINT), set through the runtime API",
        "backend ceph-b server b is in drain (DRAIN), set through the runtime API",
    ]


def test_startup_alerts_that_name_no_reported_server_are_kept() -> None:
    startup = startup_messages((CAPTURE / "journal-failed-reload.txt").read_text())
    assert "ALERT: [haproxy.main()] Cannot raise FD limit to 200031, limit is 4096." in startup
    # The warning names be_a/rgw2, which no server state reported here: it is kept too.
    assert degraded([], startup) == [f"HAProxy {line}" for line in startup]
    assert all("NOTICE" not in line for line in startup)


def test_show_stat_that_is_not_csv_is_an_error() -> None:
    with pytest.raises(OberError, match="did not answer 'show stat' with CSV"):
        parse_servers("Unknown command\n")


def test_worker_pid_from_show_info() -> None:
    assert parse_pid("Name: HAProxy\nVersion: 2.6.12\nPid: 22828\nUptime_sec: 4\n") == 22828
    assert parse_pid("Unknown command\n") is None


# --- after a reload ---------------------------------------------------------------------------------------------


class Clock:
    """A monotonic clock that moves only when slept."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def fake_states(monkeypatch: pytest.MonkeyPatch, states: Callable[[float], State | None], clock: Clock) -> None:
    def read_state(_socket: str, _timeout: float) -> State:
        state = states(clock.now)
        if state is None:
            raise OberError("HAProxy runtime socket x does not exist")
        return state

    monkeypatch.setattr(haproxy_state, "read_state", read_state)


@pytest.fixture
def config(make_config: Callable[..., NodeConfig]) -> NodeConfig:
    return make_config()


def test_a_reload_that_kept_the_old_worker_fails_quoting_the_journal(
    monkeypatch: pytest.MonkeyPatch, config: NodeConfig
) -> None:
    clock = Clock()
    fake_states(monkeypatch, lambda _now: State(41, [], []), clock)
    journal = (CAPTURE / "journal-failed-reload.txt").read_text()
    asked: list[float] = []

    def alerts(since: float) -> list[str]:
        asked.append(since)
        return [line for line in startup_messages(journal) if line.startswith("ALERT")]

    with pytest.raises(OberError) as caught:
        after_reload(config, 41, timeout=3.0, journal=alerts, clock=clock, sleep=clock.sleep)
    assert caught.value.message == (
        "HAProxy did not load the new configuration, its previous one still serves: "
        "ALERT: [haproxy.main()] Cannot raise FD limit to 200031, limit is 4096."
    )
    assert 2.9 <= clock.now <= 3.5 and len(asked) == 1


def test_after_a_reload_the_new_workers_first_checks_are_waited_for(
    monkeypatch: pytest.MonkeyPatch, config: NodeConfig
) -> None:
    clock = Clock()

    def states(now: float) -> State | None:
        if now < 0.5:
            return State(41, [Server("be_ceph-a", "rgw1", "UP", "L7OK")], [])  # the old worker still answers
        if now < 1.0:
            return None  # between the two: nobody on the socket
        status, check = ("UP", "INI") if now < 2.0 else ("DOWN", "L4CON")
        return State(42, [Server("be_ceph-a", "rgw1", status, check, "Connection refused")], [])

    fake_states(monkeypatch, states, clock)
    found = after_reload(config, 41, clock=clock, sleep=clock.sleep, journal=lambda _since: [])
    assert found == ["backend ceph-a server rgw1 is down (L4CON Connection refused)"]
    assert 2.0 <= clock.now < 2.5


def test_first_checks_that_never_finish_are_waited_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch, config: NodeConfig
) -> None:
    clock = Clock()
    fake_states(monkeypatch, lambda _now: State(42, [Server("be_ceph-a", "rgw1", "UP", "INI")], []), clock)
    assert after_reload(config, 41, clock=clock, sleep=clock.sleep) == []
    assert clock.now <= haproxy_state.first_checks_within(config) + 0.5


# --- graceful restart as negotiated -----------------------------------------------------------------------------


def neighbors(router: str) -> str:
    return (DATA / f"exabgp-show-neighbor-json-router-gr-{router}.json").read_text()


def test_graceful_restart_negotiated_needs_the_routers_capability_too() -> None:
    assert parse_graceful_restart(neighbors("on")) == {"100.64.0.1": True}
    assert parse_graceful_restart(neighbors("off")) == {"100.64.0.1": False}


def test_graceful_restart_unknown_before_the_routers_open() -> None:
    data: list[dict[str, Any]] = json.loads(neighbors("on"))
    data[0]["peer"]["capabilities"] = dict.fromkeys(data[0]["peer"]["capabilities"])  # ExaBGP's nulls
    assert parse_graceful_restart(json.dumps(data)) == {"100.64.0.1": None}


def test_a_neighbor_list_without_capabilities_is_an_error() -> None:
    with pytest.raises(OberError, match="neighbor list was not understood"):
        parse_graceful_restart('[{"peer": {"address": "100.64.0.1"}}]')


# --- what `ober config` prints --------------------------------------------------------------------------------


def test_ober_config_reports_degraded_in_json_and_warns_in_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    from ober.apply import Change
    from ober.cli.config import report
    from ober.cli.output import Output
    from ober.configure import Outcome
    from ober.render import RenderedFile

    problem = "backend ceph-a server rgw2: rgw2.invalid does not resolve; HAProxy keeps it in maintenance"
    change = Change("/opt/ober/etc/haproxy.cfg", "old\n", RenderedFile("/opt/ober/etc/haproxy.cfg", "new\n", 0o644))
    outcome = Outcome([change], ["reload ober-http"], Path("/opt/ober/backup/1"), False, True, [problem])
    report(Output.create(as_json=True), outcome)
    assert json.loads(capsys.readouterr().out)["degraded"] == [problem]
    report(Output.create(), outcome)
    captured = capsys.readouterr()
    assert f"warning: degraded: {problem}" in " ".join(captured.err.split())
    assert "but HAProxy serves degraded" in captured.out
