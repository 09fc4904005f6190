"""A file storm watched by the core's inotify source beside `inotifywait -m -r` (inotify-tools):
the same storm, the same tree, the same run, one CPU.

The storm is a child process that, over AGENT_BENCH_FS_FILES files (default 20,000; 500 with
--benchmark-disable) spread over 16 directories, creates each file, writes it, chmods it,
renames it and deletes it: seven inotify records a file (create, modify, close_write,
attrib, moved_from, moved_to, delete). Each watcher reads while the storm runs, as it would on
a device; what is measured is the watcher's own CPU time, so the figure is records per
CPU-second of the watcher (the storm's speed is the same for both).

- core: agent.native.inotify.Inotify on the tree (recursive), drained into an EventSink as
  the agent's loop does (a readable fd, 50 ms of gathering, one drain): records decoded,
  moves paired, events encoded as msgpack, batches taken.
- inotifywait: `inotifywait -m -r -q -e create,modify,attrib,close_write,move,delete
  --format '%e %w%f'`, the same events as text lines to a pipe (its CPU from getrusage of the
  reaped child).

Each watcher is checked to have seen the whole storm: no overflow, and the records it reports
are the storm's (the core counts records, inotifywait prints one line per record).
fs.inotify.max_queued_events is raised for the run and restored, so that neither loses events
while the scheduler runs the storm.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import skip_unless_ci
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="fs-watch")

DIRS = 16
RECORDS_PER_FILE = 7
QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")

STORM = """
import os, sys
root, n, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = os.path.join(root, f"d{i % dirs}")
    a, b = os.path.join(d, f"f{i}"), os.path.join(d, f"g{i}")
    with open(a, "wb") as f:
        f.write(b"x")
    os.chmod(a, 0o600)
    os.rename(a, b)
    os.unlink(b)
"""


def files(request: pytest.FixtureRequest) -> int:
    quick = bool(request.config.getoption("benchmark_disable"))
    return int(os.environ.get("AGENT_BENCH_FS_FILES") or (500 if quick else 20_000))


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        skip_unless_ci("raising fs.inotify.max_queued_events needs root")
    old = QUEUE.read_text()
    QUEUE.write_text(str(1 << 20))
    root = tmp_path / "storm"
    for i in range(DIRS):
        (root / f"d{i}").mkdir(parents=True)
    try:
        yield root
    finally:
        QUEUE.write_text(old)


def _storm(root: Path, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", STORM, str(root), str(n), str(DIRS)])


def _core(root: Path, n: int) -> tuple[int, float]:
    """(records seen, CPU seconds this process spent watching)."""
    from agent.native.inotify import Inotify
    from agent.native.sink import EventSink, pump

    sink = EventSink()
    with Inotify() as source:
        source.set_paths([str(root)])
        storm = _storm(root, n)
        cpu = 0.0
        while True:
            done = storm.poll() is not None
            # As the agent's loop does (docs/collectors.md, "The loop"): after a wake-up the
            # records gather for 50 ms before one drain reads them all.
            if select.select([source.fileno()], [], [], 0.05)[0]:
                time.sleep(0.05)
            start = time.process_time()
            pump(source.drain, sink, lambda _: None)
            cpu += time.process_time() - start
            if done and source.stats().records >= n * RECORDS_PER_FILE:
                break
            if done and storm.returncode != 0:
                raise RuntimeError("the storm failed")
        start = time.process_time()
        pump(lambda s: source.release(s, True), sink, lambda _: None, seal=True)
        cpu += time.process_time() - start
        stats = source.stats()
    assert stats.overflows == 0 and stats.dropped == 0
    assert stats.moves_paired == n
    return int(stats.records), cpu


def _inotifywait(root: Path, n: int) -> tuple[int, float]:
    watcher = subprocess.Popen(
        ["inotifywait", "-m", "-r", "-q", "-e", "create,modify,attrib,close_write,move,delete",
         "--format", "%e %w%f", str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert watcher.stdout is not None and watcher.stderr is not None
    # Watches are set up when it says so on stderr (without -q); with -q: wait for the tree.
    time.sleep(0.5)
    storm = _storm(root, n)
    lines = 0
    want = n * RECORDS_PER_FILE
    buf = b""
    while lines < want:
        chunk = os.read(watcher.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        buf += chunk
        lines += buf.count(b"\n")
        buf = buf[buf.rfind(b"\n") + 1:]
    assert storm.wait() == 0
    # Its own CPU from the rusage of the reaped child: microseconds, where /proc/PID/stat
    # counts clock ticks (10 ms) and a 500-file storm can fit in less than one. What it
    # spends on the SIGTERM is counted too: a few microseconds.
    watcher.terminate()
    _, status, usage = os.wait4(watcher.pid, 0)
    watcher.returncode = os.waitstatus_to_exitcode(status)
    return lines, usage.ru_utime + usage.ru_stime


RESULTS: dict[str, float] = {}


def _record(benchmark: BenchmarkFixture, peer: str, records: int, cpu: float) -> None:
    if cpu <= 0:
        # Below the clock's resolution: quote the rate as if one microsecond was spent, a
        # lower bound, rather than an infinity no table can print.
        print(f"\nfs-watch: {peer} spent less CPU than the clock resolves")
        cpu = 1e-6
    rate = records / cpu
    RESULTS[peer] = rate
    benchmark.extra_info.update({"peer": peer, "records": records, "cpu_s": round(cpu, 3),
                                 "records_per_cpu_s": round(rate)})
    if "core" in RESULTS and "inotifywait" in RESULTS:
        ratio = RESULTS["core"] / RESULTS["inotifywait"]
        benchmark.extra_info["core_over_inotifywait"] = round(ratio, 2)
        print(f"\nfs-watch: core {RESULTS['core']:,.0f} records/CPU-s, inotifywait "
              f"{RESULTS['inotifywait']:,.0f} records/CPU-s: core {ratio:.1f}x")


def test_core(benchmark: BenchmarkFixture, tree: Path, request: pytest.FixtureRequest,
              bench_cpu: int) -> None:
    n = files(request)
    records, cpu = benchmark.pedantic(lambda: _core(tree, n), rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    assert records >= n * RECORDS_PER_FILE
    _record(benchmark, "core", records, cpu)


def test_inotifywait(benchmark: BenchmarkFixture, tree: Path, request: pytest.FixtureRequest,
                     bench_cpu: int) -> None:
    if shutil.which("inotifywait") is None:
        skip_unless_ci("inotifywait is not installed (scripts/test installs inotify-tools)")
    n = files(request)
    lines, cpu = benchmark.pedantic(lambda: _inotifywait(tree, n), rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    assert lines >= n * RECORDS_PER_FILE
    _record(benchmark, "inotifywait", lines, cpu)
