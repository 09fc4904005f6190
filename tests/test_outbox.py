"""The outbox (src/agent/outbox/): crash safety under SIGKILL, exact eviction and expiry,
corrupt and half-written files, a full disk, sequence numbers and counters across restarts.

Real files on the real file system; the kill test kills a real child process
(tests/outbox_writer.py); the full-disk test mounts a small tmpfs (root)."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.envelope import Identity, decode_envelope, sealer
from agent.outbox import (
    HEADER_BYTES,
    STATE_HEADER,
    STATE_SLOT,
    BatchInfo,
    Outbox,
    OutboxBusy,
    OutboxCounters,
    OutboxStateError,
    batch_name,
    encode_batch_file,
)
from agent.record import asdict

TESTS = Path(__file__).resolve().parent
IDENT = Identity(agent="test-agent", ver="0.1.0", dev="dev-1", mod="mod-1")
HOUR = 3600.0


def events(n: int, size: int | None = None) -> bytes:
    """A core-style batch (array32 header) of n events; with `size`, padded to exactly that
    many bytes so that batch sizes do not depend on n."""
    maps = [msgpack.packb({"t": "test", "i": i}) for i in range(n)]
    if size is not None:
        # The first event gets a "pad" string, always in the str16 form so that its length
        # is exactly what is left.
        head = b"\x83" + msgpack.packb("t") + msgpack.packb("test") + msgpack.packb("i") + b"\x00"
        head += msgpack.packb("pad") + b"\xda"
        pad = size - 5 - len(head) - 2 - sum(len(m) for m in maps[1:])
        assert 0 <= pad <= 0xFFFF
        maps[0] = head + struct.pack(">H", pad) + b"p" * pad
    data = b"\xdd" + struct.pack(">I", n) + b"".join(maps)
    if size is not None:
        assert len(data) == size, (len(data), size)
    return data


def put(ob: Outbox, prio: str, n: int, *, size: int | None = None, now: int | None = None
        ) -> BatchInfo | None:
    return ob.put(prio, sealer(events(n, size), IDENT, prio, "Test"), n, now=now)


def envelope(ob: Outbox, info: BatchInfo) -> dict[str, Any]:
    batch = ob.read(info.id)
    assert batch is not None
    env = decode_envelope(batch.payload)
    assert env["seq"] == info.seq and env["n"] == info.events == len(env["events"])
    return env


def counters(**nonzero: int) -> OutboxCounters:
    return OutboxCounters(**nonzero)


def test_send_order_confirm_and_restart(tmp_path: Path) -> None:
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.boot == 1 and ob.next_seq == 0
        for prio, n in (("Low", 1), ("High", 2), ("Medium", 3), ("High", 4), ("Low", 5)):
            assert put(ob, prio, n) is not None
        order = [(i.prio, i.seq) for i in ob.pending()]
        assert order == [("High", 1), ("High", 3), ("Medium", 2), ("Low", 0), ("Low", 4)]
        depth = ob.depth()
        assert [depth[p].count for p in ("High", "Medium", "Low")] == [2, 1, 2]
        assert sum(d.bytes for d in depth.values()) == ob.total_bytes()
        first = ob.next_batch()
        assert first is not None and first.info.seq == 1
        assert decode_envelope(first.payload)["events"] == msgpack.unpackb(events(2))
        assert ob.confirm(first.info.id)
        assert not ob.confirm(first.info.id)
        assert not ob.confirm("high-00000000000000000099.batch")
        assert not (ob.dir / first.info.id).exists()
        before = ob.pending()
        with pytest.raises(OutboxBusy):
            Outbox(tmp_path, 1 << 20, HOUR)
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.boot == 2 and ob.next_seq == 5
        assert ob.pending() == before
        assert ob.counters() == counters(written=5, confirmed=1)
        info = put(ob, "High", 1)
        assert info is not None and info.seq == 5
        assert envelope(ob, info)["boot"] == 2


def test_confirm_many_is_one_state_write(tmp_path: Path) -> None:
    """A group commit: the batches delivered since the uplink's last turn are removed with one
    state write; ids not stored (unknown, repeated, confirmed already) are left out of the
    answer; after a restart they are gone and counted once."""
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        infos = [put(ob, "Low", n) for n in (1, 2, 3, 4)]
        ids = [i.id for i in infos if i is not None]
        assert len(ids) == 4
        assert ob.confirm(ids[0])
        generation = ob._journal.generation
        removed = ob.confirm_many([ids[0], ids[1], ids[2], ids[2], "low-00000000000000000099.batch"])
        assert removed == ids[1:3]
        assert ob._journal.generation == generation + 1
        assert [i.id for i in ob.pending()] == ids[3:]
        assert ob.confirm_many([]) == [] and ob._journal.generation == generation + 1
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert [i.id for i in ob.pending()] == ids[3:]
        assert ob.counters() == counters(written=4, confirmed=3)


def test_stored_batches_are_announced_and_first_read_from_memory(tmp_path: Path) -> None:
    """on_stored runs after each stored batch (the uplink hands batches over as they are
    stored); the first read of one of the newest batches comes from memory, later reads and
    older batches from the file, checked; pending(limit) is the head of the send order."""
    from agent.outbox import FRESH_BATCHES

    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        seen: list[int] = []
        ob.on_stored = lambda: seen.append(ob.next_seq)
        infos = [put(ob, "Low", 1) for _ in range(FRESH_BATCHES + 2)]
        assert seen == list(range(1, FRESH_BATCHES + 3))
        assert ob.pending(3) == ob.pending()[:3] and ob.pending(0) == []
        assert put(ob, "High", 1) is not None and ob.pending(1)[0].prio == "High"
        newest, oldest = infos[-1], infos[0]
        assert newest is not None and oldest is not None
        for info in (newest, oldest):  # the file goes bad on disk after it was stored
            path = ob.dir / info.id
            data = path.read_bytes()
            path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        batch = ob.read(newest.id)  # from memory: what was stored
        assert batch is not None and decode_envelope(batch.payload)["seq"] == newest.seq
        assert ob.read(newest.id) is None  # the second read is the file's: set aside
        assert ob.read(oldest.id) is None  # past the bound: the file's
        assert ob.counters().corrupt == 2
        # A listener that fails does not undo the put.
        ob.on_stored = lambda: 1 // 0  # type: ignore[func-returns-value]
        assert put(ob, "Low", 1) is not None


def test_one_directory_fsync_covers_the_batches_stored_before_anything_depends_on_them(
    tmp_path: Path, dir_fsyncs: list[Path]
) -> None:
    """Each batch file is fsynced before its rename; the directory (the renames) is fsynced
    once for the batches stored since, before any of them is read (handed to an uplink),
    before next_seq is given out (a checkpoint records it), before a state write, at close."""
    synced = dir_fsyncs
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        synced.clear()
        infos = [put(ob, "Low", 1) for _ in range(10)]
        assert synced == []  # ten puts, no directory fsync yet
        assert ob.next_seq == 10 and synced == [ob.dir]
        assert ob.next_seq == 10 and len(synced) == 1  # nothing new: no fsync
        first = infos[0]
        assert first is not None and ob.read(first.id) is not None and len(synced) == 1
        info = put(ob, "High", 1)
        assert info is not None and len(synced) == 1
        assert ob.read(info.id) is not None and len(synced) == 2  # read after a put: synced
        put(ob, "Low", 1)
        ob.flush_state()  # a state write records next_seq: synced first
        assert len(synced) == 3
        put(ob, "Low", 1)
    assert len(synced) == 4  # close
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.next_seq == 13 and len(ob.pending()) == 13


def test_a_failed_directory_fsync_is_counted_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory fsync fails once (EIO, as a failing flash does): the batch is still read
    for sending, the failure is counted, and the next dependent step fsyncs again, so the
    renames become durable as soon as the disk lets them."""
    import errno

    import agent.outbox as outbox_module

    real = outbox_module.fsync_dir
    calls: list[str] = []

    def failing_once(path: Path) -> None:
        calls.append("fail" if not calls else "ok")
        if calls[-1] == "fail":
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(outbox_module, "fsync_dir", failing_once)
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        calls.clear()
        info = put(ob, "High", 3)
        assert info is not None
        batch = ob.read(info.id)
        assert batch is not None and batch.info == info  # handed over despite the failure
        assert calls == ["fail"] and ob.counters() == counters(written=1, sync_errors=1)
        assert ob.next_seq == 1 and calls == ["fail", "ok"]  # still dirty: tried again
        assert ob.next_seq == 1 and calls == ["fail", "ok"]  # durable now: no more fsyncs
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.counters().sync_errors == 1  # persisted with the other counters


def test_eviction_order_and_counters_are_exact(tmp_path: Path) -> None:
    """Room for exactly four batches; each new batch evicts the oldest of the lowest priority
    not above its own, or is rejected; every drop reaches a later envelope."""
    size = 800
    max_bytes = 4600  # 4 files of 800 + envelope + header + drops map fit, 5 never do
    with Outbox(tmp_path, max_bytes, HOUR) as ob:
        infos: dict[int, BatchInfo] = {}

        def stored(prio: str, n: int) -> BatchInfo:
            info = put(ob, prio, n, size=size)
            assert info is not None
            infos[info.seq] = info
            return info

        for prio, n in (("Low", 10), ("Medium", 11), ("High", 12), ("Low", 13)):
            stored(prio, n)
        assert len(ob.pending()) == 4 and ob.counters().evicted_full == 0
        h4 = stored("High", 14)  # evicts Low 0
        m5 = stored("Medium", 15)  # evicts Low 3
        assert put(ob, "Low", 16, size=size) is None  # only higher priorities stored: rejected
        m6 = stored("Medium", 17)  # evicts Medium 1, the oldest of its own priority
        h7 = stored("High", 18)  # evicts Medium 5
        h8 = stored("High", 19)  # evicts Medium 6
        assert put(ob, "Medium", 20, size=size) is None  # rejected
        h9 = stored("High", 21)  # evicts High 2: nothing lower is left
        assert [m6.seq, h9.seq] == [6, 9]
        assert [i.seq for i in ob.pending()] == [4, 7, 8, 9]
        big = put(ob, "High", 3, size=max_bytes)  # larger than the outbox on its own
        assert big is None
        assert ob.counters() == counters(written=10, evicted_full=6, rejected_full=2, refused=1)
        assert ob.next_seq == 10

        # Each envelope reports the drops since the previous stored batch: an eviction made
        # while storing batch N shows in batch N+1, and the drops a batch carried are reported
        # again when that batch itself is evicted.
        assert envelope(ob, h4)["drops"] == {}
        assert m5.seq == 5  # it carried {1 batch, 10 events} (Low 0) and was evicted
        assert envelope(ob, h7)["drops"] == {
            "outbox_full_batches": 1, "outbox_full_events": 11,  # Medium 1
        }
        assert envelope(ob, h8)["drops"] == {
            # Medium 5 (15 events) and what it carried (Low 0: 1 batch, 10 events)
            "outbox_full_batches": 2, "outbox_full_events": 25,
        }
        assert envelope(ob, h9)["drops"] == {
            # Medium 6 (17 events) and what it carried (Low 3: 13, rejected Low: 16, and
            # Medium 1's... no: Medium 6 carried Low 3 and the rejected Low), rejected Medium
            "outbox_full_batches": 2, "outbox_full_events": 17 + 13 + 16 + 20,
        }
        assert ob.drops.peek() == {
            "outbox_full_batches": 1, "outbox_full_events": 12,  # High 2
            "refused_events": 3,
        }
        # The receiver's proof: the sequence numbers it never sees are exactly the batches the
        # envelopes (and the ledger still waiting for the next one) report.
        received = [4, 7, 8, 9]
        reported = sum(envelope(ob, infos[s])["drops"].get("outbox_full_batches", 0)
                       for s in received) + ob.drops.peek()["outbox_full_batches"]
        assert reported == len(set(range(ob.next_seq)) - set(received))
    with Outbox(tmp_path, max_bytes, HOUR) as ob:
        assert ob.counters() == counters(written=10, evicted_full=6, rejected_full=2, refused=1)
        assert ob.drops.peek()["outbox_full_events"] == 12
        assert [i.seq for i in ob.pending()] == [4, 7, 8, 9]


def test_expiry_is_exact(tmp_path: Path) -> None:
    timeout_ms = 60_000
    with Outbox(tmp_path, 1 << 20, timeout_ms / 1000) as ob:
        low = put(ob, "Low", 3, now=1_000)
        high = put(ob, "High", 4, now=2_000)
        mid = put(ob, "Medium", 5, now=3_000)
        assert low and high and mid and low.created_ms == 1_000
        assert ob.expire(now=1_000 + timeout_ms) == 0  # exactly the timeout: still valid
        assert ob.expire(now=1_000 + timeout_ms + 1) == 1
        assert [i.seq for i in ob.pending()] == [high.seq, mid.seq]
        assert ob.counters().expired == 1
        assert ob.drops.peek() == {"expired_batches": 1, "expired_events": 3}
    with Outbox(tmp_path, 1 << 20, timeout_ms / 1000) as ob:
        assert [i.created_ms for i in ob.pending()] == [2_000, 3_000]
        # put expires what is due before it takes the ledger: its envelope reports both.
        late = put(ob, "Low", 1, now=3_000 + timeout_ms + 1)
        assert late is not None
        assert envelope(ob, late)["drops"] == {"expired_batches": 3, "expired_events": 12}
        assert [i.seq for i in ob.pending()] == [late.seq]
        assert ob.counters() == counters(written=4, expired=3)
        assert not ob.drops


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corrupt_files_are_set_aside_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        infos = [put(ob, "High", n + 1) for n in range(8)]
    assert all(infos)
    files = [tmp_path / "outbox" / i.id for i in infos if i]
    _flip(files[0], len(files[0].read_bytes()) - 3)  # a payload byte
    _flip(files[1], 18)  # created_ms in the header
    files[2].write_bytes(files[2].read_bytes()[:-10])  # truncated
    files[3].write_bytes(b"XXXX" + files[3].read_bytes()[4:])  # wrong magic
    files[4].write_bytes(b"")  # zero length
    files[5].rename(files[5].with_name(batch_name("Low", 5)))  # header says High
    (tmp_path / "outbox" / "notes.txt").write_bytes(b"not a batch")
    with Outbox(tmp_path, 1 << 20, HOUR, keep_corrupt=4) as ob:
        assert [i.seq for i in ob.pending()] == [6, 7]
        c = ob.counters()
        assert (c.corrupt, c.written) == (7, 8)
        assert ob.drops.peek() == {"corrupt_batches": 6}  # notes.txt was never a batch
        assert len(list((tmp_path / "outbox" / "corrupt").iterdir())) == 4
        assert ob.next_seq == 8
        # A file that goes bad while the outbox is open is caught when it is read.
        _flip(ob.dir / ob.pending()[1].id, HEADER_BYTES + 2)
        assert ob.read(ob.pending()[1].id) is None
        assert ob.counters().corrupt == 8
        assert ob.drops.peek() == {"corrupt_batches": 7, "corrupt_events": 8}
        batch = ob.next_batch()
        assert batch is not None and batch.info.seq == 6
        assert ob.next_batch() == batch  # still pending until confirmed
        assert ob.confirm(batch.info.id) and ob.next_batch() is None


def _state_slots(path: Path) -> list[tuple[int, int]]:
    """(generation, offset) of the whole slots of a state file, newest first."""
    data = path.read_bytes()
    slots = []
    for offset in (0, STATE_SLOT):
        magic, _, gen, _, _ = STATE_HEADER.unpack_from(data, offset)
        if magic == b"AMOS":
            slots.append((gen, offset))
    return sorted(slots, reverse=True)


def test_torn_state_write_falls_back_to_the_other_slot(tmp_path: Path) -> None:
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        for n in range(3):
            put(ob, "Medium", n + 1)
        ob.drops.add("sink_full", 9)
        ob.flush_state()
    state = tmp_path / "outbox" / "state"
    (gen, newest), (older_gen, _) = _state_slots(state)
    assert gen == older_gen + 1
    _flip(state, newest + STATE_HEADER.size + 1)  # as if close() had died mid-write
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.counters() == counters(written=3)
        assert ob.drops.peek() == {"sink_full": 9}
        assert ob.next_seq == 3 and ob.boot == 2


def test_lost_state_file_is_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        for n in range(3):
            put(ob, "Medium", n + 1)
        ob.drops.add("sink_full", 9)
    state = tmp_path / "outbox" / "state"
    for _, offset in _state_slots(state):
        _flip(state, offset + STATE_HEADER.size + 1)
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        # The counters and drops it held are gone; the sequence continues from the files.
        assert ob.counters() == counters(written=3, state_lost=1)
        assert ob.drops.peek() == {"state_lost": 1}
        assert ob.next_seq == 3 and ob.boot == 1
        assert len(list((ob.dir / "corrupt").iterdir())) == 1
        info = put(ob, "Medium", 1)
        assert info is not None and envelope(ob, info)["drops"] == {"state_lost": 1}


def test_a_failed_state_write_removes_nothing(tmp_path: Path) -> None:
    """A removal is logged before any file goes: when the log write fails (here a real EBADF:
    the state file's descriptor swapped for a read-only one), confirm raises and the batch,
    the counters and the ledger stay as they were."""
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        info = put(ob, "High", 5)
        assert info is not None
        ob.drops.add("sink_full", 2)
        journal = ob._journal  # the state file moved into agent.outbox.journal
        writable = journal._fd
        journal._fd = os.open(ob.dir / "state", os.O_RDONLY)
        try:
            with pytest.raises(OutboxStateError):
                ob.confirm(info.id)
        finally:
            os.close(journal._fd)
            journal._fd = writable
        assert ob.pending() == [info] and (ob.dir / info.id).exists()
        assert ob.counters() == counters(written=1, state_errors=1)
        assert ob.drops.peek() == {"sink_full": 2}
        assert ob.confirm(info.id)
        assert ob.counters() == counters(written=1, confirmed=1, state_errors=1)


def test_send_order_survives_an_undone_removal_and_a_restart(tmp_path: Path) -> None:
    """pending() is kept in send order as batches come and go, without a sort: a removal undone
    by a failed state write puts the batch back in its place, and a restart finds the same
    order."""
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        for prio in ("Low", "High", "Low", "Medium", "High", "Low"):
            assert put(ob, prio, 1) is not None
        order = [(i.prio, i.seq) for i in ob.pending()]
        assert order == [("High", 1), ("High", 4), ("Medium", 3), ("Low", 0), ("Low", 2), ("Low", 5)]
        journal = ob._journal
        writable = journal._fd
        journal._fd = os.open(ob.dir / "state", os.O_RDONLY)
        try:
            with pytest.raises(OutboxStateError):
                ob.confirm_many([ob.pending()[0].id, ob.pending()[4].id])
        finally:
            os.close(journal._fd)
            journal._fd = writable
        assert [(i.prio, i.seq) for i in ob.pending()] == order
        assert ob.confirm(ob.pending()[4].id)
        del order[4]
        assert put(ob, "High", 1) is not None
        order.insert(2, ("High", 6))
        assert [(i.prio, i.seq) for i in ob.pending()] == order
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert [(i.prio, i.seq) for i in ob.pending()] == order


def test_half_written_files_are_removed_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        put(ob, "High", 2)
        put(ob, "Low", 3)
        seq = ob.next_seq
    # What a put killed in the middle of its write leaves: part of the file in tmp/.
    data = encode_batch_file("Low", seq, 5, 42, {}, b"\x80" * 100)
    (tmp_path / "outbox" / "tmp" / batch_name("Low", seq)).write_bytes(data[:60])
    # An unfinished creation of a state file.
    (tmp_path / "outbox" / "tmp" / "state.tmp").write_bytes(b"\0" * 100)
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.counters() == counters(written=2, half_written=1)
        assert ob.drops.peek() == {"half_written_events": 42}
        assert list((tmp_path / "outbox" / "tmp").iterdir()) == []
        # The number was never used for a stored batch: the next batch takes it.
        assert ob.next_seq == seq
        assert [i.seq for i in ob.pending()] == [0, 1]


def test_a_batch_stored_just_before_a_crash_is_counted_once(tmp_path: Path) -> None:
    """put() writes only the batch file; a crash before the next state write must still give
    exact counts: the file counts as written and the drops it carried are not reported twice."""
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        put(ob, "High", 1)
        ob.drops.add("sink_full", 4)
        ob.flush_state()
    state_before = (tmp_path / "outbox" / "state").read_bytes()
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        info = put(ob, "High", 2)
        assert info is not None and envelope(ob, info)["drops"] == {"sink_full": 4}
        ob.drops.add("sink_full", 1)
    # As if the process had died right after put: the state file from before it.
    (tmp_path / "outbox" / "state").write_bytes(state_before)
    with Outbox(tmp_path, 1 << 20, HOUR) as ob:
        assert ob.counters().written == 2
        assert ob.next_seq == 2
        assert ob.drops.peek() == {}  # the 4 were reported; the 1 was never on disk


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that fills up."""
    from conftest import skip_unless_ci

    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        skip_unless_ci(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.root
def test_full_disk_fails_cleanly(small_tmpfs: Path) -> None:
    stored: list[BatchInfo] = []
    filler = small_tmpfs / "filler"
    filler.touch()  # a full tmpfs refuses even an empty new file
    with Outbox(small_tmpfs, 1 << 20, HOUR) as ob:
        for _ in range(12):
            info = put(ob, "Medium", 7, size=10_000)
            if info is None:
                break
            stored.append(info)
        c = ob.counters()
        assert c.write_errors == 1 and c.written == len(stored) >= 2
        assert ob.drops.peek().get("write_error_events") == 7
        assert list((ob.dir / "tmp").iterdir()) == []
        assert sorted(p.name for p in ob.dir.glob("*.batch")) == [i.id for i in stored]
        # Fill what is left: a confirm must still work (the state file needs no new block).
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(b"\0" * 4096):
                    pass
            except OSError:
                pass
        assert os.statvfs(small_tmpfs).f_bavail == 0
        assert ob.confirm(stored[0].id)
        assert ob.counters().confirmed == 1
        # ...and so must an eviction that makes room for a new batch of the same size.
        ob.max_bytes = ob.total_bytes() + 200
        info = put(ob, "High", 3, size=10_000)
        assert info is not None and ob.counters().evicted_full == 1
        stored = stored[2:] + [info]
        filler.unlink()
    with Outbox(small_tmpfs, 1 << 20, HOUR) as ob:
        c = ob.counters()
        assert (c.corrupt, c.half_written, c.confirmed, c.evicted_full) == (0, 0, 1, 1)
        assert sorted(ob.pending(), key=lambda i: i.seq) == stored
        for info in stored[:-1]:
            assert envelope(ob, info)["n"] == 7


def _read_lines(proc: subprocess.Popen[bytes]) -> list[list[str]]:
    out = proc.stdout.read() if proc.stdout else b""
    text = out.decode()
    complete = text[: text.rfind("\n") + 1] if "\n" in text else ""
    return [line.split(" ", 2) for line in complete.splitlines()]


@pytest.mark.slow
def test_sigkill_at_100_random_moments(tmp_path: Path) -> None:
    """A child stores batches, adds drops and delivers batches until SIGKILL; after each kill
    the outbox recovers with counts that add up, a confirmed batch never comes back, no
    corrupt batch is ever returned, and in the end every sequence number is either delivered
    or reported dropped by the envelopes (the receiver's proof)."""
    rng = random.Random(20240611)
    max_bytes, timeout_s = 6 * 1024, 1.0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    printed_puts: set[int] = set()
    confirmed: set[int] = set()  # confirm() returned
    # seq -> the drops its envelope reported, for the batches delivered and confirmed
    received: dict[int, dict[str, int]] = {}
    payloads: dict[int, bytes] = {}
    drops_before = drops_after = 0  # "sink_full" added: announced / flushed
    last_written = 0

    def deliver(seq: int, payload: bytes) -> None:
        env_ = decode_envelope(payload)
        assert env_["seq"] == seq
        assert [e["i"] for e in env_["events"]] == list(range(env_["n"]))
        if seq in payloads:
            assert payloads[seq] == payload, f"seq {seq} was reused for another batch"
        payloads[seq] = payload
        received[seq] = env_["drops"]
        confirmed.add(seq)

    started = time.monotonic()
    for run in range(100):
        proc = subprocess.Popen(
            [sys.executable, str(TESTS / "outbox_writer.py"), str(tmp_path), str(run),
             str(max_bytes), str(timeout_s)],
            stdout=subprocess.PIPE, env=env,
        )
        time.sleep(rng.uniform(0.0, 0.35))
        proc.kill()
        proc.wait()
        in_flight: tuple[int, dict[str, int]] | None = None  # sent, confirm not returned
        for parts in _read_lines(proc):
            kind = parts[0]
            if kind == "p":
                seq = int(parts[1])
                assert seq not in printed_puts, f"seq {seq} stored twice"
                printed_puts.add(seq)
            elif kind == "s":
                assert int(parts[1]) not in confirmed, "a confirmed batch came back"
                in_flight = (int(parts[1]), json.loads(parts[2]))
            elif kind == "c":
                assert in_flight is not None and in_flight[0] == int(parts[1])
                received[in_flight[0]] = in_flight[1]
                confirmed.add(in_flight[0])
                in_flight = None
            elif kind == "D":
                drops_before += int(parts[1])
            elif kind == "d":
                drops_after += int(parts[1])
        with Outbox(tmp_path, max_bytes, timeout_s) as ob:
            c = ob.counters()
            pending = ob.pending()
            seqs = [i.seq for i in pending]
            if in_flight is not None and in_flight[0] not in seqs:
                # Killed inside confirm() after it took effect: the batch was delivered.
                received[in_flight[0]] = in_flight[1]
                confirmed.add(in_flight[0])
            assert c.corrupt == 0 and c.state_lost == 0
            assert len(set(seqs)) == len(seqs)
            # Numbers are used without gaps: 0 .. written-1, never one twice.
            assert ob.next_seq == c.written >= last_written
            last_written = c.written
            assert printed_puts <= set(range(c.written))
            assert not confirmed & set(seqs)
            # Every stored batch is pending, delivered or counted as dropped.
            gone = set(range(c.written)) - set(seqs)
            assert confirmed <= gone
            assert c.confirmed == len(confirmed)
            assert len(gone) == c.confirmed + c.evicted_full + c.expired
            assert c.half_written <= run + 1
            assert ob.total_bytes() <= max_bytes
            if run % 10 == 9:  # the parent takes the uplink's place now and then
                while (batch := ob.next_batch()) is not None:
                    deliver(batch.info.seq, batch.payload)
                    assert ob.confirm(batch.info.id)
            else:
                for info in pending:
                    batch = ob.read(info.id)
                    assert batch is not None
                    decode_envelope(batch.payload)
    # In the end the parent delivers what is left and checks the receiver's proof.
    with Outbox(tmp_path, max_bytes, timeout_s) as ob:
        while (batch := ob.next_batch()) is not None:
            deliver(batch.info.seq, batch.payload)
            assert ob.confirm(batch.info.id)
        c = ob.counters()
        ledger = ob.drops.peek()
        assert c.corrupt == 0
        missing = set(range(c.written)) - set(received)
        reported = sum(
            sum(v for k, v in drops.items() if k.endswith("_batches"))
            for drops in [*received.values(), ledger]
        )
        assert reported == len(missing), (reported, len(missing), asdict(c))
        sink_full = sum(d.get("sink_full", 0) for d in [*received.values(), ledger])
        assert drops_after <= sink_full <= drops_before
    # The run went through the paths it is meant to: stores, deliveries and evictions.
    assert printed_puts and confirmed and c.evicted_full > 0
    assert time.monotonic() - started < 120
