/* fuzz_cn_proc.c: received proc connector datagram bytes into am_cnproc_decode. The first
 * byte picks options (bit 0: enrich exec events from /proc, bit 1: thread events, bit 2: a
 * tiny argv bound); the rest is the datagram. It is decoded into a sink of small batches
 * (resuming where a full sink stopped), then once more into the same handle (sequence
 * tracking across calls); every batch must be well-formed and every event accounted for. */
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "core_proc_connector.h"
#include "fuzz_check.h"

static uint64_t take_all(am_sink *s, uint32_t batch_bytes)
{
    uint64_t events = 0;
    const uint8_t *data;
    size_t len;
    uint32_t n;
    while (am_sink_take(s, &data, &len, &n) == AM_OK) {
        CHECK(len <= batch_bytes && n > 0);
        mpc_check_batch(data, len, n);
        events += n;
    }
    return events;
}

static uint64_t decode_all(am_cnproc *c, am_sink *s, const uint8_t *data, size_t len,
                           uint32_t batch_bytes, uint64_t *taken)
{
    uint64_t appended_total = 0;
    size_t off = 0;
    for (unsigned rounds = 0;; rounds++) {
        size_t consumed = 0;
        uint64_t appended = 0;
        int st = am_cnproc_decode(c, s, data + off, len - off, &consumed, &appended);
        CHECK(consumed <= len - off);
        appended_total += appended;
        off += consumed;
        if (st == AM_OK) {
            CHECK(off == len);
            return appended_total;
        }
        CHECK(st == AM_ERR_FULL);
        uint64_t got = take_all(s, batch_bytes);
        /* A full sink always has batches to take: the retry loop makes progress. */
        CHECK(got > 0);
        *taken += got;
        CHECK(rounds < 100000);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t appended = 0;
    size_t consumed = 0;
    CHECK(am_cnproc_decode(NULL, NULL, data, size, &consumed, &appended) == AM_ERR_ARG);
    CHECK(am_cnproc_drain(NULL, NULL, &appended) == AM_ERR_ARG);
    CHECK(am_cnproc_fileno(NULL) == -1);
    if (size < 1)
        return 0;
    struct am_cnproc_options o;
    am_cnproc_default_options(&o);
    o.enrich = data[0] & 1;
    o.threads = (data[0] >> 1) & 1;
    if (data[0] & 4) {
        o.max_argv_bytes = 64;
        o.max_args = 2;
    }
    struct am_sink_options so = {.batch_bytes = 1024, .max_batches = 2};
    am_sink *s = am_sink_new(&so);
    am_cnproc *c = am_cnproc_new(&o);
    CHECK(s != NULL && c != NULL);
    /* A decoder without a socket cannot drain. */
    CHECK(am_cnproc_drain(c, s, &appended) == AM_ERR_ARG);

    uint64_t taken = 0, total = 0;
    total += decode_all(c, s, data + 1, size - 1, so.batch_bytes, &taken);
    total += decode_all(c, s, data + 1, size - 1, so.batch_bytes, &taken);
    CHECK(am_sink_seal(s) == AM_OK);
    taken += take_all(s, so.batch_bytes);

    struct am_cnproc_stats st;
    am_cnproc_stats(c, &st);
    struct am_sink_stats ss;
    am_sink_stats(s, &ss);
    CHECK(st.events == total && taken == total && ss.events == total);
    CHECK(st.dropped == ss.dropped_encode + ss.dropped_full);
    CHECK(st.datagrams == 2);
    uint64_t typed = st.fork + st.exec + st.exit + st.uid + st.gid + st.sid + st.ptrace +
                     st.comm + st.coredump;
    /* Each message is an ack, unknown, malformed (counted once), or an event of a type;
     * a typed message yields one event unless filtered (threads) or dropped. */
    CHECK(st.events + st.threads_filtered + st.dropped <= typed);
    CHECK(typed - st.threads_filtered - st.dropped == st.events);
    CHECK(st.gone + st.partial <= st.exec && st.reused <= st.gone); /* one outcome per exec */
    if (!o.enrich)
        CHECK(st.gone == 0 && st.partial == 0);
    am_cnproc_free(c);
    am_sink_free(s);
    return 0;
}
