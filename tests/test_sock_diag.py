"""The socket table (agent.native.sock_diag) on the real kernel: listening ports against
`ss -tulnp`, connections opened and closed by this test with their owner and byte counters,
crafted sock_diag dumps (exact decode; bad lengths counted, no crash), bounds, and RSS-flat
leak checks of every C entry point.

Other work on this machine opens and closes sockets while the tests run: comparisons with `ss`
use the sockets `ss` saw both before and after the snapshot, and connection tests look only at
the inodes of their own sockets.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import msgpack
import pytest
from conftest import skip_unless_ci

from agent.native._base import CoreClosedError
from agent.native.sink import EventSink, SinkOptions, pump
from agent.native.sock_diag import SocketTable, SocketTableOptions

ROOT = Path(__file__).resolve().parent.parent
Event = dict[str, Any]


def _load(name: str) -> ModuleType:
    path = ROOT / "native" / "fuzz" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


diag = _load("seeds_inet_diag")


def drain(call: Callable[[EventSink], bool], sink: EventSink | None = None) -> list[Event]:
    """Every event of one listening()/changes() product, taking batches whenever it fills."""
    sink = sink if sink is not None else EventSink()
    batches: list[bytes] = []
    count = pump(call, sink, batches.extend, seal=True)
    events: list[Event] = [e for batch in batches for e in msgpack.unpackb(batch, raw=False)]
    assert count == len(events), "the returned count disagrees with the events written"
    return events


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


SELF_EXE = os.readlink("/proc/self/exe")


# ---------------------------------------------------------------------------------------------
# listening ports against ss


def _ss_listening() -> dict[tuple[str, str, int], set[int]]:
    """`ss -H -tulnp`: (proto, address, port) -> pids."""
    if shutil.which("ss") is None:
        skip_unless_ci("ss (iproute2) is not installed")
    out = subprocess.run(
        ["ss", "-H", "-tulnp"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    found: dict[tuple[str, str, int], set[int]] = {}
    for row in out.splitlines():
        cols = row.split()
        if len(cols) < 5:
            continue
        proto, local = cols[0], cols[4]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%", 1)[0]
        if addr == "*":
            addr = "::" if proto == "tcp" else "0.0.0.0"
        # ss prints an IPv6 wildcard socket that also takes IPv4 as "*".
        pids = {int(p) for p in re.findall(r"pid=(\d+)", row)}
        found[(proto, addr, int(port))] = pids
    return found


@pytest.fixture
def extra_listeners() -> Iterator[list[tuple[str, str, int]]]:
    """TCP v4/v6, UDP v4/v6 on wildcard addresses, and a TCP and a UDP socket bound to
    127.0.0.1; yields their (proto, address, port)."""
    made: list[socket.socket] = []
    keys: list[tuple[str, str, int]] = []
    specs = [
        ("tcp", socket.AF_INET, "0.0.0.0"),
        ("tcp", socket.AF_INET6, "::"),
        ("udp", socket.AF_INET, "0.0.0.0"),
        ("udp", socket.AF_INET6, "::"),
        ("tcp", socket.AF_INET, "127.0.0.1"),
        ("udp", socket.AF_INET, "127.0.0.1"),
    ]
    for proto, family, addr in specs:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 0))
        if proto == "tcp":
            s.listen()
        made.append(s)
        keys.append((proto, addr, s.getsockname()[1]))
    try:
        yield keys
    finally:
        for s in made:
            s.close()


def _listen_map(events: list[Event]) -> dict[tuple[str, str, int], Event]:
    out: dict[tuple[str, str, int], Event] = {}
    for e in events:
        assert e["t"] == "listen"
        out[(e["proto"], e["laddr"], e["lport"])] = e
    return out


@pytest.mark.parametrize("source", ["diag", "procnet"])
@pytest.mark.live
def test_listening_matches_ss(source: str, extra_listeners: list[tuple[str, str, int]]) -> None:
    with SocketTable(SocketTableOptions(source=source)) as table:  # type: ignore[arg-type]
        assert table.source == source
        before = _ss_listening()
        table.snapshot()
        events = drain(table.listening)
        after = _ss_listening()
    ours = _listen_map(events)
    stable = {k: before[k] | after[k] for k in before.keys() & after.keys()}
    seen_by_ss = before.keys() | after.keys()
    missing = set(stable) - set(ours)
    assert not missing, f"ss saw these listening both before and after, we did not: {missing}"
    extra = set(ours) - seen_by_ss
    assert not extra, f"we report listening sockets ss never saw: {extra}"
    for key, ss_pids in stable.items():
        pid = ours[key].get("pid")
        if ss_pids:
            assert pid in ss_pids, f"{key}: pid {pid}, ss says {ss_pids}"
        else:
            assert pid is None, f"{key}: we say pid {pid}, ss found no process"
    for key in extra_listeners:
        e = ours[key]
        assert e["pid"] == os.getpid() and e["exe"] == SELF_EXE, e
        assert e["src"] == source and e["uid"] == os.getuid()
        assert e["fam"] == ("inet6" if ":" in key[1] else "inet")
    assert all(isinstance(e["ts"], int) and e["ts"] > 1_600_000_000_000 for e in events)


@pytest.mark.live
def test_listening_resumes_when_the_sink_fills(extra_listeners: list[Any]) -> None:
    more = [socket.socket() for _ in range(40)]
    try:
        for s in more:
            s.bind(("127.0.0.1", 0))
            s.listen()
        with SocketTable() as table:
            table.snapshot()
            sink = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
            events = drain(table.listening, sink)
            assert sink.stats().dropped_full == 0
            assert table.stats().listen_events == len(events)
            keys = [(e["proto"], e["laddr"], e["lport"], e["inode"]) for e in events]
            assert len(keys) == len(set(keys)), "a resumed listing repeated events"
            ports = {e["lport"] for e in events}
            assert {s.getsockname()[1] for s in more} <= ports
            # Complete: the next call lists everything again.
            again = drain(table.listening)
            assert sorted(map(str, again)) == sorted(map(str, events))
    finally:
        for s in more:
            s.close()


# ---------------------------------------------------------------------------------------------
# connections


def _conn_events(events: list[Event], inodes: set[int]) -> dict[tuple[str, int], Event]:
    out: dict[tuple[str, int], Event] = {}
    for e in events:
        assert e["t"] == "conn"
        if e["inode"] in inodes:
            key = (e["op"], e["inode"])
            assert key not in out, f"two {e['op']} events for inode {e['inode']}"
            out[key] = e
    return out


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "peer closed early"
        data += chunk
    return data


@pytest.mark.parametrize("source", ["diag", "procnet"])
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
@pytest.mark.live
def test_tcp_connection_open_and_close(source: str, family: int) -> None:
    loop = "127.0.0.1" if family == socket.AF_INET else "::1"
    table = SocketTable(SocketTableOptions(source=source, first_existing=False))  # type: ignore[arg-type]
    sink = EventSink()
    table.snapshot()
    assert drain(table.changes, sink) == [], "first_existing=False reports nothing at first"
    listener = socket.socket(family)
    listener.bind((loop, 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname()[:2])
    server, _ = listener.accept()
    mine = {inode_of(client), inode_of(server)}
    try:
        table.snapshot()
        opened = _conn_events(drain(table.changes, sink), mine)
        assert set(opened) == {("open", i) for i in mine}
        c_open, s_open = opened[("open", inode_of(client))], opened[("open", inode_of(server))]
        fam = "inet" if family == socket.AF_INET else "inet6"
        for e, (laddr, lport), (raddr, rport), direction in (
            (c_open, client.getsockname()[:2], client.getpeername()[:2], "out"),
            (s_open, server.getsockname()[:2], server.getpeername()[:2], "in"),
        ):
            assert e["proto"] == "tcp" and e["fam"] == fam and e["src"] == source
            assert (e["laddr"], e["lport"], e["raddr"], e["rport"]) == (laddr, lport, raddr, rport)
            assert e["state"] == "established" and e["dir"] == direction
            assert e["pid"] == os.getpid() and e["exe"] == SELF_EXE and e["uid"] == os.getuid()
            assert "existing" not in e
        sent, replied = os.urandom(70_000), os.urandom(12_345)
        client.sendall(sent)
        assert _recv_exactly(server, len(sent)) == sent
        server.sendall(replied)
        assert _recv_exactly(client, len(replied)) == replied
        table.snapshot()
        assert _conn_events(drain(table.changes, sink), mine) == {}, "nothing opened or closed"
    finally:
        client.close()
        server.close()
        listener.close()
    table.snapshot()
    closed = _conn_events(drain(table.changes, sink), mine)
    assert set(closed) == {("close", i) for i in mine}
    c_close = closed[("close", c_open["inode"])]
    s_close = closed[("close", s_open["inode"])]
    assert c_close["dir"] == "out" and s_close["dir"] == "in"
    assert c_close["pid"] == os.getpid() and c_close["exe"] == SELF_EXE
    if source == "diag":
        # The counters of the last snapshot in which the connection lived.
        assert (c_close["tx"], c_close["rx"]) == (len(sent), len(replied))
        assert (s_close["tx"], s_close["rx"]) == (len(replied), len(sent))
        assert c_close["sent"] >= len(sent)
    else:
        assert not {"rx", "tx", "sent"} & (c_close.keys() | s_close.keys())
    stats = table.stats()
    assert stats.opened >= 2 and stats.closed >= 2 and stats.malformed == 0
    table.close()


@pytest.mark.parametrize("source", ["diag", "procnet"])
@pytest.mark.live
def test_udp_connected_socket(source: str) -> None:
    table = SocketTable(SocketTableOptions(source=source, first_existing=False))  # type: ignore[arg-type]
    table.snapshot()
    drain(table.changes)
    a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    a.bind(("::1", 0))
    b.bind(("::1", 0))
    a.connect(b.getsockname()[:2])
    mine = {inode_of(a)}
    try:
        table.snapshot()
        opened = _conn_events(drain(table.changes), mine | {inode_of(b)})
        assert set(opened) == {("open", inode_of(a))}, "b is unconnected: listening, not a conn"
        e = opened[("open", inode_of(a))]
        assert (e["proto"], e["fam"], e["laddr"], e["lport"], e["raddr"], e["rport"]) == (
            "udp", "inet6", "::1", a.getsockname()[1], "::1", b.getsockname()[1])
        assert e["state"] == "established" and e["pid"] == os.getpid()
        assert e["dir"] == "out", "b's port is a listening (unconnected) UDP port, a's is not"
        assert "rx" not in e
        listens = _listen_map(drain(table.listening))
        assert ("udp", "::1", b.getsockname()[1]) in listens
        assert ("udp", "::1", a.getsockname()[1]) not in listens
    finally:
        a.close()
        b.close()
    table.snapshot()
    assert set(_conn_events(drain(table.changes), mine)) == {("close", inode_of_closed)
                                                            for inode_of_closed in mine}


@pytest.mark.live
def test_first_snapshot_existing_flag() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        with SocketTable() as table:  # first_existing defaults to True
            table.snapshot()
            events = _conn_events(drain(table.changes), {inode_of(client), inode_of(server)})
            assert len(events) == 2 and all(e["existing"] is True for e in events.values())
            # Later opens are not flagged.
            late = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            table.snapshot()
            events = _conn_events(drain(table.changes), {inode_of(late), inode_of(accepted)})
            late.close()
            accepted.close()
            assert len(events) == 2 and all("existing" not in e for e in events.values())
    finally:
        client.close()
        server.close()
        listener.close()


def _children_with_connections(port: int, count: int) -> list[tuple[subprocess.Popen[str], list[int]]]:
    """count processes, each holding two connections to port: (process, its sockets' inodes)."""
    code = (
        "import os, socket, sys\n"
        f"held = [socket.create_connection(('127.0.0.1', {port})) for _ in range(2)]\n"
        "print(*[os.fstat(s.fileno()).st_ino for s in held], flush=True)\n"
        "sys.stdin.read()\n"
    )
    out = []
    for _ in range(count):
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        out.append((child, [int(i) for i in child.stdout.readline().split()]))
    return out


@pytest.mark.live
def test_owners_stay_right_as_processes_come_and_go() -> None:
    """Waves of four processes with two connections each, and this process's accepted ends.
    Wave 2 comes after wave 1 is known, so its owners are the owner cache's last entries. The
    snapshot that finds wave 2 gone also drops wave 1's owners, which moves the last entries
    into their places; its closes are then reported only in part (a sink with room for a
    few), and wave 3 comes before the rest: its owners take the places wave 2's had. Every
    open and close event must still name the process that held the socket, and its exe."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    table = SocketTable(SocketTableOptions(first_existing=False))
    table.snapshot()
    drain(table.changes)
    waves: list[list[tuple[subprocess.Popen[str], list[int]]]] = []
    accepted: list[list[socket.socket]] = []
    owner: dict[int, int] = {}

    def open_wave() -> set[int]:
        wave = _children_with_connections(port, 4)
        ends = [listener.accept()[0] for _ in range(8)]
        waves.append(wave)
        accepted.append(ends)
        owner.update({i: child.pid for child, inodes in wave for i in inodes})
        owner.update({inode_of(s): os.getpid() for s in ends})
        return {i for _, inodes in wave for i in inodes} | {inode_of(s) for s in ends}

    def close_wave(n: int) -> set[int]:
        gone = {i for _, inodes in waves[n] for i in inodes} | {inode_of(s) for s in accepted[n]}
        for child, _ in waves[n]:
            assert child.stdin is not None
            child.stdin.close()
            assert child.wait(timeout=60) == 0
        for s in accepted[n]:
            s.close()
        return gone

    def check_owners(got: dict[tuple[str, int], Event]) -> None:
        for (op, inode), e in got.items():
            assert (e["pid"], e["exe"]) == (owner[inode], SELF_EXE), f"{op} of inode {inode}"

    try:
        for _ in range(2):
            opened = open_wave()
            table.snapshot()
            got = _conn_events(drain(table.changes), opened)
            assert set(got) == {("open", i) for i in opened}
            check_owners(got)
        gone = close_wave(0)
        table.snapshot()
        got = _conn_events(drain(table.changes), gone)
        assert set(got) == {("close", i) for i in gone}
        check_owners(got)

        gone = close_wave(1)
        table.snapshot()
        small = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
        assert table.changes(small), "a sink with room for a few events holds the rest back"
        first = [e for b in small.seal() for e in msgpack.unpackb(b, raw=False)]
        got = _conn_events(first, gone)
        assert 0 < len(got) < len(gone) and {op for op, _ in got} == {"close"}
        check_owners(got)
        opened = open_wave()
        table.snapshot()
        rest = _conn_events(drain(table.changes), gone | opened)
        assert set(rest) == {("close", i) for i in gone if ("close", i) not in got} | {
            ("open", i) for i in opened}
        check_owners(rest)
    finally:
        for wave in waves:
            for child, _ in wave:
                child.kill()
                child.wait()
        for ends in accepted:
            for s in ends:
                s.close()
        listener.close()
        table.close()


@pytest.mark.live
def test_source_choice_and_fileno() -> None:
    with SocketTable() as auto:
        assert auto.source == "diag" and auto.source_reason.startswith("diag")
        fd = auto.fileno()
        assert fd >= 0 and os.get_blocking(fd) is False
    with SocketTable(SocketTableOptions(source="procnet")) as procnet:
        assert procnet.source == "procnet" and procnet.fileno() == -1
        assert procnet.source_reason == "procnet: configured"
    with pytest.raises(ValueError):
        SocketTable(SocketTableOptions(source="bogus"))  # type: ignore[arg-type]
    table = SocketTable()
    table.close()
    with pytest.raises(CoreClosedError):
        table.snapshot()


# ---------------------------------------------------------------------------------------------
# crafted dumps: exact decode, malformed input counted


def _table(**kw: Any) -> SocketTable:
    return SocketTable(SocketTableOptions(source="diag", map_owners=False, **kw))


def test_crafted_dump_decodes_exactly() -> None:
    table = _table()
    table.begin()
    assert table.feed_diag(6, diag.tcp_dump_v4()) is True
    assert table.feed_diag(6, diag.tcp_dump_v6()) is True
    assert table.feed_diag(17, diag.udp_dump()) is True
    table.commit(1_700_000_000_123, map_owners=False)
    listens = {(e["proto"], e["laddr"], e["lport"]): e for e in drain(table.listening)}
    assert set(listens) == {
        ("tcp", "0.0.0.0", 22), ("tcp", "127.0.0.1", 631), ("tcp", "::", 22),
        ("udp", "0.0.0.0", 68), ("udp", "fe80::1", 546),
    }
    assert listens[("tcp", "127.0.0.1", 631)] == {
        "t": "listen", "ts": 1_700_000_000_123, "src": "diag", "proto": "tcp", "fam": "inet",
        "laddr": "127.0.0.1", "lport": 631, "uid": 0, "inode": 1002,
    }
    conns = {e["inode"]: e for e in drain(table.changes)}
    assert set(conns) == {1003, 1004, 2002, 2003, 3003}, "TIME_WAIT (inode 0) is no conn"
    assert conns[1003] == {
        "t": "conn", "op": "open", "ts": 1_700_000_000_123, "src": "diag", "proto": "tcp",
        "fam": "inet", "laddr": "192.168.1.10", "lport": 22, "uid": 0, "inode": 1003,
        "raddr": "192.168.1.20", "rport": 51234, "state": "established", "dir": "in",
        # bytes_acked 1001 counts the SYN: clamped to bytes_sent.
        "rx": 300, "tx": 1000, "sent": 1000, "existing": True,
    }
    # A tcp_info of 136 bytes holds bytes_acked and bytes_received, not bytes_sent.
    assert (conns[1004]["rx"], conns[1004]["tx"], "sent" in conns[1004]) == (6, 5, False)
    assert conns[1004]["dir"] == "out" and conns[1004]["uid"] == 1000
    # 104 bytes end before bytes_acked: no counters at all.
    assert not {"rx", "tx", "sent"} & conns[2003].keys()
    assert conns[2003]["state"] == "syn_sent" and conns[2003]["laddr"] == "::ffff:10.0.0.1"
    assert conns[2002]["laddr"] == "2001:db8::1" and conns[2002]["fam"] == "inet6"
    assert conns[3003]["proto"] == "udp" and conns[3003]["rport"] == 53
    stats = table.stats()
    assert stats.malformed == 0 and stats.sockets == 11 and stats.stored == 10
    # The next snapshot without the v6 dump: its connections close, with their counters.
    table.begin()
    table.feed_diag(6, diag.tcp_dump_v4())
    table.feed_diag(17, diag.udp_dump())
    table.commit(1_700_000_001_000, map_owners=False)
    closed = {e["inode"]: e for e in drain(table.changes)}
    assert set(closed) == {2002, 2003} and all(e["op"] == "close" for e in closed.values())
    assert (closed[2002]["rx"], closed[2002]["tx"], closed[2002]["ts"]) == (20, 10, 1_700_000_001_000)


def _as_tcpdiag_answer(dump: bytes) -> bytes:
    """The dump as the one-request TCP dump (TCPDIAG_GETSOCK, both families) answers it: the
    same messages under type 18 instead of SOCK_DIAG_BY_FAMILY."""
    out = bytearray(dump)
    off = 0
    while off + 16 <= len(out):
        length, kind = struct.unpack_from("=IH", out, off)
        if kind == 20:
            struct.pack_into("=H", out, off + 4, 18)
        off += (length + 3) & ~3
    return bytes(out)


def test_tcpdiag_answer_decodes_like_sock_diag() -> None:
    """The snapshot asks for TCP of both families with one TCPDIAG_GETSOCK dump where the
    kernel answers it: its messages decode into the same events; for UDP that type is no
    answer (counted malformed)."""

    def events(tcp_v4: bytes, tcp_v6: bytes) -> list[Event]:
        table = _table()
        table.begin()
        table.feed_diag(6, tcp_v4)
        table.feed_diag(6, tcp_v6)
        table.feed_diag(17, diag.udp_dump())
        table.commit(1_700_000_000_123, map_owners=False)
        out = drain(table.listening) + drain(table.changes)
        assert table.stats().malformed == 0
        table.close()
        return out

    # One dump: the IPv4 messages (without their NLMSG_DONE) then the IPv6 ones.
    v4 = diag.tcp_dump_v4()
    assert v4.endswith(diag.done())
    both = _as_tcpdiag_answer(v4[: -len(diag.done())] + diag.tcp_dump_v6())
    assert events(both, b"") == events(diag.tcp_dump_v4(), diag.tcp_dump_v6())
    table = _table()
    table.begin()
    table.feed_diag(17, _as_tcpdiag_answer(diag.udp_dump()))
    assert table.stats().malformed == 3
    table.close()


def test_malformed_dumps_are_counted() -> None:
    table = _table()
    good = diag.tcp_dump_v4()
    base = table.stats().malformed
    # Every truncation of a valid dump: no crash, the cut message counted.
    for cut in range(len(good)):
        table.begin()
        table.feed_diag(6, good[:cut])
        table.commit(0, map_owners=False)
    truncated = table.stats().malformed - base
    assert truncated > 0
    # An attribute whose length runs past its message.
    table.begin()
    before = table.stats().malformed
    bad_attr = diag.sock_msg(socket.AF_INET, 1, "10.0.0.1", 1, "10.0.0.2", 2, 0, 77,
                             attrs=struct.pack("=HH", 400, 2) + bytes(12))
    assert table.feed_diag(6, bad_attr + diag.done()) is True
    table.commit(0, map_owners=False)
    assert table.stats().malformed == before + 1
    conns = drain(table.changes)
    assert [e["inode"] for e in conns if e["op"] == "open"] == [77]
    assert "rx" not in conns[0], "counters of a bad attribute are not read"
    # A message length below the header, one beyond the buffer, a short inet_diag_msg, an
    # unknown family, an unknown message type.
    cases = [
        struct.pack("=IHHII", 8, 20, 2, 1, 0),
        struct.pack("=IHHII", 4000, 20, 2, 1, 0) + bytes(72),
        diag.nlmsg(20, bytes(40)),
        diag.nlmsg(20, b"\x01" + diag.diag_msg(socket.AF_INET, 1, "1.1.1.1", 1, "1.1.1.2", 2,
                                                0, 5)[1:]),
        diag.nlmsg(0x77, bytes(8)),
        b"\x01\x02\x03",
    ]
    for case in cases:
        before = table.stats().malformed
        table.begin()
        table.feed_diag(6, case)
        assert table.stats().malformed == before + 1, case
    # NLMSG_ERROR ends the dump and is counted.
    errors = table.stats().dump_errors
    assert table.feed_diag(6, diag.error(2)) is True
    assert table.stats().dump_errors == errors + 1
    with pytest.raises(ValueError):
        table.feed_diag(1, b"")


def test_snapshot_cap_counts_overflow_and_keeps_connections_open() -> None:
    table = _table(max_sockets=3, first_existing=False)
    table.begin()
    table.feed_diag(6, diag.tcp_dump_v4())  # 4 stored sockets: one overflows
    table.commit(0, map_owners=False)
    assert table.stats().overflow >= 1 and table.stats().stored == 3
    drain(table.changes)
    table.begin()
    table.feed_diag(6, diag.tcp_dump_v4())
    table.commit(1, map_owners=False)
    # A snapshot cut by the bound reports no closes: a dropped socket is not a closed one.
    assert [e for e in drain(table.changes) if e["op"] == "close"] == []


@pytest.mark.live
def test_owner_cache_cap_is_counted() -> None:
    sockets = [socket.socket() for _ in range(5)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
        s.listen()
    try:
        with SocketTable(SocketTableOptions(max_owners=2)) as table:
            table.snapshot()
            stats = table.stats()
            assert stats.owner_overflow >= 3
            assert stats.owner_entries <= 2
            with_pid = [e for e in drain(table.listening) if "pid" in e]
            assert len(with_pid) <= 2
    finally:
        for s in sockets:
            s.close()


@pytest.mark.live
def test_owner_walk_only_for_unknown_sockets() -> None:
    with SocketTable() as table:
        table.snapshot()
        # Other work on this machine opens sockets all the time: a snapshot without a walk
        # must happen within a few tries (the owners of known sockets are cached).
        for _ in range(50):
            walks = table.stats().owner_walks
            table.snapshot()
            if table.stats().owner_walks == walks:
                break
        else:
            pytest.fail("every snapshot walked /proc although no socket was new")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        try:
            before = table.stats().owner_walks
            table.snapshot()
            assert table.stats().owner_walks == before + 1, "a new socket needs a walk"
            events = {e["inode"]: e for e in drain(table.listening)}
            assert events[inode_of(s)]["pid"] == os.getpid()
        finally:
            s.close()


# ---------------------------------------------------------------------------------------------
# leaks


@pytest.mark.live
def test_entry_points_keep_rss_flat() -> None:
    """Each C entry point 10,000 times per round; snapshot() 2,000 times per round (a dump of
    the machine's sockets and, when new sockets appear, a /proc walk each)."""
    from leakcheck import assert_rss_flat

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    table = SocketTable()
    # Small batches: a 240 KB batch allocated and freed per few calls moves glibc's heap top by
    # more than the tolerance without any leak.
    sink = EventSink(SinkOptions(batch_bytes=4096, max_batches=4))
    dump = diag.tcp_dump_v4() + diag.tcp_dump_v6()
    text = b"  sl local\n   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1\n"
    crafted = _table()
    toggle = [0]

    def products() -> None:
        table.listening(sink)
        table.changes(sink)
        sink.take()

    def decode() -> None:
        crafted.begin()
        crafted.feed_diag(6, dump if toggle[0] % 2 else dump[: len(dump) // 2])
        crafted.feed_procnet(6, 2, text)
        crafted.commit(toggle[0], map_owners=False)
        toggle[0] += 1
        crafted.changes(sink)
        crafted.listening(sink)
        sink.take()

    def lifecycle() -> None:
        with SocketTable(SocketTableOptions(source="procnet")) as t:
            t.stats()
        with SocketTable() as t:  # the sock_diag probe: a socket and two dumps
            t.fileno()

    try:
        table.snapshot()
        for _ in range(2_000):  # warm up: the sink's and the tables' buffers reach their size
            products()
            decode()
        assert_rss_flat(table.snapshot, calls=2_000, name="snapshot")
        assert_rss_flat(products, name="listening+changes")
        assert_rss_flat(decode, name="begin+feed_diag+feed_procnet+commit")
        assert_rss_flat(table.stats, name="stats")
        assert_rss_flat(lifecycle, calls=2_000, name="new+free")
    finally:
        table.close()
        client.close()
        server.close()
        listener.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ---------------------------------------------------------------------------------------------
# skip_quiet_tcp, in a network namespace of its own (no other socket opens there)

_QUIET_TCP_CHILD = r"""
import json, os, socket, sys
import msgpack
from agent.native.sink import EventSink, pump
from agent.native.sock_diag import SocketTable, SocketTableOptions

table = SocketTable(SocketTableOptions(first_existing=False, skip_quiet_tcp=True))
sink = EventSink()
out = {}

def changes():
    batches = []
    pump(table.changes, sink, batches.extend, seal=True)
    return [(e["op"], e["inode"], e["dir"]) for b in batches
            for e in msgpack.unpackb(b, raw=False)]

for _ in range(3):
    table.snapshot()
    changes()  # the first sets the base (first_existing=False reports nothing then)
out["quiet_skipped"] = table.stats().tcp_skipped
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
table.snapshot()  # a listener opens nothing: still skipped, not yet known
out["listener_skipped"] = table.stats().tcp_skipped
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
out["client"], out["server"] = os.fstat(client.fileno()).st_ino, os.fstat(server.fileno()).st_ino
table.snapshot()
out["after_open_skipped"] = table.stats().tcp_skipped
out["opened"] = changes()
table.snapshot()  # connections held: dumped again
out["held_skipped"] = table.stats().tcp_skipped
client.close(); server.close()
table.snapshot()
out["closed"] = changes()
table.snapshot()
out["quiet_again_skipped"] = table.stats().tcp_skipped
out["quiet_listeners_only"] = table.stats().tcp_listeners_only
# Opened and closed between two snapshots: the opens moved, but the listeners are every hashed
# TCP socket, so the established table's walk is left out, and there is nothing to report.
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
client.close(); server.close()
table.snapshot()
out["short_skipped"] = table.stats().tcp_skipped
out["short_listeners_only"] = table.stats().tcp_listeners_only
out["short"] = changes()
# A new listener opens nothing: kept from the last snapshot. Then a connection held and that
# listener gone (the hashed count back where it was): the listeners' dump does not match it,
# the whole dump runs.
other = socket.socket(); other.bind(("127.0.0.1", 0)); other.listen()
table.snapshot()
out["other_skipped"] = table.stats().tcp_skipped
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
out["client2"], out["server2"] = os.fstat(client.fileno()).st_ino, os.fstat(server.fileno()).st_ino
other.close()
table.snapshot()
out["held2_listeners_only"] = table.stats().tcp_listeners_only
out["opened2"] = changes()
print(json.dumps(out))
"""


@pytest.mark.live
def test_skip_quiet_tcp_loses_no_connection() -> None:
    """While no TCP connection exists and none opened, the TCP dump is left out; a new
    listener alone changes nothing; the first connection brings the dump back, with its
    direction from the new listener, and its close is seen."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        skip_unless_ci("a network namespace of its own needs root, unshare and ip")
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"',
         sys.executable, _QUIET_TCP_CHILD],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["quiet_skipped"] == 2, "the first snapshot dumps TCP, the next two skip it"
    assert out["listener_skipped"] == 3
    assert out["after_open_skipped"] == 3, "an open counted: the TCP dump is taken"
    client, server = out["client"], out["server"]
    assert sorted(e for e in out["opened"] if e[1] in (client, server)) == sorted(
        [["open", client, "out"], ["open", server, "in"]])
    assert out["held_skipped"] == 3, "connections held: every snapshot dumps TCP"
    assert sorted(e[:2] for e in out["closed"] if e[1] in (client, server)) == sorted(
        [["close", client], ["close", server]])
    assert out["quiet_again_skipped"] == 4, "after the closing snapshot, quiet again"
    assert out["short_skipped"] == 4, "an open counted: not kept from the last snapshot"
    # The first snapshot (nothing hashed) and the closing one took only the listeners.
    assert out["quiet_listeners_only"] == 2
    assert out["short_listeners_only"] == 3
    assert out["short"] == [], "a connection gone before the snapshot is audit's to report"
    assert out["other_skipped"] == 5
    assert out["held2_listeners_only"] == 3, "a held connection: the whole dump"
    client2, server2 = out["client2"], out["server2"]
    assert sorted(e for e in out["opened2"] if e[1] in (client2, server2)) == sorted(
        [["open", client2, "out"], ["open", server2, "in"]])
