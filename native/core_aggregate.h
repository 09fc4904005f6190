/* core_aggregate.h: aggregation of identical events within a collector's interval.
 *
 * An aggregator reads the batches a source wrote (msgpack arrays of event maps) and keeps one
 * entry per distinct key with a hit count and the first and last `ts`: a process aggregator
 * merges `exec` events with the same command line and user, a network aggregator merges
 * `net` and `conn` events with the same addresses, service port, protocol, direction and
 * program, a file system aggregator merges `fs` events with the same path and operation. Other events pass through unchanged. An entry is emitted as the first event's map
 * with `hits`, `first` and `last` added, at flush (the end of the interval) or earlier when
 * the cache is full: the oldest entry is then emitted at once, counted in `evicted`. Nothing
 * is dropped here: an eviction only makes the aggregate less compact.
 *
 * An aggregator also routes: `accept` lists the event types (`t`) its collector takes, and
 * the others are skipped (counted). One source's batches (the audit netlink's hold exec, net
 * and auth events) can so feed several collectors, each taking its own. */
#ifndef AM_CORE_AGGREGATE_H
#define AM_CORE_AGGREGATE_H

#include "core.h"

/* CDEF-BEGIN */
enum am_agg_kind {
    AM_AGG_NONE = 0,      /* no merging: accepted events pass through */
    AM_AGG_PROCESS = 1,
    AM_AGG_NETWORK = 2,
    AM_AGG_FILE_SYSTEM = 3, /* `fs` events with the same path and operation */
    AM_AGG_PERIPHERAL = 4 /* `periph`: same op, kind, device path, name and ids */
};

struct am_agg_options {
    uint32_t kind;        /* am_agg_kind */
    uint32_t cache_size;  /* entries kept at once, 1..65536. 256 */
    uint32_t max_bytes;   /* bytes of entries kept at once (their first event and key). 1048576 */
    char accept[128];     /* comma-separated event types taken, at most 16; "" takes all. "" */
};

struct am_agg_stats {
    uint64_t events_in;   /* events read from batches */
    uint64_t merged;      /* events that became a hit of an existing entry */
    uint64_t entries;     /* entries held now */
    uint64_t emitted;     /* entries written to the output */
    uint64_t evicted;     /* of those, written before flush because the cache was full */
    uint64_t passed;      /* events passed through unchanged (not of this kind, or too large) */
    uint64_t skipped;     /* events of a type not in accept, left out */
    uint64_t filtered;    /* events whose local address is not one of the filter's, left out */
    uint64_t malformed;   /* batches or events that are not what a source writes, skipped */
    uint64_t restored;    /* entries read back from a checkpoint (am_agg_restore_batch) */
    uint64_t hosts;       /* conn / net entries given a host by the DNS cache (core_dns.h) */
    uint64_t memory;      /* bytes held now */
    uint64_t memory_bound;
};

typedef struct am_agg am_agg;
void am_agg_default_options(struct am_agg_options *out);
void am_agg_free(am_agg *a);
/* NULL when an option is out of range or accept is malformed (no NUL, an empty name, more
 * than 16 names). */
am_agg *am_agg_new(const struct am_agg_options *opts);
/* Reads the events of one batch from index *next_event on. AM_ERR_FULL: out is full; take
 * its batches and call again with the same batch and *next_event (which says where to go on).
 * A malformed batch is counted and skipped from the event that fails to parse (AM_OK). */
int am_agg_add_batch(am_agg *a, const uint8_t *batch, size_t len, uint32_t *next_event,
                     am_sink *out);
/* A checkpoint: the entries held, oldest first, written into out as flush would write them
 * (the first event's map with hits, first and last) from index *next_entry on, and kept (not
 * counted as emitted). AM_ERR_FULL: take out's batches and call again (*next_entry says where
 * to go on). Entries evicted or flushed meanwhile make a new snapshot necessary. */
int am_agg_snapshot(const am_agg *a, uint32_t *next_entry, am_sink *out);
/* Reads a snapshot's batch back: each entry joins the cache as am_agg_add_batch adds an event,
 * but with its own hits and first/last (an entry already held with the same key adds them
 * up), counted in `restored`, not in events_in. An entry that is not one (hits missing or
 * below 1, first and last not both ints with first <= last, or both absent) makes the batch
 * malformed from there on: counted and skipped, as in am_agg_add_batch. AM_ERR_FULL as there. */
int am_agg_restore_batch(am_agg *a, const uint8_t *batch, size_t len, uint32_t *next_event,
                         am_sink *out);
/* The end of an interval: every entry is emitted, oldest first, and the cache is emptied.
 * AM_ERR_FULL: take out's batches and call again. */
int am_agg_flush(am_agg *a, am_sink *out);
void am_agg_stats(const am_agg *a, struct am_agg_stats *out);
/* Local address filter (NetworkActivity_Devices). enabled 0 (the default): nothing is
 * filtered. enabled 1: list is a comma-separated list of addresses as the sources write them
 * (IPv4 dotted, IPv6 RFC 5952), at most 256 of at most 45 characters, possibly empty; an event
 * with an `laddr` not in the list is left out (counted in `filtered`), an event without
 * `laddr` passes. AM_ERR_ARG when malformed (the filter is then unchanged). */
int am_agg_filter_laddr(am_agg *a, int enabled, const char *list, size_t len);
/* CDEF-END */

#endif
