/* audit_event.h: a completed event's records -> one typed msgpack map (docs/events.md,
 * docs/audit-parsing.md sections 5-7). */
#ifndef AM_AUDIT_EVENT_H
#define AM_AUDIT_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "audit_record.h"
#include "msgpack.h"

/* Records of an event are stored back to back: a rec_head then its fields text. */
typedef struct rec_head {
    uint32_t type;
    uint32_t len;
} rec_head;

/* The titles of processes, for exec events without EXECVE (failed execs) when the kernel sends
 * no PROCTITLE (the netlink owner's exclusion): pid -> the NUL-joined argv of the process's
 * last exec as it completed (the bytes PROCTITLE would carry: at most 128, then unprintable bytes cut at the end, as the kernel does),
 * direct-mapped by pid. A cached title is used only for the same pid and exe (hash and length)
 * and within TITLE_FRESH_MS of stream time of when it was learnt: a pid is reused only after
 * the kernel's cyclic pid allocation wrapped pid_max (32768 at least), far beyond what a device
 * forks in a second. On a miss, with read_proc, /proc/PID/cmdline is read once (128 bytes) and
 * kept only when /proc/PID/exe names the event's exe (else the entry says so: NO_TITLE). */
enum { TITLE_BYTES = 128, TITLE_SLOTS = 256, TITLE_FRESH_MS = 1000, TITLE_EXE_MAX = 4096 };
/* An entry's len when /proc gave no title for that pid and exe (gone, another exe): the same
 * answer, without reading /proc again, within TITLE_FRESH_MS. */
#define NO_TITLE UINT32_MAX

typedef struct title_entry {
    uint64_t exe_hash;
    uint64_t ts_ms;
    uint32_t pid; /* 0: empty */
    uint32_t exe_len;
    uint32_t len;
    uint8_t title[TITLE_BYTES];
} title_entry;

typedef struct title_cache {
    title_entry slots[TITLE_SLOTS];
    int read_proc;
    uint64_t learnt;  /* titles kept from exec events */
    uint64_t cached;  /* events given a cached title */
    uint64_t proc;    /* events given a title read from /proc */
    uint64_t missing; /* events left without one: process gone, exe differs, unreadable */
} title_cache;

typedef struct am_event_view {
    const char *node;
    size_t node_len;
    uint64_t serial;
    uint64_t ts_ms;
    const uint8_t *recs;
    size_t recs_len;
    int truncated;
    title_cache *titles; /* NULL: titles come only from PROCTITLE */
} am_event_view;

typedef struct am_encoder {
    am_field *fields;
    size_t fields_cap;
    am_field *sc_fields; /* the SYSCALL record's fields, kept while other records are read */
    size_t sc_cap;
    mp_buf body;  /* the event map's entries */
    mp_buf items; /* argv / paths / recs elements */
    mp_buf event; /* map header + body: what goes into the batch */
    uint8_t *scratch; /* decoded bytes of one value or one reassembled argument */
    size_t scratch_cap;
    uint8_t argv_title[TITLE_BYTES]; /* the argv being encoded, NUL-joined, as PROCTITLE */
    size_t argv_title_len;
} am_encoder;

int encoder_init(am_encoder *enc, size_t event_cap, size_t max_value_bytes);
void encoder_release(am_encoder *enc);
size_t encoder_memory(const am_encoder *enc);
/* Encodes into enc->event. *cut is set when the full form did not fit and the minimal form
 * was written instead (or the event was already truncated). */
int event_encode(am_encoder *enc, const am_event_view *ev, int *cut);

/* Loss tracking needs to know daemon events: the type of the event's first record. */
uint32_t event_first_type(const am_event_view *ev);

#endif
