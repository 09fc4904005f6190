"""TEST ONLY: the keyed index of the C core (native/index.h) driven from Python.

The agent never imports this module. tests/test_index.py uses it to check one index against a
Python dict, to read its seed, its SipHash and its counters, and to measure the probes the
aggregator's index spends on a batch (native/core_index.h, am_index_test_*)."""

from __future__ import annotations

from agent._core import ffi, lib
from agent.native._base import AM_EMPTY, AM_OK, CoreStats, NativeHandle, check


class IndexProbe(NativeHandle):
    """An index of byte keys (at most 64 bytes) to unsigned 64-bit values, holding at most
    `bound` entries. getrandom=False seeds it with the fallback used where getrandom(2) fails."""

    _what = "index probe"

    def __init__(self, bound: int, getrandom: bool = True) -> None:
        self._own(lib.am_index_test_new(bound, 1 if getrandom else 0), lib.am_index_test_free,
                  f"bound={bound}")
        self._value = ffi.new("uint64_t *")

    def put(self, key: bytes, value: int) -> bool:
        """True when the key was added, False when it was there (its value replaced).
        CoreLimitError when the index is full."""
        return bool(check(lib.am_index_test_put(self._live(), key, len(key), value), "put") == AM_OK)

    def get(self, key: bytes) -> int | None:
        st = check(lib.am_index_test_get(self._live(), key, len(key), self._value), "get")
        return int(self._value[0]) if st == AM_OK else None

    def delete(self, key: bytes) -> bool:
        return bool(check(lib.am_index_test_delete(self._live(), key, len(key)), "delete") != AM_EMPTY)

    def prune(self, below: int) -> int:
        """Removes, in one walk, every entry whose value is below `below`; returns how many."""
        return int(lib.am_index_test_prune(self._live(), below))

    def reserve(self, n: int) -> int:
        """Room for n entries at once (at most the bound); returns how many entries the
        index now holds without growing."""
        room = ffi.new("uint32_t *")
        check(lib.am_index_test_reserve(self._live(), n, room), "reserve")
        return int(room[0])

    def check(self) -> None:
        """CoreLimitError when an invariant of the index does not hold."""
        check(lib.am_index_test_check(self._live()), "invariants")

    def stats(self) -> CoreStats:
        return self._read_stats("struct am_index_stats", lib.am_index_test_stats)

    def seed(self) -> tuple[int, int]:
        k = ffi.new("uint64_t[2]")
        lib.am_index_test_seed(self._live(), k, k + 1)
        return int(k[0]), int(k[1])


def siphash(k0: int, k1: int, data: bytes, c: int, d: int) -> int:
    """The core's SipHash-c-d of data under the key (k0, k1)."""
    return int(lib.am_index_test_siphash(k0, k1, data, len(data), c, d))


def aggregator_index_stats(cache_size: int, batch: bytes) -> CoreStats:
    """The counters of the index of a process aggregator with `cache_size` entries after it
    read `batch` (a msgpack array of events) and was flushed."""
    raw = ffi.new("struct am_index_stats *")
    check(lib.am_index_test_aggregate(cache_size, batch, len(batch), raw), "aggregate")
    return CoreStats.read("struct am_index_stats", raw)
