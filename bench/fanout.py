"""Fan-out benchmark: one `ober fleet status`-like sweep over 8, 16, 32 and 64 SSH targets.

Each target is a real sshd (the node image's, see ober.lab.sshd) on its own loopback address with its own host key,
pinned in a known_hosts file; the sweep is ober's own transport and pool: for every node, connect (host key
verified), run ``cat /etc/os-release``, close, at most ``--parallel`` nodes at once (the CLI's default, 10).

Reports, per node count, the median wall time of ``--runs`` sweeps, the time per node and the ratio to the 8-node
sweep measured in the same run (absolute times on a shared 2-core machine mean little; ratios do). Numbers, not
asserts: this never fails for being slow. Needs root (chroot, overlay, namespaces) and the cached node image.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from ober.errors import OberError
from ober.lab.image import ensure_image
from ober.lab.netns import Lab
from ober.lab.sshd import SshdFarm
from ober.remote.connection import SshTarget, connect
from ober.remote.pool import for_each

SIZES = (8, 16, 32, 64)


def status_of(target: SshTarget) -> str:
    """What a status sweep does per node, reduced to its SSH cost: connect, one command, close."""
    with connect(target) as conn:
        result = conn.run(["cat", "/etc/os-release"])
        if not result.ok:
            raise OberError(f"{target.name}: {result.last_line()}")
        return result.stdout


def sweep(nodes: list[SshTarget], parallel: int) -> float:
    """One sweep's wall time; any node failing makes the measurement meaningless, so it is an error."""
    started = time.perf_counter()
    outcomes = for_each(nodes, status_of, parallel=parallel, name=lambda t: t.name)
    elapsed = time.perf_counter() - started
    failed = [outcome.error for outcome in outcomes if not outcome.ok]
    if failed:
        raise OberError(f"{len(failed)} of {len(nodes)} nodes failed, e.g. {failed[0]}")
    return elapsed


def measure(runs: int, parallel: int, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Start max(sizes) sshd servers, then time ``runs`` sweeps of each size (interleaved, so drift hits all)."""
    with Lab() as lab:
        farm = SshdFarm(lab, ensure_image())
        servers = [farm.start() for _ in range(max(sizes))]
        where = lab.path("client")
        known = where / "known_hosts"
        known.write_text("".join(server.known_hosts_line() for server in servers))
        config = where / "ssh_config"
        config.write_text(f"Host *\n  User root\n  IdentityFile {farm.key}\n  IdentitiesOnly yes\n")
        nodes = [
            SshTarget(f"node{i:02d}", s.address, None, s.port, str(config), str(known), 10.0, 60.0)
            for i, s in enumerate(servers, start=1)
        ]
        sweep(nodes[:parallel], parallel)  # warm-up: page cache, imports, first sshd forks
        times: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(runs):
            for size in sizes:
                times[size].append(sweep(nodes[:size], parallel))
    base = statistics.median(times[sizes[0]])
    rows = []
    for size in sizes:
        median = statistics.median(times[size])
        rows.append(
            {
                "nodes": size,
                "median_s": round(median, 4),
                "min_s": round(min(times[size]), 4),
                "max_s": round(max(times[size]), 4),
                "per_node_ms": round(median / size * 1000, 2),
                f"ratio_to_{sizes[0]}": round(median / base, 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="sweeps per node count (median reported)")
    parser.add_argument("--parallel", type=int, default=10, help="nodes at once (the CLI's default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("error: the fan-out benchmark needs root (chroot, overlay, namespaces)")
    if args.runs < 1 or args.parallel < 1:
        sys.exit("error: --runs and --parallel must be at least 1; fix: use the defaults (3 and 10)")
    try:
        rows = measure(args.runs, args.parallel, SIZES)
    except OberError as exc:
        sys.exit(f"error: {exc}")
    if args.json:
        print(json.dumps({"runs": args.runs, "parallel": args.parallel, "rows": rows}, indent=2))
        return
    key = f"ratio_to_{SIZES[0]}"
    print(f"fan-out: connect + cat /etc/os-release per node, parallel {args.parallel}, median of {args.runs} sweeps")
    print(f"{'nodes':>6} {'median s':>9} {'min s':>7} {'max s':>7} {'ms/node':>8} {'vs ' + str(SIZES[0]):>6}")
    for row in rows:
        print(
            f"{row['nodes']:>6} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f}"
            f" {row['per_node_ms']:>8.1f} {row[key]:>6.2f}"
        )


if __name__ == "__main__":
    main()
