"""The ``ober config`` wizard's flow, driven by scripted answers (the real prompts: tests/test_wizard_pty.py).

Applying goes to a staging root (``--root``), so nothing on this machine changes; the probes are stood in for by a
fixed list here (the pty test runs the real ones in a namespace).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.certs import write_pem
from ober.checks.base import Check
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
from tests.test_haproxy_serving import Namespace, run, stop_process

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
    asker.answers += ["edit", ENTER, ENTER, ENTER, ENTER, ENTER, ENTER]  # stats, with auth (TLS as it is)
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
    script[-2:] = ["edit", ENTER, ENTER, True, ENTER, "stats_password", ENTER, "keep"]
    config = parse_node_config(Wizard(Scripted(script), {}, FOUND).run())
    assert config.certificates.acme is not None and config.certificates.acme.domains == ("s3.example.test",)
    assert config.certificates.pem is None and config.certificates.http == "serve"
    assert config.stats.auth is not None and config.stats.auth.password_secret == "stats_password"
    # A new login is served over TLS unless declined, on the node's own address (not loopback, not 0.0.0.0).
    assert config.stats.tls and config.stats.bind == config.bgp.local_address


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


# --- the real prompts, through a pseudo-terminal ------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
BACKSPACES = "\x7f" * 60
DOWN = "\x1b[B"
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}.get(platform.machine(), "0")


class Terminal:
    """``ober config`` running on a pseudo-terminal: what it shows (escape codes stripped), and keys sent to it."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.master, slave = pty.openpty()
        # A wide terminal, so inquirer does not cut the model's error messages short.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        env = {**os.environ, "TERM": "xterm", "NO_COLOR": "1", "COLUMNS": "250", "LINES": "50"}
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self.switches = -1  # the program's voluntary context switches when the last key was typed
        self.screen = ""
        self.seen = 0
        self.log = log

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the program ended and closed the terminal
                chunk = b""
            self.screen += ANSI.sub("", chunk.decode(errors="replace")).replace("\r", "")
            self.log.write_text(self.screen)

    def expect(self, pattern: str, timeout: float = 90.0) -> str:
        """Wait until ``pattern`` (a regex) shows up after what was already matched; return the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            found = regex.search(self.screen, self.seen)
            if found:
                self.seen = found.end()
                return found.group(0)
            if time.monotonic() > deadline or (self.process.poll() is not None and not self._pending()):
                tail = self.screen[self.seen :][-3000:]
                raise AssertionError(f"{pattern!r} did not show up; after the last match the screen has:\n{tail}")
            self._read(0.1)

    def _pending(self) -> bool:
        ready, _, _ = select.select([self.master], [], [], 0)
        if ready:
            self._read(0)
        return bool(ready) and self.process.poll() is None

    def send(self, keys: str) -> None:
        """Type ``keys``, each once the program waits for it.

        readchar sets the terminal up with TCSAFLUSH before each key, which throws away whatever was typed before
        it asked: a fast typist (this test) must wait until the program blocks reading the terminal for *this* key.
        A reader woken by the previous key still shows read(0, ...) in /proc until it runs, so "blocked in read"
        alone is not enough (CI lost keys that way twice): it must also have blocked again since that key was
        typed, which its voluntary context switch count tells.
        """
        for key in keys:
            self._wait_reading()
            self.switches = self._switches()
            os.write(self.master, key.encode())

    def _switches(self) -> int:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_ctxt")), 0)

    def _wait_reading(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        syscall = Path(f"/proc/{self.process.pid}/syscall")
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                reading = syscall.read_text().split()[:2] == [READ_SYSCALL, "0x0"]  # read(0, ...)
            except OSError:
                reading = False
            if reading and self._switches() > self.switches:
                return
            self._read(0.001)
        raise AssertionError(f"the program is not waiting for a key; the screen ends with:\n{self.screen[-1500:]}")

    def answer(self, prompt: str, keys: str) -> str:
        """Wait for ``prompt`` and type ``keys``; returns the prompt line as shown (with its default)."""
        line = self.expect(prompt + r"[^\n]*")
        self.send(keys)
        return line

    def finish(self, timeout: float = 60.0) -> int:
        """Read until the program exits; its exit status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._read(0.2)
        os.close(self.master)
        return int(self.process.returncode)


@dataclass
class Site:
    """A node namespace behind a router namespace: a BGP listener on 179 and a stand-in RGW on the router."""

    node: Namespace
    router: Namespace
    processes: list[subprocess.Popen[bytes]]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    require(os.geteuid() == 0, "network namespaces need root")
    for tool in ("ip", "haproxy", "openssl"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    node, router = Namespace(), Namespace()
    started = Site(node, router, [])
    try:
        run(["ip", "-n", node.name, "link", "add", "eth0", "type", "veth", "peer", "name", "r0", "netns", router.name])
        run(["ip", "-n", node.name, "addr", "add", "100.64.0.11/24", "dev", "eth0"])
        run(["ip", "-n", router.name, "addr", "add", "100.64.0.1/24", "dev", "r0"])
        run(["ip", "-n", node.name, "link", "set", "eth0", "up"])
        run(["ip", "-n", router.name, "link", "set", "r0", "up"])
        run(["ip", "-n", node.name, "route", "add", "default", "via", "100.64.0.1"])
        router.add_address("100.64.1.11")
        listener = "import socket,time; s=socket.create_server(('100.64.0.1',179)); time.sleep(600)"
        started.processes.append(router.start([sys.executable, "-c", listener], tmp_path / "bgp.log"))
        backend = [sys.executable, str(DATA / "serving_backend.py"), "100.64.1.11", "7480"]
        started.processes.append(router.start(backend, tmp_path / "rgw.log"))
        probe = "import socket; socket.create_connection(('100.64.1.11', 7480), timeout=1).close()"
        deadline = time.monotonic() + 15
        while node.run(sys.executable, "-c", probe).returncode != 0:
            assert time.monotonic() < deadline, "the stand-in RGW did not start"
            time.sleep(0.1)
        yield started
    finally:
        for process in started.processes:
            stop_process(process)
        node.delete()
        router.delete()


@pytest.mark.lab
def test_real_prompts_on_a_terminal(site: Site, tmp_path: Path, secrets_file: Path) -> None:
    root = tmp_path / "root"
    pem = tmp_path / "certs" / "s3.pem"
    write_pem(pem, "s3.example.test", ["DNS:s3.example.test"])
    ober = str(Path(sys.executable).with_name("ober"))
    argv = site.node.argv(ober, "config", "-c", CONFIG, "--root", str(root), "--secrets", str(secrets_file))

    term = Terminal(argv, tmp_path / "screen-1.txt")
    term.answer(r"Node name", BACKSPACES + "edge01\r")
    assert "100.64.0.11" in term.answer(r"Router ID", "\r")  # the default route's interface address
    term.answer(r"BGP source address", "\r")
    assert "100.64.0.1" in term.answer(r"BGP neighbors", "\r")  # the default gateway
    term.answer(r"Local AS", "\r")
    term.answer(r"Routers' AS", "\r")
    term.answer(r"Hold time", BACKSPACES + "1\r")
    term.expect(r"bgp\.hold_time: 1 is out of range")  # the model's error, and the question again
    term.send(BACKSPACES + "3\r")
    term.answer(r"TCP MD5", "\r")
    term.answer(r"VIP 1: address", "198.51.100.10\r")
    term.answer(r"VIP 1: name", "s3-a\r")
    term.answer(r"VIP 1: backend group", "\r")
    term.answer(r"Add another VIP\?", "n")
    term.answer(r"ceph-a: RGW servers", "100.64.1.11\r")
    term.answer(r"ceph-a: RGW port", "\r")
    term.answer(r"ceph-a: health check path", "\r")
    term.answer(r"ceph-a: TLS to the RGWs\?", "n")
    term.answer(r"TLS certificate", "\r")
    term.answer(r"PEM file or directory", BACKSPACES + str(pem) + "\r")
    term.answer(r"Plain HTTP on port 80", "\r")
    for section in ("Health", "Stats", "Logs"):
        term.answer(rf"{section}: defaults", "\r")
    # The real checks, from the node's namespace.
    term.expect(r"✓ bgp tcp 100\.64\.0\.1: 100\.64\.0\.1:179 accepts TCP from 100\.64\.0\.11")
    term.expect(r"✓ rgw ceph-a 100\.64\.1\.11:7480: GET / answered 200")
    term.expect(r"cert s3\.pem key: private key present and matching")
    term.expect(r"\+\+\+ /opt/ober/etc/haproxy\.cfg")
    term.answer(r"Apply these \d+ changes\?", "y")
    term.expect(r"applied \d+ changes")
    assert term.finish() == 0, term.screen[-2000:]
    config = load_config(root / CONFIG.lstrip("/"))
    assert (config.name, config.bgp.router_id, config.bgp.neighbors) == ("edge01", "100.64.0.11", ("100.64.0.1",))
    before = files(root)

    # Again, keeping every section: nothing changes, and it says so.
    term = Terminal(argv, tmp_path / "screen-2.txt")
    for section in ("BGP", "VIPs", "Backends", "Certificates", "Health", "Stats", "Logs"):
        term.answer(rf"{section}: ", "\r")
    term.expect(r"nothing to change: the node already has this configuration")
    assert term.finish() == 0, term.screen[-2000:]
    assert files(root) == before

    # Ctrl-C halfway: a one-line message, exit 130, nothing written.
    term = Terminal(argv, tmp_path / "screen-3.txt")
    term.answer(r"BGP: ", DOWN + "\r")
    term.answer(r"Node name", "\x03")
    term.expect(r"error: aborted")
    assert term.finish() == 130 and "Traceback" not in term.screen
    assert files(root) == before
