"""Pebble, Let's Encrypt's test ACME server (Debian's ``pebble``), for the lab and the tests.

Pebble serves its API over TLS with a certificate it is given: :func:`start_pebble` makes a throwaway CA and a
server certificate for the listen address (the CA is what the ACME client must trust: ``ca_bundle``, as for any
private ACME server). Its validation authority resolves names through ``pebble-challtestsrv`` (from the same
package), whose every A record is ``resolve_to``: in the lab fleet that is a VIP, so each HTTP-01 validation crosses
the router and lands, by ECMP, on any node. Pebble keeps rejecting a share of nonces (``badNonce``) as real servers
may, and never reuses an authorization, so every order really goes through the challenges.

Each daemon is started in a namespace (or on this machine's loopback, for the client's own tests) and stopped by
its PID.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ober.errors import OberError
from ober.lab.netns import spawn_in, stop_process
from ober.lab.rgw import in_netns

START_TIMEOUT = 20.0
PROGRAMS = ("pebble", "pebble-challtestsrv")


def missing() -> list[str]:
    """Pebble's programs not installed here."""
    return [program for program in PROGRAMS if shutil.which(program) is None]


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` now (for daemons on this machine's loopback)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _pem(obj: x509.Certificate) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def api_certificate(directory: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA and, signed by it, a TLS certificate for ``address``: (CA, certificate, key) files in ``directory``."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ober lab ACME API CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "api-ca.pem", directory / "api-cert.pem", directory / "api-key.pem"
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(server))
    paths[2].touch(mode=0o600)
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass
class Pebble:
    """A running Pebble (and its DNS), reachable at ``address`` from namespace ``ns`` (None: this machine)."""

    ns: str | None
    address: str
    port: int
    management_port: int
    ca_bundle: Path
    """The CA of Pebble's API certificate: what an ACME client must trust."""
    logs: list[Path]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def directory(self) -> str:
        """The ACME directory URL."""
        return f"https://{self.address}:{self.port}/dir"

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))

        def fetch() -> bytes:
            with urllib.request.urlopen(url, timeout=10, context=context) as answer:  # noqa: S310 - https, ours
                return bytes(answer.read())

        return in_netns(self.ns, fetch) if self.ns else fetch()

    def roots(self) -> str:
        """Pebble's root CA certificate (PEM), which signs what it issues (a new one at each start)."""
        return self._get(f"https://{self.address}:{self.management_port}/roots/0").decode()

    def answers(self) -> bool:
        """Whether the ACME directory answers."""
        try:
            return b"newOrder" in self._get(self.directory)
        except (OSError, OberError, ValueError):
            return False

    def log_tail(self) -> str:
        """The end of the daemons' logs, for failure messages."""
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}" for log in self.logs)

    def stop(self) -> None:
        """Stop the daemons, by PID."""
        for process in self.processes:
            stop_process(process)
        self.processes.clear()


def start_pebble(
    workdir: Path,
    *,
    ns: str | None = None,
    address: str = "127.0.0.1",
    resolve_to: str = "127.0.0.1",
    http_port: int = 80,
    port: int | None = None,
    nonce_reject: int = 10,
) -> Pebble:
    """Start pebble-challtestsrv (DNS) and Pebble in ``ns`` (None: on this machine), Pebble's API on ``address``.

    Args:
        workdir: where its configuration, certificates and logs go.
        ns: the network namespace to run in.
        address: the address both listen on.
        resolve_to: the A record of every name (the VIP the validations go to).
        http_port: the port HTTP-01 validations connect to.
        port: the API's port (default 14000 in a namespace, a free one on this machine).
        nonce_reject: the percentage of nonces Pebble rejects as bad (the client must retry them).

    Raises:
        OberError: Pebble is not installed, or does not answer in time (everything started is stopped).
    """
    if missing():
        raise OberError(f"{' and '.join(missing())} not installed", "apt-get install pebble")
    workdir.mkdir(parents=True, exist_ok=True)
    ca, cert, key = api_certificate(workdir, address)
    local = ns is None
    api = port or (free_port(address) if local else 14000)
    management = free_port(address) if local else 15000
    dns = free_port(address) if local else 8053
    config = {
        "pebble": {
            "listenAddress": f"{address}:{api}",
            "managementListenAddress": f"{address}:{management}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (workdir / "pebble.json").write_text(json.dumps(config, indent=1))
    env = {
        # Validate at once (Pebble otherwise sleeps up to 15 s per validation), never reuse an authorization.
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_AUTHZREUSE": "0",
        "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
    }
    dns_argv = [
        "pebble-challtestsrv",
        "-defaultIPv4",
        resolve_to,
        "-defaultIPv6",
        "",
        "-dns01",
        f"{address}:{dns}",
        "-http01",
        "",
        "-https01",
        "",
        "-tlsalpn01",
        "",
        "-management",
        f"{address}:{free_port(address) if local else 8055}",
    ]
    pebble_argv = ["pebble", "-config", str(workdir / "pebble.json"), "-dnsserver", f"{address}:{dns}"]
    logs = [workdir / "challtestsrv.log", workdir / "pebble.log"]
    pebble = Pebble(ns, address, api, management, ca, logs)
    try:
        for argv, log in zip((dns_argv, pebble_argv), logs, strict=True):
            pebble.processes.append(_spawn(ns, argv, log, env))
        deadline = time.monotonic() + START_TIMEOUT
        while not pebble.answers():
            dead = [p for p in pebble.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = "exited" if dead else f"did not answer in {START_TIMEOUT:g}s"
                raise OberError(f"Pebble {why}: {pebble.log_tail()[-600:]}", "see its log in " + str(workdir))
            time.sleep(0.1)
    except BaseException:
        with contextlib.suppress(OberError):
            pebble.stop()
        raise
    return pebble


def _spawn(ns: str | None, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    if ns is not None:
        return spawn_in(ns, argv, log=log, env=env)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
