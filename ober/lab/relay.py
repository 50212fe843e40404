"""``relay.py HOST PORT``: copy stdin to a TCP connection and the connection to stdout (a minimal ``nc``).

The lab's ssh_config ``ProxyCommand`` (see `ober.lab.sshd.proxy_command`): run inside a network namespace, it
carries an SSH connection from the host to an address that exists only in there. Standard library only, and run
as a script rather than a module, so it starts fast and never imports ober.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys

CONNECT_TIMEOUT = 10.0
CHUNK = 65536


def relay(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> int:
    """Relay until either side ends; exit status 1 (with the reason on stderr) if the connection fails."""
    try:
        sock = socket.create_connection((host, port), timeout)
    except OSError as exc:
        print(f"relay: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    sock.settimeout(None)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sources = [stdin, sock.fileno()]
    while sources:
        ready, _, _ = select.select(sources, [], [])
        if stdin in ready:
            data = os.read(stdin, CHUNK)
            if data:
                sock.sendall(data)
            else:
                sources.remove(stdin)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
        if sock.fileno() in ready:
            data = sock.recv(CHUNK)
            if not data:
                return 0
            os.write(stdout, data)
    return 0


def main(argv: list[str]) -> int:
    """``HOST PORT``."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: relay.py HOST PORT", file=sys.stderr)
        return 2
    return relay(argv[0], int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
