/* mpread.h: a bounds-checked msgpack reader for the core's own batches (the aggregator reads
 * events back). It never reads past len; a malformed or too deeply nested item is an error,
 * never undefined behaviour. */
#ifndef AM_MPREAD_H
#define AM_MPREAD_H

#include <stddef.h>
#include <stdint.h>

enum { MPR_MAX_DEPTH = 32 };

typedef struct mpr {
    const uint8_t *data;
    size_t len;
    size_t pos;
} mpr;

/* A container header: returns 1 and sets *count if the next item is an array (resp. map) and
 * fits, else 0 (pos unchanged). */
int mpr_array(mpr *r, uint32_t *count);
int mpr_map(mpr *r, uint32_t *count);
/* A str: returns 1 with its bytes, else 0 (pos unchanged). */
int mpr_str(mpr *r, const uint8_t **s, uint32_t *len);
/* An int or uint that fits int64 (a uint above INT64_MAX fails): 1, else 0 (pos unchanged). */
int mpr_int(mpr *r, int64_t *value);
/* An int or uint that is not negative, up to UINT64_MAX: 1, else 0 (pos unchanged). */
int mpr_uint(mpr *r, uint64_t *value);
/* Skips one whole item (containers included); 1, else 0 (pos unchanged). */
int mpr_skip(mpr *r);
/* mpr_skip for an item that sits max_depth levels above the bound (1..MPR_MAX_DEPTH): a
 * map's value, read on its own, within MPR_MAX_DEPTH - 1, so that the map stays within
 * MPR_MAX_DEPTH without being skipped whole first. */
int mpr_skip_within(mpr *r, int max_depth);

#endif
