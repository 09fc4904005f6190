"""The outbox's state journal, DIR/outbox/state: the next sequence number, the run number, the
counters, the drop ledger and the removals about to be done.

The file is two slots of STATE_SLOT bytes, allocated once and then written in turn in place,
so that logging a removal never needs a free block (a full disk must not stop a confirm) and
a torn write leaves the other slot whole. Slot: magic, format, 3 bytes zero, generation, body
length, CRC32 of the header before the CRC plus the body (a msgpack map). At open the whole
slot with the highest generation is the state.

Sequence numbers: a number is used when its batch file is in place, and no state write
follows a put (it would cost a third fsync). So at open the next number is past both the
state's next_seq and every batch file on disk: never used twice, never skipped, whatever
moment a SIGKILL chose (`next_seq_at_open`).
"""

from __future__ import annotations

import binascii
import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from agent.durable import replace_file
from agent.record import field, record

STATE_MAGIC = b"AMOS"
FORMAT = 1
STATE_HEADER = struct.Struct("<4sB3xQII")
STATE_SLOT = 8 * 1024
# Removals are logged in chunks of at most this many names, to fit a slot.
MAX_DOOMED = 128


class JournalError(Exception):
    """A state that cannot be written (larger than a slot)."""


@record
class JournalRecord:
    """One state. `doomed`: batch files about to be removed (counted already); `aside`: bad
    files about to be moved to corrupt/ (counted already). Open finishes both."""

    next_seq: int = 0
    boot: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    doomed: list[str] = field(default_factory=list)
    aside: list[str] = field(default_factory=list)


def next_seq_at_open(state_next_seq: int, seqs_on_disk: Iterable[int]) -> int:
    """The next sequence number after a restart: past the last state's next_seq and past every
    batch file found (stored after that state was written, or bad but named)."""
    return max([state_next_seq, *(seq + 1 for seq in seqs_on_disk)])


def stored_after_state(seq: int, state_next_seq: int) -> bool:
    """Whether a batch file found at open was stored after the last state write: it is not
    counted in that state's counters, and its drops are still on that state's ledger."""
    return seq >= state_next_seq


def encode_slot(gen: int, record: JournalRecord) -> bytes:
    """The bytes of one slot (without the zero padding to STATE_SLOT)."""
    body: bytes = msgpack.packb({
        "next_seq": record.next_seq,
        "boot": record.boot,
        "counters": dict(record.counters),
        "drops": dict(record.drops),
        "doomed": list(record.doomed),
        "aside": list(record.aside),
    }, use_bin_type=True)
    head = STATE_HEADER.pack(STATE_MAGIC, FORMAT, gen, len(body), 0)[:-4]
    data = head + struct.pack("<I", binascii.crc32(body, binascii.crc32(head))) + body
    if len(data) > STATE_SLOT:
        # Bounded by construction (fixed counters, DropLedger's reason limit, MAX_DOOMED).
        raise JournalError(f"the outbox state grew to {len(data)} bytes")
    return data


def _uint(v: Any) -> int:
    if not isinstance(v, int) or v < 0:
        raise ValueError(f"{v!r} is not a count")
    return v


def _names(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(
        isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in v
    ):
        raise ValueError("doomed or aside is not a list of file names")
    return list(v)


def decode_slot(data: bytes, counter_names: Sequence[str]) -> tuple[int, JournalRecord] | None:
    """(generation, record) of one slot, or None when it is not whole (torn, zero, corrupt).
    Counters outside counter_names are ignored; missing ones are 0."""
    if len(data) < STATE_HEADER.size:
        return None
    magic, fmt, gen, length, crc = STATE_HEADER.unpack_from(data)
    body = data[STATE_HEADER.size : STATE_HEADER.size + length]
    if magic != STATE_MAGIC or fmt != FORMAT or len(body) != length:
        return None
    if binascii.crc32(body, binascii.crc32(data[: STATE_HEADER.size - 4])) != crc:
        return None
    try:
        state = msgpack.unpackb(body, raw=False)
        if not isinstance(state, dict):
            return None
        counters = state.get("counters", {})
        drops = state.get("drops", {})
        if not isinstance(counters, dict) or not isinstance(drops, dict):
            return None
        return gen, JournalRecord(
            next_seq=_uint(state.get("next_seq", 0)),
            boot=_uint(state.get("boot", 0)),
            counters={k: _uint(counters.get(k, 0)) for k in counter_names},
            drops={str(k): _uint(v) for k, v in drops.items()},
            doomed=_names(state.get("doomed", [])),
            aside=_names(state.get("aside", [])),
        )
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


class StateJournal:
    """The state file at `path`; `tmp` is a directory on the same file system for creating it.

    open(on_lost) reads the newest whole slot and opens the file for writing; write(record)
    puts a record into the older slot and fdatasyncs it. A file with no whole slot (and not
    all zero: that is a new file never written) is lost: on_lost(path) moves it away and a
    new file is made."""

    def __init__(self, path: Path, tmp: Path, counter_names: Sequence[str]) -> None:
        self.path = path
        self._tmp = tmp
        self._counter_names = tuple(counter_names)
        self._fd = -1
        self._gen = 0

    @property
    def generation(self) -> int:
        """The generation of the newest slot written (0: none yet)."""
        return self._gen

    def _create(self) -> None:
        replace_file(self.path, bytes(2 * STATE_SLOT), tmp=self._tmp / (self.path.name + ".tmp"))
        self._gen = 0

    def open(self, on_lost: Callable[[Path], None]) -> tuple[JournalRecord | None, bool]:
        """(the newest whole state or None, whether the file was lost). None and False: a new
        outbox (the file is made)."""
        try:
            data: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            self._create()
            data = None
        found: JournalRecord | None = None
        lost = False
        if data is not None:
            slots = [decode_slot(data[i * STATE_SLOT : (i + 1) * STATE_SLOT],
                                 self._counter_names) for i in (0, 1)]
            whole = [slot for slot in slots if slot is not None]
            if whole:
                self._gen, found = max(whole, key=lambda slot: slot[0])
                if len(data) != 2 * STATE_SLOT:
                    # Written by something else, or cut short: start a well-formed file.
                    self._create()
            elif any(data):  # an all-zero file is a new one that was never written
                lost = True
                on_lost(self.path)
                self._create()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        return found, lost

    def write(self, record: JournalRecord) -> None:
        """The record into the older slot, fdatasynced. OSError when that failed: the file
        still holds the previous state whole (in the other slot)."""
        gen = self._gen + 1
        data = encode_slot(gen, record)
        if os.pwrite(self._fd, data, (gen % 2) * STATE_SLOT) != len(data):
            raise OSError(errno.EIO, "short write of the state file")
        os.fdatasync(self._fd)
        self._gen = gen

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
