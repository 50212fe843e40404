"""Data-plane benchmark: one real Ceph RGW behind ober's HAProxy, a cephadm-style HAProxy, or none (issue 5, item 5).

What runs (root, one network namespace, stopped by PID at the end):

* the backend: a real Ceph 16 RGW (``ober.lab.rgw.start_cluster``: one mon, one memstore OSD, **one** radosgw on
  100.64.1.11, beast frontend, plain HTTP on 7480 and TLS on 7443 with the same certificate as the proxies);
* (a) **ober**: HAProxy with the ``haproxy.cfg`` ober renders for a lab node (``ober.lab.site.node_data`` with one
  VIP, 198.51.100.10, and one backend group holding that one radosgw), started as the node would (``haproxy -W``);
* (b) **cephadm reference**: HAProxy with the configuration Ceph's orchestrator writes for an ``ingress`` service in
  front of RGW, on 198.51.100.20 (see below);
* (c) **direct**: the client talks to radosgw itself (its own TLS on 7443 for the TLS rows).

Client: ``wrk`` (Debian's wrk 4.1) in the same namespace, keep-alive connections, a few seconds per cell. wrk
cannot sign S3 requests (SigV4 needs HMAC-SHA256, which wrk's LuaJIT lacks), so the bucket and its two objects are
made ``public-read`` with boto3 first and wrk sends anonymous ``GET /bench/small`` and ``GET /bench/large``; RGW
still does the whole read path (bucket index, ACL check, object read from the OSD). A small Lua ``done`` hook
prints wrk's summary as JSON (requests, bytes, errors, latency percentiles). Every cell is checked: non-2xx
answers and socket errors are counted and shown, and bytes per request must match the object's size.

Everything shares 2 CPU cores (client, proxy, RGW, OSD), so absolute numbers mean little; the ratios (a)/(b) and
(a)/(c) are what to read. Cells are interleaved (each round runs a, b, c back to back, starting with a different
one each round) and each ratio is the median of the per-round ratios, so drift on a shared machine cancels out.
Loopback only: the proxy hop costs what HAProxy costs, not what a wire costs.

**The cephadm reference configuration.** Modelled on Ceph's template
``src/pybind/mgr/cephadm/templates/services/ingress/haproxy.cfg.j2`` (ceph/ceph, commit 0f348682b63f) as rendered
by ``src/pybind/mgr/cephadm/services/ingress.py`` (commit 00d32ab16214) for an RGW backend (``mode http``), with
the spec's defaults (no ``ssl_ciphers``/``ssl_options``/``ssl_dh_param``, ``health_check_interval`` 2s). Its
settings:

* global: ``maxconn 8000``; ``log 127.0.0.1 local2`` (kept: every request is logged by UDP syslog, as there);
  ``stats socket``. Dropped as host matters with no cost per request: ``chroot``, ``pidfile``, ``daemon``.
* defaults: ``mode http``, ``log global``, ``option httplog``, ``option dontlognull``,
  **``option http-server-close``** (the connection to RGW is closed after every response, so each request opens a
  new one), ``option forwardfor except 127.0.0.0/8``, ``option redispatch``, ``retries 3``, ``timeout queue 20s``,
  ``timeout connect 5s``, ``timeout http-request 1s``, ``timeout http-keep-alive 5s``, ``timeout client 30s``,
  ``timeout server 30s``, ``timeout check 5s``, ``maxconn 8000``.
* ``frontend stats`` (its monitor port): ``stats enable``, ``stats uri /stats``, ``stats refresh 10s``,
  ``stats auth``, the Prometheus exporter on ``/metrics``, ``monitor-uri /health``.
* ``frontend frontend``: ``bind VIP:PORT`` or, with a certificate, ``bind VIP:PORT ssl crt haproxy.pem`` (HAProxy's
  default ciphers and TLS versions); ``default_backend backend``. Here both binds run at once (port 80 and 443),
  as two such deployments would.
* ``backend backend``: ``option forwardfor``, ``balance static-rr``, ``option httpchk HEAD / HTTP/1.0``, one
  ``server NAME IP:PORT check weight 100 inter 2s`` per radosgw.

ober's own rendered configuration differs mainly in keeping server connections alive (``http-reuse safe``, no
``http-server-close``) with ``backends.<group>.reuse: auto`` (the default: while radosgw's answers stall ~40 ms on
kept-alive connections, as without ``tcp_nodelay``, requests go with ``Connection: close``; see ober/keepalive.py),
``leastconn``, no per-request log, longer inactivity timeouts, and TLS 1.2+ with AEAD ciphers only (see ``ober
render``). After radosgw is restarted with ``tcp_nodelay`` the benchmark waits ``SETTLE`` seconds: ``auto``
remembers stalls for up to twice its window before it keeps connections alive again.

Usage (root): ``python bench/dataplane.py [--rounds 5] [--seconds 5] [--json]``. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ober.certs import write_pem
from ober.errors import OberError
from ober.facts import find_program
from ober.keepalive import STALL_WINDOW
from ober.lab.netns import Lab, add_address, run, run_in
from ober.lab.procnode import lab_config, write_install
from ober.lab.rgw import RgwCluster, http_get, in_netns, port_refuses, start_cluster
from ober.lab.site import node_data

RGW, MON = "100.64.1.11", "100.64.1.10"
RGW_PORT, RGW_TLS_PORT = 7480, 7443
VIP_OBER, VIP_REF = "198.51.100.10", "198.51.100.20"
REF_MONITOR_PORT = 1967
BUCKET = "bench"
TARGETS = ("ober", "cephadm", "direct")
LABELS = {"ober": "(a) ober", "cephadm": "(b) cephadm", "direct": "(c) direct"}
READY_TIMEOUT = 20.0
NODELAY = {"off": (False,), "on": (True,), "both": (False, True)}
SETTLE = 2 * STALL_WINDOW + 5

# wrk's Lua hook: its summary as one JSON line (%.0f: LuaJIT's %d refuses floats on some builds).
WRK_DONE = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %.0f, "bytes": %.0f, "duration_us": %.0f, "socket_errors": %.0f, "status_errors": %.0f, '
    .. '"p50_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

REFERENCE_CFG = """\
# cephadm ingress reference for the ober data-plane benchmark (see bench/dataplane.py for where each line comes from).
global
    maxconn 8000
    log 127.0.0.1 local2
    stats socket {socket} mode 600 level admin

defaults
    mode http
    log global
    option httplog
    option dontlognull
    option http-server-close
    option forwardfor except 127.0.0.0/8
    option redispatch
    retries 3
    timeout queue 20s
    timeout connect 5s
    timeout http-request 1s
    timeout http-keep-alive 5s
    timeout client 30s
    timeout server 30s
    timeout check 5s
    maxconn 8000

frontend stats
    mode http
    bind 127.0.0.1:{monitor_port}
    stats enable
    stats uri /stats
    stats refresh 10s
    stats auth admin:bench
    http-request use-service prometheus-exporter if {{ path /metrics }}
    monitor-uri /health

frontend frontend
    bind {vip}:80
    default_backend backend

frontend frontend_tls
    bind {vip}:443 ssl crt {pem}
    default_backend backend

backend backend
    option forwardfor
    balance static-rr
    option httpchk HEAD / HTTP/1.0
    server rgw.0 {rgw}:{rgw_port} check weight 100 inter 2s
"""


def ober_haproxy_cfg(lab: Lab, pem: Path) -> str:
    """Render a lab node's files with ober (one VIP, one backend group: the one radosgw); the haproxy.cfg path."""
    data = node_data("bench", "100.64.0.11", pem, "1s")
    data["vips"] = [{"name": "s3", "address": VIP_OBER, "backend": "ceph"}]
    data["backends"] = {"ceph": {**data["backends"]["ceph-a"], "servers": [RGW]}}
    return write_install(lab_config(data, lab.path("ober", "opt", "ober")), {})["haproxy_cfg"]


def reference_haproxy_cfg(lab: Lab, pem: Path) -> str:
    """Write the cephadm-style reference configuration; its path."""
    directory = lab.path("cephadm")
    path = directory / "haproxy.cfg"
    path.write_text(
        REFERENCE_CFG.format(
            socket=directory / "stats.sock",
            monitor_port=REF_MONITOR_PORT,
            vip=VIP_REF,
            pem=pem,
            rgw=RGW,
            rgw_port=RGW_PORT,
        )
    )
    return str(path)


def wait_listening(ns: str, address: str, port: int) -> None:
    """Poll until something accepts connections on ``address``:``port`` inside ``ns``."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not port_refuses(ns, address, port):
            return
        time.sleep(0.1)
    raise OberError(f"nothing listens on {address}:{port} after {READY_TIMEOUT:g}s")


def start_haproxy(lab: Lab, ns: str, cfg: str, name: str, vip: str) -> None:
    """Check ``cfg`` with ``haproxy -c``, then run it (master-worker) in ``ns`` until the lab closes."""
    haproxy = find_program("haproxy") or "haproxy"
    run([haproxy, "-c", "-q", "-f", cfg])
    lab.spawn(ns, [haproxy, "-W", "-f", cfg], log=lab.path(name) / "haproxy.log")
    for port in (80, 443):
        wait_listening(ns, vip, port)


def configure_rgw(cluster: RgwCluster, pem: Path, *, nodelay: bool) -> None:
    """Restart the radosgw with a TLS endpoint too (for (c) over TLS) and beast's ``tcp_nodelay`` on or off."""
    conf = cluster.layout.conf
    plain = f"rgw frontends = beast endpoint={RGW}:{RGW_PORT}"
    lines = conf.read_text().splitlines()
    index = next((i for i, line in enumerate(lines) if line.startswith(plain)), None)
    if index is None:
        raise OberError(f"{conf}: no line {plain!r}", "the lab's ceph.conf template changed: update this benchmark")
    lines[index] = f"{plain} ssl_endpoint={RGW}:{RGW_TLS_PORT} ssl_certificate={pem}" + (
        " tcp_nodelay=1" if nodelay else ""
    )
    conf.write_text("\n".join(lines) + "\n")
    cluster.stop_rgw(0)
    cluster.start_rgw(0)
    wait_listening(cluster.netns, RGW, RGW_TLS_PORT)


def upload(cluster: RgwCluster, sizes: dict[str, int]) -> None:
    """Create the public-read bucket and objects (boto3, signed, from inside the namespace)."""
    import boto3
    from botocore.config import Config

    def put() -> None:
        s3 = boto3.client(
            "s3",
            endpoint_url=cluster.endpoints[0],
            aws_access_key_id=cluster.access_key,
            aws_secret_access_key=cluster.secret_key,
            region_name="us-east-1",
            config=Config(request_checksum_calculation="when_required", s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket=BUCKET, ACL="public-read")
        for key, size in sizes.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size), ACL="public-read")

    in_netns(cluster.netns, put, timeout=120.0)


def urls(scheme: str, key: str) -> dict[str, str]:
    """The URL of object ``key`` through each target."""
    direct = f"http://{RGW}:{RGW_PORT}" if scheme == "http" else f"https://{RGW}:{RGW_TLS_PORT}"
    return {
        "ober": f"{scheme}://{VIP_OBER}/{BUCKET}/{key}",
        "cephadm": f"{scheme}://{VIP_REF}/{BUCKET}/{key}",
        "direct": f"{direct}/{BUCKET}/{key}",
    }


def wrk(ns: str, script: Path, url: str, *, seconds: float, connections: int, threads: int) -> dict[str, Any]:
    """One wrk run inside ``ns``; its summary (see WRK_DONE)."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s"]
    done = run_in(ns, [*argv, "-s", str(script), url], timeout=seconds + 60)
    line = next((line for line in done.stdout.splitlines() if line.startswith("{")), None)
    if line is None:
        raise OberError(f"wrk printed no summary for {url}: {done.stdout.strip()[-300:]}")
    summary: dict[str, Any] = json.loads(line)
    return summary


def cell(summary: dict[str, Any], size: int) -> dict[str, float]:
    """Requests per second and MB/s (10^6 bytes) of one wrk run, with its errors and bytes per request."""
    seconds = summary["duration_us"] / 1e6
    requests = summary["requests"]
    return {
        "req_s": requests / seconds,
        "mb_s": summary["bytes"] / seconds / 1e6,
        "errors": summary["socket_errors"] + summary["status_errors"],
        "bytes_per_request": summary["bytes"] / requests if requests else 0.0,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "object_bytes": size,
    }


def serving(ns: str, small: int) -> list[str]:
    """What is wrong with each target's anonymous plain-HTTP GET of the small object ([] when all serve it).

    TLS is checked by wrk's error counts.
    """
    problems = []
    for target, url in urls("http", "small").items():
        parts = urlsplit(url)
        # http_get's endpoint defaults to RGW's port: say the port.
        endpoint = f"http://{parts.hostname}:{parts.port or 80}"
        try:
            status, body = http_get(ns, endpoint, parts.path, timeout=5.0)
        except OSError as exc:
            problems.append(f"{target}: GET {url}: {exc}")
            continue
        if status != 200 or len(body) != small:
            problems.append(f"{target}: GET {url} gave {status} with {len(body)} bytes, expected 200 with {small}")
    return problems


def wait_serving(ns: str, small: int) -> None:
    """Poll until every target serves the small object."""
    deadline = time.monotonic() + READY_TIMEOUT
    while problems := serving(ns, small):
        if time.monotonic() > deadline:
            raise OberError("; ".join(problems))
        time.sleep(0.2)


def measure(ns: str, script: Path, args: argparse.Namespace, *, nodelay: bool) -> list[dict[str, Any]]:
    """Every (object, scheme, target) cell, ``args.rounds`` times, interleaved; one row per (object, scheme)."""
    tests = [
        ("small GET req/s", "small", args.small_bytes, args.small_connections, "req_s"),
        ("large GET MB/s", "large", args.large_bytes, args.large_connections, "mb_s"),
    ]
    rows = []
    for title, key, size, connections, metric in tests:
        for scheme in ("http", "https"):
            where = urls(scheme, key)
            runs: dict[str, list[dict[str, float]]] = {target: [] for target in TARGETS}
            for round_number in range(args.rounds):
                shift = round_number % len(TARGETS)
                for target in TARGETS[shift:] + TARGETS[:shift]:
                    summary = wrk(
                        ns, script, where[target], seconds=args.seconds, connections=connections, threads=args.threads
                    )
                    runs[target].append(cell(summary, size))
            rows.append(row(title, scheme, metric, runs, args.rounds))
            rows[-1]["rgw_tcp_nodelay"] = nodelay
    return rows


def row(title: str, scheme: str, metric: str, runs: dict[str, list[dict[str, float]]], rounds: int) -> dict[str, Any]:
    """Medians per target and the medians of the per-round ratios a/b and a/c."""
    values = {target: [run[metric] for run in runs[target]] for target in TARGETS}
    ratio_ab = [a / b for a, b in zip(values["ober"], values["cephadm"], strict=True) if b]
    ratio_ac = [a / c for a, c in zip(values["ober"], values["direct"], strict=True) if c]
    return {
        "test": title,
        "scheme": scheme,
        "metric": metric,
        "median": {target: statistics.median(values[target]) for target in TARGETS},
        "runs": values,
        "errors": {target: sum(run["errors"] for run in runs[target]) for target in TARGETS},
        "p99_ms": {target: statistics.median(run["p99_ms"] for run in runs[target]) for target in TARGETS},
        "bytes_per_request": {
            target: statistics.median(r["bytes_per_request"] for r in runs[target]) for target in TARGETS
        },
        "a_over_b": statistics.median(ratio_ab) if ratio_ab else None,
        "a_over_c": statistics.median(ratio_ac) if ratio_ac else None,
        "rounds": rounds,
    }


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The human table."""
    print(
        f"data plane: one Ceph 16 RGW (memstore) on loopback, wrk {args.threads} threads, "
        f"{args.small_connections} connections for {args.small_bytes} B objects, {args.large_connections} for "
        f"{args.large_bytes // (1 << 20)} MiB; {args.rounds} rounds x {args.seconds:g} s, medians"
    )
    head = f"{'rgw nodelay':<11} {'test':<16} {'scheme':<6} " + " ".join(f"{LABELS[t]:>12}" for t in TARGETS)
    print(f"{head} {'a/b':>6} {'a/c':>6}  errors a/b/c")
    for item in rows:
        cells = " ".join(f"{item['median'][t]:>12.1f}" for t in TARGETS)
        ratios = " ".join(f"{r:>6.2f}" if r is not None else f"{'-':>6}" for r in (item["a_over_b"], item["a_over_c"]))
        errors = "/".join(str(int(item["errors"][t])) for t in TARGETS)
        nodelay = "on" if item["rgw_tcp_nodelay"] else "off"
        print(f"{nodelay:<11} {item['test']:<16} {item['scheme']:<6} {cells} {ratios}  {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each cell, interleaved (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk duration per cell (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--small-bytes", type=int, default=4096)
    parser.add_argument("--small-connections", type=int, default=16)
    parser.add_argument("--large-bytes", type=int, default=16 << 20)
    parser.add_argument("--large-connections", type=int, default=4)
    parser.add_argument(
        "--rgw-tcp-nodelay",
        choices=sorted(NODELAY),
        default="both",
        help="radosgw's beast tcp_nodelay: off (Ceph's default), on, or both, one after the other (default both)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the data-plane benchmark needs root (network namespaces); fix: run it as root")
    for program in ("wrk", "haproxy", "radosgw"):
        if find_program(program) is None:
            sys.exit(f"error: {program} is not installed; fix: scripts/install-system-packages")
    try:
        with Lab() as lab:
            rows = run_bench(lab, args)
    except (OberError, OSError) as exc:
        sys.exit(f"error: {exc}")
    if args.json:
        print(json.dumps({"setup": vars(args), "rows": rows}, indent=2))
    else:
        print_table(rows, args)


def run_bench(lab: Lab, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bring the backend and both proxies up in ``lab``, load the objects, measure."""
    ns = lab.netns("dataplane")
    for address in (RGW, MON, VIP_OBER, VIP_REF):
        add_address(ns, "lo", f"{address}/32")
    pem = write_pem(lab.path("certs") / "s3.pem", "s3.lab.test", [f"IP:{VIP_OBER}", f"IP:{VIP_REF}", f"IP:{RGW}"])
    cluster = start_cluster(ns, lab.path("ceph"), [RGW], MON)
    lab.cleanups.append(cluster.stop)
    upload(cluster, {"small": args.small_bytes, "large": args.large_bytes})
    start_haproxy(lab, ns, ober_haproxy_cfg(lab, pem), "ober", VIP_OBER)
    start_haproxy(lab, ns, reference_haproxy_cfg(lab, pem), "cephadm", VIP_REF)
    script = lab.path("wrk") / "done.lua"
    script.write_text(WRK_DONE)
    rows = []
    for number, nodelay in enumerate(NODELAY[args.rgw_tcp_nodelay]):
        configure_rgw(cluster, pem, nodelay=nodelay)
        # HAProxy marks the restarted server up again within its check interval (2 s at most).
        wait_serving(ns, args.small_bytes)
        if number and nodelay:
            # ober's reuse: auto still remembers the stalls of the run before (see the docstring).
            time.sleep(SETTLE)
        rows.extend(measure(ns, script, args, nodelay=nodelay))
    return rows


if __name__ == "__main__":
    main()
