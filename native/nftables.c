/* nftables.c: the nftables ruleset -> fwchain and fwrule events (core_nftables.h).
 *
 * The four dumps are kept whole (their messages copied into one bounded store), then
 * decoded: sets indexed, chains encoded, then each rule, whose expressions are followed
 * register by register (meta, payload, ct, bitwise) up to what is compared with them (cmp,
 * range, lookup) and the verdict (immediate, reject, nat, ...). A lookup reads the set's
 * elements (one more request, cached per set and match field). Every attribute is a span into
 * a message, checked against its length before it is read; fields are read through memcpy or
 * byte by byte, at any alignment. The kernel's include/uapi/linux/netfilter/nf_tables.h
 * numbers the attributes; values are big-endian except where a comment says otherwise. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include "core.h"
#include "core_nftables.h"
#include "msgpack.h"

enum {
    RX_BYTES = 131072,      /* one datagram of a dump (the kernel's are at most 32 KiB) */
    SUBSYS_NFTABLES = 10,   /* NFNL_SUBSYS_NFTABLES */
    MSG_NEWTABLE = 0,
    MSG_GETTABLE = 1,
    MSG_NEWCHAIN = 3,
    MSG_GETCHAIN = 4,
    MSG_NEWRULE = 6,
    MSG_GETRULE = 7,
    MSG_NEWSET = 9,
    MSG_GETSET = 10,
    MSG_NEWSETELEM = 12,
    MSG_GETSETELEM = 13,
    MSG_NEWGEN = 15,
    MSG_GETGEN = 16,
    DUMP_TRIES = 3,         /* a dump interrupted by a change is taken again, this often */
    NFGEN_BYTES = 4,        /* struct nfgenmsg: family, version, res_id */
    TYPE_MASK = 0x3fff,     /* NLA_TYPE_MASK: without NLA_F_NESTED, NLA_F_NET_BYTEORDER */
    MAX_ATTR = 16,          /* the highest attribute number read, of any nest */
    NREGS = 25,             /* NFT_REG_VERDICT, NFT_REG_1..4, NFT_REG32_00..15, and "none" */
    REG_NONE = 24,
    MAX_ERRORS = 256,       /* errors kept in a result; the rest are counted in one line */
    ERROR_BYTES = 1280,     /* one error, at most (names cut to 64 bytes, reasons to 255) */
    ERRORS_BYTES = (MAX_ERRORS + 1) * ERROR_BYTES, /* the errors, beyond max_output_bytes */
    MAX_PENDING = 16
};

/* The match fields of a rule, in the order of the events' keys (firewall.MATCH_KEYS), then
 * what a register may hold that is no match field of its own. */
enum fkey {
    K_PROTO, K_SADDR, K_DADDR, K_SPORT, K_DPORT, K_IIF, K_OIF, K_CT, N_MATCH,
    K_NFPROTO = N_MATCH, K_ETHERTYPE, K_IIFIDX, K_OIFIDX, K_PORTS, K_NONE, K_EXTRA
};
static const char *const MATCH_NAMES[N_MATCH] = {"proto", "saddr", "daddr", "sport",
                                                 "dport", "iif", "oif", "ct"};

enum fkind { F_META, F_PAYLOAD, F_CT, F_OTHER };

static const char *const META_KEYS[] = {
    "NFT_META_LEN", "NFT_META_PROTOCOL", "NFT_META_PRIORITY", "NFT_META_MARK",
    "NFT_META_IIF", "NFT_META_OIF", "NFT_META_IIFNAME", "NFT_META_OIFNAME",
    "NFT_META_IIFTYPE", "NFT_META_OIFTYPE", "NFT_META_SKUID", "NFT_META_SKGID",
    "NFT_META_NFTRACE", "NFT_META_RTCLASSID", "NFT_META_SECMARK", "NFT_META_NFPROTO",
    "NFT_META_L4PROTO", "NFT_META_BRI_IIFNAME", "NFT_META_BRI_OIFNAME", "NFT_META_PKTTYPE",
    "NFT_META_CPU", "NFT_META_IIFGROUP", "NFT_META_OIFGROUP", "NFT_META_CGROUP",
    "NFT_META_PRANDOM", "NFT_META_SECPATH", "NFT_META_IIFKIND", "NFT_META_OIFKIND",
    "NFT_META_BRI_IIFPVID", "NFT_META_BRI_IIFVPROTO", "NFT_META_TIME_NS", "NFT_META_TIME_DAY",
    "NFT_META_TIME_HOUR", "NFT_META_SDIF", "NFT_META_SDIFNAME"};
static const char *const CT_KEYS[] = {
    "NFT_CT_STATE", "NFT_CT_DIRECTION", "NFT_CT_STATUS", "NFT_CT_MARK", "NFT_CT_SECMARK",
    "NFT_CT_EXPIRATION", "NFT_CT_HELPER", "NFT_CT_L3PROTOCOL", "NFT_CT_SRC", "NFT_CT_DST",
    "NFT_CT_PROTOCOL", "NFT_CT_PROTO_SRC", "NFT_CT_PROTO_DST", "NFT_CT_LABELS", "NFT_CT_PKTS",
    "NFT_CT_BYTES", "NFT_CT_AVGPKT", "NFT_CT_ZONE", "NFT_CT_EVENTMASK", "NFT_CT_SRC_IP",
    "NFT_CT_DST_IP", "NFT_CT_SRC_IP6", "NFT_CT_DST_IP6", "NFT_CT_ID"};
static const char *const PAYLOAD_BASES[] = {"NFT_PAYLOAD_LL_HEADER", "NFT_PAYLOAD_NETWORK_HEADER",
                                            "NFT_PAYLOAD_TRANSPORT_HEADER"};
enum { META_PROTOCOL = 1, META_IIF = 4, META_OIF = 5, META_IIFNAME = 6, META_OIFNAME = 7,
       META_NFPROTO = 15, META_L4PROTO = 16, BASE_NETWORK = 1, BASE_TRANSPORT = 2 };
enum { CMP_EQ, CMP_NEQ, CMP_LT, CMP_LTE, CMP_GT, CMP_GTE };

#define NELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* Returns the status of x when it is not AM_OK. */
#define TRY(x) \
    do { \
        int st_ = (x); \
        if (st_ != AM_OK) \
            return st_; \
    } while (0)


/* ---- spans and attributes ---- */

typedef struct {
    const uint8_t *p;
    size_t n;
    int ok; /* the attribute was present */
} span;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* The last attribute of each type 1..MAX_ATTR in a run of struct nlattr. A length that does
 * not hold stops the walk (what came before is kept) and is counted. */
static void attrs(const span *in, span out[MAX_ATTR + 1], uint64_t *malformed)
{
    memset(out, 0, sizeof(span) * (MAX_ATTR + 1));
    size_t off = 0;
    while (in->ok && off + 4 <= in->n) {
        uint16_t len = rd16(in->p + off), type = rd16(in->p + off + 2) & TYPE_MASK;
        if (len < 4 || len > in->n - off) {
            (*malformed)++;
            return;
        }
        if (type <= MAX_ATTR)
            out[type] = (span){in->p + off + 4, (size_t)len - 4, 1};
        off += ((size_t)len + 3) & ~(size_t)3;
    }
}

/* The next element of a nested list (NFTA_LIST_ELEM; any type is taken as one), or 0. */
static int next_item(const span *list, size_t *off, span *item, uint64_t *malformed)
{
    if (!list->ok || *off + 4 > list->n)
        return 0;
    uint16_t len = rd16(list->p + *off);
    if (len < 4 || len > list->n - *off) {
        (*malformed)++;
        return 0;
    }
    *item = (span){list->p + *off + 4, (size_t)len - 4, 1};
    *off += ((size_t)len + 3) & ~(size_t)3;
    return 1;
}

/* A u32 attribute (enums, flags, numbers), present only when it has 4 bytes. */
static int u32_of(span s, uint32_t *v)
{
    if (!s.ok || s.n < 4)
        return 0;
    *v = be32(s.p);
    return 1;
}

/* A string attribute: the bytes before the first NUL. */
static span str_of(span s)
{
    if (!s.ok)
        return s;
    const uint8_t *nul = memchr(s.p, 0, s.n);
    return (span){s.p, nul ? (size_t)(nul - s.p) : s.n, 1};
}

static int span_is(span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.ok && s.n == n && memcmp(s.p, lit, n) == 0;
}

static int span_eq(span a, span b)
{
    return a.ok == b.ok && a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* NFTA_DATA_VALUE of a struct nft_data nest (absent: !ok). */
static span data_value(span nest, uint64_t *malformed)
{
    span a[MAX_ATTR + 1];
    attrs(&nest, a, malformed);
    return a[1];
}

/* A register attribute -> its slot: 0..4 (NFT_REG_VERDICT, NFT_REG_1..4), 8..23
 * (NFT_REG32_00..15); REG_NONE when absent or of no known number (firewall's None key). */
static int reg_of(span s)
{
    uint32_t v;
    if (!u32_of(s, &v))
        return REG_NONE;
    return v <= 4 || (v >= 8 && v <= 23) ? (int)v : REG_NONE;
}

/* ---- growable, bounded text ---- */

struct text {
    char *p;
    size_t n, cap, max;
};

/* Room for `extra` more bytes, so that pointers into the text stay valid while that much is
 * written. */
static int text_reserve(struct text *t, size_t extra)
{
    if (extra > t->max - t->n)
        return AM_ERR_LIMIT;
    if (t->n + extra > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->n + extra)
            cap *= 2;
        if (cap > t->max)
            cap = t->max;
        char *p = realloc(t->p, cap);
        if (p == NULL)
            return AM_ERR_NOMEM;
        t->p = p;
        t->cap = cap;
    }
    return AM_OK;
}

static int text_put(struct text *t, const void *d, size_t n)
{
    int st = text_reserve(t, n);
    if (st != AM_OK)
        return st;
    if (n)
        memcpy(t->p + t->n, d, n);
    t->n += n;
    return AM_OK;
}

static int text_str(struct text *t, const char *s)
{
    return text_put(t, s, strlen(s));
}

static int text_uint(struct text *t, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return text_put(t, b, (size_t)n);
}

static void text_free(struct text *t)
{
    free(t->p);
    t->p = NULL;
    t->n = t->cap = 0;
}

/* Bytes as UTF-8 text, each byte that starts no valid sequence replaced by U+FFFD. */
static int text_utf8(struct text *t, const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n) {
            uint8_t c = s[run];
            size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
            if (len == 0 || len > n - run || !utf8_valid(s + run, len))
                break;
            run += len;
        }
        int st = text_put(t, s + i, run - i);
        if (st != AM_OK)
            return st;
        if (run < n) {
            if ((st = text_put(t, "\xef\xbf\xbd", 3)) != AM_OK)
                return st;
            run++;
        }
        i = run;
    }
    return AM_OK;
}

/* ---- the handle ---- */

struct msgref {
    uint32_t off, len; /* attributes after the nfgenmsg, in store */
    uint8_t family;
    uint8_t type;      /* NFT_MSG_NEW* */
};

struct store {
    uint8_t *p;
    size_t n, cap;
    struct msgref *refs;
    size_t count, refcap;
};

struct setinfo {
    uint8_t family;
    span table, name;
    uint32_t flags;
};

struct chain {
    uint8_t family;
    span table, name;
    int hook_nest, has_hook, has_prio; /* NFTA_CHAIN_HOOK, its number, its priority */
    const char *hook_name; /* or NULL: hook_num as a number */
    uint32_t hook_num;
    int32_t prio;
    uint32_t pos; /* rules of this chain so far */
    int known;    /* from the chain dump (else seen only in rules) */
};

/* One value of a rule or of a set read: `len` bytes at `off` of its text. */
struct val {
    uint8_t key;
    uint32_t off, len;
};

struct vals {
    struct val *v;
    size_t n, cap;
};

/* A set read for one match field, kept for the rest of the snapshot. */
struct setread {
    uint8_t family, key, ipv, ok;
    span table, name;
    size_t first, count; /* in cache_vals */
};

struct field {
    uint8_t set, kind;
    int32_t key, base; /* -1: none */
    uint32_t offset, length;
    span mask;         /* !ok: no bitwise mask */
};

struct pending {
    uint8_t key;
    uint32_t text_off, text_len;
    uint32_t value_off, value_len;
};

struct rule {
    int ipv; /* 0: none */
    struct field regs[NREGS];
    struct vals vals;   /* match values (key < N_MATCH) and extras (K_EXTRA), in order */
    struct text text;
    struct pending pending[MAX_PENDING];
    int npending;
    int has_verdict;
    uint32_t verdict_off, verdict_len;
    const char *error; /* why the rule is left out */
};

struct am_nft {
    struct am_nft_options opt;
    struct am_nft_stats st;
    int err;
    uint32_t seq;
    int fd;
    uint8_t *rx;
    struct store dump;       /* the snapshot's messages */
    struct store elems;      /* one set read's answer (live) */
    int live;
    struct setinfo *sets;
    size_t nsets;
    struct chain *chains;
    size_t nchains, chaincap;
    struct setread *reads;
    size_t nreads, readcap;
    struct vals cache_vals;
    struct text cache_text;
    struct rule rule;
    mp_buf out;              /* the result being encoded, then the result */
    size_t events_at;        /* where the events array header is */
    uint32_t nevents;
    uint32_t nundecodable;   /* the rules this result leaves out (each with its error) */
    mp_buf errs;             /* the errors, encoded */
    uint32_t nerrs, lost_errs;
    int volatile_;
    int has_result;
};

void am_nft_default_options(struct am_nft_options *out)
{
    if (out == NULL)
        return;
    out->max_dump_bytes = 8u << 20;
    out->max_output_bytes = 8u << 20;
    out->max_rule_bytes = 1u << 20;
    out->max_set_elements = 65536;
    out->timeout_ms = 10000;
}

am_nft *am_nft_new(const struct am_nft_options *opts)
{
    struct am_nft_options o;
    am_nft_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (o.max_dump_bytes < 4096 || o.max_dump_bytes > (1u << 30) || o.max_output_bytes < 64 ||
        o.max_output_bytes > (1u << 30) || o.max_rule_bytes < 256 ||
        o.max_rule_bytes > (1u << 30) || o.max_set_elements < 1 ||
        o.max_set_elements > (1u << 24) || o.timeout_ms < 1 || o.timeout_ms > 600000)
        return NULL;
    am_nft *n = calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    n->opt = o;
    n->fd = -1;
    return n;
}

static void store_free(struct store *s)
{
    free(s->p);
    free(s->refs);
    memset(s, 0, sizeof *s);
}

/* Everything a snapshot grows, but its result. */
static void release_work(am_nft *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
    free(n->rx);
    n->rx = NULL;
    store_free(&n->dump);
    store_free(&n->elems);
    free(n->sets);
    n->sets = NULL;
    n->nsets = 0;
    free(n->chains);
    n->chains = NULL;
    n->nchains = n->chaincap = 0;
    free(n->reads);
    n->reads = NULL;
    n->nreads = n->readcap = 0;
    free(n->cache_vals.v);
    memset(&n->cache_vals, 0, sizeof n->cache_vals);
    text_free(&n->cache_text);
    free(n->rule.vals.v);
    memset(&n->rule.vals, 0, sizeof n->rule.vals);
    text_free(&n->rule.text);
    mp_release(&n->errs);
}

void am_nft_free(am_nft *n)
{
    if (n == NULL)
        return;
    release_work(n);
    mp_release(&n->out);
    free(n);
}

int am_nft_errno(const am_nft *n)
{
    return n == NULL ? 0 : n->err;
}

void am_nft_stats(const am_nft *n, struct am_nft_stats *out)
{
    if (n == NULL || out == NULL)
        return;
    *out = n->st;
    out->memory = sizeof *n + n->out.cap + n->dump.cap + n->dump.refcap * sizeof(struct msgref) +
                  n->elems.cap + n->elems.refcap * sizeof(struct msgref) + n->errs.cap +
                  (n->rx ? RX_BYTES : 0);
}

int am_nft_result(const am_nft *n, const uint8_t **data, size_t *len)
{
    if (n == NULL || data == NULL || len == NULL)
        return AM_ERR_ARG;
    if (!n->has_result)
        return AM_EMPTY;
    *data = n->out.data;
    *len = n->out.len;
    return AM_OK;
}

/* ---- the message store ---- */

static int store_add(am_nft *n, struct store *s, uint8_t type, uint8_t family,
                     const uint8_t *d, size_t len)
{
    size_t total = n->dump.n + n->elems.n;
    if (len > n->opt.max_dump_bytes - (total < n->opt.max_dump_bytes ? total : n->opt.max_dump_bytes) ||
        total >= n->opt.max_dump_bytes) {
        n->st.overflow++;
        return AM_ERR_LIMIT;
    }
    if (s->n + len > s->cap) {
        size_t cap = s->cap ? s->cap : 16384;
        while (cap < s->n + len)
            cap *= 2;
        uint8_t *p = realloc(s->p, cap);
        if (p == NULL)
            return AM_ERR_NOMEM;
        s->p = p;
        s->cap = cap;
    }
    if (s->count == s->refcap) {
        size_t cap = s->refcap ? s->refcap * 2 : 64;
        struct msgref *r = realloc(s->refs, cap * sizeof *r);
        if (r == NULL)
            return AM_ERR_NOMEM;
        s->refs = r;
        s->refcap = cap;
    }
    if (len)
        memcpy(s->p + s->n, d, len);
    s->refs[s->count++] = (struct msgref){(uint32_t)s->n, (uint32_t)len, family, type};
    s->n += len;
    n->st.messages++;
    return AM_OK;
}

static span msg_span(const struct store *s, const struct msgref *r)
{
    return (span){s->p + r->off, r->len, 1};
}

/* One netlink message of nf_tables (the nlmsghdr is checked by the caller) into the store. */
static int keep_message(am_nft *n, struct store *s, const struct nlmsghdr *h, const uint8_t *body,
                        size_t len)
{
    if (h->nlmsg_type >> 8 != SUBSYS_NFTABLES)
        return AM_OK;
    if (len < NFGEN_BYTES) {
        n->st.malformed++;
        return AM_OK;
    }
    return store_add(n, s, (uint8_t)(h->nlmsg_type & 0xff), body[0], body + NFGEN_BYTES,
                     len - NFGEN_BYTES);
}

/* ---- the socket ---- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int open_socket(am_nft *n)
{
    if (n->fd >= 0)
        return AM_OK;
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER);
    if (fd < 0) {
        n->err = errno;
        return AM_NFT_ERR_SYS;
    }
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    int rcvbuf = 1 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0) {
        n->err = errno;
        close(fd);
        return AM_NFT_ERR_SYS;
    }
    n->fd = fd;
    return AM_OK;
}

static int send_request(am_nft *n, uint16_t type, uint16_t flags, uint8_t family,
                        const uint8_t *attrs_data, size_t attrs_len)
{
    uint8_t req[1024];
    size_t len = NLMSG_HDRLEN + NFGEN_BYTES + attrs_len;
    if (len > sizeof req)
        return AM_ERR_ARG;
    struct nlmsghdr h = {.nlmsg_len = (uint32_t)len,
                         .nlmsg_type = (uint16_t)(SUBSYS_NFTABLES << 8 | type),
                         .nlmsg_flags = flags,
                         .nlmsg_seq = ++n->seq};
    memset(req, 0, len);
    memcpy(req, &h, sizeof h);
    req[NLMSG_HDRLEN] = family;
    if (attrs_len)
        memcpy(req + NLMSG_HDRLEN + NFGEN_BYTES, attrs_data, attrs_len);
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(n->fd, req, len, 0, (struct sockaddr *)&kernel, sizeof kernel) != (ssize_t)len) {
        n->err = errno;
        n->st.dump_errors++;
        return AM_NFT_ERR_SYS;
    }
    return AM_OK;
}

/* One datagram of the answer to request `seq`, or AM_NFT_ERR_SYS (timeout: ETIMEDOUT). */
static ssize_t receive(am_nft *n, uint64_t deadline)
{
    for (;;) {
        ssize_t got = recv(n->fd, n->rx, RX_BYTES, MSG_TRUNC);
        if (got > RX_BYTES) {
            n->st.malformed++;
            n->err = EMSGSIZE;
            return AM_NFT_ERR_SYS;
        }
        if (got >= 0)
            return got;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            n->err = errno;
            return AM_NFT_ERR_SYS;
        }
        uint64_t now = mono_ms();
        if (now >= deadline) {
            n->err = ETIMEDOUT;
            return AM_NFT_ERR_SYS;
        }
        struct pollfd pfd = {.fd = n->fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)(deadline - now)) < 0 && errno != EINTR) {
            n->err = errno;
            return AM_NFT_ERR_SYS;
        }
    }
}

/* One dump into s, taken again (up to DUMP_TRIES) while the kernel says a change interrupted
 * it. AM_OK, AM_NFT_ERR_SYS (n->err; EAGAIN: it kept changing), AM_ERR_LIMIT, AM_ERR_NOMEM. */
static int dump(am_nft *n, struct store *s, uint8_t type, uint8_t family, const uint8_t *a,
                size_t alen)
{
    int st = open_socket(n);
    if (st != AM_OK)
        return st;
    if (n->rx == NULL && (n->rx = malloc(RX_BYTES)) == NULL)
        return AM_ERR_NOMEM;
    for (int attempt = 0; attempt < DUMP_TRIES; attempt++) {
        size_t bytes = s->n, count = s->count;
        if ((st = send_request(n, type, NLM_F_REQUEST | NLM_F_DUMP, family, a, alen)) != AM_OK)
            return st;
        uint32_t seq = n->seq;
        uint64_t deadline = mono_ms() + n->opt.timeout_ms;
        int interrupted = 0, done = 0;
        while (!done) {
            ssize_t got = receive(n, deadline);
            if (got < 0) {
                n->st.dump_errors++;
                return (int)got;
            }
            size_t off = 0, len = (size_t)got;
            while (!done && off + NLMSG_HDRLEN <= len) {
                struct nlmsghdr h;
                memcpy(&h, n->rx + off, sizeof h);
                if (h.nlmsg_len < NLMSG_HDRLEN || h.nlmsg_len > len - off) {
                    n->st.malformed++;
                    n->err = EPROTO;
                    return AM_NFT_ERR_SYS;
                }
                const uint8_t *body = n->rx + off + NLMSG_HDRLEN;
                size_t blen = h.nlmsg_len - NLMSG_HDRLEN;
                off += NLMSG_ALIGN(h.nlmsg_len);
                if (h.nlmsg_seq != seq)
                    continue; /* the tail of an earlier request */
                if (h.nlmsg_flags & NLM_F_DUMP_INTR)
                    interrupted = 1;
                if (h.nlmsg_type == NLMSG_DONE) {
                    done = 1;
                } else if (h.nlmsg_type == NLMSG_ERROR) {
                    int32_t code = 0;
                    if (blen >= 4)
                        memcpy(&code, body, 4);
                    if (code != 0) {
                        n->st.dump_errors++;
                        n->err = code < 0 && code > -4096 ? -code : EPROTO;
                        return AM_NFT_ERR_SYS;
                    }
                } else if ((st = keep_message(n, s, &h, body, blen)) != AM_OK) {
                    return st;
                }
            }
        }
        if (!interrupted)
            return AM_OK;
        n->st.interrupted++;
        n->st.messages -= s->count - count;
        s->n = bytes;
        s->count = count;
    }
    n->err = EAGAIN;
    return AM_NFT_ERR_SYS;
}

int am_nft_generation(am_nft *n, uint32_t *generation)
{
    if (n == NULL || generation == NULL)
        return AM_ERR_ARG;
    int st = open_socket(n);
    if (st == AM_OK && n->rx == NULL && (n->rx = malloc(RX_BYTES)) == NULL)
        st = AM_ERR_NOMEM;
    if (st == AM_OK)
        st = send_request(n, MSG_GETGEN, NLM_F_REQUEST, 0, NULL, 0);
    uint32_t seq = n->seq;
    uint64_t deadline = mono_ms() + n->opt.timeout_ms;
    while (st == AM_OK) {
        ssize_t got = receive(n, deadline);
        if (got < 0) {
            st = (int)got;
            break;
        }
        struct nlmsghdr h;
        if ((size_t)got < NLMSG_HDRLEN) {
            st = AM_ERR_LIMIT;
            break;
        }
        memcpy(&h, n->rx, sizeof h);
        if (h.nlmsg_seq != seq)
            continue;
        if (h.nlmsg_type == NLMSG_ERROR && h.nlmsg_len >= NLMSG_HDRLEN + 4 &&
            (size_t)got >= NLMSG_HDRLEN + 4) {
            int32_t code;
            memcpy(&code, n->rx + NLMSG_HDRLEN, 4);
            n->err = code < 0 && code > -4096 ? -code : EPROTO;
            st = AM_NFT_ERR_SYS;
            break;
        }
        st = AM_ERR_LIMIT;
        if (h.nlmsg_type != (SUBSYS_NFTABLES << 8 | MSG_NEWGEN) ||
            h.nlmsg_len < NLMSG_HDRLEN + NFGEN_BYTES || h.nlmsg_len > (size_t)got)
            break;
        span body = {n->rx + NLMSG_HDRLEN + NFGEN_BYTES, h.nlmsg_len - NLMSG_HDRLEN - NFGEN_BYTES, 1};
        span a[MAX_ATTR + 1];
        uint64_t bad = 0;
        attrs(&body, a, &bad);
        if (!bad && a[1].ok && a[1].n == 4) {
            *generation = be32(a[1].p);
            n->st.generations++;
            st = AM_OK;
        }
        break;
    }
    if (st == AM_ERR_LIMIT)
        n->st.malformed++;
    release_work(n);
    return st;
}

/* ---- the result ---- */

/* Grows a result buffer (double, up to limit). */
static int grow(am_nft *n, mp_buf *b, size_t limit)
{
    size_t cap = b->cap < 4096 ? 4096 : b->cap * 2;
    if (cap > limit)
        cap = limit;
    if (cap <= b->cap) {
        n->st.overflow++;
        return AM_ERR_LIMIT;
    }
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return AM_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return AM_OK;
}

/* One error of the result: [what, errno, reason]. */
static int put_error(am_nft *n, const struct text *what, int err, const char *reason,
                     const char *reason2)
{
    for (;;) {
        size_t at = n->errs.len;
        int st = mp_array(&n->errs, 3);
        if (st == AM_OK)
            st = mp_str(&n->errs, what->p ? what->p : "", what->n);
        if (st == AM_OK)
            st = mp_int(&n->errs, err);
        if (st == AM_OK) {
            char why[256];
            int len = snprintf(why, sizeof why, "%s%s", reason ? reason : "",
                               reason2 ? reason2 : "");
            st = mp_str(&n->errs, why, len < 0 ? 0 : (size_t)len < sizeof why ? (size_t)len
                                                                               : sizeof why - 1);
        }
        if (st == AM_OK) {
            n->nerrs++;
            return AM_OK;
        }
        n->errs.len = at;
        if (st == AM_ERR_FULL)
            st = grow(n, &n->errs, ERRORS_BYTES);
        if (st == AM_ERR_LIMIT) {
            n->lost_errs++; /* cannot happen with the cuts above; counted if it did */
            return AM_OK;
        }
        if (st != AM_OK)
            return st;
    }
}

/* An error, or only counted once MAX_ERRORS are kept. */
static int add_error(am_nft *n, const struct text *what, int err, const char *reason,
                     const char *reason2)
{
    if (n->nerrs >= MAX_ERRORS) {
        n->lost_errs++;
        return AM_OK;
    }
    return put_error(n, what, err, reason, reason2);
}

/* "what a/b c" as the error's subject (names cut to 64 bytes each). */
static int error_subject(struct text *t, const char *what, span a, const char *sep, span b,
                         const char *sep2, span c)
{
    t->max = ERROR_BYTES - 300;
    TRY(text_str(t, what));
    span parts[3] = {a, b, c};
    const char *seps[3] = {"", sep, sep2};
    for (int i = 0; i < 3; i++) {
        if (seps[i] == NULL)
            break;
        TRY(text_str(t, seps[i]));
        if (parts[i].ok)
            TRY(text_utf8(t, parts[i].p, parts[i].n < 64 ? parts[i].n : 64));
        else
            TRY(text_str(t, "None"));
    }
    return AM_OK;
}

/* An event encoded by enc into the result: encoded again after the buffer grew. */
typedef int (*encoder)(am_nft *n, mp_buf *b, const void *arg);

static int put_event(am_nft *n, encoder enc, const void *arg)
{
    for (;;) {
        size_t at = n->out.len;
        int st = enc(n, &n->out, arg);
        if (st == AM_OK) {
            n->nevents++;
            n->st.events++;
            return AM_OK;
        }
        n->out.len = at;
        if (st != AM_ERR_FULL || (st = grow(n, &n->out, n->opt.max_output_bytes)) != AM_OK)
            return st;
    }
}

static int kv_str(mp_buf *b, const char *k, const char *v)
{
    TRY(mp_cstr(b, k));
    return mp_cstr(b, v);
}

/* A string attribute as a msgpack str (UTF-8, bad bytes replaced), or nil when absent. */
static int put_name(am_nft *n, mp_buf *b, span s)
{
    if (!s.ok)
        return mp_nil(b);
    if (utf8_valid(s.p, s.n))
        return mp_str(b, (const char *)s.p, s.n);
    struct text t = {0};
    t.max = n->opt.max_rule_bytes;
    int st = text_utf8(&t, s.p, s.n);
    if (st == AM_OK)
        st = mp_str(b, t.p ? t.p : "", t.n);
    text_free(&t);
    return st;
}

static const char *family_name(uint8_t family, char buf[4])
{
    switch (family) {
    case 1: return "inet";
    case 2: return "ip";
    case 3: return "arp";
    case 5: return "netdev";
    case 7: return "bridge";
    case 10: return "ip6";
    default: snprintf(buf, 4, "%u", family); return buf;
    }
}

static const char *hook_name(uint8_t family, uint32_t num)
{
    static const char *const ip[] = {"prerouting", "input", "forward", "output", "postrouting",
                                     "ingress"};
    if (family == 1 || family == 2 || family == 10 || family == 7)
        return num < NELEMS(ip) ? ip[num] : NULL;
    if (family == 3)
        return num == 0 ? "input" : num == 1 ? "output" : NULL;
    if (family == 5)
        return num == 0 ? "ingress" : num == 1 ? "egress" : NULL;
    return NULL;
}

static int put_head(am_nft *n, mp_buf *b, const char *t, uint64_t ts, uint8_t family, span table,
                    span chain)
{
    char fb[4];
    TRY(kv_str(b, "t", t));
    TRY(mp_cstr(b, "ts"));
    TRY(mp_uint(b, ts));
    TRY(kv_str(b, "src", "nft"));
    TRY(kv_str(b, "nfam", family_name(family, fb)));
    TRY(mp_cstr(b, "table"));
    TRY(put_name(n, b, table));
    TRY(mp_cstr(b, "chain"));
    return put_name(n, b, chain);
}

static int put_hook(mp_buf *b, const struct chain *c)
{
    TRY(mp_cstr(b, "hook"));
    if (c->hook_name)
        return mp_cstr(b, c->hook_name);
    char num[12];
    int len = snprintf(num, sizeof num, "%u", c->hook_num);
    return mp_str(b, num, (size_t)len);
}

struct chain_event {
    const struct chain *c;
    uint64_t ts;
    span ctype;
    int has_policy;
    uint32_t policy;
};

static int encode_chain(am_nft *n, mp_buf *b, const void *arg)
{
    const struct chain_event *e = arg;
    const struct chain *c = e->c;
    int ctype = c->hook_nest && e->ctype.ok && e->ctype.n > 0;
    int policy = c->hook_nest && e->has_policy;
    uint32_t keys = 6 + (uint32_t)c->has_hook + (uint32_t)c->has_prio +
                    (uint32_t)ctype + 2u * (uint32_t)policy;
    TRY(mp_map(b, keys));
    TRY(put_head(n, b, "fwchain", e->ts, c->family, c->table, c->name));
    if (c->has_hook)
        TRY(put_hook(b, c));
    if (c->has_prio) {
        TRY(mp_cstr(b, "prio"));
        TRY(mp_int(b, c->prio));
    }
    if (ctype) {
        TRY(mp_cstr(b, "ctype"));
        TRY(put_name(n, b, e->ctype));
    }
    if (policy) {
        TRY(kv_str(b, "policy", e->policy == 1 ? "accept" : "drop"));
        TRY(kv_str(b, "action", e->policy == 1 ? "allow" : "deny"));
    }
    return AM_OK;
}

/* ---- chains ---- */

static struct chain *find_chain(am_nft *n, uint8_t family, span table, span name, size_t *hint)
{
    if (*hint < n->nchains) {
        struct chain *c = &n->chains[*hint];
        if (c->family == family && span_eq(c->table, table) && span_eq(c->name, name))
            return c;
    }
    for (size_t i = n->nchains; i-- > 0;) {
        struct chain *c = &n->chains[i];
        if (c->family == family && span_eq(c->table, table) && span_eq(c->name, name)) {
            *hint = i;
            return c;
        }
    }
    return NULL;
}

static struct chain *add_chain(am_nft *n)
{
    if (n->nchains == n->chaincap) {
        size_t cap = n->chaincap ? n->chaincap * 2 : 16;
        struct chain *c = realloc(n->chains, cap * sizeof *c);
        if (c == NULL)
            return NULL;
        n->chains = c;
        n->chaincap = cap;
    }
    struct chain *c = &n->chains[n->nchains++];
    memset(c, 0, sizeof *c);
    return c;
}

static int decode_chain(am_nft *n, const struct msgref *r, uint64_t ts)
{
    span body = msg_span(&n->dump, r), a[MAX_ATTR + 1], h[MAX_ATTR + 1];
    attrs(&body, a, &n->st.malformed);
    struct chain_event e = {0};
    size_t hint = 0;
    span table = str_of(a[1]), name = str_of(a[3]);
    /* A chain met again replaces what was known of it (the last one counts, as for rules). */
    struct chain *c = find_chain(n, r->family, table, name, &hint);
    if (c == NULL && (c = add_chain(n)) == NULL)
        return AM_ERR_NOMEM;
    uint32_t pos = c->pos;
    memset(c, 0, sizeof *c);
    c->pos = pos;
    c->family = r->family;
    c->table = table;
    c->name = name;
    c->known = 1;
    if (a[4].ok) {
        attrs(&a[4], h, &n->st.malformed);
        uint32_t num, prio;
        c->hook_nest = 1;
        if (u32_of(h[1], &num)) {
            c->has_hook = 1;
            c->hook_num = num;
            c->hook_name = hook_name(r->family, num);
        }
        if (u32_of(h[2], &prio)) {
            c->has_prio = 1;
            memcpy(&c->prio, &prio, 4);
        }
        e.ctype = str_of(a[7]);
        e.has_policy = u32_of(a[5], &e.policy);
    }
    n->st.chains++;
    e.c = c;
    e.ts = ts;
    return put_event(n, encode_chain, &e);
}

/* ---- values as text (as firewall's events show them) ---- */

enum { UNDECODABLE = 1000 }; /* a rule left out: rule.error says why */

static int put_hex(struct text *t, const uint8_t *v, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        char pair[2] = {digits[v[i] >> 4], digits[v[i] & 15]};
        TRY(text_put(t, pair, 2));
    }
    return AM_OK;
}

/* An IPv4 or IPv6 address (4 or 16 bytes) as Python's ipaddress writes it: IPv6 in hex
 * groups without leading zeros, the first longest run of two or more zero groups as "::". */
static int put_ip(struct text *t, const uint8_t *a, size_t size)
{
    char b[48];
    int len;
    if (size == 4) {
        len = snprintf(b, sizeof b, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
        return text_put(t, b, (size_t)len);
    }
    unsigned g[8];
    for (int i = 0; i < 8; i++)
        g[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    int best = -1, best_len = 0, cur = -1, cur_len = 0;
    for (int i = 0; i < 8; i++) {
        if (g[i] == 0) {
            if (cur < 0)
                cur = i;
            if (++cur_len > best_len) {
                best = cur;
                best_len = cur_len;
            }
        } else {
            cur = -1;
            cur_len = 0;
        }
    }
    if (best_len < 2)
        best = -1;
    /* the groups joined by ':', the run as one empty group (and one more at either end) */
    len = 0;
    int first = 1;
    for (int i = 0; i < 8; i++) {
        const char *sep = first ? "" : ":";
        first = 0;
        if (i == best) {
            len += snprintf(b + len, sizeof b - (size_t)len, "%s%s%s", i == 0 ? ":" : sep,
                            "", i + best_len == 8 ? ":" : "");
            i += best_len - 1;
            continue;
        }
        len += snprintf(b + len, sizeof b - (size_t)len, "%s%x", sep, g[i]);
    }
    return text_put(t, b, (size_t)len);
}

/* The address padded with zeros (or cut) to `size`. */
static void padded(const uint8_t *v, size_t n, size_t size, uint8_t out[16])
{
    memset(out, 0, 16);
    memcpy(out, v, n < size ? n : size);
}

static int put_address(struct text *t, const uint8_t *v, size_t n, int ipv, span mask)
{
    size_t size = ipv == 6 ? 16 : 4;
    size_t prefix = n * 8;
    if (mask.ok) {
        /* A mask of leading ones and then zeros only (over the value's length) is a prefix. */
        size_t m = mask.n < n ? mask.n : n, ones = 0, i = 0;
        while (i < m * 8 && (mask.p[i / 8] >> (7 - i % 8) & 1)) {
            ones++;
            i++;
        }
        for (; i < m * 8; i++)
            if (mask.p[i / 8] >> (7 - i % 8) & 1)
                break;
        if (i == m * 8)
            prefix = ones;
    }
    uint8_t a[16];
    padded(v, n, size, a);
    TRY(put_ip(t, a, size));
    if (prefix >= size * 8)
        return AM_OK;
    TRY(text_put(t, "/", 1));
    return text_uint(t, prefix);
}

static const char *ip_protocol(unsigned p)
{
    switch (p) {
    case 1: return "icmp";
    case 2: return "igmp";
    case 6: return "tcp";
    case 17: return "udp";
    case 47: return "gre";
    case 50: return "esp";
    case 51: return "ah";
    case 58: return "icmpv6";
    case 132: return "sctp";
    case 136: return "udplite";
    default: return NULL;
    }
}

static uint64_t le_upto(const uint8_t *v, size_t n, size_t max)
{
    uint64_t x = 0;
    for (size_t i = n < max ? n : max; i-- > 0;)
        x = x << 8 | v[i];
    return x;
}

static uint64_t be_upto(const uint8_t *v, size_t n, size_t max)
{
    uint64_t x = 0;
    for (size_t i = 0; i < n && i < max; i++)
        x = x << 8 | v[i];
    return x;
}

static int put_value(struct text *t, int key, const uint8_t *v, size_t n, const struct field *f,
                     int ipv)
{
    switch (key) {
    case K_PROTO: {
        unsigned p = n ? v[0] : 0;
        const char *name = ip_protocol(p);
        return name ? text_str(t, name) : text_uint(t, p);
    }
    case K_SADDR:
    case K_DADDR:
        return put_address(t, v, n, ipv ? ipv : 4, f->mask);
    case K_SPORT:
    case K_DPORT:
        return text_uint(t, be_upto(v, n, 2));
    case K_IIF:
    case K_OIF: {
        const uint8_t *nul = memchr(v, 0, n);
        return text_utf8(t, v, nul ? (size_t)(nul - v) : n);
    }
    case K_IIFIDX:
    case K_OIFIDX:
        return text_uint(t, le_upto(v, n, 4));
    default:
        return put_hex(t, v, n);
    }
}

/* low-high; an address range that is one prefix as that prefix (always with its length). */
static int put_range(struct rule *r, struct text *t, int key, const uint8_t *lo, size_t lon,
                     const uint8_t *hi, size_t hin, const struct field *f, int ipv)
{
    if (key == K_SADDR || key == K_DADDR) {
        size_t size = (ipv ? ipv : 4) == 4 ? 4 : 16;
        uint8_t a[16], b[16];
        padded(lo, lon, size, a);
        padded(hi, hin, size, b);
        if (memcmp(a, b, size) > 0) {
            r->error = "last IP address must be greater than first";
            return UNDECODABLE;
        }
        size_t p = 0;
        while (p < size * 8 && (a[p / 8] >> (7 - p % 8) & 1) == (b[p / 8] >> (7 - p % 8) & 1))
            p++;
        int cidr = 1;
        for (size_t i = p; i < size * 8 && cidr; i++)
            cidr = !(a[i / 8] >> (7 - i % 8) & 1) && (b[i / 8] >> (7 - i % 8) & 1);
        TRY(put_ip(t, a, size));
        if (cidr) {
            TRY(text_put(t, "/", 1));
            return text_uint(t, p);
        }
        TRY(text_put(t, "-", 1));
        return put_ip(t, b, size);
    }
    TRY(put_value(t, key, lo, lon, f, ipv));
    TRY(text_put(t, "-", 1));
    return put_value(t, key, hi, hin, f, ipv);
}

/* ---- a rule's values ---- */

static int vals_push(struct vals *vs, uint8_t key, uint32_t off, uint32_t len)
{
    if (vs->n == vs->cap) {
        size_t cap = vs->cap ? vs->cap * 2 : 32;
        struct val *v = realloc(vs->v, cap * sizeof *v);
        if (v == NULL)
            return AM_ERR_NOMEM;
        vs->v = v;
        vs->cap = cap;
    }
    vs->v[vs->n++] = (struct val){key, off, len};
    return AM_OK;
}

/* The text written since `start` becomes a value of `key`. */
static int rule_add(struct rule *r, int key, size_t start)
{
    return vals_push(&r->vals, (uint8_t)key, (uint32_t)start, (uint32_t)(r->text.n - start));
}

static int rule_extra(struct rule *r, const char *a, span b)
{
    size_t start = r->text.n;
    TRY(text_str(&r->text, a));
    if (b.ok)
        TRY(text_utf8(&r->text, b.p, b.n));
    return rule_add(r, K_EXTRA, start);
}

static int set_verdict(struct rule *r, const char *a, span b)
{
    size_t start = r->text.n;
    TRY(text_str(&r->text, a));
    if (b.ok)
        TRY(text_utf8(&r->text, b.p, b.n));
    r->has_verdict = 1;
    r->verdict_off = (uint32_t)start;
    r->verdict_len = (uint32_t)(r->text.n - start);
    return AM_OK;
}

/* The match key a register's content stands for (firewall._field_name), or K_NONE. */
static int field_key(const struct field *f, int ipv)
{
    if (f->kind == F_META) {
        switch (f->key) {
        case META_L4PROTO: return K_PROTO;
        case META_NFPROTO: return K_NFPROTO;
        case META_PROTOCOL: return K_ETHERTYPE;
        case META_IIFNAME: return K_IIF;
        case META_OIFNAME: return K_OIF;
        case META_IIF: return K_IIFIDX;
        case META_OIF: return K_OIFIDX;
        default: return K_NONE;
        }
    }
    if (f->kind == F_CT)
        return f->key == 0 ? K_CT : K_NONE;
    if (f->kind == F_PAYLOAD && f->base == BASE_NETWORK) {
        if (ipv == 4) {
            if (f->offset == 9 && f->length == 1)
                return K_PROTO;
            if (f->offset == 12 && f->length <= 4)
                return K_SADDR;
            if (f->offset == 16 && f->length <= 4)
                return K_DADDR;
        } else if (ipv == 6) {
            if (f->offset == 6 && f->length == 1)
                return K_PROTO;
            if (f->offset == 8 && f->length <= 16)
                return K_SADDR;
            if (f->offset == 24 && f->length <= 16)
                return K_DADDR;
        }
    }
    if (f->kind == F_PAYLOAD && f->base == BASE_TRANSPORT) {
        if (f->length == 2 && f->offset == 0)
            return K_SPORT;
        if (f->length == 2 && f->offset == 2)
            return K_DPORT;
        /* nft loads both ports at once for `udp sport A udp dport B` */
        if (f->offset == 0 && f->length == 4 && !f->mask.ok)
            return K_PORTS;
    }
    return K_NONE;
}

/* "meta NFT_META_MARK", "payload NFT_PAYLOAD_LL_HEADER", "ct None", "other": what a compared
 * register held when it is no match field. */
static int field_extra(struct rule *r, const struct field *f)
{
    static const char *const kinds[] = {"meta", "payload", "ct", "other"};
    const char *name = NULL;
    if (f->kind == F_META)
        name = f->key >= 0 && (size_t)f->key < NELEMS(META_KEYS) ? META_KEYS[f->key] : "None";
    else if (f->kind == F_CT)
        name = f->key >= 0 && (size_t)f->key < NELEMS(CT_KEYS) ? CT_KEYS[f->key] : "None";
    else if (f->kind == F_PAYLOAD)
        name = f->base >= 0 && (size_t)f->base < NELEMS(PAYLOAD_BASES) ? PAYLOAD_BASES[f->base]
                                                                       : "None";
    size_t start = r->text.n;
    TRY(text_str(&r->text, kinds[f->kind]));
    if (name) {
        TRY(text_put(&r->text, " ", 1));
        TRY(text_str(&r->text, name));
    }
    return rule_add(r, K_EXTRA, start);
}

static int add_ct_states(struct rule *r, const uint8_t *v, size_t n, const char *prefix)
{
    static const struct { unsigned bit; const char *name; } states[] = {
        {1, "invalid"}, {2, "established"}, {4, "related"}, {8, "new"}, {64, "untracked"}};
    uint64_t bits = le_upto(v, n, 4);
    for (size_t i = 0; i < NELEMS(states); i++) {
        if (!(bits & states[i].bit))
            continue;
        size_t start = r->text.n;
        TRY(text_str(&r->text, prefix));
        TRY(text_str(&r->text, states[i].name));
        TRY(rule_add(r, K_CT, start));
    }
    return AM_OK;
}

/* value + 1 (GT) or - 1 (LT) as a big-endian number of the same length, into the text (as
 * scratch bytes); UNDECODABLE when it does not fit. */
static int step_value(struct rule *r, const uint8_t *v, size_t n, int up, size_t *off)
{
    *off = r->text.n;
    TRY(text_put(&r->text, v, n));
    uint8_t *p = (uint8_t *)r->text.p + *off;
    size_t i = n;
    while (i-- > 0) {
        if (up ? p[i]++ != 0xff : p[i]-- != 0)
            return AM_OK;
    }
    r->error = up ? "int too big to convert" : "can't convert negative int to unsigned";
    return UNDECODABLE;
}

static struct pending *find_pending(struct rule *r, int key)
{
    for (int i = 0; i < r->npending; i++)
        if (r->pending[i].key == key)
            return &r->pending[i];
    return NULL;
}

static int decode_cmp(struct rule *r, const struct field *f, int op, span value)
{
    const uint8_t *v = value.ok ? value.p : (const uint8_t *)"";
    size_t n = value.ok ? value.n : 0;
    if (f == NULL)
        return rule_extra(r, "cmp", (span){0});
    int key = field_key(f, r->ipv);
    if (key == K_NFPROTO || key == K_ETHERTYPE) {
        if (op == CMP_EQ) {
            /* the whole value as one number: any byte beyond 8 makes it no family */
            int big = 0;
            for (size_t i = 8; i < n; i++)
                big |= key == K_NFPROTO ? v[i] : v[n - 1 - i];
            uint64_t x = key == K_NFPROTO ? le_upto(v, n, 8) : be_upto(v + (n > 8 ? n - 8 : 0), n > 8 ? 8 : n, 8);
            if (!big && key == K_NFPROTO && (x == 2 || x == 10))
                r->ipv = x == 2 ? 4 : 6;
            if (!big && key == K_ETHERTYPE && (x == 0x0800 || x == 0x86dd))
                r->ipv = x == 0x0800 ? 4 : 6;
        }
        return AM_OK;
    }
    if (key == K_CT) {
        int zero = 1;
        for (size_t i = 0; i < n; i++)
            zero &= v[i] == 0;
        if (f->mask.ok && op == CMP_NEQ && zero)
            return add_ct_states(r, f->mask.p, f->mask.n, "");
        return add_ct_states(r, v, n, op == CMP_NEQ ? "!" : "");
    }
    if (key == K_PORTS && op == CMP_EQ && n == 4) {
        size_t start = r->text.n;
        TRY(text_uint(&r->text, be_upto(v, 2, 2)));
        TRY(rule_add(r, K_SPORT, start));
        start = r->text.n;
        TRY(text_uint(&r->text, be_upto(v + 2, 2, 2)));
        return rule_add(r, K_DPORT, start);
    }
    if (key == K_NONE || key == K_PORTS)
        return field_extra(r, f);
    size_t start = r->text.n;
    if (key == K_IIFIDX || key == K_OIFIDX) {
        TRY(text_put(&r->text, "#", 1));
        TRY(put_value(&r->text, key, v, n, f, r->ipv));
        return rule_add(r, key == K_IIFIDX ? K_IIF : K_OIF, start);
    }
    if (op == CMP_GTE || op == CMP_GT) {
        /* the lower bound of a range; its upper bound follows in the next cmp */
        size_t voff = 0;
        TRY(text_reserve(&r->text, 4 * n + 64));
        if (op == CMP_GT) {
            int st = step_value(r, v, n, 1, &voff);
            if (st != AM_OK)
                return st;
        } else {
            voff = r->text.n;
            TRY(text_put(&r->text, v, n));
        }
        size_t toff = r->text.n;
        TRY(put_value(&r->text, key, (const uint8_t *)r->text.p + voff, n, f, r->ipv));
        struct pending *p = find_pending(r, key);
        if (p == NULL) {
            if (r->npending == MAX_PENDING) {
                r->error = "too many open ranges";
                return UNDECODABLE;
            }
            p = &r->pending[r->npending++];
        }
        *p = (struct pending){(uint8_t)key, (uint32_t)toff, (uint32_t)(r->text.n - toff),
                              (uint32_t)voff, (uint32_t)n};
        return AM_OK;
    }
    if (op == CMP_LTE || op == CMP_LT) {
        struct pending *p = find_pending(r, key);
        size_t low_len = p ? p->value_len : 0;
        /* Everything below is written within this room: pointers into the text hold. */
        TRY(text_reserve(&r->text, 2 * n + 3 * (low_len + n) + 256));
        const uint8_t *hv = v;
        if (op == CMP_LT) {
            size_t voff;
            int st = step_value(r, v, n, 0, &voff);
            if (st != AM_OK)
                return st;
            hv = (const uint8_t *)r->text.p + voff;
        }
        start = r->text.n;
        if (p != NULL) {
            struct pending low = *p;
            int i = (int)(p - r->pending);
            memmove(&r->pending[i], &r->pending[i + 1],
                    (size_t)(r->npending - i - 1) * sizeof *p);
            r->npending--;
            int st = put_range(r, &r->text, key, (const uint8_t *)r->text.p + low.value_off,
                               low.value_len, hv, n, f, r->ipv);
            if (st != AM_OK)
                return st;
            return rule_add(r, key, start);
        }
        TRY(text_put(&r->text, "<=", 2));
        TRY(put_value(&r->text, key, hv, n, f, r->ipv));
        return rule_add(r, key, start);
    }
    if (op == CMP_NEQ)
        TRY(text_put(&r->text, "!", 1));
    TRY(put_value(&r->text, key, v, n, f, r->ipv));
    return rule_add(r, key, start);
}

/* ---- set reads ---- */

struct item {
    const uint8_t *p;
    uint32_t n;
    uint8_t end;
    uint32_t idx;
};

static int cmp_bytes(const struct item *a, const struct item *b)
{
    size_t m = a->n < b->n ? a->n : b->n;
    int c = m ? memcmp(a->p, b->p, m) : 0;
    if (c != 0)
        return c;
    return a->n < b->n ? -1 : a->n > b->n;
}

/* Interval sets: by value, ties in the order read (a stable sort). */
static int cmp_interval(const void *x, const void *y)
{
    const struct item *a = x, *b = y;
    int c = cmp_bytes(a, b);
    return c ? c : a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* Other sets: by value, then end flag. */
static int cmp_plain(const void *x, const void *y)
{
    const struct item *a = x, *b = y;
    int c = cmp_bytes(a, b);
    if (c)
        return c;
    if (a->end != b->end)
        return a->end < b->end ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static const struct setinfo *find_set(const am_nft *n, uint8_t family, span table, span name)
{
    for (size_t i = n->nsets; i-- > 0;) {
        const struct setinfo *s = &n->sets[i];
        if (s->family == family && span_eq(s->table, table) && span_eq(s->name, name))
            return s;
    }
    return NULL;
}

/* The element lists of one set: asked of the kernel (live) or found among the given
 * messages. AM_OK with *store and its refs to read (type NEWSETELEM); else *err says why. */
static int fetch_elements(am_nft *n, uint8_t family, span table, span name,
                          const struct store **out, int *err)
{
    if (!n->live) {
        *out = &n->dump;
        return AM_OK;
    }
    uint8_t a[1024];
    size_t tn = table.n + 1, nn = name.n + 1;
    size_t len = 4 + ((tn + 3) & ~(size_t)3) + 4 + ((nn + 3) & ~(size_t)3);
    if (len > sizeof a - 64) {
        *err = ENAMETOOLONG;
        return AM_NFT_ERR_SYS;
    }
    memset(a, 0, len);
    uint16_t h[2] = {(uint16_t)(4 + tn), 1};
    memcpy(a, h, 4);
    if (table.n)
        memcpy(a + 4, table.p, table.n);
    size_t off = 4 + ((tn + 3) & ~(size_t)3);
    h[0] = (uint16_t)(4 + nn);
    h[1] = 2;
    memcpy(a + off, h, 4);
    if (name.n)
        memcpy(a + off + 4, name.p, name.n);
    n->elems.n = n->elems.count = 0;
    int st = dump(n, &n->elems, MSG_GETSETELEM, family, a, len);
    if (st == AM_NFT_ERR_SYS)
        *err = n->err;
    *out = &n->elems;
    return st;
}

/* The values of one set as texts of match field `key`, kept in the cache (firewall's
 * _NftReader.set_elements): *read is NULL when the set could not be read (an error says
 * why). UNDECODABLE when a range does not hold (r->error). */
static int read_set(am_nft *n, struct rule *r, uint8_t family, span table, span name,
                    const struct field *f, int key, const struct setread **read)
{
    *read = NULL;
    for (size_t i = 0; i < n->nreads; i++) {
        const struct setread *s = &n->reads[i];
        if (s->family == family && s->key == key && s->ipv == r->ipv &&
            span_eq(s->table, table) && span_eq(s->name, name)) {
            *read = s->ok ? s : NULL;
            return AM_OK;
        }
    }
    if (n->nreads == n->readcap) {
        size_t cap = n->readcap ? n->readcap * 2 : 8;
        struct setread *p = realloc(n->reads, cap * sizeof *p);
        if (p == NULL)
            return AM_ERR_NOMEM;
        n->reads = p;
        n->readcap = cap;
    }
    struct setread sr = {family, (uint8_t)key, (uint8_t)r->ipv, 0, table, name,
                         n->cache_vals.n, 0};
    const struct store *from = NULL;
    int err = 0;
    int st = fetch_elements(n, family, table, name, &from, &err);
    const char *why = NULL;
    if (st == AM_ERR_LIMIT) {
        err = 0;
        why = "more than max_dump_bytes of set elements";
    } else if (st == AM_ERR_NOMEM) {
        return st;
    } else if (st != AM_OK) {
        err = err ? err : EPROTO;
    }
    struct item *items = NULL;
    size_t count = 0, cap = 0;
    uint32_t idx = 0;
    for (size_t m = 0; st == AM_OK && m < from->count; m++) {
        const struct msgref *ref = &from->refs[m];
        if (ref->type != MSG_NEWSETELEM)
            continue;
        span body = msg_span(from, ref), la[MAX_ATTR + 1];
        attrs(&body, la, &n->st.malformed);
        if (!n->live && (ref->family != family || !span_eq(str_of(la[1]), table) ||
                         !span_eq(str_of(la[2]), name)))
            continue;
        size_t off = 0;
        span elem;
        while (st == AM_OK && next_item(&la[3], &off, &elem, &n->st.malformed)) {
            span ea[MAX_ATTR + 1];
            attrs(&elem, ea, &n->st.malformed);
            span value = ea[1].ok ? data_value(ea[1], &n->st.malformed) : ea[1];
            if (!value.ok)
                continue;
            span endv = {0};
            if (ea[10].ok) {
                endv = data_value(ea[10], &n->st.malformed);
                if (!endv.ok) {
                    free(items);
                    r->error = "a set element's end has no value";
                    return UNDECODABLE;
                }
            }
            uint32_t flags = 0;
            (void)u32_of(ea[3], &flags);
            if (count + 2 > n->opt.max_set_elements * 2u) {
                n->st.overflow++;
                why = "more than max_set_elements elements";
                st = AM_ERR_LIMIT;
                break;
            }
            if (count + 2 > cap) {
                cap = cap ? cap * 2 : 64;
                struct item *p = realloc(items, cap * sizeof *p);
                if (p == NULL) {
                    free(items);
                    return AM_ERR_NOMEM;
                }
                items = p;
            }
            n->st.elements++;
            if (endv.ok) {
                items[count++] = (struct item){value.p, (uint32_t)value.n, 0, idx++};
                items[count++] = (struct item){endv.p, (uint32_t)endv.n, 1, idx++};
            } else {
                items[count++] = (struct item){value.p, (uint32_t)value.n, (uint8_t)(flags & 1),
                                               idx++};
            }
        }
    }
    if (st != AM_OK) {
        free(items);
        struct text what = {0};
        int est = error_subject(&what, "nft set ", table, "/", name, NULL, (span){0});
        if (est == AM_OK)
            est = add_error(n, &what, err, why, NULL);
        text_free(&what);
        n->reads[n->nreads++] = sr;
        return est == AM_ERR_NOMEM ? est : AM_OK;
    }
    n->st.set_reads++;
    const struct setinfo *info = find_set(n, family, table, name);
    int interval = info && (info->flags & 4);
    if (info == NULL || (info->flags & (16 | 32)))
        n->volatile_ = 1; /* NFT_SET_TIMEOUT, NFT_SET_EVAL, or a set not in the dump */
    if (count)
        qsort(items, count, sizeof *items, interval ? cmp_interval : cmp_plain);
    struct text *t = &n->cache_text;
    t->max = n->opt.max_rule_bytes;
    st = text_reserve(t, 64);
    if (interval) {
        /* Each range is its start and an end marker one past its last value; the kernel
         * also keeps a zero end marker before the first range. */
        const struct item *start = NULL;
        for (size_t i = 0; i < count && st == AM_OK; i++) {
            const struct item *it = &items[i];
            if (!it->end) {
                start = it;
                continue;
            }
            if (start == NULL)
                continue;
            size_t at = t->n;
            st = text_reserve(t, 3 * ((size_t)start->n + it->n) + 160 + it->n);
            if (st != AM_OK)
                break;
            uint8_t *high = (uint8_t *)t->p + t->n;
            memcpy(high, it->p, it->n);
            for (size_t k = it->n; k-- > 0;)
                if (high[k]-- != 0)
                    break;
            t->n += it->n;
            size_t text_at = t->n;
            if (it->n == start->n && memcmp(high, start->p, it->n) == 0)
                st = put_value(t, key, start->p, start->n, f, r->ipv);
            else
                st = put_range(r, t, key, start->p, start->n, high, it->n, f, r->ipv);
            if (st == AM_OK)
                st = vals_push(&n->cache_vals, (uint8_t)key, (uint32_t)text_at,
                               (uint32_t)(t->n - text_at));
            (void)at;
            start = NULL;
        }
        if (st == AM_OK && start != NULL) {
            st = text_reserve(t, 3 * 2 * (size_t)start->n + 160 + start->n);
            if (st == AM_OK) {
                uint8_t *high = (uint8_t *)t->p + t->n;
                memset(high, 0xff, start->n);
                t->n += start->n;
                size_t text_at = t->n;
                st = put_range(r, t, key, start->p, start->n, high, start->n, f, r->ipv);
                if (st == AM_OK)
                    st = vals_push(&n->cache_vals, (uint8_t)key, (uint32_t)text_at,
                                   (uint32_t)(t->n - text_at));
            }
        }
    } else {
        for (size_t i = 0; i < count && st == AM_OK; i++) {
            size_t text_at = t->n;
            st = put_value(t, key, items[i].p, items[i].n, f, r->ipv);
            if (st == AM_OK)
                st = vals_push(&n->cache_vals, (uint8_t)key, (uint32_t)text_at,
                               (uint32_t)(t->n - text_at));
        }
    }
    free(items);
    if (st != AM_OK) {
        n->cache_vals.n = sr.first; /* nothing of a failed read is kept */
        return st;
    }
    sr.ok = 1;
    sr.count = n->cache_vals.n - sr.first;
    n->reads[n->nreads] = sr;
    *read = &n->reads[n->nreads++];
    return AM_OK;
}

/* ---- rules ---- */

/* An expression's name and data. The data is read with the schema of the name that came
 * before it in the message (as the kernel writes them): data under another name, or before
 * any, is present but holds nothing (`usable` 0). */
struct expr {
    span name, data;
    int usable;
};

static void read_expr(span item, struct expr *e, uint64_t *malformed)
{
    memset(e, 0, sizeof *e);
    span before = {0};
    span last_name = {0};
    size_t off = 0;
    while (off + 4 <= item.n) {
        uint16_t len = rd16(item.p + off), type = rd16(item.p + off + 2) & TYPE_MASK;
        if (len < 4 || len > item.n - off) {
            (*malformed)++;
            break;
        }
        span a = {item.p + off + 4, (size_t)len - 4, 1};
        if (type == 1) {
            last_name = str_of(a);
        } else if (type == 2) {
            e->data = a;
            before = last_name;
        }
        off += ((size_t)len + 3) & ~(size_t)3;
    }
    e->name = last_name;
    e->usable = e->data.ok && before.ok && span_eq(before, last_name);
}

static int name_text(struct rule *r, const char *prefix, span name)
{
    size_t start = r->text.n;
    TRY(text_str(&r->text, prefix));
    if (name.ok)
        TRY(text_utf8(&r->text, name.p, name.n));
    else
        TRY(text_str(&r->text, "None"));
    return rule_add(r, K_EXTRA, start);
}

static const char *verdict_text(int has, int32_t code)
{
    if (!has)
        return "none";
    switch (code) {
    case 0: return "drop";
    case 1: return "accept";
    case 2: return "stolen";
    case 3: return "queue";
    case 4: return "nf_repeat";
    case 5: return "nf_stop";
    case -1: return "continue";
    case -2: return "break";
    case -3: return "jump";
    case -4: return "goto";
    case -5: return "return";
    default: return "none";
    }
}

/* Ports of an xt multiport match (revision 1, as iptables-nft adds for --dports):
 * struct xt_multiport_v1 {u8 flags; u8 count; u16 ports[15] (host order: little-endian
 * here, as firewall reads it); u8 pflags[15]; u8 invert}. 0 when the layout is not that. */
static int xt_multiport(struct rule *r, const span d[], int *st)
{
    uint32_t rev;
    if (!u32_of(d[2], &rev) || rev != 1 || !d[3].ok || d[3].n < 48 || d[3].p[1] > 15)
        return 0;
    const uint8_t *info = d[3].p;
    int key = info[0] == 0 ? K_SPORT : info[0] == 1 ? K_DPORT : -1;
    if (key < 0)
        return 0;
    const char *neg = info[47] ? "!" : "";
    unsigned count = info[1];
    *st = AM_OK;
    for (unsigned i = 0; i < count && *st == AM_OK;) {
        size_t start = r->text.n;
        *st = text_str(&r->text, neg);
        if (*st == AM_OK)
            *st = text_uint(&r->text, le_upto(info + 2 + 2 * i, 2, 2));
        if (*st == AM_OK && info[32 + i] && i + 1 < count) {
            *st = text_put(&r->text, "-", 1);
            if (*st == AM_OK)
                *st = text_uint(&r->text, le_upto(info + 4 + 2 * i, 2, 2));
            i += 2;
        } else {
            i++;
        }
        if (*st == AM_OK)
            *st = rule_add(r, key, start);
    }
    return 1;
}

static int enum_of(span s, uint32_t names)
{
    uint32_t v;
    return u32_of(s, &v) && v < names ? (int)v : -1;
}

static const struct field *reg_field(const struct rule *r, span reg)
{
    const struct field *f = &r->regs[reg_of(reg)];
    return f->set ? f : NULL;
}

static int decode_expression(am_nft *n, struct rule *r, uint8_t family, span table, span item)
{
    struct expr e;
    read_expr(item, &e, &n->st.malformed);
    span name = e.name;
    if (span_is(name, "counter") || span_is(name, "log") || span_is(name, "limit") ||
        span_is(name, "quota"))
        return AM_OK;
    if (span_is(name, "dynset"))
        n->volatile_ = 1;
    if (!e.data.ok) {
        if (span_is(name, "masq"))
            return set_verdict(r, "masquerade", (span){0});
        if (span_is(name, "notrack"))
            return set_verdict(r, "notrack", (span){0});
        return name_text(r, "", name);
    }
    span d[MAX_ATTR + 1];
    if (e.usable)
        attrs(&e.data, d, &n->st.malformed);
    else
        memset(d, 0, sizeof d);
    if (span_is(name, "meta") && reg_of(d[1]) != REG_NONE) {
        r->regs[reg_of(d[1])] = (struct field){1, F_META, enum_of(d[2], NELEMS(META_KEYS)), -1,
                                               0, 0, {0}};
    } else if (span_is(name, "payload") && reg_of(d[1]) != REG_NONE) {
        uint32_t off = 0, len = 0;
        (void)u32_of(d[3], &off);
        (void)u32_of(d[4], &len);
        r->regs[reg_of(d[1])] = (struct field){1, F_PAYLOAD, -1, enum_of(d[2], 3), off, len, {0}};
    } else if (span_is(name, "ct") && reg_of(d[1]) != REG_NONE) {
        r->regs[reg_of(d[1])] = (struct field){1, F_CT, enum_of(d[2], NELEMS(CT_KEYS)), -1, 0, 0,
                                               {0}};
    } else if (span_is(name, "bitwise")) {
        const struct field *src = reg_field(r, d[1]);
        span mask = d[4].ok ? data_value(d[4], &n->st.malformed) : d[4];
        int op = enum_of(d[6], 3);
        struct field out = {1, F_OTHER, -1, -1, 0, 0, {0}};
        if (src != NULL && op <= 0) {
            out = *src;
            out.mask = mask;
        }
        r->regs[reg_of(d[2])] = out;
    } else if (span_is(name, "cmp")) {
        span value = d[3].ok ? data_value(d[3], &n->st.malformed) : d[3];
        return decode_cmp(r, reg_field(r, d[1]), enum_of(d[2], 6), value);
    } else if (span_is(name, "range")) {
        const struct field *f = reg_field(r, d[1]);
        int key = f ? field_key(f, r->ipv) : K_NONE;
        if (key >= N_MATCH)
            return rule_extra(r, "range", (span){0});
        span lo = d[3].ok ? data_value(d[3], &n->st.malformed) : d[3];
        span hi = d[4].ok ? data_value(d[4], &n->st.malformed) : d[4];
        TRY(text_reserve(&r->text, 3 * (lo.n + hi.n) + 160));
        size_t start = r->text.n;
        if (enum_of(d[2], 2) == 1)
            TRY(text_put(&r->text, "!", 1));
        int st = put_range(r, &r->text, key, lo.ok ? lo.p : (const uint8_t *)"", lo.ok ? lo.n : 0,
                           hi.ok ? hi.p : (const uint8_t *)"", hi.ok ? hi.n : 0, f, r->ipv);
        if (st != AM_OK)
            return st;
        return rule_add(r, key, start);
    } else if (span_is(name, "lookup")) {
        const struct field *f = reg_field(r, d[2]);
        span set = d[1].ok ? str_of(d[1]) : (span){(const uint8_t *)"None", 4, 1};
        int key = f ? field_key(f, r->ipv) : K_NONE;
        if (key >= N_MATCH)
            return name_text(r, "lookup @", set);
        uint32_t flags = 0;
        const char *neg = u32_of(d[5], &flags) && (flags & 1) ? "!" : "";
        const struct setread *read;
        int st = read_set(n, r, family, table, set, f, key, &read);
        if (st != AM_OK)
            return st;
        if (read == NULL) {
            size_t start = r->text.n;
            TRY(text_str(&r->text, neg));
            TRY(text_put(&r->text, "@", 1));
            TRY(text_utf8(&r->text, set.p, set.n));
            return rule_add(r, key, start);
        }
        for (size_t i = 0; i < read->count; i++) {
            const struct val *v = &n->cache_vals.v[read->first + i];
            size_t start = r->text.n;
            TRY(text_str(&r->text, neg));
            TRY(text_put(&r->text, n->cache_text.p + v->off, v->len));
            TRY(rule_add(r, key, start));
        }
    } else if (span_is(name, "immediate")) {
        span vd[MAX_ATTR + 1], va[MAX_ATTR + 1];
        attrs(&d[2], vd, &n->st.malformed);
        if (!d[2].ok || !vd[2].ok)
            return rule_extra(r, "immediate", (span){0});
        attrs(&vd[2], va, &n->st.malformed);
        uint32_t code = 0;
        int has = u32_of(va[1], &code);
        int32_t scode;
        memcpy(&scode, &code, 4);
        span chain = str_of(va[2]);
        if (chain.ok && chain.n > 0) {
            size_t start = r->text.n;
            TRY(text_str(&r->text, verdict_text(has, scode)));
            TRY(text_put(&r->text, " ", 1));
            TRY(text_utf8(&r->text, chain.p, chain.n));
            r->has_verdict = 1;
            r->verdict_off = (uint32_t)start;
            r->verdict_len = (uint32_t)(r->text.n - start);
            return AM_OK;
        }
        return set_verdict(r, verdict_text(has, scode), (span){0});
    } else if (span_is(name, "reject")) {
        return set_verdict(r, "reject", (span){0});
    } else if (span_is(name, "nat")) {
        return set_verdict(r, enum_of(d[1], 2) == 1 ? "dnat" : "snat", (span){0});
    } else if (span_is(name, "masq")) {
        return set_verdict(r, "masquerade", (span){0});
    } else if (span_is(name, "redir") || span_is(name, "queue") || span_is(name, "dup") ||
               span_is(name, "fwd") || span_is(name, "notrack")) {
        return set_verdict(r, "", name);
    } else if (span_is(name, "target")) {
        /* an xtables target kept by iptables-nft for what nft cannot express */
        span target = str_of(d[1]);
        if (!target.ok || target.n == 0)
            return set_verdict(r, "target", (span){0});
        size_t start = r->text.n;
        TRY(text_utf8(&r->text, target.p, target.n));
        for (size_t i = start; i < r->text.n; i++)
            if (r->text.p[i] >= 'A' && r->text.p[i] <= 'Z')
                r->text.p[i] = (char)(r->text.p[i] - 'A' + 'a');
        r->has_verdict = 1;
        r->verdict_off = (uint32_t)start;
        r->verdict_len = (uint32_t)(r->text.n - start);
    } else if (span_is(name, "match")) {
        span match = d[1].ok ? str_of(d[1]) : (span){(const uint8_t *)"None", 4, 1};
        int st = AM_OK;
        if (span_is(match, "multiport") && xt_multiport(r, d, &st))
            return st;
        return name_text(r, "xt ", match);
    } else {
        return name_text(r, "", name);
    }
    return AM_OK;
}

struct rule_event {
    const struct rule *r;
    const struct chain *c;
    uint8_t family;
    span table, chain;
    int has_handle;
    uint64_t handle, ts;
    uint32_t pos;
};

static const char *action_of(const struct rule *r)
{
    if (!r->has_verdict)
        return "other";
    const char *v = r->text.p + r->verdict_off;
    size_t n = r->verdict_len, i = 0;
    while (i < n && (v[i] == ' ' || (v[i] >= '\t' && v[i] <= '\r')))
        i++;
    size_t j = i;
    while (j < n && v[j] != ' ' && !(v[j] >= '\t' && v[j] <= '\r'))
        j++;
    if (j - i == 6 && strncasecmp(v + i, "accept", 6) == 0)
        return "allow";
    if ((j - i == 4 && strncasecmp(v + i, "drop", 4) == 0) ||
        (j - i == 6 && strncasecmp(v + i, "reject", 6) == 0))
        return "deny";
    return "other";
}

static int encode_rule(am_nft *n, mp_buf *b, const void *arg)
{
    const struct rule_event *e = arg;
    const struct rule *r = e->r;
    uint32_t counts[N_MATCH] = {0}, extras = 0;
    for (size_t i = 0; i < r->vals.n; i++) {
        if (r->vals.v[i].key < N_MATCH)
            counts[r->vals.v[i].key]++;
        else
            extras++;
    }
    uint32_t keys = 7 + (uint32_t)e->has_handle + 1 /* action */ + (uint32_t)r->has_verdict +
                    (extras > 0);
    if (e->c && e->c->has_hook)
        keys++;
    if (e->c && e->c->has_prio)
        keys++;
    if (r->ipv)
        keys++;
    int pending_key[N_MATCH];
    for (int k = 0; k < N_MATCH; k++)
        pending_key[k] = -1;
    for (int i = 0; i < r->npending; i++)
        pending_key[r->pending[i].key] = i;
    for (int k = 0; k < N_MATCH; k++)
        if (counts[k] || pending_key[k] >= 0)
            keys++;
    TRY(mp_map(b, keys));
    TRY(put_head(n, b, "fwrule", e->ts, e->family, e->table, e->chain));
    TRY(mp_cstr(b, "pos"));
    TRY(mp_uint(b, e->pos));
    if (e->has_handle) {
        TRY(mp_cstr(b, "handle"));
        TRY(mp_uint(b, e->handle));
    }
    if (e->c && e->c->has_hook)
        TRY(put_hook(b, e->c));
    if (e->c && e->c->has_prio) {
        TRY(mp_cstr(b, "prio"));
        TRY(mp_int(b, e->c->prio));
    }
    if (r->ipv)
        TRY(kv_str(b, "fam", r->ipv == 4 ? "inet" : "inet6"));
    for (int k = 0; k < N_MATCH; k++) {
        if (!counts[k])
            continue;
        TRY(mp_cstr(b, MATCH_NAMES[k]));
        TRY(mp_array(b, counts[k] + (pending_key[k] >= 0)));
        for (size_t i = 0; i < r->vals.n; i++)
            if (r->vals.v[i].key == k)
                TRY(mp_str(b, r->text.p + r->vals.v[i].off, r->vals.v[i].len));
        if (pending_key[k] >= 0) {
            const struct pending *p = &r->pending[pending_key[k]];
            TRY(mp_str(b, r->text.p + p->text_off, p->text_len));
        }
    }
    /* an open range whose field has no other value: its key comes after the others */
    for (int i = 0; i < r->npending; i++) {
        const struct pending *p = &r->pending[i];
        if (counts[p->key])
            continue;
        TRY(mp_cstr(b, MATCH_NAMES[p->key]));
        TRY(mp_array(b, 1));
        TRY(mp_str(b, r->text.p + p->text_off, p->text_len));
    }
    if (r->has_verdict) {
        TRY(mp_cstr(b, "verdict"));
        TRY(mp_str(b, r->text.p + r->verdict_off, r->verdict_len));
    }
    TRY(kv_str(b, "action", action_of(r)));
    if (extras) {
        TRY(mp_cstr(b, "extra"));
        TRY(mp_array(b, extras));
        for (size_t i = 0; i < r->vals.n; i++)
            if (r->vals.v[i].key >= N_MATCH)
                TRY(mp_str(b, r->text.p + r->vals.v[i].off, r->vals.v[i].len));
    }
    return AM_OK;
}

static void rule_reset(am_nft *n, struct rule *r, int ipv)
{
    memset(r->regs, 0, sizeof r->regs);
    r->vals.n = 0;
    r->text.n = 0;
    r->text.max = n->opt.max_rule_bytes;
    r->npending = 0;
    r->has_verdict = 0;
    r->error = NULL;
    r->ipv = ipv;
}

static int decode_rule(am_nft *n, const struct msgref *m, uint64_t ts, size_t *hint)
{
    span body = msg_span(&n->dump, m), a[MAX_ATTR + 1];
    attrs(&body, a, &n->st.malformed);
    struct rule_event e = {0};
    e.family = m->family;
    e.table = str_of(a[1]);
    e.chain = str_of(a[2]);
    e.ts = ts;
    if (a[3].ok && a[3].n >= 8) {
        e.has_handle = 1;
        e.handle = (uint64_t)be32(a[3].p) << 32 | be32(a[3].p + 4);
    }
    struct chain *c = find_chain(n, m->family, e.table, e.chain, hint);
    if (c == NULL) {
        if ((c = add_chain(n)) == NULL)
            return AM_ERR_NOMEM;
        c->family = m->family;
        c->table = e.table;
        c->name = e.chain;
        *hint = n->nchains - 1;
    }
    e.pos = ++c->pos;
    e.c = c->known ? c : NULL;
    n->st.rules++;
    struct rule *r = &n->rule;
    rule_reset(n, r, m->family == 2 ? 4 : m->family == 10 ? 6 : 0);
    size_t off = 0;
    span item;
    /* the text has storage from here on, even when every value in it is empty */
    int st = text_reserve(&r->text, 64);
    while (st == AM_OK && next_item(&a[4], &off, &item, &n->st.malformed))
        st = decode_expression(n, r, m->family, e.table, item);
    /* the open lower bounds of ranges: ">=low" */
    for (int i = 0; st == AM_OK && i < r->npending; i++) {
        struct pending *p = &r->pending[i];
        st = text_reserve(&r->text, p->text_len + 2);
        if (st != AM_OK)
            break;
        size_t start = r->text.n;
        st = text_put(&r->text, ">=", 2);
        if (st == AM_OK)
            st = text_put(&r->text, r->text.p + p->text_off, p->text_len);
        p->text_off = (uint32_t)start;
        p->text_len = (uint32_t)(r->text.n - start);
    }
    if (st == AM_ERR_NOMEM)
        return st;
    if (st != AM_OK) {
        if (st == AM_ERR_LIMIT)
            n->st.overflow++;
        n->st.undecodable++;
        n->nundecodable++;
        char fb[4];
        struct text what = {0};
        int est = error_subject(&what, "nft rule ", (span){(const uint8_t *)family_name(m->family, fb),
                                strlen(family_name(m->family, fb)), 1}, " ", e.table, " ", e.chain);
        if (est == AM_OK)
            est = add_error(n, &what, 0, "undecodable: ",
                            st == UNDECODABLE && r->error ? r->error
                                                          : "more than max_rule_bytes of values");
        text_free(&what);
        return est == AM_ERR_NOMEM ? est : AM_OK;
    }
    e.r = r;
    return put_event(n, encode_rule, &e);
}

/* ---- a snapshot ---- */

static int begin_result(am_nft *n)
{
    n->has_result = 0;
    n->out.len = 0;
    n->errs.len = 0;
    n->nevents = n->nerrs = n->lost_errs = n->nundecodable = 0;
    n->volatile_ = 0;
    n->st.tables = n->st.chains = n->st.sets = n->st.rules = 0;
    for (;;) {
        int st = mp_map(&n->out, 4);
        if (st == AM_OK)
            st = mp_cstr(&n->out, "events");
        n->events_at = n->out.len;
        if (st == AM_OK)
            st = mp_array32(&n->out, 0);
        if (st == AM_OK)
            return AM_OK;
        n->out.len = 0;
        if (st != AM_ERR_FULL || (st = grow(n, &n->out, n->opt.max_output_bytes)) != AM_OK)
            return st;
    }
}

static int end_result(am_nft *n, int64_t tables)
{
    mp_patch_u32(&n->out, n->events_at, n->nevents);
    if (n->lost_errs) {
        char why[64];
        snprintf(why, sizeof why, "%u more errors", n->lost_errs);
        struct text what = {0};
        what.max = 64;
        int st = text_str(&what, "nftables");
        if (st == AM_OK)
            st = put_error(n, &what, 0, why, NULL);
        text_free(&what);
        if (st != AM_OK)
            return st;
    }
    size_t at = n->out.len;
    for (;;) {
        int st = mp_cstr(&n->out, "errors");
        if (st == AM_OK)
            st = mp_array(&n->out, n->nerrs);
        if (st == AM_OK && n->errs.len)
            st = mp_raw(&n->out, n->errs.data, n->errs.len);
        if (st == AM_OK)
            st = mp_cstr(&n->out, "tables");
        if (st == AM_OK)
            st = mp_int(&n->out, tables);
        if (st == AM_OK)
            st = mp_cstr(&n->out, "volatile");
        if (st == AM_OK)
            st = mp_bool(&n->out, n->volatile_);
        if (st == AM_OK)
            break;
        n->out.len = at;
        if (st != AM_ERR_FULL ||
            (st = grow(n, &n->out, (size_t)n->opt.max_output_bytes + ERRORS_BYTES + 128)) != AM_OK)
            return st;
    }
    n->has_result = 1;
    n->st.snapshots++;
    return AM_OK;
}

/* The kept messages into events: sets indexed, chains, then rules. */
static int decode_kept(am_nft *n, uint64_t ts)
{
    size_t nsets = 0;
    int64_t tables = 0;
    for (size_t i = 0; i < n->dump.count; i++) {
        nsets += n->dump.refs[i].type == MSG_NEWSET;
        tables += n->dump.refs[i].type == MSG_NEWTABLE;
    }
    if (nsets && (n->sets = calloc(nsets, sizeof *n->sets)) == NULL)
        return AM_ERR_NOMEM;
    for (size_t i = 0; i < n->dump.count; i++) {
        const struct msgref *m = &n->dump.refs[i];
        if (m->type != MSG_NEWSET)
            continue;
        span body = msg_span(&n->dump, m), a[MAX_ATTR + 1];
        attrs(&body, a, &n->st.malformed);
        struct setinfo *s = &n->sets[n->nsets++];
        s->family = m->family;
        s->table = str_of(a[1]);
        s->name = str_of(a[2]);
        (void)u32_of(a[3], &s->flags);
    }
    n->st.tables = (uint64_t)tables;
    n->st.sets = nsets;
    int st = AM_OK;
    for (size_t i = 0; st == AM_OK && i < n->dump.count; i++)
        if (n->dump.refs[i].type == MSG_NEWCHAIN)
            st = decode_chain(n, &n->dump.refs[i], ts);
    size_t hint = 0;
    for (size_t i = 0; st == AM_OK && i < n->dump.count; i++)
        if (n->dump.refs[i].type == MSG_NEWRULE)
            st = decode_rule(n, &n->dump.refs[i], ts, &hint);
    if (st == AM_ERR_LIMIT) {
        /* the result outgrew max_output_bytes: none of it is sent, one error says why. The
         * events and the undecodable rules it held (their errors go with it) are not counted,
         * as rules is not once begin_result starts the result again. */
        n->st.events -= n->nevents;
        n->st.undecodable -= n->nundecodable;
        n->out.len = 0;
        TRY(begin_result(n));
        struct text what = {0};
        what.max = 64;
        st = text_str(&what, "nftables");
        if (st == AM_OK)
            st = add_error(n, &what, 0, "more than max_output_bytes of events", NULL);
        text_free(&what);
        TRY(st);
        return end_result(n, -1);
    }
    TRY(st);
    return end_result(n, tables);
}

int am_nft_decode(am_nft *n, uint64_t ts_ms, const uint8_t *data, size_t len)
{
    if (n == NULL || (data == NULL && len > 0))
        return AM_ERR_ARG;
    release_work(n);
    n->live = 0;
    int st = begin_result(n);
    size_t off = 0;
    while (st == AM_OK && off + NLMSG_HDRLEN <= len) {
        struct nlmsghdr h;
        memcpy(&h, data + off, sizeof h);
        if (h.nlmsg_len < NLMSG_HDRLEN || h.nlmsg_len > len - off) {
            n->st.malformed++;
            break;
        }
        if (h.nlmsg_type != NLMSG_DONE && h.nlmsg_type != NLMSG_ERROR)
            st = keep_message(n, &n->dump, &h, data + off + NLMSG_HDRLEN,
                              h.nlmsg_len - NLMSG_HDRLEN);
        off += NLMSG_ALIGN(h.nlmsg_len);
    }
    if (st == AM_ERR_LIMIT) {
        struct text what = {0};
        what.max = 64;
        st = text_str(&what, "nftables");
        if (st == AM_OK)
            st = add_error(n, &what, 0, "more than max_dump_bytes of messages", NULL);
        text_free(&what);
        if (st == AM_OK)
            st = end_result(n, -1);
    } else if (st == AM_OK) {
        st = decode_kept(n, ts_ms);
    }
    release_work(n);
    return st;
}

int am_nft_snapshot(am_nft *n, uint64_t ts_ms)
{
    if (n == NULL)
        return AM_ERR_ARG;
    release_work(n);
    n->live = 1;
    n->err = 0;
    int st = begin_result(n);
    static const uint8_t dumps[] = {MSG_GETTABLE, MSG_GETCHAIN, MSG_GETSET, MSG_GETRULE};
    for (size_t i = 0; st == AM_OK && i < sizeof dumps; i++)
        st = dump(n, &n->dump, dumps[i], 0 /* NFPROTO_UNSPEC: every family */, NULL, 0);
    if (st == AM_NFT_ERR_SYS || st == AM_ERR_LIMIT) {
        /* no nf_tables in the kernel, no privilege, a ruleset that does not fit */
        struct text what = {0};
        what.max = 64;
        int err = st == AM_NFT_ERR_SYS ? n->err : 0;
        st = text_str(&what, "nftables");
        if (st == AM_OK)
            st = add_error(n, &what, err, err ? NULL : "more than max_dump_bytes of messages",
                           NULL);
        text_free(&what);
        if (st == AM_OK)
            st = end_result(n, -1);
    } else if (st == AM_OK) {
        st = decode_kept(n, ts_ms);
    }
    release_work(n);
    return st;
}
