"""DNS responses -> `dns` events: the C core beside a pure-Python decoder, same capture, same run.

The capture is AGENT_BENCH_DNS_PACKETS IPv4/UDP response packets (default 100,000; 2,000 with
--benchmark-disable) as the packet ring holds them (from the IP header on): A answers, AAAA
answers, CNAME chains of two, NXDOMAIN, every name compressed as resolvers write them.

- core: agent.native.dns.DnsCapture.feed_packet, one call per packet (the live path walks
  the ring in C with no Python call per packet: this is the slower way in), events into an
  EventSink, the address -> name cache filled.
- dnslib: dnslib.DNSRecord.parse (pure Python, PyPI) of each packet's UDP payload, the same
  events as dicts (name, type, rcode, the chain's addresses and CNAMEs, the server) packed with
  msgpack-python, and the same address -> name dict.

The peer is checked to have done the same work: its events equal the core's, decoded.
"""

from __future__ import annotations

import os
from typing import Any

import dns_wire as w
import msgpack
import pytest
from conftest import measure
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="dns-parse")

ROUNDS = 5
SERVER = "192.0.2.53"


def capture(count: int) -> list[bytes]:
    packets = []
    for i in range(count):
        kind = i % 4
        host = f"host{i % 997}.site{i % 31}.example"
        if kind == 0:
            msg = w.response(host, w.A, [w.a_record(w.pointer(12), f"198.51.{i % 200}.{i % 250}"),
                                         w.a_record(w.pointer(12), f"203.0.{i % 200}.{i % 250}")],
                             ident=i & 0xFFFF)
        elif kind == 1:
            msg = w.response(host, w.AAAA, [w.aaaa_record(w.pointer(12), f"2001:db8::{i >> 16:x}:{i & 0xFFFF:x}")],
                             ident=i & 0xFFFF)
        elif kind == 2:
            edge = w.name(f"edge{i % 13}.cdn.example")
            msg = w.response(host, w.A, [w.cname_record(w.pointer(12), edge),
                                         w.a_record(edge, f"192.0.2.{i % 250}")],
                             ident=i & 0xFFFF)
        else:
            msg = w.response(host, w.A, [], rcode=3, ident=i & 0xFFFF)
        packets.append(w.udp4_response(msg, server=SERVER))
    return packets


@pytest.fixture(scope="module")
def packets(request: pytest.FixtureRequest) -> list[bytes]:
    quick = bool(request.config.getoption("benchmark_disable"))
    count = int(os.environ.get("AGENT_BENCH_DNS_PACKETS") or (2_000 if quick else 100_000))
    return capture(count)


def core_events(packets: list[bytes]) -> list[bytes]:
    from agent.native.dns import DnsCapture, DnsOptions
    from agent.native.sink import EventSink

    sink = EventSink()
    batches: list[bytes] = []
    with DnsCapture(DnsOptions(listen=False, max_hosts=65536)) as parser:
        feed = parser.feed_packet
        for i, packet in enumerate(packets):
            if sink.full():
                batches += sink.take()
            feed(sink, packet, i)
        stats = parser.stats()
    batches += sink.seal()
    assert stats.events == len(packets) and stats.truncated == 0 and stats.dropped == 0
    return batches


def test_core(benchmark: BenchmarkFixture, packets: list[bytes], bench_cpu: int) -> None:
    batches = measure(benchmark, lambda: core_events(packets), ROUNDS)
    assert sum(int.from_bytes(b[1:5], "big") for b in batches) == len(packets)
    benchmark.extra_info.update({"peer": "core", "packets": len(packets), "cpu": bench_cpu})


# ---------------------------------------------------------------------------------------------
# dnslib

RCODES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]


def dnslib_events(packets: list[bytes]) -> list[bytes]:
    """The core's events (and cache) with dnslib's parser: the chain rule is the core's."""
    from dnslib import QTYPE, DNSRecord

    events: list[dict[str, Any]] = []
    hosts: dict[str, str] = {}
    for i, packet in enumerate(packets):
        ihl = (packet[0] & 0xF) * 4
        record = DNSRecord.parse(packet[ihl + 8:])
        q = record.questions[0]
        qname = str(q.qname).rstrip(".").lower() or "."
        chain = [qname]
        cnames: list[str] = []
        answers: list[str] = []
        for rr in record.rr:
            owner = str(rr.rname).rstrip(".").lower()
            if rr.rclass != 1 or rr.rtype not in (1, 5, 28) or owner not in chain:
                continue
            if rr.rtype == 5:
                target = str(rr.rdata.label).rstrip(".").lower()
                chain.append(target)
                cnames.append(target)
            else:
                answers.append(str(rr.rdata))
        for address in answers:
            hosts[address] = qname
        events.append({"t": "dns", "ts": i, "src": "udp", "name": qname,
                       "type": QTYPE.get(q.qtype), "rcode": RCODES[record.header.rcode],
                       "answers": answers, "cnames": cnames, "server": SERVER})
    return [msgpack.packb(events)]


def test_dnslib(benchmark: BenchmarkFixture, packets: list[bytes], bench_cpu: int) -> None:
    batches = measure(benchmark, lambda: dnslib_events(packets), ROUNDS)
    events = msgpack.unpackb(batches[0], raw=False)
    core = [e for b in core_events(packets) for e in msgpack.unpackb(b, raw=False)]
    assert events == core, "the dnslib peer did not produce the core's events"
    benchmark.extra_info.update({"peer": "dnslib", "packets": len(events), "cpu": bench_cpu})
