/* mpread.c: see mpread.h. */
#include "mpread.h"

#include <string.h>

static int need(const mpr *r, size_t pos, size_t n)
{
    return pos <= r->len && n <= r->len - pos;
}

static uint64_t be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a header of family `kind` ('a' array, 'm' map, 's' str) at pos; 1 on success. */
static int header(const mpr *r, size_t *pos, char kind, uint32_t *count)
{
    if (!need(r, *pos, 1))
        return 0;
    uint8_t b = r->data[*pos];
    size_t width = 0;
    uint32_t fix = 0;
    int is_fix = 0;
    switch (kind) {
    case 'a':
        if ((b & 0xf0) == 0x90) { is_fix = 1; fix = b & 0x0f; }
        else if (b == 0xdc) width = 2;
        else if (b == 0xdd) width = 4;
        else return 0;
        break;
    case 'm':
        if ((b & 0xf0) == 0x80) { is_fix = 1; fix = b & 0x0f; }
        else if (b == 0xde) width = 2;
        else if (b == 0xdf) width = 4;
        else return 0;
        break;
    default: /* 's' */
        if ((b & 0xe0) == 0xa0) { is_fix = 1; fix = b & 0x1f; }
        else if (b == 0xd9) width = 1;
        else if (b == 0xda) width = 2;
        else if (b == 0xdb) width = 4;
        else return 0;
        break;
    }
    if (is_fix) {
        *count = fix;
        *pos += 1;
        return 1;
    }
    if (!need(r, *pos + 1, width))
        return 0;
    *count = (uint32_t)be(r->data + *pos + 1, width);
    *pos += 1 + width;
    return 1;
}

int mpr_array(mpr *r, uint32_t *count)
{
    size_t pos = r->pos;
    if (!header(r, &pos, 'a', count))
        return 0;
    r->pos = pos;
    return 1;
}

int mpr_map(mpr *r, uint32_t *count)
{
    size_t pos = r->pos;
    if (!header(r, &pos, 'm', count))
        return 0;
    r->pos = pos;
    return 1;
}

int mpr_str(mpr *r, const uint8_t **s, uint32_t *len)
{
    size_t pos = r->pos;
    uint32_t n;
    if (!header(r, &pos, 's', &n) || !need(r, pos, n))
        return 0;
    *s = r->data + pos;
    *len = n;
    r->pos = pos + n;
    return 1;
}

int mpr_int(mpr *r, int64_t *value)
{
    if (!need(r, r->pos, 1))
        return 0;
    const uint8_t *p = r->data + r->pos;
    uint8_t b = p[0];
    if (b <= 0x7f || b >= 0xe0) {
        *value = (int8_t)b;
        r->pos += 1;
        return 1;
    }
    size_t width;
    int is_signed;
    switch (b) {
    case 0xcc: width = 1; is_signed = 0; break;
    case 0xcd: width = 2; is_signed = 0; break;
    case 0xce: width = 4; is_signed = 0; break;
    case 0xcf: width = 8; is_signed = 0; break;
    case 0xd0: width = 1; is_signed = 1; break;
    case 0xd1: width = 2; is_signed = 1; break;
    case 0xd2: width = 4; is_signed = 1; break;
    case 0xd3: width = 8; is_signed = 1; break;
    default: return 0;
    }
    if (!need(r, r->pos + 1, width))
        return 0;
    uint64_t raw = be(p + 1, width);
    if (is_signed) {
        /* Sign-extend from width bytes. */
        unsigned shift = (unsigned)(64 - 8 * width);
        uint64_t shifted = raw << shift;
        int64_t v;
        memcpy(&v, &shifted, sizeof v);
        *value = v >> shift;
    } else {
        if (raw > (uint64_t)INT64_MAX)
            return 0;
        *value = (int64_t)raw;
    }
    r->pos += 1 + width;
    return 1;
}

int mpr_uint(mpr *r, uint64_t *value)
{
    if (need(r, r->pos, 9) && r->data[r->pos] == 0xcf) {
        *value = be(r->data + r->pos + 1, 8); /* the one form above INT64_MAX */
        r->pos += 9;
        return 1;
    }
    size_t at = r->pos;
    int64_t v;
    if (!mpr_int(r, &v))
        return 0;
    if (v < 0) {
        r->pos = at;
        return 0;
    }
    *value = (uint64_t)v;
    return 1;
}

/* The size of one item's own bytes (header plus payload for scalars, header only for
 * containers) and, for containers, how many items follow inside it. */
static int item(const mpr *r, size_t pos, size_t *size, uint64_t *children)
{
    if (!need(r, pos, 1))
        return 0;
    const uint8_t *p = r->data + pos;
    uint8_t b = p[0];
    *children = 0;
    size_t width = 0, payload = 0;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        *size = 1;
        return 1;
    }
    if ((b & 0xf0) == 0x80) { *size = 1; *children = 2u * (b & 0x0f); return 1; }
    if ((b & 0xf0) == 0x90) { *size = 1; *children = b & 0x0f; return 1; }
    if ((b & 0xe0) == 0xa0) { payload = b & 0x1f; goto sized; }
    switch (b) {
    case 0xcc: case 0xd0: payload = 1; goto sized;
    case 0xcd: case 0xd1: payload = 2; goto sized;
    case 0xce: case 0xd2: case 0xca: payload = 4; goto sized;
    case 0xcf: case 0xd3: case 0xcb: payload = 8; goto sized;
    case 0xd4: payload = 2; goto sized; /* fixext 1: type + 1 */
    case 0xd5: payload = 3; goto sized;
    case 0xd6: payload = 5; goto sized;
    case 0xd7: payload = 9; goto sized;
    case 0xd8: payload = 17; goto sized;
    case 0xc4: case 0xd9: width = 1; break;
    case 0xc5: case 0xda: width = 2; break;
    case 0xc6: case 0xdb: width = 4; break;
    case 0xc7: width = 1; break; /* ext 8: length, type, data */
    case 0xc8: width = 2; break;
    case 0xc9: width = 4; break;
    case 0xdc: case 0xde: width = 2; break;
    case 0xdd: case 0xdf: width = 4; break;
    default: return 0; /* 0xc1: never used */
    }
    if (!need(r, pos + 1, width))
        return 0;
    uint64_t n = be(p + 1, width);
    if (b == 0xdc || b == 0xdd) { *size = 1 + width; *children = n; return 1; }
    if (b == 0xde || b == 0xdf) { *size = 1 + width; *children = 2 * n; return 1; }
    if (b >= 0xc7 && b <= 0xc9)
        n += 1; /* the ext type byte */
    if (!need(r, pos + 1 + width, (size_t)n))
        return 0;
    *size = 1 + width + (size_t)n;
    return 1;
sized:
    if (!need(r, pos + 1, payload))
        return 0;
    *size = 1 + payload;
    return 1;
}

int mpr_skip(mpr *r)
{
    return mpr_skip_within(r, MPR_MAX_DEPTH);
}

int mpr_skip_within(mpr *r, int max_depth)
{
    /* Iterative: remaining[d] items are still to be read at depth d. */
    uint64_t remaining[MPR_MAX_DEPTH];
    if (max_depth < 1 || max_depth > MPR_MAX_DEPTH)
        return 0;
    int depth = 0;
    size_t pos = r->pos;
    remaining[0] = 1;
    while (depth >= 0) {
        if (remaining[depth] == 0) {
            depth--;
            continue;
        }
        size_t size;
        uint64_t children;
        if (!item(r, pos, &size, &children))
            return 0;
        remaining[depth]--;
        pos += size;
        if (children > 0) {
            /* Every child takes at least one byte: a count beyond what is left is malformed. */
            if (children > r->len - pos || depth + 1 >= max_depth)
                return 0;
            remaining[++depth] = children;
        }
    }
    r->pos = pos;
    return 1;
}
