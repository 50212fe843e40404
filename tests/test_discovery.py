"""Discovery: which servers a group should have (a file, or cephadm's 'ceph orch ps'), one change per run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.config import NodeConfig, Server, parse_node_config
from ober.discovery import discovered, reconcile
from ober.errors import ConfigError

A1, A2, A3, A4 = (f"100.64.1.{n}:7480" for n in (11, 12, 13, 14))


def group_of(node_data: dict[str, Any], servers: list[str], drained: list[str] | None = None) -> NodeConfig:
    node_data["backends"]["ceph-a"]["servers"] = servers
    node_data["backends"]["ceph-a"]["drained"] = drained or []
    return parse_node_config(node_data)


def entries(servers: list[Server]) -> list[str]:
    return [f"{s.host}:{s.port}" for s in servers]


def test_a_new_server_is_added_first_one_per_run(node_data: dict[str, Any]) -> None:
    group = group_of(node_data, [A1, A2]).backend("ceph-a")
    found = list(group_of(node_data, [A2, A3, A4]).backend("ceph-a").servers)
    decision = reconcile(group, found)
    assert decision.verb == "add" and decision.server == found[1]
    assert "1 more new servers wait" in " ".join(decision.notes)
    assert decision.to_dict()["server"] == A3


def test_a_lost_server_is_drained_and_reported_never_removed(node_data: dict[str, Any]) -> None:
    config = group_of(node_data, [A1, A2])
    group = config.backend("ceph-a")
    decision = reconcile(group, [group.servers[0]])
    assert decision.verb == "drain" and decision.server == group.servers[1]
    assert any("never removed automatically" in note for note in decision.notes)
    # Once drained, the next run changes nothing: it only says so.
    drained = group_of(node_data, [A1, A2], [A2]).backend("ceph-a")
    again = reconcile(drained, [drained.servers[0]])
    assert again.verb is None
    assert any(f"ober backends remove ceph-a {A2}" in note for note in again.notes)
    assert reconcile(drained, list(drained.servers)).notes == [
        f"{A2} is listed again but drained: 'ober backends add ceph-a {A2}' returns it"
    ]


def test_a_servers_file_is_read(node_data: dict[str, Any], tmp_path: Path) -> None:
    group = group_of(node_data, [A1]).backend("ceph-a")
    source = tmp_path / "rgw.yaml"
    source.write_text(yaml.safe_dump({"ceph-a": ["100.64.1.11", A3]}))
    assert entries(discovered(source, group, "servers")) == [A1, A3]


ORCH = [
    {"daemon_type": "rgw", "daemon_id": "s3.h1.a", "hostname": "rgw-h1", "ports": [8080], "status": 1,
     "status_desc": "running", "service_name": "rgw.s3"},
    {"daemon_type": "rgw", "daemon_id": "s3.h2.b", "hostname": "rgw-h2", "ports": [8080], "status": 0,
     "status_desc": "stopped", "service_name": "rgw.s3"},
    {"daemon_type": "rgw", "daemon_id": "other.h3.c", "hostname": "rgw-h3", "ports": [80], "status": 1,
     "status_desc": "running", "service_name": "rgw.other"},
    {"daemon_type": "mon", "daemon_id": "h1", "hostname": "h1", "status": 1, "status_desc": "running"},
]  # fmt: skip


def test_ceph_orch_ps_gives_the_running_daemons_of_a_service(node_data: dict[str, Any], tmp_path: Path) -> None:
    group = group_of(node_data, [A1]).backend("ceph-a")
    source = tmp_path / "orch.json"
    source.write_text(json.dumps(ORCH))
    assert entries(discovered(source, group, "ceph-orch", "rgw.s3")) == ["rgw-h1:8080"]
    assert entries(discovered(source, group, "ceph-orch")) == ["rgw-h1:8080", "rgw-h3:80"]


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ("ceph-b: [rgw1]", "servers", "no list for group ceph-a"),
        ("ceph-a: []", "servers", "lists no server for group ceph-a: refusing to drain every server"),
        ("ceph-a: rgw1", "servers", "not a list of host:port"),
        ("{a: [", "servers", "neither YAML nor JSON"),
        ('{"x": 1}', "ceph-orch", "not 'ceph orch ps --format json' output"),
        ("[]", "ceph-orch", "lists no server"),
    ],
)
def test_a_bad_source_is_one_clear_error(
    node_data: dict[str, Any], tmp_path: Path, content: str, fmt: str, message: str
) -> None:
    group = group_of(node_data, [A1]).backend("ceph-a")
    source = tmp_path / "source"
    source.write_text(content)
    with pytest.raises(ConfigError, match=message):
        discovered(source, group, fmt)
    with pytest.raises(ConfigError, match="cannot read"):
        discovered(tmp_path / "missing", group, fmt)
