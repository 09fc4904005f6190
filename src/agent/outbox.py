"""The outbox: a durable, bounded, priority-aware spool of batches between the pipeline and the
uplink. docs/outbox.md describes the file format, recovery, eviction and counters.

One directory DIR/outbox holds one file per batch, `<prio>-<seq:020d>.batch`: a fixed header
(magic, format, priority, sequence number, creation time, event count, lengths, CRC32), the
drops the batch's envelope reported, and the payload (the envelope bytes). A file is written
in DIR/outbox/tmp, fsynced and renamed into place, and the directory is fsynced: a batch file
either exists whole or not at all. A batch is removed only by `confirm` (the uplink delivered
it), by eviction when the outbox is full, or by expiry; each removal is first logged in the
state file (DIR/outbox/state, two preallocated slots written in turn: next sequence number,
run number, counters, drop ledger, the files about to be removed), so that a crash at any
moment leaves counts that add up.

The outbox owns the sequence numbers: `put` hands the next one to `seal`, which builds the
envelope around it, and the number is used up only when the batch file is in place. The next
number is recomputed at open from the state file and the batch files, so a number is never
used twice and never skipped, even after SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Union

import msgpack

from agent.envelope import PRIORITIES, DropLedger, Stamp

log = logging.getLogger(__name__)

BATCH_MAGIC = b"AMOB"
STATE_MAGIC = b"AMOS"
FORMAT = 1
# magic, format, priority rank, drops length, seq, created ms, events, payload length, CRC32 of
# everything before the CRC field plus the drops and the payload.
_HEADER = struct.Struct("<4sBBHQQIII")
HEADER_BYTES = _HEADER.size
# The state file is two slots of STATE_SLOT bytes, allocated once and written in turn in
# place, so that logging a removal never needs a free block (a full disk must not stop
# confirm) and a torn write leaves the other slot whole. Slot: magic, format, 3 bytes zero,
# generation, body length, CRC32 of the header before the CRC plus the body (a msgpack map).
STATE_HEADER = struct.Struct("<4sB3xQII")
STATE_SLOT = 8 * 1024
# Removals are logged in chunks of at most this many names, to fit a slot.
MAX_DOOMED = 128
DEFAULT_KEEP_CORRUPT = 8

_NAME = re.compile(r"^(high|medium|low)-(\d{20})\.batch$")
_RANK = {p: i for i, p in enumerate(PRIORITIES)}
_PRIO_OF_NAME = {p.lower(): p for p in PRIORITIES}

Seal = Callable[[Stamp], bytes]
PathLike = Union[str, "os.PathLike[str]"]


class OutboxError(Exception):
    """The outbox cannot be used (another process holds it, or its directory is unusable)."""


class OutboxBusy(OutboxError):
    """Another process has the outbox open."""


class OutboxStateError(OutboxError):
    """The state file could not be written, so a removal was not done (the batches stay)."""


@dataclass(frozen=True)
class BatchInfo:
    """One stored batch. `id` is its file name; `size` its bytes on disk (the unit of
    max_bytes)."""

    id: str
    prio: str
    seq: int
    created_ms: int
    events: int
    size: int


@dataclass(frozen=True)
class Batch:
    info: BatchInfo
    payload: bytes


@dataclass(frozen=True)
class Depth:
    count: int
    bytes: int


@dataclass(frozen=True)
class OutboxCounters:
    """Batches, counted since the outbox was created (persisted across restarts).

    written: stored (put succeeded); confirmed: removed after delivery; evicted_full: stored
    batches removed to make room; rejected_full: new batches not stored because only higher
    priority batches filled the outbox; refused: new batches larger than max_bytes on their
    own; write_errors: puts that failed on a file system error (ENOSPC, EDQUOT, EIO); expired:
    stored batches older than the message timeout; corrupt: files set aside in corrupt/;
    half_written: unfinished writes found at open; state_lost: state files found corrupt;
    state_errors: state writes that failed (retried at the next change)."""

    written: int = 0
    confirmed: int = 0
    evicted_full: int = 0
    rejected_full: int = 0
    refused: int = 0
    write_errors: int = 0
    expired: int = 0
    corrupt: int = 0
    half_written: int = 0
    state_lost: int = 0
    state_errors: int = 0


_COUNTER_NAMES = tuple(f.name for f in fields(OutboxCounters))
# The drop reason under which the events of a batch that was never stored are reported.
_NOT_STORED_REASON = {
    "refused": "refused_events",
    "rejected_full": "outbox_full_events",
    "write_errors": "write_error_events",
}


@dataclass
class _Entry:
    info: BatchInfo
    drops: dict[str, int]  # what the batch's envelope reported: reported again if it is lost


def batch_name(prio: str, seq: int) -> str:
    return f"{prio.lower()}-{seq:020d}.batch"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pack_drops(drops: Mapping[str, int]) -> bytes:
    return bytes(msgpack.packb(dict(drops), use_bin_type=True))


def encode_batch_file(prio: str, seq: int, created_ms: int, events: int,
                      drops: Mapping[str, int], payload: bytes) -> bytes:
    """The bytes of one batch file."""
    blob = _pack_drops(drops)
    if len(blob) > 0xFFFF:
        raise ValueError("the drops map of a batch is over 64 KiB")
    head = _HEADER.pack(BATCH_MAGIC, FORMAT, _RANK[prio], len(blob), seq, created_ms, events,
                        len(payload), 0)[:-4]
    crc = zlib.crc32(payload, zlib.crc32(blob, zlib.crc32(head)))
    return head + struct.pack("<I", crc) + blob + payload


def decode_batch_file(data: bytes) -> tuple[str, int, int, int, dict[str, int], bytes]:
    """(prio, seq, created_ms, events, drops, payload) of a batch file; ValueError when the
    header, a length or the checksum is wrong."""
    if len(data) < HEADER_BYTES:
        raise ValueError(f"{len(data)} bytes: shorter than the header")
    magic, fmt, rank, blob_len, seq, created, events, payload_len, crc = _HEADER.unpack_from(data)
    if magic != BATCH_MAGIC:
        raise ValueError(f"magic {magic!r}")
    if fmt != FORMAT:
        raise ValueError(f"format {fmt}")
    if rank >= len(PRIORITIES):
        raise ValueError(f"priority rank {rank}")
    if HEADER_BYTES + blob_len + payload_len != len(data):
        raise ValueError(
            f"lengths {blob_len}+{payload_len} do not match {len(data) - HEADER_BYTES} bytes"
        )
    view = memoryview(data)
    blob = view[HEADER_BYTES : HEADER_BYTES + blob_len]
    payload = view[HEADER_BYTES + blob_len :]
    if zlib.crc32(payload, zlib.crc32(blob, zlib.crc32(view[: HEADER_BYTES - 4]))) != crc:
        raise ValueError("checksum mismatch")
    drops = msgpack.unpackb(blob, raw=False)
    if not isinstance(drops, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in drops.items()
    ):
        raise ValueError("the drops map is malformed")
    return PRIORITIES[rank], seq, created, events, drops, bytes(payload)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(tmp: Path, final: Path, data: bytes) -> None:
    """Write data to tmp, fsync, rename over final, fsync final's directory. On failure the
    tmp file is removed and the error raised; final is untouched."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(final.parent)


class Outbox:
    """Outbox(path, max_bytes, message_timeout_s): batches under `path`/outbox.

    put(prio, seal, events) stores a batch; pending() lists batches in send order (High
    first, then by sequence number); next_batch() / read(id) give their payloads; confirm(id)
    removes a delivered batch; expire(now) drops batches older than the message timeout.
    Every time argument is milliseconds since the epoch and defaults to the clock.
    `drops` is the DropLedger whose counts the next stored batch's envelope reports.
    """

    def __init__(
        self,
        path: PathLike,
        max_bytes: int,
        message_timeout_s: float,
        *,
        keep_corrupt: int = DEFAULT_KEEP_CORRUPT,
        now: int | None = None,
    ) -> None:
        if max_bytes <= HEADER_BYTES:
            raise ValueError(f"max_bytes={max_bytes} holds no batch")
        if message_timeout_s <= 0:
            raise ValueError(f"message_timeout_s={message_timeout_s} must be positive")
        if keep_corrupt < 0:
            raise ValueError(f"keep_corrupt={keep_corrupt} is negative")
        self.max_bytes = max_bytes
        self.timeout_ms = int(message_timeout_s * 1000)
        self.keep_corrupt = keep_corrupt
        self.dir = Path(path) / "outbox"
        self._tmp = self.dir / "tmp"
        self._corrupt = self.dir / "corrupt"
        self._state_path = self.dir / "state"
        self._state_fd = -1
        self._state_gen = 0
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._bytes = 0
        self._counters = dict.fromkeys(_COUNTER_NAMES, 0)
        self.drops = DropLedger()
        self._next_seq = 0
        self._boot = 0
        self._closed = False
        for d in (self.dir, self._tmp, self._corrupt):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._lock_fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutboxBusy(f"{self.dir} is open in another process") from err
            raise
        try:
            self._recover()
        except BaseException:
            if self._state_fd >= 0:
                os.close(self._state_fd)
            os.close(self._lock_fd)
            raise

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> Outbox:  # noqa: PYI034
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Persist the counters and the drop ledger, release the directory."""
        with self._lock:
            if self._closed:
                return
            self._save_state()
            self._closed = True
            os.close(self._state_fd)
            os.close(self._lock_fd)

    # -- reading -------------------------------------------------------------------------

    @property
    def boot(self) -> int:
        """The run number: 1 at the first open of a directory, +1 at each open."""
        return self._boot

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def counters(self) -> OutboxCounters:
        with self._lock:
            return OutboxCounters(**self._counters)

    def depth(self) -> dict[str, Depth]:
        """Stored batches and their bytes, per priority."""
        with self._lock:
            out = {p: [0, 0] for p in PRIORITIES}
            for e in self._entries.values():
                out[e.info.prio][0] += 1
                out[e.info.prio][1] += e.info.size
            return {p: Depth(c, b) for p, (c, b) in out.items()}

    def total_bytes(self) -> int:
        return self._bytes

    def pending(self) -> list[BatchInfo]:
        """Stored batches in send order: High first, then Medium, then Low; oldest first."""
        with self._lock:
            infos = [e.info for e in self._entries.values()]
        infos.sort(key=lambda i: (_RANK[i.prio], i.seq))
        return infos

    def read(self, batch_id: str) -> Batch | None:
        """The batch's payload, checked again against its checksum; None when the batch is
        not stored or its file went bad since (then set aside and counted)."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(batch_id)
            if entry is None:
                return None
            try:
                data = (self.dir / batch_id).read_bytes()
                prio, seq, _, _, _, payload = decode_batch_file(data)
                if (prio, seq) != (entry.info.prio, entry.info.seq):
                    raise ValueError("the header does not match the file name")
            except (OSError, ValueError) as err:
                log.error("outbox: %s went bad (%s); set aside", batch_id, err)
                self._forget(batch_id)
                self._counters["corrupt"] += 1
                self.drops.add("corrupt_batches")
                self.drops.add("corrupt_events", entry.info.events)
                self.drops.merge(entry.drops)
                self._save_state(aside=[batch_id])
                self._set_aside(batch_id)
                return None
            return Batch(entry.info, payload)

    def next_batch(self) -> Batch | None:
        """The first batch in send order, or None when the outbox is empty."""
        with self._lock:
            while True:
                order = self.pending()
                if not order:
                    return None
                batch = self.read(order[0].id)
                if batch is not None:
                    return batch

    # -- writing -------------------------------------------------------------------------

    def put(self, prio: str, seal: Seal, events: int = 0, now: int | None = None
            ) -> BatchInfo | None:
        """Store one batch of `events` events with priority prio. seal(Stamp) returns the
        payload (the envelope) for the stamp's sequence number, run number, time and drops.
        Returns the stored batch, or None when it was not stored: too large for the outbox,
        no room without evicting higher priorities, or a file system error; each is counted,
        and its events are added to the drop ledger."""
        if prio not in _RANK:
            raise ValueError(f"priority {prio!r} is not one of {PRIORITIES}")
        if not 0 <= events <= 0xFFFFFFFF:
            raise ValueError(f"events={events} is out of range")
        with self._lock:
            self._check_open()
            at = now_ms() if now is None else now
            try:
                self._expire(at)
            except OutboxStateError:
                pass  # counted; the batches stay and expire at the next chance
            seq = self._next_seq
            carried = self.drops.peek()
            payload = seal(Stamp(seq=seq, boot=self._boot, ts=at, drops=dict(carried)))
            data = encode_batch_file(prio, seq, at, events, carried, payload)
            size = len(data)
            if size > self.max_bytes:
                log.warning("outbox: a %s batch of %d bytes exceeds max_bytes=%d; dropped",
                            prio, size, self.max_bytes)
                self._not_stored("refused", events)
                return None
            victims = self._plan_room(prio, size)
            if victims is None:
                self._not_stored("rejected_full", events)
                return None
            if victims:
                try:
                    self._remove(victims, "evicted_full", "outbox_full")
                except OutboxStateError:
                    self._not_stored("write_errors", events)
                    return None
            name = batch_name(prio, seq)
            try:
                _write_durably(self._tmp / name, self.dir / name, data)
            except OSError as err:
                log.error("outbox: writing %s failed: %s", name, err)
                self._not_stored("write_errors", events)
                return None
            info = BatchInfo(name, prio, seq, at, events, size)
            self._entries[name] = _Entry(info, carried)
            self._bytes += size
            self._next_seq = seq + 1
            self._counters["written"] += 1
            # No state write: at open, a batch file numbered at or past the state's next_seq
            # is counted as written and the drops it carried come off the ledger (_recover).
            self.drops.subtract(carried)
            return info

    def confirm(self, batch_id: str) -> bool:
        """The uplink delivered the batch: remove it. False when it is not stored (already
        confirmed, evicted or expired)."""
        with self._lock:
            self._check_open()
            if batch_id not in self._entries:
                return False
            self._remove([batch_id], "confirmed", None)
            return True

    def expire(self, now: int | None = None) -> int:
        """Drop the batches older than the message timeout; returns how many."""
        with self._lock:
            self._check_open()
            return self._expire(now_ms() if now is None else now)

    def flush_state(self) -> None:
        """Persist the counters and the drop ledger now (e.g. after drops were added)."""
        with self._lock:
            self._check_open()
            self._save_state()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError("the outbox is closed")

    def _not_stored(self, counter: str, events: int) -> None:
        """A new batch that was not stored: count it and report its events."""
        self._counters[counter] += 1
        self.drops.add(_NOT_STORED_REASON[counter], events)
        self._save_state()

    def _expire(self, at: int) -> int:
        old = [e.info.id for e in self._entries.values() if at - e.info.created_ms > self.timeout_ms]
        if old:
            old.sort(key=lambda name: self._entries[name].info.seq)
            self._remove(old, "expired", "expired")
        return len(old)

    def _plan_room(self, prio: str, size: int) -> list[str] | None:
        """The batches to evict so that a new batch of `size` bytes fits: the lowest priority
        first, the oldest first, never one of higher priority than the new batch. None when
        even that is not enough (the new batch is then the lowest and newest: it goes)."""
        need = self._bytes + size - self.max_bytes
        if need <= 0:
            return []
        rank = _RANK[prio]
        candidates = sorted(
            (e.info for e in self._entries.values() if _RANK[e.info.prio] >= rank),
            key=lambda i: (-_RANK[i.prio], i.seq),
        )
        victims: list[str] = []
        for info in candidates:
            victims.append(info.id)
            need -= info.size
            if need <= 0:
                return victims
        return None

    def _remove(self, names: list[str], counter: str, reason: str | None) -> None:
        """Remove stored batches: count them; unless they were delivered (reason None), report
        their events and the drops their envelopes carried in the next envelope. The removal
        is logged in the state file before any file goes, MAX_DOOMED names at a time; when a
        state write fails, that chunk and the ones after it stay and OutboxStateError is
        raised."""
        for start in range(0, len(names), MAX_DOOMED):
            self._remove_chunk(names[start : start + MAX_DOOMED], counter, reason)

    def _remove_chunk(self, names: list[str], counter: str, reason: str | None) -> None:
        saved_counters = dict(self._counters)
        saved_drops = self.drops.peek()
        saved_entries = {name: self._entries[name] for name in names}
        for name in names:
            entry = self._entries[name]
            self._counters[counter] += 1
            if reason is not None:
                self.drops.add(f"{reason}_batches")
                self.drops.add(f"{reason}_events", entry.info.events)
                self.drops.merge(entry.drops)
            self._forget(name)
        if not self._save_state(doomed=names):
            errors = self._counters["state_errors"]
            self._counters = saved_counters
            self._counters["state_errors"] = errors
            self.drops = DropLedger(saved_drops)
            for name, entry in saved_entries.items():
                self._entries[name] = entry
                self._bytes += entry.info.size
            raise OutboxStateError(f"the state file could not be written; {names} kept")
        self._unlink(names)

    def _forget(self, name: str) -> None:
        entry = self._entries.pop(name)
        self._bytes -= entry.info.size

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            try:
                os.unlink(self.dir / name)
            except FileNotFoundError:
                pass
        _fsync_dir(self.dir)

    def _set_aside(self, name: str) -> None:
        """Move a bad file into corrupt/ (numbered, so the newest are kept) and trim corrupt/
        to keep_corrupt files."""
        target = self._corrupt / f"{self._counters['corrupt']:012d}-{name}"
        try:
            if self.keep_corrupt > 0:
                os.rename(self.dir / name, target)
            else:
                os.unlink(self.dir / name)
        except FileNotFoundError:
            return
        kept = sorted(self._corrupt.iterdir())
        for old in kept[: max(0, len(kept) - self.keep_corrupt)]:
            try:
                old.unlink()
            except OSError:
                pass
        _fsync_dir(self._corrupt)
        _fsync_dir(self.dir)

    def _state(self, doomed: list[str], aside: list[str]) -> dict[str, Any]:
        return {
            "next_seq": self._next_seq,
            "boot": self._boot,
            "counters": dict(self._counters),
            "drops": self.drops.peek(),
            "doomed": doomed,
            "aside": aside,
        }

    def _save_state(self, doomed: list[str] | None = None, aside: list[str] | None = None
                    ) -> bool:
        """Write the state into the older slot of the state file and fsync it. A failure is
        counted and logged, and the state stays in memory: the next change writes it again."""
        body = msgpack.packb(self._state(doomed or [], aside or []), use_bin_type=True)
        gen = self._state_gen + 1
        head = STATE_HEADER.pack(STATE_MAGIC, FORMAT, gen, len(body), 0)[:-4]
        data = head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
        if len(data) > STATE_SLOT:
            # Bounded by construction (fixed counters, DropLedger's reason limit, MAX_DOOMED).
            raise OutboxError(f"the outbox state grew to {len(data)} bytes")
        try:
            if os.pwrite(self._state_fd, data, (gen % 2) * STATE_SLOT) != len(data):
                raise OSError(errno.EIO, "short write of the state file")
            os.fdatasync(self._state_fd)
        except OSError as err:
            self._counters["state_errors"] += 1
            log.error("outbox: writing the state file failed: %s", err)
            return False
        self._state_gen = gen
        return True

    @staticmethod
    def _read_slot(data: bytes) -> tuple[int, dict[str, Any]] | None:
        """(generation, state) of one slot, or None when it is not whole."""
        if len(data) < STATE_HEADER.size:
            return None
        magic, fmt, gen, length, crc = STATE_HEADER.unpack_from(data)
        body = data[STATE_HEADER.size : STATE_HEADER.size + length]
        if magic != STATE_MAGIC or fmt != FORMAT or len(body) != length:
            return None
        if zlib.crc32(body, zlib.crc32(data[: STATE_HEADER.size - 4])) != crc:
            return None
        try:
            state = msgpack.unpackb(body, raw=False)
            if not isinstance(state, dict):
                return None
            return gen, Outbox._checked_state(state)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None

    def _create_state_file(self) -> None:
        _write_durably(self._tmp / "state.tmp", self._state_path, bytes(2 * STATE_SLOT))
        self._state_gen = 0

    def _load_state(self) -> dict[str, Any] | None:
        """The newest whole slot of the state file; None for a new outbox or a lost state
        (counted; the file is set aside). Leaves the state file open for writing."""
        try:
            data = self._state_path.read_bytes()
        except FileNotFoundError:
            self._create_state_file()
            data = None
        found = None
        if data is not None:
            slots = [self._read_slot(data[i * STATE_SLOT : (i + 1) * STATE_SLOT]) for i in (0, 1)]
            whole = [slot for slot in slots if slot is not None]
            if whole:
                self._state_gen, found = max(whole, key=lambda slot: slot[0])
            elif any(data):  # an all-zero file is a new one that was never written
                log.error("outbox: no whole state in %s; set aside", self._state_path)
                self._counters["state_lost"] += 1
                self._set_aside("state")
                self._create_state_file()
            if len(data) != 2 * STATE_SLOT and found is not None:
                # Written by something else, or cut short: start a well-formed file.
                self._create_state_file()
        self._state_fd = os.open(self._state_path, os.O_RDWR | os.O_CLOEXEC)
        return found

    @staticmethod
    def _checked_state(state: dict[str, Any]) -> dict[str, Any]:
        def uint(v: Any) -> int:
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{v!r} is not a count")
            return v

        counters = state.get("counters", {})
        drops = state.get("drops", {})
        doomed = state.get("doomed", [])
        aside = state.get("aside", [])
        if not isinstance(counters, dict) or not isinstance(drops, dict):
            raise TypeError("counters or drops is not a map")
        for names in (doomed, aside):
            if not isinstance(names, list) or not all(
                isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in names
            ):
                raise ValueError("doomed or aside is not a list of file names")
        return {
            "next_seq": uint(state.get("next_seq", 0)),
            "boot": uint(state.get("boot", 0)),
            "counters": {k: uint(counters.get(k, 0)) for k in _COUNTER_NAMES},
            "drops": {str(k): uint(v) for k, v in drops.items()},
            "doomed": doomed,
            "aside": aside,
        }

    def _recover(self) -> None:
        """Open: load the state, finish the removals it logged, clear unfinished writes, check
        every batch file, set bad ones aside, and recompute the next sequence number."""
        state = self._load_state()
        state_seq = 0
        if state is not None:
            for name in _COUNTER_NAMES:
                self._counters[name] += state["counters"][name]
            self.drops.merge(state["drops"])
            state_seq = state["next_seq"]
            self._boot = state["boot"]
            # Finish the removals and set-asides the last state logged (already counted; a
            # crash may have come before they were done).
            self._unlink(state["doomed"])
            for name in state["aside"]:
                if (self.dir / name).is_file():
                    self._set_aside(name)
        else:
            # A lost state file: the drops it held are unknown; say so in the next envelope.
            if self._counters["state_lost"]:
                self.drops.add("state_lost")

        for tmp in sorted(self._tmp.iterdir()):
            final = tmp.name
            if _NAME.match(final) and not (self.dir / final).exists():
                events = 0
                try:
                    with open(tmp, "rb") as f:
                        head = f.read(HEADER_BYTES)
                    if len(head) == HEADER_BYTES and head[:4] == BATCH_MAGIC:
                        events = _HEADER.unpack(head)[6]
                except OSError:
                    pass
                self._counters["half_written"] += 1
                self.drops.add("half_written_events", events)
                log.warning("outbox: %s was not finished when the agent stopped; removed", final)
            # Otherwise: the unfinished creation of a state file (made again at open) or a
            # batch whose final name exists (a left-over link): nothing is lost.
            try:
                tmp.unlink()
            except IsADirectoryError:
                pass

        next_seq = state_seq
        late: list[_Entry] = []
        bad: list[str] = []
        for path in sorted(self.dir.iterdir()):
            name = path.name
            if name in ("tmp", "corrupt", "state", "lock"):
                continue
            if not path.is_file() or path.is_symlink():
                log.error("outbox: %s is not a batch file; left alone", path)
                continue
            m = _NAME.match(name)
            if m is not None:
                next_seq = max(next_seq, int(m.group(2)) + 1)
            try:
                if m is None:
                    raise ValueError("not a batch file name")
                data = path.read_bytes()
                prio, seq, created, events, drops, _ = decode_batch_file(data)
                if prio != _PRIO_OF_NAME[m.group(1)] or seq != int(m.group(2)):
                    raise ValueError("the header does not match the file name")
            except (OSError, ValueError) as err:
                log.error("outbox: %s is corrupt (%s); set aside", name, err)
                self._counters["corrupt"] += 1
                if m is not None:
                    # A batch file whose sequence number the receiver will not see.
                    self.drops.add("corrupt_batches")
                bad.append(name)
                continue
            entry = _Entry(BatchInfo(name, prio, seq, created, events, len(data)), drops)
            self._entries[name] = entry
            self._bytes += len(data)
            if seq >= state_seq:
                late.append(entry)
        # Batches stored after the last state write (put crashed between the rename and the
        # state write): count them and take the drops they carried off the ledger.
        for entry in sorted(late, key=lambda e: e.info.seq):
            self._counters["written"] += 1
            self.drops.subtract(entry.drops)
        self._next_seq = next_seq
        self._boot += 1
        # Counted first, moved after: a crash in between moves them at the next open without
        # counting them again. MAX_DOOMED at a time, to fit a state slot.
        for start in range(0, len(bad), MAX_DOOMED):
            chunk = bad[start : start + MAX_DOOMED]
            if not self._save_state(aside=chunk):
                raise OutboxStateError("the state file could not be written at open")
            for name in chunk:
                self._set_aside(name)
        if not bad:
            self._save_state()
