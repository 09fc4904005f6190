/* fuzz_check.h: the oracles the libFuzzer harnesses share. A msgpack reader of its own (the
 * harnesses check the core's writer with it, so it shares no code with native/msgpack.c) and
 * the checks every audit harness applies to each status, batch and memory figure.
 * A failed check names itself on stderr, then __builtin_trap(): libFuzzer reports a crash and
 * keeps the input. */
#ifndef AM_FUZZ_CHECK_H
#define AM_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "msgpack.h"

#define CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
            __builtin_trap(); \
        } \
    } while (0)

/* ---- msgpack reader ---- */

enum mpc_kind {
    MPC_NIL, MPC_BOOL, MPC_UINT, MPC_INT, MPC_FLOAT32, MPC_FLOAT64,
    MPC_STR, MPC_BIN, MPC_ARRAY, MPC_MAP, MPC_EXT
};

struct mpc_item {
    enum mpc_kind kind;
    uint64_t u;          /* MPC_UINT, MPC_BOOL; element count of MPC_ARRAY / pair count of MPC_MAP */
    int64_t i;           /* MPC_INT (always negative: the spec's int forms for >= 0 are read as uint) */
    uint64_t bits;       /* MPC_FLOAT32 / MPC_FLOAT64: the raw IEEE bits */
    const uint8_t *data; /* MPC_STR, MPC_BIN, MPC_EXT payload */
    size_t len;          /* its length */
    size_t size;         /* bytes of this item: header and payload, not a container's elements */
};

static inline uint64_t mpc_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t k = 0; k < n; k++)
        v = (v << 8) | p[k];
    return v;
}

/* Reads the item that starts at p[0] (n bytes available). 1: whole, *it filled;
 * 0: p[0..n) is too short for it; -1: 0xc1, the byte the spec never uses. */
static inline int mpc_read(const uint8_t *p, size_t n, struct mpc_item *it)
{
    if (n == 0)
        return 0;
    memset(it, 0, sizeof *it);
    uint8_t b = p[0];
    size_t head = 1, width = 0, payload = 0;
    if (b <= 0x7f) {
        it->kind = MPC_UINT;
        it->u = b;
    } else if (b <= 0x8f) {
        it->kind = MPC_MAP;
        it->u = b & 0x0f;
    } else if (b <= 0x9f) {
        it->kind = MPC_ARRAY;
        it->u = b & 0x0f;
    } else if (b <= 0xbf) {
        it->kind = MPC_STR;
        payload = b & 0x1f;
    } else if (b >= 0xe0) {
        it->kind = MPC_INT;
        it->i = (int8_t)b;
    } else {
        switch (b) {
        case 0xc0: it->kind = MPC_NIL; break;
        case 0xc1: return -1;
        case 0xc2: case 0xc3: it->kind = MPC_BOOL; it->u = b & 1; break;
        case 0xc4: case 0xc5: case 0xc6:
            it->kind = MPC_BIN; width = (size_t)1 << (b - 0xc4); break;
        case 0xc7: case 0xc8: case 0xc9: /* ext: length, then a type byte */
            it->kind = MPC_EXT; width = (size_t)1 << (b - 0xc7); head = 2; break;
        case 0xca: it->kind = MPC_FLOAT32; width = 4; break;
        case 0xcb: it->kind = MPC_FLOAT64; width = 8; break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            it->kind = MPC_UINT; width = (size_t)1 << (b - 0xcc); break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3:
            it->kind = MPC_INT; width = (size_t)1 << (b - 0xd0); break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext: type byte, 2^k bytes */
            it->kind = MPC_EXT; head = 2; payload = (size_t)1 << (b - 0xd4); break;
        case 0xd9: case 0xda: case 0xdb:
            it->kind = MPC_STR; width = (size_t)1 << (b - 0xd9); break;
        case 0xdc: case 0xdd: it->kind = MPC_ARRAY; width = (size_t)2 << (b - 0xdc); break;
        default: /* 0xde, 0xdf */ it->kind = MPC_MAP; width = (size_t)2 << (b - 0xde); break;
        }
    }
    if (n < head + width)
        return 0;
    uint64_t v = mpc_be(p + 1, width);
    switch (it->kind) {
    case MPC_UINT:
        if (width)
            it->u = v;
        break;
    case MPC_INT:
        if (width)
            it->i = width == 1 ? (int8_t)v : width == 2 ? (int16_t)v
                  : width == 4 ? (int32_t)v : (int64_t)v;
        break;
    case MPC_FLOAT32: case MPC_FLOAT64: it->bits = v; break;
    case MPC_ARRAY: case MPC_MAP:
        if (width)
            it->u = v;
        break;
    case MPC_STR: case MPC_BIN: case MPC_EXT:
        if (width)
            payload = (size_t)v;
        break;
    default: break;
    }
    size_t start = head + width; /* ext8/16/32 put the type byte after the length */
    if (payload > n - start)
        return 0;
    it->data = p + start;
    it->len = payload;
    it->size = start + payload;
    return 1;
}

/* The batch shape docs/events.md promises: one array32 of `events` maps, exactly `len` bytes,
 * str keys, every str valid UTF-8 (non-UTF-8 bytes travel as bin), no ext, depth <= 16. */
static inline void mpc_check_batch(const uint8_t *p, size_t len, uint32_t events)
{
    enum { MAX_DEPTH = 16 };
    uint64_t left[MAX_DEPTH]; /* items still to read in each open container */
    int is_map[MAX_DEPTH];
    int depth = 0;
    size_t off = 0;
    struct mpc_item it;

    CHECK(len >= 5 && p[0] == 0xdd && mpc_be(p + 1, 4) == events);
    for (;;) {
        while (depth > 0 && left[depth - 1] == 0)
            depth--;
        if (off == len)
            break;
        CHECK(mpc_read(p + off, len - off, &it) == 1);
        CHECK(it.kind != MPC_EXT);
        if (depth > 0) {
            /* Keys are str: JSON output (orjson, `micro-agent decode`) takes no other. */
            int key = is_map[depth - 1] && left[depth - 1] % 2 == 0;
            CHECK(!key || it.kind == MPC_STR);
            if (depth == 1)
                CHECK(it.kind == MPC_MAP); /* each element of the batch is an event map */
            left[depth - 1]--;
        } else {
            CHECK(off == 0); /* one top-level object */
        }
        if (it.kind == MPC_STR)
            CHECK(utf8_valid(it.data, it.len));
        off += it.size;
        if (it.kind == MPC_ARRAY || it.kind == MPC_MAP) {
            CHECK(depth < MAX_DEPTH);
            is_map[depth] = it.kind == MPC_MAP;
            left[depth] = it.kind == MPC_MAP ? 2 * it.u : it.u;
            depth++;
        }
    }
    CHECK(depth == 0); /* every container got all its elements within len bytes */
}

/* ---- audit parser harness support ---- */

/* A parser, the sink it writes into, its options and what was taken from the sink. */
struct fuzz_audit {
    am_audit *p;
    am_sink *sink;
    struct am_audit_options o;
    uint64_t batches;
    uint64_t events;
};

/* Options small enough that every bound is reachable from a few KB of input. */
static inline void fuzz_audit_new(struct fuzz_audit *f)
{
    memset(f, 0, sizeof *f);
    am_audit_default_options(&f->o);
    f->o.max_in_flight = 4;
    f->o.max_line_bytes = 1024;
    f->o.max_event_bytes = 2048;
    f->o.max_pending_bytes = 6144;
    f->o.batch_bytes = 4096;
    f->p = am_audit_new(&f->o);
    struct am_sink_options so = {.batch_bytes = f->o.batch_bytes, .max_batches = 2};
    f->sink = am_sink_new(&so);
    CHECK(f->p != NULL && f->sink != NULL);
}

static inline void fuzz_audit_free(struct fuzz_audit *f)
{
    am_audit_free(f->p);
    am_sink_free(f->sink);
}

static inline void fuzz_check_memory(const struct fuzz_audit *f)
{
    struct am_audit_stats st;
    am_audit_stats(f->p, f->sink, &st);
    CHECK(st.memory <= st.memory_bound);
}

/* Takes every sealed batch, checking each; returns how many it took. */
static inline unsigned fuzz_take_all(struct fuzz_audit *f)
{
    unsigned taken = 0;
    for (;;) {
        const uint8_t *data = NULL;
        size_t len = 0;
        uint32_t events = 0;
        int s = am_sink_take(f->sink, &data, &len, &events);
        fuzz_check_memory(f);
        if (s == AM_EMPTY)
            return taken;
        CHECK(s == AM_OK);
        CHECK(data != NULL && len <= f->o.batch_bytes && events > 0);
        mpc_check_batch(data, len, events);
        taken++;
        f->batches++;
        f->events += events;
    }
}

/* After an AM_ERR_FULL: takes the batches. The call must have used input or left batches to
 * take: a call that is full again with nothing to take and nothing used would spin the Python
 * pump forever. */
static inline void fuzz_on_full(struct fuzz_audit *f, int progressed, unsigned *rounds)
{
    unsigned taken = fuzz_take_all(f);
    CHECK(taken > 0 || progressed);
    CHECK(++*rounds < 1000000u);
}

/* End of input: flush until done, then nothing may stay behind. */
static inline void fuzz_finish(struct fuzz_audit *f)
{
    unsigned rounds = 0;
    int s;
    while ((s = am_audit_flush(f->p, f->sink)) == AM_ERR_FULL) {
        fuzz_check_memory(f);
        fuzz_on_full(f, 0, &rounds);
    }
    fuzz_check_memory(f);
    CHECK(s == AM_OK);
    fuzz_take_all(f);
    const uint8_t *data;
    size_t len;
    uint32_t events;
    CHECK(am_sink_take(f->sink, &data, &len, &events) == AM_EMPTY);
    struct am_audit_stats st;
    am_audit_stats(f->p, f->sink, &st);
    struct am_sink_stats ss;
    am_sink_stats(f->sink, &ss);
    CHECK(ss.batches == f->batches && st.events == f->events && ss.events == f->events);
}

/* Every entry point refuses a NULL handle with AM_ERR_ARG, and the feed calls take a NULL
 * sink as a full one. */
static inline void fuzz_check_null_handles(const struct fuzz_audit *f)
{
    size_t consumed = 0;
    CHECK(am_audit_feed(NULL, f->sink, "x", 1, &consumed) == AM_ERR_ARG);
    CHECK(am_audit_feed_record(NULL, f->sink, 1300, "x", 1) == AM_ERR_ARG);
    CHECK(am_audit_expire(NULL, f->sink, 0) == AM_ERR_ARG);
    CHECK(am_audit_flush(NULL, f->sink) == AM_ERR_ARG);
    CHECK(am_audit_expire(f->p, NULL, 0) == AM_ERR_ARG);
    CHECK(am_audit_flush(f->p, NULL) == AM_ERR_ARG);
    CHECK(am_audit_feed(f->p, NULL, "x", 1, &consumed) == AM_ERR_FULL && consumed == 0);
    CHECK(am_audit_feed_record(f->p, NULL, 1300, "x", 1) == AM_ERR_FULL);
}

#endif
