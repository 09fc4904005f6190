/* fuzz_proc_net.c: the /proc/net/{tcp,tcp6,udp,udp6} parser (am_sock_feed_procnet). The first
 * byte picks the file (bit 0: UDP, bit 1: IPv6), the rest is its text. As fuzz_inet_diag: the
 * text makes one snapshot, its second half the next, then an empty one. */
#include <stddef.h>
#include <stdint.h>

#include "sock_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sock_fuzz_null_handles();
    if (size < 1)
        return 0;
    uint8_t proto = (data[0] & 1) ? 17 : 6;
    uint8_t family = (data[0] & 2) ? 10 : 2;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;

    am_sock *t = sock_fuzz_table();
    am_sink *s = sock_fuzz_sink();
    CHECK(am_sock_feed_procnet(t, proto, family, text, len) == AM_OK);
    CHECK(am_sock_commit(t, 1000, 0) == AM_OK);
    sock_fuzz_products(t, s);

    CHECK(am_sock_feed_procnet(t, proto, family, text + len / 2, len - len / 2) == AM_OK);
    CHECK(am_sock_commit(t, 2000, 0) == AM_OK);
    sock_fuzz_products(t, s);

    CHECK(am_sock_commit(t, 3000, 0) == AM_OK);
    sock_fuzz_products(t, s);
    am_sink_free(s);
    am_sock_free(t);
    return 0;
}
