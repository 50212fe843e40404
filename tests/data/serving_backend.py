"""A stand-in RGW for tests/test_haproxy_serving.py: records what reaches it and answers 200.

Run as ``python serving_backend.py ADDRESS PORT``. Every request except ``GET /_seen`` is recorded: the method, the
path, every ``Host``, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` header (as lists), every forwarding header
(``Forwarded``, ``X-Forwarded-*``, also spelt with ``_``) as name and value, and the number of body bytes
read with their SHA-256. Bodies (``Content-Length`` or chunked) are read and counted in pieces, never held whole.
``GET /_seen`` answers the records as a JSON list. Every other request is answered ``200`` with its own record.
"""

from __future__ import annotations

import hashlib
import json
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PIECE = 64 * 1024
FORWARDING = {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port"}
SEEN: list[dict[str, Any]] = []
LOCK = threading.Lock()


class BodyError(Exception):
    """The request body was cut short or badly framed."""


class Handler(BaseHTTPRequestHandler):
    """Answers every method the same way; HTTP/1.1 so keep-alive and ``Expect: 100-continue`` work."""

    protocol_version = "HTTP/1.1"
    server_version = "serving-backend"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read /_seen, not a log."""

    def _read_exactly(self, size: int, digest: Any) -> int:
        remaining = size
        while remaining:
            piece = self.rfile.read(min(remaining, PIECE))
            if not piece:
                raise BodyError(f"body ended {remaining} bytes early")
            digest.update(piece)
            remaining -= len(piece)
        return size

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        count = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BodyError(f"bad chunk size line {line!r}") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                count += self._read_exactly(size, digest)
                self.rfile.readline(8)
        else:
            count = self._read_exactly(int(self.headers.get("Content-Length") or 0), digest)
        return count, digest.hexdigest()

    def _answer(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        try:
            count, sha256 = self._read_body()
        except BodyError as exc:
            self.close_connection = True
            self._answer(400, {"error": str(exc)})
            return
        if self.command == "GET" and self.path == "/_seen":
            with LOCK:
                records = list(SEEN)
            self._answer(200, records)
            return
        host, port = self.connection.getsockname()[:2]
        record = {
            "server": f"{host}:{port}",
            "client": self.client_address[0],
            "method": self.command,
            "path": self.path,
            # Every occurrence, in order: a header sent twice must show up as such.
            "host": self.headers.get_all("Host", []),
            "x_forwarded_for": self.headers.get_all("X-Forwarded-For", []),
            "x_forwarded_proto": self.headers.get_all("X-Forwarded-Proto", []),
            # Every header radosgw would read as a forwarding one ('_' and '-' alike), as [name, value] in order.
            "forwarding": [
                [name, value] for name, value in self.headers.items() if name.lower().replace("_", "-") in FORWARDING
            ],
            "body_bytes": count,
            "body_sha256": sha256,
        }
        with LOCK:
            SEEN.append(record)
        self._answer(200, record)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    """Threaded; connections that the peer resets (HAProxy ends its health checks so) are not errors."""

    daemon_threads = True

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address, which stalls 5 s where no DNS answers."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report everything but a connection the peer reset or closed."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def main() -> None:
    """Serve on ADDRESS:PORT until killed."""
    address, port = sys.argv[1], int(sys.argv[2])
    server = Server((address, port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
