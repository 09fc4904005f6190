"""RSS-flat checks in the style of psutil's memory leak tests: call a function many times and
require the process's resident set to stay flat.

A few calls warm up (allocator arenas, caches, lazily built tables); then rounds of `calls`
calls run and RSS may grow by at most `tolerance` bytes in a round. A leak of 16 bytes per
call grows 160 KB per 10,000 calls, past the default 128 KB. A check fails only when three
rounds in a row each grew past the tolerance: allocator noise comes once, a leak every time.
"""

from __future__ import annotations

import gc
import os
from typing import Callable

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


def growth(fn: Callable[[], object], calls: int) -> int:
    gc.collect()
    before = rss_bytes()
    for _ in range(calls):
        fn()
    gc.collect()
    return rss_bytes() - before


def assert_rss_flat(
    fn: Callable[[], object], calls: int = 10_000, tolerance: int = 128 * 1024, name: str = ""
) -> None:
    """Fails when every one of three rounds of `calls` calls grew RSS by more than tolerance."""
    for _ in range(3):
        fn()
    grew = []
    for _ in range(3):
        delta = growth(fn, calls)
        grew.append(delta)
        if delta <= tolerance:
            return
    label = name or getattr(fn, "__name__", repr(fn))
    raise AssertionError(
        f"{label}: RSS grew in each of 3 rounds of {calls:,} calls: "
        + ", ".join(f"{d / 1024:.0f} KiB" for d in grew)
        + f" (tolerance {tolerance / 1024:.0f} KiB)"
    )
