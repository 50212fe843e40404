"""The fleet's one client for a node's ``ober … --json`` commands, over a fake transport.

The same client runs against real nodes over SSH in tests/test_fleet_ops_lab.py and tests/test_fleet_roll_lab.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import pytest

from ober.errors import OberError
from ober.remote.nodeclient import Liveness, NodeClient, NodeCommandFailed, NodeView, NotReady
from ober.runner import Result
from tests.test_fleet_ops import NODE, status_doc

Answer = Result | OberError | Callable[[list[str]], Result]


class Node:
    """Answers each command with the next answer (a Result, an exception to raise, or a function of the argv)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[list[str], float]] = []

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        self.asked.append((list(argv), timeout))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, OberError):
            raise answer
        return answer(list(argv)) if callable(answer) else answer


def doc(**changes: object) -> Result:
    return Result(0, json.dumps(status_doc(**changes)))


DRAINED = {"by": "ops@ws", "since": 1.0, "reason": "disk swap"}
NOT_ANNOUNCING = status_doc()
NOT_ANNOUNCING["bgp"]["announced"] = {}


def client(node: Node, clock: list[float] | None = None) -> NodeClient:
    now = clock if clock is not None else [0.0]
    return NodeClient(node, NODE, sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])


@pytest.mark.parametrize(
    ("answer", "liveness", "live_json"),
    [
        (doc(), Liveness.LIVE, True),
        (doc(drained=DRAINED), Liveness.NOT_LIVE, False),
        (Result(0, json.dumps(NOT_ANNOUNCING)), Liveness.NOT_LIVE, False),
        (OberError("node01: no SSH answer within 10s"), Liveness.UNKNOWN, None),
        (Result(124, "", ""), Liveness.UNKNOWN, None),
    ],
)
def test_a_node_that_does_not_tell_is_unknown_not_not_live(
    answer: Answer, liveness: Liveness, live_json: bool | None
) -> None:
    view = client(Node(answer)).status()
    assert view.liveness is liveness
    data = view.to_dict()
    assert data["live"] is live_json and data["liveness"] == liveness.value
    # What an unknown node announces is not known either: not "nothing".
    assert (data["announced"] is None) is (liveness is Liveness.UNKNOWN)
    assert view.live is (liveness is Liveness.LIVE)  # the guard's safe side: unknown never counts as live


def test_drain_runs_the_nodes_own_ober_with_a_timeout_and_reads_its_answer() -> None:
    answer = {"drained": True, "by": "root@n1", "since": 5.0, "sessions_left": 0, "quiesce": {"in_flight": 0}}
    node = Node(Result(0, json.dumps(answer)))
    drained = client(node).drain("kernel", wait=30, quiesce=2)
    assert (drained.by, drained.sessions_left, drained.in_flight_at_withdraw, drained.problem) == (
        "root@n1",
        0,
        0,
        None,
    )
    argv, timeout = node.asked[0]
    assert argv[:3] == ["/opt/ober/venv/bin/ober", "--json", "drain"]
    assert argv[argv.index("--reason") + 1] == "kernel" and argv[argv.index("--quiesce") + 1] == "2"
    assert 32 < timeout <= 32 + 120  # its own wait and quiesce, plus a bounded margin


def test_drain_withdrawn_but_not_idle_is_an_answer_with_the_problem() -> None:
    answer = {"drained": True, "by": "x", "since": 1.0, "sessions_left": 3, "error": "3 connections still open"}
    drained = client(Node(Result(1, json.dumps(answer)))).drain("r", wait=5)
    assert drained.sessions_left == 3 and drained.problem == "3 connections still open"


@pytest.mark.parametrize(
    ("result", "message", "fix"),
    [
        (
            Result(1, json.dumps({"error": "config: no such file", "fix": "bootstrap it"})),
            "config: no such",
            "bootstrap",
        ),
        (Result(1, "Traceback (most recent call last):\n  boom", ""), "ober drain failed: boom", "ober fleet status"),
        (Result(0, "[]"), "ober drain failed", "ober fleet status"),
    ],
)
def test_a_failed_drain_is_one_line_naming_the_node(result: Result, message: str, fix: str) -> None:
    with pytest.raises(NodeCommandFailed) as failed:
        client(Node(result)).drain("r", wait=5)
    assert failed.value.message.startswith("node01: ") and message in failed.value.message
    assert "\n" not in failed.value.message and fix in str(failed.value.fix)


def test_an_older_ober_without_quiesce_is_drained_without_it() -> None:
    usage = Result(2, json.dumps({"error": "No such option: --quiesce", "fix": "see 'ober drain --help'"}))
    node = Node(usage, Result(0, json.dumps({"drained": True, "by": "x", "since": 1.0, "sessions_left": 0})))
    assert client(node).drain("r", wait=5, quiesce=3).sessions_left == 0
    assert "--quiesce" in node.asked[0][0] and "--quiesce" not in node.asked[1][0]


def test_undrain_says_whether_the_node_was_drained_and_refuses_garbage() -> None:
    assert client(Node(Result(0, json.dumps({"drained": False, "was_drained": True})))).undrain().was_drained
    with pytest.raises(NodeCommandFailed, match="node01: ober undrain failed: permission denied"):
        client(Node(Result(1, json.dumps({"error": "permission denied"})))).undrain()
    with pytest.raises(NodeCommandFailed, match="undrain failed"):
        client(Node(Result(0, json.dumps({"drained": False})))).undrain()


def test_wait_until_live_returns_once_live() -> None:
    node = Node(doc(drained=DRAINED), Result(0, json.dumps(NOT_ANNOUNCING)), doc())
    now = [0.0]
    view = client(node, now).wait_until_live(10)
    assert view.live and len(node.asked) == 3 and now[0] == 1.0


def test_wait_until_live_says_why_not_at_the_deadline() -> None:
    now = [0.0]
    with pytest.raises(NotReady) as late:
        client(Node(Result(0, json.dumps(NOT_ANNOUNCING))), now).wait_until_live(3)
    assert late.value.message == "node01: not live after 3s: not announcing 100.64.100.10, 100.64.100.20"
    assert now[0] == pytest.approx(3.0)
    # A drained node is not live, and the reason says who drained it.
    with pytest.raises(NotReady, match=r"drained by ops@ws \(disk swap\)"):
        client(Node(doc(drained=DRAINED))).wait_until_live(1)


def test_wait_until_live_stops_at_once_when_the_node_stops_answering() -> None:
    now = [0.0]
    with pytest.raises(NotReady) as lost:
        client(Node(OberError("node01: connection refused")), now).wait_until_live(60)
    assert now[0] == 0.0 and lost.value.view.liveness is Liveness.UNKNOWN
    assert "unreachable: node01: connection refused" in lost.value.message


def test_wait_until_live_with_an_extra_check_waits_for_it_too() -> None:
    checks = iter([["GET https://100.64.100.10/: HTTP 503"], []])

    def also(_view: NodeView) -> list[str]:
        return next(checks)

    node = Node(doc())
    assert client(node).wait_until_live(10, also=also).live
    assert len(node.asked) == 2
