"""HAProxy's runtime API (the admin socket): what is really up, read rather than guessed."""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass

from ober.config import is_slot
from ober.errors import OberError


@dataclass(frozen=True)
class BackendState:
    """A backend's servers: how many there are, how many HAProxy considers up, and its requests in flight.

    ``in_flight`` is the backend's ``scur``: streams using it now. An idle keep-alive client connection has no
    stream (it counts on the frontend only), so this is the number of requests being served right now.
    """

    servers: int
    up: int
    in_flight: int = 0


@dataclass(frozen=True)
class Snapshot:
    """One ``show stat``: backends by name, and current sessions per frontend."""

    backends: dict[str, BackendState]
    sessions: dict[str, int]

    def live_servers(self, backend: str) -> int:
        """Servers up in ``backend`` (0 when HAProxy has no such backend)."""
        state = self.backends.get(backend)
        return state.up if state else 0


def server_up(status: str, weight: str = "") -> bool:
    """Whether a ``show stat`` server row takes new requests.

    "UP", "UP 1/3" (up, failing checks), "no check" (never checked, so in use) do; DOWN, MAINT (a free spare slot
    too), DRAIN, NOLB do not, nor a server of weight 0 (drained by ``ober backends drain``: HAProxy still shows it
    UP).
    """
    return (status.startswith("UP") or status == "no check") and weight.strip() != "0"


def _count(row: dict[str, str]) -> int:
    try:
        return int(row.get("scur") or 0)
    except ValueError:
        raise OberError(f"HAProxy's runtime API answered 'show stat' with a bad scur: {row.get('scur')!r}") from None


def parse_show_stat(text: str) -> Snapshot:
    """Parse the CSV of ``show stat``.

    Raises:
        OberError: the text is not ``show stat`` output.
    """
    if not text.startswith("# "):
        raise OberError("HAProxy's runtime API did not answer 'show stat' with CSV")
    rows = csv.DictReader(io.StringIO(text[2:]))
    servers: dict[str, list[bool]] = {}
    sessions: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    for row in rows:
        proxy, name = row.get("pxname") or "", row.get("svname") or ""
        if name == "FRONTEND":
            sessions[proxy] = _count(row)
        elif name == "BACKEND":
            servers.setdefault(proxy, [])
            in_flight[proxy] = _count(row)
        elif proxy and not (is_slot(name) and (row.get("status") or "").startswith("MAINT")):
            # A free spare slot is not a server (a slot holding one added at runtime is).
            servers.setdefault(proxy, []).append(server_up(row.get("status") or "", row.get("weight") or ""))
    backends = {
        proxy: BackendState(servers=len(states), up=sum(states), in_flight=in_flight.get(proxy, 0))
        for proxy, states in servers.items()
    }
    return Snapshot(backends=backends, sessions=sessions)


class HAProxyGone(OberError):
    """HAProxy is not running: its runtime socket is missing or refuses connections (not merely slow)."""


def query(socket_path: str, command: str, timeout: float) -> str:
    """Send one command to the runtime API and return its whole answer.

    Raises:
        HAProxyGone: HAProxy is not there (socket missing, refused).
        OberError: HAProxy did not answer within ``timeout``, or another socket error.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(socket_path)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except FileNotFoundError:
        raise HAProxyGone(f"HAProxy runtime socket {socket_path} does not exist", "is ober-http running?") from None
    except ConnectionRefusedError:
        raise HAProxyGone(
            f"HAProxy runtime socket {socket_path} refuses connections", "is ober-http running?"
        ) from None
    except OSError as exc:
        raise OberError(
            f"HAProxy runtime socket {socket_path}: {exc.strerror or exc}", "is ober-http running?"
        ) from None
    return b"".join(chunks).decode(errors="replace")


def snapshot(socket_path: str, timeout: float) -> Snapshot:
    """``show stat`` from the running HAProxy."""
    return parse_show_stat(query(socket_path, "show stat", timeout))
