/* fuzz_nftables.c: nf_tables netlink messages into am_nft_decode. The first byte picks the
 * bounds (bit 0: a small max_output_bytes; bit 1: one set element at most; bit 2: a small
 * max_rule_bytes; bit 3: a small max_dump_bytes); the rest is the messages, as the kernel
 * sends them. The result must be one map {"events": batch-shaped array, "errors": [[str, int,
 * str], ...], "tables": int, "volatile": bool}, exactly the bytes am_nft_result gives, and its
 * event count what the stats say; a second decode of the same input makes the same bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "core_nftables.h"
#include "fuzz_check.h"

/* The offset just past the whole item (containers with their elements) at p[off]. */
static size_t skip_item(const uint8_t *p, size_t len, size_t off)
{
    uint64_t left = 1;
    while (left > 0) {
        struct mpc_item it;
        CHECK(off < len && mpc_read(p + off, len - off, &it) == 1);
        off += it.size;
        left--;
        if (it.kind == MPC_ARRAY)
            left += it.u;
        else if (it.kind == MPC_MAP)
            left += 2 * it.u;
    }
    return off;
}

static size_t expect_key(const uint8_t *p, size_t len, size_t off, const char *key)
{
    struct mpc_item it;
    CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_STR);
    CHECK(it.len == strlen(key) && memcmp(it.data, key, it.len) == 0);
    return off + it.size;
}

static void check_result(const uint8_t *p, size_t len, uint64_t events_counted)
{
    struct mpc_item it;
    CHECK(len > 0 && p[0] == 0x84);
    size_t off = expect_key(p, len, 1, "events");
    CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_ARRAY);
    uint64_t events = it.u;
    size_t end = skip_item(p, len, off);
    mpc_check_batch(p + off, end - off, (uint32_t)events);
    CHECK(events == events_counted);
    off = expect_key(p, len, end, "errors");
    CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_ARRAY);
    uint64_t errors = it.u;
    CHECK(errors <= 257);
    off += it.size;
    for (uint64_t i = 0; i < errors; i++) {
        CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_ARRAY && it.u == 3);
        off += it.size;
        CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_STR);
        CHECK(utf8_valid(it.data, it.len));
        off += it.size;
        CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_UINT);
        off += it.size;
        CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_STR);
        CHECK(utf8_valid(it.data, it.len));
        off += it.size;
    }
    off = expect_key(p, len, off, "tables");
    CHECK(mpc_read(p + off, len - off, &it) == 1 &&
          (it.kind == MPC_UINT || (it.kind == MPC_INT && it.i == -1)));
    off = expect_key(p, len, off + it.size, "volatile");
    CHECK(mpc_read(p + off, len - off, &it) == 1 && it.kind == MPC_BOOL);
    CHECK(off + it.size == len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *out;
    size_t len;
    uint32_t gen;
    CHECK(am_nft_decode(NULL, 0, data, size) == AM_ERR_ARG);
    CHECK(am_nft_result(NULL, &out, &len) == AM_ERR_ARG);
    CHECK(am_nft_generation(NULL, &gen) == AM_ERR_ARG);
    CHECK(am_nft_snapshot(NULL, 0) == AM_ERR_ARG);
    if (size < 1)
        return 0;
    struct am_nft_options o;
    am_nft_default_options(&o);
    if (data[0] & 1)
        o.max_output_bytes = 1024;
    if (data[0] & 2)
        o.max_set_elements = 1;
    if (data[0] & 4)
        o.max_rule_bytes = 256;
    if (data[0] & 8)
        o.max_dump_bytes = 4096;
    am_nft *n = am_nft_new(&o);
    CHECK(n != NULL);
    CHECK(am_nft_result(n, &out, &len) == AM_EMPTY);
    CHECK(am_nft_decode(n, 1700000000000ull, data + 1, size - 1) == AM_OK);
    CHECK(am_nft_result(n, &out, &len) == AM_OK);
    /* the events within max_output_bytes; at most 257 errors of 1280 bytes beyond */
    CHECK(len <= (size_t)o.max_output_bytes + 257 * 1280 + 128);
    struct am_nft_stats st;
    am_nft_stats(n, &st);
    check_result(out, len, st.events);
    CHECK(st.snapshots == 1 && st.undecodable <= st.rules);
    uint8_t *first = malloc(len);
    CHECK(first != NULL);
    memcpy(first, out, len);
    size_t first_len = len;
    CHECK(am_nft_decode(n, 1700000000000ull, data + 1, size - 1) == AM_OK);
    CHECK(am_nft_result(n, &out, &len) == AM_OK);
    CHECK(len == first_len && memcmp(out, first, len) == 0);
    free(first);
    am_nft_free(n);
    return 0;
}
