"""Discovery reconciled by a timer: every backend group with ``discovery:``, one change each per run, and a record.

``ober-discovery.timer`` (rendered when a group of ober.yaml has ``discovery:``) runs ``ober backends reconcile
--all`` every ``interval`` (the smallest of the groups'); each group whose own interval has passed since its last run
asks its source and makes at most ONE change (:func:`ober.discovery.reconcile`: add a new server, else drain one the
source lost; never a removal). A source that fails or lists nothing changes nothing: the run says why (the journal),
and the group's record keeps it.

The record (``<install>/run/discovery.json``, one entry per group: when, what it did, what it found, the drained
servers discovery lost, the error) is what ``ober backends list``, ``ober status`` and the metrics show.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ober.atomic import write_atomic
from ober.config import BackendGroup, NodeConfig, Server
from ober.discovery import describe, reconcile
from ober.errors import OberError
from ober.render import paths

if TYPE_CHECKING:  # ober health reads the record for its metrics: it need not load the runtime-change machinery
    from ober.backends import Outcome

STATE_NAME = "discovery.json"

Discover = Callable[[BackendGroup], list[Server]]
"""A group → the servers its source lists now (raises OberError when it cannot say)."""
Make = Callable[[str, str, str], "Outcome"]
"""(verb, group, host:port) → the change made (raises OberError when it was refused or undone)."""


@dataclass(frozen=True)
class GroupRun:
    """One group's discovery run: what the source said, the one change, what is left for later or for an operator."""

    group: str
    source: str
    at: float
    """When the run started (Unix time)."""
    action: str
    """``add``, ``undrain``, ``drain`` (the change tried), ``none`` (in line), or ``error`` (the source failed)."""
    server: str | None = None
    changed: bool = False
    message: str | None = None
    error: str | None = None
    fix: str | None = None
    found: int | None = None
    """Servers the source listed (None: it could not be read)."""
    lost: list[str] = field(default_factory=list)
    """Drained servers the source no longer lists, for an operator to remove."""
    pending: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The source answered, and the change (if any) was made."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` and record form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GroupRun:
        """Read a record back (raises TypeError, KeyError or ValueError on a mangled one)."""
        return cls(
            group=str(data["group"]),
            source=str(data["source"]),
            at=float(data["at"]),
            action=str(data["action"]),
            server=_text(data.get("server")),
            changed=bool(data.get("changed", False)),
            message=_text(data.get("message")),
            error=_text(data.get("error")),
            fix=_text(data.get("fix")),
            found=int(data["found"]) if data.get("found") is not None else None,
            lost=[str(entry) for entry in data.get("lost") or []],
            pending=int(data.get("pending") or 0),
            notes=[str(note) for note in data.get("notes") or []],
        )

    def summary(self) -> str:
        """One line for the journal and ``ober backends list``."""
        head = f"{self.group} ({self.source})"
        if self.error is not None:
            tried = f"{self.action} {self.server} refused: " if self.server else ""
            return f"{head}: {tried}{self.error}; nothing changed"
        if self.action == "none":
            text = f"{head}: in line with discovery ({self.found} servers listed)"
        else:
            text = f"{head}: {self.message or f'{self.action} {self.server}'}"
        if self.pending:
            text += f"; {self.pending} more change{'s' if self.pending > 1 else ''} for the next runs"
        return text


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def state_path(config: NodeConfig) -> Path:
    """Where the node keeps the record of its discovery runs."""
    return Path(paths(config)["run_dir"]) / STATE_NAME


def read_runs(config: NodeConfig) -> dict[str, GroupRun]:
    """The last run of each group (empty when discovery never ran; a mangled record reads as none)."""
    try:
        data = json.loads(state_path(config).read_text(encoding="utf-8"))
        return {name: GroupRun.from_dict(entry) for name, entry in data["groups"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def write_runs(config: NodeConfig, runs: Mapping[str, GroupRun]) -> None:
    """Record the groups' last runs (readable by all: ``ober health``, as the BGP user, exports them as metrics)."""
    path = state_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"groups": {name: run.to_dict() for name, run in sorted(runs.items())}}
    write_atomic(path, json.dumps(body, indent=2) + "\n", 0o644)


def run_group(group: BackendGroup, *, discover: Discover, make: Make, now: float) -> GroupRun:
    """Ask the group's source, make the one change it calls for; every failure is in the result, never raised."""
    source = describe(group.discovery) if group.discovery else "no discovery"
    try:
        found = discover(group)
    except OberError as exc:
        return GroupRun(group.name, source, now, "error", error=exc.message, fix=exc.fix)
    if not found:  # the sources refuse this already; an empty answer must never drain a whole group
        why = f"{source} lists no server for group {group.name}: refusing to drain every server it has"
        return GroupRun(group.name, source, now, "error", error=why, fix="check the discovery source")
    decision = reconcile(group, found)
    base = GroupRun(
        group.name, source, now, "none", found=len(found), lost=decision.lost, pending=decision.pending,
        notes=decision.notes,
    )  # fmt: skip
    if decision.verb is None or decision.server is None:
        return base
    entry = f"{decision.server.host}:{decision.server.port}"
    try:
        outcome = make(decision.verb, group.name, entry)
    except OberError as exc:
        return GroupRun(
            **{**base.to_dict(), "action": decision.verb, "server": entry, "error": exc.message, "fix": exc.fix}
        )
    planned = outcome.plan
    return GroupRun(
        **{
            **base.to_dict(),
            "action": planned.verb,
            "server": entry,
            "changed": planned.changes and not outcome.dry_run,
            "message": planned.message,
        }
    )


def is_due(group: BackendGroup, last: GroupRun | None, now: float) -> bool:
    """Whether the group's interval has passed since its last run (or it never ran)."""
    interval = group.discovery.interval if group.discovery else 0.0
    return last is None or now - last.at >= interval or now < last.at  # a clock set back: run rather than stall


@dataclass(frozen=True)
class Report:
    """One ``reconcile --all``: the groups run, and those not due yet (name, seconds until due)."""

    runs: list[GroupRun]
    waiting: list[tuple[str, float]]

    @property
    def ok(self) -> bool:
        """Every group run answered and made its change."""
        return all(run.ok for run in self.runs)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "ok": self.ok,
            "groups": [run.to_dict() for run in self.runs],
            "waiting": [{"group": name, "due_in": round(left, 1)} for name, left in self.waiting],
        }


def run_all(
    config: NodeConfig,
    *,
    discover: Discover,
    make: Make,
    now: float,
    last: Mapping[str, GroupRun],
    only_due: bool = True,
) -> Report:
    """Run every group with discovery whose interval has passed (every one without ``only_due``), in config order.

    Raises:
        OberError: no group has discovery.
    """
    groups = [group for group in config.backends if group.discovery is not None]
    if not groups:
        raise OberError(
            f"no backend group of node {config.name} has discovery",
            "set backends.<group>.discovery in ober.yaml (source file, ceph-orch or dns-srv)",
        )
    runs: list[GroupRun] = []
    waiting: list[tuple[str, float]] = []
    for group in groups:
        previous = last.get(group.name)
        if only_due and previous is not None and not is_due(group, previous, now):
            interval = group.discovery.interval if group.discovery else 0.0
            waiting.append((group.name, previous.at + interval - now))
            continue
        runs.append(run_group(group, discover=discover, make=make, now=now))
    return Report(runs, waiting)


def recorded(config: NodeConfig, last: Mapping[str, GroupRun], runs: list[GroupRun]) -> dict[str, GroupRun]:
    """The record after ``runs``: the groups that still have discovery, each with its latest run."""
    keep = {group.name for group in config.backends if group.discovery is not None}
    return {name: run for name, run in {**last, **{run.group: run for run in runs}}.items() if name in keep}


def discovery_status(config: NodeConfig, now: float) -> dict[str, dict[str, Any]]:
    """Each group with discovery: its source, interval, and last run (None: not run yet), as ``--json`` shows it."""
    runs = read_runs(config)
    shown: dict[str, dict[str, Any]] = {}
    for group in config.backends:
        if group.discovery is None:
            continue
        run = runs.get(group.name)
        shown[group.name] = {
            "source": describe(group.discovery),
            "interval": group.discovery.interval,
            "last_run": run.to_dict() if run else None,
            "age": round(now - run.at, 1) if run else None,
        }
    return shown


def status_lines(config: NodeConfig, now: float) -> list[tuple[bool, str]]:
    """The discovery lines of ``ober backends list`` and ``ober status``: (whether all is well, the line)."""
    lines: list[tuple[bool, str]] = []
    runs = read_runs(config)
    for group in config.backends:
        if group.discovery is None:
            continue
        run = runs.get(group.name)
        if run is None:
            lines.append((True, f"{group.name}: discovery ({describe(group.discovery)}) has not run yet"))
            continue
        lines.append((run.ok, f"discovery, {now - run.at:.0f}s ago: {run.summary()}"))
        for entry in run.lost:
            lines.append(
                (False, f"{group.name}: {entry} is drained and discovery no longer lists it: remove it when sure "
                        f"(ober backends remove {group.name} {entry})")
            )  # fmt: skip
    return lines
