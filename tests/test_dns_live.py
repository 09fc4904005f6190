"""The DNS capture live: a responder of the test's own (tests/dns_responder.py, UDP and TCP on a
loopback address, port 53) answers queried through the system's resolver (getent, in a mount
namespace whose /etc/resolv.conf names the responder) and directly; its replies reach the
packet socket's ring through the kernel's BPF filter. Hostile replies are sent for real too. The whole agent: tests/test_dns_agent.py."""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns_wire as w
import msgpack
import pytest
from dns_responder import Responder, ask_tcp, ask_udp, responder
from test_dns import HOSTILE, pointer_chain

from agent.native.dns import DnsCapture, DnsOptions
from agent.native.sink import EventSink

pytestmark = [pytest.mark.live, pytest.mark.root]

Event = dict[str, Any]
# Loopback addresses of these tests (127.0.0.0/8 is all on lo): the responder, the answers.
SERVER = "127.13.0.1"
ANSWERED = "127.13.0.2"


def drain_until(capture: DnsCapture, done: Callable[[list[Event]], bool],
                timeout: float = 3.0) -> list[Event]:
    """Events from the ring until done(events) or the timeout (a block is handed over when
    full or block_ms after its first packet)."""
    sink = EventSink()
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while True:
        select.select([capture.fileno()], [], [], 0.05)
        capture.drain(sink)
        for batch in sink.seal():
            events += msgpack.unpackb(batch, raw=False)
        if done(events) or time.monotonic() > deadline:
            return events


@pytest.fixture
def capture() -> Iterator[DnsCapture]:
    with DnsCapture(DnsOptions(devices=("lo",), ring_bytes=1 << 20)) as c:
        yield c


@pytest.fixture
def served() -> Iterator[Responder]:
    names = {"printer.test": [ANSWERED], "v6.test": ["2001:db8::5"]}
    with responder(SERVER, names) as r:
        yield r


def test_udp_and_tcp_answers_from_the_wire(capture: DnsCapture, served: Responder) -> None:
    ask_udp(SERVER, "printer.test")
    ask_tcp(SERVER, "v6.test", w.AAAA)
    ask_udp(SERVER, "missing.test")
    events = drain_until(capture, lambda ev: len(ev) >= 3)
    got = sorted((e["name"], e["type"], e["src"], e["rcode"], tuple(e["answers"]), e["server"])
                 for e in events)
    assert got == [("missing.test", "A", "udp", "NXDOMAIN", (), SERVER),
                   ("printer.test", "A", "udp", "NOERROR", (ANSWERED,), SERVER),
                   ("v6.test", "AAAA", "tcp", "NOERROR", ("2001:db8::5",), SERVER)]
    assert capture.host(ANSWERED) == "printer.test"
    s = capture.stats()
    # Each query and reply once (the filter drops the outgoing copy of loopback packets).
    assert (s.queries, s.messages, s.events) == (3, 6, 3)
    assert s.ring_bytes == 1 << 20 and s.ring_clamped == 0 and s.devices == 1


def test_the_filter_passes_only_port_53(capture: DnsCapture, served: Responder) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind((SERVER, 0))
        port = other.getsockname()[1]
        reply = w.response("other-port.test", w.A, [w.a_record(w.pointer(12), "127.13.0.9")])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(20):
                sender.sendto(reply, (SERVER, port))
    ask_udp(SERVER, "printer.test")  # then one that passes, to know the ring is read
    events = drain_until(capture, lambda ev: len(ev) >= 1)
    assert [e["name"] for e in events] == ["printer.test"]
    assert capture.stats().packets == 2  # the query and its reply; none of the 20


def test_hostile_replies_on_the_wire_are_counted(capture: DnsCapture, served: Responder) -> None:
    cases = ["pointer to itself", "pointer forward", "too many jumps", "label past the end",
             "name over 255 bytes", "answer count lying"]
    for case in cases:
        served.raw.append(HOSTILE[case][0])
        ask_udp(SERVER, "printer.test")
    served.raw.append(pointer_chain(10))
    ask_udp(SERVER, "printer.test")  # the last one is whole: it says the others were read
    events = drain_until(capture, lambda ev: len(ev) >= 1)
    assert [e["name"] for e in events] == ["chain.example"]
    s = capture.stats()
    assert (s.bad_pointer, s.pointer_loop, s.truncated, s.long_name) == (2, 1, 2, 1)
    assert s.hosts == 0


def test_the_ring_size_is_clamped_and_said(served: Responder) -> None:
    with DnsCapture(DnsOptions(devices=("lo",), ring_bytes=1000)) as small:
        s = small.stats()
        assert (s.ring_bytes, s.ring_clamped) == (2 * 65536, 1)
        ask_udp(SERVER, "printer.test")
        assert len(drain_until(small, lambda ev: len(ev) >= 1)) == 1
    with DnsCapture(DnsOptions(devices=("lo",), ring_bytes=1 << 30)) as big:
        assert (big.stats().ring_bytes, big.stats().ring_clamped) == (1024 * 65536, 1)


def test_devices_that_do_not_exist() -> None:
    with pytest.raises(OSError) as err:
        DnsCapture(DnsOptions(devices=("nosuchif0",)))
    assert err.value.errno == 19  # ENODEV: nothing to capture rather than everything
    with DnsCapture(DnsOptions(devices=("lo", "nosuchif0"))) as c:
        assert (c.stats().devices, c.stats().devices_missing) == (1, 1)
        assert len(c.filter_program()) == 25 + 3  # ld ifindex, one jeq, ret 0


def test_getent_through_the_system_resolver(capture: DnsCapture, served: Responder,
                                            tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SERVER}\noptions timeout:1 attempts:1\n")
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount --bind {resolv} /etc/resolv.conf && getent ahostsv4 printer.test"],
        capture_output=True, text=True, timeout=20, check=True)
    assert ANSWERED in out.stdout
    events = drain_until(capture, lambda ev: any(e["answers"] for e in ev))
    assert any(e["name"] == "printer.test" and e["answers"] == [ANSWERED] for e in events)
    assert capture.host(ANSWERED) == "printer.test"




def test_leaks(served: Responder) -> None:
    from leakcheck import assert_rss_flat

    with DnsCapture(DnsOptions(devices=("lo",), ring_bytes=1 << 18)) as live:
        sink = EventSink()

        def drain_once() -> None:
            live.drain(sink)
            live.fileno()
            live.stats()
            sink.seal()

        ask_udp(SERVER, "printer.test")
        assert_rss_flat(drain_once, name="am_dns_drain")
    assert_rss_flat(lambda: DnsCapture(DnsOptions(devices=("lo",), ring_bytes=1 << 17)).close(),
                    calls=30, name="am_dns_open/free")  # a close waits for RCU: slow


def test_a_full_ring_counts_what_the_kernel_dropped() -> None:
    """The ring is small (4 blocks by default, drained as each is handed over): a burst that
    outruns it before the drain is counted by the kernel (tp_drops) as ring_drops, the
    collector's dns_ring_drops, never lost silently."""
    burst = 300
    reply = w.response("burst.test", w.A, [w.a_record(w.pointer(12), ANSWERED)])
    with DnsCapture(DnsOptions(devices=("lo",), block_bytes=4096, ring_bytes=2 * 4096)) as c, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind(("127.13.0.3", 53))
        client.bind((SERVER, 0))
        for _ in range(burst):  # none drained meanwhile: 2 blocks of 4 KiB hold a few dozen
            server.sendto(reply, client.getsockname())
        drain_until(c, lambda ev: False, timeout=0.3)
        s = c.stats()
        assert s.ring_drops > 0
        assert s.packets + s.ring_drops == burst
        assert s.events == s.packets
