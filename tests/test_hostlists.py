"""Tests for ober.hostlists: Slurm-style hostlist expansion, folding and host validation."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ober.errors import ConfigError
from ober.hostlists import MAX_HOSTS, check_host, collect, expand, is_hostname, is_ipv4

WHERE = "bgp.neighbors"

# --- expand: good hostlists -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node[01-04]", ["node01", "node02", "node03", "node04"]),
        ("10.1.0.[11-14]", ["10.1.0.11", "10.1.0.12", "10.1.0.13", "10.1.0.14"]),
        ("node01", ["node01"]),
        ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
        ("node[08-11]", ["node08", "node09", "node10", "node11"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("10.[1-2].0.[5-6]", ["10.1.0.5", "10.1.0.6", "10.2.0.5", "10.2.0.6"]),
        ("a[1-2],b[1-2]", ["a1", "a2", "b1", "b2"]),
        ("node01.example.com", ["node01.example.com"]),
        ("UPPER-case01", ["UPPER-case01"]),
    ],
)
def test_expand_ranges(text: str, expected: list[str]) -> None:
    assert expand(text, WHERE) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # python-hostlist alone would give ' n2' here; names must never carry spaces.
        ("n1, n2  n3", ["n1", "n2", "n3"]),
        ("n1 n2\tn3\nn4", ["n1", "n2", "n3", "n4"]),
        ("  n1,,n2 , ", ["n1", "n2"]),
        ("node[01-02] node05,node[07-08]", ["node01", "node02", "node05", "node07", "node08"]),
        # A comma inside brackets separates range parts, not hosts.
        ("node[1,3] x", ["node1", "node3", "x"]),
    ],
)
def test_expand_separators(text: str, expected: list[str]) -> None:
    assert expand(text, WHERE) == expected


def test_expand_list_of_strings_keeps_order() -> None:
    assert expand(["b[1-2]", "a1 a2", "10.0.0.1"], WHERE) == ["b1", "b2", "a1", "a2", "10.0.0.1"]


def test_expand_empty_inputs() -> None:
    assert expand("", WHERE) == []
    assert expand("  ,  ", WHERE) == []
    assert expand([], WHERE) == []


def test_expand_accepts_any_iterable() -> None:
    assert expand((name for name in ["n1", "n[2-3]"]), WHERE) == ["n1", "n2", "n3"]


def test_expand_without_check_lets_host_port_through() -> None:
    assert expand("rgw[1-2]:7480", WHERE, check=False) == ["rgw1:7480", "rgw2:7480"]
    assert expand(["10.0.0.[1-2]:8080", "rgw-b1:80"], WHERE, check=False) == [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "rgw-b1:80",
    ]


def test_expand_with_check_refuses_host_port() -> None:
    with pytest.raises(ConfigError, match=re.escape(WHERE)) as info:
        expand("rgw1:7480", WHERE)
    assert "rgw1:7480" in info.value.message


def test_expand_without_check_still_refuses_duplicates() -> None:
    with pytest.raises(ConfigError, match="listed twice"):
        expand("rgw1:80 rgw1:80", WHERE, check=False)


# --- expand: bad hostlists --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("node[01-04", ["unbalanced brackets"]),
        ("node01-04]", ["unbalanced brackets"]),
        ("node]01[", ["unbalanced brackets"]),
        ("a[[1-2]]", ["bad hostlist"]),
        ("node[04-01]", ["bad hostlist", "start > stop"]),
        ("node[]", ["bad hostlist"]),
        ("node[a-c]", ["bad hostlist"]),
    ],
)
def test_expand_refuses_malformed_ranges(text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        expand(text, WHERE)
    assert info.value.message.startswith(f"{WHERE}: ")
    for word in words:
        assert word in info.value.message
    assert info.value.fix


@pytest.mark.parametrize(
    "text",
    [
        "a;b",
        "$(rm)",
        "`id`",
        "'node01'",
        '"node01"',
        "node_01",
        "node01.",
        "-node01",
        "node01-",
        "a..b",
        "10.1.0.300",
        "10.1.0",
        "999.1.1.1",
        "n{1,2}",
        "nöde",
        "a" * 64,
        ".".join(["a" * 60] * 5),  # 304 characters: longer than a DNS name may be
    ],
)
def test_expand_refuses_invalid_names(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        expand(text, WHERE)
    assert WHERE in info.value.message
    assert "neither a hostname nor an IPv4 address" in info.value.message


@pytest.mark.parametrize("item", [5, None, ["n1"], {"n1": 1}])
def test_expand_refuses_non_strings_in_list(item: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(WHERE)) as info:
        expand(["n1", item], WHERE)  # type: ignore[list-item]
    assert "expected a hostlist string" in info.value.message


@pytest.mark.parametrize("text", ["n1 n1", "n[1-3] n2", "10.0.0.1,10.0.0.[1-2]"])
def test_expand_refuses_duplicates(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        expand(text, WHERE)
    assert WHERE in info.value.message
    assert "listed twice" in info.value.message


def test_expand_refuses_duplicates_across_list_items() -> None:
    with pytest.raises(ConfigError, match=r"'n2' is listed twice"):
        expand(["n[1-2]", "n2"], WHERE)


def test_expand_size_cap() -> None:
    assert len(expand("n[1-10]", WHERE, max_hosts=10)) == 10
    with pytest.raises(ConfigError) as info:
        expand("n[1-11]", WHERE, max_hosts=10)
    assert info.value.message == f"{WHERE}: hostlist expands to more than 10 hosts"
    assert info.value.fix


def test_expand_size_cap_counts_all_list_items() -> None:
    with pytest.raises(ConfigError, match="more than 4 hosts"):
        expand(["a[1-3]", "b[1-2]"], WHERE, max_hosts=4)


def test_expand_default_size_cap() -> None:
    assert len(expand(f"n[1-{MAX_HOSTS}]", WHERE)) == MAX_HOSTS
    with pytest.raises(ConfigError, match=f"more than {MAX_HOSTS} hosts"):
        expand(f"n[1-{MAX_HOSTS + 1}]", WHERE)


def test_expand_default_where() -> None:
    with pytest.raises(ConfigError, match=r"^hostlist: "):
        expand("a;b")


# --- is_ipv4, is_hostname, check_host ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0.0.0.0", "10.1.0.11", "255.255.255.255", "198.51.100.1"])  # noqa: S104
def test_is_ipv4_true(text: str) -> None:
    assert is_ipv4(text)


@pytest.mark.parametrize(
    "text", ["10.1.0.300", "10.1.0", "10.1.0.1.5", "node01", "", "10.1.0.1/24", " 10.1.0.1", "::1", "10.1.0.1 "]
)
def test_is_ipv4_false(text: str) -> None:
    assert not is_ipv4(text)


@pytest.mark.parametrize(
    "text", ["node01", "a", "n-1", "node01.example.com", "0node", "x" * 63, ".".join(["a" * 63] * 3) + ".b"]
)
def test_is_hostname_true(text: str) -> None:
    assert is_hostname(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.1.0.300",  # a typo for an address, not a name
        "10.1.0.1",  # an address, not a name
        "123",
        "-a",
        "a-",
        "a_b",
        "a b",
        "a..b",
        ".a",
        "a.",
        "x" * 64,
        ".".join(["a" * 63] * 4),  # 255 characters
        "a;b",
    ],
)
def test_is_hostname_false(text: str) -> None:
    assert not is_hostname(text)


def test_check_host_returns_valid_names() -> None:
    assert check_host("node01", "name") == "node01"
    assert check_host("198.51.100.11", "name") == "198.51.100.11"


@pytest.mark.parametrize("text", ["a;b", "", "10.1.0.300", "rgw1:7480", "a b", "$(rm)"])
def test_check_host_refuses_with_where(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_host(text, "backends.ceph-a.servers")
    assert info.value.message.startswith("backends.ceph-a.servers: ")
    assert repr(text) in info.value.message
    assert info.value.fix is not None


@pytest.mark.parametrize("text", ["node01\n", "rgw-a\n", "10.1.0.1\n", "node01\r", "node01\x00"])
def test_check_host_refuses_trailing_control_characters(text: str) -> None:
    # A '$' anchor would let 'node01\n' through; it must not reach a template.
    assert not is_hostname(text)
    assert not is_ipv4(text)
    with pytest.raises(ConfigError, match=r"^name: "):
        check_host(text, "name")


@pytest.mark.parametrize("text", ["[1-2][\n]", "10.0.[1-2].[1,\n2]", "rgw[1-2]b[\n]", "node[1, 3]", "n[1-2\t]"])
def test_expand_refuses_whitespace_inside_brackets(text: str) -> None:
    # A newline there once sent python-hostlist into endless recursion; Slurm allows no space there either.
    with pytest.raises(ConfigError) as info:
        expand(text, WHERE)
    assert info.value.message == f"{WHERE}: bad hostlist {text!r}: space inside brackets"
    assert info.value.fix is not None


@pytest.mark.parametrize("text", ["rgw[3,\n4]", "[\n]", "a[\n]"])
def test_expand_newline_inside_a_single_range_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^bgp\.neighbors: bad hostlist"):
        expand(text, WHERE)


# --- collect ----------------------------------------------------------------------------------------------------


def test_collect_folds_ranges() -> None:
    assert collect(["node01", "node02", "node03", "node04"]) == "node[01-04]"
    assert collect(["10.1.0.11", "10.1.0.12", "10.1.0.13"]) == "10.1.0.[11-13]"
    assert collect(["n1"]) == "n1"


def test_collect_then_expand_round_trips() -> None:
    names = ["node01", "node02", "node05", "rgw-a", "10.0.0.1", "10.0.0.2"]
    assert sorted(expand(collect(names), WHERE)) == sorted(names)


# --- properties -------------------------------------------------------------------------------------------------

_LABELS = st.from_regex(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?\Z")
_HOSTNAMES = st.lists(_LABELS, min_size=1, max_size=3).map(".".join).filter(is_hostname)
_ADDRESSES = st.ip_addresses(v=4).map(str)
_SAFE = re.compile(r"[A-Za-z0-9.-]+")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_HOSTNAMES, _ADDRESSES), min_size=1, max_size=20, unique=True))
def test_property_collect_expand_round_trip(names: list[str]) -> None:
    expanded = expand(collect(names), WHERE)
    assert sorted(expanded) == sorted(names)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
@example("node[01-04]")
@example("a[1-2")
@example("[1-2]")
@example("n[9-1]")
@example("a[[1]]")
@example("x[\u0661-\u0662]")  # Arabic-Indic digits
@example("n1\x1cn2")  # a Unicode separator that str.isspace() accepts
@example("[1-2][\n]")  # once a RecursionError inside python-hostlist
def test_property_expand_only_valid_names_or_config_error(text: str) -> None:
    try:
        names = expand(text, "fuzz", max_hosts=64)
    except ConfigError as exc:
        assert "fuzz" in exc.message
        return
    for name in names:
        assert is_ipv4(name) or is_hostname(name)
        assert _SAFE.fullmatch(name), name
    assert len(names) == len(set(names))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab01-9.[],: \t\n;$'\"x"), max_size=30))
def test_property_expand_hostlist_alphabet_names_are_safe(text: str) -> None:
    # The same property, with an alphabet dense in hostlist syntax so ranges and separators are exercised.
    try:
        names = expand(text, "fuzz", max_hosts=1000)
    except ConfigError as exc:
        assert "fuzz" in exc.message
        return
    for name in names:
        assert _SAFE.fullmatch(name), name
        assert is_ipv4(name) or is_hostname(name)
