"""Discovery by timer: the ``discovery:`` config, the rendered timer and service, and ``reconcile --all``'s logic.

The sources and the changes are fakes here (the change itself is tests/test_backends.py's and, with a real
HAProxy, tests/test_backends_runtime.py's); what is tested is what a run decides and records.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.backends import Outcome, Plan
from ober.cli import main
from ober.config import BackendGroup, NodeConfig, Server, dump_config, parse_node_config, parse_server
from ober.discovery_run import (
    GroupRun,
    discovery_status,
    read_runs,
    recorded,
    run_all,
    state_path,
    status_lines,
    write_runs,
)
from ober.errors import ConfigError, OberError
from ober.inventory import resolve_inventory
from ober.render import paths, render_node
from ober.services import DISCOVERY_START, DISCOVERY_STOP, reload_for
from tests.conftest import REPO, require
from tests.test_render import exposure

A1, A2, A3 = (f"100.64.1.{n}:7480" for n in (11, 12, 13))
B1 = "100.64.2.11:7480"
SECRETS = {"bgp_md5": "s3cr3t-md5", "stats_password": "s3cr3t-stats"}
UNITS = "/etc/systemd/system"


def with_discovery(node_data: dict[str, Any], **groups: dict[str, Any]) -> NodeConfig:
    data = copy.deepcopy(node_data)
    for name, discovery in groups.items():
        data["backends"][name.replace("_", "-")]["discovery"] = discovery
    return parse_node_config(data)


FILE = {"source": "file", "path": "/opt/ober/run/rgw.yaml"}


# --- config -----------------------------------------------------------------------------------------------------


def test_each_source_reads_its_own_keys(node_data: dict[str, Any]) -> None:
    config = with_discovery(
        node_data,
        ceph_a={"source": "dns-srv", "name": "_RGW._tcp.Example.org.", "resolver": "127.0.0.1:8600", "interval": "30s"},
        ceph_b={"source": "ceph-orch", "path": "/opt/ober/run/orch.json", "service": "rgw.s3"},
    )
    a, b = (config.backend(name).discovery for name in ("ceph-a", "ceph-b"))
    assert a is not None and (a.name, a.resolver, a.interval) == ("_rgw._tcp.example.org", "127.0.0.1:8600", 30.0)
    assert b is not None and (b.path, b.service, b.interval) == ("/opt/ober/run/orch.json", "rgw.s3", 60.0)
    # ober.yaml as written back reads the same.
    assert parse_node_config(yaml.safe_load(dump_config(config))) == config


@pytest.mark.parametrize(
    ("discovery", "message", "fix"),
    [
        ({"source": "consul"}, "discovery.source: 'consul' is not one of file, ceph-orch, dns-srv", None),
        ({"source": "file"}, "discovery.path: required for source file", "path"),
        ({"source": "dns-srv"}, "discovery.name: required for source dns-srv", "_rgw._tcp"),
        ({"source": "file", "path": "/x", "name": "_a._tcp.b"}, "discovery.name: not used by source file", "path"),
        ({"source": "dns-srv", "name": "_a._tcp.b", "path": "/x"}, "discovery.path: not used by source dns-srv", None),
        ({"source": "dns-srv", "name": "rgw servers"}, "discovery.name: 'rgw servers' is not allowed", "_rgw._tcp"),
        ({"source": "dns-srv", "name": "_a._tcp.b", "resolver": "dns1"}, "discovery.resolver: 'dns1' is not", "8600"),
        ({"source": "file", "path": "rgw.yaml"}, "discovery.path: 'rgw.yaml' is not allowed", "absolute"),
        ({"source": "file", "path": "/x", "interval": "100ms"}, "discovery.interval: '100ms' is out of range", "1s"),
        ({"source": "file", "path": "/x", "every": 5}, "discovery.every: unknown key", None),
        ("file", "discovery: expected a mapping", None),
    ],
)
def test_a_bad_discovery_block_is_one_clear_error(
    node_data: dict[str, Any], discovery: Any, message: str, fix: str | None
) -> None:
    with pytest.raises(ConfigError) as err:
        with_discovery(node_data, ceph_a=discovery)
    assert f"backends.ceph-a.{message}" in err.value.message
    if fix is not None:
        assert err.value.fix is not None and fix in err.value.fix


def test_discovery_needs_spare_slots_to_add_into(node_data: dict[str, Any]) -> None:
    node_data["backends"]["ceph-a"]["slots"] = 0
    with pytest.raises(ConfigError, match="slots: 0, but discovery adds servers into spare slots"):
        with_discovery(node_data, ceph_a=FILE)


# --- the units --------------------------------------------------------------------------------------------------


def unit(config: NodeConfig, name: str) -> list[str]:
    return render_node(config, SECRETS).file(f"{UNITS}/{name}").content.splitlines()


def test_no_discovery_no_timer(node_data: dict[str, Any]) -> None:
    config = parse_node_config(node_data)
    files = {f.path for f in render_node(config, SECRETS).files}
    assert not any("discovery" in path for path in files)
    assert "Wants=ober-discovery.timer" not in unit(config, "ober-http.service")


def test_the_timer_runs_the_reconcile_of_every_group_at_the_smallest_interval(node_data: dict[str, Any]) -> None:
    config = with_discovery(node_data, ceph_a={**FILE, "interval": "2m"}, ceph_b={**FILE, "interval": "45s"})
    timer = unit(config, "ober-discovery.timer")
    assert "OnUnitInactiveSec=45s" in timer and "PartOf=ober-http.service" in timer
    assert "Unit=ober-discovery.service" in timer
    assert not any(line.startswith("After=") for line in timer), "ordered after ober-http: a cycle at boot"
    service = unit(config, "ober-discovery.service")
    assert "ExecStart=/opt/ober/venv/bin/ober backends reconcile --all -c /opt/ober/etc/ober.yaml" in service
    assert "Type=oneshot" in service and "After=ober-http.service" in service
    # Sandboxed like the other units; writable: only what a change writes.
    for line in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes"):
        assert line in service
    assert "ReadWritePaths=/opt/ober/etc /opt/ober/run /opt/ober/backup" in service
    assert "Wants=ober-discovery.timer" in unit(config, "ober-http.service")


def test_a_discovery_file_under_home_or_tmp_stays_visible_to_the_service(node_data: dict[str, Any]) -> None:
    home = unit(
        with_discovery(node_data, ceph_a={"source": "file", "path": "/root/rgw.yaml"}), "ober-discovery.service"
    )
    assert "ProtectHome=read-only" in home
    tmp = unit(with_discovery(node_data, ceph_a={"source": "file", "path": "/tmp/rgw.yaml"}), "ober-discovery.service")
    assert "PrivateTmp=yes" not in tmp and "ReadWritePaths=/tmp" in tmp


def test_systemd_accepts_the_units_and_rates_the_service_sandboxed(node_data: dict[str, Any], short: Path) -> None:
    """systemd-analyze verify (offline, on copies in a scratch directory; the install path is a scratch one too, so
    the ExecStart= binary it checks exists) and its exposure rating."""
    analyze = shutil.which("systemd-analyze")
    require(analyze is not None, "systemd-analyze is not installed")
    install = short / "ober"
    node_data.update(install_path=str(install), certificates={"pem": f"{install}/etc/certs/s3.pem"})
    node_data["health"]["maintenance_file"] = f"{install}/etc/maintenance"
    config = with_discovery(node_data, ceph_a={"source": "dns-srv", "name": "_rgw._tcp.example.org"})
    binary = Path(paths(config)["ober"])
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    units = short / "units"
    units.mkdir()
    rendered = render_node(config, SECRETS)
    names = ("ober-discovery.timer", "ober-discovery.service")
    for name in names:
        (units / name).write_text(rendered.file(f"{UNITS}/{name}").content)
    done = subprocess.run(
        [
            str(analyze),
            "verify",
            "--man=no",
            *(str(units / name) for name in ("ober-discovery.timer", "ober-discovery.service")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # verify exits 0 on a line it ignores: what it says is the verdict.
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done
    assert exposure(str(analyze), units / "ober-discovery.service") <= 3.0


def test_a_config_change_starts_or_stops_the_timer(node_data: dict[str, Any]) -> None:
    timer = f"{UNITS}/ober-discovery.timer"
    on = with_discovery(node_data, ceph_a=FILE)
    assert reload_for(on, [timer, f"{UNITS}/ober-discovery.service"]) == ["daemon-reload", DISCOVERY_START]
    off = parse_node_config(node_data)  # discovery removed: the apply removes the unit files
    assert reload_for(off, [timer]) == [DISCOVERY_STOP, "daemon-reload"], "stopped while systemd still knows it"
    assert DISCOVERY_START not in reload_for(on, [paths(on)["config"]]), "a new source path needs no restart"


# --- reconcile --all --------------------------------------------------------------------------------------------


class Fakes:
    """Sources by group (a list of host:port, or an OberError to raise), and the changes asked for."""

    def __init__(self, **found: list[str] | OberError) -> None:
        self.found = {name.replace("_", "-"): value for name, value in found.items()}
        self.asked: list[str] = []
        self.made: list[tuple[str, str, str]] = []
        self.refuse: OberError | None = None

    def discover(self, group: BackendGroup) -> list[Server]:
        self.asked.append(group.name)
        value = self.found[group.name]
        if isinstance(value, OberError):
            raise value
        return [parse_server(entry, group.port, "test") for entry in value]

    def make(self, verb: str, group: str, entry: str) -> Outcome:
        if self.refuse is not None:
            raise self.refuse
        self.made.append((verb, group, entry))
        return Outcome(Plan(verb, group, entry, f"{verb} {entry} in {group}"))


def config_with(
    node_data: dict[str, Any], a: list[str], b: list[str], drained_a: list[str] | None = None
) -> NodeConfig:
    data = copy.deepcopy(node_data)
    data["backends"]["ceph-a"].update(servers=a, drained=drained_a or [], discovery={**FILE, "interval": "60s"})
    data["backends"]["ceph-b"].update(servers=b, discovery={**FILE, "interval": "5m"})
    return parse_node_config(data)


def test_each_group_gets_at_most_one_change_per_run(node_data: dict[str, Any]) -> None:
    config = config_with(node_data, [A1], [B1])
    fakes = Fakes(ceph_a=[A1, A2, A3], ceph_b=[])
    report = run_all(config, discover=fakes.discover, make=fakes.make, now=1000.0, last={})
    assert fakes.made == [("add", "ceph-a", A2)], "one change for ceph-a, none for ceph-b"
    a, b = report.runs
    assert (a.action, a.server, a.changed, a.pending, a.found) == ("add", A2, True, 1, 3)
    assert "1 more change for the next runs" in a.summary()
    assert (b.action, b.found, b.changed) == ("error", None, False)
    assert b.error is not None and "refusing to drain every server" in b.error
    assert "nothing changed" in b.summary()
    assert not report.ok, "a failed source makes the run fail (the unit shows it)"


def test_a_lost_server_is_drained_never_removed_and_then_reported_for_an_operator(node_data: dict[str, Any]) -> None:
    fakes = Fakes(ceph_a=[A2], ceph_b=[B1])
    report = run_all(config_with(node_data, [A1, A2], [B1]), discover=fakes.discover, make=fakes.make, now=0.0, last={})
    assert fakes.made == [("drain", "ceph-a", A1)]
    assert report.ok and report.runs[1].action == "none"
    # The next run: already drained, nothing to do but say what is left for an operator.
    fakes.made.clear()
    again = run_all(
        config_with(node_data, [A1, A2], [B1], drained_a=[A1]),
        discover=fakes.discover,
        make=fakes.make,
        now=100.0,
        last={},
    ).runs[0]
    assert fakes.made == [] and again.action == "none" and again.lost == [A1]
    assert not any(verb == "remove" for verb, _g, _e in fakes.made)


def test_a_refused_change_is_recorded_with_its_fix_and_fails_the_run(node_data: dict[str, Any]) -> None:
    fakes = Fakes(ceph_a=[A1, A2], ceph_b=[B1])
    fakes.refuse = OberError("backend group ceph-a has no free server slot (4 of 4 ...)", "reload HAProxy ...")
    report = run_all(config_with(node_data, [A1], [B1]), discover=fakes.discover, make=fakes.make, now=0.0, last={})
    run = report.runs[0]
    assert (run.action, run.server, run.changed) == ("add", A2, False)
    assert run.error is not None and "no free server slot" in run.error and run.fix == "reload HAProxy ..."
    assert not report.ok and "add 100.64.1.12:7480 refused" in run.summary()


def test_a_group_runs_only_once_its_own_interval_has_passed(node_data: dict[str, Any]) -> None:
    config = config_with(node_data, [A1], [B1])
    fakes = Fakes(ceph_a=[A1], ceph_b=[B1])
    first = run_all(config, discover=fakes.discover, make=fakes.make, now=1000.0, last={})
    last = recorded(config, {}, first.runs)
    fakes.asked.clear()
    # 61 s later: ceph-a (60 s) is due, ceph-b (5 min) waits.
    later = run_all(config, discover=fakes.discover, make=fakes.make, now=1061.0, last=last)
    assert fakes.asked == ["ceph-a"]
    assert [(name, round(left)) for name, left in later.waiting] == [("ceph-b", 239)]
    assert later.to_dict()["waiting"] == [{"group": "ceph-b", "due_in": 239.0}]
    # Not run yet with only_due off (a manual run of every group).
    fakes.asked.clear()
    run_all(config, discover=fakes.discover, make=fakes.make, now=1062.0, last=last, only_due=False)
    assert fakes.asked == ["ceph-a", "ceph-b"]


def test_no_group_with_discovery_is_a_clear_error(node_data: dict[str, Any]) -> None:
    fakes = Fakes()
    with pytest.raises(OberError, match="no backend group of node node01 has discovery") as err:
        run_all(parse_node_config(node_data), discover=fakes.discover, make=fakes.make, now=0.0, last={})
    assert err.value.fix is not None and "backends.<group>.discovery" in err.value.fix


def test_the_record_survives_a_read_back_and_says_what_an_operator_must_do(
    node_data: dict[str, Any], short: Path
) -> None:
    node_data["install_path"] = str(short / "ober")
    config = config_with(node_data, [A1, A2], [B1], drained_a=[A1])
    fakes = Fakes(ceph_a=[A2], ceph_b=OberError("SRV _rgw._tcp.x: DNS server 127.0.0.1:53 answered SERVFAIL"))
    report = run_all(config, discover=fakes.discover, make=fakes.make, now=1000.0, last={})
    write_runs(config, recorded(config, {}, report.runs))
    path = state_path(config)
    assert path.stat().st_mode & 0o777 == 0o644, "ober health (another user) reads it for the metrics"
    runs = read_runs(config)
    assert runs == {run.group: run for run in report.runs}
    shown = discovery_status(config, 1030.0)  # ober status --json, ober backends list --json
    assert shown["ceph-a"]["last_run"]["lost"] == [A1] and shown["ceph-a"]["age"] == 30.0
    assert shown["ceph-b"]["source"] == "file /opt/ober/run/rgw.yaml" and shown["ceph-b"]["interval"] == 300.0
    assert shown["ceph-b"]["last_run"]["error"].endswith("SERVFAIL")
    lines = status_lines(config, 1030.0)
    assert (
        True,
        "discovery, 30s ago: ceph-a (file /opt/ober/run/rgw.yaml): in line with discovery (1 servers listed)",
    ) in lines
    assert any(not ok and "ober backends remove ceph-a 100.64.1.11:7480" in line for ok, line in lines)
    assert any(not ok and "SERVFAIL" in line for ok, line in lines)
    # A group that lost its discovery drops out of the record; a mangled record reads as none.
    without_b = copy.deepcopy(node_data)
    without_b["backends"]["ceph-a"]["discovery"] = FILE
    without_b["backends"]["ceph-b"].pop("discovery", None)
    assert set(recorded(parse_node_config(without_b), runs, [])) == {"ceph-a"}
    path.write_text("{not json")
    assert read_runs(config) == {}
    path.write_text(json.dumps({"groups": {"ceph-a": {"group": "ceph-a"}}}))
    assert read_runs(config) == {}


def test_a_run_record_round_trips(node_data: dict[str, Any]) -> None:
    run = GroupRun("ceph-a", "file /x", 1.5, "drain", A1, True, "drain it", None, None, 2, [A3], 1, ["a note"])
    assert GroupRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run


# --- the CLI's refusals, the fleet -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a GROUP or --all (not both)"),
        (["ceph-a", "--all"], "give a GROUP or --all (not both)"),
        (["--all", "--from", "/x"], "--from goes with one GROUP, not --all"),
    ],
)
def test_reconcile_asks_for_a_group_or_all(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], short: Path, node_data: dict[str, Any]
) -> None:
    config = scratch_node(node_data, short)
    assert main(["--json", "backends", "reconcile", *argv, "--config", str(config)]) == 2
    assert message in json.loads(capsys.readouterr().out)["error"]


def scratch_node(node_data: dict[str, Any], short: Path) -> Path:
    """The node's ober.yaml, installed in a scratch directory (so nothing a command writes lands on this host)."""
    node_data["install_path"] = str(short / "ober")
    config = short / "ober.yaml"
    config.write_text(yaml.safe_dump(node_data))
    return config


def test_reconcile_of_a_group_without_discovery_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], short: Path, node_data: dict[str, Any]
) -> None:
    config = scratch_node(node_data, short)
    assert main(["--json", "backends", "reconcile", "ceph-a", "--config", str(config)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"] == "backend group ceph-a has no discovery"
    assert "backends.ceph-a.discovery" in doc["fix"] and "--from FILE" in doc["fix"]
    assert main(["--json", "backends", "reconcile", "--all", "--config", str(config)]) == 1
    assert "has discovery" in json.loads(capsys.readouterr().out)["error"]
    assert not (short / "ober").exists(), "nothing recorded: nothing ran"


def test_the_inventorys_discovery_reaches_every_node_and_renders_its_timer() -> None:
    data = yaml.safe_load((REPO / "inventory" / "example.yaml").read_text())
    data["config"]["backends"]["ceph-a"]["discovery"] = {"source": "dns-srv", "name": "_rgw._tcp.ceph-a.example.org"}
    data["groups"]["rack2"]["config"]["backends"] = {"ceph-a": {"discovery": {"interval": "15s"}}}
    inventory = resolve_inventory(data)
    for node in inventory.nodes:
        discovery = node.config.backend("ceph-a").discovery
        assert discovery is not None and discovery.name == "_rgw._tcp.ceph-a.example.org"
        assert discovery.interval == (15.0 if node.group == "rack2" else 60.0)
        assert node.config.backend("ceph-b").discovery is None
        timer = render_node(node.config, SECRETS).file(f"{UNITS}/ober-discovery.timer").content
        assert f"OnUnitInactiveSec={'15s' if node.group == 'rack2' else '60s'}" in timer
