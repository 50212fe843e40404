"""ober's metrics, served from inside ``ober health`` on a Unix socket that HAProxy's stats frontend routes to.

``ober health`` already holds most of what is worth watching (each VIP's state and why, the checks), and it can ask
ExaBGP about its sessions through its own pipe. So a thread in it answers ``GET /ober/metrics`` on an abstract Unix
socket (:func:`ober.render.metrics_socket_name`). Abstract because HAProxy's workers run unprivileged in an empty
chroot and ``ober health`` as the BGP user: a socket file would be out of the workers' sight and mode. An abstract
socket has no path and no mode, so any local process on the node may read these metrics (nothing secret: what
``ober status`` shows); from outside the node it is reachable only through HAProxy's stats frontend, which passes
``/ober/metrics`` on, so whatever rules guard HAProxy's own ``/metrics`` (bind address, allow-list, login) guard
these too.

A scrape never waits for the check loop nor the loop for a scrape: the loop publishes an immutable summary after
every round (:attr:`ober.healthd.HealthLoop.facts`); the rest (ExaBGP's sessions, the drain and roll records,
HAProxy's version) is read at scrape time, by this thread. With HAProxy down the endpoint is down too: Prometheus
then sees the target down (``up == 0``), which the shipped alert rules cover.
"""

from __future__ import annotations

import errno
import json
import os
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from importlib import metadata
from pathlib import Path

from ober import __version__
from ober.config import NodeConfig
from ober.discovery_run import read_runs
from ober.drain import read_drain
from ober.errors import OberError
from ober.exabgp_cli import parse_graceful_restart, parse_neighbors, parse_uptimes
from ober.haproxy_runtime import query
from ober.healthd import ConfigSource, HealthLoop, Pipe, health_socket, log
from ober.metrics import (
    CONTENT_TYPE,
    ConfigFacts,
    DiscoveryFacts,
    Drain,
    HealthFacts,
    Histogram,
    Neighbor,
    NodeMetrics,
    Process,
    Roll,
    render,
)
from ober.render import FLEET_STATE_DIR, paths

PATHS = ("/ober/metrics", "/metrics")
"""What the server answers: HAProxy passes the client's path on unchanged (``/ober/metrics``)."""
EXABGP_TIMEOUT = 1.0
"""Seconds a scrape waits for ExaBGP's answer about its sessions (it answers in milliseconds)."""
NEIGHBORS_FRESH = 1.0
"""Seconds an answer from ExaBGP is reused: two Prometheus servers scraping together ask it once."""
CLIENT_TIMEOUT = 5.0
"""Seconds a connection may take to send its request: a stuck client must not hold the (single) server thread."""
ROLL_RECORDS = ("roll.json", "last-roll.json")
"""The fleet's roll records on a node, newest kind first (see :mod:`ober.remote.roll`)."""

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def neighbors(text: str) -> tuple[Neighbor, ...]:
    """ExaBGP's ``show neighbor json`` as the sessions the metrics show.

    Raises:
        OberError: the answer was not understood.
    """
    states = parse_neighbors(text)
    graceful = parse_graceful_restart(text)
    uptimes = parse_uptimes(text)
    return tuple(Neighbor(peer, state, uptimes.get(peer, 0.0), graceful.get(peer)) for peer, state in states.items())


def read_roll(directory: Path) -> Roll | None:
    """The node's latest roll record: an unfinished roll's, else the last finished one's; None without one."""
    for name in ROLL_RECORDS:
        try:
            data = json.loads((directory / name).read_text())
            return Roll(str(data["id"]), str(data["operation"]), bool(data["done"]), float(data["at"]))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a record this ober cannot read says nothing reliable
    return None


def haproxy_version(socket_path: str, timeout: float) -> str | None:
    """The running HAProxy's version, from ``show info`` (what it runs, not what is installed)."""
    try:
        text = query(socket_path, "show info", timeout)
    except OberError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Version":
            return value.strip() or None
    return None


def own_process() -> Process | None:
    """This process's CPU time, resident memory and start time, from ``/proc/self``."""
    try:
        stat = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # Fields after the command name: utime, stime are the 12th and 13th, starttime the 20th, rss the 22nd.
    started = time.time() - uptime + int(stat[19]) / TICKS
    return Process((int(stat[11]) + int(stat[12])) / TICKS, int(stat[21]) * PAGE, started)


def discovery_facts(config: NodeConfig) -> tuple[DiscoveryFacts, ...]:
    """The last discovery run of each group that has discovery (and has run), from the node's record."""
    runs = read_runs(config)
    wanted = [group.name for group in config.backends if group.discovery is not None and group.name in runs]
    return tuple(
        DiscoveryFacts(name, runs[name].at, runs[name].ok, runs[name].found, len(runs[name].lost), runs[name].pending)
        for name in wanted
    )


@dataclass
class Gatherer:
    """What one scrape shows: the loop's summary plus what is read at scrape time."""

    loop: HealthLoop
    pipe: Pipe
    source: ConfigSource | None = None
    roll_dir: Path = Path(FLEET_STATE_DIR)
    exabgp: str | None = field(default_factory=lambda: _installed("exabgp"))
    _neighbors: tuple[float, tuple[Neighbor, ...] | None] = (0.0, None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sessions(self) -> tuple[Neighbor, ...] | None:
        """ExaBGP's sessions (None when it did not answer), asked at most once per :data:`NEIGHBORS_FRESH`."""
        with self._lock:
            at, known = self._neighbors
            if known is not None and time.monotonic() - at < NEIGHBORS_FRESH:
                return known
            answer = self.pipe.ask_neighbors(EXABGP_TIMEOUT)
            try:
                found = neighbors(answer) if answer is not None else None
            except OberError as exc:
                log(f"metrics: {exc.message}")
                found = None
            self._neighbors = (time.monotonic(), found)
            return found

    def gather(self) -> NodeMetrics:
        """Everything one scrape shows."""
        loop = self.loop
        config = loop.config
        health = loop.facts or HealthFacts(0, Histogram(), None, config.health.interval, False, ())
        drain = read_drain(config)
        return NodeMetrics(
            node=config.name,
            versions={
                "ober": __version__,
                # The read-only health socket: ober health (the BGP user) may not open the admin socket.
                "haproxy": haproxy_version(health_socket(paths(config)), config.health.timeout),
                "exabgp": self.exabgp,
            },
            health=health,
            config=ConfigFacts(
                digest=loop.config_digest or "",
                service=loop.service,
                loaded=loop.loaded,
                rejected=self.source.rejected if self.source else False,
            ),
            neighbors=self.sessions(),
            drain=Drain(drain.by, drain.since, drain.reason) if drain else None,
            roll=read_roll(self.roll_dir),
            process=own_process(),
            discovery=discovery_facts(config),
        )

    def text(self) -> str:
        """The exposition of one scrape."""
        return render(self.gather())


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = CLIENT_TIMEOUT

    def do_GET(self) -> None:
        if self.path.partition("?")[0] not in PATHS:
            self._reply(404, "not found: ober's metrics are at /ober/metrics\n")
            return
        try:
            body = self.server.body()
        except Exception as exc:  # a scrape must never take ober health down
            log(f"metrics: a scrape failed: {exc.__class__.__name__}: {exc}")
            self._reply(500, "ober health could not gather its metrics; see its log (ober logs)\n")
            return
        self._reply(200, body, CONTENT_TYPE)

    def _reply(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Nothing per request (a scrape every few seconds would flood the journal)."""


SUN_PATH = 108
"""Bytes in a Unix socket address's path (Linux)."""
BIND_WAIT = 3.0
"""Seconds a new helper waits for the name while the helper before it (ExaBGP restarted it) still holds it."""


def abstract_address(name: str) -> bytes:
    """The address HAProxy's ``abns@name`` connects to: a NUL, the name, then NULs to the end of ``sun_path``.

    HAProxy's ``abns@`` (before 3.1's ``abnsz@``) always uses the whole ``sun_path``, NUL padded, so the server binds
    exactly that address.

    Raises:
        ValueError: the name does not fit.
    """
    raw = b"\0" + name.encode()
    if len(raw) > SUN_PATH:
        raise ValueError(f"abstract socket name too long ({len(raw) - 1} bytes, at most {SUN_PATH - 1})")
    return raw.ljust(SUN_PATH, b"\0")


class MetricsServer(socketserver.UnixStreamServer):
    """HTTP on an abstract Unix socket, one request at a time, in a daemon thread."""

    def __init__(self, name: str, body: Callable[[], str]) -> None:
        self.name = name
        self.body = body
        self._serving = False
        super().__init__(abstract_address(name), _Handler, bind_and_activate=False)

    def server_bind(self) -> None:
        """Bind the name, waiting up to :data:`BIND_WAIT` while a previous helper still holds it.

        The kernel frees an abstract name when its last socket closes: a helper that died leaves nothing behind.
        """
        deadline = time.monotonic() + BIND_WAIT
        while True:
            try:
                self.socket.bind(self.server_address)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
            time.sleep(0.1)

    def start(self) -> threading.Thread:
        """Bind, listen and serve in a daemon thread.

        Raises:
            OSError: the socket could not be created.
        """
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise
        thread = threading.Thread(target=self.serve_forever, name="metrics", daemon=True)
        thread.start()
        self._serving = True
        return thread

    def stop(self) -> None:
        """Stop serving and close the socket (which frees the name)."""
        if self._serving:
            self.shutdown()  # waits for serve_forever to return: only once it runs
            self._serving = False
        self.server_close()


def serve(gatherer: Gatherer, name: str) -> MetricsServer | None:
    """Start serving ``gatherer``'s metrics on the abstract socket ``name``; None (and a log line) when not possible.

    Without the socket ober health goes on deciding: the metrics are for people, the announcements are not.
    """
    try:
        server = MetricsServer(name, gatherer.text)
        server.start()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log(f"metrics: cannot serve on @{name}: {why}; ober health goes on without them")
        return None
    return server
