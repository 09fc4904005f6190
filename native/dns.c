/* dns.c: DNS responses from a packet socket -> `dns` events and an address -> name cache (see
 * core_dns.h and docs/sources/dns.md).
 *
 * Every byte of a packet is read through a bounds-checked offset: packets come from the wire
 * (anyone on the link can send a "DNS response") or from a test's hostile bytes. A name is
 * decoded label by label into text with an explicit budget: a label over 63 bytes, a name
 * over 255, a compression pointer that does not point strictly backwards (which alone rules
 * out loops) or more than max_jumps pointers end the message, counted by reason. */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>

#include "core_dns.h"
#include "index.h"
#include "ip_text.h"
#include "msgpack.h"
#include "sink.h"

enum {
    MAX_DEVICES = 64,
    MAX_ADDRS = 16,       /* addresses one event keeps */
    MAX_CNAMES = 8,       /* CNAMEs one event keeps (and the chain followed) */
    NAME_TEXT = 1024,     /* a 255-byte name as text, every byte escaped (\DDD) at worst */
    HOST_TEXT = 256,      /* the longest name the cache keeps as text, NUL included */
    ADDR_TEXT = IP_TEXT_MAX,
    MIN_BLOCKS = 2,
    MAX_BLOCKS = 1024,
    SNAP_BYTES = 262144,  /* what the filter accepts of a packet (a block bounds it further) */
    FILTER_MAX = 24 + MAX_DEVICES + 2
};

/* DNS types and classes used. */
enum { T_A = 1, T_CNAME = 5, T_AAAA = 28, C_IN = 1 };

typedef struct host_entry {
    char addr[ADDR_TEXT];
    uint8_t addr_len;
    uint8_t used;         /* the clock's reference bit */
    uint16_t name_len;
    char name[HOST_TEXT];
} host_entry;

struct am_dns {
    struct am_dns_options opt;
    struct am_dns_stats st;
    int fd;
    int err;
    uint8_t *ring;
    size_t ring_len;
    uint32_t block_nr;
    uint32_t block;       /* the ring block to look at next */
    uint32_t block_done;  /* packets of that block already parsed (a full sink stopped us) */
    uint32_t ifindex[MAX_DEVICES];
    uint32_t nifindex;
    am_index hosts;       /* host_entry by address text */
    uint32_t hand;        /* the clock hand: a position in hosts */
};

void am_dns_default_options(struct am_dns_options *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    out->ring_bytes = 262144;
    out->block_bytes = 65536;
    out->block_ms = 64;
    out->max_hosts = 4096;
    out->max_jumps = 32;
}

static int same_host(const void *entry, const void *key, size_t len, const void *ctx)
{
    (void)ctx;
    const host_entry *e = entry;
    return e->addr_len == len && memcmp(e->addr, key, len) == 0;
}

am_dns *am_dns_new(const struct am_dns_options *opts)
{
    struct am_dns_options o;
    am_dns_default_options(&o);
    if (opts != NULL)
        o = *opts;
    uint32_t b = o.block_bytes;
    if (b < 4096 || b > 4194304 || (b & (b - 1)) != 0 || o.max_hosts < 1 ||
        o.max_hosts > 1048576 || o.max_jumps < 1 || o.max_jumps > 127 || o.ring_bytes == 0 ||
        o.block_ms < 1 || o.block_ms > 60000 ||
        strnlen(o.devices, sizeof o.devices) == sizeof o.devices)
        return NULL;
    am_dns *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    d->opt = o;
    d->fd = -1;
    if (am_index_init(&d->hosts, sizeof(host_entry), o.max_hosts, same_host, NULL, NULL) != AM_OK) {
        free(d);
        return NULL;
    }
    return d;
}

void am_dns_free(am_dns *d)
{
    if (d == NULL)
        return;
    if (d->ring != NULL)
        munmap(d->ring, d->ring_len);
    if (d->fd >= 0)
        close(d->fd);
    am_index_release(&d->hosts);
    free(d);
}

int am_dns_fileno(const am_dns *d)
{
    return d == NULL ? -1 : d->fd;
}

int am_dns_errno(const am_dns *d)
{
    return d == NULL ? 0 : d->err;
}

/* ---- the filter ----
 *
 * Classic BPF over the packet as a SOCK_DGRAM packet socket sees it: from the network header
 * on. Ancillary loads (SKF_AD_OFF + ...) read the interface and the packet type.
 *
 *   [devices]  ld ifindex; jeq #i1 -> ok ... jeq #iN -> ok; ret #0          (when devices)
 *   ok:   ld pkttype; jeq #PACKET_OUTGOING -> drop   (a reply is seen once, as it arrives:
 *                                                     on lo each packet passes out and in)
 *         ldb [0]; and #0xf0; jeq #0x40 -> v4; jeq #0x60 -> v6; drop
 *   v4:   ldb [9]; jeq #17 or #6, else drop          (protocol UDP or TCP)
 *         ldh [6]; jset #0x1fff -> drop              (later fragments carry no ports)
 *         ldx 4*([0]&0xf)                            (the IPv4 header's length)
 *         ldh [x+0]; jeq #53 -> accept; ldh [x+2]; jeq #53 -> accept; drop
 *   v6:   ldb [6]; jeq #17 or #6, else drop          (next header: no extension headers)
 *         ldh [40]; jeq #53 -> accept; ldh [42]; jeq #53 -> accept; drop
 *   accept: ret #SNAP_BYTES;  drop: ret #0
 */

/* One instruction of the template, jumps by absolute index in the template. */
typedef struct tmpl {
    uint16_t code;
    uint32_t k;
    uint8_t jt, jf; /* absolute targets for jumps */
} tmpl;

enum { ACCEPT = 23, DROP = 24, V4 = 6, V6 = 16 };

static const tmpl filter_body[] = {
    /* 0 */ {BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_AD_OFF + SKF_AD_PKTTYPE), 0, 0},
    /* 1 */ {BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, DROP, 2},
    /* 2 */ {BPF_LD | BPF_B | BPF_ABS, 0, 0, 0},
    /* 3 */ {BPF_ALU | BPF_AND | BPF_K, 0xf0, 0, 0},
    /* 4 */ {BPF_JMP | BPF_JEQ | BPF_K, 0x40, V4, 5},
    /* 5 */ {BPF_JMP | BPF_JEQ | BPF_K, 0x60, V6, DROP},
    /* 6 */ {BPF_LD | BPF_B | BPF_ABS, 9, 0, 0},
    /* 7 */ {BPF_JMP | BPF_JEQ | BPF_K, 17, 9, 8},
    /* 8 */ {BPF_JMP | BPF_JEQ | BPF_K, 6, 9, DROP},
    /* 9 */ {BPF_LD | BPF_H | BPF_ABS, 6, 0, 0},
    /* 10 */ {BPF_JMP | BPF_JSET | BPF_K, 0x1fff, DROP, 11},
    /* 11 */ {BPF_LDX | BPF_B | BPF_MSH, 0, 0, 0},
    /* 12 */ {BPF_LD | BPF_H | BPF_IND, 0, 0, 0},
    /* 13 */ {BPF_JMP | BPF_JEQ | BPF_K, 53, ACCEPT, 14},
    /* 14 */ {BPF_LD | BPF_H | BPF_IND, 2, 0, 0},
    /* 15 */ {BPF_JMP | BPF_JEQ | BPF_K, 53, ACCEPT, DROP},
    /* 16 */ {BPF_LD | BPF_B | BPF_ABS, 6, 0, 0},
    /* 17 */ {BPF_JMP | BPF_JEQ | BPF_K, 17, 19, 18},
    /* 18 */ {BPF_JMP | BPF_JEQ | BPF_K, 6, 19, DROP},
    /* 19 */ {BPF_LD | BPF_H | BPF_ABS, 40, 0, 0},
    /* 20 */ {BPF_JMP | BPF_JEQ | BPF_K, 53, ACCEPT, 21},
    /* 21 */ {BPF_LD | BPF_H | BPF_ABS, 42, 0, 0},
    /* 22 */ {BPF_JMP | BPF_JEQ | BPF_K, 53, ACCEPT, DROP},
    /* 23 */ {BPF_RET | BPF_K, SNAP_BYTES, 0, 0},
    /* 24 */ {BPF_RET | BPF_K, 0, 0, 0},
};

/* The program for d's devices into prog (FILTER_MAX entries); returns its length. */
static uint32_t build_filter(const am_dns *d, struct sock_filter *prog)
{
    uint32_t n = 0;
    if (d->nifindex > 0) {
        prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                 (uint32_t)(SKF_AD_OFF + SKF_AD_IFINDEX));
        for (uint32_t i = 0; i < d->nifindex; i++) {
            /* Matched: jump over the remaining tests and the ret. */
            uint8_t over = (uint8_t)(d->nifindex - 1 - i + 1);
            prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, d->ifindex[i],
                                                     over, 0);
        }
        prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);
    }
    uint32_t base = n;
    for (uint32_t i = 0; i < sizeof filter_body / sizeof filter_body[0]; i++) {
        const tmpl *t = &filter_body[i];
        struct sock_filter f = {t->code, 0, 0, t->k};
        if (BPF_CLASS(t->code) == BPF_JMP) {
            f.jt = (uint8_t)(t->jt - i - 1);
            f.jf = (uint8_t)(t->jf - i - 1);
        }
        prog[base + i] = f;
        n++;
    }
    return n;
}

int am_dns_filter_program(const am_dns *d, uint8_t *out, size_t cap, uint32_t *count)
{
    if (d == NULL || count == NULL || (out == NULL && cap > 0))
        return AM_ERR_ARG;
    struct sock_filter prog[FILTER_MAX];
    uint32_t n = build_filter(d, prog);
    *count = n;
    if (cap < n * sizeof prog[0])
        return AM_ERR_LIMIT;
    memcpy(out, prog, n * sizeof prog[0]);
    return AM_OK;
}

/* ---- the socket and its ring ---- */

static int sys_fail(am_dns *d)
{
    d->err = errno;
    if (d->ring != NULL)
        munmap(d->ring, d->ring_len);
    d->ring = NULL;
    d->ring_len = 0;
    if (d->fd >= 0)
        close(d->fd);
    d->fd = -1;
    d->st.ring_bytes = 0;
    return AM_DNS_ERR_SYS;
}

/* The ring's blocks: whole blocks of ring_bytes, MIN_BLOCKS .. MAX_BLOCKS of them. */
static uint32_t ring_blocks(const struct am_dns_options *o)
{
    uint32_t nr = o->ring_bytes / o->block_bytes;
    return nr < MIN_BLOCKS ? MIN_BLOCKS : nr > MAX_BLOCKS ? MAX_BLOCKS : nr;
}

/* opt.devices -> ifindexes; names with no interface are counted. */
static void resolve_devices(am_dns *d)
{
    const char *s = d->opt.devices;
    size_t n = strnlen(s, sizeof d->opt.devices);
    size_t start = 0;
    d->nifindex = 0;
    d->st.devices_missing = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ',')
            continue;
        size_t len = i - start;
        char name[IF_NAMESIZE];
        if (len > 0 && len < sizeof name) {
            memcpy(name, s + start, len);
            name[len] = '\0';
            unsigned idx = if_nametoindex(name);
            if (idx == 0 || d->nifindex == MAX_DEVICES)
                d->st.devices_missing++;
            else
                d->ifindex[d->nifindex++] = idx;
        } else if (len > 0) {
            d->st.devices_missing++;
        }
        start = i + 1;
    }
    d->st.devices = d->nifindex;
}

int am_dns_open(am_dns *d)
{
    if (d == NULL || d->fd >= 0)
        return AM_ERR_ARG;
    resolve_devices(d);
    if (d->opt.devices[0] != '\0' && d->nifindex == 0) {
        errno = ENODEV; /* devices named, none there: capturing everything would be wrong */
        return sys_fail(d);
    }
    uint32_t bs = d->opt.block_bytes;
    uint32_t nr = ring_blocks(&d->opt);
    d->st.ring_clamped = (uint64_t)nr * bs != d->opt.ring_bytes;

    d->fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (d->fd < 0)
        return sys_fail(d);
    /* The filter first, then drop what arrived before it (the socket took every packet). */
    struct sock_filter prog[FILTER_MAX];
    struct sock_fprog fprog = {(unsigned short)build_filter(d, prog), prog};
    if (setsockopt(d->fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof fprog) != 0)
        return sys_fail(d);
    uint8_t junk[1];
    while (recv(d->fd, junk, sizeof junk, MSG_DONTWAIT | MSG_TRUNC) >= 0) {
    }
    int version = TPACKET_V3;
    if (setsockopt(d->fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) != 0)
        return sys_fail(d);
    struct tpacket_req3 req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = bs;
    req.tp_block_nr = nr;
    req.tp_frame_size = 2048; /* V3 packs packets of any size; the kernel checks this only */
    req.tp_frame_nr = (bs / req.tp_frame_size) * nr;
    req.tp_retire_blk_tov = d->opt.block_ms;
    if (setsockopt(d->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) != 0)
        return sys_fail(d);
    d->ring_len = (size_t)bs * nr;
    void *ring = mmap(NULL, d->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, d->fd, 0);
    if (ring == MAP_FAILED)
        return sys_fail(d);
    d->ring = ring;
    d->block_nr = nr;
    d->block = 0;
    d->block_done = 0;
    struct sockaddr_ll ll;
    memset(&ll, 0, sizeof ll);
    ll.sll_family = AF_PACKET;
    ll.sll_protocol = htons(ETH_P_ALL);
    /* One device: bound to it (the kernel does not even run the filter for the others). */
    ll.sll_ifindex = d->nifindex == 1 ? (int)d->ifindex[0] : 0;
    if (bind(d->fd, (struct sockaddr *)&ll, sizeof ll) != 0)
        return sys_fail(d);
    d->st.ring_bytes = d->ring_len;
    return AM_OK;
}

/* ---- the cache ---- */

/* The clock: the first entry from the hand whose reference bit is clear goes (bits are
 * cleared on the way). At most two laps. */
static void evict_one(am_dns *d)
{
    uint32_t n = am_index_count(&d->hosts);
    for (uint32_t step = 0; n > 0 && step <= 2 * n; step++) {
        if (d->hand >= n)
            d->hand = 0;
        host_entry *e = am_index_at(&d->hosts, d->hand);
        if (e->used) {
            e->used = 0;
            d->hand++;
            continue;
        }
        am_index_remove_at(&d->hosts, d->hand); /* the last entry moves to the hand */
        d->st.hosts_evicted++;
        return;
    }
}

static void cache_put(am_dns *d, const char *addr, size_t addr_len, const char *name,
                      size_t name_len)
{
    if (name_len >= HOST_TEXT) {
        d->st.long_host++;
        return;
    }
    if (addr_len >= ADDR_TEXT)
        return;
    uint32_t pos = am_index_find(&d->hosts, addr, addr_len);
    if (pos == AM_INDEX_NONE) {
        if (am_index_count(&d->hosts) >= d->opt.max_hosts)
            evict_one(d);
        if (am_index_add(&d->hosts, addr, addr_len, &pos) != AM_INDEX_ADDED)
            return; /* no memory: the name is not cached */
        host_entry *e = am_index_at(&d->hosts, pos);
        memcpy(e->addr, addr, addr_len);
        e->addr_len = (uint8_t)addr_len;
    } else {
        host_entry *e = am_index_at(&d->hosts, pos);
        if (e->name_len == name_len && memcmp(e->name, name, name_len) == 0) {
            e->used = 1;
            return;
        }
    }
    host_entry *e = am_index_at(&d->hosts, pos);
    memcpy(e->name, name, name_len);
    e->name[name_len] = '\0';
    e->name_len = (uint16_t)name_len;
    e->used = 1;
    d->st.hosts_added++;
}

const char *dns_host_lookup(am_dns *d, const char *addr, size_t addr_len, size_t *len)
{
    if (d == NULL || addr == NULL)
        return NULL;
    d->st.host_lookups++;
    uint32_t pos = am_index_find(&d->hosts, addr, addr_len);
    /* A connection of a dual-stack socket to an IPv4 address shows as ::ffff:a.b.c.d. */
    if (pos == AM_INDEX_NONE && addr_len > 7 && memcmp(addr, "::ffff:", 7) == 0 &&
        memchr(addr + 7, '.', addr_len - 7) != NULL)
        pos = am_index_find(&d->hosts, addr + 7, addr_len - 7);
    if (pos == AM_INDEX_NONE)
        return NULL;
    host_entry *e = am_index_at(&d->hosts, pos);
    e->used = 1;
    d->st.host_hits++;
    *len = e->name_len;
    return e->name;
}

int am_dns_host(am_dns *d, const char *addr, char *out, size_t cap)
{
    if (d == NULL || addr == NULL || out == NULL)
        return AM_ERR_ARG;
    size_t len;
    const char *name = dns_host_lookup(d, addr, strnlen(addr, ADDR_TEXT), &len);
    if (name == NULL)
        return AM_EMPTY;
    if (len + 1 > cap)
        return AM_ERR_LIMIT;
    memcpy(out, name, len);
    out[len] = '\0';
    return AM_OK;
}

/* ---- the message ---- */

typedef struct msg {
    const uint8_t *p;
    size_t len;
} msg;

static int rd16(const msg *m, size_t off, uint32_t *v)
{
    if (off > m->len || m->len - off < 2)
        return 0;
    *v = (uint32_t)m->p[off] << 8 | m->p[off + 1];
    return 1;
}

static int rd32(const msg *m, size_t off, uint32_t *v)
{
    uint32_t hi, lo;
    if (!rd16(m, off, &hi) || !rd16(m, off + 2, &lo))
        return 0;
    *v = hi << 16 | lo;
    return 1;
}

/* Why a name failed: the counter to raise. */
enum name_error { NAME_OK = 0, NAME_TRUNC, NAME_LABEL, NAME_LONG, NAME_POINTER, NAME_LOOP };

/* The name at *off as lowercase text ("." for the root; bytes other than letters, digits,
 * '-' and '_' escaped as \DDD, so the text is ASCII and a '.' inside a label stays apart from
 * the separators) into text (NAME_TEXT bytes, NUL-terminated, *text_len). *off moves past the
 * name where it sits (past the first pointer when it has one). */
static enum name_error read_name(const msg *m, size_t *off, uint32_t max_jumps, char *text,
                                 size_t *text_len)
{
    size_t pos = *off;
    size_t end_of_name = 0; /* where the name ends in place: set at the first pointer */
    size_t wire = 0;        /* wire length: labels + length bytes + the root's */
    size_t out = 0;
    uint32_t jumps = 0;
    for (;;) {
        if (pos >= m->len)
            return NAME_TRUNC;
        uint8_t c = m->p[pos];
        if ((c & 0xc0) == 0xc0) {
            if (pos + 1 >= m->len)
                return NAME_TRUNC;
            size_t target = (size_t)(c & 0x3f) << 8 | m->p[pos + 1];
            /* Only backwards, to a place before this pointer: every jump strictly lowers the
             * position, so a loop is impossible; max_jumps bounds the work anyway. */
            if (target >= pos)
                return NAME_POINTER;
            if (++jumps > max_jumps)
                return NAME_LOOP;
            if (end_of_name == 0)
                end_of_name = pos + 2;
            pos = target;
            continue;
        }
        if ((c & 0xc0) != 0)
            return NAME_LABEL; /* 0x40 (extended) and 0x80 are reserved */
        pos++;
        wire += (size_t)c + 1;
        if (wire > 255)
            return NAME_LONG;
        if (c == 0)
            break;
        if (c > m->len - pos)
            return NAME_TRUNC;
        if (out > 0)
            text[out++] = '.';
        for (uint8_t i = 0; i < c; i++) {
            uint8_t b = m->p[pos + i];
            if (b >= 'A' && b <= 'Z')
                b = (uint8_t)(b + 32);
            int plain = (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' || b == '_';
            if (plain) {
                text[out++] = (char)b;
            } else {
                text[out++] = '\\';
                text[out++] = (char)('0' + b / 100);
                text[out++] = (char)('0' + b / 10 % 10);
                text[out++] = (char)('0' + b % 10);
            }
        }
        pos += c;
    }
    /* 255 wire bytes give at most 254 label bytes, 4 text bytes each, plus dots: < NAME_TEXT */
    if (out == 0)
        text[out++] = '.';
    text[out] = '\0';
    *text_len = out;
    *off = end_of_name != 0 ? end_of_name : pos;
    return NAME_OK;
}

static void count_name_error(am_dns *d, enum name_error e)
{
    switch (e) {
    case NAME_TRUNC: d->st.truncated++; break;
    case NAME_LABEL: d->st.bad_label++; break;
    case NAME_LONG: d->st.long_name++; break;
    case NAME_POINTER: d->st.bad_pointer++; break;
    case NAME_LOOP: d->st.pointer_loop++; break;
    case NAME_OK: break;
    }
}

/* What one response gives: the question, the chain of names, the addresses. */
typedef struct answer_set {
    char qname[NAME_TEXT];
    size_t qname_len;
    uint32_t qtype;
    uint32_t rcode;
    char chain[MAX_CNAMES][NAME_TEXT]; /* CNAME targets, in order */
    size_t chain_len[MAX_CNAMES];
    uint32_t nchain;
    char addr[MAX_ADDRS][ADDR_TEXT];
    uint32_t naddr;
} answer_set;

/* Whether the owner name is the question or one of the chain's names so far. */
static int in_chain(const answer_set *a, const char *name, size_t len)
{
    if (len == a->qname_len && memcmp(name, a->qname, len) == 0)
        return 1;
    for (uint32_t i = 0; i < a->nchain; i++)
        if (len == a->chain_len[i] && memcmp(name, a->chain[i], len) == 0)
            return 1;
    return 0;
}

static const char *type_name(uint32_t type, char *buf, size_t cap)
{
    switch (type) {
    case 1: return "A";
    case 2: return "NS";
    case 5: return "CNAME";
    case 6: return "SOA";
    case 12: return "PTR";
    case 15: return "MX";
    case 16: return "TXT";
    case 28: return "AAAA";
    case 33: return "SRV";
    case 64: return "SVCB";
    case 65: return "HTTPS";
    case 255: return "ANY";
    default: break;
    }
    /* RFC 3597's form for the others. */
    char digits[8];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + type % 10);
        type /= 10;
    } while (type > 0 && n < sizeof digits);
    size_t o = 0;
    const char *prefix = "TYPE";
    while (*prefix && o + 1 < cap)
        buf[o++] = *prefix++;
    while (n > 0 && o + 1 < cap)
        buf[o++] = digits[--n];
    buf[o] = '\0';
    return buf;
}

static const char *rcode_name(uint32_t rcode)
{
    static const char *const names[] = {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
                                        "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
                                        "NXRRSET", "NOTAUTH", "NOTZONE"};
    return rcode < sizeof names / sizeof names[0] ? names[rcode] : "OTHER";
}

static int encode_event(am_dns *d, am_sink *sink, const answer_set *a, int64_t ts_ms,
                        const char *server, const char *proto)
{
    char tbuf[16];
    mp_buf *m = sink_begin(sink);
    uint32_t keys = 8 + (server != NULL);
    int st = mp_map(m, keys);
    if (st == AM_OK) st = mp_cstr(m, "t");
    if (st == AM_OK) st = mp_cstr(m, "dns");
    if (st == AM_OK) st = mp_cstr(m, "ts");
    if (st == AM_OK) st = mp_int(m, ts_ms);
    if (st == AM_OK) st = mp_cstr(m, "src");
    if (st == AM_OK) st = mp_cstr(m, proto);
    if (st == AM_OK) st = mp_cstr(m, "name");
    if (st == AM_OK) st = mp_str(m, a->qname, a->qname_len);
    if (st == AM_OK) st = mp_cstr(m, "type");
    if (st == AM_OK) st = mp_cstr(m, type_name(a->qtype, tbuf, sizeof tbuf));
    if (st == AM_OK) st = mp_cstr(m, "rcode");
    if (st == AM_OK) st = mp_cstr(m, rcode_name(a->rcode));
    if (st == AM_OK) st = mp_cstr(m, "answers");
    if (st == AM_OK) st = mp_array(m, a->naddr);
    for (uint32_t i = 0; i < a->naddr && st == AM_OK; i++)
        st = mp_cstr(m, a->addr[i]);
    if (st == AM_OK) st = mp_cstr(m, "cnames");
    if (st == AM_OK) st = mp_array(m, a->nchain);
    for (uint32_t i = 0; i < a->nchain && st == AM_OK; i++)
        st = mp_str(m, a->chain[i], a->chain_len[i]);
    if (st == AM_OK && server != NULL) st = mp_cstr(m, "server");
    if (st == AM_OK && server != NULL) st = mp_cstr(m, server);
    if (st != AM_OK) {
        sink_drop(sink);
        d->st.dropped++;
        return 0;
    }
    if (sink_commit(sink) != AM_OK) {
        d->st.dropped++;
        return 0;
    }
    d->st.events++;
    return 1;
}

/* One DNS message: a response gives one event and fills the cache. Returns events appended. */
static uint32_t parse_message(am_dns *d, am_sink *sink, const uint8_t *data, size_t len,
                              int64_t ts_ms, const char *server, const char *proto)
{
    msg m = {data, len};
    uint32_t flags, qd, an;
    if (len < 12 || !rd16(&m, 2, &flags) || !rd16(&m, 4, &qd) || !rd16(&m, 6, &an)) {
        d->st.truncated++;
        return 0;
    }
    if ((flags & 0x8000) == 0) {
        d->st.messages++;
        d->st.queries++;
        return 0;
    }
    answer_set *a = calloc(1, sizeof *a);
    if (a == NULL)
        return 0;
    a->rcode = flags & 0xf;
    size_t off = 12;
    uint32_t result = 0;
    /* The questions: the first names the event; a response without one has nothing to say. */
    for (uint32_t i = 0; i < qd; i++) {
        char name[NAME_TEXT];
        size_t name_len;
        enum name_error e = read_name(&m, &off, d->opt.max_jumps, i == 0 ? a->qname : name,
                                      i == 0 ? &a->qname_len : &name_len);
        uint32_t qtype;
        if (e == NAME_OK && !rd16(&m, off, &qtype))
            e = NAME_TRUNC;
        if (e != NAME_OK || len - off < 4) {
            count_name_error(d, e == NAME_OK ? NAME_TRUNC : e);
            goto done;
        }
        if (i == 0)
            a->qtype = qtype;
        off += 4;
    }
    if (qd == 0) {
        d->st.truncated++;
        goto done;
    }
    /* The answers, in order: a CNAME of a name of the chain extends it; an address of a name
     * of the chain is the question's. Anything else is not believed. */
    for (uint32_t i = 0; i < an; i++) {
        char owner[NAME_TEXT];
        size_t owner_len;
        enum name_error e = read_name(&m, &off, d->opt.max_jumps, owner, &owner_len);
        uint32_t type, cls, ttl, rdlen;
        if (e == NAME_OK && (!rd16(&m, off, &type) || !rd16(&m, off + 2, &cls) ||
                             !rd32(&m, off + 4, &ttl) || !rd16(&m, off + 8, &rdlen)))
            e = NAME_TRUNC;
        if (e == NAME_OK && rdlen > len - off - 10)
            e = NAME_TRUNC;
        if (e != NAME_OK) {
            count_name_error(d, e);
            goto done;
        }
        off += 10;
        size_t rdata = off;
        off += rdlen;
        if (cls != C_IN || (type != T_A && type != T_AAAA && type != T_CNAME)) {
            d->st.other_answers++;
            continue;
        }
        if (!in_chain(a, owner, owner_len)) {
            d->st.unrelated++;
            continue;
        }
        if (type == T_CNAME) {
            size_t at = rdata;
            char target[NAME_TEXT];
            size_t target_len;
            /* The name must fill the rdata exactly (pointers may reach before it). */
            msg inner = {data, rdata + rdlen};
            e = read_name(&inner, &at, d->opt.max_jumps, target, &target_len);
            if (e != NAME_OK || at != rdata + rdlen) {
                if (e == NAME_OK || e == NAME_TRUNC)
                    d->st.bad_rdata++;
                else
                    count_name_error(d, e);
                goto done;
            }
            if (a->nchain == MAX_CNAMES) {
                d->st.answers_cut++;
                continue;
            }
            memcpy(a->chain[a->nchain], target, target_len + 1);
            a->chain_len[a->nchain++] = target_len;
            d->st.answers++;
            continue;
        }
        size_t want = type == T_A ? 4 : 16;
        if (rdlen != want) {
            d->st.bad_rdata++;
            goto done;
        }
        if (a->naddr == MAX_ADDRS) {
            d->st.answers_cut++;
            continue;
        }
        (void)am_ip_text(type == T_A ? 4 : 6, data + rdata, a->addr[a->naddr], ADDR_TEXT);
        a->naddr++;
        d->st.answers++;
    }
    /* The authority and additional sections are not read: what they hold is not an answer. */
    d->st.messages++;
    for (uint32_t i = 0; i < a->naddr; i++)
        cache_put(d, a->addr[i], strlen(a->addr[i]), a->qname, a->qname_len);
    result = (uint32_t)encode_event(d, sink, a, ts_ms, server, proto);
done:
    free(a);
    return result;
}

/* ---- packets ---- */

static uint32_t parse_transport(am_dns *d, am_sink *sink, int proto, const uint8_t *p,
                                size_t len, int64_t ts_ms, const char *server)
{
    if (proto == 17) {
        uint32_t ulen;
        msg m = {p, len};
        if (len < 8 || !rd16(&m, 4, &ulen) || ulen < 8 || ulen > len) {
            d->st.bad_transport++;
            return 0;
        }
        return parse_message(d, sink, p + 8, ulen - 8, ts_ms, server, "udp");
    }
    /* TCP: the header's data offset, then whole length-prefixed messages. */
    if (len < 20 || (p[12] >> 4) < 5 || (size_t)(p[12] >> 4) * 4 > len) {
        d->st.bad_transport++;
        return 0;
    }
    size_t off = (size_t)(p[12] >> 4) * 4;
    uint32_t events = 0;
    while (len - off >= 2) {
        size_t mlen = (size_t)p[off] << 8 | p[off + 1];
        if (mlen > len - off - 2)
            break;
        events += parse_message(d, sink, p + off + 2, mlen, ts_ms, server, "tcp");
        off += 2 + mlen;
    }
    if (off < len)
        d->st.tcp_partial++;
    return events;
}

static uint32_t parse_packet(am_dns *d, am_sink *sink, const uint8_t *p, size_t len,
                             int64_t ts_ms)
{
    d->st.packets++;
    char server[ADDR_TEXT];
    if (len < 1) {
        d->st.bad_ip++;
        return 0;
    }
    if (p[0] >> 4 == 4) {
        size_t ihl = (size_t)(p[0] & 0xf) * 4;
        if (len < 20 || ihl < 20 || ihl > len) {
            d->st.bad_ip++;
            return 0;
        }
        size_t total = (size_t)p[2] << 8 | p[3];
        if (total < ihl || total > len) {
            d->st.bad_ip++;
            return 0;
        }
        uint32_t frag = (uint32_t)p[6] << 8 | p[7];
        if ((frag & 0x3fff) != 0) { /* MF, or an offset */
            d->st.fragments++;
            return 0;
        }
        if (p[9] != 17 && p[9] != 6) {
            d->st.unsupported++;
            return 0;
        }
        (void)am_ip_text(4, p + 12, server, sizeof server);
        return parse_transport(d, sink, p[9], p + ihl, total - ihl, ts_ms, server);
    }
    if (p[0] >> 4 == 6) {
        if (len < 40) {
            d->st.bad_ip++;
            return 0;
        }
        size_t payload = (size_t)p[4] << 8 | p[5];
        if (payload > len - 40) {
            d->st.bad_ip++;
            return 0;
        }
        if (p[6] != 17 && p[6] != 6) {
            d->st.unsupported++;
            return 0;
        }
        (void)am_ip_text(6, p + 8, server, sizeof server);
        return parse_transport(d, sink, p[6], p + 40, payload, ts_ms, server);
    }
    d->st.bad_ip++;
    return 0;
}

int am_dns_feed_packet(am_dns *d, am_sink *sink, const uint8_t *data, size_t len,
                       int64_t ts_ms, uint32_t *appended)
{
    if (d == NULL || sink == NULL || (data == NULL && len > 0))
        return AM_ERR_ARG;
    if (am_sink_full(sink))
        return AM_ERR_FULL;
    uint32_t n = parse_packet(d, sink, data, len, ts_ms);
    if (appended != NULL)
        *appended = n;
    return AM_OK;
}

int am_dns_feed_message(am_dns *d, am_sink *sink, const uint8_t *data, size_t len,
                        int64_t ts_ms, const char *server, uint32_t *appended)
{
    if (d == NULL || sink == NULL || (data == NULL && len > 0))
        return AM_ERR_ARG;
    if (am_sink_full(sink))
        return AM_ERR_FULL;
    char srv[ADDR_TEXT];
    if (server != NULL) {
        size_t n = strnlen(server, ADDR_TEXT - 1);
        memcpy(srv, server, n);
        srv[n] = '\0';
    }
    d->st.packets++;
    uint32_t n = parse_message(d, sink, data, len, ts_ms, server != NULL ? srv : NULL, "udp");
    if (appended != NULL)
        *appended = n;
    return AM_OK;
}

/* ---- the ring ---- */

static void read_ring_stats(am_dns *d)
{
    struct tpacket_stats_v3 s;
    socklen_t len = sizeof s;
    memset(&s, 0, sizeof s);
    /* Reading resets the kernel's counters: they add up here. */
    if (getsockopt(d->fd, SOL_PACKET, PACKET_STATISTICS, &s, &len) == 0) {
        d->st.ring_drops += s.tp_drops;
        d->st.ring_freezes += s.tp_freeze_q_cnt;
    }
}

int am_dns_drain(am_dns *d, am_sink *sink, uint32_t *appended)
{
    if (d == NULL || sink == NULL || d->ring == NULL)
        return AM_ERR_ARG;
    uint32_t events = 0;
    int status = AM_OK;
    size_t bs = d->opt.block_bytes;
    /* At most one lap: blocks the kernel fills meanwhile wait for the next call. */
    for (uint32_t lap = 0; lap < d->block_nr; lap++) {
        struct tpacket_block_desc *bd = (void *)(d->ring + (size_t)d->block * bs);
        if ((__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) == 0)
            break;
        uint32_t num = bd->hdr.bh1.num_pkts;
        size_t off = bd->hdr.bh1.offset_to_first_pkt;
        for (uint32_t i = 0; i < num; i++) {
            if (off < sizeof *bd || off > bs - sizeof(struct tpacket3_hdr))
                break; /* the kernel writes these; never trusted past the block */
            const struct tpacket3_hdr *h = (const void *)((const uint8_t *)bd + off);
            if (i >= d->block_done) {
                if (am_sink_full(sink)) {
                    d->block_done = i;
                    status = AM_ERR_FULL;
                    goto out;
                }
                size_t net = h->tp_net;
                size_t snap = h->tp_snaplen;
                if (net <= bs - off && snap <= bs - off - net) {
                    if (snap < h->tp_len)
                        d->st.snap_cut++;
                    int64_t ts = (int64_t)h->tp_sec * 1000 + h->tp_nsec / 1000000;
                    events += parse_packet(d, sink, (const uint8_t *)h + net, snap, ts);
                } else {
                    d->st.bad_ip++;
                }
            }
            if (h->tp_next_offset == 0)
                break;
            off += h->tp_next_offset;
        }
        d->block_done = 0;
        __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        d->block = (d->block + 1) % d->block_nr;
    }
out:
    read_ring_stats(d);
    if (appended != NULL)
        *appended = events;
    return status;
}

void am_dns_stats(const am_dns *d, struct am_dns_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (d == NULL)
        return;
    *out = d->st;
    out->hosts = am_index_count(&d->hosts);
    out->memory = sizeof *d + am_index_memory(&d->hosts) + d->ring_len;
    out->memory_bound = sizeof *d + am_index_memory_bound(sizeof(host_entry), d->opt.max_hosts) +
                        (uint64_t)ring_blocks(&d->opt) * d->opt.block_bytes;
}
