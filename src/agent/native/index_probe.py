"""TEST ONLY: the keyed index of the C core (native/index.h) driven from Python.

The agent never imports this module. tests/test_index.py uses it to check one index against a
Python dict, to read its seed, its SipHash and its counters, and to measure the probes the
aggregator's index spends on a batch (native/core_index.h, am_index_test_*)."""

from __future__ import annotations

from typing import Any

from agent.native._base import AM_EMPTY, AM_OK, CoreMemoryError, check, ffi, lib

IndexStats = dict[str, int]

_STAT_FIELDS = [name for name, _ in ffi.typeof("struct am_index_stats").fields]


def _stats_of(raw: Any) -> IndexStats:
    """Every field of struct am_index_stats, by its C name."""
    return {name: int(getattr(raw, name)) for name in _STAT_FIELDS}


class IndexProbe:
    """An index of byte keys (at most 64 bytes) to unsigned 64-bit values, holding at most
    `bound` entries. getrandom=False seeds it with the fallback used where getrandom(2) fails."""

    def __init__(self, bound: int, getrandom: bool = True) -> None:
        handle = lib.am_index_test_new(bound, 1 if getrandom else 0)
        if handle == ffi.NULL:
            raise CoreMemoryError(f"am_index_test_new({bound}): a bad bound or no memory")
        self._t: Any = ffi.gc(handle, lib.am_index_test_free)
        self._value = ffi.new("uint64_t *")

    def put(self, key: bytes, value: int) -> bool:
        """True when the key was added, False when it was there (its value replaced).
        CoreLimitError when the index is full."""
        return bool(check(lib.am_index_test_put(self._t, key, len(key), value), "put") == AM_OK)

    def get(self, key: bytes) -> int | None:
        st = check(lib.am_index_test_get(self._t, key, len(key), self._value), "get")
        return int(self._value[0]) if st == AM_OK else None

    def delete(self, key: bytes) -> bool:
        return bool(check(lib.am_index_test_delete(self._t, key, len(key)), "delete") != AM_EMPTY)

    def prune(self, below: int) -> int:
        """Removes, in one walk, every entry whose value is below `below`; returns how many."""
        return int(lib.am_index_test_prune(self._t, below))

    def check(self) -> None:
        """CoreLimitError when an invariant of the index does not hold."""
        check(lib.am_index_test_check(self._t), "invariants")

    def stats(self) -> IndexStats:
        raw = ffi.new("struct am_index_stats *")
        lib.am_index_test_stats(self._t, raw)
        return _stats_of(raw)

    def seed(self) -> tuple[int, int]:
        k = ffi.new("uint64_t[2]")
        lib.am_index_test_seed(self._t, k, k + 1)
        return int(k[0]), int(k[1])


def siphash(k0: int, k1: int, data: bytes, c: int, d: int) -> int:
    """The core's SipHash-c-d of data under the key (k0, k1)."""
    return int(lib.am_index_test_siphash(k0, k1, data, len(data), c, d))


def aggregator_index_stats(cache_size: int, batch: bytes) -> IndexStats:
    """The counters of the index of a process aggregator with `cache_size` entries after it
    read `batch` (a msgpack array of events) and was flushed."""
    raw = ffi.new("struct am_index_stats *")
    check(lib.am_index_test_aggregate(cache_size, batch, len(batch), raw), "aggregate")
    return _stats_of(raw)
