"""The DNS source (agent.native.dns, native/dns.c) on messages and packets built here byte by
byte (tests/dns_wire.py), hostile ones included, and its address -> name cache as the network
aggregator consults it. The packet socket itself: tests/test_dns_live.py."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from typing import Any

import dns_wire as w
import msgpack
import pytest

from agent.native._base import CoreArgumentError, CoreClosedError
from agent.native.aggregate import Aggregator
from agent.native.dns import DnsCapture, DnsOptions
from agent.native.sink import EventSink

Event = dict[str, Any]

MALFORMED = ("bad_ip", "fragments", "unsupported", "bad_transport", "tcp_partial", "truncated",
             "bad_label", "long_name", "bad_pointer", "pointer_loop", "bad_rdata")


def events_of(batches: Iterable[bytes]) -> list[Event]:
    out: list[Event] = []
    for batch in batches:
        out += msgpack.unpackb(batch, raw=False)
    return out


@pytest.fixture
def parser() -> Iterable[DnsCapture]:
    with DnsCapture(DnsOptions(listen=False)) as capture:
        yield capture


def feed(capture: DnsCapture, *packets: bytes, ts: int = 1000) -> list[Event]:
    sink = EventSink()
    for packet in packets:
        capture.feed_packet(sink, packet, ts)
    return events_of(sink.seal())


def errors(capture: DnsCapture) -> dict[str, int]:
    s = capture.stats()
    return {k: s[k] for k in MALFORMED if s[k]}


# ---------------------------------------------------------------------------------------------
# answers


def test_a_answer_gives_an_event_and_a_host(parser: DnsCapture) -> None:
    msg = w.response("Printer.Example.COM", w.A, [w.a_record(w.pointer(12), "198.51.100.7")])
    [event] = feed(parser, w.udp4_response(msg, server="192.0.2.53"), ts=1234)
    assert event == {"t": "dns", "ts": 1234, "src": "udp", "name": "printer.example.com",
                     "type": "A", "rcode": "NOERROR", "answers": ["198.51.100.7"],
                     "cnames": [], "server": "192.0.2.53"}
    assert parser.host("198.51.100.7") == "printer.example.com"
    assert parser.host("::ffff:198.51.100.7") == "printer.example.com"
    assert parser.host("198.51.100.8") is None
    s = parser.stats()
    assert (s.packets, s.messages, s.events, s.answers, s.hosts) == (1, 1, 1, 1, 1)
    assert s.memory <= s.memory_bound and s.memory_bound >= 262144  # the ring it would open
    assert errors(parser) == {}


def test_cname_chain_maps_addresses_to_the_question(parser: DnsCapture) -> None:
    edge = w.name("edge.cdn.example.net")
    msg = w.response("www.example.org", w.AAAA, [
        w.cname_record(w.pointer(12), w.name("alias.example.org")),
        w.cname_record(w.name("alias.example.org"), edge),
        w.aaaa_record(edge, "2001:db8::1"),
        w.aaaa_record(edge, "2001:db8::2"),
    ])
    packet = w.ipv6("2001:db8::53", "2001:db8::10", 17, w.udp(53, 40001, msg))
    [event] = feed(parser, packet)
    assert event["name"] == "www.example.org" and event["type"] == "AAAA"
    assert event["cnames"] == ["alias.example.org", "edge.cdn.example.net"]
    assert event["answers"] == ["2001:db8::1", "2001:db8::2"]
    assert event["server"] == "2001:db8::53"
    assert parser.host("2001:db8::2") == "www.example.org"


def test_records_outside_the_chain_are_not_believed(parser: DnsCapture) -> None:
    msg = w.response("bank.example", w.A, [
        w.a_record(w.name("login.bank.example"), "203.0.113.66"),  # not asked for
        w.a_record(w.pointer(12), "203.0.113.5"),
    ])
    [event] = feed(parser, w.udp4_response(msg))
    assert event["answers"] == ["203.0.113.5"]
    assert parser.host("203.0.113.66") is None
    assert parser.stats().unrelated == 1


def test_nxdomain_and_other_types(parser: DnsCapture) -> None:
    nx = w.response("nope.example", w.A, [], rcode=3)
    txt = w.response("x.example", w.TXT, [w.Record(w.pointer(12), w.TXT, b"\x02hi")])
    events = feed(parser, w.udp4_response(nx), w.udp4_response(txt))
    assert [(e["name"], e["type"], e["rcode"], e["answers"]) for e in events] == [
        ("nope.example", "A", "NXDOMAIN", []), ("x.example", "TXT", "NOERROR", [])]
    assert parser.stats().other_answers == 1


def test_queries_are_counted_not_reported(parser: DnsCapture) -> None:
    assert feed(parser, w.ipv4("192.0.2.10", "192.0.2.53", 17,
                               w.udp(40000, 53, w.query("a.example")))) == []
    assert parser.stats().queries == 1


def test_tcp_whole_messages_and_the_rest(parser: DnsCapture) -> None:
    one = w.response("one.example", w.A, [w.a_record(w.pointer(12), "192.0.2.1")])
    two = w.response("two.example", w.A, [w.a_record(w.pointer(12), "192.0.2.2")])
    both = w.ipv4("192.0.2.53", "192.0.2.10", 6, w.tcp(53, 40002, w.tcp_messages(one, two)))
    cut = w.ipv4("192.0.2.53", "192.0.2.10", 6, w.tcp(53, 40002, w.tcp_messages(one)[:-3]))
    empty = w.ipv4("192.0.2.53", "192.0.2.10", 6, w.tcp(53, 40002, b""))
    events = feed(parser, both, cut, empty)
    assert [(e["name"], e["src"]) for e in events] == [("one.example", "tcp"),
                                                       ("two.example", "tcp")]
    assert errors(parser) == {"tcp_partial": 1}


def test_names_are_lowercase_ascii_with_odd_bytes_escaped(parser: DnsCapture) -> None:
    qname = b"\x05a.b\xffC\x07example\x00"
    msg = w.header(an=1) + w.question(qname) + w.a_record(w.pointer(12), "192.0.2.9").wire()
    [event] = feed(parser, w.udp4_response(msg))
    assert event["name"] == "a\\046b\\255c.example"
    assert feed(parser, w.udp4_response(w.header(an=0) + w.question(b"\0")))[0]["name"] == "."


# ---------------------------------------------------------------------------------------------
# hostile and malformed input: never a crash, never an event, always a counter


def pointer_chain(length: int) -> bytes:
    """A response whose CNAME target takes `length` + 1 backward pointers: a TXT record's
    rdata (skipped) holds pointers each to the one before, the first to the question."""
    qname = w.name("chain.example")
    head_len = 12 + len(qname) + 4
    txt_owner = w.pointer(12)
    rdata_at = head_len + len(txt_owner) + 10
    chain = w.pointer(12) + b"".join(w.pointer(rdata_at + 2 * i) for i in range(length - 1))
    last = rdata_at + 2 * (length - 1)
    records = [w.Record(txt_owner, w.TXT, chain), w.cname_record(w.pointer(12), w.pointer(last))]
    return w.header(an=2) + w.question(qname) + b"".join(r.wire() for r in records)


HOSTILE: dict[str, tuple[bytes, str]] = {
    "pointer to itself": (w.header(an=0) + w.pointer(12) + b"\0\1\0\1", "bad_pointer"),
    "pointer forward": (w.header(an=0) + w.pointer(40) + b"\0\1\0\1" + b"\0" * 40,
                        "bad_pointer"),
    "pointer out of the message": (w.header(an=0) + b"\x01a" + w.pointer(0x3FFF), "bad_pointer"),
    "too many jumps": (pointer_chain(40), "pointer_loop"),
    "label past the end": (w.header(an=0) + b"\x3fabc", "truncated"),
    "label of 64 bytes": (w.header(an=0) + b"\x40" + b"a" * 64 + b"\0\0\1\0\1", "bad_label"),
    "reserved label type 0x80": (w.header(an=0) + b"\x81a\0\0\1\0\1", "bad_label"),
    "name over 255 bytes": (w.header(an=0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1",
                            "long_name"),
    "answer count lying": (w.header(an=3) + w.question(w.name("lie.example"))
                           + w.a_record(w.pointer(12), "192.0.2.1").wire(), "truncated"),
    "question count lying": (w.header(qd=2) + w.question(w.name("q.example")), "truncated"),
    "rdata length past the end": (w.header(an=1) + w.question(w.name("r.example"))
                                  + w.pointer(12) + struct.pack("!HHIH", 1, 1, 60, 200)
                                  + b"\1\2\3\4", "truncated"),
    "A of 5 bytes": (w.header(an=1) + w.question(w.name("r.example"))
                     + w.Record(w.pointer(12), w.A, b"\1\2\3\4\5").wire(), "bad_rdata"),
    "CNAME rdata longer than its name": (
        w.header(an=1) + w.question(w.name("c.example"))
        + w.Record(w.pointer(12), w.CNAME, w.name("t.example") + b"xx").wire(), "bad_rdata"),
    "no question": (w.header(qd=0), "truncated"),
    "short header": (b"\x12\x34\x81\x80\0\1", "truncated"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_message_is_counted(parser: DnsCapture, case: str) -> None:
    message, counter = HOSTILE[case]
    assert feed(parser, w.udp4_response(message)) == []
    assert errors(parser) == {counter: 1}
    assert parser.stats().hosts == 0


def test_chain_within_max_jumps_is_followed(parser: DnsCapture) -> None:
    [event] = feed(parser, w.udp4_response(pointer_chain(20)))
    assert event["cnames"] == ["chain.example"]


PACKETS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "bad_ip"),
    "version 5": (b"\x50" + b"\0" * 40, "bad_ip"),
    "IPv4 header length past the packet": (b"\x4f" + b"\0" * 30, "bad_ip"),
    "IPv4 total length lying": (w.udp4_response(w.query("x"))[:-4], "bad_ip"),
    "IPv4 fragment": (w.ipv4("192.0.2.53", "192.0.2.10", 17, w.udp(53, 1, b"x"), frag=0x2000),
                      "fragments"),
    "ICMP": (w.ipv4("192.0.2.53", "192.0.2.10", 1, b"\0" * 8), "unsupported"),
    "IPv6 hop-by-hop": (w.ipv6("::1", "::1", 0, b"\0" * 16), "unsupported"),
    "IPv6 payload length lying": (w.ipv6("::1", "::1", 17, w.udp(53, 1, b""))[:-2], "bad_ip"),
    "UDP length lying": (w.ipv4("192.0.2.53", "192.0.2.10", 17,
                                struct.pack("!HHHH", 53, 1, 400, 0) + b"abc"), "bad_transport"),
    "TCP header short": (w.ipv4("192.0.2.53", "192.0.2.10", 6, b"\0" * 12), "bad_transport"),
    "TCP data offset past the segment": (
        w.ipv4("192.0.2.53", "192.0.2.10", 6, w.tcp(53, 1, b"")[:12] + b"\xf0" + b"\0" * 7),
        "bad_transport"),
}


@pytest.mark.parametrize("case", sorted(PACKETS))
def test_malformed_packet_is_counted(parser: DnsCapture, case: str) -> None:
    packet, counter = PACKETS[case]
    assert feed(parser, packet) == []
    assert errors(parser) == {counter: 1}


def test_random_and_mutated_packets_never_crash() -> None:
    """Seeded random bytes and bit flips of good packets: the parser returns, and every packet
    is either an event, a query, or counted under one reason (nothing vanishes)."""
    rng = random.Random(13)
    good = [w.udp4_response(pointer_chain(5)),
            w.udp4_response(w.response("m.example", w.A, [w.a_record(w.pointer(12), "192.0.2.1")]))]
    packets = [bytes(rng.randrange(256) for _ in range(rng.randrange(80))) for _ in range(300)]
    for _ in range(1500):
        packet = bytearray(rng.choice(good))
        for _ in range(rng.randrange(1, 4)):
            packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
        packets.append(bytes(packet[:rng.randrange(len(packet) + 1)] if rng.random() < 0.2
                             else packet))
    with DnsCapture(DnsOptions(listen=False, max_hosts=8)) as capture:
        feed(capture, *packets)
        s = capture.stats()
        assert s.packets == len(packets)
        # A packet is an event or a query, or fails once at the first thing wrong in it.
        assert s.events + s.queries + s.dropped + sum(s[k] for k in MALFORMED) >= len(packets)
        assert s.hosts <= 8


# ---------------------------------------------------------------------------------------------
# the cache


def answer(qname: str, address: str) -> bytes:
    return w.udp4_response(w.response(qname, w.A, [w.a_record(w.pointer(12), address)]))


def test_cache_is_bounded_and_the_clock_keeps_what_is_used() -> None:
    with DnsCapture(DnsOptions(listen=False, max_hosts=4)) as capture:
        feed(capture, *(answer(f"h{i}.example", f"192.0.2.{i}") for i in range(4)))
        # The clock hand clears every bit on its first lap, then evicts h0; h1 was looked up
        # after that lap started, so it is passed over.
        feed(capture, answer("h4.example", "192.0.2.4"))
        assert capture.host("192.0.2.1") == "h1.example"
        feed(capture, answer("h5.example", "192.0.2.5"))
        s = capture.stats()
        assert (s.hosts, s.hosts_added, s.hosts_evicted) == (4, 6, 2)
        assert capture.host("192.0.2.0") is None
        assert capture.host("192.0.2.1") == "h1.example"
        assert capture.host("192.0.2.5") == "h5.example"


def test_a_new_answer_renames_an_address(parser: DnsCapture) -> None:
    feed(parser, answer("old.example", "192.0.2.77"), answer("new.example", "192.0.2.77"))
    assert parser.host("192.0.2.77") == "new.example"
    assert parser.stats().hosts == 1


# ---------------------------------------------------------------------------------------------
# the aggregator: dns entries, and host on conn / net


def conn(raddr: str, **extra: Any) -> Event:
    return {"t": "conn", "ts": 5000, "src": "diag", "op": "open", "dir": "out", "proto": "tcp",
            "fam": "inet", "laddr": "192.0.2.10", "lport": 40000, "raddr": raddr, "rport": 443,
            **extra}


def test_aggregator_gives_conn_and_net_a_host(parser: DnsCapture) -> None:
    feed(parser, answer("api.example", "198.51.100.20"))
    agg = Aggregator("network", accept=("conn", "net", "dns"))
    agg.use_hosts(parser)
    out = EventSink()
    batch = msgpack.packb([conn("198.51.100.20"), conn("198.51.100.20", lport=40001),
                           conn("::ffff:198.51.100.20", fam="inet6"),
                           conn("198.51.100.99"), conn("198.51.100.20", host="given.example",
                                                       rport=8443),
                           {"t": "net", "ts": 5001, "src": "audit", "op": "connect",
                            "raddr": "198.51.100.20", "rport": 443, "exe": "/usr/bin/curl"}])
    agg.add(batch, out)
    agg.flush(out)
    events = events_of(out.seal())
    hosts = [(e["t"], e["raddr"], e.get("host"), e["hits"]) for e in events]
    assert hosts == [("conn", "198.51.100.20", "api.example", 2),
                     ("conn", "::ffff:198.51.100.20", "api.example", 1),
                     ("conn", "198.51.100.99", None, 1),
                     ("conn", "198.51.100.20", "given.example", 1),
                     ("net", "198.51.100.20", "api.example", 1)]
    assert agg.stats().hosts == 3
    # Unlinked: no more hosts.
    agg.use_hosts(None)
    agg.add(msgpack.packb([conn("198.51.100.20")]), out)
    agg.flush(out)
    assert "host" not in events_of(out.seal())[0]


def test_dns_events_aggregate_by_name_type_and_answers(parser: DnsCapture) -> None:
    sink = EventSink()
    for ts in (100, 200, 300):
        parser.feed_packet(sink, answer("same.example", "192.0.2.1"), ts)
    parser.feed_packet(sink, answer("same.example", "192.0.2.2"), 400)
    agg = Aggregator("network", accept=("conn", "net", "dns"))
    out = EventSink()
    for batch in sink.seal():
        agg.add(batch, out)
    agg.flush(out)
    events = events_of(out.seal())
    assert [(e["answers"], e["hits"], e["first"], e["last"]) for e in events] == [
        (["192.0.2.1"], 3, 100, 300), (["192.0.2.2"], 1, 400, 400)]


def test_closing_the_capture_unlinks_its_aggregators() -> None:
    capture = DnsCapture(DnsOptions(listen=False))
    feed(capture, answer("gone.example", "192.0.2.50"))
    agg = Aggregator("network", accept=("conn",))
    agg.use_hosts(capture)
    capture.close()
    out = EventSink()
    agg.add(msgpack.packb([conn("192.0.2.50")]), out)
    agg.flush(out)
    assert "host" not in events_of(out.seal())[0]
    with pytest.raises(CoreClosedError):
        capture.host("192.0.2.50")


# ---------------------------------------------------------------------------------------------
# options and the filter


@pytest.mark.parametrize("options", [DnsOptions(listen=False, block_bytes=5000),
                                     DnsOptions(listen=False, max_hosts=0),
                                     DnsOptions(listen=False, max_jumps=200),
                                     DnsOptions(listen=False, devices=("a,b",)),
                                     DnsOptions(listen=False, devices=("x",) * 65)])
def test_bad_options_are_refused(options: DnsOptions) -> None:
    with pytest.raises(CoreArgumentError):
        DnsCapture(options)


def test_filter_program_is_the_documented_one() -> None:
    with DnsCapture(DnsOptions(listen=False)) as capture:
        body = capture.filter_program()
    with DnsCapture(DnsOptions(listen=False, devices=("lo", "no-such-if0"))) as capture:
        with_devices = capture.filter_program()
    assert len(body) == 25
    assert body[-2] == (0x06, 0, 0, 262144) and body[-1] == (0x06, 0, 0, 0)  # accept, drop
    # The device prefix is only built when the socket opens (names resolved then).
    assert with_devices == body


def test_an_entry_without_a_host_asks_again_when_it_leaves(parser: DnsCapture) -> None:
    """The connection was aggregated before the answer's packet was read (the ring hands a
    block over up to block_ms late): the entry gets its host at the flush."""
    agg = Aggregator("network", accept=("conn",))
    agg.use_hosts(parser)
    out = EventSink()
    agg.add(msgpack.packb([conn("198.51.100.30")]), out)
    feed(parser, answer("late.example", "198.51.100.30"))
    agg.flush(out)
    [event] = events_of(out.seal())
    assert event["host"] == "late.example"


def test_leaks() -> None:
    from leakcheck import assert_rss_flat

    packets = [answer("leak.example", "192.0.2.1"), w.udp4_response(pointer_chain(40)),
               w.udp4_response(HOSTILE["label past the end"][0])]
    batch = msgpack.packb([conn("192.0.2.1"), conn("192.0.2.2")])

    def cycle() -> None:
        with DnsCapture(DnsOptions(listen=False, max_hosts=2)) as capture:
            sink = EventSink()
            for i, packet in enumerate(packets):
                capture.feed_packet(sink, packet, i)
            capture.feed_message(sink, packets[0][28:], 5, "192.0.2.53")
            capture.host("192.0.2.1")
            capture.filter_program()
            capture.stats()
            agg = Aggregator("network", accept=("conn", "dns"))
            agg.use_hosts(capture)
            out = EventSink()
            for b in sink.seal():
                agg.add(b, out)
            agg.add(batch, out)
            agg.flush(out)
            out.seal()

    assert_rss_flat(cycle, calls=3000, name="am_dns_new/feed/host/free, am_agg_use_hosts")
