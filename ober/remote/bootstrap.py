"""``ober fleet bootstrap``: make inventory nodes ober nodes over SSH, install in parallel, activate one at a time.

Per node, in order (each step says whether it changed anything, so a second run reports "nothing changed"):

1. **preflight** (parallel): connect (host key verified) and probe the node (`ober.remote.preflight`);
2. **wheelhouse**: one wheelhouse is built on this workstation per distinct node Python/architecture/glibc
   (`ober.remote.wheelhouse`), tarred and unpacked atomically at ``{install}/wheelhouse`` unless the node already
   has that build, so nodes need no internet;
3. **install**: the node's own ``ober bootstrap {install} --yes --json --wheelhouse DIR`` (run by the installed
   ober, or on a first run by a throwaway venv made from the wheelhouse);
4. **files**: the secrets the node's config refers to (``{install}/etc/login``, mode 600), the inventory's
   ``files:`` (certificates) and the node's rendered ``ober.yaml`` staged as ``{install}/etc/fleet.yaml``; only
   files whose content or mode differ are written (atomically, by the SSH transport);
5. **config**: ``ober config --from {install}/etc/fleet.yaml --replace`` on the node: render, ``haproxy -c``, apply with
   rollback (a running HAProxy reloads hitlessly);
6. **activate** (serial, in inventory order): enable and start the units, then wait until the node is verified
   (every BGP neighbor established, every VIP announced, HAProxy answering, plus the caller's own check, e.g. the
   router's route) before the next node starts. The first node that fails stops activation: the others wait.

Nothing here prints: progress goes to a `Reporter`, the result is a `FleetReport` (summary and ``--json``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ober.errors import OberError
from ober.inventory import Inventory, InventoryNode
from ober.remote.bootstrap_steps import ACTIVATE_TIMEOUT, NodeJob, Options, Remote, payloads
from ober.remote.pool import for_each
from ober.remote.preflight import Preflight, preflight
from ober.remote.wheelhouse import build_wheelhouse

__all__ = [
    "ACTIVATE_TIMEOUT",
    "STEPS",
    "FleetReport",
    "NodeReport",
    "Options",
    "Remote",
    "StepResult",
    "bootstrap_fleet",
]

STEPS = ("preflight", "wheelhouse", "install", "files", "config", "activate")


@dataclass(frozen=True)
class StepResult:
    """One step on one node: ``changed``, ``ok`` (nothing to do), ``planned`` (dry run), ``failed``, ``skipped``."""

    step: str
    status: str
    detail: str
    seconds: float = 0.0
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"step": self.step, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 2)}


@dataclass
class NodeReport:
    """Everything bootstrap did on one node."""

    name: str
    address: str
    steps: list[StepResult] = field(default_factory=list)
    preflight: Preflight | None = None

    @property
    def failed(self) -> StepResult | None:
        """The step that failed, if one did."""
        return next((step for step in self.steps if step.status == "failed"), None)

    @property
    def status(self) -> str:
        """``failed``, ``changed``, ``planned`` (dry run) or ``unchanged``."""
        kinds = {step.status for step in self.steps}
        for kind in ("failed", "changed", "planned"):
            if kind in kinds:
                return kind
        return "unchanged"

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        failed = self.failed
        return {
            "name": self.name,
            "address": self.address,
            "status": self.status,
            "failed_step": failed.step if failed else None,
            "error": failed.detail if failed else None,
            "fix": failed.fix if failed else None,
            "preflight": self.preflight.as_dict() if self.preflight else None,
            "steps": [step.as_dict() for step in self.steps],
        }


@dataclass
class FleetReport:
    """The whole run: a report per node, the wheelhouses used."""

    nodes: list[NodeReport]
    dry_run: bool
    targets: str | None
    wheelhouses: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No node failed."""
        return all(node.failed is None for node in self.nodes)

    @property
    def changed(self) -> bool:
        """Some node changed."""
        return any(node.status == "changed" for node in self.nodes)

    def resume_hint(self) -> str | None:
        """How to go on after a failure: fix the first failed node, then run the same command again."""
        failed = [node for node in self.nodes if node.failed is not None]
        if not failed:
            return None
        first = failed[0].failed
        assert first is not None
        command = "ober fleet bootstrap" + (f" {self.targets}" if self.targets else "")
        fix = f"{first.fix}; then " if first.fix else "fix it, then "
        return f"{failed[0].name} failed at {first.step}: {fix}rerun `{command}` (finished nodes are left as they are)"

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "changed": self.changed,
            "wheelhouses": self.wheelhouses,
            "resume": self.resume_hint(),
            "nodes": [node.as_dict() for node in self.nodes],
        }


class Reporter(Protocol):
    """Progress: a step starts on a node, a step ends on a node."""

    def start(self, node: str, step: str) -> None:
        """A step starts."""

    def done(self, node: str, result: StepResult) -> None:
        """A step ended."""


class _Silent:
    def start(self, node: str, step: str) -> None:
        pass

    def done(self, node: str, result: StepResult) -> None:
        pass


def _step(report: NodeReport, name: str, work: Callable[[], tuple[str, str]], say: Reporter) -> bool:
    """Run one step on a node; an OberError is that step's failure. Returns whether the node may go on."""
    say.start(report.name, name)
    started = time.monotonic()
    try:
        status, detail = work()
        result = StepResult(name, status, detail, time.monotonic() - started)
    except OberError as exc:
        result = StepResult(name, "failed", exc.message, time.monotonic() - started, exc.fix)
    report.steps.append(result)
    say.done(report.name, result)
    return result.status != "failed"


def bootstrap_fleet(
    inventory: Inventory,
    nodes: Sequence[InventoryNode],
    secrets: Mapping[str, str],
    connect: Callable[[InventoryNode], Remote],
    options: Options,
    reporter: Reporter | None = None,
    *,
    targets: str | None = None,
) -> FleetReport:
    """Bootstrap ``nodes``: preflight, wheelhouse, install, files, config in parallel; activation one by one.

    Args:
        inventory: the inventory (its ``files:``).
        nodes: the selected nodes, in the order they are activated.
        secrets: the workstation's secrets (each node gets only those its config refers to).
        connect: opens a verified connection to a node (raises OberError when it cannot).
        options: dry run, parallelism, wheelhouse, activation timeout and extra check.
        reporter: progress.
        targets: the TARGETS the user gave, for the resume hint.

    Raises:
        OberError: a local input is wrong (a secret, a file); no node was touched.
    """
    say = reporter or _Silent()
    wanted = payloads(inventory, nodes, secrets)
    reports = {node.name: NodeReport(node.name, node.address) for node in nodes}
    jobs: dict[str, NodeJob] = {}

    def probe(node: InventoryNode) -> None:
        report = reports[node.name]
        say.start(node.name, "preflight")
        started = time.monotonic()
        try:
            conn = connect(node)
        except OberError as exc:
            result = StepResult("preflight", "failed", exc.message, time.monotonic() - started, exc.fix)
            report.steps.append(result)
            say.done(node.name, result)
            return
        jobs[node.name] = NodeJob(node, conn, wanted[node.name], options)
        try:
            report.preflight = found = preflight(conn, node.config.install_path, login=conn.user if conn.sudo else None)
        except OberError as exc:
            found = None
            result = StepResult("preflight", "failed", exc.message, time.monotonic() - started, exc.fix)
        if found is not None:
            failures = found.failures()
            notes = "; ".join(f"{c.name}: {c.detail}" for c in found.warnings())
            summary = f"{found.facts.os_name}, Python {found.facts.python_version}, {found.facts.machine}"
            if failures:
                detail = "; ".join(f"{c.name}: {c.detail}" for c in failures)
                result = StepResult("preflight", "failed", detail, time.monotonic() - started, failures[0].fix)
            else:
                detail = summary + (f" (warnings: {notes})" if notes else "")
                result = StepResult("preflight", "ok", detail, time.monotonic() - started)
        report.steps.append(result)
        say.done(node.name, result)

    try:
        for_each(list(nodes), probe, parallel=options.parallel, name=lambda n: n.name)
        ready = [n for n in nodes if reports[n.name].failed is None and n.name in jobs]
        houses = _wheelhouses(ready, reports, options, say)
        fleet = FleetReport(list(reports.values()), options.dry_run, targets)
        fleet.wheelhouses = {name: str(path) for name, path in houses.items()}

        def install(node: InventoryNode) -> None:
            job, report = jobs[node.name], reports[node.name]
            house = houses.get(node.name)
            if house is None:
                return
            if not _step(report, "wheelhouse", lambda: job.wheelhouse(house), say):
                return
            if not _step(report, "install", job.install_ober, say):
                return
            if not _step(report, "files", job.files, say):
                return
            files_changed = report.steps[-1].status in ("changed", "planned")
            _step(report, "config", lambda: job.configure(files_changed), say)

        for_each(ready, install, parallel=options.parallel, name=lambda n: n.name)
        stopped: str | None = None
        for node in nodes:
            report = reports[node.name]
            if report.failed is not None:
                continue
            if stopped is not None:
                report.steps.append(StepResult("activate", "skipped", f"not started: {stopped} failed to activate"))
                say.done(node.name, report.steps[-1])
                continue
            job = jobs[node.name]
            if not _step(report, "activate", job.activate, say):
                stopped = node.name
        return fleet
    finally:
        for job in jobs.values():
            job.conn.close()


def _wheelhouses(
    ready: Sequence[InventoryNode], reports: dict[str, NodeReport], options: Options, say: Reporter
) -> dict[str, Path]:
    """A wheelhouse per distinct node platform (built once each); nodes whose build failed fail at ``wheelhouse``."""
    houses: dict[str, Path] = {}
    built: dict[tuple[str, str, tuple[int, int]], Path | OberError] = {}
    for node in ready:
        report = reports[node.name]
        found = report.preflight
        key = found.facts.platform_key() if found else None
        if options.wheelhouse is not None:
            houses[node.name] = options.wheelhouse
            continue
        if key is None:
            report.steps.append(StepResult("wheelhouse", "failed", "the node's Python platform is unknown"))
            continue
        if key not in built:
            python, machine, glibc = key
            for other in ready:
                other_found = reports[other.name].preflight
                if other_found is not None and other_found.facts.platform_key() == key:
                    say.start(other.name, f"wheelhouse (building it for Python {python} on {machine})")
            try:
                kwargs: dict[str, Any] = {"glibc": glibc, "arch": machine}
                if options.wheelhouse_cache is not None:
                    kwargs["dest"] = options.wheelhouse_cache
                built[key] = build_wheelhouse(python, **kwargs)
            except OberError as exc:
                built[key] = exc
        house = built[key]
        if isinstance(house, OberError):
            report.steps.append(StepResult("wheelhouse", "failed", house.message, fix=house.fix))
        else:
            houses[node.name] = house
    return houses
