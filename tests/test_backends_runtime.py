"""RGW servers added, drained and removed in a running HAProxy (ober backends …): no reload, no request lost.

A real HAProxy (the host's 2.6) runs the config ober renders, in a private network namespace with stand-in RGW
servers (see tests/test_haproxy_serving.py, whose lab this reuses); ``ober backends`` talks to its admin socket.
A client keeps sending requests through the VIP the whole time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.cli import main
from ober.haproxy_runtime import query
from ober.haproxy_state import parse_pid
from ober.render import paths, render_node
from tests.dns_server import answering, dns_server
from tests.test_haproxy_serving import (
    BACKEND_SCRIPT,
    HOST,
    RGW_A,
    RGW_PORT,
    Lab,
    Labs,
    cert,  # noqa: F401 - a fixture
    key_path,
    lab_address,
    lab_base,  # noqa: F401 - a fixture
    labs,  # noqa: F401 - a fixture
    wait_for,
)

pytestmark = pytest.mark.lab

RGW_A2 = "100.64.1.12"
RGW_A3 = "100.64.1.13"


class Client:
    """Requests through VIP A, one after another in a thread, until stopped; counts what failed."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.sent = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = self.lab.curl(f"https://{HOST}/load/{self.sent}", timeout=10.0)
            self.sent += 1
            if reply.status != 200:
                self.failed.append(str(reply))

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def ober(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """Run ``ober --json …`` in-process; its exit status and JSON answer."""
    capsys.readouterr()
    code = main(["--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def start_rgw(lab: Lab, address: str) -> None:
    """One more stand-in RGW in the lab's namespace."""
    lab.ns.add_address(address)
    log = lab.work / f"backend-{address}.log"
    lab.logs.append(log)
    command = [os.environ.get("PYTHON", "python3"), str(BACKEND_SCRIPT), lab_address(address), str(RGW_PORT)]
    lab.backends[address] = lab.ns.start(command, log)
    wait_for(f"RGW stand-in {address}", lambda: lab._answers(address, RGW_PORT), 15.0, lab.dead)


def worker(lab: Lab) -> int | None:
    """The PID of the HAProxy worker answering on the admin socket."""
    assert lab.config is not None
    return parse_pid(query(paths(lab.config)["admin_socket"], "show info", 2.0))


def config_file(lab: Lab) -> str:
    """The lab node's ober.yaml."""
    assert lab.config is not None
    return paths(lab.config)["config"]


def members(capsys: pytest.CaptureFixture[str], lab: Lab, group: str = "ceph-a") -> dict[str, dict[str, Any]]:
    """``ober backends list``: the group's servers by ``host:port``."""
    code, doc = ober(capsys, "backends", "list", "--config", config_file(lab))
    assert code == 0, doc
    [found] = [g for g in doc["groups"] if g["group"] == group]
    return {m["server"]: m for m in found["servers"]}


def served_by(lab: Lab, address: str, since: int) -> int:
    """Client requests (not health checks) the stand-in at ``address`` got after its first ``since`` records."""
    return sum(1 for r in lab.seen(address)[since:] if r["path"].startswith("/load/"))


def reload(lab: Lab) -> None:
    """A hitless reload of the lab's HAProxy (SIGUSR2 to its master, as systemd's reload does)."""
    before = worker(lab)
    assert lab.haproxy is not None
    os.kill(lab.haproxy.pid, signal.SIGUSR2)
    wait_for("a new HAProxy worker", lambda: worker(lab) not in (before, None), 15.0, lab.dead)


@pytest.fixture
def lab(labs: Labs) -> Iterator[Lab]:  # noqa: F811 - the shared fixture of test_haproxy_serving, per test here
    """A fresh lab node with one RGW in ceph-a, two spare slots."""
    check = {"method": "GET", "path": "/", "interval": "200ms", "rise": 1, "fall": 2}
    backends = {
        "ceph-a": {"servers": f"{RGW_A}:{RGW_PORT}", "check": check, "slots": 2},
        "ceph-b": {"servers": [f"100.64.2.11:{RGW_PORT}"], "check": check},
    }
    yield labs.start(backends=backends)


def test_add_drain_remove_without_reload_and_a_reload_keeps_them(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    start_rgw(lab, RGW_A2)
    assert lab.haproxy is not None
    master, first = lab.haproxy.pid, worker(lab)
    seen_a2 = len(lab.seen(RGW_A2))
    with Client(lab) as client:
        time.sleep(0.5)
        code, doc = ober(capsys, "backends", "add", "ceph-a", f"{RGW_A2}:{RGW_PORT}", "--config", config_file(lab))
        assert code == 0, doc
        assert doc["action"] == "add" and doc["changed"], doc
        wait_for("requests on the added RGW", lambda: served_by(lab, RGW_A2, seen_a2) >= 3, 10.0, lab.dead)
        listed = members(capsys, lab)
        assert listed[f"{RGW_A2}:{RGW_PORT}"]["state"] == "serving"
        assert listed[f"{RGW_A2}:{RGW_PORT}"]["haproxy_name"] == "_slot1"

        code, doc = ober(capsys, "backends", "drain", "ceph-a", RGW_A, "--config", config_file(lab))
        assert code == 0, doc
        time.sleep(0.3)  # requests already on their way to RGW A when it was drained
        seen_a = len(lab.seen(RGW_A))
        time.sleep(1.0)
        assert served_by(lab, RGW_A, seen_a) == 0, "a drained server got new requests"
        assert members(capsys, lab)[f"{RGW_A}:{RGW_PORT}"]["state"] == "drained"

        code, doc = ober(capsys, "backends", "remove", "ceph-a", RGW_A, "--config", config_file(lab))
        assert code == 0, doc
        assert members(capsys, lab)[f"{RGW_A}:{RGW_PORT}"]["state"] == "removed (gone at the next reload)"
        time.sleep(0.5)
    assert client.sent > 20, "the client hardly ran"
    assert client.failed == [], client.failed
    assert (lab.haproxy.pid, worker(lab)) == (master, first), "HAProxy was reloaded or restarted"

    saved = yaml.safe_load(Path(config_file(lab)).read_text())
    assert saved["backends"]["ceph-a"]["servers"] == [f"{RGW_A2}:{RGW_PORT}"]
    assert saved["backends"]["ceph-a"].get("drained", []) == []

    # The rendered config is the source of truth: a reload has the added server on its own line, not RGW A.
    reload(lab)
    listed = members(capsys, lab)
    assert list(listed) == [f"{RGW_A2}:{RGW_PORT}"]
    assert listed[f"{RGW_A2}:{RGW_PORT}"]["haproxy_name"] == "100_64_1_12-7480"
    code, status = ober(capsys, "backends", "list", "--config", config_file(lab))
    [group] = [g for g in status["groups"] if g["group"] == "ceph-a"]
    assert group["free_slots"] == 2, "a reload frees every slot"
    assert lab.curl(f"https://{HOST}{key_path()}").status == 200


def test_a_drained_server_stays_drained_after_a_reload(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    start_rgw(lab, RGW_A2)
    code, doc = ober(capsys, "backends", "add", "ceph-a", RGW_A2, "--config", config_file(lab))
    assert code == 0, doc
    code, doc = ober(capsys, "backends", "drain", "ceph-a", RGW_A2, "--config", config_file(lab))
    assert code == 0, doc
    reload(lab)
    listed = members(capsys, lab)
    assert listed[f"{RGW_A2}:{RGW_PORT}"]["state"] == "drained"
    seen = len(lab.seen(RGW_A2))
    for _ in range(10):
        assert lab.curl(f"https://{HOST}{key_path()}").status == 200
    assert served_by(lab, RGW_A2, seen) == 0
    # Adding it again undrains it, again without a reload.
    before = worker(lab)
    code, doc = ober(capsys, "backends", "add", "ceph-a", RGW_A2, "--config", config_file(lab))
    assert code == 0 and doc["action"] == "undrain", doc
    assert members(capsys, lab)[f"{RGW_A2}:{RGW_PORT}"]["state"] == "serving"
    assert worker(lab) == before


def test_no_free_slot_is_a_clear_error_and_changes_nothing(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    for address in (RGW_A2, RGW_A3):
        start_rgw(lab, address)
    before = Path(config_file(lab)).read_text()
    for address in (RGW_A2, RGW_A3):
        code, doc = ober(capsys, "backends", "add", "ceph-a", address, "--config", config_file(lab))
        assert code == 0, doc
    after_two = Path(config_file(lab)).read_text()
    assert after_two != before
    code, doc = ober(capsys, "backends", "add", "ceph-a", "100.64.1.14", "--config", config_file(lab))
    assert code == 1
    assert "no free server slot" in doc["error"] and "reload" in doc["fix"], doc
    assert Path(config_file(lab)).read_text() == after_two


def test_the_last_serving_server_is_not_drained_without_force(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = ober(capsys, "backends", "drain", "ceph-a", RGW_A, "--config", config_file(lab))
    assert code == 1
    assert "no server taking requests" in doc["error"] and "--force" in doc["fix"], doc
    assert members(capsys, lab)[f"{RGW_A}:{RGW_PORT}"]["state"] == "serving"


def test_an_upload_in_flight_finishes_while_its_server_is_removed(
    lab: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    start_rgw(lab, RGW_A2)
    code, doc = ober(capsys, "backends", "add", "ceph-a", RGW_A2, "--config", config_file(lab))
    assert code == 0, doc
    code, doc = ober(capsys, "backends", "drain", "ceph-a", RGW_A2, "--config", config_file(lab))
    assert code == 0, doc
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(16 * 1024 * 1024))
    path = key_path()
    result: dict[str, Any] = {}

    def upload() -> None:
        result["reply"] = lab.curl(f"https://{HOST}{path}", "--upload-file", str(body), "--limit-rate", "4M")

    thread = threading.Thread(target=upload)
    thread.start()
    wait_for("the upload on RGW A", lambda: members(capsys, lab)[f"{RGW_A}:{RGW_PORT}"]["sessions"] > 0, 10.0, lab.dead)
    # RGW A2 is drained, so this leaves RGW A as the last one: --force, and no wait for the upload to end.
    code, doc = ober(
        capsys, "backends", "remove", "ceph-a", RGW_A, "--force", "--wait", "0", "--config", config_file(lab)
    )
    assert code == 0, doc
    assert doc["requests_left"] >= 1, doc
    thread.join(60)
    reply = result["reply"]
    assert reply.status == 200, reply
    [record] = lab.requests_for(RGW_A, path)
    assert record["body_bytes"] == 16 * 1024 * 1024


def test_reconcile_adds_what_discovery_lists_then_drains_what_it_lost_never_removes(
    lab: Lab, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    start_rgw(lab, RGW_A2)
    source = tmp_path / "rgw.yaml"
    source.write_text(yaml.safe_dump({"ceph-a": [f"{RGW_A}:{RGW_PORT}", f"{RGW_A2}:{RGW_PORT}"]}))
    argv = ["backends", "reconcile", "ceph-a", "--from", str(source), "--config", config_file(lab)]
    before = worker(lab)
    code, doc = ober(capsys, *argv)
    assert code == 0 and doc["action"] == "add" and doc["server"] == f"{RGW_A2}:{RGW_PORT}", doc
    assert members(capsys, lab)[f"{RGW_A2}:{RGW_PORT}"]["state"] == "serving"
    code, doc = ober(capsys, *argv)
    assert code == 0 and doc["action"] == "none", doc

    source.write_text(yaml.safe_dump({"ceph-a": [f"{RGW_A2}:{RGW_PORT}"]}))
    code, doc = ober(capsys, *argv)
    assert code == 0 and doc["action"] == "drain" and doc["server"] == f"{RGW_A}:{RGW_PORT}", doc
    code, doc = ober(capsys, *argv)
    assert code == 0 and doc["action"] == "none", doc
    assert any("ober backends remove ceph-a" in note for note in doc["notes"]), doc
    listed = members(capsys, lab)
    assert listed[f"{RGW_A}:{RGW_PORT}"]["state"] == "drained", "lost from discovery: drained, not removed"
    assert worker(lab) == before

    source.write_text(yaml.safe_dump({"ceph-a": []}))
    code, doc = ober(capsys, *argv)
    assert code == 1 and "refusing to drain every server" in doc["error"], doc


def timer_command(lab: Lab) -> list[str]:
    """What ober-discovery.timer runs (the ExecStart= of ober-discovery.service as rendered), as ober's arguments."""
    assert lab.config is not None
    unit = render_node(lab.config).file("/etc/systemd/system/ober-discovery.service").content
    [line] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == paths(lab.config)["ober"], argv
    return argv[1:]


def until_due(seconds: float = 1.1) -> None:
    """Past the group's discovery interval (1 s here), so the next run of the timer's command runs it."""
    time.sleep(seconds)


@pytest.mark.parametrize("source", ["file", "dns-srv"])
def test_the_discovery_timer_adds_what_discovery_lists_and_drains_what_it_lost_one_change_per_run(
    labs: Labs,  # noqa: F811 - the shared fixture of test_haproxy_serving
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    source: str,
) -> None:
    a, a2 = f"{RGW_A}:{RGW_PORT}", f"{RGW_A2}:{RGW_PORT}"
    listed: list[str] = []
    with contextlib.ExitStack() as stack:
        if source == "file":
            rgw = tmp_path / "rgw.yaml"

            def publish(entries: list[str]) -> None:
                rgw.write_text(yaml.safe_dump({"ceph-a": entries}))
                listed[:] = entries

            discovery: dict[str, Any] = {"source": "file", "path": str(rgw)}
        else:
            # SRV targets are host names; these are the stand-ins' addresses written as names (HAProxy and ober
            # take them without a resolver that knows them).
            records = lambda: [(10, 10, RGW_PORT, entry.split(":")[0] + ".") for entry in listed]  # noqa: E731
            server = stack.enter_context(dns_server(answering(records)))

            def publish(entries: list[str]) -> None:
                listed[:] = entries

            discovery = {"source": "dns-srv", "name": "_rgw._tcp.lab.example", "resolver": server.resolver}
        publish([a, a2])
        check = {"method": "GET", "path": "/", "interval": "200ms", "rise": 1, "fall": 2}
        lab = labs.start(
            backends={
                "ceph-a": {"servers": a, "check": check, "slots": 2, "discovery": {**discovery, "interval": "1s"}},
                "ceph-b": {"servers": [f"100.64.2.11:{RGW_PORT}"], "check": check},
            }
        )
        start_rgw(lab, RGW_A2)
        assert lab.haproxy is not None
        master, first = lab.haproxy.pid, worker(lab)
        argv = timer_command(lab)
        assert argv[:3] == ["backends", "reconcile", "--all"]
        with Client(lab) as client:
            code, doc = ober(capsys, *argv)
            assert code == 0, doc
            [run] = doc["groups"]
            assert (run["action"], run["server"], run["changed"], run["found"]) == ("add", a2, True, 2), run
            wait_for("the added RGW up", lambda: members(capsys, lab)[a2]["state"] == "serving", 10.0, lab.dead)

            publish([a2])  # discovery lost RGW A
            code, doc = ober(capsys, *argv)
            assert code == 0 and doc["groups"] == [], "run again before its interval: nothing asked, nothing done"
            assert [w["group"] for w in doc["waiting"]] == ["ceph-a"]
            until_due()
            code, doc = ober(capsys, *argv)
            assert code == 0, doc
            [run] = doc["groups"]
            assert (run["action"], run["server"], run["changed"]) == ("drain", a, True), run
            assert members(capsys, lab)[a]["state"] == "drained"

            until_due()
            code, doc = ober(capsys, *argv)
            [run] = doc["groups"]
            assert code == 0 and run["action"] == "none" and run["lost"] == [a], run
            capsys.readouterr()
            assert main(["backends", "list", "--config", config_file(lab)]) == 0
            shown = capsys.readouterr()
            assert f"remove it when sure (ober backends remove ceph-a {a})" in shown.err.replace("\n", " ")
            assert "in line with discovery (1 servers listed)" in shown.out

            publish([])  # a source that lists nothing is refused, not obeyed
            until_due()
            code, doc = ober(capsys, *argv)
            [run] = doc["groups"]
            assert code == 1 and run["action"] == "error" and "refusing to drain every server" in run["error"], doc
            time.sleep(0.5)
        listed_now = members(capsys, lab)
        assert (listed_now[a]["state"], listed_now[a2]["state"]) == ("drained", "serving"), "never removed"
        assert client.sent > 20, "the client hardly ran"
        assert client.failed == [], client.failed
        assert (lab.haproxy.pid, worker(lab)) == (master, first), "HAProxy was reloaded or restarted"

        code, doc = ober(capsys, "backends", "list", "--config", config_file(lab))
        [group] = [g for g in doc["groups"] if g["group"] == "ceph-a"]
        assert group["discovery"]["last_run"]["action"] == "error" and group["discovery"]["interval"] == 1.0
        saved = yaml.safe_load(Path(config_file(lab)).read_text())["backends"]["ceph-a"]
        assert saved["servers"] == [a, a2] and saved["drained"] == [a]
        assert saved["discovery"]["source"] == source, "the discovery block survives the rewrites of ober.yaml"
