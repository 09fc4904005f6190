/* heap.c: the C library heap's thresholds (core_heap.h says why). */
#include <stdlib.h>

#include "core_heap.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

int am_heap_return_freed(void)
{
#ifdef __GLIBC__
    /* mallopt returns 1 on success. Setting either threshold also turns off glibc's dynamic
     * raising of both. */
    int mmap_ok = mallopt(M_MMAP_THRESHOLD, AM_HEAP_THRESHOLD_BYTES);
    int trim_ok = mallopt(M_TRIM_THRESHOLD, AM_HEAP_THRESHOLD_BYTES);
    return mmap_ok == 1 && trim_ok == 1;
#else
    return 0;
#endif
}
