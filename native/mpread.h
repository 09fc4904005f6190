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
/* Skips one whole item (containers included); 1, else 0 (pos unchanged). */
int mpr_skip(mpr *r);

#endif
