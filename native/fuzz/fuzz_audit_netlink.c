/* fuzz_audit_netlink.c: am_audit_nl_decode, the decoder of one datagram received on an audit
 * netlink socket. The input is the datagram: netlink headers with any lengths and types,
 * records of either framing (unicast nlmsg_len = payload, multicast = whole), acks, errors,
 * garbage. It is decoded as one datagram, then again cut in two at a point the first byte
 * picks (two datagrams: the first may end inside a message); the parser's batches are checked
 * as every audit harness checks them. When the last byte's top bit is set, the parser is in
 * unmarked mode (am_audit_nl_unmarked, as the owner without EOE and PROCTITLE) and a drain end
 * follows each datagram, the clock stepping by the second byte (so that some are closer than
 * the 40 ms an event waits after its drain). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core.h"
#include "core_audit_netlink.h"
#include "fuzz_check.h"

static void drain_end(struct fuzz_audit *f, uint64_t *now_ms, uint8_t step,
                      struct am_anl_stats *st)
{
    uint64_t events = 0;
    struct am_audit_stats ps;
    am_audit_stats(f->p, NULL, &ps);
    events = ps.events;
    uint64_t completed = st->unmarked_completed;
    *now_ms += step;
    CHECK(am_audit_nl_drain_end(f->p, f->sink, *now_ms, st) == AM_OK);
    fuzz_check_memory(f);
    am_audit_stats(f->p, NULL, &ps);
    /* What a drain end completes it counts, and it completes nothing else. */
    CHECK(ps.events - events <= st->unmarked_completed - completed);
    CHECK(am_audit_nl_drain_end(f->p, NULL, *now_ms, st) == AM_ERR_ARG);
}

static void decode_all(struct fuzz_audit *f, const uint8_t *buf, size_t len,
                       struct am_anl_stats *st)
{
    size_t off = 0;
    unsigned rounds = 0;
    for (;;) {
        size_t used = 0;
        uint64_t records = st->records;
        int s = am_audit_nl_decode(f->p, f->sink, buf + off, len - off, &used, st);
        fuzz_check_memory(f);
        CHECK(used <= len - off);
        off += used;
        /* A record takes at least a header: no more records than headers fit. */
        CHECK(st->records - records <= used / 16);
        if (s != AM_ERR_FULL) {
            CHECK(s == AM_OK);
            CHECK(off == len);
            return;
        }
        fuzz_on_full(f, used > 0, &rounds);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct am_anl_stats st;
    memset(&st, 0, sizeof st);
    size_t consumed = 1;
    struct fuzz_audit f;
    fuzz_audit_new(&f);
    CHECK(am_audit_nl_decode(NULL, f.sink, data, size, &consumed, &st) == AM_ERR_ARG &&
          consumed == 0);
    CHECK(am_audit_nl_decode(f.p, f.sink, data, size, NULL, &st) == AM_ERR_ARG);
    CHECK(am_audit_nl_decode(f.p, f.sink, data, size, &consumed, NULL) == AM_ERR_ARG);
    int unmarked = size > 2 && (data[size - 1] & 0x80);
    uint8_t step = size > 1 ? data[1] : 0;
    uint64_t now_ms = 0;
    if (unmarked)
        CHECK(am_audit_nl_unmarked(f.p, 1) == AM_OK);
    decode_all(&f, data, size, &st);
    CHECK(st.messages >= st.records);
    CHECK(st.bytes <= size);
    if (unmarked)
        drain_end(&f, &now_ms, step, &st);
    if (size > 1) {
        size_t cut = 1 + data[0] % (size - 1);
        decode_all(&f, data, cut, &st);
        if (unmarked)
            drain_end(&f, &now_ms, step, &st);
        decode_all(&f, data + cut, size - cut, &st);
        if (unmarked) {
            drain_end(&f, &now_ms, step, &st);
            drain_end(&f, &now_ms, 255, &st);
        }
    }
    CHECK(unmarked || (st.unmarked_completed == 0 && st.late_records == 0));
    unsigned rounds = 0;
    int s;
    while ((s = am_audit_expire(f.p, f.sink, UINT64_MAX)) == AM_ERR_FULL)
        fuzz_on_full(&f, 0, &rounds);
    CHECK(s == AM_OK);
    fuzz_finish(&f);
    fuzz_audit_free(&f);
    return 0;
}
