"""The outbox's parts, each alone: the batch-file codec (agent.outbox.codec), the state journal
(agent.outbox.journal) and the eviction policy (agent.outbox.eviction). tests/test_outbox.py
tests them together, through Outbox, under SIGKILL."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest

from agent.outbox.codec import (
    HEADER_BYTES,
    BatchFile,
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
    STATE_SLOT,
    JournalError,
    JournalRecord,
    StateJournal,
    decode_slot,
    encode_slot,
    next_seq_at_open,
    stored_after_state,
)

COUNTERS = ("written", "confirmed", "expired")

# --- codec ------------------------------------------------------------------------------------


def test_a_batch_file_decodes_to_what_was_encoded() -> None:
    payload = msgpack.packb({"v": 1, "events": [1, 2, 3]})
    data = encode_batch_file("Medium", 42, 1_700_000_000_123, 3, {"sink_full": 7}, payload)
    assert len(data) == HEADER_BYTES + len(msgpack.packb({"sink_full": 7})) + len(payload)
    assert decode_batch_file(data) == BatchFile("Medium", 42, 1_700_000_000_123, 3,
                                                {"sink_full": 7}, payload)
    assert decode_batch_file(data)[5] == payload  # `micro-agent decode` indexes the tuple
    assert decode_named_batch_file(batch_name("Medium", 42), data).seq == 42


def test_batch_names_round_trip_and_nothing_else_is_a_batch_name() -> None:
    for prio in ("High", "Medium", "Low"):
        assert parse_batch_name(batch_name(prio, 7)) == (prio, 7)
    assert batch_name("High", 7) == "high-00000000000000000007.batch"
    for name in ("state", "lock", "high-7.batch", "HIGH-00000000000000000007.batch",
                 "high-00000000000000000007.batch.tmp", "urgent-00000000000000000007.batch"):
        assert parse_batch_name(name) is None


def test_every_single_bit_flip_and_every_truncation_is_detected() -> None:
    data = encode_batch_file("High", 3, 5, 2, {"lost": 1}, b"\x92\x01\x02" * 20)
    for offset in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[offset] ^= bit
            with pytest.raises(ValueError):
                decode_batch_file(bytes(bad))
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode_batch_file(data[:cut])
    with pytest.raises(ValueError):
        decode_batch_file(data + b"\0")


def test_a_well_formed_file_under_another_name_is_rejected() -> None:
    data = encode_batch_file("High", 3, 5, 2, {}, b"\x90")
    with pytest.raises(ValueError, match="does not match"):
        decode_named_batch_file(batch_name("Low", 3), data)
    with pytest.raises(ValueError, match="does not match"):
        decode_named_batch_file(batch_name("High", 4), data)
    with pytest.raises(ValueError, match="not a batch file name"):
        decode_named_batch_file("notes.txt", data)


def test_a_bad_drops_map_is_rejected_even_with_a_good_checksum() -> None:
    # Built by hand with a correct CRC: the codec must not trust the checksum alone.
    good = encode_batch_file("Low", 1, 2, 0, {"x": 1}, b"\x90")
    blob = msgpack.packb({"x": -1})
    head = bytearray(good[: HEADER_BYTES - 4])
    head[6:8] = len(blob).to_bytes(2, "little")
    crc = zlib.crc32(b"\x90", zlib.crc32(blob, zlib.crc32(bytes(head))))
    data = bytes(head) + crc.to_bytes(4, "little") + blob + b"\x90"
    with pytest.raises(ValueError, match="drops map"):
        decode_batch_file(data)


def test_the_event_count_of_a_half_written_file() -> None:
    data = encode_batch_file("Low", 9, 1, 42, {}, b"\x80" * 100)
    assert events_of_partial(data[:HEADER_BYTES]) == 42
    assert events_of_partial(data[:60]) == 42
    assert events_of_partial(data[: HEADER_BYTES - 1]) == 0
    assert events_of_partial(b"XXXX" + data[4:HEADER_BYTES]) == 0


# --- journal ----------------------------------------------------------------------------------


def record(**kw: object) -> JournalRecord:
    base = JournalRecord(next_seq=5, boot=2, counters={"written": 5, "confirmed": 3, "expired": 0},
                         drops={"sink_full": 4})
    for key, value in kw.items():
        setattr(base, key, value)
    return base


def test_a_slot_decodes_to_its_record_and_a_damaged_slot_to_nothing() -> None:
    rec = record(doomed=[batch_name("High", 1)], aside=["notes.txt"])
    data = encode_slot(7, rec)
    assert decode_slot(data, COUNTERS) == (7, rec)
    for offset in range(len(data)):
        bad = bytearray(data)
        bad[offset] ^= 0x10
        assert decode_slot(bytes(bad), COUNTERS) is None
    assert decode_slot(data[:-1], COUNTERS) is None
    assert decode_slot(bytes(STATE_SLOT), COUNTERS) is None


def test_a_slot_with_a_path_in_its_removal_log_is_not_trusted() -> None:
    for names in (["../etc/passwd"], [""], [".."], "high-1.batch", [1]):
        assert decode_slot(encode_slot(1, record(doomed=names)), COUNTERS) is None


def test_counters_unknown_to_the_reader_are_ignored_and_missing_ones_are_zero() -> None:
    data = encode_slot(1, record(counters={"written": 2, "retired": 9}))
    gen_rec = decode_slot(data, COUNTERS)
    assert gen_rec is not None
    assert gen_rec[1].counters == {"written": 2, "confirmed": 0, "expired": 0}


def test_a_state_larger_than_a_slot_is_refused() -> None:
    huge = [batch_name("High", i) for i in range(MAX_DOOMED * 3)]
    with pytest.raises(JournalError):
        encode_slot(1, record(doomed=huge))
    # The bound the outbox relies on: MAX_DOOMED names and a full drop ledger fit.
    full = record(doomed=[batch_name("High", 2**63 + i) for i in range(MAX_DOOMED)],
                  drops={f"{i:02d}".ljust(40, "r"): 2**64 - 1 for i in range(25)})
    assert len(encode_slot(2**64 - 1, full)) <= STATE_SLOT


def open_journal(tmp_path: Path, lost: list[Path] | None = None
                 ) -> tuple[StateJournal, JournalRecord | None, bool]:
    journal = StateJournal(tmp_path / "state", tmp_path, COUNTERS)

    def on_lost(path: Path) -> None:
        assert lost is not None, "the state was lost"
        lost.append(path)
        path.rename(tmp_path / "lost-state")

    found, was_lost = journal.open(on_lost)
    return journal, found, was_lost


def test_writes_alternate_between_two_slots_and_the_newest_whole_one_wins(tmp_path: Path) -> None:
    journal, found, lost = open_journal(tmp_path)
    assert (found, lost) == (None, False)
    assert (tmp_path / "state").stat().st_size == 2 * STATE_SLOT
    for n in range(1, 4):
        journal.write(record(next_seq=n))
    journal.close()
    assert (tmp_path / "state").stat().st_size == 2 * STATE_SLOT  # written in place
    journal, found, _ = open_journal(tmp_path)
    assert found is not None and found.next_seq == 3 and journal.generation == 3
    journal.close()
    # Generation 3 went into slot 1: tear it, and slot 0 (generation 2) is the state.
    data = bytearray((tmp_path / "state").read_bytes())
    data[STATE_SLOT + 30] ^= 0xFF
    (tmp_path / "state").write_bytes(bytes(data))
    journal, found, _ = open_journal(tmp_path)
    assert found is not None and found.next_seq == 2 and journal.generation == 2
    journal.write(record(next_seq=4))  # overwrites the torn slot
    journal.close()
    journal, found, _ = open_journal(tmp_path)
    assert found is not None and found.next_seq == 4
    journal.close()


def test_a_state_file_with_no_whole_slot_is_lost_and_made_again(tmp_path: Path) -> None:
    journal, _, _ = open_journal(tmp_path)
    journal.write(record())
    journal.close()
    (tmp_path / "state").write_bytes(b"\xff" * (2 * STATE_SLOT))
    lost: list[Path] = []
    journal, found, was_lost = open_journal(tmp_path, lost)
    assert (found, was_lost, lost) == (None, True, [tmp_path / "state"])
    assert (tmp_path / "lost-state").read_bytes() == b"\xff" * (2 * STATE_SLOT)
    assert (tmp_path / "state").read_bytes() == bytes(2 * STATE_SLOT)
    journal.write(record(next_seq=9))
    journal.close()
    journal, found, _ = open_journal(tmp_path)
    assert found is not None and found.next_seq == 9
    journal.close()


def test_a_new_all_zero_file_is_not_lost(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(bytes(2 * STATE_SLOT))
    journal, found, was_lost = open_journal(tmp_path)
    assert (found, was_lost) == (None, False)
    journal.close()


def test_a_short_file_with_a_whole_slot_is_kept_and_made_well_formed(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(encode_slot(5, record(next_seq=11)))
    journal, found, _ = open_journal(tmp_path)
    assert found is not None and found.next_seq == 11
    assert (tmp_path / "state").stat().st_size == 2 * STATE_SLOT
    journal.write(record(next_seq=12))
    journal.close()
    journal, found, _ = open_journal(tmp_path)
    assert found is not None and found.next_seq == 12
    journal.close()


def test_the_next_sequence_number_at_open() -> None:
    assert next_seq_at_open(0, []) == 0
    assert next_seq_at_open(7, []) == 7  # every batch delivered: the state remembers
    assert next_seq_at_open(7, [3, 5]) == 7
    assert next_seq_at_open(7, [3, 7, 8]) == 9  # stored after the last state write
    assert [s for s in (5, 6, 7, 8) if stored_after_state(s, 7)] == [7, 8]


KILLED_WRITER = """
import sys
from pathlib import Path
from agent.outbox.journal import JournalRecord, StateJournal
journal = StateJournal(Path(sys.argv[1]) / "state", Path(sys.argv[1]), ("written",))
found, _ = journal.open(lambda path: sys.exit("lost"))
n = found.next_seq if found else 0
print(n, flush=True)
while True:
    n += 1
    journal.write(JournalRecord(next_seq=n, counters={"written": n}, drops={"x": n}))
"""


def test_sigkill_during_writes_leaves_the_last_or_the_one_before(tmp_path: Path) -> None:
    """A child writes states 1, 2, 3, ... until SIGKILL: at the next open the state is whole
    (each record's fields agree) and never goes back: a torn slot falls back to the one
    before, which is still at least what the child found when it opened."""
    rng = random.Random(10)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        started = int(proc.stdout.readline())
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        proc.wait()
        journal, found, lost = open_journal(tmp_path)
        journal.close()
        assert not lost
        if found is None:  # killed before its first write ever finished
            assert started == 0
            continue
        assert found.next_seq >= started
        assert found.counters["written"] == found.drops["x"] == found.next_seq


# --- eviction ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    id: str
    prio: str
    seq: int
    created_ms: int
    size: int


def stored(*specs: tuple[str, int, int]) -> list[Stored]:
    """(prio, seq, size) each; created at seq * 1000 ms."""
    return [Stored(batch_name(p, s), p, s, s * 1000, size) for p, s, size in specs]


def test_room_is_made_from_the_lowest_priority_and_oldest_first() -> None:
    policy = EvictionPolicy(max_bytes=400, timeout_ms=60_000)
    batches = stored(("Low", 0, 100), ("Medium", 1, 100), ("High", 2, 100), ("Low", 3, 100))
    total = sum(b.size for b in batches)
    assert policy.room_for(batches, total, "High", 0) == []
    assert policy.room_for(batches, total, "High", 100) == [batch_name("Low", 0)]
    assert policy.room_for(batches, total, "High", 250) == [
        batch_name("Low", 0), batch_name("Low", 3), batch_name("Medium", 1)]
    # Never a batch of a higher priority than the new one.
    assert policy.room_for(batches, total, "Medium", 300) == [
        batch_name("Low", 0), batch_name("Low", 3), batch_name("Medium", 1)]
    assert policy.room_for(batches, total, "Medium", 301) is None
    assert policy.room_for(batches, total, "Low", 201) is None
    assert policy.room_for(batches, total, "Low", 150) == [batch_name("Low", 0), batch_name("Low", 3)]


def test_a_batch_larger_than_the_outbox_is_refused_and_the_bound_can_change() -> None:
    policy = EvictionPolicy(max_bytes=400, timeout_ms=1)
    assert not policy.refuses(400) and policy.refuses(401)
    policy.max_bytes = 1000  # a twin patch on a live outbox
    assert not policy.refuses(401)
    assert policy.room_for(stored(("Low", 0, 500)), 500, "Low", 500) == []


def test_expiry_is_strictly_older_than_the_timeout_oldest_first() -> None:
    policy = EvictionPolicy(max_bytes=1 << 20, timeout_ms=60_000)
    batches = stored(("High", 3, 1), ("Low", 1, 1), ("Medium", 2, 1))  # created 3000, 1000, 2000
    assert policy.expired(batches, 61_000) == []
    assert policy.expired(batches, 62_000 + 1) == [batch_name("Low", 1), batch_name("Medium", 2)]
    policy.timeout_ms = 0
    assert policy.expired(batches, 3_000) == [batch_name("Low", 1), batch_name("Medium", 2)]
