"""``ober uninstall``'s facts and plan.

Undo bootstrap's ledger, newest change first, and remove ``ober config``'s files; never anything ober did not write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ober.apply import manifest_path
from ober.bootstrap.facts import UNITS, UnitState, installed_packages, read_link, read_unit
from ober.bootstrap.ledger import Entry, Ledger, ledger_path
from ober.bootstrap.steps import (
    NONINTERACTIVE,
    PACKAGE_TIMEOUT,
    PIP_TIMEOUT,
    Action,
    RemoveLedger,
    Run,
    Step,
    StopUnits,
)
from ober.config import NodeConfig, load_config
from ober.errors import OberError
from ober.facts import account_names
from ober.render import install_paths
from ober.runner import Runner
from ober.services import NETWORK_APPLY, NETWORK_DIRS


@dataclass(frozen=True)
class UninstallFacts:
    """What uninstall looks at: the ledger, ober config's manifest, what exists, the units."""

    install_path: str
    ledger: tuple[Entry, ...]
    manifest: tuple[str, ...]
    existing: frozenset[str]
    """Which of the manifest's files and ober's own state paths exist."""
    children: Mapping[str, frozenset[str]]
    """For each directory the ledger lists: the full paths of what is in it now."""
    units: Mapping[str, UnitState]
    installed: frozenset[str] = frozenset()
    """Which of the ledger's packages are still installed."""
    config: NodeConfig | None = None
    systemd: bool = True
    links: Mapping[str, str | None] = field(default_factory=dict)
    """For each link the ledger lists: where it points now (None: not a link any more)."""
    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    """The users and groups that exist (bootstrap's are removed only while they do)."""


def _state_paths(install_path: str) -> dict[str, str]:
    layout = install_paths(install_path)
    return {key: layout[key] for key in ("manifest", "maintenance_file", "backup", "config")}


def gather_uninstall_facts(install_path: str, runner: Runner, root: Path = Path("/")) -> UninstallFacts:
    """Read the ledger, ober config's manifest and the units' states (nothing is changed).

    Raises:
        OberError: the ledger is corrupt.
    """

    def on(path: str) -> Path:
        return root / path.lstrip("/")

    ledger = Ledger.load(on(str(ledger_path(install_path)))).entries
    try:
        manifest = tuple(str(item) for item in json.loads(on(manifest_path(install_path)).read_text()))
    except (OSError, ValueError, TypeError):
        manifest = ()
    candidates = [*manifest, *_state_paths(install_path).values()]
    existing = frozenset(path for path in candidates if on(path).exists() or on(path).is_symlink())
    children = {
        entry.target: frozenset(f"{entry.target}/{child.name}" for child in on(entry.target).iterdir())
        for entry in ledger
        if entry.kind == "directory" and on(entry.target).is_dir()
    }
    systemd = (root / "run/systemd/system").is_dir()
    units = {unit: read_unit(runner, unit) for unit in UNITS} if systemd else {}
    installed: set[str] = set()
    for entry in ledger:
        if entry.kind == "packages":
            installed |= set(entry.names) & installed_packages(runner, entry.target)
    config = None
    if on(_state_paths(install_path)["config"]).is_file():
        try:
            config = load_config(on(_state_paths(install_path)["config"]))
        except OberError:
            config = None  # a broken config still lets uninstall stop the units, just not gracefully
    links = {entry.target: read_link(on(entry.target)) for entry in ledger if entry.kind == "symlink"}
    users, groups = account_names(root)
    return UninstallFacts(
        install_path,
        tuple(ledger),
        manifest,
        existing,
        children,
        units,
        frozenset(installed),
        config,
        systemd,
        links,
        users,
        groups,
    )


def plan_uninstall(facts: UninstallFacts, *, keep_config: bool = False) -> list[Step]:
    """The steps that undo bootstrap (its ledger, newest change first) and remove ``ober config``'s files; pure.

    Files and directories ober did not write are kept, and so is every directory holding one: the steps say
    which. ``keep_config`` keeps ``ober.yaml`` and its backups too.
    """
    install = facts.install_path
    state = _state_paths(install)
    steps: list[Step] = []

    active = [unit for unit, s in facts.units.items() if s.is_active]
    enabled = [unit for unit, s in facts.units.items() if s.is_enabled]
    stop: list[Action] = [StopUnits(facts.config)] if active else []
    if enabled:
        stop.append(Run(("systemctl", "disable", *enabled)))
    why = f"stop {', '.join(active) or 'nothing'}, disable {', '.join(enabled) or 'nothing'}"
    steps.append(
        Step("units", "Stop and disable ober's units", why if stop else "ober's units are not running", tuple(stop))
    )

    keep = {state["config"]} if keep_config else set()
    files = [path for path in (*facts.manifest, state["manifest"], state["maintenance_file"]) if path in facts.existing]
    files = sorted(set(files) - keep)
    removed = set(files)
    actions: list[Action] = [Run(("rm", "-f", *files))] if files else []
    if state["backup"] in facts.existing and not keep_config:
        actions.append(Run(("rm", "-rf", state["backup"])))
        removed.add(state["backup"])
    if facts.systemd and any(path.startswith("/etc/systemd/system/") for path in files):
        actions.append(Run(("systemctl", "daemon-reload")))
    for manager, directory in NETWORK_DIRS.items():
        if facts.systemd and any(path.startswith(directory) for path in files):
            # The VIP interface's file is gone; its manager may not run any more, which is fine.
            actions.append(Run(tuple(NETWORK_APPLY[manager].split()), may_fail=True))
    sysctl = " (kernel settings stay in effect until reboot)" if "/etc/sysctl.d/90-ober.conf" in removed else ""
    why = f"remove {len(files)} files ober config wrote{sysctl}" + (
        ", its backups" if state["backup"] in removed else ""
    )
    steps.append(
        Step(
            "files", "Remove ober config's files", why if actions else "no files of ober config's here", tuple(actions)
        )
    )

    venv_entries = [e for e in facts.ledger if e.kind == "venv"]
    for entry in reversed(facts.ledger):
        if entry.kind in ("directory", "mode", "venv"):
            continue
        steps.append(_undo(entry, facts, venv_removed=bool(venv_entries)))
    steps.append(_plan_remove_dirs(facts, removed, venv_entries))
    return steps


def _undo(entry: Entry, facts: UninstallFacts, *, venv_removed: bool) -> Step:
    """The step undoing one ledger entry (other than directories and the venv)."""
    unit = entry.target
    if entry.kind == "packages":
        names = tuple(name for name in entry.names if name in facts.installed)
        title = f"Remove the packages bootstrap installed ({entry.target})"
        if not names:
            return Step("packages", title, "none of them is installed any more", forget=(entry,))
        # dpkg/rpm remove exactly these, and refuse when another package still needs one: nothing else goes.
        argv = ("dpkg", "--purge", *names) if entry.target == "apt" else ("rpm", "-e", *names)
        env = NONINTERACTIVE if entry.target == "apt" else ()
        return Step("packages", title, f"remove {', '.join(names)}", (Run(argv, PACKAGE_TIMEOUT, env, forget=entry),))
    if entry.kind == "pip":
        title = f"Remove {', '.join(entry.names)} from {entry.target}"
        if venv_removed or not entry.names:
            return Step("pip", title, "the venv goes as a whole", forget=(entry,))
        argv = (f"{entry.target}/bin/python", "-m", "pip", "uninstall", "-y", "-q", *entry.names)
        return Step("pip", title, "installed there by bootstrap", (Run(argv, PIP_TIMEOUT, forget=entry),))
    if entry.kind == "symlink":
        title = f"Remove the link {entry.target}"
        wanted, have = (entry.names or ("",))[0], facts.links.get(entry.target)
        if have is None:
            return Step("symlink", title, "it is gone already", forget=(entry,))
        if have != wanted:
            return Step("symlink", title, f"it points to {have} now, not to {wanted}: left alone", forget=(entry,))
        return Step(
            "symlink", title, f"made by bootstrap, to {wanted}", (Run(("rm", "-f", entry.target), forget=entry),)
        )
    if entry.kind in ("user", "group"):
        title = f"Remove the {entry.kind} {entry.target} bootstrap created"
        if entry.target not in (facts.users if entry.kind == "user" else facts.groups):
            return Step(entry.kind, title, f"there is no {entry.kind} {entry.target} any more", forget=(entry,))
        if entry.kind == "user":
            return Step("user", title, "its units are stopped", (Run(("userdel", entry.target), forget=entry),))
        # userdel may have removed the user's group of the same name with it (USERGROUPS_ENAB in login.defs).
        script = 'getent group "$1" >/dev/null || exit 0; groupdel "$1"'
        run = Run(("sh", "-c", script, "groupdel", entry.target), forget=entry)
        return Step("group", title, "unless userdel removed it with its user", (run,))
    if entry.kind == "selinux-boolean":
        value = "1" if entry.was == "on" else "0"
        title = f"Restore SELinux {entry.target}"
        return Step(
            "selinux", title, f"back to {entry.was}", (Run(("setsebool", "-P", unit, value), 600.0, forget=entry),)
        )
    if entry.kind in ("service-disabled", "service-enabled"):
        back_on = entry.kind == "service-disabled"
        title = f"{'Re-enable' if back_on else 'Disable'} {unit} as it was before bootstrap"
        commands: list[tuple[str, ...]] = []
        if back_on:
            commands += [("systemctl", "enable", unit)] if entry.enabled else []
            commands += [("systemctl", "start", unit)] if entry.active else []
        else:
            commands += [("systemctl", "disable", unit)] if not entry.enabled else []
            commands += [("systemctl", "stop", unit)] if not entry.active else []
        before = f"{'enabled' if entry.enabled else 'disabled'} and {'active' if entry.active else 'inactive'}"
        if not commands or not facts.systemd:
            return Step("service", title, f"it was {before} before bootstrap: nothing to restore", forget=(entry,))
        actions = tuple(Run(argv) for argv in commands)
        return Step("service", title, f"it was {before} before bootstrap", actions, forget=(entry,))
    return Step("unknown", f"Unknown ledger entry {entry.kind}", "left in the ledger: remove it by hand")


def _plan_remove_dirs(facts: UninstallFacts, removed: set[str], venv_entries: list[Entry]) -> Step:
    """Remove the venv and the directories bootstrap created that hold nothing else; say what is kept and why."""
    install = facts.install_path
    ledger_file = str(ledger_path(install))
    actions: list[Action] = []
    forget: list[Entry] = []
    kept: list[str] = []
    for entry in venv_entries:
        actions.append(Run(("rm", "-rf", entry.target), forget=entry))
        removed.add(entry.target)
    dirs = sorted((e for e in facts.ledger if e.kind == "directory"), key=lambda e: e.target.count("/"), reverse=True)
    going = [e for e in facts.ledger if e.kind in ("directory", "mode")]
    for entry in dirs:
        path = entry.target
        if path not in facts.children:
            forget.append(entry)  # gone already: only its ledger entry is left
        elif path == install_paths(install)["run_dir"]:
            # Runtime state only (sockets, pid and health files), remade by the units.
            actions.append(Run(("rm", "-rf", path), forget=entry))
            removed.add(path)
        elif others := sorted(facts.children[path] - removed - {ledger_file}):
            kept.append(f"{path} (holds {', '.join(PurePosixPath(other).name for other in others)})")
            going.remove(entry)
        else:
            if str(PurePosixPath(ledger_file).parent) == path:
                actions.append(RemoveLedger(tuple(going)))
            actions.append(Run(("rmdir", path), forget=entry))
            removed.add(path)
    for entry in (e for e in facts.ledger if e.kind == "mode"):
        if entry.target in removed or entry.target not in facts.children:
            forget.append(entry)
        else:
            actions.append(Run(("chmod", entry.was, entry.target), forget=entry))
    gone = [a.argv[-1] for a in actions if isinstance(a, Run) and a.argv[0] in ("rm", "rmdir")]
    why = f"remove {', '.join(gone)}" if gone else "no directories of bootstrap's to remove"
    if kept:
        why += f"; kept, holding files ober did not write: {'; '.join(kept)}"
    return Step("dirs", "Remove the venv and bootstrap's directories", why, tuple(actions), forget=tuple(forget))


def uninstall_changes(steps: Sequence[Step]) -> bool:
    """Whether an uninstall plan has anything to do (machine changes, or ledger entries to drop)."""
    return any(step.actions or step.forget for step in steps)
