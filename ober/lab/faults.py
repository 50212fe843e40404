"""Accidents on a lab fleet, on purpose: what the failure-path tests and ``bench/failover.py --lab`` inflict.

Each fault runs inside the node through its init (``nsenter``), never over SSH (a frozen or broken node may not
answer it), and returns the wall-clock time of the fault itself, read on the node right before the act: the
node shares the host's clock, so the router's kernel route can be timed from that moment (`RouteLog`).

Every fault has its undo, and the lab's own records stay true: a daemon started again (a radosgw, the router's
BIRD) is written back to the lab's state file, so ``ober lab down`` still stops it by PID.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ober.config import DEFAULT_INSTALL_PATH
from ober.errors import OberError
from ober.lab import labstate
from ober.lab.fleet import LabFleet
from ober.lab.labstate import Proc
from ober.lab.netns import add_address, check_off_host, run, spawn_in
from ober.lab.rgw import RGW_PORT, http_get
from ober.render import install_paths

NODE_TIMEOUT = 30.0
STOP_WAIT = 10.0
HAPROXY = "/usr/sbin/haproxy"
# The lab nodes are installed at the default install path.
NODE = install_paths(DEFAULT_INSTALL_PATH)
HEALTH_STATE = NODE["health_state"]
# The node's clock right before the act: `date` prints the wall time the router's route is measured against.
NOW = "date +%s.%N"


def on_node(fleet: LabFleet, node: str, script: str, *, timeout: float = NODE_TIMEOUT) -> str:
    """Run a shell script inside ``node`` (all its namespaces, through its init); its stdout.

    Raises:
        OberError: the script failed or did not finish in time.
    """
    argv = ["nsenter", "-t", str(fleet.init_pid(node)), "-a", "sh", "-c", script]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise OberError(f"{node}: {script!r} did not finish in {timeout:g}s") from None
    if done.returncode != 0:
        raise OberError(f"{node}: {script!r} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return done.stdout


def _stamped(fleet: LabFleet, node: str, script: str) -> float:
    """Run ``script`` on the node after printing the node's clock; that time."""
    return float(on_node(fleet, node, f"{NOW}; {script}").split()[0])


def kill_haproxy(fleet: LabFleet, node: str, *, come_back: bool = True) -> float:
    """SIGKILL HAProxy's master (systemd then ends its workers).

    Without ``come_back`` its binary is made unexecutable first, so every restart systemd tries fails (until
    `fix_haproxy`).
    """
    broken = "" if come_back else f"chmod a-x {HAPROXY}; "
    return _stamped(fleet, node, f"{broken}systemctl kill -s KILL --kill-whom=main ober-http")


def fix_haproxy(fleet: LabFleet, node: str) -> float:
    """Make HAProxy's binary executable again (the cause of the crash loop is gone)."""
    return _stamped(fleet, node, f"chmod 755 {HAPROXY}")


def kill_haproxy_worker(fleet: LabFleet, node: str) -> float:
    """SIGKILL HAProxy's worker only, as the kernel's OOM killer picks the process with the most memory."""
    script = (
        "master=$(systemctl show -p MainPID --value ober-http); "
        'worker=$(cat /proc/$master/task/*/children | tr " " "\\n" | head -n 1); '
        f'test -n "$worker"; {NOW}; kill -KILL $worker'
    )
    return float(on_node(fleet, node, script).split()[0])


def kill_health(fleet: LabFleet, node: str, *, drain_first: bool = False) -> float:
    """SIGKILL ``ober health`` (ExaBGP starts a new one).

    With ``drain_first`` the old helper is frozen, the node drained behind its back, and only then killed: the new
    helper alone must withdraw what ExaBGP still announces.
    """
    pid = f"$(sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p' {HEALTH_STATE})"
    if not drain_first:
        return _stamped(fleet, node, f"kill -KILL {pid}")
    script = f"p={pid}; kill -STOP $p; touch {NODE['maintenance_file']}; sleep 1; {NOW}; kill -KILL $p"
    return float(on_node(fleet, node, script).split()[0])


def kill_exabgp(fleet: LabFleet, node: str) -> float:
    """SIGKILL ExaBGP: its session ends without a NOTIFICATION (systemd starts it again)."""
    return _stamped(fleet, node, "systemctl kill -s KILL --kill-whom=main ober-bgp")


def _payload_cgroup(fleet: LabFleet, node: str) -> Path:
    """The cgroup (v2) holding everything of the container: its init's cgroup's parent."""
    line = next(
        text for text in Path(f"/proc/{fleet.init_pid(node)}/cgroup").read_text().splitlines() if text.startswith("0::")
    )
    relative = line[3:].strip().lstrip("/")
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        found = root / relative
        if (found / "cgroup.procs").exists():
            return found.parent if found.name == "init.scope" else found
    raise OberError(f"{node}: no cgroup v2 directory for {relative}")


def freeze(fleet: LabFleet, node: str) -> float:
    """Freeze the whole node (cgroup freezer): a hung machine that closes no connection."""
    control = _payload_cgroup(fleet, node) / "cgroup.freeze"
    at = time.time()
    control.write_text("1")
    return at


def thaw(fleet: LabFleet, node: str) -> float:
    """Let a frozen node run again."""
    control = _payload_cgroup(fleet, node) / "cgroup.freeze"
    at = time.time()
    control.write_text("0")
    return at


def _program(proc: Proc) -> tuple[list[str], dict[str, str]]:
    """A running process's argv and environment, to start it again the same way."""
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    items = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in items if b"=" in item)
    return [arg.decode() for arg in argv], env


@dataclass
class Stopped:
    """Daemons a fault killed, and how to start each again."""

    fleet: LabFleet
    ns: str
    procs: list[Proc]
    argvs: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)
    at: float = 0.0


def kill_rgw_group(fleet: LabFleet, group: str) -> Stopped:
    """SIGKILL every radosgw of a backend group (the Ceph cluster stays); `restart_rgw_group` starts them again."""
    cluster = fleet.state.data["clusters"][group]
    procs = [Proc.load(r) for r in cluster["daemons"] if str(r["what"]).startswith("client.rgw")]
    live = [p for p in procs if p.alive()]
    if not live:
        raise OberError(f"no radosgw of {group} is running")
    stopped = Stopped(fleet, cluster["ns"], live, [_program(proc) for proc in live])
    stopped.at = time.time()
    for proc in live:
        proc.signal(signal.SIGKILL)
    labstate.wait_gone(live, STOP_WAIT)
    return stopped


def restart_rgw_group(stopped: Stopped) -> float:
    """Start the radosgw daemons `kill_rgw_group` killed, and record them in the lab's state."""
    fleet = stopped.fleet
    at = time.time()
    new: dict[str, Proc] = {}
    for proc, (argv, env) in zip(stopped.procs, stopped.argvs, strict=True):
        process = spawn_in(stopped.ns, argv, log=fleet.dir / f"{proc.what}-restarted.log", env=env)
        new[proc.what] = Proc.of(process.pid, proc.what)
    # Recorded, so that `ober lab down` stops them by PID like the ones the lab started.
    with labstate.locked(fleet.dir):
        cluster = next(c for c in fleet.state.data["clusters"].values() if c["ns"] == stopped.ns)
        cluster["daemons"] = [new[r["what"]].record() if r["what"] in new else r for r in cluster["daemons"]]
        fleet.state.save()
    return at


def restart_router(fleet: LabFleet, *, down: float = 0.0) -> float:
    """Restart the router's BIRD, as a router reboot (or a routing daemon crash) does.

    Every session ends and BIRD's kernel routes go with it; ``down`` seconds later it starts again with the same
    configuration.
    """
    router = fleet.state.data["router"]
    bird = Proc.load(router["bird"])
    argv, env = _program(bird)
    at = time.time()
    bird.signal(signal.SIGTERM)  # BIRD removes its kernel routes on a clean exit
    if labstate.wait_gone([bird], STOP_WAIT):
        bird.signal(signal.SIGKILL)
        labstate.wait_gone([bird], STOP_WAIT)
    time.sleep(down)
    process = spawn_in(router["ns"], argv, log=Path(router["rundir"]) / "bird.log", env=env)
    new = Proc.of(process.pid, bird.what)
    with labstate.locked(fleet.dir):
        fleet.state.data["router"]["bird"] = new.record()
        fleet.state.save()
    return at


class RouteLog:
    """The router's kernel route for each VIP, polled every ``interval`` in a thread, with wall-clock times.

    A context manager. :meth:`after` answers "how long after this moment until the route looked like that".
    """

    def __init__(self, fleet: LabFleet, vips: Sequence[str], interval: float = 0.01) -> None:
        self.fleet = fleet
        self.vips = list(vips)
        self.interval = interval
        self.samples: dict[str, list[tuple[float, tuple[str, ...]]]] = {vip: [] for vip in self.vips}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="route-log", daemon=True)

    def _poll(self) -> None:
        router = self.fleet.router
        while not self._stop.is_set():
            began = time.monotonic()
            for vip in self.vips:
                with contextlib.suppress(OberError):
                    hops = tuple(sorted(router.next_hops(vip)))
                    series = self.samples[vip]
                    if not series or series[-1][1] != hops:
                        series.append((time.time(), hops))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def now(self, vip: str) -> tuple[str, ...]:
        """The last next-hops seen for ``vip``."""
        series = self.samples[vip]
        return series[-1][1] if series else ()

    def after(self, at: float, vip: str, wanted: Callable[[tuple[str, ...]], bool]) -> float | None:
        """Seconds from ``at`` until the first route for ``vip`` that is ``wanted`` (None: not seen)."""
        series = self.samples[vip]
        current = [hops for when, hops in series if when <= at]
        if current and wanted(current[-1]):
            return 0.0
        return next((when - at for when, hops in series if when > at and wanted(hops)), None)

    def wait(self, at: float, vip: str, wanted: Callable[[tuple[str, ...]], bool], timeout: float) -> float | None:
        """Like :meth:`after`, waiting up to ``timeout`` seconds from ``at`` for it to happen."""
        while True:
            found = self.after(at, vip, wanted)
            if found is not None or time.time() - at > timeout:
                return found
            time.sleep(self.interval)

    def held(self, vip: str, since: float, until: float, wanted: Callable[[tuple[str, ...]], bool]) -> bool:
        """Whether every route seen for ``vip`` between ``since`` and ``until`` was ``wanted``."""
        series = self.samples[vip]
        before = [hops for when, hops in series if when <= since]
        during = [hops for when, hops in series if since < when <= until]
        return all(wanted(hops) for hops in (before[-1:] + during))

    def __enter__(self) -> RouteLog:
        self._thread.start()
        deadline = time.monotonic() + 5.0
        while any(not self.samples[vip] for vip in self.vips) and time.monotonic() < deadline:
            time.sleep(self.interval)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)


def without(address: str) -> Callable[[tuple[str, ...]], bool]:
    """A route predicate: ``address`` is not a next-hop."""
    return lambda hops: address not in hops


def with_(address: str) -> Callable[[tuple[str, ...]], bool]:
    """A route predicate: ``address`` is a next-hop."""
    return lambda hops: address in hops


def start_rgw(fleet: LabFleet, group: str, address: str, *, timeout: float = 60.0) -> str:
    """Start one more radosgw in a backend group's Ceph cluster, on ``address`` (port 7480); its endpoint.

    As cephadm does when it places another RGW daemon: the new radosgw joins the running cluster under a name of
    its own (``client.rgw.N``) and is recorded in the lab's state, so ``ober lab down`` stops it by PID.

    Raises:
        OberError: the address is not a lab address, no radosgw of the group runs to copy, or it did not answer.
    """
    cluster = fleet.state.data["clusters"][group]
    ns = cluster["ns"]
    rgws = [Proc.load(r) for r in cluster["daemons"] if str(r["what"]).startswith("client.rgw")]
    model = next((proc for proc in rgws if proc.alive()), None)
    if model is None:
        raise OberError(f"no radosgw of {group} runs to start another like it")
    check_off_host([ipaddress.IPv4Network(f"{address}/32")])
    endpoint = f"http://{address}:{RGW_PORT}"
    argv, env = _program(model)
    # A name of its own each time: a radosgw started under the name of one stopped moments ago can hang at start
    # (seen in the lab: no answer after minutes), while Ceph still holds the old one's watches.
    name = f"client.rgw.x{int(time.time()) % 100000}"
    argv = [*argv[: argv.index("-n")], "-n", name]
    # Its ceph.conf has no section for this name: what the others' sections set is given on the command line.
    argv += ["--rgw_frontends", f"beast endpoint={address}:{RGW_PORT} tcp_nodelay=1", "--ms_mon_client_mode", "crc"]
    # Ceph's default admin socket path (with PID and a pointer in it) can pass the 107 bytes a socket path may have.
    argv += ["--admin_socket", "$run_dir/$cluster-$name.asok"]
    add_address(ns, "lo", f"{address}/32")
    process = spawn_in(ns, argv, log=fleet.dir / f"{name}.log", env=env)
    with labstate.locked(fleet.dir):
        record = fleet.state.data["clusters"][group]
        record["daemons"].append(Proc.of(process.pid, name).record())
        record["endpoints"].append(endpoint)
        record.setdefault("added", {})[endpoint] = name
        fleet.state.save()
    deadline = time.monotonic() + timeout
    while not _answers(ns, endpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            raise OberError(f"{name} on {endpoint} did not answer in {timeout:g}s", f"see {fleet.dir}/{name}.log")
        time.sleep(0.5)
    return endpoint


def _answers(ns: str, endpoint: str) -> bool:
    try:
        return http_get(ns, endpoint)[0] == 200
    except OSError:
        return False


def stop_rgw(fleet: LabFleet, group: str, endpoint: str) -> None:
    """Stop a radosgw `start_rgw` started (SIGTERM, then SIGKILL, by its PID) and forget it in the lab's state."""
    with labstate.locked(fleet.dir):
        cluster = fleet.state.data["clusters"][group]
        name = cluster.get("added", {}).pop(endpoint, None)
        if name is None:
            raise OberError(f"{endpoint} is not a radosgw start_rgw started in {group}")
        [record] = [r for r in cluster["daemons"] if r["what"] == name]
        proc = Proc.load(record)
        proc.signal(signal.SIGTERM)
        if labstate.wait_gone([proc], STOP_WAIT):
            proc.signal(signal.SIGKILL)
            labstate.wait_gone([proc], STOP_WAIT)
        cluster["daemons"].remove(record)
        cluster["endpoints"].remove(endpoint)
        fleet.state.save()
    address = endpoint.removeprefix("http://").rsplit(":", 1)[0]
    run(["ip", "-n", cluster["ns"], "addr", "del", f"{address}/32", "dev", "lo"], check=False)
