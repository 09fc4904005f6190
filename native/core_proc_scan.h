/* core_proc_scan.h: the /proc scanner: a snapshot of every process (one event each), or the
 * processes started and ended since the previous walk, into an am_sink
 * (docs/sources/proc-scan.md). */
#ifndef AM_CORE_PROC_SCAN_H
#define AM_CORE_PROC_SCAN_H

#include "core.h"

/* CDEF-BEGIN */
enum am_pscan_status {
    AM_PSCAN_ERR_SYS = -17 /* a system call failed: am_pscan_errno() says why */
};

struct am_pscan_options {
    uint32_t max_argv_bytes; /* cmdline bytes read per process, beyond: trunc. 32768 */
    uint32_t max_args;       /* arguments kept per process, beyond: trunc. 256 */
    /* 0: every run is a snapshot (`process` events). 1: polling for changes: a run emits an
     * `exec` event (src "proc") for each process that was not there at the previous run
     * (a new pid, or a pid reused: other start time) and an `exit` event for each process
     * that is gone; the first run only learns what runs (no events). Kernel threads are
     * never reported (no program runs in them). 0 */
    uint32_t changes;
    uint32_t max_tracked;    /* changes: processes remembered, beyond: counted. 1 << 22 */
};

struct am_pscan_stats {
    uint64_t scans;          /* snapshots completed */
    uint64_t processes;      /* process events appended */
    uint64_t vanished;       /* processes gone before their stat could be read: skipped */
    uint64_t partial;        /* processes emitted with some details missing (`partial`) */
    uint64_t denied;         /* processes with some details refused (`denied`) */
    uint64_t kthreads;       /* kernel threads among the processes (`kthread`) */
    uint64_t argv_truncated; /* argv cut to max_argv_bytes / max_args (`trunc`) */
    uint64_t oversize;       /* events sent without argv and exe: larger than a batch */
    uint64_t dropped;        /* events the sink refused */
    uint64_t started;        /* changes: new processes found (`exec` events) */
    uint64_t exited;         /* changes: processes found gone (`exit` events) */
    uint64_t untracked;      /* changes: new processes beyond max_tracked (reported again) */
    uint64_t tracked;        /* changes: processes remembered now */
};

typedef struct am_pscan am_pscan;
void am_pscan_default_options(struct am_pscan_options *out);
/* opts may be NULL. NULL on a bad option, no memory, or no /proc. */
am_pscan *am_pscan_new(const struct am_pscan_options *opts);
void am_pscan_free(am_pscan *p);
/* Walks /proc, one event per process (or per change, see `changes`). AM_OK: the walk is
 * complete (the next call starts a new one); AM_ERR_FULL: the sink is full: take batches and
 * call again to go on where it stopped. *appended: events appended by this call. */
int am_pscan_run(am_pscan *p, am_sink *sink, uint64_t *appended);
int am_pscan_errno(const am_pscan *p);
void am_pscan_stats(const am_pscan *p, struct am_pscan_stats *out);
/* CDEF-END */

#endif
