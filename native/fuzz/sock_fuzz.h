/* sock_fuzz.h: what the socket table's harnesses (fuzz_inet_diag, fuzz_proc_net) share: a table
 * with small bounds, and the products of each snapshot written into a small sink whose batches
 * are taken and checked as they fill. */
#ifndef AM_SOCK_FUZZ_H
#define AM_SOCK_FUZZ_H

#include "core_sock_diag.h"
#include "fuzz_check.h"

static inline am_sock *sock_fuzz_table(void)
{
    struct am_sock_options o;
    am_sock_default_options(&o);
    o.source = AM_SOCK_PROCNET; /* no netlink socket: the harness feeds the decoders itself */
    o.max_sockets = 16;         /* small enough that inputs reach the bound */
    o.max_owners = 8;
    o.map_owners = 0;
    am_sock *t = am_sock_new(&o);
    CHECK(t != NULL);
    return t;
}

static inline am_sink *sock_fuzz_sink(void)
{
    struct am_sink_options o;
    am_sink_default_options(&o);
    o.batch_bytes = 1024;
    o.max_batches = 2;
    am_sink *s = am_sink_new(&o);
    CHECK(s != NULL);
    return s;
}

static inline uint32_t sock_fuzz_take(am_sink *s)
{
    uint32_t total = 0;
    const uint8_t *data;
    size_t len;
    uint32_t events;
    while (am_sink_take(s, &data, &len, &events) == AM_OK) {
        CHECK(len <= 1024);
        mpc_check_batch(data, len, events);
        total += events;
    }
    return total;
}

/* listening() and changes() until done, taking batches whenever the sink fills. */
static inline void sock_fuzz_products(am_sock *t, am_sink *s)
{
    int (*calls[2])(am_sock *, am_sink *, uint32_t *) = {am_sock_listening, am_sock_changes};
    for (int c = 0; c < 2; c++) {
        unsigned rounds = 0;
        int st;
        uint32_t n;
        while ((st = calls[c](t, s, &n)) == AM_ERR_FULL) {
            CHECK(am_sink_full(s));
            sock_fuzz_take(s);
            CHECK(++rounds < 100000);
        }
        CHECK(st == AM_OK);
    }
    CHECK(am_sink_seal(s) == AM_OK);
    sock_fuzz_take(s);
    struct am_sink_stats ss;
    am_sink_stats(s, &ss);
    CHECK(ss.dropped_full == 0 && ss.dropped_encode == 0);
    struct am_sock_stats st;
    am_sock_stats(t, &st);
    CHECK(st.stored <= 16);
}

static inline void sock_fuzz_null_handles(void)
{
    uint32_t n;
    CHECK(am_sock_snapshot(NULL) == AM_ERR_ARG);
    CHECK(am_sock_listening(NULL, NULL, &n) == AM_ERR_ARG);
    CHECK(am_sock_changes(NULL, NULL, &n) == AM_ERR_ARG);
    CHECK(am_sock_begin(NULL) == AM_ERR_ARG);
    CHECK(am_sock_feed_diag(NULL, 6, (const uint8_t *)"", 0) == AM_ERR_ARG);
    CHECK(am_sock_feed_procnet(NULL, 6, 2, "", 0) == AM_ERR_ARG);
    CHECK(am_sock_commit(NULL, 0, 0) == AM_ERR_ARG);
    CHECK(am_sock_fileno(NULL) == -1);
}

#endif
