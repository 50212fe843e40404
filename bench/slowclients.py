"""Slow clients against one node: what a slowloris-style client does to a boto3 workload, with and without
``haproxy.per_source`` (issue 10, item 7).

What runs (root; namespaces of a lab, stopped by PID at the end):

* a BIRD router; one process node (HAProxy + ExaBGP + ``ober health``, as ``ober.lab.procnode`` runs them) announcing
  one VIP (198.51.100.10) whose backend group is a real Ceph RGW cluster (two radosgw) on its own segment;
* a **client** segment (100.64.10.2): the lab's boto3 load (``ober.lab.s3load``: small PUT/GET pairs and 16 MiB
  multipart uploads, over TLS through the router's route to the VIP);
* an **attacker** segment (100.64.11.2): one address opening ``--connections`` connections to the VIP's port 80,
  each sending the start of a request and then one more header line every ``--trickle`` seconds, never finishing
  it (the classic slowloris). HAProxy cuts each after ``timeout http-request`` (30 s); the attacker opens another at
  once, so it keeps holding as many as HAProxy lets it.

The node's ``haproxy.maxconn`` is ``--maxconn`` (5000: the lab caps file descriptors at 20000). Three phases, each
with the same boto3 load for ``--seconds``, the config switched by a HAProxy reload (``-W`` master, SIGUSR2):

1. no attacker (per_source on, its default: 1000 open connections per client address);
2. the attacker, ``per_source.connections: 0`` (off: how ober behaved before);
3. the attacker, per_source on (default).

Each row: what the attacker held (HAProxy's frontend sessions, sampled), how many of its connection attempts HAProxy
refused, what the boto3 client saw (requests, retries, failures; requests per second), what new clients saw (a curl
with a new connection every 0.25 s, 5 s at most: answered or not, how long), and whether the router kept the
node's route. On 2 shared cores the rates are rough; the difference between the rows is what to read.

Usage (root): ``python bench/slowclients.py [--seconds 30] [--connections 6000] [--json]``. Prints numbers,
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ober.config import PER_SOURCE_CONNECTIONS
from ober.errors import OberError
from ober.haproxy_runtime import snapshot
from ober.lab.netns import Lab, add_address, run_in, stop_process
from ober.lab.procnode import ProcessNode, lab_config, start_node, write_install
from ober.lab.rgw import start_cluster
from ober.lab.router import start_router
from ober.lab.s3load import LoadConfig, LoadResult, S3Load
from ober.lab.site import CLIENT_SEGMENT, RGWS, SEGMENTS, VIP_A, node_address, node_data, site_certificate
from ober.render import paths

ATTACKER_SEGMENT = 11
GROUP = "ceph-a"
SETTLE = 3.0  # after a reload, for the old worker's connections to close

# The attacker: one asyncio task per connection, each reconnecting as soon as HAProxy closes it. It counts the
# connections it held and those refused or reset before it could send anything.
ATTACKER = r"""
import asyncio, json, resource, signal, sys, time
vip, count, trickle, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
# Connections closed by HAProxy within a second, before any answer, were refused (per_source's reject: the kernel
# completes the handshake, HAProxy closes at once); the others were held until `timeout http-request` or the end.
stats = {"attempts": 0, "refused": 0, "held": 0}
stop = asyncio.Event()

async def one(n):
    while not stop.is_set():
        stats["attempts"] += 1
        started = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 80), 10)
        except (OSError, asyncio.TimeoutError):
            stats["refused"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            writer.write(f"PUT /slow/{n} HTTP/1.1\r\nHost: s3.lab.test\r\n".encode())
            await writer.drain()
            while not stop.is_set():
                try:
                    await asyncio.wait_for(reader.read(1), trickle)
                    break  # closed, or answered (408) and then closed
                except asyncio.TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
        except OSError:
            pass
        writer.close()
        if time.monotonic() - started < 1.0 and not stop.is_set():
            stats["refused"] += 1
            await asyncio.sleep(0.5)  # a real attacker would retry at once; this keeps the lab's CPU for the rest
        else:
            stats["held"] += 1

async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []
    for n in range(count):
        tasks.append(asyncio.create_task(one(n)))
        if n % 200 == 199:
            await asyncio.sleep(0.05)  # a ramp, not one burst of SYNs
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with open(out, "w") as handle:
        json.dump(stats, handle)

asyncio.run(main())
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="boto3 load per phase (default 30)")
    parser.add_argument("--connections", type=int, default=6000, help="the attacker's connections (default 6000)")
    parser.add_argument("--trickle", type=float, default=10.0, help="seconds between its header lines (default 10)")
    parser.add_argument("--maxconn", type=int, default=5000, help="the node's haproxy.maxconn (default 5000)")
    parser.add_argument("--workers", type=int, default=4, help="boto3 client threads (default 4)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def node_config_data(pem: Path, maxconn: int, per_source: int) -> dict[str, Any]:
    """One VIP on one RGW group, the given maxconn and per-source limit."""
    data = node_data("n1", node_address(1), pem, "500ms")
    data["vips"] = [{"name": "s3-a", "address": VIP_A, "backend": GROUP}]
    data["backends"] = {GROUP: data["backends"][GROUP]}
    data["haproxy"] = {"maxconn": maxconn, "per_source": {"connections": per_source}}
    return data


def reload(node: ProcessNode, data: dict[str, Any]) -> None:
    """Render the node again with ``data`` and have its HAProxy master reload (hitless, as ober config does)."""
    config = lab_config(data, Path(node.config.install_path))
    write_install(config, {})
    node.haproxy.send_signal(signal.SIGUSR2)
    time.sleep(SETTLE)


def frontend_sessions(node: ProcessNode) -> int:
    """The VIP frontend's current sessions (HAProxy's own count)."""
    try:
        return snapshot(paths(node.config)["admin_socket"], 2.0).sessions.get("fe_s3-a", 0)
    except OberError:
        return -1


class Sampler:
    """Samples the frontend's sessions and the router's next-hops for the VIP while a phase runs."""

    def __init__(self, node: ProcessNode, hops: Any) -> None:
        self.node, self.hops = node, hops
        self.sessions: list[int] = []
        self.routed: list[bool] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.sessions.append(frontend_sessions(self.node))
            self.routed.append(bool(self.hops(VIP_A)))

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


class NewClients:
    """A new client every 0.25 s (curl, a new TCP and TLS connection each, 5 s at most): what a client that is not
    already connected gets while the phase runs. boto3 keeps its connections open, so it notices an exhausted node
    only when it needs a new one."""

    def __init__(self, ns: str, ca: Path) -> None:
        self.ns, self.ca = ns, ca
        self.times: list[float] = []
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url = f"https://{VIP_A}/"
        argv = [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "--cacert",
            str(self.ca),
            "-w",
            "%{http_code} %{time_total}",
        ]
        while not self.stop.wait(0.25):
            done = run_in(self.ns, [*argv, url], timeout=30, check=False)
            code, _, took = done.stdout.partition(" ")
            if done.returncode == 0 and code.startswith(("2", "4")):  # RGW's answer, whatever it is
                self.times.append(float(took))
            else:
                self.failed += 1

    def __enter__(self) -> NewClients:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def summary(self) -> dict[str, Any]:
        """How many got an answer, how many did not within 5 s, and how long the answered ones took."""
        times = sorted(self.times)
        return {
            "new_clients": len(times) + self.failed,
            "new_clients_failed": self.failed,
            "new_client_median_s": round(statistics.median(times), 3) if times else None,
            "new_client_p95_s": round(times[int(0.95 * (len(times) - 1))], 3) if times else None,
        }


def run_phase(
    lab: Lab, name: str, args: argparse.Namespace, node: ProcessNode, site: dict[str, Any], attack: bool
) -> dict[str, Any]:
    """One phase: the attacker (if any) up to its plateau, then the boto3 load for ``args.seconds``."""
    attacker = None
    out = lab.path("attacker") / f"{name}.json"
    if attack:
        script = lab.path("attacker") / "slowloris.py"
        script.write_text(ATTACKER)
        argv = [sys.executable, str(script), VIP_A, str(args.connections), str(args.trickle), str(out)]
        attacker = lab.spawn(site["attacker_ns"], argv, log=lab.path("attacker") / f"{name}.log")
        # Let it ramp up to what HAProxy lets it hold.
        deadline = time.monotonic() + 30
        last = -1
        while time.monotonic() < deadline:
            time.sleep(2)
            now = frontend_sessions(node)
            if now == last:
                break
            last = now
    load = S3Load(
        site["client_ns"],
        LoadConfig(f"https://{VIP_A}", str(site["ca"]), site["access_key"], site["secret_key"], workers=args.workers),
        lab.path("load", name),
    )
    result = LoadResult()
    note = ""
    with Sampler(node, site["hops"]) as sampler, NewClients(site["client_ns"], site["ca"]) as newcomers:
        try:
            load.start(ready_timeout=max(60.0, args.seconds))
            time.sleep(args.seconds)
            result = load.stop()
        except OberError as exc:
            note = f"no request got through: {str(exc)[:120]}"
            result = LoadResult()
    held = [value for value in sampler.sessions if value >= 0]
    attacker_stats: dict[str, int] = {}
    if attacker is not None:
        stop_process(attacker, timeout=30)
        try:
            attacker_stats = json.loads(out.read_text())
        except (OSError, ValueError):
            attacker_stats = {}
    return {
        "phase": name,
        "attacker": attack,
        "frontend_sessions_median": statistics.median(held) if held else None,
        "frontend_sessions_max": max(held) if held else None,
        "attacker_attempts": attacker_stats.get("attempts"),
        "attacker_refused": attacker_stats.get("refused"),
        "requests": result.sent,
        "retried": result.retried_requests,
        "failed": result.failed,
        "seconds": result.seconds,
        "req_per_s": round(result.sent / result.seconds, 1) if result.seconds else 0.0,
        "route_kept": all(sampler.routed) if sampler.routed else None,
        **newcomers.summary(),
        "errors": result.errors[:3],
        "note": note,
    }


def run_bench(lab: Lab, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bring the node, its RGW, the client and the attacker up; run the three phases."""
    address = node_address(1)
    router = start_router(lab, [address], ["198.51.100.0/24"])
    pem, public = site_certificate(lab.path("certs"))
    segment = SEGMENTS[GROUP]
    rgw_ns = router.segment(lab, GROUP, segment)
    for rgw in (*RGWS[GROUP], f"100.64.{segment}.10"):
        add_address(rgw_ns, "lo", f"{rgw}/32")
    cluster = start_cluster(rgw_ns, lab.path(GROUP), list(RGWS[GROUP]), f"100.64.{segment}.10")
    lab.cleanups.append(cluster.stop)
    client_ns = router.segment(lab, "client", CLIENT_SEGMENT)
    attacker_ns = router.segment(lab, "slow", ATTACKER_SEGMENT)
    on = node_config_data(pem, args.maxconn, min(PER_SOURCE_CONNECTIONS, args.maxconn))
    off = node_config_data(pem, args.maxconn, 0)
    node = start_node(lab, router, "n1", address, on, {})
    deadline = time.monotonic() + 90
    while router.next_hops(VIP_A) != [address]:
        if time.monotonic() > deadline:
            raise OberError(f"{VIP_A} is not announced: sessions {router.bgp_sessions()}")
        time.sleep(0.2)
    site = {
        "client_ns": client_ns,
        "attacker_ns": attacker_ns,
        "ca": public,
        "access_key": cluster.access_key,
        "secret_key": cluster.secret_key,
        "hops": router.next_hops,
    }
    rows = [run_phase(lab, "no attacker, per_source 1000", args, node, site, attack=False)]
    reload(node, off)
    rows.append(run_phase(lab, "slowloris, per_source off", args, node, site, attack=True))
    reload(node, on)
    rows.append(run_phase(lab, "slowloris, per_source 1000", args, node, site, attack=True))
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The human table."""
    print(
        f"slow clients: one node (maxconn {args.maxconn}), one RGW group of 2; attacker {args.connections} "
        f"connections from one address (a header line every {args.trickle:g}s); boto3 {args.workers} threads over "
        f"TLS for {args.seconds:g}s per phase"
    )
    print(
        f"{'phase':<30} {'held (median/max)':>17} {'refused':>8} {'requests':>9} {'req/s':>7} {'retried':>8} "
        f"{'failed':>7} {'new clients: ok/failed':>22} {'median/p95 s':>13} {'route':>6}"
    )
    for row in rows:
        held = f"{row['frontend_sessions_median']}/{row['frontend_sessions_max']}"
        refused = "-" if row["attacker_refused"] is None else str(row["attacker_refused"])
        route = "kept" if row["route_kept"] else "lost"
        newcomers = f"{row['new_clients'] - row['new_clients_failed']}/{row['new_clients_failed']}"
        times = f"{row['new_client_median_s']}/{row['new_client_p95_s']}"
        print(
            f"{row['phase']:<30} {held:>17} {refused:>8} {row['requests']:>9} {row['req_per_s']:>7} "
            f"{row['retried']:>8} {row['failed']:>7} {newcomers:>22} {times:>13} {route:>6}"
        )
        for line in ([row["note"]] if row["note"] else []) + row["errors"]:
            print(f"    {line}")


def main() -> None:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the slow-client benchmark needs root (network namespaces); fix: run it as root")
    try:
        with Lab() as lab:
            rows = run_bench(lab, args)
    except (OberError, OSError, subprocess.SubprocessError) as exc:
        sys.exit(f"error: {exc}")
    if args.json:
        print(json.dumps({"setup": vars(args), "rows": rows}, indent=2))
    else:
        print_table(rows, args)


if __name__ == "__main__":
    main()
