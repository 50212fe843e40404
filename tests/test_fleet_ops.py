"""Fleet facts and the availability guard: a node's `ober status --json` parsed defensively, the guard's rules.

The transport is a fake Runner here (these are parsers and a decision function); the same code runs against real
nodes over SSH in tests/test_fleet_ops_lab.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.inventory import load_inventory
from ober.remote.guard import GuardRefused, decide, enforce
from ober.remote.nodeclient import Drained, NodeClient, NodeView
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
    return NodeClient(FakeRunner(Result(returncode, text, "")), NODE).status()


def test_healthy_node_is_live_and_has_no_problems() -> None:
    runner = FakeRunner(Result(0, json.dumps(status_doc()), ""))
    view = NodeClient(runner, NODE).status()
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

    view = NodeClient(FakeRunner(OberError("node01: connection refused")), NODE).status()
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


# --- drift, diff and push (pure parts; a fake node) --------------------------------------------------------------

SECRET_VALUES = {"bgp_md5": "md5-Pa55word", "stats_password": "st4ts-Pa55word"}


class FakeNode:
    """A node's files (path → (mode, content)) and ober config's answer; what ran and what was uploaded."""

    def __init__(self, files: dict[str, tuple[int, str]], answer: Result | None = None) -> None:
        self.files = dict(files)
        self.answer = answer or Result(0, json.dumps({"dry_run": False, "changes": [], "actions": []}), "")
        self.ran: list[list[str]] = []
        self.put_files: dict[str, tuple[int, bytes]] = {}

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        import hashlib

        argv = list(argv)
        self.ran.append(argv)
        assert timeout > 0
        if argv[1:3] == ["-c", argv[2]] and argv[0].endswith("/venv/bin/python"):
            # Answer as the node-side script would, from self.files (the script itself runs for real below).
            manifest, wanted = argv[3], argv[4:]
            owned = json.loads(self.files[manifest][1]) if manifest in self.files else []
            seen: dict[str, object] = {}
            for path in sorted(set(wanted) | set(owned)):
                if path in self.files:
                    mode, text = self.files[path]
                    seen[path] = [mode, hashlib.sha256(text.encode()).hexdigest()]
                else:
                    seen[path] = None
            return Result(0, json.dumps(seen), "")
        if argv[0] == "cat":
            return Result(0, self.files[argv[2]][1], "")
        if argv[1:2] == ["status"]:
            return Result(0, json.dumps(status_doc()), "")
        if argv[1:2] == ["config"]:
            return self.answer
        if argv[0] in ("mv", "rm"):
            return Result(0, "", "")
        raise AssertionError(argv)

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        self.put_files[remote] = (mode, data)


def rendered_files() -> dict[str, tuple[int, str]]:
    from ober.remote.push import render

    rendered, _ = render(NODE, SECRET_VALUES)
    return {f.path: (f.mode, f.content) for f in rendered.files}


def test_a_node_with_the_rendered_files_has_no_drift() -> None:
    from ober.remote.push import node_diff, node_drift

    node = FakeNode(rendered_files())
    drift = node_drift(node, NODE, SECRET_VALUES)
    assert not drift.drifted and drift.unknown == []
    assert node_diff(node, NODE, SECRET_VALUES) == (drift, "")


def test_drift_names_changed_missing_and_removed_files_and_the_diff_hides_secrets() -> None:
    from ober.apply import manifest_path
    from ober.remote.push import node_diff

    files = rendered_files()
    cfg = "/opt/ober/etc/haproxy.cfg"
    files[cfg] = (0o644, files[cfg][1].replace("maxconn", "maxconn-old", 1))
    exabgp = "/opt/ober/etc/exabgp.conf"
    files[exabgp] = (0o600, files[exabgp][1].replace(SECRET_VALUES["bgp_md5"], "old-Pa55word"))
    del files["/etc/sysctl.d/90-ober.conf"]
    stale = "/etc/netplan/60-ober0.yaml"
    files[stale] = (0o600, "network: {}\n")
    files[manifest_path("/opt/ober")] = (0o644, json.dumps([stale]))
    drift, text = node_diff(FakeNode(files), NODE, SECRET_VALUES)
    assert drift.changed == ["/etc/sysctl.d/90-ober.conf", exabgp, cfg]
    assert drift.removed == [stale]
    assert f"--- {cfg}" in text and "-    maxconn-old" in text
    assert "+++ /etc/sysctl.d/90-ober.conf" in text and "--- /dev/null" in text
    assert "(secret file: contents not shown" in text
    assert "old-Pa55word" not in text and SECRET_VALUES["bgp_md5"] not in text


def test_without_the_secrets_secret_files_are_not_compared() -> None:
    from ober.remote.push import node_drift

    drift = node_drift(FakeNode(rendered_files()), NODE, {})
    assert not drift.drifted
    assert drift.unknown == ["/opt/ober/etc/exabgp.conf", "/opt/ober/etc/secrets.env"]


def test_files_script_runs_for_real(tmp_path: Any) -> None:
    """The node-side script itself, run by this Python against real files."""
    import subprocess
    import sys

    from ober.remote.push import _FILES_SCRIPT

    there = tmp_path / "a.txt"
    there.write_text("hello\n")
    there.chmod(0o640)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([str(tmp_path / "old.conf"), 42]))
    (tmp_path / "old.conf").write_text("x")
    argv = [sys.executable, "-c", _FILES_SCRIPT, str(manifest), str(there), str(tmp_path / "missing")]
    seen = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    import hashlib

    assert seen[str(there)] == [0o640, hashlib.sha256(b"hello\n").hexdigest()]
    assert seen[str(tmp_path / "missing")] is None
    assert str(tmp_path / "old.conf") in seen


def test_push_stages_files_applies_with_replace_and_installs_the_secrets_last() -> None:
    from ober.remote.push import push_node

    answer = {"dry_run": False, "changes": [{"path": "/opt/ober/etc/haproxy.cfg", "change": "update"}]}
    node = FakeNode({}, Result(0, json.dumps({**answer, "actions": ["reload ober-http"], "backup": "/b"}), ""))
    result = push_node(node, NODE, SECRET_VALUES, dry_run=False, sleep=lambda _s: None)
    assert result.ok, result.error
    assert result.changes == answer["changes"] and result.actions == ["reload ober-http"]
    (config_path, (config_mode, config_text)), (login_path, (login_mode, login_text)) = node.put_files.items()
    assert config_mode == 0o644 and login_mode == 0o600
    assert yaml.safe_load(login_text) == SECRET_VALUES
    assert yaml.safe_load(config_text)["name"] == "node01"
    config = next(argv for argv in node.ran if argv[1:2] == ["config"])
    assert config[config.index("--from") + 1] == config_path and "--replace" in config
    assert config[config.index("--secrets") + 1] == login_path and "--dry-run" not in config
    assert ["mv", "-f", "--", login_path, "/opt/ober/etc/login"] in node.ran
    assert node.ran[-1] == ["rm", "-f", "--", config_path, login_path]


def test_a_failed_push_keeps_the_old_secrets_and_says_why() -> None:
    from ober.remote.push import push_node

    error = {"error": "haproxy -c: line 12: unknown keyword; rolled back to the previous files", "fix": "fix it"}
    node = FakeNode({}, Result(1, json.dumps(error), ""))
    result = push_node(node, NODE, SECRET_VALUES, dry_run=False)
    assert not result.ok
    assert result.error == f"node01: {error['error']}" and result.fix == "fix it"
    assert not any(argv[0] == "mv" for argv in node.ran)
    assert node.ran[-1][:3] == ["rm", "-f", "--"]  # the staged files are removed


def test_dry_run_push_asks_the_node_and_changes_nothing() -> None:
    from ober.remote.push import push_node

    answer = {"dry_run": True, "changes": [{"path": "/x", "change": "create"}], "actions": []}
    node = FakeNode({}, Result(0, json.dumps(answer), ""))
    result = push_node(node, NODE, SECRET_VALUES, dry_run=True)
    assert result.ok and result.dry_run and result.changes == [{"path": "/x", "change": "create"}]
    assert "--dry-run" in next(argv for argv in node.ran if argv[1:2] == ["config"])
    assert not any(argv[0] == "mv" for argv in node.ran)


def test_push_without_a_needed_secret_touches_nothing() -> None:
    from ober.remote.push import push_node

    node = FakeNode({})
    result = push_node(node, NODE, {"bgp_md5": "x"}, dry_run=False)
    assert not result.ok and "stats.auth.password_secret" in (result.error or "")
    assert node.ran == [] and node.put_files == {}


def test_a_garbled_answer_is_a_failure_not_a_crash() -> None:
    from ober.remote.push import push_node

    result = push_node(
        FakeNode({}, Result(0, "Traceback (most recent call last):\n boom", "")), NODE, SECRET_VALUES, False
    )
    assert not result.ok and "ober config failed" in (result.error or "")


def test_sync_passes_the_inventory_whitelists_unless_overridden() -> None:
    from ober.remote.fleetops import whitelist_args

    args = whitelist_args(NODE, {})
    assert args == [
        "--routers",
        "198.51.100.1 198.51.100.2",
        "--frontend-http",
        "",
        "--backend-http",
        "198.51.100.0/24",
    ]
    assert whitelist_args(NODE, {"frontend_http": "client[01-02]"})[3] == "client[01-02]"


def test_config_replace_drops_what_the_new_file_leaves_out(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`ober config --from FILE --replace` (what a push runs): a backend group removed in the file disappears."""
    from ober.cli import main
    from tests.conftest import DATA

    root = tmp_path / "root"
    config = root / "opt/ober/etc/ober.yaml"
    config.parent.mkdir(parents=True)
    config.write_text((DATA / "node.yaml").read_text())
    secrets = tmp_path / "login"
    secrets.write_text(yaml.safe_dump(SECRET_VALUES))
    secrets.chmod(0o600)
    data = yaml.safe_load((DATA / "node.yaml").read_text())
    data["vips"] = data["vips"][:1]
    del data["backends"]["ceph-b"]
    incoming = tmp_path / "new.yaml"
    incoming.write_text(yaml.safe_dump(data))
    base = ["config", "-c", "/opt/ober/etc/ober.yaml", "--root", str(root), "--secrets", str(secrets), "--no-check"]
    # Merging keeps ceph-b (a list replaces, a mapping merges): the file alone cannot remove it.
    assert main([*base, "--from", str(incoming)]) == 0
    assert "ceph-b" in yaml.safe_load(config.read_text())["backends"]
    assert main([*base, "--from", str(incoming), "--replace"]) == 0
    assert list(yaml.safe_load(config.read_text())["backends"]) == ["ceph-a"]
    capsys.readouterr()
    assert main([*base, "--replace", "--set", "health.rise=3"]) == 2  # a usage error
    assert "--replace needs --from FILE" in capsys.readouterr().err


# --- drain sequencing and the fleet lock (the fleet faked at the transport; the real thing: test_fleet_ops_lab.py) -


class ScriptedNode(FakeRunner):
    """A node over a fake connection: `ober drain` withdraws (status then announces nothing); the fleet lock's
    scripts run for real in ``base``/NAME (a temp dir standing in for the node's state dir)."""

    def __init__(self, name: str, drained: set[str], base: Path, gone: Callable[[], bool] = lambda: False) -> None:
        super().__init__(Result(0, "", ""))
        self.name, self.drained, self.base, self.gone = name, drained, base, gone
        self.closed = False
        self.degraded: list[str] = []
        """What its ``ober sync`` says HAProxy serves degraded after it."""

    def close(self) -> None:
        self.closed = True

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        raise AssertionError("no upload expected")

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        from ober.errors import OberError
        from ober.runner import LocalRunner

        self.asked.append((list(argv), timeout))
        if argv[0] == "sh":
            return LocalRunner().run([*argv[:4], f"{self.base}/{self.name}", *argv[5:]], timeout, env)
        if self.gone():
            raise OberError(f"{self.name}: lost the SSH connection: the connection is closed")
        command = next(word for word in argv[1:3] if word != "--json")
        if command == "drain":
            self.drained.add(self.name)
            return Result(0, json.dumps({"drained": True, "by": "t", "since": 1.0, "sessions_left": 0}), "")
        if command == "undrain":
            self.drained.discard(self.name)
            return Result(0, json.dumps({"drained": False, "was_drained": True}), "")
        if command == "sync":
            held = (self.base / self.name / "lock").is_dir()
            answer = {"changes": [], "actions": [f"lock held: {held}"], "degraded": self.degraded}
            return Result(0, json.dumps(answer), "")
        doc = status_doc(node=self.name)
        if self.name in self.drained:
            doc["drained"] = {"by": "t", "since": 1.0, "reason": ""}
            doc["bgp"]["announced"] = {}
        return Result(0, json.dumps(doc), "")


def scripted_session(
    tmp_path: Path, drained: set[str], operation: str = "drain", broken_after_first: str | None = None
) -> tuple[Any, dict[str, ScriptedNode]]:
    """A Session over scripted nodes; ``broken_after_first`` stops answering once a node is drained."""
    from ober.remote.fleetops import Session

    nodes = {
        n.name: ScriptedNode(
            n.name, drained, tmp_path, (lambda: bool(drained)) if n.name == broken_after_first else bool
        )
        for n in EXAMPLE.nodes
    }
    return Session(EXAMPLE, operation, opener=lambda: (nodes, {}), state_dir=str(tmp_path)), nodes


def test_drain_goes_one_node_at_a_time_and_rechecks_the_guard_before_each_withdraw(tmp_path: Path) -> None:
    from ober.remote.fleetops import Drain

    drained: set[str] = set()
    session, nodes = scripted_session(tmp_path, drained, broken_after_first="node04")
    run = Drain(EXAMPLE, EXAMPLE.nodes[:2], reason="r", max_unavailable=2)
    with session:
        steps = run.run(session)
        assert (tmp_path / "node01" / "lock").is_dir()  # held while it drains
    # node01 drained; then node04 stopped answering: node02 would make 3 out of service, more than 2.
    assert [(s.node, s.ok) for s in steps] == [("node01", True), ("node02", False)]
    assert "more than max_unavailable 2" in steps[1].detail and "node04 unknown" in steps[1].detail
    assert "undrain node01" in str(steps[1].fix) and "node04 did not answer over SSH" in str(steps[1].fix)
    assert drained == {"node01"}
    assert session.lock.state()["released"] is True and all(node.closed for node in nodes.values())
    assert not (tmp_path / "node01" / "lock").exists()


def test_drain_refuses_the_whole_set_up_front_and_releases_the_lock(tmp_path: Path) -> None:
    from ober.remote.fleetops import Drain

    drained: set[str] = set()
    session, _nodes = scripted_session(tmp_path, drained)
    with pytest.raises(GuardRefused), session:
        Drain(EXAMPLE, EXAMPLE.nodes[:2], max_unavailable=1).run(session)
    assert drained == set()
    assert not any((tmp_path / n.name / "lock").exists() for n in EXAMPLE.nodes)


def test_two_operators_cannot_drain_together_below_min_available(tmp_path: Path) -> None:
    """The issue's case: each drain alone passes the guard; together they would leave too few nodes live."""
    from ober.errors import OberError
    from ober.remote.fleetops import Drain

    drained: set[str] = set()
    first, _ = scripted_session(tmp_path, drained)
    second, _ = scripted_session(tmp_path, drained)
    with first:
        with pytest.raises(OberError, match=r"the fleet is locked by .*\(pid \d+, drain\)"), second:
            pass
        Drain(EXAMPLE, EXAMPLE.nodes[:1], max_unavailable=4).run(first)
    assert drained == {"node01"}


def test_a_drain_stops_if_the_lock_was_taken_from_it(tmp_path: Path) -> None:
    from ober.remote.fleetops import Drain
    from ober.remote.lock import break_lock

    drained: set[str] = set()
    session, nodes = scripted_session(tmp_path, drained)

    def someone_breaks_it_after_node01(line: str) -> None:
        if line.startswith("node01: withdrawn"):
            break_lock({"node03": nodes["node03"]}, str(tmp_path))
            session.lock.renew()  # what the background renewal finds

    with session:
        steps = Drain(EXAMPLE, EXAMPLE.nodes[:2], max_unavailable=4, progress=someone_breaks_it_after_node01).run(
            session
        )
    assert [(s.node, s.ok) for s in steps] == [("node01", True), ("node02", False)]
    assert "fleet lock was taken from this operation on node03" in steps[1].detail
    assert drained == {"node01"}


def test_undrain_holds_the_lock_and_waits_until_each_node_is_live(tmp_path: Path) -> None:
    from ober.remote.fleetops import undrain

    drained = {"node01", "node02"}
    session, _ = scripted_session(tmp_path, drained, operation="undrain")
    with session:
        owner = json.loads((tmp_path / "node03" / "lock" / "owner").read_text())
        assert owner["operation"] == "undrain" and owner["lease"] == 900
        steps = undrain(session, EXAMPLE.nodes[:2], wait=5, sleep=lambda _s: None)
    assert [(s.node, s.ok, s.facts["live"]) for s in steps] == [("node01", True, True), ("node02", True, True)]
    assert drained == set()
    assert not (tmp_path / "node03" / "lock").exists()


def test_a_node_without_ssh_stops_the_command_at_it_saying_why(tmp_path: Path) -> None:
    from ober.remote.fleetops import Session, undrain

    drained = {"node01"}
    nodes = {n.name: ScriptedNode(n.name, drained, tmp_path) for n in EXAMPLE.nodes if n.name != "node01"}
    failed = {"node01": "node01: root@198.51.100.11:22: connection refused"}
    with Session(EXAMPLE, "undrain", opener=lambda: (nodes, failed), state_dir=str(tmp_path)) as session:
        steps = undrain(session, EXAMPLE.nodes[:2], wait=5, sleep=lambda _s: None)
    assert [(s.node, s.ok, s.detail) for s in steps] == [("node01", False, failed["node01"])]
    assert "fix SSH to it" in str(steps[0].fix)


def test_fleet_sync_and_drain_hold_the_lock_and_refuse_while_another_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import ober.remote.facts as facts
    from ober.cli import main
    from ober.remote.lock import Holder

    drained: set[str] = set()
    monkeypatch.setattr(facts, "connect", lambda target: ScriptedNode(target.name, drained, tmp_path))
    inventory = str(REPO / "inventory" / "example.yaml")
    assert main(["--json", "fleet", "sync", "node[01-02]", "-i", inventory]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [n["actions"] for n in report["nodes"]] == [["lock held: True"], ["lock held: True"]]
    assert report["lock"] == {"released": True, "held_on": [], "how_to_release": None}
    # Another operator's live roll holds the lock: drain changes nothing and says who holds it.
    other = Holder("alice@ws2", 4242, 1.0, "restart", "theirs", lease=900)
    (tmp_path / "node02" / "lock").mkdir(parents=True)
    (tmp_path / "node02" / "lock" / "owner").write_text(other.record())
    assert main(["fleet", "drain", "node03", "-i", inventory]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the fleet is locked by alice@ws2 (pid 4242, restart) since 1970-01-01")
    assert "(on node02)" in err and "--break" in err and len(err.strip().splitlines()) == 1
    assert drained == set() and not (tmp_path / "node01" / "lock").exists()


# --- a node that does not answer is unknown, not "not live" (the controller cannot see the routers) -------------


def fake_ssh(monkeypatch: pytest.MonkeyPatch, answers: Mapping[str, dict[str, Any] | None]) -> None:
    """Connections to the example's nodes: ``ober status`` answers the node's document; None: no SSH answer."""
    import ober.remote.facts as facts
    from ober.errors import OberError

    class Conn(FakeRunner):
        def __enter__(self) -> Conn:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    def connect(target: Any) -> Conn:
        doc = answers.get(target.name, status_doc(node=target.name))
        if doc is None:
            raise OberError(f"{target.name}: root@{target.host}:22: no SSH answer within 10s")
        return Conn(Result(0, json.dumps(doc), ""))

    monkeypatch.setattr(facts, "connect", connect)


def test_fleet_status_calls_a_node_without_ssh_unknown_not_not_live(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ober.cli import main

    drained = status_doc(node="node03", drained={"by": "ops", "since": 1.0, "reason": "disk"})
    drained["bgp"]["announced"] = {}
    fake_ssh(monkeypatch, {"node02": None, "node03": drained})
    inventory = str(REPO / "inventory" / "example.yaml")
    assert main(["--json", "fleet", "status", "-i", inventory]) == 1
    report = json.loads(capsys.readouterr().out)
    nodes = {n["name"]: n for n in report["nodes"]}
    assert (nodes["node02"]["live"], nodes["node02"]["liveness"], nodes["node02"]["announced"]) == (
        None,
        "unknown",
        None,
    )
    assert (nodes["node03"]["live"], nodes["node03"]["liveness"]) == (False, "not live")
    assert report["live"] == ["node01", "node04"] and report["unknown"] == ["node02"]
    assert main(["fleet", "status", "-i", inventory]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "2 of 4 nodes live" in text
    assert "node02 unknown: no answer, so whether it still announces only the routers know" in text


def test_the_guard_does_not_suggest_undrain_for_a_node_that_did_not_answer() -> None:
    views = [view(n, s) for n, s in zip(FLEET4, ("live", "unreachable", "live", "live"), strict=True)]
    decision = decide(views, ["node03"], 3, 4)
    assert not decision.allowed and decision.unknown == ("node02",)
    assert "node02 unknown (no answer), counted as not live" in decision.message
    assert "undrain" not in decision.fix
    assert "node02 did not answer over SSH" in decision.fix and "ober fleet status node02" in decision.fix
    # A drained node is another matter: undrain is the remedy for it, and only for it.
    views[0] = view("node01", "drained")
    with pytest.raises(GuardRefused) as refused:
        enforce(decide(views, ["node03"], 2, 4))
    assert "ober fleet undrain node01;" in str(refused.value.fix)
    assert "node02 did not answer" in str(refused.value.fix)
    assert decide(views, ["node03"], 2, 4).to_dict()["unknown"] == ["node02"]


def test_a_drain_dry_run_never_says_ok_about_nodes_that_did_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ober.cli import main

    inventory = str(REPO / "inventory" / "example.yaml")
    fake_ssh(monkeypatch, dict.fromkeys(FLEET4))  # every node unreachable
    assert main(["fleet", "drain", "node03", "--dry-run", "-i", inventory]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "guard: ok" not in text
    assert "guard refused: node03 did not answer, so ober can neither tell what it announces nor take it out" in text
    # Only another node silent: allowed, but said to rest on counting that node as out.
    fake_ssh(monkeypatch, {"node02": None})
    assert main(["fleet", "drain", "node03", "--dry-run", "--max-unavailable", "2", "-i", inventory]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "guard: allowed only by counting node02 as out of service" in text and "guard: ok" not in text
    fake_ssh(monkeypatch, {})
    assert main(["fleet", "drain", "node03", "--dry-run", "-i", inventory]) == 0
    assert "guard: ok (4 live now, 3 after" in capsys.readouterr().out


# --- a node that serves degraded after a push (issue 9 item 5) ---------------------------------------------------

UNRESOLVED = "backend ceph-a server rgw2: rgw2.invalid does not resolve; HAProxy keeps it in maintenance"


def degraded_answer(*problems: str) -> Result:
    answer = {"dry_run": False, "changes": [{"path": "/opt/ober/etc/haproxy.cfg", "change": "update"}]}
    return Result(0, json.dumps({**answer, "actions": ["reload ober-http"], "degraded": list(problems)}), "")


def test_a_push_that_leaves_the_node_degraded_fails_naming_the_node_and_the_problem() -> None:
    from ober.remote.push import push_node

    node = FakeNode({}, degraded_answer(UNRESOLVED))
    result = push_node(node, NODE, SECRET_VALUES, dry_run=False, sleep=lambda _s: None)
    assert not result.ok
    assert result.error == f"node01: applied, but HAProxy serves degraded: {UNRESOLVED}"
    assert "--allow-degraded" in (result.fix or "")
    assert result.to_dict()["degraded"] == [UNRESOLVED]
    # Applied all the same (the node validated and reloaded it): the secrets went into place with it.
    assert any(argv[0] == "mv" for argv in node.ran)


def test_allow_degraded_makes_it_a_success_that_still_lists_the_problems() -> None:
    from ober.remote.push import push_node

    node = FakeNode({}, degraded_answer(UNRESOLVED, "HAProxy WARNING: something else"))
    result = push_node(node, NODE, SECRET_VALUES, dry_run=False, sleep=lambda _s: None, allow_degraded=True)
    assert result.ok and result.degraded == [UNRESOLVED, "HAProxy WARNING: something else"]


def test_an_older_node_that_does_not_report_degraded_is_not_failed_for_it() -> None:
    from ober.remote.push import push_node

    node = FakeNode({}, Result(0, json.dumps({"dry_run": False, "changes": [], "actions": []}), ""))
    result = push_node(node, NODE, SECRET_VALUES, dry_run=False, sleep=lambda _s: None)
    assert result.ok and result.degraded == []


def test_a_degraded_answer_that_is_not_a_list_is_a_failure_not_a_crash() -> None:
    from ober.remote.push import push_node

    answer = Result(0, json.dumps({"dry_run": False, "changes": [], "actions": [], "degraded": "x"}), "")
    result = push_node(FakeNode({}, answer), NODE, SECRET_VALUES, dry_run=False)
    assert not result.ok and "answered something unexpected" in (result.error or "")


def test_fleet_push_cli_stops_at_a_degraded_node_unless_allowed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """`ober fleet push` exits 1 naming the node and problem; with --allow-degraded it succeeds and warns."""
    import ober.remote.facts as facts
    from ober.cli import main
    from ober.remote import fleetops
    from ober.remote.push import PushResult, refuse_degraded

    def push(session: Any, *_args: Any, allow_degraded: bool = False, **_kw: Any) -> list[PushResult]:
        assert (tmp_path / "node01" / "lock").is_dir()  # a push holds the fleet lock
        return [refuse_degraded(PushResult("node01", True, False, degraded=[UNRESOLVED]), allow_degraded)]

    monkeypatch.setattr(fleetops, "push", push)
    monkeypatch.setattr(facts, "connect", lambda target: ScriptedNode(target.name, set(), tmp_path))
    secrets = tmp_path / "login"
    secrets.write_text(yaml.safe_dump(SECRET_VALUES))
    secrets.chmod(0o600)
    argv = ["fleet", "push", "-i", str(REPO / "inventory" / "example.yaml"), "--secrets", str(secrets), "node01"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "push stopped at node01: applied, but HAProxy serves degraded: backend ceph-a server rgw2" in err
    assert main(["--json", *argv, "--allow-degraded"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["nodes"][0]["degraded"] == [UNRESOLVED] and report["lock"]["released"] is True


def test_fleet_sync_under_the_lock_stops_at_a_degraded_node_unless_allowed(tmp_path: Path) -> None:
    from ober.remote.fleetops import sync

    session, nodes = scripted_session(tmp_path, set(), operation="sync")
    nodes["node01"].degraded = [UNRESOLVED]
    with session:
        results = sync(session, EXAMPLE.nodes[:2], {})
    assert [(r.node, r.ok) for r in results] == [("node01", False)]  # node02 untouched
    assert results[0].error == f"node01: applied, but HAProxy serves degraded: {UNRESOLVED}"
    session, nodes = scripted_session(tmp_path, set(), operation="sync")
    nodes["node01"].degraded = [UNRESOLVED]
    with session:
        results = sync(session, EXAMPLE.nodes[:2], {}, allow_degraded=True)
    assert [(r.node, r.ok, r.degraded) for r in results] == [("node01", True, [UNRESOLVED]), ("node02", True, [])]
    assert session.lock.state()["released"] is True


def test_status_carries_degraded_and_graceful_restart_to_the_fleet() -> None:
    doc = status_doc()
    doc["degraded"] = [UNRESOLVED]
    doc["bgp"]["graceful_restart"] = {"198.51.100.1": True, "198.51.100.2": False}
    view = ask(doc)
    assert view.degraded == (UNRESOLVED,) and view.healthy  # it serves: degraded is said, not a failure
    assert view.graceful_restart == {"198.51.100.1": True, "198.51.100.2": False}
    assert view.to_dict()["degraded"] == [UNRESOLVED]
    assert ask(status_doc()).graceful_restart is None  # an older ober on the node does not say


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("degraded", "not a list", "degraded is not a list of lines"),
        ("graceful_restart", {"198.51.100.1": "yes"}, "bgp.graceful_restart holds something"),
    ],
)
def test_malformed_degraded_or_graceful_restart_is_a_node_error(key: str, value: object, words: str) -> None:
    doc = status_doc()
    if key == "degraded":
        doc[key] = value
    else:
        doc["bgp"][key] = value
    view = ask(doc)
    assert view.error is not None and words in view.error
