"""The health state machine, transition by transition, and the loop around it with a fake HAProxy."""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ober.config import DrainPolicy, NodeConfig
from ober.haproxy_runtime import BackendState, Snapshot, parse_show_stat
from ober.health import UNKNOWN, Action, Observation, Rules, State, VipState, command, step
from ober.healthd import ConfigSource, HealthLoop, Pipe, Seen, observe_haproxy, running, servable, watch_pid

RULES = Rules(rise=2, fall=3)
UP = VipState(State.UP, 0, Action.ANNOUNCE, 0.0)
DOWN = VipState(State.DOWN, 0, None, 0.0)

# (start, healthy, maintenance, rules, expected state, expected count, expected action)
TABLE: list[tuple[VipState, bool, bool, Rules, State, int, Action | None]] = [
    (VipState(), True, False, RULES, State.RISING, 1, None),
    (VipState(), True, False, Rules(1, 3), State.UP, 0, Action.ANNOUNCE),
    (VipState(), False, False, RULES, State.DOWN, 0, None),
    (VipState(State.RISING, 1), True, False, RULES, State.UP, 0, Action.ANNOUNCE),
    (VipState(State.RISING, 1), False, False, RULES, State.DOWN, 0, None),
    (UP, True, False, RULES, State.UP, 0, None),
    (UP, False, False, RULES, State.FALLING, 1, None),
    (UP, False, False, Rules(2, 1), State.DOWN, 0, Action.WITHDRAW),
    (VipState(State.FALLING, 1, Action.ANNOUNCE), False, False, RULES, State.FALLING, 2, None),
    (VipState(State.FALLING, 2, Action.ANNOUNCE), False, False, RULES, State.DOWN, 0, Action.WITHDRAW),
    (VipState(State.FALLING, 2, Action.ANNOUNCE), True, False, RULES, State.UP, 0, None),
    (DOWN, True, False, RULES, State.RISING, 1, None),
    (DOWN, False, False, RULES, State.DOWN, 0, None),
    # Maintenance: withdraw at once without a drain policy, whatever the health.
    (UP, True, True, RULES, State.DISABLED, 0, Action.WITHDRAW),
    (UP, False, True, RULES, State.DISABLED, 0, Action.WITHDRAW),
    (DOWN, True, True, RULES, State.DISABLED, 0, None),
    (VipState(State.DISABLED), True, True, RULES, State.DISABLED, 0, None),
    # Leaving maintenance needs `rise` good checks again.
    (VipState(State.DISABLED), True, False, RULES, State.RISING, 1, None),
    (VipState(State.DISABLED), False, False, RULES, State.DOWN, 0, None),
    # Make-before-break: announce less preferred first.
    (UP, True, True, Rules(2, 3, 5.0), State.DRAINING, 0, Action.ANNOUNCE_DRAIN),
    # A restarted helper does not know what ExaBGP still announces: "not servable" and "drained" are sent out loud.
    (UNKNOWN, False, False, RULES, State.DOWN, 0, Action.WITHDRAW),
    (UNKNOWN, True, True, RULES, State.DISABLED, 0, Action.WITHDRAW),
    (UNKNOWN, True, False, RULES, State.RISING, 1, None),
    (VipState(State.RISING, 1, known=False), False, False, RULES, State.DOWN, 0, Action.WITHDRAW),
]


@pytest.mark.parametrize(("start", "healthy", "maintenance", "rules", "state", "count", "action"), TABLE)
def test_transitions(
    start: VipState, healthy: bool, maintenance: bool, rules: Rules, state: State, count: int, action: Action | None
) -> None:
    after, did = step(start, Observation(healthy, maintenance, 10.0), rules)
    assert (after.state, after.count, did) == (state, count, action)
    if did is Action.WITHDRAW:
        assert after.announced is None
    if did in (Action.ANNOUNCE, Action.ANNOUNCE_DRAIN):
        assert after.announced is did


def test_a_definite_failure_withdraws_without_waiting_for_fall() -> None:
    # HAProxy gone, or its own checks report no live server: nothing left to confirm.
    after, did = step(UP, Observation(False, False, 1.0, definite=True), Rules(2, 5))
    assert (after.state, did) == (State.DOWN, Action.WITHDRAW)
    # A HAProxy that is only slow to answer is a doubtful check: `fall` of them in a row.
    after, did = step(UP, Observation(False, False, 1.0, definite=False), Rules(2, 5))
    assert (after.state, did) == (State.FALLING, None)


def test_a_known_state_sends_each_withdraw_once() -> None:
    down, did = step(UNKNOWN, Observation(False, False, 1.0, definite=True), RULES)
    assert did is Action.WITHDRAW and down.known
    still, did = step(down, Observation(False, False, 2.0, definite=True), RULES)
    assert did is None and still.state is State.DOWN


def test_drain_waits_its_delay_then_withdraws() -> None:
    rules = Rules(2, 3, drain_delay=5.0)
    draining, action = step(UP, Observation(True, True, 100.0), rules)
    assert action is Action.ANNOUNCE_DRAIN and draining.since == 100.0
    still, action = step(draining, Observation(True, True, 104.9), rules)
    assert still.state is State.DRAINING and action is None
    done, action = step(still, Observation(True, True, 105.0), rules)
    assert done.state is State.DISABLED and action is Action.WITHDRAW and done.announced is None


def test_drain_cancelled_restores_normal_announcement() -> None:
    rules = Rules(2, 3, drain_delay=5.0)
    draining, _ = step(UP, Observation(True, True, 0.0), rules)
    back, action = step(draining, Observation(True, False, 1.0), rules)
    assert back.state is State.UP and action is Action.ANNOUNCE and back.announced is Action.ANNOUNCE
    broken, action = step(draining, Observation(False, False, 1.0), rules)
    assert broken.state is State.DOWN and action is Action.WITHDRAW


def test_flapping_never_announces_twice_in_a_row() -> None:
    state, sent = VipState(), []
    for i in range(200):
        state, action = step(state, Observation(i % 3 != 0, False, float(i)), RULES)
        if action:
            sent.append(action)
    # Announce and withdraw alternate: ExaBGP never gets a duplicate.
    assert all(a is not b for a, b in itertools.pairwise(sent))


def test_commands() -> None:
    assert command(Action.ANNOUNCE, "198.51.100.10", None) == "announce route 198.51.100.10/32 next-hop self"
    assert command(Action.WITHDRAW, "198.51.100.10", None) == "withdraw route 198.51.100.10/32 next-hop self"
    drain = DrainPolicy(community="65535:0", med=1000, delay=5.0)
    assert (
        command(Action.ANNOUNCE_DRAIN, "198.51.100.10", drain)
        == "announce route 198.51.100.10/32 next-hop self med 1000 community [65535:0]"
    )


SHOW_STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status
fe_s3-a,FRONTEND,,,7,9,100,20,0,0,0,0,0,,,,,OPEN
be_ceph-a,100_64_1_11-7480,0,0,0,1,,5,0,0,,0,,0,0,0,0,UP
be_ceph-a,100_64_1_12-7480,0,0,0,1,,5,0,0,,0,,0,0,0,0,DOWN
be_ceph-a,BACKEND,0,0,3,4,,5,0,0,0,0,,0,0,0,0,UP
be_ceph-b,rgw-b1-8080,0,0,0,1,,5,0,0,,0,,0,0,0,0,MAINT
be_ceph-b,rgw-b2-8080,0,0,0,1,,5,0,0,,0,,0,0,0,0,UP 1/3
be_ceph-c,s1,0,0,0,1,,5,0,0,,0,,0,0,0,0,DOWN 1/2
stats,FRONTEND,,,1,1,100,1,0,0,0,0,0,,,,,OPEN
"""


def test_parse_show_stat() -> None:
    snap = parse_show_stat(SHOW_STAT)
    assert snap.backends["be_ceph-a"] == BackendState(servers=2, up=1, in_flight=3)  # its scur: requests in flight
    assert snap.live_servers("be_ceph-b") == 1  # "UP 1/3" is still up
    assert snap.live_servers("be_ceph-c") == 0
    assert snap.live_servers("be_missing") == 0
    assert snap.sessions == {"fe_s3-a": 7, "stats": 1}


class FakeHAProxy:
    def __init__(self) -> None:
        self.up: dict[str, int] | None = {"be_ceph-a": 1, "be_ceph-b": 1}
        self.gone = False
        """HAProxy not running at all (its socket refuses); else ``up`` None means it does not answer in time."""

    def __call__(self) -> Seen:
        if self.gone:
            return Seen(None, gone=True)
        if self.up is None:
            return Seen(None)
        return Seen(Snapshot({name: BackendState(2, n) for name, n in self.up.items()}, {}))


@pytest.fixture
def loop(make_config: Callable[..., NodeConfig], tmp_path: Path) -> tuple[HealthLoop, FakeHAProxy, io.StringIO]:
    config = make_config(
        health={"rise": 2, "fall": 2, "maintenance_file": str(tmp_path / "maint")},
        bgp={"router_id": "100.64.0.11", "neighbors": "100.64.0.1"},
    )
    out = io.StringIO()
    haproxy = FakeHAProxy()
    clock = iter(float(i) for i in range(1000))
    return HealthLoop(config, list(config.vips), Pipe(out, io.StringIO()), haproxy, lambda: next(clock)), haproxy, out


def lines(out: io.StringIO) -> list[str]:
    text = out.getvalue().splitlines()
    out.seek(0)
    out.truncate()
    return text


def test_loop_announces_per_vip_and_withdraws_only_the_broken_one(
    loop: tuple[HealthLoop, FakeHAProxy, io.StringIO],
) -> None:
    health, haproxy, out = loop
    health.tick()
    assert lines(out) == []  # rise is 2
    health.tick()
    assert lines(out) == [
        "announce route 198.51.100.10/32 next-hop self",
        "announce route 198.51.100.20/32 next-hop self",
    ]
    haproxy.up = {"be_ceph-a": 1, "be_ceph-b": 0}
    health.tick()  # HAProxy's own checks found s3-b's group dead: withdrawn in this round, not `fall` rounds later
    assert lines(out) == ["withdraw route 198.51.100.20/32 next-hop self"]
    haproxy.up = None  # HAProxy does not answer in time: a doubtful check, `fall` (2) of them withdraw
    health.tick()
    assert lines(out) == []
    health.tick()
    assert lines(out) == ["withdraw route 198.51.100.10/32 next-hop self"]


def test_loop_withdraws_at_once_when_haproxy_is_not_running(loop: tuple[HealthLoop, FakeHAProxy, io.StringIO]) -> None:
    health, haproxy, out = loop
    health.tick()
    health.tick()
    lines(out)
    haproxy.gone = True
    health.tick()
    assert lines(out) == [
        "withdraw route 198.51.100.10/32 next-hop self",
        "withdraw route 198.51.100.20/32 next-hop self",
    ]
    haproxy.gone = False  # back (systemd restarted it): `rise` good checks announce again
    health.tick()
    assert lines(out) == []
    health.tick()
    assert len(lines(out)) == 2


def test_a_restarted_helper_withdraws_what_the_old_one_announced(
    loop: tuple[HealthLoop, FakeHAProxy, io.StringIO],
) -> None:
    """ExaBGP restarts a killed helper and keeps the routes the old one announced: the new one must withdraw them
    when the node is drained or cannot serve, though it never announced anything itself."""
    health, haproxy, out = loop
    Path(health.config.health.maintenance_file).touch()
    haproxy.up = {"be_ceph-a": 1, "be_ceph-b": 0}
    health.tick()
    assert lines(out) == [
        "withdraw route 198.51.100.10/32 next-hop self",
        "withdraw route 198.51.100.20/32 next-hop self",
    ]
    health.tick()
    assert lines(out) == []  # said once


def test_loop_maintenance_file_and_shutdown(loop: tuple[HealthLoop, FakeHAProxy, io.StringIO]) -> None:
    health, _, out = loop
    health.tick()
    health.tick()
    lines(out)
    Path(health.config.health.maintenance_file).touch()
    health.tick()
    assert lines(out) == [
        "withdraw route 198.51.100.10/32 next-hop self",
        "withdraw route 198.51.100.20/32 next-hop self",
    ]
    assert health.report()["vips"] == {
        "198.51.100.10": {"name": "s3-a", "state": "disabled", "announced": None},
        "198.51.100.20": {"name": "s3-b", "state": "disabled", "announced": None},
    }
    Path(health.config.health.maintenance_file).unlink()
    health.tick()
    health.tick()
    assert len(lines(out)) == 2
    health.shutdown()
    assert lines(out) == [
        "withdraw route 198.51.100.10/32 next-hop self",
        "withdraw route 198.51.100.20/32 next-hop self",
    ]


def test_servable_needs_haproxy_and_a_live_server(make_config: Callable[..., NodeConfig]) -> None:
    vip = make_config().vips[0]
    assert not servable(vip, None)
    assert not servable(vip, Snapshot({"be_ceph-a": BackendState(2, 0)}, {}))
    assert servable(vip, Snapshot({"be_ceph-a": BackendState(2, 1)}, {}))


def test_acks_are_read_so_exabgp_never_blocks() -> None:
    import os
    import threading

    read_end, write_end = os.pipe()
    pipe = Pipe(io.StringIO(), os.fdopen(read_end, "r"))
    pipe.start()
    writer = os.fdopen(write_end, "w")
    # Far more than a pipe buffer holds (64 KiB): without a reader, ExaBGP's write would block here.
    done = threading.Event()

    def flood() -> None:
        for _ in range(100_000):
            writer.write("done\n")
        writer.write("error\n")
        writer.close()
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(10.0), "the ack writer blocked: acks are not being read"
    assert pipe.gone.wait(5.0)  # EOF: ExaBGP closed our stdin
    assert pipe.errors == 1


def _write(path: Path, data: dict[str, object]) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(yaml.safe_dump(data))
    temp.replace(path)  # as `ober config` writes it: a new file under the name


def test_config_changes_take_effect_in_the_running_loop(
    node_data: dict[str, object], tmp_path: Path, loop: tuple[HealthLoop, FakeHAProxy, io.StringIO]
) -> None:
    """A new VIP is announced, a removed one withdrawn, a new `rise` honoured; the VIP that did not change keeps
    its announcement throughout (no withdraw, no re-announce)."""
    health, _, out = loop
    data = copy.deepcopy(node_data)
    data["health"] = {"rise": 2, "fall": 2, "maintenance_file": str(tmp_path / "maint")}
    data["bgp"] = {"router_id": "100.64.0.11", "neighbors": "100.64.0.1"}
    source = tmp_path / "ober.yaml"
    _write(source, data)
    watched = ConfigSource(source)
    assert watched.changed() is None  # nothing changed since it was read
    health.tick()
    health.tick()
    assert len(lines(out)) == 2
    vips = data["vips"]
    assert isinstance(vips, list)
    data["vips"] = [vips[0], {"name": "s3-c", "address": "198.51.100.30", "backend": "ceph-b"}]
    data["health"] = {"rise": 3, "fall": 2, "maintenance_file": str(tmp_path / "maint")}
    _write(source, data)
    new = watched.changed()
    assert new is not None and watched.digest is not None
    health.reconfigure(new, None, watched.digest)
    health.tick()
    assert lines(out) == ["withdraw route 198.51.100.20/32 next-hop self"]  # s3-b is gone from the config
    health.tick()
    assert lines(out) == []  # rise is 3 now
    health.tick()
    assert lines(out) == ["announce route 198.51.100.30/32 next-hop self"]
    assert health.report()["config"] == watched.digest
    assert health.report()["rules"] == {"interval": 0.5, "rise": 3, "fall": 2}
    vips_now = health.report()["vips"]
    assert isinstance(vips_now, dict) and set(vips_now) == {"198.51.100.10", "198.51.100.30"}


def test_an_invalid_config_on_disk_is_not_taken(node_data: dict[str, object], tmp_path: Path) -> None:
    source = tmp_path / "ober.yaml"
    _write(source, node_data)
    watched = ConfigSource(source)
    before = watched.digest
    source.write_text("health:\n  rise: many\n")
    assert watched.changed() is None and watched.digest == before


def test_watch_pid_wakes_the_loop_the_moment_haproxy_exits(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = tmp_path / "haproxy.pid"
        pid_file.write_text(f"{child.pid}\n")
        wake, stop = threading.Event(), threading.Event()
        threading.Thread(target=watch_pid, args=(lambda: pid_file, wake, stop), daemon=True).start()
        time.sleep(0.3)
        assert not wake.is_set()
        child.kill()
        child.wait()
        started = time.monotonic()
        assert wake.wait(1.0), "the watcher did not notice the process exit"
        print(f"woken {time.monotonic() - started:.3f}s after the exit")
        stop.set()
    finally:
        child.kill()
        child.wait()


def test_running_tells_a_dead_master_from_a_live_one(tmp_path: Path) -> None:
    pid_file = tmp_path / "haproxy.pid"
    assert running(pid_file) is None  # no file: the runtime socket decides
    child = subprocess.Popen(["sleep", "60"])
    pid_file.write_text(f"{child.pid}\n")
    assert running(pid_file)
    child.kill()
    child.wait()
    assert running(pid_file) is False
    pid_file.write_text("garbage\n")
    assert running(pid_file) is None


def test_observe_says_gone_when_the_master_is_not_running(
    make_config: Callable[..., NodeConfig], tmp_path: Path
) -> None:
    config = make_config(install_path=str(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    observe = observe_haproxy(lambda: config)
    assert observe() == Seen(None, gone=True)  # no pid file and no socket: no HAProxy
    (run_dir / "haproxy.pid").write_text("999999999\n")  # a master that is not running
    assert observe() == Seen(None, gone=True)
    (run_dir / "haproxy.pid").write_text(f"{os.getpid()}\n")  # a live master, but no runtime socket
    assert observe() == Seen(None, gone=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(run_dir / "haproxy.sock"))
        server.listen(1)  # accepts, never answers: a busy HAProxy, a doubtful check
        config = make_config(install_path=str(tmp_path), health={"timeout": "100ms"})
        assert observe() == Seen(None, gone=False)


def test_running_counts_an_unreaped_zombie_as_gone(tmp_path: Path) -> None:
    # A child we do not reap yet: dead, but still in the process table (as HAProxy's master is until systemd reaps).
    child = subprocess.Popen(["true"])
    pid_file = tmp_path / "haproxy.pid"
    pid_file.write_text(f"{child.pid}\n")
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(child.pid, 0)  # signal 0 still "reaches" it
    assert running(pid_file) is False
    child.wait()


def test_a_storm_of_drain_signals_never_freezes_the_running_helper(
    node_data: dict[str, object], tmp_path: Path, short: Path
) -> None:
    """`ober drain` wakes `ober health` with SIGUSR1. A handler that took a lock the loop held (threading.Event)
    froze the helper for good in the lab, the drained node staying announced. The real `ober health` process, as
    ExaBGP runs it, gets thousands of SIGUSR1s: it keeps checking (its state file keeps changing) and stops on
    SIGTERM, withdrawing."""
    install = short
    data = copy.deepcopy(node_data)
    data["install_path"] = str(install)
    data["health"] = {"interval": "0.1s", "maintenance_file": str(tmp_path / "maint")}
    (install / "run" / "health").mkdir(parents=True)
    config = tmp_path / "ober.yaml"
    _write(config, data)
    state = install / "run" / "health" / "health.json"
    # stdin stays open (ExaBGP's acks); stdout is read by a thread so the helper never blocks on it.
    helper = subprocess.Popen(
        [sys.executable, "-m", "ober", "health", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    said: list[str] = []
    assert helper.stdout is not None
    reader = threading.Thread(target=lambda: said.extend(helper.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.exists(), f"ober health never wrote its state: {helper.poll()} {said}"
        for round_ in range(10):
            for _ in range(2000):
                os.kill(helper.pid, signal.SIGUSR1)
            before = json.loads(state.read_text())["updated"]
            time.sleep(0.5)
            after = json.loads(state.read_text())["updated"]
            assert after > before, f"ober health froze after {(round_ + 1) * 2000} SIGUSR1s"
        helper.send_signal(signal.SIGTERM)
        assert helper.wait(10) == 0
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
    reader.join(5)
    assert any(line.startswith("withdraw route") for line in said), said
