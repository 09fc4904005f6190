"""The batch file: one stored batch, `<prio>-<seq:020d>.batch`. A fixed header (magic, format,
priority rank, drops length, sequence number, creation time, event count, payload length,
CRC32), the drops the batch's envelope reported (a msgpack map) and the payload (the envelope
bytes). docs/outbox.md has the byte layout.

Decoding checks everything a torn or corrupted file can get wrong: the length against the
header, magic, format, priority, the drops map and the CRC32 over header, drops and payload.
"""

from __future__ import annotations

import binascii
import re
import struct
from collections.abc import Mapping
from typing import NamedTuple

import msgpack

from agent.envelope import PRIORITIES

BATCH_MAGIC = b"AMOB"
FORMAT = 1
# magic, format, priority rank, drops length, seq, created ms, events, payload length, CRC32 of
# everything before the CRC field plus the drops and the payload.
HEADER = struct.Struct("<4sBBHQQIII")
HEADER_BYTES = HEADER.size
_EVENTS_FIELD = 6

RANK = {p: i for i, p in enumerate(PRIORITIES)}
_NAME = re.compile(r"^(high|medium|low)-(\d{20})\.batch$")
_PRIO_OF_NAME = {p.lower(): p for p in PRIORITIES}


class BatchFile(NamedTuple):
    """What a batch file holds."""

    prio: str
    seq: int
    created_ms: int
    events: int
    drops: dict[str, int]
    payload: bytes


def batch_name(prio: str, seq: int) -> str:
    return f"{prio.lower()}-{seq:020d}.batch"


def parse_batch_name(name: str) -> tuple[str, int] | None:
    """(priority, seq) of a batch file name; None for any other name."""
    m = _NAME.match(name)
    if m is None:
        return None
    return _PRIO_OF_NAME[m.group(1)], int(m.group(2))


def _pack_drops(drops: Mapping[str, int]) -> bytes:
    return bytes(msgpack.packb(dict(drops), use_bin_type=True))


def batch_file_parts(prio: str, seq: int, created_ms: int, events: int,
                     drops: Mapping[str, int], payload: bytes) -> tuple[bytes, bytes]:
    """One batch file as two parts: the header with the drops, and the payload itself (not
    copied: agent.durable writes both with writev)."""
    blob = _pack_drops(drops)
    if len(blob) > 0xFFFF:
        raise ValueError("the drops map of a batch is over 64 KiB")
    head = HEADER.pack(BATCH_MAGIC, FORMAT, RANK[prio], len(blob), seq, created_ms, events,
                       len(payload), 0)[:-4]
    crc = binascii.crc32(payload, binascii.crc32(blob, binascii.crc32(head)))
    return head + struct.pack("<I", crc) + blob, payload


def encode_batch_file(prio: str, seq: int, created_ms: int, events: int,
                      drops: Mapping[str, int], payload: bytes) -> bytes:
    """The bytes of one batch file (batch_file_parts joined)."""
    return b"".join(batch_file_parts(prio, seq, created_ms, events, drops, payload))


def decode_batch_file(data: bytes) -> BatchFile:
    """What a batch file holds; ValueError when the header, a length, the drops map or the
    checksum is wrong (a torn, truncated or corrupted file)."""
    if len(data) < HEADER_BYTES:
        raise ValueError(f"{len(data)} bytes: shorter than the header")
    magic, fmt, rank, blob_len, seq, created, events, payload_len, crc = HEADER.unpack_from(data)
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
    if binascii.crc32(payload, binascii.crc32(blob, binascii.crc32(view[: HEADER_BYTES - 4]))) != crc:
        raise ValueError("checksum mismatch")
    drops = msgpack.unpackb(blob, raw=False)
    if not isinstance(drops, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in drops.items()
    ):
        raise ValueError("the drops map is malformed")
    return BatchFile(PRIORITIES[rank], seq, created, events, drops, bytes(payload))


def decode_named_batch_file(name: str, data: bytes) -> BatchFile:
    """decode_batch_file, and the file's name must be the batch's: a file renamed, or copied
    over another, is as bad as a corrupt one."""
    parsed = parse_batch_name(name)
    if parsed is None:
        raise ValueError("not a batch file name")
    batch = decode_batch_file(data)
    if (batch.prio, batch.seq) != parsed:
        raise ValueError("the header does not match the file name")
    return batch


def events_of_partial(head: bytes) -> int:
    """The event count in the header of a batch file that was cut short (its write was not
    finished), or 0 when even the header is incomplete or not a batch header: the count is
    the best that can be said of what was lost."""
    if len(head) < HEADER_BYTES or head[:4] != BATCH_MAGIC:
        return 0
    return int(HEADER.unpack_from(head)[_EVENTS_FIELD])
