/* aggregate.c: identical events within an interval -> one entry with a hit count (see
 * core_aggregate.h). Entries live in a FIFO ring in first-seen order (eviction and flush both
 * take the oldest first), found by their key through a keyed index (index.h) of ring slots. */
#include <stdlib.h>
#include <string.h>

#include "core_aggregate.h"
#include "core_dns.h"
#include "index.h"
#include "mpread.h"
#include "msgpack.h"
#include "sink.h"

enum { MAX_KEY_FIELDS = 24, MAX_ACCEPT = 16, MAX_LADDRS = 256, MAX_ADDR_CHARS = 45 };

/* A key name and its length, so that a key read from an event is compared by length first
 * (one integer compare rejects most names) and never measured with strlen per event. */
typedef struct field_name {
    const char *name;
    uint32_t len;
} field_name;
#define FIELD(text) {text, sizeof text - 1}

/* The fields that make two events the same, per kind; ports are handled apart (the
 * ephemeral one is left out of the key). */
static const field_name process_fields[] = {
    FIELD("t"), FIELD("src"), FIELD("node"), FIELD("uid"), FIELD("exe"), FIELD("argv"),
    FIELD("title"), FIELD("ok"), {NULL, 0}};
static const field_name network_fields[] = {
    FIELD("t"), FIELD("src"), FIELD("node"), FIELD("op"), FIELD("dir"), FIELD("fam"),
    FIELD("proto"), FIELD("laddr"), FIELD("raddr"), FIELD("path"), FIELD("exe"), FIELD("ok"),
    /* dns (native/dns.c) */
    FIELD("name"), FIELD("type"), FIELD("rcode"), FIELD("answers"), FIELD("cnames"), {NULL, 0}};
/* FileSystem: the path and the operation (a move also by where it came from). */
static const field_name file_system_fields[] = {
    FIELD("t"), FIELD("src"), FIELD("op"), FIELD("path"), FIELD("from"), FIELD("moved"),
    FIELD("isdir"), {NULL, 0}};
/* A device plugged in and out again merges (its bus's device number is not in the key), as
 * does a flapping carrier. */
static const field_name peripheral_fields[] = {
    FIELD("t"), FIELD("src"), FIELD("op"), FIELD("kind"), FIELD("devpath"), FIELD("name"),
    FIELD("vendor_id"), FIELD("product_id"), FIELD("class"), FIELD("subclass"), FIELD("protocol"),
    {NULL, 0}};

typedef struct entry {
    uint8_t *key;       /* key bytes, then the first event's map */
    uint32_t key_len;
    uint32_t event_len;
    uint32_t index_pos; /* where the index holds this entry's ring slot */
    uint64_t hits;
    int64_t first_ts, last_ts;
    uint64_t rx, tx;    /* network: summed byte counters */
    char *host;         /* network: the DNS cache's name for raddr (core_dns.h) */
    uint32_t host_len;
    uint32_t raddr_off; /* network: where raddr's value is in the event (wants_host) */
    uint32_t raddr_len;
    uint8_t wants_host; /* a conn / net event with a raddr and no host of its own */
    uint8_t has_ts, has_rx, has_tx;
} entry;

struct am_agg {
    struct am_agg_options opt;
    entry *ring;        /* cache_size slots */
    uint32_t head, count;
    am_index index;     /* key -> ring slot (a uint32_t per entry) */
    size_t bytes;       /* key + event bytes of held entries */
    mp_buf scratch;     /* the key being built */
    struct { const char *name; size_t len; } accept[MAX_ACCEPT];
    uint32_t accept_count; /* 0: every type is taken */
    struct { char text[MAX_ADDR_CHARS]; uint8_t len; } *laddrs; /* the address filter */
    uint32_t laddr_count;
    int laddr_filter;      /* 0: no filter */
    am_dns *hosts;         /* the DNS cache giving conn / net entries a host; NULL: none */
    size_t host_bytes;     /* of the hosts held (at most 255 per entry) */
    struct am_agg_stats st;
};

void am_agg_default_options(struct am_agg_options *out)
{
    if (out == NULL)
        return;
    out->kind = AM_AGG_PROCESS;
    out->cache_size = 256;
    out->max_bytes = 1u << 20;
    out->accept[0] = '\0';
}

/* Splits opt.accept (kept in a->opt) into names; 0 when malformed. */
static int parse_accept(am_agg *a)
{
    const char *s = a->opt.accept;
    size_t n = strnlen(s, sizeof a->opt.accept);
    if (n == sizeof a->opt.accept)
        return 0;
    if (n == 0)
        return 1;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ',')
            continue;
        if (i == start || a->accept_count == MAX_ACCEPT)
            return 0;
        a->accept[a->accept_count].name = s + start;
        a->accept[a->accept_count].len = i - start;
        a->accept_count++;
        start = i + 1;
    }
    return 1;
}

/* A key is at most half of max_bytes (an entry holds its key and its event), and the largest
 * event a source writes is a batch: 256 KiB covers both. */
static size_t scratch_cap(const struct am_agg_options *o)
{
    size_t half = o->max_bytes / 2;
    return half < 262144 ? half : 262144;
}

/* Whether the ring slot an index entry names holds the key. */
static int same_key(const void *index_entry, const void *key, size_t len, const void *ctx)
{
    const am_agg *a = ctx;
    uint32_t slot;
    memcpy(&slot, index_entry, sizeof slot);
    const entry *e = &a->ring[slot];
    return e->key_len == len && memcmp(e->key, key, len) == 0;
}

/* An index entry (the ring slot's number) moved: the entry learns where it is now. */
static void slot_moved(void *index_entry, uint32_t pos, void *ctx)
{
    ((am_agg *)ctx)->ring[*(const uint32_t *)index_entry].index_pos = pos;
}

am_agg *am_agg_new(const struct am_agg_options *opts)
{
    struct am_agg_options o;
    am_agg_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if ((o.kind != AM_AGG_NONE && o.kind != AM_AGG_PROCESS && o.kind != AM_AGG_NETWORK &&
         o.kind != AM_AGG_FILE_SYSTEM && o.kind != AM_AGG_PERIPHERAL) || o.cache_size < 1 ||
        o.cache_size > 65536 || o.max_bytes < 1024 || o.max_bytes > (1u << 30))
        return NULL;
    am_agg *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->opt = o;
    if (!parse_accept(a)) {
        free(a);
        return NULL;
    }
    a->ring = calloc(o.cache_size, sizeof *a->ring);
    if (a->ring == NULL || mp_init(&a->scratch, scratch_cap(&o)) != AM_OK ||
        am_index_init(&a->index, sizeof(uint32_t), o.cache_size, same_key, slot_moved, a) != AM_OK) {
        am_agg_free(a);
        return NULL;
    }
    return a;
}

static void release_entry(entry *e)
{
    free(e->key);
    free(e->host);
    memset(e, 0, sizeof *e);
}

void am_agg_free(am_agg *a)
{
    if (a == NULL)
        return;
    for (uint32_t i = 0; a->ring != NULL && i < a->count; i++)
        release_entry(&a->ring[(a->head + i) % a->opt.cache_size]);
    free(a->ring);
    am_index_release(&a->index);
    free(a->laddrs);
    mp_release(&a->scratch);
    free(a);
}

/* ---- the index: ring slots by key ---- */

void agg_index_stats(const am_agg *a, struct am_index_stats *out)
{
    am_index_stats(&a->index, out);
}

/* ---- output ---- */

static int is_added_key(const uint8_t *k, uint32_t n)
{
    return (n == 4 && memcmp(k, "hits", 4) == 0) || (n == 5 && memcmp(k, "first", 5) == 0) ||
           (n == 4 && memcmp(k, "last", 4) == 0);
}

static int is_summed_key(const entry *e, const uint8_t *k, uint32_t n)
{
    return (e->has_rx && n == 2 && memcmp(k, "rx", 2) == 0) ||
           (e->has_tx && n == 2 && memcmp(k, "tx", 2) == 0);
}

/* Writes the entry as its first event's map with the aggregate's keys; AM_OK or a sink drop.
 * *encoded (when not NULL) counts an entry encoded whole; a checkpoint passes NULL, its
 * entries stay. */
static int write_entry(const entry *e, am_sink *out, uint64_t *encoded)
{
    mpr r = {e->key + e->key_len, e->event_len, 0};
    uint32_t n;
    if (!mpr_map(&r, &n))
        return AM_ERR_ARG; /* checked when the entry was made */
    size_t body = r.pos;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        uint32_t kl;
        if (!mpr_str(&r, &k, &kl) || !mpr_skip(&r))
            return AM_ERR_ARG;
        if (!is_added_key(k, kl) && !is_summed_key(e, k, kl))
            kept++;
    }
    mp_buf *m = sink_begin(out);
    int st = mp_map(m, kept + 3 + e->has_rx + e->has_tx + (e->host != NULL));
    r.pos = body;
    for (uint32_t i = 0; i < n && st == AM_OK; i++) {
        size_t start = r.pos;
        const uint8_t *k;
        uint32_t kl;
        mpr_str(&r, &k, &kl);
        mpr_skip(&r);
        if (!is_added_key(k, kl) && !is_summed_key(e, k, kl))
            st = mp_raw(m, r.data + start, r.pos - start);
    }
    if (st == AM_OK) st = mp_cstr(m, "hits");
    if (st == AM_OK) st = mp_uint(m, e->hits);
    if (st == AM_OK) st = mp_cstr(m, "first");
    if (st == AM_OK) st = e->has_ts ? mp_int(m, e->first_ts) : mp_nil(m);
    if (st == AM_OK) st = mp_cstr(m, "last");
    if (st == AM_OK) st = e->has_ts ? mp_int(m, e->last_ts) : mp_nil(m);
    if (st == AM_OK && e->has_rx) st = mp_cstr(m, "rx");
    if (st == AM_OK && e->has_rx) st = mp_uint(m, e->rx);
    if (st == AM_OK && e->has_tx) st = mp_cstr(m, "tx");
    if (st == AM_OK && e->has_tx) st = mp_uint(m, e->tx);
    if (st == AM_OK && e->host != NULL) st = mp_cstr(m, "host");
    if (st == AM_OK && e->host != NULL) st = mp_str(m, e->host, e->host_len);
    if (st != AM_OK) {
        sink_drop(out);
        return st;
    }
    if (encoded != NULL)
        (*encoded)++;
    return sink_commit(out);
}

static void find_host(am_agg *a, entry *e, const uint8_t *raddr, uint32_t raddr_len);

/* An entry leaves the aggregator: written and counted. One that had no host when it was made
 * asks the cache again (the answer's packets may have been read after the connection's). */
static int emit(am_agg *a, entry *e, am_sink *out)
{
    if (e->wants_host && e->host == NULL)
        find_host(a, e, e->key + e->key_len + e->raddr_off, e->raddr_len);
    return write_entry(e, out, &a->st.emitted);
}

/* Emits and removes the oldest entry. */
static void pop_oldest(am_agg *a, am_sink *out)
{
    uint32_t slot = a->head;
    entry *e = &a->ring[slot];
    emit(a, e, out); /* a failure is counted by the sink */
    am_index_remove_at(&a->index, e->index_pos); /* by position: no second lookup */
    a->bytes -= (size_t)e->key_len + e->event_len;
    a->host_bytes -= e->host_len;
    release_entry(e);
    a->head = (a->head + 1) % a->opt.cache_size;
    a->count--;
}

/* ---- input ---- */

typedef struct span {
    const uint8_t *p;
    uint32_t n;
} span;

static int laddr_passes(const am_agg *a, span laddr);
struct fields;
static void add_host(am_agg *a, entry *e, const struct fields *f, const uint8_t *event);

typedef struct fields {
    span key[MAX_KEY_FIELDS];
    span lport, rport, dir, laddr, raddr;
    int has_host;
    int has_ts, has_rx, has_tx;
    int64_t ts;
    uint64_t rx, tx; /* a checkpoint's sums may pass INT64_MAX */
    int has_hits, has_first, has_last; /* a checkpoint's entry */
    int64_t hits, first, last;
} fields;

static inline int key_is(const uint8_t *k, uint32_t n, const char *name, uint32_t len)
{
    /* Every key of every event meets most names of its kind's list: the first byte sends
     * nearly all of them away before a memcmp call (memcmp from here topped a profile of the
     * agent at 1,600 connections a second). */
    return n == len && (len == 0 || (k[0] == (uint8_t)name[0] && memcmp(k, name, len) == 0));
}
/* A key against a string literal: its length is known when compiled. */
#define KEY_EQ(k, n, text) key_is((k), (n), (text), sizeof(text) - 1)

static inline int raw_str_is(span s, const char *text, uint32_t len)
{
    /* s holds a raw msgpack value: a fixstr of text. */
    return s.n == len + 1 && s.p[0] == (0xa0 | len) && memcmp(s.p + 1, text, len) == 0;
}
#define SPAN_IS(s, text) raw_str_is((s), (text), sizeof(text) - 1)

/* Whether the raw `t` value (a str, or absent) is one of the accepted types. */
static int accepted(const am_agg *a, span t)
{
    if (a->accept_count == 0)
        return 1;
    if (t.p == NULL)
        return 0;
    mpr r = {t.p, t.n, 0};
    const uint8_t *s;
    uint32_t n;
    if (!mpr_str(&r, &s, &n))
        return 0;
    for (uint32_t i = 0; i < a->accept_count; i++)
        if (a->accept[i].len == n && memcmp(a->accept[i].name, s, n) == 0)
            return 1;
    return 0;
}

static int put_span(mp_buf *b, uint8_t tag, span s)
{
    uint8_t head[5] = {tag, (uint8_t)(s.n >> 24), (uint8_t)(s.n >> 16), (uint8_t)(s.n >> 8),
                       (uint8_t)s.n};
    int st = mp_raw(b, head, sizeof head);
    return st == AM_OK ? mp_raw(b, s.p, s.n) : st;
}

/* The event unchanged into out (a failure is counted by the sink). AM_OK. */
static int pass_through(am_agg *a, const uint8_t *event, size_t len, am_sink *out)
{
    a->st.passed++;
    mp_buf *m = sink_begin(out);
    if (mp_raw(m, event, len) != AM_OK)
        sink_drop(out);
    else
        sink_commit(out);
    return AM_OK;
}

/* Byte counters add up to UINT64_MAX and stay there: never wrapped round to a small sum. */
static uint64_t sum_bytes(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* One event map at r: AM_OK with the event aggregated or passed, AM_ERR_ARG when malformed
 * (r->pos is then past nothing useful: the batch is abandoned). restoring: the map is an
 * entry as write_entry wrote it (`hits` at least 1, `first` and `last` both ints or both
 * absent/nil), which adds its hits and time span instead of one hit at `ts`. */
static int add_event(am_agg *a, mpr *r, am_sink *out, int restoring)
{
    size_t start = r->pos;
    uint32_t n;
    mpr whole = *r;
    if (!mpr_map(r, &n))
        return AM_ERR_ARG;
    /* Sources write `t` first: an event of a type this aggregator does not take (each audit
     * batch goes to every subscriber of the socket) is skipped without reading its keys. */
    if (n > 0 && a->accept_count > 0) {
        mpr peek = *r;
        const uint8_t *k;
        uint32_t kl;
        size_t vstart;
        if (mpr_str(&peek, &k, &kl) && KEY_EQ(k, kl, "t") && (vstart = peek.pos, mpr_skip(&peek)) &&
            !accepted(a, (span){peek.data + vstart, (uint32_t)(peek.pos - vstart)})) {
            if (!mpr_skip(&whole))
                return AM_ERR_ARG;
            if (restoring)
                a->st.restored++;
            else
                a->st.events_in++;
            a->st.skipped++;
            *r = whole;
            return AM_OK;
        }
    }
    const field_name *names = a->opt.kind == AM_AGG_NETWORK       ? network_fields
                               : a->opt.kind == AM_AGG_FILE_SYSTEM ? file_system_fields
                               : a->opt.kind == AM_AGG_PERIPHERAL  ? peripheral_fields
                                                                   : process_fields;
    fields f;
    memset(&f, 0, sizeof f);
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k;
        uint32_t kl;
        if (!mpr_str(r, &k, &kl))
            return AM_ERR_ARG;
        size_t vstart = r->pos;
        if (KEY_EQ(k, kl, "ts") && mpr_int(r, &f.ts)) {
            f.has_ts = 1;
            continue;
        }
        /* A negative or non-integer rx/tx is not a counter: it stays in the event as it is. */
        if (KEY_EQ(k, kl, "rx") && mpr_uint(r, &f.rx)) {
            f.has_rx = 1;
            continue;
        }
        if (KEY_EQ(k, kl, "tx") && mpr_uint(r, &f.tx)) {
            f.has_tx = 1;
            continue;
        }
        if (restoring && KEY_EQ(k, kl, "hits") && mpr_int(r, &f.hits)) {
            f.has_hits = 1;
            continue;
        }
        if (restoring && KEY_EQ(k, kl, "first") && mpr_int(r, &f.first)) {
            f.has_first = 1;
            continue;
        }
        if (restoring && KEY_EQ(k, kl, "last") && mpr_int(r, &f.last)) {
            f.has_last = 1;
            continue;
        }
        /* Each value within one level less than the bound: what passes here is what a
         * reader of the output can read, the depth counted from the map (the map is read
         * once, not skipped whole first). */
        if (!mpr_skip_within(r, MPR_MAX_DEPTH - 1))
            return AM_ERR_ARG;
        span v = {r->data + vstart, (uint32_t)(r->pos - vstart)};
        if (KEY_EQ(k, kl, "laddr"))
            f.laddr = v;
        if (KEY_EQ(k, kl, "raddr"))
            f.raddr = v;
        if (KEY_EQ(k, kl, "host"))
            f.has_host = 1;
        if (KEY_EQ(k, kl, "lport"))
            f.lport = v;
        else if (KEY_EQ(k, kl, "rport"))
            f.rport = v;
        for (int j = 0; names[j].name != NULL; j++) {
            if (key_is(k, kl, names[j].name, names[j].len)) {
                f.key[j] = v;
                if (KEY_EQ(k, kl, "dir"))
                    f.dir = v;
                break;
            }
        }
    }
    size_t event_len = r->pos - start;
    const uint8_t *event = r->data + start;
    /* What this event adds to an entry: one hit at ts, or a checkpoint entry's hits and span. */
    uint64_t hits = 1;
    int has_span = f.has_ts;
    int64_t span_first = f.ts, span_last = f.ts;
    if (restoring) {
        if (!f.has_hits || f.hits < 1 || f.has_first != f.has_last ||
            (f.has_first && f.first > f.last))
            return AM_ERR_ARG;
        hits = (uint64_t)f.hits;
        has_span = f.has_first;
        span_first = f.first;
        span_last = f.last;
        a->st.restored++;
    } else {
        a->st.events_in++;
    }

    span t = f.key[0];
    if (!accepted(a, t)) {
        a->st.skipped++;
        return AM_OK;
    }
    if (!laddr_passes(a, f.laddr)) {
        a->st.filtered++;
        return AM_OK;
    }
    int wanted = a->opt.kind == AM_AGG_PROCESS   ? SPAN_IS(t, "exec")
                 : a->opt.kind == AM_AGG_NETWORK ? (SPAN_IS(t, "net") || SPAN_IS(t, "conn") ||
                                                    SPAN_IS(t, "dns"))
                 : a->opt.kind == AM_AGG_FILE_SYSTEM ? SPAN_IS(t, "fs")
                 : a->opt.kind == AM_AGG_PERIPHERAL  ? SPAN_IS(t, "periph")
                                                     : 0;
    /* An entry holds its key and event: one that could never fit passes through. */
    if (!wanted || event_len > a->opt.max_bytes / 2)
        return pass_through(a, event, event_len, out);

    /* The key: each field present, tagged with its index; for the network, the service port
     * only (inbound: the local port; outbound: the remote port; else both). */
    mp_buf *kb = &a->scratch;
    kb->len = 0;
    int st = AM_OK;
    for (int j = 0; names[j].name != NULL && st == AM_OK; j++)
        if (f.key[j].p != NULL)
            st = put_span(kb, (uint8_t)j, f.key[j]);
    if (a->opt.kind == AM_AGG_NETWORK) {
        int in = f.dir.p != NULL && SPAN_IS(f.dir, "in");
        int outbound = f.dir.p != NULL && SPAN_IS(f.dir, "out");
        if (st == AM_OK && f.lport.p != NULL && !outbound)
            st = put_span(kb, 100, f.lport);
        if (st == AM_OK && f.rport.p != NULL && !in)
            st = put_span(kb, 101, f.rport);
    }
    if (st != AM_OK || kb->len > a->opt.max_bytes / 2)
        return pass_through(a, event, event_len, out); /* a key larger than the scratch buffer */

    uint32_t pos = am_index_find(&a->index, kb->data, kb->len);
    if (pos != AM_INDEX_NONE) {
        uint32_t ring_slot;
        memcpy(&ring_slot, am_index_at(&a->index, pos), sizeof ring_slot);
        entry *e = &a->ring[ring_slot];
        e->hits += hits;
        a->st.merged++;
        if (has_span) {
            if (!e->has_ts || span_first < e->first_ts)
                e->first_ts = span_first;
            if (!e->has_ts || span_last > e->last_ts)
                e->last_ts = span_last;
            e->has_ts = 1;
        }
        if (a->opt.kind == AM_AGG_NETWORK) {
            if (f.has_rx) { e->rx = sum_bytes(e->rx, f.rx); e->has_rx = 1; }
            if (f.has_tx) { e->tx = sum_bytes(e->tx, f.tx); e->has_tx = 1; }
        }
        return AM_OK;
    }

    size_t need = kb->len + event_len;
    while (a->count > 0 && (a->count == a->opt.cache_size || a->bytes + need > a->opt.max_bytes)) {
        pop_oldest(a, out);
        a->st.evicted++;
    }
    uint8_t *mem = malloc(need);
    uint32_t ring_slot = (a->head + a->count) % a->opt.cache_size;
    /* The index holds cache_size entries, as the ring does: after the evictions it has room. */
    if (mem == NULL || am_index_add(&a->index, kb->data, kb->len, &pos) != AM_INDEX_ADDED) {
        free(mem);
        return pass_through(a, event, event_len, out);
    }
    memcpy(mem, kb->data, kb->len);
    memcpy(mem + kb->len, event, event_len);
    memcpy(am_index_at(&a->index, pos), &ring_slot, sizeof ring_slot);
    entry *e = &a->ring[ring_slot];
    e->index_pos = pos;
    e->key = mem;
    e->key_len = (uint32_t)kb->len;
    e->event_len = (uint32_t)event_len;
    e->hits = hits;
    e->has_ts = (uint8_t)has_span;
    e->first_ts = span_first;
    e->last_ts = span_last;
    e->has_rx = a->opt.kind == AM_AGG_NETWORK && f.has_rx;
    e->has_tx = a->opt.kind == AM_AGG_NETWORK && f.has_tx;
    e->rx = e->has_rx ? f.rx : 0;
    e->tx = e->has_tx ? f.tx : 0;
    add_host(a, e, &f, event);
    a->count++;
    a->bytes += need;
    return AM_OK;
}

int am_agg_use_hosts(am_agg *a, am_dns *d)
{
    if (a == NULL)
        return AM_ERR_ARG;
    a->hosts = d;
    return AM_OK;
}

/* The DNS cache's name for the raw raddr value into the entry, when it has one. The host is
 * not part of the key: it names the address the key already holds. */
static void find_host(am_agg *a, entry *e, const uint8_t *raddr, uint32_t raddr_len)
{
    if (a->hosts == NULL)
        return;
    mpr r = {raddr, raddr_len, 0};
    const uint8_t *s;
    uint32_t n;
    size_t len;
    if (!mpr_str(&r, &s, &n))
        return;
    const char *name = dns_host_lookup(a->hosts, (const char *)s, n, &len);
    if (name == NULL || (e->host = malloc(len)) == NULL)
        return;
    memcpy(e->host, name, len);
    e->host_len = (uint32_t)len;
    a->host_bytes += len;
    a->st.hosts++;
}

/* A new conn / net entry without a host of its own gets the cache's name for its raddr as
 * the cache has it now (the connection's time), else when it leaves (emit). */
static void add_host(am_agg *a, entry *e, const fields *f, const uint8_t *event)
{
    if (f->has_host || f->raddr.p == NULL || SPAN_IS(f->key[0], "dns"))
        return;
    e->wants_host = 1;
    e->raddr_off = (uint32_t)(f->raddr.p - event);
    e->raddr_len = f->raddr.n;
    find_host(a, e, f->raddr.p, f->raddr.n);
}

int am_agg_filter_laddr(am_agg *a, int enabled, const char *list, size_t len)
{
    if (a == NULL || (list == NULL && len > 0) || (enabled != 0 && enabled != 1))
        return AM_ERR_ARG;
    if (!enabled || len == 0) {
        a->laddr_count = 0;
        a->laddr_filter = enabled;
        return AM_OK;
    }
    /* Validate the whole list before touching the filter. */
    uint32_t count = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && list[i] != ',')
            continue;
        size_t n = i - start;
        if (n == 0 || n > MAX_ADDR_CHARS || count == MAX_LADDRS)
            return AM_ERR_ARG;
        count++;
        start = i + 1;
    }
    if (a->laddrs == NULL) {
        a->laddrs = calloc(MAX_LADDRS, sizeof *a->laddrs);
        if (a->laddrs == NULL)
            return AM_ERR_NOMEM;
    }
    count = 0;
    start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && list[i] != ',')
            continue;
        memcpy(a->laddrs[count].text, list + start, i - start);
        a->laddrs[count].len = (uint8_t)(i - start);
        count++;
        start = i + 1;
    }
    a->laddr_count = count;
    a->laddr_filter = 1;
    return AM_OK;
}

/* Whether the raw `laddr` value passes the address filter. */
static int laddr_passes(const am_agg *a, span laddr)
{
    if (!a->laddr_filter || laddr.p == NULL)
        return 1;
    mpr r = {laddr.p, laddr.n, 0};
    const uint8_t *s;
    uint32_t n;
    if (!mpr_str(&r, &s, &n))
        return 0;
    for (uint32_t i = 0; i < a->laddr_count; i++)
        if (a->laddrs[i].len == n && memcmp(a->laddrs[i].text, s, n) == 0)
            return 1;
    return 0;
}

static int add_batch(am_agg *a, const uint8_t *batch, size_t len, uint32_t *next_event,
                     am_sink *out, int restoring)
{
    if (a == NULL || (batch == NULL && len > 0) || next_event == NULL || out == NULL)
        return AM_ERR_ARG;
    mpr r = {batch, len, 0};
    uint32_t count;
    if (!mpr_array(&r, &count)) {
        a->st.malformed++;
        return AM_OK;
    }
    for (uint32_t i = 0; i < count; i++) {
        if (i < *next_event) {
            if (!mpr_skip(&r)) {
                a->st.malformed++;
                *next_event = count;
                return AM_OK;
            }
            continue;
        }
        if (am_sink_full(out)) {
            *next_event = i;
            return AM_ERR_FULL;
        }
        if (add_event(a, &r, out, restoring) != AM_OK) {
            a->st.malformed++;
            *next_event = count;
            return AM_OK;
        }
    }
    *next_event = count;
    return AM_OK;
}

int am_agg_add_batch(am_agg *a, const uint8_t *batch, size_t len, uint32_t *next_event,
                     am_sink *out)
{
    return add_batch(a, batch, len, next_event, out, 0);
}

int am_agg_restore_batch(am_agg *a, const uint8_t *batch, size_t len, uint32_t *next_event,
                         am_sink *out)
{
    return add_batch(a, batch, len, next_event, out, 1);
}

int am_agg_snapshot(const am_agg *a, uint32_t *next_entry, am_sink *out)
{
    if (a == NULL || next_entry == NULL || out == NULL)
        return AM_ERR_ARG;
    for (uint32_t i = *next_entry; i < a->count; i++) {
        if (am_sink_full(out)) {
            *next_entry = i;
            return AM_ERR_FULL;
        }
        write_entry(&a->ring[(a->head + i) % a->opt.cache_size], out, NULL);
    }
    *next_entry = a->count;
    return AM_OK;
}

int am_agg_flush(am_agg *a, am_sink *out)
{
    if (a == NULL || out == NULL)
        return AM_ERR_ARG;
    while (a->count > 0) {
        if (am_sink_full(out))
            return AM_ERR_FULL;
        pop_oldest(a, out);
    }
    return AM_OK;
}

void am_agg_stats(const am_agg *a, struct am_agg_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (a == NULL)
        return;
    *out = a->st;
    out->entries = a->count;
    size_t fixed = sizeof *a + (size_t)a->opt.cache_size * sizeof *a->ring + a->scratch.cap;
    out->memory = fixed + am_index_memory(&a->index) + a->bytes + a->host_bytes;
    out->memory_bound = fixed + am_index_memory_bound(sizeof(uint32_t), a->opt.cache_size) +
                        a->opt.max_bytes + (size_t)a->opt.cache_size * 255;
}
