/* audit.c: the audit parser handle: lines -> records -> open events -> completed events ->
 * an am_sink given by the caller, with the loss counters (docs/audit-parsing.md sections 1, 3 and 4). */
#include <stdlib.h>
#include <string.h>

#include "audit_event.h"
#include "audit_record.h"
#include "core.h"
#include "core_audit_netlink.h"
#include "index.h"
#include "sink.h"

enum {
    NO_SLOT = -1,
    KEEP_SLOT_BYTES = 4096, /* a completed event's buffer is kept for reuse up to this size */
    SERIAL_WINDOW = 4096,
    MAX_TRACKERS = 8,
    MAX_NODE = 255,
    /* Unmarked mode: a drain end completes events only this long after the previous drain end
     * (the agent's drains are a gather, 50 ms at least, apart; a timer's extra drain right
     * after one does not cut short the wait for stragglers). */
    DRAIN_GAP_MS = 40,
    GEN_RING = 64, /* drain ends whose times are kept (older generations are long over) */
};

typedef struct ev_slot {
    uint64_t serial;
    /* first_ts: the first record's time stamp (the event's); last_seen: the stream time when
     * its last record came. A timeout ages an event by when its records came, not by their
     * stamps: a syscall's records carry its entry time, and an accept that blocked for minutes
     * would otherwise time out on its first record, cut off from its SOCKADDR. */
    uint64_t first_ts, last_seen;
    int32_t prev, next; /* creation order */
    uint32_t index_pos; /* where the index holds this slot's number while it is in use */
    uint32_t gen;       /* unmarked mode: the drain generation of its last record */
    int in_use;
    int truncated;
    uint32_t node_len; /* the node's bytes come first in buf */
    size_t kept;       /* fields text + 8 per record kept (what max_event_bytes bounds) */
    uint8_t *buf;
    size_t len, cap;
} ev_slot;

typedef struct serial_tracker {
    int used;
    int started;
    uint32_t node_len;
    char node[MAX_NODE];
    uint64_t base;    /* first serial of the window */
    uint64_t highest;
    uint8_t seen[SERIAL_WINDOW / 8];
} serial_tracker;

struct am_audit {
    struct am_audit_options opt;
    struct am_audit_stats st;
    /* the partial line carried between feed calls */
    char *partial;
    size_t partial_len;
    int partial_skipping; /* the carried line is already too long: drop to its end */
    /* open events */
    ev_slot *slots;
    am_index index; /* (serial, node) -> slot number (an int32_t per open event) */
    int32_t oldest, newest, free_list, last_hit;
    uint32_t open_count;
    size_t pending; /* fields text of all open events */
    uint64_t stream_ms;
    serial_tracker trackers[MAX_TRACKERS];
    am_encoder enc;
    /* Unmarked mode (am_audit_nl_unmarked): the kernel sends neither EOE nor PROCTITLE. */
    int unmarked;
    uint32_t gen;          /* the drain generation records are now given */
    uint64_t gen_end_ms[GEN_RING]; /* when generation g ended: [g % GEN_RING] */
    uint64_t unmarked_completed;
    uint64_t late_records;
    title_cache *titles;
};

void am_audit_default_options(struct am_audit_options *o)
{
    if (o == NULL)
        return;
    o->max_in_flight = 256;
    o->timeout_ms = 2000;
    o->max_line_bytes = 65536;
    o->max_event_bytes = 131072;
    o->max_pending_bytes = 1048576;
    o->batch_bytes = 245760;
}

static int options_valid(const struct am_audit_options *o)
{
    return o->max_in_flight >= 1 && o->max_in_flight <= 65536 && o->max_line_bytes >= 256 &&
           o->max_line_bytes <= (1u << 24) && o->max_event_bytes >= o->max_line_bytes + 8 &&
           o->max_event_bytes <= (1u << 26) && o->max_pending_bytes >= o->max_event_bytes &&
           o->max_pending_bytes <= (1u << 30) && o->batch_bytes >= 4096 &&
           o->batch_bytes <= (1u << 28);
}

/* An open event's key in the index: its serial, then its node's bytes. */
typedef struct ev_key {
    uint8_t bytes[sizeof(uint64_t) + MAX_NODE];
    size_t len;
} ev_key;

static void make_key(ev_key *k, const char *node, size_t node_len, uint64_t serial)
{
    if (node_len > MAX_NODE)
        node_len = MAX_NODE; /* audit_record.c already bounds a node name so */
    memcpy(k->bytes, &serial, sizeof serial);
    if (node_len)
        memcpy(k->bytes + sizeof serial, node, node_len);
    k->len = sizeof serial + node_len;
}

/* Whether the slot an index entry names holds the event of key. */
static int same_event(const void *index_entry, const void *key, size_t len, const void *ctx)
{
    const am_audit *p = ctx;
    int32_t i;
    memcpy(&i, index_entry, sizeof i);
    const ev_slot *s = &p->slots[i];
    uint64_t serial;
    memcpy(&serial, key, sizeof serial);
    size_t node_len = len - sizeof serial;
    return s->serial == serial && s->node_len == node_len &&
           (node_len == 0 || memcmp(s->buf, (const uint8_t *)key + sizeof serial, node_len) == 0);
}

/* An index entry (an open slot's number) moved: the slot learns where it is now. */
static void slot_moved(void *index_entry, uint32_t pos, void *ctx)
{
    ((am_audit *)ctx)->slots[*(const int32_t *)index_entry].index_pos = pos;
}

/* What the parser itself may ever hold with these options (checked by the property tests). */
static size_t memory_bound(const struct am_audit_options *o)
{
    size_t in_flight = o->max_in_flight, pending = o->max_pending_bytes;
    size_t fixed = sizeof(struct am_audit) + o->max_line_bytes + 1 +
                   am_index_memory_bound(sizeof(int32_t), o->max_in_flight) +
                   in_flight * sizeof(ev_slot);
    /* Open events: kept text with doubling slack, plus buffers kept for reuse. */
    size_t events = 2 * pending + in_flight * (2 * MAX_NODE + 512 + KEEP_SLOT_BYTES);
    size_t encoder = (4096 + 256) * sizeof(am_field) + o->max_event_bytes +
                     3 * (size_t)o->batch_bytes;
    return fixed + events + encoder;
}

/* What one record can complete at once, and so append to a sink beyond its max_batches: every
 * open event, whose encoding is at most 11x its kept text (text, fields and process keys, each
 * at most the text; 64 bytes of map overhead per 8-byte record header) plus 1 KiB each. */
static size_t burst_bound(const struct am_audit_options *o)
{
    return 11 * (size_t)o->max_pending_bytes + (size_t)o->max_in_flight * 1024;
}

am_audit *am_audit_new(const struct am_audit_options *opts)
{
    struct am_audit_options o;
    if (opts != NULL)
        o = *opts;
    else
        am_audit_default_options(&o);
    if (!options_valid(&o))
        return NULL;
    am_audit *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->opt = o;
    p->partial = malloc((size_t)o.max_line_bytes + 1);
    p->slots = calloc(o.max_in_flight, sizeof *p->slots);
    if (p->partial == NULL || p->slots == NULL ||
        am_index_init(&p->index, sizeof(int32_t), o.max_in_flight, same_event, slot_moved, p) != AM_OK ||
        encoder_init(&p->enc, o.batch_bytes - 5, o.max_event_bytes) != AM_OK) {
        am_audit_free(p);
        return NULL;
    }
    for (uint32_t i = 0; i < o.max_in_flight; i++)
        p->slots[i].next = i + 1 < o.max_in_flight ? (int32_t)(i + 1) : NO_SLOT;
    p->free_list = 0;
    p->oldest = p->newest = p->last_hit = NO_SLOT;
    p->st.memory_bound = memory_bound(&o);
    return p;
}

void am_audit_free(am_audit *p)
{
    if (p == NULL)
        return;
    if (p->slots != NULL)
        for (uint32_t i = 0; i < p->opt.max_in_flight; i++)
            free(p->slots[i].buf);
    free(p->slots);
    am_index_release(&p->index);
    free(p->titles);
    free(p->partial);
    encoder_release(&p->enc);
    free(p);
}

/* ---- the table of open events ---- */

static int slot_matches(const ev_slot *s, const am_record_head *h)
{
    return s->serial == h->serial && s->node_len == h->node_len &&
           (h->node_len == 0 || memcmp(s->buf, h->node, h->node_len) == 0);
}

static int32_t find_slot(am_audit *p, const am_record_head *h, const ev_key *k)
{
    if (p->last_hit != NO_SLOT && p->slots[p->last_hit].in_use &&
        slot_matches(&p->slots[p->last_hit], h))
        return p->last_hit;
    uint32_t pos = am_index_find(&p->index, k->bytes, k->len);
    if (pos == AM_INDEX_NONE)
        return NO_SLOT;
    memcpy(&p->last_hit, am_index_at(&p->index, pos), sizeof p->last_hit);
    return p->last_hit;
}

/* Slot s opens for key k: into the index (which holds max_in_flight, as the slots do). */
static int table_insert(am_audit *p, int32_t s, const ev_key *k)
{
    uint32_t pos;
    if (am_index_add(&p->index, k->bytes, k->len, &pos) != AM_INDEX_ADDED)
        return AM_ERR_NOMEM;
    memcpy(am_index_at(&p->index, pos), &s, sizeof s);
    p->slots[s].index_pos = pos;
    return AM_OK;
}

/* Slot s completes: out of the index by its position (no second lookup). */
static void table_remove(am_audit *p, int32_t s)
{
    am_index_remove_at(&p->index, p->slots[s].index_pos);
}

static int slot_reserve(ev_slot *s, size_t extra)
{
    if (s->len + extra <= s->cap)
        return AM_OK;
    size_t cap = s->cap ? s->cap : 512;
    while (cap < s->len + extra)
        cap *= 2;
    uint8_t *buf = realloc(s->buf, cap);
    if (buf == NULL)
        return AM_ERR_NOMEM;
    s->buf = buf;
    s->cap = cap;
    return AM_OK;
}

static int32_t open_slot(am_audit *p, const am_record_head *h, const ev_key *k)
{
    int32_t i = p->free_list;
    ev_slot *s = &p->slots[i];
    p->free_list = s->next;
    size_t node_len = h->node_len > MAX_NODE ? MAX_NODE : h->node_len;
    s->len = 0;
    if (slot_reserve(s, node_len + 256) != AM_OK || table_insert(p, i, k) != AM_OK) {
        s->next = p->free_list;
        p->free_list = i;
        return NO_SLOT;
    }
    if (node_len)
        memcpy(s->buf, h->node, node_len);
    s->len = node_len;
    s->node_len = (uint32_t)node_len;
    s->serial = h->serial;
    s->first_ts = h->ts_ms;
    s->last_seen = p->stream_ms;
    s->in_use = 1;
    s->truncated = 0;
    s->kept = 0;
    s->prev = p->newest;
    s->next = NO_SLOT;
    if (p->newest != NO_SLOT)
        p->slots[p->newest].next = i;
    else
        p->oldest = i;
    p->newest = i;
    p->open_count++;
    return i;
}

/* ---- loss accounting ---- */

static serial_tracker *tracker_for(am_audit *p, const char *node, size_t node_len)
{
    for (int i = 0; i < MAX_TRACKERS; i++) {
        serial_tracker *t = &p->trackers[i];
        if (t->used && t->node_len == node_len && memcmp(t->node, node, node_len) == 0)
            return t;
        if (!t->used) {
            t->used = 1;
            t->node_len = (uint32_t)node_len;
            memcpy(t->node, node, node_len);
            return t;
        }
    }
    return NULL;
}

static int bit_get(const serial_tracker *t, uint64_t serial)
{
    uint64_t k = serial % SERIAL_WINDOW;
    return (t->seen[k / 8] >> (k % 8)) & 1;
}

static void bit_set(serial_tracker *t, uint64_t serial, int on)
{
    uint64_t k = serial % SERIAL_WINDOW;
    if (on)
        t->seen[k / 8] |= (uint8_t)(1u << (k % 8));
    else
        t->seen[k / 8] &= (uint8_t)~(1u << (k % 8));
}

/* Counts the unmarked serials in [from, to) of the window as gaps and clears their bits. */
static void count_gaps(am_audit *p, serial_tracker *t, uint64_t from, uint64_t to)
{
    for (uint64_t s = from; s < to; s++) {
        if (!bit_get(t, s))
            p->st.gaps++;
        bit_set(t, s, 0);
    }
}

static void track_serial(am_audit *p, const char *node, size_t node_len, uint64_t serial)
{
    serial_tracker *t = tracker_for(p, node, node_len);
    if (t == NULL)
        return;
    if (!t->started) {
        t->started = 1;
        t->base = serial;
        t->highest = serial;
    }
    if (serial < t->base)
        return;
    if (serial >= t->base + SERIAL_WINDOW) {
        uint64_t new_base = serial - SERIAL_WINDOW + 1;
        uint64_t window_end = t->base + SERIAL_WINDOW;
        if (new_base >= window_end) {
            /* Everything in the old window leaves, and so does everything between. */
            count_gaps(p, t, t->base, window_end);
            p->st.gaps += new_base - window_end;
        } else {
            count_gaps(p, t, t->base, new_base);
        }
        t->base = new_base;
    }
    if (bit_get(t, serial)) {
        p->st.duplicates++;
    } else {
        bit_set(t, serial, 1);
    }
    if (serial > t->highest)
        t->highest = serial;
}

static void final_gaps(am_audit *p)
{
    for (int i = 0; i < MAX_TRACKERS; i++) {
        serial_tracker *t = &p->trackers[i];
        if (!t->used)
            continue;
        /* The highest serial is marked: count up to it, then continue from it, so that a
         * later flush does not count these again (and nothing wraps at 2^64-1). */
        count_gaps(p, t, t->base, t->highest);
        t->base = t->highest;
    }
}

/* ---- completing an event ---- */

static int complete(am_audit *p, am_sink *sink, int32_t i)
{
    ev_slot *s = &p->slots[i];
    table_remove(p, i);
    if (s->prev != NO_SLOT)
        p->slots[s->prev].next = s->next;
    else
        p->oldest = s->next;
    if (s->next != NO_SLOT)
        p->slots[s->next].prev = s->prev;
    else
        p->newest = s->prev;
    if (p->last_hit == i)
        p->last_hit = NO_SLOT;
    p->open_count--;
    p->pending -= s->kept;

    am_event_view ev = {
        .node = s->node_len ? (const char *)s->buf : NULL,
        .node_len = s->node_len,
        .serial = s->serial,
        .ts_ms = s->first_ts,
        .recs = s->buf + s->node_len,
        .recs_len = s->len - s->node_len,
        .truncated = s->truncated,
        .titles = p->titles,
    };
    int cut = 0;
    int st = event_encode(&p->enc, &ev, &cut);
    if (st == AM_OK)
        st = sink_put(sink, p->enc.event.data, p->enc.event.len);
    if (st == AM_OK) {
        p->st.events++;
        if (cut)
            p->st.truncated++;
        uint32_t first = event_first_type(&ev);
        if (!(first >= 1200 && first <= 1299))
            track_serial(p, ev.node ? ev.node : "", ev.node_len, ev.serial);
    }
    s->in_use = 0;
    if (s->cap > KEEP_SLOT_BYTES) {
        free(s->buf);
        s->buf = NULL;
        s->cap = 0;
    }
    s->len = 0;
    s->next = p->free_list;
    p->free_list = i;
    return st;
}

static int complete_oldest(am_audit *p, am_sink *sink)
{
    return p->oldest == NO_SLOT ? AM_OK : complete(p, sink, p->oldest);
}

static int is_single_record_type(uint32_t t)
{
    return (t >= 1100 && t <= 1299) || (t >= 2100 && t <= 2999);
}

/* Unmarked mode: a record of an event already completed (its serial marked by the loss
 * tracker, or older than the tracker's window) arrived after its event was sent. It is counted
 * (late_records) and dropped: opening an event for it would send a second, bogus one. Types
 * that complete alone never reach here with a serial seen (each has its own). */
static int already_completed(const am_audit *p, const am_record_head *h)
{
    if (h->type == AT_EOE || is_single_record_type(h->type))
        return 0;
    size_t node_len = h->node_len > MAX_NODE ? MAX_NODE : h->node_len;
    for (int i = 0; i < MAX_TRACKERS; i++) {
        const serial_tracker *t = &p->trackers[i];
        if (!t->used)
            return 0;
        if (t->node_len != node_len || (node_len && memcmp(t->node, h->node, node_len) != 0))
            continue;
        if (!t->started)
            return 0;
        if (h->serial < t->base)
            return 1;
        return h->serial < t->base + SERIAL_WINDOW && bit_get(t, h->serial);
    }
    return 0;
}

static int handle_record(am_audit *p, am_sink *sink, const am_record_head *h)
{
    int st = AM_OK;
    p->st.records++;
    if (h->ts_ms > p->stream_ms)
        p->stream_ms = h->ts_ms;
    ev_key k;
    make_key(&k, h->node, h->node_len, h->serial);
    int32_t i = find_slot(p, h, &k);
    if (i == NO_SLOT && p->unmarked && already_completed(p, h)) {
        p->late_records++;
        return AM_OK;
    }
    if (h->type == AT_EOE) {
        if (i != NO_SLOT)
            st = complete(p, sink, i);
    } else {
        if (i == NO_SLOT) {
            if (p->open_count >= p->opt.max_in_flight) {
                p->st.forced++;
                st = complete_oldest(p, sink);
                if (st != AM_OK)
                    return st;
            }
            i = open_slot(p, h, &k);
            if (i == NO_SLOT)
                return AM_ERR_NOMEM;
        }
        ev_slot *s = &p->slots[i];
        /* What a record costs: its fields text and its header, so that even empty records
         * are bounded. */
        size_t n = h->fields_len + sizeof(rec_head);
        if (s->kept + n > p->opt.max_event_bytes) {
            s->truncated = 1;
        } else {
            while (p->pending + n > p->opt.max_pending_bytes && p->oldest != NO_SLOT) {
                int32_t victim = p->oldest;
                p->st.forced++;
                st = complete(p, sink, victim);
                if (st != AM_OK)
                    return st;
                if (victim == i) {
                    i = open_slot(p, h, &k);
                    if (i == NO_SLOT)
                        return AM_ERR_NOMEM;
                }
            }
            s = &p->slots[i];
            if (slot_reserve(s, n) != AM_OK)
                return AM_ERR_NOMEM;
            rec_head rh = {.type = h->type, .len = (uint32_t)h->fields_len};
            memcpy(s->buf + s->len, &rh, sizeof rh);
            if (h->fields_len)
                memcpy(s->buf + s->len + sizeof rh, h->fields, h->fields_len);
            s->len += n;
            s->kept += n;
            p->pending += n;
        }
        s->last_seen = p->stream_ms;
        s->gen = p->gen;
        if (h->type == AT_PROCTITLE || is_single_record_type(h->type))
            st = complete(p, sink, i);
    }
    /* Unmarked mode has no timeouts: drain ends complete every event, and a record's time
     * stamp is its syscall's entry (a blocking accept's is seconds old when it comes). */
    while (st == AM_OK && !p->unmarked && p->oldest != NO_SLOT &&
           p->stream_ms - p->slots[p->oldest].last_seen > p->opt.timeout_ms) {
        p->st.timeouts++;
        st = complete_oldest(p, sink);
    }
    return st;
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t')
            return 0;
    return 1;
}

static int handle_line(am_audit *p, am_sink *sink, const char *line, size_t n)
{
    p->st.lines++;
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (n > p->opt.max_line_bytes) {
        p->st.long_lines++;
        return AM_OK;
    }
    if (blank(line, n))
        return AM_OK;
    am_record_head h;
    if (record_parse_line(line, n, &h) != 0) {
        p->st.malformed++;
        return AM_OK;
    }
    return handle_record(p, sink, &h);
}

int am_audit_feed(am_audit *p, am_sink *sink, const char *data, size_t len, size_t *consumed)
{
    if (consumed != NULL)
        *consumed = 0;
    if (p == NULL || consumed == NULL || (data == NULL && len > 0))
        return AM_ERR_ARG;
    size_t i = 0;
    int st = AM_OK;
    while (i < len) {
        if (am_sink_full(sink)) {
            st = AM_ERR_FULL;
            break;
        }
        const char *nl = memchr(data + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t piece = end - i;
        if (nl == NULL) {
            /* Carry the unterminated tail (room for a line and its \r); a longer one is
             * skipped up to its newline. */
            if (!p->partial_skipping) {
                if (p->partial_len + piece > (size_t)p->opt.max_line_bytes + 1) {
                    p->partial_skipping = 1;
                    p->partial_len = 0;
                } else {
                    memcpy(p->partial + p->partial_len, data + i, piece);
                    p->partial_len += piece;
                }
            }
            i = len;
            break;
        }
        if (p->partial_skipping || p->partial_len + piece > (size_t)p->opt.max_line_bytes + 1) {
            p->st.lines++;
            p->st.long_lines++;
        } else if (p->partial_len > 0) {
            memcpy(p->partial + p->partial_len, data + i, piece);
            st = handle_line(p, sink, p->partial, p->partial_len + piece);
        } else {
            st = handle_line(p, sink, data + i, piece);
        }
        p->partial_skipping = 0;
        p->partial_len = 0;
        i = end + 1;
        if (st != AM_OK)
            break;
    }
    *consumed = i;
    p->st.bytes += i;
    return st;
}

int am_audit_feed_record(am_audit *p, am_sink *sink, uint16_t type, const char *payload,
                         size_t len)
{
    if (p == NULL || (payload == NULL && len > 0))
        return AM_ERR_ARG;
    if (am_sink_full(sink))
        return AM_ERR_FULL;
    p->st.bytes += len;
    p->st.lines++;
    if (len > p->opt.max_line_bytes) {
        p->st.long_lines++;
        return AM_OK;
    }
    am_record_head h;
    if (record_parse_payload(type, payload, len, &h) != 0) {
        p->st.malformed++;
        return AM_OK;
    }
    return handle_record(p, sink, &h);
}

int am_audit_expire(am_audit *p, am_sink *sink, uint64_t now_ms)
{
    if (p == NULL || sink == NULL)
        return AM_ERR_ARG;
    if (p->unmarked)
        return AM_OK; /* drain ends complete events (see handle_record) */
    int32_t i = p->oldest;
    while (i != NO_SLOT) {
        int32_t next = p->slots[i].next;
        uint64_t seen = p->slots[i].last_seen;
        if (now_ms > seen && now_ms - seen > p->opt.timeout_ms) {
            if (am_sink_full(sink))
                return AM_ERR_FULL;
            p->st.timeouts++;
            int st = complete(p, sink, i);
            if (st != AM_OK)
                return st;
        }
        i = next;
    }
    return AM_OK;
}

int am_audit_flush(am_audit *p, am_sink *sink)
{
    if (p == NULL || sink == NULL)
        return AM_ERR_ARG;
    if (p->partial_skipping) {
        p->st.lines++;
        p->st.long_lines++;
        p->partial_skipping = 0;
        p->partial_len = 0;
    } else if (p->partial_len > 0) {
        size_t n = p->partial_len;
        p->partial_len = 0;
        int st = handle_line(p, sink, p->partial, n);
        if (st != AM_OK)
            return st;
    }
    while (p->oldest != NO_SLOT) {
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        int st = complete_oldest(p, sink);
        if (st != AM_OK)
            return st;
    }
    final_gaps(p);
    return am_sink_seal(sink);
}

void am_audit_stats(const am_audit *p, const am_sink *sink, struct am_audit_stats *out)
{
    if (p == NULL || out == NULL)
        return;
    *out = p->st;
    size_t mem = sizeof *p + p->opt.max_line_bytes + 1 + am_index_memory(&p->index) +
                 p->opt.max_in_flight * sizeof *p->slots;
    for (uint32_t i = 0; i < p->opt.max_in_flight; i++)
        mem += p->slots[i].cap;
    mem += encoder_memory(&p->enc);
    if (p->titles != NULL)
        mem += sizeof *p->titles;
    out->memory = mem;
    if (sink != NULL) {
        struct am_sink_stats ss;
        am_sink_stats(sink, &ss);
        out->memory += ss.memory;
        out->memory_bound += sink_memory_bound(&sink->opt, burst_bound(&p->opt),
                                               p->opt.max_in_flight);
    }
}

/* ---- unmarked mode: no EOE, no PROCTITLE (the netlink owner's exclusions) ---- */

int am_audit_nl_unmarked(am_audit *p, uint32_t on)
{
    if (p == NULL)
        return AM_ERR_ARG;
    if (on && p->titles == NULL) {
        p->titles = calloc(1, sizeof *p->titles);
        if (p->titles == NULL)
            return AM_ERR_NOMEM;
        p->titles->read_proc = 1;
        p->st.memory_bound += sizeof *p->titles;
    }
    p->unmarked = on != 0;
    return AM_OK;
}

static int drain_end(am_audit *p, am_sink *sink, uint64_t now_ms)
{
    if (!p->unmarked)
        return AM_OK;
    /* An event whose last record came in an earlier drain, which ended DRAIN_GAP_MS ago or
     * more, is complete: the kernel queues one syscall's records back to back, so what is
     * still missing of it after that drain, a gather and this drain is not coming (or comes
     * late, and is counted). Generations are told apart by number, never by the records'
     * time stamps. */
    int32_t i = p->oldest;
    while (i != NO_SLOT) {
        int32_t next = p->slots[i].next;
        uint32_t g = p->slots[i].gen;
        if (g != p->gen && (p->gen - g >= GEN_RING ||
                            now_ms >= p->gen_end_ms[g % GEN_RING] + DRAIN_GAP_MS)) {
            p->unmarked_completed++;
            int st = complete(p, sink, i);
            if (st != AM_OK)
                return st;
        }
        i = next;
    }
    p->gen_end_ms[p->gen % GEN_RING] = now_ms;
    p->gen++;
    return AM_OK;
}

int am_audit_nl_drain_end(am_audit *p, am_sink *sink, uint64_t now_ms, struct am_anl_stats *st)
{
    if (p == NULL || sink == NULL)
        return AM_ERR_ARG;
    int s = drain_end(p, sink, now_ms);
    if (st != NULL)
        audit_nl_counters(p, st);
    return s;
}

void audit_nl_counters(const am_audit *p, struct am_anl_stats *st)
{
    st->unmarked_completed = p->unmarked_completed;
    st->late_records = p->late_records;
    if (p->titles != NULL) {
        st->titles_learnt = p->titles->learnt;
        st->titles_cached = p->titles->cached;
        st->titles_proc = p->titles->proc;
        st->titles_missing = p->titles->missing;
    }
}
