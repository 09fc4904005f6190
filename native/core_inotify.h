/* core_inotify.h: files changed under watched paths (inotify) as a live source
 * (native/inotify.c; docs/sources/inotify.md).
 *
 * A handle owns one non-blocking inotify descriptor and the watches of a set of roots (the
 * FileSystem_Paths): each root directory, and with `recursive` every directory under it,
 * including those made later (their content made before the watch landed is found by a scan
 * of the new directory). A root that does not exist yet is watched from its nearest existing
 * parent and picked up when it is made. The watches live in the core's one index, keyed by
 * the watch descriptor. drain decodes the kernel's records into `fs` events (create, modify,
 * attrib, move, delete, open, close_write; moves paired by their cookie; `overflow` when the
 * kernel's queue overflowed).
 *
 * Who did it: with join_ms > 0 the events wait up to join_ms for the audit records of the
 * same path (am_inotify_audit learns them from the audit source's batches: pid, exe, uid, auid
 * of the process that opened or changed the path) and carry them; with join_ms 0 they carry
 * `actor: "unavailable"` at once. */
#ifndef AM_CORE_INOTIFY_H
#define AM_CORE_INOTIFY_H

#include "core.h"

/* CDEF-BEGIN */
enum am_inotify_status {
    AM_INOTIFY_ERR_SYS = -17 /* a system call failed: am_inotify_errno() says why */
};

struct am_inotify_options {
    uint32_t recursive;    /* 1: every directory under a root is watched too. 1 */
    uint32_t open_events;  /* 1: also `open` (IN_OPEN: every read is one; noisy). 0 */
    uint32_t max_watches;  /* watches held at most (the index's bound), 1..1048576. 65536 */
    uint32_t max_pending;  /* events decoded and not yet written (waiting for their actor),
                              16..1048576. 4096 */
    uint32_t join_ms;      /* how long an event waits for its audit records; 0: no audit,
                              events say actor "unavailable". 0 */
    uint32_t actor_ttl_ms; /* an audit record names the actor of a path's events this long. 10000 */
    uint32_t max_actors;   /* paths whose audit actors are remembered (about 2 KiB each),
                              1..65536. 256 */
};

struct am_inotify_stats {
    uint64_t reads;          /* read(2) calls that returned records */
    uint64_t records;        /* inotify records decoded */
    uint64_t events;         /* events appended to sinks */
    uint64_t create, modify, attrib, move, delete, open, close_write;
    uint64_t moves_paired;   /* a MOVED_FROM and MOVED_TO with the same cookie: one event */
    uint64_t moves_out;      /* MOVED_FROM alone: moved out of the watched paths */
    uint64_t moves_in;       /* MOVED_TO alone: moved in from elsewhere */
    uint64_t overflows;      /* IN_Q_OVERFLOW: the kernel's queue overflowed, events lost */
    uint64_t watch_limit;    /* inotify_add_watch ENOSPC (fs.inotify.max_user_watches) */
    uint64_t watch_bound;    /* directories not watched: max_watches reached */
    uint64_t watch_errors;   /* other inotify_add_watch failures (EACCES, ...) */
    uint64_t watches;        /* watches held now */
    uint64_t watches_added;
    uint64_t watches_removed; /* by us (a path patched away) or by the kernel (IN_IGNORED) */
    uint64_t roots;          /* roots configured */
    uint64_t roots_pending;  /* of those, not existing yet: watched from a parent */
    uint64_t scanned;        /* entries of new directories found by their scan */
    uint64_t outside;        /* records of parent-only watches that are not under a root */
    uint64_t unknown_wd;     /* records of a watch already removed */
    uint64_t long_paths;     /* names whose path would exceed PATH_MAX: skipped */
    uint64_t malformed;      /* records with impossible lengths: the rest of the read skipped */
    uint64_t pending_full;   /* events written before their actor came: max_pending reached */
    uint64_t actors_learned; /* audit path records remembered */
    uint64_t actors_matched; /* events written with their audit actor */
    uint64_t actors_unmatched; /* events written after join_ms without one */
    uint64_t actors_full;    /* audit path records not remembered: max_actors reached */
    uint64_t dropped;        /* events the sink refused (too large, or full) */
};

typedef struct am_inotify am_inotify;
void am_inotify_default_options(struct am_inotify_options *out);
/* A handle without a descriptor (am_inotify_decode only); opts may be NULL. NULL on a bad
 * option or no memory. */
am_inotify *am_inotify_new(const struct am_inotify_options *opts);
void am_inotify_free(am_inotify *h);
/* Opens the non-blocking inotify descriptor. AM_INOTIFY_ERR_SYS on failure. */
int am_inotify_open(am_inotify *h);
/* The descriptor, -1 when not open. */
int am_inotify_fileno(const am_inotify *h);
int am_inotify_errno(const am_inotify *h);
/* The roots: a comma-separated list of absolute paths (at most 64, each < PATH_MAX, no
 * trailing slash but "/"). Watches of roots that stay are untouched; those only the removed
 * roots needed are removed; the new roots are watched. AM_ERR_ARG when malformed (nothing
 * changes). */
int am_inotify_set_paths(am_inotify *h, const char *list, size_t len);
/* Reads every record the descriptor holds into events, and writes the events whose wait is
 * over. AM_OK: nothing left; AM_ERR_FULL: the sink is full, take batches and call again.
 * *appended: events appended by this call. */
int am_inotify_drain(am_inotify *h, am_sink *sink, uint64_t *appended);
/* Writes the events whose wait for an actor is over (all of them with force 1). AM_ERR_FULL
 * as drain. */
int am_inotify_release(am_inotify *h, am_sink *sink, int force, uint64_t *appended);
/* Decodes inotify records (struct inotify_event as read(2) returns them) as drain does. */
int am_inotify_decode(am_inotify *h, am_sink *sink, const uint8_t *data, size_t len,
                      uint64_t *appended);
/* Learns actors from one batch of the audit source's events (a msgpack array of maps): every
 * event with `paths` gives its pid, exe, comm, uid and auid to the paths it names (relative
 * names resolved by its cwd; PARENT items left out). Malformed batches are skipped. */
int am_inotify_audit(am_inotify *h, const uint8_t *batch, size_t len);
/* TEST ONLY: a watch of wd on path in a handle without a descriptor, for decoding (fuzzing,
 * tests) without a kernel. */
int am_inotify_test_watch(am_inotify *h, int wd, const char *path, int report, int recurse);
void am_inotify_stats(const am_inotify *h, struct am_inotify_stats *out);
/* CDEF-END */

#endif
