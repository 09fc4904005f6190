/* core_heap.h: how the C library's heap gives freed memory back (native/heap.c).
 *
 * glibc's malloc serves a request below its mmap threshold from the heap, and raises that
 * threshold (up to 32 MiB on 64-bit) each time a larger mmap'd block is freed: after the
 * agent's start-up has freed a few large buffers (the imports' byte code, a snapshot, a JSON
 * document), blocks of hundreds of KiB come from the heap, and once freed they stay in the
 * agent's RSS (a hole below the heap's top is not trimmed). Fixing both thresholds keeps every
 * block of 128 KiB or more in its own mapping, unmapped when freed, and trims the heap's top
 * past 128 KiB (docs/performance.md, "Memory"). */
#ifndef AM_CORE_HEAP_H
#define AM_CORE_HEAP_H

#include "core.h"

/* CDEF-BEGIN */
/* Fixes the C library's mmap and trim thresholds at AM_HEAP_THRESHOLD_BYTES. Call once, before
 * any thread starts (mallopt is not meant to race with allocations in other threads).
 * Returns 1 when it applied (glibc), 0 when the C library has no such setting (musl, whose
 * malloc gives large blocks back by itself). */
enum { AM_HEAP_THRESHOLD_BYTES = 131072 };
int am_heap_return_freed(void);
/* CDEF-END */

#endif
