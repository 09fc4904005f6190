/* fuzz_utmp.c: utmp records, from memory (am_utmp_feed) and from a file that grows, shrinks
 * and is snapshotted (am_utmp_read, am_utmp_snapshot on a memfd through /proc/self/fd).
 *
 * Input: byte 0 picks the kind (bits 0-1), the layout (bits 2-3: auto, 384, 400, auto) and
 * the remembered logins (bits 4-5: 1..4); byte 1 the step by which the data becomes visible
 * (in 16-byte units, so partial records are common); the rest are records. Oracles: every
 * batch is well formed, a feed uses whole records only and all of them by the end, nothing is
 * dropped, and the counters add up. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"
#include "core_utmp.h"
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

/* Calls op until it is caught up; a full sink or the per-call bound only pauses it. */
#define DRAIN(call, sink, so, total)                                                       \
    do {                                                                                   \
        unsigned rounds_ = 0;                                                              \
        int st_;                                                                           \
        uint32_t ev_ = 0;                                                                  \
        while ((st_ = (call)) == AM_ERR_FULL || st_ == AM_ERR_LIMIT) {                     \
            (total) += ev_;                                                                \
            if (st_ == AM_ERR_FULL) {                                                      \
                CHECK(am_sink_seal(sink) == AM_OK);                                        \
                take_all(sink, so);                                                        \
            }                                                                              \
            CHECK(++rounds_ < 100000u);                                                    \
        }                                                                                  \
        CHECK(st_ == AM_OK);                                                               \
        (total) += ev_;                                                                    \
    } while (0)

static void fuzz_memory(const uint8_t *data, size_t len, int kind, uint32_t layout,
                        uint32_t sessions, size_t step, am_sink *sink,
                        const struct am_sink_options *so)
{
    struct am_utmp_options o;
    am_utmp_default_options(&o);
    o.layout = layout;
    o.max_sessions = sessions;
    o.max_records = 3;
    am_utmp *u = am_utmp_new(kind, &o);
    CHECK(u != NULL);
    size_t pos = 0, visible = 0;
    uint64_t appended = 0;
    while (visible < len) {
        visible = visible + step < len ? visible + step : len;
        for (;;) {
            size_t used = 0;
            uint32_t ev = 0;
            int st = am_utmp_feed(u, data + pos, visible - pos, sink, &used, &ev);
            CHECK(used <= visible - pos);
            pos += used;
            appended += ev;
            if (st == AM_OK)
                break;
            CHECK(st == AM_ERR_FULL || st == AM_ERR_LIMIT);
            CHECK(used > 0 || st == AM_ERR_FULL);
            if (st == AM_ERR_FULL) {
                CHECK(am_sink_seal(sink) == AM_OK);
                take_all(sink, so);
            }
        }
    }
    struct am_utmp_stats st;
    am_utmp_stats(u, &st);
    if (st.layout != 0) {
        CHECK(pos % st.layout == 0 && len - pos < st.layout);
        CHECK(st.records == pos / st.layout);
    } else {
        CHECK(pos == 0 && layout == 0);
    }
    CHECK(st.events == appended && st.dropped == 0);
    CHECK(st.records == st.events + st.skipped + st.malformed);
    CHECK(st.evicted <= st.records && st.unmatched <= st.records);
    am_utmp_close(u);
}

static void put(int fd, const uint8_t *data, size_t len)
{
    CHECK(ftruncate(fd, 0) == 0);
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, data + done, len - done, (off_t)done);
        CHECK(n > 0);
        done += (size_t)n;
    }
}

static void fuzz_file(const uint8_t *data, size_t len, int kind, uint32_t layout,
                      uint32_t sessions, am_sink *sink, const struct am_sink_options *so)
{
    int fd = memfd_create("fuzz-utmp", MFD_CLOEXEC);
    CHECK(fd >= 0);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct am_utmp_options o;
    am_utmp_default_options(&o);
    o.layout = layout;
    o.max_sessions = sessions;
    o.chunk_records = 2;
    o.max_records = 5;
    am_utmp *u = am_utmp_open(path, kind, &o);
    CHECK(u != NULL);
    uint64_t total = 0;

    put(fd, data, len / 2); /* half: likely a partial record at the end */
    DRAIN(am_utmp_read(u, sink, &ev_), sink, so, total);
    put(fd, data, len);
    DRAIN(am_utmp_read(u, sink, &ev_), sink, so, total);
    struct am_utmp_state state;
    CHECK(am_utmp_state(u, &state) == AM_OK);
    CHECK(state.offset <= len && (state.layout == 0 || state.offset % state.layout == 0));
    put(fd, data, len / 3); /* shorter than the offset when records were read: truncation */
    DRAIN(am_utmp_read(u, sink, &ev_), sink, so, total);
    DRAIN(am_utmp_snapshot(u, sink, &ev_), sink, so, total);
    if (am_utmp_restore(u, &state) == AM_OK)
        DRAIN(am_utmp_read(u, sink, &ev_), sink, so, total);

    struct am_utmp_stats st;
    am_utmp_stats(u, &st);
    CHECK(st.events == total && st.dropped == 0 && st.io_errors == 0);
    CHECK(st.records == st.events + st.skipped + st.malformed);
    am_utmp_close(u);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CHECK(am_utmp_open(NULL, AM_UTMP_WTMP, NULL) == NULL);
    CHECK(am_utmp_new(3, NULL) == NULL);
    CHECK(am_utmp_read(NULL, NULL, NULL) == AM_ERR_ARG);
    CHECK(am_utmp_feed(NULL, data, size, NULL, NULL, NULL) == AM_ERR_ARG);
    if (size < 2)
        return 0;
    static const uint32_t layouts[4] = {AM_UTMP_LAYOUT_AUTO, AM_UTMP_LAYOUT_384,
                                        AM_UTMP_LAYOUT_400, AM_UTMP_LAYOUT_AUTO};
    int kind = data[0] & 3;
    if (kind == 3)
        kind = AM_UTMP_WTMP;
    uint32_t layout = layouts[(data[0] >> 2) & 3];
    uint32_t sessions = 1u + ((data[0] >> 4) & 3);
    size_t step = 16u * (1u + data[1]);
    const uint8_t *records = data + 2;
    size_t len = size - 2;

    /* A small sink: batches seal and fill often. */
    struct am_sink_options so;
    am_sink_default_options(&so);
    so.batch_bytes = 1024;
    so.max_batches = 1;
    am_sink *sink = am_sink_new(&so);
    CHECK(sink != NULL);
    fuzz_memory(records, len, kind, layout, sessions, step, sink, &so);
    CHECK(am_sink_seal(sink) == AM_OK);
    take_all(sink, &so);
    fuzz_file(records, len, kind, layout, sessions, sink, &so);
    CHECK(am_sink_seal(sink) == AM_OK);
    take_all(sink, &so);
    struct am_sink_stats ss;
    am_sink_stats(sink, &ss);
    CHECK(ss.dropped_full == 0 && ss.dropped_encode == 0 && ss.pending_batches == 0);
    am_sink_free(sink);
    return 0;
}
