"""``ober fleet bootstrap``'s pure parts: preflight parsing and judging, the inventory's ``files:``, the plan."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.errors import ConfigError, OberError, SecretsError
from ober.inventory import Inventory, resolve_inventory
from ober.remote.bootstrap import FleetReport, NodeReport, StepResult
from ober.remote.bootstrap_steps import NodeJob, Options, parse_remote_files, payloads
from ober.remote.preflight import (
    MIN_FREE_BYTES,
    NodeFacts,
    evaluate,
    parse_probe,
    parse_time_sync,
    preflight,
    probe_argv,
)
from ober.remote.wheelhouse import build_wheelhouse, platforms
from ober.runner import LocalRunner, Result

REPO = Path(__file__).parent.parent
DEBIAN13 = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\nID=debian\n'
S = "### ober-preflight "


def py(**changes: Any) -> str:
    """What the node's python3 prints: a healthy Debian 13 node's answer, some fields replaced."""
    facts = {"version": [3, 13, 5], "machine": "x86_64", "libc": ["glibc", "2.41"], "free": 8 * 2**30}
    facts.update(path="/opt", venv=True)
    facts.update(changes)
    return json.dumps(facts)


def probe_output(**sections: str) -> str:
    """A probe's output with the defaults of a healthy Debian 13 node, some sections replaced."""
    python = py()
    values = {
        "os": DEBIAN13,
        "uid": "0",
        "user": "root",
        "sudo": "root",
        "python": python,
        "timedatectl": "yes",
        "chrony": "",
        "ober": "",
    }
    values.update(sections)
    return "".join(f"{S}{name}\n{text}\n" for name, text in values.items())


def statuses(facts: NodeFacts, login: str | None = None) -> dict[str, str]:
    return {check.name: check.status for check in evaluate(facts, "/opt/ober", login)}


def test_a_healthy_node_passes_with_every_fact_read() -> None:
    facts = parse_probe(probe_output())
    assert facts.python == (3, 13, 5) and facts.python_version == "3.13"
    assert facts.platform_key() == ("3.13", "x86_64", (2, 41))
    assert facts.os_name == "Debian GNU/Linux 13 (trixie)"
    assert facts.time_synced is True and facts.ober_version is None
    assert statuses(facts) == {"os": "ok", "python": "ok", "arch": "ok", "root": "ok", "disk": "ok", "time": "ok"}


def test_the_probe_runs_for_real_on_this_machine() -> None:
    # The same script a node runs, here: every section present, Python's own facts read back.
    done = LocalRunner().run(probe_argv("/nonexistent/ober"), 30)
    facts = parse_probe(done.stdout)
    assert done.ok and facts.python is not None and facts.machine
    assert facts.free_path == "/" and facts.free_bytes is not None and facts.free_bytes > 0
    result = preflight(LocalRunner(), "/nonexistent/ober")
    assert {check.name for check in result.checks} >= {"os", "python", "arch", "root", "disk", "time"}


@pytest.mark.parametrize(
    ("sections", "name", "detail"),
    [
        ({"os": 'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_ID="11"\nID=debian'}, "os", "too old"),
        ({"os": 'PRETTY_NAME="Alpine Linux v3.20"\nVERSION_ID="3.20.0"\nID=alpine'}, "os", "not supported"),
        ({"os": ""}, "os", "cannot read /etc/os-release"),
        ({"python": "missing"}, "python", "python3 is not installed"),
        ({"python": "Segmentation fault"}, "python", "python3 failed: Segmentation fault"),
        ({"python": py(version=[3, 9, 2])}, "python", "too old"),
        ({"python": py(machine="riscv64")}, "arch", "riscv64"),
        ({"python": py(libc=["", ""])}, "arch", "glibc"),
        ({"uid": "1000", "user": "deploy", "sudo": "no"}, "root", "deploy is not root"),
        ({"python": py(free=2**20)}, "disk", "1 MiB free on /opt"),
        ({"python": py(venv=False)}, "venv", "cannot create venvs"),
    ],
)
def test_each_unfit_fact_fails_its_check_with_a_fix(sections: dict[str, str], name: str, detail: str) -> None:
    result = [check for check in evaluate(parse_probe(probe_output(**sections)), "/opt/ober") if check.name == name]
    assert result and result[0].status == "fail", result
    assert detail in result[0].detail and result[0].fix


def test_venv_support_is_not_needed_where_ober_is_installed() -> None:
    facts = parse_probe(probe_output(python=py(venv=False), ober="ober 0.1.0, HAProxy 3.0.11, ExaBGP 5.0.15"))
    assert facts.ober_version == "ober 0.1.0"
    assert "venv" not in statuses(facts)


def test_sudo_and_time_are_judged_from_what_the_node_said() -> None:
    assert statuses(parse_probe(probe_output(uid="1000", user="deploy", sudo="yes")))["root"] == "ok"
    # Through a transport that wraps everything in sudo -n the probe runs as root: the login is named.
    checks = evaluate(parse_probe(probe_output()), "/opt/ober", login="deploy")
    assert [c.detail for c in checks if c.name == "root"] == ["deploy has passwordless sudo"]
    assert parse_time_sync("no", "") is False
    assert parse_time_sync("", "Normal") is True
    assert parse_time_sync("", "Not synchronised") is False
    assert parse_time_sync("", "") is None
    unknown = parse_probe(probe_output(timedatectl="", chrony=""))
    not_synced = parse_probe(probe_output(timedatectl="no"))
    assert statuses(unknown)["time"] == statuses(not_synced)["time"] == "warn"  # warned, never fatal


def test_a_garbled_or_failed_probe_is_a_failed_check_not_a_crash() -> None:
    facts = parse_probe("random junk\n### ober-preflight python\n{not json")
    assert facts.python is None and facts.uid is None and facts.platform_key() is None
    assert statuses(facts)["python"] == "fail"

    class Unreachable:
        def run(self, argv: Any, timeout: float, env: Any = None) -> Result:
            return Result(255, "", "ssh: connect to host 100.64.0.99 port 22: No route to host")

    result = preflight(Unreachable(), "/opt/ober")
    assert not result.ok and "No route to host" in result.failures()[0].detail


def test_disk_threshold() -> None:
    assert statuses(parse_probe(probe_output(python=py(free=MIN_FREE_BYTES))))["disk"] == "ok"
    assert statuses(parse_probe(probe_output(python=py(free=MIN_FREE_BYTES - 1))))["disk"] == "fail"


# --- the inventory's files: ----------------------------------------------------------------------------------------


def example(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "inventory/example.yaml").read_text())
    data.update(changes)
    return data


def test_inventory_files_are_relative_to_the_inventory_with_mode_0600_by_default(tmp_path: Path) -> None:
    inventory_file = tmp_path / "site.yaml"
    files = [
        {"source": "certs/s3.pem", "dest": "/opt/ober/etc/certs/s3.pem"},
        {"source": "/abs/ca.pem", "dest": "/etc/ssl/ca.pem", "mode": "0644"},
    ]
    inventory = resolve_inventory(example(files=files), str(inventory_file))
    assert [(f.source, f.dest, f.mode) for f in inventory.files] == [
        (tmp_path / "certs/s3.pem", "/opt/ober/etc/certs/s3.pem", 0o600),
        (Path("/abs/ca.pem"), "/etc/ssl/ca.pem", 0o644),
    ]
    assert resolve_inventory(example(), str(inventory_file)).files == ()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"source": "a.pem", "dest": "relative/a.pem"}, "files[0].dest: 'relative/a.pem' is not allowed"),
        ({"source": "a.pem", "dest": "/opt/../etc/shadow"}, "has '.' or '..'"),
        ({"source": "a.pem", "dest": "/opt/ober/etc/"}, "is not allowed"),
        ({"source": "a.pem", "dest": "/a.pem", "mode": "u+rw"}, "files[0].mode: 'u+rw' is not a file mode"),
        ({"source": "a.pem", "dest": "/a.pem", "mode": 0o7777}, "is not a file mode"),
        ({"dest": "/a.pem"}, "files[0].source: required"),
        ({"source": "a.pem", "dest": "/a.pem", "owner": "root"}, "files[0].owner: unknown key"),
    ],
)
def test_bad_inventory_files_are_refused_naming_the_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_inventory(example(files=[entry]), "site.yaml")


def test_a_node_path_listed_twice_is_refused() -> None:
    twice = [{"source": "a.pem", "dest": "/a.pem"}, {"source": "b.pem", "dest": "/a.pem"}]
    with pytest.raises(ConfigError, match="listed twice"):
        resolve_inventory(example(files=twice), "site.yaml")


# --- wheelhouses per architecture ------------------------------------------------------------------------------------


def test_wheelhouse_platforms_per_architecture() -> None:
    arm = platforms((2, 36), "aarch64")
    assert arm[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in arm
    assert "manylinux2014_aarch64" in arm and not [tag for tag in arm if "x86_64" in tag]
    assert "manylinux_2_16_aarch64" not in arm  # aarch64 wheels start at glibc 2.17
    assert platforms((2, 36))[-4:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "any"]


def test_wheelhouse_refuses_an_unsupported_architecture(tmp_path: Path) -> None:
    with pytest.raises(OberError, match="unsupported architecture 'riscv64'"):
        build_wheelhouse("3.13", tmp_path, arch="riscv64")
    assert list(tmp_path.iterdir()) == []


# --- bootstrap steps, run for real against a local "node" (a temp install path) ------------------------------------


class LocalNode:
    """A Remote that is this machine: the node-side scripts run for real, files land under a temp directory."""

    user = "root"
    sudo = False

    def run(self, argv: Any, timeout: float | None = None, env: Any = None, *, stdin: bytes | None = None) -> Result:
        done = subprocess.run(list(argv), input=stdin or b"", capture_output=True, timeout=timeout, check=False)
        return Result(done.returncode, done.stdout.decode(), done.stderr.decode())

    def put(self, data: bytes, remote: str, mode: int = 0o644, *, timeout: float | None = None) -> None:
        path = Path(remote)
        path.write_bytes(data)
        path.chmod(mode)

    def close(self) -> None:
        pass


@pytest.fixture
def short(tmp_path: Path) -> Iterator[Path]:
    """A temp directory with a short path (an install path has at most 64 characters)."""
    directory = Path(tempfile.mkdtemp(prefix="ofb-"))
    yield directory
    shutil.rmtree(directory)


def lab_inventory(tmp_path: Path, **changes: Any) -> Inventory:
    data = example(**changes)
    data["config"]["install_path"] = str(tmp_path / "opt")
    return resolve_inventory(data, str(tmp_path / "site.yaml"))


def job(tmp_path: Path, *, dry_run: bool = False, **changes: Any) -> NodeJob:
    pem = tmp_path / "s3.pem"
    pem.write_text("PEM")
    inventory = lab_inventory(
        tmp_path, files=[{"source": "s3.pem", "dest": str(tmp_path / "opt/etc/certs/s3.pem")}], **changes
    )
    node = inventory.nodes[0]
    payload = payloads(inventory, [node], {"bgp_md5": "m", "stats_password": "s", "unused": "u"})[node.name]
    return NodeJob(node, LocalNode(), payload, Options(dry_run=dry_run))


def test_payload_holds_only_the_secrets_the_node_refers_to_and_refuses_a_missing_file(short: Path) -> None:
    tmp_path = short
    made = job(tmp_path)
    login = made.payload.files[made.payload.secrets_file]
    assert yaml.safe_load(login[0]) == {"bgp_md5": "m", "stats_password": "s"} and login[1] == 0o600
    staged = yaml.safe_load(made.payload.files[made.payload.staged_config][0])
    assert staged["name"] == "node01" and staged["bgp"]["router_id"] == "198.51.100.11"
    inventory = lab_inventory(tmp_path, files=[{"source": "missing.pem", "dest": "/opt/ober/etc/certs/s3.pem"}])
    with pytest.raises(OberError, match=r"cannot read .*missing\.pem"):
        payloads(inventory, list(inventory.nodes), {"bgp_md5": "m", "stats_password": "s"})
    with pytest.raises(SecretsError, match=r"bgp\.md5_secret"):
        payloads(lab_inventory(tmp_path), list(inventory.nodes), {"stats_password": "s"})


def test_files_are_written_when_content_or_mode_differ_and_left_alone_otherwise(short: Path) -> None:
    tmp_path = short
    made = job(tmp_path)
    Path(made.install, "etc").mkdir(parents=True)
    planned = job(tmp_path, dry_run=True).files()
    assert planned[0] == "planned" and not Path(made.payload.secrets_file).exists()
    assert made.files()[0] == "changed"
    assert (Path(made.payload.secrets_file).stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "opt/etc/certs/s3.pem").read_text() == "PEM"
    assert made.files() == ("ok", "3 files up to date")
    Path(made.payload.secrets_file).chmod(0o644)  # someone loosened it: rewritten with 600
    status, detail = made.files()
    assert status == "changed" and detail == f"wrote {made.payload.secrets_file}"
    assert (Path(made.payload.secrets_file).stat().st_mode & 0o777) == 0o600


def test_wheelhouse_is_unpacked_in_place_and_not_copied_twice(short: Path) -> None:
    tmp_path = short
    made = job(tmp_path)
    house = tmp_path / "cp313-ober0.1.0-abc"
    house.mkdir()
    (house / "ober-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    status, _ = made.wheelhouse(house)
    remote = Path(made.install, "wheelhouse")
    assert status == "changed" and (remote / "BUILD").read_text() == f"{house.name}\n"
    assert (remote / "ober-0.1.0-py3-none-any.whl").read_bytes() == b"wheel"
    assert sorted(p.name for p in Path(made.install).iterdir()) == ["wheelhouse"]  # no tarball, no .new left
    assert made.wheelhouse(house)[0] == "ok"
    newer = tmp_path / "cp313-ober0.1.0-def"
    newer.mkdir()
    assert made.wheelhouse(newer)[0] == "changed" and not (remote / "ober-0.1.0-py3-none-any.whl").exists()


def test_parse_remote_files() -> None:
    text = f"{'a' * 64} 600 /opt/ober/etc/login\n- - /opt/ober/etc/certs/s3.pem\ngarbage\n"
    assert parse_remote_files(text) == {"/opt/ober/etc/login": ("a" * 64, 0o600), "/opt/ober/etc/certs/s3.pem": None}


def test_report_status_resume_hint_and_json() -> None:
    done = NodeReport("node01", "198.51.100.11", [StepResult("preflight", "ok", ""), StepResult("activate", "ok", "")])
    broken = NodeReport(
        "node02", "198.51.100.12", [StepResult("preflight", "failed", "node02: connection refused", fix="start sshd")]
    )
    report = FleetReport([done, broken], dry_run=False, targets="node[01-02]")
    assert done.status == "unchanged" and broken.status == "failed" and not report.ok and not report.changed
    assert report.resume_hint() == (
        "node02 failed at preflight: start sshd; then rerun `ober fleet bootstrap node[01-02]` "
        "(finished nodes are left as they are)"
    )
    data = report.as_dict()
    assert data["nodes"][1]["failed_step"] == "preflight" and data["nodes"][1]["error"] == "node02: connection refused"
    assert json.loads(json.dumps(data)) == data
    assert FleetReport([done], dry_run=False, targets=None).resume_hint() is None
