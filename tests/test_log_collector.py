"""LogCollector (agent.collectors.log): the agent's own warnings and errors as `log` events,
one entry per level, logger and message template, bounded, never logging through itself."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.collectors import Environment
from agent.collectors.log import MAX_ENTRIES, OVERFLOW_TEMPLATE, LogCollector, LogTable
from agent.config import CollectorState, Config
from agent.native.sink import EventSink


class Lane:
    def __init__(self) -> None:
        self.sink = EventSink()
        self.batches: list[bytes] = []

    def spill(self, batches: list[bytes]) -> None:
        self.batches.extend(batches)

    def events(self) -> list[dict[str, Any]]:
        self.batches.extend(self.sink.seal())
        return [e for b in self.batches for e in msgpack.unpackb(b, raw=False)]


def collector(tmp_path: Path) -> tuple[LogCollector, Lane]:
    c = LogCollector(Environment(data_dir=tmp_path))
    c.configure(Config.defaults())
    lane = Lane()
    c.lane = lane
    c.state = c.start()
    return c, lane


def test_a_storm_with_varying_arguments_is_one_entry(tmp_path: Path) -> None:
    c, lane = collector(tmp_path)
    try:
        log = logging.getLogger("agent.test.storm")
        for n in range(1000):
            log.warning("outbox: cannot write batch %d: %s", n, "No space left on device")
        log.error("uplink: connection refused by %s", "hub")
        logging.getLogger("agent.test.storm").info("not a warning: left out")
        c.collect(0, lane)
    finally:
        c.stop()
    events = lane.events()
    by_msg = {e["msg"]: e for e in events}
    storm = by_msg["outbox: cannot write batch %d: %s"]
    assert storm["hits"] == 1000 and storm["level"] == "WARNING"
    assert storm["logger"] == "agent.test.storm" and storm["t"] == "log"
    assert storm["first"] <= storm["last"] and storm["ts"] == storm["first"]
    assert by_msg["uplink: connection refused by %s"]["level"] == "ERROR"
    assert "not a warning: left out" not in by_msg
    assert c.stats()["records"] == 1001


def test_the_table_is_bounded_and_its_overflow_is_one_entry() -> None:
    table = LogTable()
    log = logging.getLogger("agent.test.bound")
    log.addHandler(table)
    log.propagate = False
    try:
        for n in range(MAX_ENTRIES + 44):
            log.warning(f"distinct message {n}")  # a message built by formatting: no template
    finally:
        log.removeHandler(table)
        log.propagate = True
    events = table.take()
    assert len(events) == MAX_ENTRIES + 1
    overflow = events[-1]
    assert overflow["msg"] == OVERFLOW_TEMPLATE and overflow["hits"] == 44
    assert table.overflow_total == 44 and table.take() == []


def test_the_handler_never_logs_through_itself() -> None:
    """A message object whose str() logs (a library warning from inside the handler) is
    not taken again; one whose str() raises is counted, never raised nor logged."""
    table = LogTable()
    log = logging.getLogger("agent.test.reentry")
    log.addHandler(table)
    log.propagate = False

    class Loud:
        def __str__(self) -> str:
            log.warning("from inside the handler")
            return "loud"

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    try:
        log.warning(Loud())
        log.warning(Broken())
    finally:
        log.removeHandler(table)
        log.propagate = True
    assert [e["msg"] for e in table.take()] == ["loud"]
    assert table.handler_errors == 1 and table.records == 2


def test_disabled_stops_listening_and_a_restart_listens_again(tmp_path: Path) -> None:
    c, lane = collector(tmp_path)
    log = logging.getLogger("agent.test.disabled")
    log.warning("before")
    c.stop()
    c.state = CollectorState.disabled()  # as the pipeline says it
    log.warning("while disabled")
    assert c.table not in logging.getLogger().handlers
    c.lane = lane
    c.state = c.start()
    try:
        log.warning("after")
        c.collect(0, lane)
    finally:
        c.stop()
    assert [e["msg"] for e in lane.events()] == ["before", "after"]


def test_warnings_before_the_first_start_are_kept(tmp_path: Path) -> None:
    """The agent's start logs (collectors unavailable) before LogCollector starts."""
    c = LogCollector(Environment(data_dir=tmp_path))
    logging.getLogger("agent.test.early").warning("FileSystem: unavailable: %s", "no inotify")
    c.configure(Config.defaults())
    lane = Lane()
    c.lane = lane
    c.state = c.start()
    c.collect(0, lane)
    c.stop()
    assert [e["msg"] for e in lane.events()] == ["FileSystem: unavailable: %s"]


@pytest.mark.live
@pytest.mark.root
def test_agent_warnings_arrive_as_log_events_following_frequency_and_disabled(
        tmp_path: Path) -> None:
    """In the agent: an invalid twin value's warning is a `log` event in the lane of
    LogCollector_MessageFrequency (Low, then High after a live patch), and none arrives
    after LogCollector_Disabled."""
    from test_runtime import agent, delivered

    from agent.config import Frequency

    template = "config: %s is invalid: %s"
    with agent(tmp_path, {"Process_Disabled": True, "LogCollector_Disabled": False}) as h:
        assert h.agent.collectors["LogCollector"].collector.state.state == "running"
        for _ in range(3):
            h.patch({"Process_CacheSize": "not a number"})
        h.patch({"LogCollector_MessageFrequency": "High"})
        h.patch({"Process_CacheSize": -1})
        h.patch({"LogCollector_Disabled": True})
        h.patch({"Process_CacheSize": "still not"})
        for prio in (Frequency.HIGH, Frequency.MEDIUM, Frequency.LOW):
            h.agent.close_lane(h.agent.lanes[prio])
        h.spin(0.1)
    logs = [(env["prio"], ev) for env in delivered(h.data) for ev in env["events"]
            if ev["t"] == "log" and ev["msg"] == template]
    by_prio = {prio: ev for prio, ev in logs}
    assert sorted(by_prio) == ["High", "Low"] and len(logs) == 2
    # The three invalid patches (and the frequency patch, which still carries the invalid
    # field) before the move to High: one entry.
    assert by_prio["Low"]["hits"] >= 3 and by_prio["Low"]["level"] == "WARNING"
    assert by_prio["High"]["logger"] == by_prio["Low"]["logger"]
