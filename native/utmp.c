/* utmp.c: utmp / wtmp / btmp records -> login events (core_utmp.h; docs/sources/utmp.md).
 *
 * Records are decoded from glibc's byte offsets, never through the host's struct utmp, so a
 * build for one arch reads the files of another. Two layouts exist in the wild: 384 bytes
 * (ut_session and ut_tv as 32-bit words: x86_64, i386, armhf) and 400 bytes (64-bit words:
 * glibc aarch64, whose __WORDSIZE_TIME64_COMPAT32 is 0, and 32-bit programs built with
 * _TIME_BITS=64 against glibc < 2.40). Both are little-endian on the devices we serve. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "core_utmp.h"
#include "ip_text.h"
#include "sink.h"

/* ---- the record ---- */

enum {
    UT_TYPE = 0,       /* int16, then 2 bytes of padding */
    UT_PID = 4,        /* int32 */
    UT_LINE = 8,
    UT_LINE_LEN = 32,
    UT_ID = 40,
    UT_ID_LEN = 4,
    UT_USER = 44,
    UT_USER_LEN = 32,
    UT_HOST = 76,
    UT_HOST_LEN = 256,
    UT_TERM = 332,     /* int16 e_termination */
    UT_EXIT = 334,     /* int16 e_exit */
    UT_SESSION = 336   /* int32 (384) or int64 (400) */
};

/* ut_type values (glibc bits/utmp.h). */
enum {
    T_EMPTY = 0,
    T_RUN_LVL = 1,
    T_BOOT_TIME = 2,
    T_NEW_TIME = 3,
    T_OLD_TIME = 4,
    T_INIT_PROCESS = 5,
    T_LOGIN_PROCESS = 6,
    T_USER_PROCESS = 7,
    T_DEAD_PROCESS = 8,
    T_ACCOUNTING = 9
};

typedef struct layout_def {
    size_t size;
    size_t sec_off;
    size_t usec_off;
    size_t addr_off;
    int wide; /* ut_session, tv_sec, tv_usec are 64-bit */
} layout_def;

static const layout_def LAYOUT_384 = {384, 340, 344, 348, 0};
static const layout_def LAYOUT_400 = {400, 344, 352, 360, 1};

/* Auto-detection looks at this many records at most before it falls back to 384. */
enum { DETECT_RECORDS = 8, DETECT_BYTES = DETECT_RECORDS * 400 };

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int16_t rd_s16(const uint8_t *p)
{
    return (int16_t)(uint16_t)((unsigned)p[0] | (unsigned)p[1] << 8);
}

static int32_t rd_s32(const uint8_t *p)
{
    return (int32_t)rd_u32(p);
}

static int64_t rd_s64(const uint8_t *p)
{
    return (int64_t)((uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32);
}

static const layout_def *layout_of(uint32_t size)
{
    return size == 400 ? &LAYOUT_400 : &LAYOUT_384;
}

/* A field's text: NUL-bounded within the field, never past it. */
static size_t field_len(const uint8_t *r, size_t off, size_t cap)
{
    const void *nul = memchr(r + off, 0, cap);
    return nul == NULL ? cap : (size_t)((const uint8_t *)nul - (r + off));
}

/* Does r read as a plausible record of this layout: a known non-EMPTY type and a time whose
 * words sit where the layout puts them (the two layouts disagree on offsets 340..360). */
static int plausible_384(const uint8_t *r)
{
    int16_t type = rd_s16(r + UT_TYPE);
    return type >= T_RUN_LVL && type <= T_ACCOUNTING && rd_u32(r + 340) != 0 &&
           rd_u32(r + 344) < 1000000u;
}

static int plausible_400(const uint8_t *r)
{
    int16_t type = rd_s16(r + UT_TYPE);
    return type >= T_RUN_LVL && type <= T_ACCOUNTING && rd_u32(r + 340) == 0 &&
           rd_u32(r + 344) != 0 && rd_u32(r + 348) == 0 && rd_u32(r + 356) == 0 &&
           rd_u32(r + 352) < 1000000u;
}

/* The layout of data (the start of a file of `total` bytes), or 0 while it cannot tell. */
static uint32_t detect_layout(const uint8_t *data, size_t len, uint64_t total)
{
    for (size_t i = 0; i < DETECT_RECORDS; i++) {
        int can384 = (i + 1) * 384 <= len, can400 = (i + 1) * 400 <= len;
        if (can384 && plausible_384(data + i * 384))
            return 384;
        if (can400 && plausible_400(data + i * 400))
            return 400;
        if (!can384)
            break;
    }
    /* The records said nothing (EMPTY, zero times): the size may. */
    if (total >= 384 && total % 384 == 0 && total % 400 != 0)
        return 384;
    if (total >= 400 && total % 400 == 0 && total % 384 != 0)
        return 400;
    if (len >= DETECT_BYTES)
        return 384;
    return 0;
}

/* ---- the reader ---- */

/* A login remembered until its logout: keyed by tty (ut_line), else by ut_id. */
typedef struct login_slot {
    uint64_t ts_ms;
    uint64_t age;
    uint8_t line[UT_LINE_LEN];
    uint8_t id[UT_ID_LEN];
    uint8_t user[UT_USER_LEN];
} login_slot;

struct am_utmp {
    int kind;
    struct am_utmp_options opt;
    char *path; /* NULL: a reader fed by am_utmp_feed */
    int fd;
    uint64_t dev, ino, offset, size;
    int old_fd; /* the rotated-away file, read to its end before fd */
    uint64_t old_offset;
    int restore_pending;
    struct am_utmp_state restore;
    uint32_t rs; /* record size in use, 0 undecided */
    uint8_t *buf;
    size_t buf_cap;
    login_slot *slots;
    uint32_t *hashes; /* hashes[i]: slot i's key hash, 0 when the slot is free (scanned fast) */
    uint32_t slots_hw; /* slots at and past this index have been free since the last boot */
    uint64_t clock;
    int snap_active;
    uint64_t snap_offset;
    struct am_utmp_stats st;
};

void am_utmp_default_options(struct am_utmp_options *out)
{
    if (out == NULL)
        return;
    out->layout = AM_UTMP_LAYOUT_AUTO;
    out->max_records = 4096;
    out->chunk_records = 64;
    out->max_sessions = 256;
}

static am_utmp *reader_new(const char *path, int kind, const struct am_utmp_options *opts)
{
    struct am_utmp_options o;
    am_utmp_default_options(&o);
    if (opts != NULL)
        o = *opts;
    if (kind < AM_UTMP_WTMP || kind > AM_UTMP_UTMP)
        return NULL;
    if (o.layout != AM_UTMP_LAYOUT_AUTO && o.layout != AM_UTMP_LAYOUT_384 &&
        o.layout != AM_UTMP_LAYOUT_400)
        return NULL;
    if (o.max_records < 1 || o.max_records > (1u << 24) || o.chunk_records < 1 ||
        o.chunk_records > 1024 || o.max_sessions < 1 || o.max_sessions > 65536)
        return NULL;
    am_utmp *u = calloc(1, sizeof *u);
    if (u == NULL)
        return NULL;
    u->kind = kind;
    u->opt = o;
    u->fd = -1;
    u->old_fd = -1;
    u->rs = o.layout;
    u->buf_cap = (size_t)o.chunk_records * 400;
    if (u->buf_cap < DETECT_BYTES)
        u->buf_cap = DETECT_BYTES;
    u->buf = malloc(u->buf_cap);
    u->slots = calloc(o.max_sessions, sizeof *u->slots);
    u->hashes = calloc(o.max_sessions, sizeof *u->hashes);
    if (path != NULL)
        u->path = strdup(path);
    if (u->buf == NULL || u->slots == NULL || u->hashes == NULL ||
        (path != NULL && u->path == NULL)) {
        am_utmp_close(u);
        return NULL;
    }
    return u;
}

am_utmp *am_utmp_open(const char *path, int kind, const struct am_utmp_options *opts)
{
    if (path == NULL || path[0] == '\0')
        return NULL;
    return reader_new(path, kind, opts);
}

am_utmp *am_utmp_new(int kind, const struct am_utmp_options *opts)
{
    return reader_new(NULL, kind, opts);
}

void am_utmp_close(am_utmp *u)
{
    if (u == NULL)
        return;
    if (u->fd >= 0)
        close(u->fd);
    if (u->old_fd >= 0)
        close(u->old_fd);
    free(u->path);
    free(u->buf);
    free(u->slots);
    free(u->hashes);
    free(u);
}

/* ---- remembered logins ---- */

static void key_copy(uint8_t *dst, const uint8_t *r, size_t off, size_t cap)
{
    size_t n = field_len(r, off, cap);
    memcpy(dst, r + off, n);
    memset(dst + n, 0, cap - n);
}

/* The key of a login: its tty, else (no tty) its ut_id, told apart by a leading byte. */
static uint32_t key_hash(const uint8_t *line, const uint8_t *id)
{
    static const uint8_t none[UT_LINE_LEN];
    int by_line = memcmp(line, none, UT_LINE_LEN) != 0;
    if (!by_line && memcmp(id, none, UT_ID_LEN) == 0)
        return 0;
    const uint8_t *k = by_line ? line : id;
    size_t n = by_line ? UT_LINE_LEN : UT_ID_LEN;
    uint32_t h = by_line ? 2166136261u : 2166136261u ^ 0x5bd1e995u; /* FNV-1a */
    for (size_t i = 0; i < n && k[i] != 0; i++)
        h = (h ^ k[i]) * 16777619u;
    return h == 0 ? 1 : h;
}

static login_slot *slot_find(am_utmp *u, const uint8_t *line, const uint8_t *id, uint32_t h)
{
    static const uint8_t none[UT_LINE_LEN];
    if (h == 0)
        return NULL;
    int by_line = memcmp(line, none, UT_LINE_LEN) != 0;
    for (uint32_t i = 0; i < u->slots_hw; i++) {
        if (u->hashes[i] != h)
            continue;
        login_slot *s = &u->slots[i];
        if (by_line ? memcmp(s->line, line, UT_LINE_LEN) == 0
                    : memcmp(s->line, none, UT_LINE_LEN) == 0 &&
                          memcmp(s->id, id, UT_ID_LEN) == 0)
            return s;
    }
    return NULL;
}

static void remember_login(am_utmp *u, const uint8_t *r, uint64_t ts_ms)
{
    uint8_t line[UT_LINE_LEN], id[UT_ID_LEN];
    key_copy(line, r, UT_LINE, UT_LINE_LEN);
    key_copy(id, r, UT_ID, UT_ID_LEN);
    uint32_t h = key_hash(line, id);
    if (h == 0)
        return; /* nothing to match a logout by */
    login_slot *s = slot_find(u, line, id, h);
    if (s == NULL) {
        for (uint32_t i = 0; i < u->slots_hw && s == NULL; i++)
            if (u->hashes[i] == 0)
                s = &u->slots[i];
        if (s == NULL && u->slots_hw < u->opt.max_sessions)
            s = &u->slots[u->slots_hw++];
        if (s == NULL) {
            login_slot *oldest = &u->slots[0];
            for (uint32_t i = 1; i < u->opt.max_sessions; i++)
                if (u->slots[i].age < oldest->age)
                    oldest = &u->slots[i];
            s = oldest;
            u->st.evicted++;
        }
    }
    s->age = ++u->clock;
    s->ts_ms = ts_ms;
    memcpy(s->line, line, UT_LINE_LEN);
    memcpy(s->id, id, UT_ID_LEN);
    key_copy(s->user, r, UT_USER, UT_USER_LEN);
    u->hashes[s - u->slots] = h;
}

static void forget(am_utmp *u, login_slot *s)
{
    u->hashes[s - u->slots] = 0;
    memset(s, 0, sizeof *s);
}

static void forget_all(am_utmp *u)
{
    memset(u->slots, 0, (size_t)u->opt.max_sessions * sizeof *u->slots);
    memset(u->hashes, 0, (size_t)u->opt.max_sessions * sizeof *u->hashes);
    u->slots_hw = 0;
}

/* ---- encoding ---- */

typedef struct enc {
    mp_buf *b;
    uint32_t n;
    int err;
} enc;

static void key_n(enc *e, const char *k, size_t n)
{
    if (e->err == AM_OK)
        e->err = mp_str(e->b, k, n);
}

static void put_str_n(enc *e, const char *k, size_t kn, const char *v, size_t vn)
{
    key_n(e, k, kn);
    if (e->err == AM_OK)
        e->err = mp_str(e->b, v, vn);
    e->n++;
}

static void put_int_n(enc *e, const char *k, size_t kn, int64_t v)
{
    key_n(e, k, kn);
    if (e->err == AM_OK)
        e->err = mp_int(e->b, v);
    e->n++;
}

static void put_uint_n(enc *e, const char *k, size_t kn, uint64_t v)
{
    key_n(e, k, kn);
    if (e->err == AM_OK)
        e->err = mp_uint(e->b, v);
    e->n++;
}

/* A text field of the record, when it is not empty. */
static void put_field_n(enc *e, const char *k, size_t kn, const uint8_t *r, size_t off,
                        size_t cap)
{
    size_t n = field_len(r, off, cap);
    if (n == 0)
        return;
    key_n(e, k, kn);
    if (e->err == AM_OK)
        e->err = mp_text(e->b, (const char *)r + off, n);
    e->n++;
}

/* Keys are string literals: their lengths are known when compiling. */
#define put_str(e, k, v, vn) put_str_n((e), (k), sizeof(k) - 1, (v), (vn))
#define put_int(e, k, v) put_int_n((e), (k), sizeof(k) - 1, (v))
#define put_uint(e, k, v) put_uint_n((e), (k), sizeof(k) - 1, (v))
#define put_field(e, k, r, off, cap) put_field_n((e), (k), sizeof(k) - 1, (r), (off), (cap))
#define put_lit(e, k, lit) put_str((e), (k), (lit), sizeof(lit) - 1)

static void put_addr(enc *e, const uint8_t *r, const layout_def *L)
{
    const uint8_t *a = r + L->addr_off;
    static const uint8_t zero[16];
    if (memcmp(a, zero, 16) == 0)
        return;
    char text[IP_TEXT_MAX];
    /* IPv4 is the first word alone (glibc: ut_addr == ut_addr_v6[0]), in network order. */
    int n = am_ip_text(memcmp(a + 4, zero, 12) == 0 ? 4 : 6, a, text, sizeof text);
    if (n > 0)
        put_str(e, "addr", text, (size_t)n);
}

static void put_level_n(enc *e, const char *k, size_t kn, unsigned c)
{
    if (c > 0x20 && c < 0x7f) {
        char s[1] = {(char)c};
        put_str_n(e, k, kn, s, 1);
    }
}

#define put_level(e, k, c) put_level_n((e), (k), sizeof(k) - 1, (c))

/* The record's time in ms; 0 when it cannot be a time (the record is malformed). */
static int record_time(const layout_def *L, const uint8_t *r, uint64_t *ts_ms)
{
    int64_t sec, usec;
    if (L->wide) {
        sec = rd_s64(r + L->sec_off);
        usec = rd_s64(r + L->usec_off);
        if (sec < 0 || sec > (INT64_C(1) << 40))
            return 0;
    } else {
        /* glibc >= 2.40 declares tv_sec unsigned (valid to 2106); the bytes are the same. */
        sec = (int64_t)rd_u32(r + L->sec_off);
        usec = rd_s32(r + L->usec_off);
    }
    /* An impossible microseconds word is ignored, not trusted. */
    *ts_ms = (uint64_t)sec * 1000u + (usec >= 0 && usec < 1000000 ? (uint64_t)usec / 1000u : 0);
    return 1;
}

enum rec_mode { MODE_STREAM, MODE_SNAPSHOT };

/* One record -> at most one event. The caller has checked that the sink is not full. */
static void decode_record(am_utmp *u, const uint8_t *r, am_sink *sink, enum rec_mode mode,
                          uint32_t *events)
{
    const layout_def *L = layout_of(u->rs);
    int16_t type = rd_s16(r + UT_TYPE);
    uint64_t ts;
    u->st.records++;
    if (type < T_EMPTY || type > T_ACCOUNTING || !record_time(L, r, &ts)) {
        u->st.malformed++;
        return;
    }
    const char *op = NULL;
    int person = 0; /* a login-like record: user, tty, host... */
    if (mode == MODE_SNAPSHOT) {
        if (type != T_USER_PROCESS) {
            u->st.skipped++;
            return;
        }
        op = "active";
        person = 1;
    } else if (u->kind == AM_UTMP_BTMP) {
        /* lastb: every btmp record is a failed login, whatever its type says. */
        if (type != T_EMPTY) {
            op = "failed";
            person = 1;
        }
    } else {
        switch (type) {
        case T_USER_PROCESS: op = "login"; person = 1; break;
        case T_DEAD_PROCESS: op = "logout"; person = 1; break;
        case T_BOOT_TIME: op = "boot"; break;
        case T_NEW_TIME: op = "time_new"; break;
        case T_OLD_TIME: op = "time_old"; break;
        case T_RUN_LVL:
            op = field_len(r, UT_USER, UT_USER_LEN) == 8 &&
                         memcmp(r + UT_USER, "shutdown", 8) == 0
                     ? "shutdown"
                     : "runlevel";
            break;
        default: break; /* EMPTY, INIT_PROCESS, LOGIN_PROCESS (getty), ACCOUNTING */
        }
    }
    if (op == NULL) {
        u->st.skipped++;
        return;
    }

    login_slot *matched = NULL;
    if (mode == MODE_STREAM && u->kind != AM_UTMP_BTMP) {
        if (type == T_DEAD_PROCESS) {
            uint8_t line[UT_LINE_LEN], id[UT_ID_LEN];
            key_copy(line, r, UT_LINE, UT_LINE_LEN);
            key_copy(id, r, UT_ID, UT_ID_LEN);
            matched = slot_find(u, line, id, key_hash(line, id));
            if (matched == NULL)
                u->st.unmatched++;
        } else if (type == T_BOOT_TIME) {
            forget_all(u); /* sessions do not outlive a boot */
        }
    }

    enc e = {sink_begin(sink), 0, AM_OK};
    size_t header = e.b->len;
    e.err = mp_map32(e.b, 0);
    put_lit(&e, "t", "login");
    put_lit(&e, "src", "utmp");
    put_str(&e, "op", op, strlen(op));
    put_uint(&e, "ts", ts);
    if (person) {
        if (field_len(r, UT_USER, UT_USER_LEN) > 0)
            put_field(&e, "user", r, UT_USER, UT_USER_LEN);
        else if (matched != NULL)
            put_field(&e, "user", matched->user, 0, UT_USER_LEN);
        put_field(&e, "tty", r, UT_LINE, UT_LINE_LEN);
        put_field(&e, "id", r, UT_ID, UT_ID_LEN);
        put_field(&e, "host", r, UT_HOST, UT_HOST_LEN);
        put_addr(&e, r, L);
        int32_t pid = rd_s32(r + UT_PID);
        if (pid != 0)
            put_int(&e, "pid", pid);
        int64_t session = L->wide ? rd_s64(r + UT_SESSION) : rd_s32(r + UT_SESSION);
        if (session != 0)
            put_int(&e, "session", session);
        if (type == T_DEAD_PROCESS && mode == MODE_STREAM && u->kind != AM_UTMP_BTMP) {
            put_int(&e, "exit", rd_s16(r + UT_EXIT));
            put_int(&e, "term", rd_s16(r + UT_TERM));
            if (matched != NULL && ts >= matched->ts_ms)
                put_uint(&e, "dur", ts - matched->ts_ms);
        }
    } else {
        /* boot, shutdown, runlevel: ut_host holds the kernel release. */
        put_field(&e, "kernel", r, UT_HOST, UT_HOST_LEN);
        if (type == T_RUN_LVL) {
            uint32_t pid = rd_u32(r + UT_PID);
            put_level(&e, "level", pid & 0xff);
            put_level(&e, "prev", (pid >> 8) & 0xff);
        }
    }
    if (e.err == AM_OK)
        mp_patch_u32(e.b, header, e.n);

    if (matched != NULL)
        forget(u, matched);
    if (mode == MODE_STREAM && type == T_USER_PROCESS && u->kind != AM_UTMP_BTMP)
        remember_login(u, r, ts);

    if (e.err != AM_OK) {
        sink_drop(sink);
        u->st.dropped++;
        return;
    }
    if (sink_commit(sink) != AM_OK) {
        u->st.dropped++;
        return;
    }
    u->st.events++;
    (*events)++;
}

/* ---- records from a buffer ---- */

/* Decodes whole records of data[0..len) while the budget and the sink allow. */
static int decode_buffer(am_utmp *u, const uint8_t *data, size_t len, am_sink *sink,
                         enum rec_mode mode, uint32_t *budget, size_t *used, uint32_t *events)
{
    size_t rs = u->rs;
    *used = 0;
    while (len - *used >= rs) {
        if (*budget == 0)
            return AM_ERR_LIMIT;
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        decode_record(u, data + *used, sink, mode, events);
        *used += rs;
        (*budget)--;
    }
    return AM_OK;
}

int am_utmp_feed(am_utmp *u, const uint8_t *data, size_t len, am_sink *sink, size_t *consumed,
                 uint32_t *events)
{
    uint32_t ev = 0;
    size_t used = 0;
    int st = AM_OK;
    if (consumed != NULL)
        *consumed = 0;
    if (events != NULL)
        *events = 0;
    if (u == NULL || sink == NULL || (data == NULL && len > 0))
        return AM_ERR_ARG;
    if (u->rs == 0)
        u->rs = detect_layout(data, len, len);
    if (u->rs != 0) {
        uint32_t budget = u->opt.max_records;
        st = decode_buffer(u, data, len, sink, MODE_STREAM, &budget, &used, &ev);
    }
    if (consumed != NULL)
        *consumed = used;
    if (events != NULL)
        *events = ev;
    return st;
}

/* ---- records from a file ---- */

/* Reads up to want bytes at off; fewer only at the end of the file. -1 on an error. */
static ssize_t pread_all(int fd, uint8_t *buf, size_t want, uint64_t off)
{
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, (off_t)(off + got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

/* Decides the layout from the start of the file held by fd; 0 while it cannot tell. */
static uint32_t decide_layout(am_utmp *u, int fd, uint64_t size)
{
    if (u->rs != 0)
        return u->rs;
    ssize_t got = pread_all(fd, u->buf, DETECT_BYTES, 0);
    if (got < 0) {
        u->st.io_errors++;
        return 0;
    }
    u->rs = detect_layout(u->buf, (size_t)got, size);
    return u->rs;
}

/* Reads fd's whole records from *offset on. AM_OK at the end of the file (*tail: bytes of a
 * partial record left there), else AM_ERR_LIMIT / AM_ERR_FULL as am_utmp_read. */
static int drain_fd(am_utmp *u, int fd, uint64_t *offset, am_sink *sink, enum rec_mode mode,
                    uint32_t *budget, uint32_t *events, uint64_t *tail, uint64_t *size_out)
{
    *tail = 0;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        u->st.io_errors++;
        return AM_OK;
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size_out != NULL)
        *size_out = size;
    if (size < *offset) {
        /* Truncated (emptied by logrotate's copytruncate, or cut by hand): start over. */
        u->st.truncations++;
        *offset = 0;
    }
    if (size == *offset)
        return AM_OK;
    if (decide_layout(u, fd, size) == 0) {
        *tail = size - *offset;
        return AM_OK; /* too little to tell the layout yet: wait for more */
    }
    size_t rs = u->rs;
    size_t chunk = (size_t)u->opt.chunk_records * rs;
    for (;;) {
        if (*budget == 0)
            return AM_ERR_LIMIT;
        if (am_sink_full(sink))
            return AM_ERR_FULL;
        size_t want = chunk;
        if ((uint64_t)*budget * rs < want)
            want = (size_t)*budget * rs;
        ssize_t got = pread_all(fd, u->buf, want, *offset);
        if (got < 0) {
            u->st.io_errors++;
            return AM_OK;
        }
        size_t used = 0;
        int st = decode_buffer(u, u->buf, (size_t)got, sink, mode, budget, &used, events);
        *offset += used;
        if (st != AM_OK)
            return st;
        if ((size_t)got < want) {
            *tail = (size_t)got - used;
            return AM_OK;
        }
    }
}

static void apply_restore(am_utmp *u)
{
    u->restore_pending = 0;
    if (u->old_fd >= 0) {
        close(u->old_fd);
        u->old_fd = -1;
    }
    if (u->restore.layout != 0)
        u->rs = u->restore.layout;
    struct stat sb;
    if (fstat(u->fd, &sb) != 0) {
        u->st.io_errors++;
        return;
    }
    if ((uint64_t)sb.st_dev != u->restore.dev || (uint64_t)sb.st_ino != u->restore.ino) {
        u->st.rotations++; /* another file since the state was taken: read it from 0 */
        u->offset = 0;
    } else if ((uint64_t)sb.st_size < u->restore.offset) {
        u->st.truncations++;
        u->offset = 0;
    } else {
        u->offset = u->restore.offset;
    }
}

static void open_current(am_utmp *u)
{
    int fd = open(u->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            u->st.missing++;
        else
            u->st.io_errors++;
        return;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        u->st.io_errors++;
        close(fd);
        return;
    }
    u->fd = fd;
    u->dev = (uint64_t)sb.st_dev;
    u->ino = (uint64_t)sb.st_ino;
    u->offset = 0;
    u->size = (uint64_t)sb.st_size;
}

/* Has the path been pointed at another file (rotation)? Then the held one becomes the old
 * file, read to its end first. A path that is missing for now keeps the held file. */
static void check_rotation(am_utmp *u)
{
    if (u->fd < 0 || u->old_fd >= 0)
        return;
    struct stat sb;
    if (stat(u->path, &sb) != 0) {
        if (errno != ENOENT)
            u->st.io_errors++;
        return;
    }
    if ((uint64_t)sb.st_dev == u->dev && (uint64_t)sb.st_ino == u->ino)
        return;
    u->old_fd = u->fd;
    u->old_offset = u->offset;
    u->fd = -1;
    u->st.rotations++;
}

int am_utmp_read(am_utmp *u, am_sink *sink, uint32_t *events)
{
    uint32_t ev = 0;
    if (events != NULL)
        *events = 0;
    if (u == NULL || sink == NULL || u->path == NULL)
        return AM_ERR_ARG;
    check_rotation(u);
    if (u->fd < 0)
        open_current(u);
    if (u->fd >= 0 && u->restore_pending)
        apply_restore(u);

    uint32_t budget = u->opt.max_records;
    uint64_t tail = 0;
    int st = AM_OK;
    if (u->old_fd >= 0) {
        st = drain_fd(u, u->old_fd, &u->old_offset, sink, MODE_STREAM, &budget, &ev, &tail,
                      NULL);
        if (st != AM_OK)
            goto out;
        if (tail != 0)
            u->st.partial_lost++; /* nobody completes a record in a rotated-away file */
        close(u->old_fd);
        u->old_fd = -1;
    }
    if (u->fd >= 0) {
        st = drain_fd(u, u->fd, &u->offset, sink, MODE_STREAM, &budget, &ev, &tail, &u->size);
        if (st == AM_OK && tail != 0)
            u->st.partial++;
    }
out:
    if (events != NULL)
        *events = ev;
    return st;
}

int am_utmp_snapshot(am_utmp *u, am_sink *sink, uint32_t *events)
{
    uint32_t ev = 0;
    if (events != NULL)
        *events = 0;
    if (u == NULL || sink == NULL || u->path == NULL)
        return AM_ERR_ARG;
    int fd = open(u->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            u->st.missing++;
        else
            u->st.io_errors++;
        return AM_OK;
    }
    if (!u->snap_active) {
        u->snap_active = 1;
        u->snap_offset = 0;
    }
    uint32_t budget = u->opt.max_records;
    uint64_t tail = 0;
    int st = drain_fd(u, fd, &u->snap_offset, sink, MODE_SNAPSHOT, &budget, &ev, &tail, NULL);
    close(fd);
    if (st == AM_OK)
        u->snap_active = 0;
    if (events != NULL)
        *events = ev;
    return st;
}

int am_utmp_state(const am_utmp *u, struct am_utmp_state *out)
{
    if (u == NULL || out == NULL)
        return AM_ERR_ARG;
    memset(out, 0, sizeof *out);
    if (u->restore_pending) {
        *out = u->restore; /* not applied yet: still the truth */
        return AM_OK;
    }
    out->dev = u->dev;
    out->ino = u->ino;
    out->offset = u->offset;
    out->size = u->size;
    out->layout = u->rs;
    return AM_OK;
}

int am_utmp_restore(am_utmp *u, const struct am_utmp_state *state)
{
    if (u == NULL || state == NULL || u->path == NULL)
        return AM_ERR_ARG;
    uint32_t layout = state->layout;
    if (layout != 0 && layout != 384 && layout != 400)
        return AM_ERR_ARG;
    if (layout == 0 ? state->offset != 0 : state->offset % layout != 0)
        return AM_ERR_ARG;
    if (layout != 0 && u->rs != 0 && u->rs != layout)
        return AM_ERR_ARG;
    u->restore = *state;
    u->restore_pending = 1;
    if (u->fd >= 0)
        apply_restore(u);
    return AM_OK;
}

void am_utmp_stats(const am_utmp *u, struct am_utmp_stats *out)
{
    if (out == NULL)
        return;
    memset(out, 0, sizeof *out);
    if (u == NULL)
        return;
    *out = u->st;
    out->layout = u->rs;
}
