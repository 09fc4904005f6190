/* fuzz_audit_text.c: audit log text in one to three chunks, cut at places derived from the
 * input, then end of input. Checks every status, the contract of *consumed, each batch's
 * msgpack shape and that the parser's memory stays within its bound. For one input in two
 * (by its hash) the parser is in unmarked mode (am_audit_nl_unmarked: events complete at drain
 * ends, exec events without EXECVE take titles from its cache or /proc) and a drain end follows
 * each chunk. */
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "core_audit_netlink.h"
#include "fuzz_check.h"

static void feed_chunk(struct fuzz_audit *f, const char *data, size_t len)
{
    size_t off = 0;
    unsigned rounds = 0;
    for (;;) {
        size_t consumed = (size_t)-1;
        int s = am_audit_feed(f->p, f->sink, data + off, len - off, &consumed);
        fuzz_check_memory(f);
        CHECK(consumed <= len - off);
        off += consumed;
        if (s != AM_ERR_FULL) {
            /* AM_OK means every byte was used: a partial line is the parser's to keep. */
            CHECK(s == AM_OK && off == len);
            return;
        }
        fuzz_on_full(f, consumed > 0, &rounds);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* FNV-1a of the input chooses the chunk count and the cuts. */
    uint32_t h = 2166136261u;
    for (size_t k = 0; k < size; k++)
        h = (h ^ data[k]) * 16777619u;
    size_t cuts[2] = {size, size};
    unsigned chunks = 1 + h % 3;
    if (chunks >= 2)
        cuts[0] = (size_t)((h >> 2) % (size + 1));
    if (chunks == 3)
        cuts[1] = (size_t)((h >> 13) % (size + 1));
    if (cuts[0] > cuts[1]) {
        size_t tmp = cuts[0];
        cuts[0] = cuts[1];
        cuts[1] = tmp;
    }

    struct fuzz_audit f;
    fuzz_audit_new(&f);
    fuzz_check_null_handles(&f);
    const char *text = (const char *)data;
    int unmarked = (h >> 20) & 1;
    if (unmarked)
        CHECK(am_audit_nl_unmarked(f.p, 1) == AM_OK);
    struct am_anl_stats nl = {0};
    uint64_t now_ms = 1000;
    feed_chunk(&f, text, cuts[0]);
    if (unmarked)
        CHECK(am_audit_nl_drain_end(f.p, f.sink, now_ms += 50, &nl) == AM_OK);
    feed_chunk(&f, text + cuts[0], cuts[1] - cuts[0]);
    if (unmarked)
        CHECK(am_audit_nl_drain_end(f.p, f.sink, now_ms += 50, &nl) == AM_OK);
    feed_chunk(&f, text + cuts[1], size - cuts[1]);
    if (unmarked) {
        CHECK(am_audit_nl_drain_end(f.p, f.sink, now_ms += 50, &nl) == AM_OK);
        fuzz_check_memory(&f);
        /* At most one title looked up or learnt per event sent. */
        struct am_audit_stats ps;
        am_audit_stats(f.p, NULL, &ps);
        CHECK(nl.titles_cached + nl.titles_proc + nl.titles_missing + nl.titles_learnt <=
              ps.events);
        CHECK(nl.unmarked_completed <= ps.events);
    }
    fuzz_finish(&f);

    struct am_audit_stats st;
    am_audit_stats(f.p, NULL, &st);
    CHECK(st.bytes == size);
    fuzz_audit_free(&f);
    return 0;
}
