"""The fleet lock: one changing fleet operation at a time, held on the nodes themselves.

Every operation that changes nodes (a roll, ``fleet drain|undrain|push|sync``) takes it. Every node of the fleet
holds a lock directory (``/var/lib/ober/fleet/lock``); the lock's scripts run under ``flock`` on the node, so
checking and taking it are one step: of two operators only one gets it. Inside, ``owner`` records who holds it
(user@host, pid, when, what for), a random token of this run (releasing and renewing touch only our own lock) and
the lease. The lock lives on the nodes, not on one workstation, because two operators work from two workstations.
Nodes are locked in name order, so two operations starting at once collide on the first node and one backs off.

Is the holder still alive? Neither its user@hostname (two workstations can share one) nor this machine's /proc
can tell. So the holder renews a lease on every node it holds (the owner file's time, on the node's own clock,
so clock skew between workstations does not matter); a lock whose lease ran out is taken over by the next
operation, and ``ober fleet lock --break`` removes one at once. The lease outlasts the longest time a holder may
not reach a node it holds (a node rebooting in a roll), so a live operation never loses it.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType

from ober.errors import OberError
from ober.render import FLEET_STATE_DIR
from ober.runner import Result, Runner

# Outside /run: the lock (and the roll's records) must survive a node's reboot in a --full roll.
STATE_DIR = FLEET_STATE_DIR
LOCK_TIMEOUT = 30.0
HELD = 3
LEASE = 900.0
"""Seconds a lock stays held after its holder's last renewal; longer than a reboot may take (reboot's 600 s)."""
RENEW_EVERY = 30.0
"""Seconds between two renewals of the lease on every node held."""
GUARD_WAIT = 10
"""Seconds a lock script waits for another one running on the same node (they take milliseconds)."""

# Every script first takes the node's lock-script mutex (flock on a file beside the lock): checking a lease and
# replacing the lock must be one step, or two operators could both find it expired and both take it.
_SERIAL = f"""set -u
d="$1"
mkdir -p "$d" || exit 4
exec 9>"$d/.lock-scripts" || exit 4
flock -w {GUARD_WAIT} 9 || {{ echo "another lock script holds $d/.lock-scripts" >&2; exit 5; }}
now=$(date +%s)
age() {{ echo $((now - $(stat -c %Y "$d/lock/owner" 2>/dev/null || stat -c %Y "$d/lock"))); }}
"""
_TAKE = (
    _SERIAL
    + """if [ -d "$d/lock" ]; then
    lease=$(sed -n 's/.*"lease": *\\([0-9][0-9]*\\).*/\\1/p' "$d/lock/owner" 2>/dev/null)
    held=$(age)
    # No lease (an older ober wrote it): held until broken.
    if [ -z "$lease" ] || [ "$lease" -eq 0 ] || [ "$held" -le "$lease" ]; then
        printf '%s\\n' "$(head -n 1 "$d/lock/owner" 2>/dev/null)"
        echo "$held"
        exit 3
    fi
    # The holder has not renewed its lease for longer than the lease: it is gone. Say whom we replace.
    printf '%s\\n' "$(head -n 1 "$d/lock/owner" 2>/dev/null)"
    echo "$held"
    rm -rf "$d/lock"
fi
mkdir "$d/lock" || exit 4
printf '%s\\n' "$2" > "$d/lock/owner.tmp" && mv "$d/lock/owner.tmp" "$d/lock/owner" && exit 0
rm -rf "$d/lock"
exit 4
"""
)
_RENEW = (
    _SERIAL
    + """grep -qF "$2" "$d/lock/owner" 2>/dev/null || exit 3
touch "$d/lock/owner"
"""
)
_RELEASE = (
    _SERIAL
    + """if grep -qF "$2" "$d/lock/owner" 2>/dev/null; then rm -rf "$d/lock"; fi
exit 0
"""
)
_SHOW = (
    _SERIAL
    + """[ -d "$d/lock" ] || exit 1
printf '%s\\n' "$(head -n 1 "$d/lock/owner" 2>/dev/null)"
age
"""
)
_BREAK = (
    _SERIAL
    + """[ -d "$d/lock" ] || exit 1
rm -rf "$d/lock"
"""
)


@dataclass(frozen=True)
class Holder:
    """Who holds the lock."""

    owner: str
    pid: int
    since: float
    operation: str
    token: str
    lease: float = 0.0
    """Seconds the lock stays held after its last renewal (0: a lock from an ober without leases, never expires)."""
    renewed_ago: float | None = None
    """Seconds since the last renewal, as the node's clock says (read from the node; not in the owner file)."""

    @classmethod
    def me(cls, operation: str, lease: float = LEASE) -> Holder:
        """A holder record for this run: the token is random per run, whatever user, host and pid say."""
        return cls(
            owner=f"{getpass.getuser()}@{socket.gethostname()}",
            pid=os.getpid(),
            since=time.time(),
            operation=operation,
            token=uuid.uuid4().hex,
            lease=lease,
        )

    def record(self) -> str:
        """The owner file's line (lease in whole seconds: the node's shell reads it)."""
        data = asdict(self)
        del data["renewed_ago"]
        data["lease"] = int(self.lease)
        return json.dumps(data)

    @classmethod
    def parse(cls, text: str) -> Holder:
        """Read a lock script's answer (the owner line, then the seconds since renewal); never raises.

        What cannot be read still counts as a lock (someone is taking it).
        """
        lines = text.strip().splitlines() or [""]
        try:
            ago: float | None = float(lines[1]) if len(lines) > 1 else None
        except ValueError:
            ago = None
        try:
            data = json.loads(lines[0])
            return cls(
                owner=str(data["owner"]),
                pid=int(data["pid"]),
                since=float(data["since"]),
                operation=str(data.get("operation", "")),
                token=str(data.get("token", "")),
                lease=float(data.get("lease", 0)),
                renewed_ago=ago,
            )
        except (ValueError, KeyError, TypeError):
            return cls("unknown (being taken, or unreadable)", 0, 0.0, "", "", renewed_ago=ago)

    def who(self) -> str:
        """``alice@ws (pid 42, restart)``."""
        return f"{self.owner} (pid {self.pid}" + (f", {self.operation})" if self.operation else ")")

    def describe(self, now: float | None = None) -> str:
        """``alice@ws (pid 42, restart) since 05:12:01 UTC, 3m ago; lease renewed 10s ago, expires in 14m``."""
        if not self.since:
            return self.owner
        age = max(0.0, (time.time() if now is None else now) - self.since)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        text = f"{self.who()} since {when}, {_age(age)} ago"
        if not self.lease:
            return text + "; no lease (an older ober): held until broken"
        if self.renewed_ago is not None:
            left = self.lease - self.renewed_ago
            expiry = f"expires in {_age(left)}" if left > 0 else "expired: the next operation takes it over"
            text += f"; lease renewed {_age(self.renewed_ago)} ago, {expiry}"
        return text


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
    """The lock, held on a set of nodes and renewed while held; a context manager that releases it at the end.

    ``lost`` names the nodes where a renewal found the lock no longer ours (broken, or taken over after the lease
    ran out); :meth:`ensure` raises then, so an operation stops before it withdraws another node.
    """

    def __init__(
        self,
        runners: Mapping[str, Runner],
        holder: Holder,
        base: str = STATE_DIR,
        *,
        renew_every: float = RENEW_EVERY,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.runners = dict(runners)
        self.holder = holder
        self.base = base
        self.renew_every = renew_every
        self.log = log
        self.held: list[str] = []
        self.lost: set[str] = set()
        self.kept: list[str] = []
        """After :meth:`release`: nodes where the lock could not be removed (still held there)."""
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self, timeout: float = LOCK_TIMEOUT) -> FleetLock:
        """Take the lock on every node, in name order; on any refusal release what was taken and raise.

        Raises:
            OberError: another operation holds it (naming who, since when, and its lease), or a node could not
                be reached.
        """
        record = self.holder.record()
        for node in sorted(self.runners):
            try:
                result = self.runners[node].run(_sh(_TAKE, self.base, record), timeout)
            except OberError as exc:  # the connection was lost
                result = Result(255, "", exc.message)
            if result.ok:
                self.held.append(node)
                if result.stdout.strip():
                    gone = Holder.parse(result.stdout)
                    ago = f" (last renewed {_age(gone.renewed_ago)} ago)" if gone.renewed_ago is not None else ""
                    self.log(f"{node}: took over the fleet lock of {gone.who()}: its lease had run out{ago}")
                continue
            self.release(timeout)
            if result.returncode == HELD:
                holder = Holder.parse(result.stdout)
                raise OberError(
                    f"the fleet is locked by {holder.describe()} (on {node})",
                    "wait for that operation to finish (ober fleet lock shows it); if it is gone for good: "
                    "ober fleet lock --break, or wait until its lease runs out",
                )
            raise _unreachable(node, result)
        if self.held:
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew_loop, name="ober-fleet-lock", daemon=True)
            self._renewer.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_every):
            self.renew()

    def renew(self, timeout: float = LOCK_TIMEOUT) -> None:
        """Renew the lease on every node held; a node that cannot be reached now is tried again next time."""
        for node in list(self.held):
            if self._stop.is_set():
                return
            try:
                result = self.runners[node].run(_sh(_RENEW, self.base, self.holder.token), timeout)
            except Exception:  # noqa: S112  # renewing goes on for the other nodes; a lost node is retried next time
                continue
            if result.returncode == HELD and node not in self.lost:
                self.lost.add(node)
                self.log(f"{node}: the fleet lock is no longer ours (broken, or taken over)")

    def ensure(self) -> None:
        """Raise if the lock was taken from us on some node (so the operation stops before its next change)."""
        if self.lost:
            raise OberError(
                f"the fleet lock was taken from this operation on {', '.join(sorted(self.lost))} "
                "(ober fleet lock --break, or its lease ran out): stopped before changing another node",
                "see who holds it with ober fleet lock, then run the command again",
            )

    def release(self, timeout: float = LOCK_TIMEOUT) -> list[str]:
        """Stop renewing and remove our lock wherever we hold it; returns the nodes where it is still held.

        Best effort: a node that cannot be reached keeps it until its lease runs out (or ober fleet lock --break).
        """
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout + LOCK_TIMEOUT)
            self._renewer = None
        kept: list[str] = []
        for node in list(self.held):
            try:
                result = self.runners[node].run(_sh(_RELEASE, self.base, self.holder.token), timeout)
            except Exception:  # releasing must go on for the other nodes, whatever one raised
                result = Result(255, "", "release raised")
            if not result.ok:
                kept.append(node)
            self.held.remove(node)
        self.kept = kept
        return kept

    def state(self) -> dict[str, object]:
        """The ``--json`` form of where the lock stands after :meth:`release`."""
        return {"released": not self.kept, "held_on": list(self.kept), "how_to_release": release_hint(self.kept)}

    def note(self) -> str:
        """One phrase for the operator, after :meth:`release`: released, or still held where and how to free it."""
        if not self.kept:
            return "the fleet lock is released"
        return f"the fleet lock is still held on {', '.join(self.kept)}: {release_hint(self.kept)}"

    def __enter__(self) -> FleetLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def release_hint(kept: list[str]) -> str | None:
    """How to free a lock left on ``kept`` (None when there is none)."""
    if not kept:
        return None
    return f"it expires {_age(LEASE)} after its last renewal, or remove it now with: ober fleet lock --break"


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
