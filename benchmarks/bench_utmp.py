"""wtmp records -> login events: the C core beside its peers, same file, same run, one CPU.

The input is a wtmp file of AGENT_BENCH_UTMP_RECORDS records (default 100,000; 2,000 with
--benchmark-disable) in glibc's 384-byte layout: boots, ssh logins with IPv4 and IPv6
addresses, console logins and their logouts, as a busy device's history holds them.

- core: agent.native.utmp.UtmpReader reading the whole file into an EventSink (msgpack
  batches taken as they fill), logouts matched to their logins.
- python: a pure-Python reader: struct.iter_unpack of the same layout, the same events as
  dicts (same keys, logout matching, addresses as text) packed with msgpack-python.
- utmpdump: util-linux's `utmpdump FILE` (every record as a text line), end to end.
- last: util-linux's `last -f FILE` (the sessions with their durations), end to end.

Each peer is checked to have done the same work: the same number of events (the python
peer's events equal the core's, decoded), one utmpdump line per record, one `last` line per
login and boot.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import measure, skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="utmp-read")

FMT = "<hxxi32s4s32s256shhiIi16s20x"
RECORD = struct.calcsize(FMT)
T0 = 1_700_000_000
ROUNDS = 5


def _records(count: int) -> bytes:
    """A history: every 50th record a boot, else alternating logins and their logouts."""
    out = []
    open_lines: list[bytes] = []
    for i in range(count):
        sec = T0 + i * 7
        if i % 50 == 0:
            out.append(struct.pack(FMT, 2, 0, b"~", b"~~", b"reboot", b"6.1.0-rpi7", 0, 0, 0,
                                   sec, 0, b"\0" * 16))
            open_lines.clear()
        elif open_lines and i % 2 == 0:
            line = open_lines.pop()
            out.append(struct.pack(FMT, 8, 4000 + i, line, line[-4:], b"", b"", 0, 0, 0, sec,
                                   i % 1000 * 1000, b"\0" * 16))
        else:
            n = i % 97
            line = f"pts/{n}".encode()
            if i % 3:
                host = f"192.0.2.{n}"
                addr = socket.inet_pton(socket.AF_INET, host)
            else:
                host = f"2001:db8::{n:x}"
                addr = socket.inet_pton(socket.AF_INET6, host)
            out.append(struct.pack(FMT, 7, 4000 + i, line, line[-4:], f"user{n}".encode(),
                                   host.encode(), 0, 0, 4000 + i, sec, i % 1000 * 1000, addr))
            open_lines.append(line)
    return b"".join(out)


@pytest.fixture(scope="module")
def wtmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    quick = bool(request.config.getoption("benchmark_disable"))
    count = int(os.environ.get("AGENT_BENCH_UTMP_RECORDS") or (2_000 if quick else 100_000))
    path = tmp_path_factory.mktemp("utmp-bench") / "wtmp"
    path.write_bytes(_records(count))
    return path


def _core_events(path: Path) -> list[bytes]:
    from agent.native.sink import EventSink, pump
    from agent.native.utmp import UtmpReader

    sink = EventSink()
    batches: list[bytes] = []
    with UtmpReader(str(path)) as reader:
        pump(reader.read, sink, batches.extend)
        stats = reader.stats()
    batches += sink.seal()
    assert stats.malformed == 0 and stats.dropped == 0
    return batches


def _count(batches: list[bytes]) -> int:
    return sum(int.from_bytes(b[1:5], "big") for b in batches)


def test_core(benchmark: BenchmarkFixture, wtmp: Path, bench_cpu: int) -> None:
    batches = measure(benchmark, lambda: _core_events(wtmp), ROUNDS)
    records = wtmp.stat().st_size // RECORD
    assert _count(batches) == records
    benchmark.extra_info.update({"peer": "core", "records": records, "cpu": bench_cpu})


# ---------------------------------------------------------------------------------------------
# pure Python


def _text(raw: bytes) -> Any:
    value = raw.split(b"\0", 1)[0]
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value


def _addr(raw: bytes) -> str | None:
    if raw == b"\0" * 16:
        return None
    if raw[4:] == b"\0" * 12:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def python_reader(path: Path) -> list[bytes]:
    """The same events as the core, built with struct and msgpack-python."""
    events: list[dict[str, Any]] = []
    sessions: dict[bytes, tuple[Any, int]] = {}
    for (ut_type, pid, line, ut_id, user, host, term, ex, ses, sec, usec,
         addr) in struct.iter_unpack(FMT, path.read_bytes()):
        ts = sec * 1000 + (usec // 1000 if 0 <= usec < 1_000_000 else 0)
        event: dict[str, Any] = {"t": "login", "src": "utmp"}
        if ut_type == 7 or ut_type == 8:
            event["op"] = "login" if ut_type == 7 else "logout"
            event["ts"] = ts
            key = line.split(b"\0", 1)[0] or ut_id.split(b"\0", 1)[0]
            name = _text(user)
            login = sessions.pop(key, None) if ut_type == 8 else None
            if name:
                event["user"] = name
            elif login is not None:
                event["user"] = login[0]
            for k, raw in (("tty", line), ("id", ut_id), ("host", host)):
                value = _text(raw)
                if value:
                    event[k] = value
            text = _addr(addr)
            if text is not None:
                event["addr"] = text
            if pid:
                event["pid"] = pid
            if ses:
                event["session"] = ses
            if ut_type == 8:
                event["exit"] = ex
                event["term"] = term
                if login is not None and ts >= login[1]:
                    event["dur"] = ts - login[1]
            elif key:
                sessions[key] = (name, ts)
        elif ut_type == 2:
            sessions.clear()
            event["op"] = "boot"
            event["ts"] = ts
            kernel = _text(host)
            if kernel:
                event["kernel"] = kernel
        else:
            continue
        events.append(event)
    return [msgpack.packb(events)]


def test_python(benchmark: BenchmarkFixture, wtmp: Path, bench_cpu: int) -> None:
    batches = measure(benchmark, lambda: python_reader(wtmp), ROUNDS)
    events = msgpack.unpackb(batches[0], raw=False)
    core = [e for b in _core_events(wtmp) for e in msgpack.unpackb(b, raw=False)]
    assert events == core, "the python peer did not produce the core's events"
    benchmark.extra_info.update({"peer": "python", "records": len(events), "cpu": bench_cpu})


# ---------------------------------------------------------------------------------------------
# util-linux


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_unless_ci(f"{name} (util-linux) is not installed")
    return path


def test_utmpdump(benchmark: BenchmarkFixture, wtmp: Path, bench_cpu: int) -> None:
    tool = _tool("utmpdump")

    def run() -> int:
        out = subprocess.run([tool, str(wtmp)], capture_output=True, check=True).stdout
        return out.count(b"\n[") + (1 if out.startswith(b"[") else 0)

    lines = measure(benchmark, run, ROUNDS)
    assert lines == wtmp.stat().st_size // RECORD
    benchmark.extra_info.update({"peer": "utmpdump", "records": lines, "cpu": bench_cpu})


def test_last(benchmark: BenchmarkFixture, wtmp: Path, bench_cpu: int) -> None:
    tool = _tool("last")
    data = wtmp.read_bytes()
    sessions = sum(1 for off in range(0, len(data), RECORD) if data[off] in (2, 7))

    def run() -> int:
        out = subprocess.run([tool, "-w", "-f", str(wtmp)], capture_output=True,
                             check=True, env={**os.environ, "TZ": "UTC"}).stdout
        return sum(1 for line in out.splitlines() if line.startswith((b"user", b"reboot")))

    lines = measure(benchmark, run, ROUNDS)
    assert lines == sessions, f"last listed {lines} sessions, the file holds {sessions}"
    benchmark.extra_info.update({"peer": "last", "records": len(data) // RECORD,
                                 "cpu": bench_cpu})
