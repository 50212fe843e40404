"""Network namespaces for the lab: small typed wrappers around iproute2, and a `Lab` that undoes what it made.

Everything a lab creates lives inside namespaces it created itself: links, addresses, routes and sysctls are
never touched on the host's own namespace (its network carries apt and pip for the whole machine). Names carry
a per-run prefix (``ober-<pid>-<token>-``), so parallel runs never collide and a dead run's leftovers are
recognised by `cleanup_stale`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ober.errors import OberError

ROOT_PREFIX = "ober-"
RUN_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# A Lab's default prefix: ``ober-<pid>-<4 hex>-``. Only names of this shape are ever cleaned up as stale.
_OWNER = re.compile(r"^ober-(\d+)-[0-9a-f]{4}-")


def run(argv: Sequence[str], *, timeout: float = RUN_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output.

    Raises:
        OberError: the program is missing, timed out, or (with ``check``) exited non-zero; the message is one
            line quoting the command and its last line of output.
    """
    command = " ".join(argv)
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise OberError(f"{argv[0]} is not installed", f"install it to run: {command}") from None
    except subprocess.TimeoutExpired:
        raise OberError(f"{command} did not finish in {timeout:g}s") from None
    if check and done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise OberError(f"{command} failed (exit {done.returncode}): {last}")
    return done


def run_in(
    ns: str, argv: Sequence[str], *, timeout: float = RUN_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns`` (see `run`)."""
    return run(["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check)


def spawn_in(
    ns: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start a long-running program inside ``ns``, its output appended to ``log``.

    ``ip netns exec`` execs the program, so the returned PID is the program's own: stop it with `stop_process`.
    Output goes to a file rather than a pipe, which nobody would drain, so a chatty daemon can never block.
    """
    merged = {**os.environ, **env} if env is not None else None
    with log.open("ab") as out:
        try:
            # Its own session: a daemon is stopped by its PID, never by a signal meant for the terminal's job (a
            # Ctrl-C, a hangup), so a persistent lab (`ober lab up`) outlives the command that started it.
            return subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=merged,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise OberError("ip is not installed", "apt-get install iproute2") from None


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process by its PID: SIGTERM, wait up to ``timeout``, then SIGKILL. A process already gone is fine."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def add_netns(name: str) -> None:
    """Create a namespace with its loopback up (a fresh namespace's ``lo`` is down)."""
    run(["ip", "netns", "add", name])
    link_up(name, "lo")


def list_netns() -> list[str]:
    """The names of all network namespaces (``ip netns list`` adds ``(id: N)`` after some)."""
    done = run(["ip", "netns", "list"])
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    """The PIDs of processes running inside a namespace."""
    return [int(pid) for pid in run(["ip", "netns", "pids", name]).stdout.split()]


def delete_netns(name: str) -> None:
    """Kill whatever still runs inside a namespace (by PID), then delete it; a missing namespace is fine.

    Deleting only unmounts the name: processes left inside would keep the namespace, and its links, alive.
    """
    if name not in list_netns():
        return
    for pid in netns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run(["ip", "netns", "delete", name])


def add_veth(ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
    """Link two namespaces by a veth pair, both ends up; the pair is made inside ``ns_a``, never on the host."""
    run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
    link_up(ns_a, if_a)
    link_up(ns_b, if_b)


def add_bridge(ns: str, name: str) -> None:
    """Create a bridge inside ``ns`` and bring it up."""
    run(["ip", "-n", ns, "link", "add", name, "type", "bridge"])
    link_up(ns, name)


def attach(ns: str, ifname: str, bridge: str) -> None:
    """Make an interface a port of a bridge in the same namespace."""
    run(["ip", "-n", ns, "link", "set", ifname, "master", bridge])


def link_up(ns: str, ifname: str) -> None:
    """Bring an interface up."""
    run(["ip", "-n", ns, "link", "set", ifname, "up"])


def add_address(ns: str, ifname: str, cidr: str) -> None:
    """Add an address (``100.64.0.11/24``) to an interface."""
    run(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])


def add_route(ns: str, destination: str, via: str) -> None:
    """Add a route (``default`` or a prefix) through a gateway."""
    run(["ip", "-n", ns, "route", "add", destination, "via", via])


def set_sysctl(ns: str, key: str, value: str) -> None:
    """Set a sysctl inside ``ns`` (the ``net.*`` keys are per namespace; the host's values stay as they are)."""
    run_in(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks the host's own namespace routes to, except the default route (read, never changed)."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    destinations = {route["dst"] for route in routes if route.get("dst", "default") != "default"}
    return sorted(ipaddress.IPv4Network(dst, strict=False) for dst in destinations)


def check_off_host(networks: Sequence[ipaddress.IPv4Network]) -> None:
    """Refuse lab networks that overlap what the host itself uses, so no lab mistake can take the host offline.

    Raises:
        OberError: naming the lab network and the host's network it overlaps.
    """
    used_here = host_networks()
    for network in networks:
        for used in used_here:
            if network.overlaps(used):
                raise OberError(
                    f"lab network {network} overlaps {used}, which this host uses",
                    "pick lab addresses from 100.64.0.0/10 or 198.51.100.0/24",
                )


def owner_pid(name: str) -> int | None:
    """The PID of the lab run that named a namespace ``ober-<pid>-<token>-…``, or None for other names."""
    match = _OWNER.match(name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = ROOT_PREFIX) -> list[str]:
    """Delete the lab namespaces named ``prefix…`` whose run is no longer alive; return their names.

    Only names a `Lab` made by default (``ober-<pid>-<token>-…``) are considered. A namespace whose owner (the
    PID in its name) still runs belongs to a live lab, maybe a parallel test, and is left alone: that lab
    removes its own. Namespaces named any other way belong to someone else and are never touched.
    """
    removed = []
    for name in list_netns():
        pid = owner_pid(name)
        if not name.startswith(prefix) or pid is None or _alive(pid):
            continue
        delete_netns(name)
        removed.append(name)
    return removed


class Lab:
    """What one lab run made (namespaces, processes, a work directory), torn down in reverse on `close`.

    Use it as a context manager. `close` is idempotent and keeps going past failures (after a partial setup,
    some things may never have existed), raising one `OberError` at the end if anything could not be removed.

    Args:
        prefix: the namespace name prefix; by default unique per run, ``ober-<pid>-<token>-``.
        keep_files: leave the work directory (configs, logs) in place after `close`, for a post-mortem.
        workdir: the work directory (created if need be); by default a new temporary one.
    """

    def __init__(self, prefix: str | None = None, *, keep_files: bool = False, workdir: Path | None = None) -> None:
        self.prefix = prefix or f"{ROOT_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-"
        if workdir is not None:
            workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=self.prefix))
        self.keep_files = keep_files
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        # Stops that need more than a PID (a Ceph cluster stops in order): run first, newest first.
        self.cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def path(self, *parts: str) -> Path:
        """A directory inside the lab's work directory, created on first use."""
        directory = self.workdir.joinpath(*parts)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def netns(self, short: str) -> str:
        """Create the namespace ``<prefix><short>`` and return its full name."""
        name = self.prefix + short
        run(["ip", "netns", "add", name])
        # Recorded once it exists (a name that was taken is not ours to delete), before anything else can fail.
        self.namespaces.append(name)
        link_up(name, "lo")
        return name

    def spawn(
        self, ns: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a program inside ``ns`` (see `spawn_in`) and remember it for `close`."""
        process = spawn_in(ns, argv, log=log, env=env)
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Stop the processes (newest first), delete the namespaces (newest first), remove the work directory.

        Raises:
            OberError: something could not be stopped or deleted (everything else was still torn down).
        """
        problems: list[str] = []
        while self.cleanups:
            cleanup = self.cleanups.pop()
            try:
                cleanup()
            except (OberError, OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"cleanup: {exc}")
        while self.processes:
            process = self.processes.pop()
            try:
                stop_process(process)
            except (OSError, subprocess.TimeoutExpired) as exc:
                problems.append(f"process {process.pid}: {exc}")
        while self.namespaces:
            name = self.namespaces.pop()
            try:
                delete_netns(name)
            except OberError as exc:
                problems.append(str(exc))
        if not self.keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise OberError(
                f"lab teardown incomplete: {'; '.join(problems)}",
                f"once this process has exited, run cleanup_stale({self.prefix!r})",
            )
