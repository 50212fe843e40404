"""Render benchmark: resolve + render time for inventories of 10, 100 and 1,000 nodes (medians of runs).

Also times ``haproxy -c`` per node separately, on the smaller inventories (it is one process per node).
Prints a table, or JSON with --json. Numbers, not asserts: never fails for being slow.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from ober.inventory import resolve_inventory
from ober.render import render_node
from ober.validate import check_haproxy

EXAMPLE = Path(__file__).resolve().parent.parent / "inventory" / "example.yaml"
SECRETS = {"bgp_md5": "bench-md5", "stats_password": "bench-stats"}


def inventory_of(count: int) -> dict[str, Any]:
    """The example inventory grown to ``count`` nodes in racks of up to 100."""
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data.pop("hosts", None)
    racks = max(1, count // 100)
    per_rack = count // racks
    data["groups"] = {
        f"rack{r}": {"nodes": f"r{r}n[001-{per_rack:03d}]", "address": f"100.64.{r}.[1-{per_rack}]"}
        for r in range(1, racks + 1)
    }
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--check-up-to", type=int, default=100, help="largest inventory also run through haproxy -c")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for count in (10, 100, 1000):
        data = inventory_of(count)
        render_times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            nodes = resolve_inventory(data).nodes
            for node in nodes:
                render_node(node.config, SECRETS)
            render_times.append(time.perf_counter() - started)
        row: dict[str, Any] = {"nodes": count, "render_s": statistics.median(render_times)}
        if count <= args.check_up_to:
            started = time.perf_counter()
            for node in resolve_inventory(data).nodes:
                check_haproxy(node.config, SECRETS)
            row["haproxy_check_s"] = time.perf_counter() - started
        row["per_node_ms"] = row["render_s"] / count * 1000
        rows.append(row)
    if args.json:
        print(json.dumps({"runs": args.runs, "rows": rows}, indent=2))
        return
    base = rows[0]["per_node_ms"]
    print(f"resolve + render, median of {args.runs} runs")
    print(f"{'nodes':>6} {'render s':>9} {'ms/node':>8} {'vs 10':>6} {'haproxy -c s':>13}")
    for row in rows:
        check = f"{row['haproxy_check_s']:.2f}" if "haproxy_check_s" in row else "-"
        ratio = row["per_node_ms"] / base
        print(f"{row['nodes']:>6} {row['render_s']:>9.3f} {row['per_node_ms']:>8.2f} {ratio:>6.2f} {check:>13}")


if __name__ == "__main__":
    main()
