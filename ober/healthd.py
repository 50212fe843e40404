"""The ``ober health`` loop: ExaBGP spawns it; it observes, steps the state machine, and prints commands.

All I/O is here (HAProxy's runtime socket, the maintenance file, ExaBGP's pipes, signals, the state file); the
decisions are in :mod:`ober.health`. It never dies on a transient error (ExaBGP gives up on a helper that dies five
times in about a minute), reads ExaBGP's acknowledgements so the pipe never fills, exits cleanly when ExaBGP goes
away, and on SIGTERM/SIGINT withdraws everything it announced before exiting 0.

It also follows what changes under it while it runs: ``ober.yaml`` is read again when it changes (new VIPs are
checked and announced, removed ones withdrawn, new rise/fall/interval/drain taken; the VIPs that did not change
keep their announcement), and HAProxy's master process is watched through a pidfd, so a HAProxy that dies wakes
the loop at once instead of at its next interval.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Protocol

from ober.atomic import write_atomic
from ober.config import NodeConfig, Vip, load_config
from ober.errors import OberError
from ober.haproxy_runtime import HAProxyGone, Snapshot, snapshot
from ober.health import UNKNOWN, Action, Observation, Rules, State, VipState, command, step
from ober.metrics import HealthFacts, Histogram, VipFacts, service_digest
from ober.render import paths

# States in which a VIP's announcement is settled (announced or not) after a start.
DECIDED = (State.UP, State.DOWN, State.DISABLED, State.DRAINING)


def log(message: str) -> None:
    """A line for the journal (ExaBGP passes its helper's stderr on), prefixed so it can be grepped."""
    sys.stderr.write(f"[ober] {message}\n")
    sys.stderr.flush()


@dataclass
class Pipe:
    """ExaBGP's side: commands out on stdout, acknowledgements (and answers) in on stdin, read by a thread.

    Besides "done"/"error" acknowledgements, ExaBGP writes the answer to a ``show neighbor json`` this helper sent
    on the same pipe: one line holding a JSON list. :meth:`ask` uses that to learn the sessions' state without
    starting ``exabgp cli`` (a Python process: ~0.2 s of CPU each time).
    """

    out: IO[str]
    inp: IO[str]
    gone: threading.Event = field(default_factory=threading.Event)
    errors: int = 0
    _sending: threading.Lock = field(default_factory=threading.Lock)
    _asking: threading.Lock = field(default_factory=threading.Lock)
    _answered: threading.Event = field(default_factory=threading.Event)
    _answer: str | None = None

    def start(self) -> None:
        """Start reading acknowledgements in the background."""
        threading.Thread(target=self._read_acks, name="exabgp-acks", daemon=True).start()

    def _read_acks(self) -> None:
        try:
            for line in self.inp:
                text = line.strip()
                if text == "error":
                    self.errors += 1
                    log("ExaBGP answered 'error' to a command")
                elif text.startswith("["):
                    self._answer = text
                    self._answered.set()
        except (OSError, ValueError):
            pass
        self.gone.set()  # stdin closed: ExaBGP is gone

    def send(self, line: str) -> bool:
        """Send a command; False when ExaBGP has gone away. Safe from several threads (the loop, a scrape)."""
        with self._sending:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.gone.set()
                return False
        return True

    def ask_neighbors(self, timeout: float) -> str | None:
        """ExaBGP's ``show neighbor json`` answer (one line), or None when it did not answer within ``timeout``."""
        with self._asking:
            self._answered.clear()
            self._answer = None
            if not self.send("show neighbor json") or not self._answered.wait(timeout):
                return None
            return self._answer


@dataclass(frozen=True)
class Seen:
    """What one look at HAProxy found: its state, or None; ``gone`` when it is not running at all (not just slow)."""

    snapshot: Snapshot | None
    gone: bool = False


class Reason(enum.Enum):
    """Why a VIP is where it is: what the last check found (the value is the metrics label)."""

    HEALTHY = "healthy"
    NO_LIVE_SERVER = "no_live_server"
    HAPROXY_NOT_RUNNING = "haproxy_not_running"
    HAPROXY_NOT_ANSWERING = "haproxy_not_answering"
    MAINTENANCE = "maintenance"

    @property
    def text(self) -> str:
        """As the journal says it."""
        return "checks" if self is Reason.HEALTHY else self.value.replace("_", " ")


def reason(seen: Seen, healthy: bool, maintenance: bool) -> Reason:
    """The reason for one VIP after one check."""
    if maintenance:
        return Reason.MAINTENANCE
    if seen.gone:
        return Reason.HAPROXY_NOT_RUNNING
    if seen.snapshot is None:
        return Reason.HAPROXY_NOT_ANSWERING
    return Reason.HEALTHY if healthy else Reason.NO_LIVE_SERVER


def observe_haproxy(current: Callable[[], NodeConfig]) -> Callable[[], Seen]:
    """A function reading HAProxy's state (with the config in effect at each call)."""

    def read() -> Seen:
        config = current()
        where = paths(config)
        # The master first: after it died, a worker systemd has not killed yet may still answer `show stat`.
        if running(Path(where["pid_file"])) is False:
            return Seen(None, gone=True)
        try:
            return Seen(snapshot(health_socket(where), config.health.timeout))
        except HAProxyGone:
            return Seen(None, gone=True)
        except OberError:
            return Seen(None)  # running but no usable answer in time: a doubtful check

    return read


def health_socket(where: dict[str, str]) -> str:
    """The socket to read HAProxy's state from: the read-only health socket, or the admin socket without one.

    Only a HAProxy still running a config from before the health socket has none (an ``ober upgrade`` restarts this
    helper before the next ``ober config`` renders it); its units still run this helper as root then.
    """
    return where["health_socket"] if Path(where["health_socket"]).exists() else where["admin_socket"]


def running(pid_file: Path) -> bool | None:
    """Whether the process named in ``pid_file`` runs; None without a readable pid file (the socket decides then).

    An unreaped zombie does not run: a killed master is one until systemd reaps it, and signal 0 still reaches a
    zombie, so the loop, woken by the pidfd at the exit itself, would see a "live" master and a worker still
    answering for one more interval.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name in parentheses (which may itself hold spaces or parentheses).
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"], [])


def servable(vip: Vip, seen: Snapshot | None) -> bool:
    """A VIP is servable while HAProxy answers and its backend group has a live server."""
    return seen is not None and seen.live_servers(f"be_{vip.backend}") > 0


def select_vips(config: NodeConfig, only: list[str] | None) -> list[Vip]:
    """The VIPs this helper decides: all of the config's, or those named (by address or name)."""
    return [vip for vip in config.vips if not only or vip.address in only or vip.name in only]


def digest(data: bytes) -> str:
    """A short fingerprint of a config file's bytes: what the state file says is in effect."""
    return hashlib.sha256(data).hexdigest()[:16]


def file_digest(path: Path) -> str | None:
    """The fingerprint of the file at ``path`` (None when it cannot be read)."""
    try:
        return digest(path.read_bytes())
    except OSError:
        return None


@dataclass
class ConfigSource:
    """``ober.yaml`` on disk, looked at every round; :meth:`changed` returns a new valid config once per change."""

    path: Path
    digest: str | None = None
    signature: tuple[int, int, int] | None = None
    rejected: bool = False
    """The file on disk changed but is not valid: the previous config is still in effect."""

    def __post_init__(self) -> None:
        self.signature = self._stat()
        self.digest = file_digest(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> NodeConfig | None:
        """The new config if the file changed and is valid; None otherwise (an invalid one is logged, not taken)."""
        signature = self._stat()
        if signature is None or signature == self.signature:
            return None
        self.signature = signature
        new = file_digest(self.path)
        if new is None or new == self.digest:
            self.rejected = False
            return None
        try:
            config = load_config(self.path)
        except OberError as exc:
            # `ober config` validates before it writes, so this is a hand edit: keep deciding with the last good one.
            log(f"{self.path} changed but is not valid, still using the previous one: {exc}")
            self.rejected = True
            return None
        self.digest = new
        self.rejected = False
        return config


class Waker:
    """Wakes the loop early, from a signal handler or another thread: a self-pipe, no lock.

    Not a ``threading.Event``: a signal handler runs in the main thread between two bytecodes, and ``Event.set()``
    takes the lock the main thread may be holding in ``Event.wait()`` or ``clear()`` at that moment: the helper then
    hangs for good. (Seen in the lab: a drain's SIGUSR1 froze ``ober health``, and the drained node stayed announced.)
    A write to a non-blocking pipe takes no lock and is all a handler does.
    """

    def __init__(self) -> None:
        # Never closed: the HAProxy watcher thread may still wake it while the process exits.
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        """Wake the loop (safe in a signal handler)."""
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes it
            os.write(self._write, b"!")

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`set`; True if woken. A signal handler's set() ends the wait."""
        return bool(select.select([self._read], [], [], max(0.0, timeout))[0])

    def clear(self) -> None:
        """Forget the wake-ups so far."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass


class Settable(Protocol):
    """What :func:`watch_pid` wakes: a :class:`Waker` (or a ``threading.Event`` in tests)."""

    def set(self) -> None:
        """Wake the loop."""


def watch_pid(pid_file: Callable[[], Path], wake: Settable, stop: threading.Event) -> None:
    """Set ``wake`` the moment the process named in ``pid_file`` (HAProxy's master) exits; runs until ``stop``.

    A pidfd becomes readable when its process exits: no polling, and a crash is seen in milliseconds. Where pidfds
    are unavailable (kernel < 5.3) this returns and the loop's interval alone notices.
    """
    if not hasattr(os, "pidfd_open"):
        return
    while not stop.is_set():
        try:
            pid = int(pid_file().read_text().split()[0])
            fd = os.pidfd_open(pid)
        except (OSError, ValueError, IndexError):
            stop.wait(0.5)  # no HAProxy (yet, or again): look for a new pid file soon
            continue
        try:
            # Wake up now and then to follow a new pid file (HAProxy restarted under the same path).
            if select.select([fd], [], [], 2.0)[0]:
                wake.set()
                stop.wait(0.5)
        finally:
            os.close(fd)


@dataclass
class HealthLoop:
    """The loop's state; :meth:`tick` is one round, :meth:`shutdown` the withdraw-everything exit."""

    config: NodeConfig
    vips: list[Vip]
    pipe: Pipe
    observe: Callable[[], Seen]
    clock: Callable[[], float] = time.monotonic
    states: dict[str, VipState] = field(default_factory=dict)
    eor_sent: bool = False
    config_digest: str | None = None
    # What the metrics show (ober.metrics_server reads `facts`, rebuilt after every round: one reference swap, so a
    # scrape never waits for the loop nor the loop for a scrape).
    checks: int = 0
    durations: Histogram = field(default_factory=Histogram)
    reasons: dict[str, Reason] = field(default_factory=dict)
    live: dict[str, int | None] = field(default_factory=dict)
    transitions: dict[str, dict[str, int]] = field(default_factory=dict)
    updates: dict[str, dict[str, int]] = field(default_factory=dict)
    loaded: float = field(default_factory=time.time)
    service: str = ""
    facts: HealthFacts | None = None

    def __post_init__(self) -> None:
        self.service = service_digest(self.config)

    @property
    def rules(self) -> Rules:
        """The state machine's thresholds, from the config."""
        drain = self.config.bgp.drain
        return Rules(self.config.health.rise, self.config.health.fall, drain.delay if drain else None)

    def maintenance(self) -> bool:
        """Whether the maintenance (drain) file exists."""
        return Path(self.config.health.maintenance_file).exists()

    def tick(self) -> None:
        """One round: observe, step every VIP, send what changed, log transitions."""
        started = time.perf_counter()
        seen = self.observe()
        maintenance = self.maintenance()
        now = self.clock()
        for vip in self.vips:
            before = self.states.get(vip.address, UNKNOWN)
            healthy = servable(vip, seen.snapshot)
            # HAProxy gone, or its own checks say the group has no live server: no need for `fall` more rounds.
            definite = seen.gone or seen.snapshot is not None
            after, action = step(before, Observation(healthy, maintenance, now, definite), self.rules)
            self.states[vip.address] = after
            why = reason(seen, healthy, maintenance)
            self.reasons[vip.address] = why
            self.live[vip.address] = seen.snapshot.live_servers(f"be_{vip.backend}") if seen.snapshot else None
            if action is not None:
                self.pipe.send(command(action, vip.address, self.config.bgp.drain))
                self._count(self.updates, vip.address, action.value)
            if after.state is not before.state:
                self._count(self.transitions, vip.address, after.state.value)
            if after.state is not before.state or action is not None:
                done = f", {action.value}" if action else ""
                log(f"{vip.name} {vip.address}: {before.state.value} -> {after.state.value} ({why.text}){done}")
        self._end_of_rib()
        self.checks += 1
        self.durations.observe(time.perf_counter() - started)
        self.publish(haproxy_up=seen.snapshot is not None)

    @staticmethod
    def _count(counters: dict[str, dict[str, int]], address: str, key: str) -> None:
        # Copy on write: a scrape may hold the previous mapping; it must never see one change under it.
        mine = counters.get(address, {})
        counters[address] = {**mine, key: mine.get(key, 0) + 1}

    def publish(self, *, haproxy_up: bool) -> None:
        """Rebuild :attr:`facts`, what a scrape shows, from the state after this round."""
        wall, now = time.time(), self.clock()
        vips = tuple(
            VipFacts(
                address=vip.address,
                name=vip.name,
                backend=vip.backend,
                state=(state := self.states.get(vip.address, UNKNOWN)).state.value,
                # No reason before the VIP's first check: every series of the state set is 0 then.
                reason=why.value if (why := self.reasons.get(vip.address)) else "",
                announced=state.announced is not None,
                since=wall - (now - state.since) if state.known else self.loaded,
                live_servers=self.live.get(vip.address),
                transitions=self.transitions.get(vip.address, {}),
                updates=self.updates.get(vip.address, {}),
            )
            for vip in self.vips
        )
        self.facts = HealthFacts(
            checks=self.checks,
            durations=self.durations.copy(),
            last_check=wall,
            interval=self.config.health.interval,
            haproxy_up=haproxy_up,
            vips=vips,
        )

    def reconfigure(self, config: NodeConfig, only: list[str] | None, config_digest: str | None = None) -> None:
        """Take a changed ``ober.yaml``: withdraw VIPs that are gone, check new ones; the others keep their state."""
        vips = select_vips(config, only)
        kept = {vip.address for vip in vips}
        for vip in self.vips:
            if vip.address in kept:
                continue
            state = self.states.pop(vip.address, UNKNOWN)
            if state.announced is not None or not state.known:
                self.pipe.send(command(Action.WITHDRAW, vip.address, None))
                log(f"{vip.name} {vip.address}: no longer in the configuration, withdrawn")
        before = {vip.address for vip in self.vips}
        added = [vip for vip in vips if vip.address not in before]
        self.config, self.vips, self.config_digest = config, vips, config_digest
        self.loaded, self.service = time.time(), service_digest(config)
        health = config.health
        log(
            f"configuration changed: now watching {', '.join(v.address for v in vips) or 'no VIP'} every "
            f"{health.interval:g}s (rise {health.rise}, fall {health.fall})"
            + (f"; new: {', '.join(v.address for v in added)}" if added else "")
        )

    def _end_of_rib(self) -> None:
        """Under graceful restart, send End-of-RIB once every VIP has its first decision.

        The rendered exabgp.conf sets ``manual-eor`` then: after ExaBGP restarts, the router holds this node's routes
        as stale until End-of-RIB and drops those not re-announced by then. Sent before the ``rise`` checks passed,
        it would drop every route for those seconds (a change of the ECMP set that re-hashes other nodes' flows).
        """
        if self.eor_sent or not self.config.bgp.graceful_restart:
            return
        if all(self.states.get(vip.address, UNKNOWN).state in DECIDED for vip in self.vips):
            self.eor_sent = self.pipe.send("announce eor ipv4 unicast")
            log("first decision made for every VIP: End-of-RIB sent")

    def shutdown(self) -> None:
        """Withdraw whatever is announced (on SIGTERM/SIGINT)."""
        for vip in self.vips:
            state = self.states.get(vip.address)
            if state is not None and (state.announced is not None or not state.known):
                if self.pipe.send(command(Action.WITHDRAW, vip.address, None)):
                    log(f"{vip.name} {vip.address}: withdrawn on exit")
                    self._count(self.updates, vip.address, Action.WITHDRAW.value)
                self.states[vip.address] = VipState(State.DISABLED, 0, None, self.clock())

    def report(self) -> dict[str, object]:
        """The state file's content (read by ``ober status``)."""
        health = self.config.health
        return {
            "pid": os.getpid(),
            "updated": time.time(),
            # What is in effect: `ober config` waits until this matches the file it wrote.
            "config": self.config_digest,
            "rules": {"interval": health.interval, "rise": health.rise, "fall": health.fall},
            "vips": {
                vip.address: {
                    "name": vip.name,
                    "state": self.states.get(vip.address, UNKNOWN).state.value,
                    "announced": (a.value if (a := self.states.get(vip.address, UNKNOWN).announced) else None),
                }
                for vip in self.vips
            },
        }


def write_state(path: Path, data: dict[str, object]) -> None:
    """Write the state file atomically (a reader never sees half of it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten every interval: no fsync, which could stall the health loop on a busy disk for a file the next
        # tick replaces anyway. 640, as ExaBGP's umask made it before: root (ober status) reads it.
        write_atomic(path, json.dumps(data, indent=1), 0o640, sync=False)
    except OSError as exc:
        log(f"cannot write {path}: {exc.strerror}")


def state_file(config: NodeConfig) -> Path:
    """Where ``ober health`` publishes its state (a directory of its own: it may not write HAProxy's)."""
    return Path(paths(config)["health_state"])


def run(
    config: NodeConfig,
    only: list[str] | None = None,
    *,
    source: Path | None = None,
    inp: IO[str] | None = None,
    out: IO[str] | None = None,
) -> int:
    """Run until ExaBGP goes away or a signal arrives; returns the exit status (0).

    Args:
        config: the configuration to start with.
        only: VIP addresses or names to decide (default: all).
        source: the ``ober.yaml`` ``config`` came from; read again whenever it changes.
        inp: ExaBGP's acknowledgements [stdin].
        out: commands to ExaBGP [stdout].
    """
    pipe = Pipe(out or sys.stdout, inp or sys.stdin)
    watched = ConfigSource(source) if source is not None else None
    loop = HealthLoop(config, select_vips(config, only), pipe, lambda: Seen(None))
    loop.observe = observe_haproxy(lambda: loop.config)
    loop.config_digest = watched.digest if watched else None
    vips = loop.vips
    stop = threading.Event()
    # SIGUSR1 (sent by `ober drain`): look now, not at the next interval, so a drain withdraws within milliseconds
    # of the quiet moment it waited for. The handlers only write to the waker's pipe and set a flag: see Waker.
    wake = Waker()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: wake.set())
    pipe.start()
    # Here, not at the top: ober.metrics_server reads the drain record through ober.drain, which imports this module.
    from ober.metrics_server import Gatherer, serve

    loop.publish(haproxy_up=False)  # a scrape before the first round shows every VIP (in "init"), not none
    metrics = serve(Gatherer(loop, pipe, watched), paths(config)["metrics_socket"])
    threading.Thread(
        target=watch_pid,
        args=(lambda: Path(paths(loop.config)["pid_file"]), wake, stop),
        name="haproxy-pid",
        daemon=True,
    ).start()
    log(
        f"health: watching {', '.join(v.address for v in vips)} every {config.health.interval:g}s "
        f"(rise {config.health.rise}, fall {config.health.fall})"
    )
    target = state_file(config)
    while not stop.is_set() and not pipe.gone.is_set():
        started = time.monotonic()
        try:
            new = watched.changed() if watched else None
            if new is not None:
                loop.reconfigure(new, only, watched.digest if watched else None)
                target = state_file(loop.config)
            loop.tick()
            write_state(target, loop.report())
        except Exception as exc:  # a transient failure must never kill the helper
            log(f"health: check failed, will retry: {exc.__class__.__name__}: {exc}")
        wake.wait(loop.config.health.interval - (time.monotonic() - started))
        wake.clear()
        if stopping:
            stop.set()
    if pipe.gone.is_set():
        log("health: ExaBGP went away; exiting")
    else:
        loop.shutdown()
        write_state(target, loop.report())
        log("health: stopped by signal; everything withdrawn")
    if metrics is not None:
        metrics.stop()
    return 0
