/* fuzz_dns.c: bytes from the wire into the DNS parser (am_dns_feed_packet: IP, UDP / TCP, DNS;
 * am_dns_feed_message: the DNS message alone), its cache and the network aggregator linked to
 * it. Byte 0 picks the options: bit 0 a tiny cache (2 hosts), bit 1 a jump bound of 2, bit 2
 * a sink of small batches. The rest is fed as a packet, then as a message, then the events are
 * aggregated through an aggregator that uses the cache and a conn event asks for a host.
 * Oracles: batches well formed, every event accounted for, the cache within its bound, every
 * name the cache gives NUL-free and at most 255 characters. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core.h"
#include "core_aggregate.h"
#include "core_dns.h"
#include "fuzz_check.h"

static uint64_t take_all(am_sink *s, const struct am_sink_options *o, am_agg *agg, am_sink *out)
{
    uint64_t events = 0;
    const uint8_t *data;
    size_t len;
    uint32_t n;
    while (am_sink_take(s, &data, &len, &n) == AM_OK) {
        CHECK(len <= o->batch_bytes && n > 0);
        mpc_check_batch(data, len, n);
        events += n;
        if (agg != NULL) {
            uint32_t next = 0;
            int st;
            while ((st = am_agg_add_batch(agg, data, len, &next, out)) == AM_ERR_FULL) {
                const uint8_t *d2;
                size_t l2;
                uint32_t n2;
                while (am_sink_take(out, &d2, &l2, &n2) == AM_OK)
                    mpc_check_batch(d2, l2, n2);
            }
            CHECK(st == AM_OK);
        }
    }
    return events;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t appended = 0;
    CHECK(am_dns_feed_packet(NULL, NULL, data, size, 0, &appended) == AM_ERR_ARG);
    CHECK(am_dns_drain(NULL, NULL, &appended) == AM_ERR_ARG);
    CHECK(am_dns_fileno(NULL) == -1);
    if (size < 1)
        return 0;
    struct am_dns_options o;
    am_dns_default_options(&o);
    if (data[0] & 1)
        o.max_hosts = 2;
    if (data[0] & 2)
        o.max_jumps = 2;
    struct am_sink_options so = {.batch_bytes = (data[0] & 4) ? 1024 : 65536, .max_batches = 2};
    am_dns *d = am_dns_new(&o);
    am_sink *s = am_sink_new(&so);
    am_sink *out = am_sink_new(&so);
    struct am_agg_options ao;
    am_agg_default_options(&ao);
    ao.kind = AM_AGG_NETWORK;
    am_agg *agg = am_agg_new(&ao);
    CHECK(d != NULL && s != NULL && out != NULL && agg != NULL);
    CHECK(am_agg_use_hosts(agg, d) == AM_OK);
    /* A parser without a socket cannot drain. */
    CHECK(am_dns_drain(d, s, &appended) == AM_ERR_ARG);

    uint64_t total = 0, taken = 0;
    const uint8_t *body = data + 1;
    size_t len = size - 1;
    CHECK(am_dns_feed_packet(d, s, body, len, 1000, &appended) == AM_OK);
    total += appended;
    taken += take_all(s, &so, agg, out);
    CHECK(am_dns_feed_message(d, s, body, len, 2000, "192.0.2.53", &appended) == AM_OK);
    total += appended;
    CHECK(am_sink_seal(s) == AM_OK);
    taken += take_all(s, &so, agg, out);

    /* A conn event to an address the cache may hold, through the linked aggregator. */
    static const uint8_t conn[] = {0x83, 0xa1, 't', 0xa4, 'c', 'o', 'n', 'n', 0xa2, 't', 's',
                                   0x01, 0xa5, 'r', 'a', 'd', 'd', 'r', 0xa9, '1', '9', '2',
                                   '.', '0', '.', '2', '.', '1'};
    uint8_t batch[sizeof conn + 1];
    batch[0] = 0x91;
    memcpy(batch + 1, conn, sizeof conn);
    uint32_t next = 0;
    CHECK(am_agg_add_batch(agg, batch, sizeof batch, &next, out) == AM_OK ||
          am_sink_full(out));

    struct am_dns_stats st;
    am_dns_stats(d, &st);
    struct am_sink_stats ss;
    am_sink_stats(s, &ss);
    CHECK(st.events == total && taken == total && ss.events == total);
    CHECK(st.dropped == ss.dropped_encode + ss.dropped_full);
    CHECK(st.hosts <= o.max_hosts && st.hosts <= st.hosts_added);
    CHECK(st.packets == 2 && st.host_hits <= st.host_lookups);

    char name[256];
    static const char *const probes[] = {"192.0.2.1", "::1", "::ffff:192.0.2.1", "0.0.0.0"};
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        int r = am_dns_host(d, probes[i], name, sizeof name);
        CHECK(r == AM_OK || r == AM_EMPTY);
        if (r == AM_OK)
            CHECK(strlen(name) > 0 && strlen(name) <= 255);
    }
    CHECK(am_agg_flush(agg, out) == AM_OK || am_sink_full(out));
    CHECK(am_agg_use_hosts(agg, NULL) == AM_OK);
    am_agg_free(agg);
    am_dns_free(d);
    am_sink_free(out);
    am_sink_free(s);
    return 0;
}
