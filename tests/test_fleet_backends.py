"""``ober fleet backends``: the inventory follows the nodes, a change is tried on the whole inventory first, and
the nodes are changed one at a time, stopping at the first that fails or stops announcing.

The transport is a fake here; tests/test_fleet_backends_lab.py runs it against the lab fleet's real nodes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.backend_changes import Delta, changes_path, write_changes
from ober.backends import make_view, plan_add, plan_drain, plan_remove
from ober.config import config_to_dict, parse_node_config
from ober.errors import ConfigError
from ober.haproxy_state import Server, State
from ober.inventory import load_inventory
from ober.remote import backends as fleet_backends
from ober.remote.fleetops import Step
from ober.render import render_node
from ober.runner import Result
from ober.slots import SlotRecord
from tests.conftest import REPO, SECRETS
from tests.test_fleet_ops import status_doc

A = "100.64.1.11:7480"
NEW = "100.64.1.13:7480"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """A copy of the example inventory (one file)."""
    target = tmp_path / "site.yaml"
    shutil.copyfile(REPO / "inventory" / "example.yaml", target)
    return target


def test_the_record_holds_the_last_word_for_each_server() -> None:
    delta = Delta()
    delta.record("add", NEW)
    delta.record("drain", NEW)
    assert delta.to_dict() == {"added": [NEW], "drained": [NEW]}
    delta.record("remove", NEW)
    assert delta.to_dict() == {"removed": [NEW]}
    delta.record("add", NEW)
    assert delta.added == [NEW] and delta.removed == []


@pytest.mark.parametrize("verb", ["add", "drain", "remove"])
def test_the_inventory_gives_each_node_what_the_node_itself_wrote(inventory: Path, verb: str) -> None:
    """After ``fleet backends VERB``, the inventory renders the node's ober.yaml and haproxy.cfg byte for byte."""
    node = load_inventory(inventory).nodes[0]
    config = node.config
    data = config_to_dict(config)
    servers = [Server("be_ceph-a", s.name, "UP", "L7OK", weight=1) for s in config.backend("ceph-a").servers]
    slots = [Server("be_ceph-a", f"_slot{i}", "MAINT", weight=1) for i in range(1, 5)]
    view = make_view(config, State(7, [*servers, *slots], []), SlotRecord(7))
    entry = NEW if verb == "add" else A
    if verb == "add":
        planned = plan_add(data, config, view, "ceph-a", entry, lambda _host: "100.64.1.13")
    elif verb == "drain":
        planned = plan_drain(data, config, view, "ceph-a", entry, force=False)
    else:
        planned = plan_remove(data, config, view, "ceph-a", entry, force=False)
    assert planned.data is not None
    on_node = render_node(parse_node_config(planned.data), SECRETS)

    planned_fleet = fleet_backends.prepare(inventory, [node], verb, "ceph-a", entry)
    write_changes(planned_fleet.path, planned_fleet.changes)
    assert planned_fleet.path == inventory.with_name("site.backends.yaml")
    from_inventory = render_node(load_inventory(inventory).nodes[0].config, SECRETS)
    for path in ("/opt/ober/etc/ober.yaml", "/opt/ober/etc/haproxy.cfg"):
        assert from_inventory.file(path).content == on_node.file(path).content, path
    # Every node of the inventory gets it, ceph-b untouched.
    for other in load_inventory(inventory).nodes:
        group = other.config.backend("ceph-a")
        assert (group.servers, group.drained) == (
            parse_node_config(planned.data).backend("ceph-a").servers,
            group.drained,
        )
        assert group.drained == parse_node_config(planned.data).backend("ceph-a").drained
        assert other.config.backend("ceph-b").servers == node.config.backend("ceph-b").servers


def test_a_change_the_inventory_would_refuse_touches_nothing(inventory: Path) -> None:
    nodes = load_inventory(inventory).nodes
    planned = fleet_backends.prepare(inventory, nodes, "remove", "ceph-a", A)
    write_changes(planned.path, planned.changes)
    before = planned.path.read_text()
    with pytest.raises(ConfigError, match="no servers"):
        fleet_backends.prepare(inventory, nodes, "remove", "ceph-a", "100.64.1.12:7480")
    assert planned.path.read_text() == before
    with pytest.raises(ConfigError, match="no selected node has a backend group named 'ceph-x'"):
        fleet_backends.prepare(inventory, nodes, "add", "ceph-x", NEW)
    with pytest.raises(ConfigError, match="neither a hostname nor an IPv4 address"):
        fleet_backends.prepare(inventory, nodes, "add", "ceph-a", "bad host!")


def test_a_directory_inventory_keeps_the_record_in_backends_yaml(tmp_path: Path) -> None:
    shutil.copyfile(REPO / "inventory" / "example.yaml", tmp_path / "site.yaml")
    assert changes_path(tmp_path) == tmp_path / "backends.yaml"
    (tmp_path / "backends.yaml").write_text(yaml.safe_dump({"backends": {"ceph-a": {"drained": [A]}}}))
    group = load_inventory(tmp_path).nodes[0].config.backend("ceph-a")
    assert [f"{s.host}:{s.port}" for s in group.drained] == [A]


def test_a_malformed_record_is_one_clear_error(inventory: Path) -> None:
    changes_path(inventory).write_text(yaml.safe_dump({"backends": {"ceph-a": {"added": "rgw3"}}}))
    with pytest.raises(ConfigError, match=r"backends.ceph-a.added: expected a list of host:port"):
        load_inventory(inventory)
    changes_path(inventory).write_text(yaml.safe_dump({"site": "other"}))
    with pytest.raises(ConfigError, match="only 'backends:' may be set there"):
        load_inventory(inventory)


# --- one node at a time ------------------------------------------------------------------------------------------


class Node:
    """A node answering ``ober status`` and ``ober backends``; ``announces`` turns false after a change if told."""

    def __init__(self, name: str, answer: dict[str, Any], *, stops_announcing: bool = False) -> None:
        self.name = name
        self.answer = answer
        self.stops_announcing = stops_announcing
        self.changed = False
        self.ran: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        argv = list(argv)
        self.ran.append(argv)
        if argv[1] == "status":
            doc = status_doc(node=self.name)
            if self.changed and self.stops_announcing:
                doc["bgp"]["announced"] = {peer: [] for peer in doc["bgp"]["announced"]}
            return Result(0, json.dumps(doc), "")
        assert argv[1:3] == ["--json", "backends"], argv
        self.changed = True
        return Result(0 if "error" not in self.answer else 1, json.dumps(self.answer), "")


class FakeLock:
    def ensure(self) -> None:
        return None


class FakeSession:
    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.lock = FakeLock()

    def remote(self, node: Any) -> Node:
        return self.nodes[node.name]


ADDED = {"action": "add", "message": "add 100.64.1.13:7480 to ceph-a in slot _slot1", "requests_left": None}


def run_on(inventory: Path, answers: dict[str, Node]) -> tuple[list[Step], Path]:
    nodes = load_inventory(inventory).nodes
    planned = fleet_backends.prepare(inventory, nodes, "add", "ceph-a", NEW)
    results = fleet_backends.run(FakeSession(answers), planned, wait=5.0, progress=lambda _line: None)  # type: ignore[arg-type]
    return results, planned.path


def test_each_node_in_turn_and_the_inventory_records_it(inventory: Path) -> None:
    names = [n.name for n in load_inventory(inventory).nodes]
    nodes = {name: Node(name, ADDED) for name in names}
    results, path = run_on(inventory, nodes)
    assert [r.node for r in results] == names and all(r.ok for r in results)
    argv = nodes[names[0]].ran[1]
    assert argv[1:] == ["--json", "backends", "add", "--config", "/opt/ober/etc/ober.yaml", "ceph-a", NEW]
    assert "--force" not in argv, "the fleet never forces a node past its own guard"
    assert yaml.safe_load(path.read_text()) == {"backends": {"ceph-a": {"added": [NEW], "undrained": [NEW]}}}


def test_a_node_refusing_stops_there_and_the_rest_are_untouched(inventory: Path) -> None:
    names = [n.name for n in load_inventory(inventory).nodes]
    refused = {"error": "backend group ceph-a has no free server slot (4 of 4 …)", "fix": "reload HAProxy"}
    nodes = {name: Node(name, ADDED) for name in names}
    nodes[names[0]] = Node(names[0], refused)
    results, path = run_on(inventory, nodes)
    assert [(r.node, r.ok) for r in results] == [(names[0], False)]
    assert "no free server slot" in results[0].detail and results[0].fix == "reload HAProxy"
    assert all(not nodes[name].changed for name in names[1:])
    assert not path.exists(), "no node has it: the inventory is not changed"


def test_a_node_that_stops_announcing_after_its_change_stops_the_command(inventory: Path) -> None:
    names = [n.name for n in load_inventory(inventory).nodes]
    nodes = {name: Node(name, ADDED) for name in names}
    nodes[names[1]] = Node(names[1], ADDED, stops_announcing=True)
    results, path = run_on(inventory, nodes)
    assert [(r.node, r.ok) for r in results] == [(names[0], True), (names[1], False)]
    assert "no longer announces" in results[1].detail
    assert not nodes[names[2]].changed
    assert path.exists(), "node01 has the change: the inventory says so"


def test_a_sequence_of_changes_leaves_node_and_inventory_alike(inventory: Path) -> None:
    """remove A, add NEW, add A again, drain NEW: the node's own ober.yaml and the inventory's agree (no drift)."""
    node = load_inventory(inventory).nodes[0]
    data = config_to_dict(node.config)
    steps = [("remove", A), ("add", NEW), ("add", A), ("drain", NEW)]
    for verb, entry in steps:
        config = parse_node_config(data)
        running = [Server("be_ceph-a", s.name, "UP", "L7OK", weight=1) for s in config.backend("ceph-a").servers]
        slots = [Server("be_ceph-a", f"_slot{i}", "MAINT", weight=1) for i in range(1, 5)]
        view = make_view(config, State(7, [*running, *slots], []), SlotRecord(7))
        if verb == "add":
            planned = plan_add(data, config, view, "ceph-a", entry, lambda host: host.split(":")[0])
        elif verb == "drain":
            planned = plan_drain(data, config, view, "ceph-a", entry, force=False)
        else:
            planned = plan_remove(data, config, view, "ceph-a", entry, force=False)
        assert planned.data is not None, (verb, entry)
        data = planned.data
        fleet = fleet_backends.prepare(inventory, [node], verb, "ceph-a", entry)
        write_changes(fleet.path, fleet.changes)
    on_node = render_node(parse_node_config(data), SECRETS)
    from_inventory = render_node(load_inventory(inventory).nodes[0].config, SECRETS)
    for path in ("/opt/ober/etc/ober.yaml", "/opt/ober/etc/haproxy.cfg"):
        assert from_inventory.file(path).content == on_node.file(path).content, path
    group = parse_node_config(data).backend("ceph-a")
    assert [f"{s.host}:{s.port}" for s in group.servers] == [A, "100.64.1.12:7480", NEW]
    assert [f"{s.host}:{s.port}" for s in group.drained] == [NEW]
