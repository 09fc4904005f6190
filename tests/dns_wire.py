"""DNS messages and the packets that carry them, built byte by byte (RFC 1035 wire format):
for the tests of native/dns.c, its fuzz seeds and its benchmark. Names may be compressed by
hand (a pointer to an offset) so that hostile messages can be written exactly."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

A, NS, CNAME, AAAA, TXT = 1, 2, 5, 28, 16
IN = 1


def name(text: str) -> bytes:
    """A name as uncompressed labels ending with the root."""
    out = b""
    for label in text.strip(".").split(".") if text.strip(".") else []:
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


@dataclass(frozen=True)
class Record:
    owner: bytes  # wire form (name() or a pointer)
    rtype: int
    rdata: bytes
    ttl: int = 60
    rclass: int = IN

    def wire(self) -> bytes:
        return (self.owner + struct.pack("!HHIH", self.rtype, self.rclass, self.ttl,
                                         len(self.rdata)) + self.rdata)


def a_record(owner: bytes, address: str, ttl: int = 60) -> Record:
    return Record(owner, A, ipaddress.IPv4Address(address).packed, ttl)


def aaaa_record(owner: bytes, address: str, ttl: int = 60) -> Record:
    return Record(owner, AAAA, ipaddress.IPv6Address(address).packed, ttl)


def cname_record(owner: bytes, target: bytes, ttl: int = 60) -> Record:
    return Record(owner, CNAME, target, ttl)


def header(ident: int = 0x1234, *, response: bool = True, rcode: int = 0, qd: int = 1,
           an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    flags = (0x8000 if response else 0) | 0x0100 | (0x0080 if response else 0) | rcode
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def question(qname: bytes, qtype: int = A, qclass: int = IN) -> bytes:
    return qname + struct.pack("!HH", qtype, qclass)


def response(qname: str, qtype: int, answers: list[Record], *, rcode: int = 0,
             ident: int = 0x1234) -> bytes:
    """A response to one question; answer owners written as name() may use pointer(12), the
    question's name (it starts right after the 12-byte header)."""
    body = question(name(qname), qtype) + b"".join(r.wire() for r in answers)
    return header(ident, rcode=rcode, an=len(answers)) + body


def query(qname: str, qtype: int = A, ident: int = 0x1234) -> bytes:
    return header(ident, response=False) + question(name(qname), qtype)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + payload


def ipv6(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, 64,
                       ipaddress.IPv6Address(src).packed,
                       ipaddress.IPv6Address(dst).packed) + payload


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, data: bytes) -> bytes:
    """A TCP segment (no options, PSH|ACK) carrying data as it is."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + data


def tcp_messages(*messages: bytes) -> bytes:
    """DNS over TCP: each message with its 2-byte length prefix."""
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


def udp4_response(message: bytes, server: str = "192.0.2.53",
                  client: str = "192.0.2.10") -> bytes:
    return ipv4(server, client, 17, udp(53, 40000, message))
