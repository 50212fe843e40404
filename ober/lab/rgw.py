"""A real Ceph RGW backend group for the lab: one mon, one memstore OSD and several radosgw in a network namespace.

The cluster is Debian 12's Ceph 16, run the way it was verified to work on these machines: cephx off, objects in RAM
(memstore), one replica, no mgr. Every file it uses is under the caller's private work directory (config, maps,
data, run dir with the admin sockets, logs), so it never touches /etc/ceph, /var/lib/ceph or /var/run/ceph, nor a
system Ceph. Each daemon is started by ``ip netns exec`` (which execs it, so we hold its real PID) and is stopped by
that PID.

The radosgw daemons share the one cluster, like a real backend group: an object written through one is read
through another. `RgwCluster.stop_rgw` / `RgwCluster.start_rgw` take one down and back up to simulate a failed
backend. The namespace's addresses cannot be reached from the host's namespace, so `in_netns` runs a callable (a
boto3 request, an HTTP probe) in a thread that has joined the namespace.
"""

from __future__ import annotations

import ctypes
import http.client
import ipaddress
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ober.errors import OberError
from ober.facts import find_program
from ober.lab.netns import check_off_host, run, run_in, spawn_in, stop_process
from ober.render import render_template

RGW_PORT = 7480
RGW_TLS_PORT = 7443
MON_ID = "a"
OSD_ID = 0
USER = "ober-lab"
PROGRAMS = ("ceph", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool")
INSTALL_HINT = "apt-get install --no-install-recommends radosgw ceph-mon ceph-osd (Debian 12's Ceph 16)"
# 4 GiB, held in RAM only as far as used: a whole CI session's S3 load (16 MiB multipart uploads; parts of uploads an
# accident cut off wait for an abort or for garbage collection) filled 1 GiB, and a full OSD blocks every write.
MEMSTORE_BYTES = 4 << 30
PG_NUM = 8
GC_MIN_WAIT = 10
START_TIMEOUT = 120.0
RGW_START_TIMEOUT = 60.0
COMMAND_TIMEOUT = 30.0
# The OSD tells the mon it is going down and waits up to 5 s (osd_mon_shutdown_timeout) for an answer.
STOP_TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0
POLL = 0.1
NETNS_DIR = Path("/run/netns")
# sun_path is 108 bytes with its NUL; the daemons' admin sockets live in the run dir.
UNIX_PATH_MAX = 107
_CLONE_NEWNET = 0x40000000
# Lines after which radosgw never serves, though it may linger a while before exiting (a taken port), or forever
# (mon auth refused with -13 EACCES: radosgw wants "secure" mon connections unless ms_mon_client_mode says crc,
# and there are no cephx keys to secure them with). Caught at once instead of at the deadline.
RGW_FATAL = re.compile(r"failed to bind address|failed initializing frontend|get_initial_auth_request returned -13")
MON_PORTS = (3300, 6789)

T = TypeVar("T")


@dataclass(frozen=True)
class Layout:
    """Where a cluster's files live, all under one private work directory."""

    workdir: Path

    @property
    def conf(self) -> Path:
        """The one ceph.conf every daemon and command is given with ``-c``."""
        return self.workdir / "ceph.conf"

    @property
    def monmap(self) -> Path:
        """The initial monitor map the mon is made from."""
        return self.workdir / "monmap"

    @property
    def run_dir(self) -> Path:
        """Admin sockets and pid files."""
        return self.workdir / "run"

    @property
    def log_dir(self) -> Path:
        """Ceph's own logs (``ceph-<name>.log``) and each daemon's stdout/stderr (``<name>.out``)."""
        return self.workdir / "log"

    def log(self, name: str) -> Path:
        """Ceph's log file for a daemon named ``name`` (``mon.a``, ``osd.0``, ``client.rgw.0``)."""
        return self.log_dir / f"ceph-{name}.log"

    def output(self, name: str) -> Path:
        """What a daemon wrote to stdout and stderr: the only place for errors before its log is open."""
        return self.log_dir / f"{name}.out"

    def directories(self) -> tuple[Path, ...]:
        """The directories the daemons expect to exist."""
        work = self.workdir
        return (self.run_dir, self.log_dir, work / "mon", work / "osd" / f"ceph-{OSD_ID}", work / "crash", work / "tmp")


def render_ceph_conf(
    layout: Layout,
    fsid: str,
    mon_address: str,
    rgw_addresses: Sequence[str],
    *,
    memstore_bytes: int = MEMSTORE_BYTES,
    tls_pem: Path | None = None,
    dns_name: str | None = None,
) -> str:
    """The cluster's ceph.conf: pure, so the same arguments give the same text.

    The radosgw daemons are named ``client.rgw.<i>`` in the order of ``rgw_addresses``. With ``tls_pem`` (the
    certificate and its key) each also serves TLS itself on port 7443; with ``dns_name`` it takes requests for
    ``BUCKET.<dns_name>`` as virtual-hosted style.
    """
    return render_template(
        "lab/ceph.conf.j2",
        {
            "workdir": layout.workdir,
            "run_dir": layout.run_dir,
            "log_dir": layout.log_dir,
            "fsid": fsid,
            "mon_address": mon_address,
            "memstore_bytes": memstore_bytes,
            "pg_num": PG_NUM,
            "gc_min_wait": GC_MIN_WAIT,
            "rgw_init_timeout": int(RGW_START_TIMEOUT),
            "tls_pem": tls_pem,
            "dns_name": dns_name,
            "rgws": [
                {"name": rgw_name(index), "address": address, "port": RGW_PORT, "tls_port": RGW_TLS_PORT}
                for index, address in enumerate(rgw_addresses)
            ],
        },
    )


def rgw_name(index: int) -> str:
    """The Ceph name (without ``client.``) of the radosgw at ``index``."""
    return f"rgw.{index}"


def missing_programs() -> list[str]:
    """The Ceph programs this module runs that are not installed."""
    return [name for name in PROGRAMS if find_program(name) is None]


# --- running code inside the namespace ----------------------------------------------------------------------------


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def in_netns(netns: str, call: Callable[[], T], *, timeout: float = 60.0) -> T:
    """Run ``call`` in a new thread that has joined network namespace ``netns``, and return what it returns.

    Linux keeps the network namespace per thread, so only that thread moves: the rest of the process stays in the
    host's namespace. Sockets opened by ``call`` stay in ``netns`` for their whole life, even when used later from
    another thread; a new connection opened from the host's namespace would instead head for the host's default
    route, so make every request to a lab address through here. The thread serves one call and ends.

    Raises:
        OberError: ``netns`` does not exist, cannot be joined, or ``call`` did not return within ``timeout``.
        Exception: whatever ``call`` raised.
    """
    path = NETNS_DIR / netns
    if not path.exists():
        raise OberError(f"network namespace {netns} does not exist", f"ip netns add {netns}")
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                # os.setns only arrives in Python 3.12; glibc's setns(2) wrapper does the same.
                if _libc().setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OberError(f"cannot join network namespace {netns}: {os.strerror(code)}", "run as root")
            finally:
                os.close(fd)
            results.append(call())
        except BaseException as exc:  # handed to the caller's thread, which re-raises it
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"in-netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise OberError(f"a call inside network namespace {netns} did not return within {timeout:g}s")
    if errors:
        raise errors[0]
    return results[0]


def port_refuses(netns: str, address: str, port: int, *, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``address``:``port`` inside ``netns`` is refused (nothing listens there).

    Raises:
        OberError: the attempt failed otherwise (a timeout: the address is not local to the namespace).
    """

    def attempt() -> bool:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return False
        except ConnectionRefusedError:
            return True
        except OSError as exc:
            raise OberError(f"cannot probe {address}:{port} in namespace {netns}: {exc}") from None

    return in_netns(netns, attempt, timeout=timeout * 3)


def http_get(netns: str, endpoint: str, path: str = "/", *, timeout: float = PROBE_TIMEOUT) -> tuple[int, bytes]:
    """An anonymous ``GET`` of ``endpoint`` + ``path`` from inside ``netns``: the status and the body.

    Raises:
        OSError: the connection was refused, reset or timed out (``ConnectionRefusedError`` for a port nobody
            listens on).
        OberError: see `in_netns`.
    """
    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or RGW_PORT

    def get() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    return in_netns(netns, get, timeout=timeout * 3)


# --- daemons ------------------------------------------------------------------------------------------------------


class _Daemon:
    """One Ceph daemon run in the foreground (``-f``) inside the namespace, known by its PID.

    Args:
        fatal: lines in its output or log after which it will never become ready, though it may not exit.
        errno_exit: its exit status is an errno (radosgw returns ``-r`` when its frontend fails to start, and may
            exit before its log thread has written why).
    """

    def __init__(
        self,
        netns: str,
        name: str,
        argv: list[str],
        layout: Layout,
        *,
        fatal: re.Pattern[str] | None = None,
        errno_exit: bool = False,
    ) -> None:
        self.netns = netns
        self.name = name
        self.argv = argv
        self.log = layout.log(name)
        self.output = layout.output(name)
        self.fatal = fatal
        self.errno_exit = errno_exit
        self.process: subprocess.Popen[bytes] | None = None
        self._offsets = (0, 0)

    def start(self) -> None:
        """Start it; the log files are appended to, so remember where this run's lines begin."""
        self._offsets = (_size(self.log), _size(self.output))
        self.process = spawn_in(self.netns, self.argv, log=self.output)

    @property
    def pid(self) -> int | None:
        """Its PID while it runs."""
        return self.process.pid if self.process is not None and self.alive else None

    @property
    def alive(self) -> bool:
        """Whether it was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL; a daemon never started or already gone is fine."""
        if self.process is not None:
            stop_process(self.process, STOP_TIMEOUT)

    def last_line(self, *, errors: bool = False) -> str:
        """The last line it logged since it was started.

        With ``errors``, the last error it printed comes first: Ceph prints only errors on stderr (``err to
        stderr``), and after a crash the log's last line is often an unrelated one from another thread.
        """
        log, output = _lines(self.log, self._offsets[0]), _lines(self.output, self._offsets[1])
        lines = (output or log) if errors else (log or output)
        return lines[-1] if lines else "no output"

    def failure(self) -> str | None:
        """Why it will not become ready (a fatal line, or it exited), or None while it still may."""
        if self.fatal is not None:
            for line in [*_lines(self.output, self._offsets[1]), *_lines(self.log, self._offsets[0])]:
                if self.fatal.search(line):
                    return line
        if self.process is not None and self.process.poll() is not None:
            status = self.process.returncode
            meaning = f" ({os.strerror(status)})" if self.errno_exit and status > 0 else ""
            return f"exited with status {status}{meaning}; last logged: {self.last_line(errors=True)}"
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _lines(path: Path, offset: int, tail: int = 64 * 1024) -> list[str]:
    """The non-empty lines of a log written since ``offset`` (its last ``tail`` bytes at most), each shortened."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(min(offset, size), size - tail))
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [line.strip()[:300] for line in text.splitlines() if line.strip()]


def _stop_all(daemons: Sequence[_Daemon]) -> None:
    """Stop daemons newest first (radosgw, then the OSD while the mon can still hear it, then the mon)."""
    problems: list[str] = []
    for daemon in reversed(daemons):
        try:
            daemon.stop()
        except Exception as exc:  # keep going: every daemon gets its chance to be stopped
            problems.append(f"{daemon.name}: {exc}")
    if problems:
        raise OberError(f"could not stop {'; '.join(problems)}", "kill them by PID")


def _wait_until(doing: str, ready: Callable[[], bool], watch: Sequence[_Daemon], deadline: float) -> None:
    """Poll ``ready`` until it holds; fail at once when a watched daemon dies, or at ``deadline``.

    The last daemon in ``watch`` is the one being waited for: its last log line goes into the timeout's message.
    """
    start = time.monotonic()
    while True:
        for daemon in watch:
            failure = daemon.failure()
            if failure is not None:
                raise OberError(f"{daemon.name} failed while {doing}: {failure}", f"see {daemon.log}")
        if ready():
            return
        if time.monotonic() >= deadline:
            waited = time.monotonic() - start
            last = watch[-1]
            raise OberError(
                f"{doing}: not done after {waited:.0f}s; {last.name} last logged: {last.last_line()}", f"see {last.log}"
            )
        time.sleep(POLL)


# --- the cluster --------------------------------------------------------------------------------------------------


class RgwCluster:
    """A running lab cluster. Build it with `start_cluster`; `stop` it (or use it as a context manager).

    Attributes:
        netns: the namespace it runs in.
        layout: where its files are.
        endpoints: one ``http://ADDRESS:7480`` per radosgw, in the order of the addresses given.
        tls_endpoints: one ``https://ADDRESS:7443`` per radosgw when it serves TLS itself, else empty.
        access_key: the S3 access key of the lab's user.
        secret_key: that user's secret key.
        timings: seconds each bring-up step took (``mon``, ``osd``, ``rgw``, ``user``).
        bringup_seconds: the whole bring-up, from the first command to the keys.
    """

    def __init__(
        self,
        netns: str,
        layout: Layout,
        daemons: Sequence[_Daemon],
        endpoints: Sequence[str],
        keys: tuple[str, str],
        timings: dict[str, float],
        bringup_seconds: float,
        tls_endpoints: Sequence[str] = (),
    ) -> None:
        self.netns = netns
        self.layout = layout
        self._daemons = list(daemons)
        self._rgws = [daemon for daemon in daemons if daemon.name.startswith("client.")]
        self.endpoints = tuple(endpoints)
        self.tls_endpoints = tuple(tls_endpoints)
        self.access_key, self.secret_key = keys
        self.timings = dict(timings)
        self.bringup_seconds = bringup_seconds

    def __enter__(self) -> RgwCluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        """The PID of each running daemon, by Ceph name."""
        return {daemon.name: pid for daemon in self._daemons if (pid := daemon.pid) is not None}

    def ceph(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a ``ceph`` command against this cluster (inside its namespace) and return its output."""
        return _ceph(self.netns, self.layout, *args, timeout=timeout)

    def stop_rgw(self, index: int) -> None:
        """Stop the radosgw at ``index`` (its port then refuses connections); already stopped is fine."""
        self._rgws[index].stop()

    def start_rgw(self, index: int, *, timeout: float = RGW_START_TIMEOUT) -> None:
        """Start the radosgw at ``index`` again and wait until it answers; already running is fine.

        Raises:
            OberError: the cluster was stopped, or radosgw exited or did not answer within ``timeout``.
        """
        daemon = self._rgws[index]
        if daemon.alive:
            return
        core = [d for d in self._daemons if d not in self._rgws]
        if not all(d.alive for d in core):
            raise OberError(f"cannot start {daemon.name}: the cluster in {self.netns} is stopped")
        deadline = time.monotonic() + timeout
        endpoint = self.endpoints[index]
        url = urlsplit(endpoint)
        _check_free(self.netns, url.hostname or "", url.port or RGW_PORT)
        daemon.start()
        try:
            _wait_until(
                f"starting {daemon.name} on {endpoint}",
                partial(_rgw_answers, self.netns, endpoint),
                [*core, daemon],
                deadline,
            )
        except BaseException:
            daemon.stop()  # it will not serve: leave it down, as it was
            raise

    def stop(self) -> None:
        """Stop every daemon by its PID (radosgw first, the mon last). Safe to call again; leaves nothing running.

        Raises:
            OberError: a daemon survived SIGKILL (every other daemon was still stopped).
        """
        _stop_all(self._daemons)


def start_cluster(
    netns: str,
    workdir: Path,
    rgw_addresses: Sequence[str],
    mon_address: str,
    *,
    memstore_bytes: int = MEMSTORE_BYTES,
    timeout: float = START_TIMEOUT,
    tls_pem: Path | None = None,
    dns_name: str | None = None,
) -> RgwCluster:
    """Bring up a one-node Ceph cluster with one radosgw per address, inside ``netns``, and an S3 user.

    Args:
        netns: an existing network namespace holding ``mon_address`` and every RGW address (``/32`` on ``lo`` is
            enough), with ``lo`` up.
        workdir: a private directory, empty or not yet there, for every file of the cluster.
        rgw_addresses: one address per radosgw; each listens on port 7480 there.
        mon_address: the mon's (and the OSD's) address.
        memstore_bytes: the OSD's capacity, held in RAM.
        timeout: the deadline for the whole bring-up, in seconds.
        tls_pem: a PEM holding a certificate and its key: each radosgw then also serves TLS on port 7443, as
            ``tls_endpoints`` (to compare S3 through ober with S3 straight to RGW over TLS).
        dns_name: RGW's ``rgw dns name``: requests for ``BUCKET.<dns_name>`` are virtual-hosted style.

    Raises:
        OberError: bad addresses, Ceph missing, a non-empty work directory, or a daemon that exited or was not
            ready in time (quoting its last log line). Whatever was started is stopped first.
    """
    start = time.monotonic()
    deadline = start + timeout
    mon, rgws = _check_addresses(netns, mon_address, rgw_addresses)
    missing = missing_programs()
    if missing:
        raise OberError(f"Ceph programs missing: {', '.join(missing)}", INSTALL_HINT)
    # A port already answering would pass our readiness checks on the other listener's behalf.
    rgw_ports = (RGW_PORT, RGW_TLS_PORT) if tls_pem is not None else (RGW_PORT,)
    for address, port in [*((mon, port) for port in MON_PORTS), *((a, port) for a in rgws for port in rgw_ports)]:
        _check_free(netns, address, port)
    layout = _prepare(workdir)
    fsid = str(uuid.uuid4())
    layout.conf.write_text(
        render_ceph_conf(layout, fsid, mon, rgws, memstore_bytes=memstore_bytes, tls_pem=tls_pem, dns_name=dns_name)
    )
    daemons: list[_Daemon] = []
    timings: dict[str, float] = {}
    try:
        mark = time.monotonic()
        _start_mon(netns, layout, fsid, mon, daemons, deadline)
        timings["mon"], mark = time.monotonic() - mark, time.monotonic()
        _start_osd(netns, layout, daemons, deadline)
        timings["osd"], mark = time.monotonic() - mark, time.monotonic()
        endpoints = [f"http://{address}:{RGW_PORT}" for address in rgws]
        _start_rgws(netns, layout, endpoints, daemons, deadline)
        timings["rgw"], mark = time.monotonic() - mark, time.monotonic()
        if tls_pem is not None:
            for address in rgws:
                _wait_until(
                    f"radosgw's TLS endpoint on {address}:{RGW_TLS_PORT}",
                    partial(_listens, netns, address, RGW_TLS_PORT),
                    daemons,
                    deadline,
                )
        keys = _create_user(netns, layout)
        timings["user"] = time.monotonic() - mark
    except BaseException as exc:
        try:
            _stop_all(daemons)
        except OberError as leftover:  # the bring-up's own error stays the one raised
            exc.add_note(str(leftover))
        raise
    tls_endpoints = [f"https://{address}:{RGW_TLS_PORT}" for address in rgws] if tls_pem is not None else []
    return RgwCluster(netns, layout, daemons, endpoints, keys, timings, time.monotonic() - start, tls_endpoints)


# Each step appends a daemon to ``running`` as soon as it is started, so a failed bring-up stops it too.


def _start_mon(netns: str, layout: Layout, fsid: str, address: str, running: list[_Daemon], deadline: float) -> None:
    """Make the monitor map and the mon's store, start mon.a, and wait for its quorum (of one)."""
    conf = str(layout.conf)
    monmap = ["monmaptool", "--create", "--fsid", fsid, "--addv", MON_ID, f"[v2:{address}:3300,v1:{address}:6789]"]
    run([*monmap, str(layout.monmap)], timeout=COMMAND_TIMEOUT)
    run_in(netns, ["ceph-mon", "-c", conf, "--mkfs", "-i", MON_ID, "--monmap", str(layout.monmap)])
    mon = _Daemon(netns, f"mon.{MON_ID}", ["ceph-mon", "-f", "-c", conf, "-i", MON_ID], layout)
    mon.start()
    running.append(mon)
    _wait_until("starting the mon", partial(_mon_in_quorum, netns, layout), running, deadline)


def _start_osd(netns: str, layout: Layout, running: list[_Daemon], deadline: float) -> None:
    """Register osd.0 with the mon, make its memstore, start it, and wait until the mon has it up."""
    osd_uuid = str(uuid.uuid4())
    _ceph(netns, layout, "osd", "new", osd_uuid, str(OSD_ID))
    argv = ["ceph-osd", "-c", str(layout.conf), "-i", str(OSD_ID)]
    # Inside the namespace: mkfs asks the mon for the cluster's maps.
    run_in(netns, [*argv, "--mkfs", "--osd-uuid", osd_uuid], timeout=COMMAND_TIMEOUT)
    osd = _Daemon(netns, f"osd.{OSD_ID}", [argv[0], "-f", *argv[1:]], layout)
    osd.start()
    running.append(osd)
    _wait_until("starting the OSD", partial(_osd_up, netns, layout), running, deadline)


def _start_rgws(netns: str, layout: Layout, endpoints: list[str], running: list[_Daemon], deadline: float) -> None:
    """Start one radosgw per endpoint and wait until each answers."""
    core = list(running)
    # Started together: the first creates RGW's pools and the others wait for them, so N cost about one.
    for index in range(len(endpoints)):
        name = f"client.{rgw_name(index)}"
        argv = ["radosgw", "-f", "-c", str(layout.conf), "-n", name]
        running.append(_Daemon(netns, name, argv, layout, fatal=RGW_FATAL, errno_exit=True))
        running[-1].start()
    for index, endpoint in enumerate(endpoints):
        rgw = running[len(core) + index]
        _wait_until(
            f"starting {rgw.name} on {endpoint}", partial(_rgw_answers, netns, endpoint), [*core, rgw], deadline
        )


def _check_addresses(netns: str, mon_address: str, rgw_addresses: Sequence[str]) -> tuple[str, list[str]]:
    try:
        mon = ipaddress.IPv4Address(mon_address)
        rgws = [ipaddress.IPv4Address(address) for address in rgw_addresses]
    except ValueError as exc:
        raise OberError(f"bad lab address: {exc}", "give IPv4 addresses such as 100.64.1.11") from None
    if not rgws:
        raise OberError("no radosgw address given", "give at least one, such as 100.64.1.11")
    if len({mon, *rgws}) != len(rgws) + 1:
        raise OberError(f"lab addresses repeat: mon {mon}, radosgw {', '.join(map(str, rgws))}", "give distinct ones")
    # Refused even though they live only in the namespace: a mistake must never route the host's own traffic there.
    check_off_host([ipaddress.IPv4Network(address) for address in (mon, *rgws)])
    if not (NETNS_DIR / netns).exists():
        raise OberError(f"network namespace {netns} does not exist", f"ip netns add {netns}")
    shown = json.loads(run(["ip", "-n", netns, "-j", "-4", "addr", "show"]).stdout or "[]")
    present = {info["local"] for link in shown for info in link.get("addr_info", [])}
    for address in (mon, *rgws):
        if str(address) not in present:
            raise OberError(
                f"{address} is not an address in namespace {netns}", f"ip -n {netns} addr add {address}/32 dev lo"
            )
    return str(mon), [str(address) for address in rgws]


def _check_free(netns: str, address: str, port: int) -> None:
    if not port_refuses(netns, address, port):
        raise OberError(
            f"something already listens on {address}:{port} in namespace {netns}", "stop it, or give other addresses"
        )


def _prepare(workdir: Path) -> Layout:
    layout = Layout(workdir.resolve())
    if layout.workdir.exists() and any(layout.workdir.iterdir()):
        raise OberError(f"work directory {layout.workdir} is not empty", "give a new or empty directory")
    longest = layout.run_dir / f"ceph-client.{rgw_name(99)}.asok"
    if len(str(longest)) > UNIX_PATH_MAX:
        raise OberError(f"work directory {layout.workdir} is too long for Ceph's admin sockets", "use a shorter path")
    layout.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for directory in layout.directories():
        directory.mkdir(parents=True, exist_ok=True)
    return layout


def _ceph(netns: str, layout: Layout, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
    # --connect-timeout bounds the wait for the mon, below our own timeout, so a dead mon is an error, not a hang.
    argv = ["ceph", "-c", str(layout.conf), "--connect-timeout", str(max(1, int(timeout / 2))), *args]
    return run_in(netns, argv, timeout=timeout).stdout


def _ceph_json(netns: str, layout: Layout, *args: str) -> Any:
    """A ``ceph`` query's JSON answer, or None while the cluster cannot answer yet."""
    try:
        return json.loads(_ceph(netns, layout, "-f", "json", *args, timeout=2 * PROBE_TIMEOUT + 1))
    except (OberError, ValueError):
        return None


def _mon_in_quorum(netns: str, layout: Layout) -> bool:
    status = _ceph_json(netns, layout, "quorum_status")
    return isinstance(status, dict) and MON_ID in status.get("quorum_names", [])


def _osd_up(netns: str, layout: Layout) -> bool:
    status = _ceph_json(netns, layout, "osd", "stat")
    return isinstance(status, dict) and status.get("num_up_osds", 0) >= 1


def _listens(netns: str, address: str, port: int) -> bool:
    try:
        return not port_refuses(netns, address, port)
    except OberError:
        return False


def _rgw_answers(netns: str, endpoint: str) -> bool:
    try:
        status, _ = http_get(netns, endpoint)
    except (OSError, OberError):
        return False
    return status == 200  # RGW answers an anonymous GET / with 200 and an empty bucket list once it serves


def _create_user(netns: str, layout: Layout) -> tuple[str, str]:
    argv = ["radosgw-admin", "-c", str(layout.conf), "user", "create", "--uid", USER, "--display-name", "ober lab"]
    answer = json.loads(run_in(netns, argv, timeout=COMMAND_TIMEOUT).stdout)
    key = answer["keys"][0]
    return str(key["access_key"]), str(key["secret_key"])
