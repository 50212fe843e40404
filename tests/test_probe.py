"""The roll's probe through the VIPs verifies TLS against the node's own certificate (no more CERT_NONE).

A real TLS server on loopback stands in for a VIP; the probe script runs as the node would run it.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ober.certs import self_signed_pem
from ober.config import NodeConfig
from ober.remote.probe import judge, probe_argv

LOOPBACK = "127.0.0.1"


def write_pem(path: Path, name: str) -> Path:
    certificate, key = self_signed_pem(name, [f"DNS:{name}"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(certificate + key)
    path.chmod(0o600)
    return path


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A TLS server on loopback serving the certificate it yields (and its port)."""
    pem = write_pem(tmp_path / "served" / "s3.pem", "s3.example.test")
    server = http.server.HTTPServer((LOOPBACK, 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield pem, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def probe(make_config: Callable[..., NodeConfig], pem: Path, port: int) -> list[str]:
    config = make_config(
        vips=[{"name": "s3-a", "address": "198.51.100.10", "backend": "ceph-a"}],
        certificates={"pem": str(pem), "http": "off"},
    )
    argv = probe_argv(sys.executable, config, port)
    assert argv[-1] == "198.51.100.10"
    argv[-1] = LOOPBACK  # the VIP, as the stand-in server listens
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return judge(done.stdout, [LOOPBACK])


def test_the_nodes_own_certificate_passes(make_config: Callable[..., NodeConfig], served: tuple[Path, int]) -> None:
    pem, port = served
    assert probe(make_config, pem, port) == []


def test_a_directory_of_pems_holding_the_served_one_passes(
    make_config: Callable[..., NodeConfig], served: tuple[Path, int], tmp_path: Path
) -> None:
    pem, port = served
    sni = tmp_path / "sni"
    write_pem(sni / "a-other.pem", "other.example.test")
    (sni / "s3.pem").write_text(pem.read_text())
    assert probe(make_config, sni, port) == []


def test_a_vip_serving_another_certificate_fails(
    make_config: Callable[..., NodeConfig], served: tuple[Path, int], tmp_path: Path
) -> None:
    _pem, port = served
    other = write_pem(tmp_path / "other" / "s3.pem", "s3.example.test")  # same name, another key: not this node's
    [problem] = probe(make_config, other, port)
    assert problem.startswith(f"GET https://{LOOPBACK}/ through this node: SSLCertVerificationError")


def test_no_certificate_to_verify_against_fails(
    make_config: Callable[..., NodeConfig], served: tuple[Path, int], tmp_path: Path
) -> None:
    _pem, port = served
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    [problem] = probe(make_config, empty, port)
    assert "no certificate in" in problem
