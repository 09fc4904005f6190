/* fuzz_inet_diag.c: the sock_diag dump decoder (am_sock_feed_diag). The first byte picks the
 * protocol (odd: UDP, even: TCP), the rest is netlink messages as a dump delivers them. The
 * messages make one snapshot, their second half the next, then an empty one: every product
 * (listen events, conn opens and closes) is written and its batches checked. */
#include <stddef.h>
#include <stdint.h>

#include "sock_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sock_fuzz_null_handles();
    if (size < 1)
        return 0;
    uint8_t proto = (data[0] & 1) ? 17 : 6;
    const uint8_t *msgs = data + 1;
    size_t len = size - 1;

    am_sock *t = sock_fuzz_table();
    am_sink *s = sock_fuzz_sink();
    CHECK(am_sock_begin(t) == AM_OK);
    int st = am_sock_feed_diag(t, proto, msgs, len);
    CHECK(st == AM_OK || st == AM_EMPTY || st == AM_ERR_LIMIT);
    CHECK(am_sock_commit(t, 1000, 0) == AM_OK);
    sock_fuzz_products(t, s);

    CHECK(am_sock_begin(t) == AM_OK);
    st = am_sock_feed_diag(t, proto, msgs + len / 2, len - len / 2);
    CHECK(st == AM_OK || st == AM_EMPTY || st == AM_ERR_LIMIT);
    CHECK(am_sock_commit(t, 2000, 0) == AM_OK);
    sock_fuzz_products(t, s);

    CHECK(am_sock_commit(t, 3000, 0) == AM_OK); /* nothing fed: every connection closes */
    sock_fuzz_products(t, s);
    struct am_sock_stats ss;
    am_sock_stats(t, &ss);
    CHECK(ss.stored == 0);
    am_sink_free(s);
    am_sock_free(t);
    return 0;
}
