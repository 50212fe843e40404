"""The ``ober config`` wizard's flow, driven by scripted answers (the real prompts: tests/test_wizard_pty.py).

Applying goes to a staging root (``--root``), so nothing on this machine changes; the probes are stood in for by a
fixed list here (the pty test runs the real ones in a namespace).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.checks import Check
from ober.cli import main
from ober.config import NodeConfig, load_config, parse_node_config
from ober.configure import configure, current_data
from ober.wizard import (
    Detected,
    Validator,
    Wizard,
    conclude,
    detect,
    parse_default_route,
    parse_interface_address,
    problem,
)
from tests.conftest import DATA, SECRETS, require

CONFIG = "/opt/ober/etc/ober.yaml"
FOUND = Detected(hostname="edge01", interface="eth0", address="100.64.0.11", gateway="100.64.0.1")
ROUTE_JSON = '[{"dst":"default","gateway":"100.64.0.1","dev":"eth0","flags":[]}]'
ADDR_JSON = json.dumps(
    [
        {
            "ifname": "eth0",
            "addr_info": [
                {"family": "inet", "local": "169.254.3.3", "prefixlen": 16, "scope": "link"},
                {"family": "inet", "local": "100.64.0.11", "prefixlen": 24, "scope": "global"},
            ],
        }
    ]
)
ENTER = None  # accept what is offered


@dataclass
class Scripted:
    """An asker answering from a script; ``ENTER`` takes the default. Records every question and error shown."""

    answers: list[Any]
    asked: list[tuple[str, str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)

    def _next(self, kind: str, message: str, default: Any) -> Any:
        self.asked.append((kind, message, default))
        if not self.answers:
            raise AssertionError(f"the script ran out at {kind} {message!r}; asked so far: {self.asked}")
        answer = self.answers.pop(0)
        return default if answer is ENTER else answer

    def text(self, message: str, default: str, validate: Validator) -> str:
        while True:
            answer = str(self._next("text", message, default))
            error = validate(answer)
            if error is None:
                return answer
            self.errors.append(error)

    def confirm(self, message: str, default: bool) -> bool:
        return bool(self._next("confirm", message, default))

    def choose(self, message: str, choices: Sequence[str], default: str) -> str:
        answer = str(self._next("choose", message, default))
        assert answer in choices, f"{answer!r} is not one of {choices}"
        return answer

    def show(self, text: str) -> None:
        self.shown.append(text)

    def default_of(self, message_start: str) -> Any:
        return next(default for _, message, default in self.asked if message.startswith(message_start))


def fixed_probes(config: NodeConfig, secrets: Mapping[str, str], timeout: float) -> list[Check]:
    return [Check(f"bgp tcp {config.bgp.neighbors[0]}", "ok", "accepts TCP"), Check("rgw x", "fail", "refused", "fix")]


def good_probes(config: NodeConfig, secrets: Mapping[str, str], timeout: float) -> list[Check]:
    return [Check("bgp tcp", "ok", "accepts TCP")]


# The answers for a new node: BGP, one VIP, its backend group, a PEM, then defaults for health, stats, logs.
NEW_NODE = [
    ENTER,  # name: edge01 (detected)
    ENTER,  # router_id: detected address
    ENTER,  # local_address: the router id
    ENTER,  # neighbors: detected gateway
    ENTER,  # local_as
    ENTER,  # peer_as
    ENTER,  # hold_time
    "",  # no MD5
    "198.51.100.10",  # VIP address
    "s3-a",  # VIP name
    ENTER,  # backend group: ceph-a
    False,  # no other VIP
    "rgw[1-2]",  # servers of ceph-a
    ENTER,  # port 7480
    ENTER,  # check path /
    False,  # no TLS to RGW
    "pem",
    ENTER,  # the PEM path
    ENTER,  # http: redirect
    "keep",  # health defaults
    "keep",  # stats defaults
    "keep",  # logs defaults
]


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "login"
    path.write_text(yaml.safe_dump(SECRETS))
    path.chmod(0o600)
    return path


@pytest.fixture
def configured(tmp_path: Path, secrets_file: Path) -> Path:
    """A staging root where tests/data/node.yaml has been applied."""
    root = tmp_path / "root"
    data = yaml.safe_load((DATA / "node.yaml").read_text())
    configure(data, root=root, secrets_path=secrets_file, check=False)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_detection_reads_ip_output() -> None:
    assert parse_default_route(ROUTE_JSON) == ("eth0", "100.64.0.1")
    assert parse_default_route("[]") == (None, None)
    assert parse_default_route("not json") == (None, None)
    assert parse_interface_address(ADDR_JSON) == "100.64.0.11"  # the global one, not the link-local
    outputs = {"route": ROUTE_JSON, "addr": ADDR_JSON}
    found = detect(lambda argv: outputs[argv[2]])
    assert (found.interface, found.address, found.gateway) == ("eth0", "100.64.0.11", "100.64.0.1")
    assert detect(lambda argv: "").address is None  # no default route: nothing is suggested


def test_new_node_from_detected_defaults(tmp_path: Path) -> None:
    asker = Scripted(list(NEW_NODE))
    data = Wizard(asker, {}, FOUND).run()
    config = parse_node_config(data)
    assert config.name == "edge01"
    assert config.bgp.router_id == config.bgp.local_address == "100.64.0.11"  # router-id = the detected address
    assert config.bgp.neighbors == ("100.64.0.1",)  # the default gateway
    assert [(v.name, v.address, v.backend) for v in config.vips] == [("s3-a", "198.51.100.10", "ceph-a")]
    assert [s.host for s in config.backend("ceph-a").servers] == ["rgw1", "rgw2"]
    assert config.certificates.pem == "/opt/ober/etc/certs/s3.pem"
    assert asker.answers == [] and asker.errors == []
    sections = [text for text in asker.shown if text.startswith("—")]
    assert sections == ["— BGP —", "— VIPs —", "— Backends —", "— Certificates —"]  # in that order
    assert [m for kind, m, _ in asker.asked if kind == "choose"][-3:] == [
        "Health: defaults",
        "Stats: defaults",
        "Logs: defaults",
    ]


def test_invalid_answers_are_asked_again_with_the_models_error() -> None:
    script = [
        ENTER,
        "not-an-ip",
        "100.64.0.11",  # router_id
        ENTER,
        ENTER,
        ENTER,
        ENTER,
        "1",
        "5",  # hold_time below 3
        "bad name!",
        "",  # the MD5 secret's name
        "100.64.0.11",
        "198.51.100.10",  # a VIP equal to this node's own address
        "s3-a",
        ENTER,
        False,
        "",
        "rgw[1-2]",  # servers are required
        *NEW_NODE[13:],
    ]
    asker = Scripted(script)
    data = Wizard(asker, {}, FOUND).run()
    assert len(asker.errors) == 5, asker.errors
    router_id, hold, md5, vip, servers = asker.errors
    assert router_id.startswith("bgp.router_id:") and "not-an-ip" in router_id
    assert hold.startswith("bgp.hold_time: 1 is out of range")
    assert md5.startswith("bgp.md5_secret:")
    assert vip.startswith("vips[0].address: 100.64.0.11 is also a BGP address")
    assert servers == "backends.ceph-a.servers: required"
    assert parse_node_config(data).bgp.hold_time == 5


def test_configured_node_keeping_everything_changes_nothing(configured: Path, secrets_file: Path) -> None:
    before = files(configured)
    current = current_data(Path(CONFIG), configured)
    asker = Scripted(["keep"] * 7)
    data = Wizard(asker, current, FOUND).run()
    outcome = conclude(asker, data, root=configured, secrets_path=secrets_file, check=False, probes=good_probes)
    assert outcome.changes == []
    assert asker.shown[-1] == "nothing to change: the node already has this configuration"
    assert files(configured) == before
    assert asker.answers == []  # and no "apply?" question was asked


def test_configured_node_accepting_every_default_in_edit_mode_changes_nothing(
    configured: Path, secrets_file: Path
) -> None:
    before = files(configured)
    current = current_data(Path(CONFIG), configured)
    asker = Scripted(["edit", *[ENTER] * 8])  # BGP: every field as it is
    asker.answers += ["edit", *[ENTER] * 6, False]  # both VIPs as they are, no third
    groups = len(current["backends"])
    asker.answers += ["edit", *[ENTER] * (4 * groups)]
    asker.answers += ["edit", ENTER, ENTER, ENTER]  # certificates
    asker.answers += ["edit", ENTER, ENTER, ENTER]  # health
    asker.answers += ["edit", ENTER, ENTER, ENTER, ENTER, ENTER]  # stats, with auth
    asker.answers += ["edit", ENTER, ENTER]  # logs
    data = Wizard(asker, current, FOUND).run()
    assert asker.answers == [], asker.asked[-3:]
    assert asker.errors == []
    outcome = conclude(asker, data, root=configured, secrets_path=secrets_file, check=False, probes=good_probes)
    assert outcome.changes == [], [c.path for c in outcome.changes]
    assert files(configured) == before


def test_edit_one_section_shows_diff_then_applies(configured: Path, secrets_file: Path) -> None:
    current = current_data(Path(CONFIG), configured)
    answers: list[Any] = ["keep"] * 4 + ["edit", ENTER, "4", ENTER] + ["keep"] * 2 + [True]
    asker = Scripted(answers)
    data = Wizard(asker, current, FOUND).run()
    outcome = conclude(asker, data, root=configured, secrets_path=secrets_file, check=False, probes=fixed_probes)
    assert not outcome.dry_run and outcome.changes
    checks, shown_diff = asker.shown[-2:]
    assert "✓ bgp tcp" in checks and "✗ rgw x: refused (fix: fix)" in checks
    assert "+++ /opt/ober/etc/ober.yaml" in shown_diff and "+  rise: 4" in shown_diff
    kind, question, default = asker.asked[-1]
    assert kind == "confirm" and question.startswith("1 checks failed") and default is False
    assert load_config(configured / CONFIG.lstrip("/")).health.rise == 4


def test_declining_or_dry_run_writes_nothing(configured: Path, secrets_file: Path) -> None:
    before = files(configured)
    current = current_data(Path(CONFIG), configured)
    for dry_run, answers in ((False, [False]), (True, [])):
        asker = Scripted(["keep"] * 4 + ["edit", ENTER, "4", ENTER] + ["keep"] * 2 + answers)
        data = Wizard(asker, current, FOUND).run()
        outcome = conclude(
            asker, data, root=configured, secrets_path=secrets_file, check=False, dry_run=dry_run, probes=good_probes
        )
        assert outcome.dry_run and outcome.changes and asker.answers == []
        assert files(configured) == before


def test_a_backend_named_by_a_vip_is_asked_for_in_backends() -> None:
    script = [
        *NEW_NODE[:10],
        "ceph-b",
        True,
        "198.51.100.20",
        "",
        "ceph-c",
        False,
        *["rgw[1-2]", ENTER, ENTER, False],  # ceph-b
        *["10.1.0.[1-3]:8080", ENTER, "/swift/healthcheck", True],  # ceph-c
        *NEW_NODE[16:],
    ]
    asker = Scripted(script)
    config = parse_node_config(Wizard(asker, {}, FOUND).run())
    assert [v.backend for v in config.vips] == ["ceph-b", "ceph-c"]
    assert config.vips[1].name == "vip-198-51-100-20"  # empty name: the model's default
    assert config.backend("ceph-c").tls.enabled and config.backend("ceph-c").servers[2].port == 8080


def test_an_earlier_problem_is_not_blamed_on_an_answer() -> None:
    # A hand-edited config with a bad hold time: answering the node name is not refused because of it.
    current = {"name": "edge01", "bgp": {"router_id": "100.64.0.11", "neighbors": "100.64.0.1", "hold_time": 1}}
    assert problem(current) is not None
    asker = Scripted(["edge02", ENTER, ENTER, ENTER, ENTER, ENTER, "5", ""])
    wizard = Wizard(asker, current, FOUND)
    wizard._bgp()
    assert asker.errors == []
    assert wizard.data["name"] == "edge02" and wizard.data["bgp"]["hold_time"] == 5


def test_acme_and_stats_auth() -> None:
    script = list(NEW_NODE)
    script[16:19] = ["acme", "ops@example.test", "s3.example.test", "serve"]
    script[-2:] = ["edit", ENTER, ENTER, True, ENTER, "stats_password", "keep"]
    config = parse_node_config(Wizard(Scripted(script), {}, FOUND).run())
    assert config.certificates.acme is not None and config.certificates.acme.domains == ("s3.example.test",)
    assert config.certificates.pem is None and config.certificates.http == "serve"
    assert config.stats.auth is not None and config.stats.auth.password_secret == "stats_password"


def test_without_a_terminal_it_says_to_use_from_or_set(
    configured: Path, secrets_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["config", "-c", CONFIG, "--root", str(configured), "--secrets", str(secrets_file)])
    err = capsys.readouterr().err
    assert status == 1
    assert "not" in err and "terminal" in err and "--from FILE and/or --set KEY=VALUE" in err


def test_staged_apply_is_checked_by_haproxy(tmp_path: Path, secrets_file: Path) -> None:
    require(shutil.which("haproxy") is not None, "haproxy is not installed")
    asker = Scripted([*NEW_NODE, True])
    data = Wizard(asker, {}, FOUND).run()
    outcome = conclude(asker, data, root=tmp_path / "root", secrets_path=secrets_file, probes=good_probes)
    assert not outcome.dry_run and len(outcome.changes) > 5
    assert load_config(tmp_path / "root" / CONFIG.lstrip("/")).bgp.router_id == "100.64.0.11"
