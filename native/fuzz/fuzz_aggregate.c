/* fuzz_aggregate.c: the aggregator (native/aggregate.c) and its msgpack reader (mpread.c) on
 * arbitrary batches. byte 0 picks the kind and the cache size; the rest is split at 0xff 0xfe
 * marks into batches, each added to the aggregator (a batch that starts with 0xfd: read back
 * as a checkpoint's, am_agg_restore_batch, from the next byte), then a checkpoint is taken
 * (am_agg_snapshot) and one flush.
 * Oracles: no crash or sanitizer report; every event or entry read is accounted for exactly
 * once (events_in + restored == merged + passed + emitted + skipped + filtered after the
 * flush); no event is dropped by the output sink; each output batch is one array32 of whole
 * items; memory stays within its bound; the snapshot leaves the aggregator as it was, and
 * restored into a new aggregator of the same kind and bounds it flushes the same events
 * (as a multiset: a restored entry larger than the first one may pass through at once). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core_aggregate.h"
#include "fuzz_check.h"
#include "mpread.h"

/* The events of some output batches, each a copy, for a comparison as multisets. */
typedef struct seen {
    uint8_t *items[4096];
    size_t lens[4096];
    size_t count;
    int overflow;
} seen;

static void seen_add(seen *s, const uint8_t *p, size_t n)
{
    if (s->count == sizeof s->items / sizeof s->items[0]) {
        s->overflow = 1;
        return;
    }
    uint8_t *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    memcpy(copy, p, n);
    s->items[s->count] = copy;
    s->lens[s->count++] = n;
}

static void seen_free(seen *s)
{
    for (size_t i = 0; i < s->count; i++)
        free(s->items[i]);
    s->count = 0;
}

static int cmp_item(const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    if (an != bn)
        return an < bn ? -1 : 1;
    return memcmp(a, b, an);
}

static void seen_sort(seen *s)
{
    for (size_t i = 1; i < s->count; i++)
        for (size_t j = i; j > 0 && cmp_item(s->items[j - 1], s->lens[j - 1], s->items[j],
                                             s->lens[j]) > 0; j--) {
            uint8_t *p = s->items[j];
            size_t n = s->lens[j];
            s->items[j] = s->items[j - 1];
            s->lens[j] = s->lens[j - 1];
            s->items[j - 1] = p;
            s->lens[j - 1] = n;
        }
}

/* Takes every sealed batch, checks its form, and (when keep is not NULL) copies its events. */
static void take_into(am_sink *out, seen *keep)
{
    const uint8_t *data;
    size_t len;
    uint32_t events;
    while (am_sink_take(out, &data, &len, &events) == AM_OK) {
        mpr r = {data, len, 0};
        uint32_t count;
        CHECK(len >= 5 && data[0] == 0xdd && mpr_array(&r, &count) && count == events);
        for (uint32_t i = 0; i < count; i++) {
            uint32_t fields;
            mpr probe = r;
            CHECK(mpr_map(&probe, &fields));
            size_t at = r.pos;
            CHECK(mpr_skip(&r));
            if (keep != NULL)
                seen_add(keep, data + at, r.pos - at);
        }
        CHECK(r.pos == len);
    }
}

static void take_all(am_sink *out)
{
    take_into(out, NULL);
}

/* Flushes a into out until done, keeping the events written. */
static void flush_into(am_agg *a, am_sink *out, seen *keep)
{
    int st;
    while ((st = am_agg_flush(a, out)) == AM_ERR_FULL)
        take_into(out, keep);
    CHECK(st == AM_OK);
    CHECK(am_sink_seal(out) == AM_OK);
    take_into(out, keep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct am_agg_options o;
    am_agg_default_options(&o);
    o.kind = (data[0] & 0x40) ? AM_AGG_NONE : (data[0] & 1) ? AM_AGG_NETWORK : AM_AGG_PROCESS;
    if (data[0] & 0x20)
        memcpy(o.accept, "exec,conn,auth", sizeof "exec,conn,auth");
    o.cache_size = 1u + ((data[0] >> 1) & 7);
    o.max_bytes = (data[0] & 0x10) ? 1024 : 1u << 16;
    struct am_sink_options so = {65536, 2};
    am_agg *a = am_agg_new(&o);
    am_sink *out = am_sink_new(&so);
    CHECK(a != NULL && out != NULL);
    CHECK(am_agg_add_batch(NULL, data, size, NULL, out) == AM_ERR_ARG);
    if (data[0] & 0x80)
        CHECK(am_agg_filter_laddr(a, 1, "10.0.0.2,::1", 12) == AM_OK);
    if (data[0] & 0x08)
        CHECK(am_agg_filter_laddr(a, 1, "", 0) == AM_OK); /* nothing with laddr passes */
    CHECK(am_agg_filter_laddr(a, 1, ",", 1) == AM_ERR_ARG);

    size_t start = 1;
    for (size_t i = 1; i <= size; i++) {
        int mark = i + 1 < size && data[i] == 0xff && data[i + 1] == 0xfe;
        if (i < size && !mark)
            continue;
        uint32_t next = 0;
        int st;
        int restoring = i > start && data[start] == 0xfd;
        const uint8_t *batch = data + start + restoring;
        size_t batch_len = i - start - restoring;
        while ((st = restoring ? am_agg_restore_batch(a, batch, batch_len, &next, out)
                               : am_agg_add_batch(a, batch, batch_len, &next, out)) == AM_ERR_FULL)
            take_all(out);
        CHECK(st == AM_OK);
        struct am_agg_stats s;
        am_agg_stats(a, &s);
        CHECK(s.memory <= s.memory_bound);
        start = i + 2;
        i++;
    }
    /* Whatever passed or was evicted so far is not part of the comparison. */
    CHECK(am_sink_seal(out) == AM_OK);
    take_all(out);

    /* The checkpoint: into its own sink, resumed when it is full; nothing in a changes. */
    struct am_agg_stats before, after;
    am_agg_stats(a, &before);
    struct am_sink_options snap_opts = {65536, 1};
    am_sink *snap = am_sink_new(&snap_opts);
    CHECK(snap != NULL);
    CHECK(am_agg_snapshot(NULL, NULL, snap) == AM_ERR_ARG);
    uint8_t *saved[64];
    size_t saved_len[64];
    size_t saved_count = 0;
    uint32_t next_entry = 0;
    int st;
    for (;;) {
        st = am_agg_snapshot(a, &next_entry, snap);
        if (st != AM_ERR_FULL)
            CHECK(st == AM_OK && am_sink_seal(snap) == AM_OK);
        const uint8_t *p;
        size_t n;
        uint32_t events;
        while (am_sink_take(snap, &p, &n, &events) == AM_OK) {
            CHECK(saved_count < 64);
            saved[saved_count] = malloc(n);
            CHECK(saved[saved_count] != NULL);
            memcpy(saved[saved_count], p, n);
            saved_len[saved_count++] = n;
        }
        if (st == AM_OK)
            break;
    }
    am_agg_stats(a, &after);
    CHECK(memcmp(&before, &after, sizeof before) == 0);

    /* The same entries restored into a new aggregator flush as the same events. */
    struct am_agg_options plain = o;
    am_agg *b = am_agg_new(&plain);
    am_sink *b_out = am_sink_new(&so);
    CHECK(b != NULL && b_out != NULL);
    static seen from_a, from_b;
    for (size_t k = 0; k < saved_count; k++) {
        uint32_t next = 0;
        while ((st = am_agg_restore_batch(b, saved[k], saved_len[k], &next, b_out)) ==
               AM_ERR_FULL)
            take_into(b_out, &from_b);
        CHECK(st == AM_OK);
        free(saved[k]);
    }
    struct am_agg_stats bs;
    am_agg_stats(b, &bs);
    CHECK(bs.malformed == 0 && bs.restored == before.entries);
    flush_into(b, b_out, &from_b);
    flush_into(a, out, &from_a);
    struct am_sink_stats snap_stats;
    am_sink_stats(snap, &snap_stats);
    if (!from_a.overflow && !from_b.overflow && snap_stats.dropped_encode == 0) {
        CHECK(from_a.count == from_b.count);
        seen_sort(&from_a);
        seen_sort(&from_b);
        for (size_t k = 0; k < from_a.count; k++)
            CHECK(cmp_item(from_a.items[k], from_a.lens[k], from_b.items[k], from_b.lens[k]) == 0);
    }
    seen_free(&from_a);
    seen_free(&from_b);
    from_a.overflow = from_b.overflow = 0;
    am_agg_free(b);
    am_sink_free(b_out);
    am_sink_free(snap);

    struct am_agg_stats s;
    am_agg_stats(a, &s);
    struct am_sink_stats ss;
    am_sink_stats(out, &ss);
    CHECK(s.entries == 0);
    CHECK(s.events_in + s.restored == s.merged + s.passed + s.emitted + s.skipped + s.filtered);
    CHECK(s.evicted <= s.emitted);
    CHECK(ss.dropped_full == 0 && ss.dropped_encode == 0);
    CHECK(ss.events == s.passed + s.emitted);
    am_agg_free(a);
    am_sink_free(out);
    return 0;
}
