"""The ``ober health`` loop: ExaBGP spawns it; it observes, steps the state machine, and prints commands.

All I/O is here (HAProxy's runtime socket, the maintenance file, ExaBGP's pipes, signals, the state file); the
decisions are in :mod:`ober.health`. It never dies on a transient error (ExaBGP gives up on a helper that dies five
times in about a minute), reads ExaBGP's acknowledgements so the pipe never fills, exits cleanly when ExaBGP goes
away, and on SIGTERM/SIGINT withdraws everything it announced before exiting 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from ober.config import NodeConfig, Vip
from ober.errors import OberError
from ober.haproxy_runtime import Snapshot, snapshot
from ober.health import Action, Observation, Rules, State, VipState, command, step
from ober.render import paths

# States in which a VIP's announcement is settled (announced or not) after a start.
DECIDED = (State.UP, State.DOWN, State.DISABLED, State.DRAINING)


def log(message: str) -> None:
    """A line for the journal (ExaBGP passes its helper's stderr on), prefixed so it can be grepped."""
    sys.stderr.write(f"[ober] {message}\n")
    sys.stderr.flush()


@dataclass
class Pipe:
    """ExaBGP's side: commands out on stdout, acknowledgements in on stdin (read by a thread)."""

    out: IO[str]
    inp: IO[str]
    gone: threading.Event = field(default_factory=threading.Event)
    errors: int = 0

    def start(self) -> None:
        """Start reading acknowledgements in the background."""
        threading.Thread(target=self._read_acks, name="exabgp-acks", daemon=True).start()

    def _read_acks(self) -> None:
        try:
            for line in self.inp:
                if line.strip() == "error":
                    self.errors += 1
                    log("ExaBGP answered 'error' to a command")
        except (OSError, ValueError):
            pass
        self.gone.set()  # stdin closed: ExaBGP is gone

    def send(self, line: str) -> bool:
        """Send a command; False when ExaBGP has gone away."""
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.gone.set()
            return False
        return True


def observe_haproxy(config: NodeConfig) -> Callable[[], Snapshot | None]:
    """A function reading HAProxy's state; None when HAProxy does not answer (so nothing is servable)."""
    socket_path = paths(config)["admin_socket"]

    def read() -> Snapshot | None:
        try:
            return snapshot(socket_path, config.health.timeout)
        except OberError:
            return None

    return read


def servable(vip: Vip, seen: Snapshot | None) -> bool:
    """A VIP is servable while HAProxy answers and its backend group has a live server."""
    return seen is not None and seen.live_servers(f"be_{vip.backend}") > 0


@dataclass
class HealthLoop:
    """The loop's state; :meth:`tick` is one round, :meth:`shutdown` the withdraw-everything exit."""

    config: NodeConfig
    vips: list[Vip]
    pipe: Pipe
    observe: Callable[[], Snapshot | None]
    clock: Callable[[], float] = time.monotonic
    states: dict[str, VipState] = field(default_factory=dict)
    eor_sent: bool = False

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
        seen = self.observe()
        maintenance = self.maintenance()
        now = self.clock()
        for vip in self.vips:
            before = self.states.get(vip.address, VipState())
            after, action = step(before, Observation(servable(vip, seen), maintenance, now), self.rules)
            self.states[vip.address] = after
            if action is not None:
                self.pipe.send(command(action, vip.address, self.config.bgp.drain))
            if after.state is not before.state:
                why = "maintenance" if maintenance else ("haproxy down" if seen is None else "checks")
                done = f", {action.value}" if action else ""
                log(f"{vip.name} {vip.address}: {before.state.value} -> {after.state.value} ({why}){done}")
        self._end_of_rib()

    def _end_of_rib(self) -> None:
        """Under graceful restart, send End-of-RIB once every VIP has its first decision.

        The rendered exabgp.conf sets ``manual-eor`` then: after ExaBGP restarts, the router holds this node's routes
        as stale until End-of-RIB and drops those not re-announced by then. Sent before the ``rise`` checks passed,
        it would drop every route for those seconds (a change of the ECMP set that re-hashes other nodes' flows).
        """
        if self.eor_sent or not self.config.bgp.graceful_restart:
            return
        if all(self.states.get(vip.address, VipState()).state in DECIDED for vip in self.vips):
            self.eor_sent = self.pipe.send("announce eor ipv4 unicast")
            log("first decision made for every VIP: End-of-RIB sent")

    def shutdown(self) -> None:
        """Withdraw whatever is announced (on SIGTERM/SIGINT)."""
        for vip in self.vips:
            state = self.states.get(vip.address)
            if state is not None and state.announced is not None:
                if self.pipe.send(command(Action.WITHDRAW, vip.address, None)):
                    log(f"{vip.name} {vip.address}: withdrawn on exit")
                self.states[vip.address] = VipState(State.DISABLED, 0, None, self.clock())

    def report(self) -> dict[str, object]:
        """The state file's content (read by ``ober status``)."""
        return {
            "pid": os.getpid(),
            "updated": time.time(),
            "vips": {
                vip.address: {
                    "name": vip.name,
                    "state": self.states.get(vip.address, VipState()).state.value,
                    "announced": (a.value if (a := self.states.get(vip.address, VipState()).announced) else None),
                }
                for vip in self.vips
            },
        }


def write_state(path: Path, data: dict[str, object]) -> None:
    """Write the state file atomically (a reader never sees half of it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(data, indent=1))
        temp.replace(path)
    except OSError as exc:
        log(f"cannot write {path}: {exc.strerror}")


def state_file(config: NodeConfig) -> Path:
    """Where ``ober health`` publishes its state."""
    return Path(paths(config)["run_dir"]) / "health.json"


def run(
    config: NodeConfig, only: list[str] | None = None, *, inp: IO[str] | None = None, out: IO[str] | None = None
) -> int:
    """Run until ExaBGP goes away or a signal arrives; returns the exit status (0)."""
    vips = [vip for vip in config.vips if not only or vip.address in only or vip.name in only]
    pipe = Pipe(out or sys.stdout, inp or sys.stdin)
    loop = HealthLoop(config, vips, pipe, observe_haproxy(config))
    stop = threading.Event()
    # SIGUSR1 (sent by `ober drain`): look now, not at the next interval, so a drain withdraws within milliseconds
    # of the quiet moment it waited for.
    wake = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: wake.set())
    pipe.start()
    log(
        f"health: watching {', '.join(v.address for v in vips)} every {config.health.interval:g}s "
        f"(rise {config.health.rise}, fall {config.health.fall})"
    )
    target = state_file(config)
    while not stop.is_set() and not pipe.gone.is_set():
        started = time.monotonic()
        try:
            loop.tick()
            write_state(target, loop.report())
        except Exception as exc:  # a transient failure must never kill the helper
            log(f"health: check failed, will retry: {exc.__class__.__name__}: {exc}")
        wake.wait(max(0.0, config.health.interval - (time.monotonic() - started)))
        wake.clear()
    if pipe.gone.is_set():
        log("health: ExaBGP went away; exiting")
    else:
        loop.shutdown()
        write_state(target, loop.report())
        log("health: stopped by signal; everything withdrawn")
    return 0
