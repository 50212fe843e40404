"""Spare server slots: which RGW server holds which slot of the running HAProxy.

Each backend group is rendered with ``server-template _slot 1-N … disabled``: servers HAProxy holds ready, in
maintenance, for RGW servers added at runtime (:mod:`ober.backends`). A slot's HAProxy name stays ``_slotK``, so
which RGW it holds is recorded here, next to HAProxy's socket, for the worker that was told. A reload starts a new
worker from the rendered config, where each added RGW has its own ``server`` line and every slot is free again:
the record names the worker's PID, and a record of another worker is void.

``_`` cannot start a hostname, so a slot's name never equals a server's name (``host-port``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ober.atomic import write_atomic
from ober.config import SLOT_PREFIX, NodeConfig, is_slot
from ober.render import paths

__all__ = ["SlotRecord", "backend_name", "is_slot", "read_record", "record_path", "slot_names", "write_record"]


def slot_names(count: int) -> list[str]:
    """The names ``server-template`` gives a group's ``count`` slots, in order."""
    return [f"{SLOT_PREFIX}{index}" for index in range(1, count + 1)]


def backend_name(group: str) -> str:
    """HAProxy's backend for a backend group."""
    return f"be_{group}"


@dataclass
class SlotRecord:
    """Which server (``host-port`` name) each used slot holds, for one HAProxy worker."""

    worker: int | None
    slots: dict[str, dict[str, str]] = field(default_factory=dict)
    """Backend → slot → server name."""

    def holder(self, backend: str, slot: str) -> str | None:
        """The server in ``slot`` of ``backend``, if any."""
        return self.slots.get(backend, {}).get(slot)

    def slot_of(self, backend: str, server: str) -> str | None:
        """The slot holding ``server`` in ``backend``, if any."""
        return next((slot for slot, name in self.slots.get(backend, {}).items() if name == server), None)

    def put(self, backend: str, slot: str, server: str) -> None:
        """Record ``server`` in ``slot``."""
        self.slots.setdefault(backend, {})[slot] = server

    def free(self, backend: str, slot: str) -> None:
        """Forget what ``slot`` held."""
        self.slots.get(backend, {}).pop(slot, None)


def record_path(config: NodeConfig) -> Path:
    """Where the slot record lives (the run directory, next to HAProxy's socket)."""
    return Path(paths(config)["run_dir"]) / "backend-slots.json"


def read_record(config: NodeConfig, worker: int | None) -> SlotRecord:
    """The record for HAProxy worker ``worker``: empty when there is none, it is unreadable, or of another worker."""
    try:
        data = json.loads(record_path(config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return SlotRecord(worker)
    if not isinstance(data, dict) or data.get("worker") != worker or worker is None:
        return SlotRecord(worker)  # a reload (new worker) freed every slot
    slots = data.get("slots")
    if not isinstance(slots, dict):
        return SlotRecord(worker)
    clean = {
        str(backend): {str(slot): str(name) for slot, name in held.items() if is_slot(str(slot))}
        for backend, held in slots.items()
        if isinstance(held, dict)
    }
    return SlotRecord(worker, clean)


def write_record(config: NodeConfig, record: SlotRecord) -> None:
    """Write the record atomically (temp file, then rename)."""
    target = record_path(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps({"worker": record.worker, "slots": record.slots}, indent=1) + "\n", 0o644)
