"""``ober health`` footprint: CPU share and memory of the health process on a lab node (issue 5, item 6).

A 1-node lab site (``ober.lab.site.start_site``: BIRD router, one process node running HAProxy, ExaBGP and
``ober health`` from ober's rendered config, two real Ceph RGW groups) at the product's default check interval
(1 s). Once the node announces, every process of interest is sampled once a second for ``--seconds`` (default 60):

* CPU: ``utime + stime`` from ``/proc/PID/stat`` (clock ticks), as a share of one core over the window, and per
  one-second sample (median, max). For ``ober health`` also the CPU time per check round.
* Memory: ``VmRSS`` from ``/proc/PID/status`` (mean and max) and the proportional set size ``Pss`` from
  ``/proc/PID/smaps_rollup`` at the end (RSS counts shared libraries in full for every process).

Processes: ``ober health`` (ExaBGP's child), ExaBGP itself, and HAProxy (master and workers, summed), for
comparison. The machine is shared: read the health process against ExaBGP's and HAProxy's from the same run.

Usage (root): ``python bench/footprint.py [--seconds 60] [--interval 0.5s] [--json]``. Prints numbers, asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ober.errors import OberError
from ober.lab.netns import Lab
from ober.lab.procnode import children
from ober.lab.site import start_site

TICKS = os.sysconf("SC_CLK_TCK")
PID_TIMEOUT = 30.0


def cpu_ticks(pid: int) -> int:
    """``utime + stime`` of a process, in clock ticks (fields 14 and 15 of ``/proc/PID/stat``).

    The command name (field 2) may hold spaces and parentheses: the fields are counted after its last ``)``.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` value (``VmRSS``) from ``/proc/PID/status``; 0 when absent (a zombie has none)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """The proportional set size from ``/proc/PID/smaps_rollup``, in KiB; 0 when unreadable."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)


@dataclass
class Watched:
    """One watched program: how to find its PIDs now, and what was sampled."""

    name: str
    pids: Callable[[], list[int]]
    ticks: list[int] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    pss_kib: int = 0

    def sample(self) -> None:
        """Add one sample of the total CPU ticks and RSS of its processes."""
        pids = self.pids()
        self.ticks.append(sum(cpu_ticks(pid) for pid in pids))
        self.rss_kib.append(sum(status_kib(pid, "VmRSS") for pid in pids))

    def finish(self) -> None:
        """Read the PSS at the end of the window."""
        self.pss_kib = sum(pss_kib(pid) for pid in self.pids())


def watch(targets: list[Watched], seconds: float) -> float:
    """Sample every target once a second for ``seconds``; the measured wall time."""
    for target in targets:
        target.sample()
    started = time.monotonic()
    for step in range(1, int(seconds) + 1):
        # Sleep to the next whole second of the window, so sampling's own cost does not drift it.
        time.sleep(max(0.0, started + step - time.monotonic()))
        for target in targets:
            target.sample()
    elapsed = time.monotonic() - started
    for target in targets:
        target.finish()
    return elapsed


def summary(target: Watched, elapsed: float, rounds: float) -> dict[str, Any]:
    """CPU share (% of one core) over the window and per second, RSS and PSS in MiB."""
    per_second = [(b - a) / TICKS * 100 for a, b in zip(target.ticks, target.ticks[1:], strict=False)]
    cpu_s = (target.ticks[-1] - target.ticks[0]) / TICKS
    return {
        "process": target.name,
        "cpu_percent": cpu_s / elapsed * 100,
        "cpu_percent_per_second_median": statistics.median(per_second),
        "cpu_percent_per_second_max": max(per_second),
        "cpu_ms_per_check": cpu_s / rounds * 1000 if rounds else None,
        "rss_mib_mean": statistics.mean(target.rss_kib) / 1024,
        "rss_mib_max": max(target.rss_kib) / 1024,
        "pss_mib": target.pss_kib / 1024,
    }


def wait_pid(read: Callable[[], int | None]) -> int:
    """Poll until ``read`` gives a PID."""
    deadline = time.monotonic() + PID_TIMEOUT
    while time.monotonic() < deadline:
        pid = read()
        if pid is not None:
            return pid
        time.sleep(0.1)
    raise OberError(f"ober health published no PID within {PID_TIMEOUT:g}s")


def measure(seconds: float, interval: str) -> dict[str, Any]:
    """Bring up a 1-node lab site and watch its processes."""
    with Lab() as lab:
        site = start_site(lab, 1, interval=interval)
        node = site.nodes["n1"]
        health = wait_pid(node.health_pid)
        exabgp, haproxy = node.exabgp.pid, node.haproxy.pid
        targets = [
            Watched("ober health", lambda: [health]),
            Watched("ExaBGP", lambda: [exabgp]),
            Watched("HAProxy (master + workers)", lambda: [haproxy, *children(haproxy)]),
        ]
        elapsed = watch(targets, seconds)
        rounds = elapsed / node.config.health.interval
        rows = [summary(target, elapsed, rounds) for target in targets]
        # Only the health process runs checks: a cost per round means nothing for the others.
        for row in rows[1:]:
            row["cpu_ms_per_check"] = None
        announced = site.hops(next(iter(node.config.vips)).address) == site.addresses
    return {"seconds": elapsed, "interval": interval, "clock_ticks_per_s": TICKS, "announced": announced, "rows": rows}


def print_table(result: dict[str, Any]) -> None:
    """The human table."""
    print(
        f"footprint on a 1-node lab, ober health interval {result['interval']}, {result['seconds']:.0f} s, "
        f"sampled every 1 s (CPU in % of one core; clock tick {1000 / result['clock_ticks_per_s']:g} ms)"
    )
    print(
        f"{'process':<27} {'CPU %':>6} {'med/s':>6} {'max/s':>6} {'ms/check':>8} {'RSS MiB':>8} {'max':>6} {'PSS':>6}"
    )
    for row in result["rows"]:
        per_check = f"{row['cpu_ms_per_check']:>8.2f}" if row["cpu_ms_per_check"] is not None else f"{'-':>8}"
        print(
            f"{row['process']:<27} {row['cpu_percent']:>6.2f} {row['cpu_percent_per_second_median']:>6.1f} "
            f"{row['cpu_percent_per_second_max']:>6.1f} {per_check} {row['rss_mib_mean']:>8.1f} "
            f"{row['rss_mib_max']:>6.1f} {row['pss_mib']:>6.1f}"
        )
    if not result["announced"]:
        print("warning: the node was not announcing at the end of the window")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="the measuring window (default 60)")
    parser.add_argument("--interval", default="0.5s", help="ober health's check interval (default: the product's 0.5s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the footprint benchmark needs root (network namespaces); fix: run it as root")
    if args.seconds < 2:
        sys.exit("error: --seconds must be at least 2; fix: give a window of a few seconds or more")
    try:
        result = measure(args.seconds, args.interval)
    except (OberError, OSError) as exc:
        sys.exit(f"error: {exc}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
