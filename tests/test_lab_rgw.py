"""A real Ceph RGW group (ober.lab.rgw): two radosgw on one memstore cluster, inside a private namespace.

The lab tests start a fresh cluster per test (it comes up in a few seconds) in a fresh namespace, and talk S3 to it
with boto3 from a thread that has joined the namespace (`in_netns`): its addresses are unreachable from the host's
namespace, and nothing of the lab is ever put there. They need root and Debian 12's Ceph: skipped without them,
failed with ``OBER_REQUIRE_LAB=1``.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ober.errors import OberError
from ober.facts import find_program
from ober.lab.netns import Lab, add_address, run
from ober.lab.rgw import (
    INSTALL_HINT,
    Layout,
    RgwCluster,
    http_get,
    in_netns,
    missing_programs,
    render_ceph_conf,
    start_cluster,
)
from tests.conftest import require

MON = "100.64.1.10"
RGWS = ("100.64.1.11", "100.64.1.12")
BUCKET = "ober-lab"
PAYLOAD = os.urandom(1024 * 1024)
THREAD_NETNS = Path("/proc/thread-self/ns/net")


def lab_prerequisites() -> None:
    require(os.geteuid() == 0, "the RGW lab needs root (network namespaces)")
    require(find_program("ip") is not None, "iproute2 is not installed")
    missing = missing_programs()
    require(not missing, f"Ceph is not installed ({', '.join(missing)}): {INSTALL_HINT}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab whose namespace ``rgw`` holds the mon's and both radosgw's addresses on ``lo``.

    Closing the lab deletes the namespace (killing by PID anything still inside), even when the test failed.
    """
    lab_prerequisites()
    with Lab() as lab:
        ns = lab.netns("rgw")
        for address in (MON, *RGWS):
            add_address(ns, "lo", f"{address}/32")
        yield lab


@pytest.fixture
def cluster(lab: Lab, tmp_path: Path) -> Iterator[RgwCluster]:
    """A running cluster in the lab's namespace; its work directory (logs) stays in pytest's tmp_path."""
    with start_cluster(lab.prefix + "rgw", tmp_path / "ceph", list(RGWS), MON) as cluster:
        print(f"bring-up {cluster.bringup_seconds:.1f}s: {cluster.timings}")
        yield cluster


def s3(cluster: RgwCluster, index: int, *, secret: str | None = None) -> Any:
    """A boto3 S3 client for radosgw ``index``; use it only through `call`, from inside the namespace."""
    return boto3.client(
        "s3",
        endpoint_url=cluster.endpoints[index],
        aws_access_key_id=cluster.access_key,
        aws_secret_access_key=secret or cluster.secret_key,
        region_name="us-east-1",
        # One attempt: a refused or failed request must show, not be retried on the other's behalf.
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=3, read_timeout=20),
    )


def call(cluster: RgwCluster, client: Any, method: str, **kwargs: Any) -> Any:
    """``client.method(**kwargs)`` from inside the cluster's namespace."""
    return in_netns(cluster.netns, lambda: getattr(client, method)(**kwargs))


def read(cluster: RgwCluster, index: int, key: str) -> bytes:
    """An object's body, read through radosgw ``index``."""

    def get() -> bytes:
        body: bytes = s3(cluster, index).get_object(Bucket=BUCKET, Key=key)["Body"].read()
        return body

    return in_netns(cluster.netns, get)


def bound(address: str, port: int) -> socket.socket:
    """A TCP socket bound to ``address``:``port`` that never listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, port))
    return sock


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


# --- against a real cluster ---------------------------------------------------------------------------------------


@pytest.mark.lab
def test_anonymous_get_of_the_root_answers_200_on_each_rgw(cluster: RgwCluster) -> None:
    # HAProxy's health check is exactly this request: an unsigned GET / (an empty bucket list for "anonymous").
    for endpoint in cluster.endpoints:
        status, body = http_get(cluster.netns, endpoint)
        assert status == 200, body
        assert b"<ListAllMyBucketsResult" in body
        assert b"<ID>anonymous</ID>" in body


@pytest.mark.lab
def test_an_object_written_through_one_rgw_is_read_through_the_other(cluster: RgwCluster) -> None:
    call(cluster, s3(cluster, 0), "create_bucket", Bucket=BUCKET)
    call(cluster, s3(cluster, 0), "put_object", Bucket=BUCKET, Key="one", Body=PAYLOAD)

    assert hashlib.sha256(read(cluster, 1, "one")).digest() == hashlib.sha256(PAYLOAD).digest()
    listed = call(cluster, s3(cluster, 1), "list_objects_v2", Bucket=BUCKET)
    assert [item["Key"] for item in listed["Contents"]] == ["one"]
    # Both radosgw wrote to the one cluster's pools (RGW made the data pool on the first PUT).
    assert "default.rgw.buckets.data" in cluster.ceph("osd", "pool", "ls").split()


@pytest.mark.lab
def test_a_wrong_secret_key_gets_403_signature_does_not_match(cluster: RgwCluster) -> None:
    call(cluster, s3(cluster, 0), "create_bucket", Bucket=BUCKET)
    for index in range(len(cluster.endpoints)):
        with pytest.raises(ClientError) as excinfo:
            call(cluster, s3(cluster, index, secret="not-the-secret"), "list_objects_v2", Bucket=BUCKET)
        assert error_of(excinfo) == (403, "SignatureDoesNotMatch")


@pytest.mark.lab
def test_a_stopped_rgw_refuses_while_the_other_serves_and_it_comes_back(cluster: RgwCluster) -> None:
    call(cluster, s3(cluster, 0), "create_bucket", Bucket=BUCKET)
    call(cluster, s3(cluster, 0), "put_object", Bucket=BUCKET, Key="kept", Body=PAYLOAD)
    pid = cluster.pids["client.rgw.0"]

    cluster.stop_rgw(0)
    cluster.stop_rgw(0)  # already stopped: nothing to do
    assert "client.rgw.0" not in cluster.pids
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ConnectionRefusedError):
        http_get(cluster.netns, cluster.endpoints[0])
    assert read(cluster, 1, "kept") == PAYLOAD
    call(cluster, s3(cluster, 1), "put_object", Bucket=BUCKET, Key="while-down", Body=b"x")

    cluster.start_rgw(0)
    assert http_get(cluster.netns, cluster.endpoints[0])[0] == 200
    assert read(cluster, 0, "kept") == PAYLOAD
    assert read(cluster, 0, "while-down") == b"x"


@pytest.mark.lab
def test_stop_ends_every_daemon_and_is_idempotent(cluster: RgwCluster) -> None:
    pids = cluster.pids
    assert sorted(pids) == ["client.rgw.0", "client.rgw.1", "mon.a", "osd.0"]

    cluster.stop()
    cluster.stop()

    assert cluster.pids == {}
    assert [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()] == []
    assert run(["ip", "netns", "pids", cluster.netns]).stdout.split() == []
    with pytest.raises(OberError, match="is stopped"):
        cluster.start_rgw(0)


@pytest.mark.lab
def test_a_port_already_answering_is_refused_before_anything_starts(cluster: RgwCluster, tmp_path: Path) -> None:
    # A second cluster in the same namespace, on its own mon address but the first one's radosgw ports: the first
    # cluster's radosgw would answer the second one's readiness checks.
    add_address(cluster.netns, "lo", "100.64.1.20/32")
    running = set(cluster.pids.values())

    with pytest.raises(OberError, match=r"already listens on 100\.64\.1\.11:7480"):
        start_cluster(cluster.netns, tmp_path / "second", list(RGWS), "100.64.1.20")

    assert not (tmp_path / "second").exists()
    assert {int(pid) for pid in run(["ip", "netns", "pids", cluster.netns]).stdout.split()} == running


@pytest.mark.lab
def test_a_radosgw_that_cannot_bind_is_reported_with_its_log_line(lab: Lab, tmp_path: Path) -> None:
    ns = lab.prefix + "rgw"
    # Bound but not listening: connections are refused (so the port looks free) yet radosgw cannot bind it.
    squatter = in_netns(ns, lambda: bound(RGWS[1], 7480))
    try:
        with pytest.raises(OberError) as excinfo:
            start_cluster(ns, tmp_path / "ceph", list(RGWS), MON, timeout=60)
    finally:
        squatter.close()

    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("client.rgw.1 failed while starting client.rgw.1 on http://100.64.1.12:7480: "), message
    # Caught either by its log line, or by its exit status (an errno) when it exited before its log was written.
    assert (
        "failed to bind address 100.64.1.12:7480: Address already in use" in message
        or "exited with status 98 (Address already in use)" in message
    ), message
    # Whether it lingered or exited, the failed bring-up stopped it, and everything else.
    assert run(["ip", "netns", "pids", ns]).stdout.split() == []


@pytest.mark.lab
def test_in_netns_runs_the_call_in_the_namespace_and_only_there(lab: Lab) -> None:
    ns = lab.prefix + "rgw"
    target = Path("/run/netns") / ns

    inside = in_netns(ns, lambda: THREAD_NETNS.stat().st_ino)

    assert inside == target.stat().st_ino
    assert THREAD_NETNS.stat().st_ino != inside
    with pytest.raises(ZeroDivisionError):
        in_netns(ns, lambda: 1 // 0)


# --- without root ---------------------------------------------------------------------------------------------------


def test_ceph_conf_keeps_every_path_in_the_work_directory(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    text = render_ceph_conf(layout, "00000000-0000-0000-0000-000000000001", MON, RGWS, memstore_bytes=1 << 30)
    conf = configparser.RawConfigParser(strict=True)
    conf.read_string(text)

    assert conf.sections() == ["global", "mon.a", "osd.0", "client.rgw.0", "client.rgw.1"]
    for key in ("auth cluster required", "auth service required", "auth client required"):
        assert conf["global"][key] == "none"
    assert conf["global"]["osd objectstore"] == "memstore"
    assert conf["global"]["memstore device bytes"] == str(1 << 30)
    assert conf["global"]["osd pool default size"] == "1"
    assert conf["global"]["mon allow pool size one"] == "true"
    for index, address in enumerate(RGWS):
        section = conf[f"client.rgw.{index}"]
        assert section["ms mon client mode"] == "crc"
        # Configured as ober's README tells operators to configure RGW behind ober.
        assert section["rgw frontends"] == f"beast endpoint={address}:7480 tcp_nodelay=1"
        assert section["rgw trust forwarded https"] == "true"
        assert "rgw dns name" not in section
    paths = [value for name in conf.sections() for value in conf[name].values() if "/" in value]
    assert paths
    for value in paths:
        assert value.startswith((str(tmp_path), "$run_dir/")), value
    settings = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    for system in ("/etc/ceph", "/var/lib/ceph", "/var/run/ceph", "/run/ceph", "/var/log/ceph"):
        assert system not in settings


def test_ceph_conf_with_radosgws_own_tls_and_dns_name(tmp_path: Path) -> None:
    pem = tmp_path / "s3.pem"
    text = render_ceph_conf(Layout(tmp_path), "fsid", MON, RGWS, tls_pem=pem, dns_name="s3.example.test")
    conf = configparser.RawConfigParser(strict=True)
    conf.read_string(text)
    for index, address in enumerate(RGWS):
        section = conf[f"client.rgw.{index}"]
        assert section["rgw frontends"] == (
            f"beast endpoint={address}:7480 ssl_endpoint={address}:7443 ssl_certificate={pem} tcp_nodelay=1"
        )
        assert section["rgw dns name"] == "s3.example.test"


def test_ceph_conf_is_deterministic(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    assert render_ceph_conf(layout, "f", MON, RGWS) == render_ceph_conf(layout, "f", MON, RGWS)


@pytest.mark.parametrize(
    ("mon", "rgws", "error"),
    [
        (MON, ["100.64.1.300"], "bad lab address"),
        (MON, [], "no radosgw address"),
        (MON, [MON], "addresses repeat"),
        (MON, [RGWS[0], RGWS[0]], "addresses repeat"),
    ],
)
def test_bad_addresses_are_refused_before_anything_starts(
    tmp_path: Path, mon: str, rgws: list[str], error: str
) -> None:
    with pytest.raises(OberError, match=error):
        start_cluster("ober-no-such-ns", tmp_path / "ceph", rgws, mon)
    assert not (tmp_path / "ceph").exists()


def test_a_missing_namespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OberError, match="namespace ober-no-such-ns does not exist"):
        start_cluster("ober-no-such-ns", tmp_path / "ceph", list(RGWS), MON)
    with pytest.raises(OberError, match="does not exist"):
        in_netns("ober-no-such-ns", lambda: None)
