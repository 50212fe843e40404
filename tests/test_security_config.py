# ruff: noqa: S104
# (0.0.0.0 here is test data: the address ober must refuse or judge, nothing binds it)
"""Security defaults a user sees in the config and inventory (issue 10, items 2, 4, 5 and 6's config parts).

The stats page is never open by default; inventories with clashing nodes, special VIPs or repeated YAML keys are
refused; a secret typed where a secret's *name* belongs is never echoed; ``files:`` and ``graceful_restart`` are
bounded. Each is seen the way a user meets it: an error's text, a rendered file, ``ober doctor``'s check, ``fleet
status``'s JSON.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.checks.config import check_stats_exposure
from ober.cli import main
from ober.config import MAX_GRACEFUL_RESTART, load_config, parse_node_config
from ober.errors import ConfigError, OberError, SecretsError
from ober.inventory import load_inventory, resolve_inventory
from ober.remote import fleetops
from ober.remote.push import node_files
from ober.remote.routerconfig import router_config
from ober.render import render_node
from ober.secrets import load_secrets
from tests.conftest import DATA, REPO, SECRETS

EXAMPLE = REPO / "inventory" / "example.yaml"
HAPROXY_CFG = "/opt/ober/etc/haproxy.cfg"


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def node() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DATA / "node.yaml").read_text())
    return data


def refused(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_node_config(data)
    return info.value


def stats_bind_line(data: dict[str, Any]) -> str:
    text = render_node(parse_node_config(data), SECRETS).file(HAPROXY_CFG).content
    section = text.split("frontend stats\n", 1)[1]
    return next(line.strip() for line in section.splitlines() if line.strip().startswith("bind "))


# --- item 2: the stats page -----------------------------------------------------------------------------------------


def unguarded() -> dict[str, Any]:
    data = node()
    data.pop("whitelists")
    data["stats"] = {}
    return data


def test_a_page_nothing_guards_listens_on_loopback_only() -> None:
    assert stats_bind_line(unguarded()) == "bind 127.0.0.1:8404"


def test_a_guarded_page_listens_on_the_nodes_own_address_never_on_every_address() -> None:
    data = unguarded()
    data["stats"] = {"auth": {"user": "admin", "password_secret": "stats_password"}, "tls": True}
    # The node's BGP address (its router id here), with TLS: the login's password is never in clear.
    assert stats_bind_line(data) == "bind 100.64.0.11:8404 ssl crt /opt/ober/etc/certs/s3.pem alpn http/1.1"
    data = unguarded()
    data["whitelists"] = {"backend_http": "100.64.0.0/16"}
    assert stats_bind_line(data) == "bind 100.64.0.11:8404"


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        ({"bind": "100.64.0.11"}, "anyone who reaches 100.64.0.11:8404 reads /stats and /metrics"),
        ({"bind": "0.0.0.0"}, "stats.bind 0.0.0.0 listens on the public VIPs too"),
        (
            {"bind": "0.0.0.0", "auth": {"password_secret": "stats_password"}},
            "stats.bind 0.0.0.0 listens on the public VIPs too",
        ),
    ],
)
def test_an_open_stats_page_is_refused_with_the_ways_to_guard_it(stats: dict[str, Any], message: str) -> None:
    data = unguarded()
    data["stats"] = stats
    error = refused(data)
    assert error.message.startswith("stats: ") and message in error.message
    assert error.fix is not None and "whitelists.backend_http" in error.fix and "stats.allow_open" in error.fix


def test_an_open_page_is_accepted_only_when_asked_for_and_doctor_warns() -> None:
    data = unguarded()
    data["stats"] = {"bind": "100.64.0.11", "allow_open": True}
    config = parse_node_config(data)
    [check] = check_stats_exposure(config)
    assert check.status == "warn" and check.detail.startswith("open: anyone who reaches 100.64.0.11:8404")


def test_stats_never_on_a_vip() -> None:
    data = node()
    data["stats"]["bind"] = data["vips"][0]["address"]
    error = refused(data)
    assert error.message == f"stats.bind: {data['vips'][0]['address']} is a VIP: the stats page would face the clients"


def test_doctor_warns_of_a_password_over_plain_http_and_is_quiet_with_tls() -> None:
    data = node()  # a login and an allow-list on 0.0.0.0, no TLS
    [check] = check_stats_exposure(parse_node_config(data))
    assert check.status == "warn" and "password crosses plain HTTP on 0.0.0.0:8404" in check.detail
    data["stats"]["tls"] = True
    [check] = check_stats_exposure(parse_node_config(data))
    assert check.status == "ok"
    assert check_stats_exposure(parse_node_config(unguarded()))[0].detail == "127.0.0.1:8404: loopback only"


def test_fleet_status_warns_per_node() -> None:
    data = example()
    data["config"]["stats"].pop("tls")
    inventory = resolve_inventory(data)
    assert fleetops.warnings(inventory.nodes[0]) == [
        "stats page: the stats login's password crosses plain HTTP on 198.51.100.11:8404 (set stats.tls: true)"
    ]
    assert fleetops.warnings(load_inventory(EXAMPLE).nodes[0]) == []


# --- item 4: checks across nodes, special addresses, repeated keys ---------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"node04": {"address": "198.51.100.11"}}, "node node04 has the same address as node node01 (198.51.100.11)"),
        (
            {"node04": {"router_id": "198.51.100.12"}},
            "node node04 has the same router_id as node node02 (198.51.100.12)",
        ),
        (
            {"node04": {"local_address": "198.51.100.13"}},
            "node node04 has the same BGP local_address as node node03 (198.51.100.13)",
        ),
    ],
)
def test_two_nodes_with_one_address_or_router_id_are_refused(change: dict[str, Any], message: str) -> None:
    data = example()
    data["hosts"]["node04"].update(change["node04"])
    with pytest.raises(ConfigError) as info:
        resolve_inventory(data, "site.yaml")
    assert info.value.message == f"site.yaml: {message}"
    assert info.value.fix is not None and "its own address" in info.value.fix


def test_a_node_on_another_nodes_vip_is_refused() -> None:
    data = example()
    data["hosts"]["node04"]["address"] = "100.64.100.10"
    data["hosts"]["node04"]["config"]["vips"] = [{"name": "s3-b", "address": "100.64.100.20", "backend": "ceph-b"}]
    with pytest.raises(ConfigError, match=r"node node04's address 100\.64\.100\.10 is a VIP of node node01"):
        resolve_inventory(data, "site.yaml")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0", "is 'this network' (0.0.0.0/8)"),
        ("0.1.2.3", "is 'this network' (0.0.0.0/8)"),
        ("224.0.0.1", "is a multicast address"),
        ("239.255.255.250", "is a multicast address"),
        ("255.255.255.255", "is reserved (240.0.0.0/4) or the broadcast address"),
        ("240.0.0.1", "is reserved"),
        ("127.0.0.1", "is a loopback address"),
        ("169.254.1.1", "is link-local"),
    ],
)
def test_special_vips_are_refused(address: str, why: str) -> None:
    data = node()
    data["vips"][1]["address"] = address
    error = refused(data)
    assert error.message.startswith(f"vips[1].address: {address} {why}")


@pytest.mark.parametrize(
    ("path", "address"),
    [(("bgp", "router_id"), "0.0.0.0"), (("bgp", "local_address"), "224.0.0.5"), (("bgp", "neighbors"), "224.0.0.5")],
)
def test_special_bgp_addresses_are_refused(path: tuple[str, str], address: str) -> None:
    data = node()
    data[path[0]][path[1]] = address
    assert refused(data).message.startswith(f"{'.'.join(path)}: {address} is ")


def test_a_repeated_key_in_an_inventory_is_refused_with_its_path_and_lines(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("  min_available: 1 ", "  min_available: 3\n  min_available: 1 ", 1)
    site = tmp_path / "site.yaml"
    site.write_text(text)
    line = text.splitlines().index("  min_available: 1        # never let fewer nodes than this announce the VIPs")
    with pytest.raises(ConfigError) as info:
        load_inventory(site)
    assert info.value.message == (
        f"{site}: line {line + 1}, column 3: duplicate key fleet.min_available (first on line {line})"
    )


def test_a_repeated_key_deep_in_a_list_is_named_by_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (DATA / "node.yaml").read_text().replace("backend: ceph-a", "backend: ceph-a, backend: ceph-b", 1)
    config = tmp_path / "ober.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=r"duplicate key vips\[0\]\.backend"):
        load_config(config)
    # On the command line: one line, exit 1, no traceback.
    assert main(["--json", "render", "-c", str(config), "-o", str(tmp_path / "out")]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert "duplicate key vips[0].backend" in error and "Traceback" not in error


def test_equal_looking_keys_of_different_types_are_not_duplicates() -> None:
    from ober.schema import load_yaml

    assert load_yaml("1: a\n'1': b\n") == {1: "a", "1": "b"}
    assert load_yaml("base: &b {x: 1}\nother: *b\n") == {"base": {"x": 1}, "other": {"x": 1}}


def test_a_secret_name_given_twice_is_refused_without_its_values(tmp_path: Path) -> None:
    login = tmp_path / "login"
    login.write_text("bgp_md5: first-Value1\nbgp_md5: second-Value2\n")
    login.chmod(0o600)
    with pytest.raises(SecretsError) as info:
        load_secrets(login)
    assert "duplicate key bgp_md5" in info.value.message
    assert "Value1" not in str(info.value) and "Value2" not in str(info.value)


# --- item 5: a secret where its name belongs is never printed -------------------------------------------------------

SECRET_KEYS = [("bgp", "md5_secret"), ("stats", "auth", "password_secret")]
# A pasted password that is no valid name (refused as a name) and one that is (looked up as a missing secret).
PASTED = ["Tr0ub4dor&3x", "correcthorsebatterystaple"]


def put(data: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


@pytest.mark.parametrize("pasted", PASTED)
@pytest.mark.parametrize("path", SECRET_KEYS)
def test_a_pasted_secret_is_never_echoed_by_config_render_or_inventory(
    path: tuple[str, ...], pasted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = node()
    put(data, path, pasted)
    seen: list[str] = []
    try:
        render_node(parse_node_config(data), SECRETS)
    except OberError as exc:
        seen.append(str(exc))
    inventory = example()
    put(inventory["config"], path, pasted)
    try:
        resolved = resolve_inventory(copy.deepcopy(inventory), "site.yaml")
        node_files(resolved.nodes[0].config, SECRETS)  # what fleet push and bootstrap send the node
        pytest.fail("a config naming a secret the file lacks was accepted")
    except OberError as exc:
        seen.append(str(exc))
    if path == ("bgp", "md5_secret"):
        try:
            router_config(resolve_inventory(inventory, "site.yaml"), "bird", secrets=SECRETS)
            pytest.fail("router-config --with-secrets printed a password it does not have")
        except OberError as exc:
            seen.append(str(exc))
    # The CLI, with --json (errors are a document there) and from a file.
    config = tmp_path / "ober.yaml"
    config.write_text(yaml.safe_dump(data))
    secrets = tmp_path / "login"
    secrets.write_text(yaml.safe_dump(SECRETS))
    secrets.chmod(0o600)
    assert main(["--json", "render", "-c", str(config), "--secrets", str(secrets), "-o", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    seen.append(captured.out + captured.err)
    assert len(seen) == (4 if path == ("bgp", "md5_secret") else 3)
    for text in seen:
        assert pasted not in text, text
        assert ".".join(path) in text, text


def test_set_never_echoes_a_value(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ober.configure import parse_assignment

    with pytest.raises(ConfigError) as info:
        parse_assignment("bgp.md5 secret=Tr0ub4dor&3x")
    assert "Tr0ub4dor" not in str(info.value) and "'bgp.md5 secret'" in info.value.message
    with pytest.raises(ConfigError) as info:
        parse_assignment("Tr0ub4dor&3x")
    assert "Tr0ub4dor" not in str(info.value)


# --- item 6: files:, graceful_restart -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["0777", "0666", "0664", "0620", 0o606])
def test_files_others_may_write_are_refused(mode: object) -> None:
    data = example()
    data["files"] = [{"source": "s3.pem", "dest": "/opt/ober/etc/certs/s3.pem", "mode": mode}]
    with pytest.raises(ConfigError, match=r"files\[0\]\.mode: 0\d\d\d lets other users write the file"):
        resolve_inventory(data, "site.yaml")


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("/etc/sudoers", "is not a place for certificates"),
        ("/etc/systemd/system/evil.service", "is not a place for certificates"),
        ("/etc/systemd/system/ober-http.service", "ober writes /etc/systemd/system/ober-http.service itself"),
        ("/root/.ssh/authorized_keys", "is not a place for certificates"),
        ("/opt/ober/etc/haproxy.cfg", "ober writes /opt/ober/etc/haproxy.cfg itself"),
        ("/opt/ober/etc/login", "ober writes /opt/ober/etc/login itself"),
        ("/opt/ober/venv/bin/python", "ober writes /opt/ober/venv/bin/python itself"),
        ("/opt/ober/etc/whitelist/routers.lst", "ober writes /opt/ober/etc/whitelist/routers.lst itself"),
    ],
)
def test_files_outside_the_certificate_places_or_on_obers_own_are_refused(dest: str, message: str) -> None:
    data = example()
    data["files"] = [{"source": "x.pem", "dest": dest}]
    with pytest.raises(ConfigError) as info:
        resolve_inventory(data, "site.yaml")
    assert info.value.message.startswith("site.yaml: files[0].dest: ") and message in info.value.message


@pytest.mark.parametrize(
    "dest", ["/opt/ober/etc/certs/s3.pem", "/opt/ober/etc/certs/backend-ca.pem", "/etc/ssl/private/s3.pem"]
)
def test_certificates_may_go_where_they_belong(dest: str) -> None:
    data = example()
    data["files"] = [{"source": "x.pem", "dest": dest, "mode": "0644"}]
    assert [spec.dest for spec in resolve_inventory(data, "site.yaml").files] == [dest]


def test_graceful_restart_is_capped_with_a_reason() -> None:
    data = node()
    data["bgp"]["graceful_restart"] = MAX_GRACEFUL_RESTART
    assert parse_node_config(data).bgp.graceful_restart == 600
    data["bgp"]["graceful_restart"] = 4095  # RFC 4724 allows it; a dead node would be held over an hour
    error = refused(data)
    assert (
        error.message == "bgp.graceful_restart: 4095 is out of range" and error.fix == "use a number between 0 and 600"
    )
