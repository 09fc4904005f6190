/* audit_record.c: parse one audit record's header and split its fields (docs/audit-parsing.md
 * sections 2 and 5). Works in place on the caller's bytes. */
#include "audit_record.h"

#include <string.h>

#include "core.h"
#include "msgpack.h"

#define starts_with(s, len, lit) \
    ((len) >= sizeof("" lit) - 1 && memcmp((s), (lit), sizeof(lit) - 1) == 0)

int parse_dec_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9)
            return -1;
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int parse_dec_i64(const char *s, size_t len, int64_t *out)
{
    uint64_t v;
    if (len > 0 && s[0] == '-') {
        if (parse_dec_u64(s + 1, len - 1, &v) != 0 || v > (uint64_t)INT64_MAX + 1)
            return -1;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
        return 0;
    }
    if (parse_dec_u64(s, len, &v) != 0 || v > (uint64_t)INT64_MAX)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int parse_hex_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 16)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        int d = hex_digit((unsigned char)s[i]);
        if (d < 0)
            return -1;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return 0;
}

int is_hex_text(const char *s, size_t len)
{
    if (len == 0 || (len & 1))
        return 0;
    for (size_t i = 0; i < len; i++)
        if (hex_digit((unsigned char)s[i]) < 0)
            return 0;
    return 1;
}

void hex_decode(const char *s, size_t len, uint8_t *out)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        out[i / 2] = (uint8_t)((hex_digit((unsigned char)s[i]) << 4) |
                               hex_digit((unsigned char)s[i + 1]));
}

int is_nil_text(const char *s, size_t len)
{
    return span_eq(s, len, "(null)") || span_eq(s, len, "(none)") || span_eq(s, len, "?");
}

/* "audit(SEC.FRAC:SERIAL):" at text; on success returns the offset just past the ':'. */
static long parse_stamp(const char *s, size_t len, am_record_head *out)
{
    if (!starts_with(s, len, "audit("))
        return -1;
    size_t i = 6, start = i;
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    uint64_t sec;
    if (parse_dec_u64(s + start, i - start, &sec) != 0 || i >= len || s[i] != '.')
        return -1;
    start = ++i;
    uint64_t ms = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        if (i - start < 3)
            ms = ms * 10 + (uint64_t)(s[i] - '0');
        i++;
    }
    size_t frac_digits = i - start;
    if (frac_digits == 0 || i >= len || s[i] != ':')
        return -1;
    for (size_t k = frac_digits; k < 3; k++)
        ms *= 10;
    if (sec > (UINT64_MAX - 999) / 1000)
        return -1;
    start = ++i;
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    if (parse_dec_u64(s + start, i - start, &out->serial) != 0)
        return -1;
    if (i >= len || s[i] != ')')
        return -1;
    /* auditd before 3.0 wrote its own DAEMON_* records without the ':'. */
    i += (i + 1 < len && s[i + 1] == ':') ? 2 : 1;
    out->ts_ms = sec * 1000 + ms;
    return (long)i;
}

static void set_fields(const char *s, size_t len, am_record_head *out)
{
    while (len > 0 && *s == ' ') {
        s++;
        len--;
    }
    const char *gs = memchr(s, 0x1d, len);
    out->fields = s;
    out->fields_len = gs ? (size_t)(gs - s) : len;
}

static size_t token_end(const char *s, size_t len, size_t i)
{
    const char *sp = memchr(s + i, ' ', len - i);
    return sp ? (size_t)(sp - s) : len;
}

int record_parse_line(const char *line, size_t len, am_record_head *out)
{
    size_t i = 0;
    out->node = NULL;
    out->node_len = 0;
    for (;;) {
        while (i < len && line[i] == ' ')
            i++;
        if (i >= len)
            return -1;
        if (starts_with(line + i, len - i, "type="))
            break;
        size_t end = token_end(line, len, i);
        const char *eq = memchr(line + i, '=', end - i);
        if (eq == NULL)
            return -1;
        if (starts_with(line + i, end - i, "node=")) {
            /* A node name is a host name: 255 bytes at most. */
            if (end - i - 5 > 255)
                return -1;
            out->node = line + i + 5;
            out->node_len = end - i - 5;
        }
        i = end;
    }
    i += 5;
    size_t end = token_end(line, len, i);
    const char *name = line + i;
    size_t name_len = end - i;
    if (starts_with(name, name_len, "UNKNOWN[") && name_len > 9 && name[name_len - 1] == ']') {
        uint64_t n;
        if (parse_dec_u64(name + 8, name_len - 9, &n) != 0 || n > UINT32_MAX)
            return -1;
        out->type = (uint32_t)n;
    } else {
        int n = am_record_type_number(name, name_len);
        if (n < 0)
            return -1;
        out->type = (uint32_t)n;
    }
    i = end;
    while (i < len && line[i] == ' ')
        i++;
    if (!starts_with(line + i, len - i, "msg="))
        return -1;
    i += 4;
    long past = parse_stamp(line + i, len - i, out);
    if (past < 0)
        return -1;
    i += (size_t)past;
    set_fields(line + i, len - i, out);
    return 0;
}

int record_parse_payload(uint32_t type, const char *text, size_t len, am_record_head *out)
{
    out->node = NULL;
    out->node_len = 0;
    out->type = type;
    long past = parse_stamp(text, len, out);
    if (past < 0)
        return -1;
    set_fields(text + past, len - (size_t)past, out);
    return 0;
}

/* Does the text start with a key=value token (after spaces: systemd writes msg=' comm=...')? */
static int starts_with_pair(const char *s, size_t len)
{
    while (len > 0 && *s == ' ') {
        s++;
        len--;
    }
    size_t end = token_end(s, len, 0);
    const char *eq = memchr(s, '=', end);
    return eq != NULL && eq != s;
}

static size_t split(const char *s, size_t len, am_field *out, size_t n, size_t cap,
                    int *free_text, int *overflow, int expand_msg)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        if (i >= len)
            break;
        size_t end = token_end(s, len, i);
        const char *eq = memchr(s + i, '=', end - i);
        /* A name that is not UTF-8 is no field name (keys must be msgpack str). */
        if (eq == NULL || eq == s + i || !utf8_valid((const uint8_t *)s + i, (size_t)(eq - (s + i)))) {
            *free_text = 1;
            i = end;
            continue;
        }
        size_t key_len = (size_t)(eq - (s + i));
        size_t v = (size_t)(eq - s) + 1;
        uint8_t kind = FV_PLAIN;
        size_t vstart = v, vend, next;
        if (v < len && (s[v] == '"' || s[v] == '\'')) {
            kind = s[v] == '"' ? FV_DQUOTED : FV_SQUOTED;
            vstart = v + 1;
            const char *q = vstart < len ? memchr(s + vstart, s[v], len - vstart) : NULL;
            vend = q ? (size_t)(q - s) : len;
            next = q ? vend + 1 : len;
        } else {
            vend = end;
            next = end;
        }
        if (kind == FV_SQUOTED && expand_msg && span_eq(s + i, key_len, "msg") &&
            starts_with_pair(s + vstart, vend - vstart)) {
            n = split(s + vstart, vend - vstart, out, n, cap, free_text, overflow, 0);
        } else if (n < cap) {
            out[n].key = s + i;
            out[n].key_len = (uint32_t)key_len;
            out[n].val = s + vstart;
            out[n].val_len = (uint32_t)(vend - vstart);
            out[n].kind = kind;
            n++;
        } else {
            *overflow = 1;
        }
        i = next;
    }
    return n;
}

size_t fields_split(const char *text, size_t len, am_field *out, size_t cap, int *free_text,
                    int *overflow)
{
    *free_text = 0;
    *overflow = 0;
    return split(text, len, out, 0, cap, free_text, overflow, 1);
}
