"""The batch envelope (src/agent/envelope.py): round trips over the core's real batches, the
size bound at the largest batches, the 4 KB packing helper and the drop ledger."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.config import FIELDS
from agent.envelope import (
    MAX_DROP_REASONS,
    MAX_REASON_LEN,
    OTHER_REASON,
    PRIORITIES,
    SCHEMA_VERSION,
    DropLedger,
    EnvelopeError,
    Identity,
    Stamp,
    batch_bytes_for,
    decode_envelope,
    envelope_overhead,
    event_count,
    sealer,
    wrap,
)
from agent.limits import (
    CORE_MIN_BATCH_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    HUB_MESSAGE_LIMIT,
    MAX_MESSAGE_BYTES,
)
from agent.limits import HUB_BILLING_UNIT as UNIT

IDENT = Identity(agent="agent-7f3a", ver="0.1.0", dev="gateway-0042", mod="SecurityModule")
U64 = (1 << 64) - 1


def core_batches(corpus_dir: Path, batch_bytes: int) -> list[bytes]:
    """The audit parser's batches for the device logs of the corpus."""
    from agent.native import AuditOptions, AuditParser

    parser = AuditParser(AuditOptions(batch_bytes=batch_bytes))
    batches: list[bytes] = []
    for name in ("device-raw.log", "device-enriched.log"):
        batches += parser.feed((corpus_dir / name).read_bytes())
    batches += parser.flush()
    assert batches, "the corpus gave no batches"
    return batches


def worst_drops(reasons: int = MAX_DROP_REASONS + 1) -> dict[str, int]:
    return {f"r{i:02d}".ljust(MAX_REASON_LEN, "x"): U64 for i in range(reasons)}


def test_round_trip_of_core_batches(corpus_dir: Path) -> None:
    drops = {"sink_full": 3, "outbox_full_batches": 1, "outbox_full_events": 120}
    for seq, batch in enumerate(core_batches(corpus_dir, 64 * 1024)):
        prio = PRIORITIES[seq % 3]
        env = wrap(batch, IDENT, seq=seq, ts=1_700_000_000_000 + seq, prio=prio,
                   coll=["Process", "NetworkActivity"], drops=drops, boot=4)
        # The event array is appended verbatim: the envelope ends with the batch's bytes.
        assert env.endswith(batch)
        out = decode_envelope(env)
        assert out["events"] == msgpack.unpackb(batch, raw=False, strict_map_key=False)
        assert {k: v for k, v in out.items() if k != "events"} == {
            "v": SCHEMA_VERSION, "agent": IDENT.agent, "ver": IDENT.ver, "dev": IDENT.dev,
            "mod": IDENT.mod, "seq": seq, "boot": 4, "ts": 1_700_000_000_000 + seq,
            "prio": prio, "coll": ["Process", "NetworkActivity"], "drops": drops,
            "n": len(out["events"]),
        }


def test_sealer_uses_the_stamp() -> None:
    events = msgpack.packb([{"t": "exec", "ts": 5}, {"t": "exit", "ts": 6}])
    seal = sealer(events, IDENT, "Low", "Process")
    env = decode_envelope(seal(Stamp(seq=41, boot=2, ts=999, drops={"sink_full": 1})))
    assert (env["seq"], env["boot"], env["ts"], env["drops"]) == (41, 2, 999, {"sink_full": 1})
    assert env["coll"] == ["Process"] and env["prio"] == "Low" and env["n"] == 2
    with pytest.raises(EnvelopeError):
        sealer(b"\x81\xa1t\xa4exec", IDENT, "Low", "Process")  # a map, not an array


@pytest.mark.parametrize("max_message", [DEFAULT_MAX_MESSAGE_BYTES, 64 * 1024, 20_000])
def test_largest_core_batches_fit_the_message_limit(corpus_dir: Path, max_message: int) -> None:
    """The core filled to batch_bytes_for(max) plus the largest envelope stays within max."""
    coll = ["Process", "NetworkActivity", "Login", "ListeningPorts"]
    overhead = envelope_overhead(IDENT, coll)
    batch_bytes = batch_bytes_for(max_message, overhead)
    batches = core_batches(corpus_dir, batch_bytes)
    largest = max(len(b) for b in batches)
    assert largest <= batch_bytes
    # The corpus fills batches: the largest is close to the limit, so the check is real.
    assert largest > batch_bytes - 4096
    for batch in batches:
        env = wrap(batch, IDENT, seq=U64, ts=U64, prio="Medium", coll=coll,
                   drops=worst_drops(), boot=U64)
        assert len(env) <= max_message
        assert len(env) - len(batch) <= overhead


def test_overhead_bound_is_tight() -> None:
    coll = ["Process"]
    overhead = envelope_overhead(IDENT, coll)
    # The header of an array of 2**32 - 1 events (wrap reads only the header).
    events = b"\xdd" + struct.pack(">I", (1 << 32) - 1)
    worst = wrap(events, IDENT, seq=U64, ts=U64, prio="Medium", coll=coll, drops=worst_drops(),
                 boot=U64)
    assert len(worst) - len(events) == overhead
    small = wrap(events, IDENT, seq=0, ts=0, prio="Low", coll=coll, drops={})
    assert len(small) - len(events) < overhead


def test_batch_bytes_pack_whole_units() -> None:
    overhead = envelope_overhead(IDENT, ["Process"])
    assert DEFAULT_MAX_MESSAGE_BYTES < HUB_MESSAGE_LIMIT
    assert DEFAULT_MAX_MESSAGE_BYTES == FIELDS["Upload_MaxMessageBytes"].default
    for max_message in (DEFAULT_MAX_MESSAGE_BYTES, HUB_MESSAGE_LIMIT - 1, 100_000, 8192, 4096 * 3 + 17):
        bb = batch_bytes_for(max_message, overhead)
        full = bb + overhead
        # A full batch with the largest envelope ends exactly at a unit boundary, within the
        # budget, and no whole unit of the budget is left unused.
        assert full % UNIT == 0
        assert full <= max_message
        assert max_message - full < UNIT
    # A budget under one unit is used as it is.
    assert batch_bytes_for(3000, 500) == 2500
    # When rounding down would leave less than the core's minimum, the budget is not rounded.
    assert batch_bytes_for(4096 + 1500, 3500) == 4096 + 1500 - 3500
    with pytest.raises(ValueError):
        batch_bytes_for(2000, 1500)
    with pytest.raises(ValueError):
        batch_bytes_for(0, 10)
    assert batch_bytes_for(CORE_MIN_BATCH_BYTES + 10, 10) == CORE_MIN_BATCH_BYTES


def test_event_count_reads_every_array_header() -> None:
    for n in (0, 1, 15, 16, 300, 70_000):
        packed = msgpack.packb([1] * n)
        assert event_count(packed) == n
    assert event_count(b"\xdd" + struct.pack(">I", 7) + msgpack.packb(1) * 7) == 7
    for bad in (b"", b"\x80", b"\xdc\x00", b"\xdd\x00\x00", b"\xc0"):
        with pytest.raises(EnvelopeError):
            event_count(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prio": "Urgent"},
        {"seq": -1},
        {"seq": U64 + 1},
        {"ts": -5},
        {"drops": {"": 1}},
        {"drops": {"x" * (MAX_REASON_LEN + 1): 1}},
        {"drops": {"sink_full": -1}},
        {"drops": worst_drops(MAX_DROP_REASONS + 2)},
        {"coll": [1]},
    ],
)
def test_wrap_rejects_what_an_envelope_cannot_hold(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"seq": 1, "ts": 2, "prio": "High", "coll": "Process", "drops": {}}
    args.update(kwargs)
    with pytest.raises(EnvelopeError):
        wrap(msgpack.packb([]), IDENT, **args)


def test_decode_rejects_what_is_not_an_envelope() -> None:
    good = wrap(msgpack.packb([{"t": "x"}]), IDENT, seq=1, ts=2, prio="High", coll="P", drops={})
    assert decode_envelope(good)["n"] == 1
    env = msgpack.unpackb(good, raw=False)
    for bad in (
        b"",
        b"\xc1",
        good[:-1],
        msgpack.packb([1, 2]),
        msgpack.packb({**env, "n": 2}),
        msgpack.packb({**env, "v": SCHEMA_VERSION + 1}),
        msgpack.packb({k: v for k, v in env.items() if k != "seq"}),
    ):
        with pytest.raises(EnvelopeError):
            decode_envelope(bad)


def test_drop_ledger_accumulates_takes_and_folds() -> None:
    ledger = DropLedger()
    assert not ledger
    ledger.add("sink_full", 3)
    ledger.add("sink_full", 2)
    ledger.add("audit_lost", 0)  # nothing dropped: no key
    assert ledger.peek() == {"sink_full": 5}
    assert ledger.take() == {"sink_full": 5}
    assert ledger.take() == {}
    for i in range(MAX_DROP_REASONS):
        ledger.add(f"reason{i}", i + 1)
    ledger.add("one_too_many", 7)
    ledger.add("and_another", 1)
    ledger.add("reason0", 1)  # a known reason keeps its own key
    counts = ledger.peek()
    assert counts[OTHER_REASON] == 8
    assert counts["reason0"] == 2
    assert len(counts) == MAX_DROP_REASONS + 1
    # The folded map still fits an envelope (the size bound assumes this).
    wrap(msgpack.packb([]), IDENT, seq=0, ts=0, prio="Low", coll="P", drops=counts)
    ledger.subtract({"reason0": 5, "reason1": 1, "absent": 3})
    counts = ledger.peek()
    assert "reason0" not in counts and counts["reason1"] == 1 and "absent" not in counts
    with pytest.raises(ValueError):
        ledger.add("x" * (MAX_REASON_LEN + 1))
    with pytest.raises(ValueError):
        ledger.add("sink_full", -1)


def test_wrap_keeps_memory_flat() -> None:
    from leakcheck import assert_rss_flat

    events = msgpack.packb([{"t": "exec", "argv": ["a" * 50] * 4}] * 20)

    def once() -> None:
        decode_envelope(wrap(events, IDENT, seq=1, ts=2, prio="High", coll="P",
                             drops={"sink_full": 1}))

    assert_rss_flat(once, name="wrap+decode_envelope")


def test_the_cores_default_batch_size_is_the_default_message_size() -> None:
    # native/sink.c and native/audit.c write the number themselves; agent.limits is the one
    # the Python side uses (Upload_MaxMessageBytes, inventory batches, the uplink).
    from agent._core import ffi, lib

    sink = ffi.new("struct am_sink_options *")
    lib.am_sink_default_options(sink)
    audit = ffi.new("struct am_audit_options *")
    lib.am_audit_default_options(audit)
    assert sink.batch_bytes == audit.batch_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert DEFAULT_MAX_MESSAGE_BYTES % UNIT == 0
    assert DEFAULT_MAX_MESSAGE_BYTES < MAX_MESSAGE_BYTES < HUB_MESSAGE_LIMIT
    assert FIELDS["Upload_MaxMessageBytes"].default == DEFAULT_MAX_MESSAGE_BYTES
