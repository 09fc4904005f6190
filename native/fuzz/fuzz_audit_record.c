/* fuzz_audit_record.c: one netlink audit record, as the live source delivers it. The first two
 * bytes are the message type (little-endian), the rest is the payload
 * ("audit(SEC.MS:SERIAL): fields"). The record goes in twice (a repeated serial), then the
 * open events expire at two clock readings, then end of input. */
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "fuzz_check.h"

static void feed_record(struct fuzz_audit *f, uint16_t type, const char *payload, size_t len)
{
    unsigned rounds = 0;
    int s;
    while ((s = am_audit_feed_record(f->p, f->sink, type, payload, len)) == AM_ERR_FULL) {
        fuzz_check_memory(f);
        fuzz_on_full(f, 0, &rounds);
    }
    fuzz_check_memory(f);
    /* A record the parser cannot use is counted, not refused. */
    CHECK(s == AM_OK);
}

static void expire(struct fuzz_audit *f, uint64_t now_ms)
{
    unsigned rounds = 0;
    int s;
    while ((s = am_audit_expire(f->p, f->sink, now_ms)) == AM_ERR_FULL) {
        fuzz_check_memory(f);
        fuzz_on_full(f, 0, &rounds);
    }
    fuzz_check_memory(f);
    CHECK(s == AM_OK);
    fuzz_take_all(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint16_t type = (uint16_t)(data[0] | data[1] << 8);
    const char *payload = (const char *)data + 2;
    size_t len = size - 2;

    struct fuzz_audit f;
    fuzz_audit_new(&f);
    fuzz_check_null_handles(&f);
    feed_record(&f, type, payload, len);
    feed_record(&f, type, payload, len);
    expire(&f, 0);
    expire(&f, UINT64_MAX);
    fuzz_finish(&f);
    fuzz_audit_free(&f);
    return 0;
}
