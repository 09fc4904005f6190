"""The /proc scanner's polling mode (ProcScanOptions(changes=True)): the Process collector's
last resort when neither audit nor the proc connector is available. Real processes, real /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import msgpack
import pytest
from leakcheck import assert_rss_flat

from agent.native import CoreArgumentError, EventSink, pump
from agent.native.proc_scan import ProcScanner, ProcScanOptions


def run_scan(scanner: ProcScanner) -> list[dict[str, Any]]:
    sink = EventSink()
    assert scanner.scan(sink) is False
    return [e for b in sink.seal() for e in msgpack.unpackb(b, raw=False)]


def test_first_walk_learns_then_new_and_gone_processes_are_events() -> None:
    scanner = ProcScanner(ProcScanOptions(changes=True))
    assert run_scan(scanner) == []  # the first walk only learns what runs
    token = f"poll-{uuid.uuid4()}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token])
    try:
        deadline = time.monotonic() + 5
        mine: list[dict[str, Any]] = []
        while not mine and time.monotonic() < deadline:
            mine = [e for e in run_scan(scanner) if e["t"] == "exec" and e["pid"] == child.pid]
        assert len(mine) == 1, "the new process was not reported"
        (event,) = mine
        assert event["src"] == "proc" and event["ppid"] == os.getpid()
        assert event["uid"] == os.getuid()
        assert event["exe"] == os.path.realpath(sys.executable)
        assert event["argv"] == [sys.executable, "-c", "import time; time.sleep(60)", token]
        # Unchanged: no event about it in the next walk.
        assert not [e for e in run_scan(scanner) if e.get("pid") == child.pid]
    finally:
        child.kill()
        child.wait()
    gone = [e for e in run_scan(scanner) if e.get("pid") == child.pid]
    assert [e["t"] for e in gone] == ["exit"]
    assert gone[0]["poll"] is True and gone[0]["comm"]
    stats = scanner.stats()
    assert stats.started >= 1 and stats.exited >= 1
    assert stats.tracked > 0


def test_an_exec_within_a_process_is_seen_by_its_new_comm() -> None:
    scanner = ProcScanner(ProcScanOptions(changes=True))
    # The shell waits on a pipe, then execs sleep: same pid, same start time, new comm.
    r, w = os.pipe()
    child = subprocess.Popen(["/bin/sh", "-c", "read x; exec /bin/sleep 60"], stdin=r)
    os.close(r)
    try:
        time.sleep(0.2)
        run_scan(scanner)  # learns the shell
        os.write(w, b"go\n")
        deadline = time.monotonic() + 5
        seen: list[dict[str, Any]] = []
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
            seen = [e for e in run_scan(scanner) if e.get("pid") == child.pid]
        assert [e["t"] for e in seen] == ["exec"]
        assert seen[0]["comm"] == "sleep" and seen[0]["exe"] == os.path.realpath("/bin/sleep")
    finally:
        os.close(w)
        child.kill()
        child.wait()


def test_a_tiny_sink_resumes_without_losing_changes() -> None:
    from agent.native import SinkOptions

    scanner = ProcScanner(ProcScanOptions(changes=True))
    run_scan(scanner)
    children = [subprocess.Popen(["/bin/sleep", "60"]) for _ in range(40)]
    try:
        time.sleep(0.2)
        sink = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
        batches: list[bytes] = []
        pump(scanner.scan, sink, batches.extend)
        batches += sink.seal()
        pids = {e["pid"] for b in batches for e in msgpack.unpackb(b) if e["t"] == "exec"}
        assert {c.pid for c in children} <= pids
        assert sink.stats().dropped_full == 0
    finally:
        for c in children:
            c.kill()
            c.wait()


def test_bad_options_are_refused() -> None:
    with pytest.raises(CoreArgumentError):
        ProcScanner(ProcScanOptions(changes=True, max_tracked=3))


def test_polling_leaves_rss_flat() -> None:
    scanner = ProcScanner(ProcScanOptions(changes=True))
    sink = EventSink()

    def cycle() -> None:
        assert scanner.scan(sink) is False
        sink.seal()

    assert_rss_flat(cycle, calls=1000, name="am_pscan_run in changes mode (1,000 walks)")
