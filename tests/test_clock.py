"""agent.clock: the agent's one wall clock and the offset a test jumps it by (tests/test_soak.py
injects wall-clock jumps of +1 h and -1 h through it, docs/soak.md)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from agent.clock import RECHECK_S, WallClock

SRC = Path(__file__).resolve().parent.parent / "src" / "agent"


def test_without_a_file_the_clock_is_the_system_clock() -> None:
    clock = WallClock(None)
    before = time.time()
    now = clock.time()
    assert before <= now <= time.time()
    assert abs(clock.time_ms() - time.time() * 1000) < 1000


def test_the_offset_file_jumps_the_clock_and_a_change_is_seen_within_recheck(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("3600\n")
    clock = WallClock(str(offset))
    assert abs(clock.time() - (time.time() + 3600)) < 1.0
    assert abs(clock.time_ms() - (time.time() + 3600) * 1000) < 1000
    offset.write_text("-3600.5")
    os.utime(offset, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a new mtime for sure
    time.sleep(RECHECK_S + 0.1)
    assert abs(clock.time() - (time.time() - 3600.5)) < 1.0
    # Gone or garbage: the offset stays what it was rather than jumping back by itself.
    offset.write_text("not a number")
    os.utime(offset, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    time.sleep(RECHECK_S + 0.1)
    assert abs(clock.offset_s() + 3600.5) < 1e-9
    offset.unlink()
    time.sleep(RECHECK_S + 0.1)
    assert abs(clock.offset_s() + 3600.5) < 1e-9


def test_the_runtime_reads_the_time_of_day_only_through_the_clock() -> None:
    """One source: a time.time() elsewhere would miss a jump the rest of the agent sees."""
    wall = re.compile(r"\btime\.time(_ns)?\(|\bdatetime\.(now|utcnow)\(")
    found = [f"{path.relative_to(SRC)}:{n}" for path in sorted(SRC.rglob("*.py"))
             if path.name != "clock.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if wall.search(line)]
    assert found == []


def test_a_jump_is_counted_with_its_size(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("0")
    clock = WallClock(str(offset))
    clock.time()
    assert clock.counts() == {"jumps_forward": 0, "jumps_backward": 0}
    offset.write_text("-3600")
    os.utime(offset, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    time.sleep(RECHECK_S + 0.1)
    clock.time_ms()
    clock.time()
    stats = clock.stats()
    assert clock.counts() == {"jumps_forward": 0, "jumps_backward": 1}
    assert abs(stats["last_jump_s"] + 3600) < 1.0, stats
    assert stats["offset_s"] == -3600
