"""The batch envelope: who sent a batch, its place in the sequence and the drops since the
previous batch, wrapped around the core's event array without decoding a single event.

A core batch is the bytes of one msgpack array of event maps. The envelope is one msgpack map
whose last key, `events`, holds those bytes verbatim: the map header and the small keys are
packed with msgpack-python, the event array is appended as it is. docs/outbox.md lists the keys.

Sizing: `envelope_overhead()` bounds the bytes an envelope adds to its events, and
`batch_bytes_for()` picks the core's batch_bytes so that envelope + events never exceed
Upload_MaxMessageBytes and a full batch fills whole 4 KB units (IoT Hub meters device-to-cloud
messages in 4 KB blocks; agent.limits holds the numbers).

Reading: `split_envelope()` is the one decoder of an envelope (header and events);
`decode_envelope()` checks what it returns, and `encode_batch()` turns a stored envelope into
the IoT Hub messages that carry it (msgpack as stored, or JSON, split into parts when larger
than a message may be).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import msgpack

from agent.limits import (
    CORE_MIN_BATCH_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    HUB_BILLING_UNIT,
    HUB_MESSAGE_LIMIT,
    MAX_MESSAGE_BYTES,
)
from agent.record import record

SCHEMA_VERSION = 1
PRIORITIES = ("High", "Medium", "Low")

# The sizes were defined here before agent.limits; still importable from here.
UNIT = HUB_BILLING_UNIT

MSGPACK_TYPE = "application/msgpack"
JSON_TYPE = "application/json"

# The drops map is bounded so that the overhead bound holds: DropLedger folds reasons beyond
# MAX_DROP_REASONS into OTHER_REASON, and no reason name is longer than MAX_REASON_LEN.
MAX_DROP_REASONS = 24
MAX_REASON_LEN = 40
OTHER_REASON = "other"

_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1

Collectors = Union[str, Sequence[str]]

__all__ = [
    "CORE_MIN_BATCH_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "HUB_MESSAGE_LIMIT", "JSON_TYPE",
    "MAX_DROP_REASONS", "MAX_REASON_LEN", "MSGPACK_TYPE", "OTHER_REASON", "PRIORITIES",
    "SCHEMA_VERSION", "UNIT", "Collectors", "DropLedger", "EnvelopeError", "Identity", "Part",
    "Stamp", "UnsendableBatch", "batch_bytes_for", "check_envelope", "decode_envelope",
    "encode_batch", "envelope_overhead", "event_count", "sealer", "split_envelope", "wrap",
]


class EnvelopeError(ValueError):
    """Bytes that are not an envelope, or arguments an envelope cannot hold."""


@record(frozen=True)
class Identity:
    """Who sends: agent id, agent version, IoT Hub device id and module id."""

    agent: str
    ver: str
    dev: str
    mod: str


def event_count(events: bytes) -> int:
    """The element count of a msgpack array header (fixarray, array16 or array32), read
    without decoding the elements."""
    if not events:
        raise EnvelopeError("an event batch is a msgpack array, not empty bytes")
    tag = events[0]
    if 0x90 <= tag <= 0x9F:
        return tag & 0x0F
    if tag == 0xDC and len(events) >= 3:
        return int(struct.unpack_from(">H", events, 1)[0])
    if tag == 0xDD and len(events) >= 5:
        return int(struct.unpack_from(">I", events, 1)[0])
    raise EnvelopeError(f"an event batch starts with a msgpack array header, not 0x{tag:02x}")


def _collectors(coll: Collectors) -> list[str]:
    names = [coll] if isinstance(coll, str) else list(coll)
    if not all(isinstance(name, str) for name in names):
        raise EnvelopeError(f"collector names are strings: {coll!r}")
    return names


def _check_drops(drops: Mapping[str, int]) -> dict[str, int]:
    if len(drops) > MAX_DROP_REASONS + 1:
        raise EnvelopeError(f"{len(drops)} drop reasons; at most {MAX_DROP_REASONS + 1}")
    out: dict[str, int] = {}
    for reason, count in drops.items():
        if not isinstance(reason, str) or not 0 < len(reason.encode()) <= MAX_REASON_LEN:
            raise EnvelopeError(f"drop reason {reason!r}: 1 to {MAX_REASON_LEN} bytes of text")
        if not isinstance(count, int) or not 0 <= count <= _U64_MAX:
            raise EnvelopeError(f"drop count {reason}={count!r} is not a uint64")
        out[reason] = count
    return out


def _head(
    ident: Identity,
    *,
    seq: int,
    ts: int,
    prio: str,
    coll: Collectors,
    drops: Mapping[str, int],
    n: int,
    boot: int,
) -> bytes:
    """The envelope up to and including the `events` key: everything but the event array."""
    if prio not in PRIORITIES:
        raise EnvelopeError(f"priority {prio!r} is not one of {PRIORITIES}")
    for name, value, top in (("seq", seq, _U64_MAX), ("ts", ts, _U64_MAX), ("n", n, _U32_MAX),
                             ("boot", boot, _U64_MAX)):
        if not isinstance(value, int) or not 0 <= value <= top:
            raise EnvelopeError(f"{name}={value!r} is out of range")
    keys: list[tuple[str, Any]] = [
        ("v", SCHEMA_VERSION),
        ("agent", ident.agent),
        ("ver", ident.ver),
        ("dev", ident.dev),
        ("mod", ident.mod),
        ("seq", seq),
        ("boot", boot),
        ("ts", ts),
        ("prio", prio),
        ("coll", _collectors(coll)),
        ("drops", _check_drops(drops)),
        ("n", n),
    ]
    packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    packer.pack_map_header(len(keys) + 1)
    for key, value in keys:
        packer.pack(key)
        packer.pack(value)
    packer.pack("events")
    return bytes(packer.bytes())


def wrap(
    events: bytes,
    ident: Identity,
    *,
    seq: int,
    ts: int,
    prio: str,
    coll: Collectors,
    drops: Mapping[str, int],
    boot: int = 0,
) -> bytes:
    """One envelope around a core batch (the bytes of one msgpack array of events), appended
    verbatim. `n` is read from the array header."""
    n = event_count(events)
    return _head(ident, seq=seq, ts=ts, prio=prio, coll=coll, drops=drops, n=n, boot=boot) + events


def envelope_overhead(ident: Identity, coll: Collectors) -> int:
    """An upper bound of the bytes an envelope adds to its event array, for any seq, ts, boot,
    priority, event count and any drops map a DropLedger hands out."""
    worst_drops = {
        f"{i:02d}".ljust(MAX_REASON_LEN, "r"): _U64_MAX for i in range(MAX_DROP_REASONS + 1)
    }
    return len(
        _head(ident, seq=_U64_MAX, ts=_U64_MAX, prio="Medium", coll=coll, drops=worst_drops,
              n=_U32_MAX, boot=_U64_MAX)
    )


def batch_bytes_for(max_message_bytes: int, overhead: int) -> int:
    """The core's batch_bytes for messages of at most max_message_bytes with an envelope of at
    most `overhead` bytes: the message budget is rounded down to whole 4 KB units and the
    envelope's share is taken from it, so that a full batch plus its envelope never exceeds
    the budget and ends as close to a unit boundary as the bound allows. Budgets below one
    unit are used as they are."""
    if max_message_bytes <= 0 or overhead < 0:
        raise ValueError(f"max_message_bytes={max_message_bytes}, overhead={overhead}")
    unit = HUB_BILLING_UNIT
    budget = max_message_bytes // unit * unit if max_message_bytes >= unit else max_message_bytes
    # With a large envelope, rounding down can leave less than the core's minimum: then the
    # unrounded budget is the better choice.
    if budget - overhead < CORE_MIN_BATCH_BYTES:
        budget = max_message_bytes
    batch = budget - overhead
    if batch < CORE_MIN_BATCH_BYTES:
        raise ValueError(
            f"max_message_bytes={max_message_bytes} leaves {batch} bytes for events after an "
            f"envelope of {overhead}; the core needs at least {CORE_MIN_BATCH_BYTES}"
        )
    return min(batch, _U32_MAX)


def split_envelope(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    """The one decoder of an envelope: its header (every key but `events`) and its events
    (maps; msgpack bin as bytes, str that is not UTF-8 with \\xNN escapes). Checks only the
    shape, a map with an events array: the uplink sends whatever has that shape."""
    try:
        env = msgpack.unpackb(data, raw=False, strict_map_key=False,
                              unicode_errors="backslashreplace")
    except (ValueError, msgpack.UnpackException) as err:
        raise EnvelopeError(f"not a msgpack envelope: {err}") from err
    if not isinstance(env, dict):
        raise EnvelopeError("an envelope is a msgpack map")
    events = env.pop("events", None)
    if not isinstance(events, list):
        raise EnvelopeError("the envelope lacks its events array")
    return env, events


def decode_envelope(data: bytes) -> dict[str, Any]:
    """The envelope as a dict, its `events` decoded (a list of maps; msgpack bin as bytes),
    every key and the schema version checked. For tests, `micro-agent decode` and receivers;
    the agent itself never decodes events."""
    env, events = split_envelope(data)
    check_envelope(env, events)
    env["events"] = events
    return env


def check_envelope(head: Mapping[str, Any], events: Sequence[Any]) -> None:
    """The checks of a decoded envelope, whatever it was read from (msgpack here, JSON at a
    receiver): every key, the schema version, `n` against the events."""
    for key in ("v", "seq", "ts", "prio", "drops", "n"):
        if key not in head:
            raise EnvelopeError(f"the envelope lacks {key!r}")
    if head["v"] != SCHEMA_VERSION:
        raise EnvelopeError(f"envelope schema {head['v']!r}; this agent reads {SCHEMA_VERSION}")
    if len(events) != head["n"]:
        raise EnvelopeError("the envelope's n does not match its events")


# -- the IoT Hub messages of a batch --------------------------------------------------------------


@record(frozen=True)
class Part:
    """One IoT Hub message of a batch: the whole batch, or part `index` of `count`."""

    body: bytes
    content_type: str
    content_encoding: str | None
    index: int
    count: int
    security: bool


class UnsendableBatch(ValueError):
    """A batch that no message can carry (never expected: batches are sized for the hub)."""


def _json_default(value: Any) -> str:
    # As agent.jsonl: msgpack bin as text, \xNN for the bytes that are not UTF-8.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _json(obj: Any) -> bytes:
    # Imported here: only Upload_Format json needs it, and orjson loads uuid, zoneinfo and
    # platform with it (about 0.5 MB RSS that the msgpack default never uses).
    import orjson

    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _msgpack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _split_for_send(payload: bytes) -> tuple[dict[str, Any], list[Any]]:
    try:
        return split_envelope(payload)
    except EnvelopeError as err:
        raise UnsendableBatch(str(err)) from err


def encode_batch(payload: bytes, fmt: str, max_bytes: int) -> list[Part]:
    """The messages that carry one stored batch (an envelope, docs/outbox.md).

    msgpack: the envelope as stored, one message. json: the same envelope as JSON (orjson; bin
    values as text with \\xNN escapes, as `micro-agent decode` prints them), content encoding
    utf-8, marked as a security message. A JSON form longer than max_bytes (JSON is larger
    than msgpack) is split into parts: each part is a whole envelope with the same header and
    seq, its share of the events in order, `n` its own count, `part` (1-based) and `parts`;
    the first part carries the drops, the others an empty map. A part of a single event still
    too long as JSON is sent as msgpack instead (content type application/msgpack), so that no
    event is lost. A msgpack envelope longer than the hub allows (never made by the agent) is
    split the same way."""
    if fmt != "json":
        if len(payload) <= MAX_MESSAGE_BYTES:
            return [Part(payload, MSGPACK_TYPE, None, 1, 1, False)]
        head, events = _split_for_send(payload)
        return _split(head, events, _msgpack, MSGPACK_TYPE, None, False,
                      min(max_bytes, MAX_MESSAGE_BYTES))
    try:
        head, events = _split_for_send(payload)
    except UnsendableBatch:
        if len(payload) <= MAX_MESSAGE_BYTES:
            return [Part(payload, MSGPACK_TYPE, None, 1, 1, False)]  # as stored, not lost
        raise
    body = _json({**head, "events": events})
    if len(body) <= max_bytes:
        return [Part(body, JSON_TYPE, "utf-8", 1, 1, True)]
    return _split(head, events, _json, JSON_TYPE, "utf-8", True, max_bytes)


def _split(head: dict[str, Any], events: list[Any], dumps: Callable[[Any], bytes], ctype: str,
           encoding: str | None, security: bool, max_bytes: int) -> list[Part]:
    sizes = [len(dumps(e)) + 1 for e in events]  # +1: the comma between JSON elements
    # The header of any part, with the widest n / part / parts and an array32 header.
    probe = dict(head, n=0xFFFFFFFF, part=0xFFFF, parts=0xFFFF, events=[])
    budget = max_bytes - len(dumps(probe)) - 8
    chunks: list[list[Any]] = []
    current: list[Any] = []
    used = 0
    for event, size in zip(events, sizes):
        if current and used + size > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(event)
        used += size
    if current or not chunks:
        chunks.append(current)
    parts: list[Part] = []
    for i, chunk in enumerate(chunks):
        doc = dict(head)
        doc["n"] = len(chunk)
        if i > 0:
            doc["drops"] = {}
        if len(chunks) > 1:
            doc["part"] = i + 1
            doc["parts"] = len(chunks)
        doc["events"] = chunk
        body = dumps(doc)
        if len(body) <= max_bytes:
            parts.append(Part(body, ctype, encoding, i + 1, len(chunks), security))
            continue
        packed = _msgpack(doc)  # one event too long as JSON: msgpack keeps it whole
        if len(packed) > MAX_MESSAGE_BYTES:
            raise UnsendableBatch(f"an event of {len(packed)} bytes exceeds any message")
        parts.append(Part(packed, MSGPACK_TYPE, None, i + 1, len(chunks), False))
    return parts


class DropLedger:
    """Drops by reason since the last envelope: sources, the sink and the outbox add to it,
    the next envelope takes everything (and the ledger starts again at zero). A reason beyond
    MAX_DROP_REASONS distinct ones is counted under OTHER_REASON, so nothing is lost and the
    envelope's size bound holds."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {}
        if counts:
            self.merge(counts)

    def add(self, reason: str, count: int = 1) -> None:
        if count < 0:
            raise ValueError(f"drop count {reason}={count} is negative")
        if count == 0:
            return
        if not reason or len(reason.encode()) > MAX_REASON_LEN:
            raise ValueError(f"drop reason {reason!r}: 1 to {MAX_REASON_LEN} bytes of text")
        if reason not in self._counts and reason != OTHER_REASON:
            distinct = len(self._counts) - (OTHER_REASON in self._counts)
            if distinct >= MAX_DROP_REASONS:
                reason = OTHER_REASON
        self._counts[reason] = min(self._counts.get(reason, 0) + count, _U64_MAX)

    def merge(self, counts: Mapping[str, int]) -> None:
        for reason, count in counts.items():
            self.add(reason, count)

    def subtract(self, counts: Mapping[str, int]) -> None:
        """Remove counts already reported (recovery: a batch written just before a crash
        carried them); never below zero."""
        for reason, count in counts.items():
            left = self._counts.get(reason, 0) - count
            if left > 0:
                self._counts[reason] = left
            else:
                self._counts.pop(reason, None)

    def peek(self) -> dict[str, int]:
        return dict(self._counts)

    def take(self) -> dict[str, int]:
        out, self._counts = self._counts, {}
        return out

    def __bool__(self) -> bool:
        return bool(self._counts)



@record(frozen=True)
class Stamp:
    """What the outbox gives the envelope of the batch it is about to store: the batch's
    sequence number, the agent's run number, the creation time (ms since the epoch) and the
    drops to report."""

    seq: int
    boot: int
    ts: int
    drops: dict[str, int]


def sealer(events: bytes, ident: Identity, prio: str, coll: Collectors) -> Callable[[Stamp], bytes]:
    """The `seal` argument of Outbox.put for one core batch: wraps it once the outbox has
    assigned its sequence number."""
    event_count(events)  # fail here, at the caller, on bytes that are not an event array

    def seal(stamp: Stamp) -> bytes:
        return wrap(events, ident, seq=stamp.seq, boot=stamp.boot, ts=stamp.ts, prio=prio,
                    coll=coll, drops=stamp.drops)

    return seal
