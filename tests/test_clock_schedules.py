"""Found by the soak's wall-clock jumps (tests/test_soak.py, docs/soak.md): the collectors'
schedules (the next /proc poll, the next socket snapshot, the audit source's once-a-second
tick) compared the agent's wall clock, so a clock set back by an hour stopped them for an
hour. The loop hands each tick the monotonic clock now; this checks it for real with the
Process collector's polling mode (/proc, no privilege needed) and the agent's wall clock set
back by an hour (its offset file, as the soak does)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from agent.clock import CLOCK
from agent.collectors.base import Environment
from agent.collectors.process import ProcessCollector
from agent.config import ConfigStore
from agent.jsonl import batch_events
from agent.native.sink import EventSink


class ListLane:
    def __init__(self) -> None:
        self.sink = EventSink()
        self.batches: list[bytes] = []

    def spill(self, batches: list[bytes]) -> None:
        self.batches += batches


def test_polling_goes_on_after_the_wall_clock_is_set_back_an_hour(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"Process_Mode": 3, "Process_PollingInterval": 10000}))
    config = ConfigStore(str(config_path)).config
    collector = ProcessCollector(Environment(data_dir=tmp_path))
    lane = ListLane()
    collector.configure(config)
    collector.lane = lane
    assert collector.start().source == "polling"
    try:
        collector.tick(time.monotonic_ns() // 1_000_000, lane)  # the first poll: the next is due 10 ms later
        # The agent's wall clock goes back an hour (restored with the attributes at teardown).
        for name in ("offset_file", "_offset_s", "_seen_mtime_ns", "_next_check", "_skew_s"):
            monkeypatch.setattr(CLOCK, name, getattr(CLOCK, name))
        offset = tmp_path / "clock-offset"
        offset.write_text("-3600")
        CLOCK.offset_file = str(offset)
        CLOCK._next_check = float("-inf")
        assert CLOCK.offset_s() == -3600
        tag = f"jump-{uuid.uuid4().hex[:12]}"
        child = subprocess.Popen(["/bin/sh", "-c", f"sleep 1; : {tag}"])
        try:
            time.sleep(0.2)
            # The poll is due all the same.
            collector.tick(time.monotonic_ns() // 1_000_000, lane)
        finally:
            child.wait()
    finally:
        collector.stop()
    collector.flush(lane)
    lane.spill(lane.sink.seal())
    argvs = [e.get("argv") or [] for b in lane.batches for e in batch_events(b)
             if e.get("t") == "exec"]
    assert any(any(tag in str(a) for a in argv) for argv in argvs), argvs[-5:]
