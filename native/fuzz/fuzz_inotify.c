/* fuzz_inotify.c: inotify records (am_inotify_decode, as read(2) returns them) over a decoder
 * with a few watches, and the same bytes as an audit batch for the actor join
 * (am_inotify_audit).
 *
 * Input: byte 0 picks the options (bit 0: join actors, bit 1: a ring of 16 pending events,
 * bit 2: decode in two pieces, split at byte 1); the rest are records, and also the audit
 * batch. Oracles: every batch is well formed, every event decoded is written or counted as
 * dropped, and the counters add up. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core.h"
#include "core_inotify.h"
#include "fuzz_check.h"

static uint64_t take_all(am_sink *s, const struct am_sink_options *o)
{
    uint64_t events = 0;
    for (;;) {
        const uint8_t *data = NULL;
        size_t len = 0;
        uint32_t n = 0;
        int st = am_sink_take(s, &data, &len, &n);
        if (st == AM_EMPTY)
            return events;
        CHECK(st == AM_OK);
        CHECK(data != NULL && len <= o->batch_bytes && n > 0);
        mpc_check_batch(data, len, n);
        events += n;
    }
}

static uint64_t decode_all(am_inotify *h, am_sink *sink, const struct am_sink_options *so,
                           const uint8_t *data, size_t len)
{
    uint64_t appended = 0, taken = 0;
    int st = am_inotify_decode(h, sink, data, len, &appended);
    CHECK(st == AM_OK || st == AM_ERR_FULL);
    CHECK(am_sink_seal(sink) == AM_OK);
    taken += take_all(sink, so);
    return taken;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    struct am_inotify_options o;
    am_inotify_default_options(&o);
    o.join_ms = data[0] & 1 ? 60000 : 0;
    o.max_pending = data[0] & 2 ? 16 : 4096;
    am_inotify *h = am_inotify_new(&o);
    CHECK(h != NULL);
    CHECK(am_inotify_test_watch(h, 1, "/w", 1, 1) == AM_OK);
    CHECK(am_inotify_test_watch(h, 2, "/w/sub", 1, 1) == AM_OK);
    CHECK(am_inotify_test_watch(h, 3, "/", 0, 0) == AM_OK);
    CHECK(am_inotify_test_watch(h, -1, "/neg", 1, 0) == AM_OK);
    struct am_sink_options so;
    am_sink_default_options(&so);
    so.batch_bytes = 4096;
    so.max_batches = 2;
    am_sink *sink = am_sink_new(&so);
    CHECK(sink != NULL);

    const uint8_t *rec = data + 1;
    size_t len = size - 1;
    CHECK(am_inotify_audit(h, rec, len) == AM_OK);
    uint64_t taken = 0;
    if (data[0] & 4) {
        size_t cut = data[1] < len ? data[1] : len;
        taken += decode_all(h, sink, &so, rec, cut);
        taken += decode_all(h, sink, &so, rec + cut, len - cut);
    } else {
        taken += decode_all(h, sink, &so, rec, len);
    }
    uint64_t appended = 0;
    int st;
    unsigned rounds = 0;
    while ((st = am_inotify_release(h, sink, 1, &appended)) == AM_ERR_FULL) {
        CHECK(am_sink_seal(sink) == AM_OK);
        taken += take_all(sink, &so);
        CHECK(++rounds < 100000u);
    }
    CHECK(st == AM_OK);
    CHECK(am_sink_seal(sink) == AM_OK);
    taken += take_all(sink, &so);

    struct am_inotify_stats s;
    am_inotify_stats(h, &s);
    struct am_sink_stats ss;
    am_sink_stats(sink, &ss);
    CHECK(s.events == taken);
    CHECK(ss.events == taken + ss.dropped_full + ss.dropped_encode || ss.events == taken);
    CHECK(s.create + s.modify + s.attrib + s.move + s.delete + s.open + s.close_write +
              s.overflows >= s.events);
    if (o.join_ms != 0)
        CHECK(s.actors_matched + s.actors_unmatched + s.overflows >= s.events);
    am_sink_free(sink);
    am_inotify_free(h);
    return 0;
}
