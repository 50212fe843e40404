"""Bootstrap's ledger: every change ``ober bootstrap`` made, so ``ober uninstall`` undoes exactly those.

The ledger is ``<install>/etc/.bootstrap.json``, rewritten atomically on every change. Bootstrap records a change
*before* making it when its undo is harmless if the change never happened (removing a directory that is not there,
re-enabling a unit that is still enabled), and right *after* a package install, whose new packages are known only
then. An interrupted run therefore never leaves a change unrecorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ober.atomic import write_atomic
from ober.errors import OberError
from ober.render import install_paths


@dataclass(frozen=True)
class Entry:
    """One change bootstrap made, with what uninstall needs to undo it.

    ``kind`` is one of: ``directory`` (created), ``mode`` (a directory's mode changed; ``was`` the old one, octal),
    ``packages`` (``names`` installed by ``target``, apt or dnf), ``venv`` (created), ``pip`` (``names`` installed
    into the existing venv ``target``), ``service-disabled`` / ``service-enabled`` (unit ``target``;
    ``enabled``/``active``: its state before), ``selinux-boolean`` (``target`` set; ``was`` on/off before),
    ``symlink`` (``target`` made, pointing to ``names[0]``), ``user`` / ``group`` (a system user or group ``target``
    created).
    """

    kind: str
    target: str
    names: tuple[str, ...] = ()
    was: str = ""
    enabled: bool = False
    active: bool = False

    def as_dict(self) -> dict[str, object]:
        """The JSON form: only the fields that say something."""
        data: dict[str, object] = {"kind": self.kind, "target": self.target}
        for name, value in (("names", list(self.names)), ("was", self.was)):
            if value:
                data[name] = value
        if self.kind.startswith("service-"):
            data.update(enabled=self.enabled, active=self.active)
        return data

    @classmethod
    def from_dict(cls, data: object) -> Entry:
        """Read an entry back; anything malformed is a ValueError."""
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("kind"), str)
            or not isinstance(data.get("target"), str)
        ):
            raise ValueError(f"not a ledger entry: {data!r}")
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown fields {sorted(set(data) - known)}")
        names = data.get("names", [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("names must be a list of strings")
        return cls(
            kind=data["kind"],
            target=data["target"],
            names=tuple(names),
            was=str(data.get("was", "")),
            enabled=bool(data.get("enabled", False)),
            active=bool(data.get("active", False)),
        )


@dataclass
class Ledger:
    """The record of bootstrap's changes at ``path``, rewritten atomically on every change.

    Until the directory holding it exists (bootstrap's first step creates it), entries are kept in memory and
    written with the next change.
    """

    path: Path
    entries: list[Entry] = field(default_factory=list)
    removed: bool = False

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger at ``path`` (empty when there is none).

        Raises:
            OberError: the file is there but unreadable or not a ledger.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("entries"), list):
                raise ValueError("not an ober bootstrap ledger (format 1)")
            return cls(path, [Entry.from_dict(item) for item in data["entries"]])
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise OberError(
                f"cannot read bootstrap's ledger {path}: {exc}", "restore it from a backup, or remove it by hand"
            ) from None

    def add(self, entry: Entry) -> None:
        """Record a change (once: a rerun that repeats a change does not repeat its entry)."""
        if entry not in self.entries:
            self.entries.append(entry)
            self.save()

    def drop(self, entry: Entry) -> None:
        """Forget a change that was undone."""
        if entry in self.entries:
            self.entries.remove(entry)
            self.save()

    def remove(self) -> None:
        """Delete the file (uninstall, just before removing the directory that holds it)."""
        self.path.unlink(missing_ok=True)
        self.removed = True

    def save(self) -> None:
        """Write the ledger atomically (a temporary file beside it, flushed, renamed over it); mode 644."""
        if self.removed or not self.path.parent.is_dir():
            return
        text = json.dumps({"format": 1, "entries": [entry.as_dict() for entry in self.entries]}, indent=1) + "\n"
        # The ledger holds nothing secret: readable, like the install path's other state.
        write_atomic(self.path, text, 0o644)


def ledger_path(install_path: str) -> Path:
    """Where bootstrap's ledger lives for an install path."""
    return Path(install_paths(install_path)["ledger"])
