"""native/fuzz/seeds_dns.py DIR: seeds for fuzz_dns, built by tests/dns_wire.py: responses
with A, AAAA and CNAME chains over UDP and TCP, IPv4 and IPv6, a query, and the hostile
messages of tests/test_dns.py (pointer loops and chains, labels past the end, lying counts).
The first byte of each seed is the harness's option byte."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import dns_wire as w


def seeds() -> dict[str, bytes]:
    a = w.response("printer.example", w.A, [w.a_record(w.pointer(12), "192.0.2.1")])
    edge = w.name("edge.cdn.example")
    chain = w.response("www.example", w.AAAA, [
        w.cname_record(w.pointer(12), edge), w.aaaa_record(edge, "2001:db8::1"),
        w.aaaa_record(edge, "2001:db8::2")])
    pointer_loop = w.header(an=0) + w.pointer(12) + b"\0\1\0\1"
    lying = w.header(an=3) + w.question(w.name("lie.example"))
    out = {
        "udp4-a": w.udp4_response(a),
        "udp6-chain": w.ipv6("2001:db8::53", "2001:db8::10", 17, w.udp(53, 4000, chain)),
        "tcp4-two": w.ipv4("192.0.2.53", "192.0.2.10", 6,
                           w.tcp(53, 4000, w.tcp_messages(a, chain))),
        "query": w.ipv4("192.0.2.10", "192.0.2.53", 17, w.udp(4000, 53, w.query("q.example"))),
        "message-chain": chain,
        "message-loop": pointer_loop,
        "message-lying": lying,
        "label-past-end": w.udp4_response(w.header(an=0) + b"\x3fabc"),
    }
    return {name: bytes([i % 8]) + data for i, (name, data) in enumerate(sorted(out.items()))}


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (target / name).write_bytes(data)
