"""The outbox: a durable, bounded, priority-aware spool of batches between the pipeline and the
uplink. docs/outbox.md describes the file format, recovery, eviction and counters.

One directory DIR/outbox holds one file per batch (agent.outbox.codec: header, drops, payload,
CRC32), written through agent.durable (tmp file, fsync, rename) with the directory's fsync
grouped (Outbox._sync_dir: once before anything depends on the batches stored since): a batch
file either exists whole or not at all. A batch is removed only by `confirm` (the uplink
delivered it), by eviction when the outbox is full, or by expiry (agent.outbox.eviction
decides which); each removal is first logged in the state journal (agent.outbox.journal:
next sequence number, run number, counters, drop ledger, the files about to be removed), so
that a crash at any moment leaves counts that add up.

The outbox owns the sequence numbers: `put` hands the next one to `seal`, which builds the
envelope around it, and the number is used up only when the batch file is in place. The next
number is recomputed at open from the state journal and the batch files, so a number is never
used twice and never skipped, even after SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Union

from agent.clock import wall_ms
from agent.durable import fsync_dir, replace_file
from agent.envelope import PRIORITIES, DropLedger, Stamp
from agent.outbox.codec import (
    BATCH_MAGIC,
    HEADER_BYTES,
    RANK,
    BatchFile,
    batch_file_parts,
    batch_name,
    decode_batch_file,
    decode_named_batch_file,
    encode_batch_file,
    events_of_partial,
    parse_batch_name,
)
from agent.outbox.eviction import EvictionPolicy
from agent.outbox.journal import (
    MAX_DOOMED,
    STATE_HEADER,
    STATE_SLOT,
    JournalError,
    JournalRecord,
    StateJournal,
    next_seq_at_open,
    stored_after_state,
)
from agent.record import fields, record

__all__ = [
    "BATCH_MAGIC",
    "FRESH_BATCHES",
    "FRESH_BYTES",
    "HEADER_BYTES",
    "MAX_DOOMED",
    "STATE_HEADER",
    "STATE_SLOT",
    "Batch",
    "BatchFile",
    "BatchInfo",
    "Depth",
    "Outbox",
    "OutboxBusy",
    "OutboxCounters",
    "OutboxError",
    "OutboxStateError",
    "batch_name",
    "decode_batch_file",
    "encode_batch_file",
]

log = logging.getLogger(__name__)

DEFAULT_KEEP_CORRUPT = 8
# Outbox._fresh: at most this many of the newest payloads, and this many bytes, in memory.
FRESH_BATCHES = 64
FRESH_BYTES = 256 << 10  # while the hub is away they stay: a bounded cost

Seal = Callable[[Stamp], bytes]
PathLike = Union[str, "os.PathLike[str]"]


class OutboxError(Exception):
    """The outbox cannot be used (another process holds it, or its directory is unusable)."""


class OutboxBusy(OutboxError):
    """Another process has the outbox open."""


class OutboxStateError(OutboxError):
    """The state file could not be written, so a removal was not done (the batches stay)."""


@record(frozen=True)
class BatchInfo:
    """One stored batch. `id` is its file name; `size` its bytes on disk (the unit of
    max_bytes)."""

    id: str
    prio: str
    seq: int
    created_ms: int
    events: int
    size: int


@record(frozen=True)
class Batch:
    info: BatchInfo
    payload: bytes


@record(frozen=True)
class Depth:
    count: int
    bytes: int


@record(frozen=True)
class OutboxCounters:
    """Batches, counted since the outbox was created (persisted across restarts).

    written: stored (put succeeded); confirmed: removed after delivery; evicted_full: stored
    batches removed to make room; rejected_full: new batches not stored because only higher
    priority batches filled the outbox; refused: new batches larger than max_bytes on their
    own; write_errors: puts that failed on a file system error (ENOSPC, EDQUOT, EIO); expired:
    stored batches older than the message timeout; corrupt: files set aside in corrupt/;
    half_written: unfinished writes found at open; state_lost: state files found corrupt;
    state_errors: state writes that failed (retried at the next change); sync_errors: fsyncs
    of the outbox directory that failed (the renames of stored batches not yet durable:
    retried before the next step that depends on them; the batches stay and are sent)."""

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
    sync_errors: int = 0


_COUNTER_NAMES = tuple(f.name for f in fields(OutboxCounters))
# The drop reason under which the events of a batch that was never stored are reported.
_NOT_STORED_REASON = {
    "refused": "refused_events",
    "rejected_full": "outbox_full_events",
    "write_errors": "write_error_events",
}


@record
class _Entry:
    info: BatchInfo
    drops: dict[str, int]  # what the batch's envelope reported: reported again if it is lost


def _read_whole(path: str, size: int) -> bytes:
    """The file's bytes; `size` is what it should hold (read one more to see a longer file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        left = size + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def now_ms() -> int:
    return wall_ms()


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
        self.policy = EvictionPolicy(max_bytes, int(message_timeout_s * 1000))
        self.keep_corrupt = keep_corrupt
        self.dir = Path(path) / "outbox"
        # Batch files are read and removed by name, one per batch: plain strings, not Path
        # objects (their joins were a tenth of the loop's time in a drain).
        self._dir_name = str(self.dir)
        self._dir_dirty = False  # batches renamed into place since the directory's last fsync
        self._tmp = self.dir / "tmp"
        self._corrupt = self.dir / "corrupt"
        self._journal = StateJournal(self.dir / "state", self._tmp, _COUNTER_NAMES)
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        # The stored batches of each priority in sequence order: the send order without a
        # sort. The uplink asks for it at every turn while a backlog drains; sorting the
        # whole outbox each time was a quarter of the loop's time with a 1,500-batch backlog
        # (profiled beside benchmarks/bench_uplink.py's drain).
        self._queues: dict[str, dict[str, BatchInfo]] = {p: {} for p in PRIORITIES}
        self._bytes = 0
        self._counters = dict.fromkeys(_COUNTER_NAMES, 0)
        self.drops = DropLedger()
        # Called (in put's thread, the outbox's lock held) after each stored batch: the uplink
        # hands batches to its sender as they are stored, rather than after the loop's turn
        # stored a whole interval's batches (their fsyncs then overlap the sending).
        self.on_stored: Callable[[], None] | None = None
        # The payloads of the newest stored batches, for their first read(): the uplink reads
        # a batch right after it was stored, and reading back and checking the file it has
        # just written was a tenth of the loop's time per batch. Bounded (FRESH_*): a backlog
        # is read from its files as before.
        self._fresh: dict[str, bytes] = {}
        self._fresh_bytes = 0
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
            self._journal.close()
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
            self._journal.close()
            os.close(self._lock_fd)

    # -- limits (a twin patch changes them on a live outbox) -----------------------------

    @property
    def max_bytes(self) -> int:
        return self.policy.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.policy.max_bytes = value

    @property
    def timeout_ms(self) -> int:
        return self.policy.timeout_ms

    @timeout_ms.setter
    def timeout_ms(self, value: int) -> None:
        self.policy.timeout_ms = value

    # -- reading -------------------------------------------------------------------------

    @property
    def boot(self) -> int:
        """The run number: 1 at the first open of a directory, +1 at each open."""
        return self._boot

    @property
    def next_seq(self) -> int:
        """The next batch's sequence number. Every stored batch below it is durable when this
        returns (a checkpoint records it: docs/outbox.md, "Writing and removing")."""
        with self._lock:
            self._sync_dir()
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

    def pending(self, limit: int | None = None) -> list[BatchInfo]:
        """Stored batches in send order: High first, then Medium, then Low; oldest first.
        `limit`: the first that many only (the uplink asks after every stored batch)."""
        with self._lock:
            if limit is None:
                return [info for prio in PRIORITIES for info in self._queues[prio].values()]
            out: list[BatchInfo] = []
            for prio in PRIORITIES:
                for info in self._queues[prio].values():
                    if len(out) >= limit:
                        return out
                    out.append(info)
            return out

    def read(self, batch_id: str) -> Batch | None:
        """The batch's payload, checked again against its checksum; None when the batch is
        not stored or its file went bad since (then set aside and counted). A batch stored
        moments ago by this process comes from memory (FRESH_BATCHES), once."""
        with self._lock:
            self._check_open()
            entry = self._entries.get(batch_id)
            if entry is None:
                return None
            self._sync_dir()  # a batch leaves the outbox only once it survives a power cut
            fresh = self._fresh.pop(batch_id, None)
            if fresh is not None:
                self._fresh_bytes -= len(fresh)
                return Batch(entry.info, fresh)
            try:
                batch = decode_named_batch_file(batch_id, _read_whole(
                    f"{self._dir_name}/{batch_id}", entry.info.size))
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
            return Batch(entry.info, batch.payload)

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
        if prio not in RANK:
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
            data = batch_file_parts(prio, seq, at, events, carried, payload)
            size = len(data[0]) + len(data[1])
            if self.policy.refuses(size):
                log.warning("outbox: a %s batch of %d bytes exceeds max_bytes=%d; dropped",
                            prio, size, self.max_bytes)
                self._not_stored("refused", events)
                return None
            # A generator: read only when the batch does not fit as it is.
            victims = self.policy.room_for((e.info for e in self._entries.values()),
                                           self._bytes, prio, size)
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
                self._write_batch(name, data)
            except OSError as err:
                log.error("outbox: writing %s failed: %s", name, err)
                self._not_stored("write_errors", events)
                return None
            info = BatchInfo(name, prio, seq, at, events, size)
            self._add(_Entry(info, carried))
            self._keep_fresh(name, payload)
            self._next_seq = seq + 1
            self._counters["written"] += 1
            # No state write: at open, a batch file numbered at or past the state's next_seq
            # is counted as written and the drops it carried come off the ledger (_recover).
            self.drops.subtract(carried)
            if self.on_stored is not None:
                try:
                    self.on_stored()
                except Exception:  # the batch is stored whatever the listener does
                    log.exception("outbox: the stored-batch listener failed")
            return info

    def confirm(self, batch_id: str) -> bool:
        """The uplink delivered the batch: remove it. False when it is not stored (already
        confirmed, evicted or expired)."""
        return bool(self.confirm_many([batch_id]))

    def confirm_many(self, batch_ids: Sequence[str]) -> list[str]:
        """The uplink delivered these batches: remove them together, with one state write
        and one directory fsync per MAX_DOOMED of them (a group commit: each is as durably
        removed as by confirm, at the cost of one). Returns the ids removed; the others were
        not stored (already confirmed, evicted or expired). OutboxStateError when the state
        could not be written: then none of a failed chunk (nor any after it) is removed."""
        with self._lock:
            self._check_open()
            stored = [i for i in dict.fromkeys(batch_ids) if i in self._entries]
            if stored:
                self._remove(stored, "confirmed", None)
            return stored

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
        old = self.policy.expired([e.info for e in self._entries.values()], at)
        if old:
            self._remove(old, "expired", "expired")
        return len(old)

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
            for entry in saved_entries.values():
                self._add(entry)
            raise OutboxStateError(f"the state file could not be written; {names} kept")
        self._unlink(names)

    def _add(self, entry: _Entry) -> None:
        info = entry.info
        self._entries[info.id] = entry
        self._bytes += info.size
        queue = self._queues[info.prio]
        last = next(reversed(queue.values()), None)
        queue[info.id] = info
        if last is not None and last.seq > info.seq:
            # Not the newest of its priority (a removal undone, or files found at open).
            ordered = sorted(queue.values(), key=lambda b: b.seq)
            queue.clear()
            queue.update((b.id, b) for b in ordered)

    def _keep_fresh(self, name: str, payload: bytes) -> None:
        while self._fresh and (len(self._fresh) >= FRESH_BATCHES
                               or self._fresh_bytes + len(payload) > FRESH_BYTES):
            oldest = next(iter(self._fresh))
            self._fresh_bytes -= len(self._fresh.pop(oldest))
        if len(payload) <= FRESH_BYTES:
            self._fresh[name] = payload
            self._fresh_bytes += len(payload)

    def _forget(self, name: str) -> None:
        fresh = self._fresh.pop(name, None)
        if fresh is not None:
            self._fresh_bytes -= len(fresh)
        entry = self._entries.pop(name)
        del self._queues[entry.info.prio][name]
        self._bytes -= entry.info.size

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            try:
                os.unlink(f"{self._dir_name}/{name}")
            except FileNotFoundError:
                pass
        fsync_dir(self.dir)
        self._dir_dirty = False  # that fsync made the renames before it durable too

    def _write_batch(self, name: str, data: Sequence[bytes]) -> None:
        """tmp/<name>, fsynced, renamed into place. The directory's fsync is left to
        _sync_dir, which runs before anything depends on the rename (one fsync for all the
        batches a turn stores, not one each)."""
        replace_file(f"{self._dir_name}/{name}", data, tmp=f"{self._dir_name}/tmp/{name}",
                     sync_dir=False)
        self._dir_dirty = True

    def _sync_dir(self) -> None:
        """Make the renames of stored batches durable. Called before a batch is read (handed
        to an uplink), before next_seq is given out (a checkpoint records it), before a state
        write (it records next_seq) and at close. A failure is logged and tried again at the
        next of those, and counted (sync_errors); the batches stay, and are handed to the
        uplink all the same: what is sent cannot be lost by a power cut, and holding a batch
        back until the disk recovers would lose more."""
        if not self._dir_dirty:
            return
        try:
            fsync_dir(self.dir)
        except OSError as err:
            self._counters["sync_errors"] += 1
            log.error("outbox: fsync of %s failed: %s", self.dir, err)
            return
        self._dir_dirty = False

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
        fsync_dir(self._corrupt)
        fsync_dir(self.dir)

    def _save_state(self, doomed: list[str] | None = None, aside: list[str] | None = None
                    ) -> bool:
        """Write the state into the journal. A failure is counted and logged, and the state
        stays in memory: the next change writes it again."""
        self._sync_dir()  # the next_seq it records counts only durable batches
        record = JournalRecord(next_seq=self._next_seq, boot=self._boot,
                               counters=dict(self._counters), drops=self.drops.peek(),
                               doomed=doomed or [], aside=aside or [])
        try:
            self._journal.write(record)
        except JournalError as err:
            raise OutboxError(str(err)) from err
        except OSError as err:
            self._counters["state_errors"] += 1
            log.error("outbox: writing the state file failed: %s", err)
            return False
        return True

    def _state_lost(self, path: Path) -> None:
        log.error("outbox: no whole state in %s; set aside", path)
        self._counters["state_lost"] += 1
        self._set_aside(path.name)

    def _recover(self) -> None:
        """Open: load the state, finish the removals it logged, clear unfinished writes, check
        every batch file, set bad ones aside, and recompute the next sequence number."""
        state, _ = self._journal.open(self._state_lost)
        state_seq = 0
        if state is not None:
            for name in _COUNTER_NAMES:
                self._counters[name] += state.counters[name]
            self.drops.merge(state.drops)
            state_seq = state.next_seq
            self._boot = state.boot
            # Finish the removals and set-asides the last state logged (already counted; a
            # crash may have come before they were done).
            self._unlink(state.doomed)
            for name in state.aside:
                if (self.dir / name).is_file():
                    self._set_aside(name)
        elif self._counters["state_lost"]:
            # A lost state file: the drops it held are unknown; say so in the next envelope.
            self.drops.add("state_lost")

        for tmp in sorted(self._tmp.iterdir()):
            final = tmp.name
            if parse_batch_name(final) is not None and not (self.dir / final).exists():
                events = 0
                try:
                    with open(tmp, "rb") as f:
                        events = events_of_partial(f.read(HEADER_BYTES))
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

        named_seqs: list[int] = []
        late: list[_Entry] = []
        bad: list[str] = []
        for path in sorted(self.dir.iterdir()):
            name = path.name
            if name in ("tmp", "corrupt", "state", "lock"):
                continue
            if not path.is_file() or path.is_symlink():
                log.error("outbox: %s is not a batch file; left alone", path)
                continue
            parsed = parse_batch_name(name)
            if parsed is not None:
                named_seqs.append(parsed[1])
            try:
                data = path.read_bytes()
                batch = decode_named_batch_file(name, data)
            except (OSError, ValueError) as err:
                log.error("outbox: %s is corrupt (%s); set aside", name, err)
                self._counters["corrupt"] += 1
                if parsed is not None:
                    # A batch file whose sequence number the receiver will not see.
                    self.drops.add("corrupt_batches")
                bad.append(name)
                continue
            info = BatchInfo(name, batch.prio, batch.seq, batch.created_ms, batch.events,
                             len(data))
            entry = _Entry(info, batch.drops)
            self._add(entry)
            if stored_after_state(batch.seq, state_seq):
                late.append(entry)
        # Batches stored after the last state write (put crashed between the rename and the
        # state write): count them and take the drops they carried off the ledger.
        for entry in sorted(late, key=lambda e: e.info.seq):
            self._counters["written"] += 1
            self.drops.subtract(entry.drops)
        self._next_seq = next_seq_at_open(state_seq, named_seqs)
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
