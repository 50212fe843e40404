"""``ober upgrade``'s facts and pure plan (dnf is mocked: it cannot run here). The real upgrade of ober from a
wheelhouse, in an nspawn node, is in test_bootstrap_node.py."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ober.bootstrap import HostFacts, Run, UnitState
from ober.bootstrap.facts import parse_dnf_list
from ober.cli import main
from ober.errors import OberError
from ober.runner import Result
from ober.upgrade import (
    UpgradeFacts,
    Versions,
    gather_upgrade_facts,
    parse_apt_installed,
    parse_pip_index,
    plan_upgrade,
    version_key,
    wheel_versions,
)

RUNNING = {"ober-http": UnitState("enabled", "active"), "ober-bgp": UnitState("enabled", "active")}
STOPPED = {"ober-http": UnitState("disabled", "inactive"), "ober-bgp": UnitState("disabled", "inactive")}
POLICY = "haproxy:\n  Installed: 3.0.10-1\n  Candidate: 3.0.11-1+deb13u4\n  Version table:\n"
DNF = (
    "Updating Subscription Management repositories.\nAvailable Upgrades\n"
    "haproxy.x86_64                 3.0.5-2.el10                  rhel-10-appstream\n"
)

HAPROXY_CURRENT = Versions("3.0.11", "3.0.11", "apt")
USERS = frozenset({"root", "ober-haproxy", "ober-bgp"})
OBER_CURRENT = Versions("0.1.0", "0.1.0", "/w")


def facts(
    haproxy: Versions = HAPROXY_CURRENT,
    ober: Versions = OBER_CURRENT,
    units: dict[str, UnitState] | None = None,
    manager: str = "apt",
    wheelhouse: str | None = "/w",
    users: frozenset[str] | None = None,
) -> UpgradeFacts:
    return UpgradeFacts(
        "/opt/ober",
        manager,
        haproxy,
        ober,
        Versions("5.0.15", "5.0.15", "/w"),
        units or RUNNING,
        wheelhouse,
        users=users or USERS,
        groups=users or USERS,
    )


CASES = [
    ("everything current", facts(), {"haproxy": [], "ober": []}),
    (
        "a newer HAProxy: upgrade in place, then a hitless reload (never a restart)",
        facts(haproxy=Versions("3.0.10-1", "3.0.11-1+deb13u4", "apt")),
        {
            "haproxy": [
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --only-upgrade "
                "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold haproxy  "
                "(the packages it adds go into the ledger)",
                "systemctl reload ober-http",
            ],
            "ober": [],
        },
    ),
    (
        "RHEL: dnf upgrade",
        facts(haproxy=Versions("3.0.5-1.el10", "3.0.5-2.el10", "dnf"), manager="dnf"),
        {
            "haproxy": [
                "dnf upgrade -y -q haproxy  (the packages it adds go into the ledger)",
                "systemctl reload ober-http",
            ],
            "ober": [],
        },
    ),
    (
        "a newer ober in the wheelhouse: offline pip, then restart ober-bgp",
        facts(ober=Versions("0.1.0", "0.1.1", "/w")),
        {
            "haproxy": [],
            "ober": [
                "PIP_NO_INPUT=1 /opt/ober/venv/bin/python -m pip install -q --disable-pip-version-check "
                "--no-index --find-links /w --upgrade ober==0.1.1",
                "systemctl restart ober-bgp",
            ],
        },
    ),
    (
        "stopped units are not started by an upgrade",
        facts(haproxy=Versions("3.0.10", "3.0.11", "apt"), ober=Versions("0.1.0", "0.2.0", "/w"), units=STOPPED),
        {
            "haproxy": [
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --only-upgrade "
                "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold haproxy  "
                "(the packages it adds go into the ledger)"
            ],
            "ober": [
                "PIP_NO_INPUT=1 /opt/ober/venv/bin/python -m pip install -q --disable-pip-version-check "
                "--no-index --find-links /w --upgrade ober==0.2.0"
            ],
        },
    ),
    ("an older ober is never a downgrade", facts(ober=Versions("0.10.0", "0.9.1", "/w")), {"haproxy": [], "ober": []}),
    (
        "from the package index",
        facts(ober=Versions("0.1.0", "0.2.0", "the package index"), wheelhouse=None),
        {
            "haproxy": [],
            "ober": [
                "PIP_NO_INPUT=1 /opt/ober/venv/bin/python -m pip install -q --disable-pip-version-check "
                "--upgrade ober==0.2.0",
                "systemctl restart ober-bgp",
            ],
        },
    ),
]


@pytest.mark.parametrize(("given", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_plan(given: UpgradeFacts, expected: dict[str, list[str]]) -> None:
    steps = plan_upgrade(given)
    assert {step.name: step.commands for step in steps} == expected
    for step in steps:
        assert step.why  # what it does, or why nothing needs doing


def test_nothing_to_do_says_why() -> None:
    steps = {step.name: step.why for step in plan_upgrade(facts(ober=Versions("0.1.0", None, "/w")))}
    assert steps == {"haproxy": "HAProxy 3.0.11 is the newest apt offers", "ober": "no ober in /w: ober 0.1.0 stays"}


def test_parsers() -> None:
    assert parse_apt_installed(POLICY) == "3.0.10-1"
    assert parse_apt_installed("haproxy:\n  Installed: (none)\n  Candidate: 3.0.11\n") is None
    assert parse_dnf_list(DNF) == "3.0.5-2.el10"
    assert parse_dnf_list("Updating Subscription Management repositories.\n") is None
    assert parse_pip_index("ober (0.2.0)\nAvailable versions: 0.2.0, 0.1.0\n") == "0.2.0"
    assert version_key("0.10.0") > version_key("0.9.1")
    assert version_key("5.0.15") > version_key("5.0.9")


def test_wheel_versions_takes_the_newest_of_each(tmp_path: Path) -> None:
    for name in (
        "ober-0.1.0-py3-none-any.whl",
        "ober-0.1.1-py3-none-any.whl",
        "ober-0.1.10-py3-none-any.whl",
        "exabgp-5.0.15-py3-none-any.whl",
        "python_hostlist-2.3.0-py3-none-any.whl",
        "WHEELS",
    ):
        (tmp_path / name).touch()
    assert wheel_versions(tmp_path) == {"ober": "0.1.10", "exabgp": "5.0.15", "python-hostlist": "2.3.0"}


class FakeRunner:
    def __init__(self, answers: Mapping[str, Result]) -> None:
        self.answers = answers
        self.ran: list[str] = []

    def run(self, argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> Result:
        line = " ".join(argv)
        self.ran.append(line)
        return next((result for prefix, result in self.answers.items() if line.startswith(prefix)), Result(1))


def venv_root(tmp_path: Path, ober: str = "0.1.0") -> Path:
    site = tmp_path / "opt/ober/venv/lib/python3.13/site-packages"
    (site / f"ober-{ober}.dist-info").mkdir(parents=True)
    (site / "exabgp-5.0.15.dist-info").mkdir()
    (tmp_path / "opt/ober/venv/bin").mkdir(parents=True)
    (tmp_path / "opt/ober/venv/bin/python").touch()
    return tmp_path


def test_gather_on_rhel_with_dnf_mocked(tmp_path: Path) -> None:
    root = venv_root(tmp_path)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "ober-0.2.0-py3-none-any.whl").touch()
    runner = FakeRunner({"rpm -q": Result(0, "3.0.5-1.el10"), "dnf list --upgrades haproxy": Result(0, DNF)})
    got = gather_upgrade_facts("/opt/ober", runner, manager="dnf", wheelhouse=wheels, root=root)
    assert got.haproxy == Versions("3.0.5-1.el10", "3.0.5-2.el10", "dnf")
    assert got.ober == Versions("0.1.0", "0.2.0", str(wheels))
    assert got.exabgp == Versions("5.0.15", None, str(wheels))
    assert got.units == {}  # no systemd under this root: no unit is restarted
    assert not got.pinned  # no requirements.txt: ober==0.2.0 from the directory, unchecked
    (wheels / "requirements.txt").write_text("ober==0.2.0 --hash=sha256:" + "0" * 64 + "\n")
    pinned = gather_upgrade_facts("/opt/ober", runner, manager="dnf", wheelhouse=wheels, root=root)
    [ober] = [step for step in plan_upgrade(pinned) if step.name == "ober"]
    [pip] = [" ".join(a.argv) for a in ober.actions if isinstance(a, Run)]
    assert pip.endswith(f"--find-links {wheels} --require-hashes -r {wheels}/requirements.txt --upgrade")


def test_gather_from_the_index_with_apt(tmp_path: Path) -> None:
    root = venv_root(tmp_path)
    runner = FakeRunner(
        {
            "apt-cache policy haproxy": Result(0, POLICY),
            "/opt/ober/venv/bin/python -m pip index versions ober": Result(0, "ober (0.3.0)\n"),
            # exabgp: the index cannot be reached (a node without internet): unknown, not an error
        }
    )
    got = gather_upgrade_facts("/opt/ober", runner, manager="apt", root=root)
    # apt-cache knows only the lists it last fetched: they are refreshed first.
    assert runner.ran.index("apt-get update -q") < runner.ran.index("apt-cache policy haproxy")
    assert got.haproxy == Versions("3.0.10-1", "3.0.11-1+deb13u4", "apt")
    assert got.ober.available == "0.3.0" and got.exabgp.available is None


def test_no_venv_means_bootstrap_first(tmp_path: Path) -> None:
    with pytest.raises(OberError, match="no ober venv at /opt/ober/venv") as caught:
        gather_upgrade_facts("/opt/ober", FakeRunner({}), manager="apt", root=tmp_path)
    assert "ober bootstrap /opt/ober" in (caught.value.fix or "")


# --- the CLI, in-process on fake facts ----------------------------------------------------------------------------

cli_upgrade = importlib.import_module("ober.cli.upgrade")


@pytest.fixture
def seams(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    state: dict[str, Any] = {"euid": 0, "facts": facts(ober=Versions("0.1.0", "0.1.1", "/w")), "runner": None}

    def runner() -> FakeRunner:
        made = FakeRunner({"": Result(0)})
        state["runner"] = made
        return made

    monkeypatch.setattr(cli_upgrade, "make_runner", runner)
    monkeypatch.setattr(
        cli_upgrade,
        "read_host_facts",
        lambda runner: HostFacts(None, state["euid"], True, "apt", ober_version="0.1.0"),
    )
    monkeypatch.setattr(cli_upgrade, "read_upgrade_facts", lambda *args: state["facts"])
    return state


def test_cli_dry_run_shows_versions_and_changes_nothing(
    seams: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--json", "upgrade", "--dry-run", "/opt/ober"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["versions"]["ober"] == {"installed": "0.1.0", "available": "0.1.1", "source": "/w"}
    assert doc["changed"] is False and doc["dry_run"] is True
    assert seams["runner"].ran == []
    assert main(["upgrade", "--dry-run", "/opt/ober"]) == 0
    out = capsys.readouterr().out
    assert "ober" in out and "0.1.1" in out and "systemctl restart ober-bgp" in out and "dry run" in out


def test_cli_upgrade_runs_the_plan(seams: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--json", "upgrade", "--yes", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"] is True
    assert [line for line in seams["runner"].ran if "pip install" in line or "systemctl" in line] == [
        "/opt/ober/venv/bin/python -m pip install -q --disable-pip-version-check --no-index --find-links /w "
        "--upgrade ober==0.1.1",
        "systemctl restart ober-bgp",
    ]


def test_cli_refuses_non_root_and_says_when_nothing_is_newer(
    seams: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    seams["euid"] = 1000
    assert main(["upgrade", "--yes"]) == 1
    assert "must run as root" in capsys.readouterr().err
    seams["euid"] = 0
    seams["facts"] = facts()
    assert main(["upgrade", "--yes"]) == 0
    assert "nothing to do: everything is up to date" in capsys.readouterr().out
    assert seams["runner"].ran == []


def test_cli_a_failed_upgrade_is_one_json_document(
    seams: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing() -> FakeRunner:
        made = FakeRunner({"/opt/ober/venv/bin/python -m pip": Result(1, "", "ERROR: no ober==0.1.1"), "": Result(0)})
        seams["runner"] = made
        return made

    monkeypatch.setattr(cli_upgrade, "make_runner", failing)
    assert main(["--json", "upgrade", "--yes"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert "ERROR: no ober==0.1.1" in doc["error"] and doc["fix"] == "fix that and run ober upgrade again"
    assert [step["name"] for step in doc["steps"] if step["error"]] == ["ober"]
    assert not any("systemctl restart" in line for line in seams["runner"].ran)


def test_a_node_bootstrapped_before_ober_had_users_gets_them_with_the_upgrade() -> None:
    steps = {step.name: step for step in plan_upgrade(facts(users=frozenset({"root"})))}
    assert [command.split()[0] for command in steps["users"].commands] == ["groupadd", "useradd"] * 2
    records = [action.record for action in steps["users"].actions if isinstance(action, Run)]
    assert [(entry.kind, entry.target) for entry in records if entry] == [
        ("group", "ober-haproxy"),
        ("user", "ober-haproxy"),
        ("group", "ober-bgp"),
        ("user", "ober-bgp"),
    ]
