"""Memory stays flat over 10,000 calls of each C entry point of the foundation (msgpack writer,
lookup tables, audit parser, event sink); each live source's test file checks its own.

The first test shows the check can fail: a real leak of 64 bytes per call is caught."""

from __future__ import annotations

import ctypes
from pathlib import Path

import msgpack
import pytest
from leakcheck import assert_rss_flat

from agent.native import (
    AuditOptions,
    AuditParser,
    EventSink,
    MsgpackWriter,
    arch_name,
    record_type_name,
    record_type_number,
    syscall_name,
)
from agent.native._base import CoreLimitError
from agent.native.index_probe import IndexProbe, aggregator_index_stats

SAMPLE = (
    b'type=SYSCALL msg=audit(1700000000.100:7): arch=c000003e syscall=59 success=yes exit=0 '
    b'a0=55 a1=56 a2=57 a3=0 items=2 ppid=1 pid=2 auid=0 uid=0 gid=0 euid=0 suid=0 fsuid=0 '
    b'egid=0 sgid=0 fsgid=0 tty=pts0 ses=1 comm="ls" exe="/usr/bin/ls" key=(null)\n'
    b'type=EXECVE msg=audit(1700000000.100:7): argc=2 a0="ls" a1=2F746D70\n'
    b'type=CWD msg=audit(1700000000.100:7): cwd="/root"\n'
    b'type=PROCTITLE msg=audit(1700000000.100:7): proctitle=6C73002F746D70\n'
)


def test_the_check_catches_a_real_leak() -> None:
    """A C allocation of 64 bytes per call never freed: what a leak in the core would be."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    with pytest.raises(AssertionError, match="memory grew"):
        assert_rss_flat(lambda: libc.malloc(64), name="deliberate leak")


def test_msgpack_writer_calls() -> None:
    def cycle() -> None:
        w = MsgpackWriter(256)
        w.write_map(3)
        w.write_str("k")
        w.write_int(-5)
        w.write_str("b")
        w.write_bin(b"\x00\x01")
        w.write_str("f")
        w.write_array(3)
        w.write_float(1.5)
        w.write_bool(True)
        w.write_nil()
        w.getvalue()
        w.reset()

    assert_rss_flat(cycle, name="am_mpw_*")


def test_lookup_tables() -> None:
    def cycle() -> None:
        arch_name(0xC000003E)
        syscall_name(0xC000003E, 59)
        record_type_name(1300)
        record_type_number("EXECVE")

    assert_rss_flat(cycle, name="am_arch_name/am_syscall_name/am_record_type_*")


def test_audit_parser_new_feed_flush_free() -> None:
    def cycle() -> None:
        p = AuditParser(AuditOptions(batch_bytes=4096))
        p.feed(SAMPLE)
        p.feed_record(1300, SAMPLE.split(b" msg=", 2)[1].split(b"\n")[0])
        p.expire(1_700_000_010_000)
        p.seal()
        p.flush()
        p.stats()

    assert_rss_flat(cycle, name="am_audit_*")


def test_long_lived_audit_parser_stays_flat(corpus_dir: Path) -> None:
    log = (corpus_dir / "device-raw.log").read_bytes()[:20000]
    log = log[: log.rfind(b"\n") + 1]
    p = AuditParser()

    def cycle() -> None:
        p.feed(log)
        p.flush()

    assert_rss_flat(cycle, calls=2000, name="AuditParser.feed of 20 KB (2,000 calls)")


def test_event_sink_calls() -> None:
    def cycle() -> None:
        s = EventSink()
        s.full()
        s.seal()
        s.take()
        s.stats()

    assert_rss_flat(cycle, name="am_sink_*")


def test_keyed_index_calls() -> None:
    """The test-only entry point of the keyed index (native/index_test.c): adds past a growth
    of its arrays, a refused add at the bound, removals, a pruning walk, the checks."""

    def cycle() -> None:
        index = IndexProbe(100)
        for i in range(101):
            try:
                index.put(i.to_bytes(2, "little"), i)
            except CoreLimitError:
                pass
        for i in range(0, 100, 3):
            index.delete(i.to_bytes(2, "little"))
        index.get(b"\x01\x00")
        index.prune(50)
        index.check()
        index.stats()
        index.seed()

    assert_rss_flat(cycle, calls=2000, name="am_index_test_* (2,000 indexes of 100 entries)")


def test_aggregator_index_probe() -> None:
    batch = msgpack.packb(
        [{"t": "exec", "uid": 0, "exe": "/bin/x", "argv": ["/bin/x", str(i % 40)]} for i in range(60)]
    )
    assert_rss_flat(
        lambda: aggregator_index_stats(16, batch), calls=2000, name="am_index_test_aggregate"
    )


def test_aggregator_checkpoint_calls() -> None:
    """A checkpoint's three entry points: am_agg_snapshot of a full cache, am_agg_restore_batch
    of it (good, then cut short: malformed), am_sink_copy_open of the lane sink."""
    from agent.native.aggregate import Aggregator
    from agent.native.sink import SinkOptions

    batch = msgpack.packb(
        [{"t": "exec", "uid": 0, "exe": "/bin/x", "argv": ["/bin/x", str(i % 40)], "ts": i}
         for i in range(60)]
    )
    lane = EventSink(SinkOptions(batch_bytes=65536, max_batches=4))
    scratch = EventSink(SinkOptions(batch_bytes=65536, max_batches=4))
    agg = Aggregator("process", cache_size=32, accept=("exec",))
    agg.add(batch, lane)

    def cycle() -> None:
        [snap] = agg.snapshot(scratch)
        again = Aggregator("process", cache_size=16, accept=("exec",))
        again.restore(snap, lane)
        again.restore(snap[: len(snap) // 2], lane)
        lane.open_batch()
        lane.take()

    assert_rss_flat(cycle, calls=3000, name="am_agg_snapshot, am_agg_restore_batch, am_sink_copy_open")


def test_audit_state_probe_and_restore_calls() -> None:
    """am_anl_probe (through AuditNetlink's before_change, on a handle opened without rules or
    ownership) and am_anl_restore of the state as it is (nothing to change: the calls only
    talk to the kernel). Root: AUDIT_GET needs CAP_AUDIT_CONTROL."""
    import os

    import pytest

    from agent.native.audit_netlink import (
        STATUS_FIELDS,
        AuditNetlink,
        AuditNetlinkOptions,
        restore_status,
    )

    if os.geteuid() != 0:
        pytest.skip("AUDIT_GET needs root (CAP_AUDIT_CONTROL)")
    seen: list[int] = []
    options = AuditNetlinkOptions(take_ownership=False, exec_rules=False, net_rules=False)

    def probe() -> None:
        AuditNetlink(options, before_change=lambda found: seen.append(found.enabled)).close()

    with AuditNetlink(options) as nl:
        found = nl.found_status
    assert found is not None
    saved = {name: found[name] for name in STATUS_FIELDS}
    if saved["pid"] != 0:
        pytest.skip(f"audit is owned by pid {saved['pid']}: a restore would not be a no-op")
    assert_rss_flat(probe, calls=500, name="am_anl_probe")
    assert seen
    assert_rss_flat(lambda: restore_status(saved), calls=300, name="am_anl_restore")


def test_nftables_reader_calls() -> None:
    """am_nft_decode of recorded rulesets (set reads, a rule left out, the output bound's
    error), am_nft_result and am_nft_stats; as root also am_nft_snapshot and
    am_nft_generation of this namespace's ruleset (reads only)."""
    import os

    from agent.native.nftables import NftOptions, NftReader

    fixtures = Path(__file__).resolve().parent / "fixtures" / "nftables"
    wide = (fixtures / "wide.bin").read_bytes()
    iptables = (fixtures / "iptables.bin").read_bytes()

    def decode() -> None:
        with NftReader() as reader:
            reader.decode(1, wide)
            reader.decode(1, iptables[:-40])  # the last message cut
            reader.stats()
        with NftReader(NftOptions(max_output_bytes=1024, max_set_elements=1)) as small:
            small.decode(1, wide)

    assert_rss_flat(decode, calls=3000, name="am_nft_new/decode/result/stats/free")
    if os.geteuid() != 0:
        return
    reader = NftReader()

    def live() -> None:
        reader.generation()
        reader.snapshot(1)

    assert_rss_flat(live, calls=2000, name="am_nft_snapshot, am_nft_generation")
