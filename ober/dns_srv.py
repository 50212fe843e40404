"""DNS SRV lookups with the standard library: one RFC 1035 query over UDP (TCP when the answer is truncated).

``_rgw._tcp.example.org`` → the RGW servers' ``(target, port)``, for discovery (:mod:`ober.discovery`). Consul's DNS
interface (port 8600), CoreDNS or a zone kept by hand all serve SRV records; the resolver is the first
``nameserver`` of ``/etc/resolv.conf`` unless the config names one. No dependency: the query and its answer are a
few hundred bytes whose format (RFC 1035 section 4, SRV from RFC 2782) has not changed since 2000.

Every answer is checked before it is believed: the ID and the question must be the ones asked (a stray or spoofed
packet is ignored, and the wait goes on), and a malformed packet is an error, never a partial list.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ober.errors import OberError

TYPE_SRV = 33
CLASS_IN = 1
DNS_PORT = 53
RCODES = {1: "FORMERR (the server could not read the query)", 2: "SERVFAIL", 3: "NXDOMAIN (no such name)",
          4: "NOTIMP", 5: "REFUSED"}  # fmt: skip
RESOLV_CONF = Path("/etc/resolv.conf")
_HEADER = struct.Struct("!HHHHHH")
_FIXED = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
MAX_POINTERS = 64
"""Compression pointers followed in one name at most: a loop in a hostile packet ends here."""


@dataclass(frozen=True, order=True)
class SrvRecord:
    """One SRV record: where an instance of the service runs (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str
    """The host name, lowercase, without the trailing dot; ``.`` (the service is not offered) is left out."""


class DnsError(OberError):
    """The lookup failed: no answer, an error answer, or a packet that is not a DNS answer to the question."""


def encode_name(name: str) -> bytes:
    """A domain name in DNS wire format (length-prefixed labels, a zero byte at the end).

    Raises:
        DnsError: an empty label, or a label or name too long for DNS.
    """
    labels = name.rstrip(".").split(".")
    wire = bytearray()
    for label in labels:
        raw = label.encode("ascii", "strict") if label.isascii() else b""
        if not raw or len(raw) > 63:
            raise DnsError(f"{name!r} is not a DNS name (label {label!r})", "write it like _rgw._tcp.example.org")
        wire += bytes([len(raw)]) + raw
    wire += b"\0"
    if len(wire) > 255:
        raise DnsError(f"{name!r} is longer than DNS allows (255 bytes)", "use a shorter name")
    return bytes(wire)


def build_query(name: str, ident: int, qtype: int = TYPE_SRV) -> bytes:
    """A standard query for ``name`` (recursion desired), with message ID ``ident``."""
    return _HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (compression pointers followed) and the offset just after it in the packet.

    Raises:
        DnsError: the name runs past the packet, or its pointers loop.
    """
    labels: list[str] = []
    end: int | None = None
    jumps = 0
    while True:
        if offset >= len(packet):
            raise DnsError("a DNS answer ends inside a name (truncated or malformed packet)")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(packet):
                raise DnsError("a DNS answer ends inside a name pointer")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise DnsError("a DNS answer's name pointers loop")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length & 0xC0:
            raise DnsError(f"a DNS answer has a label of an unknown kind (0x{length:02x})")
        offset += 1
        if length == 0:
            return ".".join(labels), end if end is not None else offset
        if offset + length > len(packet):
            raise DnsError("a DNS answer ends inside a label")
        labels.append(packet[offset : offset + length].decode("ascii", "replace"))
        offset += length


@dataclass(frozen=True)
class Answer:
    """A parsed DNS answer: its ID, flags, the question it answers, and its SRV records."""

    ident: int
    truncated: bool
    rcode: int
    question: tuple[str, int, int]
    records: tuple[SrvRecord, ...]


def parse_answer(packet: bytes) -> Answer:
    """Read a DNS response: header, the one question, the answer section's SRV records (other types skipped).

    Raises:
        DnsError: the packet is not a well-formed DNS response with one question.
    """
    if len(packet) < _HEADER.size:
        raise DnsError(f"a DNS answer of {len(packet)} bytes is shorter than a DNS header")
    ident, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(packet)
    if not flags & 0x8000:
        raise DnsError("the DNS packet is a query, not a response")
    if qdcount != 1:
        raise DnsError(f"a DNS answer with {qdcount} questions (expected the one asked)")
    qname, offset = read_name(packet, _HEADER.size)
    if offset + 4 > len(packet):
        raise DnsError("a DNS answer ends inside its question")
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    offset += 4
    records: list[SrvRecord] = []
    for _ in range(ancount):
        _owner, offset = read_name(packet, offset)
        if offset + _FIXED.size > len(packet):
            raise DnsError("a DNS answer ends inside a record")
        rtype, rclass, _ttl, length = _FIXED.unpack_from(packet, offset)
        offset += _FIXED.size
        end = offset + length
        if end > len(packet):
            raise DnsError("a DNS record's data runs past the end of the answer")
        if rtype == TYPE_SRV and rclass == CLASS_IN:
            if length < _SRV.size + 1:
                raise DnsError(f"an SRV record of {length} bytes (too short)")
            priority, weight, port = _SRV.unpack_from(packet, offset)
            target, after = read_name(packet, offset + _SRV.size)
            if after != end:
                raise DnsError("an SRV record's target does not fill its data")
            if target:  # "." : the service is decidedly not available at this domain (RFC 2782)
                records.append(SrvRecord(priority, weight, port, target.lower()))
        offset = end
    return Answer(ident, bool(flags & 0x0200), flags & 0x000F, (qname.lower(), qtype, qclass), tuple(records))


def nameservers(resolv_conf: Path = RESOLV_CONF) -> list[str]:
    """The ``nameserver`` addresses of resolv.conf (IPv4 ones), in order."""
    try:
        text = resolv_conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                socket.inet_pton(socket.AF_INET, words[1])
            except OSError:
                continue
            found.append(words[1])
    return found


def _matches(answer: Answer, ident: int, name: str) -> bool:
    return answer.ident == ident and answer.question == (name.rstrip(".").lower(), TYPE_SRV, CLASS_IN)


def _check(answer: Answer, name: str, server: str) -> tuple[SrvRecord, ...]:
    if answer.rcode:
        why = RCODES.get(answer.rcode, f"error code {answer.rcode}")
        raise DnsError(f"DNS server {server} answered {why} for SRV {name}", "check the name and the DNS server")
    return answer.records


def _udp(name: str, address: tuple[str, int], timeout: float) -> Answer:
    ident = random.randrange(0x10000)  # noqa: S311 - a message ID, with the question checked too; not a secret
    query = build_query(name, ident)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(address)  # a connected socket takes datagrams from that address only
        sock.send(query)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            packet = sock.recv(65535)
            try:
                answer = parse_answer(packet)
            except DnsError:
                continue  # not an answer to us; a real one may still come
            if _matches(answer, ident, name):
                return answer


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise DnsError("the DNS server closed the TCP connection mid-answer")
        data += chunk
    return data


def _tcp(name: str, address: tuple[str, int], timeout: float) -> Answer:
    ident = random.randrange(0x10000)  # noqa: S311
    query = build_query(name, ident)
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(query)) + query)
        (size,) = struct.unpack("!H", _recv_exactly(sock, 2))
        answer = parse_answer(_recv_exactly(sock, size))
    if not _matches(answer, ident, name):
        raise DnsError(f"the DNS server's TCP answer is not for SRV {name}")
    return answer


def split_server(text: str) -> tuple[str, int]:
    """``address`` or ``address:port`` of a DNS server (IPv4), as a socket address."""
    host, _, port = text.partition(":")
    return host, int(port) if port else DNS_PORT


def lookup_srv(
    name: str, server: str | None = None, timeout: float = 2.0, resolv_conf: Path = RESOLV_CONF
) -> list[SrvRecord]:
    """The SRV records of ``name``, by priority then weight (highest first) then target.

    Args:
        name: e.g. ``_rgw._tcp.example.org``.
        server: ``address[:port]`` of the DNS server to ask; None: resolv.conf's first nameserver.
        timeout: seconds for the whole lookup (a retry over TCP included).
        resolv_conf: where to find the nameserver.

    Raises:
        DnsError: no DNS server, no answer in time, an error answer or a malformed one.
    """
    if server is None:
        found = nameservers(resolv_conf)
        if not found:
            raise DnsError(f"no IPv4 nameserver in {resolv_conf}", "set discovery.resolver in ober.yaml")
        server = found[0]
    address = split_server(server)
    shown = f"{address[0]}:{address[1]}"
    try:
        answer = _udp(name, address, timeout)
        if answer.truncated:
            answer = _tcp(name, address, timeout)
    except TimeoutError:
        raise DnsError(
            f"DNS server {shown} did not answer SRV {name} within {timeout:g}s", "check the resolver"
        ) from None
    except OSError as exc:
        raise DnsError(f"DNS server {shown}: {exc.strerror or exc}", "check the resolver") from None
    records = _check(answer, name, shown)
    return sorted(records, key=lambda r: (r.priority, -r.weight, r.target, r.port))
