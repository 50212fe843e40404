"""The fleet lock: one rolling operation at a time, held on the nodes themselves.

Every node of the fleet holds a lock directory (``/var/lib/ober/fleet/lock``) made with ``mkdir``, which is
atomic: of two operators only one can create it. Inside, ``owner`` records who holds it (user@host, pid, when,
what for) and a random token, so releasing removes only our own lock. The lock lives on the nodes, not on one
workstation, because two operators roll from two workstations. Nodes are locked in name order, so two rolls
starting at once collide on the first node and one of them backs off cleanly. A lock left by a roll that died
stays until broken explicitly (``ober fleet lock --break``): guessing that a holder is dead is how two rolls end
up running at once. The one exception is provable: a lock held by this user on this workstation by a process that
no longer runs (a roll that lost a node's SSH mid-roll could not release it there) is taken over.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from ober.errors import OberError
from ober.runner import Result, Runner

# Outside /run: the lock (and the roll's records) must survive a node's reboot in a --full roll.
STATE_DIR = "/var/lib/ober/fleet"
LOCK_TIMEOUT = 30.0
HELD = 3

_TAKE = """set -u
d="$1"
mkdir -p "$d" || exit 4
if mkdir "$d/lock" 2>/dev/null; then
    printf '%s\\n' "$2" > "$d/lock/owner.tmp" && mv "$d/lock/owner.tmp" "$d/lock/owner" && exit 0
    rm -rf "$d/lock"
    exit 4
fi
cat "$d/lock/owner" 2>/dev/null
exit 3
"""
_RELEASE = """d="$1"
if grep -qF "$2" "$d/lock/owner" 2>/dev/null; then rm -rf "$d/lock"; fi
exit 0
"""
_SHOW = """d="$1"
[ -d "$d/lock" ] || exit 1
cat "$d/lock/owner" 2>/dev/null || echo '{}'
"""
_BREAK = """d="$1"
[ -d "$d/lock" ] || exit 1
rm -rf "$d/lock"
"""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock."""

    owner: str
    pid: int
    since: float
    operation: str
    token: str

    @classmethod
    def me(cls, operation: str) -> Holder:
        """A holder record for this process."""
        return cls(
            owner=f"{getpass.getuser()}@{socket.gethostname()}",
            pid=os.getpid(),
            since=time.time(),
            operation=operation,
            token=uuid.uuid4().hex,
        )

    @classmethod
    def parse(cls, text: str) -> Holder:
        """Read an ``owner`` file; what cannot be read still counts as a lock (someone is taking it)."""
        try:
            data = json.loads(text)
            return cls(
                owner=str(data["owner"]),
                pid=int(data["pid"]),
                since=float(data["since"]),
                operation=str(data.get("operation", "")),
                token=str(data.get("token", "")),
            )
        except (ValueError, KeyError, TypeError):
            return cls(owner="unknown (being taken, or unreadable)", pid=0, since=0.0, operation="", token="")

    def gone_from_here(self) -> bool:
        """Held by this user on this machine by a process that no longer runs (so nobody holds it any more)."""
        me = Holder.me(self.operation)
        return self.owner == me.owner and self.pid not in (0, me.pid) and not Path(f"/proc/{self.pid}").exists()

    def describe(self, now: float | None = None) -> str:
        """``alice@ws (pid 42, restart) since 05:12:01 UTC, 3m ago``."""
        if not self.since:
            return self.owner
        age = max(0.0, (time.time() if now is None else now) - self.since)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        what = f"pid {self.pid}" + (f", {self.operation}" if self.operation else "")
        return f"{self.owner} ({what}) since {when}, {_age(age)} ago"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _sh(script: str, *args: str) -> list[str]:
    # Arguments travel as positional parameters, never pasted into the script: nothing to quote or inject.
    return ["sh", "-c", script, "ober-lock", *args]


def _unreachable(node: str, result: Result) -> OberError:
    return OberError(
        f"{node}: cannot take the fleet lock: {result.last_line()}", "check the node with ober fleet status"
    )


class FleetLock:
    """The lock, held on a set of nodes; a context manager that releases it however the block ends."""

    def __init__(self, runners: Mapping[str, Runner], holder: Holder, base: str = STATE_DIR) -> None:
        self.runners = dict(runners)
        self.holder = holder
        self.base = base
        self.held: list[str] = []

    def acquire(self, timeout: float = LOCK_TIMEOUT) -> FleetLock:
        """Take the lock on every node, in name order; on any refusal release what was taken and raise.

        Raises:
            OberError: another roll holds it (naming who and since when), or a node could not be reached.
        """
        record = json.dumps(asdict(self.holder))
        for node in sorted(self.runners):
            try:
                result = self.runners[node].run(_sh(_TAKE, self.base, record), timeout)
            except OberError as exc:  # the connection was lost
                result = Result(255, "", exc.message)
            if result.ok:
                self.held.append(node)
                continue
            if result.returncode == HELD and Holder.parse(result.stdout).gone_from_here():
                # Left by a roll of this workstation whose process has ended (it lost the node mid-roll, or was
                # killed): provably stale, so take it over instead of asking for --break.
                self.runners[node].run(_sh(_BREAK, self.base), timeout)
                result = self.runners[node].run(_sh(_TAKE, self.base, record), timeout)
                if result.ok:
                    self.held.append(node)
                    continue
            self.release(timeout)
            if result.returncode == HELD:
                holder = Holder.parse(result.stdout)
                raise OberError(
                    f"the fleet is locked by {holder.describe()} (on {node})",
                    "wait for that roll to finish; if it is gone for good: ober fleet lock --break",
                )
            raise _unreachable(node, result)
        return self

    def release(self, timeout: float = LOCK_TIMEOUT) -> list[str]:
        """Remove our lock wherever we hold it (best effort: a node that cannot be reached keeps it)."""
        kept: list[str] = []
        for node in list(self.held):
            try:
                result = self.runners[node].run(_sh(_RELEASE, self.base, self.holder.token), timeout)
            except Exception:  # releasing must go on for the other nodes, whatever one of them raised
                result = Result(255, "", "release raised")
            if not result.ok:
                kept.append(node)
            self.held.remove(node)
        return kept

    def __enter__(self) -> FleetLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def holders(runners: Mapping[str, Runner], base: str = STATE_DIR, timeout: float = LOCK_TIMEOUT) -> dict[str, Holder]:
    """Who holds the lock on each node that has one."""
    found: dict[str, Holder] = {}
    for node in sorted(runners):
        result = runners[node].run(_sh(_SHOW, base), timeout)
        if result.ok:
            found[node] = Holder.parse(result.stdout)
        elif result.returncode != 1:
            raise _unreachable(node, result)
    return found


def break_lock(runners: Mapping[str, Runner], base: str = STATE_DIR, timeout: float = LOCK_TIMEOUT) -> list[str]:
    """Remove the lock from every node that has one, whoever holds it; returns those nodes."""
    broken: list[str] = []
    for node in sorted(runners):
        result = runners[node].run(_sh(_BREAK, base), timeout)
        if result.ok:
            broken.append(node)
        elif result.returncode != 1:
            raise _unreachable(node, result)
    return broken
