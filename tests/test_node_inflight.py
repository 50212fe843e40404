"""Requests in flight while a node leaves: withdrawn first, then HAProxy's soft stop lets them finish.

On the systemd-nspawn node of `tests.test_node_systemd` (real units, BIRD router, real RGW). Through an ECMP router
a withdrawn node's open flows are re-hashed to other nodes (they answer with resets), so this client reaches the
node by a path that does not depend on the BGP route: a client segment whose traffic the router forwards to the node
by a policy rule (its own table, untouched by BIRD). The router's kernel route is polled every 10 ms for the
withdraw; the node's journal says when systemd began stopping HAProxy.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from ober.lab.netns import run_in
from ober.lab.rgw import in_netns
from tests.test_node_systemd import NODE, OBER, RGW, VIP, SystemdLab, systemd_lab

pytestmark = pytest.mark.lab

__all__ = ["systemd_lab"]  # the fixture this module builds on, used by name

CLIENT_SEGMENT = 9  # 100.64.9.0/24, the client namespace at .2
TABLE = "77"
BUCKET = "inflight"
DOWNLOAD_BYTES = 64 * 2**20
UPLOAD_BYTES = 32 * 2**20
# Rates that make each transfer last ~10 s, so both are still running when HAProxy begins its soft stop (about
# 3 s after `ober stop` starts: the withdraw, then 2 s for the routers to converge).
DOWNLOAD_RATE = "6M"
UPLOAD_RATE = "3M"


@dataclass
class Client:
    systemd: SystemdLab
    ns: str
    files: Path
    presign: Any
    download_sha256: str
    upload_file: Path
    upload_sha256: str


@dataclass
class Transfer:
    """A curl run in the client namespace; ``ended`` is the wall-clock time it exited."""

    name: str
    process: subprocess.Popen[str]
    ended: float = 0.0
    waiter: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.waiter = threading.Thread(target=self._wait, daemon=True)
        self.waiter.start()

    def _wait(self) -> None:
        self.process.wait()
        self.ended = time.time()

    def result(self, timeout: float = 120.0) -> tuple[int, str]:
        self.waiter.join(timeout)
        assert not self.waiter.is_alive(), f"{self.name} still running after {timeout:g}s"
        stdout = self.process.stdout.read() if self.process.stdout else ""
        return self.process.returncode, stdout.strip()


class RoutePoll:
    """Polls the router's kernel route for the VIP every 10 ms; ``gone`` is when its next-hops first were []."""

    def __init__(self, systemd: SystemdLab) -> None:
        self.systemd = systemd
        self.gone = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            if not self.gone and self.systemd.hops() == []:
                self.gone = time.time()
            self.stop.wait(0.01)

    def close(self) -> float:
        self.stop.set()
        self.thread.join(5)
        return self.gone


def s3(endpoint: str, systemd: SystemdLab) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=systemd.rgw.access_key,
        aws_secret_access_key=systemd.rgw.secret_key,
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def client(systemd_lab: SystemdLab) -> Iterator[Client]:
    lab, router = systemd_lab.lab, systemd_lab.router
    ns = router.segment(lab, "cl", CLIENT_SEGMENT)
    # The client's packets to the VIP go straight to the node whatever BGP says: a rule for traffic entering from
    # the client's port, with its own table. Replies come back through the router's connected route.
    run_in(router.ns, ["ip", "route", "add", f"{VIP}/32", "via", NODE, "table", TABLE])
    run_in(router.ns, ["ip", "rule", "add", "iif", "cl", "lookup", TABLE, "pref", "100"])
    files = lab.path("inflight")
    body = os.urandom(DOWNLOAD_BYTES)
    direct = f"http://{RGW[0]}:7480"

    def seed() -> None:
        rgw = s3(direct, systemd_lab)
        rgw.create_bucket(Bucket=BUCKET)
        rgw.put_object(Bucket=BUCKET, Key="big", Body=body)

    in_netns(ns, seed, timeout=120)
    upload = files / "upload.bin"
    upload.write_bytes(os.urandom(UPLOAD_BYTES))
    yield Client(
        systemd_lab,
        ns,
        files,
        s3(f"https://{VIP}", systemd_lab),
        hashlib.sha256(body).hexdigest(),
        upload,
        sha256(upload),
    )


def curl(client: Client, name: str, *args: str) -> Transfer:
    argv = ["ip", "netns", "exec", client.ns, "curl", "-sS", "-k", "-H", "Expect:", "-w", "%{http_code}", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return Transfer(name, process)


def start_transfers(client: Client, tag: str, download_rate: str = DOWNLOAD_RATE) -> tuple[Transfer, Transfer | None]:
    get_url = client.presign.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "big"})
    out = client.files / f"download-{tag}.bin"
    download = curl(client, "download", "--limit-rate", download_rate, "-o", str(out), get_url)
    upload = None
    if tag in ("stop", "drain"):
        put_url = client.presign.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": f"up-{tag}"})
        upload = curl(
            client, "upload", "--limit-rate", UPLOAD_RATE, "-T", str(client.upload_file), "-o", "/dev/null", put_url
        )
    # Both must really be under way (bytes moving through HAProxy) before the node is taken out.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 4 * 2**20):
        time.sleep(0.05)
    assert download.process.poll() is None and (upload is None or upload.process.poll() is None)
    return download, upload


def uploaded_sha256(client: Client, tag: str) -> str:
    def fetch() -> bytes:
        data: bytes = (
            s3(f"http://{RGW[0]}:7480", client.systemd).get_object(Bucket=BUCKET, Key=f"up-{tag}")["Body"].read()
        )
        return data

    return hashlib.sha256(in_netns(client.ns, fetch, timeout=60)).hexdigest()


def keep_alive_connection(client: Client) -> http.client.HTTPSConnection:
    """A client connection that made one request and now idles (keep-alive), as SDK connection pools do."""

    def open_one() -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(VIP, 443, timeout=10, context=ssl._create_unverified_context())  # noqa: S323
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("Connection", "").lower() != "close"
        return conn

    return in_netns(client.ns, open_one)


def closed_by_server(conn: http.client.HTTPSConnection, timeout: float) -> float:
    """Wait for the server to close an idle connection; the wall-clock time it did, 0.0 if it did not."""
    sock = conn.sock
    assert sock is not None
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except (ssl.SSLError, ConnectionError):
        return time.time()
    except TimeoutError:
        return 0.0
    return time.time() if data == b"" else 0.0


def journal_time(client: Client, message: str) -> float:
    journal = client.systemd.node.run("journalctl -o short-unix --no-pager -u ober-http -n 300").stdout
    times = [float(line.split()[0]) for line in journal.splitlines() if message in line]
    assert times, f"no {message!r} in the journal:\n{journal}"
    return times[-1]


def refused(client: Client) -> int:
    done = run_in(
        client.ns, ["curl", "-sk", "--connect-timeout", "3", "-o", "/dev/null", f"https://{VIP}/"], check=False
    )
    return done.returncode


def ober(client: Client, command: str, timeout: float = 120.0) -> tuple[subprocess.CompletedProcess[str], float]:
    done = client.systemd.node.run(f"{OBER} {command}", timeout=timeout, check=False)
    return done, time.time()


def test_stop_withdraws_then_soft_stops_and_in_flight_requests_complete(client: Client) -> None:
    systemd = client.systemd
    systemd.wait_hops([NODE])
    idle = keep_alive_connection(client)
    idle_closed: list[float] = []
    watcher = threading.Thread(target=lambda: idle_closed.append(closed_by_server(idle, 60)), daemon=True)
    watcher.start()
    download, upload = start_transfers(client, "stop")
    assert upload is not None
    route = RoutePoll(systemd)
    started = time.time()
    done, returned = ober(client, "--json stop --timeout 60")
    gone = route.close()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    stopping = journal_time(client, "Stopping ober-http.service")
    stopped = journal_time(client, "Stopped ober-http.service")
    (get_code, get_status), (put_code, put_status) = download.result(), upload.result()
    watcher.join(10)
    print(
        f"route gone {gone - started:.2f}s after `ober stop` began, HAProxy soft stop at {stopping - started:.2f}s, "
        f"idle keep-alive closed at {idle_closed[0] - started:.2f}s, download done {download.ended - started:.2f}s, "
        f"upload {upload.ended - started:.2f}s, HAProxy gone {stopped - started:.2f}s, ober stop returned "
        f"{returned - started:.2f}s; {report}"
    )
    # Withdrawn first: the router's kernel route lost the node before systemd began stopping HAProxy.
    assert report["withdrawn"] is True and 0 < gone < stopping
    # Both transfers were still running when HAProxy began stopping, and both completed in full.
    assert download.ended > stopping and upload.ended > stopping
    assert (get_code, get_status) == (0, "200")
    assert sha256(client.files / "download-stop.bin") == client.download_sha256
    assert (put_code, put_status) == (0, "200")
    assert uploaded_sha256(client, "stop") == client.upload_sha256
    # HAProxy waited for them, and so did `ober stop`; nothing was cut.
    assert report["in_flight"] >= 2 and report["sessions_left"] == 0
    assert stopped >= max(download.ended, upload.ended) - 0.5  # journal seconds vs curl's exit, same clock
    assert returned >= max(download.ended, upload.ended)
    # The idle keep-alive connection was closed when the soft stop began (the client reconnects elsewhere),
    # not held open until the end (journald stamps a line when it receives it: a few ms late).
    assert idle_closed and stopping - 0.2 <= idle_closed[0] < download.ended
    assert systemd.active("ober-http") == "inactive" and systemd.active("ober-bgp") == "inactive"
    assert refused(client) == 7  # curl: connection refused
    ober(client, "start", timeout=60)
    systemd.wait_hops([NODE])


def test_drain_wait_withdraws_and_returns_when_in_flight_requests_completed(client: Client) -> None:
    systemd = client.systemd
    systemd.wait_hops([NODE])
    download, upload = start_transfers(client, "drain")
    assert upload is not None
    route = RoutePoll(systemd)
    started = time.time()
    done, returned = ober(client, "--json drain --wait --timeout 60 --reason inflight-test")
    gone = route.close()
    (get_code, get_status), (put_code, put_status) = download.result(), upload.result()
    print(
        f"route gone {gone - started:.2f}s after `ober drain --wait` began, download done "
        f"{download.ended - started:.2f}s, upload {upload.ended - started:.2f}s, drain returned "
        f"{returned - started:.2f}s"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sessions_left"] == 0
    assert 0 < gone < download.ended and gone < upload.ended  # withdrawn while both were in flight
    assert (get_code, get_status) == (0, "200")
    assert sha256(client.files / "download-drain.bin") == client.download_sha256
    assert (put_code, put_status) == (0, "200")
    assert uploaded_sha256(client, "drain") == client.upload_sha256
    assert returned >= max(download.ended, upload.ended)
    assert systemd.active("ober-http") == "active"  # a drain withdraws; HAProxy keeps running
    ober(client, "undrain")
    systemd.wait_hops([NODE])


def test_plain_systemctl_stop_is_a_soft_stop_too(client: Client) -> None:
    # What a reboot or an operator's `systemctl stop` does: the unit's stop signal is HAProxy's soft stop, so the
    # request in flight finishes (SIGTERM, the default, would be a hard stop and cut it).
    systemd = client.systemd
    systemd.wait_hops([NODE])
    download, _ = start_transfers(client, "systemctl")
    stopping = client.systemd.node.run("systemctl stop ober-http", timeout=120, check=False)
    code, status = download.result()
    assert stopping.returncode == 0, stopping.stderr
    assert (code, status) == (0, "200")
    assert sha256(client.files / "download-systemctl.bin") == client.download_sha256
    assert systemd.active("ober-http") == "inactive" and systemd.hops() == []
    ober(client, "start", timeout=60)
    systemd.wait_hops([NODE])


def test_drain_quiesce_withdraws_at_the_first_moment_no_request_is_in_flight(client: Client) -> None:
    # What `ober fleet restart --full` does before it withdraws a node: a withdraw moves the node's open
    # connections elsewhere (the router re-hashes them), cutting any request in flight on them.
    try:
        _quiesce(client)
    finally:
        ober(client, "undrain")  # the next test needs the node in service, whatever failed here
        client.systemd.wait_hops([NODE])


def _quiesce(client: Client) -> None:
    systemd = client.systemd
    systemd.wait_hops([NODE])
    idle = keep_alive_connection(client)  # an SDK's pooled connection: not a request in flight, must not hold it up
    download, _ = start_transfers(client, "quiesce")
    route = RoutePoll(systemd)
    started = time.time()
    done, returned = ober(client, "--json drain --quiesce 60 --reason quiesce-test")
    systemd.wait_hops([])
    gone = route.close()
    code, status = download.result()
    print(
        f"download done {download.ended - started:.2f}s after `ober drain --quiesce` began, route gone "
        f"{gone - started:.2f}s ({gone - download.ended:+.3f}s after the download), drain returned "
        f"{returned - started:.2f}s: {done.stdout.strip()}"
    )
    assert done.returncode == 0, done.stderr
    quiet = json.loads(done.stdout)["quiesce"]
    assert quiet["in_flight"] == 0
    # It waited while the node was sending the download (seconds of it; an idle keep-alive connection open all
    # along did not count), and the route stayed all that time. The node is done before curl is: curl's rate
    # limit leaves the last megabytes acknowledged in the client's receive buffer, which no withdraw can cut.
    assert quiet["waited"] >= 3.0
    assert gone - started >= quiet["waited"]
    assert (code, status) == (0, "200")
    idle.close()
    ober(client, "undrain")
    systemd.wait_hops([NODE])

    # No quiet moment within --quiesce: it withdraws anyway and says how many requests were in flight.
    download, _ = start_transfers(client, "busy")
    done, _ = ober(client, "--json drain --quiesce 1 --reason quiesce-test")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["quiesce"]["in_flight"] == 1
    systemd.wait_hops([])
    assert download.process.poll() is None  # withdrawn while it ran (this client's path does not follow BGP)
    assert download.result() == (0, "200")


def test_stop_past_the_drain_timeout_cuts_and_says_how_many(client: Client) -> None:
    systemd = client.systemd
    systemd.wait_hops([NODE])
    # The node's own drain timeout, 6 s, also bounds systemd's wait for the soft stop (plus a 30 s margin).
    done, _ = ober(client, "config --set health.drain_timeout=6s")
    assert done.returncode == 0, done.stderr
    unit = systemd.node.run("systemctl show -p TimeoutStopUSec --value ober-http").stdout.strip()
    assert unit == "36s"
    systemd.wait_hops([NODE])
    # 64 MiB at 2 MiB/s would take 32 s.
    download, _ = start_transfers(client, "cut", download_rate="2M")
    started = time.time()
    done, returned = ober(client, "stop")
    code, _ = download.result()
    print(f"ober stop returned {returned - started:.2f}s: {done.stdout.strip()!r}; download curl exit {code}")
    assert done.returncode == 0, done.stderr
    assert "hard stop cuts 1 client sessions" in done.stdout and "cutting 1 client sessions" in done.stdout
    assert returned - started < 15
    assert code != 0 and (client.files / "download-cut.bin").stat().st_size < DOWNLOAD_BYTES
    assert systemd.active("ober-http") == "inactive"
    assert refused(client) == 7
    ober(client, "start", timeout=60)
    systemd.wait_hops([NODE])
    done, _ = ober(client, "config --set health.drain_timeout=5m")
    assert done.returncode == 0, done.stderr
