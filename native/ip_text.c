/* ip_text.c: addresses as text without inet_ntop(3). glibc's writes each IPv6 group and each
 * IPv4 byte through sprintf: a tenth of the connection snapshot's events was spent there. The
 * text is the same as glibc's, byte for byte (tests/test_ip_text.py holds them side by side):
 * dotted decimal; for IPv6 lowercase hex groups without leading zeros, the first longest run of
 * two or more zero groups as "::", and the last 32 bits dotted after ::ffff: (IPv4-mapped) or
 * after six zero groups (the old IPv4-compatible form). */
#include <string.h>

#include "ip_text.h"

static size_t put_v4(char *o, const uint8_t *a)
{
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (i > 0)
            o[n++] = '.';
        if (v >= 100)
            o[n++] = (char)('0' + v / 100);
        if (v >= 10)
            o[n++] = (char)('0' + v / 10 % 10);
        o[n++] = (char)('0' + v % 10);
    }
    return n;
}

static size_t put_group(char *o, unsigned v)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (int shift = 12; shift >= 0; shift -= 4) {
        unsigned d = (v >> shift) & 0xf;
        if (n > 0 || d != 0 || shift == 0)
            o[n++] = hex[d];
    }
    return n;
}

static size_t put_v6(char *o, const uint8_t *a)
{
    unsigned w[8];
    for (int i = 0; i < 8; i++)
        w[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    int best = -1, best_len = 0, run = -1, run_len = 0;
    for (int i = 0; i < 8; i++) {
        if (w[i] != 0) {
            run = -1;
            continue;
        }
        if (run < 0) {
            run = i;
            run_len = 0;
        }
        if (++run_len > best_len) { /* strictly longer: the first of equal runs stays */
            best = run;
            best_len = run_len;
        }
    }
    if (best_len < 2)
        best = -1;
    size_t n = 0;
    for (int i = 0; i < 8; i++) {
        if (best >= 0 && i >= best && i < best + best_len) {
            if (i == best)
                o[n++] = ':';
            continue;
        }
        if (i > 0)
            o[n++] = ':';
        if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff)))
            return n + put_v4(o + n, a + 12);
        n += put_group(o + n, w[i]);
    }
    if (best >= 0 && best + best_len == 8)
        o[n++] = ':';
    return n;
}

int am_ip_text(uint8_t version, const uint8_t *addr, char *out, size_t cap)
{
    if (addr == NULL || out == NULL || (version != 4 && version != 6))
        return AM_ERR_ARG;
    char text[IP_TEXT_MAX];
    size_t n = version == 4 ? put_v4(text, addr) : put_v6(text, addr);
    if (n >= cap)
        return AM_ERR_FULL;
    memcpy(out, text, n);
    out[n] = '\0';
    return (int)n;
}
