"""A stdin/stdout ↔ TCP relay: OpenSSH's ``ProxyCommand`` into the lab's namespaces.

The lab's node addresses exist only inside its namespaces, so the lab's ssh_config reaches them with
``ProxyCommand ip netns exec <router-ns> python3 -I .../ober/lab/relay.py %h %p``: this process runs in the router's
namespace, connects to the node, and copies bytes both ways. Nothing is added to the host's own namespace. It uses
only the standard library, so it also runs as a plain script, without importing ober (faster to start).

Usage: ``python -m ober.lab.relay HOST PORT [TIMEOUT]`` (or the file as a script). Exits 0 when the peer closes
the connection, 1 when it cannot be made (one line on stderr, which ssh shows), 2 on bad arguments.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
from collections.abc import Sequence

CONNECT_TIMEOUT = 10.0
CHUNK = 64 * 1024


def relay(host: str, port: int, stdin: int, stdout: int, *, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect to ``host:port`` and copy ``stdin`` → socket and socket → ``stdout`` until the peer is done.

    Half-closes are kept: the end of ``stdin`` shuts the socket's sending side, and the relay goes on delivering
    what the peer still sends (an SSH server's last messages).

    Raises:
        OSError: the connection could not be made, or a read or write failed.
    """
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.settimeout(None)
        selector = selectors.DefaultSelector()
        selector.register(stdin, selectors.EVENT_READ, "in")
        selector.register(connection, selectors.EVENT_READ, "net")
        while True:
            for key, _ in selector.select():
                if key.data == "in":
                    data = os.read(stdin, CHUNK)
                    if data:
                        connection.sendall(data)
                    else:
                        selector.unregister(stdin)
                        connection.shutdown(socket.SHUT_WR)
                    continue
                data = connection.recv(CHUNK)
                if not data:
                    # The peer is done, so the conversation is over even if our stdin stays open.
                    return
                _write_all(stdout, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: Sequence[str] | None = None) -> int:
    """Relay stdin/stdout to ``HOST PORT``; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3) or not args[1].isdigit():
        sys.stderr.write("usage: python -m ober.lab.relay HOST PORT [TIMEOUT]\n")
        return 2
    timeout = float(args[2]) if len(args) == 3 else CONNECT_TIMEOUT
    try:
        relay(args[0], int(args[1]), sys.stdin.fileno(), sys.stdout.fileno(), timeout=timeout)
    except OSError as exc:
        sys.stderr.write(f"ober.lab.relay: {args[0]}:{args[1]}: {exc.strerror or exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
