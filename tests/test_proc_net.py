"""The /proc/net/{tcp,tcp6,udp,udp6} parser of the socket table: crafted files (written by the
test) decode to exactly the addresses, ports, states, inodes and uids they hold; odd lines are
counted and never crash; the live files agree with sock_diag.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest

from agent.native.sink import EventSink
from agent.native.sock_diag import SocketTable, SocketTableOptions

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    path = ROOT / "native" / "fuzz" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


procnet = _load("seeds_proc_net")
V4, V6 = socket.AF_INET, socket.AF_INET6


def _events(table: SocketTable, product: str) -> list[dict[str, Any]]:
    sink = EventSink()
    getattr(table, product)(sink)
    return [e for batch in sink.seal() for e in msgpack.unpackb(batch, raw=False)]


def _table() -> SocketTable:
    return SocketTable(SocketTableOptions(source="procnet", map_owners=False))


def test_hex_addresses_follow_the_cpu_byte_order() -> None:
    """The kernel prints each network-order 32-bit word as the CPU reads it."""
    little = procnet.hex_addr(V4, "127.0.0.1", "<")
    big = procnet.hex_addr(V4, "127.0.0.1", ">")
    assert (little, big) == ("0100007F", "7F000001")
    assert procnet.hex_addr(V6, "2001:db8::1", "<") == "B80D0120000000000000000001000000"
    native = procnet.hex_addr(V4, "127.0.0.1")
    assert native == (little if struct.pack("=I", 1) == b"\1\0\0\0" else big)


def test_crafted_file_decodes_exactly(tmp_path: Path) -> None:
    files = {
        ("tcp", V4): procnet.TCP_HEADER
        + procnet.line(0, V4, "10.1.2.3", 8080, "0.0.0.0", 0, 0x0A, 1000, 4242)
        + procnet.line(1, V4, "10.1.2.3", 8080, "10.9.8.7", 61000, 0x01, 1000, 4243)
        + procnet.line(2, V4, "10.1.2.3", 41000, "10.9.8.7", 443, 0x08, 7, 4244),
        ("tcp", V6): procnet.TCP6_HEADER
        + procnet.line(0, V6, "2001:db8:0:1::5", 443, "::", 0, 0x0A, 0, 5001)
        + procnet.line(1, V6, "fe80::1:2", 50000, "2001:db8::abcd", 22, 0x02, 33, 5002),
        ("udp", V4): procnet.UDP_HEADER
        + procnet.line(0, V4, "0.0.0.0", 123, "0.0.0.0", 0, 0x07, 0, 6001, udp=True)
        + procnet.line(1, V4, "192.0.2.1", 5000, "198.51.100.2", 53, 0x01, 0, 6002, udp=True),
        ("udp", V6): procnet.UDP_HEADER
        + procnet.line(0, V6, "::ffff:192.0.2.9", 514, "::", 0, 0x07, 0, 6003, udp=True),
    }
    table = _table()
    table.begin()
    for (proto, family), text in files.items():
        path = tmp_path / f"{proto}{6 if family == V6 else ''}"
        path.write_text(text)
        table.feed_procnet(6 if proto == "tcp" else 17, family, path.read_bytes())
    table.commit(1_700_000_000_000, map_owners=False)
    stats = table.stats()
    assert stats.malformed == 0 and stats.sockets == 8 and stats.stored == 8
    listens = {e["inode"]: e for e in _events(table, "listening")}
    assert listens == {
        4242: {"t": "listen", "ts": 1_700_000_000_000, "src": "procnet", "proto": "tcp",
               "fam": "inet", "laddr": "10.1.2.3", "lport": 8080, "uid": 1000, "inode": 4242},
        5001: {"t": "listen", "ts": 1_700_000_000_000, "src": "procnet", "proto": "tcp",
               "fam": "inet6", "laddr": "2001:db8:0:1::5", "lport": 443, "uid": 0,
               "inode": 5001},
        6001: {"t": "listen", "ts": 1_700_000_000_000, "src": "procnet", "proto": "udp",
               "fam": "inet", "laddr": "0.0.0.0", "lport": 123, "uid": 0, "inode": 6001},
        6003: {"t": "listen", "ts": 1_700_000_000_000, "src": "procnet", "proto": "udp",
               "fam": "inet6", "laddr": "::ffff:192.0.2.9", "lport": 514, "uid": 0,
               "inode": 6003},
    }
    conns = {e["inode"]: e for e in _events(table, "changes")}
    assert conns[4243] == {
        "t": "conn", "op": "open", "ts": 1_700_000_000_000, "src": "procnet", "proto": "tcp",
        "fam": "inet", "laddr": "10.1.2.3", "lport": 8080, "uid": 1000, "inode": 4243,
        "raddr": "10.9.8.7", "rport": 61000, "state": "established", "dir": "in",
        "existing": True,
    }
    assert (conns[4244]["state"], conns[4244]["dir"], conns[4244]["uid"]) == ("close_wait", "out", 7)
    assert (conns[5002]["laddr"], conns[5002]["raddr"], conns[5002]["state"]) == (
        "fe80::1:2", "2001:db8::abcd", "syn_sent")
    assert (conns[6002]["proto"], conns[6002]["raddr"], conns[6002]["rport"]) == ("udp", "198.51.100.2", 53)
    assert set(conns) == {4243, 4244, 5002, 6002}


def test_odd_lines_are_counted(tmp_path: Path) -> None:
    good = procnet.line(0, V4, "127.0.0.1", 22, "0.0.0.0", 0, 0x0A, 0, 777)
    odd = [
        "   1: 0100007F:0016 00000000:0000 0A\n",  # too few fields
        "   2: 0100007G:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
        "   3: 0100007F0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
        "   4: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 x 0 9 1\n",
        "   5: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 99999999999 1\n",
        "   6: 0100007F:016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
        "x: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
        "   7: 0100007F:0016 00000000:0000 A 00000000:00000000 00:00000000 00000000 0 0 9 1\n",
        "   8: " + "A" * 900 + "\n",  # longer than a line may be
        "\0\0\0\n",
    ]
    text = procnet.TCP_HEADER + odd[0] + good + "".join(odd[1:]) + "\n   \n" + "   9: 01"
    path = tmp_path / "tcp"
    path.write_text(text)
    table = _table()
    table.begin()
    table.feed_procnet(6, V4, path.read_bytes())
    table.commit(0, map_owners=False)
    stats = table.stats()
    assert stats.malformed == len(odd) + 1, "each odd line and the cut last line"
    assert stats.long_lines == 1
    assert [e["inode"] for e in _events(table, "listening")] == [777]
    # An IPv6 address in the IPv4 file (and the reverse) does not fit: counted.
    table.begin()
    table.feed_procnet(6, V6, good.encode())
    table.commit(0, map_owners=False)
    assert table.stats().malformed == stats.malformed + 1
    with pytest.raises(ValueError):
        table.feed_procnet(6, 99, b"")


@pytest.mark.live
def test_live_files_agree_with_sock_diag() -> None:
    """Both sources see this test's sockets with the same keys (no counters from /proc/net)."""
    listener = socket.socket(V6)
    listener.bind(("::1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname()[:2])
    server, _ = listener.accept()
    mine = {os.fstat(s.fileno()).st_ino for s in (listener, client, server)}
    try:
        seen = {}
        for source in ("diag", "procnet"):
            table = SocketTable(SocketTableOptions(source=source))  # type: ignore[arg-type]
            table.snapshot()
            events = _events(table, "listening") + _events(table, "changes")
            seen[source] = {
                e["inode"]: {k: v for k, v in e.items() if k not in ("ts", "src", "rx", "tx", "sent")}
                for e in events
                if e["inode"] in mine
            }
            table.close()
        assert set(seen["diag"]) == mine
        assert seen["diag"] == seen["procnet"]
        assert all(e["pid"] == os.getpid() for e in seen["procnet"].values())
    finally:
        client.close()
        server.close()
        listener.close()
