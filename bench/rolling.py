"""Rolling restart benchmark: what each class of step costs an S3 client, side by side on one lab.

On a bootstrapped lab fleet (``make demo`` leaves one up at /var/lib/ober/lab), for each class — ``reload``
(hitless HAProxy reload, nodes stay in ECMP), ``restart`` (ExaBGP restart under graceful restart, or withdraw-first
where graceful restart is off), ``full`` (quiesce, withdraw, restart, re-announce) and ``full-no-quiesce`` (the
same, withdrawing at once) — one rolling ``ober fleet restart`` of every node under continuous S3 load (4
keep-alive boto3 workers through the VIP over TLS, 16 MiB multipart uploads mixed in), printing: wall time, the
sum of the waits the roll could not avoid (drain, restart, verify, settle) and their ratio, requests sent /
retried / failed after botocore's default retries, the fewest router next-hops, and for withdrawing classes the
requests in flight on each node at its withdraw.

Usage (root): ``python bench/rolling.py [--dir /var/lib/ober/lab] [--classes reload,restart,full] [--json]``.
Compare the classes within one run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ober.errors import OberError
from ober.lab import fleet as lab_fleet
from ober.lab.demo import roll_under_load

FLAGS = {
    "reload": ["--reload"],
    "restart": [],
    "full": ["--full"],
    # The same withdraw without waiting for a quiet moment: what the quiesce step saves the client.
    "full-no-quiesce": ["--full", "--quiesce", "0"],
}


def measure(directory: Path, classes: list[str]) -> list[dict[str, Any]]:
    """One roll per class on the lab in ``directory``."""
    fleet = lab_fleet.load(directory)
    rows: list[dict[str, Any]] = []
    for name in classes:
        print(f"rolling restart, class {name} ...", file=sys.stderr, flush=True)
        rolled = roll_under_load(fleet, directory / "bench-rolling", "restart", *FLAGS[name])
        report = rolled.report
        wall = float(report.get("seconds") or 0.0)
        waits = float(report.get("waits") or 0.0)
        rows.append(
            {
                "class": name,
                "ok": rolled.code == 0,
                "planned": sorted({s["class"] for s in report.get("steps", [])}),
                "wall_s": round(wall, 1),
                "waits_s": round(waits, 1),
                "waits_ratio": round(waits / wall, 2) if wall else None,
                "sent": rolled.load.sent,
                "retried_requests": rolled.load.retried_requests,
                "retries": rolled.load.retries,
                "failed": rolled.load.failed,
                "fewest_next_hops": min(rolled.fewest.values()) if rolled.fewest else None,
                "in_flight_at_withdraw": [
                    r["in_flight_at_withdraw"]
                    for r in report.get("results", [])
                    if r.get("in_flight_at_withdraw") is not None
                ],
                "errors": rolled.load.errors[:3] or ([report["error"]] if "error" in report else []),
            }
        )
    return rows


def main() -> int:
    """Run the benchmark and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=lab_fleet.DEFAULT_DIR, help="a bootstrapped lab's directory")
    parser.add_argument("--classes", default="reload,restart,full,full-no-quiesce")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    unknown = [c for c in classes if c not in FLAGS]
    if unknown:
        print(f"error: unknown class {', '.join(unknown)} (fix: choose from {', '.join(FLAGS)})", file=sys.stderr)
        return 2
    try:
        rows = measure(args.dir, classes)
    except OberError as exc:
        print(f"error: {exc} (is a bootstrapped lab up? make demo)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'class':16} {'planned':14} {'wall s':>7} {'waits s':>8} {'ratio':>6} {'sent':>6} "
    header += f"{'retried':>8} {'retries':>8} {'failed':>7} {'fewest hops':>12}  in flight at withdraw"
    print(header)
    for r in rows:
        print(
            f"{r['class']:16} {','.join(r['planned']):14} {r['wall_s']:>7} {r['waits_s']:>8} {r['waits_ratio']!s:>6} "
            f"{r['sent']:>6} {r['retried_requests']:>8} {r['retries']:>8} {r['failed']:>7} "
            f"{r['fewest_next_hops']!s:>12}  {','.join(map(str, r['in_flight_at_withdraw'])) or '-'}"
            + ("" if r["ok"] else f"  roll failed: {r['errors'][:1]}")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
