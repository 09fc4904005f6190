/* core_sock_diag.h: the socket table: snapshots of the TCP and UDP sockets (IPv4 and IPv6) from
 * NETLINK_SOCK_DIAG, or from /proc/net/{tcp,tcp6,udp,udp6} where sock_diag is unavailable,
 * each socket mapped to its owning process by one walk of /proc/PID/fd. Two products go into an
 * event sink: the listening ports of the last snapshot (`listen` events) and the connections
 * opened and closed since the last call (`conn` events). docs/sources/sock-diag.md has the
 * event keys and the counters. */
#ifndef AM_CORE_SOCK_DIAG_H
#define AM_CORE_SOCK_DIAG_H

#include "core.h"

/* CDEF-BEGIN */
enum am_sock_source {
    AM_SOCK_AUTO = 0,    /* sock_diag when a probe dump works, else /proc/net */
    AM_SOCK_DIAG = 1,    /* NETLINK_SOCK_DIAG only */
    AM_SOCK_PROCNET = 2  /* /proc/net/{tcp,tcp6,udp,udp6} only (no byte counters) */
};

struct am_sock_options {
    uint32_t source;         /* enum am_sock_source. AM_SOCK_AUTO */
    uint32_t max_sockets;    /* listening + connected sockets kept per snapshot (and in the
                                table of reported connections); the rest is counted. 16384 */
    uint32_t max_owners;     /* socket inode -> process entries cached. 16384 */
    uint32_t map_owners;     /* 1: walk /proc/PID/fd for sockets of unknown owner. 1 */
    uint32_t first_existing; /* 1: the first changes() reports every connection of the first
                                snapshot as open with existing: true; 0: reports none. 1 */
    uint32_t timeout_ms;     /* a sock_diag dump that stays silent this long is incomplete. 2000 */
    uint32_t skip_quiet_tcp; /* 1 (sock_diag only): while the last snapshot held no TCP
                                connection and the netns's TCP ActiveOpens + PassiveOpens
                                (/proc/net/snmp) have not moved since its TCP dump, the next
                                snapshots keep its TCP listeners and dump only UDP, at most 14
                                in a row; otherwise, while the netns's hashed TCP sockets
                                (/proc/net/sockstat, sockstat6) are its listeners alone, a
                                snapshot dumps only the listeners. For a table whose
                                listeners matter only for the direction of new connections
                                (NetworkActivity). 0 */
};

struct am_sock_stats {
    uint64_t snapshots;        /* snapshots committed */
    uint64_t sockets;          /* sockets decoded (sock_diag: TCP only in the states kept) */
    uint64_t stored;           /* listening + connected sockets in the last snapshot */
    uint64_t listening;        /* of which listening (TCP LISTEN, UDP unconnected) */
    uint64_t messages;         /* netlink messages read */
    uint64_t malformed;        /* messages, attributes or /proc/net lines that did not decode */
    uint64_t long_lines;       /* /proc/net lines over the line bound (also in malformed) */
    uint64_t dump_errors;      /* NLMSG_ERROR answers, failed sends and receives, timeouts */
    uint64_t enobufs;          /* ENOBUFS while a dump was read */
    uint64_t retries;          /* snapshots taken again after a failed dump */
    uint64_t incomplete;       /* snapshots given up after the retry (the last one stays) */
    uint64_t overflow;         /* sockets beyond max_sockets (a snapshot or the reported set) */
    uint64_t tcp_skipped;      /* snapshots that kept the TCP listeners without a dump
                                  (skip_quiet_tcp) */
    uint64_t tcp_listeners_only; /* snapshots whose TCP part was the listeners' dump alone:
                                  they were every hashed TCP socket (skip_quiet_tcp) */
    uint64_t owner_walks;      /* walks of /proc/PID/fd */
    uint64_t owner_found;      /* sockets whose process a walk found */
    uint64_t owner_unknown;    /* sockets a walk found in no process (kernel-held, in flight) */
    uint64_t owner_overflow;   /* sockets left unmapped because the owner cache was full */
    uint64_t owner_vanished;   /* processes (or fds) gone while a walk read them */
    uint64_t owner_entries;    /* inodes in the owner cache now */
    uint64_t listen_events;    /* listen events written */
    uint64_t opened;           /* conn open events written */
    uint64_t closed;           /* conn close events written */
    uint64_t memory;           /* bytes held now */
};

typedef struct am_sock am_sock;
void am_sock_default_options(struct am_sock_options *out);
/* opts may be NULL for the defaults. NULL on a bad option, no memory, or a source that is not
 * available (am_sock_probe tells why). */
am_sock *am_sock_new(const struct am_sock_options *opts);
void am_sock_free(am_sock *t);
/* Which source a table with these options would use: AM_SOCK_DIAG or AM_SOCK_PROCNET, or a
 * negative status; *err gets the errno that ruled sock_diag out (0 when it was not tried). */
int am_sock_probe(const struct am_sock_options *opts, int *err);
/* The source in use (AM_SOCK_DIAG or AM_SOCK_PROCNET); *err as am_sock_probe. */
int am_sock_source(const am_sock *t, int *err);
/* The sock_diag netlink socket (non-blocking), -1 with /proc/net. */
int am_sock_fileno(const am_sock *t);
/* One snapshot: dump (retried once when incomplete), map owners, commit. AM_OK, or
 * AM_ERR_LIMIT when the dump stayed incomplete (counted; the previous snapshot stays). */
int am_sock_snapshot(am_sock *t);
/* The listening sockets of the last snapshot, one `listen` event each. AM_ERR_FULL when the
 * sink filled: take batches and call again, it resumes; AM_OK when all were written (the next
 * call starts over). *events (may be NULL) gets the events written by this call. */
int am_sock_listening(am_sock *t, am_sink *sink, uint32_t *events);
/* `conn` open / close events: the last snapshot against the connections reported so far.
 * AM_ERR_FULL as above (a call after taking batches carries on); AM_OK when done. */
int am_sock_changes(am_sock *t, am_sink *sink, uint32_t *events);
void am_sock_stats(const am_sock *t, struct am_sock_stats *out);

/* The decoders on their own (tests, fuzzing): begin a snapshot, feed it what a dump or a
 * /proc/net file holds, commit it (with owner mapping when map_owners is 1 and the options
 * allow it). feed_diag takes whole netlink messages of one dump of `protocol` (6 TCP, 17 UDP):
 * AM_OK when more may come, AM_EMPTY at NLMSG_DONE, AM_ERR_LIMIT at an NLMSG_ERROR; bad
 * lengths and attributes are counted in malformed. feed_procnet takes the text of one file
 * (family 2 AF_INET or 10 AF_INET6); odd lines are counted. */
int am_sock_begin(am_sock *t);
int am_sock_feed_diag(am_sock *t, uint8_t protocol, const uint8_t *data, size_t len);
int am_sock_feed_procnet(am_sock *t, uint8_t protocol, uint8_t family, const char *data,
                         size_t len);
int am_sock_commit(am_sock *t, uint64_t now_ms, int map_owners);
/* CDEF-END */

#endif
