/* proc_net.c: the /proc/net/{tcp,tcp6,udp,udp6} parser, the socket table's fallback where
 * sock_diag is unavailable. A line (net/ipv4/tcp_ipv4.c get_tcp4_sock, tcp6_sock_seq_show,
 * udp4_format_sock):
 *    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ..."
 *    "   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 ..."
 * Addresses are the in-memory (network order) words printed with %08X as the CPU reads them:
 * one u32 for IPv4, four for IPv6; copying each parsed word's bytes back (memcpy of the native
 * u32) restores the address on either endianness. Ports are printed in host order. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "sock_diag_int.h"

enum { MAX_LINE = 512, MAX_FIELDS = 12 };

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
static void procnet_line(am_sock *t, uint8_t proto, uint8_t fam, const char *s, size_t n)
{
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
    struct sock_entry e;
    memset(&e, 0, sizeof e);
    uint32_t slot, st, uid, inode;
    if (count < 10 || fl[0] < 2 || f[0][fl[0] - 1] != ':' || !parse_dec(f[0], fl[0] - 1, &slot) ||
        !parse_endpoint(f[1], fl[1], fam, e.k.laddr, &e.k.lport) ||
        !parse_endpoint(f[2], fl[2], fam, e.k.raddr, &e.k.rport) || fl[3] != 2 ||
        !parse_hex(f[3], 2, &st) || !parse_dec(f[7], fl[7], &uid) ||
        !parse_dec(f[9], fl[9], &inode)) {
        t->st.malformed++;
        return;
    }
    e.k.fam = fam;
    e.k.proto = proto;
    e.k.inode = inode;
    e.uid = uid;
    e.state = (uint8_t)st;
    snap_add(t, &e);
}

int procnet_lines(am_sock *t, uint8_t proto, uint8_t fam, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        const char *nl = memchr(data + off, '\n', len - off);
        size_t n = nl ? (size_t)(nl - (data + off)) : len - off;
        if (n > MAX_LINE) {
            t->st.long_lines++;
            t->st.malformed++;
        } else {
            procnet_line(t, proto, fam, data + off, n);
        }
        off += n + (nl ? 1 : 0);
    }
    return AM_OK;
}

int procnet_read(am_sock *t, const char *path, uint8_t proto, uint8_t fam)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return AM_ERR_LIMIT;
    /* Whole lines are parsed from the buffer; a partial last line moves to its front. A line
     * longer than MAX_LINE is skipped up to its newline and counted. */
    size_t have = 0;
    int skipping = 0;
    int status = AM_OK;
    for (;;) {
        ssize_t r = read(fd, t->buf + have, t->buf_cap - have);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            status = AM_ERR_LIMIT;
            break;
        }
        size_t end = have + (size_t)r;
        size_t off = 0;
        for (;;) {
            char *nl = memchr(t->buf + off, '\n', end - off);
            if (nl == NULL)
                break;
            size_t n = (size_t)((uint8_t *)nl - (t->buf + off));
            if (skipping)
                skipping = 0;
            else
                procnet_lines(t, proto, fam, (const char *)t->buf + off, n);
            off += n + 1;
        }
        size_t rest = end - off;
        if (r == 0) {
            if (rest > 0 && !skipping)
                procnet_lines(t, proto, fam, (const char *)t->buf + off, rest);
            break;
        }
        if (rest > MAX_LINE) {
            if (!skipping) {
                t->st.long_lines++;
                t->st.malformed++;
            }
            skipping = 1;
            rest = 0;
        }
        memmove(t->buf, t->buf + off, rest);
        have = rest;
    }
    close(fd);
    return status;
}
