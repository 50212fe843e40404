"""The rolling plan (pure) and the fleet lock (real shell, a temp dir standing in for each node's state dir)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from ober.config import NodeConfig
from ober.errors import OberError
from ober.haproxy_runtime import BackendState, Snapshot
from ober.healthd import HealthLoop, Pipe, Seen
from ober.inventory import InventoryNode
from ober.remote.lock import FleetLock, Holder, break_lock, holders
from ober.remote.roll import Options, Roll, RollReport
from ober.remote.rolling import (
    NodeFacts,
    NodeResult,
    Operation,
    Request,
    StepClass,
    classify,
    plan,
    summary,
)
from ober.render import render_node
from ober.runner import LocalRunner, Result
from tests.conftest import SECRETS

RESTART = Request(Operation.RESTART)
GR = 120
ROUTER = "100.64.0.1"
V1 = {"ober": "0.1.0", "exabgp": "5.0.15", "haproxy": "3.0.11"}


def node(name: str, **kw: object) -> NodeFacts:
    kw.setdefault("graceful_restart", GR)
    kw.setdefault("negotiated", {ROUTER: True})
    kw.setdefault("versions", V1)
    return NodeFacts(name, **kw)  # type: ignore[arg-type]


# (request, facts, expected class, words in the reason)
CASES = [
    (RESTART, node("n1"), StepClass.RESTART, "graceful restart"),
    (RESTART, node("n1", graceful_restart=0), StepClass.FULL, "graceful_restart is off"),
    (Request(Operation.RESTART, reload_only=True), node("n1", graceful_restart=0), StepClass.RELOAD, "stays"),
    (Request(Operation.RESTART, full=True), node("n1"), StepClass.FULL, "--full"),
    (RESTART, node("n1", done=True), StepClass.SKIP, "resumed"),
    # The node's setting is not enough: every established session must have negotiated it (issue 9 item 7).
    (RESTART, node("n1", negotiated={ROUTER: False}), StepClass.FULL, f"not negotiated with {ROUTER}"),
    (RESTART, node("n1", negotiated={ROUTER: True, "100.64.0.2": False}), StepClass.FULL, "with 100.64.0.2 (the"),
    (RESTART, node("n1", negotiated=None), StepClass.FULL, "does not report whether graceful restart"),
    (RESTART, node("n1", negotiated={}), StepClass.FULL, "no established BGP session negotiated"),
    (RESTART, node("n1", drained=True, live=False), StepClass.FULL, "drained by an operator"),
    (RESTART, node("n1", drained=True, drained_by_roll=True, live=False), StepClass.RESTART, "graceful"),
    # --reboot: every node is rebooted, withdrawn meanwhile, whatever else it would need.
    (Request(Operation.RESTART, reboot=True), node("n1"), StepClass.REBOOT, "--reboot: withdrawn"),
    (Request(Operation.RESTART, reboot=True), node("n1", graceful_restart=0), StepClass.REBOOT, "--reboot"),
    (Request(Operation.RESTART, reboot=True), node("n1", drained=True, live=False), StepClass.REBOOT, "left drained"),
    (Request(Operation.RESTART, reboot=True), node("n1", done=True), StepClass.SKIP, "resumed"),
    (Request(Operation.UPGRADE, wanted=V1), node("n1"), StepClass.SKIP, "up to date"),
    (Request(Operation.UPGRADE, wanted={**V1, "haproxy": "3.0.12"}), node("n1"), StepClass.RELOAD, "haproxy"),
    (Request(Operation.UPGRADE, wanted={**V1, "ober": "0.2.0"}), node("n1"), StepClass.RESTART, "graceful"),
    (
        Request(Operation.UPGRADE, wanted={**V1, "exabgp": "5.0.16"}),
        node("n1", graceful_restart=0),
        StepClass.FULL,
        "off",
    ),
    (Request(Operation.UPGRADE, wanted={"haproxy": "3.0.11"}, reinstall=True), node("n1"), StepClass.RELOAD, "haproxy"),
    (Request(Operation.UPGRADE, wanted={**V1, "ober": "0.2.0"}, full=True), node("n1"), StepClass.FULL, "--full"),
    (Request(Operation.UPGRADE, wanted={"ober": None}), node("n1"), StepClass.SKIP, "up to date"),
    # An HAProxy package file (--haproxy-package): the package version decides, and a reload applies it.
    (
        Request(Operation.UPGRADE, wanted={**V1, "haproxy_package": "3.0.11-1+ober1"}),
        node("n1", versions={**V1, "haproxy_package": "3.0.11-1"}),
        StepClass.RELOAD,
        "haproxy_package",
    ),
    (
        Request(Operation.UPGRADE, wanted={**V1, "haproxy_package": "3.0.11-1"}),
        node("n1", versions={**V1, "haproxy_package": "3.0.11-1"}),
        StepClass.SKIP,
        "up to date",
    ),
]


@pytest.mark.parametrize(("request_", "facts", "klass", "words"), CASES)
def test_each_node_gets_the_least_disruptive_class_it_needs(
    request_: Request, facts: NodeFacts, klass: StepClass, words: str
) -> None:
    step = classify(request_, facts)
    assert step.klass is klass
    assert words in step.reason
    # Only what truly stops the node serving takes it out of the ECMP set.
    assert step.klass.withdraws is (klass in (StepClass.FULL, StepClass.REBOOT))


def test_upgrade_step_says_what_changes_from_what_to_what() -> None:
    step = classify(Request(Operation.UPGRADE, wanted={**V1, "haproxy": "3.0.12"}), node("n1"))
    assert dict(step.changes) == {"haproxy": ("3.0.11", "3.0.12")}


def test_out_of_service_nodes_go_first_skipped_are_listed_and_order_is_otherwise_the_inventory_order() -> None:
    nodes = [
        node("n1"),
        node("n2", live=False),
        node("n3", done=True),
        node("n4", drained=True, drained_by_roll=True, live=False),
        node("n5"),
    ]
    steps = plan(RESTART, nodes, resumed="abc").steps
    assert [s.node for s in steps] == ["n3", "n2", "n4", "n1", "n5"]
    assert [s.klass for s in steps] == [StepClass.SKIP] + [StepClass.RESTART] * 4
    rebooted = plan(Request(Operation.RESTART, reboot=True), nodes, resumed="abc").steps
    assert [s.node for s in rebooted] == ["n3", "n2", "n4", "n1", "n5"]
    assert [s.klass for s in rebooted] == [StepClass.SKIP] + [StepClass.REBOOT] * 4


def test_summary_of_a_failed_roll_names_the_node_its_state_and_how_to_resume() -> None:
    results = [
        NodeResult("n1", StepClass.RESTART, "done"),
        NodeResult("n2", StepClass.RESTART, "failed", "verify: ober-http is failed", left_withdrawn=True),
        NodeResult("n3", StepClass.RESTART, "not reached"),
        NodeResult("n4", StepClass.RESTART, "not reached"),
    ]
    ok, text = summary(results, "ober fleet restart")
    assert not ok
    assert "stopped at n2" in text and "left withdrawn" in text and "n3, n4" in text
    assert "run `ober fleet restart` again" in text
    ok, text = summary([NodeResult("n1", StepClass.SKIP, "skipped"), NodeResult("n2", StepClass.RELOAD, "done")], "x")
    assert ok and "1 rolled" in text and "skipped (n1)" in text


class DirRunner:
    """A node whose state dir is its own local dir: the lock's real shell runs unchanged, only the dir moves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.local = LocalRunner()

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        # The state dir is the script's first argument: each node gets its own copy of it.
        moved = [*argv[:4], f"{argv[4]}/{self.name}", *argv[5:]]
        return self.local.run(moved, timeout, env)


class Unreachable:
    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        return Result(255, "", "ssh: connect to host n9 port 22: Connection refused")


def fleet(n: int = 3) -> dict[str, DirRunner]:
    return {f"n{i}": DirRunner(f"n{i}") for i in range(1, n + 1)}


def test_lock_is_taken_on_every_node_and_released_at_the_end_even_on_failure(tmp_path: Path) -> None:
    base = str(tmp_path)
    with pytest.raises(RuntimeError), FleetLock(fleet(), Holder.me("restart"), base):
        for name in ("n1", "n2", "n3"):
            owner = json.loads((tmp_path / name / "lock" / "owner").read_text())
            assert owner["operation"] == "restart" and "@" in owner["owner"]
        raise RuntimeError("the roll failed")
    assert not any((tmp_path / name / "lock").exists() for name in ("n1", "n2", "n3"))


def test_a_second_roll_is_refused_with_who_holds_it_since_when(tmp_path: Path) -> None:
    runners = fleet()
    base = str(tmp_path / "state")
    first = Holder.me("restart")
    with FleetLock(runners, first, base):
        with pytest.raises(OberError) as refused:
            FleetLock(runners, Holder.me("upgrade"), base).acquire()
        assert first.owner in refused.value.message and "restart" in refused.value.message
        assert "since" in refused.value.message and "--break" in str(refused.value.fix)
        # The refused roll did not remove the holder's lock.
        assert Path(base, "n1", "lock", "owner").exists()
        assert holders(runners, base)["n1"].token == first.token
    assert holders(runners, base) == {}


def test_release_leaves_someone_elses_lock_alone_and_break_removes_it(tmp_path: Path) -> None:
    runners = fleet(1)
    base = str(tmp_path / "state")
    theirs = FleetLock(runners, Holder.me("restart"), base).acquire()
    mine = FleetLock(runners, Holder.me("restart"), base)
    mine.held = ["n1"]  # as if we believed we held it
    mine.release()
    assert holders(runners, base)["n1"].token == theirs.holder.token
    assert break_lock(runners, base) == ["n1"]
    assert holders(runners, base) == {}
    assert break_lock(runners, base) == []


def test_a_node_that_cannot_be_reached_fails_the_lock_and_releases_the_others(tmp_path: Path) -> None:
    runners: dict[str, object] = {"n1": DirRunner("n1"), "n9": Unreachable()}
    base = str(tmp_path / "state")
    with pytest.raises(OberError, match="n9: cannot take the fleet lock: ssh: connect"):
        FleetLock(runners, Holder.me("restart"), base).acquire()  # type: ignore[arg-type]
    assert not Path(base, "n1", "lock").exists()


def test_holder_description_says_who_and_how_long_ago() -> None:
    holder = Holder("alice@ws", 42, time.time() - 300, "restart", "t")
    assert holder.describe().startswith("alice@ws (pid 42, restart) since ") and "5m ago" in holder.describe()
    assert Holder.parse("not json").owner.startswith("unknown")


def test_a_rerun_resumes_only_an_unfinished_roll_of_the_same_operation() -> None:
    from ober.remote.roll import resumable

    unfinished = {
        "n1": {"id": "a", "operation": "restart", "done": True},
        "n2": {"id": "a", "operation": "restart", "done": False},
        "n3": None,
    }
    assert resumable(unfinished, Request(Operation.RESTART).kind) == "a"
    assert resumable(unfinished, Request(Operation.UPGRADE).kind) is None
    # A failed --full roll is not resumed by a --reload one (nor a plain restart): different work per node.
    assert resumable(unfinished, Request(Operation.RESTART, reload_only=True).kind) is None
    assert resumable(unfinished, Request(Operation.RESTART, full=True).kind) is None
    full = {"n1": {"id": "f", "operation": "restart --full", "done": False}}
    assert resumable(full, Request(Operation.RESTART, full=True).kind) == "f"
    # A failed reboot roll is resumed only by a reboot roll (a --full one would skip its nodes' reboots).
    rebooted = {"n1": {"id": "r", "operation": "restart --reboot", "done": False}}
    assert Request(Operation.RESTART, reboot=True).kind == "restart --reboot"
    assert resumable(rebooted, Request(Operation.RESTART, reboot=True).kind) == "r"
    assert resumable(rebooted, Request(Operation.RESTART, full=True).kind) is None
    assert resumable(rebooted, Request(Operation.RESTART).kind) is None
    assert resumable(full, Request(Operation.RESTART, reboot=True).kind) is None
    finished = {"n1": {"id": "a", "operation": "restart", "done": True}, "n2": None}
    # A record left by a finished roll starts a new one.
    assert resumable(finished, Request(Operation.RESTART).kind) is None


def test_under_graceful_restart_end_of_rib_follows_the_first_decision_on_every_vip(
    make_config: Callable[..., NodeConfig], tmp_path: Path
) -> None:
    """After ExaBGP restarts, End-of-RIB goes out only once every VIP was announced (or decided down), so the
    router's stale routes are refreshed, not dropped for the `rise` checks (manual-eor in exabgp.conf)."""
    config = make_config(
        health={"rise": 2, "fall": 2, "maintenance_file": str(tmp_path / "maint")},
        bgp={"router_id": "100.64.0.11", "neighbors": "100.64.0.1", "graceful_restart": 120},
    )
    out = io.StringIO()
    up = {"be_ceph-a": 1, "be_ceph-b": 0}  # s3-b's group is down: it is decided "down", never announced
    clock = iter(float(i) for i in range(100))
    health = HealthLoop(
        config,
        list(config.vips),
        Pipe(out, io.StringIO()),
        lambda: Seen(Snapshot({name: BackendState(2, n) for name, n in up.items()}, {})),
        lambda: next(clock),
    )
    sent: list[str] = []
    for _ in range(4):
        health.tick()
        sent += out.getvalue().splitlines()
        out.seek(0)
        out.truncate()
    # s3-b's withdraw: a new helper cannot know what ExaBGP still announces for it, so "down" is said out loud.
    assert sent == [
        "withdraw route 198.51.100.20/32 next-hop self",
        "announce route 198.51.100.10/32 next-hop self",
        "announce eor ipv4 unicast",
    ]
    exabgp_conf = "/opt/ober/etc/exabgp.conf"
    assert "manual-eor true;" in render_node(config, SECRETS).file(exabgp_conf).content
    no_gr = make_config(bgp={"router_id": "100.64.0.11", "neighbors": "100.64.0.1"})
    assert "manual-eor" not in render_node(no_gr, SECRETS).file(exabgp_conf).content


def _left_lock(tmp_path: Path, node: str, holder: Holder, renewed_ago: float) -> Path:
    """A lock on ``node`` as another run left it, its lease last renewed ``renewed_ago`` seconds ago."""
    owner = tmp_path / node / "lock" / "owner"
    owner.parent.mkdir(parents=True)
    owner.write_text(holder.record())  # no trailing newline: the scripts must not glue the next line to it
    then = time.time() - renewed_ago
    os.utime(owner, (then, then))
    return owner


def test_a_lock_with_a_live_lease_is_never_taken_over_even_from_this_user_and_host(tmp_path: Path) -> None:
    """user@hostname and this machine's /proc prove nothing (another workstation may share the hostname)."""
    runners = fleet(2)
    base = str(tmp_path)
    # Same user@host as us, a PID that runs nowhere here, but a lease renewed a minute ago: a live operation.
    twin = Holder(Holder.me("restart").owner, 2**22 + 12345, time.time() - 600, "restart", "theirs", lease=900)
    _left_lock(tmp_path, "n2", twin, renewed_ago=60)
    with pytest.raises(OberError) as refused:
        FleetLock(runners, Holder.me("drain"), base).acquire()
    assert f"locked by {twin.owner} (pid {2**22 + 12345}, restart) since " in refused.value.message
    # The node's clock says how long ago: a second may pass between setting the time and the script reading it.
    assert re.search(r"lease renewed 6[0-2]s ago, expires in 14m \(on n2\)$", refused.value.message)
    assert holders(runners, base)["n2"].token == "theirs"
    assert not (tmp_path / "n1" / "lock").exists()  # what was taken before the refusal is given back


def test_a_lock_whose_lease_ran_out_is_taken_over_and_the_log_says_whose(tmp_path: Path) -> None:
    runners = fleet(2)
    base = str(tmp_path)
    gone = Holder("alice@elsewhere", 42, time.time() - 3600, "restart", "old", lease=900)
    _left_lock(tmp_path, "n2", gone, renewed_ago=1000)
    said: list[str] = []
    with FleetLock(runners, Holder.me("drain"), base, log=said.append) as lock:
        assert lock.held == ["n1", "n2"]
        assert holders(runners, base)["n2"].token == lock.holder.token
    took = "took over the fleet lock of alice@elsewhere (pid 42, restart): its lease had run out"
    assert said == [f"n2: {took} (last renewed 17m ago)"]
    # A lock from an ober without leases (no "lease" in its owner file) is never taken over: only --break.
    owner = _left_lock(tmp_path, "n2", Holder("bob@old", 7, time.time(), "restart", "t"), renewed_ago=10**6)
    record = json.loads(owner.read_text())
    del record["lease"]
    owner.write_text(json.dumps(record))
    os.utime(owner, (0, 0))
    with pytest.raises(OberError, match=r"bob@old \(pid 7, restart\) .*no lease \(an older ober\): held until broken"):
        FleetLock(runners, Holder.me("drain"), base).acquire()


def test_the_holder_renews_its_lease_and_stops_when_the_lock_is_taken_from_it(tmp_path: Path) -> None:
    runners = fleet(2)
    base = str(tmp_path)
    said: list[str] = []
    lock = FleetLock(runners, Holder.me("drain"), base, renew_every=0.05, log=said.append).acquire()
    try:
        owner = tmp_path / "n1" / "lock" / "owner"
        os.utime(owner, (time.time() - 800, time.time() - 800))
        deadline = time.monotonic() + 10
        while time.time() - owner.stat().st_mtime > 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - owner.stat().st_mtime < 60  # renewed on the node, in the background
        lock.ensure()  # still ours
        assert break_lock({"n2": runners["n2"]}, base) == ["n2"]
        while not lock.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OberError, match="fleet lock was taken from this operation on n2"):
            lock.ensure()
        assert said == ["n2: the fleet lock is no longer ours (broken, or taken over)"]
    finally:
        assert lock.release() == []
    assert lock.note() == "the fleet lock is released" and lock.state()["released"] is True
    assert holders(runners, base) == {}


def test_a_lock_that_could_not_be_released_says_where_and_how_to_free_it(tmp_path: Path) -> None:
    lock = FleetLock({"n1": DirRunner("n1")}, Holder.me("restart"), str(tmp_path)).acquire()
    lock.runners["n1"] = Unreachable()  # the node is lost before the end
    assert lock.release() == ["n1"]
    assert lock.note() == (
        "the fleet lock is still held on n1: it expires 15m after its last renewal, "
        "or remove it now with: ober fleet lock --break"
    )
    assert lock.state() == {"released": False, "held_on": ["n1"], "how_to_release": lock.note().split(": ", 1)[1]}


def _deb(tmp_path: Path, package: str, version: str) -> Path:
    """A real (tiny) Debian package built with dpkg-deb."""
    tree = tmp_path / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.test>\n"
        "Description: test\n"
    )
    out = tmp_path / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", str(tree), str(out)], check=True, capture_output=True, timeout=60)
    return out


def test_an_haproxy_package_file_is_read_for_its_version_and_anything_else_refused(tmp_path: Path) -> None:
    from ober.remote.upgrade import Installer, PackageFile

    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    package = PackageFile.read(_deb(tmp_path, "haproxy", "3.0.11-1+ober1"))
    assert (package.kind, package.version) == ("deb", "3.0.11-1+ober1")
    assert Installer.build(package=package).wanted["haproxy_package"] == "3.0.11-1+ober1"
    with pytest.raises(OberError, match="is the 'nginx' package, not haproxy"):
        PackageFile.read(_deb(tmp_path, "nginx", "1.0"))
    (tmp_path / "junk.deb").write_text("not a package")
    with pytest.raises(OberError, match=r"junk\.deb: not a readable deb package"):
        PackageFile.read(tmp_path / "junk.deb")
    with pytest.raises(OberError, match=r"not a \.deb or \.rpm"):
        PackageFile.read(tmp_path / "haproxy-tree/DEBIAN/control")
    with pytest.raises(OberError, match="no such package file"):
        PackageFile.read(tmp_path / "missing.deb")


def test_the_probe_through_the_vips_passes_only_answers_below_500() -> None:
    from ober.remote.probe import judge

    vips = ["198.51.100.10", "198.51.100.20"]
    assert judge('{"198.51.100.10": 200, "198.51.100.20": 403}', vips) == []
    assert judge('{"198.51.100.10": 503, "198.51.100.20": "ConnectionRefusedError: refused"}', vips) == [
        "GET https://198.51.100.10/ through this node: HTTP 503",
        "GET https://198.51.100.20/ through this node: ConnectionRefusedError: refused",
    ]
    assert judge('{"198.51.100.10": 200}', vips) == ["GET https://198.51.100.20/ through this node: no answer"]
    assert judge("Traceback ...", vips) == ["probe through the VIPs answered no JSON"]


# --- the reboot step (ober.remote.reboot and the executor), on fake nodes; tests/test_fleet_roll_lab.py has the real


def stat_line(start: int, comm: str = "systemd") -> str:
    """A /proc/1/stat line whose field 22 (start time) is ``start``."""
    return f"1 ({comm}) " + " ".join(["S", *["0"] * 18, str(start), *["0"] * 30])


def test_boot_identity_is_the_boot_id_with_pid_1s_start_time() -> None:
    from ober.remote.reboot import parse_identity

    assert parse_identity(f"b1\n{stat_line(12345)}\n") == "b1/12345"
    # The command name may hold spaces and parentheses: fields are counted after its last ')'.
    assert parse_identity(f"b1\n{stat_line(77, comm='a) (b c')}\n") == "b1/77"
    with pytest.raises(OberError, match="boot identity"):
        parse_identity("b1\n")
    with pytest.raises(OberError, match="boot identity"):
        parse_identity("b1\n1 (init) S 0\n")


class Scripted:
    """Answers each command with the next of ``answers`` (a Result, or an exception to raise); counts reconnects."""

    def __init__(self, answers: Sequence[Result | OberError], reconnects: Sequence[OberError | None] = ()) -> None:
        self.answers = list(answers)
        self.reconnects = list(reconnects)
        self.asked: list[list[str]] = []
        self.reconnected = 0

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        self.asked.append(list(argv))
        answer = self.answers.pop(0)
        if isinstance(answer, OberError):
            raise answer
        return answer

    def reconnect(self) -> None:
        failure = self.reconnects.pop(0) if self.reconnects else None
        if failure is not None:
            raise failure
        self.reconnected += 1


LOST = OberError("node01: lost the SSH connection to 100.64.0.11 while running cat: the connection is closed")


def test_a_reboot_request_cut_short_by_the_node_going_down_counts_as_asked() -> None:
    from ober.remote.reboot import request_reboot

    for answer in (Result(0), Result(255, "", ""), LOST):
        node = Scripted([answer])
        request_reboot(node)
        assert node.asked == [["systemctl", "reboot"]]
    with pytest.raises(OberError, match="systemctl reboot failed: Failed to reboot: Access denied"):
        request_reboot(Scripted([Result(1, "", "Failed to reboot: Access denied")]))


def test_wait_back_reconnects_until_the_node_answers_from_a_new_boot() -> None:
    from ober.remote.reboot import wait_back

    before, after = f"b\n{stat_line(100)}\n", f"b\n{stat_line(900)}\n"
    refused = OberError("node01: connection refused")
    node = Scripted(
        # sshd still answers from the old boot, then the connection dies with it; the new boot answers.
        [Result(0, before), LOST, LOST, Result(0, after)],
        reconnects=[refused, None],
    )
    now = [0.0]
    took = wait_back(node, "b/100", 60, poll=5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert took == 10.0  # a pause after the old boot's answer and after the refused reconnect, none after the good one
    assert node.reconnected == 1 and not node.answers


def test_wait_back_gives_up_at_its_deadline_saying_what_it_saw_last() -> None:
    from ober.remote.reboot import wait_back

    refused = OberError("node01: connection refused")
    node = Scripted([LOST] * 10, reconnects=[refused] * 10)
    now = [0.0]
    with pytest.raises(OberError, match=r"not back from its reboot within 12s; last: node01: connection refused"):
        wait_back(node, "b/100", 12, poll=5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    # A node that never went down is not taken for one that came back.
    stayed = Scripted([Result(0, f"b\n{stat_line(100)}\n")] * 10)
    now[0] = 0.0
    with pytest.raises(OberError, match="still answered from the boot before"):
        wait_back(stayed, "b/100", 12, poll=5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))


class FakeFleet:
    """The example inventory's four nodes behind fake connections, for the roll executor.

    The lock and roll-record scripts run for real (each node's state dir is its own temp dir, see `DirRunner`);
    ``ober status``, ``ober drain`` and ``ober undrain`` answer from the node's state; ``systemctl reboot`` drops
    its connection and the node refuses ``down`` reconnects before it answers from a new boot (``never``: it
    never comes back). Every state change is logged in order, across nodes.
    """

    def __init__(self, base: Path, down: int = 2, never: str = "") -> None:
        from tests.test_fleet_ops import EXAMPLE

        self.inventory = EXAMPLE
        self.base = base
        self.events: list[str] = []
        self.nodes = {n.name: FakeNode(self, n.name, down, n.name == never) for n in EXAMPLE.nodes}

    def live(self) -> int:
        return sum(1 for node in self.nodes.values() if node.connected and not node.drained)


class FakeNode(DirRunner):
    def __init__(self, fleet: FakeFleet, name: str, down: int, never: bool) -> None:
        super().__init__(name)
        self.fleet, self.down, self.never = fleet, down, never
        self.boot, self.connected, self.refusals = 1, True, 0
        self.drained: str | None = None
        self.asked: list[list[str]] = []
        self.graceful: dict[str, bool | None] | None = None
        """What its ``ober status`` says of graceful restart per neighbor (None: nothing, as an older ober)."""
        self.degraded: list[str] = []

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        from tests.test_fleet_ops import status_doc

        self.asked.append(list(argv))
        if not self.connected:
            raise OberError(f"{self.name}: lost the SSH connection: the connection is closed")
        words = list(argv)
        if words[0] == "sh":
            return super().run([*words[:4], str(self.fleet.base), *words[5:]], timeout, env)
        if words[:2] == ["systemctl", "reboot"]:
            self.fleet.events.append(f"{self.name} reboot (live: {self.fleet.live()})")
            self.connected, self.refusals = False, self.down
            raise OberError(f"{self.name}: lost the SSH connection while running systemctl reboot")
        if words[0] == "cat":
            return Result(0, f"host-boot-id\n{stat_line(1000 * self.boot)}\n")
        if "drain" in words:
            self.fleet.events.append(f"{self.name} drain (live: {self.fleet.live()})")
            self.drained = words[words.index("--reason") + 1]
            return Result(0, json.dumps({"drained": True, "by": "t", "since": 1.0, "sessions_left": 0}))
        if "undrain" in words:
            self.drained = None
            self.fleet.events.append(f"{self.name} undrain")
            return Result(0, json.dumps({"drained": False, "was_drained": True}))
        doc = status_doc(node=self.name, degraded=self.degraded)
        if self.graceful is not None:
            doc["bgp"]["graceful_restart"] = self.graceful
        if self.drained is not None:
            doc["drained"] = {"by": "t", "since": 1.0, "reason": self.drained}
            doc["bgp"]["announced"] = {}
        return Result(0, json.dumps(doc))

    def reconnect(self) -> None:
        if self.never or self.refusals > 0:
            self.refusals -= 1
            raise OberError(f"{self.name}: connection refused")
        if not self.connected:
            self.boot += 1  # what answers now is the new boot
            self.connected = True
            self.fleet.events.append(f"{self.name} back")


def reboot_roll(fleet: FakeFleet, targets: Sequence[str], timeout: float = 60.0) -> RollReport:
    options = Options(settle=0, quiesce=1, probe=False, reboot_timeout=timeout, state_dir=str(fleet.base))
    nodes = [n for n in fleet.inventory.nodes if n.name in targets]
    request = Request(Operation.RESTART, reboot=True)
    return Roll(
        fleet.inventory, nodes, fleet.nodes, request, options=options, command="ober fleet restart --reboot"
    ).run()


def test_a_reboot_roll_withdraws_reboots_and_brings_back_one_node_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ober.remote.reboot as reboot

    monkeypatch.setattr(reboot, "POLL", 0.01)
    fleet = FakeFleet(tmp_path)
    report = reboot_roll(fleet, ["node01", "node02"])
    assert [(r.node, r.klass, r.status) for r in report.results] == [
        ("node01", StepClass.REBOOT, "done"),
        ("node02", StepClass.REBOOT, "done"),
    ]
    # Each node leaves (3 of 4 live while it reboots), comes back from a new boot, is re-announced: then the next.
    assert fleet.events == [
        "node01 drain (live: 4)",
        "node01 reboot (live: 3)",
        "node01 back",
        "node01 undrain",
        "node02 drain (live: 4)",
        "node02 reboot (live: 3)",
        "node02 back",
        "node02 undrain",
    ]
    assert [fleet.nodes[n].boot for n in ("node01", "node02", "node03")] == [2, 2, 1]
    drain = next(a for a in fleet.nodes["node01"].asked if "drain" in a)
    assert "--quiesce" in drain
    assert not any((tmp_path / n / "lock").exists() for n in fleet.nodes)  # released on the rebooted nodes too


def test_a_node_not_back_in_time_stops_the_roll_withdrawn_and_a_reboot_roll_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ober.remote.reboot as reboot

    monkeypatch.setattr(reboot, "POLL", 0.01)
    fleet = FakeFleet(tmp_path, never="node02")
    report = reboot_roll(fleet, ["node01", "node02", "node03"], timeout=0.3)
    by_node = {r.node: r for r in report.results}
    assert [by_node[n].status for n in ("node01", "node02", "node03")] == ["done", "failed", "not reached"]
    failed = by_node["node02"]
    assert failed.left_withdrawn and failed.detail.startswith("reboot: not back from its reboot within 0.3s")
    assert "connection refused" in failed.detail
    ok, text = summary(report.results, "ober fleet restart --reboot")
    assert not ok and "left withdrawn" in text and "run `ober fleet restart --reboot` again" in text
    # The roll could not release its lock on node02 (no connection) and says so, with how to free it.
    assert report.lock == {
        "released": False,
        "held_on": ["node02"],
        "how_to_release": "it expires 15m after its last renewal, or remove it now with: ober fleet lock --break",
    }
    assert report.lock_note.startswith("the fleet lock is still held on node02: it expires 15m after")
    # The node is back later: its lock would be taken over once its lease runs out; here it is broken.
    fleet.nodes["node02"].never = False
    fleet.nodes["node02"].refusals = 0
    fleet.nodes["node02"].reconnect()
    assert break_lock({"node02": fleet.nodes["node02"]}, str(tmp_path)) == ["node02"]
    # The same command resumes: node01 skipped, node02 rebooted again, node03 after it.
    again = reboot_roll(fleet, ["node01", "node02", "node03"])
    assert again.plan.resumed
    assert [(r.node, r.status) for r in again.results] == [
        ("node01", "skipped"),
        ("node02", "done"),
        ("node03", "done"),
    ]
    assert fleet.nodes["node02"].drained is None and fleet.nodes["node01"].boot == 2


def test_reboot_contradicts_full_and_reload_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from ober.cli import main
    from tests.conftest import REPO

    inventory = str(REPO / "inventory" / "example.yaml")
    for flags in (["--reboot", "--full"], ["--reboot", "--reload"], ["--full", "--reload"]):
        # A usage error, like any other click refuses: exit 2, as the README says.
        assert main(["fleet", "restart", *flags, "-i", inventory]) == 2
        err = capsys.readouterr().err
        first, second = sorted(flags, key=["--full", "--reload", "--reboot"].index)
        expected = (
            f"error: {first} and {second} contradict each other: choose one (fix: see 'ober fleet restart --help')"
        )
        assert err == expected + "\n"


def test_a_roll_that_fails_before_its_first_node_says_the_lock_is_released(tmp_path: Path) -> None:
    fleet = FakeFleet(tmp_path)
    runners = {name: node for name, node in fleet.nodes.items() if name != "node03"}  # no SSH to node03
    roll = Roll(fleet.inventory, fleet.inventory.nodes, runners, RESTART, options=Options(state_dir=str(tmp_path)))
    with pytest.raises(OberError) as failed:
        roll.run()
    assert failed.value.message == "cannot reach node03 (the fleet lock is released)"
    assert not any((tmp_path / name / "lock").exists() for name in runners)


# --- graceful restart as negotiated, degraded nodes (issue 9 items 5 and 7) --------------------------------------

PEERS = ("198.51.100.1", "198.51.100.2")


def gr_on(node: InventoryNode) -> InventoryNode:
    """``node`` with ``bgp.graceful_restart: 120`` (the example inventory has it off)."""
    bgp = dataclasses.replace(node.config.bgp, graceful_restart=GR)
    return dataclasses.replace(node, config=dataclasses.replace(node.config, bgp=bgp))


def with_graceful_restart(fleet: FakeFleet) -> FakeFleet:
    """The fleet's inventory with ``bgp.graceful_restart: 120`` on every node."""
    fleet.inventory = dataclasses.replace(fleet.inventory, nodes=tuple(gr_on(n) for n in fleet.inventory.nodes))
    return fleet


def test_the_plan_uses_what_each_routers_session_negotiated_not_the_nodes_setting(tmp_path: Path) -> None:
    fleet = with_graceful_restart(FakeFleet(tmp_path))
    fleet.nodes["node01"].graceful = dict.fromkeys(PEERS, True)
    fleet.nodes["node02"].graceful = {PEERS[0]: True, PEERS[1]: False}
    # node03 and node04 run an ober that does not report it.
    options = Options(dry_run=True, state_dir=str(tmp_path))
    nodes = [n for n in fleet.inventory.nodes if n.name in ("node01", "node02", "node03")]
    assert all(n.config.bgp.graceful_restart > 0 for n in nodes)
    steps = {s.node: s for s in Roll(fleet.inventory, nodes, fleet.nodes, RESTART, options=options).run().plan.steps}
    assert steps["node01"].klass is StepClass.RESTART
    assert steps["node02"].klass is StepClass.FULL
    assert steps["node02"].reason == (
        f"graceful restart not negotiated with {PEERS[1]} (the router did not advertise it): restarting ExaBGP "
        "would drop the route, so withdraw first"
    )
    assert steps["node03"].klass is StepClass.FULL


def test_a_session_not_established_does_not_count_against_graceful_restart() -> None:
    from ober.remote.roll import facts_for
    from tests.test_fleet_ops import ask, status_doc

    doc = status_doc()
    doc["bgp"]["sessions"][PEERS[1]] = "connect"
    doc["bgp"]["graceful_restart"] = {PEERS[0]: True, PEERS[1]: None}
    from tests.test_fleet_ops import NODE

    facts = facts_for(gr_on(NODE), ask(doc), None, None)
    assert facts.negotiated == {PEERS[0]: True}
    assert classify(RESTART, facts).klass is StepClass.RESTART


def degraded_roll(fleet: FakeFleet, *, allow: bool) -> RollReport:
    options = Options(settle=0, probe=False, state_dir=str(fleet.base), allow_degraded=allow)
    nodes = [n for n in fleet.inventory.nodes if n.name in ("node01", "node02")]
    for name in ("node01", "node02"):
        fleet.nodes[name].graceful = dict.fromkeys(PEERS, True)
    return Roll(fleet.inventory, nodes, fleet.nodes, RESTART, options=options).run()


def test_a_node_left_degraded_stops_the_roll_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ober.remote.nodeclient as nodeclient
    import ober.remote.roll as roll

    monkeypatch.setattr(roll, "DEGRADED_GRACE", 0.05)
    monkeypatch.setattr(nodeclient, "POLL", 0.01)  # the verify's waits are the node client's
    problem = "backend ceph-a server rgw2: rgw2.invalid does not resolve; HAProxy keeps it in maintenance"
    fleet = with_graceful_restart(FakeFleet(tmp_path / "stopped"))
    (tmp_path / "stopped").mkdir()
    fleet.nodes["node01"].degraded = [problem]
    report = degraded_roll(fleet, allow=False)
    assert [(r.node, r.status) for r in report.results] == [("node01", "failed"), ("node02", "not reached")]
    assert report.results[0].detail == f"verify: HAProxy serves degraded: {problem}"

    fleet = with_graceful_restart(FakeFleet(tmp_path / "allowed"))
    (tmp_path / "allowed").mkdir()
    fleet.nodes["node01"].degraded = [problem]
    report = degraded_roll(fleet, allow=True)
    assert [(r.node, r.status) for r in report.results] == [("node01", "done"), ("node02", "done")]


def test_a_reload_haproxy_could_not_load_fails_the_step(tmp_path: Path) -> None:
    """`ober reload` on the node fails when no new HAProxy worker came (the old one kept serving the old config)."""
    fleet = FakeFleet(tmp_path)
    refused = fleet.nodes["node02"]
    original = refused.run

    def run(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        if "reload" in argv:
            refused.asked.append(list(argv))
            error = {"error": "HAProxy did not load the new configuration: [ALERT] Cannot raise FD limit"}
            return Result(1, json.dumps(error), "")
        return original(argv, timeout, env)

    refused.run = run  # type: ignore[method-assign]
    options = Options(settle=0, quiesce=1, probe=False, state_dir=str(fleet.base))
    request = Request(Operation.RESTART, reload_only=True)
    report = Roll(fleet.inventory, list(fleet.inventory.nodes), fleet.nodes, request, options=options).run()
    assert [(r.node, r.status) for r in report.results][:2] == [("node01", "done"), ("node02", "failed")]
    assert {r.status for r in report.results[2:]} == {"not reached"}  # the first failure stops the roll
    assert "Cannot raise FD limit" in report.results[1].detail
    assert any(argv[1:2] == ["reload"] for argv in fleet.nodes["node01"].asked)
