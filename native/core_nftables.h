/* core_nftables.h: the nftables ruleset (native/nftables.c), read over NETLINK_NETFILTER with
 * NFNL_SUBSYS_NFTABLES dumps (tables, chains, sets, rules, and the elements of each set a rule
 * looks up) and decoded into the Firewall collector's `fwchain` and `fwrule` events
 * (docs/inventory.md has their keys).
 *
 * A snapshot is one result, not a stream: am_nft_snapshot (live) or am_nft_decode (messages
 * given by the caller: tests, fuzzing) leaves one msgpack map that am_nft_result hands over:
 *     {"events": [event, ...], "errors": [[what, errno, reason], ...], "tables": N,
 *      "volatile": bool}
 * errors name what could not be read (errno set, reason "") or decoded (errno 0, reason set);
 * tables is -1 when the ruleset could not be dumped; volatile: the events hold set elements
 * that change without a new ruleset generation (sets with timeouts or filled from the packet
 * path, a rule that fills one), so no snapshot of them may be reused. Every buffer the
 * snapshot grows is freed when it ends, except the result (kept until the next snapshot). */
#ifndef AM_CORE_NFTABLES_H
#define AM_CORE_NFTABLES_H

#include "core.h"

/* CDEF-BEGIN */
enum am_nft_status {
    AM_NFT_ERR_SYS = -31 /* a system call failed: am_nft_errno() says why */
};

struct am_nft_options {
    uint32_t max_dump_bytes;    /* bytes of dump messages kept for one snapshot. 8388608 */
    uint32_t max_output_bytes;  /* bytes of the encoded result. 8388608 */
    uint32_t max_rule_bytes;    /* text of the values of one rule (sets included). 1048576 */
    uint32_t max_set_elements;  /* elements read from one set. 65536 */
    uint32_t timeout_ms;        /* a dump that stays silent this long fails. 10000 */
};

struct am_nft_stats {
    uint64_t snapshots;     /* results made (live or decoded) */
    uint64_t generations;   /* generation requests answered */
    uint64_t messages;      /* nf_tables messages kept */
    uint64_t tables;        /* of the last snapshot */
    uint64_t chains;
    uint64_t sets;
    uint64_t rules;
    uint64_t set_reads;     /* set element lists read (one per set and match field) */
    uint64_t elements;      /* set elements read */
    uint64_t events;        /* events encoded */
    uint64_t undecodable;   /* rules left out (an error says which and why) */
    uint64_t malformed;     /* messages or attributes whose lengths do not hold */
    uint64_t dump_errors;   /* NLMSG_ERROR answers, failed sends and receives, timeouts */
    uint64_t interrupted;   /* dumps taken again because the ruleset changed under them */
    uint64_t overflow;      /* a bound of the options reached */
    uint64_t memory;        /* bytes held now */
};

typedef struct am_nft am_nft;
void am_nft_default_options(struct am_nft_options *out);
/* opts may be NULL for the defaults. NULL on a bad option or no memory. No socket is held:
 * each call opens its own in the caller's network namespace and closes it. */
am_nft *am_nft_new(const struct am_nft_options *opts);
void am_nft_free(am_nft *n);
/* The ruleset's generation (NFT_MSG_GETGEN): a number the kernel raises at every committed
 * change. AM_NFT_ERR_SYS (errno in am_nft_errno), or AM_ERR_LIMIT for an answer that makes
 * no sense (counted in malformed). */
int am_nft_generation(am_nft *n, uint32_t *generation);
/* Dumps the ruleset and decodes it with `ts_ms` as every event's ts. AM_OK: a result was
 * made (a dump that failed is one of its errors); AM_ERR_NOMEM, AM_ERR_LIMIT (max_output_bytes
 * too small for even an empty result): none. */
int am_nft_snapshot(am_nft *n, uint64_t ts_ms);
/* The decoder on its own: `data` holds netlink messages as the kernel sends them (the
 * answers of the table, chain, set and rule dumps, and the set element answers, in any
 * order); the result is what a snapshot of that ruleset makes. */
int am_nft_decode(am_nft *n, uint64_t ts_ms, const uint8_t *data, size_t len);
/* The last result; valid until the next snapshot or decode. AM_EMPTY when there is none. */
int am_nft_result(const am_nft *n, const uint8_t **data, size_t *len);
int am_nft_errno(const am_nft *n);
void am_nft_stats(const am_nft *n, struct am_nft_stats *out);
/* CDEF-END */

#endif
