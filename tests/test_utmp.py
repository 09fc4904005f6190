"""The utmp / wtmp / btmp reader (native/utmp.c, agent.native.utmp) on real files: records
written here with struct.pack in glibc's layouts, written by util-linux's `utmpdump -r`, and
the machine's own /var/log/wtmp, /var/log/btmp and /var/run/utmp."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import skip_unless_ci

from agent.native import CoreArgumentError, SinkOptions
from agent.native.sink import EventSink
from agent.native.utmp import UtmpDecoder, UtmpOptions, UtmpReader, UtmpState

# glibc's struct utmp, from bits/utmp.h. 384: __WORDSIZE_TIME64_COMPAT32 (x86_64; and i386,
# armhf, whose long and timeval are 32-bit anyway). 400: aarch64 (64-bit long ut_session and
# struct timeval, 4 bytes of tail padding).
FMT_384 = "<hxxi32s4s32s256shhiIi16s20x"
FMT_400 = "<hxxi32s4s32s256shhqqq16s20x4x"
assert struct.calcsize(FMT_384) == 384 and struct.calcsize(FMT_400) == 400

EMPTY, RUN_LVL, BOOT_TIME, NEW_TIME, OLD_TIME = 0, 1, 2, 3, 4
INIT_PROCESS, LOGIN_PROCESS, USER_PROCESS, DEAD_PROCESS, ACCOUNTING = 5, 6, 7, 8, 9

T0 = 1_700_000_000


def rec(
    ut_type: int,
    *,
    pid: int = 0,
    line: bytes = b"",
    ut_id: bytes = b"",
    user: bytes = b"",
    host: bytes = b"",
    term: int = 0,
    exit: int = 0,
    session: int = 0,
    sec: int = 0,
    usec: int = 0,
    addr: bytes = b"",
    size: int = 384,
) -> bytes:
    fmt = FMT_384 if size == 384 else FMT_400
    return struct.pack(
        fmt, ut_type, pid, line, ut_id, user, host, term, exit, session, sec, usec,
        addr.ljust(16, b"\0"),
    )


def decode_batches(batches: list[bytes]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for batch in batches:
        decoded = msgpack.unpackb(batch, raw=False)
        assert isinstance(decoded, list)
        events += decoded
    return events


def read_all(reader: UtmpReader, sink: EventSink | None = None) -> list[dict[str, Any]]:
    """read() until caught up, taking batches whenever the reader says more wait."""
    sink = sink or EventSink()
    batches: list[bytes] = []
    appended = 0
    for _ in range(100_000):
        more = reader.read(sink)
        appended = sink.stats().events
        if not more:
            break
        batches += sink.take()
    else:
        raise AssertionError("the reader never caught up")
    batches += sink.seal()
    events = decode_batches(batches)
    assert len(events) == appended, "read() counts disagree with the batches"
    return events


def snapshot_all(reader: UtmpReader, sink: EventSink) -> list[dict[str, Any]]:
    batches: list[bytes] = []
    appended = 0
    for _ in range(100_000):
        more = reader.snapshot(sink)
        appended = sink.stats().events
        if not more:
            break
        batches += sink.take()
    batches += sink.seal()
    events = decode_batches(batches)
    assert len(events) == appended
    return events


def v4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)


def v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


# ---------------------------------------------------------------------------------------------
# Known records, every key


LONG_USER = b"u" * 32
LONG_LINE = b"l" * 32
LONG_ID = b"iiii"
LONG_HOST = b"h" * 256
BAD_USER = b"\xffr\xfeoot"


def known_records(size: int) -> bytes:
    def r(ut_type: int, **k: Any) -> bytes:
        return rec(ut_type, size=size, **k)

    return b"".join(
        [
            r(BOOT_TIME, line=b"~", ut_id=b"~~", user=b"reboot", host=b"6.18.0-arm",
              sec=T0, usec=250_000),
            r(RUN_LVL, pid=ord("5") + 256 * ord("N"), line=b"~", ut_id=b"~~",
              user=b"runlevel", host=b"6.18.0-arm", sec=T0 + 1, usec=999),
            r(INIT_PROCESS, pid=400, line=b"tty1", ut_id=b"tty1", sec=T0 + 2),
            r(LOGIN_PROCESS, pid=401, line=b"tty1", ut_id=b"tty1", user=b"LOGIN", sec=T0 + 2),
            r(USER_PROCESS, pid=1000, line=b"pts/0", ut_id=b"ts/0", user=b"alice",
              host=b"192.0.2.7", session=1000, sec=T0 + 10, usec=123_456, addr=v4("192.0.2.7")),
            r(USER_PROCESS, pid=1100, line=b"pts/1", ut_id=b"ts/1", user=b"bob",
              host=b"2001:db8::42", session=1100, sec=T0 + 20, addr=v6("2001:db8::42")),
            r(USER_PROCESS, pid=1200, line=LONG_LINE, ut_id=LONG_ID, user=LONG_USER,
              host=LONG_HOST, session=-5, sec=T0 + 30),
            r(USER_PROCESS, pid=1300, line=b"tty2", ut_id=b"tty2", user=BAD_USER, sec=T0 + 31),
            r(DEAD_PROCESS, pid=1000, line=b"pts/0", ut_id=b"ts/0", term=0, exit=3,
              sec=T0 + 70, usec=123_999),
            r(DEAD_PROCESS, pid=1100, line=b"pts/1", ut_id=b"ts/1", sec=T0 + 15),
            r(DEAD_PROCESS, pid=999, line=b"pts/9", ut_id=b"ts/9", term=9, sec=T0 + 80),
            r(NEW_TIME, line=b"|", user=b"date", sec=T0 + 90),
            r(OLD_TIME, line=b"}", user=b"date", sec=T0 + 85),
            r(RUN_LVL, pid=ord("0") + 256 * ord("5"), line=b"~~", ut_id=b"~~",
              user=b"shutdown", host=b"6.18.0-arm", sec=T0 + 100),
            r(EMPTY),
        ]
    )


def expected_known() -> list[dict[str, Any]]:
    base = {"t": "login", "src": "utmp"}
    return [
        {**base, "op": "boot", "ts": T0 * 1000 + 250, "kernel": "6.18.0-arm"},
        {**base, "op": "runlevel", "ts": T0 * 1000 + 1000, "kernel": "6.18.0-arm",
         "level": "5", "prev": "N"},
        {**base, "op": "login", "ts": (T0 + 10) * 1000 + 123, "user": "alice", "tty": "pts/0",
         "id": "ts/0", "host": "192.0.2.7", "addr": "192.0.2.7", "pid": 1000,
         "session": 1000},
        {**base, "op": "login", "ts": (T0 + 20) * 1000, "user": "bob", "tty": "pts/1",
         "id": "ts/1", "host": "2001:db8::42", "addr": "2001:db8::42", "pid": 1100,
         "session": 1100},
        {**base, "op": "login", "ts": (T0 + 30) * 1000, "user": "u" * 32, "tty": "l" * 32,
         "id": "iiii", "host": "h" * 256, "pid": 1200, "session": -5},
        {**base, "op": "login", "ts": (T0 + 31) * 1000, "user": BAD_USER, "tty": "tty2",
         "id": "tty2", "pid": 1300},
        # The logout completes alice's login: her name and the session's duration.
        {**base, "op": "logout", "ts": (T0 + 70) * 1000 + 123, "user": "alice", "tty": "pts/0",
         "id": "ts/0", "pid": 1000, "exit": 3, "term": 0, "dur": 60_000},
        # Bob's logout is stamped before his login (a clock step): no duration.
        {**base, "op": "logout", "ts": (T0 + 15) * 1000, "user": "bob", "tty": "pts/1",
         "id": "ts/1", "pid": 1100, "exit": 0, "term": 0},
        # No login on pts/9 was seen: no user, no duration.
        {**base, "op": "logout", "ts": (T0 + 80) * 1000, "tty": "pts/9", "id": "ts/9",
         "pid": 999, "exit": 0, "term": 9},
        {**base, "op": "time_new", "ts": (T0 + 90) * 1000},
        {**base, "op": "time_old", "ts": (T0 + 85) * 1000},
        {**base, "op": "shutdown", "ts": (T0 + 100) * 1000, "kernel": "6.18.0-arm",
         "level": "0", "prev": "5"},
    ]


@pytest.mark.parametrize("size", [384, 400])
@pytest.mark.parametrize("layout", [None, "explicit"])
def test_known_records_read_back_exactly(tmp_path: Path, size: int, layout: str | None) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(known_records(size))
    options = UtmpOptions(layout=size) if layout else None
    with UtmpReader(str(path), "wtmp", options) as reader:
        events = read_all(reader)
        stats = reader.stats()
    assert events == expected_known()
    # Non-UTF-8 bytes travel as msgpack bin, the rest as str.
    assert isinstance(events[5]["user"], bytes)
    assert stats.records == 15
    assert stats.events == 12
    assert stats.skipped == 3  # INIT_PROCESS, LOGIN_PROCESS, EMPTY
    assert stats.unmatched == 1
    assert stats.malformed == 0 and stats.partial == 0 and stats.dropped == 0
    assert stats.layout == size


def test_ipv6_text_is_rfc5952(tmp_path: Path) -> None:
    addrs = ["2001:db8::1", "fe80::1:0:0:1", "2001:db8:0:1:1:1:1:1", "::1", "2001:db8:0:0:1::1",
             "::ffff:192.0.2.1", "ff02::2"]
    path = tmp_path / "wtmp"
    path.write_bytes(b"".join(
        rec(USER_PROCESS, pid=10 + i, line=f"pts/{i}".encode(), user=b"x", sec=T0,
            addr=v6(a)) for i, a in enumerate(addrs)))
    events = read_all(UtmpReader(str(path)))
    got = [e["addr"] for e in events]
    assert got[:-2] == [str(ipaddress.IPv6Address(a)) for a in addrs[:-2]]
    assert got[-2:] == ["::ffff:192.0.2.1", "ff02::2"]
    # RFC 5952 4.2.2: one zero group is not shortened.
    assert got[2] == "2001:db8:0:1:1:1:1:1"


# ---------------------------------------------------------------------------------------------
# Following a file


def logins(n: int, start: int = 0) -> bytes:
    return b"".join(
        rec(USER_PROCESS, pid=100 + i, line=f"pts/{i}".encode(), user=f"user{i}".encode(),
            sec=T0 + i) for i in range(start, start + n))


def users(events: list[dict[str, Any]]) -> list[str]:
    return [e["user"] for e in events]


def test_appends_are_followed_and_a_partial_record_waits(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(2))
    reader = UtmpReader(str(path))
    assert users(read_all(reader)) == ["user0", "user1"]
    assert read_all(reader) == []
    with path.open("ab") as f:
        f.write(logins(1, 2))
    assert users(read_all(reader)) == ["user2"]
    third = logins(1, 3)
    with path.open("ab") as f:
        f.write(third[:100])
    assert read_all(reader) == []
    assert reader.stats().partial == 1
    assert reader.state().offset == 3 * 384
    with path.open("ab") as f:
        f.write(third[100:])
    assert users(read_all(reader)) == ["user3"]
    assert reader.stats().records == 4


@pytest.mark.parametrize("keep", [0, 1])
def test_truncation_restarts_and_is_counted(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(3))
    reader = UtmpReader(str(path))
    assert len(read_all(reader)) == 3
    ino = path.stat().st_ino
    with path.open("r+b") as f:
        f.truncate(keep * 384)
    with path.open("ab") as f:
        f.write(logins(1, 10))
    assert path.stat().st_ino == ino
    # Shorter than the offset: the file starts over from 0 (a kept record comes again).
    assert users(read_all(reader)) == ["user0"] * keep + ["user10"]
    stats = reader.stats()
    assert stats.truncations == 1 and stats.rotations == 0


def test_rotation_finishes_the_old_file_then_reads_the_new(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(2))
    reader = UtmpReader(str(path))
    assert len(read_all(reader)) == 2
    with path.open("ab") as f:
        f.write(logins(1, 2))  # written just before the rotation: must not be lost
    path.rename(tmp_path / "wtmp.1")
    # Renamed away, not recreated yet: the reader keeps the file it holds.
    assert users(read_all(reader)) == ["user2"]
    with (tmp_path / "wtmp.1").open("ab") as f:
        f.write(logins(1, 3) + logins(1, 4)[:50])  # a late writer, and a record never finished
    path.write_bytes(logins(2, 20))
    assert users(read_all(reader)) == ["user3", "user20", "user21"]
    stats = reader.stats()
    assert stats.rotations == 1 and stats.partial_lost == 1 and stats.truncations == 0
    assert reader.state().ino == path.stat().st_ino
    with path.open("ab") as f:
        f.write(logins(1, 22))
    assert users(read_all(reader)) == ["user22"]


def test_state_restore_resumes_exactly(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(3))
    first = UtmpReader(str(path))
    assert len(read_all(first)) == 3
    saved = json.dumps(first.state().to_dict())
    first.close()
    with path.open("ab") as f:
        f.write(logins(2, 3))
    second = UtmpReader(str(path))
    second.restore(json.loads(saved))
    assert second.state() == UtmpState.from_dict(json.loads(saved))
    assert users(read_all(second)) == ["user3", "user4"]
    assert second.stats().rotations == 0 and second.stats().truncations == 0
    # Restored into a reader that already holds the file: applied at once.
    third = UtmpReader(str(path))
    assert len(read_all(third)) == 5
    third.restore(UtmpState.from_dict(json.loads(saved)))
    assert users(read_all(third)) == ["user3", "user4"]


def test_restore_of_another_file_or_a_shorter_one(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(3))
    reader = UtmpReader(str(path))
    read_all(reader)
    state = reader.state()
    # Replaced while the agent was down: the new file is read from its start.
    path.unlink()
    path.write_bytes(logins(1, 7))
    fresh = UtmpReader(str(path))
    fresh.restore(state)
    assert users(read_all(fresh)) == ["user7"]
    assert fresh.stats().rotations == 1
    # The same file, now shorter than the saved offset: truncated meanwhile.
    state = fresh.state()
    short = UtmpReader(str(path))
    short.restore(UtmpState(state.dev, state.ino, 5 * 384, 5 * 384, 384))
    assert users(read_all(short)) == ["user7"]
    assert short.stats().truncations == 1
    with pytest.raises(CoreArgumentError):
        short.restore(UtmpState(state.dev, state.ino, 100, 100, 384))  # not whole records
    with pytest.raises(CoreArgumentError):
        short.restore(UtmpState(state.dev, state.ino, 800, 800, 400))  # another layout
    with pytest.raises(CoreArgumentError):
        short.restore({"dev": 1})


def test_missing_file_is_counted_then_read_when_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "btmp"
    reader = UtmpReader(str(path), "btmp")
    assert read_all(reader) == []
    assert reader.stats().missing == 1
    path.write_bytes(logins(1))
    assert [e["op"] for e in read_all(reader)] == ["failed"]


# ---------------------------------------------------------------------------------------------
# btmp, utmp


def test_btmp_records_are_failed_logins(tmp_path: Path) -> None:
    path = tmp_path / "btmp"
    path.write_bytes(
        rec(LOGIN_PROCESS, pid=77, line=b"ssh:notty", user=b"admin", host=b"198.51.100.9",
            sec=T0, usec=1000, addr=v4("198.51.100.9"))
        + rec(USER_PROCESS, pid=78, line=b"tty1", user=b"root", sec=T0 + 1)
        + rec(DEAD_PROCESS, pid=79, line=b"pts/3", user=b"nobody", sec=T0 + 2))
    events = read_all(UtmpReader(str(path), "btmp"))
    base = {"t": "login", "src": "utmp", "op": "failed"}
    assert events == [
        {**base, "ts": T0 * 1000 + 1, "user": "admin", "tty": "ssh:notty",
         "host": "198.51.100.9", "addr": "198.51.100.9", "pid": 77},
        {**base, "ts": (T0 + 1) * 1000, "user": "root", "tty": "tty1", "pid": 78},
        {**base, "ts": (T0 + 2) * 1000, "user": "nobody", "tty": "pts/3", "pid": 79},
    ]


def test_snapshot_lists_current_sessions_and_resumes_after_a_full_sink(tmp_path: Path) -> None:
    path = tmp_path / "utmp"
    body = [rec(BOOT_TIME, user=b"reboot", sec=T0), rec(LOGIN_PROCESS, line=b"tty1", sec=T0)]
    body += [rec(USER_PROCESS, pid=500 + i, line=f"pts/{i}".encode(), user=f"s{i}".encode(),
                 sec=T0 + i) for i in range(40)]
    body += [rec(DEAD_PROCESS, line=b"pts/99", sec=T0)]
    path.write_bytes(b"".join(body))
    reader = UtmpReader(str(path), "utmp")
    small = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
    events = snapshot_all(reader, small)
    assert [e["user"] for e in events] == [f"s{i}" for i in range(40)]
    assert {e["op"] for e in events} == {"active"}
    assert small.stats().dropped_full == 0
    stats = reader.stats()
    assert stats.records == len(body) and stats.skipped == 3 and stats.events == 40
    # The offset is untouched: read() still sees the whole file as new.
    assert reader.state().offset == 0
    again = snapshot_all(reader, EventSink())
    assert again == events


# ---------------------------------------------------------------------------------------------
# Bounds


def test_a_read_call_is_bounded_by_max_records(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(12))
    reader = UtmpReader(str(path), options=UtmpOptions(max_records=5, chunk_records=3))
    sink = EventSink()
    counts = []
    for _ in range(3):
        before = sink.stats().events
        more = reader.read(sink)
        counts.append(sink.stats().events - before)
        counts.append(int(more))
    assert counts == [5, 1, 5, 1, 2, 0]
    assert users(decode_batches(sink.seal())) == [f"user{i}" for i in range(12)]


def test_a_full_sink_stops_reading_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(300))
    reader = UtmpReader(str(path))
    sink = EventSink(SinkOptions(batch_bytes=1024, max_batches=2))
    events = read_all(reader, sink)
    assert users(events) == [f"user{i}" for i in range(300)]
    assert sink.stats().dropped_full == 0 and reader.stats().dropped == 0


def test_remembered_logins_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    body = logins(3) + b"".join(
        rec(DEAD_PROCESS, line=f"pts/{i}".encode(), sec=T0 + 100) for i in range(3))
    path.write_bytes(body)
    reader = UtmpReader(str(path), options=UtmpOptions(max_sessions=2))
    events = read_all(reader)
    logouts = [e for e in events if e["op"] == "logout"]
    # pts/0 was the oldest and was forgotten; the other two logouts found their logins.
    assert [e.get("user") for e in logouts] == [None, "user1", "user2"]
    stats = reader.stats()
    assert stats.evicted == 1 and stats.unmatched == 1


def test_a_boot_forgets_open_sessions(tmp_path: Path) -> None:
    path = tmp_path / "wtmp"
    path.write_bytes(logins(1) + rec(BOOT_TIME, user=b"reboot", sec=T0 + 50)
                     + rec(DEAD_PROCESS, line=b"pts/0", sec=T0 + 60))
    events = read_all(UtmpReader(str(path)))
    assert "user" not in events[-1] and "dur" not in events[-1]


@pytest.mark.parametrize(
    "options",
    [UtmpOptions(layout=385), UtmpOptions(max_records=0), UtmpOptions(chunk_records=0),
     UtmpOptions(chunk_records=5000), UtmpOptions(max_sessions=0), UtmpOptions(layout=-1)],
)
def test_bad_options_are_refused(tmp_path: Path, options: UtmpOptions) -> None:
    with pytest.raises(CoreArgumentError):
        UtmpReader(str(tmp_path / "wtmp"), "wtmp", options)


def test_bad_kind_and_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CoreArgumentError):
        UtmpReader(str(tmp_path / "wtmp"), "lastlog")
    with pytest.raises(CoreArgumentError):
        UtmpReader("")
    with pytest.raises(CoreArgumentError):
        UtmpDecoder(7)


# ---------------------------------------------------------------------------------------------
# Odd data


def test_odd_records_are_counted_not_trusted() -> None:
    data = (
        rec(42, user=b"x", sec=T0)  # no such type
        + rec(-3, sec=T0)
        + rec(USER_PROCESS, line=b"pts/0", user=b"ok", sec=T0, usec=5_000_000)  # usec ignored
        + b"\x07" + b"\xff" * 500
    )
    sink = EventSink()
    with UtmpDecoder("wtmp", UtmpOptions(layout=384)) as decoder:
        events_n, used = decoder.feed(sink, data)
        stats = decoder.stats()
    assert used == 4 * 384 and events_n == 1
    events = decode_batches(sink.seal())
    assert events[0]["ts"] == T0 * 1000 and events[0]["user"] == "ok"
    assert stats.malformed == 3 and stats.records == 4


def test_400_layout_rejects_impossible_times() -> None:
    data = rec(USER_PROCESS, line=b"pts/0", user=b"a", sec=-1, size=400)
    sink = EventSink()
    decoder = UtmpDecoder("wtmp", UtmpOptions(layout=400))
    assert decoder.feed(sink, data) == (0, 400)
    assert decoder.stats().malformed == 1


def test_layout_detection_waits_for_records_that_tell() -> None:
    decoder = UtmpDecoder("wtmp")
    sink = EventSink()
    # Two EMPTY records (no times) and part of a third: neither layout can be told yet.
    assert decoder.feed(sink, rec(EMPTY) * 2 + b"\0" * 10) == (0, 0)
    assert decoder.stats().layout == 0
    one = rec(USER_PROCESS, line=b"pts/0", user=b"a", sec=T0, size=400)
    assert decoder.feed(sink, one) == (1, 400)
    assert decoder.stats().layout == 400


# ---------------------------------------------------------------------------------------------
# Records written by someone else: util-linux's utmpdump -r (glibc's own struct utmp) and the
# machine's files


UTMPDUMP = shutil.which("utmpdump")
LAST = shutil.which("last")


def parse_utmpdump(text: str) -> list[dict[str, Any]]:
    """utmpdump's lines: [type] [pid] [id] [user] [line] [host] [addr] [time]."""
    out = []
    for line in text.splitlines():
        if not line.startswith("["):
            continue
        cols = [c.rstrip() for c in line[1:-1].split("] [")]
        out.append({"type": int(cols[0]), "pid": int(cols[1]), "id": cols[2], "user": cols[3],
                    "line": cols[4], "host": cols[5], "addr": cols[6], "time": cols[7]})
    return out


def python_records(data: bytes) -> list[tuple[Any, ...]]:
    """The reference decoding: struct.unpack of each 384-byte record."""
    return [struct.unpack_from(FMT_384, data, off) for off in range(0, len(data) - 383, 384)]


def test_records_written_by_utmpdump(tmp_path: Path) -> None:
    if UTMPDUMP is None:
        skip_unless_ci("utmpdump (util-linux) is not installed")
    text = "".join(
        f"[7] [{2000 + i:05d}] [ts/{i}] [user{i}  ] [pts/{i}     ] [host{i}.example  ] "
        f"[{'2001:db8::' + format(i + 1, 'x') if i % 2 else '198.51.100.' + str(i + 1)}] "
        f"[2024-03-0{1 + i % 9}T10:00:{i % 60:02d},{i * 1000:06d}+00:00]\n"
        for i in range(20)
    ) + "[8] [02000] [ts/0] [        ] [pts/0       ] [                    ] [0.0.0.0        ] [2024-03-09T10:00:00,000000+00:00]\n"
    (tmp_path / "wtmp.txt").write_text(text)
    path = tmp_path / "wtmp"
    with (tmp_path / "wtmp.txt").open("rb") as stdin, path.open("wb") as stdout:
        subprocess.run([UTMPDUMP, "-r"], stdin=stdin, stdout=stdout, check=True,
                       stderr=subprocess.DEVNULL)
    assert path.stat().st_size == 21 * 384
    dumped = parse_utmpdump(subprocess.run([UTMPDUMP, str(path)], capture_output=True,
                                           text=True, check=True).stdout)
    events = read_all(UtmpReader(str(path)))
    assert len(events) == len(dumped) == 21
    for event, d in zip(events, dumped):
        assert event["op"] == {7: "login", 8: "logout"}[d["type"]]
        assert event["pid"] == d["pid"] and event["id"] == d["id"] and event["tty"] == d["line"]
        assert event.get("user", "") == (d["user"] or ("user0" if d["type"] == 8 else ""))
        assert event.get("host", "") == d["host"]
        assert event.get("addr", "0.0.0.0") == d["addr"]
        sec, _, rest = d["time"].partition(",")
        when = datetime.datetime.fromisoformat(sec + "+00:00")
        assert event["ts"] == int(when.timestamp()) * 1000 + int(rest[:6]) // 1000
    assert events[-1]["dur"] == events[-1]["ts"] - events[0]["ts"]
    if LAST is not None:
        out = subprocess.run([LAST, "-w", "-f", str(path)], capture_output=True, text=True,
                             check=True).stdout
        rows = [line.split() for line in out.splitlines() if line.startswith("user")]
        assert sorted((r[0], r[1], r[2]) for r in rows) == sorted(
            (e["user"], e["tty"], e["host"]) for e in events if e["op"] == "login")


REAL_FILES = [("/var/log/wtmp", "wtmp"),
              pytest.param("/var/log/btmp", "btmp", marks=pytest.mark.root),  # mode 0600
              ("/var/run/utmp", "utmp")]


@pytest.mark.parametrize("path,kind", REAL_FILES)
def test_the_machines_own_files(path: str, kind: str) -> None:
    if not os.path.exists(path):
        # Nothing writes it here (a container without a login manager): the reader copes.
        reader = UtmpReader(path, kind)
        assert read_all(reader) == [] and snapshot_all(reader, EventSink()) == []
        assert reader.stats().missing == 2 and reader.stats().io_errors == 0
        return
    data = Path(path).read_bytes()
    reader = UtmpReader(path, kind)
    events = read_all(reader)
    stats = reader.stats()
    assert stats.io_errors == 0 and stats.malformed == 0 and stats.partial == 0
    layout = stats.layout or 384
    assert stats.records == len(data) // layout
    assert stats.records == stats.events + stats.skipped
    if layout != 384:
        return
    reference = python_records(data)
    want_users = [r[4].split(b"\0", 1)[0] for r in reference if r[0] == USER_PROCESS]
    got_users = [e["user"] for e in events if e["op"] in ("login", "failed")
                 and "user" in e]
    if kind == "wtmp":
        assert [u.decode(errors="replace") for u in want_users] == [
            u if isinstance(u, str) else u.decode(errors="replace") for u in got_users]
    if kind == "utmp":
        active = snapshot_all(UtmpReader(path, "utmp"), EventSink())
        assert len(active) == len(want_users)
    if LAST is not None and kind == "wtmp":
        out = subprocess.run([LAST, "-w", "-f", path], capture_output=True, text=True,
                             check=True).stdout
        names = [line.split()[0] for line in out.splitlines()
                 if line.strip() and not line.startswith(("wtmp", "reboot", "shutdown"))
                 and Path(path).name not in line.split()[0]]
        assert sorted(names) == sorted(u.decode() for u in want_users)


# ---------------------------------------------------------------------------------------------
# Memory


def test_entry_points_keep_rss_flat(tmp_path: Path) -> None:
    from leakcheck import assert_rss_flat

    path = tmp_path / "wtmp"
    data = known_records(384)
    path.write_bytes(data)
    sink = EventSink(SinkOptions(batch_bytes=4096, max_batches=2))

    def drained() -> None:
        sink.take()

    def open_close() -> None:
        UtmpReader(str(path)).close()

    def new_close() -> None:
        UtmpDecoder().close()

    reader = UtmpReader(str(path))

    def read_again() -> None:
        reader.restore(UtmpState(0, 0, 0, 0, 0))  # another file: read from 0 again
        reader.read(sink)
        sink.seal()
        drained()

    snap = UtmpReader(str(path), "utmp")

    def snapshot() -> None:
        snap.snapshot(sink)
        sink.seal()
        drained()

    decoder = UtmpDecoder()

    def feed() -> None:
        decoder.feed(sink, data)
        sink.seal()
        drained()

    def state_stats() -> None:
        reader.state()
        reader.stats()

    for fn in (open_close, new_close, read_again, snapshot, feed, state_stats):
        assert_rss_flat(fn, calls=10_000, name=fn.__name__)
    assert reader.stats().io_errors == 0
    assert reader.stats().rotations >= 10_000
