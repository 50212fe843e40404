"""Inventories: hostlists zip into per-node values, layers merge, every node resolves to a valid config."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.errors import ConfigError
from ober.inventory import load_inventory, merge, resolve_inventory
from ober.render import render_node
from tests.conftest import REPO, SECRETS

EXAMPLE = REPO / "inventory" / "example.yaml"


@pytest.fixture
def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return copy.deepcopy(data)


def test_example_resolves_four_nodes_with_zipped_addresses() -> None:
    inventory = load_inventory(EXAMPLE)
    assert inventory.names() == ["node01", "node02", "node03", "node04"]
    assert [n.address for n in inventory.nodes] == [f"198.51.100.{i}" for i in range(11, 15)]
    # router-id and local address default to the zipped address.
    assert [n.config.bgp.router_id for n in inventory.nodes] == [n.address for n in inventory.nodes]
    assert {n.config.bgp.neighbors for n in inventory.nodes} == {("198.51.100.1", "198.51.100.2")}
    assert [len(n.config.vips) for n in inventory.nodes] == [2, 2, 2, 2]


def test_group_and_host_overrides(example: dict[str, Any]) -> None:
    inventory = resolve_inventory(example)
    by_name = {n.name: n for n in inventory.nodes}
    assert by_name["node01"].config.health.rise == 2
    assert by_name["node03"].config.health.rise == 3  # rack2's override
    assert by_name["node04"].config.network.manager == "netplan"  # the host override
    assert by_name["node03"].config.network.manager == "networkd"  # untouched elsewhere


def test_neighbors_per_rack_and_explicit_router_ids(example: dict[str, Any]) -> None:
    example["groups"]["rack1"]["config"] = {"bgp": {"neighbors": "198.51.100.1"}}
    example["groups"]["rack2"]["router_id"] = "100.64.0.[13-14]"
    example["config"]["whitelists"].pop("routers")
    nodes = {n.name: n for n in resolve_inventory(example).nodes}
    assert nodes["node01"].config.bgp.neighbors == ("198.51.100.1",)
    assert nodes["node03"].config.bgp.neighbors == ("198.51.100.1", "198.51.100.2")
    assert nodes["node04"].config.bgp.router_id == "100.64.0.14"
    assert nodes["node04"].config.bgp.local_address == "100.64.0.14"
    assert nodes["node04"].address == "198.51.100.14"


def test_zipped_lists_must_match_in_length(example: dict[str, Any]) -> None:
    example["groups"]["rack1"]["address"] = "198.51.100.[11-13]"
    with pytest.raises(ConfigError) as error:
        resolve_inventory(example, "inv.yaml")
    assert error.value.message == "inv.yaml: groups.rack1.address: 3 entries for 2 nodes"


def test_errors_name_node_and_field(example: dict[str, Any]) -> None:
    example["groups"]["rack2"]["config"] = {"vips": [{"address": "198.51.100.50", "backend": "ceph-x"}]}
    with pytest.raises(ConfigError) as error:
        resolve_inventory(example, "inv.yaml")
    assert "node node03 (group rack2): vips[0].backend: no backend group named 'ceph-x'" in error.value.message
    assert error.value.fix == "use one of: ceph-a, ceph-b"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(sites="x"), "sites: unknown key"),
        (lambda d: d["groups"]["rack1"].update(nodes="node[01-"), "groups.rack1.nodes: bad hostlist"),
        (lambda d: d["groups"]["rack2"].update(nodes="node[02-03]"), "node node02 is also in group rack1"),
        (lambda d: d.update(hosts={"node09": {"config": {}}}), "hosts.node09: not a node of any group"),
        (lambda d: d.update(hosts={"bad;name": {}}), "is neither a hostname nor an IPv4 address"),
        (lambda d: d["fleet"].update(min_available=5), "fleet.min_available is 5 but there are only 4 nodes"),
        (lambda d: d["ssh"].update(parallel="lots"), "ssh.parallel: expected a whole number"),
        (lambda d: d.update(groups={}, hosts={}), "no nodes"),
        (lambda d: d.update(site="Bad Site"), "site: 'Bad Site' is not allowed"),
    ],
)
def test_bad_inventories(example: dict[str, Any], change: Any, expected: str) -> None:
    change(example)
    with pytest.raises(ConfigError) as error:
        resolve_inventory(example, "inv.yaml")
    assert expected in error.value.message


def test_select_targets() -> None:
    inventory = load_inventory(EXAMPLE)
    assert [n.name for n in inventory.select("node[02-03]")] == ["node02", "node03"]
    assert len(inventory.select(None)) == 4
    with pytest.raises(ConfigError) as error:
        inventory.select("node[04-06]")
    assert error.value.message.startswith("TARGETS: node[05-06] not in inventory")


def test_directory_inventory(tmp_path: Path, example: dict[str, Any]) -> None:
    groups = example.pop("groups")
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(example))
    (tmp_path / "rack1.yaml").write_text(yaml.safe_dump({"groups": {"rack1": groups["rack1"]}}))
    (tmp_path / "rack2.yml").write_text(yaml.safe_dump({"groups": {"rack2": groups["rack2"]}}))
    assert load_inventory(tmp_path).names() == ["node01", "node02", "node03", "node04"]
    (tmp_path / "again.yaml").write_text(yaml.safe_dump({"groups": {"rack1": groups["rack1"]}}))
    with pytest.raises(ConfigError, match=r"groups.rack1 is also defined in another file"):
        load_inventory(tmp_path)


def test_inventory_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBER_INVENTORY", str(EXAMPLE))
    assert load_inventory().site == "example"
    monkeypatch.setenv("OBER_INVENTORY", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no such inventory"):
        load_inventory()


def test_merge_is_deep_for_mappings_and_replaces_lists() -> None:
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert merge(base, {"a": {"y": [3]}, "c": 2}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}  # inputs are not changed


def test_thousand_nodes_resolve_and_render_deterministically(example: dict[str, Any]) -> None:
    example["groups"] = {
        f"rack{r}": {"nodes": f"r{r}n[001-100]", "address": f"100.64.{r}.[1-100]"} for r in range(1, 11)
    }
    example.pop("hosts")
    started = time.perf_counter()
    inventory = resolve_inventory(example)
    digests = [render_node(n.config, SECRETS).digest for n in inventory.nodes]
    elapsed = time.perf_counter() - started
    assert len(inventory.nodes) == 1000 and len(set(digests)) == 1000
    again = [render_node(n.config, SECRETS).digest for n in resolve_inventory(example).nodes]
    assert again == digests
    print(f"resolve + render of 1000 nodes: {elapsed:.2f}s")  # the figure; bench/ holds the benchmark
