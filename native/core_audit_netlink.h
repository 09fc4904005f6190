/* core_audit_netlink.h: the live audit source. A NETLINK_AUDIT client that reads the kernel's
 * audit status, becomes the audit daemon when nobody is (or reads the multicast log group
 * when auditd or another process owns audit), installs the agent's syscall rules, and feeds
 * every record it receives to an am_audit parser of its own (the same parser as log text).
 * The parser writes the events into the am_sink given to each call. See
 * docs/sources/audit-netlink.md. */
#ifndef AM_CORE_AUDIT_NETLINK_H
#define AM_CORE_AUDIT_NETLINK_H

#include "core.h"

/* CDEF-BEGIN */
struct am_anl_options {
    uint32_t take_ownership; /* 1: become the audit daemon when no live process is. 1 */
    uint32_t backlog_limit;  /* as owner, raise a lower backlog_limit to this (0: keep). 8192 */
    uint32_t exec_rules;     /* 1: execve + execveat rules */
    uint32_t net_rules;      /* 1: connect, accept, accept4, bind rules */
    uint32_t compat_arch;    /* 1: rules for the 32-bit compat arch too (i386 on x86_64) */
    uint32_t rcvbuf_bytes;   /* receive buffer of the event socket. 4194304 */
    uint32_t reply_timeout_ms; /* wait for each kernel reply at open/close/poll. 2000 */
    uint32_t drop_when_full; /* 1: as owner set backlog_wait_time 0 (a record that finds the
                              * backlog full is lost and counted, the task never sleeps),
                              * unless failure is 2 (panic on loss). 1 */
    uint32_t exclude_unread; /* 1: as owner, with no other reader of the multicast group, an
                              * exclude rule keeps the kernel from sending the record types no
                              * event reads: EOE (PROCTITLE ends a syscall's event) and
                              * BPRM_FCAPS. 1 */
    uint32_t exclude_path;   /* 1: as exclude_unread, and while no watch rule is installed
                              * (am_anl_watch), PATH records too: exec events then have no
                              * `paths`. 1 */
    uint32_t exclude_proctitle; /* 1: with exclude_unread's exclusion installed and while no
                              * watch rule is, PROCTITLE too: events then complete at
                              * the second drain end after their last record, and the `title`
                              * of exec events without EXECVE comes from the parser's title
                              * cache (am_audit_nl_unmarked). 1 */
};

/* struct audit_status as the kernel reports it (fields a kernel does not send stay 0). */
struct am_anl_status {
    uint32_t mask;
    uint32_t enabled;        /* 0 off, 1 on, 2 on and locked */
    uint32_t failure;
    uint32_t pid;            /* the audit daemon, 0 when none */
    uint32_t rate_limit;
    uint32_t backlog_limit;
    uint32_t lost;
    uint32_t backlog;
    uint32_t feature_bitmap;
    uint32_t backlog_wait_time;
    uint32_t backlog_wait_time_actual;
};

struct am_anl_stats {
    uint64_t datagrams;         /* datagrams received on the event socket */
    uint64_t messages;          /* netlink messages in them */
    uint64_t records;           /* audit records given to the parser */
    uint64_t bytes;             /* their payload bytes */
    uint64_t enobufs;           /* recv() said ENOBUFS: the socket overflowed, records lost */
    uint64_t recv_errors;       /* other recv() errors */
    uint64_t truncated;         /* datagrams larger than the receive buffer (cut) */
    uint64_t foreign;           /* datagrams not from the kernel, dropped */
    uint64_t malformed;         /* messages with a bad header or length, dropped */
    uint64_t length_mismatch;   /* records whose nlmsg_len was neither form the kernel uses */
    uint64_t acks;              /* NLMSG_ERROR with error 0 */
    uint64_t nl_errors;         /* NLMSG_ERROR with an error */
    uint64_t replaced;          /* AUDIT_REPLACE probes (another process asked to be auditd) */
    uint64_t ignored;           /* other control messages */
    uint64_t kernel_lost_delta; /* growth of the kernel's `lost` counter since open */
    uint64_t status_polls;      /* AUDIT_GET replies received */
    uint64_t status_errors;     /* AUDIT_GET requests that failed */
    uint64_t ownership_lost;    /* polls that found us no longer the audit daemon (owner mode):
                                 * the kernel gave up on us, records in between are gone */
    uint64_t ownership_regained; /* of those, times we became the audit daemon again */
    uint64_t rules_installed;   /* rules added at open */
    uint64_t rules_skipped;     /* syscalls an arch does not have */
    uint64_t rules_failed;      /* rules the kernel refused */
    uint64_t rules_shared;      /* rules the kernel had already (EEXIST): another agent beside
                                 * us installed them; used, kept, never removed by us */
    uint64_t rules_removed;     /* our rules removed at close */
    uint64_t rules_remove_failed;
    uint64_t stale_rules_removed; /* rules with our key found at open (a killed previous run) */
    uint64_t parser_full;       /* drain calls that stopped because the sink was full */
    uint64_t wait_time_set;     /* 1: open set backlog_wait_time 0 (drop_when_full) */
    uint64_t rule_checks;       /* polls that listed the kernel's rules to find ours (the first
                                 * after a CONFIG_CHANGE record, else every 10th) */
    uint64_t config_changes;    /* CONFIG_CHANGE records read (rules or settings changed) */
    uint64_t rule_check_errors; /* ... whose AUDIT_LIST_RULES failed */
    uint64_t rules_lost;        /* rules of ours found gone (another process deleted them:
                                 * auditctl -D, augenrules --load, an intruder) */
    uint64_t rules_readded;     /* rules of ours added again after that */
    uint64_t rules_readd_failed;
    uint64_t disabled_by_others; /* polls that found audit disabled (enabled 0) while we own it */
    uint64_t reenabled;         /* ... and enabled it again */
    uint64_t recv_calls;        /* recvmmsg calls that returned datagrams (datagrams / recv_calls:
                                 * how many one system call took) */
    uint64_t unread_excluded;   /* 1: open installed the exclusion of EOE and BPRM_FCAPS */
    uint64_t unread_kept;       /* 1: exclusions were wanted but not installed (another reader
                                 * of the multicast group, /proc/net/netlink unreadable, refused) */
    uint64_t path_excluded;     /* 1: PATH records are excluded now (exclude_path, no watches) */
    uint64_t proctitle_excluded; /* 1: open installed the exclusion of PROCTITLE: the parser
                                  * then completes events at drain ends (unmarked mode) */
    uint64_t unmarked_completed; /* events completed at a drain end (no EOE, no PROCTITLE) */
    uint64_t late_records;      /* records of an event already completed: counted, dropped */
    uint64_t titles_learnt;     /* exec events whose argv was kept as their process's title */
    uint64_t titles_cached;     /* events without EXECVE given a kept title */
    uint64_t titles_proc;       /* ... given a title read from /proc/PID/cmdline */
    uint64_t titles_missing;    /* ... left without one (process gone, exe differs) */
};

/* What am_anl_restore did. */
struct am_anl_restore_report {
    uint32_t rules_removed;     /* rules with our key deleted */
    uint32_t rules_remove_failed;
    uint32_t settings_changed;  /* AUDIT_SET requests that changed a field back */
    uint32_t settings_failed;   /* AUDIT_SET requests the kernel refused */
    uint32_t settings_skipped;  /* 1: another live process owns audit: its settings stay */
    uint32_t ownership_released; /* 1: the audit daemon pid (ours or a dead one) set to 0 */
    uint32_t mismatched;        /* fields still different from `saved` afterwards */
    uint32_t rules_left;        /* rules with our key still listed afterwards */
};

enum am_anl_mode {
    AM_ANL_UNAVAILABLE = 0,
    AM_ANL_OWNER = 1,
    AM_ANL_MULTICAST = 2
};

typedef struct am_anl am_anl;
void am_anl_default_options(struct am_anl_options *out);
/* Opens the two netlink sockets and the parser (audit may be NULL for its defaults); changes
 * nothing in the kernel. NULL on a bad option or no memory. */
am_anl *am_anl_new(const struct am_anl_options *opts, const struct am_audit_options *audit);
/* AUDIT_GET only, changing nothing: the status open will start from (am_anl_found_status),
 * so that the caller can record it before open changes the kernel. AM_OK, AM_EMPTY when
 * the kernel did not answer (open then reports unavailable); AM_ERR_ARG after open. */
int am_anl_probe(am_anl *a);
/* Reads the status (unless probed), chooses the mode, removes stale rules, installs ours.
 * AM_OK whatever the mode (am_anl_mode, am_anl_state say what happened); AM_ERR_ARG if
 * already opened. */
int am_anl_open(am_anl *a);
/* Puts the kernel's audit state back to `saved` (a status recorded before a run that may have
 * been killed), on a handle not opened: deletes every rule with our key (rules of others stay,
 * in their order); unless another live process owns audit now, sets failure, rate_limit,
 * backlog_limit, backlog_wait_time and enabled back where they differ, and releases the audit
 * daemon pid when it is a dead process's (set 0; the kernel's own probe clears it). Idempotent.
 * AM_OK when afterwards no rule with our key is left and every restored field equals saved;
 * AM_EMPTY when the kernel did not answer; AM_ERR_LIMIT when something is still different
 * (report says what); AM_ERR_ARG on an opened handle. report may be NULL. */
int am_anl_restore(am_anl *a, const struct am_anl_status *saved,
                   struct am_anl_restore_report *report);
int am_anl_mode(const am_anl *a);
/* "owner", "multicast: owned by pid 1234 (auditd)", "unavailable: ...". */
const char *am_anl_state(const am_anl *a);
/* What the rules step did, one line. */
const char *am_anl_rules_report(const am_anl *a);
/* The status found at open. */
int am_anl_found_status(const am_anl *a, struct am_anl_status *out);
/* The event socket (non-blocking), -1 when closed. */
int am_anl_fileno(const am_anl *a);
/* Receives up to max_datagrams (0: no limit) until nothing is readable, up to 32 per system
 * call (recvmmsg); each record goes to the parser, whose events go to sink. AM_ERR_FULL: the
 * sink is full, take its batches and call again (datagrams read and not yet decoded wait in
 * the handle). */
int am_anl_drain(am_anl *a, am_sink *sink, uint32_t max_datagrams);
/* The paths of the FileSystem collector (a comma-separated list of absolute paths, at most
 * 64): each gets a watch rule with our key (-F dir= for a directory, its whole tree; -F path=
 * otherwise; -F perm=wa), installed by open, or at once on an opened handle, where the rules
 * of paths no longer listed are removed. A rule the kernel refuses (a path whose parent does
 * not exist) is counted in rules_failed. AM_ERR_ARG when malformed (nothing changes). */
int am_anl_watch(am_anl *a, const char *list, size_t len);
/* AUDIT_GET now: updates kernel_lost_delta and ownership; out may be NULL. */
/* Also guards what the agent set up: rules of ours (or shared with another agent) that
 * another process deleted are added again (rules_lost, rules_readded), and, as owner, audit
 * disabled by another process is enabled again (disabled_by_others, reenabled). */
int am_anl_poll_status(am_anl *a, struct am_anl_status *out);
/* The parser's am_audit_expire and am_audit_flush into sink; with PROCTITLE excluded
 * (unmarked mode), expire drains first (its drain end completes events; no timeouts). */
int am_anl_expire(am_anl *a, am_sink *sink, uint64_t now_ms);
int am_anl_flush(am_anl *a, am_sink *sink);
void am_anl_stats(const am_anl *a, struct am_anl_stats *out, struct am_audit_stats *parser);
/* Removes our rules, restores what open changed (enabled, backlog_limit, backlog_wait_time,
 * ownership), closes the sockets. Safe to call twice; in a forked child it only closes the sockets. */
int am_anl_close(am_anl *a);
/* Closes (if needed) and frees. */
void am_anl_free(am_anl *a);
/* The decoder of one received datagram, without a socket: every audit record in buf goes to
 * p (its events to sink), every message is counted in st. *consumed: bytes used; AM_ERR_FULL:
 * the sink is full, take its batches and call again with the rest (buf + *consumed is a
 * message boundary). */
int am_audit_nl_decode(am_audit *p, am_sink *sink, const uint8_t *buf, size_t len,
                       size_t *consumed, struct am_anl_stats *st);
/* Unmarked mode, for a parser fed by a kernel that sends neither EOE nor PROCTITLE (the owner's
 * exclusions): an event completes at a drain end after the one in which its last record
 * came, 40 ms or more after that one (am_audit_nl_drain_end), a record of an event already completed is counted and dropped
 * (late_records), no event times out (neither in stream time nor in am_audit_expire: a record's
 * time stamp is its syscall's entry, seconds old for a blocking accept), and exec events
 * without EXECVE get their `title` from a cache of exec
 * events' argv by pid, else from /proc/PID/cmdline. AM_ERR_NOMEM when the cache could not be
 * allocated (the mode is then unchanged). */
int am_audit_nl_unmarked(am_audit *p, uint32_t on);
/* The socket said EAGAIN at now_ms (monotonic): completes every open event whose last record
 * came in an earlier drain that ended 40 ms ago or more. The counters go to st too, when not NULL (as am_audit_nl_decode's).
 * AM_ERR_ARG without a sink. */
int am_audit_nl_drain_end(am_audit *p, am_sink *sink, uint64_t now_ms, struct am_anl_stats *st);
/* CDEF-END */

/* The parser's unmarked-mode counters into st (audit_netlink.c). */
void audit_nl_counters(const am_audit *p, struct am_anl_stats *st);

#endif
