"""The C library heap's thresholds (native/heap.c, core_heap.h): freed blocks of 128 KiB or
more go back to the system instead of staying in the agent's RSS (docs/performance.md)."""

from __future__ import annotations

from agent._core import lib

THRESHOLD_BYTES = int(lib.AM_HEAP_THRESHOLD_BYTES)


def return_freed_memory() -> bool:
    """Fixes glibc's mmap and trim thresholds; True when it applied (False on a C library
    without them, such as musl). Call once, before any thread starts."""
    return bool(lib.am_heap_return_freed())
