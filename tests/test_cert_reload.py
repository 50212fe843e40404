"""A changed certificate is picked up by a running HAProxy without dropping a connection (``ober certs reload``).

HAProxy runs ober's rendered config in a private namespace (the serving tests' lab). A client holds one keep-alive
TLS connection and sends a request every 20 ms the whole time; the PEM is replaced on disk and ``ober certs reload``
hands it to HAProxy's runtime API. New handshakes must get the new certificate, the held connection must never drop
and no request may fail; HAProxy must not even reload (same worker). Broken replacements are refused and the
certificate being served stays.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ober.certs import self_signed_pem
from ober.certswap import fingerprint, swap_settled
from ober.cli import main
from ober.haproxy_runtime import query
from ober.render import paths
from tests.conftest import require
from tests.test_haproxy_serving import CLIENT, HOST, INSTALL_PATH, TOOLS, VIP_A, Lab, Labs, wait_for

pytestmark = pytest.mark.lab

# The client: one keep-alive connection, never reopened (auto_open off), a GET every 20 ms until the stop file.
CLIENT_SCRIPT = r"""
import hashlib, http.client, json, os, ssl, sys, time
vip, source, host, ready, stop, out = sys.argv[1:7]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection(vip, 443, context=context, timeout=10, source_address=(source, 0))
conn.connect()
conn.auto_open = 0
first = hashlib.sha1(conn.sock.getpeercert(True)).hexdigest().upper()
port = conn.sock.getsockname()[1]
ok, failed, times = 0, [], []
while not os.path.exists(stop):
    try:
        conn.request("GET", "/held", headers={"Host": host})
        reply = conn.getresponse()
        reply.read()
        if reply.status != 200 or reply.will_close:
            failed.append(f"HTTP {reply.status}, will_close={reply.will_close}")
        else:
            ok += 1
            times.append(time.time())
    except Exception as exc:
        failed.append(repr(exc))
        break
    if ok == 1:
        open(ready, "w").close()
    time.sleep(0.02)
last = hashlib.sha1(conn.sock.getpeercert(True)).hexdigest().upper() if conn.sock else None
same = conn.sock is not None and conn.sock.getsockname()[1] == port
summary = {"ok": ok, "failed": failed, "first": first, "last": last, "same_socket": same, "times": times}
json.dump(summary, open(out, "w"))
"""


def pem_pair(common_name: str, *, expired: bool = False) -> tuple[str, str]:
    """A certificate for ``common_name`` (and HOST) and its key; ``expired`` makes one that ended yesterday."""
    if not expired:
        return self_signed_pem(common_name, [f"DNS:{common_name}", f"DNS:{HOST}"])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def replace_file(target: Path, text: str) -> None:
    """Write ``text`` beside ``target`` and rename it over (how certbot and friends install a renewed PEM)."""
    temp = target.with_name(f".{target.name}.new")
    temp.write_text(text)
    temp.chmod(0o600)
    temp.replace(target)


def served(lab: Lab, servername: str = HOST) -> str | None:
    """The SHA-1 fingerprint of the certificate a new handshake gets."""
    argv = ["openssl", "s_client", "-connect", f"{VIP_A}:443", "-bind", f"{CLIENT}:0", "-servername", servername]
    return fingerprint(lab.ns.run(*argv, timeout=10).stdout)


def worker_pid(lab: Lab) -> str:
    """The HAProxy worker's PID, from its runtime API: unchanged means no reload happened."""
    assert lab.config is not None
    info = query(paths(lab.config)["admin_socket"], "show info", 5.0)
    return next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Pid:"))


def certs_reload(lab: Lab, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ober certs reload`` for the lab's node, in-process."""
    assert lab.config is not None
    status = main(["certs", "reload", "-c", paths(lab.config)["config"]])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


class HeldClient:
    """The keep-alive client, started in the lab's namespace."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.ready = lab.work / "client.ready"
        self.stop_file = lab.work / "client.stop"
        self.out = lab.work / "client.json"
        argv = [sys.executable, "-c", CLIENT_SCRIPT, VIP_A, CLIENT, HOST, str(self.ready), str(self.stop_file)]
        self.process = lab.ns.start([*argv, str(self.out)], lab.work / "client.log")
        lab.stopped.append(self.process)  # stopped by the lab's cleanup whatever happens
        wait_for("the held connection's first request", self.ready.exists, 10.0, self._dead)

    def _dead(self) -> str | None:
        if self.process.poll() is None:
            return None
        return f"client exited {self.process.returncode}: {(self.lab.work / 'client.log').read_text()}"

    def wait_requests_after(self, moment: float, count: int) -> None:
        """Let the client make ``count`` more requests after ``moment`` (it reports them only at the end)."""
        time.sleep(max(0.0, moment - time.time()) + count * 0.15)

    def finish(self) -> dict[str, Any]:
        """Stop the client and return what it saw."""
        self.stop_file.touch()
        self.process.wait(15)
        return dict(json.loads(self.out.read_text()))


@pytest.fixture
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labs]:
    require(os.geteuid() == 0, "network namespaces need root")
    for tool in TOOLS:
        require(shutil.which(tool) is not None, f"{tool} is not installed")
    base = tmp_path_factory.mktemp("certs")
    assert INSTALL_PATH.match(f"{base}/lab0/opt/ober"), f"{base} holds characters ober refuses in an install path"
    certificate, key = pem_pair("cert-a.test")
    crt = base / "a.crt"
    crt.write_text(certificate)
    crt.with_suffix(".pem").write_text(certificate + key)
    started = Labs(base, crt)
    try:
        yield started
    finally:
        started.close()


def test_new_certificate_served_while_held_connection_keeps_working(
    labs: Labs, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = labs.start()
    assert lab.config is not None and lab.config.certificates.pem is not None
    pem = Path(lab.config.certificates.pem)
    cert_a = fingerprint(pem.read_text())
    assert served(lab) == cert_a
    pid = worker_pid(lab)
    client = HeldClient(lab)

    # Broken replacements: refused with the reason, and A keeps serving.
    b_crt, b_key = pem_pair("cert-b.test")
    a_key = pem.read_text()[pem.read_text().index("-----BEGIN PRIVATE KEY") :]
    old_crt, old_key = pem_pair("cert-old.test", expired=True)
    broken = {
        "no certificate in it": "this is not a PEM\n",
        "private key does not match": b_crt + a_key,
        "expired on": old_crt + old_key,
    }
    for reason, text in broken.items():
        replace_file(pem, text)
        status, out, err = certs_reload(lab, capsys)
        assert status == 1, out + err
        assert reason in err and "refused" in err and "keeps serving" in err, err
        assert served(lab) == cert_a, f"after {reason!r}"

    # A good one: swapped in, served to new handshakes at once.
    replace_file(pem, b_crt + "\n" + b_key)  # a blank line between the blocks, as some tools write it
    swapped_at = time.time()
    status, out, err = certs_reload(lab, capsys)
    took = time.time() - swapped_at
    assert status == 0, err
    assert "swapped" in out
    assert served(lab) == fingerprint(b_crt)
    status, out, _ = certs_reload(lab, capsys)
    assert status == 0 and "unchanged" in out  # idempotent
    client.wait_requests_after(swapped_at + took, 10)

    seen = client.finish()
    assert seen["failed"] == [], seen
    assert seen["same_socket"], seen
    before = sum(t < swapped_at for t in seen["times"])
    after = sum(t > swapped_at + took for t in seen["times"])
    assert before >= 1 and after >= 10, seen
    assert seen["first"] == seen["last"] == cert_a  # the held connection kept its session with A
    assert worker_pid(lab) == pid  # no reload: the same worker serves, no old worker is left behind
    print(f"swap took {took * 1000:.0f} ms; held connection: {before} requests before, {after} after, none failed")


def test_crt_directory_certificate_added_and_removed(labs: Labs, capsys: pytest.CaptureFixture[str]) -> None:
    # The directory form: HAProxy loads every PEM in it and picks one by SNI (the lab puts s3.pem there).
    directory = labs.base / f"lab{len(labs.labs)}" / "opt" / "ober" / "etc" / "certs"
    lab = labs.start(certificates={"pem": str(directory), "http": "redirect"})
    default = fingerprint((directory / "s3.pem").read_text())
    other_crt, other_key = self_signed_pem("other.example.test", ["DNS:other.example.test"])
    replace_file(directory / "other.pem", other_crt + other_key)
    assert served(lab, "other.example.test") == default  # not yet: HAProxy has not been told
    status, out, err = certs_reload(lab, capsys)
    assert status == 0 and "added" in out, out + err
    assert served(lab, "other.example.test") == fingerprint(other_crt)
    assert served(lab) == default
    (directory / "other.pem").unlink()
    status, out, err = certs_reload(lab, capsys)
    assert status == 0 and "removed" in out, out + err
    assert served(lab, "other.example.test") == default


def test_without_haproxy_it_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    # A short path: the admin socket lives under install_path, and pytest's tmp_path is too long for one.
    install = Path(tempfile.mkdtemp(prefix="ober-c", dir="/tmp")) / "ober"
    config = install / "etc" / "ober.yaml"
    config.parent.mkdir(parents=True)
    data = yaml.safe_load((Path(__file__).parent / "data" / "node.yaml").read_text())
    config.write_text(yaml.safe_dump({**data, "install_path": str(install)}))
    status = main(["certs", "reload", "-c", str(config)])
    err = capsys.readouterr().err
    assert status == 1 and "runtime socket" in err and "ober-http running" in err
    assert "Traceback" not in err
    shutil.rmtree(install.parent)


def test_a_write_during_the_swap_is_picked_up_too(labs: Labs) -> None:
    lab = labs.start()
    assert lab.config is not None and lab.config.certificates.pem is not None
    pem = Path(lab.config.certificates.pem)
    socket_path = paths(lab.config)["admin_socket"]
    b_crt, b_key = pem_pair("cert-b.test")
    c_crt, c_key = pem_pair("cert-c.test")
    replace_file(pem, b_crt + b_key)
    calls: list[str] = []

    def ask(command: str) -> str:
        # The renewal tool writes again while the first round talks to HAProxy (after it read the file).
        if command.startswith("commit") and not any(call.startswith("commit") for call in calls):
            replace_file(pem, c_crt + c_key)
        calls.append(command.split(" <<")[0])
        return query(socket_path, command, 5.0)

    outcomes = swap_settled(lab.config, ask=ask)
    assert [o.action for o in outcomes] == ["swapped"], (outcomes, calls)
    assert served(lab) == fingerprint(c_crt), (outcomes, calls)  # the later write, not the one first seen
    assert sum(call.startswith("commit") for call in calls) == 2
