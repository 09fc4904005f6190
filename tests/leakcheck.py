"""Memory-flat checks in the style of psutil's memory leak tests: call a function many times
and require the process's memory to stay flat.

Two measures, each with its own tolerance: the bytes malloc has handed out (glibc's
mallinfo2: in-use chunks plus mmapped ones), which sees every C allocation the core makes and
does not free, to the byte; and the resident set (RSS), which also sees Python's own arenas
but moves by hundreds of KiB on its own. RSS alone misses a leak that fills memory the heap
had already freed (a long test session leaves plenty), and flags noise as a leak.

A few calls warm up (allocator arenas, caches, lazily built tables); then rounds of `calls`
calls run and RSS may grow by at most `tolerance` bytes in a round. A leak of 16 bytes per
call grows 160 KB per 10,000 calls, past the default 128 KB. A check fails only when three
rounds in a row each grew past the tolerance: allocator noise comes once, a leak every time.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Callable

PAGE = os.sysconf("SC_PAGE_SIZE")
# RSS moves by several hundred KiB between two rounds without any leak (malloc returns the top
# of its heap, a batch buffer is faulted in again): it only catches what malloc does not see
# (Python's own arenas), at 100 bytes or more per call of a 10,000-call round.
RSS_TOLERANCE = 1 << 20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL(None)
_mallinfo2 = getattr(_libc, "mallinfo2", None)
if _mallinfo2 is not None:
    _mallinfo2.restype = _Mallinfo2


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE


def malloc_bytes() -> int:
    """Bytes malloc has handed out and not had back (0 where glibc lacks mallinfo2)."""
    if _mallinfo2 is None:
        return 0
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


def growth(fn: Callable[[], object], calls: int) -> tuple[int, int]:
    """(growth of malloc's in-use bytes, growth of RSS) over `calls` calls."""
    gc.collect()
    rss, heap = rss_bytes(), malloc_bytes()
    for _ in range(calls):
        fn()
    gc.collect()
    return malloc_bytes() - heap, rss_bytes() - rss


def assert_rss_flat(
    fn: Callable[[], object], calls: int = 10_000, tolerance: int = 128 * 1024, name: str = ""
) -> None:
    """Fails when every one of three rounds of `calls` calls grew memory by more than
    tolerance. Skips under the sanitizers (tests/test_sanitizers.py), whose allocator keeps
    freed memory in quarantine: growth says nothing there."""
    if os.environ.get("AGENT_SANITIZED"):
        import pytest

        pytest.skip("memory growth is not measured under ASan (its quarantine keeps freed memory)")
    for _ in range(3):
        fn()
    grew = []
    for _ in range(3):
        heap, rss = growth(fn, calls)
        grew.append((heap, rss))
        if heap <= tolerance and rss <= max(tolerance, RSS_TOLERANCE):
            return
    label = name or getattr(fn, "__name__", repr(fn))
    raise AssertionError(
        f"{label}: memory grew in each of 3 rounds of {calls:,} calls: "
        + ", ".join(f"malloc {h / 1024:.0f} KiB / RSS {r / 1024:.0f} KiB" for h, r in grew)
        + f" (tolerance: malloc {tolerance / 1024:.0f} KiB, RSS {max(tolerance, RSS_TOLERANCE) / 1024:.0f} KiB)"
    )
