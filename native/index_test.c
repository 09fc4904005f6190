/* index_test.c: the test-only entry point of the keyed index (core_index.h). Not called by
 * the agent: tests/test_index.py and native/fuzz/fuzz_index.c drive an index of byte keys
 * through it. */
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "core_aggregate.h"
#include "core_index.h"
#include "index.h"

enum { KEY_MAX = 64 };

struct test_entry {
    uint64_t value;
    uint32_t pos;     /* kept by entry_moved: checks the index's `moved` calls */
    uint8_t len;
    uint8_t key[KEY_MAX];
};

struct am_index_test {
    am_index x;
};

static int same_key(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    const struct test_entry *e = entry;
    return e->len == len && memcmp(e->key, key, len) == 0;
}

static void entry_moved(void *entry, uint32_t pos, void *ctx)
{
    (void)ctx;
    ((struct test_entry *)entry)->pos = pos;
}

am_index_test *am_index_test_new(uint32_t bound, int getrandom)
{
    am_index_test *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    if (am_index_init(&t->x, sizeof(struct test_entry), bound, same_key, entry_moved, NULL) != AM_OK) {
        free(t);
        return NULL;
    }
    if (!getrandom)
        am_index_reseed(&t->x, 0);
    return t;
}

void am_index_test_free(am_index_test *t)
{
    if (t == NULL)
        return;
    am_index_release(&t->x);
    free(t);
}

static int key_ok(const am_index_test *t, const uint8_t *key, size_t len)
{
    return t != NULL && (key != NULL || len == 0) && len <= KEY_MAX;
}

int am_index_test_put(am_index_test *t, const uint8_t *key, size_t len, uint64_t value)
{
    if (!key_ok(t, key, len))
        return AM_ERR_ARG;
    uint32_t pos;
    int st = am_index_add(&t->x, key, len, &pos);
    if (st < 0)
        return st;
    struct test_entry *e = am_index_at(&t->x, pos);
    if (st == AM_INDEX_ADDED) {
        e->pos = pos;
        e->len = (uint8_t)len;
        if (len > 0)
            memcpy(e->key, key, len);
    }
    e->value = value;
    return st == AM_INDEX_ADDED ? AM_OK : AM_EMPTY;
}

int am_index_test_get(am_index_test *t, const uint8_t *key, size_t len, uint64_t *value)
{
    if (!key_ok(t, key, len) || value == NULL)
        return AM_ERR_ARG;
    uint32_t pos = am_index_find(&t->x, key, len);
    if (pos == AM_INDEX_NONE)
        return AM_EMPTY;
    *value = ((const struct test_entry *)am_index_at(&t->x, pos))->value;
    return AM_OK;
}

int am_index_test_delete(am_index_test *t, const uint8_t *key, size_t len)
{
    if (!key_ok(t, key, len))
        return AM_ERR_ARG;
    uint32_t pos = am_index_find(&t->x, key, len);
    if (pos == AM_INDEX_NONE)
        return AM_EMPTY;
    am_index_remove_at(&t->x, pos);
    return AM_OK;
}

uint32_t am_index_test_prune(am_index_test *t, uint64_t below)
{
    if (t == NULL)
        return 0;
    uint32_t removed = 0;
    for (uint32_t i = 0; i < am_index_count(&t->x);) {
        const struct test_entry *e = am_index_at(&t->x, i);
        if (e->value < below) {
            am_index_remove_at(&t->x, i); /* the last entry moved to i: look at i again */
            removed++;
        } else {
            i++;
        }
    }
    return removed;
}

void am_index_test_clear(am_index_test *t)
{
    if (t != NULL)
        am_index_clear(&t->x);
}

int am_index_test_reserve(am_index_test *t, uint32_t n, uint32_t *room)
{
    if (t == NULL || room == NULL)
        return AM_ERR_ARG;
    int st = am_index_reserve(&t->x, n);
    *room = t->x.alloc;
    return st;
}

int am_index_test_check(am_index_test *t)
{
    if (t == NULL)
        return AM_ERR_ARG;
    am_index *x = &t->x;
    if (x->count > x->bound || x->count > x->alloc)
        return AM_ERR_LIMIT;
    uint32_t named = 0;
    for (uint32_t s = 0; x->slots != NULL && s <= x->mask; s++) {
        uint32_t v = x->slots[s];
        if (v == 0)
            continue;
        if (v > x->count)
            return AM_ERR_LIMIT;
        named++;
        /* No empty slot between the entry's home and its slot: a lookup reaches it. */
        for (uint32_t k = x->hashes[v - 1] & x->mask; k != s; k = (k + 1) & x->mask)
            if (x->slots[k] == 0)
                return AM_ERR_LIMIT;
    }
    if (named != x->count)
        return AM_ERR_LIMIT;
    struct am_index_stats before = x->st;
    for (uint32_t i = 0; i < x->count; i++) {
        const struct test_entry *e = am_index_at(x, i);
        if (e->pos != i || am_index_find(x, e->key, e->len) != i)
            return AM_ERR_LIMIT;
    }
    x->st = before; /* the check's own lookups are not the caller's */
    return AM_OK;
}

void am_index_test_stats(const am_index_test *t, struct am_index_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (t != NULL)
        am_index_stats(&t->x, out);
}

void am_index_test_seed(const am_index_test *t, uint64_t *k0, uint64_t *k1)
{
    if (t == NULL || k0 == NULL || k1 == NULL)
        return;
    *k0 = t->x.seed[0];
    *k1 = t->x.seed[1];
}

uint64_t am_index_test_siphash(uint64_t k0, uint64_t k1, const uint8_t *data, size_t len,
                               int c, int d)
{
    if (data == NULL && len > 0)
        return 0;
    return am_siphash(k0, k1, data, len, c, d);
}

int am_index_test_aggregate(uint32_t cache_size, const uint8_t *batch, size_t len,
                            struct am_index_stats *out)
{
    if (out == NULL || (batch == NULL && len > 0))
        return AM_ERR_ARG;
    memset(out, 0, sizeof *out);
    struct am_agg_options o;
    am_agg_default_options(&o);
    o.kind = AM_AGG_PROCESS;
    o.cache_size = cache_size;
    o.max_bytes = 1u << 30; /* the entry count, not the bytes, bounds the cache here */
    am_agg *a = am_agg_new(&o);
    am_sink *sink = am_sink_new(NULL);
    int st = a != NULL && sink != NULL ? AM_OK : AM_ERR_ARG;
    const uint8_t *data;
    size_t dlen;
    uint32_t events, next = 0;
    while (st == AM_OK && (st = am_agg_add_batch(a, batch, len, &next, sink)) == AM_ERR_FULL)
        while (am_sink_take(sink, &data, &dlen, &events) == AM_OK)
            st = AM_OK;
    while (st == AM_OK && (st = am_agg_flush(a, sink)) == AM_ERR_FULL)
        while (am_sink_take(sink, &data, &dlen, &events) == AM_OK)
            st = AM_OK;
    if (st == AM_OK)
        agg_index_stats(a, out);
    am_agg_free(a);
    am_sink_free(sink);
    return st;
}
