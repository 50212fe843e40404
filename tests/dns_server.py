"""A tiny DNS server for tests: answers SRV queries on 127.0.0.1 (UDP, and TCP for truncated answers).

The answers are built here, byte by byte, independently of :mod:`ober.dns_srv`, with name compression as real
servers use it (owner names and target suffixes as pointers into the question).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

Record = tuple[int, int, int, str]
"""priority, weight, port, target."""


def labels_of(name: str) -> list[str]:
    return [label for label in name.rstrip(".").split(".") if label]


def wire_name(labels: list[str]) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\0"


def question_of(query: bytes) -> tuple[int, list[str], int]:
    """The query's ID, its question name's labels, and the offset after the question."""
    (ident,) = struct.unpack_from("!H", query)
    offset = 12
    labels: list[str] = []
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ident, labels, offset + 1 + 4


def compressed(labels: list[str], question: list[str]) -> bytes:
    """``labels`` with the longest suffix it shares with the question (at offset 12) as a pointer."""
    for start in range(len(labels)):
        suffix = labels[start:]
        for qstart in range(len(question)):
            if question[qstart:] == suffix:
                offset = 12 + sum(1 + len(label) for label in question[:qstart])
                head = b"".join(bytes([len(label)]) + label.encode() for label in labels[:start])
                return head + struct.pack("!H", 0xC000 | offset)
    return wire_name(labels)


def response(
    query: bytes,
    records: list[Record],
    *,
    rcode: int = 0,
    truncated: bool = False,
    ident: int | None = None,
    extra_a: bool = True,
) -> bytes:
    """The answer to ``query``: its question echoed, one SRV record per entry (plus an A record to be skipped)."""
    qid, question, end = question_of(query)
    flags = 0x8000 | 0x0100 | 0x0080 | (0x0200 if truncated else 0) | rcode
    answers = b""
    count = 0
    for priority, weight, port, target in records:
        data = struct.pack("!HHH", priority, weight, port) + compressed(labels_of(target), question)
        answers += struct.pack("!HHHIH", 0xC00C, 33, 1, 60, len(data)) + data
        count += 1
    if extra_a and records:
        # An A record in the answer section (some servers add one): not an SRV record, skipped.
        answers += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("198.18.0.1")
        count += 1
    header = struct.pack("!HHHHHH", qid if ident is None else ident, flags, 1, count, 0, 0)
    return header + query[12:end] + answers


Responder = Callable[[bytes], list[bytes]]
"""A query → the packets to send back (none: stay silent)."""


@dataclass
class DnsServer:
    """Where the server listens, what it answers, and the questions it got."""

    address: str
    udp: Responder
    tcp: Responder | None = None
    queries: list[str] = field(default_factory=list)

    @property
    def resolver(self) -> str:
        return self.address


@contextmanager
def dns_server(udp: Responder, tcp: Responder | None = None) -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 (one port for UDP and TCP), stopped on exit."""
    state = DnsServer("", udp, tcp)

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            state.queries.append(".".join(question_of(data)[1]))
            for packet in state.udp(data):
                sock.sendto(packet, self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            (size,) = struct.unpack("!H", self.rfile.read(2))
            data = self.rfile.read(size)
            state.queries.append("tcp:" + ".".join(question_of(data)[1]))
            for packet in (state.tcp or state.udp)(data):
                self.wfile.write(struct.pack("!H", len(packet)) + packet)

    udp_server = socketserver.UDPServer(("127.0.0.1", 0), Udp)
    port = udp_server.server_address[1]
    tcp_server = socketserver.TCPServer(("127.0.0.1", port), Tcp)
    state.address = f"127.0.0.1:{port}"
    servers = (udp_server, tcp_server)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield state
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)


def answering(records: Callable[[], list[Record]]) -> Responder:
    """A responder that answers every query with the current ``records``."""
    return lambda query: [response(query, records())]
