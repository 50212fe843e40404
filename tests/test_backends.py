"""Backends changed at runtime, the pure part: config, rendering, what HAProxy's state means, each change's plan.

The real HAProxy runs these plans in tests/test_backends_runtime.py.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.backends import Plan, View, execute, make_view, plan_add, plan_drain, plan_remove
from ober.config import NodeConfig, config_to_dict, parse_node_config
from ober.errors import ConfigError, OberError
from ober.haproxy_runtime import parse_show_stat
from ober.haproxy_state import Server, State, degraded, intended
from ober.hostlists import check_host
from ober.render import render_node
from ober.slots import SlotRecord, is_slot, read_record, record_path, write_record
from ober.validate import local_run_as
from tests.conftest import SECRETS

A1, A2, A3 = "100.64.1.11:7480", "100.64.1.12:7480", "100.64.1.13:7480"


def running(name: str, status: str = "UP", weight: int = 1, sessions: int = 0, address: str = "") -> Server:
    host, _, port = (address or name.replace("_", ".").replace("-", ":")).partition(":")
    return Server("be_ceph-a", name, status, "L7OK", weight=weight, sessions=sessions, address=host, port=int(port))


def slot(index: int, status: str = "MAINT", address: str = "0.0.0.0:7480", weight: int = 1) -> Server:
    return running(f"_slot{index}", status, weight=weight, address=address)


def state(*servers: Server, pid: int = 42) -> State:
    return State(pid, list(servers), [])


@pytest.fixture
def data(node_data: dict[str, Any]) -> dict[str, Any]:
    """The example node with ceph-a = two servers and two spare slots."""
    node_data["backends"]["ceph-a"]["slots"] = 2
    return node_data


def view_of(config: NodeConfig, *servers: Server, record: SlotRecord | None = None) -> View:
    return make_view(config, state(*servers), record or SlotRecord(42))


def serving(config: NodeConfig) -> list[Server]:
    return [running(server.name) for server in config.backend("ceph-a").servers] + [slot(1), slot(2)]


def fixed(address: str) -> Callable[[str], str]:
    return lambda _host: address


# --- config and rendering ----------------------------------------------------------------------------------------


def test_slots_and_drained_are_read_and_written_back(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["drained"] = "100.64.1.12"
    config = parse_node_config(data)
    group = config.backend("ceph-a")
    assert group.slots == 2
    assert [f"{s.host}:{s.port}" for s in group.drained] == [A2]
    assert parse_node_config(config_to_dict(config)) == config


def test_a_drained_server_must_be_one_of_the_group(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["drained"] = [A3]
    with pytest.raises(ConfigError, match=r"backends.ceph-a.drained: 100.64.1.13:7480 is not one of the group's"):
        parse_node_config(data)


def test_slots_are_bounded(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["slots"] = 1000
    with pytest.raises(ConfigError, match="slots"):
        parse_node_config(data)


def test_render_has_the_slots_disabled_and_drained_servers_at_weight_0(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["drained"] = [A2]
    data["backends"]["ceph-b"]["slots"] = 0
    text = render_node(parse_node_config(data), SECRETS).file("/opt/ober/etc/haproxy.cfg").content
    ceph_a = text[text.index("\nbackend be_ceph-a") : text.index("\nbackend be_ceph-b")]
    ceph_b = text[text.index("\nbackend be_ceph-b") : text.index("\nfrontend stats")]
    assert "    server 100_64_1_11-7480 100.64.1.11:7480\n" in ceph_a
    assert "    server 100_64_1_12-7480 100.64.1.12:7480 weight 0\n" in ceph_a
    assert "    server-template _slot 1-2 0.0.0.0:7480 disabled\n" in ceph_a
    assert "server-template" not in ceph_b


# --- what HAProxy's state means ------------------------------------------------------------------------------------

SHOW_STAT = """# pxname,svname,scur,status,weight,check_status
be_ceph-a,100_64_1_11-7480,0,UP,1,L7OK
be_ceph-a,100_64_1_12-7480,3,UP,0,L7OK
be_ceph-a,_slot1,0,MAINT,1,
be_ceph-a,BACKEND,3,UP,1,
be_ceph-b,_slot1,0,MAINT,1,
be_ceph-b,_slot2,0,MAINT,1,
be_ceph-b,BACKEND,0,DOWN,0,
"""


def test_neither_a_drained_server_nor_a_free_slot_counts_as_live() -> None:
    snapshot = parse_show_stat(SHOW_STAT)
    assert snapshot.live_servers("be_ceph-a") == 1
    assert snapshot.live_servers("be_ceph-b") == 0, "a group of free slots only must not be announced"
    assert snapshot.backends["be_ceph-a"].servers == 2, "a free slot is not a server"


def test_degraded_leaves_out_what_ober_keeps_out_on_purpose(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["servers"] = [A1, A2, A3]
    data["backends"]["ceph-a"]["drained"] = [A2]
    config = parse_node_config(data)
    now = State(
        42,
        [
            running("100_64_1_11-7480"),
            running("100_64_1_12-7480", "DOWN", weight=0),  # drained, and its RGW stopped: on purpose
            slot(1, "DOWN", "100.64.1.13:7480"),  # holds A3, which is down: a problem, named as A3
            slot(2),  # free
            running("100_64_1_14-7480", "MAINT", address="100.64.1.14:7480"),  # removed, until the next reload
        ],
        [],
    )
    record = SlotRecord(42, {"be_ceph-a": {"_slot1": "100_64_1_13-7480"}})
    assert degraded(intended(config, now.servers, record)) == ["backend ceph-a server 100_64_1_13-7480 is down (L7OK)"]
    assert len(now.degraded()) == 4, "without the config, every one of them is a problem"


# --- plans ---------------------------------------------------------------------------------------------------------


def test_add_takes_the_first_free_slot_and_writes_the_server_to_the_config(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    view = view_of(config, *serving(config))
    planned = plan_add(data, config, view, "ceph-a", "rgw-a3", fixed("100.64.1.13"))
    assert planned.verb == "add"
    assert planned.commands() == [
        "set server be_ceph-a/_slot1 addr 100.64.1.13 port 7480",
        "set weight be_ceph-a/_slot1 1",
        "set server be_ceph-a/_slot1 state ready",
    ]
    assert planned.data is not None
    assert planned.data["backends"]["ceph-a"]["servers"] == [A1, A2, "rgw-a3:7480"]
    assert planned.record is not None and planned.record.holder("be_ceph-a", "_slot1") == "rgw-a3-7480"
    assert data["backends"]["ceph-a"]["servers"] == "100.64.1.[11-12]:7480", "the caller's mapping is not changed"


def test_add_skips_a_slot_already_holding_a_server(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["servers"] = [A1, A2, A3]
    config = parse_node_config(data)
    record = SlotRecord(42, {"be_ceph-a": {"_slot1": "100_64_1_13-7480"}})
    servers = [running("100_64_1_11-7480"), running("100_64_1_12-7480"), slot(1, "UP", A3), slot(2)]
    view = view_of(config, *servers, record=record)
    [third] = [m for m in view.group("ceph-a").members if m.entry == A3]
    assert (third.runs_as, third.state) == ("_slot1", "serving")
    planned = plan_add(data, config, view, "ceph-a", "100.64.1.14", fixed("100.64.1.14"))
    assert planned.commands()[0] == "set server be_ceph-a/_slot2 addr 100.64.1.14 port 7480"


def test_a_slot_record_of_another_worker_is_void(data: dict[str, Any], tmp_path: Path) -> None:
    data["install_path"] = str(tmp_path)
    config = parse_node_config(data)
    write_record(config, SlotRecord(41, {"be_ceph-a": {"_slot1": "100_64_1_13-7480"}}))
    assert read_record(config, 41).holder("be_ceph-a", "_slot1") == "100_64_1_13-7480"
    assert read_record(config, 42).slots == {}, "a reload (a new worker) freed every slot"
    record_path(config).write_text("not json")
    assert read_record(config, 41).slots == {}


def test_no_free_slot_says_to_reload(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    record = SlotRecord(42, {"be_ceph-a": {"_slot1": "x-1", "_slot2": "y-1"}})
    view = view_of(
        config, running("100_64_1_11-7480"), slot(1, "UP", A3), slot(2, "UP", "100.64.1.14:7480"), record=record
    )
    with pytest.raises(OberError) as caught:
        plan_add(data, config, view, "ceph-a", "100.64.1.15", fixed("100.64.1.15"))
    assert "no free server slot (2 of 2" in caught.value.message
    assert caught.value.fix is not None and "ober reload" in caught.value.fix and "slots=4" in caught.value.fix


def test_adding_a_server_already_serving_changes_nothing(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    planned = plan_add(data, config, view_of(config, *serving(config)), "ceph-a", A1, fixed("x"))
    assert not planned.changes and planned.data is None and planned.commands() == []


def test_adding_a_drained_server_undrains_it(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["drained"] = [A2]
    config = parse_node_config(data)
    servers = [running("100_64_1_11-7480"), running("100_64_1_12-7480", weight=0), slot(1), slot(2)]
    planned = plan_add(data, config, view_of(config, *servers), "ceph-a", A2, fixed("x"))
    assert planned.verb == "undrain"
    assert planned.commands() == ["set weight be_ceph-a/100_64_1_12-7480 1"]
    assert planned.data is not None and "drained" not in planned.data["backends"]["ceph-a"]


def test_drain_sets_weight_0_and_records_it(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    planned = plan_drain(data, config, view_of(config, *serving(config)), "ceph-a", A1, force=False)
    assert planned.commands() == ["set weight be_ceph-a/100_64_1_11-7480 0"]
    assert planned.data is not None and planned.data["backends"]["ceph-a"]["drained"] == [A1]
    again = parse_node_config(planned.data)
    assert again.backend("ceph-a").is_drained(again.backend("ceph-a").servers[0])


def test_the_last_live_server_is_not_drained_or_removed_without_force(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    servers = [running("100_64_1_11-7480"), running("100_64_1_12-7480", "DOWN"), slot(1), slot(2)]
    view = view_of(config, *servers)
    for plan_one in (plan_drain, plan_remove):
        with pytest.raises(OberError, match=r"would leave group ceph-a no server taking requests.*s3-a"):
            plan_one(data, config, view, "ceph-a", A1, force=False)
        forced: Plan = plan_one(data, config, view, "ceph-a", A1, force=True)
        assert forced.changes
    # The down one may go: it takes no requests anyway.
    assert plan_drain(data, config, view, "ceph-a", A2, force=False).changes


def test_remove_drains_waits_then_maintenance_and_drops_it_from_the_config(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    planned = plan_remove(data, config, view_of(config, *serving(config)), "ceph-a", "100.64.1.12", force=False)
    assert planned.commands() == [
        "set weight be_ceph-a/100_64_1_12-7480 0",
        "(wait until be_ceph-a/100_64_1_12-7480 has no requests)",
        "set server be_ceph-a/100_64_1_12-7480 state maint",
    ]
    assert planned.data is not None and planned.data["backends"]["ceph-a"]["servers"] == [A1]


def test_removing_a_server_held_by_a_slot_frees_the_slot(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["servers"] = [A1, A2, A3]
    config = parse_node_config(data)
    record = SlotRecord(42, {"be_ceph-a": {"_slot2": "100_64_1_13-7480"}})
    servers = [running("100_64_1_11-7480"), running("100_64_1_12-7480"), slot(1), slot(2, "UP", A3)]
    planned = plan_remove(data, config, view_of(config, *servers, record=record), "ceph-a", A3, force=False)
    assert planned.commands()[-1] == "set server be_ceph-a/_slot2 state maint"
    assert planned.record is not None and planned.record.holder("be_ceph-a", "_slot2") is None


def test_a_removed_server_is_shown_until_the_reload_and_removing_it_again_changes_nothing(
    data: dict[str, Any],
) -> None:
    data["backends"]["ceph-a"]["servers"] = [A1]
    config = parse_node_config(data)
    servers = [running("100_64_1_11-7480"), running("100_64_1_12-7480", "MAINT"), slot(1), slot(2)]
    view = view_of(config, *servers)
    [gone] = [m for m in view.group("ceph-a").members if not m.listed]
    assert (gone.entry, gone.state) == (A2, "removed (gone at the next reload)")
    assert not plan_remove(data, config, view, "ceph-a", A2, force=False).changes


def test_the_last_server_of_a_group_cannot_be_removed(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["servers"] = [A1]
    config = parse_node_config(data)
    view = view_of(config, running("100_64_1_11-7480"), slot(1), slot(2))
    with pytest.raises(ConfigError, match="would have no server left"):
        plan_remove(data, config, view, "ceph-a", A1, force=True)


@pytest.mark.parametrize(
    ("verb", "group", "server", "message"),
    [
        ("drain", "ceph-x", A1, "no backend group named 'ceph-x'"),
        ("drain", "ceph-a", A3, "not a server of group ceph-a"),
        ("add", "ceph-a", "bad host!", "neither a hostname nor an IPv4 address"),
        ("add", "ceph-a", "rgw:99999", "bad port"),
    ],
)
def test_bad_input_is_one_clear_error(data: dict[str, Any], verb: str, group: str, server: str, message: str) -> None:
    config = parse_node_config(data)
    view = view_of(config, *serving(config))
    with pytest.raises(ConfigError, match=message):
        if verb == "add":
            plan_add(data, config, view, group, server, fixed("100.64.1.20"))
        else:
            plan_drain(data, config, view, group, server, force=False)


def test_slot_names_cannot_be_server_names() -> None:
    assert is_slot("_slot3") and not is_slot("_slotx") and not is_slot("slot3")
    with pytest.raises(ConfigError):
        check_host("_slot1", "servers")


def test_a_server_removed_then_added_again_before_a_reload_is_back_on_its_own_line(data: dict[str, Any]) -> None:
    data["backends"]["ceph-a"]["servers"] = [A2]
    config = parse_node_config(data)
    servers = [running("100_64_1_11-7480", "MAINT", weight=0), running("100_64_1_12-7480"), slot(1), slot(2)]
    planned = plan_add(data, config, view_of(config, *servers), "ceph-a", A1, fixed("unused"))
    assert planned.verb == "add"
    assert planned.commands() == [
        "set weight be_ceph-a/100_64_1_11-7480 1",
        "set server be_ceph-a/100_64_1_11-7480 state ready",
    ]
    assert planned.data is not None and planned.data["backends"]["ceph-a"]["servers"] == [A1, A2]


def test_a_server_in_a_slot_is_shown_there_even_with_its_old_line_in_maintenance(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    record = SlotRecord(42, {"be_ceph-a": {"_slot2": "100_64_1_11-7480"}})
    servers = [running("100_64_1_11-7480", "MAINT"), running("100_64_1_12-7480"), slot(1), slot(2, "UP", A1)]
    [first, _second] = view_of(config, *servers, record=record).group("ceph-a").members
    assert (first.runs_as, first.state) == ("_slot2", "serving")


def test_adding_a_server_that_is_down_but_enabled_changes_nothing(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    servers = [running("100_64_1_11-7480", "DOWN"), running("100_64_1_12-7480"), slot(1), slot(2)]
    planned = plan_add(data, config, view_of(config, *servers), "ceph-a", A1, fixed("unused"))
    assert planned.verb == "none" and "down" in planned.message


# --- execute: files and runtime together, or neither -------------------------------------------------------------


class FakeHAProxy:
    """Answers runtime commands from a script (command prefix → answer); records what it was sent."""

    def __init__(self, answers: dict[str, str], after: State) -> None:
        self.answers = answers
        self.after = after
        self.sent: list[str] = []

    def ask(self, command: str) -> str:
        self.sent.append(command)
        return next((answer for prefix, answer in self.answers.items() if command.startswith(prefix)), "")

    def read(self) -> State:
        return self.after


@pytest.fixture
def short_path() -> Iterator[Path]:
    """A scratch directory with a short name: an install path must be at most 64 characters."""
    path = Path(tempfile.mkdtemp(prefix="ober-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


def installed(data: dict[str, Any], tmp_path: Path) -> NodeConfig:
    """The node's rendered files written under a scratch install path, as ober config would have."""
    data["install_path"] = str(tmp_path / "opt" / "ober")
    config = parse_node_config(data)
    for item in render_node(config, SECRETS, run_as=local_run_as()).files:
        if item.path.startswith(config.install_path):
            Path(item.path).parent.mkdir(parents=True, exist_ok=True)
            Path(item.path).write_text(item.content)
    return config


def test_a_refused_runtime_change_leaves_the_files_and_undoes_what_was_done(
    data: dict[str, Any], short_path: Path
) -> None:
    tmp_path = short_path
    config = installed(data, tmp_path)
    before = {p: p.read_text() for p in (tmp_path / "opt" / "ober" / "etc").glob("*.*") if p.is_file()}
    planned = plan_add(data, config, view_of(config, *serving(config)), "ceph-a", A3, fixed("100.64.1.13"))
    # The address and the weight are taken, enabling the slot is refused.
    haproxy = FakeHAProxy({"set server be_ceph-a/_slot1 state ready": "No such server."}, state())
    with pytest.raises(OberError) as caught:
        execute(config, planned, ask=haproxy.ask, read=haproxy.read)
    assert "HAProxy refused 'set server be_ceph-a/_slot1 state ready': No such server." in caught.value.message
    assert caught.value.fix == "see 'ober backends list'; nothing was changed"
    assert haproxy.sent[3:] == ["set server be_ceph-a/_slot1 addr 0.0.0.0"], "the address put back, nothing else"
    after = {p: p.read_text() for p in (tmp_path / "opt" / "ober" / "etc").glob("*.*") if p.is_file()}
    assert {p: t for p, t in after.items() if p in before} == before


def test_a_change_haproxy_does_not_show_afterwards_is_undone(data: dict[str, Any], short_path: Path) -> None:
    config = installed(data, short_path)
    planned = plan_drain(data, config, view_of(config, *serving(config)), "ceph-a", A1, force=False)
    haproxy = FakeHAProxy({}, state(*serving(config)))  # still weight 1: the drain did not take
    with pytest.raises(OberError, match="not drained"):
        execute(config, planned, ask=haproxy.ask, read=haproxy.read)
    assert haproxy.sent == ["set weight be_ceph-a/100_64_1_11-7480 0", "set weight be_ceph-a/100_64_1_11-7480 1"]
    assert (
        "drained" not in yaml.safe_load(Path(config.install_path, "etc/ober.yaml").read_text())["backends"]["ceph-a"]
        or not yaml.safe_load(Path(config.install_path, "etc/ober.yaml").read_text())["backends"]["ceph-a"]["drained"]
    )


def test_a_change_is_refused_while_haproxy_cfg_has_changes_not_applied(data: dict[str, Any], short_path: Path) -> None:
    config = installed(data, short_path)
    cfg = Path(config.install_path, "etc/haproxy.cfg")
    cfg.write_text(cfg.read_text().replace("maxconn", "maxconn-pending", 1))
    planned = plan_drain(data, config, view_of(config, *serving(config)), "ceph-a", A1, force=False)
    haproxy = FakeHAProxy({}, state())
    with pytest.raises(OberError, match=r"is not what this node's ober\.yaml renders"):
        execute(config, planned, ask=haproxy.ask, read=haproxy.read)
    assert haproxy.sent == []
