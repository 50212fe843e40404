"""What a persistent lab made, on disk, and how it is stopped by PID from a later process.

A PID alone can be reused once its process is gone, so each is recorded with its start time (``/proc/PID/stat``
field 22): a process is ours only while both match, and nothing else is ever signalled. A process that has exited
but was not yet reaped (a zombie, whose parent was the process that ran ``up``) counts as gone.

A node's systemd-nspawn and the container's init change at every reboot of the node, so only the supervisor that
runs nspawn (`ober.lab.supervise`) is recorded; the others are looked up below it when needed (`NodeProcs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ober.atomic import write_atomic
from ober.errors import OberError
from ober.lab.netns import run

STATE = "state.json"
LOCK = ".lock"
POWEROFF_TIMEOUT = 20.0
TERM_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
POLL = 0.05
# What ``machinectl poweroff`` sends a container's systemd: start poweroff.target (a clean shutdown).
POWEROFF_SIGNAL = signal.SIGRTMIN + 4


@dataclass(frozen=True)
class Proc:
    """A process we started: its PID, its start time (clock ticks after boot) and what it is."""

    pid: int
    start: int
    what: str

    @classmethod
    def of(cls, pid: int, what: str) -> Proc:
        """The running process ``pid``, identified by its start time now."""
        stat = _stat(pid)
        return cls(pid, int(stat[19]) if stat else -1, what)

    @classmethod
    def load(cls, record: dict[str, Any] | None) -> Proc:
        """A recorded process (None, from a step that never ran, reads as a process that is gone)."""
        if not record:
            return cls(0, -1, "nothing")
        return cls(int(record["pid"]), int(record["start"]), str(record["what"]))

    def record(self) -> dict[str, Any]:
        """The form kept in the state file."""
        return {"pid": self.pid, "start": self.start, "what": self.what}

    def alive(self) -> bool:
        """Whether this very process still runs (same PID, same start time, not a zombie)."""
        stat = _stat(self.pid) if self.pid > 0 else None
        return stat is not None and stat[0] not in ("Z", "X") and int(stat[19]) == self.start

    def parent(self) -> int | None:
        """Its parent PID while it runs."""
        stat = _stat(self.pid) if self.alive() else None
        return int(stat[1]) if stat else None

    def signal(self, number: int) -> None:
        """Send a signal, only if it is still this process."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, number)

    def child(self, what: str) -> Proc | None:
        """Its first child now, while this very process runs (a child is never a reused PID: it is found now)."""
        if not self.alive():
            return None
        for task in sorted(Path(f"/proc/{self.pid}/task").glob("*")):
            with contextlib.suppress(OSError, ValueError):
                for pid in (task / "children").read_text().split():
                    found = Proc.of(int(pid), what)
                    if found.alive() and found.parent() == self.pid:
                        return found
        return None


@dataclass(frozen=True)
class NodeProcs:
    """A lab node's processes: the one the lab started (recorded), and the nspawn and init running below it now.

    ``top`` is the supervisor, which runs systemd-nspawn again after each reboot; nspawn's child is the container's
    init. A lab made before supervisors recorded its nspawn itself as ``top`` (that node did not survive a reboot).
    """

    name: str
    top: Proc
    supervised: bool

    @classmethod
    def load(cls, node: dict[str, Any]) -> NodeProcs:
        """A node of the state file."""
        name = str(node.get("name", "?"))
        if node.get("supervisor"):
            return cls(name, Proc.load(node["supervisor"]), supervised=True)
        return cls(name, Proc.load(node.get("nspawn")), supervised=False)

    def nspawn(self) -> Proc | None:
        """The systemd-nspawn running the node now; None while it is down (or between two runs of a reboot)."""
        if not self.supervised:
            return self.top if self.top.alive() else None
        return self.top.child(f"nspawn {self.name}")

    def init(self) -> Proc | None:
        """The container's init (its systemd) now: what ``nsenter -t`` needs; None while the node is down."""
        nspawn = self.nspawn()
        return nspawn.child(f"init {self.name}") if nspawn else None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after ``(comm)`` (which may hold spaces): state, ppid, …; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


class State:
    """The state file's data, saved atomically (temp file + rename, mode 600) after every step."""

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.path = directory / STATE
        self.data = data

    def save(self) -> None:
        """Write the state; a reader sees the old file or the new one."""
        write_private(self.path, json.dumps(self.data, indent=2) + "\n")


def read(directory: Path) -> State | None:
    """The state recorded in ``directory``, or None when there is none.

    Raises:
        OberError: the file exists but cannot be read as a lab's state.
    """
    path = directory / STATE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OberError(f"{path}: not a lab state file ({exc})", f"inspect it; remove {directory} by hand") from None
    if not isinstance(data, dict) or data.get("version") != 1:
        raise OberError(f"{path}: not a lab state file of this ober", f"inspect it; remove {directory} by hand")
    return State(directory, data)


def write_private(path: Path, text: str) -> None:
    """Write a file mode 600, atomically."""
    write_atomic(path, text, 0o600)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the lab directory's lock: two ``up``/``down`` on one lab never run at once.

    Raises:
        OberError: another ober lab command holds it.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (directory / LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OberError(f"another ober lab command is working on {directory}", "wait for it to finish") from None
        yield


def wait_gone(processes: Sequence[Proc], timeout: float) -> list[Proc]:
    """Wait up to ``timeout`` for the processes to exit; return those still running."""
    deadline = time.monotonic() + timeout
    while True:
        running = [p for p in processes if p.alive()]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(POLL)


def stop_all(processes: Sequence[Proc], timeout: float = TERM_TIMEOUT) -> list[str]:
    """SIGTERM the processes together, wait, SIGKILL what is left; return a problem per survivor."""
    for process in processes:
        process.signal(signal.SIGTERM)
    for process in wait_gone(processes, timeout):
        process.signal(signal.SIGKILL)
    return [f"{p.what} (PID {p.pid}) survived SIGKILL" for p in wait_gone(processes, KILL_TIMEOUT)]


def stop_nodes(nodes: Sequence[NodeProcs], timeout: float = POWEROFF_TIMEOUT) -> list[str]:
    """Shut the containers down cleanly, all at once; past ``timeout``, kill the inits of those still running.

    A supervised node gets SIGTERM at its supervisor: no more restarts, and nspawn, told the same, asks its
    container to shut down. An older node's systemd is asked directly (what ``machinectl poweroff`` sends). Killing
    nspawn alone would leave its container running (its init is reparented), so a stuck container's init is
    killed, found now as the current nspawn's child.
    """
    for node in nodes:
        if node.supervised:
            node.top.signal(signal.SIGTERM)
        else:
            init = node.init()
            if init is not None:
                init.signal(POWEROFF_SIGNAL)
    tops = [node.top for node in nodes]
    if wait_gone(tops, timeout):
        for node in nodes:
            init = node.init()
            if init is not None:
                init.signal(signal.SIGKILL)
    # An nspawn whose container is gone exits by itself (and its supervisor with it); the rest are killed.
    left = list(dict.fromkeys(p for n in nodes if n.top.alive() for p in (n.nspawn(), n.top) if p is not None))
    return stop_all(wait_gone(left, KILL_TIMEOUT), KILL_TIMEOUT)


def mounts_under(directory: Path) -> list[Path]:
    """The mount points at or below ``directory`` (from /proc/mounts; octal escapes decoded), deepest first."""
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = Path(line.split()[1].encode().decode("unicode_escape"))
        if point == directory or directory in point.parents:
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(directory: Path, recorded: Sequence[Path]) -> list[str]:
    """Unmount the recorded mounts and anything else mounted below ``directory``; return what stayed mounted."""
    problems = []
    for point in dict.fromkeys([*recorded, *mounts_under(directory)]):
        for attempt in range(5):
            if not point.is_mount():
                break
            done = run(["umount", str(point)], check=False)
            if done.returncode != 0 and attempt == 4:
                problems.append(f"cannot unmount {point}: {done.stderr.strip()}")
            time.sleep(0.2 * attempt)
    return problems


def remove(directory: Path, *, created: bool) -> None:
    """Remove what the lab wrote in ``directory`` (the directory too if the lab made it); never across a mount.

    Raises:
        OberError: something is still mounted below it.
    """
    mounted = mounts_under(directory)
    if mounted:
        raise OberError(f"{mounted[0]} is still mounted", f"umount {mounted[0]}, then ober lab down again")
    for entry in directory.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if created:
        (directory / LOCK).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()


def inotify_instances() -> tuple[int, int]:
    """(inotify instances open on this machine, the per-user limit).

    Containers without user namespaces run as the host's root, so every node's systemd, dbus and agetty (about 7
    to 10 instances a node) count against root's one limit, shared with every other lab on the machine. Past it,
    systemd inside a node fails to start path units ("Failed to allocate inotify fd: Too many open files").
    """
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    used = 0
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            used += sum(1 for fd in fd_dir.iterdir() if _readlink(fd) == "anon_inode:inotify")
    return used, limit


def _readlink(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""
