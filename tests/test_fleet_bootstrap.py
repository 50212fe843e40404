"""``ober fleet bootstrap``'s pure parts: preflight parsing and judging, the inventory's ``files:``, the plan."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.errors import ConfigError, OberError
from ober.inventory import resolve_inventory
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
        {"source": "/abs/ca.pem", "dest": "/etc/ca.pem", "mode": "0644"},
    ]
    inventory = resolve_inventory(example(files=files), str(inventory_file))
    assert [(f.source, f.dest, f.mode) for f in inventory.files] == [
        (tmp_path / "certs/s3.pem", "/opt/ober/etc/certs/s3.pem", 0o600),
        (Path("/abs/ca.pem"), "/etc/ca.pem", 0o644),
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
