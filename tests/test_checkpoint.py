"""Crash checkpoints (agent.runtime.checkpoint) without a kernel: the core's snapshot and
restore of aggregated entries, the file's frame, and the exactly-once rule for the batches a
lane was about to store when it died. tests/test_crash_checkpoint.py kills the real agent."""

from __future__ import annotations

import binascii
import json
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent import __version__
from agent.collectors import Environment
from agent.collectors.agent_state import HeartbeatCollector, StatisticsCollector
from agent.config import ConfigStore, Frequency
from agent.envelope import Identity, decode_envelope
from agent.native.aggregate import Aggregator
from agent.native.sink import EventSink, SinkOptions
from agent.outbox import Outbox
from agent.pipeline import STATUS_EVERY_S, Agent
from agent.runtime.checkpoint import (
    CheckpointError,
    Checkpoints,
    LaneState,
    checkpoint_parts,
    decode_checkpoint,
    encode_checkpoint,
)
from agent.runtime.lanes import LANE_MAX_BATCHES, PriorityLane
from agent.uplink.files import LocalDelivery

IDENT = Identity("agent-1", "0.1.0", "dev", "mod")
BATCH_BYTES = 16384


def exec_event(tag: str, ts: int, uid: int = 0) -> dict[str, Any]:
    return {"t": "exec", "src": "audit", "uid": uid, "exe": "/bin/echo",
            "argv": ["/bin/echo", tag], "ts": ts}


def conn_event(port: int, ts: int, rx: int) -> dict[str, Any]:
    return {"t": "conn", "src": "sock", "dir": "out", "proto": "tcp", "laddr": "10.0.0.1",
            "lport": 40000 + ts, "raddr": "10.0.0.2", "rport": port, "rx": rx, "ts": ts}


def sink() -> EventSink:
    return EventSink(SinkOptions(batch_bytes=BATCH_BYTES, max_batches=4))


def events_of(batches: list[bytes]) -> list[dict[str, Any]]:
    return [e for b in batches for e in msgpack.unpackb(b)]


# ---- the core: snapshot and restore ---------------------------------------------------------


def test_snapshot_keeps_the_entries_and_restore_adds_hits_up() -> None:
    agg = Aggregator("process", accept=("exec",))
    out = sink()
    agg.add(msgpack.packb([exec_event("a", 10), exec_event("a", 30), exec_event("b", 20)]), out)
    snap = agg.snapshot(sink())
    assert [(e["argv"][1], e["hits"], e["first"], e["last"]) for e in events_of(snap)] == [
        ("a", 2, 10, 30), ("b", 1, 20, 20)]
    stats = agg.stats()
    assert stats.entries == 2 and stats.emitted == 0  # a snapshot takes nothing out
    # A new run: events seen since the start, then the checkpoint restored into the same cache.
    again = Aggregator("process", accept=("exec",))
    again.add(msgpack.packb([exec_event("a", 5), exec_event("c", 40)]), out)
    for batch in snap:
        assert again.restore(batch, out) == []
    assert again.stats().restored == 2 and again.stats().events_in == 2
    flushed = {e["argv"][1]: (e["hits"], e["first"], e["last"])
               for e in events_of(again.flush(out) + out.seal())}
    assert flushed == {"a": (3, 5, 30), "b": (1, 20, 20), "c": (1, 40, 40)}


def test_restore_sums_network_byte_counters() -> None:
    agg = Aggregator("network", accept=("conn",))
    out = sink()
    agg.add(msgpack.packb([conn_event(443, 1, 100), conn_event(443, 2, 50)]), out)
    snap = agg.snapshot(sink())
    again = Aggregator("network", accept=("conn",))
    again.add(msgpack.packb([conn_event(443, 3, 7)]), out)
    again.restore(snap[0], out)
    [entry] = events_of(again.flush(out) + out.seal())
    assert (entry["hits"], entry["rx"], entry["first"], entry["last"]) == (3, 157, 1, 3)


@pytest.mark.parametrize("bad", [
    {"hits": 0, "first": 1, "last": 1},       # no hit
    {"first": 1, "last": 1},                  # hits missing
    {"hits": 2, "first": 5, "last": 1},       # first after last
    {"hits": 2, "first": 5},                  # last missing
])
def test_a_malformed_entry_is_counted_and_its_batch_skipped(bad: dict[str, Any]) -> None:
    agg = Aggregator("process", accept=("exec",))
    out = sink()
    good = {**exec_event("ok", 1), "hits": 1, "first": 1, "last": 1}
    agg.restore(msgpack.packb([good, {**exec_event("x", 1), **bad}, good]), out)
    stats = agg.stats()
    assert stats.malformed == 1 and stats.restored == 1 and stats.entries == 1


def test_restore_into_a_smaller_cache_evicts_into_the_sink() -> None:
    agg = Aggregator("process", cache_size=8, accept=("exec",))
    out = sink()
    agg.add(msgpack.packb([exec_event(f"t{i}", i) for i in range(8)]), out)
    snap = agg.snapshot(sink())
    small = Aggregator("process", cache_size=2, accept=("exec",))
    small.restore(snap[0], out)
    batches = small.flush(out) + out.seal()
    assert sorted(e["argv"][1] for e in events_of(batches)) == [f"t{i}" for i in range(8)]
    assert small.stats().evicted == 6


def test_the_open_batch_is_copied_and_stays_open() -> None:
    s = sink()
    assert s.open_batch() is None
    agg = Aggregator("none")
    agg.add(msgpack.packb([{"t": "x", "n": 1}, {"t": "x", "n": 2}]), s)
    copy = s.open_batch()
    assert copy is not None and msgpack.unpackb(copy) == [{"t": "x", "n": 1}, {"t": "x", "n": 2}]
    agg.add(msgpack.packb([{"t": "x", "n": 3}]), s)
    assert [e["n"] for e in events_of(s.seal())] == [1, 2, 3]


# ---- the file ----------------------------------------------------------------------------


def test_the_file_round_trips_and_any_damage_is_refused() -> None:
    state = LaneState("High", 7, [b"\x91\x01"], b"\x90", {"Process": [b"\x91\x02"]})
    data = encode_checkpoint(state)
    assert decode_checkpoint(data) == state
    for cut in (0, 5, len(data) // 2, len(data) - 1):
        with pytest.raises(CheckpointError):
            decode_checkpoint(data[:cut])
    for pos in range(0, len(data), max(1, len(data) // 13)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x40
        with pytest.raises(CheckpointError):
            decode_checkpoint(bytes(flipped))


def _packb_layout(state: LaneState) -> bytes:
    """The file as it was first written: msgpack.packb of the whole map, framed."""
    body = msgpack.packb({"v": 1, "lane": state.lane, "seq": state.seq, "pending": state.pending,
                          "open": state.open_batch, "agg": state.entries}, use_bin_type=True)
    return b"AMCKPT\x00\x01" + struct.pack(">II", len(body), binascii.crc32(body)) + body


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
@pytest.mark.parametrize("count", [0, 1, 15, 16])
def test_the_parts_are_the_packed_map_at_every_header_size(size: int, count: int) -> None:
    """checkpoint_parts frames the batches itself (bin 8/16/32, fix/16-bit arrays and maps,
    nil): byte for byte what msgpack.packb writes, so files written before read back."""
    batches = [bytes([n % 251]) * size for n in range(count)]
    for open_batch in (None, b"\x91" + b"\x00" * size):
        entries = {f"C{n}": batches[:n] for n in range(1, count + 1)}
        state = LaneState("Medium", 2**40 + size, batches, open_batch, entries)
        parts = checkpoint_parts(state)
        assert b"".join(parts) == encode_checkpoint(state) == _packb_layout(state)
        assert decode_checkpoint(encode_checkpoint(state)) == state
        # The batches are the caller's own objects, not copies.
        assert all(any(part is batch for part in parts) for batch in batches if batch)


# ---- checkpoints of a lane, across a "crash" -------------------------------------------------


class Run:
    """One run of a lane: its outbox, its lane, the Process collector's aggregator, and the
    checkpoints, on data_dir."""

    def __init__(self, data_dir: Path, cache_size: int = 256) -> None:
        self.outbox = Outbox(data_dir, 16 << 20, 3600)
        self.lane = PriorityLane(Frequency.HIGH, self.outbox, IDENT, BATCH_BYTES, 60.0)
        self.lane.collectors.append("Process")
        self.agg = Aggregator("process", cache_size=cache_size, accept=("exec",))
        self.checkpoints = Checkpoints(data_dir, self.outbox, lambda _lane: {"Process": self.agg})
        self.lane.write_ahead = self.checkpoints.write

    def add(self, *events: dict[str, Any]) -> None:
        self.lane.spill(self.agg.add(msgpack.packb(list(events)), self.lane.sink))

    def restore(self) -> None:
        self.checkpoints.restore({"High": self.lane}, {"Process": (self.agg, "High")})

    def close_interval(self) -> None:
        self.lane.spill(self.agg.flush(self.lane.sink))
        self.lane.close_interval()

    def crash(self) -> None:
        """The lane and the aggregator are dropped unflushed; the outbox is closed (its own
        recovery after a kill is test_outbox's subject; it numbers batches the same way)."""
        self.outbox.close()


def delivered(outbox: Outbox) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for info in outbox.pending():
        batch = outbox.read(info.id)
        assert batch is not None
        events += decode_envelope(batch.payload)["events"]
    return events


def test_a_restart_restores_the_entries_and_hits_keep_adding_up(tmp_path: Path) -> None:
    first = Run(tmp_path)
    first.add(exec_event("a", 1), exec_event("a", 2), exec_event("b", 3))
    first.checkpoints.write(first.lane)
    first.add(exec_event("lost", 4))  # after the last checkpoint: the window a crash loses
    first.crash()
    second = Run(tmp_path)
    second.restore()
    assert second.checkpoints.counters.restored_entries == 2
    second.add(exec_event("a", 5))
    second.close_interval()
    hits = {e["argv"][1]: (e["hits"], e["first"], e["last"]) for e in delivered(second.outbox)}
    assert hits == {"a": (3, 1, 5), "b": (1, 3, 3)}


def test_pending_batches_are_stored_once_whether_the_crash_came_before_or_after_the_put(
        tmp_path: Path) -> None:
    # Before: the write-ahead is on disk, the put never happened.
    before = Run(tmp_path / "before")
    before.add(exec_event("a", 1))
    flushed = before.agg.flush(before.lane.sink) + before.lane.sink.seal()
    before.checkpoints.write(before.lane, flushed)
    before.crash()
    again = Run(tmp_path / "before")
    again.restore()
    assert again.checkpoints.counters.stored_batches == 1
    assert [e["argv"][1] for e in delivered(again.outbox)] == ["a"]
    # After: the write-ahead and the put both done, the next checkpoint not written.
    after = Run(tmp_path / "after")
    after.add(exec_event("a", 1))
    after.close_interval()
    after.crash()
    again = Run(tmp_path / "after")
    again.restore()
    assert again.checkpoints.counters.discarded_batches == 1
    assert again.checkpoints.counters.stored_batches == 0
    assert [e["argv"][1] for e in delivered(again.outbox)] == ["a"]
    # And a third start finds a checkpoint without pending batches.
    again.crash()
    third = Run(tmp_path / "after")
    third.restore()
    assert third.checkpoints.counters.discarded_batches == 0
    assert [e["argv"][1] for e in delivered(third.outbox)] == ["a"]


def test_full_batches_spilled_mid_interval_are_not_sent_twice(tmp_path: Path) -> None:
    run = Run(tmp_path)
    tags = [f"tag-{i:05d}-" + "x" * 200 for i in range(400)]  # several full batches
    for i in range(0, len(tags), 20):
        run.add(*(exec_event(t, i) for t in tags[i:i + 20]))
        run.checkpoints.write(run.lane)
    run.crash()
    again = Run(tmp_path)
    again.restore()
    again.close_interval()
    seen = [e["argv"][1] for e in delivered(again.outbox)]
    assert sorted(seen) == sorted(tags)  # each exactly once


def test_full_batches_are_held_and_written_ahead_together(tmp_path: Path) -> None:
    """With checkpoints on, the batches a lane seals wait (PriorityLane.held) for one write-ahead
    a second (the loop's spill_held) or until LANE_MAX_BATCHES are held; every checkpoint
    written meanwhile names them as pending, so a crash while they are held sends each event
    once."""
    run = Run(tmp_path, cache_size=4)
    tags = [f"held-{i:04d}-" + "z" * 1200 for i in range(80)]
    run.add(*(exec_event(t, i) for i, t in enumerate(tags[:40])))
    held = run.lane.held
    assert 0 < len(held) < LANE_MAX_BATCHES, "some full batches, fewer than the bound"
    assert run.outbox.pending() == [] and run.checkpoints.counters.writes == 0
    run.checkpoints.write(run.lane)  # the loop's checkpoint of the second: they are pending
    run.crash()
    again = Run(tmp_path, cache_size=4)
    again.restore()
    assert again.checkpoints.counters.stored_batches == len(held)
    writes = again.checkpoints.counters.writes
    again.add(*(exec_event(t, i) for i, t in enumerate(tags[40:])))
    while again.lane.held:
        before = len(again.outbox.pending())
        again.lane.spill_held()  # one write-ahead for all that are held, then the puts
        assert len(again.outbox.pending()) > before
    assert again.checkpoints.counters.writes - writes <= len(tags) // LANE_MAX_BATCHES
    again.close_interval()
    seen = [e["argv"][1] for e in delivered(again.outbox)]
    assert sorted(seen) == sorted(tags)  # each exactly once


def test_a_lane_holds_no_more_than_its_bound(tmp_path: Path) -> None:
    run = Run(tmp_path, cache_size=4)
    run.add(*(exec_event(f"bound-{i:04d}-" + "w" * 400, i) for i in range(400)))
    assert len(run.lane.held) < LANE_MAX_BATCHES
    assert run.outbox.pending() != []  # the bound was reached: written ahead and stored
    run.lane.write_ahead = None  # checkpoints off: nothing is held
    run.lane.spill_held()
    run.add(*(exec_event(f"off-{i:04d}-" + "w" * 400, i) for i in range(100)))
    assert run.lane.held == []
    run.crash()


def test_batches_a_restore_seals_are_written_ahead_too(tmp_path: Path) -> None:
    """A restart with a smaller cache: the restored entries evict into the lane and fill
    batches, which are stored at once; a crash right after must not bring them back."""
    run = Run(tmp_path)
    tags = [f"tag-{i:04d}-" + "y" * 100 for i in range(250)]
    run.add(*(exec_event(t, i) for i, t in enumerate(tags)))
    run.checkpoints.write(run.lane)
    run.crash()
    small = Run(tmp_path, cache_size=8)
    small.restore()
    assert small.outbox.pending() != []  # full batches were stored during the restore
    small.crash()
    again = Run(tmp_path, cache_size=8)
    again.restore()
    again.close_interval()
    seen = [e["argv"][1] for e in delivered(again.outbox)]
    assert sorted(seen) == sorted(tags)


class Killed(BaseException):
    """The process dies here."""


def test_a_crash_between_a_restore_s_write_ahead_and_its_puts_loses_nothing(
        tmp_path: Path) -> None:
    run = Run(tmp_path)
    tags = [f"tag-{i:04d}-" + "y" * 100 for i in range(250)]
    run.add(*(exec_event(t, i) for i, t in enumerate(tags)))
    run.checkpoints.write(run.lane)
    run.crash()
    small = Run(tmp_path, cache_size=8)

    def die(batches: list[bytes]) -> None:
        raise Killed

    small.lane.store = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        small.restore()
    assert small.outbox.pending() == []
    small.crash()
    again = Run(tmp_path, cache_size=8)
    again.restore()
    assert again.checkpoints.counters.stored_batches > 0
    again.close_interval()
    seen = [e["argv"][1] for e in delivered(again.outbox)]
    assert sorted(seen) == sorted(tags)


def test_a_corrupt_checkpoint_is_counted_and_set_aside(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.add(exec_event("a", 1))
    run.checkpoints.write(run.lane)
    path = run.checkpoints.path("High")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    run.crash()
    again = Run(tmp_path)
    again.restore()
    assert again.checkpoints.counters.corrupt == 1
    assert again.outbox.drops.peek() == {"checkpoint_lost": 1}
    assert not path.exists() and path.with_suffix(".corrupt").exists()
    assert again.agg.stats().entries == 0


def test_an_unchanged_lane_is_not_written_again(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.checkpoints.due(run.lane, 0.0, 2.0)
    assert run.checkpoints.counters.writes == 0  # nothing held, nothing written... yet
    run.add(exec_event("a", 1))
    run.checkpoints.due(run.lane, 10.0, 3.0)  # a change seen: not yet period - 1 s old
    assert run.checkpoints.counters.writes == 0
    run.checkpoints.due(run.lane, 12.0, 3.0)
    assert run.checkpoints.counters.writes == 1
    for t in range(13, 100):
        run.checkpoints.due(run.lane, float(t), 3.0)
    assert run.checkpoints.counters.writes == 1
    run.add(exec_event("a", 2))  # a hit of a held entry is a change too
    run.checkpoints.due(run.lane, 100.0, 1.0)
    assert run.checkpoints.counters.writes == 2


def test_a_failed_write_ahead_removes_the_stale_file_rather_than_send_twice(
        tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.add(exec_event("a", 1))
    run.checkpoints.write(run.lane)
    path = run.checkpoints.path("High")
    assert path.exists()
    # The next write fails (its temporary name is taken by a directory: EISDIR, as root too).
    path.with_name(path.name + ".tmp").mkdir()
    run.close_interval()  # the write-ahead fails; the batch is stored all the same
    assert run.checkpoints.counters.write_errors == 1
    assert not path.exists()
    run.crash()
    again = Run(tmp_path)
    again.restore()
    assert [e["argv"][1] for e in delivered(again.outbox)] == ["a"]


# ---- in the agent's loop ----------------------------------------------------------------------


def own_agent(data_dir: Path, config: dict[str, Any]) -> Agent:
    """An Agent with the agent's own collectors only (no kernel source), as
    tests/test_runtime_parts.py makes it."""
    path = data_dir.parent / "config.json"
    path.write_text(json.dumps(config))
    store = ConfigStore(str(path))
    env = Environment(data_dir=data_dir)
    data_dir.mkdir(exist_ok=True)
    outbox = Outbox(data_dir, 16 << 20, 3600)
    return Agent(store, env, outbox, LocalDelivery(data_dir / "delivered"),
                 Identity("test-agent", __version__, "dev1", "mod"),
                 [HeartbeatCollector(env), StatisticsCollector(env)])


def spin(agent: Agent, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        agent.turn(timeout=0.05)


def test_the_loop_checkpoints_live_settings_and_restores_after_a_crash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    agent = own_agent(data, {"Outbox_CheckpointSeconds": 1})
    agent.start()  # the Heartbeat's first event waits in the Low lane (24 h)
    spin(agent, 1.5)
    low = agent.checkpoints.path("Low")
    assert low.exists() and agent.checkpoints.counters.writes == 1
    spin(agent, STATUS_EVERY_S + 0.1)  # the next status.json
    status = json.loads((data / "status.json").read_text())
    assert status["checkpoint"]["writes"] == 1  # nothing changed since: no rewrite
    assert agent.statistics()["checkpoint"]["writes"] == 1
    # Off, live: the files go, spills write nothing ahead.
    agent.apply(agent.store.apply_patch({"Outbox_CheckpointSeconds": 0}))
    assert not low.exists()
    assert all(lane.write_ahead is None for lane in agent.lanes.values())
    agent.apply(agent.store.apply_patch({"Outbox_CheckpointSeconds": 1}))
    spin(agent, 1.5)
    assert low.exists()
    # A crash: no shutdown, nothing flushed; only the outbox's lock goes with the process.
    agent.outbox.close()
    second = own_agent(data, {"Outbox_CheckpointSeconds": 1})
    second.start()
    assert second.checkpoints.counters.restored_events >= 1
    second.shutdown()
    assert not second.checkpoints.path("Low").exists()  # a clean stop leaves none
    beats = [e for p in sorted((data / "delivered").glob("*.msgpack"))
             for e in decode_envelope(p.read_bytes())["events"] if e["t"] == "heartbeat"]
    assert len(beats) == 2  # the first run's, restored, and the second's
