"""Property tests of the C audit parser: arbitrary input never crashes it nor takes it past its
memory bound, and well-formed events, rendered as the kernel and auditd write them, come back
exactly (also with their records interleaved and the text cut into arbitrary chunks)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.native import AuditOptions, AuditParser

SMALL = AuditOptions(
    max_in_flight=4,
    timeout_ms=50,
    max_line_bytes=512,
    max_event_bytes=1024,
    max_pending_bytes=2048,
    batch_bytes=4096,
)

FRAGMENTS = [
    b"type=SYSCALL msg=audit(1700000000.123:42): ",
    b"type=EXECVE msg=audit(1700000000.123:42): argc=3 ",
    b"type=PROCTITLE msg=audit(1700000000.123:42): proctitle=",
    b"type=EOE msg=audit(1700000000.123:42):",
    b"type=SOCKADDR msg=audit(1.5:7): saddr=",
    b"node=n1 type=USER_LOGIN msg=audit(1700000001.000:43): pid=1 msg='op=login acct=",
    b"type=UNKNOWN[1334] msg=audit(1700000002.5:44): ",
    b"a0=\"x\" a1_len=4 a1[0]=4142 a1[1]=4344 ",
    b"arch=c000003e syscall=59 success=yes exit=0 ",
    b"saddr=0A00",
    b"'",
    b'"',
    b"\x1d",
    b"\n",
    b"=",
    b" ",
    b"(null)",
    b"4294967295",
]


def _drain(parser: AuditParser, data: bytes, cuts: list[int]) -> list[bytes]:
    batches: list[bytes] = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        batches += parser.feed(data[start:cut])
        start = cut
        stats = parser.stats()
        assert stats.memory <= stats.memory_bound
    batches += parser.flush()
    return batches


def _check_batches(batches: list[bytes], events: int) -> None:
    total = 0
    for batch in batches:
        decoded = msgpack.unpackb(batch, raw=False, strict_map_key=False)
        assert isinstance(decoded, list)
        for event in decoded:
            assert {"t", "ts", "sn", "rt"} <= event.keys()
        total += len(decoded)
    assert total == events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=4))
def test_arbitrary_bytes_never_crash_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    parser = AuditParser(SMALL, max_batches=1)
    batches = _drain(parser, data, [c for c in cuts if c <= len(data)])
    stats = parser.stats()
    assert stats.memory <= stats.memory_bound
    assert stats.bytes == len(data)
    _check_batches(batches, stats.events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=40)), max_size=80),
    cuts=st.lists(st.integers(0, 4000), max_size=4),
)
def test_audit_like_noise_never_crashes(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    for options in (SMALL, None):
        parser = AuditParser(options, max_batches=1 if options else None)
        batches = _drain(parser, data, [c for c in cuts if c <= len(data)])
        stats = parser.stats()
        assert stats.lines >= data.count(b"\n")
        _check_batches(batches, stats.events)


def test_many_open_events_and_huge_records_stay_bounded() -> None:
    rng = random.Random(7)
    lines = []
    for i in range(3000):
        serial = rng.randrange(1, 12)
        lines.append(
            f"type=PATH msg=audit(1700000000.000:{serial}): item={i} "
            f"name=\"{'x' * rng.randrange(0, 600)}\"".encode()
        )
    data = b"\n".join(lines) + b"\n"
    parser = AuditParser(SMALL, max_batches=1)
    batches = _drain(parser, data, [len(data) // 3, len(data) // 2])
    stats = parser.stats()
    assert stats.records + stats.long_lines == 3000
    assert stats.forced > 0 and stats.truncated > 0
    _check_batches(batches, stats.events)


# ---------------------------------------------------------------------------------------------
# Round trip: generated events rendered as audit text.

SAFE = st.characters(codec="utf-8", exclude_characters="\x00")


def _encode_arg(value: bytes) -> str:
    """As the kernel logs an execve argument: quoted unless it holds a quote, a space, a
    control character or a byte above 0x7e, then hex."""
    if any(b <= 0x20 or b >= 0x7F or b == 0x22 for b in value):
        return value.hex().upper()
    return '"' + value.decode("ascii") + '"'


@dataclass
class Exec:
    serial: int
    ts_ms: int
    pid: int
    ppid: int
    uid: int
    auid: int | None
    argv: list[bytes]
    exe: str
    cwd: str
    split: bool  # log the arguments over several EXECVE records / chunks

    def lines(self) -> list[str]:
        stamp = f"audit({self.ts_ms // 1000}.{self.ts_ms % 1000:03d}:{self.serial})"
        auid = 4294967295 if self.auid is None else self.auid
        out = [
            (f"type=SYSCALL msg={stamp}: arch=c000003e syscall=59 success=yes exit=0 a0=1 "
            f"a1=2 a2=3 a3=4 items=1 ppid={self.ppid} pid={self.pid} auid={auid} "
            f"uid={self.uid} gid=0 euid={self.uid} suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
            f'tty=(none) ses=4294967295 comm="x" exe="{self.exe}" key=(null)')
        ]
        fields = [f"argc={len(self.argv)}"]
        for i, arg in enumerate(self.argv):
            if self.split and len(arg) > 8:
                hexed = arg.hex().upper()
                fields.append(f"a{i}_len={len(hexed)}")
                for k in range(0, len(hexed), 10):
                    fields.append(f"a{i}[{k // 10}]={hexed[k:k + 10]}")
            else:
                fields.append(f"a{i}={_encode_arg(arg)}")
        per_record = 3 if self.split else len(fields)
        for k in range(0, len(fields), per_record):
            out.append(f"type=EXECVE msg={stamp}: " + " ".join(fields[k : k + per_record]))
        out.append(f'type=CWD msg={stamp}: cwd="{self.cwd}"')
        out.append(
            f'type=PATH msg={stamp}: item=0 name="{self.exe}" inode=5 dev=fe:00 '
            "mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL"
        )
        out.append(f"type=PROCTITLE msg={stamp}: proctitle={self.argv[0].hex().upper()}")
        return out

    def check(self, event: dict[str, Any]) -> None:
        assert event["t"] == "exec"
        assert event["ts"] == self.ts_ms and event["sn"] == self.serial
        assert event["sc"] == "execve" and event["ok"] is True and event["rc"] == 0
        assert event["pid"] == self.pid and event["ppid"] == self.ppid
        assert event["uid"] == self.uid and event["auid"] == self.auid
        assert event["exe"] == self.exe and event["cwd"] == self.cwd
        assert event["argc"] == len(self.argv)
        got = [a if isinstance(a, bytes) else a.encode() for a in event["argv"]]
        assert got == self.argv
        assert event["paths"] == [{"n": self.exe, "nt": "NORMAL", "ino": 5, "mode": 0o100755}]
        assert "trunc" not in event


@dataclass
class Connect:
    serial: int
    ts_ms: int
    pid: int
    address: str
    port: int
    ok: bool

    def lines(self) -> list[str]:
        stamp = f"audit({self.ts_ms // 1000}.{self.ts_ms % 1000:03d}:{self.serial})"
        ip = ipaddress.ip_address(self.address)
        if ip.version == 4:
            raw = b"\x02\x00" + self.port.to_bytes(2, "big") + ip.packed + bytes(8)
        else:
            raw = b"\x0a\x00" + self.port.to_bytes(2, "big") + bytes(4) + ip.packed + bytes(4)
        result = "success=yes exit=0" if self.ok else "success=no exit=-111"
        return [
            (f"type=SYSCALL msg={stamp}: arch=c000003e syscall=42 {result} a0=3 a1=2 a2=10 "
            f"a3=0 items=0 ppid=1 pid={self.pid} auid=1000 uid=1000 gid=1000 euid=1000 "
            f'suid=1000 fsuid=1000 egid=1000 sgid=1000 fsgid=1000 tty=pts0 ses=2 comm="nc" '
            f'exe="/usr/bin/nc" key="net"'),
            f"type=SOCKADDR msg={stamp}: saddr={raw.hex().upper()}",
            f"type=PROCTITLE msg={stamp}: proctitle=6E63",
        ]

    def check(self, event: dict[str, Any]) -> None:
        assert event["t"] == "net" and event["dir"] == "out" and event["sc"] == "connect"
        assert event["sn"] == self.serial and event["ts"] == self.ts_ms
        assert event["pid"] == self.pid and event["key"] == "net" and event["tty"] == "pts0"
        assert event["ok"] is self.ok and event["rc"] == (0 if self.ok else -111)
        ip = ipaddress.ip_address(self.address)
        assert event["fam"] == ("inet" if ip.version == 4 else "inet6")
        assert ipaddress.ip_address(event["raddr"]) == ip
        if ip.version == 6 and ip.ipv4_mapped is None:
            assert event["raddr"] == ip.compressed
        assert event["rport"] == self.port


@dataclass
class UserLogin:
    serial: int
    ts_ms: int
    pid: int
    acct: str
    addr: str
    ok: bool

    def lines(self) -> list[str]:
        stamp = f"audit({self.ts_ms // 1000}.{self.ts_ms % 1000:03d}:{self.serial})"
        acct = self.acct.encode().hex().upper() if " " in self.acct else f'"{self.acct}"'
        res = "success" if self.ok else "failed"
        return [
            (f"type=USER_LOGIN msg={stamp}: pid={self.pid} uid=0 auid=4294967295 "
            f"ses=4294967295 msg='op=login acct={acct} exe=\"/usr/sbin/sshd\" hostname=? "
            f"addr={self.addr} terminal=ssh res={res}'")
        ]

    def check(self, event: dict[str, Any]) -> None:
        assert event["t"] == "auth" and event["rt"] == "USER_LOGIN"
        assert event["sn"] == self.serial and event["pid"] == self.pid
        assert event["acct"] == self.acct and event["addr"] == self.addr
        assert event["exe"] == "/usr/sbin/sshd" and event["term"] == "ssh"
        assert event["host"] is None and event["auid"] is None and event["uid"] == 0
        assert event["res"] == ("success" if self.ok else "failed")


TS = st.integers(1_500_000_000_000, 1_900_000_000_000)
PATHS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"'),
                min_size=1, max_size=40).map(lambda s: "/" + s)
ARGS = st.one_of(
    st.binary(min_size=0, max_size=40).filter(lambda b: b"\x00" not in b),
    st.text(SAFE, max_size=30).map(str.encode),
)
EXECS = st.builds(
    Exec, serial=st.just(0), ts_ms=TS, pid=st.integers(1, 4194304), ppid=st.integers(0, 4194304),
    uid=st.integers(0, 65535), auid=st.one_of(st.none(), st.integers(0, 65535)),
    argv=st.lists(ARGS, min_size=1, max_size=12), exe=PATHS, cwd=PATHS, split=st.booleans(),
)
CONNECTS = st.builds(
    Connect, serial=st.just(0), ts_ms=TS, pid=st.integers(1, 4194304),
    address=st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    port=st.integers(0, 65535), ok=st.booleans(),
)
LOGINS = st.builds(
    UserLogin, serial=st.just(0), ts_ms=TS, pid=st.integers(1, 4194304),
    acct=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                               exclude_characters="\"'"), min_size=1, max_size=16)
    | st.just("with space"),
    addr=st.ip_addresses(v=4).map(str), ok=st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(st.one_of(EXECS, CONNECTS, LOGINS), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
    chunk=st.integers(1, 300),
)
def test_generated_events_round_trip(events: list[Any], seed: int, chunk: int) -> None:
    # Distinct serials, timestamps within one second so that no timeout splits an event.
    base = events[0].ts_ms
    for index, event in enumerate(events):
        event.serial = 1000 + index
        event.ts_ms = base + index
    # Interleave the records of different events, keeping each event's own order.
    rng = random.Random(seed)
    queues = [list(e.lines()) for e in events]
    lines: list[str] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        lines.append(queue.pop(0))
    data = ("\n".join(lines) + "\n").encode()
    parser = AuditParser()
    batches: list[bytes] = []
    for start in range(0, len(data), chunk):
        batches += parser.feed(data[start : start + chunk])
    batches += parser.flush()
    got = [e for b in batches for e in msgpack.unpackb(b, raw=False, strict_map_key=False)]
    by_serial = {e["sn"]: e for e in got}
    assert len(got) == len(events) == len(by_serial)
    for event in events:
        event.check(by_serial[event.serial])
    stats = parser.stats()
    assert stats.malformed == 0 and stats.gaps == 0 and stats.duplicates == 0
    assert stats.truncated == 0 and stats.forced == 0
