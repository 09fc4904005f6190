/* core_index.h: the keyed index's counters (native/index.h), and a test-only entry point.
 *
 * TEST ONLY: the am_index_test_* functions exist so that tests/test_index.py (through
 * src/agent/native/index_probe.py) and native/fuzz/fuzz_index.c can drive one index against a
 * reference, check its invariants, and measure what the aggregator's index costs. The agent
 * never calls them. */
#ifndef AM_CORE_INDEX_H
#define AM_CORE_INDEX_H

#include "core.h"

/* CDEF-BEGIN */
struct am_index_stats {
    uint64_t entries;  /* held now */
    uint64_t bound;    /* the most it may hold */
    uint64_t finds;    /* lookups (a find, or the lookup of an add) */
    uint64_t added;    /* entries added */
    uint64_t removed;  /* entries removed */
    uint64_t full;     /* adds refused at the bound */
    uint64_t probes;   /* slots read by lookups and removals: the cost of the index */
    uint64_t longest;  /* the longest run one lookup read */
    uint64_t seeded;   /* 1: the seed came from getrandom(2); 0: from the fallback */
};

/* An index of byte keys (at most 64 bytes) to uint64 values, bounded at `bound` entries.
 * getrandom 0 seeds it with the fallback that serves where getrandom(2) fails. */
typedef struct am_index_test am_index_test;
am_index_test *am_index_test_new(uint32_t bound, int getrandom);
void am_index_test_free(am_index_test *t);
/* AM_OK when added, AM_EMPTY when the key was there (its value replaced), AM_ERR_LIMIT when
 * full, AM_ERR_ARG for a key over 64 bytes. */
int am_index_test_put(am_index_test *t, const uint8_t *key, size_t len, uint64_t value);
/* AM_OK with *value, or AM_EMPTY when the key is absent. */
int am_index_test_get(am_index_test *t, const uint8_t *key, size_t len, uint64_t *value);
/* AM_OK when removed, AM_EMPTY when absent. */
int am_index_test_delete(am_index_test *t, const uint8_t *key, size_t len);
/* Removes, in one walk over the entries, every entry whose value is below `below` (the way
 * the tables prune); returns how many. */
uint32_t am_index_test_prune(am_index_test *t, uint64_t below);
/* Every entry gone (the seed and the memory stay). */
void am_index_test_clear(am_index_test *t);
/* am_index_reserve: room for n entries at once. *room: the entries the arrays now hold
 * without growing. AM_OK, AM_ERR_NOMEM, AM_ERR_ARG. */
int am_index_test_reserve(am_index_test *t, uint32_t n, uint32_t *room);
/* AM_OK when every invariant holds: each entry is found at its position through its own key
 * and was told that position (at its add, then by the index's `moved` calls); each non-empty
 * slot names a distinct entry; no run has a gap between an entry's home slot and its slot.
 * AM_ERR_LIMIT otherwise. */
int am_index_test_check(am_index_test *t);
void am_index_test_stats(const am_index_test *t, struct am_index_stats *out);
void am_index_test_seed(const am_index_test *t, uint64_t *k0, uint64_t *k1);
uint64_t am_index_test_siphash(uint64_t k0, uint64_t k1, const uint8_t *data, size_t len,
                               int c, int d);
/* A process aggregator (cache_size entries) fed one batch, then flushed, its output taken and
 * thrown away: *out gets its index's counters. AM_OK, or AM_ERR_ARG. */
int am_index_test_aggregate(uint32_t cache_size, const uint8_t *batch, size_t len,
                            struct am_index_stats *out);
/* CDEF-END */

/* The counters of the aggregator's index (aggregate.c), for am_index_test_aggregate. */
struct am_agg;
void agg_index_stats(const struct am_agg *a, struct am_index_stats *out);

#endif
