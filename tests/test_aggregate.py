"""The core's aggregator (native/aggregate.c): identical events of an interval become one entry
with `hits`, `first` and `last`; nothing is lost, evictions are counted.

The events are built here as msgpack maps with the keys the sources write (docs/events.md)
and checked against a small Python model of the aggregation keys.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from leakcheck import assert_rss_flat

from agent.native import CoreArgumentError, EventSink, SinkOptions
from agent.native.aggregate import Aggregator

Event = dict[str, Any]

PROCESS_KEY = ("t", "src", "node", "uid", "exe", "argv", "title", "ok")
NETWORK_KEY = ("t", "src", "node", "op", "dir", "fam", "proto", "laddr", "raddr", "path", "exe", "ok")


def model_key(kind: str, event: Event) -> tuple[Any, ...] | None:
    """None when the event passes through; else what makes two events the same."""
    if kind == "process":
        if event.get("t") != "exec":
            return None
        return tuple(repr(event.get(k, "<absent>")) for k in PROCESS_KEY)
    if event.get("t") not in ("net", "conn"):
        return None
    key = [repr(event.get(k, "<absent>")) for k in NETWORK_KEY]
    direction = event.get("dir")
    key.append(repr(event.get("lport", "<absent>")) if direction != "out" else "-")
    key.append(repr(event.get("rport", "<absent>")) if direction != "in" else "-")
    return tuple(key)


def run(agg: Aggregator, events: list[Event], out: EventSink | None = None) -> list[Event]:
    out = out if out is not None else EventSink()
    batches = agg.add(msgpack.packb(events), out)
    batches += agg.flush(out)
    batches += out.seal()
    result: list[Event] = []
    for batch in batches:
        result += msgpack.unpackb(batch, raw=False)
    return result


def exec_event(i: int, argv: list[str], uid: int = 0, exe: str = "/bin/true") -> Event:
    return {"t": "exec", "ts": 1_700_000_000_000 + i, "sn": i, "pid": 1000 + i, "ppid": 1,
            "uid": uid, "exe": exe, "argv": argv, "ok": True}


def test_500_runs_of_one_command_are_one_entry_with_500_hits() -> None:
    agg = Aggregator("process")
    events = [exec_event(i, ["/bin/true", "same"]) for i in range(500)]
    out = run(agg, events)
    assert len(out) == 1
    (entry,) = out
    assert entry["hits"] == 500
    assert entry["first"] == events[0]["ts"] and entry["last"] == events[-1]["ts"]
    # The entry is the first event's map, whole, with the aggregate's keys added.
    assert {k: v for k, v in entry.items() if k not in ("hits", "first", "last")} == events[0]
    stats = agg.stats()
    assert (stats.events_in, stats.merged, stats.emitted, stats.evicted, stats.entries) == (500, 499, 1, 0, 0)


def test_process_key_is_command_line_program_and_user() -> None:
    agg = Aggregator("process")
    events = [
        exec_event(0, ["ls", "/"]),
        exec_event(1, ["ls", "/"]),
        exec_event(2, ["ls", "/tmp"]),            # other command line
        exec_event(3, ["ls", "/"], uid=1000),     # other user
        exec_event(4, ["ls", "/"], exe="/usr/bin/ls"),  # other program
        {"t": "auth", "ts": 5, "op": "login"},    # not a process event: passes through
    ]
    out = run(agg, events)
    hits = sorted((e.get("hits", 0), e["t"]) for e in out)
    assert hits == [(0, "auth"), (1, "exec"), (1, "exec"), (1, "exec"), (2, "exec")]
    assert next(e for e in out if e["t"] == "auth") == events[5]


def test_network_key_ignores_the_ephemeral_port_and_sums_bytes() -> None:
    base = {"t": "conn", "src": "diag", "op": "close", "proto": "tcp", "fam": "inet",
            "laddr": "10.0.0.2", "raddr": "10.0.0.9", "exe": "/usr/bin/curl"}
    events = [
        dict(base, ts=1, dir="out", lport=40001, rport=443, rx=100, tx=10),
        dict(base, ts=2, dir="out", lport=40002, rport=443, rx=200, tx=20),
        dict(base, ts=3, dir="out", lport=40003, rport=80, rx=1, tx=1),       # other service
        dict(base, ts=4, dir="in", lport=22, rport=50001, rx=5, tx=6),
        dict(base, ts=5, dir="in", lport=22, rport=50002, rx=7, tx=8),
        dict(base, ts=6, dir="in", lport=2222, rport=50002),                   # other service
    ]
    out = run(Aggregator("network"), events)
    by_port = {(e["dir"], e["lport"] if e["dir"] == "in" else e["rport"]): e for e in out}
    assert sorted(by_port) == [("in", 22), ("in", 2222), ("out", 80), ("out", 443)]
    assert (by_port["out", 443]["hits"], by_port["out", 443]["rx"], by_port["out", 443]["tx"]) == (2, 300, 30)
    assert (by_port["in", 22]["hits"], by_port["in", 22]["rx"], by_port["in", 22]["tx"]) == (2, 12, 14)
    assert (by_port["out", 443]["first"], by_port["out", 443]["last"]) == (1, 2)
    assert "rx" not in by_port["in", 2222] and by_port["in", 2222]["hits"] == 1


def test_byte_sums_past_int64_come_back_from_a_checkpoint_as_sums() -> None:
    """A checkpoint's entry whose tx sum passed INT64_MAX is read back as a sum, not as a plain
    field of the event: fuzz_aggregate found such an entry flushed with tx in another place,
    and it would not have added later bytes to it (native/fuzz/regressions/aggregate). A sum
    stops at 2^64 - 1 instead of wrapping round to a small number."""
    base = {"t": "conn", "src": "diag", "op": "close", "proto": "tcp", "fam": "inet",
            "laddr": "10.0.0.2", "raddr": "10.0.0.9", "dir": "out", "rport": 443}
    big = 2**63 - 1
    first = Aggregator("network")
    first.add(msgpack.packb([dict(base, ts=1, lport=40001, rx=1, tx=big),
                             dict(base, ts=2, lport=40002, rx=2, tx=big)]), EventSink())
    saved = first.snapshot(EventSink())
    (entry,) = [e for batch in saved for e in msgpack.unpackb(batch)]
    assert (entry["hits"], entry["rx"], entry["tx"]) == (2, 3, 2 * big)
    second = Aggregator("network")
    for batch in saved:
        second.restore(batch, EventSink())
    (merged,) = run(second, [dict(base, ts=3, lport=40003, rx=3, tx=big)])
    assert (merged["hits"], merged["rx"], merged["tx"]) == (3, 6, 2**64 - 1)
    assert list(merged)[-2:] == ["rx", "tx"], "the sums go last, as the first aggregator wrote"


def test_a_full_cache_evicts_the_oldest_entry_early_and_counts_it() -> None:
    agg = Aggregator("process", cache_size=4)
    events = [exec_event(i, ["cmd", str(i % 10)]) for i in range(30)]
    out = run(agg, events)
    assert sum(e["hits"] for e in out) == 30
    stats = agg.stats()
    assert stats.evicted == len(out) - 4  # all but the four held at flush went out early
    assert stats.emitted == len(out)
    # First-seen order is kept: eviction and flush both take the oldest entry.
    assert [e["first"] for e in out] == sorted(e["first"] for e in out)


def test_the_byte_bound_evicts_too() -> None:
    agg = Aggregator("process", cache_size=1000, max_bytes=8192)
    events = [exec_event(i, ["cmd", "x" * 500, str(i)]) for i in range(40)]
    out = run(agg, events)
    assert len(out) == 40 and all(e["hits"] == 1 for e in out)
    stats = agg.stats()
    assert stats.evicted > 0 and stats.memory <= stats.memory_bound


def test_an_event_too_large_to_hold_passes_through() -> None:
    agg = Aggregator("process", max_bytes=4096)
    big = exec_event(0, ["cmd", "y" * 5000])
    out = run(agg, [big, big])
    assert out == [big, big]
    assert agg.stats().passed == 2


def test_a_small_output_sink_is_drained_without_loss() -> None:
    agg = Aggregator("process", cache_size=1)
    out = EventSink(SinkOptions(batch_bytes=1024, max_batches=1))
    events = [exec_event(i, ["c", str(i)]) for i in range(300)]
    result = run(agg, events, out)
    assert sorted(e["sn"] for e in result) == list(range(300))
    assert out.stats().dropped_full == 0


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x91", b"\x92\x81\xa1t", b"\xdd\xff\xff\xff\xff",
                                  b"\x91\xde\xff\xff", b"\x91\x81\xa1t\xc1", b"\x92\x80\x91\x91\x91"])
def test_malformed_batches_are_counted(data: bytes) -> None:
    agg = Aggregator("network")
    out = EventSink()
    agg.add(data, out)
    agg.flush(out)
    assert agg.stats().malformed + agg.stats().passed >= 1


def test_accept_routes_one_sources_batches_to_each_collector() -> None:
    events = [exec_event(0, ["a"]), exec_event(1, ["a"]),
              {"t": "net", "ts": 2, "dir": "out", "raddr": "10.0.0.1", "rport": 53},
              {"t": "auth", "ts": 3, "op": "login"}, {"ts": 4}]
    process = Aggregator("process", accept=["exec"])
    network = Aggregator("network", accept=["net", "conn"])
    login = Aggregator("none", accept=["auth", "account"])
    assert [e["hits"] for e in run(process, events)] == [2]
    assert [e["hits"] for e in run(network, events)] == [1]
    assert run(login, events) == [events[3]]
    assert (process.stats().skipped, network.stats().skipped, login.stats().skipped) == (3, 4, 4)
    everything = Aggregator("none")
    assert run(everything, events) == events


def test_the_local_address_filter_keeps_the_watched_interfaces_only() -> None:
    base = {"t": "conn", "op": "open", "dir": "out", "raddr": "192.0.2.9", "rport": 443}
    events = [dict(base, ts=1, laddr="10.0.0.2", lport=40000),
              dict(base, ts=2, laddr="127.0.0.1", lport=40001),
              dict(base, ts=3, laddr="fd00::2", lport=40002),
              {"t": "net", "ts": 4, "dir": "out", "raddr": "192.0.2.9", "rport": 443}]  # no laddr
    agg = Aggregator("network", accept=["conn", "net"])
    agg.filter_local_addresses(["10.0.0.2", "fd00::2"])
    out = run(agg, events)
    assert sorted(e["ts"] for e in out) == [1, 3, 4]
    assert agg.stats().filtered == 1
    agg.filter_local_addresses([])  # no address is watched: only events without laddr pass
    assert [e["ts"] for e in run(agg, events)] == [4]
    agg.filter_local_addresses(None)  # no filter again
    assert len(run(agg, events)) == 4
    with pytest.raises(CoreArgumentError):
        agg.filter_local_addresses(["10.0.0.1", ""])
    with pytest.raises(CoreArgumentError):
        agg.filter_local_addresses(["1.2.3.4"] * 257)


def test_bad_options_are_refused() -> None:
    with pytest.raises(CoreArgumentError):
        Aggregator("process", accept=["exec", ""])
    with pytest.raises(CoreArgumentError):
        Aggregator("process", accept=[f"t{i}" for i in range(17)])
    with pytest.raises(CoreArgumentError):
        Aggregator("process", accept=["x" * 130])
    with pytest.raises(CoreArgumentError):
        Aggregator("process", cache_size=0)
    with pytest.raises(CoreArgumentError):
        Aggregator("process", cache_size=70000)
    with pytest.raises(CoreArgumentError):
        Aggregator("filesystem")  # type: ignore[arg-type]


values = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "in", "out"]), st.none())
net_events = st.fixed_dictionaries(
    {"t": st.sampled_from(["net", "conn", "listen"]), "ts": st.integers(0, 10**13)},
    optional={k: values for k in ("dir", "fam", "proto", "laddr", "raddr", "lport", "rport",
                                  "exe", "op", "rx", "tx", "pid")},
)
proc_events = st.fixed_dictionaries(
    {"t": st.sampled_from(["exec", "exec", "auth"]), "ts": st.integers(0, 10**13)},
    optional={"uid": values, "exe": values, "argv": st.lists(values, max_size=3), "pid": values},
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["process", "network"]), data=st.data(),
       cache=st.integers(1, 8))
def test_entries_match_a_model_of_the_keys(kind: str, data: st.DataObject, cache: int) -> None:
    events = data.draw(st.lists(proc_events if kind == "process" else net_events, max_size=40))
    agg = Aggregator(kind, cache_size=cache)  # type: ignore[arg-type]
    out = run(agg, events)
    passed = [e for e in events if model_key(kind, e) is None]
    assert [e for e in out if "hits" not in e] == passed
    # Every input event is counted once: hits add up per key, whatever the evictions.
    expected = Counter(model_key(kind, e) for e in events if model_key(kind, e) is not None)
    got: Counter[Any] = Counter()
    for e in out:
        if "hits" in e:
            got[model_key(kind, e)] += e["hits"]
    assert got == expected
    stats = agg.stats()
    assert stats.events_in == stats.merged + stats.passed + stats.emitted + stats.skipped + stats.filtered
    if len(expected) <= cache:
        assert len([e for e in out if "hits" in e]) == len(expected)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    agg = Aggregator("network", cache_size=2)
    out = EventSink()
    agg.add(data, out)
    agg.flush(out)
    out.seal()


def test_add_and_flush_leave_rss_flat() -> None:
    agg = Aggregator("network", cache_size=16)
    out = EventSink()
    batch = msgpack.packb([{"t": "conn", "ts": i, "dir": "out", "raddr": f"10.0.0.{i % 20}",
                            "rport": 443, "lport": 40000 + i, "rx": 1} for i in range(50)])

    def cycle() -> None:
        agg.add(batch, out)
        agg.flush(out)
        out.seal()
        agg.stats()

    assert_rss_flat(cycle, name="am_agg_add_batch + am_agg_flush + am_agg_stats")
    assert_rss_flat(lambda: Aggregator("process", cache_size=64), name="am_agg_new/free")


@pytest.mark.parametrize(("kind", "t"), [("none", "x"), ("process", "exec")])
def test_what_an_aggregator_writes_another_can_read(kind: str, t: str) -> None:
    """An event's nesting is counted from the event map, so nothing that passes through or is
    kept is beyond the reader's depth bound (found by fuzz_aggregate): an event one level
    deeper than the bound is malformed, one at the bound is read, whether it is kept (exec in
    the process aggregator, where the map's values are read one by one) or passed."""

    def nested(levels: int) -> Any:
        deep: Any = 1
        for _ in range(levels):
            deep = [deep]
        return deep

    # (a malformed event ends its batch: the events after it could not be found; last here)
    events = [{"t": t, "ts": 2, "v": nested(30)}, {"t": t, "ts": 1, "v": nested(31)}]
    first = Aggregator(kind)
    out = EventSink()
    first.add(msgpack.packb(events), out)
    first.flush(out)
    batches = out.seal()
    assert first.stats().malformed == 1
    assert [e["ts"] for b in batches for e in msgpack.unpackb(b)] == [2]
    second = Aggregator("none")
    for batch in batches:
        second.add(batch, EventSink())
    assert second.stats().malformed == 0 and second.stats().passed == 1
