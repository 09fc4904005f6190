/* fuzz_audit_text.c: audit log text in one to three chunks, cut at places derived from the
 * input, then end of input. Checks every status, the contract of *consumed, each batch's
 * msgpack shape and that the parser's memory stays within its bound. */
#include <stddef.h>
#include <stdint.h>

#include "core.h"
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
    feed_chunk(&f, text, cuts[0]);
    feed_chunk(&f, text + cuts[0], cuts[1] - cuts[0]);
    feed_chunk(&f, text + cuts[1], size - cuts[1]);
    fuzz_finish(&f);

    struct am_audit_stats st;
    am_audit_stats(f.p, NULL, &st);
    CHECK(st.bytes == size);
    fuzz_audit_free(&f);
    return 0;
}
