"""Process snapshot and proc connector decoding: the C core beside its peers
(docs/architecture.md, Budgets).

snapshot (group process-snapshot), with 2,000 extra sleeping processes (200 under
--benchmark-disable), same fields on both sides (pid, ppid, uids, gids, name, exe, cmdline,
create time, status):
- core: agent.native.proc_scan.ProcScanner.scan pumped into an EventSink, batches taken.
- psutil: list(psutil.process_iter(attrs=[...])) with psutil's process cache cleared first,
  so that each round reads every process as a first scan would.
Target: core >= 5x psutil.

cn_proc decoding (group cnproc-decode), one buffer of 10,000 fork/exec/exit messages built
with struct.pack for pids above PID_MAX_LIMIT (they cannot exist):
- core: ProcConnector(listen=False, enrich=False).decode -> msgpack events.
- pyroute2: ProcEventMarshal().parse over the same buffer (pyroute2's ProcEventSocket parser).
- core-enrich-self (reported, not a peer): 10,000 exec messages for this process with
  enrichment on: each reads /proc/self's stat, status, cmdline, exe and cwd.
Target: core >= 20x pyroute2.

Each runs ROUNDS times pinned to one CPU (conftest.bench_cpu); rates use the median round. The table of ratios is printed at the end
of the session (and kept in benchmark.extra_info).
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any, Callable, TypeVar

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="process")

ROUNDS = 5
SLEEPERS = 2000
SLEEPERS_QUICK = 200
MESSAGES = 10_000
PSUTIL_ATTRS = ["pid", "ppid", "uids", "gids", "name", "exe", "cmdline", "create_time", "status"]
PID_MAX_LIMIT = 4_194_304  # include/linux/threads.h: no pid is ever this high

T = TypeVar("T")
_RESULTS: dict[str, dict[str, Any]] = {}
_TARGETS = {("snapshot", "psutil"): 5.0, ("cnproc", "pyroute2"): 20.0}


def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


def measure(
    benchmark: BenchmarkFixture, target: Callable[[], T], rounds: int
) -> tuple[T, list[float]]:
    walls: list[float] = []
    results: list[T] = []

    def timed() -> T:
        start = time.perf_counter()
        result = target()
        walls.append(time.perf_counter() - start)
        results.append(result)
        return result

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    assert results
    return results[-1], walls[-rounds:] if len(walls) > rounds else walls


def record(group: str, peer: str, items: int, walls: list[float], benchmark: BenchmarkFixture) -> None:
    median = statistics.median(walls)
    _RESULTS[f"{group}/{peer}"] = {"group": group, "peer": peer, "items": items, "median": median}
    benchmark.extra_info.update({"items": items, "median_s": round(median, 6),
                                 "items_per_s": round(items / median) if median else None})


# ---------------------------------------------------------------------------------------------
# process snapshot


@pytest.fixture(scope="module")
def sleepers(request: pytest.FixtureRequest) -> Iterator[int]:
    count = SLEEPERS_QUICK if quick(request) else SLEEPERS
    children: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            children.append(subprocess.Popen(["/bin/sleep", "1000"], stdin=subprocess.DEVNULL))
        # Wait until every child has exec'd sleep: both peers then see the same processes.
        deadline = time.monotonic() + 60
        for child in children:
            while True:
                try:
                    with open(f"/proc/{child.pid}/comm", "rb") as comm:
                        if comm.read() == b"sleep\n":
                            break
                except FileNotFoundError:
                    pass
                assert time.monotonic() < deadline, "the sleepers did not start"
                time.sleep(0.001)
        yield count
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


def _process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def test_snapshot_core(
    benchmark: BenchmarkFixture, sleepers: int, request: pytest.FixtureRequest, bench_cpu: int
) -> None:
    import msgpack

    from agent.native.proc_scan import ProcScanner
    from agent.native.sink import EventSink, pump

    scanner = ProcScanner()
    sink = EventSink()

    def run() -> int:
        batches: list[bytes] = []
        pump(scanner.scan, sink, batches.extend)
        batches += sink.seal()
        return sum(int.from_bytes(b[1:5], "big") for b in batches)

    events, walls = measure(benchmark, run, 1 if quick(request) else ROUNDS)
    # Other work on the machine starts and ends processes too: about the same count, and
    # every sleeper (checked below).
    present = _process_count()
    assert abs(events - present) <= max(10, present // 20), (events, present)
    assert events >= sleepers
    # Spot check: the same fields psutil is asked for are there.
    batches: list[bytes] = []
    pump(scanner.scan, sink, batches.extend)
    decoded = [e for b in batches + sink.seal() for e in msgpack.unpackb(b, raw=False)]
    sleeping = [e for e in decoded if e.get("argv") == ["/bin/sleep", "1000"]]
    assert len(sleeping) >= sleepers
    assert all({"ppid", "uid", "gid", "comm", "exe", "start", "state"} <= set(e) for e in sleeping)
    record("snapshot", "core", events, walls, benchmark)
    scanner.close()


def test_snapshot_psutil(
    benchmark: BenchmarkFixture, sleepers: int, request: pytest.FixtureRequest, bench_cpu: int
) -> None:
    import psutil

    def run() -> int:
        psutil.process_iter.cache_clear()  # type: ignore[attr-defined]
        procs = list(psutil.process_iter(attrs=PSUTIL_ATTRS))
        assert sum(1 for p in procs if p.info["cmdline"] == ["/bin/sleep", "1000"]) >= sleepers
        return len(procs)

    count, walls = measure(benchmark, run, 1 if quick(request) else ROUNDS)
    present = _process_count()
    assert abs(count - present) <= max(10, present // 20), (count, present)
    record("snapshot", "psutil", count, walls, benchmark)


# ---------------------------------------------------------------------------------------------
# cn_proc decoding


def _message(what: int, data: bytes, seq: int, ts_ns: int) -> bytes:
    event = struct.pack("=IIQ", what, 0, ts_ns) + data.ljust(24, b"\0")
    cn = struct.pack("=IIIIHH", 1, 1, seq, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn


def cnproc_buffer(count: int) -> bytes:
    """fork, exec, exit of pids that cannot exist, in turn."""
    ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    parts = []
    for k in range(count):
        pid = PID_MAX_LIMIT + k // 3
        kind = k % 3
        if kind == 0:
            parts.append(_message(1, struct.pack("=iiii", 1, 1, pid, pid), k, ts))
        elif kind == 1:
            parts.append(_message(2, struct.pack("=ii", pid, pid), k, ts))
        else:
            parts.append(_message(0x80000000, struct.pack("=iiIiii", pid, pid, 0, 17, 1, 1), k, ts))
    return b"".join(parts)


def _decode_core(data: bytes, enrich: bool) -> tuple[int, int]:
    from agent.native.proc_connector import ProcConnector, ProcConnectorOptions
    from agent.native.sink import EventSink

    pc = ProcConnector(ProcConnectorOptions(listen=False, enrich=enrich))
    sink = EventSink()
    events = 0
    offset = 0
    while offset < len(data):
        offset += pc.decode(sink, data[offset:] if offset else data)
        sink.take()
    sink.seal()
    events = sink.stats().events
    messages = pc.stats().messages
    pc.close()
    return events, messages


def test_cnproc_core(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, bench_cpu: int
) -> None:
    data = cnproc_buffer(MESSAGES)
    (events, messages), walls = measure(
        benchmark, lambda: _decode_core(data, enrich=False), 3 if quick(request) else ROUNDS * 4
    )
    assert events == messages == MESSAGES
    record("cnproc", "core", MESSAGES, walls, benchmark)


def test_cnproc_pyroute2(
    benchmark: BenchmarkFixture, request: pytest.FixtureRequest, bench_cpu: int
) -> None:
    from pyroute2.netlink.connector.cn_proc import ProcEventMarshal

    data = cnproc_buffer(MESSAGES)

    def run() -> int:
        msgs = list(ProcEventMarshal().parse(data))
        return len(msgs)

    count, walls = measure(benchmark, run, 1 if quick(request) else ROUNDS)
    assert count == MESSAGES
    # The same work: pyroute2 read the same pids we did.
    msgs = list(ProcEventMarshal().parse(data))
    expected = [PID_MAX_LIMIT + k // 3 for k in range(MESSAGES)]
    pids = [m.get("child_tgid") if m["what"] == 1 else m.get("process_tgid") for m in msgs]
    assert pids == expected
    record("cnproc", "pyroute2", count, walls, benchmark)


def test_cnproc_core_enrich_self(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> None:
    count = 1000 if quick(request) else MESSAGES
    ts = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    pid = os.getpid()
    data = b"".join(_message(2, struct.pack("=ii", pid, pid), k, ts) for k in range(count))
    (events, messages), walls = measure(
        benchmark, lambda: _decode_core(data, enrich=True), 1 if quick(request) else 3
    )
    assert events == messages == count
    record("cnproc", "core-enrich-self", count, walls, benchmark)


def test_zz_ratios(request: pytest.FixtureRequest) -> None:
    """The side-by-side table (needs the tests above in the same run)."""
    lines = ["", "| group | peer | items | median s | items/s | core / peer | budget |",
             "|---|---|---:|---:|---:|---:|---|"]
    for key, r in sorted(_RESULTS.items()):
        core = _RESULTS.get(f"{r['group']}/core")
        rate = r["items"] / r["median"]
        ratio = budget = ""
        if core is not None and (r["group"], r["peer"]) in _TARGETS:
            value = (core["items"] / core["median"]) / rate
            ratio = f"{value:.1f}x"
            target = _TARGETS.get((r["group"], r["peer"]))
            if target is not None:
                budget = f">= {target:g}x: {'met' if value >= target else 'NOT met'}"
        lines.append(f"| {r['group']} | {r['peer']} | {r['items']:,} | {r['median']:.4f} | "
                     f"{rate:,.0f} | {ratio} | {budget} |")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in lines:
            reporter.write_line(line)
    if not _RESULTS:
        pytest.skip("run with the other benchmarks of this file")
