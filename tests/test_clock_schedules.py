"""Found by the soak's wall-clock jumps (tests/test_soak.py, docs/soak.md): the collectors'
schedules (the next /proc poll, the next socket snapshot, the audit source's once-a-second
tick) compared the agent's wall clock, so a clock set back by an hour stopped them for an
hour. They run on the monotonic clock now; this checks it for real with the Process
collector's polling mode (/proc, no privilege needed) and the clock set back by an hour."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

from agent.clock import wall_ms
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


def test_polling_goes_on_after_the_wall_clock_is_set_back_an_hour(tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"Process_Mode": 3, "Process_PollingInterval": 10000}))
    config = ConfigStore(str(config_path)).config
    collector = ProcessCollector(Environment(data_dir=tmp_path))
    lane = ListLane()
    collector.configure(config)
    collector.lane = lane
    assert collector.start().source == "polling"
    try:
        now = wall_ms()
        collector.tick(now, lane)  # the first poll: the next is due 10 ms later
        tag = f"jump-{uuid.uuid4().hex[:12]}"
        child = subprocess.Popen(["/bin/sh", "-c", f"sleep 1; : {tag}"])
        try:
            time.sleep(0.2)
            # The wall clock went back an hour: the poll is due all the same.
            collector.tick(now - 3_600_000, lane)
        finally:
            child.wait()
    finally:
        collector.stop()
    collector.flush(lane)
    lane.spill(lane.sink.seal())
    argvs = [e.get("argv") or [] for b in lane.batches for e in batch_events(b)
             if e.get("t") == "exec"]
    assert any(any(tag in str(a) for a in argv) for argv in argvs), argvs[-5:]
