/* fuzz_msgpack.c: the input is a little program of am_mpw_* calls on a writer with a small cap.
 * After each call: a failure (AM_ERR_FULL) left the buffer as it was; a success appended
 * exactly one item (or container header), in the smallest form msgpack has for it, that reads
 * back as the value written; the buffer never exceeds its cap. At the end the whole buffer is
 * a sequence of whole items: a valid msgpack prefix.
 *
 * byte 0: the cap (an entry of caps[]); then per call one opcode byte, low nibble the call,
 * high bits the operand's width, followed by its operand bytes (missing bytes read as 0). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "fuzz_check.h"

static const size_t caps[] = {0, 1, 2, 3, 5, 8, 9, 17, 33, 64, 256, 300, 4096, 65540, 131080};

/* Blob operands longer than the input come from here (str/bin up to 65536 + 65535 bytes). */
static uint8_t scratch[65536 + 65536];

struct reader {
    const uint8_t *p;
    size_t n;
};

static uint64_t take_le(struct reader *r, size_t width)
{
    uint64_t v = 0;
    for (size_t k = 0; k < width; k++) {
        uint8_t b = 0;
        if (r->n > 0) {
            b = *r->p++;
            r->n--;
        }
        v |= (uint64_t)b << (8 * k);
    }
    return v;
}

static size_t uint_size(uint64_t v)
{
    return v < 0x80 ? 1 : v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffffu ? 5 : 9;
}

static size_t int_size(int64_t v)
{
    if (v >= 0)
        return uint_size((uint64_t)v);
    return v >= -32 ? 1 : v >= INT8_MIN ? 2 : v >= INT16_MIN ? 3 : v >= INT32_MIN ? 5 : 9;
}

static size_t blob_head(size_t len, int is_str)
{
    if (is_str && len < 32)
        return 1;
    return len <= 0xff ? 2 : len <= 0xffff ? 3 : 5;
}

static size_t container_head(uint32_t n)
{
    return n < 16 ? 1 : n <= 0xffff ? 3 : 5;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Arguments the writer must refuse, whatever the program. */
    size_t dummy;
    CHECK(am_mpw_new(((size_t)1 << 32) + 1) == NULL);
    CHECK(am_mpw_nil(NULL) == AM_ERR_ARG);
    CHECK(am_mpw_str(NULL, "", 0) == AM_ERR_ARG);
    CHECK(am_mpw_map(NULL, 1) == AM_ERR_ARG);
    CHECK(am_mpw_data(NULL, &dummy) == NULL);
    am_mpw_reset(NULL);
    am_mpw_free(NULL);

    if (size == 0)
        return 0;
    struct reader r = {data + 1, size - 1};
    size_t cap = caps[data[0] % (sizeof caps / sizeof caps[0])];
    am_mpw *w = am_mpw_new(cap);
    CHECK(w != NULL);
    uint8_t *shadow = malloc(cap ? cap : 1); /* what the buffer must hold */
    CHECK(shadow != NULL);
    size_t shadow_len = 0;

    while (r.n > 0) {
        uint8_t op = (uint8_t)take_le(&r, 1);
        unsigned width_sel = (op >> 4) & 3;
        size_t width = (size_t)1 << width_sel; /* 1, 2, 4 or 8 operand bytes */
        struct mpc_item want;
        memset(&want, 0, sizeof want);
        size_t want_size = 0;
        int s;

        switch (op & 0x0f) {
        case 0:
            s = am_mpw_nil(w);
            want.kind = MPC_NIL;
            want_size = 1;
            break;
        case 1: {
            int v = (int)take_le(&r, 1);
            s = am_mpw_bool(w, v);
            want.kind = MPC_BOOL;
            want.u = v != 0;
            want_size = 1;
            break;
        }
        case 2: { /* sign-extended from `width` bytes */
            uint64_t raw = take_le(&r, width);
            unsigned shift = (unsigned)(64 - 8 * width);
            int64_t v = (int64_t)(raw << shift) >> shift;
            s = am_mpw_int(w, v);
            if (v >= 0) {
                want.kind = MPC_UINT;
                want.u = (uint64_t)v;
            } else {
                want.kind = MPC_INT;
                want.i = v;
            }
            want_size = int_size(v);
            break;
        }
        case 3: {
            uint64_t v = take_le(&r, width);
            s = am_mpw_uint(w, v);
            want.kind = MPC_UINT;
            want.u = v;
            want_size = uint_size(v);
            break;
        }
        case 4: {
            uint64_t bits = take_le(&r, 8);
            double v;
            memcpy(&v, &bits, sizeof v);
            s = am_mpw_float(w, v);
            want.kind = MPC_FLOAT64;
            want.bits = bits;
            want_size = 9;
            break;
        }
        case 5:
        case 6: { /* str / bin; width_sel 0: < 64, 1: < 256, 2: < 65536, 3: 65536 + < 65536 */
            int is_str = (op & 0x0f) == 5;
            size_t len = width_sel == 0 ? take_le(&r, 1) & 0x3f
                       : width_sel == 1 ? take_le(&r, 1)
                       : width_sel == 2 ? take_le(&r, 2)
                                        : 65536 + take_le(&r, 2);
            size_t from_input = len < r.n ? len : r.n;
            memcpy(scratch, r.p, from_input);
            memset(scratch + from_input, 'x', len - from_input);
            r.p += from_input;
            r.n -= from_input;
            if (is_str)
                s = am_mpw_str(w, (const char *)scratch, len);
            else
                s = am_mpw_bin(w, scratch, len);
            want.kind = is_str ? MPC_STR : MPC_BIN;
            want.data = scratch;
            want.len = len;
            want_size = blob_head(len, is_str) + len;
            break;
        }
        case 7:
        case 8: {
            uint32_t n = (uint32_t)take_le(&r, width > 4 ? 4 : width);
            s = (op & 0x0f) == 7 ? am_mpw_array(w, n) : am_mpw_map(w, n);
            want.kind = (op & 0x0f) == 7 ? MPC_ARRAY : MPC_MAP;
            want.u = n;
            want_size = container_head(n);
            break;
        }
        case 9:
            am_mpw_reset(w);
            shadow_len = 0;
            s = AM_OK;
            break;
        default:
            continue;
        }

        size_t len = (size_t)-1;
        const uint8_t *buf = am_mpw_data(w, &len);
        CHECK(buf != NULL && len <= cap);
        if ((op & 0x0f) == 9) {
            CHECK(len == 0);
            continue;
        }
        if (s == AM_ERR_FULL) {
            CHECK(len == shadow_len);         /* a failure writes nothing */
            CHECK(shadow_len + want_size > cap); /* and only when the item did not fit */
        } else {
            CHECK(s == AM_OK);
            CHECK(len == shadow_len + want_size);
            struct mpc_item got;
            CHECK(mpc_read(buf + shadow_len, want_size, &got) == 1);
            CHECK(got.size == want_size && got.kind == want.kind);
            switch (got.kind) {
            case MPC_UINT: case MPC_BOOL: case MPC_ARRAY: case MPC_MAP:
                CHECK(got.u == want.u);
                break;
            case MPC_INT:
                CHECK(got.i == want.i);
                break;
            case MPC_FLOAT64:
                CHECK(got.bits == want.bits);
                break;
            case MPC_STR: case MPC_BIN:
                CHECK(got.len == want.len && memcmp(got.data, want.data, want.len) == 0);
                break;
            default:
                break;
            }
            memcpy(shadow + shadow_len, buf + shadow_len, want_size);
        }
        /* The bytes before the new item are untouched (all of them are compared at the end). */
        size_t tail = shadow_len < 16 ? shadow_len : 16;
        CHECK(memcmp(buf + shadow_len - tail, shadow + shadow_len - tail, tail) == 0);
        if (s == AM_OK)
            shadow_len += want_size;
    }

    size_t len = 0;
    const uint8_t *buf = am_mpw_data(w, &len);
    CHECK(len == shadow_len && memcmp(buf, shadow, len) == 0);
    for (size_t off = 0; off < len;) { /* a sequence of whole items */
        struct mpc_item it;
        CHECK(mpc_read(buf + off, len - off, &it) == 1);
        off += it.size;
    }
    free(shadow);
    am_mpw_free(w);
    return 0;
}
