"""``ober doctor`` / ``ober test`` checks against real things: openssl-made certificates, sockets and HTTP(S)
servers on 127.0.0.1, TCP MD5 on loopback, ``haproxy -c`` and ``exabgp validate``, and the CLI in-process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from ober.acme_node import ensure_placeholder
from ober.certs import check_certificates
from ober.checks.base import Check, scrub
from ober.checks.bgp import check_bgp_state, check_bgp_tcp, tcp_md5sig
from ober.checks.config import check_config, check_rendered
from ober.checks.doctor import run_doctor, run_test
from ober.checks.host import (
    check_haproxy_state,
    check_os,
    check_own_name,
    check_python,
    check_root,
    check_units,
    read_os_release,
)
from ober.checks.rgw import check_rgw
from ober.cli import main
from ober.config import NodeConfig, dump_config
from ober.facts import find_program
from ober.render import paths
from ober.resolve import lookup_ipv4
from tests.conftest import DATA, SECRETS, require

LOCAL = "127.0.0.2"  # the node's bgp.local_address: loopback, so this host can send from it
ROUTER = "127.0.0.1"  # the BGP neighbor and the RGW servers
TIMEOUT = 0.5


def now() -> datetime:
    """The time, read when judging (a certificate made a moment ago is not valid before that moment)."""
    return datetime.now(UTC)


# --- certificates, made with the openssl CLI ------------------------------------------------------------------


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def new_key_and_csr(directory: Path, name: str) -> tuple[Path, Path]:
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-new", *ec, "-subj", f"/CN={name}", "-keyout", key, "-out", csr)
    return key, csr


def self_signed(directory: Path, name: str, days: int) -> tuple[Path, Path]:
    key, crt = directory / f"{name}.key", directory / f"{name}.crt"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-subj", f"/CN={name}", "-days", str(days), "-keyout", key, "-out", crt)
    return key, crt


def signed(directory: Path, name: str, ca: tuple[Path, Path], extensions: str, serial: int) -> tuple[Path, Path]:
    key, csr = new_key_and_csr(directory, name)
    ext, crt = directory / f"{name}.ext", directory / f"{name}.crt"
    ext.write_text(extensions)
    ca_key, ca_crt = ca
    x509 = ("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-set_serial", str(serial))
    openssl(*x509, "-days", "90", "-extfile", ext, "-out", crt)
    return key, crt


def bundle(path: Path, *parts: Path) -> Path:
    path.write_text("".join(part.read_text() for part in parts))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEMs: valid self-signed, expiring in a day, a mismatched key, and a CA-signed leaf with and without chain."""
    require(find_program("openssl") is not None, "openssl is not installed")
    work = tmp_path_factory.mktemp("certs")
    key, crt = self_signed(work, "s3-valid", 365)
    soon_key, soon_crt = self_signed(work, "s3-soon", 1)
    other_key, _ = self_signed(work, "other", 365)
    root = self_signed(work, "root", 3650)
    ca_ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
    inter = signed(work, "intermediate", root, ca_ext, 2)
    leaf_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:s3.test\n"
    leaf_key, leaf_crt = signed(work, "s3-leaf", inter, leaf_ext, 3)
    only_crt = work / "nokey"
    only_crt.mkdir()
    return {
        "valid": bundle(work / "valid.pem", crt, key),
        "soon": bundle(work / "soon.pem", soon_crt, soon_key),
        "mismatch": bundle(work / "mismatch.pem", crt, other_key),
        "chain": bundle(work / "chain.pem", leaf_crt, inter[1], leaf_key),
        "no-intermediate": bundle(work / "no-intermediate.pem", leaf_crt, leaf_key),
        "with-root": bundle(work / "with-root.pem", leaf_crt, inter[1], root[1], leaf_key),
        "no-key": bundle(only_crt / "s3.pem", crt),
        "key-beside": bundle(work / "beside.pem", crt),
        "key-beside.key": bundle(work / "beside.pem.key", key),
        "root": root[1],
        "cert": crt,
        "key": key,
    }


# --- configs --------------------------------------------------------------------------------------------------


@pytest.fixture
def install_path() -> Iterator[Path]:
    """A short install path: HAProxy's runtime socket under it (and under the check's scratch copy) must stay
    within the 108-byte limit of a Unix socket path, which pytest's tmp_path would exceed."""
    path = Path(tempfile.mkdtemp(prefix="ob-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def node(
    make_config: Callable[..., NodeConfig], node_data: dict[str, Any], install_path: Path, tmp_path: Path
) -> Callable[..., NodeConfig]:
    """A config whose router and RGW servers live on 127.0.0.1 (the overlaps validation forbids kept apart)."""

    def make(
        *, servers: str | list[str] = "127.0.0.1:9", pem: Path | None = None, local: str = LOCAL, **group: Any
    ) -> NodeConfig:
        bgp = {**node_data["bgp"], "router_id": local, "local_address": local, "neighbors": ROUTER}
        return make_config(
            install_path=str(install_path),
            bgp=bgp,
            vips=[{"name": "s3-a", "address": "198.51.100.10", "backend": "ceph-a"}],
            backends={"ceph-a": {"servers": servers, **group}},
            certificates={"pem": str(pem or tmp_path / "absent.pem")},
            whitelists={**node_data["whitelists"], "routers": "127.0.0.0/8"},
        )

    return make


def statuses(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.status for check in checks}


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((ROUTER, 0))
        port: int = sock.getsockname()[1]
    return port


# --- the machine ----------------------------------------------------------------------------------------------

OS_RELEASES = {
    "debian 12": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n', "ok"),
    "debian 13": ("ID=debian\nVERSION_ID=13\n", "ok"),
    "debian 11": ('ID=debian\nVERSION_ID="11"\n', "fail"),
    "debian sid": ("ID=debian\nPRETTY_NAME='Debian GNU/Linux trixie/sid'\n", "warn"),
    "ubuntu 24.04": ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n', "ok"),
    "ubuntu 22.04": ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="22.04"\n', "fail"),
    "rhel 9.4": ('NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n', "fail"),
    "rhel 10.0": ('NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="centos fedora"\nVERSION_ID="10.0"\n', "ok"),
    "rocky 10": ('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="10.0"\n', "warn"),
    "rocky 9": ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.5"\n', "fail"),
    "alpine": ('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\nPRETTY_NAME="Alpine Linux v3.20"\n', "fail"),
    "fedora": ("ID=fedora\nVERSION_ID=41\n", "fail"),
    "garbage": ("this is not os-release\n\n#ID=debian\n", "fail"),
}


@pytest.mark.parametrize("sample", sorted(OS_RELEASES))
def test_os_release(sample: str) -> None:
    text, expected = OS_RELEASES[sample]
    check = check_os(text)
    assert check.name == "os" and check.status == expected, check
    if expected != "ok":
        assert check.fix == "use Debian 12+, Ubuntu 24.04+ or RHEL 10+"


def test_os_named_in_detail() -> None:
    assert check_os(OS_RELEASES["rhel 9.4"][0]).detail.startswith("Red Hat Enterprise Linux 9.4 is too old")
    assert check_os(OS_RELEASES["alpine"][0]).detail == "Alpine Linux v3.20 is not supported"
    assert check_os(None).status == "fail"
    # This machine's own file is read for real.
    assert check_os(read_os_release()).detail


def test_python_and_root() -> None:
    assert check_python().status == "ok"
    assert check_python((3, 11, 0)).status == "ok"
    old = check_python((3, 10, 12))
    assert old.status == "fail" and "3.10.12" in old.detail
    assert check_root(0).status == "ok"
    user = check_root(1000)
    assert user.status == "fail" and "uid 1000" in user.detail and user.fix


def test_check_is_one_line() -> None:
    check = Check("x", "fail", "line one\n  line two\n", "do\nthis")
    assert check.detail == "line one line two" and check.fix == "do this"
    assert check.as_dict() == {"name": "x", "status": "fail", "detail": "line one line two", "fix": "do this"}


def test_scrub_masks_secret_values() -> None:
    leaked = Check("rendered files", "fail", f"bad line: password {SECRETS['bgp_md5']}", SECRETS["stats_password"])
    [clean] = scrub([leaked], SECRETS)
    assert clean.detail == "bad line: password ***" and clean.fix == "***"


# --- config and rendered files --------------------------------------------------------------------------------


def test_config_valid_missing_and_broken(tmp_path: Path) -> None:
    check, config = check_config(DATA / "node.yaml")
    assert check.status == "ok" and config is not None and config.name == "node01"
    check, config = check_config(tmp_path / "absent.yaml")
    assert check.status == "fail" and config is None and "no such file" in check.detail and check.fix
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: node01\nbgp: [\n")
    check, _ = check_config(broken)
    assert check.status == "fail" and "YAML syntax error" in check.detail and check.fix == "fix the YAML at that line"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load((DATA / "node.yaml").read_text()), "kernel_profile": "fast"}))
    check, _ = check_config(bad)
    assert check.status == "fail" and "kernel_profile" in check.detail


@pytest.fixture
def _tools() -> None:
    require(find_program("haproxy") is not None, "haproxy is not installed")
    require(find_program("exabgp") is not None, "exabgp is not installed")


@pytest.mark.usefixtures("_tools")
def test_rendered_files_checked_by_the_real_tools(node: Callable[..., NodeConfig], certs: dict[str, Path]) -> None:
    config = node(pem=certs["valid"])
    [check] = check_rendered(config, SECRETS)
    assert check.status == "ok", check
    assert "haproxy -c and exabgp validate accept them" in check.detail
    assert "secret" not in check.detail  # the real values were there
    # On a node without the secrets file, stand-ins are used and named (never a value).
    [check] = check_rendered(config, {})
    assert (
        check.status == "ok"
        and "the secret of bgp.md5_secret" in check.detail
        and "the secret of stats.auth.password_secret" in check.detail
    )


@pytest.mark.usefixtures("_tools")
def test_rendered_files_rejected_by_haproxy(node: Callable[..., NodeConfig], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    [check] = check_rendered(node(pem=garbage), SECRETS)
    assert check.status == "fail" and check.detail.startswith("haproxy -c rejected") and check.fix
    assert not any(value in check.detail for value in SECRETS.values())


# --- BGP over TCP ---------------------------------------------------------------------------------------------


@contextmanager
def bgp_listener(md5_key: str | None = None) -> Iterator[int]:
    """A listening TCP socket on 127.0.0.1 (the kernel completes the handshake), optionally requiring MD5."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if md5_key is not None:
            sock.setsockopt(socket.IPPROTO_TCP, 14, tcp_md5sig(LOCAL, md5_key))  # TCP_MD5SIG
        sock.bind((ROUTER, 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_bgp_tcp_reachable_and_refused(node: Callable[..., NodeConfig]) -> None:
    config = node()
    with bgp_listener() as port:
        [check] = check_bgp_tcp(config, TIMEOUT, port=port)
    assert check.name == "bgp tcp 127.0.0.1" and check.status == "ok" and f"from {LOCAL}" in check.detail
    port = closed_port()
    [check] = check_bgp_tcp(config, TIMEOUT, port=port)
    assert check.status == "fail" and "connection refused" in check.detail
    assert check.fix is not None and "firewall" in check.fix and "whitelist" in check.fix and "router" in check.fix


def test_bgp_tcp_with_md5(node: Callable[..., NodeConfig]) -> None:
    config = node()
    with bgp_listener(md5_key=SECRETS["bgp_md5"]) as port:
        [signed_probe] = check_bgp_tcp(config, TIMEOUT, secrets=SECRETS, port=port)
        # Unsigned, the router's kernel drops the SYN: without the secret here that is only a warning.
        [unsigned] = check_bgp_tcp(config, TIMEOUT, secrets={}, port=port)
        [wrong] = check_bgp_tcp(config, TIMEOUT, secrets={**SECRETS, "bgp_md5": "not-the-key"}, port=port)
    assert signed_probe.status == "ok" and "with TCP MD5" in signed_probe.detail
    assert (
        unsigned.status == "warn" and "without MD5" in unsigned.detail and unsigned.fix and "--secrets" in unsigned.fix
    )
    assert wrong.status == "fail" and "no answer" in wrong.detail and wrong.fix and "MD5" in wrong.fix
    for check in (signed_probe, unsigned, wrong):
        assert SECRETS["bgp_md5"] not in json.dumps(check.as_dict())


def test_bgp_local_address_not_on_this_host(node: Callable[..., NodeConfig]) -> None:
    # 198.51.100.0/24 is documentation space: not on this host, and nothing is sent from it.
    config = node(local="198.51.100.77")
    with bgp_listener() as port:
        checks = check_bgp_tcp(config, TIMEOUT, port=port)
    assert statuses(checks) == {"bgp local address": "fail", "bgp tcp 127.0.0.1": "ok"}
    assert "from this host" in checks[1].detail


# --- ExaBGP's view, units, HAProxy ----------------------------------------------------------------------------


def _status(sessions: dict[str, str], announced: dict[str, list[str]], **more: Any) -> dict[str, Any]:
    return {"bgp": {"sessions": sessions, "announced": announced}, "drained": None, "health": None, **more}


def test_bgp_state_from_status_data(node: Callable[..., NodeConfig]) -> None:
    config = node()
    good = _status({ROUTER: "established"}, {ROUTER: ["198.51.100.10/32"]})
    assert statuses(check_bgp_state(config, good)) == {"bgp session 127.0.0.1": "ok", "vip s3-a 198.51.100.10": "ok"}
    health = {"stale": False, "vips": {"198.51.100.10": {"state": "down"}}}
    down = check_bgp_state(config, _status({ROUTER: "active"}, {}, health=health))
    assert statuses(down) == {"bgp session 127.0.0.1": "fail", "vip s3-a 198.51.100.10": "fail"}
    assert "active" in down[0].detail and "no BGP session" in down[1].detail
    health_down = check_bgp_state(config, _status({ROUTER: "established"}, {}, health=health))
    assert health_down[1].status == "fail" and "health: down" in health_down[1].detail
    drained = check_bgp_state(config, _status({ROUTER: "established"}, {}, drained={"by": "alice"}))
    assert drained[1].status == "warn" and "alice" in drained[1].detail and drained[1].fix == "ober undrain, when done"
    missing = check_bgp_state(config, _status({}, {}))
    assert missing[0].status == "fail" and "no such neighbor" in missing[0].detail
    stale = check_bgp_state(config, _status({ROUTER: "established"}, {}, health={"stale": True}))
    assert stale[1].status == "fail" and "ober health" in stale[1].detail


def test_bgp_state_without_exabgp(node: Callable[..., NodeConfig], install_path: Path) -> None:
    config = node()
    # Its own (empty) pipe directory, so no other ExaBGP on this host can answer.
    (install_path / "run" / "exabgp").mkdir(parents=True)
    [check] = check_bgp_state(config)
    assert check.name == "bgp sessions" and check.status == "fail" and "ExaBGP does not answer" in check.detail


def test_haproxy_state() -> None:
    assert check_haproxy_state({"haproxy": {"running": True, "sessions": 3}}).status == "ok"
    down = check_haproxy_state({"haproxy": {"running": False, "error": "socket gone"}})
    assert down.status == "fail" and "socket gone" in down.detail and down.fix and "ober-http" in down.fix


def test_units_on_this_host() -> None:
    checks = check_units()
    assert [check.name for check in checks] == ["unit ober-http", "unit ober-bgp"]
    if not Path("/run/systemd/system").exists():  # systemd is not PID 1 here: nothing to ask
        assert {check.status for check in checks} == {"skip"}


def test_units_states() -> None:
    states = {"ober-http": "active", "ober-bgp": "failed"}
    http, bgp = check_units(states.__getitem__)
    assert http.status == "ok" and bgp.status == "fail" and bgp.detail == "failed"
    assert bgp.fix == "systemctl start ober-bgp; see journalctl -u ober-bgp -n 50"


# --- RGW backends over HTTP(S) --------------------------------------------------------------------------------


class Backend(ThreadingHTTPServer):
    """A tiny RGW stand-in: answers every request with ``status`` and records (method, path, Host)."""

    daemon_threads = True

    def __init__(self, status: int) -> None:
        super().__init__((ROUTER, 0), _Handler)
        self.status = status
        self.seen: list[tuple[str, str, str | None]] = []

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


class _Handler(BaseHTTPRequestHandler):
    server: Backend

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Host")))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_OPTIONS = _answer  # http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``seen``."""


@contextmanager
def rgw(status: int = 200, tls: tuple[Path, Path] | None = None) -> Iterator[Backend]:
    server = Backend(status)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile=tls[1], keyfile=tls[0])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_rgw_ok_503_and_closed(node: Callable[..., NodeConfig]) -> None:
    with rgw(200) as good, rgw(503) as bad:
        dead = closed_port()
        servers = [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}", f"127.0.0.1:{dead}"]
        config = node(servers=servers, check={"method": "HEAD", "path": "/swift/healthcheck"})
        ok, unhealthy, refused = check_rgw(config, TIMEOUT)
    assert ok.status == "ok" and ok.detail == "HEAD /swift/healthcheck answered 200"
    # The request HAProxy's check sends: its method, path and the node's name as Host.
    assert good.seen == [("HEAD", "/swift/healthcheck", "node01")]
    assert unhealthy.status == "fail" and unhealthy.detail == "HEAD /swift/healthcheck answered 503, expected 200"
    assert unhealthy.fix and "backends.ceph-a.check" in unhealthy.fix
    assert refused.name == f"rgw ceph-a 127.0.0.1:{dead}" and refused.status == "fail"
    assert refused.detail == "connection refused" and refused.fix and "radosgw" in refused.fix


def test_rgw_expect_status_and_names(node: Callable[..., NodeConfig]) -> None:
    with rgw(404) as server:
        servers = [f"localhost:{server.port}", f"rgw-gone:{server.port}"]
        config = node(servers=servers, check={"path": "/", "expect_status": 404})
        # localhost resolves through /etc/hosts, for real; other names meet a resolver that knows nothing, so no
        # DNS query leaves this machine.
        real, gone = check_rgw(config, TIMEOUT, lookup=lambda name: lookup_ipv4(name) if name == "localhost" else [])
    assert real.status == "ok" and real.detail == "GET / answered 404"
    assert gone.status == "fail" and gone.detail == "rgw-gone does not resolve to an IPv4 address"
    assert gone.fix and "/etc/hosts" in gone.fix


def test_rgw_over_tls(node: Callable[..., NodeConfig], certs: dict[str, Path]) -> None:
    pair = (certs["key"], certs["cert"])
    with rgw(200, tls=pair) as server:
        servers = f"127.0.0.1:{server.port}"
        trusted = node(servers=servers, tls={"enabled": True, "verify": True, "ca_file": str(certs["cert"])})
        [ok] = check_rgw(trusted, TIMEOUT)
        untrusted = node(servers=servers, tls={"enabled": True, "verify": True, "ca_file": str(certs["root"])})
        [bad] = check_rgw(untrusted, TIMEOUT)
        [unverified] = check_rgw(node(servers=servers, tls={"enabled": True, "verify": False}), TIMEOUT)
        [plain] = check_rgw(node(servers=servers), TIMEOUT)
    assert ok.status == "ok" and ok.detail == "GET / answered 200 over TLS"
    assert bad.status == "fail" and bad.detail.startswith("TLS certificate not trusted")
    assert bad.fix and "tls.ca_file" in bad.fix
    assert unverified.status == "ok"
    assert plain.status == "fail" and plain.fix and "tls.enabled" in plain.fix
    with rgw(200) as server:
        [handshake] = check_rgw(node(servers=f"127.0.0.1:{server.port}", tls={"enabled": True}), TIMEOUT)
    assert handshake.status == "fail" and handshake.detail.startswith("TLS failed") and handshake.fix


def test_rgw_missing_ca_file(node: Callable[..., NodeConfig], tmp_path: Path) -> None:
    config = node(tls={"enabled": True, "verify": True, "ca_file": str(tmp_path / "absent-ca.pem")})
    [check] = check_rgw(config, TIMEOUT)
    assert check.status == "fail" and "absent-ca.pem" in check.detail and check.fix and "ca_file" in check.fix


# --- certificates -----------------------------------------------------------------------------------------------


def cert_checks(node: Callable[..., NodeConfig], pem: Path, **kwargs: Any) -> dict[str, Check]:
    return {check.name.rsplit(" ", 1)[-1]: check for check in check_certificates(node(pem=pem), **kwargs)}


def test_valid_self_signed(node: Callable[..., NodeConfig], certs: dict[str, Path]) -> None:
    found = cert_checks(node, certs["valid"], now=now())
    assert {name: check.status for name, check in found.items()} == {"expiry": "ok", "key": "ok", "chain": "warn"}
    assert found["expiry"].detail.startswith("CN=s3-valid: valid until")
    assert found["chain"].detail.startswith("self-signed")
    assert found["key"].detail == "private key present and matching the certificate"


def test_expiry(node: Callable[..., NodeConfig], certs: dict[str, Path]) -> None:
    soon = cert_checks(node, certs["soon"], now=now())["expiry"]
    assert soon.status == "warn" and "expires in 0 days" in soon.detail and soon.fix and "renew" in soon.fix
    expired = cert_checks(node, certs["valid"], now=now() + timedelta(days=400))["expiry"]
    assert expired.status == "fail" and "expired on" in expired.detail
    early = cert_checks(node, certs["valid"], now=now() - timedelta(days=2))["expiry"]
    assert early.status == "fail" and "not valid before" in early.detail


def test_keys(node: Callable[..., NodeConfig], certs: dict[str, Path]) -> None:
    mismatch = cert_checks(node, certs["mismatch"], now=now())["key"]
    assert mismatch.status == "fail" and mismatch.detail == "the private key does not match the certificate"
    assert cert_checks(node, certs["key-beside"], now=now())["key"].status == "ok"  # HAProxy reads <pem>.key
    missing = cert_checks(node, certs["no-key"], now=now())["key"]
    assert missing.status == "fail" and "no private key" in missing.detail


def test_chain(node: Callable[..., NodeConfig], certs: dict[str, Path]) -> None:
    root = str(certs["root"])
    full = cert_checks(node, certs["chain"], now=now(), ca_file=root)
    assert full["chain"].status == "ok" and full["key"].status == "ok" and full["expiry"].status == "ok"
    assert full["chain"].detail == "chain verifies (1 more certificates in the PEM)"
    incomplete = cert_checks(node, certs["no-intermediate"], now=now(), ca_file=root)["chain"]
    assert incomplete.status == "fail" and incomplete.detail.startswith("chain incomplete")
    assert incomplete.fix and "intermediate" in incomplete.fix
    # Against the system's CAs: our private root is unknown (fail), or present in the PEM (warn).
    assert cert_checks(node, certs["chain"], now=now())["chain"].status == "fail"
    assert cert_checks(node, certs["with-root"], now=now())["chain"].status == "warn"


def test_certificate_directory_and_errors(
    node: Callable[..., NodeConfig], certs: dict[str, Path], tmp_path: Path, make_config: Callable[..., NodeConfig]
) -> None:
    directory = tmp_path / "sni"
    directory.mkdir()
    bundle(directory / "a.pem", certs["valid"])
    bundle(directory / "b.pem", certs["soon"])
    bundle(directory / "b.pem.key", certs["key"])  # a companion, not a certificate of its own
    checks = check_certificates(node(pem=directory), now())
    assert [check.name for check in checks] == [
        f"cert {name}.pem {part}" for name in "ab" for part in ("expiry", "key", "chain")
    ]
    [missing] = check_certificates(node(pem=tmp_path / "absent.pem"), now())
    assert missing.status == "fail" and "no such file" in missing.detail and missing.fix
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_certificates(node(pem=empty), now())[0].status == "fail"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert cert_checks(node, garbage, now=now())["expiry"].status == "fail"
    for check in check_certificates(node(pem=certs["valid"]), now()):
        assert "PRIVATE KEY" not in check.detail


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a path short enough for an install path (HAProxy's socket path is limited)."""
    directory = Path(tempfile.mkdtemp(prefix="ober-c-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_acme_certificates_checked_once_there(
    certs: dict[str, Path], short_dir: Path, make_config: Callable[..., NodeConfig]
) -> None:
    acme_settings = {"acme": {"email": "ops@example.com", "domains": ["s3.example.com"]}}
    acme = make_config(install_path=str(short_dir / "opt"), certificates=acme_settings)
    [none_yet] = check_certificates(acme, now())
    assert none_yet.status == "fail" and "no such file" in none_yet.detail
    assert "ober fleet certs renew" in (none_yet.fix or "")
    assert ensure_placeholder(acme)
    [placeholder] = check_certificates(acme, now())
    assert placeholder.status == "warn" and "placeholder" in placeholder.detail
    assert placeholder.fix == "on the workstation: ober fleet certs renew"
    assert not ensure_placeholder(acme)  # a certificate is there: left alone
    bundle(Path(paths(acme)["acme_pem"]), certs["valid"])
    assert [check.status for check in check_certificates(acme, now())][:2] == ["ok", "ok"]  # checked as any PEM


# --- composed: ober test, ober doctor -------------------------------------------------------------------------


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    path = tmp_path / "login"
    path.write_text(yaml.safe_dump(SECRETS))
    path.chmod(0o600)
    return path


def write_config(node: Callable[..., NodeConfig], tmp_path: Path, **kwargs: Any) -> Path:
    path = tmp_path / "ober.yaml"
    path.write_text(dump_config(node(**kwargs)))
    return path


@pytest.mark.usefixtures("_tools")
def test_run_test_all_good(
    node: Callable[..., NodeConfig], certs: dict[str, Path], tmp_path: Path, secrets_file: Path
) -> None:
    with bgp_listener(md5_key=SECRETS["bgp_md5"]) as port, rgw(200) as server:
        path = write_config(node, tmp_path, servers=f"127.0.0.1:{server.port}", pem=certs["valid"])
        checks = run_test(path, secrets_path=secrets_file, timeout=TIMEOUT, bgp_port=port)
    assert statuses(checks) == {
        "config": "ok",
        "rendered files": "ok",
        "bgp tcp 127.0.0.1": "ok",
        f"rgw ceph-a 127.0.0.1:{server.port}": "ok",
        "sse-c": "skip",  # no s3_probe_* keys in the secrets file
        "cert valid.pem expiry": "ok",
        "cert valid.pem key": "ok",
        "cert valid.pem chain": "warn",
    }
    assert "with TCP MD5" in checks[2].detail
    assert not any(value in json.dumps([c.as_dict() for c in checks]) for value in SECRETS.values())


def test_run_test_unusable_secrets_file(node: Callable[..., NodeConfig], tmp_path: Path, secrets_file: Path) -> None:
    secrets_file.chmod(0o644)
    checks = run_test(tmp_path / "absent.yaml", secrets_path=secrets_file)
    assert statuses(checks) == {"secrets": "fail", "config": "fail"}
    assert checks[0].fix == f"run: chmod 600 {secrets_file}"


def test_doctor_before_bootstrap(tmp_path: Path) -> None:
    checks = run_doctor(tmp_path / "opt/etc/ober.yaml", euid=0, os_release=OS_RELEASES["debian 12"][0])
    found = statuses(checks)
    assert found.pop("own name") in ("ok", "warn")  # this machine's resolver decides
    assert found == {"python": "ok", "root": "ok", "os": "ok", "bootstrap": "warn"}
    assert checks[-1].detail.startswith("not bootstrapped") and checks[-1].fix == "run ober bootstrap"
    checks = run_doctor(tmp_path / "absent.yaml", euid=1000, os_release=OS_RELEASES["alpine"][0])
    assert statuses(checks)["root"] == "fail" and statuses(checks)["os"] == "fail"


@pytest.mark.usefixtures("_tools")
def test_doctor_bootstrapped_but_nothing_running(
    node: Callable[..., NodeConfig], certs: dict[str, Path], tmp_path: Path, install_path: Path
) -> None:
    (install_path / "run" / "exabgp").mkdir(parents=True)  # its own pipes: no ExaBGP answers there
    with bgp_listener() as port, rgw(200) as server:
        path = write_config(node, tmp_path, servers=f"127.0.0.1:{server.port}", pem=certs["valid"])
        checks = run_doctor(path, timeout=TIMEOUT, euid=0, os_release=OS_RELEASES["debian 12"][0], bgp_port=port)
    found = statuses(checks)
    assert found["config"] == "ok" and found["rendered files"] == "ok"
    assert found["haproxy"] == "fail" and found["bgp sessions"] == "fail"
    # No session, so the router's TCP reachability is probed to narrow it down.
    assert found["bgp tcp 127.0.0.1"] == "ok" and found[f"rgw ceph-a 127.0.0.1:{server.port}"] == "ok"
    assert found["cert valid.pem expiry"] == "ok"
    # The stats page: this config has a login but no TLS, so its password would cross plain HTTP.
    [stats] = [check for check in checks if check.name == "stats page"]
    assert stats.status == "warn" and "crosses plain HTTP" in stats.detail and stats.fix is not None
    assert {found["unit ober-http"], found["unit ober-bgp"]} <= {"ok", "fail", "skip"}


# --- the CLI, in-process --------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_doctor_before_bootstrap(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    machine = [check_python(), check_root(os.geteuid()), check_os(read_os_release())]
    expected = 1 if any(check.status == "fail" for check in machine) else 0
    status, out, err = run(capsys, "doctor", "-c", str(tmp_path / "ober.yaml"))
    assert status == expected, err
    assert "not bootstrapped" in out and "run ober bootstrap" in out and "Traceback" not in out + err
    status, out, _ = run(capsys, "doctor", "--json", "-c", str(tmp_path / "ober.yaml"))
    doc = json.loads(out)["checks"]
    assert status == expected and [check["name"] for check in doc] == ["python", "root", "os", "own name", "bootstrap"]


def test_cli_test_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: node01\nbgp: [\n")
    status, out, err = run(capsys, "test", "-c", str(bad))
    assert status == 1 and "YAML syntax error" in out
    assert err.strip().splitlines() == ["error: 1 of 1 checks failed (fix: see each failed check's fix)"]
    assert "Traceback" not in out + err


@pytest.mark.usefixtures("_tools")
def test_cli_test_failing_json(
    capsys: pytest.CaptureFixture[str],
    node: Callable[..., NodeConfig],
    certs: dict[str, Path],
    tmp_path: Path,
    secrets_file: Path,
) -> None:
    with rgw(503) as server:
        path = write_config(node, tmp_path, servers=f"127.0.0.1:{server.port}", pem=certs["mismatch"])
        argv = ["test", "-c", str(path), "--secrets", str(secrets_file), "--timeout", "0.5"]
        status, out, err = run(capsys, "--json", *argv)
        human_status, human, human_err = run(capsys, *argv)
    # stdout: one document, the checks and the error.
    doc = json.loads(out)
    checks = doc["checks"]
    error = {"error": doc["error"], "fix": doc["fix"]}
    assert status == 1 and isinstance(checks, list) and checks
    assert all(set(check) == {"name", "status", "detail", "fix"} for check in checks)
    assert all(check["status"] in {"ok", "warn", "fail", "skip"} for check in checks)
    failed = [check["name"] for check in checks if check["status"] == "fail"]
    # Nothing listens on 127.0.0.1:179 in this test (or, if something does, that check is not asserted).
    assert {f"rgw ceph-a 127.0.0.1:{server.port}", "cert mismatch.pem key"} <= set(failed)
    assert error == {"error": f"{len(failed)} of {len(checks)} checks failed", "fix": "see each failed check's fix"}
    assert human_status == 1 and human_err.strip().splitlines() == [
        f"error: {len(failed)} of {len(checks)} checks failed (fix: see each failed check's fix)"
    ]
    assert "answered 503, expected 200" in human
    for text in (out, err, human, human_err):
        assert "Traceback" not in text and not any(value in text for value in SECRETS.values())


@pytest.mark.usefixtures("_tools")
def test_cli_test_passes(
    capsys: pytest.CaptureFixture[str],
    node: Callable[..., NodeConfig],
    certs: dict[str, Path],
    tmp_path: Path,
    secrets_file: Path,
) -> None:
    # The CLI probes the real BGP port: listen on 127.0.0.1:179 (root only), unless something already does.
    require(os.geteuid() == 0, "listening on port 179 needs root")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as router:
        router.setsockopt(socket.IPPROTO_TCP, 14, tcp_md5sig(LOCAL, SECRETS["bgp_md5"]))  # TCP_MD5SIG
        try:
            router.bind((ROUTER, 179))
        except OSError:
            pytest.skip("127.0.0.1:179 is taken")
        router.listen(8)
        with rgw(200) as server:
            path = write_config(node, tmp_path, servers=f"127.0.0.1:{server.port}", pem=certs["valid"])
            status, out, err = run(capsys, "test", "-c", str(path), "--secrets", str(secrets_file))
    assert status == 0, out + err
    assert "8 checks, none failed, 1 warnings" in out and "self-signed" in out
    assert not any(value in out + err for value in SECRETS.values())


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "test", "--timeout", "0")
    assert status == 2 and "Traceback" not in err
    status, out, _ = run(capsys, "doctor", "--help")
    assert status == 0 and "--secrets" in out and "--json" in out


def test_a_slow_own_name_lookup_is_a_warning_with_the_fix() -> None:
    ticks = iter([0.0, 5.02])
    slow = check_own_name(lambda: "node01", clock=lambda: next(ticks))
    assert slow.status == "warn" and "took 5.0s" in slow.detail
    assert slow.fix is not None and "/etc/hosts" in slow.fix
    ticks = iter([0.0, 0.003])
    assert check_own_name(lambda: "node01.example", clock=lambda: next(ticks)).status == "ok"
