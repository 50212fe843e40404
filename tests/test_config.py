"""Tests for ober.config (the node configuration model) and ober.schema (the strict YAML reader)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ober.config import (
    NodeConfig,
    config_to_dict,
    dump_config,
    load_config,
    parse_node_config,
    read_yaml,
    whitelist_covers,
)
from ober.errors import ConfigError
from ober.schema import Fields, parse_duration

EXAMPLE = Path(__file__).parent / "data" / "node.yaml"

Key = str | int
KeyPath = tuple[Key, ...]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Final = _Delete()

Change = tuple[KeyPath, object]


# --- helpers ----------------------------------------------------------------------------------------------------


@functools.cache
def _example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def example_data() -> dict[str, Any]:
    """A fresh copy of tests/data/node.yaml as plain data."""
    data = yaml.safe_load(_example_text())
    assert isinstance(data, dict)
    return data


def minimal_data() -> dict[str, Any]:
    """The smallest valid config: everything else takes its default."""
    return {
        "name": "node01",
        "bgp": {"router_id": "100.64.0.11", "neighbors": "100.64.0.1"},
        "backends": {"ceph-a": {"servers": "rgw1"}},
        "vips": [{"address": "198.51.100.10", "backend": "ceph-a"}],
        "certificates": {"pem": "/opt/ober/etc/certs/s3.pem"},
    }


def apply(data: Any, path: KeyPath, value: object) -> bool:
    """Set (or, with DELETE, remove) the value at ``path``, creating missing mappings on the way.

    Returns False when the path cannot be followed (an earlier change replaced a section with a scalar).
    """
    current = data
    for key in path[:-1]:
        if isinstance(current, dict) and isinstance(key, str):
            if not isinstance(current.get(key), (dict, list)):
                current[key] = {}
            current = current[key]
        elif isinstance(current, list) and isinstance(key, int) and 0 <= key < len(current):
            current = current[key]
        else:
            return False
    last = path[-1]
    if isinstance(current, dict) and isinstance(last, str):
        if value is DELETE:
            current.pop(last, None)
        else:
            current[last] = value
        return True
    if isinstance(current, list) and isinstance(last, int) and 0 <= last < len(current):
        if value is DELETE:
            del current[last]
        else:
            current[last] = value
        return True
    return False


def changed(*changes: Change, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The example (or ``base``) with ``changes`` applied."""
    data = copy.deepcopy(base) if base is not None else example_data()
    for path, value in changes:
        assert apply(data, path, value), f"cannot apply {path}"
    return data


def parse(*changes: Change, base: dict[str, Any] | None = None) -> NodeConfig:
    """Parse the example (or ``base``) with ``changes`` applied."""
    return parse_node_config(changed(*changes, base=base))


def error(*changes: Change, base: dict[str, Any] | None = None) -> ConfigError:
    """The ConfigError that parsing the changed example raises."""
    with pytest.raises(ConfigError) as info:
        parse(*changes, base=base)
    return info.value


def rename_group(data: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """Rename a backend group and every VIP that refers to it."""
    data["backends"][new] = data["backends"].pop(old)
    for vip in data["vips"]:
        if vip["backend"] == old:
            vip["backend"] = new
    return data


def dotted(path: KeyPath) -> str:
    """The field path as ober writes it in messages: ``vips[1].backend``."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else f".{key}" if text else key
    return text


def _attr(config: object, dotted: str) -> Any:
    return functools.reduce(getattr, dotted.split("."), config)


# --- the example and the defaults -------------------------------------------------------------------------------


def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.name == "node01"
    assert config.bgp.neighbors == ("100.64.0.1", "100.64.0.2")
    assert config.bgp.md5_secret == "bgp_md5"
    assert config.bgp.drain is not None
    assert config.bgp.drain.community == "65535:0"
    assert config.bgp.drain.med == 1000
    assert config.bgp.drain.delay == 5.0
    assert [(vip.name, vip.address, vip.backend) for vip in config.vips] == [
        ("s3-a", "198.51.100.10", "ceph-a"),
        ("s3-b", "198.51.100.20", "ceph-b"),
    ]
    ceph_a = config.backend("ceph-a")
    assert [(s.name, s.host, s.port) for s in ceph_a.servers] == [
        ("100_64_1_11-7480", "100.64.1.11", 7480),
        ("100_64_1_12-7480", "100.64.1.12", 7480),
    ]
    ceph_b = config.backend("ceph-b")
    assert [(s.host, s.port) for s in ceph_b.servers] == [("rgw-b1", 8080), ("100.64.2.12", 8080)]
    assert ceph_b.tls.enabled
    assert ceph_b.tls.ca_file == "/opt/ober/etc/certs/backend-ca.pem"
    assert config.health.drain_timeout == 300.0
    assert config.stats.auth is not None
    assert config.stats.auth.password_secret == "stats_password"
    assert config.whitelists.frontend_http == ("198.18.0.0/15", "100.64.10.0/24")
    assert config.logs.retention == 14 * 86400.0
    assert config.kernel_profile == "throughput"
    assert config.network.manager == "netplan"
    assert config.secret_names() == ["bgp_md5", "stats_password"]
    assert config.certificates.crt_path(config.install_path) == "/opt/ober/etc/certs/s3.pem"


def test_load_config_equals_parse_of_the_same_data() -> None:
    assert load_config(str(EXAMPLE)) == parse_node_config(example_data())


def test_defaults() -> None:
    config = parse_node_config(minimal_data())
    assert config.install_path == "/opt/ober"
    assert config.bgp.local_as == 65001
    assert config.bgp.peer_as == 65000
    assert config.bgp.hold_time == 3
    assert config.bgp.local_address == "100.64.0.11"  # defaults to the router id
    assert config.bgp.md5_secret is None
    assert config.bgp.graceful_restart == 0
    assert config.bgp.drain is None
    assert config.stats.port == 8404
    # Nothing guards the page (no allow-list, no login): loopback only, never 0.0.0.0 (the VIPs too).
    assert config.stats.bind == "127.0.0.1"
    assert (config.stats.tls, config.stats.allow_open) == (False, False)
    assert config.stats.auth is None
    assert config.health.interval == 0.5
    # RGW checks stay at 1 s (every node checks every RGW), with quick re-checks once one fails.
    assert config.backends[0].check.interval == 1.0 and config.backends[0].check.fastinter == 0.2
    assert config.health.maintenance_file == "/opt/ober/etc/maintenance"
    group = config.backend("ceph-a")
    assert [(s.host, s.port) for s in group.servers] == [("rgw1", 7480)]
    assert group.check.method == "GET"
    assert group.check.path == "/"
    assert group.check.expect_status == 200
    # The check inherits the health timing unless it sets its own.
    assert (group.check.interval, group.check.rise, group.check.fall) == (1.0, 2, 3)
    assert not group.tls.enabled
    assert group.tls.verify
    assert config.vips[0].name == "vip-198-51-100-10"
    assert config.certificates.http == "redirect"
    assert config.whitelists == type(config.whitelists)((), (), ())
    assert config.kernel_profile == "default"
    assert config.network.interface == "ober0"
    assert config.network.manager == "networkd"
    assert config.haproxy.version == "2.6"
    assert config.haproxy.version_tuple == (2, 6)
    assert config.secret_names() == []


def test_maintenance_file_follows_install_path() -> None:
    config = parse((("install_path",), "/srv/ober"), base=minimal_data())
    assert config.install_path == "/srv/ober"
    assert config.health.maintenance_file == "/srv/ober/etc/maintenance"


def test_check_inherits_health_timing() -> None:
    config = parse((("health",), {"interval": "2s", "rise": 4, "fall": 5}), base=minimal_data())
    check = config.backend("ceph-a").check
    assert (check.interval, check.rise, check.fall) == (2.0, 4, 5)


def test_empty_sections_are_allowed() -> None:
    config = parse((("health",), None), (("stats",), None), (("logs",), None), base=minimal_data())
    assert config.stats.port == 8404


def test_acme_certificates() -> None:
    config = parse(
        (("certificates",), {"acme": {"email": "ops@example.com", "domains": "s3.example.com s3-[1-2].example.com"}})
    )
    assert config.certificates.pem is None
    assert config.certificates.acme is not None
    assert config.certificates.acme.domains == ("s3.example.com", "s3-1.example.com", "s3-2.example.com")
    assert config.certificates.acme.directory.startswith("https://")
    assert config.certificates.crt_path(config.install_path) == "/opt/ober/etc/certs/acme"


def test_haproxy_version_is_normalised() -> None:
    assert parse((("haproxy", "version"), "02.8")).haproxy.version == "2.8"
    assert parse((("haproxy", "version"), "3.0")).haproxy.version_tuple == (3, 0)


def test_server_port_overrides_group_port() -> None:
    config = parse((("backends", "ceph-a"), {"servers": "rgw[1-2] rgw3:8000", "port": 9000}))
    assert [(s.host, s.port) for s in config.backend("ceph-a").servers] == [
        ("rgw1", 9000),
        ("rgw2", 9000),
        ("rgw3", 8000),
    ]


def test_routers_whitelist_network_covers_neighbors() -> None:
    config = parse((("whitelists", "routers"), "100.64.0.0/30"))
    assert config.whitelists.routers == ("100.64.0.0/30",)


def test_routers_whitelist_with_names_is_not_checked() -> None:
    # Names cover nothing until resolved, so a list with names is left to the operator.
    config = parse((("whitelists", "routers"), ["router-a", "100.64.0.1"]))
    assert config.whitelists.routers == ("router-a", "100.64.0.1")


def test_whitelist_mixes_networks_and_hostlists() -> None:
    config = parse((("whitelists", "frontend_http"), "198.18.0.0/15 client[1-2], 10.9.8.7"))
    assert config.whitelists.frontend_http == ("198.18.0.0/15", "client1", "client2", "10.9.8.7")


def test_whitelist_network_is_normalised() -> None:
    assert parse((("whitelists", "backend_http"), ["10.1.2.3/8"])).whitelists.backend_http == ("10.0.0.0/8",)


@pytest.mark.parametrize("item", [5, None, ["10.0.0.1"], {"a": 1}])
def test_whitelist_refuses_non_string_items(item: object) -> None:
    exc = error((("whitelists", "backend_http"), ["10.0.0.1", item]))
    assert exc.message.startswith("whitelists.backend_http: expected hostlists, addresses or networks, got ")


def test_whitelist_covers() -> None:
    entries = ("10.0.0.0/24", "192.0.2.7", "router-a")
    assert whitelist_covers(entries, "10.0.0.200")
    assert whitelist_covers(entries, "192.0.2.7")
    assert not whitelist_covers(entries, "192.0.2.8")
    assert not whitelist_covers(entries, "10.0.1.1")


# --- round trip -------------------------------------------------------------------------------------------------


def _variants() -> list[Any]:
    acme = changed(
        (("certificates",), {"acme": {"email": "ops@example.com", "domains": ["s3.example.com"]}, "http": "serve"})
    )
    med_only = changed((("bgp", "drain"), {"med": 50}), (("stats", "auth"), DELETE))
    return [
        pytest.param(example_data(), id="example"),
        pytest.param(minimal_data(), id="minimal"),
        pytest.param(acme, id="acme"),
        pytest.param(med_only, id="drain-med-only"),
    ]


@pytest.mark.parametrize("data", _variants())
def test_dump_config_round_trips(data: dict[str, Any]) -> None:
    config = parse_node_config(data)
    text = dump_config(config)
    assert text.startswith("#")
    again = parse_node_config(yaml.safe_load(text))
    assert again == config
    assert dump_config(again) == text


def test_dump_config_holds_no_secret_values() -> None:
    text = dump_config(parse_node_config(example_data()))
    assert "md5_secret: bgp_md5" in text
    assert "password_secret: stats_password" in text


def test_config_to_dict_groups_servers_by_name() -> None:
    data = config_to_dict(parse_node_config(example_data()))
    assert data["backends"]["ceph-b"]["servers"] == ["rgw-b1:8080", "100.64.2.12:8080"]
    assert "md5_secret" not in config_to_dict(parse_node_config(minimal_data()))["bgp"]


# --- durations --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "attribute", "value", "seconds"),
    [
        (("health", "interval"), "health.interval", "500ms", 0.5),
        (("health", "timeout"), "health.timeout", "30s", 30.0),
        (("health", "drain_timeout"), "health.drain_timeout", "10m", 600.0),
        (("haproxy", "hard_stop_after"), "haproxy.hard_stop_after", "2h", 7200.0),
        (("logs", "retention"), "logs.retention", "7d", 7 * 86400.0),
        (("health", "timeout"), "health.timeout", 2, 2.0),
        (("health", "interval"), "health.interval", 1.5, 1.5),
        (("health", "timeout"), "health.timeout", "2", 2.0),
        (("health", "interval"), "health.interval", "1.5s", 1.5),
        (("health", "interval"), "health.interval", " 2s ", 2.0),
        (("bgp", "drain", "delay"), "bgp.drain.delay", 0, 0.0),
        (("haproxy", "timeouts", "client"), "haproxy.timeouts.client", "1h", 3600.0),
    ],
)
def test_durations(path: KeyPath, attribute: str, value: object, seconds: float) -> None:
    assert _attr(parse((path, value)), attribute) == seconds


@pytest.mark.parametrize(
    "value", ["10 minutes", "-1s", "1.5.2s", "s", "", "10M", "1e3", "0x10", "ten", "5sec", "1,5s", "inf"]
)
def test_bad_duration_strings(value: str) -> None:
    exc = error((("health", "drain_timeout"), value))
    assert exc.message == f"health.drain_timeout: {value!r} is not a duration"
    assert exc.fix is not None
    assert "30s" in exc.fix


@pytest.mark.parametrize(("value", "kind"), [(True, "a boolean"), ([1], "a list"), ({"s": 1}, "a mapping")])
def test_bad_duration_types(value: object, kind: str) -> None:
    exc = error((("health", "timeout"), value))
    assert exc.message == f"health.timeout: expected a duration like 30s or 10m, got {kind}"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("health", "interval"), "50ms", "health.interval"),
        (("health", "timeout"), "2m", "health.timeout"),
        (("logs", "retention"), "10m", "logs.retention"),
        (("bgp", "drain", "delay"), "11m", "bgp.drain.delay"),
        (("backends", "ceph-a", "check", "interval"), "2h", "backends.ceph-a.check.interval"),
    ],
)
def test_durations_out_of_range(path: KeyPath, value: str, field: str) -> None:
    exc = error((path, value))
    assert exc.message == f"{field}: {value!r} is out of range"
    assert exc.fix is not None
    assert exc.fix.startswith("use a duration between")


def test_parse_duration_direct() -> None:
    assert parse_duration("250ms", "x") == 0.25
    assert parse_duration(3, "x") == 3.0
    assert parse_duration(0.5, "x") == 0.5
    with pytest.raises(ConfigError, match=r"^where\.it\.is: "):
        parse_duration("soon", "where.it.is")
    with pytest.raises(ConfigError, match=r"^x: expected a duration"):
        parse_duration(None, "x")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "": 1.0}


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(_UNITS)))
def test_property_duration_units(number: int, unit: str) -> None:
    assert math.isclose(parse_duration(f"{number}{unit}", "x"), number * _UNITS[unit])


# --- bad input: every error names the exact field ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "known"),
    [
        ((("colour",), "blue"), "colour", ["backends", "bgp", "vips"]),
        ((("bgp", "local_ass"), 65001), "bgp.local_ass", ["local_as", "peer_as", "neighbors"]),
        ((("bgp", "drain", "medd"), 5), "bgp.drain.medd", ["med", "community"]),
        ((("vips", 0, "colour"), "x"), "vips[0].colour", ["address", "backend", "name"]),
        ((("backends", "ceph-a", "serverz"), "x"), "backends.ceph-a.serverz", ["servers", "port"]),
        ((("backends", "ceph-a", "check", "methd"), "GET"), "backends.ceph-a.check.methd", ["method"]),
        ((("backends", "ceph-b", "tls", "verfy"), True), "backends.ceph-b.tls.verfy", ["verify"]),
        ((("health", "intervall"), "1s"), "health.intervall", ["interval"]),
        ((("stats", "auth", "usr"), "x"), "stats.auth.usr", ["user"]),
        ((("haproxy", "timeouts", "clinet"), "1m"), "haproxy.timeouts.clinet", ["client"]),
        ((("certificates", "pm"), "/x"), "certificates.pm", ["pem"]),
        ((("whitelists", "router"), "10.0.0.1"), "whitelists.router", ["routers"]),
        ((("network", "iface"), "x"), "network.iface", ["interface"]),
        ((("logs", "max_use"), 5), "logs.max_use", ["max_use_mb"]),
    ],
)
def test_unknown_keys(change: Change, field: str, known: list[str]) -> None:
    exc = error(change)
    assert exc.message == f"{field}: unknown key"
    assert exc.fix is not None
    for key in known:
        assert key in exc.fix


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ((("bgp", "local_as"), "65001"), "bgp.local_as: expected a whole number, got a string"),
        ((("stats", "port"), True), "stats.port: expected a whole number, got a boolean"),
        ((("bgp", "hold_time"), 3.5), "bgp.hold_time: expected a whole number, got a number"),
        ((("health",), [1, 2]), "health: expected a mapping (key: value), got a list"),
        ((("bgp",), "x"), "bgp: expected a mapping (key: value), got a string"),
        ((("haproxy", "timeouts"), 5), "haproxy.timeouts: expected a mapping (key: value), got a number"),
        ((("vips",), {"a": 1}), "vips: expected a list, got a mapping"),
        ((("vips", 1), "198.51.100.20"), "vips[1]: expected a mapping (key: value), got a string"),
        ((("name",), 5), "name: expected a string, got a number"),
        ((("backends", "ceph-b", "tls", "enabled"), "yes"), "backends.ceph-b.tls.enabled: expected true or false"),
        ((("backends", "ceph-a", "servers"), 5), "backends.ceph-a.servers: expected a hostlist or a list"),
        ((("backends", "ceph-a", "servers"), [5]), "backends.ceph-a.servers: expected a hostlist string"),
        ((("bgp", "neighbors"), {"a": 1}), "bgp.neighbors: expected a hostlist or a list, got a mapping"),
        ((("whitelists", "routers"), 5), "whitelists.routers: expected a hostlist or a list, got a number"),
        ((("bgp", "router_id"), "router"), "bgp.router_id: 'router' is not an IPv4 address"),
        ((("bgp", "router_id"), "10.0.0.0/8"), "bgp.router_id: '10.0.0.0/8' is not an IPv4 address"),
        ((("bgp", "neighbors"), "rtr1"), "bgp.neighbors: 'rtr1' is not an IPv4 address"),
        ((("bgp", "neighbors"), "10.0.0.300"), "bgp.neighbors: '10.0.0.300' is neither a hostname"),
        ((("vips", 0, "address"), 42), "vips[0].address: expected a string, got a number"),
        ((("kernel_profile",), "fast"), "kernel_profile: 'fast' is not one of default, throughput, none"),
        ((("certificates", "http"), "maybe"), "certificates.http: 'maybe' is not one of redirect, serve, off"),
        ((("backends", "ceph-a", "check", "method"), "POST"), "backends.ceph-a.check.method: 'POST' is not one of"),
        ((("network", "interface"), "a-very-long-iface"), "network.interface: 'a-very-long-iface' is not allowed"),
        ((("network", "manager"), "ifupdown"), "network.manager: 'ifupdown' is not one of"),
        ((("bgp", "drain", "community"), "65536:0"), "bgp.drain.community: '65536:0' is not a BGP community"),
        ((("bgp", "drain", "community"), "graceful"), "bgp.drain.community: 'graceful' is not a BGP community"),
        ((("bgp", "drain"), {"delay": "5s"}), "bgp.drain: give a community, a med, or both"),
        ((("haproxy", "version"), "2.4"), "haproxy.version: 2.4 is too old"),
        ((("haproxy", "version"), "1.8"), "haproxy.version: 1.8 is too old"),
        ((("haproxy", "version"), "3"), "haproxy.version: '3' is not allowed"),
        ((("haproxy", "version"), 2.6), "haproxy.version: expected a string, got a number"),
        ((("whitelists", "frontend_http"), "10.0.0.0/33"), "whitelists.frontend_http: '10.0.0.0/33' is not an IPv4"),
        ((("stats", "bind"), "localhost"), "stats.bind: 'localhost' is not an IPv4 address"),
    ],
)
def test_wrong_values(change: Change, expected: str) -> None:
    assert error(change).message.startswith(expected)


@pytest.mark.parametrize(
    ("change", "fix"),
    [
        ((("bgp", "local_as"), "65001"), "set 'local_as' to a whole number"),
        ((("stats", "port"), True), "set 'port' to a whole number"),
        ((("backends", "ceph-b", "tls", "enabled"), "yes"), "set 'enabled' to true or false"),
    ],
)
def test_type_errors_say_what_to_write(change: Change, fix: str) -> None:
    assert error(change).fix == fix


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^top level: expected a mapping"):
        parse_node_config(["name", "node01"])


def test_non_string_key() -> None:
    exc = error((("bgp", "local_as"), DELETE), base=changed((("bgp",), {1: 2})))
    assert exc.message == "bgp: key 1 is not a string"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ((("bgp", "local_as"), 0), "bgp.local_as"),
        ((("bgp", "local_as"), 4294967296), "bgp.local_as"),
        ((("bgp", "peer_as"), -1), "bgp.peer_as"),
        ((("bgp", "hold_time"), 2), "bgp.hold_time"),
        ((("bgp", "graceful_restart"), 4096), "bgp.graceful_restart"),
        ((("bgp", "drain", "med"), 4294967296), "bgp.drain.med"),
        ((("stats", "port"), 0), "stats.port"),
        ((("stats", "port"), 65536), "stats.port"),
        ((("backends", "ceph-b", "port"), 70000), "backends.ceph-b.port"),
        ((("backends", "ceph-a", "check", "expect_status"), 99), "backends.ceph-a.check.expect_status"),
        ((("backends", "ceph-a", "check", "rise"), 0), "backends.ceph-a.check.rise"),
        ((("health", "fall"), 101), "health.fall"),
        ((("logs", "max_use_mb"), 15), "logs.max_use_mb"),
        ((("haproxy", "maxconn"), 99), "haproxy.maxconn"),
    ],
)
def test_out_of_range_numbers(change: Change, field: str) -> None:
    exc = error(change)
    assert exc.message == f"{field}: {change[1]} is out of range"
    assert exc.fix is not None
    assert exc.fix.startswith("use a number between")


def test_asn_bounds_are_inclusive() -> None:
    config = parse((("bgp", "local_as"), 4294967295), (("bgp", "peer_as"), 1))
    assert (config.bgp.local_as, config.bgp.peer_as) == (4294967295, 1)


@pytest.mark.parametrize("port", [80, 443])
def test_stats_port_clashes_with_frontends(port: int) -> None:
    exc = error((("stats", "port"), port))
    assert exc.message == f"stats.port: {port} is used by the S3 frontends"


@pytest.mark.parametrize("servers", ["rgw1:0", "rgw1:65536", "rgw1:http", "rgw1:-1", "rgw1:80:81"])
def test_bad_server_ports(servers: str) -> None:
    exc = error((("backends", "ceph-a", "servers"), servers))
    assert exc.message == f"backends.ceph-a.servers: bad port in {servers!r}"


@pytest.mark.parametrize("servers", ["rgw_1", "a;b:80", "$(rm):80", "rgw[1-2", "rgw1 rgw1"])
def test_bad_servers(servers: str) -> None:
    assert error((("backends", "ceph-a", "servers"), servers)).message.startswith("backends.ceph-a.servers: ")


@pytest.mark.parametrize("servers", ["rgw1:\u00b2", "rgw1:\u0668\u0660", "rgw1:+80", "rgw1:080000"])
def test_server_ports_are_ascii_digits_only(servers: str) -> None:
    # str.isdigit() is true for '²' (then int() fails) and for Arabic-Indic digits; only 0-9 may pass.
    exc = error((("backends", "ceph-a", "servers"), [servers]))
    assert exc.message == f"backends.ceph-a.servers: bad port in {servers!r}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ((("name",), DELETE), "name"),
        ((("bgp", "router_id"), DELETE), "bgp.router_id"),
        ((("bgp", "neighbors"), DELETE), "bgp.neighbors"),
        ((("backends", "ceph-a", "servers"), DELETE), "backends.ceph-a.servers"),
        ((("vips", 0, "backend"), DELETE), "vips[0].backend"),
        ((("vips", 1, "address"), DELETE), "vips[1].address"),
        ((("vips",), DELETE), "vips"),
        ((("certificates", "acme"), {"domains": "s3.example.com"}), "certificates.acme.email"),
        ((("stats", "auth", "password_secret"), DELETE), "stats.auth.password_secret"),
    ],
)
def test_required_fields(change: Change, field: str) -> None:
    exc = error(change)
    assert exc.message == f"{field}: required"
    assert exc.fix is not None


def test_vip_with_missing_backend_group() -> None:
    exc = error((("vips", 1, "backend"), "ceph-x"))
    assert exc.message == "vips[1].backend: no backend group named 'ceph-x'"
    assert exc.fix == "use one of: ceph-a, ceph-b"


def test_duplicate_vip_address() -> None:
    exc = error((("vips", 1, "address"), "198.51.100.10"))
    assert exc.message == "vips[1].address: VIP 198.51.100.10 is listed twice"
    assert exc.fix is not None


def test_duplicate_vip_address_in_another_spelling() -> None:
    # ipv4() normalises, so a leading-zero-free copy of the same address is still caught.
    exc = error((("vips", 1), {"address": "198.51.100.10", "backend": "ceph-b", "name": "other"}))
    assert exc.message.startswith("vips[1].address: ")


def test_duplicate_vip_name() -> None:
    exc = error((("vips", 1, "name"), "s3-a"))
    assert exc.message == "vips[1].name: VIP name 's3-a' is used twice"


def test_duplicate_default_vip_names_cannot_happen_for_distinct_addresses() -> None:
    config = parse((("vips", 0, "name"), DELETE), (("vips", 1, "name"), DELETE))
    assert [vip.name for vip in config.vips] == ["vip-198-51-100-10", "vip-198-51-100-20"]


def test_no_vips() -> None:
    exc = error((("vips",), []))
    assert exc.message == "vips: at least one VIP is needed"
    assert exc.fix is not None


@pytest.mark.parametrize("value", [{}, None, DELETE])
def test_no_backends(value: object) -> None:
    exc = error((("backends",), value))
    assert exc.message == "backends: at least one backend group is needed"


@pytest.mark.parametrize("servers", ["", [], " , "])
def test_backend_without_servers(servers: object) -> None:
    assert error((("backends", "ceph-a", "servers"), servers)).message == "backends.ceph-a.servers: no servers"


@pytest.mark.parametrize("value", [[], ""])
def test_no_neighbors(value: object) -> None:
    exc = error((("bgp", "neighbors"), value))
    assert exc.message == "bgp.neighbors: at least one neighbor is needed"


def test_local_address_equal_to_a_neighbor() -> None:
    exc = error((("bgp", "local_address"), "100.64.0.2"))
    assert exc.message == "bgp.local_address: 100.64.0.2 is also a neighbor"


def test_router_id_equal_to_a_neighbor_without_local_address() -> None:
    # local_address defaults to router_id, so the same check applies.
    exc = error((("bgp", "local_address"), DELETE), (("bgp", "router_id"), "100.64.0.1"))
    assert exc.message.startswith("bgp.local_address: 100.64.0.1 is also a neighbor")


@pytest.mark.parametrize("address", ["100.64.0.11", "100.64.0.2"])
def test_vip_equal_to_a_bgp_address(address: str) -> None:
    exc = error((("vips", 0, "address"), address))
    assert exc.message.startswith("vips[0].address: ")
    assert address in exc.message
    assert "BGP address" in exc.message


def test_certificates_with_both_pem_and_acme() -> None:
    exc = error((("certificates", "acme"), {"email": "ops@example.com", "domains": "s3.example.com"}))
    assert exc.message.startswith("certificates: give exactly one of 'pem'")


@pytest.mark.parametrize("value", [{}, None, {"http": "off"}])
def test_certificates_with_neither_pem_nor_acme(value: object) -> None:
    exc = error((("certificates",), value))
    assert exc.message.startswith("certificates: give exactly one of 'pem'")
    assert exc.fix is not None


@pytest.mark.parametrize(
    ("acme", "field"),
    [
        ({"email": "not-an-email", "domains": "s3.example.com"}, "certificates.acme.email"),
        ({"email": "ops@example.com", "domains": "s3;rm"}, "certificates.acme.domains"),
        ({"email": "ops@example.com", "domains": "s3.x", "directory": "http://x"}, "certificates.acme.directory"),
        ({"email": "ops@example.com"}, "certificates.acme.domains"),
    ],
)
def test_bad_acme(acme: dict[str, str], field: str) -> None:
    exc = error((("certificates",), {"acme": acme}))
    assert exc.message.startswith(f"{field}: ")


def test_routers_whitelist_must_cover_neighbors() -> None:
    exc = error((("whitelists", "routers"), "100.64.0.1"))
    assert exc.message == "whitelists.routers: BGP neighbor 100.64.0.2 is not in it"
    assert exc.fix is not None


def test_routers_whitelist_network_must_cover_neighbors() -> None:
    exc = error((("whitelists", "routers"), ["100.64.0.0/32", "10.0.0.0/8"]))
    assert exc.message == "whitelists.routers: BGP neighbor 100.64.0.1 is not in it"


def test_where_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_config(changed((("bgp", "local_ass"), 1)), "inventory node01")
    assert info.value.message == "inventory node01: bgp.local_ass: unknown key"
    assert info.value.fix is not None
    assert "local_as" in info.value.fix


# --- injection attempts into every identifier that reaches a template -------------------------------------------

BAD_NAMES = [
    "ceph a",
    "x{{7*7}}",
    "{% raw %}",
    "a\nb",
    "a;b",
    "a'b",
    'a"b',
    "a$b",
    "a#b",
    "a/b",
    "a.b",
    "a:b",
    "a\\b",
    "a\tb",
    "Ceph",
    "1ceph",
    "-ceph",
    "",
    "a" * 33,
    "cëph",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_backend_group_names(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_config(rename_group(example_data(), "ceph-a", name))
    assert info.value.message == f"backends.{name}: name {name!r} is not allowed"
    assert info.value.fix is not None


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_vip_names(name: str) -> None:
    exc = error((("vips", 1, "name"), name))
    assert exc.message == f"vips[1].name: {name!r} is not allowed"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_vip_backend_references(name: str) -> None:
    exc = error((("vips", 0, "backend"), name))
    assert exc.message == f"vips[0].backend: {name!r} is not allowed"


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
@pytest.mark.parametrize("field", [("bgp", "md5_secret"), ("stats", "auth", "password_secret")])
def test_bad_secret_references(field: KeyPath, name: str) -> None:
    exc = error((field, name))
    # Never the value: a field naming a secret may hold the secret itself.
    assert exc.message == f"{dotted(field)}: the value is not allowed"
    assert exc.fix is not None
    assert "secrets file" in exc.fix


def test_good_names_are_kept() -> None:
    data = rename_group(example_data(), "ceph-a", "c" + "e" * 31)
    data["vips"][0]["name"] = "s3_a-1"
    config = parse_node_config(data)
    assert config.backend("c" + "e" * 31).servers == config.backend("c" + "e" * 31).servers
    assert [group.name for group in config.backends] == ["ceph-b", "c" + "e" * 31]
    assert config.vips[0].name == "s3_a-1"


PATH_FIELDS = [
    ("install_path",),
    ("certificates", "pem"),
    ("backends", "ceph-b", "tls", "ca_file"),
    ("health", "maintenance_file"),
]
BAD_PATHS = [
    "/opt/my ober",
    "/opt/ober'",
    '/opt/"ober"',
    "/opt/$HOME",
    "/opt/ober;rm",
    "/opt/`id`",
    "/opt/{{x}}",
    "/opt/ober#x",
    "/opt/ober\\x",
    "relative/path",
    "~/ober",
    "",
]
DOTDOT_PATHS = ["/opt/../etc/shadow", "/opt/ober/..", "/..", "/opt/./ober", "/opt/ober/../"]


@pytest.mark.parametrize("value", BAD_PATHS)
@pytest.mark.parametrize("field", PATH_FIELDS)
def test_bad_paths(field: KeyPath, value: str) -> None:
    exc = error((field, value))
    assert exc.message == f"{dotted(field)}: {value!r} is not allowed"
    assert exc.fix is not None
    assert "absolute path" in exc.fix


@pytest.mark.parametrize("value", DOTDOT_PATHS)
@pytest.mark.parametrize("field", PATH_FIELDS)
def test_paths_with_dot_segments(field: KeyPath, value: str) -> None:
    exc = error((field, value))
    assert exc.message == f"{dotted(field)}: {value!r} has '.' or '..' in it"
    assert exc.fix is not None


def test_dots_inside_path_names_are_fine() -> None:
    config = parse((("certificates", "pem"), "/opt/ober/etc/certs/.s3..pem"))
    assert config.certificates.pem == "/opt/ober/etc/certs/.s3..pem"


@pytest.mark.parametrize("value", ["/health check", "/x'", '/x"y', "health", "/x;y", "/x#y", "/x$y", "/x{{y}}", ""])
def test_bad_check_paths(value: str) -> None:
    exc = error((("backends", "ceph-a", "check", "path"), value))
    assert exc.message == f"backends.ceph-a.check.path: {value!r} is not allowed"


def test_good_check_path() -> None:
    config = parse((("backends", "ceph-a", "check", "path"), "/swift/healthcheck?x=1"))
    assert config.backend("ceph-a").check.path == "/swift/healthcheck?x=1"


@pytest.mark.parametrize("user", ["ad'min", 'ad"min', "ad min", "a$b", "a:b", "a;b", "", "x" * 33])
def test_bad_stats_users(user: str) -> None:
    exc = error((("stats", "auth", "user"), user))
    assert exc.message == f"stats.auth.user: {user!r} is not allowed"


@pytest.mark.parametrize("name", ["node 01", "node;01", "node_01", "$(id)", "node01.", "10.0.0.300"])
def test_bad_node_names(name: str) -> None:
    exc = error((("name",), name))
    assert exc.message == f"name: {name!r} is neither a hostname nor an IPv4 address"


# '$' also matches before a final '\n', so every pattern must end in '\Z': YAML gives such values easily
# (`name: |` block scalars, or "x\n"), and they would reach templates.
TRAILING_NEWLINE = [
    pytest.param((("name",), "node01\n"), id="name"),
    pytest.param((("vips", 0, "name"), "s3-a\n"), id="vip-name"),
    pytest.param((("bgp", "md5_secret"), "bgp_md5\n"), id="md5-secret"),
    pytest.param((("stats", "auth", "password_secret"), "stats_password\n"), id="password-secret"),
    pytest.param((("stats", "auth", "user"), "admin\n"), id="stats-user"),
    pytest.param((("certificates", "pem"), "/opt/ober/etc/certs/s3.pem\n"), id="pem"),
    pytest.param((("backends", "ceph-a", "check", "path"), "/\n"), id="check-path"),
    pytest.param((("network", "interface"), "ober0\n"), id="interface"),
    pytest.param((("bgp", "drain", "community"), "65535:0\n"), id="community"),
]


@pytest.mark.parametrize("change", TRAILING_NEWLINE)
def test_trailing_newline_is_refused(change: Change) -> None:
    exc = error(change)
    assert exc.message.startswith(f"{dotted(change[0])}: ")


def test_backend_group_name_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_node_config(rename_group(example_data(), "ceph-a", "ceph\n"))
    assert info.value.message == "backends.ceph\n: name 'ceph\\n' is not allowed"


@pytest.mark.parametrize("path", [("stats", "port"), ("bgp", "local_as"), ("haproxy", "maxconn")])
def test_huge_integer_is_a_config_error(path: KeyPath) -> None:
    exc = error((path, 10**5000))
    assert exc.message == f"{dotted(path)}: a huge number is out of range"


@pytest.mark.parametrize("path", [("health", "interval"), ("bgp", "drain", "delay"), ("logs", "retention")])
def test_huge_integer_duration_is_a_config_error(path: KeyPath) -> None:
    exc = error((path, 10**5000))
    assert exc.message == f"{dotted(path)}: a huge number is not a duration"


# --- files ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("name: node01\nbgp:\n  local_as: 65001\n   bad: indent\n", 4, 7),
        ("name: node01\nvips: [a, b\n", 3, 1),
        ("a: b: c\n", 1, 5),
        ("\tname: x\n", 1, 1),
    ],
)
def test_load_config_malformed_yaml(tmp_path: Path, text: str, line: int, column: int) -> None:
    file = tmp_path / "ober.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.message.startswith(f"{file}:{line}:{column}: YAML syntax error: ")
    assert info.value.fix == "fix the YAML at that line"


def test_load_config_missing_file(tmp_path: Path) -> None:
    file = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.message == f"{file}: no such file"
    assert info.value.fix is not None
    assert "ober config" in info.value.fix


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_config(tmp_path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    file = tmp_path / "ober.yaml"
    file.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(file))}: cannot read"):
        load_config(file)


def test_load_config_empty_file(tmp_path: Path) -> None:
    file = tmp_path / "ober.yaml"
    file.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.message == f"{file}: name: required"


def test_load_config_prefixes_field_errors_with_the_file(tmp_path: Path) -> None:
    file = tmp_path / "ober.yaml"
    file.write_text(yaml.safe_dump(changed((("vips", 1, "backend"), "ceph-x"))), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.message == f"{file}: vips[1].backend: no backend group named 'ceph-x'"
    assert info.value.fix == "use one of: ceph-a, ceph-b"


def test_load_config_reads_dumped_config(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    file = tmp_path / "ober.yaml"
    file.write_text(dump_config(config), encoding="utf-8")
    assert load_config(file) == config


def test_load_config_hostlist_broken_over_lines(tmp_path: Path) -> None:
    file = tmp_path / "ober.yaml"
    text = _example_text().replace("neighbors: 100.64.0.[1-2]", "neighbors: |\n    100.64.[0-1].[1,\n    2]")
    assert text != _example_text()
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.message.startswith(f"{file}: bgp.neighbors: bad hostlist ")
    assert info.value.message.endswith(": space inside brackets")


def test_read_yaml_uses_safe_loader(tmp_path: Path) -> None:
    file = tmp_path / "evil.yaml"
    file.write_text("x: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        read_yaml(file)


@pytest.mark.parametrize("old", ["port: 8404", "interval: 1s"])
def test_load_config_huge_number(tmp_path: Path, old: str) -> None:
    file = tmp_path / "ober.yaml"
    file.write_text(_example_text().replace(old, old.split(":")[0] + ": 1" + "0" * 5000), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.message == f"{file}: a number in the file is far too large"


# --- schema.Fields directly -------------------------------------------------------------------------------------


def test_fields_done_with_nothing_read() -> None:
    fields = Fields({"a": 1}, "sec")
    with pytest.raises(ConfigError) as info:
        fields.done()
    assert info.value.message == "sec.a: unknown key"
    assert info.value.fix == "remove it"


def test_fields_null_is_missing() -> None:
    fields = Fields({"a": None}, "sec")
    assert fields.integer("a", 5) == 5
    with pytest.raises(ConfigError) as info:
        fields.integer("a")
    assert info.value.message == "sec.a: required"


# --- properties -------------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_NAME_TEXT = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[a-z][a-z0-9_-]{0,40}\Z"),
    st.text(alphabet="az09_-. \n\t;'\"{}$A", max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(_NAME_TEXT)
@example("ceph\n")
@example("ceph-c")
def test_property_backend_group_name(name: str) -> None:
    data = example_data()
    data["backends"][name] = data["backends"].pop("ceph-b")
    data["vips"][1]["backend"] = name
    try:
        config = parse_node_config(data)
    except ConfigError as exc:
        assert exc.message.startswith(("backends", "vips[1]"))
        return
    assert _NAME_RE.fullmatch(name)
    assert config.backend(name).name == name


@settings(max_examples=200, deadline=None)
@given(_NAME_TEXT)
@example("ceph\n")
@example("ceph-c")
def test_property_vip_name(name: str) -> None:
    try:
        config = parse((("vips", 0, "name"), name))
    except ConfigError as exc:
        assert exc.message.startswith("vips[0].name: ")
        return
    assert _NAME_RE.fullmatch(config.vips[0].name)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), children, max_size=4)
    ),
    max_leaves=10,
)

KNOWN_PATHS: list[KeyPath] = [
    ("name",),
    ("install_path",),
    ("kernel_profile",),
    ("bgp",),
    ("bgp", "local_as"),
    ("bgp", "peer_as"),
    ("bgp", "router_id"),
    ("bgp", "local_address"),
    ("bgp", "neighbors"),
    ("bgp", "hold_time"),
    ("bgp", "md5_secret"),
    ("bgp", "graceful_restart"),
    ("bgp", "drain"),
    ("bgp", "drain", "community"),
    ("bgp", "drain", "med"),
    ("bgp", "drain", "delay"),
    ("vips",),
    ("vips", 0),
    ("vips", 0, "name"),
    ("vips", 0, "address"),
    ("vips", 1, "backend"),
    ("backends",),
    ("backends", "ceph-a"),
    ("backends", "ceph-a", "servers"),
    ("backends", "ceph-b", "port"),
    ("backends", "ceph-a", "check"),
    ("backends", "ceph-a", "check", "method"),
    ("backends", "ceph-a", "check", "path"),
    ("backends", "ceph-a", "check", "expect_status"),
    ("backends", "ceph-a", "check", "interval"),
    ("backends", "ceph-a", "check", "rise"),
    ("backends", "ceph-a", "check", "fall"),
    ("backends", "ceph-b", "tls"),
    ("backends", "ceph-b", "tls", "enabled"),
    ("backends", "ceph-b", "tls", "verify"),
    ("backends", "ceph-b", "tls", "ca_file"),
    ("certificates",),
    ("certificates", "pem"),
    ("certificates", "http"),
    ("certificates", "acme"),
    ("certificates", "acme", "email"),
    ("certificates", "acme", "directory"),
    ("certificates", "acme", "domains"),
    ("health",),
    ("health", "interval"),
    ("health", "rise"),
    ("health", "fall"),
    ("health", "timeout"),
    ("health", "drain_timeout"),
    ("health", "maintenance_file"),
    ("stats",),
    ("stats", "bind"),
    ("stats", "port"),
    ("stats", "auth"),
    ("stats", "auth", "user"),
    ("stats", "auth", "password_secret"),
    ("whitelists",),
    ("whitelists", "routers"),
    ("whitelists", "frontend_http"),
    ("whitelists", "backend_http"),
    ("logs",),
    ("logs", "retention"),
    ("logs", "max_use_mb"),
    ("network",),
    ("network", "interface"),
    ("network", "manager"),
    ("haproxy",),
    ("haproxy", "version"),
    ("haproxy", "maxconn"),
    ("haproxy", "hard_stop_after"),
    ("haproxy", "timeouts"),
    ("haproxy", "timeouts", "connect"),
    ("haproxy", "timeouts", "client"),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KNOWN_PATHS), _JSON), min_size=1, max_size=3))
def test_property_random_values_only_raise_config_error(changes: list[tuple[KeyPath, object]]) -> None:
    data = example_data()
    for path, value in changes:
        apply(data, path, value)
    try:
        config = parse_node_config(data)
    except ConfigError as exc:
        assert exc.message
        return
    # Whatever was accepted must survive being written out and read back.
    assert parse_node_config(yaml.safe_load(dump_config(config))) == config


def test_dataclasses_are_frozen() -> None:
    config = parse_node_config(minimal_data())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]


def test_server_with_empty_port_is_refused() -> None:
    exc = error((("backends", "ceph-a", "servers"), "rgw1:"))
    assert exc.message == "backends.ceph-a.servers: bad port in 'rgw1:'"
