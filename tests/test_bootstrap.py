"""Bootstrap's pure plan, table-driven (facts in → steps and commands out), its fact parsers on real output, the
ledger and uninstall's plan, and the CLI's install-path rules. The real thing runs in test_bootstrap_node.py."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ober.bootstrap import (
    BootstrapOptions,
    Entry,
    Facts,
    HostFacts,
    InstallFacts,
    Ledger,
    Run,
    Step,
    UninstallFacts,
    UnitState,
    find_aws_lc_repo,
    gather_host_facts,
    gather_install_facts,
    parse_apt_candidate,
    parse_getsebool,
    parse_haproxy_ssl,
    parse_unit_state,
    plan_bootstrap,
    plan_uninstall,
    run_steps,
    uninstall_changes,
    wanted_dirs,
)
from ober.cli import main
from ober.errors import OberError
from ober.facts import find_program, parse_haproxy_version
from ober.lab.image import DEFAULT_IMAGE
from ober.runner import Result
from tests.conftest import require

# The module (ober.cli exports the command object under the same name).
cli_bootstrap = importlib.import_module("ober.cli.bootstrap")

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
UBUNTU_OLD = 'PRETTY_NAME="Ubuntu 20.04 LTS"\nID=ubuntu\nVERSION_ID="20.04"\n'
RHEL9 = 'PRETTY_NAME="Red Hat Enterprise Linux 9.4"\nID="rhel"\nVERSION_ID="9.4"\n'
RHEL10 = 'PRETTY_NAME="Red Hat Enterprise Linux 10.0"\nID="rhel"\nVERSION_ID="10.0"\n'
ON = UnitState("enabled", "active")
OFF = UnitState("disabled", "inactive")
INSTALL = "/opt/ober"
EVERY_DIR = {"/": 0o755, "/opt": 0o755, **wanted_dirs(INSTALL)}


def host(**changes: Any) -> HostFacts:
    """A fresh Debian 13 machine, root, systemd, apt, no HAProxy, networkd off; ``changes`` replace fields."""
    base = HostFacts(
        os_release=DEBIAN,
        euid=0,
        systemd=True,
        package_manager="apt",
        haproxy_candidate="3.0.11-1+deb13u4",
        python=(3, 13, 5),
        ensurepip=True,
        networkd=OFF,
        ober_version="0.1.0",
    )
    return replace(base, **changes)


def fresh(path: str = INSTALL) -> InstallFacts:
    return InstallFacts(path, {"/": 0o755, "/opt": 0o755})


def done_install(path: str = INSTALL) -> InstallFacts:
    return InstallFacts(path, EVERY_DIR, True, {"exabgp": "5.0.15", "ober": "0.1.0"}, f"{path}/venv/bin/ober")


def plan(h: HostFacts, i: InstallFacts | None = None, wheels: str | None = "/root/wh") -> dict[str, Step]:
    steps = plan_bootstrap(Facts(h, i or fresh()), BootstrapOptions(INSTALL, wheels))
    return {step.name: step for step in steps}


def commands(step: Step) -> list[str]:
    return step.commands


# --- the plan, table-driven ---------------------------------------------------------------------------------------

PACKAGE_CASES: list[tuple[str, HostFacts, list[str], str, str | None]] = [
    # (case, facts, package step's commands, in its why, in a warning)
    (
        "debian without haproxy: the distribution's, with a warning naming its version",
        host(),
        [
            "DEBIAN_FRONTEND=noninteractive apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold haproxy  (the packages it adds go into the ledger)",
        ],
        "the distribution's haproxy 3.0.11-1+deb13u4",
        "no AWS-LC HAProxy repository is configured",
    ),
    (
        "debian with haproxy 3.0: nothing to install",
        host(haproxy_version="3.0.11", haproxy_ssl="OpenSSL 3.5.9", haproxy_candidate=None),
        [],
        "HAProxy 3.0.11 is installed (OpenSSL 3.5.9; not an AWS-LC build)",
        None,
    ),
    (
        "an AWS-LC repository is configured: haproxy from it, no warning",
        host(aws_lc_repo="/etc/apt/sources.list.d/haproxy-awslc.list"),
        [
            "DEBIAN_FRONTEND=noninteractive apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold haproxy  (the packages it adds go into the ledger)",
        ],
        "from the AWS-LC repository configured in /etc/apt/sources.list.d/haproxy-awslc.list",
        None,
    ),
    (
        "the repository is there but the installed HAProxy is OpenSSL: warn to upgrade from it",
        host(haproxy_version="3.0.11", aws_lc_repo="/etc/apt/sources.list.d/x.list"),
        [],
        "is installed",
        "upgrade it from that repository",
    ),
    (
        "RHEL 10: dnf, no apt-get update, no python3-venv",
        host(os_release=RHEL10, package_manager="dnf", ensurepip=False, haproxy_candidate=None),
        ["dnf install -y -q haproxy  (the packages it adds go into the ledger)"],
        "the distribution's haproxy",
        "built with OpenSSL",
    ),
    (
        "debian without ensurepip: python3-venv comes too",
        host(ensurepip=False),
        [
            "DEBIAN_FRONTEND=noninteractive apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Options::=--force-confdef "
            "-o Dpkg::Options::=--force-confold haproxy python3-venv  (the packages it adds go into the ledger)",
        ],
        "python3-venv, whose ensurepip the venv needs",
        "no AWS-LC HAProxy repository",
    ),
]


@pytest.mark.parametrize(("facts", "expected", "why", "warning"), [case[1:] for case in PACKAGE_CASES])
def test_package_step(facts: HostFacts, expected: list[str], why: str, warning: str | None) -> None:
    step = plan(facts)["packages"]
    assert commands(step) == expected
    assert why in step.why
    if warning is None:
        assert not step.warnings
    else:
        assert any(warning in text for text in step.warnings), step.warnings


REFUSALS = [
    ("non-root", host(euid=1000), "must run as root (running as uid 1000)", "sudo"),
    ("ubuntu 20.04", host(os_release=UBUNTU_OLD), "unsupported OS: Ubuntu 20.04 LTS is too old", "Ubuntu 24.04+"),
    ("rhel 9", host(os_release=RHEL9, package_manager="dnf"), "Red Hat Enterprise Linux 9.4 is too old", "RHEL 10+"),
    ("no os-release", host(os_release=None), "cannot read /etc/os-release", "Debian 12+"),
    ("python 3.9", host(python=(3, 9, 2)), "Python 3.9.2 is too old", "3.11"),
    ("no systemd", host(systemd=False), "systemd is not running", "booted with systemd"),
    ("no package manager", host(package_manager=None), "neither apt-get nor dnf", "Debian 12+"),
]


@pytest.mark.parametrize(("facts", "message", "fix"), [case[1:] for case in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_refusals_are_one_clear_error(facts: HostFacts, message: str, fix: str) -> None:
    with pytest.raises(OberError) as caught:
        plan(facts)
    assert message in caught.value.message
    assert fix in (caught.value.fix or "")


def test_selinux_enforcing_on_rhel_sets_the_boolean_and_records_it() -> None:
    rhel = host(os_release=RHEL10, package_manager="dnf", selinux="enforcing", selinux_boolean=False)
    step = plan(rhel)["selinux"]
    assert commands(step) == ["setsebool -P haproxy_connect_any 1"]
    action = step.actions[0]
    assert isinstance(action, Run) and action.record == Entry("selinux-boolean", "haproxy_connect_any", was="off")
    assert plan(replace(rhel, selinux_boolean=True))["selinux"].why == "haproxy_connect_any is on"
    assert not plan(replace(rhel, selinux="permissive"))["selinux"].actions
    assert "selinux" not in plan(host())  # no SELinux at all: no step


def test_venv_from_a_wheelhouse_is_offline_and_pinned() -> None:
    step = plan(host())["venv"]
    assert commands(step) == [
        "/usr/bin/python3 -m venv /opt/ober/venv",
        "PIP_NO_INPUT=1 /opt/ober/venv/bin/python -m pip install -q --disable-pip-version-check --no-index "
        "--find-links /root/wh exabgp==5.0.15 ober==0.1.0",
    ]
    online = plan(host(ober_source=None), wheels=None)["venv"]
    assert "--no-index" not in commands(online)[1] and "from the package index" in online.why
    tree = plan(host(ober_source="/src/ober"), wheels=None)["venv"]
    assert commands(tree)[1].endswith("exabgp==5.0.15 /src/ober")


def test_venv_from_a_pinned_wheelhouse_installs_exactly_its_hashed_wheels() -> None:
    steps = plan_bootstrap(Facts(host(), fresh()), BootstrapOptions(INSTALL, "/root/wh", pinned=True))
    [venv] = [step for step in steps if step.name == "venv"]
    assert commands(venv)[1] == (
        "PIP_NO_INPUT=1 /opt/ober/venv/bin/python -m pip install -q --disable-pip-version-check --no-index "
        "--find-links /root/wh --require-hashes -r /root/wh/requirements.txt"
    )
    assert "checked against its pinned hash" in venv.why


def test_venv_with_an_older_ober_is_updated_and_only_new_names_are_recorded() -> None:
    old = InstallFacts(INSTALL, EVERY_DIR, True, {"ober": "0.0.9"})
    step = plan(host(), old)["venv"]
    assert "update /opt/ober/venv" in step.why and len(step.actions) == 1
    action = step.actions[0]
    assert isinstance(action, Run) and action.record == Entry("pip", "/opt/ober/venv", names=("exabgp",))


def test_directories_parents_first_and_a_loose_certs_dir_is_tightened() -> None:
    step = plan(host())["dirs"]
    assert commands(step) == [
        "mkdir -m 755 /opt/ober",
        "mkdir -m 755 /opt/ober/etc",
        "mkdir -m 700 /opt/ober/etc/certs",
        "mkdir -m 755 /opt/ober/etc/whitelist",
        "mkdir -m 755 /opt/ober/run",
        "mkdir -m 755 /etc/systemd/journald.conf.d",
    ]
    loose = InstallFacts(INSTALL, {**EVERY_DIR, "/opt/ober/etc/certs": 0o755}, True, {})
    fix = plan(host(), loose)["dirs"]
    assert commands(fix) == ["chmod 700 /opt/ober/etc/certs"]
    action = fix.actions[0]
    assert isinstance(action, Run) and action.record == Entry("mode", "/opt/ober/etc/certs", was="755")


def test_distribution_unit_and_networkd() -> None:
    steps = plan(host(haproxy_version="3.0.11", haproxy_unit=ON))
    assert commands(steps["haproxy.service"]) == ["systemctl disable --now haproxy.service"]
    # ...and its wait-online, which would hold network-online.target (ober-http) 2 minutes at every boot.
    assert commands(steps["network"]) == [
        "systemctl enable --now systemd-networkd.service",
        "systemctl disable systemd-networkd-wait-online.service",
    ]
    netplan = plan(host(network="netplan"))["network"]
    assert not netplan.actions and "network.manager: netplan" in netplan.why


USERS = frozenset({"root", "ober-haproxy", "ober-bgp"})


def test_a_bootstrapped_machine_gets_nothing_to_do_with_a_reason_for_each_step() -> None:
    node = host(
        haproxy_version="3.0.11",
        haproxy_ssl="OpenSSL 3.5.9",
        haproxy_unit=OFF,
        networkd=ON,
        users=USERS,
        groups=USERS,
    )
    steps = plan_bootstrap(Facts(node, done_install()), BootstrapOptions(INSTALL, "/root/wh"))
    assert [step.name for step in steps] == [
        "host",
        "dirs",
        "users",
        "packages",
        "haproxy.service",
        "venv",
        "path",
        "network",
    ]
    for step in steps:
        assert not step.changes and step.why, step
    assert {step.name: step.why for step in steps}[
        "venv"
    ] == "/opt/ober/venv has ExaBGP 5.0.15 and ober 0.1.0 (it is there)"


def test_users_for_the_daemons_are_created_each_with_its_group_and_recorded() -> None:
    step = plan(host(users=frozenset({"root"}), groups=frozenset({"root"})))["users"]
    assert commands(step) == [
        "groupadd --system ober-haproxy",
        "useradd --system --gid ober-haproxy --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "
        "--comment 'ober HAProxy workers' ober-haproxy",
        "groupadd --system ober-bgp",
        "useradd --system --gid ober-bgp --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "
        "--comment 'ober ExaBGP and ober health' ober-bgp",
    ]
    records = [action.record for action in step.actions if isinstance(action, Run)]
    assert records == [
        Entry("group", "ober-haproxy"),
        Entry("user", "ober-haproxy"),
        Entry("group", "ober-bgp"),
        Entry("user", "ober-bgp"),
    ]
    # A group left from before (say an earlier uninstall that could not remove the user) is used, not made again.
    partial = plan(host(users=frozenset({"ober-haproxy"}), groups=frozenset({"ober-haproxy", "ober-bgp"})))["users"]
    assert [action.argv[:2] for action in partial.actions if isinstance(action, Run)] == [("useradd", "--system")]
    assert isinstance(partial.actions[0], Run) and partial.actions[0].argv[-1] == "ober-bgp"


def test_uninstall_removes_the_users_bootstrap_created_and_only_while_they_exist() -> None:
    ledger = (
        Entry("group", "ober-haproxy"),
        Entry("user", "ober-haproxy"),
        Entry("group", "ober-bgp"),
        Entry("user", "ober-bgp"),
    )
    facts = UninstallFacts(
        INSTALL,
        ledger,
        (),
        frozenset(),
        {},
        {"ober-http": ON, "ober-bgp": ON},
        # ober-bgp was removed by hand already; its group is still there.
        users=frozenset({"root", "ober-haproxy"}),
        groups=frozenset({"root", "ober-haproxy", "ober-bgp"}),
    )
    steps = plan_uninstall(facts)
    assert steps[0].name == "units"  # stopped first: userdel refuses a user with running processes
    undo = [
        (
            step.name,
            commands(step),
            step.forget or tuple(a.forget for a in step.actions if isinstance(a, Run) and a.forget),
        )
        for step in steps
        if step.name in ("user", "group")
    ]
    script = 'sh -c \'getent group "$1" >/dev/null || exit 0; groupdel "$1"\' groupdel'
    assert undo == [
        ("user", [], (Entry("user", "ober-bgp"),)),
        ("group", [f"{script} ober-bgp"], (Entry("group", "ober-bgp"),)),
        ("user", ["userdel ober-haproxy"], (Entry("user", "ober-haproxy"),)),
        ("group", [f"{script} ober-haproxy"], (Entry("group", "ober-haproxy"),)),
    ]


def test_the_group_undo_removes_a_group_only_while_it_exists(tmp_path: Path) -> None:
    """The shell line of the group's undo, run for real against a fake groupdel and getent."""
    facts = UninstallFacts(INSTALL, (Entry("group", "g1"),), (), frozenset(), {}, {}, groups=frozenset({"g1"}))
    group = next(step for step in plan_uninstall(facts) if step.name == "group")
    action = group.actions[0]
    assert isinstance(action, Run)
    argv = action.argv
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    (bin_dir / "groupdel").write_text(f"#!/bin/sh\necho groupdel $1 >> {log}\n")
    for present in (True, False):
        (bin_dir / "getent").write_text(f"#!/bin/sh\nexit {0 if present else 2}\n")
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        assert subprocess.run(argv, env=env, check=False).returncode == 0
    assert log.read_text() == "groupdel g1\n"  # once: not when userdel had taken it already


@pytest.mark.parametrize(
    "path", ["relative/ober", "/opt/../ober", "/", "/opt/ober/", "/opt/with space", "/" + "x" * 64]
)
def test_bad_install_paths_are_refused(path: str) -> None:
    with pytest.raises(OberError, match="install path"):
        plan_bootstrap(Facts(host(), fresh()), BootstrapOptions(path))


# --- facts: parsers on real output, files on a temporary root -----------------------------------------------------


def haproxy_vv(argv: list[str]) -> str:
    return subprocess.run([*argv, "-vv"], capture_output=True, text=True, timeout=20, check=True).stdout


def test_haproxy_facts_of_the_hosts_haproxy_2_6() -> None:
    program = find_program("haproxy")
    require(program is not None, "haproxy is not installed")
    assert program is not None
    output = haproxy_vv([program])
    assert (parse_haproxy_version(output) or "").startswith("2.6.")
    library, aws_lc = parse_haproxy_ssl(output)
    assert library is not None and library.startswith("OpenSSL 3.") and aws_lc is False


def test_haproxy_facts_of_the_images_haproxy_3_0() -> None:
    require(os.geteuid() == 0 and (DEFAULT_IMAGE / "usr/sbin/haproxy").exists(), "no Debian 13 image (root)")
    output = haproxy_vv(["chroot", str(DEFAULT_IMAGE), "/usr/sbin/haproxy"])
    assert (parse_haproxy_version(output) or "").startswith("3.0.")
    assert "-OPENSSL_AWSLC" in output  # 3.0 lists the feature, switched off: not mistaken for AWS-LC
    library, aws_lc = parse_haproxy_ssl(output)
    assert (library or "").startswith("OpenSSL 3.5") and aws_lc is False


def test_an_aws_lc_build_is_recognised() -> None:
    output = (
        "HAProxy version 3.2.4\nFeature list : +OPENSSL +OPENSSL_AWSLC\n"
        "Running on SSL library version : AWS-LC 1.58.0\n"
    )
    assert parse_haproxy_ssl(output) == ("AWS-LC 1.58.0", True)


def test_small_parsers() -> None:
    policy = "haproxy:\n  Installed: (none)\n  Candidate: 3.0.11-1+deb13u4\n  Version table:\n"
    assert parse_apt_candidate(policy) == "3.0.11-1+deb13u4"
    assert parse_apt_candidate("haproxy:\n  Installed: (none)\n  Candidate: (none)\n") is None
    assert parse_getsebool("haproxy_connect_any --> off\n") is False
    assert parse_getsebool("getsebool:  SELinux is disabled\n") is None
    assert parse_unit_state(Result(1, "disabled\n"), Result(3, "inactive\n")) == OFF
    assert parse_unit_state(Result(1, ""), Result(3, "")).describe() == "not installed"


def test_find_aws_lc_repo_reads_apt_and_dnf_sources(tmp_path: Path) -> None:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/yum.repos.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list").write_text("deb http://deb.debian.org/debian trixie main\n")
    assert find_aws_lc_repo(tmp_path) is None
    commented = tmp_path / "etc/apt/sources.list.d/old.list"
    commented.write_text("# deb https://pkg.example/haproxy-aws-lc trixie main\n")
    assert find_aws_lc_repo(tmp_path) is None  # a commented-out line configures nothing
    (tmp_path / "etc/yum.repos.d/haproxy.repo").write_text("[haproxy-awslc]\nbaseurl=https://pkg.example/el10\n")
    assert find_aws_lc_repo(tmp_path) == "/etc/yum.repos.d/haproxy.repo"
    sources = tmp_path / "etc/apt/sources.list.d/haproxy.sources"
    sources.write_text("Types: deb\nURIs: https://pkg.example/HAProxy-AWS-LC\nSuites: trixie\n")
    assert find_aws_lc_repo(tmp_path) == "/etc/apt/sources.list.d/haproxy.sources"  # apt's files come first


def test_install_facts_read_directories_and_the_venv(tmp_path: Path) -> None:
    install = tmp_path / "opt/ober"
    (install / "etc/certs").mkdir(parents=True)
    (install / "etc/certs").chmod(0o700)
    site = install / "venv/lib/python3.13/site-packages"
    (site / "exabgp-5.0.15.dist-info").mkdir(parents=True)
    (site / "python_hostlist-2.3.0.dist-info").mkdir()
    (install / "venv/bin").mkdir()
    (install / "venv/bin/python").touch()
    facts = gather_install_facts("/opt/ober", tmp_path)
    assert facts.dirs["/opt/ober/etc/certs"] == 0o700 and "/opt/ober/run" not in facts.dirs
    assert facts.venv_python and facts.venv_packages == {"exabgp": "5.0.15", "python-hostlist": "2.3.0"}


# --- the ledger and running steps ---------------------------------------------------------------------------------


class FakeRunner:
    """Answers commands from a table (argv prefix → Result) and records them; dpkg-query reads ``packages``."""

    def __init__(self, answers: Mapping[str, Result] | None = None) -> None:
        self.answers = dict(answers or {})
        self.ran: list[str] = []
        self.packages = {"base-files"}

    def run(self, argv: Any, timeout: float, env: Mapping[str, str] | None = None) -> Result:
        line = " ".join(argv)
        self.ran.append(line)
        if argv[0] == "dpkg-query":
            return Result(0, "\n".join(sorted(self.packages)))
        if argv[:2] == ["apt-get", "install"]:
            self.packages |= {"haproxy", "liblua5.4-0"}
        for prefix, result in self.answers.items():
            if line.startswith(prefix):
                return result
        return Result(0)


def test_a_failing_step_stops_the_run_and_the_ledger_holds_what_was_done(tmp_path: Path) -> None:
    install = tmp_path / "opt/ober"
    (install / "etc").mkdir(parents=True)
    ledger = Ledger(install / "etc/.bootstrap.json")
    runner = FakeRunner({"/opt/ober/venv/bin/python -m pip": Result(1, "", "ERROR: No matching distribution: exabgp")})
    steps = plan_bootstrap(Facts(host(), fresh()), BootstrapOptions(INSTALL, "/root/wh"))
    with pytest.raises(OberError, match=r"Create the venv.*No matching distribution") as caught:
        run_steps(steps, runner, ledger)
    assert "ober uninstall" in (caught.value.fix or "")
    saved = json.loads(ledger.path.read_text())
    kinds = [entry["kind"] for entry in saved["entries"]]
    assert kinds.count("directory") == 6 and "venv" in kinds
    assert {"kind": "packages", "target": "apt", "names": ["haproxy", "liblua5.4-0"]} in saved["entries"]
    assert oct(ledger.path.stat().st_mode & 0o777) == "0o644"
    assert Ledger.load(ledger.path).entries == ledger.entries
    assert not any("systemctl enable --now systemd-networkd" in line for line in runner.ran)  # stopped there


def test_a_corrupt_ledger_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text('{"format": 1, "entries": [{"kind": "directory"}]}')
    with pytest.raises(OberError, match="cannot read bootstrap's ledger"):
        Ledger.load(path)
    assert Ledger.load(tmp_path / "missing.json").entries == []


# --- uninstall's plan -------------------------------------------------------------------------------------------


def test_uninstall_undoes_the_ledger_newest_first_and_keeps_what_ober_did_not_write() -> None:
    ledger = (
        Entry("directory", "/opt/ober"),
        Entry("directory", "/opt/ober/etc"),
        Entry("directory", "/opt/ober/etc/certs"),
        Entry("packages", "apt", ("haproxy", "liblua5.4-0")),
        Entry("service-disabled", "haproxy.service", enabled=True, active=True),
        Entry("venv", "/opt/ober/venv"),
    )
    facts = UninstallFacts(
        install_path=INSTALL,
        ledger=ledger,
        manifest=("/opt/ober/etc/haproxy.cfg", "/etc/systemd/system/ober-http.service"),
        existing=frozenset({"/opt/ober/etc/haproxy.cfg", "/etc/systemd/system/ober-http.service"}),
        children={
            "/opt/ober": frozenset({"/opt/ober/etc", "/opt/ober/venv"}),
            "/opt/ober/etc": frozenset(
                {"/opt/ober/etc/certs", "/opt/ober/etc/haproxy.cfg", "/opt/ober/etc/.bootstrap.json"}
            ),
            "/opt/ober/etc/certs": frozenset({"/opt/ober/etc/certs/mine.pem"}),
        },
        units={"ober-http": ON, "ober-bgp": ON},
        installed=frozenset({"haproxy", "liblua5.4-0"}),
    )
    steps = {step.name: step for step in plan_uninstall(facts)}
    assert commands(steps["units"]) == [
        "systemctl stop ober-*",
        "systemctl disable ober-http ober-bgp",
    ]
    assert commands(steps["files"]) == [
        "rm -f /etc/systemd/system/ober-http.service /opt/ober/etc/haproxy.cfg",
        "systemctl daemon-reload",
    ]
    assert commands(steps["service"]) == ["systemctl enable haproxy.service", "systemctl start haproxy.service"]
    assert commands(steps["packages"]) == ["DEBIAN_FRONTEND=noninteractive dpkg --purge haproxy liblua5.4-0"]
    # certs holds a file ober did not write: it stays, and so do its parents; the venv goes.
    assert commands(steps["dirs"]) == ["rm -rf /opt/ober/venv"]
    assert "kept, holding files ober did not write: /opt/ober/etc/certs (holds mine.pem)" in steps["dirs"].why


def test_bootstrap_puts_ober_on_path_and_records_the_link() -> None:
    made = plan(host())["path"]
    assert commands(made) == ["ln -s /opt/ober/venv/bin/ober /usr/local/bin/ober"]
    action = made.actions[0]
    assert isinstance(action, Run) and action.record == Entry(
        "symlink", "/usr/local/bin/ober", ("/opt/ober/venv/bin/ober",)
    )
    assert not plan(host(), done_install())["path"].changes
    # Someone else's ober (a pip install, another install path) is not replaced: a warning says what to run.
    for other in (
        replace(fresh(), path_link="/opt/other/venv/bin/ober"),
        replace(fresh(), path_taken=True),
    ):
        step = plan(host(), other)["path"]
        assert not step.changes
        assert step.warnings and "run /opt/ober/venv/bin/ober" in step.warnings[0]
    assert not plan(host(), replace(fresh(), path_dir=False))["path"].changes


def test_uninstall_removes_the_link_only_while_it_is_bootstraps() -> None:
    entry = Entry("symlink", "/usr/local/bin/ober", ("/opt/ober/venv/bin/ober",))

    def undo(now: str | None) -> Step:
        facts = UninstallFacts(INSTALL, (entry,), (), frozenset(), {}, {}, links={entry.target: now})
        return {step.name: step for step in plan_uninstall(facts)}["symlink"]

    ours = undo("/opt/ober/venv/bin/ober")
    assert commands(ours) == ["rm -f /usr/local/bin/ober"]
    moved = undo("/usr/lib/other/ober")
    assert not moved.changes and moved.forget == (entry,) and "left alone" in moved.why
    gone = undo(None)
    assert not gone.changes and gone.forget == (entry,)


def test_install_facts_read_the_link_on_path(tmp_path: Path) -> None:
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    assert gather_install_facts(INSTALL, tmp_path).path_link is None
    (tmp_path / "usr/local/bin/ober").symlink_to("/opt/ober/venv/bin/ober")  # dangling here: still read
    facts = gather_install_facts(INSTALL, tmp_path)
    assert facts.path_link == "/opt/ober/venv/bin/ober" and not facts.path_taken and facts.path_dir
    (tmp_path / "usr/local/bin/ober").unlink()
    (tmp_path / "usr/local/bin/ober").write_text("#!/bin/sh\n")
    assert gather_install_facts(INSTALL, tmp_path).path_taken


def test_uninstall_with_nothing_to_undo() -> None:
    facts = UninstallFacts(INSTALL, (), (), frozenset(), {}, {"ober-http": OFF, "ober-bgp": OFF})
    assert not uninstall_changes(plan_uninstall(facts))


# --- the CLI: install path rules, refusals, dry run ---------------------------------------------------------------


@pytest.fixture
def seams(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The CLI on fake facts: ``state["host"]`` is what it sees; the install path it planned for is recorded."""
    state: dict[str, Any] = {"host": host(), "planned": []}
    monkeypatch.setattr(cli_bootstrap, "make_runner", FakeRunner)
    monkeypatch.setattr(cli_bootstrap, "read_host_facts", lambda runner: state["host"])

    def install_facts(path: str) -> InstallFacts:
        state["planned"].append(path)
        return fresh(path)

    monkeypatch.setattr(cli_bootstrap, "read_install_facts", install_facts)
    return state


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_install_path_explicit_path_wins(seams: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    seams["host"] = host(venv="/srv/here/venv")
    code, out, _ = run_cli(["--json", "bootstrap", "--dry-run", "/opt/elsewhere"], capsys)
    assert code == 0 and json.loads(out)["install_path"] == "/opt/elsewhere"


def test_install_path_inside_a_venv_is_that_venv(seams: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    seams["host"] = host(venv="/srv/here/venv")
    code, out, _ = run_cli(["--json", "bootstrap", "--dry-run"], capsys)
    assert code == 0 and json.loads(out)["install_path"] == "/srv/here"
    seams["host"] = host(venv="/tmp/throwaway")  # not a venv called "venv": the units could not find it
    code, out, _ = run_cli(["--json", "bootstrap", "--dry-run"], capsys)
    assert json.loads(out)["install_path"] == "/opt/ober"


def test_install_path_is_asked_with_opt_ober_as_default(
    seams: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_bootstrap, "_interactive", lambda out: True)
    asked: list[tuple[str, object]] = []

    def prompt(text: str, default: object = None, **_: object) -> str:
        asked.append((text, default))
        return "/srv/ober"

    monkeypatch.setattr(cli_bootstrap.click, "prompt", prompt)
    monkeypatch.setattr(cli_bootstrap.click, "confirm", lambda *args, **kwargs: False)
    code, _, err = run_cli(["bootstrap"], capsys)
    assert asked == [("Install ober into", "/opt/ober")]
    assert seams["planned"] == ["/srv/ober"]
    assert code == 130 and "aborted" in err  # the confirmation was answered no: nothing ran


def test_without_a_terminal_or_yes_it_refuses_to_guess(
    seams: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["bootstrap"], capsys)
    assert code == 1 and "no install path given, and no terminal to ask on" in err and "--yes" in err


def test_non_root_is_refused_before_anything(seams: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    seams["host"] = host(euid=1000)
    code, out, _ = run_cli(["--json", "bootstrap", "--yes"], capsys)
    assert code == 1 and "must run as root" in json.loads(out)["error"]
    assert seams["planned"] == []


def test_dry_run_text_lists_commands_and_the_next_step(
    seams: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["bootstrap", "--dry-run", "/opt/ober"], capsys)
    assert code == 0
    assert "mkdir -m 700 /opt/ober/etc/certs" in out and "dry run: nothing changed" in out
    assert "no AWS-LC HAProxy repository" in err  # the warning, with the version it will install
    assert "3.0.11-1+deb13u4" in err


def test_uninstall_cli_refuses_non_root_and_dry_run_changes_nothing(
    seams: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seams["host"] = host(euid=1000)
    code, _, err = run_cli(["uninstall", "--yes"], capsys)
    assert code == 1 and "must run as root" in err
    seams["host"] = host()
    facts = UninstallFacts(
        INSTALL,
        (Entry("directory", "/opt/ober"),),
        (),
        frozenset(),
        {"/opt/ober": frozenset()},
        {"ober-http": OFF, "ober-bgp": OFF},
    )
    monkeypatch.setattr(cli_bootstrap, "read_uninstall_facts", lambda path, runner: facts)
    code, out, _ = run_cli(["--json", "uninstall", "--dry-run", "/opt/ober"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True
    assert [step["commands"] for step in doc["steps"] if step["name"] == "dirs"] == [["rmdir /opt/ober"]]
    empty = UninstallFacts(INSTALL, (), (), frozenset(), {}, {})
    monkeypatch.setattr(cli_bootstrap, "read_uninstall_facts", lambda path, runner: empty)
    code, out, _ = run_cli(["uninstall", "--yes", "/opt/ober"], capsys)
    assert code == 0 and "nothing to uninstall at /opt/ober" in out


def test_gather_host_facts_of_a_rhel_10_root_with_dnf_and_selinux_mocked(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(RHEL10)
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    (tmp_path / "usr/bin").mkdir(parents=True)
    for program in ("dnf", "getenforce", "getsebool"):
        (tmp_path / "usr/bin" / program).write_text("#!/bin/sh\n")
        (tmp_path / "usr/bin" / program).chmod(0o755)
    runner = FakeRunner(
        {
            "dnf list --available haproxy": Result(0, "Available Packages\nhaproxy.x86_64  3.0.5-2.el10  appstream\n"),
            "getenforce": Result(0, "Enforcing\n"),
            "getsebool haproxy_connect_any": Result(0, "haproxy_connect_any --> off\n"),
            "systemctl is-enabled haproxy.service": Result(1, "", "Failed to get unit file state"),
            "systemctl is-enabled systemd-networkd.service": Result(0, "enabled\n"),
            "systemctl is-active systemd-networkd.service": Result(0, "active\n"),
            "systemctl is-active NetworkManager.service": Result(3, "inactive\n"),
        }
    )
    facts = gather_host_facts(runner, tmp_path)
    assert facts.os_name == "Red Hat Enterprise Linux 10.0" and facts.systemd
    assert facts.package_manager == "dnf" and facts.haproxy_version is None
    assert facts.haproxy_candidate == "3.0.5-2.el10"
    assert facts.selinux == "enforcing" and facts.selinux_boolean is False
    assert facts.network == "networkd" and facts.networkd == ON
    assert facts.haproxy_unit.describe() == "not installed"
    steps = plan(replace(facts, euid=0, python=(3, 12, 1)))
    assert commands(steps["selinux"]) == ["setsebool -P haproxy_connect_any 1"]
    assert any("haproxy 3.0.5-2.el10" in warning for warning in steps["packages"].warnings)
