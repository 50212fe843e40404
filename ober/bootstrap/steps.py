"""Steps and their actions, and running them: the one place where bootstrap, uninstall and upgrade change the machine.

A :class:`Step` holds the actions that close one difference between the facts and what is wanted, or none and the
reason nothing needs doing. :func:`run_steps` carries them out in order and keeps the ledger.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ober.bootstrap.facts import FACT_TIMEOUT, HAPROXY, UNITS, installed_packages, parse_haproxy_ssl
from ober.bootstrap.ledger import Entry, Ledger
from ober.config import NodeConfig
from ober.errors import OberError
from ober.facts import parse_haproxy_version
from ober.lifecycle import graceful_stop
from ober.runner import Runner

COMMAND_TIMEOUT = 120.0
PACKAGE_TIMEOUT = 900.0
PIP_TIMEOUT = 900.0
NONINTERACTIVE = (("DEBIAN_FRONTEND", "noninteractive"),)


@dataclass(frozen=True)
class Run:
    """One command.

    ``record`` is written to the ledger before the command runs; ``forget`` is dropped from it once the command
    succeeded. A command with ``may_fail`` only warns when it fails.
    """

    argv: tuple[str, ...]
    timeout: float = COMMAND_TIMEOUT
    env: tuple[tuple[str, str], ...] = ()
    record: Entry | None = None
    forget: Entry | None = None
    may_fail: bool = False

    def describe(self) -> str:
        """The command as a shell line."""
        return " ".join([*(f"{key}={value}" for key, value in self.env), shlex.join(self.argv)])


@dataclass(frozen=True)
class InstallPackages:
    """Install packages (or, with ``upgrade``, upgrade them in place).

    The ledger records exactly the packages that were not installed before (dependencies too).
    """

    manager: str
    names: tuple[str, ...]
    aws_lc_repo: str | None = None
    upgrade: bool = False

    def argv(self) -> list[str]:
        """The install command."""
        if self.manager == "apt":
            # Never stop at a conffile question: keep what is there (none of it is ober's).
            confold = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
            only = ["--only-upgrade"] if self.upgrade else []
            return ["apt-get", "install", "-y", "-q", *only, *confold, *self.names]
        return ["dnf", "upgrade" if self.upgrade else "install", "-y", "-q", *self.names]

    def describe(self) -> str:
        """The command, and what is recorded."""
        env = "DEBIAN_FRONTEND=noninteractive " if self.manager == "apt" else ""
        return f"{env}{shlex.join(self.argv())}  (the packages it adds go into the ledger)"


@dataclass(frozen=True)
class StopUnits:
    """Stop ober's units; gracefully (withdraw, converge, drain) when the node's config can be read."""

    config: NodeConfig | None

    def describe(self) -> str:
        """What stopping does."""
        return "ober stop (withdraw, wait for the routers and clients)" if self.config else "systemctl stop ober-*"


@dataclass(frozen=True)
class RemoveLedger:
    """Delete the ledger right before the directory holding it is removed, if all it still lists is ``going``.

    When an earlier step failed, its change is still listed: the ledger, and so its directory, stay.
    """

    going: tuple[Entry, ...]

    def describe(self) -> str:
        """What it does."""
        return "remove the ledger (once it lists nothing else)"


Action = Run | InstallPackages | StopUnits | RemoveLedger


@dataclass(frozen=True)
class Step:
    """One thing to bring in line: the actions that do it, or none and ``why`` nothing needs doing.

    ``why`` says what the actions do or why there are none; ``warnings`` are shown either way; ``forget`` are
    ledger entries dropped once every action succeeded (uninstall).
    """

    name: str
    title: str
    why: str
    actions: tuple[Action, ...] = ()
    warnings: tuple[str, ...] = ()
    forget: tuple[Entry, ...] = ()

    @property
    def changes(self) -> bool:
        """Whether running it changes the machine."""
        return bool(self.actions)

    @property
    def commands(self) -> list[str]:
        """Each action as a line (for --dry-run)."""
        return [action.describe() for action in self.actions]


@dataclass(frozen=True)
class StepResult:
    """How a step went."""

    step: Step
    changed: bool
    detail: str
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None


class Reporter(Protocol):
    """Told when each step starts and ends (the CLI's progress display)."""

    def start(self, step: Step) -> None:
        """A step begins."""

    def done(self, result: StepResult) -> None:
        """A step ended."""


def _execute(action: Action, runner: Runner, ledger: Ledger, systemctl: Callable[..., None]) -> tuple[str, list[str]]:
    """Carry out one action; returns a note for the step's detail and warnings."""
    if isinstance(action, Run):
        if action.record is not None:
            ledger.add(action.record)
        done = runner.run(action.argv, action.timeout, dict(action.env) or None)
        if not done.ok:
            if action.may_fail:
                return "", [f"{shlex.join(action.argv)} failed ({done.last_line()}); going on"]
            raise OberError(f"{shlex.join(action.argv)}: {done.last_line()}")
        if action.forget is not None:
            ledger.drop(action.forget)
        return "", []
    if isinstance(action, InstallPackages):
        return _install(action, runner, ledger)
    if isinstance(action, StopUnits):
        if action.config is None:
            systemctl("stop", *UNITS)
        else:
            graceful_stop(action.config, systemctl)
        return "", []
    left = [entry for entry in ledger.entries if entry not in action.going]
    if left:
        raise OberError(
            f"kept {ledger.path}: it still lists {len(left)} changes not undone ({left[0].kind} {left[0].target})",
            "fix what failed above and run ober uninstall again",
        )
    ledger.remove()
    return "", []


def _install(action: InstallPackages, runner: Runner, ledger: Ledger) -> tuple[str, list[str]]:
    before = installed_packages(runner, action.manager)
    env = dict(NONINTERACTIVE) if action.manager == "apt" else None
    done = runner.run(action.argv(), PACKAGE_TIMEOUT, env)
    # Recorded even when the install failed: whatever it managed to add is bootstrap's to remove.
    added = tuple(sorted(installed_packages(runner, action.manager) - before))
    if added:
        ledger.add(Entry("packages", action.manager, added))
    if not done.ok:
        raise OberError(f"{shlex.join(action.argv())}: {done.last_line()}", "check the package repositories")
    note = f"installed {len(added)} packages ({', '.join(added)})" if added else "nothing new installed"
    warnings: list[str] = []
    if "haproxy" in action.names:
        output = runner.run([HAPROXY, "-vv"], FACT_TIMEOUT).stdout
        ssl, aws_lc = parse_haproxy_ssl(output)
        note = f"HAProxy {parse_haproxy_version(output) or '?'} ({ssl or 'SSL library unknown'}); {note}"
        if action.aws_lc_repo and not aws_lc:
            warnings.append(
                f"the installed HAProxy is not an AWS-LC build although {action.aws_lc_repo} configures one: "
                "is that repository reachable? (apt-cache policy haproxy / dnf info haproxy)"
            )
    return note, warnings


def run_steps(
    steps: Sequence[Step],
    runner: Runner,
    ledger: Ledger,
    *,
    reporter: Reporter | None = None,
    keep_going: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> list[StepResult]:
    """Run each step's actions in order, keeping the ledger; steps without actions report why.

    Args:
        steps: from :func:`plan_bootstrap` or :func:`plan_uninstall`.
        runner: runs the commands.
        ledger: bootstrap's ledger (written as changes happen).
        reporter: told about each step as it starts and ends.
        keep_going: after a failed step, go on with the next (uninstall removes what it can); the failures are
            in the results.
        clock: for the step durations.

    Raises:
        OberError: a step failed (without ``keep_going``); what was done so far is in the ledger.
    """

    def systemctl(*args: str) -> None:
        done = runner.run(["systemctl", *args], COMMAND_TIMEOUT)
        if not done.ok:
            raise OberError(f"systemctl {' '.join(args)}: {done.last_line()}")

    results: list[StepResult] = []
    for step in steps:
        if reporter:
            reporter.start(step)
        started = clock()
        notes: list[str] = []
        warnings = list(step.warnings)
        try:
            for action in step.actions:
                note, more = _execute(action, runner, ledger, systemctl)
                notes += [note] if note else []
                warnings += more
            for entry in step.forget:
                ledger.drop(entry)
        except OberError as exc:
            result = StepResult(step, True, step.why, tuple(warnings), clock() - started, exc.message)
            results.append(result)
            if reporter:
                reporter.done(result)
            if keep_going:
                continue
            raise OberError(
                f"{step.title}: {exc.message}",
                exc.fix or "fix that and run ober bootstrap again, or undo what it did with ober uninstall",
            ) from None
        detail = "; ".join([step.why, *notes]) if step.actions else step.why
        result = StepResult(step, step.changes, detail, tuple(warnings), clock() - started)
        results.append(result)
        if reporter:
            reporter.done(result)
    return results
