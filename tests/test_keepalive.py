"""``backends.<group>.reuse``: what it renders, how it is validated, and ``ober doctor``'s stall probe and verdicts.

The probe runs against a small HTTP server on loopback that answers like radosgw without tcp_nodelay seen from a
proxy (the body some 60 ms after the headers on a reused connection); the real radosgw and HAProxy are in
``tests/test_keepalive_lab.py``.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ober.checks.keepalive import check_keepalive, verdict
from ober.config import NodeConfig, dump_config, load_config, parse_node_config
from ober.errors import ConfigError
from ober.keepalive import STALL_COUNT, STALL_MS, Stalls, measure_stalls
from ober.render import render_node
from tests.conftest import SECRETS

HAPROXY_CFG = "/opt/ober/etc/haproxy.cfg"
BODY = b"<ListAllMyBucketsResult/>"


def _backend(config: NodeConfig, group: str) -> str:
    """The rendered ``backend be_<group>`` section."""
    text = render_node(config, SECRETS).file(HAPROXY_CFG).content
    match = re.search(rf"^backend be_{group}\n(.*?)(?=^\S)", text, re.M | re.S)
    assert match, text
    return match.group(1)


def _with_reuse(node_data: dict[str, Any], reuse: str | None, servers: Any = None) -> dict[str, Any]:
    """The example node with group ceph-a's ``reuse`` (and ``servers``) changed."""
    group = node_data["backends"]["ceph-a"]
    if reuse is not None:
        group["reuse"] = reuse
    if servers is not None:
        group["servers"] = servers
    return node_data


@pytest.mark.parametrize("reuse", [None, "auto"])
def test_auto_is_the_default_and_closes_only_while_answers_stall(node_data: dict[str, Any], reuse: str | None) -> None:
    config = parse_node_config(_with_reuse(node_data, reuse))
    assert config.backend("ceph-a").reuse == "auto"
    backend = _backend(config, "ceph-a")
    assert "http-reuse safe" in backend
    assert "option http-server-close" not in backend
    assert f"http-request set-header Connection close if {{ sc2_gpc0_rate ge {STALL_COUNT} }}" in backend
    assert "http-response wait-for-body time 900s at-least 1" in backend
    assert f"ge {STALL_MS} }}" in backend


def test_always_keeps_connections_alive_untimed(node_data: dict[str, Any]) -> None:
    backend = _backend(parse_node_config(_with_reuse(node_data, "always")), "ceph-a")
    assert "http-reuse safe" in backend
    assert "Connection close" not in backend and "wait-for-body" not in backend and "stick-table" not in backend


def test_never_opens_a_connection_per_request(node_data: dict[str, Any]) -> None:
    config = parse_node_config(_with_reuse(node_data, "never"))
    backend = _backend(config, "ceph-a")
    assert "option http-server-close" in backend
    assert "http-reuse" not in backend and "wait-for-body" not in backend
    # The other group keeps its default.
    assert "sc2_gpc0_rate" in _backend(config, "ceph-b")


def test_unknown_reuse_is_a_one_line_error(node_data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as error:
        parse_node_config(_with_reuse(node_data, "sometimes"))
    assert "backends.ceph-a.reuse" in error.value.message
    assert "auto, always, never" in error.value.message


def test_reuse_survives_ober_yaml(node_data: dict[str, Any], tmp_path: Any) -> None:
    config = parse_node_config(_with_reuse(node_data, "never"))
    path = tmp_path / "ober.yaml"
    path.write_text(dump_config(config))
    assert load_config(path).backend("ceph-a").reuse == "never"


# --- the probe ----------------------------------------------------------------------------------------------------


def _serve(listener: socket.socket, delay: float) -> None:
    """Answer each request on a connection; from the second on, the body ``delay`` seconds after the headers."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            # As beast with tcp_nodelay=1: without it, Nagle against the client's delayed ACK would stall every
            # reused answer by itself (the very thing measured), whatever ``delay`` says.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            answered = 0
            buffer = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n\r\n", 1)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
                    if answered:
                        time.sleep(delay)
                    conn.sendall(BODY)
                    answered += 1


@pytest.fixture
def server() -> Iterator[Callable[[float], int]]:
    """A loopback HTTP server whose reused-connection bodies come late; its port."""
    listeners: list[socket.socket] = []

    def start(delay: float) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listeners.append(listener)
        threading.Thread(target=_serve, args=(listener, delay), daemon=True).start()
        port: int = listener.getsockname()[1]
        return port

    yield start
    for listener in listeners:
        listener.close()


def test_probe_counts_stalled_answers_on_the_reused_connection(server: Callable[[float], int]) -> None:
    port = server(0.06)
    found = measure_stalls(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "/", "n1", requests=4)
    assert found == Stalls(reused=3, stalled=3, slowest_ms=found.slowest_ms)
    assert found.stalls and found.slowest_ms >= 60


def test_probe_sees_no_stall_from_a_prompt_server(server: Callable[[float], int]) -> None:
    port = server(0.0)
    found = measure_stalls(http.client.HTTPConnection("127.0.0.1", port, timeout=5), "/", "n1", requests=4)
    assert found.reused == 3 and not found.stalls


def test_doctor_check_probes_each_server(node_data: dict[str, Any], server: Callable[[float], int]) -> None:
    slow, prompt = server(0.06), server(0.0)
    node_data["backends"] = {"ceph-a": {"servers": [f"127.0.0.1:{slow}", f"127.0.0.1:{prompt}"]}}
    node_data["vips"] = node_data["vips"][:1]
    checks = check_keepalive(parse_node_config(node_data), 5.0)
    assert [(check.name, check.status) for check in checks] == [
        (f"rgw ceph-a 127.0.0.1:{slow} keep-alive", "warn"),
        (f"rgw ceph-a 127.0.0.1:{prompt} keep-alive", "ok"),
    ]


def test_doctor_check_skips_a_server_it_cannot_reach(node_data: dict[str, Any]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    node_data["backends"] = {"ceph-a": {"servers": [f"127.0.0.1:{port}"]}}
    node_data["vips"] = node_data["vips"][:1]
    [check] = check_keepalive(parse_node_config(node_data), 2.0)
    assert check.status == "skip" and "rgw check" in check.detail


@pytest.mark.parametrize(
    ("reuse", "stalled", "status", "words"),
    [
        ("auto", 7, "warn", "uses a new connection per request"),
        ("never", 7, "warn", "opens a new connection per request"),
        ("always", 7, "fail", "every small answer through HAProxy waits"),
        ("auto", 1, "ok", "HAProxy keeps connections alive"),
        ("always", 0, "ok", "HAProxy keeps connections alive"),
        ("never", 0, "ok", "reuse is never"),
    ],
)
def test_verdicts(node_data: dict[str, Any], reuse: str, stalled: int, status: str, words: str) -> None:
    group = parse_node_config(_with_reuse(node_data, reuse)).backend("ceph-a")
    check = verdict("rgw", group, Stalls(reused=7, stalled=stalled, slowest_ms=44.0))
    assert check.status == status and words in check.detail, check
    if status != "ok":
        assert check.fix is not None and "tcp_nodelay=1" in check.fix


def test_a_server_that_closes_each_connection_has_nothing_to_keep_alive(node_data: dict[str, Any]) -> None:
    group = parse_node_config(node_data).backend("ceph-a")
    check = verdict("rgw", group, Stalls(reused=0, stalled=0, slowest_ms=0.0))
    assert check.status == "ok" and "closes every connection" in check.detail
