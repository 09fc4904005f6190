/* proc_net.c: the /proc/net/{tcp,tcp6,udp,udp6} parser (proc_net.h), the socket table's
 * fallback where sock_diag is unavailable. A line (net/ipv4/tcp_ipv4.c get_tcp4_sock,
 * tcp6_sock_seq_show, udp4_format_sock):
 *    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ..."
 *    "   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 ..."
 * Addresses are the in-memory (network order) words printed with %08X as the CPU reads them:
 * one u32 for IPv4, four for IPv6; copying each parsed word's bytes back (memcpy of the native
 * u32) restores the address on either endianness. Ports are printed in host order. */
#include "proc_net.h"

#include <string.h>

enum { MAX_FIELDS = 12 };

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Exactly n hex digits -> *out. */
static int parse_hex(const char *s, size_t n, uint32_t *out)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = hex_digit(s[i]);
        if (d < 0)
            return 0;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 1;
}

static int parse_dec(const char *s, size_t n, uint32_t *out)
{
    if (n == 0 || n > 10)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > UINT32_MAX)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

/* "0100007F:0277" (fam 4) or 32 hex digits ":PORT" (fam 6). */
static int parse_endpoint(const char *s, size_t n, uint8_t fam, uint8_t addr[16], uint16_t *port)
{
    size_t hex = fam == 4 ? 8 : 32;
    if (n != hex + 5 || s[hex] != ':')
        return 0;
    for (size_t w = 0; w < hex / 8; w++) {
        uint32_t word;
        if (!parse_hex(s + w * 8, 8, &word))
            return 0;
        memcpy(addr + w * 4, &word, 4);
    }
    uint32_t p;
    if (!parse_hex(s + hex + 1, 4, &p))
        return 0;
    *port = (uint16_t)p;
    return 1;
}

/* One line without its newline. */
static void parse_line(struct procnet_parser *p, const char *s, size_t n)
{
    if (n > PROCNET_MAX_LINE) {
        p->long_lines++;
        p->malformed++;
        return;
    }
    const char *f[MAX_FIELDS];
    size_t fl[MAX_FIELDS];
    size_t count = 0;
    for (size_t i = 0; i < n && count < MAX_FIELDS;) {
        while (i < n && s[i] == ' ')
            i++;
        if (i >= n)
            break;
        size_t start = i;
        while (i < n && s[i] != ' ')
            i++;
        f[count] = s + start;
        fl[count] = i - start;
        count++;
    }
    if (count == 0)
        return; /* an empty line */
    if (fl[0] == 2 && memcmp(f[0], "sl", 2) == 0)
        return; /* the header */
    struct procnet_sock e;
    memset(&e, 0, sizeof e);
    uint32_t slot, st;
    if (count < 10 || fl[0] < 2 || f[0][fl[0] - 1] != ':' || !parse_dec(f[0], fl[0] - 1, &slot) ||
        !parse_endpoint(f[1], fl[1], p->fam, e.laddr, &e.lport) ||
        !parse_endpoint(f[2], fl[2], p->fam, e.raddr, &e.rport) || fl[3] != 2 ||
        !parse_hex(f[3], 2, &st) || !parse_dec(f[7], fl[7], &e.uid) ||
        !parse_dec(f[9], fl[9], &e.inode)) {
        p->malformed++;
        return;
    }
    e.state = (uint8_t)st;
    p->sock(p->ctx, &e);
}

void procnet_begin(struct procnet_parser *p, uint8_t fam, procnet_sock_fn sock, void *ctx)
{
    p->fam = fam;
    p->sock = sock;
    p->ctx = ctx;
    p->malformed = 0;
    p->long_lines = 0;
    p->carry_len = 0;
    p->skipping = 0;
}

/* More of the line being carried: a line that grows past the bound is counted once, then
 * skipped up to its newline. */
static void carry(struct procnet_parser *p, const char *s, size_t n)
{
    if (p->skipping)
        return;
    if (n > PROCNET_MAX_LINE - p->carry_len) {
        p->long_lines++;
        p->malformed++;
        p->skipping = 1;
        p->carry_len = 0;
        return;
    }
    memcpy(p->carry + p->carry_len, s, n);
    p->carry_len += n;
}

static void end_carried_line(struct procnet_parser *p)
{
    if (!p->skipping)
        parse_line(p, p->carry, p->carry_len);
    p->skipping = 0;
    p->carry_len = 0;
}

void procnet_feed(struct procnet_parser *p, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        const char *nl = memchr(data + off, '\n', len - off);
        if (nl == NULL) {
            carry(p, data + off, len - off);
            return;
        }
        size_t n = (size_t)(nl - (data + off));
        if (p->carry_len > 0 || p->skipping) {
            carry(p, data + off, n);
            end_carried_line(p);
        } else {
            parse_line(p, data + off, n);
        }
        off += n + 1;
    }
}

void procnet_end(struct procnet_parser *p)
{
    if (p->carry_len > 0 || p->skipping)
        end_carried_line(p);
}
