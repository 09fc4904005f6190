/* core_proc_connector.h: the process events connector (NETLINK_CONNECTOR, cn_proc) as a live
 * source. A handle decodes cn_proc datagrams into events in an am_sink (fork, exec, exit,
 * uid, gid, sid, comm, ptrace, coredump; docs/sources/proc-connector.md), enriching exec
 * events from /proc/PID; once listening it owns a non-blocking socket that drain reads. */
#ifndef AM_CORE_PROC_CONNECTOR_H
#define AM_CORE_PROC_CONNECTOR_H

#include "core.h"

/* CDEF-BEGIN */
enum am_cnproc_status {
    AM_CNPROC_ERR_SYS = -16 /* a system call failed: am_cnproc_errno() says why */
};

struct am_cnproc_options {
    uint32_t rcvbuf;         /* socket receive buffer, bytes (SO_RCVBUFFORCE). 4194304 */
    uint32_t enrich;         /* 1: exec events read /proc/PID (argv, exe, cwd, ids). 1 */
    uint32_t threads;        /* 1: also fork/exit/uid/gid/comm of non-leader threads. 0 */
    uint32_t max_argv_bytes; /* cmdline bytes read per exec, beyond: trunc. 32768 */
    uint32_t max_args;       /* arguments kept per exec, beyond: trunc. 256 */
};

struct am_cnproc_stats {
    uint64_t datagrams;  /* datagrams received (or given to decode) */
    uint64_t messages;   /* netlink messages in them */
    uint64_t events;     /* events appended to the sink */
    uint64_t fork, exec, exit, uid, gid, sid, ptrace, comm, coredump;
    uint64_t acks;       /* PROC_EVENT_NONE: the kernel's answer to a LISTEN / IGNORE */
    uint64_t ack_errors; /* ... with a non-zero err */
    uint64_t unknown;    /* proc_event.what not known: skipped */
    uint64_t malformed;  /* bad netlink / cn_msg / proc_event lengths or ids: skipped */
    uint64_t foreign;    /* datagrams not sent by the kernel: skipped */
    uint64_t threads_filtered; /* thread events left out (options.threads == 0) */
    uint64_t enobufs;    /* the socket overran: the kernel dropped events */
    uint64_t gaps;       /* per-CPU sequence gaps seen */
    uint64_t lost;       /* events missing in those gaps */
    uint64_t seq_resets; /* a CPU's sequence went backwards: tracking restarted */
    uint64_t gone;       /* exec events whose process was gone before /proc was read */
    uint64_t partial;    /* exec events with some /proc details missing */
    uint64_t denied;     /* exec events with some /proc details refused (EACCES/EPERM) */
    uint64_t reused;     /* ... whose pid already belonged to a newer process */
    uint64_t argv_truncated; /* exec argv cut to max_argv_bytes / max_args */
    uint64_t oversize;   /* exec events sent without argv, exe, cwd: larger than a batch */
    uint64_t dropped;    /* events the sink refused (too large, or full) */
    uint64_t probes;     /* comm events sent by am_cnproc_probe */
    uint64_t probes_seen; /* ... received back (not events) */
    uint64_t probe_failed; /* CPUs am_cnproc_probe could not run on (offline, cpuset) */
    uint64_t parent_recalled; /* exit events whose ppid came from the fork (kernel sent 0) */
    uint64_t parent_unknown;  /* exit events sent without ppid: neither kernel nor fork knew */
};

typedef struct am_cnproc am_cnproc;
void am_cnproc_default_options(struct am_cnproc_options *out);
/* A decoder without a socket; opts may be NULL. NULL on a bad option or no memory. */
am_cnproc *am_cnproc_new(const struct am_cnproc_options *opts);
/* Closes the socket (after PROC_CN_MCAST_IGNORE) and frees. */
void am_cnproc_free(am_cnproc *c);
/* Opens the non-blocking NETLINK_CONNECTOR socket, joins CN_IDX_PROC and sends
 * PROC_CN_MCAST_LISTEN. AM_CNPROC_ERR_SYS on failure (errno in am_cnproc_errno). */
int am_cnproc_listen(am_cnproc *c);
/* Sends PROC_CN_MCAST_IGNORE and closes the socket (am_cnproc_free does it too). */
int am_cnproc_close(am_cnproc *c);
/* The socket, -1 when not listening. */
int am_cnproc_fileno(const am_cnproc *c);
/* The errno of the last AM_CNPROC_ERR_SYS. */
int am_cnproc_errno(const am_cnproc *c);
/* Reads every datagram the socket holds into events. AM_OK: nothing left to read;
 * AM_ERR_FULL: the sink is full: take batches, call again (unread datagrams stay with the
 * kernel, read ones wait in the handle). *appended: events appended by this call. */
int am_cnproc_drain(am_cnproc *c, am_sink *sink, uint64_t *appended);
/* Decodes datagram bytes (one or more netlink messages, as received). AM_ERR_FULL: the
 * sink filled up; *consumed says where to resume after taking batches. */
int am_cnproc_decode(am_cnproc *c, am_sink *sink, const uint8_t *data, size_t len,
                     size_t *consumed, uint64_t *appended);
void am_cnproc_stats(const am_cnproc *c, struct am_cnproc_stats *out);
/* Losses at the end of a burst are invisible to the per-CPU sequences until the CPU sends
 * again. For each CPU whose losses are not known yet (no message since listening, or an
 * overrun since its last message), runs the calling thread there for a moment and makes it send
 * one comm event (prctl PR_SET_NAME with its own name), so that the next drain tracks that
 * CPU's sequence and counts what was lost. The calling thread's affinity is restored; the
 * probes' comm events are not encoded. *sent: probes sent. AM_CNPROC_ERR_SYS when the
 * affinity could not be read or restored. */
int am_cnproc_probe(am_cnproc *c, uint32_t *sent);
/* CDEF-END */

#endif
