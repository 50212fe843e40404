"""DNS SRV discovery: the parser on real DNS packets built here, the lookup against a DNS server on 127.0.0.1."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pytest

from ober import dns_srv
from ober.config import parse_node_config
from ober.discovery import from_config
from ober.dns_srv import DnsError, SrvRecord, build_query, lookup_srv, nameservers, parse_answer
from ober.errors import ConfigError
from tests.dns_server import answering, dns_server, response

NAME = "_rgw._tcp.example.org"
RECORDS = [
    (20, 0, 7480, "rgw-backup.example.org"),
    (10, 5, 7480, "rgw2.example.org"),
    (10, 50, 8080, "rgw1.example.org"),
    (10, 5, 7480, "rgw.other.net"),
]


def test_an_answer_with_compressed_names_gives_every_srv_record_and_skips_other_types() -> None:
    packet = response(build_query(NAME, 0x1234), RECORDS)
    assert b"\xc0\x0c" in packet, "the owner names are pointers to the question"
    answer = parse_answer(packet)
    assert answer.ident == 0x1234 and answer.rcode == 0 and not answer.truncated
    assert answer.question == (NAME, 33, 1)
    assert sorted(answer.records) == sorted(SrvRecord(p, w, port, t) for p, w, port, t in RECORDS)


def test_a_target_of_dot_means_no_service_and_is_left_out() -> None:
    packet = response(build_query(NAME, 1), [(0, 0, 0, "."), (1, 1, 7480, "rgw1.example.org")])
    assert [r.target for r in parse_answer(packet).records] == ["rgw1.example.org"]


def test_every_truncation_of_an_answer_is_a_dns_error_never_a_partial_list() -> None:
    packet = response(build_query(NAME, 7), RECORDS, extra_a=False)
    for size in range(len(packet)):
        with pytest.raises(DnsError):
            parse_answer(packet[:size])


def test_a_pointer_loop_and_a_query_instead_of_an_answer_are_refused() -> None:
    query = build_query(NAME, 9)
    with pytest.raises(DnsError, match="a query, not a response"):
        parse_answer(query)
    header = struct.pack("!HHHHHH", 9, 0x8180, 1, 0, 0, 0)
    looping = header + struct.pack("!H", 0xC000 | 12) + struct.pack("!HH", 33, 1)
    with pytest.raises(DnsError, match="loop"):
        parse_answer(looping)


@pytest.mark.parametrize("name", ["", "a..b", "x" * 64 + ".org", ".".join(["abcdefghi"] * 30)])
def test_a_name_dns_cannot_carry_is_refused_before_asking(name: str) -> None:
    with pytest.raises(DnsError):
        build_query(name, 1)


def test_resolv_conf_gives_its_ipv4_nameservers_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# a comment\nsearch example.org\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 198.18.0.2\n")
    assert nameservers(conf) == ["127.0.0.53", "198.18.0.2"]
    assert nameservers(tmp_path / "missing") == []
    conf.write_text("search example.org\n")
    with pytest.raises(DnsError, match="no IPv4 nameserver") as err:
        lookup_srv(NAME, None, resolv_conf=conf)
    assert err.value.fix is not None and "discovery.resolver" in err.value.fix


def test_a_lookup_asks_the_server_and_orders_by_priority_then_weight() -> None:
    with dns_server(answering(lambda: RECORDS)) as server:
        found = lookup_srv(NAME, server.resolver)
    assert server.queries == [NAME]
    assert [(r.target, r.port) for r in found] == [
        ("rgw1.example.org", 8080),
        ("rgw.other.net", 7480),
        ("rgw2.example.org", 7480),
        ("rgw-backup.example.org", 7480),
    ]


def test_resolv_conf_s_first_nameserver_is_asked_when_no_resolver_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with dns_server(answering(lambda: RECORDS)) as server:
        host, port = server.address.split(":")
        conf = tmp_path / "resolv.conf"
        conf.write_text(f"nameserver {host}\nnameserver 198.18.0.2\n")
        # resolv.conf names no port: ours is not 53, so the test moves the default.
        monkeypatch.setattr(dns_srv, "DNS_PORT", int(port))
        assert len(lookup_srv(NAME, None, resolv_conf=conf)) == 4
    assert server.queries == [NAME]


def test_a_stray_packet_with_another_id_is_ignored_and_the_real_answer_taken() -> None:
    def spoofing(query: bytes) -> list[bytes]:
        (ident,) = struct.unpack_from("!H", query)
        return [
            response(query, [(0, 0, 80, "evil.example.net")], ident=(ident + 1) % 65536),
            b"\x00garbage",
            response(query, RECORDS[:1]),
        ]

    with dns_server(spoofing) as server:
        found = lookup_srv(NAME, server.resolver)
    assert [r.target for r in found] == ["rgw-backup.example.org"]


def test_a_truncated_answer_is_asked_again_over_tcp() -> None:
    with dns_server(lambda q: [response(q, [], truncated=True)], answering(lambda: RECORDS)) as server:
        found = lookup_srv(NAME, server.resolver)
    assert server.queries == [NAME, f"tcp:{NAME}"]
    assert len(found) == 4


@pytest.mark.parametrize(("rcode", "said"), [(3, "NXDOMAIN"), (2, "SERVFAIL"), (5, "REFUSED")])
def test_an_error_answer_is_a_clear_error(rcode: int, said: str) -> None:
    with dns_server(lambda q: [response(q, [], rcode=rcode)]) as server, pytest.raises(DnsError) as err:
        lookup_srv(NAME, server.resolver)
    assert said in err.value.message and NAME in err.value.message


def test_a_silent_server_is_a_timeout_error_in_time() -> None:
    with dns_server(lambda q: []) as server:
        start = time.monotonic()
        with pytest.raises(DnsError, match="did not answer"):
            lookup_srv(NAME, server.resolver, timeout=0.3)
    assert time.monotonic() - start < 2.0


def dns_group(node_data: dict[str, Any], resolver: str) -> Any:
    node_data["backends"]["ceph-a"]["discovery"] = {"source": "dns-srv", "name": NAME, "resolver": resolver}
    return parse_node_config(node_data).backend("ceph-a")


def test_dns_srv_discovery_lists_each_target_at_its_port(node_data: dict[str, Any]) -> None:
    with dns_server(answering(lambda: RECORDS)) as server:
        group = dns_group(node_data, server.resolver)
        servers = from_config(group)
    assert [f"{s.host}:{s.port}" for s in servers] == [
        "rgw1.example.org:8080",
        "rgw.other.net:7480",
        "rgw2.example.org:7480",
        "rgw-backup.example.org:7480",
    ]


def test_dns_srv_with_no_record_is_refused_not_obeyed(node_data: dict[str, Any]) -> None:
    with dns_server(answering(lambda: [])) as server:
        group = dns_group(node_data, server.resolver)
        with pytest.raises(ConfigError, match="lists no server for group ceph-a: refusing"):
            from_config(group)


def test_dns_srv_with_a_target_ober_cannot_use_names_it(node_data: dict[str, Any]) -> None:
    with dns_server(answering(lambda: [(1, 1, 7480, "rgw_1.example.org")])) as server:
        group = dns_group(node_data, server.resolver)
        with pytest.raises(ConfigError, match=f"SRV {NAME}: target 'rgw_1.example.org'"):
            from_config(group)
