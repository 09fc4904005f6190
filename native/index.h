/* index.h: the one keyed index of the core. Every keyed table (the socket snapshots, the socket
 * owners, the aggregator's entries, the process poller's pids, the audit parser's open events)
 * is one of these; docs/index.md says why it is built this way.
 *
 * Entries are fixed-size records kept dense (positions 0 .. count-1, in insertion order until
 * a removal moves the last one into the hole); a slot array (open addressing, linear probing,
 * at most half full) maps a key's hash to a position. The hash is SipHash-1-3 keyed with a
 * seed drawn from getrandom(2) when the index is made, so that keys a local user chooses (an
 * argv, an exe path) cannot be built to collide. The index never holds more than `bound`
 * entries: adding one more returns AM_ERR_LIMIT, which the caller counts.
 *
 * A key is a byte string the caller builds for a lookup; the index hashes it and asks the
 * caller's `same` function whether a stored entry has that key (the index stores no key, so
 * a record may hold its key in any form: inline, behind a pointer, or in the caller's own
 * storage that the record names). An entry's position changes only when a removal moves it;
 * a pointer to it holds until the next add (the arrays may move) or removal. */
#ifndef AM_INDEX_H
#define AM_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "core_index.h"

/* Whether `entry` has the key (key, len); ctx is the one given to am_index_init. */
typedef int (*am_index_same_fn)(const void *entry, const void *key, size_t len, const void *ctx);
/* A removal moved `entry` to position pos: for a table that keeps its entries' positions. */
typedef void (*am_index_moved_fn)(void *entry, uint32_t pos, void *ctx);

#define AM_INDEX_NONE UINT32_MAX /* no position (beyond what an enum may hold in C11) */

enum {
    AM_INDEX_FOUND = 0, /* am_index_add: the key was there */
    AM_INDEX_ADDED = 1  /* am_index_add: a new entry */
};

typedef struct am_index {
    uint64_t seed[2];      /* the SipHash key of this index */
    uint8_t *entries;      /* alloc * entry_size bytes, the first count in use */
    uint32_t *hashes;      /* the hash of the entry at each position */
    uint32_t *slots;       /* mask + 1 slots: 0 empty, else position + 1 */
    uint32_t mask;
    uint32_t count, alloc, bound;
    size_t entry_size;
    am_index_same_fn same;
    am_index_moved_fn moved; /* NULL: nobody keeps positions */
    void *ctx;
    struct am_index_stats st;
} am_index;

/* An empty index of at most `bound` entries (1 .. 1 << 24) of entry_size bytes; memory grows
 * by doubling up to the bound as entries come. AM_OK or AM_ERR_ARG; nothing is allocated yet,
 * am_index_release frees what later calls allocate. */
int am_index_init(am_index *x, size_t entry_size, uint32_t bound, am_index_same_fn same,
                  am_index_moved_fn moved, void *ctx);
void am_index_release(am_index *x);
/* Every entry gone; the memory and the seed stay. */
void am_index_clear(am_index *x);
/* Room for n entries (at most the bound) at once, for a caller that knows how many will come:
 * one allocation and one rehash instead of a doubling at each power of two (at least a
 * doubling when it grows at all). AM_OK, or AM_ERR_NOMEM (the index is as it was; adds still
 * grow it as they need). */
int am_index_reserve(am_index *x, uint32_t n);

/* The position of the entry with that key, or AM_INDEX_NONE. */
uint32_t am_index_find(am_index *x, const void *key, size_t len);
/* The entry with that key: AM_INDEX_FOUND with *pos its position, or AM_INDEX_ADDED with *pos
 * a new entry of zero bytes that the caller fills (so that `same` knows it) before the next
 * call; AM_ERR_LIMIT when the index holds `bound` entries (counted in st.full), AM_ERR_NOMEM. */
int am_index_add(am_index *x, const void *key, size_t len, uint32_t *pos);
/* The same two with the key's hash given: tables that look one key up in each other share
 * their seed (am_index_share_seed), so the hash one of them stored for an entry
 * (am_index_hash_at) is its hash in the others too, and is not computed again. A hash that is
 * not the key's breaks that key's lookups (a miss, a second entry), never memory safety. */
uint32_t am_index_hash(const am_index *x, const void *key, size_t len);
uint32_t am_index_find_hashed(am_index *x, const void *key, size_t len, uint32_t hash);
int am_index_add_hashed(am_index *x, const void *key, size_t len, uint32_t hash, uint32_t *pos);
/* x takes from's seed: AM_OK, or AM_ERR_ARG when x holds entries (hashed under its own). */
int am_index_share_seed(am_index *x, const am_index *from);

/* Removes the entry at pos (< count). The last entry moves into pos (`moved` is told): a walk
 * that removes as it goes looks at pos again. */
void am_index_remove_at(am_index *x, uint32_t pos);

static inline uint32_t am_index_count(const am_index *x)
{
    return x->count;
}

static inline void *am_index_at(const am_index *x, uint32_t pos)
{
    return x->entries + (size_t)pos * x->entry_size;
}

/* The hash of the key of the entry at pos (< count). */
static inline uint32_t am_index_hash_at(const am_index *x, uint32_t pos)
{
    return x->hashes[pos];
}

/* Bytes held now, and the most an index of these dimensions can ever hold. */
size_t am_index_memory(const am_index *x);
size_t am_index_memory_bound(size_t entry_size, uint32_t bound);
void am_index_stats(const am_index *x, struct am_index_stats *out);

/* SipHash-c-d of data under the 16-byte key (k0, k1): the index uses c = 1, d = 3. */
uint64_t am_siphash(uint64_t k0, uint64_t k1, const void *data, size_t len, int c, int d);
/* A new seed from getrandom(2); where the kernel has none to give (ENOSYS before Linux 3.17,
 * EAGAIN before the pool is ready at boot) one mixed from the clocks, the pid and addresses.
 * Returns 1 when the seed came from getrandom. */
int am_index_reseed(am_index *x, int use_getrandom);

#endif
