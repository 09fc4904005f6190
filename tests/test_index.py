"""The core's keyed index (native/index.c, docs/index.md), through its test-only entry point
(agent.native.index_probe).

- Against a Python dict: Hypothesis drives adds, lookups, removals and pruning walks at small
  bounds (so that the bound is reached), and the index's own invariants are checked after each
  step.
- Its hash: SipHash, checked against the paper's test vector; each index has its own seed.
- Flooding: 100,000 exec events whose aggregation keys all collide under the hash the
  aggregator used before (64-bit FNV-1a, unseeded, its low bits picking the slot) cost the
  aggregator's index at most a few times what 100,000 random keys cost. Cost is the index's
  probe count (slots read), not time.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.native._base import CoreArgumentError, CoreLimitError
from agent.native.index_probe import IndexProbe, aggregator_index_stats, siphash

# ---- against a dict -------------------------------------------------------------------------

KEYS = st.binary(min_size=0, max_size=6)  # few enough that keys come back
VALUES = st.integers(min_value=0, max_value=2**64 - 1)
OPS = st.one_of(
    st.tuples(st.just("put"), KEYS, VALUES),
    st.tuples(st.just("get"), KEYS, st.just(0)),
    st.tuples(st.just("delete"), KEYS, st.just(0)),
    st.tuples(st.just("prune"), st.just(b""), VALUES),
    st.tuples(st.just("reserve"), st.just(b""), st.integers(min_value=0, max_value=100)),
)


def apply(
    index: IndexProbe, model: dict[bytes, int], bound: int, op: tuple[str, bytes, int]
) -> None:
    name, key, value = op
    if name == "put":
        if key not in model and len(model) == bound:
            with pytest.raises(CoreLimitError):
                index.put(key, value)
        else:
            assert index.put(key, value) == (key not in model)
            model[key] = value
    elif name == "get":
        assert index.get(key) == model.get(key)
    elif name == "delete":
        assert index.delete(key) == (key in model)
        model.pop(key, None)
    elif name == "reserve":
        assert index.reserve(value) >= max(min(value, bound), len(model))
    else:
        gone = [k for k, v in model.items() if v < value]
        assert index.prune(value) == len(gone)
        for k in gone:
            del model[k]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bound=st.integers(min_value=1, max_value=80), ops=st.lists(OPS, max_size=300))
def test_the_index_behaves_as_a_dict_up_to_its_bound(
    bound: int, ops: list[tuple[str, bytes, int]]
) -> None:
    index = IndexProbe(bound)
    model: dict[bytes, int] = {}
    refused = 0
    for op in ops:
        full_before = index.stats()["full"]
        apply(index, model, bound, op)
        refused += index.stats()["full"] - full_before
        index.check()
        assert index.stats()["entries"] == len(model) <= bound
    for key, value in model.items():
        assert index.get(key) == value
    stats = index.stats()
    assert stats["full"] == refused and stats["bound"] == bound


def test_many_removals_interleaved_with_adds() -> None:
    """20,000 operations on 2,000 keys, about half of them removals, through several growths of
    the arrays and back: the index and the dict agree after each one."""
    rng = random.Random(10)
    index = IndexProbe(1500)
    model: dict[bytes, int] = {}
    keys = [rng.randbytes(rng.randrange(0, 12)) for _ in range(2000)]
    for step in range(20_000):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.45:
            op = ("put", key, step)
        elif roll < 0.9:
            op = ("delete", key, 0)
        elif roll < 0.999:
            op = ("get", key, 0)
        else:
            op = ("prune", b"", max(0, step - 500))
        apply(index, model, 1500, op)
        if step % 997 == 0:
            index.check()
    index.check()
    assert {k: index.get(k) for k in keys if index.get(k) is not None} == model
    stats = index.stats()
    assert stats["removed"] > 5000 and stats["added"] - stats["removed"] == len(model)


def test_a_full_index_refuses_and_counts_then_takes_again_after_a_removal() -> None:
    index = IndexProbe(3)
    for i in range(3):
        assert index.put(bytes([i]), i)
    with pytest.raises(CoreLimitError):
        index.put(b"new", 9)
    assert not index.put(b"\x01", 10)  # an existing key is replaced, full or not
    assert index.stats()["full"] == 1 and index.get(b"new") is None
    assert index.delete(b"\x00")
    assert index.put(b"new", 9) and index.get(b"new") == 9 and index.get(b"\x01") == 10
    index.check()


def test_room_reserved_at_once_takes_the_entries_without_growing() -> None:
    """A table that knows how many entries come (a snapshot's sockets) makes room once: the
    entries then fit without a doubling, a reserve just past the room doubles it (so that a
    count creeping up at each snapshot does not copy the table each time), the room stops at
    the bound, and a smaller reserve than the room changes nothing."""
    index = IndexProbe(5000)
    assert index.reserve(0) == 0
    room = index.reserve(1000)
    assert room == 1000
    for i in range(1000):
        assert index.put(i.to_bytes(4, "little"), i)
    assert index.reserve(10) == room, "1,000 entries went into the room reserved for them"
    index.check()
    assert all(index.get(i.to_bytes(4, "little")) == i for i in range(1000))
    assert index.reserve(1001) == 2000, "a count that creeps past the room still doubles it"
    assert index.reserve(1_000_000) == 5000, "the room stops at the bound"
    assert index.put(b"one more", 1) and index.stats()["entries"] == 1001
    index.check()


def test_keys_over_64_bytes_and_bad_bounds_are_refused() -> None:
    with pytest.raises(CoreArgumentError):
        IndexProbe(4).put(b"k" * 65, 1)
    for bound in (0, (1 << 24) + 1):
        with pytest.raises(CoreArgumentError, match=f"bound={bound}"):
            IndexProbe(bound)


# ---- the hash and the seed ------------------------------------------------------------------


def test_siphash_24_matches_the_papers_test_vector() -> None:
    """Appendix A of Aumasson and Bernstein, SipHash: key 00..0f, message 00..0e."""
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(k0, k1, bytes(range(15)), 2, 4) == 0xA129CA6149BE45E5


def test_the_hash_depends_on_the_key_and_on_every_byte() -> None:
    data = b"exec /usr/bin/x -c 1"
    base = siphash(1, 2, data, 1, 3)
    assert siphash(1, 3, data, 1, 3) != base and siphash(3, 2, data, 1, 3) != base
    for i in range(len(data)):
        flipped = data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]
        assert siphash(1, 2, flipped, 1, 3) != base
    assert siphash(1, 2, data + b"\x00", 1, 3) != base  # the length is hashed too


def test_two_indexes_get_different_seeds_from_getrandom() -> None:
    a, b = IndexProbe(8), IndexProbe(8)
    assert a.stats()["seeded"] == 1 and b.stats()["seeded"] == 1
    assert a.seed() != b.seed()
    assert len({IndexProbe(8).seed() for _ in range(50)}) == 50


def test_the_fallback_seed_differs_between_indexes_too() -> None:
    """Where getrandom(2) fails the seed comes from the clocks and addresses: never one fixed
    value, and the index works the same."""
    seeds = {IndexProbe(8, getrandom=False).seed() for _ in range(50)}
    assert len(seeds) == 50 and (0, 0) not in seeds
    index = IndexProbe(8, getrandom=False)
    assert index.stats()["seeded"] == 0
    assert index.put(b"a", 1) and index.get(b"a") == 1
    index.check()


# ---- flooding -------------------------------------------------------------------------------

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
# The old aggregator's slot was the FNV-1a hash's low bits: its table had the power of two
# at or above 2 * cache_size slots, 2**17 at the largest cache (65536). Keys equal in their
# low 17 bits share one home slot at every cache size.
CACHE = 65536
SLOT_BITS = 17
EVENTS = 100_000
# The aggregator's process key (native/aggregate.c): each field present, in this order, as its
# index byte, its length (4 bytes, big-endian) and its raw msgpack value.
PROCESS_FIELDS = ("t", "src", "node", "uid", "exe", "argv", "title", "ok")
EXE = "/usr/bin/x"
TAIL_BYTES = 5  # the attacker's argument: 3 bytes of counter, 2 bytes chosen to collide


def fnv1a(data: bytes, h: int = FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def exec_event(arg: bytes) -> dict[str, Any]:
    return {"t": "exec", "uid": 1000, "exe": EXE, "argv": [EXE, arg]}


def aggregation_key(event: dict[str, Any]) -> bytes:
    key = b""
    for tag, name in enumerate(PROCESS_FIELDS):
        if name in event:
            raw = bytes(msgpack.packb(event[name]))
            key += bytes([tag]) + len(raw).to_bytes(4, "big") + raw
    return key


def colliding_args(count: int) -> list[bytes]:
    """`count` distinct arguments whose events' keys all have FNV-1a hashes equal in their low
    SLOT_BITS bits. The key ends with the argument, so the hash of everything before it is
    computed once; each argument is a counter and two bytes that steer the hash's low bits to
    the target. Multiplying by the (odd) FNV prime modulo 2**k only mixes the low k bits
    upwards: the last byte then fixes bits 0-7, the byte before it bits 8-16 when one exists
    (for about 2 counters in 5)."""
    low = (1 << SLOT_BITS) - 1
    key = aggregation_key(exec_event(bytes(TAIL_BYTES)))
    head = fnv1a(key[:-TAIL_BYTES])
    target = 0
    before_last = (target * pow(FNV_PRIME, -1, 1 << SLOT_BITS)) & low  # state ^ last byte
    # For each value of state bits 8-16: a low byte v for which (state bits, v) * prime has the
    # bits 8-16 that before_last needs.
    steer: dict[int, int] = {}
    for high in range(1 << (SLOT_BITS - 8)):
        for v in range(256):
            if ((((high << 8) | v) * FNV_PRIME) & low) >> 8 == before_last >> 8:
                steer[high] = v
                break
    args: list[bytes] = []
    counter = 0
    while len(args) < count:
        prefix = counter.to_bytes(3, "big")
        counter += 1
        h = fnv1a(prefix, head)
        wanted = steer.get((h & low) >> 8)
        if wanted is None:
            continue
        b1 = wanted ^ (h & 0xFF)
        h1 = ((h ^ b1) * FNV_PRIME) & MASK64
        b2 = (h1 ^ before_last) & 0xFF
        args.append(prefix + bytes([b1, b2]))
    return args


def batch_of(args: list[bytes]) -> bytes:
    return bytes(msgpack.packb([exec_event(arg) for arg in args]))


@pytest.mark.timeout(300)
def test_keys_built_to_collide_under_the_old_hash_cost_no_more_than_random_ones() -> None:
    flood = colliding_args(EVENTS)
    assert len(set(flood)) == EVENTS
    # They do collide under the old hash, computed over the whole key as the aggregator did.
    homes = {
        fnv1a(aggregation_key(exec_event(arg))) & ((1 << SLOT_BITS) - 1) for arg in flood[:2000]
    }
    assert homes == {0}
    rng = random.Random(7)
    plain = list({rng.randbytes(TAIL_BYTES) for _ in range(EVENTS + 100)})[:EVENTS]

    flooded = aggregator_index_stats(CACHE, batch_of(flood))
    baseline = aggregator_index_stats(CACHE, batch_of(plain))
    for stats in (flooded, baseline):
        # Every event is a new entry: a lookup, an add; past the cache, an eviction.
        assert stats["added"] == EVENTS and stats["removed"] == EVENTS
        assert stats["bound"] == CACHE and stats["full"] == 0 and stats["entries"] == 0
    ratio = flooded["probes"] / baseline["probes"]
    assert ratio <= 4, (
        f"colliding keys cost {flooded['probes']:,} probes, random ones {baseline['probes']:,}"
    )
    # In the old table every one of these keys had one home: once the cache was full each
    # lookup read a run of 65,536 slots, about 2**16 probes per event. Here it is a few.
    assert flooded["probes"] / EVENTS < 16 and flooded["longest"] < 200
