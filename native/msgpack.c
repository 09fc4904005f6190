/* msgpack.c: the msgpack writer (spec: github.com/msgpack/msgpack/blob/master/spec.md) and the
 * am_mpw handle that exposes it to Python for the boundary tests. */
#include "msgpack.h"

#include <stdlib.h>
#include <string.h>

#include "core.h"

int mp_init(mp_buf *b, size_t cap)
{
    b->len = 0;
    b->cap = 0;
    b->data = malloc(cap ? cap : 1);
    if (b->data == NULL)
        return AM_ERR_NOMEM;
    b->cap = cap;
    return AM_OK;
}

void mp_release(mp_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int room(const mp_buf *b, size_t need)
{
    return need <= b->cap - b->len;
}

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

/* One marker byte followed by a big-endian value of `bytes` bytes. */
static int put_tagged(mp_buf *b, uint8_t tag, uint64_t v, int bytes)
{
    if (!room(b, 1 + (size_t)bytes))
        return AM_ERR_FULL;
    b->data[b->len] = tag;
    put_be(b->data + b->len + 1, v, bytes);
    b->len += 1 + (size_t)bytes;
    return AM_OK;
}

static int put_byte(mp_buf *b, uint8_t v)
{
    if (!room(b, 1))
        return AM_ERR_FULL;
    b->data[b->len++] = v;
    return AM_OK;
}

int mp_nil(mp_buf *b) { return put_byte(b, 0xc0); }

int mp_bool(mp_buf *b, int value) { return put_byte(b, value ? 0xc3 : 0xc2); }

int mp_uint(mp_buf *b, uint64_t v)
{
    if (v < 0x80)
        return put_byte(b, (uint8_t)v);
    if (v <= 0xff)
        return put_tagged(b, 0xcc, v, 1);
    if (v <= 0xffff)
        return put_tagged(b, 0xcd, v, 2);
    if (v <= 0xffffffffu)
        return put_tagged(b, 0xce, v, 4);
    return put_tagged(b, 0xcf, v, 8);
}

int mp_int(mp_buf *b, int64_t v)
{
    if (v >= 0)
        return mp_uint(b, (uint64_t)v);
    if (v >= -32)
        return put_byte(b, (uint8_t)(int8_t)v);
    if (v >= INT8_MIN)
        return put_tagged(b, 0xd0, (uint8_t)(int8_t)v, 1);
    if (v >= INT16_MIN)
        return put_tagged(b, 0xd1, (uint16_t)(int16_t)v, 2);
    if (v >= INT32_MIN)
        return put_tagged(b, 0xd2, (uint32_t)(int32_t)v, 4);
    return put_tagged(b, 0xd3, (uint64_t)v, 8);
}

int mp_float(mp_buf *b, double value)
{
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    return put_tagged(b, 0xcb, bits, 8);
}

/* Header for str/bin/array/map: fix form below fix_limit, then 8/16/32-bit length forms. */
static size_t header_size(uint64_t n, uint64_t fix_limit, int has8)
{
    if (n < fix_limit)
        return 1;
    if (has8 && n <= 0xff)
        return 2;
    if (n <= 0xffff)
        return 3;
    return 5;
}

static void write_header(uint8_t *p, uint64_t n, uint8_t fix_base, uint64_t fix_limit,
                         int has8, uint8_t tag8, uint8_t tag16, uint8_t tag32)
{
    size_t size = header_size(n, fix_limit, has8);
    if (size == 1) {
        p[0] = (uint8_t)(fix_base | n);
    } else if (size == 2) {
        p[0] = tag8;
        p[1] = (uint8_t)n;
    } else if (size == 3) {
        p[0] = tag16;
        put_be(p + 1, n, 2);
    } else {
        p[0] = tag32;
        put_be(p + 1, n, 4);
    }
}

static int put_blob(mp_buf *b, const void *data, size_t len, int is_str)
{
    if (len > 0xffffffffu || (len && data == NULL))
        return AM_ERR_ARG;
    size_t h = is_str ? header_size(len, 32, 1) : header_size(len, 0, 1);
    /* Not room(b, h + len): with a 32-bit size_t, h + len can wrap. */
    if (!room(b, h) || len > b->cap - b->len - h)
        return AM_ERR_FULL;
    if (is_str)
        write_header(b->data + b->len, len, 0xa0, 32, 1, 0xd9, 0xda, 0xdb);
    else
        write_header(b->data + b->len, len, 0, 0, 1, 0xc4, 0xc5, 0xc6);
    if (len)
        memcpy(b->data + b->len + h, data, len);
    b->len += h + len;
    return AM_OK;
}

int mp_str(mp_buf *b, const char *data, size_t len) { return put_blob(b, data, len, 1); }

int mp_bin(mp_buf *b, const uint8_t *data, size_t len) { return put_blob(b, data, len, 0); }

int mp_text(mp_buf *b, const char *data, size_t len)
{
    return put_blob(b, data, len, utf8_valid((const uint8_t *)data, len));
}

int mp_text_known(mp_buf *b, const char *data, size_t len, int utf8)
{
    return put_blob(b, data, len, utf8 != 0);
}

static int put_container(mp_buf *b, uint32_t n, uint8_t fix_base, uint8_t tag16, uint8_t tag32)
{
    size_t h = header_size(n, 16, 0);
    if (!room(b, h))
        return AM_ERR_FULL;
    write_header(b->data + b->len, n, fix_base, 16, 0, 0, tag16, tag32);
    b->len += h;
    return AM_OK;
}

int mp_array(mp_buf *b, uint32_t n) { return put_container(b, n, 0x90, 0xdc, 0xdd); }

int mp_map(mp_buf *b, uint32_t n) { return put_container(b, n, 0x80, 0xde, 0xdf); }

int mp_array32(mp_buf *b, uint32_t n) { return put_tagged(b, 0xdd, n, 4); }

int mp_map32(mp_buf *b, uint32_t n) { return put_tagged(b, 0xdf, n, 4); }

void mp_patch_u32(mp_buf *b, size_t off, uint32_t n)
{
    if (off + 5 <= b->len)
        put_be(b->data + off + 1, n, 4);
}

int mp_raw(mp_buf *b, const uint8_t *data, size_t len)
{
    if (!room(b, len))
        return AM_ERR_FULL;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    return AM_OK;
}

/* RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF. */
int utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= n)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        i += n + 1;
    }
    return 1;
}

/* ---- am_mpw: the writer as a Python-visible handle ---- */
struct am_mpw {
    mp_buf buf;
};

am_mpw *am_mpw_new(size_t cap)
{
#if SIZE_MAX > 0xffffffffu /* a 32-bit size_t cannot exceed the bound (nor shift by 32) */
    if (cap > ((size_t)1 << 32))
        return NULL;
#endif
    am_mpw *w = malloc(sizeof *w);
    if (w == NULL)
        return NULL;
    if (mp_init(&w->buf, cap) != AM_OK) {
        free(w);
        return NULL;
    }
    return w;
}

void am_mpw_free(am_mpw *w)
{
    if (w == NULL)
        return;
    mp_release(&w->buf);
    free(w);
}

void am_mpw_reset(am_mpw *w)
{
    if (w != NULL)
        w->buf.len = 0;
}

#define MPW_GUARD(w) \
    do { \
        if ((w) == NULL) \
            return AM_ERR_ARG; \
    } while (0)

int am_mpw_nil(am_mpw *w) { MPW_GUARD(w); return mp_nil(&w->buf); }
int am_mpw_bool(am_mpw *w, int v) { MPW_GUARD(w); return mp_bool(&w->buf, v); }
int am_mpw_int(am_mpw *w, int64_t v) { MPW_GUARD(w); return mp_int(&w->buf, v); }
int am_mpw_uint(am_mpw *w, uint64_t v) { MPW_GUARD(w); return mp_uint(&w->buf, v); }
int am_mpw_float(am_mpw *w, double v) { MPW_GUARD(w); return mp_float(&w->buf, v); }
int am_mpw_str(am_mpw *w, const char *d, size_t n) { MPW_GUARD(w); return mp_str(&w->buf, d, n); }
int am_mpw_bin(am_mpw *w, const uint8_t *d, size_t n) { MPW_GUARD(w); return mp_bin(&w->buf, d, n); }
int am_mpw_array(am_mpw *w, uint32_t n) { MPW_GUARD(w); return mp_array(&w->buf, n); }
int am_mpw_map(am_mpw *w, uint32_t n) { MPW_GUARD(w); return mp_map(&w->buf, n); }

const uint8_t *am_mpw_data(const am_mpw *w, size_t *len)
{
    if (w == NULL || len == NULL)
        return NULL;
    *len = w->buf.len;
    return w->buf.data;
}
