/* fuzz_audit_record.c: one netlink audit record, as the live source delivers it. The first two
 * bytes are the message type (little-endian), the rest is the payload
 * ("audit(SEC.MS:SERIAL): fields"). The record goes in twice (a repeated serial), then the
 * open events expire at two clock readings, then end of input. */
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "fuzz_check.h"

static void feed_record(am_audit *p, const struct am_audit_options *o, struct fuzz_totals *t,
                        uint16_t type, const char *payload, size_t len)
{
    unsigned rounds = 0;
    int s;
    while ((s = am_audit_feed_record(p, type, payload, len)) == AM_ERR_FULL) {
        fuzz_check_memory(p);
        fuzz_on_full(p, o, t, 0, &rounds);
    }
    fuzz_check_memory(p);
    /* A record the parser cannot use is counted, not refused. */
    CHECK(s == AM_OK);
}

static void expire(am_audit *p, const struct am_audit_options *o, struct fuzz_totals *t,
                   uint64_t now_ms)
{
    unsigned rounds = 0;
    int s;
    while ((s = am_audit_expire(p, now_ms)) == AM_ERR_FULL) {
        fuzz_check_memory(p);
        fuzz_on_full(p, o, t, 0, &rounds);
    }
    fuzz_check_memory(p);
    CHECK(s == AM_OK);
    fuzz_take_all(p, o, t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_check_null_handles();
    if (size < 2)
        return 0;
    uint16_t type = (uint16_t)(data[0] | data[1] << 8);
    const char *payload = (const char *)data + 2;
    size_t len = size - 2;

    struct am_audit_options o;
    struct fuzz_totals t = {0, 0};
    am_audit *p = fuzz_audit_new(&o);
    feed_record(p, &o, &t, type, payload, len);
    feed_record(p, &o, &t, type, payload, len);
    expire(p, &o, &t, 0);
    expire(p, &o, &t, UINT64_MAX);
    fuzz_finish(p, &o, &t);
    am_audit_free(p);
    return 0;
}
