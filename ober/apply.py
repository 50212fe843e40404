"""Applying rendered files to a node: diff, then swap in all or nothing, reload, verify, roll back on failure.

``root`` is the filesystem root the node's paths are under: ``/`` on a node, a directory in tests and staging.
A manifest of the files ober wrote lets a later apply remove the ones no longer rendered (e.g. after switching the
VIP interface from netplan to networkd). Files that hold secrets (mode 600) are never shown in a diff.

Backups are for rolling back: once an apply succeeded, the copies of files that hold secrets are removed from every
backup (a rotated MD5 or stats password must not stay on disk), and only the newest `KEEP_BACKUPS` are kept.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ober.atomic import write_atomic
from ober.errors import OberError
from ober.render import Rendered, RenderedFile, install_paths

KEEP_BACKUPS = 5
"""Backups (one per apply that changed something) kept under ``<install>/backup``; older ones are removed."""


@dataclass(frozen=True)
class Change:
    """One file to create, replace or remove (``new`` None)."""

    path: str
    old: str | None
    new: RenderedFile | None

    @property
    def kind(self) -> str:
        """``create``, ``update`` or ``remove``."""
        if self.new is None:
            return "remove"
        return "create" if self.old is None else "update"


def manifest_path(install_path: str) -> str:
    """Where the list of files ober owns on a node lives."""
    return install_paths(install_path)["manifest"]


def _on(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return ""  # not ours to show; a changed file all the same
    except OSError as exc:
        raise OberError(f"cannot read {path}: {exc.strerror}", "run as root") from None


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None


def plan(rendered: Rendered, root: Path, install_path: str) -> list[Change]:
    """What applying ``rendered`` would change under ``root`` (content or mode), in path order."""
    changes: list[Change] = []
    wanted = {item.path for item in rendered.files}
    for item in rendered.files:
        target = _on(root, item.path)
        old = _read(target)
        if old != item.content or _mode(target) != item.mode:
            changes.append(Change(item.path, old, item))
    owned = _read(_on(root, manifest_path(install_path)))
    if owned:
        try:
            previous = [str(p) for p in json.loads(owned)]
        except ValueError:
            previous = []
        for path in sorted(set(previous) - wanted):
            old = _read(_on(root, path))
            if old is not None:
                changes.append(Change(path, old, None))
    return sorted(changes, key=lambda change: change.path)


def diff(changes: list[Change]) -> str:
    """A unified diff of the changes; secret files (mode 600) say only that they change."""
    parts: list[str] = []
    for change in changes:
        secret = change.new is not None and change.new.mode == 0o600
        if secret and change.old != (change.new.content if change.new else None):
            parts.append(
                f"--- {change.path}\n+++ {change.path}\n(secret file: contents not shown; it {change.kind}s)\n"
            )
            continue
        new_text = change.new.content if change.new else ""
        lines = difflib.unified_diff(
            (change.old or "").splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=change.path if change.old is not None else "/dev/null",
            tofile=change.path if change.new is not None else "/dev/null",
        )
        text = "".join(lines)
        if not text and change.new is not None:
            text = f"--- {change.path}\n+++ {change.path}\n(mode changes to {change.new.mode:04o})\n"
        parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


@dataclass(frozen=True)
class Applied:
    """What an apply did."""

    changes: list[Change]
    backup: Path | None


def apply(
    changes: list[Change],
    root: Path,
    install_path: str,
    owned: list[str],
    *,
    reload: Callable[[], None],
    verify: Callable[[], None],
    undo: Callable[[], None] | None = None,
) -> Applied:
    """Back up, swap in every change, reload, verify; on any failure put every file back and reload again.

    Args:
        changes: from :func:`plan`.
        root: the filesystem root (``/`` on a node).
        install_path: the node's install path (backups go to ``<install>/backup/<time>/``).
        owned: every path the new render holds (the next manifest).
        reload: makes the services read the new files (raises OberError on failure).
        verify: checks the node serves with them (raises OberError on failure).
        undo: what puts the services back after the files were restored (default: ``reload`` again); for a
            change made through HAProxy's runtime API instead of a reload, its reverse.

    Raises:
        OberError: the change was rolled back; the message says why.
    """
    if not changes:
        return Applied([], None)
    backups = _on(root, install_paths(install_path)["backup"])
    # Time first, to the nanosecond: sorted by name is sorted by age, and two applies never share one.
    now = time.time_ns()
    backup = backups / f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now / 1e9))}.{now % 10**9:09d}-{os.getpid()}"
    saved: list[tuple[Path, Path | None]] = []
    manifest = Change(
        manifest_path(install_path),
        None,
        RenderedFile(manifest_path(install_path), json.dumps(sorted(owned), indent=1) + "\n", 0o644),
    )
    try:
        for change in [*changes, manifest]:
            target = _on(root, change.path)
            copy = None
            if target.exists():
                copy = backup / change.path.lstrip("/")
                if not backups.exists():
                    backups.mkdir(parents=True, mode=0o700)  # copies of 600 files stay private while they exist
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target, copy)
            saved.append((target, copy))
        for change in [*changes, manifest]:
            target = _on(root, change.path)
            if change.new is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, change.new.content, change.new.mode)
        reload()
        verify()
    except (OberError, OSError) as exc:
        _restore(saved)
        prune_backups(backups)  # the live files are the backed-up ones again: their copies are not needed
        try:
            (undo or reload)()
        except OberError as again:
            raise OberError(
                f"{_why(exc)}; files restored, but the reload after restoring failed too: {again.message}",
                "check 'ober status' and the journal (ober logs)",
            ) from None
        raise OberError(f"{_why(exc)}; rolled back to the previous files", "fix the config and apply again") from None
    prune_backups(backups)
    return Applied(changes, backup if backup.exists() else None)


def prune_backups(backups: Path, keep: int = KEEP_BACKUPS) -> None:
    """Remove secret files (mode 600) from every backup, then all but the newest ``keep`` backups.

    Called once an apply succeeded: the rollback no longer needs the copies, and the secrets in them may be the ones
    just rotated away. What is left (haproxy.cfg, units, ober.yaml) holds no secret.
    """
    if not backups.is_dir():
        return
    backups.chmod(0o700)  # made 0755 by older versions
    for path in sorted(backups.rglob("*"), reverse=True):  # children before their directory
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077 == 0:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            continue  # pruning is tidying up: never a reason to fail an apply that worked
    # Names start with the time (YYYYmmdd-HHMMSS.nanoseconds-pid): sorted by name is sorted by age.
    for old in sorted(entry for entry in backups.iterdir() if entry.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _why(exc: BaseException) -> str:
    return exc.message if isinstance(exc, OberError) else f"{exc.__class__.__name__}: {exc}"


def _restore(saved: list[tuple[Path, Path | None]]) -> None:
    for target, copy in reversed(saved):
        try:
            if copy is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                # The copy's mode from the start: a copy-then-chmod would show a secret to others for a moment.
                write_atomic(target, copy.read_bytes(), stat.S_IMODE(copy.stat().st_mode))
        except OSError:
            continue  # restore as much as possible; the error that started this is what gets reported
