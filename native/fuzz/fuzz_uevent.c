/* fuzz_uevent.c: received uevent and rtnetlink link datagrams into am_periph_decode. The
 * first byte picks how (bit 0: the link socket, else the uevent socket; bit 1: a sender other
 * than the kernel; bit 2: read sysfs attributes from the machine's /sys; bit 3: remember one
 * link only); the rest is split at each "\n\n\n" into datagrams, decoded in turn into a sink of
 * small batches by one handle (link state carries over). Every batch must be well-formed and
 * every datagram accounted for. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core.h"
#include "core_peripheral.h"
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t appended = 0;
    CHECK(am_periph_decode(NULL, NULL, 0, data, size, 0, &appended) == AM_ERR_ARG);
    CHECK(am_periph_drain(NULL, NULL, &appended) == AM_ERR_ARG);
    CHECK(am_periph_fileno(NULL, 0) == -1);
    if (size < 1)
        return 0;
    struct am_periph_options o;
    am_periph_default_options(&o);
    o.sysfs = (data[0] >> 2) & 1;
    if (data[0] & 8)
        o.max_links = 1;
    int which = data[0] & 1 ? AM_PERIPH_LINK : AM_PERIPH_UEVENT;
    uint32_t sender = data[0] & 2 ? 4242 : 0;
    struct am_sink_options so = {.batch_bytes = 1024, .max_batches = 2};
    am_sink *s = am_sink_new(&so);
    am_periph *p = am_periph_new(&o);
    CHECK(s != NULL && p != NULL);
    /* A decoder without sockets cannot drain. */
    CHECK(am_periph_drain(p, s, &appended) == AM_ERR_ARG);
    CHECK(am_periph_fileno(p, AM_PERIPH_UEVENT) == -1 && am_periph_fileno(p, 2) == -1);
    CHECK(am_periph_decode(p, s, 2, data, size, 0, &appended) == AM_ERR_ARG);

    uint64_t taken = 0, total = 0, datagrams = 0;
    const uint8_t *rest = data + 1;
    size_t left = size - 1;
    for (;;) {
        const uint8_t *cut = memmem(rest, left, "\n\n\n", 3);
        size_t len = cut == NULL ? left : (size_t)(cut - rest);
        int st = am_periph_decode(p, s, which, rest, len, sender, &appended);
        CHECK(st == AM_OK || st == AM_ERR_FULL);
        datagrams++;
        total += appended;
        if (am_sink_full(s))
            taken += take_all(s, so.batch_bytes);
        if (cut == NULL)
            break;
        rest = cut + 3;
        left -= len + 3;
    }
    CHECK(am_sink_seal(s) == AM_OK);
    taken += take_all(s, so.batch_bytes);

    struct am_periph_stats st;
    am_periph_stats(p, &st);
    struct am_sink_stats ss;
    am_sink_stats(s, &ss);
    CHECK(st.events == total && taken == total && ss.events == total);
    CHECK(st.datagrams == datagrams);
    CHECK(st.dropped == ss.dropped_encode + ss.dropped_full);
    CHECK(st.usb_device + st.usb_interface + st.block + st.net + st.carrier == st.events);
    if (sender != 0)
        CHECK(st.spoofed == datagrams && st.events == 0 && st.uevents == 0);
    if (which == AM_PERIPH_UEVENT) {
        /* Each uevent is an event, ignored, or dropped; each datagram one of those,
         * malformed, or spoofed. */
        CHECK(st.uevents == st.events + st.ignored + st.dropped);
        CHECK(st.uevents + st.malformed + st.spoofed == datagrams);
        CHECK(st.carrier == 0 && st.link_messages == 0);
    } else {
        CHECK(st.uevents == 0 && st.links <= o.max_links);
        CHECK(st.carrier + st.dropped <= st.link_messages);
    }
    am_periph_free(p);
    am_sink_free(s);
    return 0;
}
