"""Fleet facts and the availability guard: a node's `ober status --json` parsed defensively, the guard's rules.

The transport is a fake Runner here (these are parsers and a decision function); the same code runs against real
nodes over SSH in tests/test_fleet_ops_lab.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ober.inventory import load_inventory
from ober.remote.facts import Drained, NodeView, node_view
from ober.remote.guard import GuardRefused, decide, enforce
from ober.runner import Result
from tests.conftest import REPO

EXAMPLE = load_inventory(REPO / "inventory" / "example.yaml")
NODE = EXAMPLE.nodes[0]


class FakeRunner:
    """Answers every command with one canned Result and records what was asked."""

    def __init__(self, result: Result | Exception) -> None:
        self.result = result
        self.asked: list[tuple[list[str], float]] = []

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        self.asked.append((list(argv), timeout))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def status_doc(**changes: Any) -> dict[str, Any]:
    """What `ober status --json` prints on a healthy node01 of the example inventory."""
    peers = ["198.51.100.1", "198.51.100.2"]
    doc: dict[str, Any] = {
        "node": "node01",
        "versions": {"ober": "0.1.0", "haproxy": "3.0.11", "exabgp": "5.0.15"},
        "units": {"ober-http": "active", "ober-bgp": "active"},
        "drained": None,
        "health": {
            "pid": 42,
            "updated": 1.0,
            "stale": False,
            "vips": {"100.64.100.10": {"name": "s3-a", "state": "up", "announced": "announce"}},
        },
        "haproxy": {"running": True, "sessions": 7, "frontends": {}, "backends": {}},
        "bgp": {
            "sessions": {peer: "established" for peer in peers},
            "announced": {peer: ["100.64.100.10/32", "100.64.100.20/32"] for peer in peers},
        },
    }
    doc.update(changes)
    return doc


def ask(doc: object, returncode: int = 0) -> NodeView:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return node_view(FakeRunner(Result(returncode, text, "")), NODE)


def test_healthy_node_is_live_and_has_no_problems() -> None:
    runner = FakeRunner(Result(0, json.dumps(status_doc()), ""))
    view = node_view(runner, NODE)
    assert view.live and view.healthy
    assert view.announced == ("100.64.100.10", "100.64.100.20")
    assert view.sessions == 7
    assert view.versions["haproxy"] == "3.0.11"
    # The node's own ober, its own config, and a timeout on the command.
    argv, timeout = runner.asked[0]
    assert argv == ["/opt/ober/venv/bin/ober", "status", "--json", "--config", "/opt/ober/etc/ober.yaml"]
    assert 0 < timeout <= 60


def test_drained_node_is_not_live_but_not_a_problem() -> None:
    view = ask(status_doc(drained={"by": "ops@ws", "since": 1700000000.0, "reason": "kernel"}))
    assert view.drained == Drained("ops@ws", 1700000000.0, "kernel")
    assert not view.live
    assert view.healthy


def test_announcing_only_to_a_neighbor_that_is_down_is_not_live() -> None:
    doc = status_doc()
    doc["bgp"]["sessions"] = {"198.51.100.1": "connect", "198.51.100.2": "idle"}
    view = ask(doc)
    assert view.announced == ()
    assert not view.live
    assert "BGP 198.51.100.1 connect" in view.problems()
    assert "not announcing 100.64.100.10, 100.64.100.20" in view.problems()


def test_one_vip_missing_is_a_problem_but_the_node_is_still_live() -> None:
    doc = status_doc()
    doc["bgp"]["announced"] = {"198.51.100.1": ["100.64.100.10/32"], "198.51.100.2": ["100.64.100.10/32"]}
    view = ask(doc)
    assert view.live
    assert view.problems() == ["not announcing 100.64.100.20"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"units": {"ober-http": "failed", "ober-bgp": "inactive"}}, "ober-http failed"),
        ({"haproxy": {"running": False, "error": "no socket"}}, "HAProxy not answering"),
        ({"health": None}, "ober health published no state"),
    ],
)
def test_unhealthy_parts_are_named(change: dict[str, Any], problem: str) -> None:
    assert problem in ask(status_doc(**change)).problems()


@pytest.mark.parametrize(
    ("answer", "returncode", "expected"),
    [
        ("not json at all\n", 1, "ober status failed: not json at all"),
        ("[1, 2]", 0, "malformed ober status: the document is not a mapping"),
        (json.dumps({"error": "/opt/ober/etc/ober.yaml: no such file", "fix": "x"}), 1, "ober status: /opt/ober"),
        (json.dumps(status_doc(node="node02")), 0, "speaks for node 'node02', not node01"),
        (json.dumps(status_doc(units=["active"])), 0, "units is not a mapping"),
        (json.dumps(status_doc(versions={"ober": 3})), 0, "a version is not text"),
        (json.dumps(status_doc(bgp={"sessions": {"x": "established"}, "announced": {"x": "1.2.3.4/32"}})), 0, "lists"),
        (json.dumps(status_doc(haproxy={"running": True, "sessions": "many"})), 0, "haproxy.sessions"),
        (json.dumps(status_doc(drained={"by": "x", "since": "yesterday"})), 0, "drained.since"),
        ("", 127, "not found (is ober installed there?)"),
        ("", 124, "did not answer in"),
    ],
)
def test_malformed_answers_are_one_line_errors_for_that_node(answer: str, returncode: int, expected: str) -> None:
    view = ask(answer, returncode)
    assert view.reachable
    assert view.error is not None and expected in view.error
    assert "\n" not in view.error
    assert not view.live and not view.healthy


def test_a_transport_error_makes_the_node_unreachable() -> None:
    from ober.errors import OberError

    view = node_view(FakeRunner(OberError("node01: connection refused")), NODE)
    assert not view.reachable and not view.live
    assert view.problems() == ["unreachable: node01: connection refused"]


def test_sweep_asks_every_node_and_an_unreachable_one_is_a_view(monkeypatch: pytest.MonkeyPatch) -> None:
    import ober.remote.facts as facts
    from ober.errors import OberError

    class FakeConnection(FakeRunner):
        def __enter__(self) -> FakeConnection:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    def connect(target: Any) -> FakeConnection:
        if target.name == "node02":
            raise OberError("node02: root@198.51.100.12:22: connection refused")
        return FakeConnection(Result(0, json.dumps(status_doc(node=target.name)), ""))

    monkeypatch.setattr(facts, "connect", connect)
    views = facts.sweep(EXAMPLE, parallel=2)
    assert [v.name for v in views] == ["node01", "node02", "node03", "node04"]
    assert [v.live for v in views] == [True, False, True, True]
    assert views[1].problems() == ["unreachable: node02: root@198.51.100.12:22: connection refused"]


# --- the guard ---------------------------------------------------------------------------------------------------


def view(name: str, state: str) -> NodeView:
    """A node that is live, drained, down (reachable, announcing nothing) or unreachable."""
    if state == "unreachable":
        return NodeView(name, "198.51.100.1", reachable=False, error="timed out")
    drained = Drained("ops", 0.0, "") if state == "drained" else None
    announced = () if state == "down" else ("100.64.100.10",)
    return NodeView(name, "198.51.100.1", reachable=True, announced=announced, drained=drained)


FLEET4 = ["node01", "node02", "node03", "node04"]

GUARD_CASES = [
    # states of node01..04, candidates, min_available, max_unavailable, allowed, reason fragment
    (("live", "live", "live", "live"), ["node01"], 1, 1, True, ""),
    (("live", "live", "live", "live"), ["node01", "node02"], 1, 1, False, "more than max_unavailable 1"),
    (("live", "live", "live", "live"), ["node01", "node02"], 2, 2, True, ""),
    (("live", "live", "live", "live"), ["node01", "node02", "node03"], 2, 4, False, "fewer than min_available 2"),
    # The case: 2 of 4 drained, min_available 2: a third is refused.
    (("drained", "drained", "live", "live"), ["node03"], 2, 4, False, "would leave 1 live node, fewer"),
    (("drained", "drained", "live", "live"), ["node03"], 2, 1, False, "node[01-02] already out"),
    # Unreachable and down nodes count as not live.
    (("unreachable", "live", "live", "live"), ["node02"], 1, 1, False, "node01 already out"),
    (("unreachable", "down", "live", "live"), ["node03"], 2, 4, False, "fewer than min_available 2"),
    (("unreachable", "down", "live", "live"), ["node03"], 1, 3, True, ""),
    # Taking out a node that is already out changes nothing: allowed.
    (("drained", "live", "live", "live"), ["node01"], 3, 1, True, ""),
    (("live", "live", "live", "live"), ["node09"], 1, 1, False, "node09 not asked"),
    (("live",), ["node01"], 1, 1, False, "would leave 0 live nodes"),
]


@pytest.mark.parametrize(("states", "candidates", "min_available", "max_unavailable", "allowed", "reason"), GUARD_CASES)
def test_guard(
    states: tuple[str, ...],
    candidates: list[str],
    min_available: int,
    max_unavailable: int,
    allowed: bool,
    reason: str,
) -> None:
    views = [view(name, state) for name, state in zip(FLEET4, states, strict=False)]
    decision = decide(views, candidates, min_available, max_unavailable)
    assert decision.allowed is allowed, decision.message
    assert reason in decision.message
    if allowed:
        assert enforce(decision) is decision
    else:
        with pytest.raises(GuardRefused) as refused:
            enforce(decision)
        assert "nothing was changed" in refused.value.message


def test_guard_counts() -> None:
    views = [view(n, s) for n, s in zip(FLEET4, ("drained", "live", "unreachable", "live"), strict=True)]
    decision = decide(views, ["node02"], 1, 3)
    assert decision.live == ("node02", "node04")
    assert decision.taken_out == ("node02",)
    assert decision.left == 1
    assert decision.unavailable == ("node01", "node02", "node03")
    assert decision.to_dict()["allowed"] is True


def test_views_are_json_ready() -> None:
    data = ask(status_doc(drained={"by": "ops", "since": 5.0, "reason": "r"})).to_dict()
    assert json.loads(json.dumps(data))["drained"] == {"by": "ops", "since": 5.0, "reason": "r"}
    assert copy.deepcopy(data)["live"] is False
