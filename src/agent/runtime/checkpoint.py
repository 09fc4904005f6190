"""Crash checkpoints: what a lane holds between two sends (its collectors' aggregated entries
and the lane sink's open batch) reaches the data directory at most Outbox_CheckpointSeconds
after it was collected, so that a kill -9 loses at most that window (docs/outbox.md,
"Checkpoints").

One file per lane, DIR/checkpoint/<prio>.ckpt, replaced whole (agent.durable), written only
when the lane changed since the last one. The entries are the core's own encoding
(Aggregator.snapshot, the sink's open batch); the frame around them is a small msgpack map
with a CRC.

Nothing is sent twice: before a lane hands batches to the outbox (PriorityLane.spill) the
lane's file is replaced by one that holds those batches as `pending`, with the outbox's next
sequence number `seq`, and the lane's state after them. The puts follow at once, and the
outbox numbers stored batches without gaps, so at the next start the outbox's next sequence
number says how many of the pending batches were stored: those are discarded (counted), the
others are stored then; the state is restored either way.
"""

from __future__ import annotations

import binascii
import logging
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgpack

from agent.clock import wall_ms
from agent.durable import fsync_dir, replace_file
from agent.envelope import EnvelopeError, event_count
from agent.native.aggregate import Aggregator
from agent.native.sink import EventSink, SinkOptions
from agent.outbox import Outbox
from agent.record import record

log = logging.getLogger("agent.checkpoint")

VERSION = 1
MAGIC = b"AMCKPT\x00\x01"
# MAGIC, the body's length and its CRC-32, both big-endian uint32.
_HEAD = struct.Struct(">8sII")
# A lane's file holds at most its pending batches, its open batch and its collectors' caches:
# a few MiB with the largest settings; anything beyond this is not a checkpoint.
MAX_FILE_BYTES = 256 << 20
CHECKPOINT_DIR = "checkpoint"
# A change is seen up to one housekeeping tick (1 s) after it happened, and the write (an
# fsync on a busy disk) and the turn it waits for take a moment: a lane's file is replaced
# this much before its oldest change is period old. WRITE_S was 0.5 s; a CI run on a loaded
# machine lost one tag 2 s old at a kill with a 2 s period, so the write now starts a whole
# second early (at the default 10 s period: 8 s after the change, not 8.5 s).
SEEN_LATE_S = 1.0
WRITE_S = 1.0


class CheckpointError(ValueError):
    """A checkpoint file that is torn, truncated, corrupted or not one."""


@record
class CheckpointCounters:
    """What the checkpoints did since the start (status.json, the Statistics event)."""

    writes: int = 0            # files replaced
    bytes: int = 0             # bytes written in them
    write_errors: int = 0      # a replace that failed (the previous file stays)
    last_ms: int = 0           # wall time of the last write
    restored_entries: int = 0  # aggregated entries read back at start
    restored_events: int = 0   # events of open batches read back at start
    stored_batches: int = 0    # pending batches the outbox did not have: stored at start
    discarded_batches: int = 0  # pending batches the outbox had already: not sent twice
    corrupt: int = 0           # files that were not a whole checkpoint: set aside


@record(frozen=True)
class LaneState:
    """One lane's checkpoint: the batches about to be stored (from outbox sequence number
    `seq` on), the lane sink's open batch, and each collector's aggregated entries."""

    lane: str
    seq: int
    pending: list[bytes]
    open_batch: bytes | None
    entries: dict[str, list[bytes]]


def _container_head(n: int, fix: int, code16: int) -> bytes:
    """msgpack's array (fix 0x90, 0xdc) or map (0x80, 0xde) header of n items."""
    if n < 16:
        return bytes((fix | n,))
    if n < 0x10000:
        return bytes((code16,)) + n.to_bytes(2, "big")
    return bytes((code16 + 1,)) + n.to_bytes(4, "big")


def _bin_head(n: int) -> bytes:
    if n < 0x100:
        return bytes((0xC4, n))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def checkpoint_parts(state: LaneState) -> list[bytes]:
    """The checkpoint file as parts, in order: the header, then the body (the msgpack map
    {v, lane, seq, pending, open, agg}, byte for byte what msgpack.packb writes) as small
    frames around the batches themselves, which are not copied (agent.durable writes the
    parts with writev)."""
    parts: list[bytes] = []
    frame = bytearray(b"\x86")

    def blob(batch: bytes) -> None:
        frame.extend(_bin_head(len(batch)))
        parts.extend((bytes(frame), batch))
        frame.clear()

    def blobs(batches: list[bytes]) -> None:
        frame.extend(_container_head(len(batches), 0x90, 0xDC))
        for batch in batches:
            blob(batch)

    pack = msgpack.Packer(use_bin_type=True).pack  # one buffer for the small values
    frame.extend(pack("v") + pack(VERSION) + pack("lane") + pack(state.lane) + pack("seq")
                 + pack(state.seq) + pack("pending"))
    blobs(state.pending)
    frame.extend(pack("open"))
    if state.open_batch is None:
        frame.append(0xC0)
    else:
        blob(state.open_batch)
    frame.extend(pack("agg") + _container_head(len(state.entries), 0x80, 0xDE))
    for name, batches in state.entries.items():
        frame.extend(pack(name))
        blobs(batches)
    parts.append(bytes(frame))
    crc = 0
    for part in parts:
        crc = binascii.crc32(part, crc)
    return [_HEAD.pack(MAGIC, sum(map(len, parts)), crc), *parts]


def encode_checkpoint(state: LaneState) -> bytes:
    """The checkpoint file's bytes (checkpoint_parts joined)."""
    return b"".join(checkpoint_parts(state))


def _bins(value: Any, what: str) -> list[bytes]:
    if not isinstance(value, list) or not all(isinstance(b, bytes) for b in value):
        raise CheckpointError(f"{what} is not a list of batches")
    return value


def decode_checkpoint(data: bytes) -> LaneState:
    """The checkpoint in data; CheckpointError when it is not a whole one."""
    if len(data) < _HEAD.size:
        raise CheckpointError(f"{len(data)} bytes: shorter than the header")
    magic, length, crc = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError("not a checkpoint (magic)")
    body = data[_HEAD.size:]
    if len(body) != length:
        raise CheckpointError(f"body of {len(body)} bytes, header says {length}")
    if binascii.crc32(body) != crc:
        raise CheckpointError("CRC mismatch")
    try:
        doc = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as err:
        raise CheckpointError(f"body: {err}") from err
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise CheckpointError("unknown version")
    lane, seq, open_batch, agg = doc.get("lane"), doc.get("seq"), doc.get("open"), doc.get("agg")
    if not isinstance(lane, str) or not isinstance(seq, int) or seq < 0:
        raise CheckpointError("lane or seq missing")
    if open_batch is not None and not isinstance(open_batch, bytes):
        raise CheckpointError("open batch is not bytes")
    if not isinstance(agg, dict) or not all(isinstance(k, str) for k in agg):
        raise CheckpointError("entries are not a map of collectors")
    return LaneState(lane, seq, _bins(doc.get("pending"), "pending"), open_batch,
                     {name: _bins(v, f"entries of {name}") for name, v in agg.items()})


class LaneView(Protocol):
    """What Checkpoints needs of a lane (agent.runtime.lanes.PriorityLane)."""

    @property
    def name(self) -> str: ...

    @property
    def sink(self) -> EventSink: ...

    @property
    def held(self) -> list[bytes]: ...

    def store(self, batches: list[bytes]) -> None: ...


class Checkpoints:
    """The lanes' checkpoint files under DIR/checkpoint. `aggregators(lane)` names the
    aggregators of the collectors that write into a lane now."""

    def __init__(self, data_dir: Path, outbox: Outbox,
                 aggregators: Callable[[str], Mapping[str, Aggregator | None]]) -> None:
        self.dir = data_dir / CHECKPOINT_DIR
        self.outbox = outbox
        self.aggregators = aggregators
        self.counters = CheckpointCounters()
        # Per lane: the change signature last written, and the monotonic time a change
        # was first seen since.
        self._written: dict[str, tuple[int, ...]] = {}
        self._dirty_since: dict[str, float] = {}
        self._scratch: EventSink | None = None
        self._failing = False
        self._passthrough = Aggregator("none")

    def path(self, lane: str) -> Path:
        return self.dir / f"{lane.lower()}.ckpt"

    # -- writing ---------------------------------------------------------------------------

    def _signature(self, lane: LaneView, aggs: Mapping[str, Aggregator | None]) -> tuple[int, ...]:
        """Counters that move whenever the lane's state changes (what came in, what left)."""
        # Read every second per lane: only these counters, not the whole stats structs.
        sig = lane.sink.counters("events", "batches")
        for name in sorted(aggs):
            agg = aggs[name]
            if agg is not None:
                sig += agg.counters("events_in", "restored", "emitted", "entries")
        return sig

    def _state(self, lane: LaneView, pending: list[bytes]) -> tuple[LaneState, tuple[int, ...]]:
        aggs = self.aggregators(lane.name)
        if self._scratch is None or self._scratch.batch_bytes != lane.sink.batch_bytes:
            self._scratch = EventSink(SinkOptions(batch_bytes=lane.sink.batch_bytes,
                                                  max_batches=4))
        entries = {name: agg.snapshot(self._scratch) for name, agg in aggs.items()
                   if agg is not None}
        state = LaneState(lane.name, self.outbox.next_seq, pending, lane.sink.open_batch(),
                          {name: batches for name, batches in entries.items() if batches})
        return state, self._signature(lane, aggs)

    def write(self, lane: LaneView, pending: list[bytes] | None = None) -> bool:
        """Replace the lane's file with its state now (and `pending`, the batches about to be
        stored). The batches the lane holds sealed and not yet stored (PriorityLane.held) are
        pending too, after those. False when the write failed: counted, and the previous file
        stays, unless there were batches pending (then it goes: see below)."""
        pending = [*(pending or []), *lane.held]
        state, sig = self._state(lane, pending)
        data = checkpoint_parts(state)
        path = self.path(lane.name)
        try:
            self.dir.mkdir(exist_ok=True)
            replace_file(path, data)
        except OSError as err:
            self.counters.write_errors += 1
            if not self._failing:  # once per spell of failures, not once a second
                log.error("checkpoint: writing %s failed: %s", path, err)
            self._failing = True
            if pending:
                # The batches are stored anyway; the previous file would bring back what
                # they hold after a crash: better lose the window than send it twice.
                try:
                    path.unlink(missing_ok=True)
                except OSError as unlink_err:
                    log.error("checkpoint: cannot remove the stale %s either: %s", path,
                              unlink_err)
            return False
        if self._failing:
            log.warning("checkpoint: writing %s works again", path)
            self._failing = False
        self.counters.writes += 1
        self.counters.bytes += sum(map(len, data))
        self.counters.last_ms = wall_ms()
        self._written[lane.name] = sig
        self._dirty_since.pop(lane.name, None)
        return True

    def due(self, lane: LaneView, now: float, period_s: float) -> None:
        """Housekeeping (once a second): write the lane's file when it changed and the oldest
        unwritten change is about to be period_s old."""
        aggs = self.aggregators(lane.name)
        sig = self._signature(lane, aggs)
        if lane.name not in self._written and lane.sink.open_batch() is None and not any(
                agg is not None and agg.counters("entries")[0] for agg in aggs.values()):
            self._written[lane.name] = sig  # holds nothing: as good as written
        if sig == self._written.get(lane.name):
            self._dirty_since.pop(lane.name, None)
            return
        since = self._dirty_since.setdefault(lane.name, now)
        if now - since >= period_s - SEEN_LATE_S - WRITE_S:
            self.write(lane)

    def remove_all(self) -> None:
        """After a clean stop every lane is in the outbox: no checkpoint stays to restore."""
        removed = False
        for path in self.dir.glob("*.ckpt") if self.dir.is_dir() else ():
            try:
                path.unlink()
                removed = True
            except OSError as err:
                log.error("checkpoint: cannot remove %s: %s", path, err)
        if removed:
            try:
                fsync_dir(self.dir)
            except OSError as err:
                log.error("checkpoint: cannot sync %s: %s", self.dir, err)
        self._written.clear()
        self._dirty_since.clear()

    # -- restoring -------------------------------------------------------------------------

    def _set_aside(self, path: Path, reason: str) -> None:
        self.counters.corrupt += 1
        # What the file held is unknown: the next envelope says a checkpoint was lost.
        self.outbox.drops.add("checkpoint_lost")
        log.error("checkpoint: %s is not a whole checkpoint (%s); set aside", path, reason)
        try:
            os.replace(path, path.with_suffix(".corrupt"))
        except OSError as err:
            log.error("checkpoint: cannot set %s aside: %s", path, err)

    def load(self, lane: str) -> LaneState | None:
        path = self.path(lane)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                self._set_aside(path, f"larger than {MAX_FILE_BYTES} bytes")
                return None
            state = decode_checkpoint(path.read_bytes())
        except FileNotFoundError:
            return None
        except OSError as err:
            self._set_aside(path, str(err))
            return None
        except CheckpointError as err:
            self._set_aside(path, str(err))
            return None
        if state.lane != lane:
            self._set_aside(path, f"holds lane {state.lane!r}")
            return None
        return state

    def restore(self, lanes: Mapping[str, LaneView],
                running: Mapping[str, tuple[Aggregator, str]]) -> None:
        """Start: the lanes' checkpoints back into the same aggregation (`lanes` by name;
        `running`: the aggregator and lane name of each running collector).

        1. The pending batches of each file that the outbox has not stored are stored now:
           that finishes the put the file was written ahead of, at the sequence numbers it
           names. Those it has stored are discarded.
        2. Each open batch goes back into its lane's sink; each collector's entries into its
           aggregator, or, for a collector not running now, into the lane's sink as they
           would have been sent.
        3. Each lane's file is written again with what it holds now, ahead of the batches
           that steps 2 sealed (a full sink), which are then stored."""
        states = {name: state for name in lanes if (state := self.load(name)) is not None}
        for name, state in states.items():
            stored = max(0, min(len(state.pending), self.outbox.next_seq - state.seq))
            self.counters.discarded_batches += stored
            unstored = state.pending[stored:]
            if unstored:
                log.warning("checkpoint: %s: %d batch(es) were not stored before the stop; "
                            "stored now", name, len(unstored))
                self.counters.stored_batches += len(unstored)
                lanes[name].store(unstored)
            if stored:
                log.info("checkpoint: %s: %d pending batch(es) were stored already; "
                         "discarded", name, stored)
        sealed: dict[str, list[bytes]] = {name: [] for name in lanes}
        for name, state in states.items():
            lane = lanes[name]
            if state.open_batch is not None:
                sealed[name] += self._passthrough.add(state.open_batch, lane.sink)
                self.counters.restored_events += _events_of(state.open_batch)
            for collector, batches in state.entries.items():
                agg, into = running.get(collector, (self._passthrough, name))
                for batch in batches:
                    if agg is self._passthrough:
                        sealed[into] += agg.add(batch, lanes[into].sink)
                    else:
                        sealed[into] += agg.restore(batch, lanes[into].sink)
                    self.counters.restored_entries += _events_of(batch)
            log.info("checkpoint: %s restored (%d pending, open batch %s, %d collector(s))",
                     name, len(state.pending), "yes" if state.open_batch else "no",
                     len(state.entries))
        for name, lane in lanes.items():
            if name in states or sealed[name]:
                self.write(lane, sealed[name])
                lane.store(sealed[name])

    def stats(self) -> dict[str, int]:
        return dict(vars(self.counters))


def _events_of(batch: bytes) -> int:
    try:
        return event_count(batch)
    except EnvelopeError:
        return 0  # the core counted it as malformed
