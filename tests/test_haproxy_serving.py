"""HAProxy running the config ober renders really serves S3-style traffic.

Each lab is a private network namespace: the VIPs (198.51.100.0/24), the stand-in RGW servers and the clients
(100.64.0.0/10) are /32 addresses on its ``lo``; nothing is added to the host's namespace. ober renders the node's
files into a temporary install path, HAProxy runs them (``haproxy -W -f``), and curl/openssl talk to the VIPs from
inside the namespace. The stand-in RGW (tests/data/serving_backend.py) records what reached it.

Needs root, ``ip``, ``haproxy``, ``curl`` and ``openssl``: skipped without them, failed with ``OBER_REQUIRE_LAB=1``.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import ipaddress
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest

from ober.certs import self_signed_pem
from ober.config import NodeConfig, parse_node_config
from ober.haproxy_runtime import query, snapshot
from ober.lab.procnode import write_install
from ober.lab.rgw import in_netns
from ober.render import paths
from ober.validate import local_run_as
from tests.conftest import require

pytestmark = pytest.mark.lab

HOST = "s3.example.test"
NODE = "lab-node"
VIP_A = "198.51.100.10"
VIP_B = "198.51.100.20"
RGW_A = "100.64.1.11"
RGW_B = "100.64.2.11"
RGW_PORT = 7480
CLIENT_NET = "100.64.100.0/24"
CLIENT = "100.64.100.1"  # inside whitelists.frontend_http
OUTSIDER = "100.64.200.1"  # outside it
STATS_ADDRESS = "127.0.0.1"
STATS_PORT = 8404
STATS_PASSWORD = "st4ts-Pa55word"
BIG_BODY = 64 * 1024 * 1024
# curl's exit codes for a connection refused, reset or closed before any answer (55: reset while sending).
REFUSED = (7, 35, 52, 55, 56)


BACKEND_SCRIPT = Path(__file__).parent / "data" / "serving_backend.py"
TOOLS = ("ip", "haproxy", "curl", "openssl")
# The lab's addresses live only inside its namespace, and still stay out of the host's ranges (its uplink and the
# package registries use 192.0.2.0/24 and 203.0.113.0/24 on these machines).
LAB_RANGES = (ipaddress.IPv4Network("198.51.100.0/24"), ipaddress.IPv4Network("100.64.0.0/10"))
INSTALL_PATH = re.compile(r"^/(?:[A-Za-z0-9._+-]+/?)*$")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
HEALTH_TIMEOUT = 10.0

_NAMESPACES = itertools.count()
_OWN_LABS = itertools.count()


# --- processes and namespaces -----------------------------------------------------------------------------------


def run(argv: list[str], *, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; with ``check``, a failure names the command and its stderr."""
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop one process we started, by its PID: SIGTERM, a bounded wait, then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


def wait_for(what: str, probe: Callable[[], bool], timeout: float, alive: Callable[[], str | None]) -> None:
    """Poll ``probe`` until it is true; fail after ``timeout`` seconds, or at once when ``alive`` reports a death."""
    deadline = time.monotonic() + timeout
    while not probe():
        problem = alive()
        if problem:
            raise AssertionError(f"while waiting for {what}: {problem}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g}s")
        time.sleep(0.05)


def lab_address(address: str) -> str:
    """``address`` after checking it is one of the lab's ranges (never the host's 192.0.2.0/24 or 203.0.113.0/24)."""
    if not any(ipaddress.IPv4Address(address) in network for network in LAB_RANGES):
        raise AssertionError(f"{address} is outside the lab's ranges {', '.join(map(str, LAB_RANGES))}")
    return address


class Namespace:
    """A private network namespace with ``lo`` up; everything in it is ours to stop."""

    def __init__(self) -> None:
        self.name = f"ober-t-{os.getpid()}-{next(_NAMESPACES)}"
        run(["ip", "netns", "add", self.name])
        try:
            run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except AssertionError:
            self.delete()
            raise

    def add_address(self, address: str) -> None:
        """Put ``address``/32 on the namespace's ``lo``."""
        run(["ip", "-n", self.name, "addr", "add", f"{lab_address(address)}/32", "dev", "lo"])

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside the namespace (``ip netns exec`` execs it: the PID stays the command's)."""
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the namespace; its exit status is the caller's to judge."""
        return run(self.argv(*command), timeout=timeout, check=False)

    def start(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``command`` in the background inside the namespace, output to ``log``."""
        with log.open("wb") as out:
            return subprocess.Popen(
                self.argv(*command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def delete(self) -> None:
        """Kill whatever still runs in the namespace (only our processes can be there), then delete it."""
        deadline = time.monotonic() + STOP_TIMEOUT
        while True:
            pids = [int(pid) for pid in run(["ip", "netns", "pids", self.name], check=False).stdout.split()]
            if not pids or time.monotonic() > deadline:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        run(["ip", "netns", "delete", self.name])


# --- what curl saw ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One curl exchange: exit status, what ``--write-out '%{json}'`` reported, the body and curl's stderr."""

    returncode: int
    info: dict[str, Any]
    body: bytes
    stderr: str

    @property
    def status(self) -> int:
        """The HTTP status (0 when there was no answer)."""
        return int(self.info.get("http_code") or 0)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def __str__(self) -> str:
        return f"curl exit {self.returncode}, HTTP {self.status}: {self.stderr.strip()} {self.text[:300]!r}"


@dataclass
class Lab:
    """One node: a namespace, the rendered install tree, the stand-in RGW servers and HAProxy."""

    ns: Namespace
    work: Path
    cert: Path
    config: NodeConfig | None = None
    haproxy: subprocess.Popen[bytes] | None = None
    backends: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopped: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    _replies: Iterator[int] = field(default_factory=itertools.count)

    def log_tail(self) -> str:
        """The end of every process log, for failure messages."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {log.name}\n{text[-2000:]}")
        return "\n".join(parts)

    def dead(self) -> str | None:
        """Which of our processes ended on its own, if any."""
        for name, process in [("haproxy", self.haproxy), *self.backends.items()]:
            if process is not None and process.poll() is not None:
                return f"{name} exited with {process.returncode}\n{self.log_tail()}"
        return None

    def curl(self, url: str, *args: str, vip: str = VIP_A, source: str | None = CLIENT, timeout: float = 30.0) -> Reply:
        """Run curl inside the namespace: ``HOST`` resolves to ``vip``, the server certificate is checked."""
        body = self.work / f"reply-{next(self._replies)}"
        argv = [
            "curl",
            "--silent",
            "--show-error",
            "--max-time",
            f"{timeout:g}",
            "--resolve",
            f"{HOST}:443:{vip}",
            "--resolve",
            f"{HOST}:80:{vip}",
            "--cacert",
            str(self.cert),
            "--output",
            str(body),
            "--write-out",
            "%{json}",
        ]
        if source:
            argv += ["--interface", source]
        done = self.ns.run(*argv, *args, url, timeout=timeout + 10)
        try:
            info = cast(dict[str, Any], json.loads(done.stdout)) if done.stdout.strip() else {}
            data = body.read_bytes() if body.exists() else b""
        finally:
            body.unlink(missing_ok=True)
        return Reply(done.returncode, info, data, done.stderr)

    def s_client(self, *args: str, vip: str = VIP_A) -> subprocess.CompletedProcess[str]:
        """One TLS handshake with ``openssl s_client`` from CLIENT to ``vip``:443 (SNI ``HOST``), then hang up."""
        argv = ["openssl", "s_client", "-connect", f"{vip}:443", "-bind", f"{CLIENT}:0", "-servername", HOST, *args]
        return self.ns.run(*argv, timeout=10)

    def stats(self, path: str) -> Reply:
        """GET ``path`` on the stats listener."""
        return self.curl(f"http://{STATS_ADDRESS}:{STATS_PORT}{path}", source=None, timeout=5.0)

    def seen(self, server: str) -> list[dict[str, Any]]:
        """What the stand-in RGW at ``server`` recorded (asked directly, not through HAProxy)."""
        reply = self.curl(f"http://{server}:{RGW_PORT}/_seen", source=None, timeout=5.0)
        assert reply.status == 200, f"cannot read {server}'s records: {reply}"
        return cast(list[dict[str, Any]], reply.json())

    def requests_for(self, server: str, path: str) -> list[dict[str, Any]]:
        """The records of ``server`` for ``path``."""
        return [record for record in self.seen(server) if record["path"] == path]

    def start(self, changes: dict[str, Any]) -> None:
        """Render the node (the base config updated with ``changes``), start the RGW servers, then HAProxy."""
        install = self.work / "opt" / "ober"
        assert INSTALL_PATH.match(str(install)), f"{install} is not an install path ober accepts"
        for address in (VIP_A, VIP_B, RGW_A, RGW_B, CLIENT, OUTSIDER):
            self.ns.add_address(address)
        pem = install / "etc" / "certs" / "s3.pem"
        data = base_config(str(install), str(pem))
        for key, value in changes.items():
            # A section given as a mapping updates the base's: certificates={"http": "serve"} keeps the PEM.
            data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        self.config = parse_node_config(data)
        # Only a config with stats.auth refers to (and so renders) this secret.
        write_install(self.config, {"stats_password": STATS_PASSWORD})
        pem.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.cert.with_suffix(".pem"), pem)
        pem.chmod(0o600)

        for group in self.config.backends:
            for server in group.servers:
                log = self.work / f"backend-{server.host}.log"
                self.logs.append(log)
                command = [sys.executable, str(BACKEND_SCRIPT), lab_address(server.host), str(server.port)]
                self.backends[server.host] = self.ns.start(command, log)
        for group in self.config.backends:
            for server in group.servers:
                where = f"{server.host}:{server.port}"
                wait_for(
                    f"RGW stand-in {where}", partial(self._answers, server.host, server.port), START_TIMEOUT, self.dead
                )

        log = self.work / "haproxy.log"
        self.logs.append(log)
        self.haproxy = self.ns.start(["haproxy", "-W", "-f", paths(self.config)["haproxy_cfg"]], log)
        for vip in self.config.vips:
            wait_for(
                f"HAProxy on {vip.address}:443", partial(self._answers, vip.address, 443), START_TIMEOUT, self.dead
            )
        wait_for("/health 200", lambda: self.stats("/health").status == 200, START_TIMEOUT, self.dead)

    def _answers(self, address: str, port: int) -> bool:
        """Whether a TCP connection to ``address:port`` inside the namespace is accepted."""
        probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
        return self.ns.run(sys.executable, "-c", probe, timeout=10).returncode == 0

    def stop_backend(self, host: str) -> None:
        """Stop one stand-in RGW server (it is then no longer watched by :meth:`dead`)."""
        process = self.backends.pop(host)
        self.stopped.append(process)
        stop_process(process)

    def close(self) -> None:
        """Stop every process by PID, then delete the namespace; each step runs even when another failed."""
        errors: list[str] = []
        for process in [*([self.haproxy] if self.haproxy else []), *self.backends.values(), *self.stopped]:
            try:
                stop_process(process)
            except (OSError, subprocess.SubprocessError) as exc:
                errors.append(f"pid {process.pid}: {exc}")
        try:
            self.ns.delete()
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
        if errors:
            raise AssertionError("lab cleanup: " + "; ".join(errors))


def base_config(install: str, pem: str) -> dict[str, Any]:
    """The lab node: two VIPs on two backend groups of one server each, fast health checks, stats on 127.0.0.1."""
    check = {"method": "GET", "path": "/", "interval": "200ms", "rise": 1, "fall": 2}
    return {
        "name": NODE,
        "install_path": install,
        "bgp": {"router_id": "100.64.0.11", "neighbors": "100.64.0.1"},
        "vips": [
            {"name": "s3-a", "address": VIP_A, "backend": "ceph-a"},
            {"name": "s3-b", "address": VIP_B, "backend": "ceph-b"},
        ],
        "backends": {
            "ceph-a": {"servers": f"{RGW_A}:{RGW_PORT}", "check": check},
            "ceph-b": {"servers": [f"{RGW_B}:{RGW_PORT}"], "check": check},
        },
        "certificates": {"pem": pem, "http": "redirect"},
        "health": {"timeout": "1s"},
        "stats": {"bind": STATS_ADDRESS, "port": STATS_PORT},
        "whitelists": {"frontend_http": [CLIENT_NET]},
        "network": {"manager": "networkd"},
        "kernel_profile": "none",
        # The default maxconn (100000) needs ~200k file descriptors: the systemd unit grants them (LimitNOFILE), a
        # test process may not be allowed to (hard limits of 20000 are common in containers).
        "haproxy": {"maxconn": 5000},
    }


class Labs:
    """Starts labs and closes every one of them, even those whose start failed half-way."""

    def __init__(self, base: Path, cert: Path) -> None:
        self.base = base
        self.cert = cert
        self.labs: list[Lab] = []

    def start(self, **changes: Any) -> Lab:
        """A running lab, the base config updated with ``changes``."""
        work = self.base / f"lab{len(self.labs)}"
        work.mkdir()
        lab = Lab(Namespace(), work, self.cert)
        self.labs.append(lab)
        lab.start(changes)
        return lab

    def close(self) -> None:
        """Close every lab, then report the first cleanup failure."""
        errors: list[str] = []
        for lab in self.labs:
            try:
                lab.close()
            except AssertionError as exc:
                errors.append(str(exc))
        self.labs.clear()
        if errors:
            raise AssertionError("; ".join(errors))


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory whose path ober accepts as an install path prefix."""
    require(os.geteuid() == 0, "network namespaces need root")
    for tool in TOOLS:
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    base = tmp_path_factory.mktemp("serving")
    assert INSTALL_PATH.match(f"{base}/opt/ober"), f"{base} holds characters ober refuses in an install path"
    return base


@pytest.fixture(scope="module")
def cert(lab_base: Path) -> Path:
    """A self-signed certificate for HOST and its subdomains; ``.pem`` next to it holds certificate and key."""
    certificate, key = self_signed_pem(HOST, [f"DNS:{HOST}", f"DNS:*.{HOST}"])
    crt = lab_base / "s3.crt"
    crt.write_text(certificate)
    crt.with_suffix(".pem").write_text(certificate + key)
    return crt


@pytest.fixture(scope="module")
def lab(lab_base: Path, cert: Path) -> Iterator[Lab]:
    """The shared lab of this module; tests using it must leave its processes running."""
    labs = Labs(lab_base / "shared", cert)
    labs.base.mkdir()
    try:
        yield labs.start()
    finally:
        labs.close()


@pytest.fixture
def labs(lab_base: Path, cert: Path) -> Iterator[Labs]:
    """Labs of one test, for tests that break something."""
    base = lab_base / f"own-{next(_OWN_LABS)}"
    base.mkdir()
    started = Labs(base, cert)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def big_file(lab_base: Path) -> tuple[Path, str]:
    """A 64 MiB file of random bytes and its SHA-256."""
    path = lab_base / "big.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(BIG_BODY // (1024 * 1024)):
            piece = os.urandom(1024 * 1024)
            digest.update(piece)
            out.write(piece)
    return path, digest.hexdigest()


def key_path() -> str:
    """A fresh object path, so each request's records are its own."""
    return f"/bucket/key-{uuid.uuid4().hex}"


# --- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [HOST, f"bucket.{HOST}"], ids=["path-style", "virtual-hosted"])
def test_https_reaches_backend_with_host_and_forwarded_headers(lab: Lab, host: str) -> None:
    path = key_path()
    reply = lab.curl(f"https://{host}{path}", "--resolve", f"{host}:443:{VIP_A}")
    assert reply.status == 200, reply
    assert reply.info.get("ssl_verify_result") == 0, "the served certificate is not the one rendered into the PEM"
    [record] = lab.requests_for(RGW_A, path)
    assert record["method"] == "GET"
    assert record["host"] == [host], "the Host header must reach RGW unchanged: SigV4 signs it"
    assert record["x_forwarded_proto"] == ["https"]
    assert record["x_forwarded_for"] == [CLIENT]
    assert record["body_bytes"] == 0


# What a client could send to make RGW (with 'rgw trust forwarded https') believe a cleartext request was TLS, or
# to choose the address or host it sees: radosgw reads '_' in a header name as '-'.
FORGED_FORWARDING = (
    "Forwarded: for=100.64.66.66;proto=https",
    "X-Forwarded-Proto: https",
    "X_Forwarded_Proto: https",
    "x-forwarded-proto: https",
    "X-Forwarded-For: 100.64.66.66",
    "X_Forwarded_For: 100.64.66.66",
    "X-Forwarded-Host: attacker.example",
    "X-Forwarded-Port: 443",
    "X_Forwarded-Port: 443",
)


def test_forwarding_headers_reaching_rgw_are_haproxys_own(labs: Labs) -> None:
    lab = labs.start(certificates={"http": "serve"})
    forged = [part for header in FORGED_FORWARDING for part in ("--header", header)]
    for scheme, port in (("http", 80), ("https", 443)):
        path = key_path()
        reply = lab.curl(f"{scheme}://{HOST}{path}", *forged)
        assert reply.status == 200, reply
        [record] = lab.requests_for(RGW_A, path)
        seen = sorted((name.lower(), value) for name, value in record["forwarding"])
        assert seen == sorted(
            [
                ("forwarded", f"for={CLIENT};proto={scheme}"),
                ("x-forwarded-for", CLIENT),
                ("x-forwarded-host", HOST),
                ("x-forwarded-port", str(port)),
                ("x-forwarded-proto", scheme),
            ]
        ), f"{scheme}: RGW got a client's forwarding header, or missed one of HAProxy's"


def test_client_cannot_spoof_forwarded_for(lab: Lab) -> None:
    # RGW takes the client address from X-Forwarded-For when 'rgw remote addr param' says so, and bucket policies
    # (aws:SourceIp) and the ops log then trust it: a client's own value must not reach RGW.
    path = key_path()
    reply = lab.curl(f"https://{HOST}{path}", "--header", "X-Forwarded-For: 100.64.66.66")
    assert reply.status == 200, reply
    [record] = lab.requests_for(RGW_A, path)
    assert record["x_forwarded_for"] == [CLIENT]


def test_each_vip_reaches_its_own_backend_group(lab: Lab) -> None:
    path = key_path()
    reply = lab.curl(f"https://{HOST}{path}", vip=VIP_B)
    assert reply.status == 200, reply
    assert [record["server"] for record in lab.requests_for(RGW_B, path)] == [f"{RGW_B}:{RGW_PORT}"]
    assert lab.requests_for(RGW_A, path) == []


def test_health_checks_use_the_configured_request(lab: Lab) -> None:
    # The checks carry no Host header (HTTP/1.0): a Host radosgw does not know would be taken for a bucket.
    checks = [record for record in lab.seen(RGW_A) if record["host"] == []]
    assert checks, "no health check reached the backend"
    assert {(record["method"], record["path"]) for record in checks} == {("GET", "/")}
    assert not [record for record in lab.seen(RGW_A) if record["host"] == [NODE]]


def test_put_64_mib_arrives_whole(lab: Lab, big_file: tuple[Path, str]) -> None:
    path = key_path()
    source, sha256 = big_file
    reply = lab.curl(f"https://{HOST}{path}", "--upload-file", str(source), timeout=120.0)
    assert reply.status == 200, reply
    [record] = lab.requests_for(RGW_A, path)
    assert record["method"] == "PUT"
    assert record["body_bytes"] == BIG_BODY
    assert record["body_sha256"] == sha256


def test_plain_http_redirects_to_https(lab: Lab) -> None:
    path = key_path()
    reply = lab.curl(f"http://{HOST}{path}?versionId=1")
    assert reply.status == 301, reply
    assert reply.info.get("redirect_url") == f"https://{HOST}{path}?versionId=1"
    assert lab.requests_for(RGW_A, path) == [], "a redirected request must not reach RGW"


def test_tls_1_1_is_refused(lab: Lab) -> None:
    # Lower the client's own security level so that a refusal can only come from the server.
    reply = lab.curl(f"https://{HOST}/", "--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0")
    assert reply.returncode != 0 and reply.status == 0, reply
    assert "alert protocol version" in reply.stderr, reply
    done = lab.s_client("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert done.returncode != 0, done.stdout
    assert "alert protocol version" in done.stderr, done.stdout + done.stderr


def test_tls_1_2_works(lab: Lab) -> None:
    reply = lab.curl(f"https://{HOST}{key_path()}", "--tlsv1.2", "--tls-max", "1.2", "--verbose")
    assert reply.status == 200, reply
    assert "TLSv1.2" in reply.stderr


def test_alpn_offers_http_1_1_only(lab: Lab) -> None:
    done = lab.s_client("-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in done.stdout, done.stdout + done.stderr
    reply = lab.curl(f"https://{HOST}{key_path()}", "--http2")
    assert reply.status == 200, reply
    assert reply.info.get("http_version") == "1.1"


def test_metrics_are_prometheus_text(lab: Lab) -> None:
    reply = lab.stats("/metrics")
    assert reply.status == 200, reply
    assert reply.info.get("content_type", "").startswith("text/plain")
    assert "# TYPE haproxy_" in reply.text
    assert 'haproxy_server_status{proxy="be_ceph-a"' in reply.text


def test_obers_metrics_pass_through_the_stats_listener_under_the_same_rules(
    labs: Labs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/ober/metrics reaches what ober health serves on its socket, guarded like HAProxy's own /metrics."""
    from ober.metrics import CONTENT_TYPE
    from ober.metrics_server import MetricsServer

    servers: list[MetricsServer] = []

    def serve(lab: Lab, text: str) -> None:
        assert lab.config is not None
        name = paths(lab.config)["metrics_socket"]
        # An abstract socket lives in a network namespace: made and bound in the lab's, where HAProxy connects.
        server = in_netns(lab.ns.name, lambda: MetricsServer(name, lambda: text))
        in_netns(lab.ns.name, server.start)
        servers.append(server)

    # HAProxy reads the stats password from its environment (secrets.env under systemd).
    monkeypatch.setenv("OBER_STATS_PASSWORD", STATS_PASSWORD)
    try:
        open_lab = labs.start()
        assert open_lab.stats("/ober/metrics").status == 503, "no ober health: HAProxy says unavailable"
        serve(open_lab, "ober_drained 0\n")
        reply = open_lab.stats("/ober/metrics")
        assert (reply.status, reply.text) == (200, "ober_drained 0\n"), reply
        assert reply.info.get("content_type") == CONTENT_TYPE
        # Any local source reaches it while no allow-list is set (so a refusal below is the allow-list's doing).
        anyone = open_lab.curl(f"http://{STATS_ADDRESS}:{STATS_PORT}/ober/metrics", source=OUTSIDER, timeout=5.0)
        assert anyone.status == 200, anyone

        login = labs.start(
            stats={
                "bind": STATS_ADDRESS,
                "port": STATS_PORT,
                "auth": {"user": "admin", "password_secret": "stats_password"},
            }
        )
        serve(login, "ober_drained 1\n")
        for path in ("/metrics", "/ober/metrics"):
            assert login.stats(path).status == 401, f"{path} without the login"
            wrong = login.curl(f"http://{STATS_ADDRESS}:{STATS_PORT}{path}", "-u", "admin:wrong", source=None)
            assert wrong.status == 401, f"{path} with a wrong password"
        right = login.curl(
            f"http://{STATS_ADDRESS}:{STATS_PORT}/ober/metrics", "-u", f"admin:{STATS_PASSWORD}", source=None
        )
        assert (right.status, right.text) == (200, "ober_drained 1\n"), right

        # Stats for this host only: a client from the outsiders' network is refused on both paths, before any HTTP.
        listed = labs.start(whitelists={"frontend_http": [CLIENT_NET], "backend_http": [f"{STATS_ADDRESS}/32"]})
        serve(listed, "ober_drained 0\n")
        for path in ("/metrics", "/ober/metrics"):
            assert listed.stats(path).status == 200, path
            refused = listed.curl(f"http://{STATS_ADDRESS}:{STATS_PORT}{path}", source=OUTSIDER, timeout=5.0)
            assert refused.returncode in REFUSED and refused.status == 0, f"{path}: {refused}"
    finally:
        for server in servers:
            server.stop()


def test_frontend_whitelist_admits_only_listed_clients(lab: Lab) -> None:
    path = key_path()
    inside = lab.curl(f"https://{HOST}{path}", source=CLIENT)
    assert inside.status == 200, inside
    for url in (f"https://{HOST}{path}-out", f"http://{HOST}{path}-out"):
        outside = lab.curl(url, source=OUTSIDER, timeout=5.0)
        # Refused or reset at once (curl 7, 35, 52 or 56), not a timeout (28): HAProxy rejects the connection.
        assert outside.returncode in REFUSED and outside.status == 0, f"{OUTSIDER} is not whitelisted: {outside}"
    assert [record["x_forwarded_for"] for record in lab.requests_for(RGW_A, path)] == [[CLIENT]]
    assert lab.requests_for(RGW_A, f"{path}-out") == []


def test_health_follows_the_backends(labs: Labs) -> None:
    lab = labs.start()
    for path in ("/health", "/health/s3-a", "/health/s3-b"):
        assert lab.stats(path).status == 200, path

    lab.stop_backend(RGW_A)
    wait_for("/health 503 after RGW A stopped", lambda: lab.stats("/health").status == 503, HEALTH_TIMEOUT, lab.dead)
    assert lab.stats("/health/s3-a").status == 503
    assert lab.stats("/health/s3-b").status == 200, "the other VIP's group is still up"
    assert lab.curl(f"https://{HOST}{key_path()}").status == 503
    assert lab.curl(f"https://{HOST}{key_path()}", vip=VIP_B).status == 200


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_workers_drop_root_into_an_empty_chroot_and_ober_health_gets_a_read_only_socket(lab: Lab) -> None:
    """The processes facing clients run unprivileged (here as nobody: this host has no ober users), the master
    stays root; ober health's socket shows the servers' state and refuses any change."""
    assert lab.haproxy is not None and lab.config is not None
    p = paths(lab.config)
    run_as = local_run_as()
    nobody, group = pwd.getpwnam(run_as.haproxy_user).pw_uid, grp.getgrnam(run_as.bgp_group).gr_gid
    master = lab.haproxy.pid
    assert _proc_status(master)["Uid"].split() == ["0"] * 4
    workers = _children(master)
    assert workers, "HAProxy's master has no worker"
    for pid in workers:
        status = _proc_status(pid)
        assert status["Uid"].split() == [str(nobody)] * 4, status["Uid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert str(Path(f"/proc/{pid}/root").readlink()) == p["chroot"]
    assert not any(Path(p["chroot"]).iterdir())

    admin, health = Path(p["admin_socket"]).stat(), Path(p["health_socket"]).stat()
    assert (admin.st_uid, admin.st_mode & 0o777) == (0, 0o600)
    assert (health.st_gid, health.st_mode & 0o777) == (group, 0o660)
    assert snapshot(p["health_socket"], 2.0).live_servers("be_ceph-a") == 1
    server = f"be_ceph-a/{lab.config.backends[0].servers[0].name}"
    refused = query(p["health_socket"], f"disable server {server}", 2.0)
    assert "Permission denied" in refused, refused
    assert snapshot(p["admin_socket"], 2.0).live_servers("be_ceph-a") == 1  # the refused command changed nothing
