/* fuzz_aggregate.c: the aggregator (native/aggregate.c) and its msgpack reader (mpread.c) on
 * arbitrary batches. byte 0 picks the kind and the cache size; the rest is split at 0xff 0xfe
 * marks into batches, each added to the aggregator, then one flush.
 * Oracles: no crash or sanitizer report; every event read is accounted for exactly once
 * (events_in == merged + passed + emitted + skipped + filtered after the flush); no event is dropped by the output
 * sink; each output batch is one array32 of whole items; memory stays within its bound. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core_aggregate.h"
#include "fuzz_check.h"
#include "mpread.h"

static void take_all(am_sink *out)
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
            CHECK(mpr_skip(&r));
        }
        CHECK(r.pos == len);
    }
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
        while ((st = am_agg_add_batch(a, data + start, i - start, &next, out)) == AM_ERR_FULL)
            take_all(out);
        CHECK(st == AM_OK);
        struct am_agg_stats s;
        am_agg_stats(a, &s);
        CHECK(s.memory <= s.memory_bound);
        start = i + 2;
        i++;
    }
    int st;
    while ((st = am_agg_flush(a, out)) == AM_ERR_FULL)
        take_all(out);
    CHECK(st == AM_OK);
    CHECK(am_sink_seal(out) == AM_OK);
    take_all(out);

    struct am_agg_stats s;
    am_agg_stats(a, &s);
    struct am_sink_stats ss;
    am_sink_stats(out, &ss);
    CHECK(s.entries == 0);
    CHECK(s.events_in == s.merged + s.passed + s.emitted + s.skipped + s.filtered);
    CHECK(s.evicted <= s.emitted);
    CHECK(ss.dropped_full == 0 && ss.dropped_encode == 0);
    CHECK(ss.events == s.passed + s.emitted);
    am_agg_free(a);
    am_sink_free(out);
    return 0;
}
