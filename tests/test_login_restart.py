"""Found by the soak (tests/test_soak.py): a Login restart (any Login_* twin patch) while the
data directory cannot be written (full, read-only) started again from the offsets last saved
in login-state.json, so the records read since then were read and sent a second time. The
offsets the collector holds in memory are what it has read; the file only carries them across
a restart of the agent."""

from __future__ import annotations

import json
import os
import struct
import time
from collections import Counter
from pathlib import Path

from agent.collectors.base import Environment
from agent.collectors.login import STATE_FILE, LoginCollector
from agent.config import ConfigStore
from agent.jsonl import batch_events
from agent.native.sink import EventSink

UTMP_FMT = "<hxxi32s4s32s256shhiIi16s20x"  # glibc's struct utmp, x86_64 (tests/test_utmp.py)


class ListLane:
    def __init__(self) -> None:
        self.sink = EventSink()
        self.batches: list[bytes] = []

    def spill(self, batches: list[bytes]) -> None:
        self.batches += batches

    def logins(self) -> Counter[str]:
        self.spill(self.sink.seal())
        hits: Counter[str] = Counter()
        for batch in self.batches:
            for event in batch_events(batch):
                if event.get("t") == "login":
                    hits[event["user"]] += int(event.get("hits", 1))
        return hits


def login(wtmp: Path, user: str) -> None:
    now = time.time()
    with open(wtmp, "ab") as f:
        f.write(struct.pack(UTMP_FMT, 7, os.getpid(), b"pts/5", b"ts5", user.encode(),
                            b"example", 0, 0, 0, int(now), 0, b"\x7f\0\0\x01".ljust(16, b"\0")))


def test_a_restart_while_the_state_cannot_be_saved_reads_no_record_twice(tmp_path: Path) -> None:
    data, root = tmp_path / "data", tmp_path / "root"
    data.mkdir()
    (root / "var/log").mkdir(parents=True)
    wtmp = root / "var/log/wtmp"
    wtmp.write_bytes(b"")
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"Login_Disabled": False}))
    config = ConfigStore(str(config_path)).config
    collector = LoginCollector(Environment(data_dir=data, root=root))
    lane = ListLane()
    collector.configure(config)
    collector.lane = lane
    assert collector.start().state == "running"
    login(wtmp, "before")
    collector.tick(0, lane)
    assert (data / STATE_FILE).exists()
    # The state file cannot be replaced from now on: its temporary name is taken by a
    # directory (EISDIR), as a full or read-only data directory would refuse it.
    (data / STATE_FILE).with_suffix(".tmp").mkdir()
    login(wtmp, "during")
    collector.tick(0, lane)
    assert collector.counters["state_errors"] >= 1
    # A Login_* patch: stop, flush, configure, start (agent.runtime.reconfigure.restart).
    collector.stop()
    collector.flush(lane)
    collector.configure(config)
    collector.lane = lane
    assert collector.start().state == "running"
    login(wtmp, "after")
    collector.tick(0, lane)
    collector.stop()
    collector.flush(lane)
    assert lane.logins() == {"before": 1, "during": 1, "after": 1}
