/* driver.c: runs one decoder of the core on one input file and writes what it produced to
 * stdout as msgpack: every batch the sink gave (its bytes as they are), then the decoder's
 * counters as fixed-width uint64 (0xcf). Built for x86_64, aarch64 and armhf by
 * native/xcheck/build.sh; tests/test_cross_arch.py runs the ARM builds under qemu-user and
 * wants the same bytes as the x86_64 build: a difference is the core depending on the
 * machine (byte order, alignment, the width of long, size_t or time_t).
 *
 * The output depends on the input alone: no clock (the core's clock_gettime calls come to
 * fixed_clock below: build.sh links with -Wl,--wrap; the proc connector turns kernel
 * timestamps into epoch ms with the clocks it reads), no address, no /proc of the running
 * machine (the proc connector's enrichment is off), and no index seed: each run draws a new
 * getrandom seed, and the index decoder also runs with the fixed fallback seed and must say
 * the same. Counters that measure memory (pointer-sized by nature) are written as 0.
 *
 *   driver DECODER FILE       DECODER: one of the names in `decoders` below
 * Exit status: 0 done, 1 a decoder broke its contract (message on stderr), 2 usage. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "core_aggregate.h"
#include "core_audit_netlink.h"
#include "core_dns.h"
#include "core_index.h"
#include "core_nftables.h"
#include "core_proc_connector.h"
#include "core_sock_diag.h"
#include "core_utmp.h"
#include "msgpack.h"
#include "procfs.h"

/* ---- fixed clocks ---- */

/* Every clock the core reads, at fixed readings: the realtime clock at 2026-12-04T00:00:00Z
 * (past 2^31 s would do too, but a 32-bit time_t build must be able to say it), CLOCK_BOOTTIME
 * 2 s ahead of the monotonic one, as after a short suspend. */
enum { FIXED_REALTIME = 1796342400, FIXED_MONOTONIC = 5000, FIXED_BOOTTIME = 5002 };

static int fixed_clock(clockid_t id, struct timespec *ts)
{
    ts->tv_sec = id == CLOCK_REALTIME ? FIXED_REALTIME
               : id == CLOCK_BOOTTIME ? FIXED_BOOTTIME : FIXED_MONOTONIC;
    ts->tv_nsec = 123456789;
    return 0;
}

/* Where -Wl,--wrap=clock_gettime sends the calls; with 64-bit time_t on a 32-bit machine
 * glibc's headers name the function __clock_gettime64, so that one is wrapped there. */
int __wrap_clock_gettime(clockid_t id, struct timespec *ts);
int __wrap_clock_gettime(clockid_t id, struct timespec *ts)
{
    return fixed_clock(id, ts);
}

#if defined(__USE_TIME_BITS64) && defined(__TIMESIZE) && __TIMESIZE == 32
int __wrap___clock_gettime64(clockid_t id, struct timespec *ts);
int __wrap___clock_gettime64(clockid_t id, struct timespec *ts)
{
    return fixed_clock(id, ts);
}
#endif

/* What the driver writes, grown as needed; `failed` is set by the first broken contract. */
struct out {
    uint8_t *data;
    size_t len, cap;
    int failed;
};

static void out_bytes(struct out *o, const void *p, size_t n)
{
    if (o->failed)
        return;
    if (n > o->cap - o->len) {
        size_t cap = o->cap ? o->cap : 4096;
        while (n > cap - o->len)
            cap *= 2;
        uint8_t *d = realloc(o->data, cap);
        if (d == NULL) {
            fprintf(stderr, "driver: out of memory\n");
            o->failed = 1;
            return;
        }
        o->data = d;
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

/* A uint64 always in its 9-byte form: the width of the host's integers shows nowhere. */
static void out_u64(struct out *o, uint64_t v)
{
    uint8_t b[9] = {0xcf};
    for (int k = 0; k < 8; k++)
        b[1 + k] = (uint8_t)(v >> (56 - 8 * k));
    out_bytes(o, b, sizeof b);
}

static void out_i64(struct out *o, int64_t v)
{
    out_u64(o, (uint64_t)v);
}

/* A label (fixstr, < 32 bytes) before each group of counters, so a difference names itself. */
static void out_label(struct out *o, const char *s)
{
    size_t n = strlen(s);
    uint8_t h = (uint8_t)(0xa0 | (n & 0x1f));
    out_bytes(o, &h, 1);
    out_bytes(o, s, n & 0x1f);
}

/* A stats struct made of uint64_t fields only, as the core's stats structs are. */
#define OUT_STATS(o, label, st)                                          \
    do {                                                                 \
        _Static_assert(sizeof(st) % sizeof(uint64_t) == 0, "u64 struct"); \
        uint64_t f_[sizeof(st) / sizeof(uint64_t)];                      \
        memcpy(f_, &(st), sizeof f_);                                    \
        out_label(o, label);                                             \
        for (size_t k_ = 0; k_ < sizeof f_ / sizeof f_[0]; k_++)         \
            out_u64(o, f_[k_]);                                          \
    } while (0)

static void fail(struct out *o, const char *what)
{
    if (!o->failed)
        fprintf(stderr, "driver: %s\n", what);
    o->failed = 1;
}

#define EXPECT(o, cond) \
    do { \
        if (!(cond)) \
            fail(o, #cond); \
    } while (0)

/* Every sealed batch of the sink, its bytes as they are. */
static void take_all(struct out *o, am_sink *s)
{
    const uint8_t *data;
    size_t len;
    uint32_t events;
    while (am_sink_take(s, &data, &len, &events) == AM_OK) {
        out_label(o, "batch");
        out_u64(o, events);
        out_bytes(o, data, len);
    }
}

static void sink_end(struct out *o, am_sink *s)
{
    EXPECT(o, am_sink_seal(s) == AM_OK);
    take_all(o, s);
    struct am_sink_stats ss;
    am_sink_stats(s, &ss);
    ss.memory = 0;
    OUT_STATS(o, "sink", ss);
}

static am_sink *small_sink(uint32_t batch_bytes)
{
    struct am_sink_options so;
    am_sink_default_options(&so);
    so.batch_bytes = batch_bytes;
    so.max_batches = 2; /* fills often: the resume paths run too */
    return am_sink_new(&so);
}

/* ---- audit: text, records, netlink datagrams ---- */

static am_audit *audit_new(void)
{
    struct am_audit_options ao;
    am_audit_default_options(&ao);
    ao.batch_bytes = 8192;
    return am_audit_new(&ao);
}

static void audit_end(struct out *o, am_audit *p, am_sink *s)
{
    int st;
    unsigned rounds = 0;
    while ((st = am_audit_expire(p, s, UINT64_MAX)) == AM_ERR_FULL && ++rounds < 1000000u)
        take_all(o, s);
    EXPECT(o, st == AM_OK);
    while ((st = am_audit_flush(p, s)) == AM_ERR_FULL && ++rounds < 1000000u)
        take_all(o, s);
    EXPECT(o, st == AM_OK);
    struct am_audit_stats as;
    am_audit_stats(p, s, &as);
    as.memory = as.memory_bound = 0;
    OUT_STATS(o, "audit", as);
    sink_end(o, s);
}

/* Audit log text, fed in three chunks cut at fixed fractions of the input. */
static void run_audit_text(struct out *o, const uint8_t *data, size_t size)
{
    am_audit *p = audit_new();
    am_sink *s = small_sink(8192);
    EXPECT(o, p != NULL && s != NULL);
    if (o->failed)
        goto done;
    size_t cuts[4] = {0, size / 3, size / 3 + size / 4, size};
    for (int c = 0; c < 3; c++) {
        size_t off = cuts[c];
        unsigned rounds = 0;
        for (;;) {
            size_t used = 0;
            int st = am_audit_feed(p, s, (const char *)data + off, cuts[c + 1] - off, &used);
            off += used;
            if (st != AM_ERR_FULL) {
                EXPECT(o, st == AM_OK && off == cuts[c + 1]);
                break;
            }
            take_all(o, s);
            if (++rounds > 1000000u) {
                fail(o, "audit feed makes no progress");
                break;
            }
        }
    }
    audit_end(o, p, s);
done:
    am_audit_free(p);
    am_sink_free(s);
}

/* Audit log text, each "type=NAME msg=PAYLOAD" line given as the netlink source gives a
 * record (am_audit_feed_record with the type's number); other lines are skipped. */
static void run_audit_record(struct out *o, const uint8_t *data, size_t size)
{
    am_audit *p = audit_new();
    am_sink *s = small_sink(8192);
    EXPECT(o, p != NULL && s != NULL);
    if (o->failed)
        goto done;
    const char *text = (const char *)data;
    size_t at = 0;
    while (at < size) {
        const char *nl = memchr(text + at, '\n', size - at);
        size_t end = nl ? (size_t)(nl - text) : size;
        const char *line = text + at;
        size_t len = end - at;
        at = end + 1;
        const char *sp = memchr(line, ' ', len);
        if (len < 5 || memcmp(line, "type=", 5) != 0 || sp == NULL ||
            (size_t)(line + len - sp) < 5 || memcmp(sp, " msg=", 5) != 0)
            continue;
        int type = am_record_type_number(line + 5, (size_t)(sp - line) - 5);
        if (type <= 0 || type > UINT16_MAX)
            continue;
        const char *payload = sp + 5;
        size_t plen = (size_t)(line + len - payload);
        int st;
        unsigned rounds = 0;
        while ((st = am_audit_feed_record(p, s, (uint16_t)type, payload, plen)) == AM_ERR_FULL &&
               ++rounds < 1000000u)
            take_all(o, s);
        EXPECT(o, st == AM_OK);
    }
    audit_end(o, p, s);
done:
    am_audit_free(p);
    am_sink_free(s);
}

/* One audit netlink datagram, decoded whole, then again cut in two where byte 0 says. */
static void run_audit_netlink(struct out *o, const uint8_t *data, size_t size)
{
    am_audit *p = audit_new();
    am_sink *s = small_sink(8192);
    struct am_anl_stats ns;
    memset(&ns, 0, sizeof ns);
    EXPECT(o, p != NULL && s != NULL);
    if (o->failed)
        goto done;
    size_t cut = size > 1 ? 1 + data[0] % (size - 1) : size;
    const size_t spans[3][2] = {{0, size}, {0, cut}, {cut, size}};
    for (int k = 0; k < 3; k++) {
        size_t off = spans[k][0], end = spans[k][1];
        unsigned rounds = 0;
        for (;;) {
            size_t used = 0;
            int st = am_audit_nl_decode(p, s, data + off, end - off, &used, &ns);
            off += used;
            if (st != AM_ERR_FULL) {
                EXPECT(o, st == AM_OK && off == end);
                break;
            }
            take_all(o, s);
            if (++rounds > 1000000u) {
                fail(o, "netlink decode makes no progress");
                break;
            }
        }
    }
    OUT_STATS(o, "netlink", ns);
    audit_end(o, p, s);
done:
    am_audit_free(p);
    am_sink_free(s);
}

/* ---- proc connector ---- */

/* Byte 0: bit 1 thread events, bit 2 a tiny argv bound (bit 0, enrichment from /proc, is
 * ignored: it would read the running machine); the rest is the datagram, decoded twice. */
static void run_cn_proc(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    struct am_cnproc_options co;
    am_cnproc_default_options(&co);
    co.enrich = 0;
    co.threads = (data[0] >> 1) & 1;
    if (data[0] & 4) {
        co.max_argv_bytes = 64;
        co.max_args = 2;
    }
    am_cnproc *c = am_cnproc_new(&co);
    am_sink *s = small_sink(1024);
    EXPECT(o, c != NULL && s != NULL);
    for (int pass = 0; pass < 2 && !o->failed; pass++) {
        size_t off = 1;
        unsigned rounds = 0;
        for (;;) {
            size_t used = 0;
            uint64_t appended = 0;
            int st = am_cnproc_decode(c, s, data + off, size - off, &used, &appended);
            off += used;
            out_label(o, "appended");
            out_u64(o, appended);
            if (st != AM_ERR_FULL) {
                EXPECT(o, st == AM_OK && off == size);
                break;
            }
            take_all(o, s);
            if (++rounds > 100000u) {
                fail(o, "cn_proc decode makes no progress");
                break;
            }
        }
    }
    if (!o->failed) {
        struct am_cnproc_stats cs;
        am_cnproc_stats(c, &cs);
        OUT_STATS(o, "cn_proc", cs);
        sink_end(o, s);
    }
    am_cnproc_free(c);
    am_sink_free(s);
}

/* ---- DNS responses ---- */

/* Byte 0: bit 0 a cache of 2, bit 1 a jump bound of 2; the rest is fed as a packet, then as
 * a bare message; the cache is asked for a few addresses. */
static void run_dns(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    struct am_dns_options opt;
    am_dns_default_options(&opt);
    if (data[0] & 1)
        opt.max_hosts = 2;
    if (data[0] & 2)
        opt.max_jumps = 2;
    am_dns *d = am_dns_new(&opt);
    am_sink *s = small_sink(1024);
    EXPECT(o, d != NULL && s != NULL);
    if (!o->failed) {
        uint32_t appended = 0;
        EXPECT(o, am_dns_feed_packet(d, s, data + 1, size - 1, 1000, &appended) == AM_OK);
        take_all(o, s);
        EXPECT(o, am_dns_feed_message(d, s, data + 1, size - 1, 2000, "192.0.2.53",
                                      &appended) == AM_OK);
        static const char *const probes[] = {"192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"};
        char name[256];
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            out_label(o, "host");
            if (am_dns_host(d, probes[i], name, sizeof name) == AM_OK)
                out_bytes(o, name, strlen(name));
        }
        struct am_dns_stats ds;
        am_dns_stats(d, &ds);
        ds.memory = ds.memory_bound = 0;
        OUT_STATS(o, "dns", ds);
        sink_end(o, s);
    }
    am_dns_free(d);
    am_sink_free(s);
}

/* ---- nftables ruleset ---- */

/* Byte 0: the bounds of fuzz_nftables (bit 0 small output, bit 1 one set element, bit 2 small
 * rule text, bit 3 small dumps); the rest is decoded as one snapshot's messages: the result's
 * bytes, then the counters. */
static void run_nftables(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    struct am_nft_options opt;
    am_nft_default_options(&opt);
    if (data[0] & 1)
        opt.max_output_bytes = 1024;
    if (data[0] & 2)
        opt.max_set_elements = 1;
    if (data[0] & 4)
        opt.max_rule_bytes = 256;
    if (data[0] & 8)
        opt.max_dump_bytes = 4096;
    am_nft *n = am_nft_new(&opt);
    EXPECT(o, n != NULL);
    if (!o->failed) {
        EXPECT(o, am_nft_decode(n, 1796342400123ull, data + 1, size - 1) == AM_OK);
        const uint8_t *result;
        size_t len;
        EXPECT(o, am_nft_result(n, &result, &len) == AM_OK);
        if (!o->failed) {
            out_label(o, "result");
            out_bytes(o, result, len);
        }
        struct am_nft_stats ns;
        am_nft_stats(n, &ns);
        ns.memory = 0;
        OUT_STATS(o, "nftables", ns);
    }
    am_nft_free(n);
}

/* ---- socket table: inet_diag dumps and /proc/net text ---- */

static void sock_products(struct out *o, am_sock *t, am_sink *s)
{
    int (*calls[2])(am_sock *, am_sink *, uint32_t *) = {am_sock_listening, am_sock_changes};
    for (int c = 0; c < 2; c++) {
        unsigned rounds = 0;
        int st;
        uint32_t n = 0;
        while ((st = calls[c](t, s, &n)) == AM_ERR_FULL && ++rounds < 100000u)
            take_all(o, s);
        EXPECT(o, st == AM_OK);
        out_label(o, "events");
        out_u64(o, n);
    }
    EXPECT(o, am_sink_seal(s) == AM_OK);
    take_all(o, s);
}

static am_sock *sock_table(void)
{
    struct am_sock_options so;
    am_sock_default_options(&so);
    so.source = AM_SOCK_PROCNET; /* no socket: the driver feeds the decoders */
    so.max_sockets = 64;
    so.max_owners = 8;
    so.map_owners = 0;
    return am_sock_new(&so);
}

/* Byte 0 picks the protocol (bit 0: UDP) and, for /proc/net, the family (bit 1: IPv6). The
 * rest makes one snapshot, its second half the next, then an empty one closes everything. */
static void run_sock(struct out *o, const uint8_t *data, size_t size, int diag)
{
    if (size < 1)
        return;
    uint8_t proto = (data[0] & 1) ? 17 : 6;
    uint8_t family = (data[0] & 2) ? 10 : 2;
    const uint8_t *body = data + 1;
    size_t len = size - 1;
    am_sock *t = sock_table();
    am_sink *s = small_sink(1024);
    EXPECT(o, t != NULL && s != NULL);
    const size_t from[2] = {0, len / 2};
    for (int k = 0; k < 3 && !o->failed; k++) {
        if (k < 2) {
            int st;
            if (diag) {
                EXPECT(o, am_sock_begin(t) == AM_OK);
                st = am_sock_feed_diag(t, proto, body + from[k], len - from[k]);
            } else {
                st = am_sock_feed_procnet(t, proto, family, (const char *)body + from[k],
                                          len - from[k]);
            }
            out_label(o, "feed");
            out_i64(o, st);
        }
        EXPECT(o, am_sock_commit(t, 1000u * (uint64_t)(k + 1), 0) == AM_OK);
        sock_products(o, t, s);
    }
    if (!o->failed) {
        struct am_sock_stats ts;
        am_sock_stats(t, &ts);
        ts.memory = 0;
        OUT_STATS(o, "sock", ts);
        sink_end(o, s);
    }
    am_sock_free(t);
    am_sink_free(s);
}

/* ---- utmp ---- */

static void utmp_stats(struct out *o, const am_utmp *u)
{
    struct am_utmp_stats us;
    am_utmp_stats(u, &us);
    out_label(o, "utmp");
    const uint64_t f[] = {us.records, us.events, us.partial, us.partial_lost, us.truncations,
                          us.rotations, us.malformed, us.skipped, us.unmatched, us.evicted,
                          us.dropped, us.io_errors, us.missing, us.layout};
    for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
        out_u64(o, f[k]);
}

/* Calls `call` until it is caught up; a full sink or the per-call bound only pauses it. */
#define UTMP_DRAIN(o, s, call)                                                   \
    do {                                                                         \
        unsigned rounds_ = 0;                                                    \
        int st_;                                                                 \
        uint32_t ev_ = 0;                                                        \
        while (((st_ = (call)) == AM_ERR_FULL || st_ == AM_ERR_LIMIT) &&         \
               ++rounds_ < 100000u) {                                            \
            EXPECT(o, am_sink_seal(s) == AM_OK);                                 \
            take_all(o, s);                                                      \
        }                                                                        \
        EXPECT(o, st_ == AM_OK);                                                 \
    } while (0)

static int put_file(int fd, const uint8_t *data, size_t len)
{
    if (ftruncate(fd, 0) != 0)
        return -1;
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, data + done, len - done, (off_t)done);
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

/* Byte 0: kind (bits 0-1), layout (bits 2-3: auto, 384, 400, auto), remembered logins
 * (bits 4-5); byte 1 the step (16-byte units) by which the records become visible; the rest
 * are records. They are fed from memory, then read from a file that grows, shrinks and is
 * snapshotted (the 64-bit file offsets of a 32-bit build). */
static void run_utmp(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 2)
        return;
    static const uint32_t layouts[4] = {AM_UTMP_LAYOUT_AUTO, AM_UTMP_LAYOUT_384,
                                        AM_UTMP_LAYOUT_400, AM_UTMP_LAYOUT_AUTO};
    int kind = data[0] & 3;
    if (kind == 3)
        kind = AM_UTMP_WTMP;
    struct am_utmp_options uo;
    am_utmp_default_options(&uo);
    uo.layout = layouts[(data[0] >> 2) & 3];
    uo.max_sessions = 1u + ((data[0] >> 4) & 3);
    size_t step = 16u * (1u + data[1]);
    const uint8_t *rec = data + 2;
    size_t len = size - 2;
    am_sink *s = small_sink(1024);
    am_utmp *u = am_utmp_new(kind, &uo);
    EXPECT(o, s != NULL && u != NULL);
    size_t pos = 0, visible = 0;
    while (visible < len && !o->failed) {
        visible = visible + step < len ? visible + step : len;
        for (unsigned rounds = 0;; rounds++) {
            size_t used = 0;
            uint32_t ev = 0;
            int st = am_utmp_feed(u, rec + pos, visible - pos, s, &used, &ev);
            pos += used;
            if (st == AM_OK)
                break;
            EXPECT(o, (st == AM_ERR_FULL || st == AM_ERR_LIMIT) && rounds < 100000u);
            if (o->failed)
                break;
            if (st == AM_ERR_FULL) {
                EXPECT(o, am_sink_seal(s) == AM_OK);
                take_all(o, s);
            }
        }
    }
    if (u != NULL)
        utmp_stats(o, u);
    am_utmp_close(u);

    char path[] = "/tmp/xcheck-utmp-XXXXXX";
    int fd = mkstemp(path);
    EXPECT(o, fd >= 0);
    if (fd >= 0) {
        uo.chunk_records = 2;
        uo.max_records = 5;
        u = am_utmp_open(path, kind, &uo);
        EXPECT(o, u != NULL);
        if (u != NULL) {
            EXPECT(o, put_file(fd, rec, len / 2) == 0);
            UTMP_DRAIN(o, s, am_utmp_read(u, s, &ev_));
            EXPECT(o, put_file(fd, rec, len) == 0);
            UTMP_DRAIN(o, s, am_utmp_read(u, s, &ev_));
            struct am_utmp_state state;
            EXPECT(o, am_utmp_state(u, &state) == AM_OK);
            EXPECT(o, put_file(fd, rec, len / 3) == 0);
            UTMP_DRAIN(o, s, am_utmp_read(u, s, &ev_));
            UTMP_DRAIN(o, s, am_utmp_snapshot(u, s, &ev_));
            if (am_utmp_restore(u, &state) == AM_OK)
                UTMP_DRAIN(o, s, am_utmp_read(u, s, &ev_));
            utmp_stats(o, u);
            am_utmp_close(u);
        }
        close(fd);
        unlink(path);
    }
    if (s != NULL)
        sink_end(o, s);
    am_sink_free(s);
}

/* ---- procfs parsers ---- */

/* Byte 0 % 4: /proc/PID/stat, /proc/PID/status, a /proc/stat btime line, a cmdline; the
 * rest is the text. Every parsed field is written. */
static void run_procfs(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    switch (data[0] % 4) {
    case 0: {
        struct pf_stat ps;
        memset(&ps, 0, sizeof ps);
        int st = pf_parse_stat(text, len, &ps);
        out_label(o, "stat");
        out_i64(o, st);
        if (st == 0) {
            out_i64(o, ps.pid);
            out_u64(o, ps.comm_len);
            out_bytes(o, ps.comm, ps.comm_len <= sizeof ps.comm ? ps.comm_len : 0);
            out_i64(o, ps.state);
            out_i64(o, ps.ppid);
            out_u64(o, ps.flags);
            out_i64(o, ps.threads);
            out_u64(o, ps.starttime);
            out_i64(o, ps.rss_pages);
        }
        break;
    }
    case 1: {
        struct pf_status ps;
        memset(&ps, 0, sizeof ps);
        int st = pf_parse_status(text, len, &ps);
        out_label(o, "status");
        out_i64(o, st);
        for (int k = 0; k < 4; k++) {
            out_u64(o, ps.uid[k]);
            out_u64(o, ps.gid[k]);
        }
        out_i64(o, ps.ppid);
        out_i64(o, ps.has_uid);
        out_i64(o, ps.has_gid);
        out_i64(o, ps.has_ppid);
        break;
    }
    case 2: {
        /* Each line of the text as a /proc/stat line. */
        size_t at = 0;
        while (at <= len) {
            const char *nl = memchr(text + at, '\n', len - at);
            size_t end = nl ? (size_t)(nl - text) : len;
            uint64_t btime = 0;
            int st = pf_parse_btime_line(text + at, end - at, &btime);
            out_label(o, "btime");
            out_i64(o, st);
            out_u64(o, btime);
            at = end + 1;
        }
        break;
    }
    default: {
        for (uint32_t max_args = 1; max_args <= 256; max_args *= 16) {
            mp_buf e;
            if (mp_init(&e, 8192) != AM_OK) {
                fail(o, "out of memory");
                return;
            }
            int cut = 0;
            int st = pf_encode_argv(&e, text, len, 0, max_args, &cut);
            out_label(o, "argv");
            out_i64(o, st);
            out_i64(o, cut);
            out_u64(o, e.len);
            out_bytes(o, e.data, e.len);
            mp_release(&e);
        }
        break;
    }
    }
}

/* ---- msgpack writer ---- */

static uint64_t take_le(const uint8_t **p, size_t *n, size_t width)
{
    uint64_t v = 0;
    for (size_t k = 0; k < width && *n > 0; k++, (*p)++, (*n)--)
        v |= (uint64_t)**p << (8 * k);
    return v;
}

/* A program for the writer: each op byte (low 4 bits the call, bits 4-5 the operand width
 * 1/2/4/8) and its little-endian operand; str and bin take their length's bytes from the
 * input. The writer's buffer and every status are written. */
static void run_msgpack(struct out *o, const uint8_t *data, size_t size)
{
    am_mpw *w = am_mpw_new(4096);
    EXPECT(o, w != NULL);
    if (w == NULL)
        return;
    const uint8_t *p = data;
    size_t n = size;
    while (n > 0) {
        uint8_t op = (uint8_t)take_le(&p, &n, 1);
        size_t width = (size_t)1 << ((op >> 4) & 3);
        uint64_t v = take_le(&p, &n, width);
        int st;
        switch (op & 15) {
        case 0: st = am_mpw_nil(w); break;
        case 1: st = am_mpw_bool(w, (int)(v & 1)); break;
        case 2: st = am_mpw_int(w, (int64_t)v); break;
        case 3: st = am_mpw_int(w, width == 1 ? (int8_t)v : width == 2 ? (int16_t)v
                                   : width == 4 ? (int32_t)v : (int64_t)v); break;
        case 4: st = am_mpw_uint(w, v); break;
        case 5: {
            double d;
            memcpy(&d, &v, sizeof d);
            st = am_mpw_float(w, d);
            break;
        }
        case 6: case 7: {
            size_t len = (size_t)(v % 300u);
            if (len > n)
                len = n;
            st = (op & 15) == 6 ? am_mpw_str(w, (const char *)p, len) : am_mpw_bin(w, p, len);
            p += len;
            n -= len;
            break;
        }
        case 8: st = am_mpw_array(w, (uint32_t)v); break;
        case 9: st = am_mpw_map(w, (uint32_t)v); break;
        case 10: am_mpw_reset(w); st = AM_OK; break;
        default: st = am_mpw_uint(w, (uint64_t)(op & 15)); break;
        }
        out_label(o, "op");
        out_i64(o, st);
    }
    size_t len = 0;
    const uint8_t *bytes = am_mpw_data(w, &len);
    out_label(o, "written");
    out_u64(o, len);
    out_bytes(o, bytes, len);
    am_mpw_free(w);
}

/* ---- aggregation ---- */

/* Byte 0 picks the kind and the cache size (as native/fuzz/fuzz_aggregate.c); the rest is
 * batches split at 0xff 0xfe marks, each added to the aggregator, then one flush. */
static void run_aggregate(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    struct am_agg_options ag;
    am_agg_default_options(&ag);
    ag.kind = (data[0] & 0x40) ? AM_AGG_NONE : (data[0] & 1) ? AM_AGG_NETWORK : AM_AGG_PROCESS;
    if (data[0] & 0x20)
        memcpy(ag.accept, "exec,conn,auth", sizeof "exec,conn,auth");
    ag.cache_size = 1u + ((data[0] >> 1) & 7);
    ag.max_bytes = (data[0] & 0x10) ? 1024 : 1u << 16;
    am_agg *a = am_agg_new(&ag);
    am_sink *s = small_sink(4096);
    EXPECT(o, a != NULL && s != NULL);
    if (!o->failed && (data[0] & 0x80))
        EXPECT(o, am_agg_filter_laddr(a, 1, "10.0.0.2,::1", 12) == AM_OK);
    size_t start = 1;
    for (size_t i = 1; i <= size && !o->failed; i++) {
        int mark = i + 1 < size && data[i] == 0xff && data[i + 1] == 0xfe;
        if (i < size && !mark)
            continue;
        uint32_t next = 0;
        int st;
        unsigned rounds = 0;
        while ((st = am_agg_add_batch(a, data + start, i - start, &next, s)) == AM_ERR_FULL &&
               ++rounds < 100000u)
            take_all(o, s);
        out_label(o, "add");
        out_i64(o, st);
        start = i + 2;
        i++;
    }
    if (!o->failed) {
        int st;
        unsigned rounds = 0;
        while ((st = am_agg_flush(a, s)) == AM_ERR_FULL && ++rounds < 100000u)
            take_all(o, s);
        EXPECT(o, st == AM_OK);
        struct am_agg_stats gs;
        am_agg_stats(a, &gs);
        gs.memory = gs.memory_bound = 0;
        OUT_STATS(o, "aggregate", gs);
        sink_end(o, s);
    }
    am_agg_free(a);
    am_sink_free(s);
}

/* ---- index ---- */

/* The operations of native/fuzz/fuzz_index.c (byte 0: the bound; then op bytes and their
 * operands) on an index with the given seed source; every status and value is written, and
 * the counters that do not depend on the seed (probe counts do). */
static void index_ops(struct out *o, const uint8_t *data, size_t size, int getrandom)
{
    uint32_t bound = 1u + (data[0] & 63);
    am_index_test *t = am_index_test_new(bound, getrandom);
    EXPECT(o, t != NULL);
    if (t == NULL)
        return;
    size_t at = 1;
    while (at < size) {
        uint8_t op = data[at++];
        size_t len = (size_t)(op >> 3);
        if (len > size - at)
            len = size - at;
        uint8_t key[31];
        for (size_t i = 0; i < len; i++)
            key[i] = data[at + i] & 3;
        at += len;
        uint8_t arg = at < size ? data[at] : 0;
        uint64_t v = 0;
        int64_t st;
        switch (op & 7) {
        case 0: case 1: at++; st = am_index_test_put(t, key, len, arg); break;
        case 2: st = am_index_test_get(t, key, len, &v); break;
        case 3: case 4: st = am_index_test_delete(t, key, len); break;
        case 5: at++; st = am_index_test_prune(t, arg); break;
        case 6: am_index_test_clear(t); st = 0; break;
        default: {
            uint8_t long_key[65];
            memset(long_key, 1, sizeof long_key);
            st = am_index_test_put(t, long_key, sizeof long_key, 1);
            break;
        }
        }
        out_i64(o, st);
        out_u64(o, v);
        EXPECT(o, am_index_test_check(t) == AM_OK);
    }
    struct am_index_stats xs;
    am_index_test_stats(t, &xs);
    out_label(o, "index");
    const uint64_t f[] = {xs.entries, xs.bound, xs.finds, xs.added, xs.removed, xs.full};
    for (size_t k = 0; k < sizeof f / sizeof f[0]; k++)
        out_u64(o, f[k]);
    am_index_test_free(t);
}

static void run_index(struct out *o, const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    struct out fixed = {0};
    index_ops(&fixed, data, size, 0);
    index_ops(o, data, size, 1);
    EXPECT(o, !fixed.failed && fixed.len == o->len && memcmp(fixed.data, o->data, o->len) == 0);
    free(fixed.data);
}

/* ---- main ---- */

static void run_inet_diag(struct out *o, const uint8_t *data, size_t size)
{
    run_sock(o, data, size, 1);
}

static void run_proc_net(struct out *o, const uint8_t *data, size_t size)
{
    run_sock(o, data, size, 0);
}

static const struct {
    const char *name;
    void (*run)(struct out *, const uint8_t *, size_t);
} decoders[] = {
    {"audit_text", run_audit_text},     {"audit_record", run_audit_record},
    {"audit_netlink", run_audit_netlink}, {"cn_proc", run_cn_proc},
    {"inet_diag", run_inet_diag},       {"proc_net", run_proc_net},
    {"utmp", run_utmp},                 {"procfs", run_procfs},
    {"msgpack", run_msgpack},           {"aggregate", run_aggregate},
    {"index", run_index},               {"dns", run_dns},
    {"nftables", run_nftables},
};

static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    uint8_t *data = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            uint8_t *d = realloc(data, cap);
            if (d == NULL) {
                free(data);
                fclose(f);
                return NULL;
            }
            data = d;
        }
        size_t n = fread(data + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(data);
        return NULL;
    }
    *size = len;
    return data;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: driver DECODER FILE\n");
        return 2;
    }
    /* A build without the wrap would read the real clocks: refuse to run. */
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) != 0 || now.tv_sec != FIXED_REALTIME) {
        fprintf(stderr, "driver: clock_gettime is not fixed (build with native/xcheck/build.sh)\n");
        return 2;
    }
    for (size_t k = 0; k < sizeof decoders / sizeof decoders[0]; k++) {
        if (strcmp(argv[1], decoders[k].name) != 0)
            continue;
        size_t size = 0;
        uint8_t *data = read_file(argv[2], &size);
        if (data == NULL) {
            perror(argv[2]);
            return 2;
        }
        struct out o = {0};
        decoders[k].run(&o, data, size);
        free(data);
        int rc = o.failed;
        if (!rc && o.len > 0 && fwrite(o.data, 1, o.len, stdout) != o.len)
            rc = 1;
        free(o.data);
        if (fflush(stdout) != 0)
            rc = 1;
        return rc;
    }
    fprintf(stderr, "driver: no decoder %s\n", argv[1]);
    return 2;
}
