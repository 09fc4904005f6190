/* core_utmp.h: the utmp / wtmp / btmp reader (native/utmp.c; events in docs/sources/utmp.md).
 *
 * A reader follows one file of fixed-size login records from a remembered offset: each read
 * call decodes only whole records appended since the last call (a partial trailing record
 * waits), restarts from 0 when the file shrank below the offset (truncation), and finishes
 * the old file before it starts the new one from 0 when the path names another inode
 * (rotation). The record layout is glibc's, decoded from byte offsets (never the host's
 * struct utmp): 384 bytes with 32-bit ut_session and ut_tv (x86_64, i386, armhf), or 400
 * bytes with 64-bit ones (glibc aarch64, and 32-bit programs built with _TIME_BITS=64 on
 * glibc < 2.40); little-endian. */
#ifndef AM_CORE_UTMP_H
#define AM_CORE_UTMP_H

#include "core.h"

/* CDEF-BEGIN */
enum am_utmp_kind {
    AM_UTMP_WTMP = 0,   /* login history: logins, logouts, boots, shutdowns, clock changes */
    AM_UTMP_BTMP = 1,   /* failed logins: every record is one */
    AM_UTMP_UTMP = 2    /* current sessions, rewritten in place: use am_utmp_snapshot */
};

enum am_utmp_layout {
    AM_UTMP_LAYOUT_AUTO = 0,  /* decided from the first records that tell (else 384) */
    AM_UTMP_LAYOUT_384 = 384,
    AM_UTMP_LAYOUT_400 = 400
};

struct am_utmp_options {
    uint32_t layout;        /* enum am_utmp_layout. 0 */
    uint32_t max_records;   /* records one read call decodes at most, then AM_ERR_LIMIT. 4096 */
    uint32_t chunk_records; /* records per pread(2): the reader's buffer. 64 */
    uint32_t max_sessions;  /* open logins remembered to complete logouts; oldest go first. 256 */
};

struct am_utmp_stats {
    uint64_t records;      /* whole records decoded */
    uint64_t events;       /* events appended to sinks */
    uint64_t partial;      /* read calls that left a partial trailing record waiting */
    uint64_t partial_lost; /* partial records at the end of a rotated-away file (never whole) */
    uint64_t truncations;  /* the file shrank below the offset: restarted from 0 */
    uint64_t rotations;    /* the path named another file: the old one finished, then the new */
    uint64_t malformed;    /* records with an impossible type or time: no event */
    uint64_t skipped;      /* records that give no event by design: EMPTY, INIT_PROCESS,
                              LOGIN_PROCESS, ACCOUNTING; in a snapshot, all but USER_PROCESS.
                              records == events + skipped + malformed + dropped */
    uint64_t unmatched;    /* logouts whose login the reader did not remember */
    uint64_t evicted;      /* remembered logins forgotten to stay within max_sessions */
    uint64_t dropped;      /* events the sink refused (one larger than a batch, or full) */
    uint64_t io_errors;    /* open/stat/read failures other than a missing file */
    uint64_t missing;      /* read calls that found no file at the path */
    uint32_t layout;       /* the record size in use; 0 while undecided */
};

/* Where a reader is: exported so that the agent can resume after a restart. */
struct am_utmp_state {
    uint64_t dev;
    uint64_t ino;
    uint64_t offset;   /* bytes of whole records consumed */
    uint64_t size;     /* the file's size when last read */
    uint32_t layout;   /* the record size those offsets count in; 0 undecided */
};

typedef struct am_utmp am_utmp;
void am_utmp_default_options(struct am_utmp_options *out);
/* A reader of the file at path (it need not exist yet). kind: enum am_utmp_kind. opts may be
 * NULL for the defaults. NULL on a bad argument or no memory. */
am_utmp *am_utmp_open(const char *path, int kind, const struct am_utmp_options *opts);
/* A reader without a file, for am_utmp_feed (tests, fuzzing, records from elsewhere). */
am_utmp *am_utmp_new(int kind, const struct am_utmp_options *opts);
void am_utmp_close(am_utmp *u);
/* Decodes the new whole records into sink; *events (may be NULL) says how many events were
 * appended. AM_OK: caught up with the file. AM_ERR_LIMIT: stopped after max_records, more
 * wait. AM_ERR_FULL: the sink is full: take its batches and call again (nothing is lost). */
int am_utmp_read(am_utmp *u, am_sink *sink, uint32_t *events);
/* The USER_PROCESS records of the whole file as `active` events (utmp: who is logged in now);
 * the offset and the remembered logins are untouched. AM_ERR_FULL: take batches and call
 * again: the snapshot resumes where it stopped. */
int am_utmp_snapshot(am_utmp *u, am_sink *sink, uint32_t *events);
/* Whole records of data (layout as the reader's), with the reader's remembered logins;
 * *consumed: the bytes of whole records used (a partial tail, or the rest after a full sink,
 * is left). Same statuses as am_utmp_read. */
int am_utmp_feed(am_utmp *u, const uint8_t *data, size_t len, am_sink *sink, size_t *consumed,
                 uint32_t *events);
int am_utmp_state(const am_utmp *u, struct am_utmp_state *out);
/* Resume at a state: applied at the next read. The same file (dev, inode) not shorter than
 * offset: reading goes on from offset; shorter: a truncation; another file: a rotation (read
 * from 0). AM_ERR_ARG when offset is not a whole number of records of its layout. */
int am_utmp_restore(am_utmp *u, const struct am_utmp_state *state);
void am_utmp_stats(const am_utmp *u, struct am_utmp_stats *out);
/* CDEF-END */

#endif
